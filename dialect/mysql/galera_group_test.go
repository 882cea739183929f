//go:build linux

package mysql_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// leaveRace runs trials in which a Join through joinDB and a Leave of the
// same request through leaveDB start at once, each retried while it fails
// with a retryable error, and returns the number of trials after which the
// member is there all the same: the withdrawn request joined. check reads
// the member row once both returned (a pool with wsrep_sync_wait, so that
// the read sees both commits). Through two Galera nodes the two run
// without seeing each other's row locks: only certification can order
// them, and it does because both write the group's row. (On one server the
// window in which the two could miss each other, without the group row's
// lock, is too narrow to hit.)
func leaveRace(t *testing.T, joinDB, leaveDB, check *sql.DB, trials int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lease := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, joinDB, &dialect.CreateLeaseParams{ID: lease, Owner: "racer", TTL: 5 * time.Minute}))
	retried := func(op func() error) error {
		for {
			if err := op(); !dialect.IsRetryable(err) {
				return err
			}
		}
	}
	joined := 0
	for i := range trials {
		ref := dialect.MemberRef{Group: "race", ID: fmt.Sprintf("m%d", i), LeaseID: lease, RequestID: rand.Int64()}
		var wg sync.WaitGroup
		start := make(chan struct{})
		var joinErr, leaveErr error
		wg.Go(func() {
			<-start
			joinErr = retried(func() error {
				_, err := grouper.Join(ctx, joinDB, &dialect.JoinParams{Group: ref.Group, ID: ref.ID, LeaseID: lease,
					RequestID: ref.RequestID, Weight: 1})
				return err
			})
		})
		wg.Go(func() {
			<-start
			leaveErr = retried(func() error {
				_, err := grouper.Leave(ctx, leaveDB, &ref)
				return err
			})
		})
		close(start)
		wg.Wait()
		require.NoError(t, joinErr, "trial %d: join", i)
		require.NoError(t, leaveErr, "trial %d: leave", i)
		var n int
		require.NoError(t, check.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_members WHERE group_name = ? AND member_id = ?`,
			ref.Group, ref.ID).Scan(&n))
		if n > 0 {
			joined++
			t.Logf("trial %d: the withdrawn request is a member", i)
		}
	}
	t.Logf("%d trials: the withdrawn request joined in %d", trials, joined)
	return joined
}
