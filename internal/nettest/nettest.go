// Package nettest makes test hosts for network tests: a network namespace
// holding the addresses a test needs (a "public" host, or one owning
// 169.254.169.254 or a private address), joined to the host by a veth
// pair with /32 routes, with an HTTP server listening inside. Traffic to
// those addresses never leaves the machine, even if a rule under test is
// wrong. It needs root and iproute2.
package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Host is a test host in its own network namespace.
type Host struct {
	Addrs []string
	// Hits counts connections that reached the host's HTTP server.
	Hits atomic.Int64
	ns   string
	ln   []net.Listener
	srv  *http.Server
}

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// New creates a test host owning addrs (IPv4) with an HTTP server on port
// that answers "hello from <addr>". Test hosts with the same address in
// concurrently running test binaries take turns (a lock file per address).
func New(t testing.TB, port int, addrs ...string) *Host {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("test hosts need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("test hosts need iproute2")
	}
	for _, a := range addrs {
		lock(t, a)
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	h := &Host{Addrs: addrs, ns: "spry-th-" + id}
	hostIf, nsIf := "sth"+id+"h", "sth"+id+"n"
	// Concurrent `ip netns add` calls race while setting up /run/netns
	// (one can hide the other's namespace mount), so test binaries take
	// turns creating them.
	unlock := lockFile(t, "spry-nettest-netns.lock")
	run(t, "ip", "netns", "add", h.ns)
	unlock()
	t.Cleanup(func() { exec.Command("ip", "netns", "del", h.ns).Run() })
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	run(t, "ip", "link", "set", nsIf, "netns", h.ns)
	run(t, "ip", "link", "set", hostIf, "up")
	run(t, "ip", "netns", "exec", h.ns, "ip", "link", "set", "lo", "up")
	run(t, "ip", "netns", "exec", h.ns, "ip", "link", "set", nsIf, "up")
	run(t, "ip", "netns", "exec", h.ns, "ip", "route", "add", "default", "dev", nsIf)
	for _, a := range addrs {
		run(t, "ip", "netns", "exec", h.ns, "ip", "addr", "add", a+"/32", "dev", nsIf)
		run(t, "ip", "route", "add", a+"/32", "dev", hostIf)
		a := a
		t.Cleanup(func() { exec.Command("ip", "route", "del", a+"/32", "dev", hostIf).Run() })
	}
	h.listen(t, port)
	return h
}

// Mounted reports whether the host's mount of the test host's namespace
// is still in place (something that unmounts shared mounts would remove it).
func (h *Host) Mounted() bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	return err == nil && strings.Contains(string(data), "/run/netns/"+h.ns+" ")
}

// listen opens the listeners from a thread that has joined the namespace;
// a socket stays in the namespace it was made in.
func (h *Host) listen(t testing.TB, port int) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// This thread's namespace is changed for good, so it must never
		// run other goroutines: locking it without unlocking makes the
		// runtime discard it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", h.ns))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), syscall.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		for _, a := range h.Addrs {
			ln, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", a, port))
			if err != nil {
				errc <- err
				return
			}
			h.ln = append(h.ln, ln)
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("test host listen: %v", err)
	}
	h.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Hits.Add(1)
		host, _, _ := net.SplitHostPort(r.Context().Value(http.LocalAddrContextKey).(net.Addr).String())
		fmt.Fprintf(w, "hello from %s", host)
	})}
	var wg sync.WaitGroup
	for _, ln := range h.ln {
		wg.Add(1)
		go func(ln net.Listener) { defer wg.Done(); _ = h.srv.Serve(ln) }(ln)
	}
	t.Cleanup(func() { h.srv.Close(); wg.Wait() })
}

// lock serialises test hosts owning the same address across test
// binaries running at once, for the test's lifetime.
func lock(t testing.TB, addr string) {
	t.Helper()
	t.Cleanup(lockFile(t, "spry-nettest-"+addr+".lock"))
}

// lockFile takes an exclusive lock on a file in the temp dir and returns
// the function that releases it.
func lockFile(t testing.TB, name string) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), name), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }
}

// CountAccepts accepts connections on ln until the test ends, closing
// each at once, and counts them in hits: a listener that an attack must
// not reach, the count saying whether it did.
func CountAccepts(t testing.TB, ln net.Listener, hits *atomic.Int64) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hits.Add(1)
			c.Close()
		}
	}()
}
