package local

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
		// The bombs go on past their requests' 3 s: on a loaded machine
		// the workers start slowly. Watch them press on the budget,
		// which must hold at every reading.
		for deadline := time.Now().Add(60 * time.Second); path == "/threads" && h.pids < pidsBudget/2; {
			if time.Now().After(deadline) {
				t.Fatalf("the thread bombs left alice's instances %d tasks: they did not press on the budget (%d)", h.pids, pidsBudget)
			}
			time.Sleep(50 * time.Millisecond)
			h = within("while the " + path + " bombs press")
		}
		t.Logf("%s: alice's instances got %v; they hold %d tasks", path, got, h.pids)
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

// A start whose sandbox cannot be given its share once it has begun
// lowering the sandbox's limits (here a process of the host put in the
// sandbox's cgroup, whose open-file limit the server may not set) fails,
// and the sandbox, half limited, is discarded: it never goes back to the
// pool, from which any user's function could take it.
func TestHalfLimitedSandboxLeavesThePool(t *testing.T) {
	e := budgetEnv(t)
	ctx := context.Background()
	// A second instance's shares are below a pooled sandbox's limits.
	first, err := e.b.Start(ctx, e.spec(t, bombs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.b.Stop(ctx, first.ID) })
	if want := e.b.pidsShare(2); want >= e.b.cfg.Pids {
		t.Fatalf("the second instance's pids share %d is not below the pool's %d", want, e.b.cfg.Pids)
	}
	e.waitPool(t, 1)
	e.b.mu.Lock()
	offered := e.b.pool[e.b.defaultKeys()[0]][0]
	e.b.mu.Unlock()
	// A root process whose gid is not root's: without CAP_SYS_RESOURCE
	// the server may not set its limits, and with it, it is no process
	// of the instance's uid.
	intruder := exec.Command("sleep", "60")
	intruder.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: 2999981, Groups: []uint32{}}, Pdeathsig: syscall.SIGKILL}
	if err := intruder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = intruder.Process.Kill(); _ = intruder.Wait() })
	openers, err := offered.cmd.Openers()
	if err != nil || len(openers) == 0 {
		t.Fatalf("openers of the pooled sandbox: %v, %v", openers, err)
	}
	if err := os.WriteFile(pidsProcs(t, openers[0]), []byte(strconv.Itoa(intruder.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}

	inst, err := e.b.Start(ctx, e.spec(t, bombs))
	if err == nil {
		_ = e.b.Stop(ctx, inst.ID)
		t.Fatal("a start whose sandbox could not be limited succeeded")
	}
	t.Logf("start: %v", err)
	if code := errdefs.HTTPStatus(err); code != 503 {
		t.Errorf("start: status %d, want 503", code)
	}
	select {
	case <-offered.exited:
	case <-time.After(10 * time.Second):
		limit, _, _ := offered.cmd.Pids()
		e.b.mu.Lock()
		pooled := slices.Contains(e.b.pool[e.b.defaultKeys()[0]], offered)
		e.b.mu.Unlock()
		var files []int64
		if pids, err := offered.cmd.Openers(); err == nil {
			for _, pid := range pids {
				files = append(files, nofile(t, pid))
			}
		}
		t.Fatalf("the half-limited sandbox lives on (pids.max %d, its processes' open-file limits %v; in the pool: %v)", limit, files, pooled)
	}
	// What the pool holds now has the pool's limits.
	e.waitPool(t, 1)
	e.b.mu.Lock()
	pool := slices.Clone(e.b.pool[e.b.defaultKeys()[0]])
	e.b.mu.Unlock()
	for _, p := range pool {
		if limit, _, err := p.cmd.Pids(); err != nil || limit != e.b.cfg.Pids {
			t.Errorf("a pooled sandbox has pids.max %d (%v), want %d", limit, err, e.b.cfg.Pids)
		}
		pids, err := p.cmd.Openers()
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			if n := nofile(t, pid); n != int64(e.b.cfg.NoFiles) {
				t.Errorf("a pooled sandbox's process %d has an open-file limit of %d, want %d", pid, n, e.b.cfg.NoFiles)
			}
		}
	}
}

// pidsProcs is the cgroup.procs file of the pids cgroup process pid is in.
func pidsProcs(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[1] == "pids":
			return filepath.Join("/sys/fs/cgroup/pids", f[2], "cgroup.procs")
		case f[0] == "0" && f[1] == "":
			return filepath.Join("/sys/fs/cgroup", f[2], "cgroup.procs")
		}
	}
	t.Fatalf("process %d is in no pids cgroup:\n%s", pid, b)
	return ""
}

// A start refused for the budget leaves the user's other instances at
// their shares: lowered to the shares of one instance more for a start
// that never came, they would keep them until the user's next start or
// end (their open-file limits, without CAP_SYS_RESOURCE, for good).
func TestRefusedStartLeavesTheShares(t *testing.T) {
	e := budgetEnv(t)
	ctx := context.Background()
	// Three instances, each holding all the tasks it may, hold the
	// whole budget: the first was lowered from a lone instance's share
	// to 64 once it held 128, and each of the others holds its 64.
	// Room for the workers of a thread bomb at 128 tasks.
	spec := e.spec(t, bombs)
	spec.MemoryMiB = 1024
	var alice []*backend.Instance
	for i := range 3 {
		inst, err := e.b.Start(ctx, spec)
		if err != nil {
			t.Fatalf("instance %d: %v", i+1, err)
		}
		t.Cleanup(func() { _ = e.b.Stop(ctx, inst.ID) })
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = inst.WaitLoaded(wctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// A thread bomb may leave its request unanswered: it is done
		// once its tasks stop growing.
		go func() {
			if res, err := runtimetest.Client(inst, 30*time.Second).Get("http://instance/threads"); err == nil {
				res.Body.Close()
			}
		}()
		e.b.mu.Lock()
		p := e.b.procs[inst.ID]
		e.b.mu.Unlock()
		last, since := int64(-1), time.Now()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && time.Since(since) < time.Second; time.Sleep(50 * time.Millisecond) {
			_, cur, err := p.cmd.Pids()
			if err != nil {
				t.Fatal(err)
			}
			if cur != last {
				last, since = cur, time.Now()
			}
		}
		alice = append(alice, inst)
	}
	t.Logf("alice's instances hold %d tasks", e.held(t, "alice").pids)
	share := e.b.pidsShare(3)
	if e.b.pidsShare(4) >= share {
		t.Fatalf("a fourth instance does not lower the shares (%d, %d)", e.b.pidsShare(4), share)
	}
	if _, err := e.b.Start(ctx, spec); errdefs.HTTPStatus(err) != 429 {
		t.Fatalf("the fourth instance: err = %v, want 429", err)
	}
	for i, inst := range alice {
		e.b.mu.Lock()
		p := e.b.procs[inst.ID]
		e.b.mu.Unlock()
		limit, cur, err := p.cmd.Pids()
		if err != nil {
			t.Fatal(err)
		}
		if limit != share {
			t.Errorf("after the refused start, instance %d has pids.max %d (holding %d), want the share of three, %d", i+1, limit, cur, share)
		}
	}
}

// OwnerBudgets reports what the budget check counts a user's instances
// at, added up: at first their limits, as the kernel has them; once an
// instance holds more tasks than a lowered limit, those tasks (more than
// the limits' sum, never more than the budget); and nothing once they
// have ended. Another user's count is theirs.
func TestOwnerBudgetsCountWhatTheCheckCounts(t *testing.T) {
	e := budgetEnv(t)
	ctx := context.Background()
	check := func(when, owner string, wantPids int64, wantFiles uint64) {
		t.Helper()
		pids, pidsLimit, files, filesLimit := e.b.OwnerBudgets(owner)
		if pids != wantPids || files != wantFiles || pidsLimit != e.b.cfg.UserPids || filesLimit != e.b.cfg.UserFiles {
			t.Fatalf("%s: %s's budgets: pids %d of %d, files %d of %d; want %d of %d, %d of %d", when, owner,
				pids, pidsLimit, files, filesLimit, wantPids, e.b.cfg.UserPids, wantFiles, e.b.cfg.UserFiles)
		}
	}
	check("before any instance", "alice", 0, 0)
	start := func(owner string) *backend.Instance {
		t.Helper()
		spec := e.spec(t, bombs)
		// Room for the thread bomb's 64 workers.
		spec.Owner, spec.MemoryMiB = owner, 1024
		inst, err := e.b.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.b.Stop(ctx, inst.ID) })
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := inst.WaitLoaded(wctx); err != nil {
			t.Fatal(err)
		}
		// The start's own rebalance runs off its path, and the runtime's
		// loaded line may end WaitLoaded first: one more settles the
		// shares (the ledger orders them).
		e.b.rebalance(owner)
		return inst
	}
	var alice []*backend.Instance
	for i := range 3 {
		alice = append(alice, start("alice"))
		// Each below its limits: counted at them.
		h := e.held(t, "alice")
		check(fmt.Sprintf("%d instances", i+1), "alice", h.pidsMax, uint64(h.files))
	}
	bob := start("bob")
	h := e.held(t, "bob")
	check("bob's instance", "bob", h.pidsMax, uint64(h.files))

	// The first fills its pids limit (the share of three, 64) with
	// threads; the fourth lowers it to the share of four (32), which
	// stops its forks and takes nothing: it counts at its tasks.
	e.b.mu.Lock()
	first := e.b.procs[alice[0].ID]
	e.b.mu.Unlock()
	go func() {
		// A thread bomb may leave its request unanswered.
		if res, err := runtimetest.Client(alice[0], 3*time.Second).Get("http://instance/threads"); err == nil {
			res.Body.Close()
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); ; {
		limit, cur, err := first.cmd.Pids()
		if err != nil {
			t.Fatal(err)
		}
		if cur >= limit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the thread bomb holds %d tasks of %d", cur, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	alice = append(alice, start("alice"))
	pids, _, _, _ := e.b.OwnerBudgets("alice")
	var limits, counted int64
	for _, inst := range alice {
		e.b.mu.Lock()
		p := e.b.procs[inst.ID]
		e.b.mu.Unlock()
		limit, cur, err := p.cmd.Pids()
		if err != nil {
			t.Fatal(err)
		}
		limits += limit
		// Tasks past a limit only end: the count, read earlier, is at
		// least what the kernel holds now.
		counted += max(limit, cur)
	}
	if pids <= limits || pids < counted || pids > e.b.cfg.UserPids {
		t.Fatalf("after the bomb: alice's pids counted at %d; their limits add up to %d, the larger of limit and tasks to %d, the budget %d", pids, limits, counted, e.b.cfg.UserPids)
	}
	t.Logf("alice's four instances: limits %d, counted at %d", limits, pids)

	for _, inst := range append(alice, bob) {
		_ = e.b.Stop(ctx, inst.ID)
		<-inst.Done()
	}
	check("their ends", "alice", 0, 0)
	check("his end", "bob", 0, 0)
}

// A user left with no instance leaves no ledger behind: one stayed for
// every user that ever ran an instance (users since deleted too). The
// next start of theirs makes a new one, and is counted.
func TestLedgerGoesWithTheLastInstance(t *testing.T) {
	e := budgetEnv(t)
	ctx := context.Background()
	ledgers := func() int {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		return len(e.b.ledgers)
	}
	for round := range 2 {
		var insts []*backend.Instance
		for i := range 3 {
			spec := e.spec(t, `export default () => new Response("ok")`)
			spec.Owner = fmt.Sprint("user", i)
			inst, err := e.b.Start(ctx, spec)
			if err != nil {
				t.Fatalf("round %d: user%d's start: %v", round, i, err)
			}
			insts = append(insts, inst)
		}
		if n := ledgers(); n != 3 {
			t.Fatalf("round %d: %d ledgers with three users' instances running, want 3", round, n)
		}
		if pids, _, _, _ := e.b.OwnerBudgets("user0"); pids == 0 {
			t.Fatalf("round %d: user0's running instance is not counted", round)
		}
		for _, inst := range insts {
			if err := e.b.Stop(ctx, inst.ID); err != nil {
				t.Fatal(err)
			}
		}
		if n := ledgers(); n != 0 {
			t.Fatalf("round %d: %d ledgers left with every instance stopped, want none", round, n)
		}
		if pids, _, files, _ := e.b.OwnerBudgets("user0"); pids != 0 || files != 0 {
			t.Fatalf("round %d: user0 holds %d pids and %d files with no instance", round, pids, files)
		}
	}
}
