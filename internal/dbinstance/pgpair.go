//go:build linux

package dbinstance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// PGPairKind is the SQLDLM_TEST_REQUIRE name that makes a missing
// PostgreSQL pair a failure instead of a skip.
const PGPairKind = "pgstandby"

// PGPairOptions configure a PostgreSQL primary with a streaming standby.
type PGPairOptions struct {
	// Sync makes the standby synchronous: synchronous_standby_names names
	// it and synchronous_commit is on, so a commit on the primary waits
	// until the standby has flushed it.
	Sync bool
	// Replication, if set, maps the primary's address to the address the
	// standby streams from (a fault proxy in front of the primary, which a
	// test can then partition).
	Replication func(primary string) string
}

// PGPair is a PostgreSQL primary and one streaming standby, each a
// throwaway Instance (Crash, Stop, Start, Pause work on either).
type PGPair struct {
	Primary, Standby *Instance
	opts             PGPairOptions
}

// standbyName is the standby's application_name, which
// synchronous_standby_names refers to.
const standbyName = "standby1"

// StartPGPair starts a primary, takes a base backup of it, and starts a
// standby streaming from it; with Sync it waits until the standby is
// synchronous. Both are stopped and removed when the test ends. It skips t
// when the PostgreSQL binaries are missing, unless SQLDLM_TEST_REQUIRE
// names "pgstandby" or "postgres".
func StartPGPair(t testing.TB, o PGPairOptions) *PGPair {
	t.Helper()
	clusterStage(t)
	if _, why := findBinaries(Postgres); why != "" && required(PGPairKind) {
		t.Fatalf("dbinstance: no PostgreSQL pair: %s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", why, os.Getenv("SQLDLM_TEST_REQUIRE"))
	}
	primary := Start(t, string(Postgres), Options{PGSettings: pgPairSettings})
	p := &PGPair{Primary: primary, opts: o}
	p.Standby = p.startStandby(t)
	p.waitStreaming(t)
	if o.Sync {
		p.makeSync(t)
	}
	return p
}

// makeSync names the standby in the primary's synchronous_standby_names and
// waits until it is synchronous.
func (p *PGPair) makeSync(t testing.TB) {
	t.Helper()
	pr := p.Primary
	if err := pr.exec(pr.adminDSN("postgres"), "ALTER SYSTEM SET synchronous_standby_names = '"+standbyName+"'"); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	if err := pr.exec(pr.adminDSN("postgres"), "SELECT pg_reload_conf()"); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	p.waitReplication(t, "sync")
}

// Rebuild makes the standby, once promoted, the pair's primary and starts a
// new standby streaming from it, from a fresh base backup, as an operator
// does after a failover; the old primary is left as it is (crashed, say)
// and removed when the test ends. With Sync the new primary runs without a
// synchronous standby until the new one streams (it has no
// synchronous_standby_names: the base backup it came from was taken before
// they were set), then names it and waits until it is synchronous: commits
// on the new primary do not wait for a standby in between, as with
// Patroni's synchronous_mode when it is not strict. A standby is
// synchronous again before Rebuild returns, so the next promotion loses
// nothing acknowledged.
func (p *PGPair) Rebuild(t testing.TB) {
	t.Helper()
	p.Primary = p.Standby
	p.Standby = p.startStandby(t)
	p.waitStreaming(t)
	if p.opts.Sync {
		p.makeSync(t)
	}
}

// CaughtUp waits until the standby has replayed everything the primary had
// written when CaughtUp began (so every commit acknowledged before then),
// or timeout passes.
func (p *PGPair) CaughtUp(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	primary, _, err := dsn.Open(ctx, p.Primary.adminDSN("postgres"))
	if err != nil {
		return err
	}
	defer primary.Close()
	var lsn string
	if err := primary.QueryRowContext(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return fmt.Errorf("the primary's WAL position: %w", err)
	}
	standby, _, err := dsn.Open(ctx, p.Standby.adminDSN("postgres"))
	if err != nil {
		return err
	}
	defer standby.Close()
	for {
		var ok bool
		err := standby.QueryRowContext(ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&ok)
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the standby did not replay up to the primary's %s within %s (last error: %v)", lsn, timeout, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pgPairSettings are the settings of both servers of a pair, so that a
// promoted standby streams to a standby of its own as the first primary did.
var pgPairSettings = []string{
	"wal_level=replica",
	"max_wal_senders=5",
	"hot_standby=on",
	"wal_sender_timeout=5s",
	"wal_receiver_timeout=5s",
}

// startStandby creates the standby's data directory with pg_basebackup
// (-R writes standby.signal and primary_conninfo) and starts it.
func (p *PGPair) startStandby(t testing.TB) *Instance {
	t.Helper()
	pr := p.Primary
	s := &Instance{t: t, kind: Postgres, bins: pr.bins, cred: pr.cred, opts: Options{PGSettings: pgPairSettings}}
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	s.dir, s.data, s.log = dir, filepath.Join(dir, "data"), filepath.Join(dir, "server.log")
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("dbinstance: standby server log (%s), last lines:\n%s", s.log, s.LogTail(40))
		}
		_ = os.RemoveAll(dir)
	})
	if s.cred != nil {
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	from := pr.Addr()
	if p.opts.Replication != nil {
		from = p.opts.Replication(from)
	}
	host, port, ok := strings.Cut(from, ":")
	if !ok {
		t.Fatalf("dbinstance: replication address %q is not host:port", from)
	}
	cmd := exec.Command(filepath.Join(filepath.Dir(pr.bins.server), "pg_basebackup"),
		"-h", "127.0.0.1", "-p", strconv.Itoa(pr.port), "-U", "postgres",
		"-D", s.data, "-X", "stream", "-c", "fast", "--no-sync")
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dbinstance: pg_basebackup: %v\n%s", err, out)
	}
	conf := fmt.Sprintf("primary_conninfo = 'host=%s port=%s user=postgres application_name=%s'\n", host, port, standbyName)
	if err := appendFile(filepath.Join(s.data, "postgresql.auto.conf"), conf); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	if err := writeOwned(filepath.Join(s.data, "standby.signal"), "", s.cred); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	if err := s.startOnFreePort(); err != nil {
		t.Fatalf("dbinstance: start the standby: %v", err)
	}
	return s
}

// waitStreaming waits until the primary reports the standby streaming.
func (p *PGPair) waitStreaming(t testing.TB) { p.waitReplication(t, "") }

// waitReplication waits until the primary reports the standby streaming
// and, if syncState is not empty, in that sync_state.
func (p *PGPair) waitReplication(t testing.TB, syncState string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, p.Primary.adminDSN("postgres"))
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	defer db.Close()
	var last string
	for {
		var state, sync string
		err := db.QueryRowContext(ctx, `SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1`, standbyName).Scan(&state, &sync)
		if err == nil && state == "streaming" && (syncState == "" || sync == syncState) {
			return
		}
		last = fmt.Sprintf("state %q, sync_state %q, error %v", state, sync, err)
		select {
		case <-ctx.Done():
			t.Fatalf("dbinstance: the standby is not replicating (%s) after 30s:\n%s", last, p.Standby.LogTail(20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Promote makes the standby a primary (pg_promote, which waits until it
// accepts writes).
func (p *PGPair) Promote() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, p.Standby.adminDSN("postgres"))
	if err != nil {
		return err
	}
	defer db.Close()
	var ok bool
	if err := db.QueryRowContext(ctx, `SELECT pg_promote(true, 60)`).Scan(&ok); err != nil {
		return fmt.Errorf("promote the standby: %w", err)
	}
	if !ok {
		return fmt.Errorf("promote the standby: not promoted within 60s")
	}
	return nil
}

// DSN returns a DSN for the database "test" that reaches whichever of the
// two accepts writes (pgx's multi-host form with
// target_session_attrs=read-write).
func (p *PGPair) DSN() string {
	return "postgres://postgres@" + p.Primary.Addr() + "," + p.Standby.Addr() +
		"/test?sslmode=disable&connect_timeout=2&target_session_attrs=read-write"
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeOwned writes a file owned by cred's user (the server's), if set.
func writeOwned(path, text string, cred *syscall.Credential) error {
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return err
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}
