// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a database: it can pause traffic (a partition that
// heals: bytes wait in kernel buffers and flow again on Resume), delay it,
// drop the server's answers, and reset connections. It is modelled on
// etcd's pkg/proxy and used only by tests.
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
	delay     time.Duration
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
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
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(server, client, false)
		go p.pipe(client, server, true)
	}
}

// pipe copies src to dst, honouring pause, delay and dropped replies.
func (p *Proxy) pipe(dst, src net.Conn, fromServer bool) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.paused && !p.closed {
				p.cond.Wait()
			}
			drop := fromServer && p.dropReply
			delay := p.delay
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
