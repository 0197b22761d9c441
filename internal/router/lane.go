package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/httpserve"
)

// The lane is the router's event-loop fast path. A goroutine per
// connection costs a scheduler wake-up and a read that finds nothing at
// each step of each request, which is most of what kept the fasthttp
// router behind nginx (docs/performance.md, item 16). So the public
// listener is served by a few loops, each on one locked thread with its
// own epoll set, in nginx's manner: non-blocking sockets, level-triggered,
// one epoll_wait per batch of events.
//
// A loop serves the common case in place: a whole request head (and a
// small body, if any) in one read, for a function with an instance free
// now, answered with a Content-Length, chunked or close-delimited body,
// relayed as it comes. Every other connection (the API, a cold start or a
// queue, an upgrade, a large or streamed body, a head split across reads,
// HTTP/1.0 without a Host) is handed to the fasthttp server with the
// bytes read so far, so the slow paths keep their one implementation;
// after a function request there, most come back (takeBack). Failures
// after a request was sent (a crash, a timeout, a malformed answer) are
// worked out by the slow path's own rules on a goroutine (they may wait
// for the instance's exit), and the loop writes the answer.

// Lane serves a listener's connections through event loops, handing what
// it does not serve to Handoff.
type Lane struct {
	rt      *Router
	cache   CachedResolver
	try     TryLeaser
	ln      net.Listener // held: the loops use its descriptor (lnFD), which its finalizer would close
	lnFD    int
	loops   []*loop
	handoff *handoffListener
	closing atomic.Bool
	conns   atomic.Int64 // client connections the loops hold
	limit   *httpserve.ConnLimit
	wg      sync.WaitGroup
	// served counts requests answered in the loops; handoffs, connections
	// given to the slow path, by reason.
	served   atomic.Int64
	handoffs [handoffReasons]atomic.Int64
	adopted  atomic.Int64 // connections the server gave back
	// How long a connection may wait for its first request, and for
	// each one after (httpserve's limits; tests shorten them).
	headerTimeout, idleTimeout atomic.Int64 // nanoseconds
}

// Limits of the lane; anything past them takes the slow path.
const (
	laneReadBuf   = 8 << 10  // a client's read buffer: a request must fit in it
	laneFreeBufs  = 64       // read buffers a loop keeps for reuse
	laneMaxBody   = 4 << 10  // the largest request body served in place
	laneUpBuf     = 32 << 10 // an instance connection's read buffer
	laneMaxUpHead = 64 << 10 // the largest answer head (as on the slow path)
	laneSweep     = 100 * time.Millisecond
	// laneBusyWait: a loop whose last wait found events sooner than this
	// is under load, and waits raw (see wait).
	laneBusyWait = time.Millisecond
)

// handoffReason says why a loop gave a connection to the slow path.
type handoffReason int

const (
	served             handoffReason = iota // not handed over
	handoffNotFunction                      // the API, metrics, health
	handoffProtocol                         // HTTP/1.0 without Host, other versions, Upgrade, Expect, absolute-form, CONNECT
	handoffBody                             // chunked, over 4 KiB, or not all in the first read
	handoffHead                             // split across reads, or over the loop's buffer
	handoffMalformed                        // unparseable, or a target the router refuses
	handoffNotCached                        // the function (or tag) is not in memory yet, or does not exist
	handoffNoCapacity                       // no instance free now: a cold start, or a queue
	handoffNetwork                          // the instance is not on a Unix socket
	handoffDial                             // the instance could not be dialled
	handoffRetry                            // the request never reached its instance: served again elsewhere
	handoffPrivate                          // a private function: its token is checked there
	handoffReasons
)

var handoffNames = [handoffReasons]string{"", "not_function", "protocol", "body", "head", "malformed",
	"not_cached", "no_capacity", "network", "dial", "retry", "private"}

// Counts reports the requests the loops served, the connections the
// slow path gave back, and, by reason, the connections the loops handed
// to the slow path (for metrics).
func (l *Lane) Counts() (served, takenBack int64, handoffs map[string]int64) {
	handoffs = make(map[string]int64, handoffReasons-1)
	for r := handoffNotFunction; r < handoffReasons; r++ {
		handoffs[handoffNames[r]] = l.handoffs[r].Load()
	}
	return l.served.Load(), l.adopted.Load(), handoffs
}

// CachedResolver resolves from memory alone: a loop must not wait on the
// store. A miss takes the slow path, which loads.
type CachedResolver interface {
	Cached(owner, name, tag string) *backend.Spec
}

// TryLeaser leases an instance only if one is free now: a loop must not
// wait for a cold start or a queue.
type TryLeaser interface {
	TryAcquire(spec *backend.Spec) *activator.Lease
}

// LaneConfig sets up a Lane.
type LaneConfig struct {
	Loops int // event loops, each on its own thread
	// Spin is how long a loop polls for events before it sleeps, while
	// its recent waits have been shorter than that (0: never).
	Spin time.Duration
	// Limit bounds each client's connections (nil: no bound); a
	// connection's slot goes with it to the slow path and back.
	Limit *httpserve.ConnLimit
}

// DefaultSpin is spry serve's --router-spin: longer than a trivial
// function's answer or a kept-alive client's next request under load,
// short enough that a spin which finds nothing costs little.
const DefaultSpin = 50 * time.Microsecond

// NewLane serves ln's connections with cfg.Loops event loops. ln must be
// a TCP listener; the lane never closes it (its owner does, after
// Shutdown).
func (rt *Router) NewLane(ln net.Listener, cfg LaneConfig) (*Lane, error) {
	n := cfg.Loops
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, errors.New("lane: the listener has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	cache, ok1 := rt.resolver.(CachedResolver)
	try, ok2 := rt.leaser.(TryLeaser)
	if !ok1 || !ok2 {
		return nil, errors.New("lane: the resolver or the leaser cannot answer without waiting")
	}
	l := &Lane{rt: rt, ln: ln, cache: cache, try: try, limit: cfg.Limit, handoff: &handoffListener{ch: make(chan net.Conn, 1024), done: make(chan struct{}), addr: ln.Addr()}}
	l.headerTimeout.Store(int64(httpserve.HeaderTimeout))
	l.idleTimeout.Store(int64(httpserve.IdleTimeout))
	if err := rc.Control(func(fd uintptr) { l.lnFD = int(fd) }); err != nil {
		return nil, err
	}
	// A loop blocked in a raw epoll_wait keeps its P; do that only when
	// Ps are to spare.
	raw := runtime.GOMAXPROCS(0) > 2*n
	for i := 0; i < max(n, 1); i++ {
		lp, err := newLoop(l, raw, cfg.Spin)
		if err != nil {
			for _, lp := range l.loops {
				lp.closeFDs()
			}
			return nil, err
		}
		l.loops = append(l.loops, lp)
	}
	for _, lp := range l.loops {
		l.wg.Add(1)
		go lp.run()
	}
	rt.lane = l
	return l, nil
}

// Handoff is the listener on which the connections the lane does not
// serve arrive, for the fasthttp server.
func (l *Lane) Handoff() net.Listener { return l.handoff }

// Shutdown stops taking connections, closes idle ones, lets requests in
// flight finish (closing their connections after), and stops the loops;
// when ctx ends first, what is left is closed.
func (l *Lane) Shutdown(ctx context.Context) error {
	l.closing.Store(true)
	for _, lp := range l.loops {
		lp.do(func() { lp.stopAccepting(); lp.closeIdle() })
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for l.conns.Load() > 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
		}
	}
	l.closeLoops()
	return err
}

func (l *Lane) closeLoops() {
	for _, lp := range l.loops {
		lp.do(func() { lp.stopAccepting(); lp.quit = true })
	}
	l.wg.Wait()
}

// handoffListener yields the connections the loops hand over.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoffListener) Close() error {
	h.once.Do(func() {
		close(h.done)
		// Connections handed over as it closed are closed, not lost.
		for {
			select {
			case c := <-h.ch:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (h *handoffListener) Addr() net.Addr { return h.addr }

// give passes c to the fasthttp server without ever blocking a loop.
func (h *handoffListener) give(c net.Conn) {
	select {
	case <-h.done:
		c.Close()
		return
	default:
	}
	select {
	case h.ch <- c:
	default:
		go func() {
			select {
			case h.ch <- c:
			case <-h.done:
				c.Close()
			}
		}()
	}
}

// prefixConn is a handed-over connection with the bytes the loop had
// read from it first. back marks one that may come back to the loops
// once the slow path has answered a function request on it
// (Lane.takeBack).
type prefixConn struct {
	httpserve.Wrapped // CloseWrite and SyscallConn, for the server's lingering close and client watch
	pre               []byte
	back              bool
	// retried: its first request was tried on an instance already and
	// not delivered; the slow path's attempt is the one retry.
	retried bool
	// arrived: when the loop had its first request, so that the slow
	// path's cold start (Spry-Cold-Start, the metric) counts the hand-over
	// too, as the client does.
	arrived time.Time
	slot    *httpserve.ConnSlot // its client's count, released at Close
}

func (c *prefixConn) Close() error {
	err := c.Conn.Close()
	c.slot.Release()
	return err
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// loop is one event loop. Everything in it is touched only by its own
// goroutine, but for the command queue.
type loop struct {
	lane   *Lane
	ep     int
	wakeR  int
	wakeW  int
	raw    bool
	spin   time.Duration
	quit   bool
	listen bool
	ents   []ent // by file descriptor
	events []syscall.EpollEvent
	idle   map[*backend.Instance][]*laneUp
	// For parsing heads with fasthttp's readers.
	rd *bytes.Reader
	br *bufio.Reader
	// out collects what goes to a client in one write.
	out       []byte
	lastSweep time.Time
	now       time.Time // as of the last wake-up
	mu        sync.Mutex
	cmds      []func()
	ended     bool          // run is past its last command: post refuses (under mu)
	dead      chan struct{} // closed when run returns
	gen       uint32        // the last registration's generation
	spinning  bool          // the last wait was short: spin before the next
	busy      bool          // the last wait found events within busyWait
	busyWait  time.Duration // laneBusyWait (tests set their own)
	held      int           // entries in ents: connections to sweep
	// due is the earliest deadline the last sweep found among the
	// connections it kept (zero: none), and dirty says events came
	// since, which may have brought earlier ones. A quiet loop sleeps
	// until due rather than sweep ten times a second for nothing.
	due    time.Time
	dirty  bool
	sweeps int // how many sweeps ran (tests read it)
	// bufs and upBufs are read buffers no client or instance connection
	// holds (see takeBuf).
	bufs, upBufs [][]byte
	// resumeAccept: accepting is paused until the next sweep
	// (pauseAccepting), and warnedAccept is when that was last logged.
	resumeAccept bool
	warnedAccept time.Time
	warnedDrain  time.Time // when drainIdle last logged
}

type ent struct {
	c *laneClient
	u *laneUp
}

// gen is the generation of e's registration.
func (e ent) gen() uint32 {
	switch {
	case e.c != nil:
		return e.c.gen
	case e.u != nil:
		return e.u.gen
	}
	return 0
}

// laneClient is a client connection the loop serves.
type laneClient struct {
	fd int
	ip string
	// trusted: ip is one of the router's trusted proxies (Config.TrustedProxies),
	// told once, not for each request.
	trusted bool
	in      []byte // read, not yet answered
	reqLen  int    // bytes of in that the request in flight took
	out     []byte // written to the client's socket buffer later
	inv     *invocation
	up      *laneUp
	h       fasthttp.RequestHeader
	events  uint32
	gen     uint32 // of its epoll registration
	// headSent: the answer's head went to the client (a failure can no
	// longer be answered with an error).
	headSent bool
	served   bool // it had a request answered
	// lingerUntil, once set, is when a connection being closed (see
	// linger) is closed whatever the client does.
	lingerUntil time.Time
	// hup: the client sent its last byte (or is gone); full: its buffer
	// is, while a request is in flight; pending: the answer to a failed
	// request is being worked out on another goroutine.
	hup, full, pending bool
	closeAfter         bool
	http10             bool // the request in flight is HTTP/1.0
	lastActive         time.Time
	slot               *httpserve.ConnSlot // its client's count (Lane.limit)
}

// laneUp is a connection to an instance.
type laneUp struct {
	fd     int
	inst   *backend.Instance
	c      *laneClient // the client it serves, nil when idle
	buf    []byte
	n      int
	out    []byte // the request, still to write
	wrote  int
	reused bool
	paused bool // not read while the client's socket is full
	events uint32
	gen    uint32
	h      fasthttp.ResponseHeader
	mode   int
	left   int64
	chunks chunkRelay
	status int
	// codings are the answer's transfer codings besides chunked.
	codings string
	keep    bool // may carry another request after this answer
	since   time.Time
}

// Answer body framings.
const (
	bodyNone = iota
	bodyFixed
	bodyChunked
	bodyToClose
)

func newLoop(l *Lane, raw bool, spin time.Duration) (*loop, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(ep)
		return nil, err
	}
	lp := &loop{lane: l, ep: ep, wakeR: p[0], wakeW: p[1], raw: raw, spin: spin, busyWait: laneBusyWait, events: make([]syscall.EpollEvent, 256),
		idle: map[*backend.Instance][]*laneUp{}, rd: bytes.NewReader(nil), lastSweep: time.Now(), now: time.Now(), dead: make(chan struct{})}
	lp.br = bufio.NewReaderSize(lp.rd, laneMaxUpHead+1)
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, lp.wakeR, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(lp.wakeR)}); err != nil {
		lp.closeFDs()
		return nil, err
	}
	if err := lp.startAccepting(); err != nil {
		lp.closeFDs()
		return nil, err
	}
	return lp, nil
}

const epollExclusive = 1 << 28

func (lp *loop) closeFDs() {
	syscall.Close(lp.ep)
	syscall.Close(lp.wakeR)
	syscall.Close(lp.wakeW)
}

// do runs f on the loop and waits for it.
func (lp *loop) do(f func()) {
	done := make(chan struct{})
	lp.post(func() { f(); close(done) })
	select {
	case <-done:
	case <-lp.dead:
	}
}

// post has f run on the loop; false if the loop has ended, and f will
// not run. (Its wake-up pipe is closed then, and the number may be
// another file's: it is written under mu, which run's end takes.)
func (lp *loop) post(f func()) bool {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.ended {
		return false
	}
	lp.cmds = append(lp.cmds, f)
	_, _ = syscall.Write(lp.wakeW, []byte{1}) // a pipe
	return true
}

func (lp *loop) run() {
	defer lp.lane.wg.Done()
	defer close(lp.dead)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for !lp.quit {
		n, err := lp.wait(lp.sweepWait())
		if err != nil && err != syscall.EINTR {
			lp.lane.rt.log.Error("event loop", "err", err)
			break
		}
		// One clock read per batch serves the idle times (which need no
		// precision); invocations read their own. It is read before the
		// batch: a connection accepted after a long sleep is timed from
		// now, not from before the sleep.
		lp.now = time.Now()
		if n > 0 {
			lp.dirty = true
		}
		for i := 0; i < n; i++ {
			ev := lp.events[i]
			fd := int(ev.Fd)
			switch {
			case fd == lp.lane.lnFD && lp.listen:
				// (Once the listener is closed its number may be reused.)
				lp.accept()
			case fd == lp.wakeR:
				lp.runCommands()
			case fd < len(lp.ents):
				e := lp.ents[fd]
				// An event for a descriptor closed earlier in this batch
				// (and perhaps reused since) is not the new one's.
				if e.gen() != uint32(ev.Pad) {
					continue
				}
				if e.c != nil {
					lp.clientEvent(e.c, ev.Events)
				} else if e.u != nil {
					lp.upEvent(e.u, ev.Events)
				}
			}
		}
		if lp.now.Sub(lp.lastSweep) >= laneSweep {
			lp.lastSweep = lp.now
			lp.sweep(lp.now)
		}
	}
	lp.quit = true // (also after a failed wait: nothing is taken in now)
	lp.runCommands()
	lp.closeAll()
	lp.mu.Lock()
	lp.ended = true
	late := lp.cmds
	lp.cmds = nil
	lp.mu.Unlock()
	// Posted since the last look: an adopted connection's is closed
	// (quit), a failed request's answer finds its client closed.
	for _, f := range late {
		f()
	}
	lp.closeFDs()
}

// sweepWait is how long the next wait may last, in milliseconds (-1: no
// limit). While events come, the loop sweeps every laneSweep. A quiet
// loop sleeps until the last sweep's earliest deadline (an idle pooled
// instance connection's is a minute away), and one that holds no
// connection until one comes: an idle server's loops do not wake ten
// times a second for nothing.
func (lp *loop) sweepWait() int {
	switch {
	case lp.held == 0 && !lp.resumeAccept:
		return -1
	case lp.dirty || lp.resumeAccept:
		return int(laneSweep / time.Millisecond)
	case lp.due.IsZero():
		return -1
	}
	d := max(lp.due.Sub(lp.now), lp.lastSweep.Add(laneSweep).Sub(lp.now))
	return int((d + time.Millisecond - 1) / time.Millisecond)
}

// wait is epoll_wait, for up to msec.
//
// While its recent waits have been short, a loop first polls for up to
// its spin time before it sleeps. On a virtual machine, waking a sleeping
// thread (and its idle CPU) costs tens of microseconds, about a third of
// a warm request's time through a proxy; under steady load the next
// event usually comes within the spin, and is then taken at once. One
// spin that finds nothing stops the spinning until a wait is short
// again, so an idle or lightly loaded loop sleeps as before.
//
// A raw wait (see poll) is made only while the loop is busy: its last
// wait found events within busyWait. A raw wait looks to Go's
// scheduler like a goroutine that never yields, so sysmon stays awake and
// preempts it every 10 ms, with a signal and a hand-over of its thread;
// an idle server did that a hundred times a second (~1.6% of a CPU). A
// quiet loop's wait is an ordinary system call instead, which lets the
// scheduler and sysmon sleep; the first request after a quiet spell pays
// the few microseconds of getting its P back.
func (lp *loop) wait(msec int) (int, error) {
	if lp.spinning {
		deadline := time.Now().Add(lp.spin)
		for {
			if n, err := lp.poll(0, true); n != 0 || err != nil {
				return n, err
			}
			if time.Now().After(deadline) {
				break
			}
		}
		lp.spinning = false
	}
	start := time.Now()
	n, err := lp.poll(msec, lp.raw && lp.busy)
	waited := time.Since(start)
	lp.spinning = lp.spin > 0 && n > 0 && waited < lp.spin
	lp.busy = n > 0 && waited < lp.busyWait
	return n, err
}

// poll is one epoll_wait. A raw one is made without telling the
// scheduler, so the thread keeps its P and wakes straight into the loop;
// a preemption signal interrupts it, so the loop still stops for the
// garbage collector. A poll that does not wait is always raw.
func (lp *loop) poll(msec int, raw bool) (int, error) {
	if !raw && msec != 0 {
		return syscall.EpollWait(lp.ep, lp.events, msec)
	}
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(lp.ep), uintptr(unsafe.Pointer(&lp.events[0])),
		uintptr(len(lp.events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// rawRead and rawWrite are recv(2) and send(2) on the loop's sockets,
// as nginx makes them: they skip read's and write's file layer, and send
// raises no SIGPIPE. The sockets are non-blocking: the calls never wait,
// so the scheduler need not be told (as syscall.Read does), and the loop
// keeps its P.
func rawRead(fd int, p []byte) (int, error) { return rawIO(syscall.SYS_RECVFROM, fd, p, 0) }
func rawWrite(fd int, p []byte) (int, error) {
	return rawIO(syscall.SYS_SENDTO, fd, p, syscall.MSG_NOSIGNAL)
}

func rawIO(call uintptr, fd int, p []byte, flags uintptr) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := syscall.RawSyscall6(call, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func (lp *loop) runCommands() {
	var b [64]byte
	for {
		if n, _ := syscall.Read(lp.wakeR, b[:]); n <= 0 {
			break
		}
	}
	lp.mu.Lock()
	cmds := lp.cmds
	lp.cmds = nil
	lp.mu.Unlock()
	for _, f := range cmds {
		f()
	}
}

// startAccepting puts the listener in the loop's epoll set; every loop
// waits on it, and EPOLLEXCLUSIVE wakes one.
func (lp *loop) startAccepting() error {
	err := syscall.EpollCtl(lp.ep, syscall.EPOLL_CTL_ADD, lp.lane.lnFD, &syscall.EpollEvent{Events: syscall.EPOLLIN | epollExclusive, Fd: int32(lp.lane.lnFD)})
	lp.listen = err == nil
	return err
}

// pauseAccepting stops accepting until the next sweep: out of
// descriptors (or kernel memory), the listener stays readable, and a
// level-triggered loop would only spin on failing accepts. nginx
// likewise stops accepting for a while.
func (lp *loop) pauseAccepting(err error) {
	lp.stopAccepting()
	lp.resumeAccept = true
	if lp.now.Sub(lp.warnedAccept) >= 10*time.Second {
		lp.warnedAccept = lp.now
		lp.lane.rt.log.Warn("cannot accept connections; pausing accepts", "err", err, "open_connections", lp.lane.conns.Load())
	}
}

// drainCount is how many idle connections drainIdle closes at once, as
// nginx's ngx_drain_connections: a scan of the loop's entries is paid
// once for as many accepts.
const drainCount = 32

// drainIdle makes room for a new connection, when the server holds the
// most it may (why: ErrServerFull), by closing up to drainCount of the loop's clients that
// wait for a request with nothing unanswered (and at most half of
// those), the longest idle first,
// as nginx closes its reusable connections when worker_connections run
// out. A keep-alive client takes such a close as it takes an idle
// timeout, and sends again on a new connection. It returns how many
// it closed.
func (lp *loop) drainIdle(why error) int {
	var idle []*laneClient
	for _, e := range lp.ents {
		if c := e.c; c != nil && c.fd >= 0 && c.lingerUntil.IsZero() && c.inv == nil && c.up == nil &&
			!c.pending && !c.hup && len(c.in) == 0 && len(c.out) == 0 {
			idle = append(idle, c)
		}
	}
	// At most half of them: the newest idle are likeliest to send next,
	// and one just accepted has had no time to.
	if n := min(drainCount, (len(idle)+1)/2); n < len(idle) {
		slices.SortFunc(idle, func(a, b *laneClient) int { return a.lastActive.Compare(b.lastActive) })
		idle = idle[:n]
	}
	for _, c := range idle {
		lp.closeClient(c)
	}
	if len(idle) > 0 && lp.now.Sub(lp.warnedDrain) >= 10*time.Second {
		lp.warnedDrain = lp.now
		lp.lane.rt.log.Warn("closing idle connections to make room for new ones", "why", why, "closed", len(idle), "open_connections", lp.lane.conns.Load())
	}
	return len(idle)
}

func (lp *loop) stopAccepting() {
	lp.resumeAccept = false
	if lp.listen {
		lp.listen = false
		_ = syscall.EpollCtl(lp.ep, syscall.EPOLL_CTL_DEL, lp.lane.lnFD, nil)
	}
}

// ctl adds or changes fd in the epoll set; gen goes with its events, to
// tell them from a closed descriptor's of the same number.
func (lp *loop) ctl(op, fd int, events, gen uint32) error {
	return syscall.EpollCtl(lp.ep, op, fd, &syscall.EpollEvent{Events: events, Fd: int32(fd), Pad: int32(gen)})
}

func (lp *loop) nextGen() uint32 {
	lp.gen++
	if lp.gen == 0 {
		lp.gen++
	}
	return lp.gen
}

func (lp *loop) set(fd int, e ent) {
	for fd >= len(lp.ents) {
		lp.ents = append(lp.ents, make([]ent, len(lp.ents)+64)...)
	}
	if old := lp.ents[fd]; old.c == nil && old.u == nil {
		lp.held++
	}
	lp.ents[fd] = e
}

// clear takes fd's entry out of the loop.
func (lp *loop) clear(fd int) {
	if old := lp.ents[fd]; old.c != nil || old.u != nil {
		lp.held--
	}
	lp.ents[fd] = ent{}
}

func (lp *loop) accept() {
	for lp.listen && !lp.lane.closing.Load() {
		fd, sa, err := syscall.Accept4(lp.lane.lnFD, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
		if err != nil {
			// EAGAIN: another loop took it, or none is left.
			// Out of descriptors it pauses, as nginx does, and drains
			// nothing: accept4 says EMFILE before it looks for a
			// connection, so it may come with none waiting.
			if httpserve.OutOfResources(err) {
				lp.pauseAccepting(err)
			}
			return
		}
		var ip netip.Addr
		switch a := sa.(type) {
		case *syscall.SockaddrInet4:
			ip = netip.AddrFrom4(a.Addr)
		case *syscall.SockaddrInet6:
			ip = netip.AddrFrom16(a.Addr)
		}
		slot, err := lp.lane.limit.Take(ip)
		if err == httpserve.ErrServerFull && lp.drainIdle(err) > 0 {
			slot, err = lp.lane.limit.Take(ip)
		}
		if err != nil {
			// Its client holds the most already, or the server does
			// and had no idle connection to close: closed before any
			// read.
			syscall.Close(fd)
			continue
		}
		_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		c := &laneClient{fd: fd, lastActive: lp.now, slot: slot}
		if ip.IsValid() {
			c.ip = net.IP(ip.AsSlice()).String()
		}
		c.trusted = lp.lane.rt.trusts(c.ip)
		c.events = syscall.EPOLLIN | syscall.EPOLLRDHUP
		c.gen = lp.nextGen()
		if err := lp.ctl(syscall.EPOLL_CTL_ADD, fd, c.events, c.gen); err != nil {
			syscall.Close(fd)
			slot.Release()
			continue
		}
		lp.set(fd, ent{c: c})
		lp.lane.conns.Add(1)
	}
}

// sync sets what the loop waits for on c from its state: input unless the
// client said it is done or the buffer is full, and room to write while
// output waits.
func (lp *loop) sync(c *laneClient) {
	ev := uint32(syscall.EPOLLIN | syscall.EPOLLRDHUP)
	if c.hup || c.full {
		ev = 0
	}
	if len(c.out) > 0 {
		ev |= syscall.EPOLLOUT
	}
	if c.events != ev && c.fd >= 0 {
		c.events = ev
		_ = lp.ctl(syscall.EPOLL_CTL_MOD, c.fd, ev, c.gen)
	}
}

func (lp *loop) clientEvent(c *laneClient, ev uint32) {
	if ev&(syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
		lp.clientGone(c)
		return
	}
	if ev&syscall.EPOLLOUT != 0 && len(c.out) > 0 && !lp.flush(c) {
		return
	}
	if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP) != 0 {
		lp.read(c)
	}
}

// read reads what the client sent: the next request, or one pipelined
// behind the request in flight.
func (lp *loop) read(c *laneClient) {
	if c.fd < 0 || c.hup {
		return
	}
	lp.takeBuf(c)
	busy := c.inv != nil || len(c.out) > 0 || c.pending
	if len(c.in) == cap(c.in) {
		if !busy {
			// A head larger than the buffer: the slow path reads it.
			lp.handOff(c, handoffHead)
			return
		}
		c.full = true
		lp.sync(c)
		return
	}
	if !c.lingerUntil.IsZero() {
		// Closing: what the client still sends is dropped until it
		// closes too (see linger).
		if n, err := rawRead(c.fd, c.in[:cap(c.in)]); err != syscall.EAGAIN && n <= 0 {
			lp.closeClient(c)
		}
		return
	}
	n, err := rawRead(c.fd, c.in[len(c.in):cap(c.in)])
	if err == syscall.EAGAIN {
		lp.dropBuf(c)
		return
	}
	if n <= 0 {
		if !busy {
			lp.closeClient(c)
			return
		}
		// The client is done sending, or gone. A request in flight is
		// given up if the function has not answered within the watch's
		// delay (the sweep sees to it), as on the slow path.
		c.hup = true
		lp.sync(c)
		return
	}
	c.in = c.in[:len(c.in)+n]
	c.lastActive = lp.now
	if !busy {
		lp.next(c)
	}
}

// next serves the request at the front of c.in, if any.
func (lp *loop) next(c *laneClient) {
	if c.closeAfter || lp.lane.closing.Load() {
		lp.linger(c)
		return
	}
	end := bytes.Index(c.in, []byte("\r\n\r\n"))
	head := c.in
	if end >= 0 {
		head = c.in[:end+4]
	}
	if httpserve.BareLF(head) {
		// A line ended by LF alone: the slow path's prompt 400 (see
		// httpserve's lf.go). The parser would take the head, or wait.
		lp.handOff(c, handoffMalformed)
		return
	}
	if end < 0 {
		switch {
		case c.hup:
			lp.closeClient(c)
		case len(c.in) > 0:
			// The rest of the head is not here yet: most clients send a
			// head in one write, and the slow path has the timeouts for
			// those that do not.
			lp.handOff(c, handoffHead)
		default:
			lp.dropBuf(c)
		}
		return
	}
	end += 4
	lp.rd.Reset(c.in[:end])
	lp.br.Reset(lp.rd)
	c.h.Reset()
	why := handoffMalformed
	switch err := c.h.Read(lp.br); {
	case err != nil:
	case lp.rd.Len()+lp.br.Buffered() > 0:
		// The parser ended the head before the "\r\n\r\n" found
		// (BareLF should have seen to that): the slow path decides.
		why = handoffHead
	default:
		why = lp.start(c, end)
	}
	if why != served {
		lp.handOff(c, why)
	}
}

// start sends the request whose head (end bytes of c.in) is parsed in
// c.h to a free instance, if it is one the lane serves; otherwise it says
// why not.
func (lp *loop) start(c *laneClient, end int) handoffReason {
	rh := &c.h
	uri := rh.RequestURI()
	rt := lp.lane.rt
	var owner, name string
	hosted := false
	if rt.domain != "" {
		owner, name, hosted = rt.hostFunction(rh.Host())
		if hosted && owner == "" {
			return handoffNotFunction // the slow path's 404
		}
	}
	switch {
	case len(uri) == 0 || uri[0] != '/':
		return handoffProtocol // absolute-form targets, OPTIONS *
	case !hosted && !Routes(uri):
		return handoffNotFunction
	case rh.IsHTTP11() && len(rh.Host()) == 0:
		return handoffMalformed // the slow path's 400
	case !rh.IsHTTP11() && (string(rh.Protocol()) != "HTTP/1.0" || len(rh.Host()) == 0),
		len(rh.Peek("Upgrade")) > 0 || len(rh.Peek("Expect")) > 0, string(rh.Method()) == fasthttp.MethodConnect:
		return handoffProtocol // (CONNECT: the slow path's 400)
	case httpserve.CheckHead(rh) != nil:
		return handoffMalformed // the slow path's 400
	}
	cl := bodyLength(rh)
	if cl < 0 || cl > laneMaxBody || int64(cl) > lp.lane.rt.cfg.MaxBodyBytes || end+cl > len(c.in) ||
		len(rh.Peek("Transfer-Encoding")) > 0 {
		return handoffBody
	}
	suri := string(uri)
	if !validTarget(suri) {
		return handoffMalformed
	}
	// Path, query and the names are all slices of suri, one allocation.
	path, query, _ := strings.Cut(suri, "?")
	rest := path
	if !hosted {
		var err error
		if owner, name, rest, err = SplitPath(path); err != nil || climbs(rest) {
			return handoffMalformed // the slow path's 404 or 400
		}
	}
	fn, tag, _ := strings.Cut(name, "@")
	spec := lp.lane.cache.Cached(owner, fn, tag)
	if spec == nil {
		return handoffNotCached
	}
	if spec.Private {
		// The token check has one implementation, the slow path's. The
		// connection stays there (handOffAt): its client is likely to
		// call private functions again.
		return handoffPrivate
	}
	lease := lp.lane.try.TryAcquire(spec)
	if lease == nil {
		return handoffNoCapacity
	}
	inst := lease.Instance()
	if inst.Network != "unix" {
		lease.Release()
		return handoffNetwork
	}
	u := lp.getIdle(inst)
	var dialErr error
	if u == nil {
		// The slow path dials again, and knows what to do when that
		// fails; but out of descriptors, handing over (which takes one
		// more) would fail too, so that is answered here.
		if u, dialErr = lp.dial(inst); dialErr != nil && !httpserve.OutOfResources(dialErr) {
			lease.Release()
			return handoffDial
		}
	}
	rt.resolver.Invoked(spec)
	now := time.Now()
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = rt.cfg.Timeout
	}
	inv := &invocation{rt: rt, spec: spec, lease: lease, start: now, deadline: now.Add(timeout), method: methodString(rh.Method()),
		uri: suri, rest: rest, query: query, reqID: newRequestID()}
	c.inv, c.up, c.reqLen, c.headSent = inv, u, end+cl, false
	// "Connection: close" (or HTTP/1.0 without "keep-alive", which
	// fasthttp's parser reads the same way): the answer says so, and the
	// connection ends after it.
	c.closeAfter = c.closeAfter || rh.ConnectionClose()
	c.http10 = !rh.IsHTTP11()
	if dialErr != nil {
		lp.fail(c, dialErr)
		return served
	}
	u.c = c
	u.out = appendRequestHead(u.out[:0], rh, inv, c.ip, false, c.trusted)
	if cl > 0 {
		u.out = append(u.out, "Content-Length: "...)
		u.out = fasthttp.AppendUint(u.out, cl)
		u.out = append(u.out, "\r\n\r\n"...)
		u.out = append(u.out, c.in[end:end+cl]...)
	} else {
		if zeroLength(rh) {
			u.out = append(u.out, "Content-Length: 0\r\n"...)
		}
		u.out = append(u.out, "\r\n"...)
	}
	u.wrote, u.n, u.mode, u.status, u.keep = 0, 0, bodyNone, 0, true
	u.chunks = chunkRelay{}
	lp.send(u)
	return served
}

func (lp *loop) getIdle(inst *backend.Instance) *laneUp {
	us := lp.idle[inst]
	if len(us) == 0 {
		return nil
	}
	u := us[len(us)-1]
	lp.idle[inst] = us[:len(us)-1]
	if len(us) == 1 {
		delete(lp.idle, inst)
	}
	if lp.now.Sub(u.since) > maxIdleTime {
		lp.closeUp(u)
		return nil
	}
	return u
}

func (lp *loop) dial(inst *backend.Instance) (*laneUp, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: inst.Address}); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	u := &laneUp{fd: fd, inst: inst, events: syscall.EPOLLIN | syscall.EPOLLRDHUP, gen: lp.nextGen()}
	if err := lp.ctl(syscall.EPOLL_CTL_ADD, fd, u.events, u.gen); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	lp.set(fd, ent{u: u})
	return u, nil
}

// send writes what is left of u's request.
func (lp *loop) send(u *laneUp) {
	for u.wrote < len(u.out) {
		n, err := rawWrite(u.fd, u.out[u.wrote:])
		if err == syscall.EAGAIN {
			lp.upInterest(u, syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLOUT)
			return
		}
		if err != nil {
			lp.sendFailed(u, err)
			return
		}
		u.wrote += n
	}
	lp.upInterest(u, syscall.EPOLLIN|syscall.EPOLLRDHUP)
}

// sendFailed handles a failed write of a request.
func (lp *loop) sendFailed(u *laneUp, err error) {
	c := u.c
	if u.wrote > 0 {
		// Cut off: part of it may have reached the function.
		lp.fail(c, err)
		return
	}
	if !u.reused {
		// A fresh connection refused it: the instance is gone.
		lp.fail(c, errors.Join(errUndelivered, err))
		return
	}
	// A kept-alive connection the instance had closed: nothing reached
	// it, so a fresh connection replays nothing.
	inst := u.inst
	lp.closeUp(u)
	nu, derr := lp.dial(inst)
	switch {
	case derr == syscall.EAGAIN:
		// Its listen queue is full: busy, not dead. As for a first dial
		// (see start), the slow path dials again and waits its turn.
		inv := c.inv
		c.up, c.inv = nil, nil
		inv.lease.Release()
		lp.handOff(c, handoffDial)
		return
	case httpserve.OutOfResources(derr):
		lp.fail(c, derr) // the router's own want: a 503, the instance kept
		return
	case derr != nil:
		lp.fail(c, errors.Join(errUndelivered, derr))
		return
	}
	nu.c, nu.out, nu.keep = c, append(nu.out[:0], u.out...), true
	c.up = nu
	lp.send(nu)
}

func (lp *loop) upInterest(u *laneUp, events uint32) {
	if u.events != events {
		u.events = events
		_ = lp.ctl(syscall.EPOLL_CTL_MOD, u.fd, events, u.gen)
	}
}

// pause stops reading u while its client's socket is full. It leaves the
// epoll set: an instance that closes meanwhile would keep reporting it.
func (lp *loop) pause(u *laneUp) {
	u.paused = true
	_ = syscall.EpollCtl(lp.ep, syscall.EPOLL_CTL_DEL, u.fd, nil)
}

func (lp *loop) resume(u *laneUp) {
	u.paused = false
	u.events = syscall.EPOLLIN | syscall.EPOLLRDHUP
	_ = lp.ctl(syscall.EPOLL_CTL_ADD, u.fd, u.events, u.gen)
}

func (lp *loop) upEvent(u *laneUp, ev uint32) {
	if u.c == nil {
		// Idle, yet the instance closed it or said something unasked:
		// either way it cannot carry a request.
		lp.unpool(u)
		lp.closeUp(u)
		return
	}
	if ev&syscall.EPOLLOUT != 0 && u.wrote < len(u.out) {
		lp.send(u)
		if u.c == nil || u.wrote < len(u.out) {
			return
		}
	}
	if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 && !u.paused {
		lp.readUp(u)
	}
}

func (lp *loop) unpool(u *laneUp) {
	us := lp.idle[u.inst]
	for i, x := range us {
		if x == u {
			us = append(us[:i], us[i+1:]...)
			break
		}
	}
	if len(us) == 0 {
		delete(lp.idle, u.inst)
	} else {
		lp.idle[u.inst] = us
	}
}

// readUp reads the instance's answer and relays it.
func (lp *loop) readUp(u *laneUp) {
	c := u.c
	if u.buf == nil {
		u.buf = takeFrom(&lp.upBufs, laneUpBuf)
	}
	if u.n == len(u.buf) {
		if u.status != 0 || len(u.buf) >= laneMaxUpHead {
			lp.fail(c, errBadAnswer)
			return
		}
		u.buf = append(u.buf, make([]byte, len(u.buf))...)
	}
	n, err := rawRead(u.fd, u.buf[u.n:])
	if err == syscall.EAGAIN {
		return
	}
	if n <= 0 {
		lp.upEnded(u, err)
		return
	}
	u.n += n
	lp.out = lp.out[:0]
	if u.status == 0 && !lp.readHead(u) {
		return
	}
	lp.relay(u)
}

// readHead parses the answer's head when it is all here, sends it on, and
// says whether the body may follow.
func (lp *loop) readHead(u *laneUp) bool {
	c := u.c
	for {
		end := bytes.Index(u.buf[:u.n], []byte("\r\n\r\n"))
		if end < 0 {
			// A first line that is no status line is refused now, not
			// when the head would end: it may never end.
			b := bytes.TrimLeft(u.buf[:u.n], "\r\n")
			if i := bytes.IndexByte(b, '\n'); i >= 0 && !statusLine(b[:i]) {
				lp.fail(c, errBadAnswer)
			}
			return false
		}
		end += 4
		if ambiguousHead(u.buf[:end]) {
			lp.fail(c, errBadAnswer)
			return false
		}
		lp.rd.Reset(u.buf[:end])
		lp.br.Reset(lp.rd)
		h := &u.h
		if err := h.Read(lp.br); err != nil {
			lp.fail(c, errBadAnswer)
			return false
		}
		// The head ends where the parser stopped: at a blank line of a bare
		// LF, that is before the "\r\n\r\n" found, as on the slow path.
		end -= lp.rd.Len() + lp.br.Buffered()
		var ok bool
		// The parser takes any Transfer-Encoding but identity for chunked
		// (length -1): the head is looked through for codings only then,
		// not on every answer.
		u.codings, ok = "", true
		if h.ContentLength() == -1 {
			u.codings, ok = answerCodings(u.buf[:end])
		}
		if !ok && (h.StatusCode() < 200 || hasAnswerBody(c.inv, h)) {
			lp.fail(c, errBadAnswer)
			return false
		}
		copy(u.buf, u.buf[end:u.n])
		u.n -= end
		s := h.StatusCode()
		if s < 100 || s > 999 || s == fasthttp.StatusSwitchingProtocols {
			lp.fail(c, errBadAnswer)
			return false
		}
		if s >= 200 {
			break
		}
		// Informational (103 Early Hints): skipped, as on the slow path.
	}
	h := &u.h
	inv := c.inv
	u.status = h.StatusCode()
	if u.codings != "" && c.http10 && hasAnswerBody(inv, h) {
		// As on the slow path (see codings.go).
		lp.fail(c, errBadAnswer)
		return false
	}
	// Before the body's framing is read from the head: fixHeader gives an
	// unframed 205 its length.
	if lp.lane.rt.fixHeader(h, inv) {
		u.keep = false
	}
	cl := h.ContentLength()
	switch {
	case !hasAnswerBody(inv, h):
		u.mode = bodyNone
	case cl >= 0:
		u.mode, u.left = bodyFixed, int64(cl)
	case cl == -1:
		u.mode = bodyChunked
	default:
		u.mode, u.keep = bodyToClose, false
	}
	switch u.mode {
	case bodyChunked:
		if c.http10 {
			// An HTTP/1.0 client knows no chunks: it gets the data, to
			// the connection's end.
			u.chunks.raw = true
			h.Del(fasthttp.HeaderTransferEncoding)
			h.SetContentLength(-2)
			c.closeAfter = true
		} else {
			h.SetContentLength(-1)
		}
	case bodyToClose:
		// The client learns where the body ends the same way.
		h.SetConnectionClose()
		c.closeAfter = true
	}
	if c.closeAfter || lp.lane.closing.Load() {
		h.SetConnectionClose()
		c.closeAfter = true
	} else if c.http10 {
		// It asked to keep the connection, and must be told it is kept.
		h.Set(fasthttp.HeaderConnection, "keep-alive")
	}
	h.SetNoDefaultContentType(true)
	lp.out = h.AppendBytes(lp.out[:0])
	if u.mode == bodyChunked && u.codings != "" {
		lp.out = withCodings(lp.out, u.codings)
	}
	c.headSent = true
	return true
}

// relay sends on the body bytes in u.buf and finishes the invocation when
// the body is all sent on.
func (lp *loop) relay(u *laneUp) {
	c := u.c
	in := u.buf[:u.n]
	took := 0
	done := false
	switch u.mode {
	case bodyNone:
		done = true
	case bodyFixed:
		k := int(min(u.left, int64(len(in))))
		lp.out = append(lp.out, in[:k]...)
		u.left -= int64(k)
		took, done = k, u.left == 0
	case bodyChunked:
		var err error
		lp.out, took, err = u.chunks.relay(lp.out, in)
		if err != nil {
			// What was sent cannot be taken back: the client gets the
			// head and the good part of the body, cut off there.
			u.keep = false
			if lp.write(c, lp.out) {
				lp.cutOff(c)
			}
			return
		}
		done = u.chunks.done()
	case bodyToClose:
		lp.out = append(lp.out, in...)
		took = len(in)
	}
	copy(u.buf, u.buf[took:u.n])
	u.n -= took
	if done {
		// Counted before the client can see the end (tests read it).
		lp.lane.served.Add(1)
	}
	if !lp.write(c, lp.out) {
		return
	}
	lp.out = lp.out[:0]
	if done {
		lp.finish(c)
	} else if len(c.out) > 0 {
		// The client's socket is full: stop reading the instance until it
		// drains.
		lp.pause(u)
	}
}

// write writes p to c, keeping what the socket does not take; false if
// the client is gone.
func (lp *loop) write(c *laneClient, p []byte) bool {
	if len(c.out) > 0 {
		c.out = append(c.out, p...)
		return true
	}
	for len(p) > 0 {
		n, err := rawWrite(c.fd, p)
		if err == syscall.EAGAIN {
			c.out = append(c.out[:0], p...)
			lp.sync(c)
			return true
		}
		if err != nil {
			lp.clientGone(c)
			return false
		}
		p = p[n:]
	}
	return true
}

// flush writes what c holds. It reports whether the caller may go on
// with c: all was written, and it is still busy with a request.
func (lp *loop) flush(c *laneClient) bool {
	for len(c.out) > 0 {
		n, err := rawWrite(c.fd, c.out)
		if err == syscall.EAGAIN {
			return false
		}
		if err != nil {
			lp.clientGone(c)
			return false
		}
		c.out = c.out[n:]
	}
	c.out = nil
	lp.sync(c)
	if u := c.up; u != nil && u.paused {
		lp.resume(u)
	}
	if c.inv == nil {
		if c.closeAfter {
			lp.linger(c)
		} else if !c.pending {
			lp.next(c)
		}
		return false
	}
	return true
}

// finish ends the invocation whose answer was all sent on.
func (lp *loop) finish(c *laneClient) {
	u, inv := c.up, c.inv
	c.up, c.inv = nil, nil
	status := u.status
	lp.release(u)
	inv.finish(status)
	c.in = c.in[:copy(c.in, c.in[c.reqLen:])]
	c.reqLen = 0
	c.served = true
	c.lastActive = lp.now
	c.full = false
	lp.sync(c)
	if len(c.out) > 0 {
		return
	}
	lp.next(c) // which lingers and closes if c.closeAfter
}

// release puts u back in the pool if it can carry another request.
func (lp *loop) release(u *laneUp) {
	u.c = nil
	inst := u.inst
	select {
	case <-inst.Done():
		u.keep = false
	default:
	}
	// Bytes past the answer answer nothing asked yet.
	if !u.keep || u.n > 0 || u.paused || len(lp.idle[inst]) >= maxIdlePerInstance {
		lp.closeUp(u)
		return
	}
	u.reused, u.since = true, lp.now
	u.status = 0
	// A pooled connection is not read: its buffer serves others.
	giveBack(&lp.upBufs, u.buf, laneUpBuf)
	u.buf = nil
	lp.upInterest(u, syscall.EPOLLIN|syscall.EPOLLRDHUP)
	lp.idle[inst] = append(lp.idle[inst], u)
}

// upEnded handles the instance's end of u (EOF or an error).
func (lp *loop) upEnded(u *laneUp, err error) {
	c := u.c
	if u.status == 0 {
		if err == nil {
			err = errors.New("the instance closed the connection")
		}
		lp.fail(c, err)
		return
	}
	u.keep = false
	if u.mode == bodyToClose {
		lp.lane.served.Add(1)
		lp.finish(c)
		return
	}
	lp.cutOff(c)
}

// cutOff ends an invocation whose answer was begun but cannot end well:
// the client gets what was sent, then the connection closes.
func (lp *loop) cutOff(c *laneClient) {
	u, inv := c.up, c.inv
	c.up, c.inv = nil, nil
	// Out of time while waiting on the instance (not on a slow client):
	// the function may be stuck, as on the slow path.
	stuck := !u.paused && !time.Now().Before(inv.deadline)
	lp.closeUp(u)
	if stuck {
		inv.lease.TimedOut()
	}
	inv.finish(u.status)
	c.closeAfter = true
	if len(c.out) == 0 || u.paused {
		// A client too slow to take the answer in the function's time
		// gets no more of it: its connection is not kept while it reads
		// what is left at its pace (the slow path's server closes too).
		c.out = nil
		lp.closeClient(c)
	}
}

// clientGone ends c's connection when the client hung up or cannot be
// written to; a request in flight is aborted (its instance connection
// closes, which the function sees as request.signal).
func (lp *loop) clientGone(c *laneClient) {
	if inv := c.inv; inv != nil {
		u := c.up
		c.up, c.inv = nil, nil
		lp.closeUp(u)
		status := u.status
		if !c.headSent {
			status = StatusClientClosed
		}
		inv.finish(status)
	}
	lp.closeClient(c)
}

// fail answers a request whose instance gave no usable answer, with the
// slow path's rules and errors. Telling a crash from other failures may
// wait for the instance's exit, so it runs on a goroutine that then
// hands the connection to the slow path.
func (lp *loop) fail(c *laneClient, err error) {
	if c.headSent {
		// Too late for an error answer: the answer is cut off.
		lp.cutOff(c)
		return
	}
	inv, u := c.inv, c.up
	c.up, c.inv = nil, nil
	lp.closeUp(u)
	if errors.Is(err, errUndelivered) && time.Now().Before(inv.deadline) {
		// Never delivered (the instance died first): the slow path serves
		// the request again, on another instance.
		inv.lease.Kill(backend.ExitCrashed)
		inv.lease.Release()
		lp.handOffAt(c, handoffRetry, inv.start)
		return
	}
	// The connection stays here, waiting (as for an answer) while the
	// error is worked out.
	c.pending = true
	rt := lp.lane.rt
	go func() {
		var ctx fasthttp.RequestCtx
		rt.fail(&ctx, inv, err)
		inv.finish(ctx.Response.StatusCode())
		// (The server leaves it out for the slow path: ctx has no request.)
		ctx.Response.SkipBody = inv.method == fasthttp.MethodHead
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		_ = ctx.Response.Write(bw)
		_ = bw.Flush()
		lp.post(func() { lp.answered(c, b.Bytes()) })
	}()
}

// answered sends the error fail worked out, and goes on with c.
func (lp *loop) answered(c *laneClient, resp []byte) {
	c.pending = false
	if c.fd < 0 {
		return // the client went away meanwhile
	}
	c.in = c.in[:copy(c.in, c.in[c.reqLen:])]
	c.reqLen, c.full = 0, false
	if !lp.write(c, resp) {
		return
	}
	lp.sync(c)
	if len(c.out) == 0 {
		lp.next(c)
	}
}

// handOff gives c to the slow path with the bytes read from it.
func (lp *loop) handOff(c *laneClient, why handoffReason) {
	lp.handOffAt(c, why, time.Now())
}

// handOffAt is handOff for a request that arrived at arrived.
func (lp *loop) handOffAt(c *laneClient, why handoffReason, arrived time.Time) {
	lp.lane.handoffs[why].Add(1)
	pre := bytes.Clone(c.in)
	slot := c.slot
	if nc, ok := lp.detach(c); ok {
		// A connection handed over for a passing reason (no instance free,
		// a function not in memory yet, the API) may come back (takeBack).
		// One whose client sends large bodies, splits its heads or omits
		// its Host is likely to go on doing so, and moving it back and
		// forth would cost each such request more than the slow path
		// does (8 KiB POSTs: ~30% fewer requests a second).
		back := why == handoffNoCapacity || why == handoffNotCached || why == handoffNotFunction ||
			why == handoffDial || why == handoffRetry
		lp.lane.handoff.give(&prefixConn{Wrapped: httpserve.Wrapped{Conn: nc}, pre: pre, back: back, retried: why == handoffRetry, arrived: arrived, slot: slot})
	} else {
		slot.Release()
	}
}

// takeBack has the connection of the function request in ctx come back
// to the loops once its response is sent, if the loops handed it over: a
// connection that first met a cold start (a scale from zero under load,
// say), a large body, or the API would otherwise stay on the slow path.
// Moving it costs a few system calls, against a slow-path request's
// goroutine work.
func (l *Lane) takeBack(ctx *fasthttp.RequestCtx) {
	hc, ok := ctx.Conn().(*httpserve.Conn)
	if !ok || ctx.Hijacked() {
		return
	}
	pc, ok := hc.Conn.(*prefixConn)
	if !ok || !pc.back || l.closing.Load() || ctx.Response.ConnectionClose() || ctx.Request.Header.ConnectionClose() {
		return
	}
	pc.back = false
	ctx.Hijack(func(hj net.Conn) { l.adopt(hj, hc, pc) })
}

// adopt moves a connection the server hijacked into a loop, with what
// the server had read past its last request.
func (l *Lane) adopt(hj net.Conn, hc *httpserve.Conn, pc *prefixConn) {
	var pre []byte
	_ = hj.SetReadDeadline(time.Unix(1, 0))
	buf := make([]byte, 4096)
	for len(pre) <= laneReadBuf {
		n, err := hj.Read(buf)
		pre = append(pre, buf[:n]...)
		if err != nil {
			break
		}
	}
	// The slot goes with the connection, wherever it is served next.
	slot := pc.slot
	pc.slot = nil
	tcp, ok := pc.Conn.(*net.TCPConn)
	fd := -1
	if ok && len(pre) <= laneReadBuf && !l.closing.Load() {
		if rc, err := tcp.SyscallConn(); err == nil {
			_ = rc.Control(func(s uintptr) {
				r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
				if e == 0 {
					fd = int(r)
				}
			})
		}
	}
	if fd < 0 {
		// Not to be moved: it goes back to the server as new, with all
		// it had read first (the server's reader for it is gone).
		_ = hj.SetReadDeadline(time.Time{})
		hc.Detach()
		l.handoff.give(&prefixConn{Wrapped: httpserve.Wrapped{Conn: pc.Conn}, pre: pre, slot: slot})
		return
	}
	// The socket lives on in fd: the server's descriptor is closed
	// without the lingering close that would shut its writing side.
	hc.Detach()
	tcp.Close()
	ip := ""
	if a, ok := tcp.RemoteAddr().(*net.TCPAddr); ok {
		ip = a.IP.String()
	}
	lp := l.loops[fd%len(l.loops)]
	if !lp.post(func() { lp.adopt(fd, ip, pre, slot) }) {
		syscall.Close(fd) // the loops have ended
		slot.Release()
	}
}

// adopt serves fd, a connection the server gave back, from this loop.
func (lp *loop) adopt(fd int, ip string, pre []byte, slot *httpserve.ConnSlot) {
	_ = syscall.SetNonblock(fd, true)
	c := &laneClient{fd: fd, ip: ip, trusted: lp.lane.rt.trusts(ip), served: true, lastActive: lp.now, slot: slot,
		events: syscall.EPOLLIN | syscall.EPOLLRDHUP, gen: lp.nextGen()}
	if len(pre) > 0 {
		lp.takeBuf(c)
		c.in = append(c.in, pre...)
	}
	if lp.quit || lp.ctl(syscall.EPOLL_CTL_ADD, fd, c.events, c.gen) != nil {
		syscall.Close(fd)
		slot.Release()
		return
	}
	lp.set(fd, ent{c: c})
	lp.lane.conns.Add(1)
	lp.lane.adopted.Add(1)
	if len(c.in) > 0 || lp.lane.closing.Load() {
		lp.next(c)
	}
}

// detach takes c out of the loop as a net.Conn.
func (lp *loop) detach(c *laneClient) (net.Conn, bool) {
	f := os.NewFile(uintptr(lp.forget(c)), "")
	nc, err := net.FileConn(f)
	f.Close()
	return nc, err == nil
}

// forget takes c out of the loop and returns its descriptor, for the
// caller to close or pass on.
func (lp *loop) forget(c *laneClient) int {
	fd := c.fd
	_ = syscall.EpollCtl(lp.ep, syscall.EPOLL_CTL_DEL, fd, nil)
	lp.clear(fd)
	c.fd = -1
	lp.lane.conns.Add(-1)
	if c.inv == nil && !c.pending {
		c.in = c.in[:0] // (handOff copied what was unread)
		lp.dropBuf(c)
	}
	return fd
}

// takeBuf gives c a read buffer, if it has none. A connection holds one
// only while it has bytes unread or a request in flight, so an idle
// kept-alive connection costs no buffer, as in nginx, which frees its
// header buffer between requests.
func (lp *loop) takeBuf(c *laneClient) {
	if c.in == nil {
		c.in = takeFrom(&lp.bufs, laneReadBuf)[:0]
	}
}

// dropBuf takes c's read buffer back if c no longer needs it.
func (lp *loop) dropBuf(c *laneClient) {
	if c.in == nil || len(c.in) > 0 || c.inv != nil || c.pending {
		return
	}
	giveBack(&lp.bufs, c.in[:cap(c.in)], laneReadBuf)
	c.in = nil
}

// takeFrom takes a buffer of size bytes from free, or makes one.
func takeFrom(free *[][]byte, size int) []byte {
	if n := len(*free); n > 0 {
		b := (*free)[n-1]
		*free = (*free)[:n-1]
		return b
	}
	return make([]byte, size)
}

// giveBack keeps b for reuse if it is of the usual size (one grown for a
// large head is left to the collector) and free has room.
func giveBack(free *[][]byte, b []byte, size int) {
	if len(b) == size && len(*free) < laneFreeBufs {
		*free = append(*free, b)
	}
}

func (lp *loop) closeClient(c *laneClient) {
	if c.fd < 0 {
		return
	}
	if c.up != nil {
		lp.clientGone(c)
		return
	}
	syscall.Close(lp.forget(c))
	c.slot.Release()
}

func (lp *loop) closeUp(u *laneUp) {
	if u == nil || u.fd < 0 {
		return
	}
	_ = syscall.EpollCtl(lp.ep, syscall.EPOLL_CTL_DEL, u.fd, nil)
	lp.clear(u.fd)
	syscall.Close(u.fd)
	u.fd = -1
	u.c = nil
	giveBack(&lp.upBufs, u.buf, laneUpBuf)
	u.buf, u.n = nil, 0
}

// sweep ends invocations past their deadline and connections idle too
// long.
func (lp *loop) sweep(now time.Time) {
	if lp.resumeAccept && !lp.lane.closing.Load() {
		lp.resumeAccept = false
		_ = lp.startAccepting()
	}
	// What the sweep does changes states (and so deadlines): the next
	// sweep comes at the usual pace, and finds them.
	lp.dirty = false
	lp.sweeps++
	var due time.Time
	soon := func(t time.Time) {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	for _, e := range lp.ents {
		switch c := e.c; {
		case c != nil && !c.lingerUntil.IsZero():
			if now.After(c.lingerUntil) {
				lp.closeClient(c)
			} else {
				soon(c.lingerUntil)
			}
		case c != nil && c.inv != nil:
			switch watch := c.inv.start.Add(httpserve.WatchAfter); {
			case c.hup && !now.Before(watch):
				lp.clientGone(c)
				lp.dirty = true
			case !now.Before(c.inv.deadline):
				if c.headSent {
					// Mid-answer: cut off (cutOff kills the instance
					// unless it is the client that is slow).
					lp.cutOff(c)
				} else {
					lp.fail(c, os.ErrDeadlineExceeded)
				}
				lp.dirty = true
			default:
				soon(c.inv.deadline)
				if c.hup {
					soon(watch)
				}
			}
		case c != nil && !c.pending:
			if limit := lp.lane.idleLimit(c); now.Sub(c.lastActive) > limit {
				lp.closeClient(c)
			} else {
				soon(c.lastActive.Add(limit))
			}
		case e.u != nil && e.u.c == nil:
			if now.Sub(e.u.since) > maxIdleTime {
				lp.unpool(e.u)
				lp.closeUp(e.u)
			} else {
				soon(e.u.since.Add(maxIdleTime))
			}
		}
	}
	lp.due = due
}

// lingerTime bounds a lingering close in the loops.
const lingerTime = 2 * time.Second

// linger closes c after its last answer as nginx and the slow path do:
// closing a socket with unread bytes (requests the client pipelined
// behind the last) makes the kernel send a reset, which can destroy the
// answer before the client reads it. So the writing side is shut first
// (the client sees the answer, then its end), and what still arrives is
// dropped until the client closes or lingerTime passes. As in nginx,
// that is only when the client may still be sending: with nothing unread
// here or in the socket, a plain close ends the connection (one system
// call where lingering takes four).
func (lp *loop) linger(c *laneClient) {
	if c.hup || len(c.in) == 0 && !unread(c.fd) || syscall.Shutdown(c.fd, syscall.SHUT_WR) != nil {
		lp.closeClient(c) // the client is done sending: nothing to drop
		return
	}
	c.lingerUntil = lp.now.Add(lingerTime)
	c.full = false
	lp.sync(c)
	c.in = c.in[:0]
	lp.dropBuf(c)
}

// unread says whether bytes wait to be read on fd.
func unread(fd int) bool {
	var b [1]byte
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return e == 0 && n > 0
}

// idleLimit is how long c may wait for its next request: the header
// timeout until it sent a first one (as on the slow path: a connection
// that never sends must not hold a descriptor for long), then the
// keep-alive timeout.
func (l *Lane) idleLimit(c *laneClient) time.Duration {
	if c.served {
		return time.Duration(l.idleTimeout.Load())
	}
	return time.Duration(l.headerTimeout.Load())
}

// closeIdle closes the clients with nothing in flight (at shutdown).
func (lp *loop) closeIdle() {
	for _, e := range lp.ents {
		if c := e.c; c != nil && c.inv == nil && !c.pending && len(c.out) == 0 {
			lp.closeClient(c)
		}
	}
}

// closeAll closes everything (the loop is ending).
func (lp *loop) closeAll() {
	for _, e := range lp.ents {
		if e.c != nil {
			lp.clientGone(e.c)
		}
	}
	for _, e := range lp.ents {
		if e.u != nil {
			lp.closeUp(e.u)
		}
	}
	lp.idle = map[*backend.Instance][]*laneUp{}
}
