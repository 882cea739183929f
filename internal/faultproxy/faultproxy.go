// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a database: it can pause traffic (a partition that
// heals: bytes wait in kernel buffers and flow again on Resume), delay it,
// drop the server's answers, black-hole traffic, and reset connections,
// for all connections or for one connection picked in accept order (so a
// test can cut a client's heartbeat connection and nothing else). It is
// modelled on etcd's pkg/proxy and used only by tests.
package faultproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Proxy forwards connections accepted on Addr to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu        sync.Mutex
	cond      *sync.Cond
	paused    bool
	dropReply bool
	blackhole bool
	delay     time.Duration
	conns     map[net.Conn]struct{}
	accepted  []*Conn
	closed    bool
	wg        sync.WaitGroup
}

// Conn is one proxied connection. Its faults add to the proxy's.
type Conn struct {
	p         *Proxy
	client    net.Conn
	server    net.Conn
	paused    bool
	dropReply bool
	blackhole bool
	delayNext time.Duration
	closed    bool
	bytes     [2]int64 // forwarded to the server, to the client
}

// New listens on a free port of 127.0.0.1 and forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pause stops forwarding in both directions, on open and new connections,
// until Resume. Nothing is lost: what was sent waits.
func (p *Proxy) Pause() { p.set(func() { p.paused = true }) }

// Resume undoes Pause.
func (p *Proxy) Resume() { p.set(func() { p.paused = false }) }

// Blackhole discards everything in both directions until it is called with
// false: a partition in which what is sent is lost, not delayed.
func (p *Proxy) Blackhole(on bool) { p.set(func() { p.blackhole = on }) }

// Conns returns the connections accepted so far, in accept order (closed
// ones included).
func (p *Proxy) Conns() []*Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Conn(nil), p.accepted...)
}

// WaitConns waits until at least n connections were accepted, or timeout.
func (p *Proxy) WaitConns(n int, timeout time.Duration) ([]*Conn, bool) {
	deadline := time.Now().Add(timeout)
	for {
		conns := p.Conns()
		if len(conns) >= n {
			return conns, true
		}
		if time.Now().After(deadline) {
			return conns, false
		}
		time.Sleep(5 * time.Millisecond) // polling the accept list, with a deadline
	}
}

// Pause stops forwarding on this connection in both directions until
// Resume; nothing is lost.
func (c *Conn) Pause() { c.p.set(func() { c.paused = true }) }

// Resume undoes Pause.
func (c *Conn) Resume() { c.p.set(func() { c.paused = false }) }

// DropReplies discards what the server sends on this connection until it
// is called with false.
func (c *Conn) DropReplies(drop bool) { c.p.set(func() { c.dropReply = drop }) }

// Blackhole discards everything on this connection, both ways, until it is
// called with false.
func (c *Conn) Blackhole(on bool) { c.p.set(func() { c.blackhole = on }) }

// DelayNext holds the next chunk the client sends on this connection for d
// before forwarding it (later chunks wait behind it, in order).
func (c *Conn) DelayNext(d time.Duration) { c.p.set(func() { c.delayNext = d }) }

// Reset closes the connection abruptly (RST) on both sides.
func (c *Conn) Reset() {
	for _, nc := range []net.Conn{c.client, c.server} {
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		nc.Close()
	}
}

// Closed reports whether the connection has ended.
func (c *Conn) Closed() bool {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.closed
}

// Bytes returns how many bytes were forwarded to the server and to the
// client.
func (c *Conn) Bytes() (toServer, toClient int64) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.bytes[0], c.bytes[1]
}

// DropReplies discards what the server sends until it is called with false:
// requests reach the server, their answers never reach the client.
func (p *Proxy) DropReplies(drop bool) { p.set(func() { p.dropReply = drop }) }

// Delay holds every chunk of data for d before forwarding it (0 to stop).
func (p *Proxy) Delay(d time.Duration) { p.set(func() { p.delay = d }) }

// ResetAll closes every open connection abruptly (RST); new ones are
// accepted.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.paused = false
	p.cond.Broadcast()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) set(f func()) {
	p.mu.Lock()
	f()
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[client], p.conns[server] = struct{}{}, struct{}{}
		c := &Conn{p: p, client: client, server: server}
		p.accepted = append(p.accepted, c)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, server, client, false)
		go p.pipe(c, client, server, true)
	}
}

// pipe copies src to dst, honouring pause, delay and dropped replies.
func (p *Proxy) pipe(c *Conn, dst, src net.Conn, fromServer bool) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		c.closed = true
		p.mu.Unlock()
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for (p.paused || c.paused) && !p.closed {
				p.cond.Wait()
			}
			drop := (fromServer && (p.dropReply || c.dropReply)) || p.blackhole || c.blackhole
			delay := p.delay
			if !fromServer && c.delayNext > 0 {
				delay, c.delayNext = delay+c.delayNext, 0
			}
			if !drop {
				dir := 0
				if fromServer {
					dir = 1
				}
				c.bytes[dir] += int64(n)
			}
			p.mu.Unlock()
			if delay > 0 {
				time.Sleep(delay) // the fault being injected, not synchronisation
			}
			if !drop {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}
