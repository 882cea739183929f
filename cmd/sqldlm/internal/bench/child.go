package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// ChildCommand is the hidden command that runs a child process of the
// benchmark (a leader to be killed, for the failover run) by calling
// [ChildMain]: `sqldlm bench-child`, or the same argument to a test binary
// whose TestMain routes it there. The benchmark starts its own executable
// with it unless Config.Child says otherwise.
const ChildCommand = "bench-child"

// childDSNEnv passes the DSN to a child in its environment, not on its
// command line, where ps would show its password.
const childDSNEnv = "SQLDLM_BENCH_CHILD_DSN"

// ChildMain runs a child process of the benchmark. The role "leader"
// campaigns in --election with a Client of lease TTL --ttl, prints
// "elected TERM" and leads until its stdin ends (then it resigns) or it is
// killed. The DSN comes from the environment the benchmark sets.
func ChildMain(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet(ChildCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	role := fs.String("role", "", "")
	election := fs.String("election", "", "")
	owner := fs.String("owner", "", "")
	ttl := fs.Duration("ttl", CoordTTLDefault, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *role != "leader" {
		return fmt.Errorf("%s: unknown role %q", ChildCommand, *role)
	}
	d, err := dsn.Parse(os.Getenv(childDSNEnv))
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ChildCommand, childDSNEnv, err)
	}
	db, _, err := openPool(d, 4)
	if err != nil {
		return err
	}
	defer db.Close()
	c, err := sqldlm.New(db, sqldlm.Config{TTL: *ttl, Owner: *owner})
	if err != nil {
		return err
	}
	defer c.Close()
	ld, err := c.Campaign(ctx, *election, *owner)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(stdout, "elected", ld.Term()); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, stdin)
	return ld.Resign(ctx)
}

// child is a running child process of the benchmark.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // its stdout, line by line
	stderr *tailBuffer
	exited chan struct{} // closed when it has exited and been waited for
}

// startChild starts a child process with args after ChildCommand.
func (e *env) startChild(args ...string) (*child, error) {
	argv := e.cfg.Child
	if len(argv) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this executable to start a child: %w", err)
		}
		argv = []string{self, ChildCommand}
	}
	cmd := exec.Command(argv[0], append(argv[1:len(argv):len(argv)], args...)...)
	cmd.Env = append(os.Environ(), childDSNEnv+"="+e.cfg.DSN)
	ch := &child{cmd: cmd, lines: make(chan string, 16), stderr: &tailBuffer{max: 4096}, exited: make(chan struct{})}
	cmd.Stdout = &lineWriter{lines: ch.lines}
	cmd.Stderr = ch.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	ch.stdin = stdin
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start a child (%s): %w", argv[0], err)
	}
	go func() {
		_ = cmd.Wait()
		close(ch.exited)
	}()
	return ch, nil
}

// expect waits up to timeout for a line of the child's that starts with
// word and returns it.
func (ch *child) expect(ctx context.Context, word string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line := <-ch.lines:
			if f := strings.Fields(line); len(f) > 0 && f[0] == word {
				return line, nil
			}
		case <-ch.exited:
			return "", fmt.Errorf("the child exited (%s) before saying %q; its stderr: %s", ch.cmd.ProcessState, word, ch.stderr)
		case <-t.C:
			return "", fmt.Errorf("the child said no %q within %s; its stderr: %s", word, timeout, ch.stderr)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// stop kills the child, if it still runs, and waits for it.
func (ch *child) stop() {
	_ = ch.cmd.Process.Kill()
	_ = ch.stdin.Close()
	<-ch.exited
}

// lineWriter sends each complete line written to it to lines, dropping
// lines nobody reads.
type lineWriter struct {
	lines chan string
	buf   []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
		}
		w.buf = w.buf[i+1:]
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.b) == 0 {
		return "(empty)"
	}
	return strings.TrimSpace(string(t.b))
}
