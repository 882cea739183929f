package jepsen

import (
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// lockInput is a porcupine operation's input: an Op without its outcome.
type lockInput struct {
	F     string
	Name  string
	Mode  string // acquires: the mode asked for
	Lease int64
	Token int64 // the lock's token (fence, release, upgrade, downgrade)
	Desc  string
}

// lockOutput is its outcome.
type lockOutput struct {
	Status   string // OK, Fail, Info
	NewToken int64  // acquire and upgrade OK
	Lease    int64  // acquire OK: the lease the grant belongs to
}

// holder is one hold in the model: a grant, identified by its token.
type holder struct {
	Token int64
	Lease int64
	Mode  string
}

// lockState is the model's state for one name: the holds that may still
// exist, and the greatest token granted.
type lockState struct {
	Holders  []holder // sorted by token
	MaxToken int64
}

func (s lockState) find(token, lease int64) int {
	for i, h := range s.Holders {
		if h.Token == token && h.Lease == lease {
			return i
		}
	}
	return -1
}

func (s lockState) with(hs []holder, max int64) lockState {
	sort.Slice(hs, func(i, j int) bool { return hs[i].Token < hs[j].Token })
	return lockState{Holders: hs, MaxToken: max}
}

// step applies one operation with a definite outcome (OK or Fail) and
// returns the possible next states: none if the outcome is impossible.
//
// Expiry is not in the history: any holder may vanish at any moment. The
// model lets holders vanish lazily, at the latest moment that matters: a
// grant removes the holders it conflicts with (they must have expired
// first), and every other holder stays, since a state with more possibly-
// live holders allows everything a state with fewer allows (a hold never
// prevents an operation here; it only enables its own holder's). This is
// the same set of legal histories as "any subset vanishes before each
// step", without enumerating subsets (the unit tests compare the two).
func step(s lockState, in lockInput, out lockOutput) []lockState {
	if out.Status == Fail {
		return []lockState{s} // a refusal, a timeout or ErrLost is always allowed
	}
	switch in.F {
	case Acquire, TryAcquire:
		if out.NewToken <= s.MaxToken {
			return nil
		}
		var keep []holder
		if in.Mode == Shared {
			for _, h := range s.Holders {
				if h.Mode == Shared {
					keep = append(keep, h)
				}
			}
		}
		keep = append(keep, holder{Token: out.NewToken, Lease: out.Lease, Mode: in.Mode})
		return []lockState{s.with(keep, out.NewToken)}
	case Upgrade:
		if s.find(in.Token, in.Lease) < 0 || out.NewToken <= s.MaxToken {
			return nil
		}
		return []lockState{s.with([]holder{{Token: out.NewToken, Lease: in.Lease, Mode: Exclusive}}, out.NewToken)}
	case Downgrade:
		i := s.find(in.Token, in.Lease)
		if i < 0 {
			return nil
		}
		hs := slices.Clone(s.Holders)
		hs[i].Mode = Shared
		return []lockState{s.with(hs, s.MaxToken)}
	case Fence:
		if s.find(in.Token, in.Lease) < 0 {
			return nil
		}
		return []lockState{s}
	case Release:
		i := s.find(in.Token, in.Lease)
		if i < 0 {
			return nil
		}
		return []lockState{s.with(slices.Delete(slices.Clone(s.Holders), i, i+1), s.MaxToken)}
	}
	return nil
}

// stepAny is step for any outcome: Info means either outcome. An acquire or
// upgrade with an unknown outcome has no known token: if it was granted,
// the grant is taken to have vanished at once (which it may), and the
// greatest token is left alone (later grants must still exceed every
// token seen).
func stepAny(s lockState, in lockInput, out lockOutput) []lockState {
	if out.Status != Info {
		return step(s, in, out)
	}
	next := []lockState{s}
	switch in.F {
	case Downgrade, Release:
		next = append(next, step(s, in, lockOutput{Status: OK})...)
	}
	return next
}

func (s lockState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "max %d:", s.MaxToken)
	for _, h := range s.Holders {
		fmt.Fprintf(&b, " %s#%d(lease %d)", h.Mode[:1], h.Token, h.Lease)
	}
	return b.String()
}

func (s lockState) key() string { return s.String() }

// LockModel is the porcupine model of one name of sqldlm, partitioned by
// name.
func LockModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byName := map[string][]porcupine.Operation{}
			var names []string
			for _, o := range history {
				n := o.Input.(lockInput).Name
				if _, ok := byName[n]; !ok {
					names = append(names, n)
				}
				byName[n] = append(byName[n], o)
			}
			sort.Strings(names)
			out := make([][]porcupine.Operation, 0, len(names))
			for _, n := range names {
				out = append(out, byName[n])
			}
			return out
		},
		Init: func() []any { return []any{lockState{}} },
		Step: func(state, input, output any) []any {
			next := stepAny(state.(lockState), input.(lockInput), output.(lockOutput))
			out := make([]any, len(next))
			for i, s := range next {
				out[i] = s
			}
			return out
		},
		Equal: func(a, b any) bool { return a.(lockState).key() == b.(lockState).key() },
		Hash: func(s any) uint64 {
			h := fnv.New64a()
			io.WriteString(h, s.(lockState).key()) // a hash's Write never fails
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(lockInput), output.(lockOutput)
			s := in.Desc
			switch {
			case out.Status == OK && out.NewToken != 0:
				s += fmt.Sprintf(" -> ok #%d", out.NewToken)
			default:
				s += " -> " + out.Status
			}
			return s
		},
		DescribeState: func(s any) string { return s.(lockState).String() },
	}
	return nm.ToModel()
}

// porcupineOps turns Ops into porcupine operations, one client id per
// (process, worker). A semaphore's acquire that was not granted names no
// slot: it is left out (it changes no name's state: step and stepAny keep
// the state for a failed or unknown acquire).
func porcupineOps(ops []Op) []porcupine.Operation {
	type pw struct{ p, w int }
	ids := map[pw]int{}
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		if o.Name == "" {
			continue
		}
		id, ok := ids[pw{o.P, o.W}]
		if !ok {
			id = len(ids)
			ids[pw{o.P, o.W}] = id
		}
		desc := fmt.Sprintf("p%d.w%d %s %s", o.P, o.W, o.F, o.Name)
		switch o.F {
		case Acquire, TryAcquire:
			desc += " " + o.Mode
		case Fence:
			desc += fmt.Sprintf(" #%d cs %d.%d", o.Token, o.CS, o.Seq)
		default:
			desc += fmt.Sprintf(" #%d", o.Token)
		}
		if o.Coord != "" {
			desc += fmt.Sprintf(" [%s %s]", o.Coord, o.Group)
		}
		if o.Err != "" {
			desc += " (" + o.Err + ")"
		}
		out = append(out, porcupine.Operation{
			ClientId: id,
			Input:    lockInput{F: o.F, Name: o.Name, Mode: o.Mode, Lease: o.Lease, Token: o.Token, Desc: desc},
			Output:   lockOutput{Status: o.Status, NewToken: o.NewToken, Lease: o.Lease},
			Call:     o.Call,
			Return:   o.Return,
		})
	}
	return out
}

// CheckLinearizable checks the lock operations of ops with porcupine
// against LockModel, within timeout. An Unknown result (the check timed
// out) is a violation too: inconclusive. On any violation, porcupine's
// interactive HTML visualisation is written to visualizePath (if not "").
func CheckLinearizable(ops []Op, timeout time.Duration, visualizePath string) []string {
	model := LockModel()
	res, info := porcupine.CheckOperationsVerbose(model, porcupineOps(ops), timeout)
	if res == porcupine.Ok {
		return nil
	}
	var v []string
	switch res {
	case porcupine.Illegal:
		v = append(v, "porcupine: the lock history is not linearizable")
	default:
		v = append(v, fmt.Sprintf("porcupine: inconclusive (no answer within %s)", timeout))
	}
	if visualizePath != "" {
		if err := porcupine.VisualizePath(model, info, visualizePath); err != nil {
			v = append(v, fmt.Sprintf("porcupine: writing the visualisation: %v", err))
		} else {
			v = append(v, "porcupine: visualisation in "+visualizePath)
		}
	}
	return v
}
