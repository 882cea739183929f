//go:build linux

package dbinstance

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// HAProxy is a throwaway HAProxy in TCP mode in front of database servers,
// as OpenStack deployments put one in front of a Galera cluster: the first
// backend takes every connection, the others are backups that take over
// when a health check finds it down, and the sessions on a backend marked
// down are shut (on-marked-down shutdown-sessions), so that clients
// reconnect through the proxy to the next one.
type HAProxy struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	dir  string
}

// HAProxyOptions configure StartHAProxy.
type HAProxyOptions struct {
	// CheckInterval is the health check's interval (default 500ms); a
	// backend is marked down after two failed checks and up after two good
	// ones.
	CheckInterval time.Duration
}

// StartHAProxy starts HAProxy on a free loopback port in front of
// backends (host:port), the first active and the rest backups. It skips t
// when haproxy is not installed, unless SQLDLM_TEST_REQUIRE names
// "haproxy"; t.Cleanup stops it.
func StartHAProxy(t testing.TB, backends []string, o HAProxyOptions) *HAProxy {
	t.Helper()
	bin, err := lookPath("haproxy", "/usr/sbin/haproxy")
	if err != nil {
		msg := "dbinstance: no HAProxy: haproxy is not installed (apt-get install haproxy)"
		if required("haproxy") {
			t.Fatalf("%s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", msg, os.Getenv("SQLDLM_TEST_REQUIRE"))
		}
		t.Skip(msg)
	}
	if len(backends) == 0 {
		t.Fatal("dbinstance: StartHAProxy needs at least one backend")
	}
	inter := o.CheckInterval
	if inter <= 0 {
		inter = 500 * time.Millisecond
	}
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		var cfg strings.Builder
		fmt.Fprintf(&cfg, `global
  maxconn 1024
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
listen db
  bind %s
  option tcpka
  default-server inter %dms rise 2 fall 2 on-marked-down shutdown-sessions
`, addr, inter.Milliseconds())
		for k, b := range backends {
			backup := ""
			if k > 0 {
				backup = " backup"
			}
			fmt.Fprintf(&cfg, "  server node%d %s check%s\n", k, b, backup)
		}
		path := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(dir, "haproxy.log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-db", "-f", path) // -db: foreground, no daemon
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatal(err)
		}
		logf.Close()
		watchdog(cmd.Process.Pid, path) // should Pdeathsig not kill it with the test
		h := &HAProxy{addr: addr, cmd: cmd, done: make(chan struct{}), dir: dir}
		go func() { _ = cmd.Wait(); close(h.done) }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = waitListening(ctx, addr, h.done)
		cancel()
		if err == nil {
			t.Cleanup(h.stop)
			return h
		}
		h.stop()
		out, _ := os.ReadFile(logPath)
		if attempt == 2 || !strings.Contains(string(out), "in use") {
			t.Fatalf("dbinstance: haproxy did not start: %v\n%s", err, out)
		}
	}
}

// Addr is the proxy's host:port.
func (h *HAProxy) Addr() string { return h.addr }

func (h *HAProxy) stop() {
	if h.cmd.Process != nil {
		_ = h.cmd.Process.Kill()
	}
	<-h.done
}

// waitListening waits until addr accepts a TCP connection, or exited
// closes, or ctx ends.
func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("haproxy exited")
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on %s: %w", addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
