package local

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/runtime/runtimetest"
)

// bombs answers /threads by starting workers (a thread each) until one
// fails or n are up, and /files by opening files until the limit; both
// hold what they got and answer how many.
const bombs = `
const held = [];
export default async (req) => {
  const u = new URL(req.url);
  if (u.pathname === "/threads") {
    let n = 0;
    try {
      for (; n < 400; n++) {
        const w = new Worker("data:text/javascript,setInterval(()=>{},1000)", { type: "module" });
        held.push(w);
        await new Promise((r) => setTimeout(r, 1));
      }
    } catch (_) {}
    return new Response(String(n));
  }
  if (u.pathname === "/files") {
    let n = 0;
    try {
      for (; n < 100000; n++) held.push(Deno.openSync("/tmp/f", { read: true, write: true, create: true }));
    } catch (_) {}
    return new Response(String(n));
  }
  return new Response("ok");
};`

// budgetEnv is a backend whose users' budgets hold eight instances at
// their floors (32 pids; 1024 files for each of two processes).
func budgetEnv(t *testing.T) *env {
	t.Helper()
	re := runtimetest.New(t, "deno")
	b, err := New(Config{
		RunDir: re.Dir, Sandbox: re.Sandbox, Runtimes: []Runtime{re.Deno}, Blobs: re.Blobs, Logs: re.Logs,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		PoolSize: 1, DefaultMemoryMiB: 256, UIDBase: 300000, TmpBytes: 16 << 20,
		Pids: 128, NoFiles: 4096,
		UserPids: 8 * minPids, UserFiles: 8 * 2 * 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &env{b: b, blobs: re.Blobs, logs: re.Logs}
}

// held reads from the kernel what owner's instances may hold: the sum of
// their pids limits (and of the tasks they have), and of their file
// openers' open-file limits; and each instance's least of them.
type held struct {
	pidsMax, pids, files  int64
	leastPids, leastFiles int64
}

func (e *env) held(t *testing.T, owner string) held {
	t.Helper()
	h := held{leastPids: 1 << 62, leastFiles: 1 << 62}
	e.b.mu.Lock()
	var ps []*proc
	for _, p := range e.b.procs {
		p.mu.Lock()
		if p.spec != nil && p.spec.Owner == owner {
			ps = append(ps, p)
		}
		p.mu.Unlock()
	}
	e.b.mu.Unlock()
	for _, p := range ps {
		limit, cur, err := p.cmd.Pids()
		if err != nil {
			continue // ended meanwhile
		}
		h.pidsMax += limit
		h.pids += cur
		h.leastPids = min(h.leastPids, limit)
		pids, err := p.cmd.Openers()
		if err != nil {
			continue
		}
		for _, pid := range pids {
			n := nofile(t, pid)
			h.files += n
			h.leastFiles = min(h.leastFiles, n)
		}
	}
	return h
}

// nofile reads a process's hard open-file limit from /proc.
func nofile(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("limits of %d: %q", pid, line)
			}
			return n
		}
	}
	t.Fatalf("no open-file limit for %d", pid)
	return 0
}

// A user's running instances together hold no more processes and open
// files than the user's budgets, each no less than its floor; past the
// budgets a start is refused (and its pooled sandbox kept), fork and file
// bombs in every instance stop at the budgets, and another user's
// instance still starts and serves meanwhile. Ended instances give their
// part back.
func TestUserBudgetsBoundPidsAndFiles(t *testing.T) {
	e := budgetEnv(t)
	ctx := context.Background()
	pidsBudget, filesBudget := int64(e.b.cfg.UserPids), int64(e.b.cfg.UserFiles)
	within := func(when string) held {
		t.Helper()
		h := e.held(t, "alice")
		if h.pidsMax > pidsBudget || h.pids > pidsBudget || h.files > filesBudget {
			t.Fatalf("%s: alice's instances hold pids limits %d (%d in use) and open-file limits %d, over the budgets %d and %d", when, h.pidsMax, h.pids, h.files, pidsBudget, filesBudget)
		}
		if h.leastPids < minPids || h.leastFiles < 1024 {
			t.Fatalf("%s: an instance was left %d pids and %d files, under its floor", when, h.leastPids, h.leastFiles)
		}
		return h
	}
	start := func(owner string) (*backend.Instance, error) {
		spec := e.spec(t, bombs)
		spec.Owner = owner
		inst, err := e.b.Start(ctx, spec)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = e.b.Stop(ctx, inst.ID) })
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := inst.WaitLoaded(wctx); err != nil {
			t.Fatal(err)
		}
		return inst, nil
	}
	var alice []*backend.Instance
	for i := range 8 {
		inst, err := start("alice")
		if err != nil {
			t.Fatalf("alice's instance %d: %v", i+1, err)
		}
		alice = append(alice, inst)
		within(fmt.Sprintf("%d instances", i+1))
	}
	// Each at its floor now: a ninth does not fit, and the pooled
	// sandbox it was offered goes back to the pool.
	e.waitPool(t, 1)
	e.b.mu.Lock()
	offered := e.b.pool[e.b.defaultKeys()[0]][0]
	e.b.mu.Unlock()
	if _, err := start("alice"); errdefs.HTTPStatus(err) != 429 {
		t.Fatalf("alice's ninth instance: err = %v, want 429", err)
	}
	e.b.mu.Lock()
	kept := slices.Contains(e.b.pool[e.b.defaultKeys()[0]], offered)
	e.b.mu.Unlock()
	if !kept {
		t.Fatal("the sandbox offered to the refused start left the pool")
	}

	// Ended instances give their part back to the rest, and new ones
	// take it again.
	for _, inst := range alice[2:] {
		_ = e.b.Stop(ctx, inst.ID)
		<-inst.Done()
	}
	if h := within("with two instances left"); h.leastPids != e.b.pidsShare(2) {
		t.Fatalf("with two instances left their least pids limit is %d, want %d", h.leastPids, e.b.pidsShare(2))
	}
	alice = alice[:2]
	for i := 2; i < 8; i++ {
		inst, err := start("alice")
		if err != nil {
			t.Fatalf("alice's instance %d again: %v", i+1, err)
		}
		alice = append(alice, inst)
		within(fmt.Sprintf("%d instances again", i+1))
	}

	// Every instance of alice's bombs at once.
	for _, path := range []string{"/threads", "/files"} {
		var wg sync.WaitGroup
		got := make([]string, len(alice))
		for i, inst := range alice {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A thread bomb may leave its request unanswered.
				res, err := runtimetest.Client(inst, 3*time.Second).Get("http://instance" + path)
				if err != nil {
					got[i] = err.Error()
					return
				}
				defer res.Body.Close()
				b := make([]byte, 64)
				n, _ := res.Body.Read(b)
				got[i] = string(b[:n])
			}()
		}
		// Another user's instance starts and serves meanwhile.
		bob, err := start("bob")
		if err != nil {
			t.Fatalf("bob's instance during alice's %s bomb: %v", path, err)
		}
		if code, body := get(t, bob, "/"); code != 200 || body != "ok" {
			t.Fatalf("bob's instance during alice's %s bomb: %d %q", path, code, body)
		}
		wg.Wait()
		h := within("after the " + path + " bombs")
		t.Logf("%s: alice's instances got %v; they hold %d tasks", path, got, h.pids)
		if path == "/threads" && h.pids < pidsBudget/2 {
			t.Fatalf("the thread bombs left alice's instances %d tasks: they did not press on the budget (%d)", h.pids, pidsBudget)
		}
		_ = e.b.Stop(ctx, bob.ID)
		<-bob.Done()
	}

}

// A pooled sandbox that dies after a start took it, before its share is
// given, fails that start as any dead sandbox does: 503 (retry), not an
// internal error.
func TestAdmitDeadSandboxIsUnavailable(t *testing.T) {
	e := budgetEnv(t)
	e.waitPool(t, 1)
	p := e.b.take(e.b.defaultKeys()[0])
	if p == nil {
		t.Fatal("no pooled sandbox")
	}
	e.b.kill(p, backend.ExitStopped)
	<-p.exited
	err := e.b.admit(p, e.spec(t, bombs))
	if code := errdefs.HTTPStatus(err); code != 503 {
		t.Fatalf("admit a dead sandbox: err = %v (%d), want 503", err, code)
	}
}

// TestTheInstanceThatHalvesSharesFits: however many instances a user
// has, the next one's shares fit beside the others' as they are, so its
// start never waits while they are lowered (unless a lone instance holds
// the whole budget, or shares are at their floor or cap).
func TestTheInstanceThatHalvesSharesFits(t *testing.T) {
	for _, budget := range []int64{256, 1000, 8192, 16384, 1 << 20} {
		b := &Backend{cfg: Config{UserPids: budget, Pids: budget, UserFiles: uint64(budget), NoFiles: uint64(budget)}}
		for n := 3; n <= 4096; n++ {
			others := int64(n-1) * (budget >> halvings(n-1))
			if mine := budget >> halvings(n); others+mine > budget {
				t.Fatalf("budget %d, instance %d: the others hold %d, and it needs %d", budget, n, others, mine)
			}
			if others, mine := uint64(2*(n-1))*b.filesShare(n-1, 0), 2*b.filesShare(n, 0); others+mine > uint64(budget) {
				t.Fatalf("files budget %d, instance %d: the others hold %d, and it needs %d", budget, n, others, mine)
			}
		}
	}
}
