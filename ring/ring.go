// Package ring maps keys to nodes so that every process computes the same
// owner from the same nodes, whatever their order: weighted rendezvous
// hashing (highest random weight, HRW). It is pure: no database, no I/O.
//
// When a node leaves, only its keys move (each to the node that ranked
// second for it); when one joins, only the keys it now ranks first for
// move to it. Shares follow the weights up to sampling noise (at 10 equal
// nodes the busiest holds about 1.01× its share of 200,000 keys). A lookup
// costs one SHA-256 of the key and one 64-bit mix per node: O(N).
//
// # Algorithm hrw-v1
//
// Version returns "hrw-v1"; the algorithm is fixed by that name, and any
// change gets a new one. Processes that share keys must use the same
// version (publish it with the nodes, for example in member metadata):
//
//  1. k = the first 8 bytes of SHA-256(key), big-endian, as a uint64.
//  2. For each node, m = the first 8 bytes of SHA-256(node ID), big-endian.
//  3. x = splitmix64(k XOR m), where splitmix64(z) is
//     z += 0x9e3779b97f4a7c15; z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
//     z = (z ^ (z >> 27)) * 0x94d049bb133111eb; z ^= z >> 31.
//  4. u = (float64(x >> 11) + 0.5) / 2^53, in IEEE 754 double precision
//     with round-to-nearest-even: u lies in (0, 1]. (It rounds to exactly 1
//     only for x >> 11 = 2^53 - 1, one key in 2^53 per node.)
//  5. The node's score is -weight / ln(u), a positive number, or -Inf when
//     u is 1 (that node then ranks last for that key). The owner is the
//     node with the highest score; equal scores go to the smaller node ID
//     (byte order).
//
// The test vectors in ring_test.go pin it.
package ring

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
)

// Version names the algorithm.
const Version = "hrw-v1"

// Node is one owner of keys. Weight scales its share of the keys; a Weight
// that is not a positive finite number counts as 1.
type Node struct {
	ID     string
	Weight float64
}

// Ring is an immutable set of nodes. Its methods are safe for concurrent
// use.
type Ring struct {
	nodes []node // sorted by ID
}

type node struct {
	id     string
	weight float64
	hash   uint64
}

// New returns the ring of nodes. A node ID given more than once counts
// once, with its first weight. The order of nodes does not matter.
func New(nodes []Node) *Ring {
	r := &Ring{nodes: make([]node, 0, len(nodes))}
	seen := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		if seen[n.ID] {
			continue
		}
		seen[n.ID] = true
		w := n.Weight
		if !(w > 0) || math.IsInf(w, 0) {
			w = 1
		}
		r.nodes = append(r.nodes, node{id: n.ID, weight: w, hash: hash64(n.ID)})
	}
	slices.SortFunc(r.nodes, func(a, b node) int { return cmp.Compare(a.id, b.id) })
	return r
}

// Version returns the algorithm's name, "hrw-v1".
func (r *Ring) Version() string { return Version }

// Len returns the number of nodes.
func (r *Ring) Len() int { return len(r.nodes) }

// Nodes returns the nodes, sorted by ID, with their weights as used.
func (r *Ring) Nodes() []Node {
	out := make([]Node, len(r.nodes))
	for i, n := range r.nodes {
		out[i] = Node{ID: n.id, Weight: n.weight}
	}
	return out
}

// Owner returns the ID of the node that owns key, or "" on an empty ring.
func (r *Ring) Owner(key string) string {
	if len(r.nodes) == 0 {
		return ""
	}
	k := hash64(key)
	best, bestScore := 0, r.nodes[0].score(k)
	for i := 1; i < len(r.nodes); i++ {
		// Nodes are sorted by ID, so a tie keeps the smaller ID.
		if s := r.nodes[i].score(k); s > bestScore {
			best, bestScore = i, s
		}
	}
	return r.nodes[best].id
}

// Owners returns the IDs of up to n nodes for key, the owner first, then
// the node that would own key without it, and so on: the replicas of key,
// and the order in which its ownership passes on as nodes leave.
func (r *Ring) Owners(key string, n int) []string {
	n = min(n, len(r.nodes))
	if n <= 0 {
		return nil
	}
	k := hash64(key)
	type scored struct {
		i     int
		score float64
	}
	all := make([]scored, len(r.nodes))
	for i := range r.nodes {
		all[i] = scored{i, r.nodes[i].score(k)}
	}
	slices.SortFunc(all, func(a, b scored) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i) // the smaller ID
	})
	out := make([]string, n)
	for j := range out {
		out[j] = r.nodes[all[j].i].id
	}
	return out
}

// score is the node's HRW score for a key hashed to k.
func (n *node) score(k uint64) float64 {
	u := (float64(splitmix64(k^n.hash)>>11) + 0.5) / (1 << 53)
	return -n.weight / math.Log(u)
}

// hash64 is the first 8 bytes of SHA-256(s), big-endian.
func hash64(s string) uint64 {
	sum := sha256.Sum256([]byte(s))
	return binary.BigEndian.Uint64(sum[:8])
}

// splitmix64 is the finalizer of SplitMix64 (Steele, Lea, Flood 2014).
func splitmix64(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}
