package jepsen

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// CoordRow is a row of the coord_journal table, written by a fenced
// transaction of a leader (Leadership.Fence) or of a permit holder
// (Permit.Fence): it added one to its election's or semaphore's cell with
// UPDATE ... SET counter = counter + 1, which keeps the cell locked until
// the transaction ends, and inserted the row with the counter it wrote. A
// group's counters therefore number its transactions in commit order, and
// a counter names an instant of the database's: its transaction's commit,
// at which the hold it fenced (a leadership, a permit) was held.
type CoordRow struct {
	OpID    int64  // the leadership's or permit's critical section (Op.CS)
	Seq     int    // the transaction's number in it
	Coord   string // Election or Semaphore
	Group   string // the election or semaphore
	Name    string // the lock: the election's, or the permit's slot
	Token   int64  // the term, or the permit's token
	Lease   int64
	Client  string
	Counter int64
}

// CheckElections checks the leaders' rows of the coordination journal
// against the history and the elections' final cells (election ->
// counter); see checkCoord. An election has at most one leader at any
// instant of the database's clock, and each leader's term is greater than
// every earlier leader's.
func CheckElections(ops []Op, rows []CoordRow, cells map[string]int64) []string {
	limits := map[string]int{}
	for _, r := range rows {
		limits[r.Group] = 1
	}
	for g := range cells {
		limits[g] = 1
	}
	return checkCoord(Election, ops, rows, cells, limits)
}

// CheckSemaphores checks the permit holders' rows of the coordination
// journal against the history, the semaphores' final cells (semaphore ->
// counter) and their limits; see checkCoord. A semaphore has at most its
// limit of permits held at any instant of the database's clock, each slot
// one, and the tokens of a slot's permits increase.
func CheckSemaphores(ops []Op, rows []CoordRow, cells map[string]int64, limits map[string]int) []string {
	return checkCoord(Semaphore, ops, rows, cells, limits)
}

// coordHold is a leadership or a permit as its fenced transactions show
// it: held at the commit of each, so (a hold that ended never comes back)
// from the first to the last without a break.
type coordHold struct {
	cs          int64
	name        string
	token       int64
	client      string
	first, last int64 // the counters of its first and last transaction
	odd         []CoordRow
}

func (h *coordHold) String() string {
	return fmt.Sprintf("%s token %d (%s, counters %d-%d)", h.name, h.token, h.client, h.first, h.last)
}

// checkCoord checks the rows of kind coord (Election, Semaphore) of the
// coordination journal:
//
//   - every fenced transaction of that kind the history acknowledged (OK)
//     has its row, none that failed has one, and no row lacks an
//     operation;
//   - each group's rows, ordered by counter, wrote 1, 2, ... n with no
//     repeat, and the group's final cell is n (the commit order is whole);
//   - a critical section's rows name one lock and one token;
//   - at every counter (an instant of the database), the holds of a
//     group whose first and last transactions span it number at most the
//     group's limit (limits), and those of one lock (a semaphore's slot)
//     at most one: any more were held at that commit together;
//   - the holds of one lock, in the order of their first transactions,
//     have strictly increasing tokens (terms).
func checkCoord(coord string, ops []Op, rows []CoordRow, cells map[string]int64, limits map[string]int) []string {
	fences := map[txKey]Op{}
	for _, o := range ops {
		if o.F == Fence && o.Coord == coord {
			fences[txKey{o.CS, o.Seq}] = o
		}
	}
	var mine []CoordRow
	for _, r := range rows {
		if r.Coord == coord {
			mine = append(mine, r)
		}
	}
	keys := make([]txKey, len(mine))
	byGroup := map[string][]CoordRow{}
	for i, r := range mine {
		keys[i] = txKey{r.OpID, r.Seq}
		byGroup[r.Group] = append(byGroup[r.Group], r)
	}
	v := checkWritten(coord+"s", fences, keys, func(i int) string { return fmt.Sprintf("%+v", mine[i]) })
	groups := make([]string, 0, len(byGroup))
	for g := range byGroup {
		groups = append(groups, g)
	}
	for g := range cells {
		if _, ok := byGroup[g]; !ok {
			groups = append(groups, g)
		}
	}
	sort.Strings(groups)
	for _, g := range groups {
		limit, ok := limits[g]
		if !ok {
			v = append(v, fmt.Sprintf("%s %q: rows of a %s whose limit is unknown", coord, g, coord))
			continue
		}
		v = append(v, checkGroup(coord, g, limit, byGroup[g], cells[g])...)
	}
	return v
}

func checkGroup(coord, group string, limit int, rows []CoordRow, final int64) []string {
	var v []string
	rows = append([]CoordRow(nil), rows...)
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Counter < rows[j].Counter })
	if int64(len(rows)) != final {
		v = append(v, fmt.Sprintf("%s %q: %d rows but the final counter is %d (lost or phantom transactions)", coord, group, len(rows), final))
	}
	for i, r := range rows {
		if r.Counter != int64(i+1) {
			v = append(v, fmt.Sprintf("%s %q: row %d of commit order wrote counter %d (the cell was not locked to commit)", coord, group, i+1, r.Counter))
		}
	}
	order := holdsOf(rows)
	for _, h := range order {
		for _, r := range h.odd {
			v = append(v, fmt.Sprintf("%s %q: critical section %d wrote as %s token %d at counter %d, and as %s token %d before",
				coord, group, r.OpID, r.Name, r.Token, r.Counter, h.name, h.token))
		}
	}
	over := false // the group is over its limit since the last report
	slotOver := map[string]bool{}
	sweep(order, func(h *coordHold, open []*coordHold) {
		at := h.first
		switch {
		case len(open) > limit && !over:
			over = true
			if coord == Election {
				v = append(v, fmt.Sprintf("election %q: %d leaders at the commit of counter %d: %s", group, len(open), at, describeHolds(open)))
			} else {
				v = append(v, fmt.Sprintf("semaphore %q: %d permits held at the commit of counter %d, over the limit %d: %s", group, len(open), at, limit, describeHolds(open)))
			}
		case len(open) <= limit:
			over = false
		}
		if coord == Election {
			return // its one lock is the group: reported above
		}
		var same []*coordHold
		for _, o := range open {
			if o.name == h.name {
				same = append(same, o)
			}
		}
		switch {
		case len(same) > 1 && !slotOver[h.name]:
			slotOver[h.name] = true
			v = append(v, fmt.Sprintf("semaphore %q: %d permits of one slot at the commit of counter %d: %s", group, len(same), at, describeHolds(same)))
		case len(same) <= 1:
			slotOver[h.name] = false
		}
	})
	// Tokens (terms) increase from hold to hold of one lock.
	last := map[string]*coordHold{}
	for _, h := range order {
		if p, ok := last[h.name]; ok && h.token <= p.token {
			what := "tokens of a slot's permits"
			if coord == Election {
				what = "terms"
			}
			v = append(v, fmt.Sprintf("%s %q: %s after %s: %s must strictly increase", coord, group, h, p, what))
		}
		last[h.name] = h
	}
	return v
}

// holdsOf returns the holds of rows (sorted by counter), in the order of
// their first transactions. A row of a hold's critical section that names
// another lock or token than its first row goes to the hold's odd rows.
func holdsOf(rows []CoordRow) []*coordHold {
	holds := map[int64]*coordHold{}
	var order []*coordHold
	for _, r := range rows {
		h, ok := holds[r.OpID]
		if !ok {
			h = &coordHold{cs: r.OpID, name: r.Name, token: r.Token, client: r.Client, first: r.Counter}
			holds[r.OpID] = h
			order = append(order, h)
		} else if r.Name != h.name || r.Token != h.token {
			h.odd = append(h.odd, r)
		}
		h.last = r.Counter
	}
	return order
}

// sweep calls visit at the first transaction of each hold of order (in
// that order), with the holds whose spans cover that counter, h among
// them. The most holds at any counter are found at one of those: a span
// begins at its first transaction.
func sweep(order []*coordHold, visit func(h *coordHold, open []*coordHold)) {
	var open []*coordHold
	for _, h := range order {
		open = slices.DeleteFunc(open, func(o *coordHold) bool { return o.last < h.first })
		open = append(open, h)
		visit(h, open)
	}
}

// MostHeld returns, for each group of the coordination journal, the most
// holds (leaderships, permits) that its rows show held at one commit: for
// a semaphore, whether the workload reached its limit at all.
func MostHeld(rows []CoordRow) map[string]int {
	byGroup := map[string][]CoordRow{}
	for _, r := range rows {
		byGroup[r.Group] = append(byGroup[r.Group], r)
	}
	most := map[string]int{}
	for g, rs := range byGroup {
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].Counter < rs[j].Counter })
		sweep(holdsOf(rs), func(_ *coordHold, open []*coordHold) { most[g] = max(most[g], len(open)) })
	}
	return most
}

func describeHolds(hs []*coordHold) string {
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.String()
	}
	return strings.Join(s, "; ")
}
