package jepsen

// Window is a span of the history's clock (Mono), both ends included.
type Window struct{ From, To int64 }

// Undone counts what ForgiveFailoverLoss forgave.
type Undone struct {
	Fences   int // acknowledged fenced transactions missing from the journal
	Grants   int // acknowledged grants and upgrades missing from the audit log
	Releases int // releases of those grants, left out
}

// ForgiveFailoverLoss prepares ops for CheckJournal, CheckElections,
// CheckSemaphores, CheckTokens and CheckReleases after promotions of an asynchronous standby, which may
// undo what the old primary acknowledged and had not shipped. windows are
// the spans in which that can happen: each from the moment the standby
// was last known to have everything the primary had acknowledged, to the
// promotion. An acknowledged fenced transaction missing from the journal,
// or an acknowledged grant or upgrade missing from the audit log, whose
// operation returned inside a window becomes Info (its outcome unknown),
// and every Release of such a grant is left out (its hold went with it).
// Outside the windows nothing changes, so a loss there is still a
// violation.
//
// CheckLinearizable and CheckHolderKnowsFirst take the original ops: a
// lost grant still counts as granted there, so its token must never come
// again and a later conflicting grant needs it to have ended.
//
// coord is the coordination journal, where the fenced transactions of
// leaders and permit holders write (CheckElections, CheckSemaphores).
func ForgiveFailoverLoss(ops []Op, rows []JournalRow, coord []CoordRow, audit []AuditRow, windows []Window) ([]Op, Undone) {
	var u Undone
	if len(windows) == 0 {
		return ops, u
	}
	inWindow := func(t int64) bool {
		for _, w := range windows {
			if w.From <= t && t <= w.To {
				return true
			}
		}
		return false
	}
	written := map[txKey]bool{}
	for _, r := range rows {
		written[txKey{r.OpID, r.Seq}] = true
	}
	for _, r := range coord {
		written[txKey{r.OpID, r.Seq}] = true
	}
	type nameToken struct {
		name  string
		token int64
	}
	granted := map[nameToken]bool{}
	for _, a := range audit {
		if a.granted() {
			granted[nameToken{a.Name, a.Token}] = true
		}
	}
	lost := map[nameToken]bool{}
	out := make([]Op, 0, len(ops))
	for _, o := range ops {
		if o.Status == OK && inWindow(o.Return) {
			switch {
			case o.F == Fence && !written[txKey{o.CS, o.Seq}]:
				o.Status = Info
				u.Fences++
			case o.NewToken != 0 && !granted[nameToken{o.Name, o.NewToken}]:
				lost[nameToken{o.Name, o.NewToken}] = true
				o.Status = Info
				u.Grants++
			}
		}
		out = append(out, o)
	}
	kept := out[:0]
	for _, o := range out {
		if o.F == Release && lost[nameToken{o.Name, o.Token}] {
			u.Releases++
			continue
		}
		kept = append(kept, o)
	}
	return kept, u
}
