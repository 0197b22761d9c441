package httpserve

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestConnLimitTake(t *testing.T) {
	l := NewConnLimit(2, 0, Proxies{netip.MustParsePrefix("10.0.0.1/32")})
	take := func(ip string) (*ConnSlot, bool) {
		s, err := l.Take(netip.MustParseAddr(ip))
		if err != nil && err != ErrClientBound {
			t.Fatalf("take %s: %v", ip, err)
		}
		return s, err == nil
	}
	a1, ok1 := take("192.0.2.1")
	_, ok2 := take("192.0.2.1")
	if _, ok := take("192.0.2.1"); !ok1 || !ok2 || ok {
		t.Fatalf("a client's third connection: %v %v %v, want the third refused", ok1, ok2, ok)
	}
	if _, ok := take("192.0.2.2"); !ok {
		t.Fatal("another client refused")
	}
	// An IPv6 client is its /64.
	take("2001:db8::1")
	take("2001:db8::2")
	if _, ok := take("2001:db8::3"); ok {
		t.Fatal("a /64's third connection let in")
	}
	if _, ok := take("2001:db8:0:1::1"); !ok {
		t.Fatal("another /64 refused")
	}
	for range 5 {
		if s, ok := take("10.0.0.1"); !ok || s != nil {
			t.Fatal("a trusted proxy bounded")
		}
	}
	a1.Release()
	a1.Release() // twice counts once
	if _, ok := take("192.0.2.1"); !ok {
		t.Fatal("a released slot not given back")
	}
	if _, ok := take("192.0.2.1"); ok {
		t.Fatal("a slot released twice given back twice")
	}
	if NewConnLimit(0, 0, nil) != nil {
		t.Fatal("0 bounds")
	}
	var none *ConnLimit
	if s, err := none.Take(netip.MustParseAddr("192.0.2.1")); err != nil || s != nil {
		t.Fatal("a nil limit bounds")
	}
}

// The total bounds every client together, trusted proxies included,
// and says so apart from a client's own bound.
func TestConnLimitTotal(t *testing.T) {
	for _, perClient := range []int{0, 2} {
		l := NewConnLimit(perClient, 3, Proxies{netip.MustParsePrefix("10.0.0.1/32")})
		var slots []*ConnSlot
		for _, ip := range []string{"192.0.2.1", "10.0.0.1", "192.0.2.2"} {
			s, err := l.Take(netip.MustParseAddr(ip))
			if err != nil || s == nil {
				t.Fatalf("per client %d: %s refused below the total: %v", perClient, ip, err)
			}
			slots = append(slots, s)
		}
		for _, ip := range []string{"192.0.2.3", "10.0.0.1"} {
			if _, err := l.Take(netip.MustParseAddr(ip)); err != ErrServerFull {
				t.Errorf("per client %d: %s at the total: %v, want ErrServerFull", perClient, ip, err)
			}
		}
		slots[1].Release() // the proxy's
		slots[1].Release()
		if _, err := l.Take(netip.MustParseAddr("192.0.2.3")); err != nil {
			t.Errorf("per client %d: no room after a release: %v", perClient, err)
		}
		if _, err := l.Take(netip.MustParseAddr("192.0.2.4")); err != ErrServerFull {
			t.Errorf("per client %d: a slot released twice given back twice: %v", perClient, err)
		}
	}
}

// TestConnLimitListener: past its client's bound a connection is closed
// at once, and a closed one makes room.
func TestConnLimitListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewConnLimit(1, 0, nil).Listener(raw)
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	first := <-accepted
	second := dial()
	_ = second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a connection past the bound: read %v, want EOF", err)
	}
	first.Close()
	dial()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no room after a close")
	}
}
