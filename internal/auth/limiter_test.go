package auth

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func TestFailureLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := NewFailureLimiter(6*time.Second, 3, func() time.Time { return now })
	steps := []struct {
		advance time.Duration
		fail    bool
		allowed bool
	}{
		{0, true, true},
		{0, true, true},
		{0, true, true},
		{0, false, false}, // three failures spent the burst
		{5 * time.Second, false, false},
		{time.Second, true, true}, // one token back after 6s
		{0, false, false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		ok, wait := l.Allowed("1.2.3.4")
		if ok != s.allowed {
			t.Fatalf("step %d: allowed = %v (wait %v), want %v", i, ok, wait, s.allowed)
		}
		if !ok && wait <= 0 {
			t.Fatalf("step %d: refused without a wait", i)
		}
		if s.fail {
			l.Failed("1.2.3.4")
		}
	}
	if ok, _ := l.Allowed("5.6.7.8"); !ok {
		t.Fatal("another client is limited too")
	}
}

// Failures from ever more addresses (an IPv6 prefix holds plenty) must
// not grow the limiter without bound, nor free a client that is over
// its limit to make room for ones that are not.
func TestFailureLimiterBounded(t *testing.T) {
	now := time.Unix(0, 0)
	l := NewFailureLimiter(6*time.Second, 3, func() time.Time { return now })
	for range 3 {
		l.Failed("guesser")
	}
	for i := range 3 * maxClients {
		l.Failed(fmt.Sprintf("2001:db8::%x", i))
		if n := len(l.clients); n > maxClients {
			t.Fatalf("after %d clients the limiter holds %d, more than %d", i+1, n, maxClients)
		}
	}
	if ok, _ := l.Allowed("guesser"); ok {
		t.Fatal("a client over its limit was forgotten to make room for clients within theirs")
	}
}

func TestClientKey(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"192.0.2.7:5000", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:5000", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::9]:80", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
		{"[::1]:80", "::/64"},
		{"not an address", ""},
	} {
		ap, _ := netip.ParseAddrPort(tt.addr)
		if got := ClientKey(ap.Addr()); got != tt.want {
			t.Errorf("ClientKey(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}
