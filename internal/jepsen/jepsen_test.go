package jepsen

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// op builds an operation of a hand-made history: worker w of process 1.
func op(w int, f, name string, lease, token int64, status string, call, ret int64) Op {
	return Op{P: 1, W: w, F: f, Name: name, Mode: Exclusive, Lease: lease, Token: token, Status: status, Call: call, Return: ret}
}

func grant(w int, name, mode string, lease, token int64, call, ret int64) Op {
	o := op(w, Acquire, name, lease, 0, OK, call, ret)
	o.Mode, o.NewToken = mode, token
	return o
}

func TestRecorderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	r := NewRecorder(&buf)
	r.Record(Event{P: 1, W: 0, Op: 1, T: Invoke, F: Acquire, Name: "a", Mode: Exclusive})
	r.Record(Event{P: 1, W: 0, Op: 1, T: OK, F: Acquire, Name: "a", Token: 7, Lease: 9, TookLease: 3, TookToken: 5})
	r.Record(Event{P: 1, W: 1, Op: 2, T: Invoke, F: Fence, Name: "a", Token: 7, Lease: 9, CS: 1, Seq: 1})
	require.NoError(t, r.Err())
	buf.WriteString(`{"p":1,"w":1,"op":3,"t":"inv`) // a process killed while writing
	evs, err := Read(&buf)
	require.NoError(t, err)
	require.Len(t, evs, 3)
	ops := Ops(evs)
	require.Len(t, ops, 2)
	require.Equal(t, OK, ops[0].Status)
	require.EqualValues(t, 7, ops[0].NewToken)
	require.EqualValues(t, 3, ops[0].TookLease)
	require.Equal(t, Info, ops[1].Status, "an invoke without completion is info")
	require.EqualValues(t, math.MaxInt64, ops[1].Return, "and returns at +infinity")
	require.Greater(t, evs[0].Mono, int64(0))

	_, err = Read(strings.NewReader("garbage\n{\"p\":1,\"t\":\"ok\",\"mono\":1}\n"))
	require.Error(t, err, "only the last line may be torn")
}

func TestLinearizable(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name  string
		ops   []Op
		legal bool
	}{
		{"exclusive handover", []Op{
			grant(0, "a", Exclusive, 1, 1, 0, 10),
			op(0, Fence, "a", 1, 1, OK, 11, 20),
			op(0, Release, "a", 1, 1, OK, 21, 30),
			grant(1, "b", Exclusive, 2, 1, 0, 5), // another name
			grant(1, "a", Exclusive, 2, 2, 25, 40),
			op(1, Fence, "a", 2, 2, OK, 41, 50),
		}, true},
		{"takeover after expiry: the old holder's fence fails", []Op{
			grant(0, "a", Exclusive, 1, 1, 0, 10),
			grant(1, "a", Exclusive, 2, 2, 20, 30),
			op(0, Fence, "a", 1, 1, Fail, 40, 50),
			op(0, Release, "a", 1, 1, Fail, 51, 60),
		}, true},
		{"fence concurrent with the takeover may come first", []Op{
			grant(0, "a", Exclusive, 1, 1, 0, 10),
			op(0, Fence, "a", 1, 1, OK, 15, 35),
			grant(1, "a", Exclusive, 2, 2, 20, 30),
		}, true},
		{"shared holders together, then an exclusive", []Op{
			grant(0, "a", Shared, 1, 1, 0, 10),
			grant(1, "a", Shared, 2, 2, 5, 15),
			op(0, Fence, "a", 1, 1, OK, 16, 20),
			op(1, Fence, "a", 2, 2, OK, 16, 20),
			op(0, Release, "a", 1, 1, OK, 21, 25),
			op(1, Upgrade, "a", 2, 2, OK, 21, 30),
			op(1, Fence, "a", 2, 3, OK, 31, 35),
			op(1, Downgrade, "a", 2, 3, OK, 36, 40),
			grant(2, "a", Shared, 3, 4, 41, 45),
			op(1, Fence, "a", 2, 3, OK, 46, 50),
		}, true},
		{"unknown outcomes and a killed process", []Op{
			op(0, Acquire, "a", 1, 0, Info, 0, math.MaxInt64),
			grant(1, "a", Exclusive, 2, 5, 20, 30),
			op(1, Release, "a", 2, 5, Info, 31, 40),
			grant(2, "a", Exclusive, 3, 6, 35, 50),
		}, true},
		{"the old holder's fence succeeds after the takeover returned", []Op{
			grant(0, "a", Exclusive, 1, 1, 0, 10),
			grant(1, "a", Exclusive, 2, 2, 20, 30),
			op(0, Fence, "a", 1, 1, OK, 40, 50),
		}, false},
		{"a token repeats", []Op{
			grant(0, "a", Exclusive, 1, 3, 0, 10),
			op(0, Release, "a", 1, 3, OK, 11, 20),
			grant(1, "a", Exclusive, 2, 3, 30, 40),
		}, false},
		{"a fence by a lease that holds nothing", []Op{
			grant(0, "a", Exclusive, 1, 1, 0, 10),
			op(1, Fence, "a", 2, 1, OK, 20, 30),
		}, false},
		{"a release after the holder's upgrade replaced its token", []Op{
			grant(0, "a", Shared, 1, 1, 0, 10),
			op(0, Upgrade, "a", 1, 1, OK, 11, 20),
			op(0, Release, "a", 1, 1, OK, 21, 30),
		}, false},
		{"a shared holder's fence after an exclusive grant", []Op{
			grant(0, "a", Shared, 1, 1, 0, 10),
			grant(1, "a", Exclusive, 2, 2, 20, 30),
			op(0, Fence, "a", 1, 1, OK, 40, 50),
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := range c.ops {
				if c.ops[i].Upgrade() {
					c.ops[i].NewToken = c.ops[i].Token + 1
				}
			}
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".html")
			v := CheckLinearizable(c.ops, 10*time.Second, path)
			if c.legal {
				require.Empty(t, v)
				return
			}
			require.NotEmpty(t, v)
			require.Contains(t, v[0], "not linearizable")
			html, err := os.ReadFile(path)
			require.NoError(t, err, "the visualisation is written")
			require.Contains(t, string(html), "<html")
		})
	}
}

// Upgrade reports whether o is a successful upgrade (the test gives it the
// next token).
func (o Op) Upgrade() bool { return o.F == Upgrade && o.Status == OK && o.NewToken == 0 }

// literalStep is the model as specified, by brute force: before each step
// any subset of the holders vanishes (expires); then a grant needs every
// remaining holder compatible, and a fence, release, upgrade or downgrade
// needs its own hold to remain.
func literalStep(s lockState, in lockInput, out lockOutput) []lockState {
	if out.Status == Info {
		next := literalStep(s, in, lockOutput{Status: Fail})
		if in.F == Downgrade || in.F == Release {
			next = append(next, literalStep(s, in, lockOutput{Status: OK})...)
		}
		return next
	}
	var next []lockState
	for mask := 0; mask < 1<<len(s.Holders); mask++ {
		var hs []holder
		for i, h := range s.Holders {
			if mask&(1<<i) == 0 {
				hs = append(hs, h)
			}
		}
		cur := lockState{Holders: hs, MaxToken: s.MaxToken}
		if out.Status == Fail {
			next = append(next, cur)
			continue
		}
		switch in.F {
		case Acquire, TryAcquire:
			ok := out.NewToken > cur.MaxToken
			for _, h := range hs {
				ok = ok && in.Mode == Shared && h.Mode == Shared
			}
			if ok {
				next = append(next, cur.with(append(hs, holder{Token: out.NewToken, Lease: out.Lease, Mode: in.Mode}), out.NewToken))
			}
		case Upgrade:
			if cur.find(in.Token, in.Lease) >= 0 && len(hs) == 1 && out.NewToken > cur.MaxToken {
				next = append(next, cur.with([]holder{{Token: out.NewToken, Lease: in.Lease, Mode: Exclusive}}, out.NewToken))
			}
		default:
			if cur.find(in.Token, in.Lease) >= 0 {
				next = append(next, step(cur, in, out)...)
			}
		}
	}
	return next
}

// The lazy model (holders vanish only when a grant needs them gone) judges
// random small histories exactly as the literal one does.
func TestLazyVanishingMatchesLiteralModel(t *testing.T) {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{lockState{}} },
		Step: func(state, input, output any) []any {
			var out []any
			for _, s := range literalStep(state.(lockState), input.(lockInput), output.(lockOutput)) {
				out = append(out, s)
			}
			return out
		},
		Equal: func(a, b any) bool { return a.(lockState).key() == b.(lockState).key() },
	}
	literal := nm.ToModel()
	lazy := LockModel()
	rng := rand.New(rand.NewPCG(1, 2))
	legal, illegal := 0, 0
	for range 3000 {
		hist := randomHistory(rng)
		a := porcupine.CheckOperations(literal, hist)
		b := porcupine.CheckOperations(lazy, hist)
		require.Equal(t, a, b, "history %+v", hist)
		if a {
			legal++
		} else {
			illegal++
		}
	}
	t.Logf("%d legal, %d illegal random histories", legal, illegal)
	require.Greater(t, legal, 100)
	require.Greater(t, illegal, 100)
}

// randomHistory makes up to 7 operations of 3 workers on one name, with
// overlapping intervals and plausible tokens.
func randomHistory(rng *rand.Rand) []porcupine.Operation {
	var hist []porcupine.Operation
	type held struct{ lease, token int64 }
	var holds []held
	token := int64(0)
	for i := range 2 + rng.IntN(6) {
		w := rng.IntN(3)
		call := int64(i*10 + rng.IntN(15))
		ret := call + 1 + int64(rng.IntN(15))
		status := []string{OK, OK, OK, Fail, Info}[rng.IntN(5)]
		in := lockInput{Name: "a", Lease: int64(w + 1)}
		out := lockOutput{Status: status, Lease: in.Lease}
		switch k := rng.IntN(6); {
		case k < 2 || len(holds) == 0:
			in.F = Acquire
			in.Mode = []string{Shared, Exclusive}[rng.IntN(2)]
			token += int64(rng.IntN(3)) // sometimes a repeat
			out.NewToken = token
			if status == OK {
				holds = append(holds, held{in.Lease, token})
			}
		default:
			h := holds[rng.IntN(len(holds))]
			in.Lease, out.Lease, in.Token = h.lease, h.lease, h.token
			in.F = []string{Fence, Release, Upgrade, Downgrade}[k-2]
			if in.F == Upgrade {
				token++
				out.NewToken = token
			}
		}
		hist = append(hist, porcupine.Operation{ClientId: w, Input: in, Output: out, Call: call, Return: ret})
	}
	return hist
}

func TestJournal(t *testing.T) {
	fence := func(cs int64, seq int, status string) Op {
		return Op{F: Fence, Name: "a", CS: cs, Seq: seq, Status: status}
	}
	row := func(cs int64, seq int, token, counter int64, mode string) JournalRow {
		return JournalRow{OpID: cs, Seq: seq, Name: "a", Token: token, Counter: counter, Mode: mode}
	}
	ops := []Op{fence(1, 1, OK), fence(1, 2, OK), fence(2, 1, Info), fence(3, 1, OK), fence(3, 2, Fail), fence(4, 1, OK)}
	legal := []JournalRow{row(1, 1, 5, 1, Exclusive), row(1, 2, 5, 2, Exclusive), row(2, 1, 6, 3, Exclusive),
		row(4, 1, 7, 3, Shared), row(3, 1, 8, 4, Exclusive)}
	require.Empty(t, CheckJournal(ops, legal, map[string]int64{"a": 4}))

	cases := map[string]struct {
		rows  []JournalRow
		final int64
		want  string
	}{
		"lost update": {[]JournalRow{row(1, 1, 5, 1, Exclusive), row(1, 2, 5, 2, Exclusive), row(3, 1, 8, 2, Exclusive), row(4, 1, 9, 2, Shared)},
			2, "lost update"},
		"interleaved critical sections": {[]JournalRow{row(1, 1, 5, 1, Exclusive), row(3, 1, 5, 2, Exclusive), row(1, 2, 5, 3, Exclusive), row(4, 1, 9, 3, Shared)},
			3, "was not exclusive"},
		"token goes down": {[]JournalRow{row(1, 1, 5, 1, Exclusive), row(1, 2, 5, 2, Exclusive), row(3, 1, 4, 3, Exclusive), row(4, 1, 9, 3, Shared)},
			3, "token went down"},
		"acknowledged transaction missing": {[]JournalRow{row(1, 1, 5, 1, Exclusive), row(3, 1, 8, 2, Exclusive), row(4, 1, 9, 2, Shared)},
			2, "is missing"},
		"failed transaction present": {append(slicesClone(legal), row(3, 2, 8, 5, Exclusive)), 5, "although its transaction failed"},
		"final counter off":          {legal, 5, "final counter is 5"},
		"shared read under an older exclusive": {[]JournalRow{row(1, 1, 5, 1, Exclusive), row(1, 2, 5, 2, Exclusive), row(3, 1, 8, 3, Exclusive), row(4, 1, 7, 3, Shared)},
			3, "shared holder with token 7"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			v := CheckJournal(ops, c.rows, map[string]int64{"a": c.final})
			require.NotEmpty(t, v)
			require.Contains(t, strings.Join(v, "\n"), c.want)
		})
	}
}

func slicesClone(r []JournalRow) []JournalRow { return append([]JournalRow(nil), r...) }

func TestTokens(t *testing.T) {
	ops := []Op{grant(0, "a", Exclusive, 1, 3, 0, 1), grant(0, "b", Exclusive, 1, 4, 0, 1)}
	g := func(id int64, name string, token int64) AuditRow {
		return AuditRow{ID: id, Event: "grant", Name: name, Token: token, Mode: Exclusive}
	}
	legal := []AuditRow{g(1, "a", 1), g(2, "b", 2), {ID: 3, Event: "release", Name: "a", Token: 1}, g(4, "a", 3), g(5, "b", 4)}
	require.Empty(t, CheckTokens(legal, ops))
	repeat := []AuditRow{g(1, "a", 3), g(2, "b", 4), g(3, "a", 3)}
	require.Contains(t, strings.Join(CheckTokens(repeat, ops), "\n"), "strictly increase")
	require.Contains(t, strings.Join(CheckTokens(legal[:2], ops), "\n"), "not in the audit log")
}

func TestHolderKnowsFirst(t *testing.T) {
	// Lease 1 (process 1) held a, lease 3 (process 2, killed) held b; both
	// holds were ended by others: a's taken over by a grant, b's reaped.
	ops := []Op{grant(0, "a", Exclusive, 1, 1, 0, 10), grant(1, "a", Exclusive, 2, 2, 100, 200),
		grant(1, "b", Exclusive, 2, 4, 100, 200)}
	ops = append(ops, grant(0, "b", Exclusive, 3, 3, 0, 10))
	ops[3].P = 2
	audit := []AuditRow{
		{ID: 1, Event: "grant", Name: "a", Token: 1, Lease: 1, Mode: Exclusive},
		{ID: 2, Event: "grant", Name: "b", Token: 3, Lease: 3, Mode: Exclusive},
		{ID: 3, Event: "takeover", Name: "a", Token: 1, Lease: 1, Mode: Exclusive},
		{ID: 4, Event: "grant", Name: "a", Token: 2, Lease: 2, Mode: Exclusive},
		{ID: 5, Event: "expire", Name: "b", Token: 3, Lease: 3, Mode: Exclusive},
		{ID: 6, Event: "grant", Name: "b", Token: 4, Lease: 2, Mode: Exclusive},
	}

	legal := []Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 300}, {T: Killed, P: 2, Mono: 120}}
	v, n := CheckHolderKnowsFirst(legal, ops, audit)
	require.Empty(t, v)
	require.Equal(t, Handovers{Locks: 2}, n)
	// The client ended the lease before its deadline: that is when it knew.
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 900, Mono: 180}, {T: Killed, P: 2, Mono: 120}}, ops, audit)
	require.Empty(t, v)
	// A release is not a handover to check.
	released := append([]AuditRow(nil), audit...)
	released[2].Event = "release"
	v, n = CheckHolderKnowsFirst([]Event{{T: Killed, P: 2, Mono: 120}}, ops, released)
	require.Empty(t, v)
	// A lease no recorded operation names (its process was killed with its
	// only operation in flight) is attributed by the owner the audit log
	// recorded: killed, it could not learn; unknown, it is a violation.
	unnamed := append([]Op(nil), ops[:3]...) // lease 3's grant was never recorded
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 300}, {T: Killed, P: 2, Mono: 120}}, unnamed, audit)
	require.Len(t, v, 1)
	require.Contains(t, v[0], "unknown to the history")
	owned := append([]AuditRow(nil), audit...)
	owned[1].P, owned[4].P = 2, 2
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 300}, {T: Killed, P: 2, Mono: 120}}, unnamed, owned)
	require.Empty(t, v)
	require.Equal(t, Handovers{Locks: 1}, n)

	late := []Event{{T: LeaseEnd, Lease: 1, Deadline: 250, Mono: 300}, {T: Killed, P: 2, Mono: 120}}
	v, _ = CheckHolderKnowsFirst(late, ops, audit)
	require.Len(t, v, 1)
	require.Contains(t, v[0], "returned 50ns before the holder of lease 1")
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 300}}, ops, audit)
	require.Len(t, v, 1)
	require.Contains(t, v[0], "never learned")
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 300}, {T: Killed, P: 2, Mono: 250}}, ops, audit)
	require.Len(t, v, 1, "killed after the reaped hold's successor returned")
}

// A deposed leader, and the holder of a lost permit, must know before the
// election's next leader, or the slot's next permit, is granted: the
// holder checker judges them as the exclusive locks they are.
func TestHolderKnowsFirstCoordination(t *testing.T) {
	const e, slot = "sqldlm:election:e", "sqldlm:semaphore:s#1"
	coord := func(o Op, kind, group string) Op {
		o.Coord, o.Group = kind, group
		return o
	}
	// Lease 1 led e (term 1) and held s's slot 1 (token 2); lease 2 was
	// elected (term 3) and took the slot (token 4) once both had expired.
	ops := []Op{
		coord(grant(0, e, Exclusive, 1, 1, 0, 10), Election, "e"),
		coord(grant(1, slot, Exclusive, 1, 2, 0, 10), Semaphore, "s"),
		coord(grant(2, e, Exclusive, 2, 3, 100, 200), Election, "e"),
		coord(grant(3, slot, Exclusive, 2, 4, 100, 300), Semaphore, "s"),
	}
	audit := []AuditRow{
		{ID: 1, Event: "grant", Name: e, Token: 1, Lease: 1, Mode: Exclusive},
		{ID: 2, Event: "grant", Name: slot, Token: 2, Lease: 1, Mode: Exclusive},
		{ID: 3, Event: "takeover", Name: e, Token: 1, Lease: 1, Mode: Exclusive},
		{ID: 4, Event: "grant", Name: e, Token: 3, Lease: 2, Mode: Exclusive},
		{ID: 5, Event: "expire", Name: slot, Token: 2, Lease: 1, Mode: Exclusive},
		{ID: 6, Event: "grant", Name: slot, Token: 4, Lease: 2, Mode: Exclusive},
	}
	v, n := CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 150, Mono: 400}}, ops, audit)
	require.Empty(t, v)
	require.Equal(t, Handovers{Leaderships: 1, Permits: 1}, n)
	// Lease 1 trusted itself until 250: the new leader was elected (at
	// 200) while the deposed one still believed it led; the permit's slot
	// was granted again (at 300) after it knew.
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 250, Mono: 400}}, ops, audit)
	require.Len(t, v, 1)
	require.Contains(t, v[0], `holder knows first "sqldlm:election:e": grant 3 (p1) returned 50ns before the holder of lease 1`)
	v, _ = CheckHolderKnowsFirst([]Event{{T: LeaseEnd, Lease: 1, Deadline: 350, Mono: 400}}, ops, audit)
	require.Len(t, v, 2, "the permit's holder too")
}

// A check that cannot finish in time is a violation (inconclusive), not a
// pass, and leaves the visualisation too.
func TestLinearizableInconclusive(t *testing.T) {
	// 30 concurrent fences by the holder and one by a lease that never held
	// the name: to find the history illegal, porcupine must try every
	// subset of the 30 before the impossible one, about 2^30 states.
	ops := []Op{grant(0, "a", Exclusive, 1, 1, 0, 1)}
	for w := range 30 {
		ops = append(ops, op(w+1, Fence, "a", 1, 1, OK, 10, 100))
	}
	ops = append(ops, op(31, Fence, "a", 2, 1, OK, 10, 100))
	path := filepath.Join(t.TempDir(), "inconclusive.html")
	v := CheckLinearizable(ops, 100*time.Millisecond, path)
	require.NotEmpty(t, v)
	require.Contains(t, v[0], "inconclusive")
	_, err := os.Stat(path)
	require.NoError(t, err, "the visualisation is written")
}

// CheckReleases flags a Release whose hold outlived it by more than the
// bound (or never ended), and accepts one ended in time, whatever the
// Release returned.
func TestCheckReleases(t *testing.T) {
	s := int64(time.Second)
	ops := []Op{
		{P: 1, F: Release, Name: "a", Token: 1, Status: OK, Return: 10 * s},
		{P: 1, F: Release, Name: "a", Token: 2, Status: Fail, Err: "lock lost", Return: 20 * s},
		{P: 2, F: Release, Name: "b", Token: 3, Status: OK, Return: 30 * s},
		{P: 2, F: Release, Name: "b", Token: 4, Status: OK, Return: 90 * s}, // after before: not judged
		{P: 3, F: Release, Name: "c", Token: 5, Status: Fail, Return: 40 * s},
	}
	audit := []AuditRow{
		{Event: "release", Name: "a", Token: 1, At: 10*s + 1},
		{Event: "release", Name: "a", Token: 2, Detail: "lease closed", At: 80 * s},
		{Event: "upgrade", Name: "c", Token: 6, Detail: "from token 5", At: 39 * s}, // ended before its Release
	}
	v := CheckReleases(ops, audit, 60*s, 12*time.Second)
	if len(v) != 2 {
		t.Fatalf("want 2 violations (token 2 ended 60s after its Release, token 3 never), got %q", v)
	}
}

// CheckGhosts flags a grant no caller was told of that lasted longer than
// the bound, and accepts an acknowledged one or one withdrawn in time.
func TestCheckGhosts(t *testing.T) {
	s := int64(time.Second)
	ops := []Op{{P: 1, F: Acquire, Name: "a", Status: OK, NewToken: 1}}
	audit := []AuditRow{
		{Event: "grant", Name: "a", Token: 1, At: 1 * s}, // acknowledged
		{Event: "grant", Name: "a", Token: 2, At: 2 * s}, // withdrawn at once
		{Event: "release", Name: "a", Token: 2, Detail: "abandoned", At: 3 * s},
		{Event: "grant", Name: "a", Token: 3, At: 4 * s}, // a ghost until its client closed
		{Event: "release", Name: "a", Token: 3, Detail: "lease closed", At: 60 * s},
		{Event: "grant", Name: "b", Token: 4, At: 5 * s},  // never ended
		{Event: "grant", Name: "b", Token: 5, At: 90 * s}, // after before: not judged
	}
	v := CheckGhosts(ops, audit, 70*s, 12*time.Second)
	if len(v) != 2 {
		t.Fatalf("want 2 violations (tokens 3 and 4), got %q", v)
	}
}
