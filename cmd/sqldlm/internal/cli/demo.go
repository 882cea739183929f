package cli

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/migrations"
)

const demoSynopsis = `[flags]

Runs on an SQLite file in a temporary folder, removed afterwards. Several
worker processes contend for a few resources in shared and exclusive mode,
writing under the lock with Fence; one of them is killed with SIGKILL while
it holds a lock, which another worker takes over by itself once the dead
holder's lease expires. It ends with a summary line.`

// The demo's resources, lease TTL and workers.
var demoResources = []string{"volume/1", "volume/2", "node/7"}

const (
	demoTTL     = 2 * time.Second
	demoWorkers = 3
	demoRun     = 9 * time.Second
	victimName  = "volume/1"
)

func runDemo(ctx context.Context, args []string, s streams) error {
	stdout, stderr := s.out, s.err
	fs := newFlagSet("demo", demoSynopsis, stderr)
	keep := fs.Bool("keep", false, "keep the temporary folder and print its path")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "sqldlm-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintf(stdout, "keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	dsnURL := "sqlite://" + filepath.ToSlash(filepath.Join(dir, "locks.db"))
	db, err := openDSN(ctx, dsnURL, true)
	if err != nil {
		return err
	}
	defer db.Close()
	d, err := sqldlm.DetectDialect(db)
	if err != nil {
		return err
	}
	if _, err := migrations.Up(ctx, db, d); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE demo_journal (name TEXT NOT NULL, token INTEGER NOT NULL, worker TEXT NOT NULL, entered INTEGER NOT NULL, mode TEXT NOT NULL)`); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "demo: %d worker processes, resources %s, lease TTL %s, database %s\n",
		demoWorkers, strings.Join(demoResources, ", "), demoTTL, filepath.Join(dir, "locks.db"))

	self, err := os.Executable()
	if err != nil {
		return err
	}
	start := time.Now()
	elapsed := func() string { return fmt.Sprintf("%5.2fs", time.Since(start).Seconds()) }
	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		fmt.Fprintf(stdout, elapsed()+"  "+format+"\n", a...)
		out.Unlock()
	}

	type event struct {
		worker, verb, name string
		token              int64
	}
	childErr := &lockedWriter{w: stderr}
	events := make(chan event, 64)
	procs := make([]*exec.Cmd, demoWorkers)
	var readers sync.WaitGroup
	for i := range procs {
		cmd := exec.CommandContext(ctx, self, "demo-worker", "--dsn="+dsnURL, "--id="+strconv.Itoa(i),
			"--run="+demoRun.String(), "--victim="+strconv.FormatBool(i == 0))
		cmd.Stderr = childErr
		pipe, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		procs[i] = cmd
		readers.Go(func() {
			s := bufio.NewScanner(pipe)
			for s.Scan() {
				f := strings.Fields(s.Text())
				if len(f) < 3 {
					continue
				}
				tok, _ := strconv.ParseInt(strings.TrimPrefix(f[len(f)-1], "token="), 10, 64)
				events <- event{worker: fmt.Sprintf("worker-%d", i), verb: f[0], name: f[1], token: tok}
			}
		})
	}
	go func() {
		readers.Wait()
		close(events)
	}()

	var killedAt time.Time
	var victimToken int64
	takeover := time.Duration(0)
	grants := map[string]int{}
	for ev := range events {
		switch ev.verb {
		case "shared", "exclusive":
			grants[ev.verb]++
			say("%-9s %-9s %-8s token=%d", ev.worker, ev.verb, ev.name, ev.token)
			if !killedAt.IsZero() && takeover == 0 && ev.name == victimName {
				takeover = time.Since(killedAt)
				say("%-9s took over %s from the killed holder after %s, by itself (token %d > %d)",
					ev.worker, victimName, takeover.Round(time.Millisecond), ev.token, victimToken)
			}
		case "holding": // the victim holds victimName and waits to be killed
			say("%-9s exclusive %-8s token=%d  <- about to be killed while holding it", ev.worker, ev.name, ev.token)
			_ = procs[0].Process.Kill()
			killedAt, victimToken = time.Now(), ev.token
			say("demo      SIGKILL %s (pid %d): its lease is no longer renewed and expires within %s",
				ev.worker, procs[0].Process.Pid, demoTTL)
		case "error":
			say("%-9s error: %s", ev.worker, ev.name)
		}
	}
	for _, p := range procs {
		_ = p.Wait()
	}

	overlaps, err := demoOverlaps(ctx, db)
	if err != nil {
		return err
	}
	took := "was not taken over"
	if takeover > 0 {
		took = fmt.Sprintf("was taken over %s after the kill", takeover.Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "summary: %d workers, %d grants (%d exclusive, %d shared), %d overlapping exclusive sections, killed holder's lock %s (TTL %s), %.1fs\n",
		demoWorkers, grants["exclusive"]+grants["shared"], grants["exclusive"], grants["shared"], overlaps, took, demoTTL, time.Since(start).Seconds())
	if overlaps > 0 {
		return errors.New("mutual exclusion was violated")
	}
	if takeover == 0 {
		return errors.New("the killed holder's lock was not taken over")
	}
	return nil
}

// demoOverlaps counts pairs of journal entries of one resource, at least
// one exclusive, written in the opposite order of their grants: the holder
// granted first wrote after the other was granted, so their sections
// overlapped. Fencing makes that impossible.
func demoOverlaps(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM demo_journal a JOIN demo_journal b
		ON a.name = b.name AND a.rowid < b.rowid AND b.token < a.token AND 'exclusive' IN (a.mode, b.mode)`).Scan(&n)
	return n, err
}

// runDemoWorker is one demo worker process (a hidden command).
func runDemoWorker(ctx context.Context, args []string, s streams) error {
	stdout, stderr := s.out, s.err
	fs := newFlagSet("demo-worker", "(internal)", stderr)
	dsnURL := fs.String("dsn", "", "")
	id := fs.Int("id", 0, "")
	run := durationFlag(fs, "run", demoRun, "")
	victim := fs.Bool("victim", false, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	db, err := openDSN(ctx, *dsnURL, true)
	if err != nil {
		return err
	}
	defer db.Close()
	c, err := sqldlm.New(db, sqldlm.Config{Owner: fmt.Sprintf("worker-%d/%d", *id, os.Getpid()), TTL: demoTTL})
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(*run)
	for i := 0; time.Now().Before(deadline); i++ {
		name := demoResources[rand.IntN(len(demoResources))]
		mode := sqldlm.Exclusive
		if rand.IntN(10) < 3 {
			mode = sqldlm.Shared
		}
		if *victim && i == 4 {
			name, mode = victimName, sqldlm.Exclusive
		}
		lctx, cancel := context.WithTimeout(ctx, time.Until(deadline))
		l, err := c.Lock(lctx, name, mode)
		cancel()
		if err != nil {
			break
		}
		fmt.Fprintf(stdout, "%s %s token=%d\n", mode, name, l.Token())
		if err := demoWrite(ctx, db, l, *id); err != nil {
			fmt.Fprintf(stdout, "error %s\n", strings.ReplaceAll(err.Error(), " ", "_"))
		}
		if *victim && i == 4 {
			fmt.Fprintf(stdout, "holding %s token=%d\n", name, l.Token())
			<-ctx.Done() // the demo kills this process now
			return nil
		}
		time.Sleep(time.Duration(100+rand.IntN(250)) * time.Millisecond) // the work done under the lock
		_ = l.Release(ctx)
		time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
	}
	return nil
}

// demoWrite records the critical section in the journal, fenced by l.
func demoWrite(ctx context.Context, db *sql.DB, l *sqldlm.Lock, id int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO demo_journal (name, token, worker, entered, mode) VALUES (?, ?, ?, ?, ?)`,
		l.Name(), l.Token(), strconv.Itoa(id), time.Now().UnixMicro(), l.Mode().String()); err != nil {
		return err
	}
	return tx.Commit()
}

// lockedWriter serialises writes from several child processes' pipes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
