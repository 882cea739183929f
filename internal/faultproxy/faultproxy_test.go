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
