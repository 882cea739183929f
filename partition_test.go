package sqldlm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// settled waits until the partitioners act on one view (the same
// generation), each owns exactly its share of it, and the shares cover
// every partition exactly once; it returns each one's share.
func settled(t testing.TB, ctx context.Context, n int, ps ...*Partitioner) [][]int {
	t.Helper()
	var shares [][]int
	ok := assert.Eventually(t, func() bool {
		shares = shares[:0]
		seen := map[int]int{}
		gens := map[int64]bool{}
		for _, p := range ps {
			for { // drain to the latest change
				select {
				case _, ok := <-p.Changes():
					if ok {
						continue
					}
				default:
				}
				break
			}
			owned := p.Owned()
			v := p.View()
			gens[v.Generation] = true
			if want := p.share(v); !slices.Equal(owned, slices.Sorted(maps.Keys(want))) {
				return false
			}
			shares = append(shares, owned)
			for _, i := range owned {
				seen[i]++
			}
		}
		if len(gens) != 1 || len(seen) != n {
			return false
		}
		for _, k := range seen {
			if k != 1 {
				return false
			}
		}
		return true
	}, 20*time.Second, 10*time.Millisecond, "shares never covered %d partitions exactly once", n)
	if !ok {
		for _, p := range ps {
			v := p.View()
			t.Logf("%s: generation %d, members %v, owns %v, share %v, err %v", p.Membership().ID(), v.Generation,
				memberIDs(v), p.Owned(), slices.Sorted(maps.Keys(p.share(v))), p.Err())
		}
		t.FailNow()
	}
	return shares
}

func TestPartitionAdvisory(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		const n = 64
		var ps []*Partitioner
		for k := range 3 {
			c := b.client(t, Config{Owner: fmt.Sprintf("agent-%d", k), WatchInterval: 20 * time.Millisecond})
			p, err := c.Partition(ctx, "agents", fmt.Sprintf("agent-%d", k), PartitionOptions{Partitions: n})
			require.NoError(t, err)
			t.Cleanup(func() { p.Close(context.Background()) })
			ps = append(ps, p)
		}
		before := settled(t, ctx, n, ps...)
		for k, share := range before {
			require.NotEmpty(t, share, "agent-%d owns nothing", k)
		}
		// Keys: Mine splits any set of keys the same way on every member.
		keys := make([]string, 300)
		for i := range keys {
			keys[i] = fmt.Sprintf("resource-%d", i)
		}
		total := 0
		for _, p := range ps {
			total += len(p.Mine(keys))
		}
		require.Equal(t, len(keys), total)

		require.NoError(t, ps[2].Close(ctx))
		after := settled(t, ctx, n, ps[0], ps[1])
		for k := range 2 {
			for _, i := range before[k] {
				require.Contains(t, after[k], i, "agent-%d lost partition %d although only agent-2 left", k, i)
			}
		}
		require.Equal(t, n, len(after[0])+len(after[1]))
	})
}

func TestPartitionExclusive(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		const n = 16
		admin := b.client(t, Config{Owner: "admin"})
		start := func(k int, cfg Config) *Partitioner {
			cfg.Owner = fmt.Sprintf("agent-%d", k)
			cfg.WatchInterval = 20 * time.Millisecond
			c := b.client(t, cfg)
			p, err := c.Partition(ctx, "agents", cfg.Owner, PartitionOptions{Partitions: n, Exclusive: true})
			require.NoError(t, err)
			t.Cleanup(func() { p.Close(context.Background()) })
			return p
		}
		// holders checks that every partition lock is held by the member
		// that reports owning it.
		holders := func(ps ...*Partitioner) map[int]int64 {
			t.Helper()
			tokens := map[int]int64{}
			infos, err := admin.Locks(ctx, Filter{Prefix: PartitionPrefix + "agents:"})
			require.NoError(t, err)
			held := map[string]string{}
			for _, info := range infos {
				for _, h := range info.Holders {
					if h.Live {
						held[info.Name] = h.Payload
					}
				}
			}
			for _, p := range ps {
				for _, i := range p.Owned() {
					l := p.Lock(i)
					require.NotNil(t, l)
					require.NoError(t, l.Err())
					require.Equal(t, p.Membership().ID(), held[fmt.Sprintf("%sagents:%d", PartitionPrefix, i)])
					tokens[i] = l.Token()
				}
			}
			return tokens
		}
		a, c := start(0, Config{}), start(1, Config{})
		settled(t, ctx, n, a, c)
		before := holders(a, c)
		d, f := b.faulty(t, Config{Owner: "agent-2", WatchInterval: 20 * time.Millisecond, ReapInterval: ReapDisabled})
		pd, err := d.Partition(ctx, "agents", "agent-2", PartitionOptions{Partitions: n, Exclusive: true})
		require.NoError(t, err)
		t.Cleanup(func() { pd.Close(context.Background()) })
		settled(t, ctx, n, a, c, pd)
		during := holders(a, c, pd)
		require.NotEmpty(t, pd.Owned())
		for i, tok := range during {
			if slices.Contains(pd.Owned(), i) {
				require.Greater(t, tok, before[i], "partition %d moved: a new token", i)
			} else {
				require.Equal(t, before[i], tok, "partition %d did not move, yet changed hands", i)
			}
		}
		// agent-2 crashes: the others take its partitions once its lease
		// has expired, and agent-2 learns it lost them first.
		f.failDelete.Store(true)
		f.failRenew.Store(true)
		after := settled(t, ctx, n, a, c)
		require.Equal(t, n, len(after[0])+len(after[1]))
		require.ErrorIs(t, pd.Err(), ErrLost)
		require.Empty(t, pd.Owned())
		holders(a, c)
	})
}

func TestPartitionInvalid(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		if b.kind != "sqlite" {
			t.Skip("input checks: one dialect is enough")
		}
		ctx := testCtx(t)
		c := b.client(t, Config{})
		for _, opts := range []PartitionOptions{
			{Partitions: -1},
			{Partitions: PartitionsMax + 1},
			{Exclusive: true},
			{Partitions: 4, Settle: -time.Second},
		} {
			_, err := c.Partition(ctx, "g", "m", opts)
			require.ErrorIs(t, err, ErrInvalidMember, "%+v", opts)
		}
	})
}
