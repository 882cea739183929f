package jepsen

import (
	"fmt"
	"time"
)

// CheckReleases checks that a Release frees the name of its hold (issue 13,
// defects 2 and 3: a hold left behind on a live lease outlives its Release
// for as long as the client runs). For every Release operation that
// returned (whatever it returned) before the time before, the hold it
// released (its name and token) must have ended in the audit log (released,
// taken over, expired, deleted with its lease, or replaced by an upgrade)
// no later than bound after
// the Release returned: at once when the database answered, or once the
// lease expired and was reaped when it could not be reached.
func CheckReleases(ops []Op, audit []AuditRow, before int64, bound time.Duration) []string {
	type nameToken struct {
		name  string
		token int64
	}
	ended := map[nameToken]AuditRow{}
	for _, a := range audit {
		switch a.Event {
		case "release", "takeover", "expire":
			k := nameToken{a.Name, a.Token}
			if _, ok := ended[k]; !ok {
				ended[k] = a
			}
		case "upgrade":
			// The shared hold an upgrade replaced ended with it.
			var from int64
			if _, err := fmt.Sscanf(a.Detail, "from token %d", &from); err == nil {
				k := nameToken{a.Name, from}
				if _, ok := ended[k]; !ok {
					ended[k] = a
				}
			}
		}
	}
	var v []string
	for _, o := range ops {
		if o.F != Release || o.Return == 0 || o.Return > before || o.Token == 0 {
			continue
		}
		a, ok := ended[nameToken{o.Name, o.Token}]
		switch {
		case !ok:
			v = append(v, fmt.Sprintf("release %q token %d (p%d, %s%s) returned, and the hold never ended", o.Name, o.Token, o.P, o.Status, errSuffix(o.Err)))
		case a.At != 0 && a.At > o.Return+int64(bound):
			v = append(v, fmt.Sprintf("release %q token %d (p%d, %s%s) returned %s before the hold ended (%s %q), more than %s",
				o.Name, o.Token, o.P, o.Status, errSuffix(o.Err), time.Duration(a.At-o.Return).Round(time.Millisecond), a.Event, a.Detail, bound))
		}
	}
	return v
}

func errSuffix(err string) string {
	if err == "" {
		return ""
	}
	return ": " + err
}

// CheckGhosts checks that no hold outlives its request unknown to every
// caller (issue 13, defect 2: a statement given up by its caller commits a
// grant after the client withdrew the request, and the hold stays under the
// client's live lease). Every grant in the audit log written before the
// time before, whose token no operation acknowledged (an acquire or upgrade
// that returned it), must have ended (released, withdrawn, taken over,
// expired, replaced by an upgrade) within bound of its grant: a withdrawal,
// or the expiry and reaping of a lease whose client was cut off or killed,
// ends it within that time.
func CheckGhosts(ops []Op, audit []AuditRow, before int64, bound time.Duration) []string {
	type nameToken struct {
		name  string
		token int64
	}
	acked := map[nameToken]bool{}
	for _, o := range ops {
		if o.Status == OK && o.NewToken != 0 {
			acked[nameToken{o.Name, o.NewToken}] = true
		}
	}
	ended := map[nameToken]AuditRow{}
	for _, a := range audit {
		k := nameToken{a.Name, a.Token}
		switch a.Event {
		case "release", "takeover", "expire":
		case "upgrade":
			var from int64
			if _, err := fmt.Sscanf(a.Detail, "from token %d", &from); err != nil {
				continue
			}
			k = nameToken{a.Name, from}
		default:
			continue
		}
		if _, ok := ended[k]; !ok {
			ended[k] = a
		}
	}
	var v []string
	for _, g := range audit {
		if !g.granted() || g.At == 0 || g.At > before || acked[nameToken{g.Name, g.Token}] {
			continue
		}
		e, ok := ended[nameToken{g.Name, g.Token}]
		switch {
		case !ok:
			v = append(v, fmt.Sprintf("ghost %q: grant %d (lease %d), acknowledged to no caller, never ended", g.Name, g.Token, g.Lease))
		case e.At != 0 && e.At-g.At > int64(bound):
			v = append(v, fmt.Sprintf("ghost %q: grant %d (lease %d), acknowledged to no caller, lasted %s (until %s %q), more than %s",
				g.Name, g.Token, g.Lease, time.Duration(e.At-g.At).Round(time.Millisecond), e.Event, e.Detail, bound))
		}
	}
	return v
}
