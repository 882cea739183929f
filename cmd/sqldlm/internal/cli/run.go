package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
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

const runSynopsis = `--dsn URL --lock NAME [--shared] [--ttl 15s] [--wait 30s] [--grace 10s] -- COMMAND [ARGS...]

A distributed flock(1) for cron jobs and scripts: takes the lock, runs
COMMAND while holding it, releases it, and exits with COMMAND's exit code
(128+N if a signal N ended it). COMMAND finds the lock's fencing token in
SQLDLM_TOKEN and its name in SQLDLM_LOCK: pass the token on to systems that
can reject stale writers. SIGINT and SIGTERM are passed on to COMMAND.

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
	shared := fs.Bool("shared", false, "take the lock in shared mode (default exclusive)")
	ttl := fs.Duration("ttl", sqldlm.TTLDefault, "lease time-to-live: how long a crashed run keeps the lock")
	wait := fs.Duration("wait", -1, "how long to wait for the lock: 0 tries once; default: wait until it is free")
	grace := fs.Duration("grace", 10*time.Second, "after SIGTERM on lock loss, wait this long before SIGKILL")
	owner := fs.String("owner", "", "owner shown in sqldlm locks (default host/pid)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	command := fs.Args()
	switch {
	case *name == "":
		return usagef("missing --lock NAME")
	case len(command) == 0:
		return usagef("missing COMMAND: sqldlm run --lock NAME -- COMMAND [ARGS...]")
	case *grace < 0:
		return usagef("--grace must not be negative")
	}
	if err := requireDSN(*dsnURL); err != nil {
		return err
	}
	if err := sqldlm.ValidateName(*name); err != nil {
		return &usageError{err.Error()}
	}
	db, err := openDSN(ctx, *dsnURL)
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
	var l *sqldlm.Lock
	switch {
	case *wait == 0:
		l, err = c.TryLock(ctx, *name, mode)
	case *wait > 0:
		wctx, cancel := context.WithTimeout(ctx, *wait)
		l, err = c.Lock(wctx, *name, mode)
		cancel()
	default:
		l, err = c.Lock(ctx, *name, mode)
	}
	if err != nil {
		if errors.Is(err, sqldlm.ErrLocked) || errors.Is(err, context.DeadlineExceeded) {
			return &exitError{code: ExitNotAcquired, msg: fmt.Sprintf("could not get lock %q: %v", *name, err)}
		}
		return err
	}

	// The command's output is copied by goroutines of os/exec (unless it is
	// a file): serialise it with run's own messages.
	errOut := &lockedWriter{w: s.err}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.in, s.out, errOut
	cmd.Env = append(os.Environ(), "SQLDLM_TOKEN="+strconv.FormatInt(l.Token(), 10), "SQLDLM_LOCK="+*name)
	if err := cmd.Start(); err != nil {
		_ = l.Release(context.WithoutCancel(ctx))
		return fmt.Errorf("start %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	lost := false
	var waitErr error
loop:
	for {
		select {
		case waitErr = <-exited:
			break loop
		case sig := <-signals:
			_ = cmd.Process.Signal(sig)
		case <-l.Done():
			if lost || l.Err() == nil {
				continue
			}
			lost = true
			fmt.Fprintf(errOut, "sqldlm run: lock %q lost (%v): sending SIGTERM to %s\n", *name, l.Err(), command[0])
			_ = cmd.Process.Signal(syscall.SIGTERM)
			go func() {
				t := time.NewTimer(*grace)
				defer t.Stop()
				select {
				case <-t.C:
					_ = cmd.Process.Kill()
				case <-ctx.Done():
				}
			}()
		}
	}
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *ttl)
	relErr := l.Release(relCtx)
	cancel()
	if lost || errors.Is(relErr, sqldlm.ErrLost) {
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
