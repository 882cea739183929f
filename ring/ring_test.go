package ring

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

func equalNodes(n int) []Node {
	out := make([]Node, n)
	for i := range out {
		out[i] = Node{ID: fmt.Sprintf("conductor-%d", i), Weight: 1}
	}
	return out
}

func keys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%08x-%d", i*2654435761, i)
	}
	return out
}

// The building blocks match their published definitions: SHA-256 of ""
// begins e3b0c44298fc1c14, and SplitMix64's first output from state 0 is
// e220a8397b1dcdaf.
func TestPrimitives(t *testing.T) {
	require.Equal(t, uint64(0xe3b0c44298fc1c14), hash64(""))
	require.Equal(t, uint64(0xe220a8397b1dcdaf), splitmix64(0))
}

// reference computes the owner exactly as the package comment words it,
// step by step, for comparison with Owner.
func reference(nodes []Node, key string) string {
	kSum := sha256.Sum256([]byte(key))
	k := binary.BigEndian.Uint64(kSum[:8])
	best, bestScore := "", math.Inf(-1)
	seen := map[string]bool{}
	for _, n := range nodes {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		mSum := sha256.Sum256([]byte(n.ID))
		z := k ^ binary.BigEndian.Uint64(mSum[:8])
		z += 0x9e3779b97f4a7c15
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		u := (float64(z>>11) + 0.5) / math.Pow(2, 53)
		w := n.Weight
		if !(w > 0) || math.IsInf(w, 0) {
			w = 1
		}
		s := -w / math.Log(u)
		if s > bestScore || (s == bestScore && n.ID < best) {
			best, bestScore = n.ID, s
		}
	}
	return best
}

func TestOwnerIsTheDocumentedAlgorithm(t *testing.T) {
	nodes := []Node{{"c", 1}, {"a", 2.5}, {"b", 0}, {"d", math.Inf(1)}, {"a", 9}, {"e", 0.3}}
	r := New(nodes)
	for _, k := range keys(20000) {
		require.Equal(t, reference(nodes, k), r.Owner(k), k)
	}
}

// Test vectors: hrw-v1 must give these answers forever (a change of
// algorithm is a new Version). They were computed by the implementation
// that TestOwnerIsTheDocumentedAlgorithm checks against the written steps.
func TestVectors(t *testing.T) {
	r := New([]Node{{"conductor-1", 1}, {"conductor-2", 1}, {"conductor-3", 2}})
	for key, want := range map[string][]string{
		"":                                     {"conductor-2", "conductor-1", "conductor-3"},
		"node-1":                               {"conductor-1", "conductor-3", "conductor-2"},
		"node-2":                               {"conductor-3", "conductor-1", "conductor-2"},
		"node-3":                               {"conductor-1", "conductor-2", "conductor-3"},
		"5e5a7c8e-2c62-4a4f-9d3b-1b8f3f1e9a11": {"conductor-3", "conductor-1", "conductor-2"},
		"ipmi:rack1/42":                        {"conductor-1", "conductor-3", "conductor-2"},
	} {
		require.Equal(t, want, r.Owners(key, 3), "Owners(%q, 3)", key)
		require.Equal(t, want[0], r.Owner(key), "Owner(%q)", key)
	}
	require.Equal(t, "hrw-v1", r.Version())
}

// The same nodes in any order, repeated or not, give the same ring.
func TestOrderDoesNotMatter(t *testing.T) {
	nodes := equalNodes(12)
	nodes[3].Weight = 3
	a := New(nodes)
	shuffled := append([]Node(nil), nodes...)
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	b := New(append(shuffled, Node{ID: nodes[0].ID, Weight: 50})) // a repeat counts once, with its first weight
	require.Equal(t, a.Nodes(), b.Nodes())
	for _, k := range keys(5000) {
		require.Equal(t, a.Owner(k), b.Owner(k))
		require.Equal(t, a.Owners(k, 4), b.Owners(k, 4))
	}
}

// Ten equal nodes: the busiest holds at most 1.10× its share (DESIGN's
// bound; HRW's imbalance is sampling noise).
func TestBalance(t *testing.T) {
	const n, nKeys = 10, 200_000
	r := New(equalNodes(n))
	count := map[string]int{}
	for _, k := range keys(nKeys) {
		count[r.Owner(k)]++
	}
	require.Len(t, count, n)
	most := 0
	for _, c := range count {
		most = max(most, c)
	}
	ratio := float64(most) * n / nKeys
	t.Logf("busiest node: %.3f× its share", ratio)
	require.LessOrEqual(t, ratio, 1.10)
}

// Weights 1:2:3 get 1/6, 2/6, 3/6 of the keys.
func TestWeights(t *testing.T) {
	const nKeys = 200_000
	r := New([]Node{{"a", 1}, {"b", 2}, {"c", 3}})
	count := map[string]int{}
	for _, k := range keys(nKeys) {
		count[r.Owner(k)]++
	}
	for id, want := range map[string]float64{"a": 1.0 / 6, "b": 2.0 / 6, "c": 3.0 / 6} {
		require.InDelta(t, want, float64(count[id])/nKeys, 0.01, id)
	}
}

// A node's leave moves only its keys, each to the node ranked second for
// it; a join moves keys only to the new node.
func TestMovement(t *testing.T) {
	nodes := equalNodes(10)
	before := New(nodes)
	after := New(append(append([]Node(nil), nodes[:4]...), nodes[5:]...)) // conductor-4 leaves
	moved := 0
	for _, k := range keys(50_000) {
		was, is := before.Owner(k), after.Owner(k)
		if was == "conductor-4" {
			moved++
			require.Equal(t, before.Owners(k, 2)[1], is, "a departed node's key goes to its second choice")
		} else {
			require.Equal(t, was, is, "a key of a node that stayed did not move")
		}
	}
	t.Logf("leave moved %.4f of the keys (ideal 0.1)", float64(moved)/50_000)

	joined := New(append(nodes, Node{ID: "conductor-new", Weight: 1}))
	for _, k := range keys(50_000) {
		if was, is := before.Owner(k), joined.Owner(k); is != was {
			require.Equal(t, "conductor-new", is, "a join moves keys only to the new node")
		}
	}
}

func TestOwners(t *testing.T) {
	r := New(equalNodes(5))
	for _, k := range keys(1000) {
		o := r.Owners(k, 3)
		require.Len(t, o, 3)
		require.Equal(t, r.Owner(k), o[0])
		require.NotEqual(t, o[0], o[1])
		require.NotEqual(t, o[1], o[2])
		require.NotEqual(t, o[0], o[2])
	}
	require.Len(t, r.Owners("x", 99), 5)
	require.Nil(t, r.Owners("x", 0))
	require.Equal(t, "", New(nil).Owner("x"))
	require.Nil(t, New(nil).Owners("x", 2))
}

func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			r := New(equalNodes(n))
			ks := keys(1024)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				_ = r.Owner(ks[i%len(ks)])
			}
		})
	}
}
