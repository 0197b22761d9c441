package httpserve

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestConnLimitTake(t *testing.T) {
	l := NewConnLimit(2, Proxies{netip.MustParsePrefix("10.0.0.1/32")})
	take := func(ip string) (*ConnSlot, bool) { return l.Take(netip.MustParseAddr(ip)) }
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
	if NewConnLimit(0, nil) != nil {
		t.Fatal("0 bounds")
	}
	var none *ConnLimit
	if s, ok := none.Take(netip.MustParseAddr("192.0.2.1")); !ok || s != nil {
		t.Fatal("a nil limit bounds")
	}
}

// TestConnLimitListener: past its client's bound a connection is closed
// at once, and a closed one makes room.
func TestConnLimitListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewConnLimit(1, nil).Listener(raw)
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
