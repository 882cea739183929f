// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a database: it can pause traffic (a partition that
// heals: bytes wait in kernel buffers and flow again on Resume), delay it,
// drop the server's answers, black-hole traffic, and reset connections,
// for all connections or for one connection picked in accept order (so a
// test can cut a client's heartbeat connection and nothing else). It can
// also lose the answer to one chosen statement after the server ran it
// (LoseAnswer, Conn.LoseNextAnswer) and swallow PostgreSQL cancel requests
// (SwallowCancels), so that a statement the client gave up on keeps running
// in the server. It is modelled on etcd's pkg/proxy and used only by tests.
package faultproxy

import (
	"bytes"
	"encoding/binary"
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
	down      bool
	refused   int // connections reset at accept while down
	delay     time.Duration
	conns     map[net.Conn]struct{}
	accepted  []*Conn
	closed    bool
	wg        sync.WaitGroup

	trap           *Trap // armed on every connection until it fires
	swallowCancels bool
	cancels        int  // cancel requests swallowed
	mysqlText      bool // traps see a MySQL execution with its prepared text
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
	started   bool     // the client has sent something

	trap *Trap // armed on this connection only
	// lost is the trap that fired on this connection: the server's answers
	// are swallowed from then on, the client's side is reset as soon as the
	// answer starts, and the server's side is kept open (and drained) until
	// the server has been quiet for drainQuiet, so that the server finishes
	// the statement as if the client were still there.
	lost *Trap
	// MySQL prepared statements (ShowPreparedText): the text of a
	// COM_STMT_PREPARE awaiting its answer, and the text of each statement
	// id the server gave.
	preparing []byte
	prepared  map[uint32][]byte
}

// drainQuiet is how long the server's side of a connection whose answer was
// lost must be quiet before the proxy closes it.
const drainQuiet = time.Second

// Trap is a one-shot "answer lost after the server ran the statement"
// fault (see Proxy.LoseAnswer). Its channels say how far it got.
type Trap struct {
	match func(chunk []byte) bool
	sent  chan struct{} // closed when the matching chunk was forwarded
	fired chan struct{} // closed when the server's answer was swallowed
	once  sync.Once
	mu    sync.Mutex
	conn  *Conn
}

func newTrap(match func([]byte) bool) *Trap {
	return &Trap{match: match, sent: make(chan struct{}), fired: make(chan struct{})}
}

// Sent is closed once the statement the trap matched was forwarded to the
// server.
func (t *Trap) Sent() <-chan struct{} { return t.sent }

// Fired is closed once the server began to answer that statement, the
// answer was swallowed and the client's side of the connection was reset.
// For a statement that runs in autocommit mode, the server has committed
// it by then (PostgreSQL and MySQL send the answer after the commit; a
// MySQL procedure's status row comes after its COMMIT, and the server's
// side is drained so the procedure ends normally).
func (t *Trap) Fired() <-chan struct{} { return t.fired }

// Conn returns the connection the trap fired on, or nil before Sent.
func (t *Trap) Conn() *Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.conn
}

// Contains returns a trap predicate that matches a chunk holding s, ignoring
// ASCII case. With a DSN that sends statement text with every execution
// (pgx: default_query_exec_mode=simple_protocol; go-sql-driver:
// interpolateParams=true), a routine's name picks its statement.
func Contains(s string) func([]byte) bool {
	needle := bytes.ToLower([]byte(s))
	return func(chunk []byte) bool { return bytes.Contains(bytes.ToLower(chunk), needle) }
}

// Nth returns a predicate that matches the n-th chunk (from 1) that match
// matches.
func Nth(n int, match func([]byte) bool) func([]byte) bool {
	var mu sync.Mutex
	seen := 0
	return func(chunk []byte) bool {
		if !match(chunk) {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		seen++
		return seen == n
	}
}

// LoseAnswer arms a one-shot trap on every connection, open or new: the
// first chunk a client sends that match reports true for is forwarded to
// the server as usual; the server's answer to it (and everything after) is
// swallowed, the client's side of that connection is reset as soon as the
// answer starts, and the server's side stays open until the server is
// quiet: the statement commits, the client never learns it did. A later
// call replaces a trap that has not fired.
func (p *Proxy) LoseAnswer(match func(chunk []byte) bool) *Trap {
	t := newTrap(match)
	p.set(func() { p.trap = t })
	return t
}

// LoseNextAnswer is LoseAnswer for the next chunk the client sends on this
// connection, whatever it holds: "the next statement on connection N".
func (c *Conn) LoseNextAnswer() *Trap {
	t := newTrap(func([]byte) bool { return true })
	c.p.set(func() { c.trap = t })
	return t
}

// Disarm removes this connection's trap if it has not fired.
func (c *Conn) Disarm() { c.p.set(func() { c.trap = nil }) }

// Disarm removes the proxy's trap if it has not fired.
func (p *Proxy) Disarm() { p.set(func() { p.trap = nil }) }

// ShowPreparedText makes traps see a MySQL COM_STMT_EXECUTE together with
// the text of the statement it executes (the proxy records the text of each
// COM_STMT_PREPARE and the statement id the server answers with), so that
// a predicate such as Contains("sqldlm_acquire(") picks the execution of a
// prepared CALL, whose packet carries only the statement id and the
// arguments.
func (p *Proxy) ShowPreparedText(on bool) { p.set(func() { p.mysqlText = on }) }

// MySQL command bytes and the OK answer to a COM_STMT_PREPARE.
const (
	mysqlStmtPrepare = 0x16
	mysqlStmtExecute = 0x17
	mysqlOK          = 0x00
)

// trapView returns what a trap's predicate sees of a chunk the client
// sends: the chunk, with the prepared statement's text appended when it is
// a MySQL COM_STMT_EXECUTE and ShowPreparedText is on; nil (no trap fires on
// it: it runs nothing) for a COM_STMT_PREPARE, whose text it records.
// Called with p.mu held.
func (c *Conn) trapView(chunk []byte) []byte {
	if !c.p.mysqlText || len(chunk) < 5 {
		return chunk
	}
	switch chunk[4] {
	case mysqlStmtPrepare:
		c.preparing = append([]byte(nil), chunk[5:]...)
		return nil
	case mysqlStmtExecute:
		if len(chunk) >= 9 {
			if text, ok := c.prepared[binary.LittleEndian.Uint32(chunk[5:9])]; ok {
				return append(append([]byte(nil), chunk...), text...)
			}
		}
	}
	return chunk
}

// serverAnswer records the statement id of a prepared statement from the
// server's answer to a COM_STMT_PREPARE. Called with p.mu held.
func (c *Conn) serverAnswer(chunk []byte) {
	if c.preparing == nil {
		return
	}
	if len(chunk) >= 9 && chunk[4] == mysqlOK {
		if c.prepared == nil {
			c.prepared = map[uint32][]byte{}
		}
		c.prepared[binary.LittleEndian.Uint32(chunk[5:9])] = c.preparing
	}
	c.preparing = nil
}

// SwallowCancels makes the proxy accept a PostgreSQL cancel request (a new
// connection whose first message is a CancelRequest) and close it without
// forwarding it, until it is called with false: the statement the client
// gave up on keeps running in the server. (go-sql-driver sends no cancel: it
// closes the connection, and MySQL runs the statement on anyway.)
func (p *Proxy) SwallowCancels(on bool) { p.set(func() { p.swallowCancels = on }) }

// Cancels returns how many cancel requests were swallowed.
func (p *Proxy) Cancels() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cancels
}

// pgCancelCode is the request code of a PostgreSQL CancelRequest message:
// Int32(16) length, Int32(80877102), then the backend's pid and key.
const pgCancelCode = 80877102

func isPGCancel(b []byte) bool {
	return len(b) >= 16 && binary.BigEndian.Uint32(b[0:4]) == 16 && binary.BigEndian.Uint32(b[4:8]) == pgCancelCode
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

// Retarget sends the connections accepted from now on to target, as a load
// balancer does when its health check fails over; open connections stay
// where they are (ResetAll ends them).
func (p *Proxy) Retarget(target string) { p.set(func() { p.target = target }) }

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
	p.resetAll()
}

func (p *Proxy) resetAll() {
	for c := range p.conns {
		reset(c)
	}
}

// reset closes c abruptly (RST).
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// Down(true) makes the server look down until Down(false): every open
// connection is reset, and every new one is reset as soon as it is
// accepted, as a server that crashed and does not accept connections.
func (p *Proxy) Down(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = on
	if on {
		p.resetAll()
	}
}

// Refused returns how many connections were reset at accept while the
// proxy was down.
func (p *Proxy) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
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
		p.mu.Lock()
		down, target := p.down, p.target
		if down {
			p.refused++
		}
		p.mu.Unlock()
		if down {
			reset(client)
			continue
		}
		server, err := net.Dial("tcp", target)
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

// pipe copies src to dst, honouring pause, delay, dropped replies, lost
// answers and swallowed cancel requests.
func (p *Proxy) pipe(c *Conn, dst, src net.Conn, fromServer bool) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		// A lost answer keeps the server's side open until its drain ends
		// (the server-to-client pipe closes it then).
		keepServer := !fromServer && c.lost != nil
		delete(p.conns, src)
		if !keepServer {
			delete(p.conns, dst)
			c.closed = true
		}
		p.mu.Unlock()
		src.Close()
		if !keepServer {
			dst.Close()
		}
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if fromServer && err != nil && c.draining() {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return // quiet for drainQuiet: the drain is over
			}
		}
		if n > 0 {
			p.mu.Lock()
			for (p.paused || c.paused) && !p.closed {
				p.cond.Wait()
			}
			if !fromServer && !c.started {
				c.started = true
				if p.swallowCancels && isPGCancel(buf[:n]) {
					p.cancels++
					p.mu.Unlock()
					return
				}
			}
			var sentTrap, firedTrap *Trap
			if fromServer {
				c.serverAnswer(buf[:n])
			}
			var view []byte
			if !fromServer {
				view = c.trapView(buf[:n])
			}
			if !fromServer && c.lost == nil && view != nil {
				for _, t := range []*Trap{c.trap, p.trap} {
					if t != nil && t.match(view) {
						c.lost, sentTrap = t, t
						t.mu.Lock()
						t.conn = c
						t.mu.Unlock()
						if c.trap == t {
							c.trap = nil
						}
						if p.trap == t {
							p.trap = nil
						}
						break
					}
				}
			}
			lost := fromServer && c.lost != nil
			if lost {
				firedTrap = c.lost
			}
			drop := lost || (fromServer && (p.dropReply || c.dropReply)) || p.blackhole || c.blackhole
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
				if _, werr := dst.Write(buf[:n]); werr != nil && !c.draining() {
					return
				}
			}
			if sentTrap != nil {
				close(sentTrap.sent)
			}
			if firedTrap != nil {
				firedTrap.once.Do(func() {
					// The answer has started: reset the client's side, keep
					// draining the server's.
					if tc, ok := c.client.(*net.TCPConn); ok {
						_ = tc.SetLinger(0)
					}
					c.client.Close()
					close(firedTrap.fired)
				})
			}
			if fromServer && c.draining() {
				_ = src.SetReadDeadline(time.Now().Add(drainQuiet))
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

// draining reports whether this connection's answer was lost.
func (c *Conn) draining() bool {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.lost != nil
}
