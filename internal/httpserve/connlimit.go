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
// public listener at once. The timeouts bound how long a connection that
// sends nothing lives (HeaderTimeout, IdleTimeout), not how many there
// are: without this, one client opening connections as fast as they
// are closed held every descriptor of the server, whose accepts then
// failed for every other client (and its own sandboxes' and database's
// files with them). A client is counted as auth.ClientKey counts it (an
// IPv6 client's /64); the trusted proxies, which speak for many, are not
// bounded. A nil ConnLimit bounds nothing.
type ConnLimit struct {
	max     int
	proxies Proxies
	mu      sync.Mutex
	held    map[string]int
}

// NewConnLimit bounds each client to max connections; 0 is no bound (nil).
func NewConnLimit(max int, proxies Proxies) *ConnLimit {
	if max <= 0 {
		return nil
	}
	return &ConnLimit{max: max, proxies: proxies, held: map[string]int{}}
}

// ConnSlot is one connection counted against its client. Its owner
// releases it when the connection is closed; whoever the connection
// passes to (the router's event loops hand connections to the fasthttp
// server and back) takes the slot along.
type ConnSlot struct {
	l    *ConnLimit
	key  string
	done atomic.Bool
}

// Take counts a connection from ip, or says no when ip holds the most
// already. The slot is nil when nothing was counted.
func (l *ConnLimit) Take(ip netip.Addr) (*ConnSlot, bool) {
	if l == nil || l.proxies.Trusts(ip) {
		return nil, true
	}
	key := auth.ClientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[key] >= l.max {
		return nil, false
	}
	l.held[key]++
	return &ConnSlot{l: l, key: key}, true
}

// Release gives the slot back; again, or on nil, it does nothing.
func (s *ConnSlot) Release() {
	if s == nil || s.done.Swap(true) {
		return
	}
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	if s.l.held[s.key]--; s.l.held[s.key] <= 0 {
		delete(s.l.held, s.key)
	}
}

// Listener closes at once each connection of ln whose client holds the
// most already, and counts the others until they are closed.
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
		slot, ok := ll.l.Take(ip)
		if !ok {
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
