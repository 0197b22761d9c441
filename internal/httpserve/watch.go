package httpserve

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fasthttp does not read a connection while its handler runs, so a client
// that hangs up is not noticed until the response is written. A handler
// that may wait long (a function computing) marks the wait on its
// connection (Conn.Await); one goroutine per listener looks at the
// waiting connections a few times a second and watches those waiting
// longer than a set time. A timer per request would cost more than the
// rest of a fast request's bookkeeping: arming it wakes the network
// poller.

// Listener wraps ln so that its connections are *Conn: watched while
// their handler has been waiting longer than after, and closed lingering.
// Out of descriptors, it waits and tries again (logged to log, if not
// nil) rather than fail: fasthttp's Serve returns on such an error, which
// would end the server. Closing it stops the watching.
func Listener(ln net.Listener, after time.Duration, log *slog.Logger) net.Listener {
	l := &watchListener{Listener: ln, after: after, log: log, conns: map[*Conn]struct{}{}, done: make(chan struct{}), first: make(chan struct{}, 1)}
	go l.sweep()
	return l
}

type watchListener struct {
	net.Listener
	after     time.Duration
	log       *slog.Logger
	mu        sync.Mutex
	conns     map[*Conn]struct{}
	done      chan struct{}
	first     chan struct{} // a connection came while there were none
	closeOnce sync.Once
}

func (l *watchListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	// As net/http does: 5 ms, doubling up to a second.
	for wait := 5 * time.Millisecond; err != nil && OutOfResources(err); wait = min(2*wait, time.Second) {
		if l.log != nil && wait == 5*time.Millisecond {
			l.log.Warn("cannot accept connections; retrying", "err", err)
		}
		select {
		case <-l.done:
			return nil, err
		case <-time.After(wait):
		}
		nc, err = l.Listener.Accept()
	}
	if err != nil {
		return nil, err
	}
	c := &Conn{Conn: nc, l: l, inHead: true, headEnd: -1}
	l.mu.Lock()
	l.conns[c] = struct{}{}
	if len(l.conns) == 1 {
		select {
		case l.first <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
	return c, nil
}

func (l *watchListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// OutOfResources says whether err is a lack of descriptors or kernel
// memory: the server's own, passing as connections end, and no fault of
// the peer.
func OutOfResources(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// sweep starts the watches that are due. Without connections it
// sleeps until one comes, so an idle server is not woken for nothing.
func (l *watchListener) sweep() {
	period := max(l.after/2, time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case now := <-t.C:
			var polls []*Conn
			l.mu.Lock()
			if len(l.conns) == 0 {
				l.mu.Unlock()
				t.Stop()
				select {
				case <-l.done:
					return
				case <-l.first:
				}
				t.Reset(period)
				continue
			}
			for c := range l.conns {
				if w := c.wait.Load(); w != nil && now.Sub(w.since) >= l.after {
					if w.poll {
						polls = append(polls, c)
					} else {
						w.start(c)
					}
				}
			}
			l.mu.Unlock()
			for _, c := range polls {
				if w := c.wait.Load(); w != nil && w.poll {
					w.check(c)
				}
			}
		}
	}
}

// Conn is a client connection whose handler's wait can be watched.
type Conn struct {
	net.Conn
	l     *watchListener
	wait  atomic.Pointer[Wait]
	early []byte // read by a watch before the server asked for it
	eof   atomic.Bool
	// onClose runs once when the connection is closed (see OnClose).
	onClose atomic.Pointer[func()]
	// head follows what is read for the request head the server reads
	// now, until its handler runs (see lf.go): from the connection's
	// start, and from each answer's end (the server's StateIdle). Only
	// the goroutine serving the connection reads it then.
	head   headScan
	inHead bool
	// A pipelined head may already sit in the server's read buffer at
	// an answer's end, read with the request before it: the scan is
	// placed by stream offsets instead, where the head before it and
	// its body (Content-Length, or chunked: body follows its framing)
	// end. pos is how much has been read; next where the scanned head
	// starts (-1: not known, the scan starts at the next read); headEnd
	// where the last whole head scanned ended (-1: not known), and after
	// what was read past it before its handler said how long its body
	// is.
	pos, next, headEnd int64
	after              []byte
	body               chunkScan
}

// OnClose has f run when c is closed, by whoever closes it. A hijacking
// handler's cleanup goes here too: fasthttp closes a hijacked connection
// without running the hijack handler when it cannot flush what it owed
// the client first (a pipelined answer to a client that reset).
func (c *Conn) OnClose(f func()) { c.onClose.Store(&f) }

func (c *Conn) Read(p []byte) (int, error) {
	switch {
	case c.inHead && c.head.bare:
		// The server asks for more of a head that has a line ended by
		// LF alone: its parser waits for a CRLF blank line that may
		// never come. Refused now, not at the head timeout.
		return 0, errBareLF
	case c.body.bare || c.body.zero:
		// The same of a chunked body's trailer section: the body is
		// refused, and nothing after it read.
		return 0, c.body.refused()
	}
	var n int
	var err error
	if len(c.early) > 0 {
		n = copy(p, c.early)
		c.early = c.early[n:]
	} else if n, err = c.Conn.Read(p); err == io.EOF {
		c.eof.Store(true)
	}
	if n > 0 {
		c.follow(p[:n], c.pos)
		c.pos += int64(n)
	}
	return n, err
}

// follow scans b, read at stream offset off, for the head that starts
// at c.next (or, in a chunked body, at its end), and keeps what follows
// a whole head until its handler says where its body ends. Where the
// start is not known the server had read part of the head (or all of
// it) before: the scan sees no request line and has no opinion.
func (c *Conn) follow(b []byte, off int64) {
	if c.body.state != chunkOff {
		k := c.body.scan(b)
		switch c.body.state {
		case chunkEnd:
			// The next head starts here.
			c.body.state = chunkOff
			c.next = off + int64(k)
			b, off = b[k:], c.next
		case chunkBad:
			c.body = chunkScan{} // (no opinion on its trailers either)
			return
		default:
			return
		}
	}
	if c.next >= 0 && !c.head.done() {
		if skip := c.next - off; skip > 0 {
			if skip >= int64(len(b)) {
				return
			}
			b, off = b[skip:], c.next
		}
		k := c.head.scan(b)
		if !c.head.done() {
			return
		}
		c.headEnd, c.after = -1, c.after[:0]
		if c.head.whole {
			c.headEnd = off + int64(k)
		}
		b = b[k:]
	}
	if c.headEnd >= 0 && len(b) > 0 {
		if len(c.after)+len(b) > MaxHeaderBytes {
			// More than the server's buffer holds, before the handler
			// ran: not followed (the scan starts at the next read).
			c.headEnd, c.after = -1, nil
			return
		}
		c.after = append(c.after, b...)
	}
}

// headStarts says the server will read a new request head.
func (c *Conn) headStarts() {
	if c.body.following() {
		// The server is past a body the scan is still in: they read it
		// differently, and the head's start is not known.
		c.body.state = chunkOff
	}
	if c.next < 0 {
		c.head.reset()
		c.next = c.pos
	}
	c.inHead = true
}

// headRead says the server has read the request head, whose body is
// bodyLen bytes long (the parser's Content-Length: -1 for chunked, -2
// for none), and reports whether a line of it ended in LF alone.
func (c *Conn) headRead(bodyLen int) (bareLF bool) {
	c.inHead = false
	bareLF = c.head.bare
	end, after := c.headEnd, c.after
	c.headEnd, c.after = -1, nil
	c.head.reset()
	if cap(c.head.line) > 4<<10 {
		c.head.line = nil
	}
	c.next = -1
	c.body = chunkScan{}
	switch {
	case end < 0 || bareLF:
	case bodyLen == -1:
		// Chunked: the next head starts where the framing says the
		// body ends (follow sets next there).
		c.body.start()
		c.follow(after, end)
	default:
		c.next = end + int64(max(bodyLen, 0))
		if i := c.next - end; i < int64(len(after)) {
			c.follow(after[i:], c.next)
		}
	}
	return bareLF
}

// Close closes the connection lingering, as nginx and net/http do: when
// the server ends a connection while the client is still sending (a
// request refused for its size or its head), closing with unread data
// makes the kernel send a reset, and the reset can destroy the response
// before the client reads it. So the write side is shut first (the client
// sees the response, then EOF) and what still arrives is read and dropped
// until the client closes, for a bounded time.
func (c *Conn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	if f := c.onClose.Swap(nil); f != nil {
		defer (*f)()
	}
	hc, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok || hc.CloseWrite() != nil {
		return c.Conn.Close()
	}
	go linger(c.Conn)
	return nil
}

// Detach takes c out of the listener's care and returns the connection
// it wraps, for an owner that keeps the socket (the router's event loops
// take back a connection the server was lent); closing c instead would
// shut the socket's writing side.
func (c *Conn) Detach() net.Conn {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn
}

// Bounds of a lingering close: how long the client may take between two
// reads and in all.
const (
	lingerGap   = time.Second
	lingerTotal = 10 * time.Second
)

// linger reads and drops what the client still sends, then closes nc.
func linger(nc net.Conn) {
	defer nc.Close()
	end := time.Now().Add(lingerTotal)
	buf := make([]byte, 4096)
	for {
		d := time.Until(end)
		if d <= 0 {
			return
		}
		_ = nc.SetReadDeadline(time.Now().Add(min(d, lingerGap)))
		if _, err := nc.Read(buf); err != nil {
			return
		}
	}
}

// Goner is told that a waiting request's client hung up.
type Goner interface{ ClientGone() }

// Wait is one request's wait on its connection.
type Wait struct {
	since time.Time
	gone  Goner
	poll  bool // AwaitHangUp's kind: looked at, never read
	mu    sync.Mutex
	stop  func() // set once the watch started
	ended bool   // by EndWait, or once a hang-up was told
}

// Await marks the handler as waiting since since: from then on nothing
// but a watch may read the connection (the request, body included, must
// have been read). If the wait lasts, the connection is watched, and
// g.ClientGone is called (once, from another goroutine) if the client
// closes it or it fails. A byte that arrives meanwhile (a pipelined
// request) ends the watch quietly and is kept for the server.
func (c *Conn) Await(w *Wait, since time.Time, g Goner) {
	w.since, w.gone, w.poll = since, g, false
	c.wait.Store(w)
}

// AwaitHangUp is Await for a handler that is still reading the request
// (sending its body on to an instance that may not take it): nothing is
// read from the connection, which holds the body's next bytes. Instead,
// each sweep asks the kernel whether the client has closed or reset it,
// and g.ClientGone is called (once) if it has. End it with EndWait.
func (c *Conn) AwaitHangUp(w *Wait, since time.Time, g Goner) {
	w.since, w.gone, w.poll = since, g, true
	c.wait.Store(w)
}

// check tells w.gone if c's client has hung up. Holding w.mu keeps
// EndWait's promise: once it returns, ClientGone has returned too.
func (w *Wait) check(c *Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended || !hungUp(c.Conn) {
		return
	}
	w.ended = true
	w.gone.ClientGone()
}

// hungUp says whether the peer of nc has closed (or reset) it, without
// reading: POLLRDHUP is set once the peer's FIN has arrived, even while
// unread data is queued before it.
func hungUp(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		// Over TLS the socket is the one below it: a FIN is a FIN.
		tc, isTLS := nc.(*tls.Conn)
		if !isTLS {
			return false
		}
		if sc, ok = tc.NetConn().(syscall.Conn); !ok {
			return false
		}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var gone bool
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			gone = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone
}

// EndWait ends the wait Await marked, if any. Once it returns, no watch
// reads the connection and ClientGone, if it was called, has returned;
// the read deadline is then cleared, for the server to set its own.
func (c *Conn) EndWait() {
	w := c.wait.Swap(nil)
	if w == nil {
		return
	}
	w.mu.Lock()
	w.ended = true
	stop := w.stop
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// aLongTimeAgo, as a read deadline, ends a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// start starts w's watch on c, unless it ended or already started.
func (w *Wait) start(c *Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended || w.stop != nil {
		return
	}
	// A deadline left from reading the request head would end the watch
	// early; the stop function sets the only one that matters.
	_ = c.Conn.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [1]byte
		n, err := c.Conn.Read(b[:])
		if n > 0 {
			c.early = append(c.early, b[0])
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			w.gone.ClientGone()
		}
	}()
	w.stop = func() {
		_ = c.Conn.SetReadDeadline(aLongTimeAgo)
		<-done
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
}
