package faultproxy

import (
	"bufio"
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
