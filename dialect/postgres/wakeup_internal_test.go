package postgres

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

func TestParseWakeup(t *testing.T) {
	for payload, want := range map[string]dialect.Wakeup{
		"12 -34 node/1":            {Name: "node/1", LeaseID: 12, RequestID: -34},
		"12 34 a name 5 6":         {Name: "a name 5 6", LeaseID: 12, RequestID: 34},
		"node/1":                   {Name: "node/1"},
		"12 x node/1":              {Name: "12 x node/1"},
		"12 34":                    {Name: "12 34"},
		"12 0 node/1":              {Name: "12 0 node/1"},
		"-5 9223372036854775807 n": {Name: "n", LeaseID: -5, RequestID: 9223372036854775807},
		"g 12 34 56 node/1":        {Name: "node/1", LeaseID: 12, RequestID: 34, Token: 56},
		"g -12 34 56 a b 7":        {Name: "a b 7", LeaseID: -12, RequestID: 34, Token: 56},
		"g 12 34 0 node/1":         {Name: "g 12 34 0 node/1"},
		"g 12 34 x node/1":         {Name: "g 12 34 x node/1"},
		"g 12 34 56":               {Name: "g 12 34 56"},
		"g 12 34 56 ":              {Name: "g 12 34 56 "},
		"g node":                   {Name: "g node"},
	} {
		require.Equal(t, want, parseWakeup(payload), payload)
	}
}
