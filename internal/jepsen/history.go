// Package jepsen records and checks the histories of sqldlm's randomized
// fault test (integration_test/jepsen_test.go), in the manner of Jepsen:
// client processes append what they did to JSON-lines files, with
// timestamps from the system-wide monotonic clock; the checkers then judge
// the whole history against the database's own record:
//
//   - CheckLinearizable: porcupine's linearizability check of the lock
//     operations, per name, against a lease-lock model in which any holder
//     may vanish (expire) at any moment;
//   - CheckJournal: the rows fenced transactions wrote, in commit order;
//   - CheckTokens: fencing tokens from the audit log strictly increase;
//   - CheckHolderKnowsFirst: a holder (of a lock, a leadership or a
//     permit) learns it lost it before anyone else is granted it;
//   - CheckElections and CheckSemaphores: the rows the fenced transactions
//     of leaders and permit holders wrote, in commit order: at most one
//     leader per election, at most limit permits per semaphore, at any
//     instant of the database.
//
// Leader elections and semaphores are built on exclusive locks (an
// election's lock, a semaphore's slots), and their operations are recorded
// as lock operations on those names, marked with Event.Coord: every lock
// checker judges them too.
//
// Each returns a list of violations (empty when the history is legal).
package jepsen

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Event types (Event.T).
const (
	Invoke = "invoke" // an operation starts
	OK     = "ok"     // it succeeded
	Fail   = "fail"   // it certainly did not take effect
	Info   = "info"   // its outcome is unknown
	// Lost: a held lock's Done channel closed without a release.
	Lost = "lost"
	// LeaseEnd: a lease ended (testknobs.Knobs.LeaseEnded), with its local deadline.
	LeaseEnd = "lease-end"
	// Killed: the nemesis killed process P (written by the parent).
	Killed = "killed"
	// Count: a process ran Op operations of kind F (written at its exit).
	Count = "count"
)

// Operations (Event.F).
const (
	Acquire    = "acquire"    // Lock
	TryAcquire = "tryacquire" // TryLock
	Upgrade    = "upgrade"
	Downgrade  = "downgrade"
	Fence      = "fence" // Fence and the fenced transaction, up to its commit
	Release    = "release"
)

// Coordination kinds (Event.Coord): what an operation's lock stands for.
// Lock operations have none.
const (
	// Election: Client.Campaign (an Acquire), Leadership.Fence and Resign
	// (a Release), on the election's lock name; the token is the term.
	Election = "election"
	// Semaphore: Semaphore.Acquire and TryAcquire, Permit.Fence and
	// Release, on the lock name of the permit's slot (an acquire's invoke
	// has none: the slot is known once it is granted).
	Semaphore = "semaphore"
)

// Modes (Event.Mode).
const (
	Shared    = "shared"
	Exclusive = "exclusive"
)

// Event is one line of a history file.
type Event struct {
	P    int    `json:"p"`            // process id
	W    int    `json:"w"`            // worker within the process (sequential)
	Op   int64  `json:"op,omitempty"` // operation id, unique within the process
	T    string `json:"t"`            // Invoke, OK, Fail, Info, Lost, LeaseEnd, Killed
	F    string `json:"f,omitempty"`  // the operation
	Name string `json:"name,omitempty"`
	Mode string `json:"mode,omitempty"`
	// Coord and Group: for an election's or a semaphore's operation, the
	// kind (Election, Semaphore) and the election's or semaphore's name.
	Coord string `json:"coord,omitempty"`
	Group string `json:"group,omitempty"`
	// Token: on an acquire's or upgrade's OK, the new token; on other
	// operations (and an upgrade's invoke), the lock's token.
	Token int64 `json:"token,omitempty"`
	Lease int64 `json:"lease,omitempty"`
	// For fences: the critical section (journal op_id) and the transaction's
	// number in it (journal seq).
	CS  int64 `json:"cs,omitempty"`
	Seq int   `json:"seq,omitempty"`
	// On an acquire's or upgrade's OK: the dead holder the grant took over
	// (Lock.Takeover), if any.
	TookLease int64 `json:"took_lease,omitempty"`
	TookToken int64 `json:"took_token,omitempty"`
	// On LeaseEnd: the lease's local trust deadline (monotonic ns).
	Deadline int64  `json:"deadline,omitempty"`
	Err      string `json:"err,omitempty"`
	Mono     int64  `json:"mono"` // CLOCK_MONOTONIC, ns
}

// Mono reads CLOCK_MONOTONIC: one clock for every process of the machine
// (Go's own monotonic readings cannot be compared across processes).
func Mono() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("jepsen: clock_gettime: %v", err))
	}
	return ts.Nano()
}

// Recorder appends events to a history file, one JSON line each, written
// through at once so that a process killed mid-operation leaves every
// invoke it made.
type Recorder struct {
	mu  sync.Mutex
	w   io.Writer
	enc *json.Encoder
	err error
}

// NewRecorder records to w (an *os.File opened for appending, usually).
func NewRecorder(w io.Writer) *Recorder { return &Recorder{w: w, enc: json.NewEncoder(w)} }

// Record stamps e with the monotonic clock (unless it has a time) and
// writes it.
func (r *Recorder) Record(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Mono == 0 {
		e.Mono = Mono()
	}
	if err := r.enc.Encode(e); err != nil && r.err == nil {
		r.err = err
	}
}

// Err returns the first write error.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// ReadFiles reads history files; a truncated last line (a process killed
// while writing it) is skipped.
func ReadFiles(paths ...string) ([]Event, error) {
	var out []Event
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		evs, err := Read(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, evs...)
	}
	return out, nil
}

// Read reads one history file's events.
func Read(r io.Reader) ([]Event, error) {
	var out []Event
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1<<20)
	var bad []byte
	for s.Scan() {
		if bad != nil {
			return nil, fmt.Errorf("bad history line %q", bad)
		}
		var e Event
		if err := json.Unmarshal(s.Bytes(), &e); err != nil {
			bad = append([]byte(nil), s.Bytes()...) // fine only as the last line
			continue
		}
		out = append(out, e)
	}
	return out, s.Err()
}

// Op is an operation: an invoke and its completion.
type Op struct {
	P, W      int
	ID        int64
	F         string
	Name      string
	Mode      string
	Coord     string // Election, Semaphore, or "" (a lock)
	Group     string // the election or semaphore
	Lease     int64
	Token     int64 // the lock's token as the operation began (0 for acquires)
	NewToken  int64 // acquires and upgrades that succeeded: the granted token
	CS        int64
	Seq       int
	Status    string // OK, Fail or Info (Info also for an invoke never completed)
	Err       string
	TookLease int64
	TookToken int64
	Call      int64
	Return    int64 // math.MaxInt64 when the operation never completed
}

// Ops pairs invokes with their completions, in order of invocation. An
// invoke without a completion (its process was killed) is an Info
// operation that returns at +infinity, porcupine's convention.
func Ops(events []Event) []Op {
	type key struct {
		p  int
		op int64
	}
	open := map[key]int{}
	var ops []Op
	for _, e := range events {
		switch e.T {
		case Invoke:
			open[key{e.P, e.Op}] = len(ops)
			ops = append(ops, Op{P: e.P, W: e.W, ID: e.Op, F: e.F, Name: e.Name, Mode: e.Mode, Coord: e.Coord, Group: e.Group, Lease: e.Lease,
				Token: e.Token, CS: e.CS, Seq: e.Seq, Status: Info, Call: e.Mono, Return: math.MaxInt64})
		case OK, Fail, Info:
			i, ok := open[key{e.P, e.Op}]
			if !ok {
				continue
			}
			delete(open, key{e.P, e.Op})
			o := &ops[i]
			o.Status, o.Err, o.Return = e.T, e.Err, e.Mono
			if e.T == OK && (o.F == Acquire || o.F == TryAcquire || o.F == Upgrade) {
				o.NewToken, o.TookLease, o.TookToken = e.Token, e.TookLease, e.TookToken
				if o.Lease == 0 {
					o.Lease = e.Lease
				}
				if e.Mode != "" {
					o.Mode = e.Mode
				}
				if o.Name == "" {
					o.Name = e.Name // a permit's slot
				}
			}
		}
	}
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	return ops
}
