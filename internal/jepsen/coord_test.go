package jepsen

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// coordFence is the fenced transaction cs.seq of a leadership or permit,
// with its outcome.
func coordFence(coord, group string, cs int64, seq int, status string) Op {
	return Op{P: 1, F: Fence, Coord: coord, Group: group, CS: cs, Seq: seq, Status: status}
}

// coordHistory builds rows and their fenced transactions (all OK): each
// row is {cs, seq, token, counter} of the lock name.
func coordHistory(coord, group string, rows ...coordRowSpec) ([]Op, []CoordRow) {
	var ops []Op
	var out []CoordRow
	for _, r := range rows {
		ops = append(ops, coordFence(coord, group, r.cs, r.seq, OK))
		out = append(out, CoordRow{OpID: r.cs, Seq: r.seq, Coord: coord, Group: group, Name: r.name, Token: r.token, Counter: r.counter, Client: "p1.w0"})
	}
	return ops, out
}

type coordRowSpec struct {
	cs      int64
	seq     int
	name    string
	token   int64
	counter int64
}

func TestCheckElections(t *testing.T) {
	const e = "sqldlm:election:e"
	row := func(cs int64, seq int, term, counter int64) coordRowSpec {
		return coordRowSpec{cs, seq, e, term, counter}
	}
	// Three leaderships, one after another, with rising terms; a fenced
	// transaction that failed left no row, one of unknown outcome did.
	legal := []coordRowSpec{row(1, 1, 3, 1), row(1, 2, 3, 2), row(2, 1, 5, 3), row(2, 2, 5, 4), row(3, 1, 7, 5)}
	ops, rows := coordHistory(Election, "e", legal...)
	ops = append(ops, coordFence(Election, "e", 2, 3, Fail))
	ops[4].Status = Info
	// A lock's fenced transaction and a semaphore's rows are not the
	// elections'.
	ops = append(ops, Op{F: Fence, Name: "a", CS: 9, Seq: 1, Status: OK})
	semOps, semRows := coordHistory(Semaphore, "s", coordRowSpec{8, 1, "sqldlm:semaphore:s#0", 1, 1})
	ops = append(ops, semOps...)
	rows = append(rows, semRows...)
	require.Empty(t, CheckElections(ops, rows, map[string]int64{"e": 5}))

	cases := map[string]struct {
		rows  []coordRowSpec
		final int64
		want  string
	}{
		"two leaders at once": {[]coordRowSpec{row(1, 1, 3, 1), row(2, 1, 5, 2), row(1, 2, 3, 3), row(2, 2, 5, 4), row(3, 1, 7, 5)},
			5, `election "e": 2 leaders at the commit of counter 2`},
		"a deposed leader writes after its successor": {[]coordRowSpec{row(1, 1, 3, 1), row(2, 1, 5, 2), row(2, 2, 5, 3), row(1, 2, 3, 4), row(3, 1, 7, 5)},
			5, "2 leaders at the commit of counter 2"},
		"a term goes down": {[]coordRowSpec{row(1, 1, 3, 1), row(1, 2, 3, 2), row(2, 1, 2, 3), row(2, 2, 2, 4), row(3, 1, 7, 5)},
			5, "terms must strictly increase"},
		"a term repeats": {[]coordRowSpec{row(1, 1, 3, 1), row(1, 2, 3, 2), row(2, 1, 3, 3), row(2, 2, 3, 4), row(3, 1, 7, 5)},
			5, "terms must strictly increase"},
		"a leadership changes its term": {[]coordRowSpec{row(1, 1, 3, 1), row(1, 2, 4, 2), row(2, 1, 5, 3), row(2, 2, 5, 4), row(3, 1, 7, 5)},
			5, "critical section 1 wrote as sqldlm:election:e token 4 at counter 2"},
		"a counter repeats": {[]coordRowSpec{row(1, 1, 3, 1), row(1, 2, 3, 2), row(2, 1, 5, 2), row(2, 2, 5, 3), row(3, 1, 7, 4)},
			4, "the cell was not locked to commit"},
		"the final counter is off":               {legal, 6, "5 rows but the final counter is 6"},
		"an acknowledged transaction is missing": {legal[1:], 4, "acknowledged fenced transaction 1.1"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ops, rows := coordHistory(Election, "e", c.rows...)
			if name == "an acknowledged transaction is missing" {
				ops = append(ops, coordFence(Election, "e", 1, 1, OK))
			}
			v := CheckElections(ops, rows, map[string]int64{"e": c.final})
			require.NotEmpty(t, v)
			require.Contains(t, strings.Join(v, "\n"), c.want)
		})
	}
	t.Run("a failed transaction's row is present", func(t *testing.T) {
		ops, rows := coordHistory(Election, "e", legal...)
		ops[4].Status = Fail
		require.Contains(t, strings.Join(CheckElections(ops, rows, map[string]int64{"e": 5}), "\n"), "although its transaction failed")
	})
	t.Run("a row of no operation", func(t *testing.T) {
		ops, rows := coordHistory(Election, "e", legal...)
		require.Contains(t, strings.Join(CheckElections(ops[1:], rows, map[string]int64{"e": 5}), "\n"), "written by no recorded operation")
	})
}

func TestCheckSemaphores(t *testing.T) {
	slot := func(k string) string { return "sqldlm:semaphore:s#" + k }
	row := func(cs int64, seq int, k string, token, counter int64) coordRowSpec {
		return coordRowSpec{cs, seq, slot(k), token, counter}
	}
	// Limit 2: permit 1 (slot 0) spans counters 1-5, permit 2 (slot 1)
	// 2-3, permit 3 (slot 1 again, a newer token) 4-6, permit 4 (slot 0
	// again) 7: never more than two at once.
	legal := []coordRowSpec{row(1, 1, "0", 1, 1), row(2, 1, "1", 2, 2), row(2, 2, "1", 2, 3), row(3, 1, "1", 4, 4),
		row(1, 2, "0", 1, 5), row(3, 2, "1", 4, 6), row(4, 1, "0", 5, 7)}
	limits := map[string]int{"s": 2}
	ops, rows := coordHistory(Semaphore, "s", legal...)
	require.Empty(t, CheckSemaphores(ops, rows, map[string]int64{"s": 7}, limits))
	require.Equal(t, map[string]int{"s": 2}, MostHeld(rows), "the workload reached the limit")

	cases := map[string]struct {
		rows   []coordRowSpec
		limit  int
		want   string
		absent string
	}{
		// The mutant's bug: a third slot, so three permits at once.
		"over the limit": {[]coordRowSpec{row(1, 1, "0", 1, 1), row(2, 1, "1", 2, 2), row(5, 1, "2", 3, 3), row(2, 2, "1", 2, 4),
			row(3, 1, "1", 4, 5), row(1, 2, "0", 1, 6), row(3, 2, "1", 4, 7)},
			2, `semaphore "s": 3 permits held at the commit of counter 3, over the limit 2`, "of one slot"},
		// Within the limit, but one slot held twice.
		"one slot twice": {[]coordRowSpec{row(1, 1, "0", 1, 1), row(2, 1, "0", 2, 2), row(1, 2, "0", 1, 3)},
			3, `semaphore "s": 2 permits of one slot at the commit of counter 2`, "over the limit"},
		"a slot's token goes down": {[]coordRowSpec{row(1, 1, "0", 5, 1), row(2, 1, "0", 4, 2)},
			2, "tokens of a slot's permits must strictly increase", "permits held"},
		"unknown limit": {legal, 0, "whose limit is unknown", ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ops, rows := coordHistory(Semaphore, "s", c.rows...)
			limits := map[string]int{"s": c.limit}
			if c.limit == 0 {
				limits = nil
			}
			v := strings.Join(CheckSemaphores(ops, rows, map[string]int64{"s": int64(len(rows))}, limits), "\n")
			require.Contains(t, v, c.want)
			if c.absent != "" {
				require.NotContains(t, v, c.absent)
			}
		})
	}
	// At the limit is legal: the checker counts holds, not rows.
	atLimit := []coordRowSpec{row(1, 1, "0", 1, 1), row(2, 1, "1", 2, 2), row(5, 1, "2", 3, 3), row(1, 2, "0", 1, 4), row(2, 2, "1", 2, 5)}
	ops, rows = coordHistory(Semaphore, "s", atLimit...)
	require.Empty(t, CheckSemaphores(ops, rows, map[string]int64{"s": 5}, map[string]int{"s": 3}))
}
