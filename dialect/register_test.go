package dialect

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRegister(t *testing.T) {
	const path = "example.com/register-test/driver"
	_, ok := Lookup(path)
	require.False(t, ok)

	var made int
	Register(path, func() Dialect { made++; return nil })
	newDialect, ok := Lookup(path)
	require.True(t, ok)
	newDialect()
	require.Equal(t, 1, made)

	require.PanicsWithValue(t, "dialect: Register called twice for driver package "+path,
		func() { Register(path, func() Dialect { return nil }) })
	require.Panics(t, func() { Register("example.com/register-test/nil", nil) })
	_, ok = Lookup("example.com/register-test/nil")
	require.False(t, ok)
}
