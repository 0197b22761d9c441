package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWithout(t *testing.T) {
	pfx := func(list ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range list {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		name  string
		p     string
		holes []string
		want  []string
	}{
		{"no holes", "10.0.0.0/8", nil, []string{"10.0.0.0/8"}},
		{"elsewhere", "10.0.0.0/8", []string{"192.168.0.0/16"}, []string{"10.0.0.0/8"}},
		{"all of it", "10.0.0.0/8", []string{"10.0.0.0/8"}, nil},
		{"more than all", "10.0.0.0/8", []string{"8.0.0.0/5"}, nil},
		{"lower half", "10.0.0.0/8", []string{"10.0.0.0/9"}, []string{"10.128.0.0/9"}},
		{"upper half", "10.0.0.0/8", []string{"10.128.0.0/9"}, []string{"10.0.0.0/9"}},
		{"a /10 inside", "10.0.0.0/8", []string{"10.64.0.0/10"}, []string{"10.0.0.0/10", "10.128.0.0/9"}},
		{"one address", "192.168.0.0/30", []string{"192.168.0.2/32"}, []string{"192.168.0.0/31", "192.168.0.3/32"}},
		{"two holes", "172.16.0.0/12", []string{"172.16.0.0/14", "172.31.0.0/16"},
			[]string{"172.20.0.0/14", "172.24.0.0/14", "172.28.0.0/15", "172.30.0.0/16"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range without(netip.MustParsePrefix(tt.p), pfx(tt.holes...)) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestWithoutCoversExactly: for random holes in a blocked range, an
// address is in what is left exactly when it is in the range and in no
// hole.
func TestWithoutCoversExactly(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := netip.MustParsePrefix("10.0.0.0/8")
	addr := func() netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
	}
	for range 200 {
		var holes []netip.Prefix
		for range r.IntN(4) {
			p, _ := addr().Prefix(8 + r.IntN(25))
			holes = append(holes, p)
		}
		left := without(base, holes)
		for range 200 {
			a := addr()
			if r.IntN(4) == 0 && len(holes) > 0 {
				a = holes[0].Addr() // hole edges too
			}
			inHole := slices.ContainsFunc(holes, func(h netip.Prefix) bool { return h.Contains(a) })
			inLeft := slices.ContainsFunc(left, func(p netip.Prefix) bool { return p.Contains(a) })
			if inLeft == inHole {
				t.Fatalf("holes %v: %v is in a hole %v, in what is left %v (%v)", holes, a, inHole, inLeft, left)
			}
		}
	}
}

// TestEgressRules: the operator's ranges open holes in both layers (the
// nftables rules and the runtime's deny list), but never to the host's
// own addresses, which are rejected before the holes are opened.
func TestEgressRules(t *testing.T) {
	host := []string{"10.213.0.5/32"}
	s := &Sandbox{
		cfg:      Config{EgressAllow: []netip.Prefix{netip.MustParsePrefix("10.213.0.0/16"), netip.MustParsePrefix("fd00::/8")}},
		hostNets: func() []string { return host },
	}
	rules := s.nftRules()
	reject, allow := strings.Index(rules, "ip daddr { 10.213.0.5/32 } reject"), strings.Index(rules, "ip daddr 10.213.0.0/16 accept")
	if reject < 0 || allow < 0 || reject > allow || strings.Contains(rules, "fd00") {
		t.Fatalf("rules:\n%s", rules)
	}
	deny := s.EgressRanges()
	if slices.Contains(deny, "10.0.0.0/8") || !slices.Contains(deny, "10.212.0.0/16") || !slices.Contains(deny, "10.214.0.0/15") ||
		!slices.Contains(deny, "169.254.0.0/16") || !slices.Contains(deny, "10.213.0.5/32") {
		t.Fatalf("deny list %v", deny)
	}
	// An address the host gains later is blocked from then on, in both
	// layers.
	host = []string{"10.213.0.5/32", "198.51.100.0/24", "198.51.100.254/32"}
	if rules := s.nftRules(); !strings.Contains(rules, "ip daddr { 10.213.0.5/32, 198.51.100.0/24, 198.51.100.254/32 } reject") {
		t.Fatalf("rules after a new address:\n%s", rules)
	}
	if deny := s.EgressRanges(); !slices.Contains(deny, "198.51.100.0/24") {
		t.Fatalf("deny list after a new address: %v", deny)
	}
}

// hostNets reads the host's addresses and the subnets they are on.
func TestHostNets(t *testing.T) {
	got := hostNets()
	if !slices.Contains(got, "127.0.0.1/32") {
		t.Errorf("hostNets() = %v, want the loopback address among them", got)
	}
	if !slices.IsSorted(got) {
		t.Errorf("hostNets() = %v, not sorted", got)
	}
}

// WatchHost hears the kernel report an address added or removed and
// looks again. It runs here in a network namespace of the test's own, so
// the addresses it sees change without touching the machine's.
func TestWatchHostHearsAddressChanges(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	var once sync.Once
	subscribed := make(chan struct{})
	s := &Sandbox{hostNets: func() []string {
		// The first look is the baseline, taken once subscribed.
		once.Do(func() { close(subscribed) })
		return hostNets()
	}}
	ctx, cancel := context.WithCancel(t.Context())
	changed := make(chan struct{}, 4)
	tid, done := make(chan int, 1), make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, and its
		// namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		tid <- unix.Gettid()
		done <- s.WatchHost(ctx, slog.New(slog.DiscardHandler), func() { changed <- struct{}{} })
	}()
	var ns string
	select {
	case id := <-tid:
		ns = fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), id)
	case err := <-done:
		t.Fatal(err)
	}
	<-subscribed
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("nsenter", append([]string{"--net=" + ns, "--", "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	heard := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			t.Fatalf("WatchHost did not report the address %s", what)
		}
	}
	ip("addr", "add", "198.51.100.9/32", "dev", "lo")
	heard("added")
	ip("addr", "del", "198.51.100.9/32", "dev", "lo")
	heard("removed")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchHost did not return when its context ended")
	}
}
