// Package runtimetest prepares a real runtime (the pinned Deno or Node) in
// the real sandbox for the tests of the local backend and of the
// runtimes: the binary exposed to sandboxed uids, a run directory, a
// sandbox in its own cgroup, a blob store and an output collector. The
// test builds the backend on it; nothing here is a stand-in.
package runtimetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/sandbox"
)

// Env is what a local backend under test needs besides its policy. One of
// Deno and Node is set, as asked.
type Env struct {
	Dir     string // the run directory, reachable by sandboxed uids
	Sandbox *sandbox.Sandbox
	Deno    *runtime.Deno
	Node    *runtime.Node
	Blobs   *blob.Store
	Logs    *Lines
}

// New prepares runtimeName ("deno" or "node"). It skips the test unless it
// runs as root with the pinned runtime installed. Cleanups, which run
// after the test's own (so after it closed its backend), check that no
// sandboxed process is left, print the instances' output if the test
// failed, and remove the directory.
func New(t testing.TB, runtimeName string) *Env {
	t.Helper()
	return NewWith(t, runtimeName, Options{})
}

// Options change what NewWith prepares.
type Options struct {
	// EgressAllow is the sandbox's Config.EgressAllow.
	EgressAllow []netip.Prefix
}

// NewWith is New with options.
func NewWith(t testing.TB, runtimeName string, o Options) *Env {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("sandboxed instances need root (cgroups, instance uids)")
	}
	find := runtime.FindDeno
	if runtimeName == "node" {
		find = runtime.FindNode
	}
	bin, err := find("")
	if err != nil {
		t.Skip(err)
	}
	// Sandboxes reach their mounts as an unprivileged uid, and t.TempDir's
	// parent is private; use a directory under /tmp instead.
	dir, err := os.MkdirTemp("", "spry-"+runtimeName+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := sandbox.MkdirReachable(dir); err != nil {
		t.Fatal(err)
	}
	if bin, err = sandbox.Expose(bin, "/var/lib/spry/runtimes"); err != nil {
		t.Fatal(err)
	}
	e := &Env{Dir: dir, Logs: &Lines{}}
	if runtimeName == "node" {
		e.Node, err = runtime.NewNode(bin, dir)
	} else {
		e.Deno, err = runtime.NewDeno(bin, dir)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Node needs libstdc++ and libgcc_s besides libc.
	libs, err := sandbox.SharedLibs(bin)
	if err != nil {
		t.Fatal(err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	if e.Sandbox, err = sandbox.New(sandbox.Config{CgroupParent: "spry-test/" + hex.EncodeToString(rnd[:]), SystemLibs: libs, StateDir: dir, EgressAllow: o.EgressAllow}); err != nil {
		t.Fatal(err)
	}
	if e.Blobs, err = blob.Open(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := e.Sandbox.Sweep(); n != 0 {
			t.Errorf("%d processes left behind", n)
		}
		if t.Failed() {
			t.Logf("instance output:\n%s", e.Logs)
		}
	})
	return e
}

// Lines collects what instances print.
type Lines struct {
	mu  sync.Mutex
	out []string
}

// InstanceOutput keeps one line, prefixed with its stream.
func (l *Lines) InstanceOutput(spec *backend.Spec, instance, stream string, line []byte) {
	l.mu.Lock()
	l.out = append(l.out, stream+": "+string(line))
	l.mu.Unlock()
}

// Await reports whether every one of wants appears in the lines within a
// few seconds: the supervisor reads an instance's output on goroutines of
// its own, so a line printed before a response may be collected after it.
func (l *Lines) Await(wants ...string) bool {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		out, all := l.String(), true
		for _, w := range wants {
			all = all && strings.Contains(out, w)
		}
		if all || time.Now().After(deadline) {
			return all
		}
	}
}

func (l *Lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.out, "\n")
}

// Client is an HTTP client whose every request goes to inst's socket.
func Client(inst *backend.Instance, timeout time.Duration) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", inst.Address)
		},
	}, Timeout: timeout}
}

// SpinningHandler is a function whose handler blocks its event loop for
// good.
const SpinningHandler = `export default { fetch() { for (;;) {} } }`

// AwaitLoadedWhileSpinning sends inst, an instance of SpinningHandler, one
// request in the background and fails t unless inst stops counting as
// loading while the handler spins: a timeout must then take it for stuck.
func AwaitLoadedWhileSpinning(t testing.TB, inst *backend.Instance) {
	t.Helper()
	c := Client(inst, 2*time.Second)
	go func() {
		if res, err := c.Get("http://instance/"); err == nil {
			res.Body.Close()
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); inst.Loading(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the instance still counts as loading while its handler spins")
		}
	}
}
