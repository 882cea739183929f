package jepsen

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// After a promotion of an asynchronous standby, what the old primary
// acknowledged inside the window is forgiven when missing, what it
// acknowledged before the window is not, and the token of a lost grant
// still may not come again.
func TestForgiveFailoverLoss(t *testing.T) {
	fence := func(cs int64, token int64, ret int64) Op {
		o := op(0, Fence, "a", 1, token, OK, ret-1, ret)
		o.CS, o.Seq = cs, 1
		return o
	}
	// Token 5 was granted and fenced before the window (its audit row
	// and journal row replicated); token 6 and its fenced write were
	// acknowledged inside it and lost, and 6's release with them.
	ops := []Op{
		grant(0, "a", Exclusive, 1, 5, 0, 10),
		fence(1, 5, 20),
		op(0, Release, "a", 1, 5, OK, 21, 22),
		grant(0, "a", Exclusive, 1, 6, 100, 110),
		fence(2, 6, 120),
		op(0, Release, "a", 1, 6, OK, 121, 122),
	}
	rows := []JournalRow{{OpID: 1, Seq: 1, Name: "a", Token: 5, Lease: 1, Client: "p1", Counter: 1, Mode: Exclusive}}
	cells := map[string]int64{"a": 1}
	audit := []AuditRow{{ID: 1, Event: "grant", Name: "a", Token: 5, Lease: 1, Mode: Exclusive}, {ID: 2, Event: "release", Name: "a", Token: 5, Lease: 1}}

	require.NotEmpty(t, CheckJournal(ops, rows, cells), "unforgiven, the lost fenced write is a violation")
	require.NotEmpty(t, CheckTokens(audit, ops), "unforgiven, the lost grant is a violation")

	adj, u := ForgiveFailoverLoss(ops, rows, nil, audit, []Window{{From: 50, To: 200}})
	require.Equal(t, Undone{Fences: 1, Grants: 1, Releases: 1}, u)
	require.Empty(t, CheckJournal(adj, rows, cells))
	require.Empty(t, CheckTokens(audit, adj))
	require.Empty(t, CheckReleases(adj, audit, 1000, 100))

	// A window that ends before the losses forgives nothing.
	adj, u = ForgiveFailoverLoss(ops, rows, nil, audit, []Window{{From: 50, To: 105}})
	require.Equal(t, Undone{}, u)
	require.NotEmpty(t, CheckJournal(adj, rows, cells))
	require.NotEmpty(t, CheckTokens(audit, adj))

	// A leader's fenced write acknowledged in the window and found in the
	// coordination journal is not lost: it stays acknowledged.
	lead := fence(3, 9, 130)
	lead.Name, lead.Coord, lead.Group = "sqldlm:election:e", Election, "e"
	coord := []CoordRow{{OpID: 3, Seq: 1, Coord: Election, Group: "e", Name: lead.Name, Token: 9, Lease: 1, Counter: 1}}
	adj, u = ForgiveFailoverLoss(append(ops[:len(ops):len(ops)], lead), rows, coord, audit, []Window{{From: 50, To: 200}})
	require.Equal(t, Undone{Fences: 1, Grants: 1, Releases: 1}, u)
	require.Equal(t, OK, adj[len(adj)-1].Status)

	// The new primary handing out token 6 again is still caught: the
	// model takes the original ops.
	again := append(ops[:len(ops):len(ops)], grant(1, "a", Exclusive, 2, 6, 300, 310))
	require.NotEmpty(t, CheckLinearizable(again, 0, ""), "a repeated token after a lost grant")
	require.Empty(t, CheckLinearizable(append(ops[:len(ops):len(ops)], grant(1, "a", Exclusive, 2, 1<<32+7, 300, 310)), 0, ""))
}
