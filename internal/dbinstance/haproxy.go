//go:build linux

package dbinstance

import (
	"context"
	"fmt"
	"io"
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
	// HTTPCheck, if set, is the path of an HTTP health check (GET) on
	// CheckPorts[k] of backend k's host, as deployments put HAProxy in
	// front of Patroni ("/primary" answers 200 on the leader only): every
	// backend is then active, and the one whose check passes takes the
	// connections.
	HTTPCheck  string
	CheckPorts []int
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
	if o.HTTPCheck != "" && len(o.CheckPorts) != len(backends) {
		t.Fatal("dbinstance: StartHAProxy with HTTPCheck needs one check port per backend")
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
  stats socket %s
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
listen db
  bind %s
  option tcpka
  default-server inter %dms rise 2 fall 2 on-marked-down shutdown-sessions
`, filepath.Join(dir, "admin.sock"), addr, inter.Milliseconds())
		if o.HTTPCheck != "" {
			fmt.Fprintf(&cfg, "  option httpchk GET %s\n  http-check expect status 200\n", o.HTTPCheck)
		}
		for k, b := range backends {
			check := " check"
			switch {
			case o.HTTPCheck != "":
				check += " port " + strconv.Itoa(o.CheckPorts[k])
			case k > 0:
				check += " backup"
			}
			fmt.Fprintf(&cfg, "  server node%d %s%s\n", k, b, check)
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

// Up reports which backends HAProxy has marked up (its stats socket's
// "show stat"), in the order StartHAProxy was given them.
func (h *HAProxy) Up() ([]bool, error) {
	c, err := net.DialTimeout("unix", filepath.Join(h.dir, "admin.sock"), time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return nil, err
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	// CSV: pxname,svname,...; status is the 18th column.
	var up []bool
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ",")
		if len(f) > 17 && f[0] == "db" && strings.HasPrefix(f[1], "node") {
			up = append(up, strings.HasPrefix(f[17], "UP"))
		}
	}
	return up, nil
}

// WaitOnlyUp waits until HAProxy has marked backend k up and every other
// one down: with an HTTP check that passes on one backend only (Patroni's
// GET /primary), HAProxy takes every backend for up until its checks have
// failed, and until then sends connections to all of them.
func (h *HAProxy) WaitOnlyUp(ctx context.Context, k int) error {
	var last []bool
	for {
		up, err := h.Up()
		if err == nil {
			last = up
			only := len(up) > k
			for j, u := range up {
				only = only && u == (j == k)
			}
			if only {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("HAProxy does not mark only backend %d up (up: %v, %v): %w", k, last, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

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
