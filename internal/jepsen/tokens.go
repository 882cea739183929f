package jepsen

import (
	"fmt"
	"math"
)

// AuditRow is a row of sqldlm's audit log (sqldlm.AuditEntry): a change
// to one hold.
type AuditRow struct {
	ID    int64  // the order rows were written
	Event string // grant, upgrade, downgrade, release, takeover, expire, break
	Name  string
	Token int64
	Lease int64
	Mode  string // Shared or Exclusive
	// Detail is the audit row's detail ("lease closed", "abandoned", ...).
	Detail string
	// At is when the row was written, on the history's clock (Mono), or 0.
	At int64
	// P is the process whose client wrote the row's lease, from the owner
	// the database recorded (0 if unknown).
	P int
}

func (a AuditRow) granted() bool { return a.Event == "grant" || a.Event == "upgrade" }

// CheckTokens checks that the tokens of each name's grants strictly
// increase in the order they were written (for one name, that is commit
// order: a grant locks the name's row), so that no token repeats. It also
// checks every grant the history acknowledged is in the log.
func CheckTokens(audit []AuditRow, ops []Op) []string {
	var v []string
	last := map[string]AuditRow{}
	seen := map[string]map[int64]bool{}
	lastID := int64(math.MinInt64)
	for _, g := range audit {
		if !g.granted() {
			continue
		}
		if g.ID <= lastID {
			v = append(v, fmt.Sprintf("tokens: audit rows out of order (id %d after %d)", g.ID, lastID))
		}
		lastID = g.ID
		if p, ok := last[g.Name]; ok && g.Token <= p.Token {
			v = append(v, fmt.Sprintf("tokens %q: grant %d (audit id %d) after grant %d (audit id %d): tokens must strictly increase",
				g.Name, g.Token, g.ID, p.Token, p.ID))
		}
		last[g.Name] = g
		if seen[g.Name] == nil {
			seen[g.Name] = map[int64]bool{}
		}
		seen[g.Name][g.Token] = true
	}
	for _, o := range ops {
		if o.Status == OK && o.NewToken != 0 && !seen[o.Name][o.NewToken] {
			v = append(v, fmt.Sprintf("tokens %q: the acknowledged grant %d (p%d) is not in the audit log", o.Name, o.NewToken, o.P))
		}
	}
	return v
}
