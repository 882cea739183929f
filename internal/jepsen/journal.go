package jepsen

import (
	"fmt"
	"sort"
)

// JournalRow is a row of the journal table, written by a fenced
// transaction: an exclusive holder's transaction read the name's cell,
// wrote counter+1 and inserted the row with that counter; a shared holder's
// only read the cell and inserted the row with the counter it read.
type JournalRow struct {
	OpID    int64 // the critical section (Op.CS)
	Seq     int   // the transaction's number in it
	Name    string
	Token   int64
	Lease   int64
	Client  string
	Counter int64
	Mode    string
}

// CheckJournal checks the journal against the history and the final cells
// (name -> counter):
//
//   - the exclusive rows of a name, ordered by the counter they wrote
//     (commit order: each read the counter its predecessor wrote), wrote
//     1, 2, ... n with no repeat (a repeat is a lost update), and the
//     cell's final counter is n;
//   - tokens never decrease along that order, and a shared row's token lies
//     between the tokens of the rows that wrote the counter it read and
//     the next one;
//   - the exclusive rows of one critical section are contiguous, in order;
//   - every fenced transaction the history acknowledged (OK) has its row,
//     none that failed has one, and no row lacks an operation.
//
// The fenced transactions of leaders and permit holders (Op.Coord) write
// to another table, judged by CheckElections and CheckSemaphores.
func CheckJournal(ops []Op, rows []JournalRow, cells map[string]int64) []string {
	fences := map[txKey]Op{}
	for _, o := range ops {
		if o.F == Fence && o.Coord == "" {
			fences[txKey{o.CS, o.Seq}] = o
		}
	}
	keys := make([]txKey, len(rows))
	byName := map[string][]JournalRow{}
	for i, r := range rows {
		keys[i] = txKey{r.OpID, r.Seq}
		byName[r.Name] = append(byName[r.Name], r)
	}
	v := checkWritten("journal", fences, keys, func(i int) string { return fmt.Sprintf("%+v", rows[i]) })
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	for n := range cells {
		if _, ok := byName[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		v = append(v, checkName(name, byName[name], cells[name])...)
	}
	return v
}

func checkName(name string, rows []JournalRow, final int64) []string {
	var v []string
	var excl, shared []JournalRow
	for _, r := range rows {
		if r.Mode == Exclusive {
			excl = append(excl, r)
		} else {
			shared = append(shared, r)
		}
	}
	sort.SliceStable(excl, func(i, j int) bool { return excl[i].Counter < excl[j].Counter })
	if int64(len(excl)) != final {
		v = append(v, fmt.Sprintf("journal %q: %d exclusive rows but the final counter is %d (lost or phantom updates)", name, len(excl), final))
	}
	byCounter := map[int64]JournalRow{}
	for i, r := range excl {
		if r.Counter != int64(i+1) {
			v = append(v, fmt.Sprintf("journal %q: row %d of commit order wrote counter %d (two writers read the same value: a lost update)", name, i+1, r.Counter))
		}
		if _, dup := byCounter[r.Counter]; !dup {
			byCounter[r.Counter] = r
		}
		if i > 0 {
			prev := excl[i-1]
			if r.Token < prev.Token {
				v = append(v, fmt.Sprintf("journal %q: token went down from %d (counter %d) to %d (counter %d)", name, prev.Token, prev.Counter, r.Token, r.Counter))
			}
			if r.OpID == prev.OpID && r.Seq <= prev.Seq {
				v = append(v, fmt.Sprintf("journal %q: critical section %d wrote transaction %d after %d", name, r.OpID, r.Seq, prev.Seq))
			}
		}
	}
	// Contiguity: once a critical section's run ends, it never reappears.
	ended := map[int64]bool{}
	for i, r := range excl {
		if ended[r.OpID] {
			v = append(v, fmt.Sprintf("journal %q: critical section %d (token %d) resumed at counter %d after another writer: its critical section was not exclusive", name, r.OpID, r.Token, r.Counter))
		}
		if i+1 < len(excl) && excl[i+1].OpID != r.OpID {
			ended[r.OpID] = true
		}
	}
	for _, r := range shared {
		if w, ok := byCounter[r.Counter]; ok && r.Token < w.Token {
			v = append(v, fmt.Sprintf("journal %q: shared holder with token %d read counter %d, written later under token %d", name, r.Token, r.Counter, w.Token))
		}
		if w, ok := byCounter[r.Counter+1]; ok && r.Token > w.Token {
			v = append(v, fmt.Sprintf("journal %q: shared holder with token %d read counter %d while an exclusive holder with the older token %d held it", name, r.Token, r.Counter, w.Token))
		}
	}
	return v
}

// txKey names a fenced transaction: its critical section (Op.CS) and its
// number in it (Op.Seq).
type txKey struct {
	cs  int64
	seq int
}

// checkWritten checks the rows of a journal table, keys[i] naming the
// fenced transaction that wrote row i, against the fenced transactions of
// the history (fences): a transaction writes one row at most, one that
// failed none, one acknowledged (OK) one, and every row has its
// operation. row describes row i.
func checkWritten(table string, fences map[txKey]Op, keys []txKey, row func(i int) string) []string {
	var v []string
	present := map[txKey]bool{}
	for i, k := range keys {
		if present[k] {
			v = append(v, fmt.Sprintf("%s: critical section %d transaction %d has two rows", table, k.cs, k.seq))
		}
		present[k] = true
		o, ok := fences[k]
		switch {
		case !ok:
			v = append(v, fmt.Sprintf("%s: row %s was written by no recorded operation", table, row(i)))
		case o.Status == Fail:
			v = append(v, fmt.Sprintf("%s: row %s is present although its transaction failed (%s)", table, row(i), o.Err))
		}
	}
	for k, o := range fences {
		if o.Status == OK && !present[k] {
			v = append(v, fmt.Sprintf("%s: acknowledged fenced transaction %d.%d on %q (token %d) is missing", table, k.cs, k.seq, o.Name, o.Token))
		}
	}
	return v
}
