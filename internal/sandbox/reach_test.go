//go:build linux && amd64

package sandbox_test

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spry-run/spry/internal/nettest"
	"github.com/spry-run/spry/internal/sandbox"
)

// Set inside the sandbox by TestNothingOfTheHostWithin.
const (
	reachEnv    = "SPRY_REACH"        // dial these, comma-separated "tcp=ADDR" or "unix=@NAME"
	reachListen = "SPRY_REACH_LISTEN" // listen on this abstract socket instead
	reachPid    = "SPRY_REACH_PID"    // a host process to signal
	reachWait   = "SPRY_REACH_NET"    // wait for the egress network first
)

// TestReachChild is the sandboxed half of TestNothingOfTheHostWithin: as
// code that got past its runtime's permissions would, it tries to reach
// what is outside its sandbox with the system calls the filter allows,
// and prints one line for each try: "NAME ok" or "NAME ERRNO".
func TestReachChild(t *testing.T) {
	if os.Getenv(reachEnv) == "" && os.Getenv(reachListen) == "" {
		t.Skip("runs only inside the sandbox TestNothingOfTheHostWithin starts")
	}
	fmt.Println("running")
	say := func(name string, err error) {
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Println(name, "ok")
		case errors.As(err, &errno):
			fmt.Println(name, unix.ErrnoName(errno))
		default:
			fmt.Println(name, strings.ReplaceAll(err.Error(), " ", "_"))
		}
	}
	if name := os.Getenv(reachListen); name != "" {
		ln, err := net.Listen("unix", name)
		if err != nil {
			say("listen", err)
			return
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		// That the name is live: the sandbox itself reaches it.
		c, err := net.Dial("unix", name)
		if err == nil {
			c.Close()
		}
		say("self", err)
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		return
	}
	if os.Getenv(reachWait) != "" {
		// slirp4netns's tap device has its address once StartNetwork
		// is done, the filter rules loaded before it.
		deadline := time.Now().Add(10 * time.Second)
		for !hasTap() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		fmt.Println("tap", hasTap())
	}
	for _, target := range strings.Split(os.Getenv(reachEnv), ",") {
		network, addr, _ := strings.Cut(target, "=")
		err := dialErrno(network, addr)
		say("dial "+target, err)
	}
	// Signals: kill(-1) reaches every process the caller may signal but
	// itself and its namespace's init; a host pid is no pid here.
	say("kill-all", unix.Kill(-1, 0))
	if pid, err := strconv.Atoi(os.Getenv(reachPid)); err == nil {
		say("kill-host", unix.Kill(pid, 0))
		_, err := unix.PidfdOpen(pid, 0)
		say("pidfd-host", err)
	}
	// Descriptors: only stdin, stdout and stderr, and what the Go
	// runtime made for itself (an epoll and its eventfd).
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		say("fds", err)
	}
	var extra []string
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if fd <= 2 || err != nil || strings.HasPrefix(target, "anon_inode:") {
			continue // (the directory being read is gone by now)
		}
		extra = append(extra, e.Name()+"->"+target)
	}
	fmt.Println("fds", strings.Join(append(extra, "end"), ","))
	// Writes anywhere but /tmp.
	for _, p := range []string{"/x", "/probe/x", "/dev/x", "/proc/x", "/etc/x", "/run/x"} {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			f.Close()
		}
		say("create "+p, err)
	}
	for _, p := range []string{"/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/proc/sys/vm/drop_caches", "/proc/self/oom_score_adj", "/dev/null"} {
		value := "0"
		if p == "/proc/sys/kernel/hostname" {
			value = "pwned"
		}
		err := os.WriteFile(p, []byte(value), 0)
		say("write "+p, err)
	}
	// What the host's OOM killer sees of it: still the largest score.
	b, _ := os.ReadFile("/proc/self/oom_score_adj")
	fmt.Println("oom_score_adj", strings.TrimSpace(string(b)))
	fmt.Println("end")
}

func hasTap() bool {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if addrs, _ := i.Addrs(); i.Name != "lo" && len(addrs) > 0 {
			return true
		}
	}
	return false
}

// dialErrno connects and, if that works, reads what the other end says.
func dialErrno(network, addr string) error {
	c, err := net.DialTimeout(network, addr, 3*time.Second)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return op.Err
		}
		return err
	}
	defer c.Close()
	return nil
}

// TestNothingOfTheHostWithin: code in a sandbox, past its runtime's
// permissions, reaches nothing of the host: not a TCP port on the host's
// loopback (the server's API and router listen there) nor, with egress,
// through slirp4netns's gateway; not an abstract Unix socket, neither
// the host's nor another sandbox's (their namespace is the network
// namespace's); no process outside its own; no descriptor but its
// stdio; and it writes nowhere but /tmp (not even its own oom_score_adj
// below the server's 1000).
func TestNothingOfTheHostWithin(t *testing.T) {
	for i, network := range []string{sandbox.NetworkNone, sandbox.NetworkEgress} {
		t.Run(network, func(t *testing.T) {
			var rnd [6]byte
			_, _ = rand.Read(rnd[:])
			tag := hex.EncodeToString(rnd[:])
			var hits atomic.Int64
			serve := func(ln net.Listener) { nettest.CountAccepts(t, ln, &hits) }
			tcp, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			serve(tcp)
			hostName := "@spry-reach-host-" + tag
			abstract, err := net.Listen("unix", hostName)
			if err != nil {
				t.Fatal(err)
			}
			serve(abstract)
			// The host's own process reaches it: the name is live.
			if err := dialErrno("unix", hostName); err != nil {
				t.Fatalf("the host's own dial: %v", err)
			}
			for deadline := time.Now().Add(5 * time.Second); hits.Load() != 1; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the host's own dial was not accepted")
				}
			}

			// Another sandbox listens on an abstract name of its own.
			otherName := "@spry-reach-other-" + tag
			sbA, specA := holdSpec(t, 2999940+2*i, 0)
			specA.Network = network
			specA.Args = []string{"-test.run=^TestReachChild$", "-test.count=1"}
			specA.Env = append(specA.Env, reachListen+"="+otherName)
			a, outA := startRunning(t, sbA, specA)
			if err := a.StartNetwork(t.Context()); err != nil {
				t.Fatal(err)
			}
			if line, err := outA.ReadString('\n'); err != nil || line != "self ok\n" {
				t.Fatalf("the other sandbox's own dial: %q, %v", line, err)
			}

			port := strconv.Itoa(tcp.Addr().(*net.TCPAddr).Port)
			targets := []string{
				"tcp=127.0.0.1:" + port,
				"tcp=10.0.2.2:" + port, // slirp4netns's gateway: the host
				"unix=" + hostName,
				"unix=" + otherName,
			}
			sb, spec := holdSpec(t, 2999941+2*i, 0)
			spec.Network = network
			spec.Args = []string{"-test.run=^TestReachChild$", "-test.count=1"}
			spec.Env = append(spec.Env, reachEnv+"="+strings.Join(targets, ","), reachPid+"="+strconv.Itoa(os.Getpid()))
			if network == sandbox.NetworkEgress {
				spec.Env = append(spec.Env, reachWait+"=1")
			}
			c, out := startRunning(t, sb, spec)
			if err := c.StartNetwork(t.Context()); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for {
				line, err := out.ReadString('\n')
				if err != nil {
					t.Fatalf("the child's output ended early (%v); it said %v", err, got)
				}
				line = strings.TrimSpace(line)
				if line == "end" {
					break
				}
				i := strings.LastIndexByte(line, ' ')
				if i < 0 {
					continue
				}
				got[line[:i]] = line[i+1:]
			}
			t.Logf("inside: %v", got)
			if network == sandbox.NetworkEgress && got["tap"] != "true" {
				t.Fatal("the egress sandbox's network did not come up")
			}
			for _, target := range targets {
				if r := got["dial "+target]; r == "" || r == "ok" {
					t.Errorf("dial %s: %q, want an error", target, r)
				}
			}
			if n := hits.Load() - 1; n != 0 {
				t.Errorf("%d connections reached the host's listeners", n)
			}
			for _, want := range []struct{ name, result string }{
				{"kill-all", "ESRCH"}, {"kill-host", "ESRCH"}, {"pidfd-host", "ESRCH"},
				{"fds", "end"},
				{"oom_score_adj", "1000"},
				{"write /dev/null", "ok"}, // (the control: writes do work)
			} {
				if got[want.name] != want.result {
					t.Errorf("%s: %q, want %q", want.name, got[want.name], want.result)
				}
			}
			for name, r := range got {
				if (strings.HasPrefix(name, "create ") || strings.HasPrefix(name, "write /proc")) && (r == "ok" || r == "") {
					t.Errorf("%s: %q, want an error", name, r)
				}
			}
		})
	}
}
