package httpserve

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/spry-run/spry/internal/auth"
)

// ConnLimit bounds the connections one client address holds open on the
// public listener at once, and all clients' together. The timeouts
// bound how long a connection that sends nothing lives (HeaderTimeout,
// IdleTimeout), not how many there are: without a bound per client, one
// client opening connections as fast as they are closed held every
// descriptor of the server, whose accepts then failed for every other
// client (and its own sandboxes' and database's files with them). A
// client is counted as auth.ClientKey counts it (an IPv6 client's /64);
// the trusted proxies, which speak for many, are not bounded on their
// own but count in the total. The total keeps the rest of the server's
// descriptors for its instances and databases whatever many clients
// do together; at it, the event loops close their oldest idle
// connections to make room, as nginx does when its worker_connections
// run out. A nil ConnLimit bounds nothing.
type ConnLimit struct {
	max, maxTotal int
	proxies       Proxies
	mu            sync.Mutex
	held          map[string]int
	total         int
}

// Why Take refused a connection.
var (
	ErrClientBound = errors.New("the client holds the most connections already")
	ErrServerFull  = errors.New("the server holds the most connections already")
)

// NewConnLimit bounds each client to max connections and all of them to
// maxTotal; 0 is no bound, and with neither it returns nil.
func NewConnLimit(max, maxTotal int, proxies Proxies) *ConnLimit {
	if max <= 0 && maxTotal <= 0 {
		return nil
	}
	return &ConnLimit{max: max, maxTotal: maxTotal, proxies: proxies, held: map[string]int{}}
}

// ConnSlot is one connection counted against its client. Its owner
// releases it when the connection is closed; whoever the connection
// passes to (the router's event loops hand connections to the fasthttp
// server and back) takes the slot along.
type ConnSlot struct {
	l    *ConnLimit
	key  string // "": counted in the total only (a trusted proxy)
	done atomic.Bool
}

// Take counts a connection from ip, or says why not (ErrClientBound,
// ErrServerFull). The slot is nil when nothing was counted.
func (l *ConnLimit) Take(ip netip.Addr) (*ConnSlot, error) {
	if l == nil {
		return nil, nil
	}
	key := ""
	if l.max > 0 && !l.proxies.Trusts(ip) {
		key = auth.ClientKey(ip)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case key != "" && l.held[key] >= l.max:
		return nil, ErrClientBound
	case l.maxTotal > 0 && l.total >= l.maxTotal:
		return nil, ErrServerFull
	case key == "" && l.maxTotal <= 0:
		return nil, nil
	}
	if key != "" {
		l.held[key]++
	}
	l.total++
	return &ConnSlot{l: l, key: key}, nil
}

// Release gives the slot back; again, or on nil, it does nothing.
func (s *ConnSlot) Release() {
	if s == nil || s.done.Swap(true) {
		return
	}
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.total--
	if s.key == "" {
		return
	}
	if s.l.held[s.key]--; s.l.held[s.key] <= 0 {
		delete(s.l.held, s.key)
	}
}

// Listener closes at once each connection of ln that Take refuses, and
// counts the others until they are closed.
func (l *ConnLimit) Listener(ln net.Listener) net.Listener {
	if l == nil {
		return ln
	}
	return &limitListener{Listener: ln, l: l}
}

type limitListener struct {
	net.Listener
	l *ConnLimit
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		nc, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var ip netip.Addr
		if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
			ip, _ = netip.AddrFromSlice(a.IP)
		}
		slot, err := ll.l.Take(ip)
		if err != nil {
			// fasthttp's idle connections cannot be closed from here
			// to make room, as the event loops close theirs: the new
			// one is refused.
			nc.Close()
			continue
		}
		return &limitConn{Wrapped: Wrapped{nc}, slot: slot}, nil
	}
}

// limitConn releases its slot when closed.
type limitConn struct {
	Wrapped
	slot *ConnSlot
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.slot.Release()
	return err
}

// Wrapped is a connection's wrapper that keeps what the server asks of
// the socket beneath: CloseWrite, for the lingering close, and
// SyscallConn, for the connection watch. Wrappers embed it.
type Wrapped struct{ net.Conn }

// CloseWrite half-closes the socket beneath.
func (c Wrapped) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// SyscallConn is the socket beneath's.
func (c Wrapped) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}
