package sqlutil

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUnique(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"b", "a", "c"}, Unique([]string{"b", "a", "b", "c", "a"}))
	require.Empty(t, Unique([]int64(nil)))
}

func TestSortedByName(t *testing.T) {
	t.Parallel()
	type state struct{ Name string }
	byName := map[string]*state{"b": {"b"}, "a": {"a"}, "B": {"B"}}
	require.Equal(t, []state{{"B"}, {"a"}, {"b"}}, SortedByName(byName, []string{"b", "a", "B"}), "byte-wise")
}

func TestMicros(t *testing.T) {
	t.Parallel()
	require.Equal(t, time.Date(2026, 12, 1, 0, 0, 0, 1000, time.UTC), TimeMicros(time.Date(2026, 12, 1, 0, 0, 0, 1000, time.UTC).UnixMicro()))
	require.Equal(t, time.UTC, TimeMicros(0).Location())
	require.Equal(t, -1500*time.Microsecond, DurationMicros(-1500))
}
