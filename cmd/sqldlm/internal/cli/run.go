package cli

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sqldlm/sqldlm"
)

// Exit codes of `sqldlm run` besides the command's own.
const (
	// ExitNotAcquired: the lock could not be had within --wait (or at once
	// with --wait 0). EX_TEMPFAIL: try again later.
	ExitNotAcquired = 75
	// ExitLockLost: the lock was lost while the command ran; the command was
	// sent SIGTERM, then SIGKILL after --grace.
	ExitLockLost = 76
)

const runSynopsis = `--dsn URL (--lock NAME [--shared] | --leader ELECTION [--value V] | --semaphore NAME:N) [--ttl 15s] [--wait 30s] [--grace 10s] -- COMMAND [ARGS...]

A distributed flock(1) for cron jobs and scripts: takes the lock, runs
COMMAND while holding it, releases it, and exits with COMMAND's exit code
(128+N if a signal N ended it). COMMAND finds the lock's fencing token in
SQLDLM_TOKEN and its name in SQLDLM_LOCK: pass the token on to systems that
can reject stale writers. SIGINT and SIGTERM are passed on to COMMAND.

With --leader ELECTION, run campaigns in ELECTION (the same election as
Client.Campaign and Client.Lead) and runs COMMAND only while elected: the
singleton cron. The term is in SQLDLM_TOKEN, the election in
SQLDLM_ELECTION; --value is proclaimed with the leadership (sqldlm leader
shows it).

With --semaphore NAME:N, run takes one of the N permits of semaphore NAME
(the same semaphore as Client.Semaphore(NAME, N); every user must give the
same N) and runs COMMAND while holding it: at most N commands run at once.
The permit's token is in SQLDLM_TOKEN, its slot in SQLDLM_SLOT.

If the lock is lost while COMMAND runs (the database unreachable for longer
than --ttl, or an operator's sqldlm break), COMMAND is sent SIGTERM, then
SIGKILL after --grace.

Exit codes:
  COMMAND's own  the lock was held throughout
  1              sqldlm failed (database error, schema not migrated)
  2              bad command line
  75             the lock could not be had within --wait (0: try once)
  76             the lock was lost while COMMAND ran`

func runRun(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("run", runSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	name := fs.String("lock", "", "name of the lock to hold")
	election := fs.String("leader", "", "run only while elected leader of this election")
	value := fs.String("value", "", "with --leader: the value to proclaim")
	semaphore := fs.String("semaphore", "", "NAME:N: run while holding one of the N permits of semaphore NAME")
	shared := fs.Bool("shared", false, "take the lock in shared mode (default exclusive)")
	ttl := durationFlag(fs, "ttl", sqldlm.TTLDefault, "lease time-to-live: how long a crashed run keeps the lock")
	wait := durationFlag(fs, "wait", -1, "how long to wait for the lock: 0 tries once; default: wait until it is free")
	grace := durationFlag(fs, "grace", 10*time.Second, "after SIGTERM on lock loss, wait this long before SIGKILL")
	owner := fs.String("owner", "", "owner shown in sqldlm locks (default host/pid)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	command := fs.Args()
	// Flags after the command are the command's: "sqldlm run CMD --lock X"
	// would run CMD with --lock X under no lock name. Say so.
	if !slices.Contains(args[:len(args)-len(command)], "--") {
		for _, a := range command {
			if f := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-"); strings.HasPrefix(a, "-") && fs.Lookup(f) != nil {
				return usagef("%s comes after the command %q: put run's flags first and the command after --: "+
					"sqldlm run --lock NAME [flags] -- COMMAND [ARGS...]", a, command[0])
			}
		}
	}
	switch {
	case *ttl != 0 && *ttl < sqldlm.TTLMin:
		return usagef("--ttl %s: the lease time-to-live must be at least %s (default %s)", *ttl, sqldlm.TTLMin, sqldlm.TTLDefault)
	case btoi(*name != "")+btoi(*election != "")+btoi(*semaphore != "") > 1:
		return usagef("--lock, --leader and --semaphore exclude each other: give one")
	case *semaphore != "" && *shared:
		return usagef("--shared does not apply to --semaphore")
	case *election != "" && *shared:
		return usagef("--shared does not apply to --leader: a leader is exclusive")
	case *value != "" && *election == "":
		return usagef("--value needs --leader")
	case *name == "" && *election == "" && *semaphore == "":
		return usagef("missing --lock NAME (or --leader ELECTION, or --semaphore NAME:N)")
	case len(command) == 0:
		return usagef("missing COMMAND: sqldlm run --lock NAME -- COMMAND [ARGS...]")
	case *grace < 0:
		return usagef("--grace must not be negative")
	}
	if err := requireDSN(*dsnURL); err != nil {
		return err
	}
	var sem *semSpec
	if *semaphore != "" {
		var err error
		if sem, err = parseSemaphore(*semaphore); err != nil {
			return err
		}
	}
	env := []string{"SQLDLM_LOCK=" + *name}
	if sem != nil {
		*name = sqldlm.SemaphorePrefix + sem.name
		env = []string{"SQLDLM_SEMAPHORE=" + sem.name}
	}
	if *election != "" {
		// An election is the exclusive lock ElectionPrefix+ELECTION, its
		// value the hold's payload (as Client.Campaign does).
		*name = sqldlm.ElectionPrefix + *election
		env = []string{"SQLDLM_LOCK=" + *name, "SQLDLM_ELECTION=" + *election}
	}
	if err := sqldlm.ValidateName(*name); err != nil {
		return &usageError{err.Error()}
	}
	if err := sqldlm.ValidatePayload(*value); err != nil {
		return usagef("--value: %v", err)
	}
	db, err := openDSN(ctx, *dsnURL, false)
	if err != nil {
		return err
	}
	defer db.Close()
	c, err := sqldlm.New(db, sqldlm.Config{TTL: *ttl, Owner: *owner, ReapInterval: sqldlm.ReapDisabled})
	if err != nil {
		return err
	}
	defer c.Close()

	mode := sqldlm.Exclusive
	if *shared {
		mode = sqldlm.Shared
	}
	// Try once; if that fails and --wait allows, say by whom the lock is
	// held (when it is), then wait: Lock also waits through a database that
	// does not answer yet.
	tryOnce, waitFor := func(ctx context.Context) (held, error) {
		return c.TryLock(ctx, *name, mode, sqldlm.WithPayload(*value))
	}, func(ctx context.Context) (held, error) {
		return c.Lock(ctx, *name, mode, sqldlm.WithPayload(*value))
	}
	if sem != nil {
		sm := c.Semaphore(sem.name, sem.limit)
		tryOnce = func(ctx context.Context) (held, error) { return sm.TryAcquire(ctx) }
		waitFor = func(ctx context.Context) (held, error) { return sm.Acquire(ctx) }
	}
	l, err := tryOnce(ctx)
	var locked *sqldlm.LockedError
	if err != nil && *wait != 0 && ctx.Err() == nil {
		if errors.As(err, &locked) {
			fmt.Fprintf(s.err, "sqldlm run: waiting for lock %q: %s\n", *name, heldBy(ctx, db, locked))
		}
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if *wait > 0 {
			wctx, cancel = context.WithTimeout(ctx, *wait)
		}
		l, err = waitFor(wctx)
		cancel()
	}
	if err != nil {
		switch {
		case errors.As(err, &locked) && *wait > 0 && ctx.Err() == nil:
			return &exitError{code: ExitNotAcquired, msg: fmt.Sprintf("could not get lock %q within --wait %s: %s", *name, *wait, heldBy(ctx, db, locked))}
		case errors.As(err, &locked) && *wait == 0:
			return &exitError{code: ExitNotAcquired, msg: fmt.Sprintf("could not get lock %q: %s", *name, heldBy(ctx, db, locked))}
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			return &exitError{code: ExitNotAcquired, msg: fmt.Sprintf("could not get lock %q within --wait %s: %v", *name, *wait, err)}
		}
		return err
	}
	if p, ok := l.(*sqldlm.Permit); ok {
		env = append(env, "SQLDLM_SLOT="+strconv.Itoa(p.Slot()))
	}

	// On lock loss, lost is cancelled: exec sends the command SIGTERM
	// (Cancel) and SIGKILL --grace later if it has not exited (WaitDelay;
	// at least 1ns, since 0 would mean never: --grace 0 kills at once).
	lost, loseLock := context.WithCancel(context.Background())
	defer loseLock()
	cmd := exec.CommandContext(lost, command[0], command[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = max(*grace, time.Nanosecond)

	// The command's stderr is a pipe of run's own, copied into errOut, so
	// that run's messages and the command's output are written one at a
	// time; so is its stdout unless that is a file. Being files to exec,
	// they are not the I/O pipes WaitDelay would close --grace after the
	// command exits: a descendant that keeps them open keeps run waiting.
	errOut := &lockedWriter{w: s.err}
	stderr, stderrCopied, err := pipeTo(errOut)
	if err != nil {
		return err
	}
	stdout, stdoutCopied := s.out, func() {}
	if _, isFile := s.out.(*os.File); s.out != nil && !isFile {
		if stdout, stdoutCopied, err = pipeTo(s.out); err != nil {
			stderr.Close()
			stderrCopied()
			return err
		}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.in, stdout, stderr
	cmd.Env = append(append(os.Environ(), "SQLDLM_TOKEN="+strconv.FormatInt(l.Token(), 10)), env...)
	startErr := cmd.Start()
	// The command has its own copies of the write ends (or never will).
	stderr.Close()
	if stdout != s.out {
		stdout.(*os.File).Close()
	}
	if startErr != nil {
		stderrCopied()
		stdoutCopied()
		_ = l.Release(context.WithoutCancel(ctx))
		return fmt.Errorf("start %s: %w", command[0], startErr)
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		stderrCopied()
		stdoutCopied()
		exited <- err
	}()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	lockDone := l.Done()
	var waitErr error
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case sig := <-signals:
			_ = cmd.Process.Signal(sig)
		case <-lockDone:
			lockDone = nil
			if l.Err() == nil {
				continue
			}
			fmt.Fprintf(errOut, "sqldlm run: lock %q lost (%v): sending SIGTERM to %s\n", *name, l.Err(), command[0])
			loseLock()
		}
	}
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *ttl)
	relErr := l.Release(relCtx)
	cancel()
	if lost.Err() != nil || errors.Is(relErr, sqldlm.ErrLost) {
		return &exitError{code: ExitLockLost, msg: fmt.Sprintf("lock %q was lost while %s ran", *name, command[0])}
	}
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) {
		code := exitErr.ExitCode()
		if st, ok := exitErr.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			code = 128 + int(st.Signal())
		}
		return &exitError{code: code}
	}
	if waitErr != nil {
		return waitErr
	}
	return nil
}

// held is what run holds while the command runs: a *sqldlm.Lock (--lock,
// --leader) or a *sqldlm.Permit (--semaphore).
type held interface {
	Token() int64
	Done() <-chan struct{}
	Err() error
	Release(ctx context.Context) error
}

// semSpec is --semaphore NAME:N.
type semSpec struct {
	name  string
	limit int
}

func parseSemaphore(v string) (*semSpec, error) {
	i := strings.LastIndexByte(v, ':')
	if i <= 0 {
		return nil, usagef("--semaphore %q: give NAME:N, for example --semaphore ipmi:8", v)
	}
	n, err := strconv.Atoi(v[i+1:])
	if err != nil || n < 1 || n > sqldlm.SemaphoreMaxLimit {
		return nil, usagef("--semaphore %q: N must be a whole number from 1 to %d", v, sqldlm.SemaphoreMaxLimit)
	}
	return &semSpec{name: v[:i], limit: n}, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pipeTo returns the write end of a pipe whose read end is copied to w
// until EOF, and a function that waits for that copy and closes the read
// end. The caller closes the write end.
func pipeTo(w io.Writer) (*os.File, func(), error) {
	r, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(w, r)
	}()
	return pw, func() { <-copied; r.Close() }, nil
}

// heldBy describes who holds name, as the operator's tools show it: the
// holder, its mode, for how long it has held the lock, its token and when
// its lease expires, read with sqldlm.Admin; locked's own description when
// that read fails or finds no live holder (only waiters in the way, or the
// holder just left).
func heldBy(ctx context.Context, db *sql.DB, locked *sqldlm.LockedError) string {
	fallback := strings.TrimPrefix(locked.Error(), "sqldlm: ")
	admin, err := sqldlm.NewAdmin(db, sqldlm.AdminConfig{})
	if err != nil {
		return fallback
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	states, err := admin.Locks(rctx, sqldlm.Filter{Prefix: locked.Name})
	if err != nil {
		return fallback
	}
	for _, st := range states {
		if st.Name != locked.Name {
			continue
		}
		for _, h := range st.Holders {
			if h.Live {
				return fmt.Sprintf("held %s by %q for %s (token %d, lease %d expires in %s unless renewed; %d waiter(s) queued)",
					modeName(h.Mode), h.Owner, age(h.HeldFor), h.Token, h.LeaseID, age(h.ExpiresIn), len(st.Waiters))
			}
		}
	}
	return fallback
}
