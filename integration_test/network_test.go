package integration_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// throughProxy returns a pool on db that reaches the server through a fault
// proxy.
func throughProxy(t *testing.T, db *testdb.DB) (*testdb.DB, *faultproxy.Proxy) {
	t.Helper()
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	p, err := faultproxy.New(u.Host)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	u.Host = p.Addr()
	return testdb.Reopen(t, db.Kind, u.String()), p
}

// A holder cut off from the database learns it lost the lock (Done closes,
// Err is ErrLost) before another client is granted it; when the network
// heals, the buffered renewals revive nothing.
func TestNetworkCutHolderLearnsFirst(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			cut, proxy := throughProxy(t, db)
			ttl := 2 * time.Second
			holderClient, err := sqldlm.New(cut.DB, sqldlm.Config{TTL: ttl, Owner: "cut-off"})
			require.NoError(t, err)
			defer func() {
				proxy.Resume()
				holderClient.Close()
			}()
			other := newClient(t, db, sqldlm.Config{TTL: ttl})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			held, err := holderClient.Lock(ctx, "node/9", sqldlm.Exclusive)
			require.NoError(t, err)
			proxy.Pause()
			cutAt := time.Now()

			got, err := other.Lock(ctx, "node/9", sqldlm.Exclusive)
			require.NoError(t, err)
			grantedAt := time.Now()
			select {
			case <-held.Done():
			default:
				t.Fatal("the other client was granted the lock before the cut-off holder learned it lost it")
			}
			require.ErrorIs(t, held.Err(), sqldlm.ErrLost)
			t.Logf("%s: cut to takeover %s", kind, grantedAt.Sub(cutAt).Round(time.Millisecond))

			proxy.Resume()
			tx, err := cut.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.ErrorIs(t, held.Fence(ctx, tx), sqldlm.ErrLost)
			require.NoError(t, tx.Rollback())
			require.NoError(t, got.Err(), "the new holder keeps the lock after the heal")
		})
	}
}
