package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer answers each line with the same line.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestPauseResumeDropReset(t *testing.T) {
	p, err := New(echoServer(t))
	require.NoError(t, err)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	roundTrip := func(msg string, within time.Duration) (string, error) {
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
		return r.ReadString('\n')
	}
	got, err := roundTrip("a", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "a\n", got)

	p.Pause()
	_, err = roundTrip("b", 200*time.Millisecond)
	require.Error(t, err, "no answer while paused")
	p.Resume()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	got, err = r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "b\n", got, "what waited during the pause arrives after it")

	p.DropReplies(true)
	_, err = roundTrip("c", 200*time.Millisecond)
	require.Error(t, err, "the answer was dropped")
	p.DropReplies(false)

	p.ResetAll()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = r.ReadString('\n')
	require.Error(t, err, "the connection was reset")
}

// Down resets open connections and every connection made while it lasts;
// afterwards connections work again.
func TestDown(t *testing.T) {
	p, err := New(echoServer(t))
	require.NoError(t, err)
	defer p.Close()
	echo := func(c net.Conn) (string, error) {
		if _, err := c.Write([]byte("x\n")); err != nil {
			return "", err
		}
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		return bufio.NewReader(c).ReadString('\n')
	}
	open, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer open.Close()
	_, err = echo(open)
	require.NoError(t, err)

	p.Down(true)
	_, err = echo(open)
	require.Error(t, err, "the open connection was reset")
	// The reset may come before the dial returns, or on the first read.
	if during, err := net.Dial("tcp", p.Addr()); err == nil {
		defer during.Close()
		_, err = echo(during)
		require.Error(t, err, "a connection made while down is reset")
	}
	require.Equal(t, 1, p.Refused(), "the connection was accepted and reset")

	p.Down(false)
	after, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer after.Close()
	got, err := echo(after)
	require.NoError(t, err)
	require.Equal(t, "x\n", got)
}

// Faults on one connection, picked in accept order, leave the others alone.
func TestPerConnection(t *testing.T) {
	p, err := New(echoServer(t))
	require.NoError(t, err)
	defer p.Close()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	a, ra := dial()
	b, rb := dial()
	conns, ok := p.WaitConns(2, 5*time.Second)
	require.True(t, ok)
	roundTrip := func(c net.Conn, r *bufio.Reader, msg string, within time.Duration) (string, error) {
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
		return r.ReadString('\n')
	}
	// The first accepted connection is a's: pausing it leaves b alone.
	conns[0].Pause()
	_, err = roundTrip(a, ra, "a1", 200*time.Millisecond)
	require.Error(t, err)
	got, err := roundTrip(b, rb, "b1", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "b1\n", got)
	conns[0].Resume()
	require.NoError(t, a.SetReadDeadline(time.Now().Add(5*time.Second)))
	got, err = ra.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "a1\n", got)

	// A black hole loses what is sent, unlike a pause.
	conns[1].Blackhole(true)
	_, err = roundTrip(b, rb, "b2", 200*time.Millisecond)
	require.Error(t, err)
	conns[1].Blackhole(false)
	got, err = roundTrip(b, rb, "b3", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "b3\n", got, "b2 was lost, not delayed")

	// DelayNext holds one request.
	conns[0].DelayNext(300 * time.Millisecond)
	start := time.Now()
	got, err = roundTrip(a, ra, "a2", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "a2\n", got)
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	toServer, toClient := conns[0].Bytes()
	require.EqualValues(t, 6, toServer)
	require.EqualValues(t, 6, toClient)

	conns[1].Reset()
	require.NoError(t, b.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = rb.ReadString('\n')
	require.Error(t, err, "the connection was reset")
	require.Eventually(t, conns[1].Closed, 5*time.Second, 5*time.Millisecond)
	got, err = roundTrip(a, ra, "a3", 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "a3\n", got)
}

// serverEvent is what recordingServer saw: a line, or the end of a
// connection (EOF) with whether any write to the client failed.
type serverEvent struct {
	line      string
	eof       bool
	read      int // bytes read on the connection, at EOF
	writeFail bool
}

// recordingServer answers each line with the line and, 100ms later, "late
// <line>" (an answer in two parts, as a server that commits then reports),
// and reports what it saw.
func recordingServer(t *testing.T) (string, <-chan serverEvent) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	events := make(chan serverEvent, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				read, failed := 0, false
				for {
					line, err := r.ReadString('\n')
					read += len(line)
					if err != nil {
						events <- serverEvent{eof: true, read: read, writeFail: failed}
						return
					}
					events <- serverEvent{line: line}
					if _, err := c.Write([]byte(line)); err != nil {
						failed = true
					}
					time.Sleep(100 * time.Millisecond) // the second part of the answer comes later
					if _, err := c.Write([]byte("late " + line)); err != nil {
						failed = true
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), events
}

func nextEvent(t *testing.T, events <-chan serverEvent, within time.Duration) serverEvent {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(within):
		t.Fatalf("the server saw nothing within %s", within)
		return serverEvent{}
	}
}

// LoseAnswer lets the matching statement reach the server, swallows the
// answer, resets the client's side, and keeps the server's side open (the
// server's writes succeed) until it has been quiet for drainQuiet.
func TestLoseAnswer(t *testing.T) {
	addr, events := recordingServer(t)
	p, err := New(addr)
	require.NoError(t, err)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	send := func(msg string) {
		_, err := c.Write([]byte(msg + "\n"))
		require.NoError(t, err)
	}
	read := func() (string, error) {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		return r.ReadString('\n')
	}

	trap := p.LoseAnswer(Contains("COMMIT"))
	send("select 1")
	require.Equal(t, "select 1\n", nextEvent(t, events, 5*time.Second).line)
	got, err := read()
	require.NoError(t, err)
	require.Equal(t, "select 1\n", got, "a statement the trap does not match is answered")
	got, err = read()
	require.NoError(t, err)
	require.Equal(t, "late select 1\n", got)
	select {
	case <-trap.Sent():
		t.Fatal("the trap matched a statement without its text")
	default:
	}

	send("commit work")
	require.Equal(t, "commit work\n", nextEvent(t, events, 5*time.Second).line, "the statement reaches the server")
	<-trap.Sent()
	select {
	case <-trap.Fired():
	case <-time.After(5 * time.Second):
		t.Fatal("the trap did not fire when the answer came")
	}
	_, err = read()
	require.Error(t, err, "the answer is lost and the client's side reset")
	require.NotNil(t, trap.Conn())

	// The server's side stays open for its whole answer, then closes.
	began := time.Now()
	e := nextEvent(t, events, 10*time.Second)
	require.True(t, e.eof)
	require.False(t, e.writeFail, "the server could write its whole answer: it never learnt the client was gone")
	require.GreaterOrEqual(t, time.Since(began), drainQuiet/2, "the server's side was kept open while the server answered")
	require.Eventually(t, trap.Conn().Closed, 5*time.Second, 5*time.Millisecond)
}

// LoseNextAnswer fires on the next statement of one connection only; Nth
// picks the n-th match.
func TestLoseNextAnswerAndNth(t *testing.T) {
	addr, events := recordingServer(t)
	p, err := New(addr)
	require.NoError(t, err)
	defer p.Close()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	a, ra := dial()
	b, rb := dial()
	conns, ok := p.WaitConns(2, 5*time.Second)
	require.True(t, ok)
	roundTrip := func(c net.Conn, r *bufio.Reader, msg string) (string, error) {
		if _, err := c.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		return r.ReadString('\n')
	}
	trap := conns[1].LoseNextAnswer()
	got, err := roundTrip(a, ra, "a1")
	require.NoError(t, err, "the other connection is not trapped")
	require.Equal(t, "a1\n", got)
	require.Equal(t, "a1\n", nextEvent(t, events, 5*time.Second).line)
	_, err = roundTrip(b, rb, "b1")
	require.Error(t, err)
	require.Equal(t, "b1\n", nextEvent(t, events, 5*time.Second).line)
	<-trap.Fired()
	require.Same(t, conns[1], trap.Conn())

	got, err = ra.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "late a1\n", got)

	nth := p.LoseAnswer(Nth(2, Contains("x")))
	got, err = roundTrip(a, ra, "x1")
	require.NoError(t, err, "the first match passes")
	require.Equal(t, "x1\n", got)
	got, err = ra.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "late x1\n", got)
	_, err = roundTrip(a, ra, "x2")
	require.Error(t, err, "the second match's answer is lost")
	<-nth.Fired()
}

// SwallowCancels closes a PostgreSQL cancel request's connection without
// forwarding a byte of it; without it the request is forwarded.
func TestSwallowCancels(t *testing.T) {
	addr, events := recordingServer(t)
	p, err := New(addr)
	require.NoError(t, err)
	defer p.Close()
	cancelRequest := func() {
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		defer c.Close()
		msg := []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x30, 0x39, 0x12, 0x34, 0x56, 0x78} // 80877102, pid 12345, key
		_, err = c.Write(append(msg, '\n'))
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, _ = io.ReadAll(c)
	}
	p.SwallowCancels(true)
	cancelRequest()
	e := nextEvent(t, events, 5*time.Second)
	require.True(t, e.eof)
	require.Zero(t, e.read, "the cancel request was not forwarded")
	require.Equal(t, 1, p.Cancels())

	p.SwallowCancels(false)
	cancelRequest()
	e = nextEvent(t, events, 5*time.Second)
	require.Equal(t, 17, len(e.line), "the cancel request was forwarded")
	require.Equal(t, 1, p.Cancels())
}

// With ShowPreparedText, a trap sees a MySQL COM_STMT_EXECUTE with the text
// its COM_STMT_PREPARE sent: the execution of the prepared statement, not
// the preparation, loses its answer.
func TestShowPreparedText(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	executed := make(chan []byte, 10)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1024)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			switch buf[4] {
			case mysqlStmtPrepare: // OK, statement id 7
				_, _ = c.Write([]byte{9, 0, 0, 1, mysqlOK, 7, 0, 0, 0, 1, 0, 0, 0})
			case mysqlStmtExecute:
				executed <- append([]byte(nil), buf[:n]...)
				_, _ = c.Write([]byte{1, 0, 0, 1, 0xfe})
			}
		}
	}()
	p, err := New(ln.Addr().String())
	require.NoError(t, err)
	defer p.Close()
	p.ShowPreparedText(true)
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	read := func() error {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
		_, err := c.Read(make([]byte, 64))
		return err
	}
	trap := p.LoseAnswer(Contains("CALL sqldlm_x("))
	text := "CALL sqldlm_x(?)"
	_, err = c.Write(append([]byte{byte(len(text) + 1), 0, 0, 0, mysqlStmtPrepare}, text...))
	require.NoError(t, err)
	require.NoError(t, read(), "the preparation is answered")
	execute := []byte{10, 0, 0, 0, mysqlStmtExecute, 7, 0, 0, 0, 0, 1, 0, 0, 0}
	_, err = c.Write(execute)
	require.NoError(t, err)
	require.Equal(t, execute, <-executed, "the execution reaches the server")
	<-trap.Fired()
	require.Error(t, read(), "its answer is lost")
}

// nameServer answers each line with its name.
func nameServer(t *testing.T, name string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := c.Write([]byte(name + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// Retarget sends new connections to the new target; an open one stays.
func TestRetarget(t *testing.T) {
	p, err := New(nameServer(t, "a"))
	require.NoError(t, err)
	defer p.Close()
	ask := func(c net.Conn) string {
		_, err := c.Write([]byte("?\n"))
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		s, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		return s
	}
	old, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer old.Close()
	require.Equal(t, "a\n", ask(old))
	p.Retarget(nameServer(t, "b"))
	fresh, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer fresh.Close()
	require.Equal(t, "b\n", ask(fresh), "a new connection")
	require.Equal(t, "a\n", ask(old), "the open connection")
}
