package activator

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
)

// fakeBackend starts instances that exist only in memory; the activator's
// policy is what is under test here (the real backend has its own tests).
type fakeBackend struct {
	mu      sync.Mutex
	starts  atomic.Int32
	stopped []string
	gate    chan struct{} // if set, Start waits for it
	fail    error
	live    map[string]*backend.Instance
	idle    []string // SetIdle calls, "id idle" or "id busy"
	// loading: instances are handed out loading their function, as the
	// local backend's are; the test ends their load.
	loading bool
}

func (f *fakeBackend) Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error) {
	n := f.starts.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if f.fail != nil {
		return nil, f.fail
	}
	inst := backend.NewInstance(fmt.Sprintf("i-%d", n), spec, "unix", "/nowhere")
	if f.loading {
		inst.SetLoading(true)
	}
	f.mu.Lock()
	if f.live == nil {
		f.live = map[string]*backend.Instance{}
	}
	f.live[inst.ID] = inst
	f.mu.Unlock()
	return inst, nil
}

func (f *fakeBackend) Stop(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = append(f.stopped, id)
	if inst := f.live[id]; inst != nil {
		inst.Finish(backend.Exit{Reason: backend.ExitStopped})
		delete(f.live, id)
	}
	return nil
}

func (f *fakeBackend) Kill(id, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if inst := f.live[id]; inst != nil {
		inst.Finish(backend.Exit{Reason: reason})
		delete(f.live, id)
	}
}

// finish ends an instance as the backend's reaper would, with ex.
func (f *fakeBackend) finish(inst *backend.Instance, ex backend.Exit) {
	f.mu.Lock()
	delete(f.live, inst.ID)
	f.mu.Unlock()
	inst.Finish(ex)
}

func (f *fakeBackend) SetIdle(id string, idle bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := "busy"
	if idle {
		state = "idle"
	}
	f.idle = append(f.idle, id+" "+state)
}

func (f *fakeBackend) idleCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.idle...)
}

func (f *fakeBackend) liveInstances() []*backend.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*backend.Instance
	for _, in := range f.live {
		out = append(out, in)
	}
	return out
}

func (f *fakeBackend) stoppedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.stopped...)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

var spec = &backend.Spec{FunctionID: "f", Owner: "alice", Name: "hello", Version: 1, Runtime: "deno", Concurrency: 100}

func TestConcurrentFirstRequestsShareOneColdStart(t *testing.T) {
	fb := &fakeBackend{gate: make(chan struct{})}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	const n = 50
	var wg sync.WaitGroup
	leases := make(chan *Lease, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := a.Acquire(context.Background(), spec)
			if err != nil {
				t.Error(err)
				return
			}
			leases <- l
		}()
	}
	// Let every request queue on the start before it finishes.
	for fb.starts.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	close(fb.gate)
	wg.Wait()
	close(leases)
	if got := fb.starts.Load(); got != 1 {
		t.Fatalf("%d cold starts, want 1", got)
	}
	cold := 0
	for l := range leases {
		if l.Cold {
			cold++
		}
		l.Release()
	}
	if cold == 0 {
		t.Fatal("no lease reported a cold start")
	}
}

func TestScaleToZeroAfterGrace(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: 5 * time.Minute, Now: c.now})
	l, err := a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	// Busy instances are never stopped, however long the request takes.
	a.Tick(c.add(time.Hour))
	if len(fb.stoppedIDs()) != 0 {
		t.Fatal("stopped an instance with a request in flight")
	}
	l.Release()
	tests := []struct {
		advance time.Duration
		stopped int
	}{
		{4*time.Minute + 59*time.Second, 0},
		{time.Second, 1},
	}
	for _, tt := range tests {
		a.Tick(c.add(tt.advance))
		a.settle()
		if got := len(fb.stoppedIDs()); got != tt.stopped {
			t.Fatalf("after +%v: %d stopped, want %d", tt.advance, got, tt.stopped)
		}
	}
	// The next request starts a new instance rather than failing.
	l, err = a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if fb.starts.Load() != 2 {
		t.Fatalf("starts = %d, want 2", fb.starts.Load())
	}
}

func TestCrashedInstanceIsReplaced(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	l, _ := a.Acquire(context.Background(), spec)
	l.Release()
	l.Instance().Finish(backend.Exit{Reason: backend.ExitCrashed})
	l2, err := a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l2.Instance() == l.Instance() {
		t.Fatal("got the crashed instance again")
	}
}

func TestRetireDrainsInFlight(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	l, _ := a.Acquire(context.Background(), spec)
	a.RetireExcept(spec.FunctionID, "another-version")
	a.settle()
	if len(fb.stoppedIDs()) != 0 {
		t.Fatal("retire stopped an instance with a request in flight")
	}
	l.Release()
	a.settle()
	if got := fb.stoppedIDs(); len(got) != 1 {
		t.Fatalf("stopped %v after the last request, want one instance", got)
	}
}

func TestStartFailureAndTimeout(t *testing.T) {
	fb := &fakeBackend{fail: fmt.Errorf("no runtime: %w", errdefs.ErrUnavailable)}
	a := New(fb, Config{})
	if _, err := a.Acquire(context.Background(), spec); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want unavailable", err)
	}
	fb2 := &fakeBackend{gate: make(chan struct{})}
	defer close(fb2.gate)
	a2 := New(fb2, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := a2.Acquire(ctx, spec); !errors.Is(err, errdefs.ErrTimeout) {
		t.Fatalf("err = %v, want timeout", err)
	}
}

func specWith(c, min, max int) *backend.Spec {
	s := *spec
	s.Concurrency, s.MinScale, s.MaxScale = c, min, max
	s.FunctionID = fmt.Sprintf("f-%d-%d-%d", c, min, max)
	return &s
}

func TestConcurrencyLimitQueuesAndHandsOver(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{QueueSize: 10})
	sp := specWith(2, 0, 1)
	l1, _ := a.Acquire(context.Background(), sp)
	l2, _ := a.Acquire(context.Background(), sp)
	if l1.Instance() != l2.Instance() {
		t.Fatal("two requests within the concurrency limit went to different instances")
	}
	got := make(chan *Lease)
	go func() {
		l, err := a.Acquire(context.Background(), sp)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("a third request got the instance past its concurrency limit of 2")
	case <-time.After(50 * time.Millisecond):
	}
	if a.QueueDepth() != 1 {
		t.Fatalf("queue depth %d, want 1", a.QueueDepth())
	}
	l1.Release()
	l3 := <-got
	if l3.Instance() != l1.Instance() {
		t.Fatal("the queued request did not get the freed capacity")
	}
	l2.Release()
	l3.Release()
	if n := fb.starts.Load(); n != 1 {
		t.Fatalf("%d starts with max 1", n)
	}
	rev := a.revision(sp)
	rev.mu.Lock()
	defer rev.mu.Unlock()
	if rev.woken != 0 {
		t.Fatalf("woken count %d once the woken request has its lease", rev.woken)
	}
}

// Queued requests are served in order: the slot a release frees goes to
// the oldest waiter, not to a request that comes meanwhile (through
// Acquire or TryAcquire), which waits its turn.
func TestQueueIsFirstInFirstOut(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{QueueSize: 10})
	sp := specWith(1, 0, 1)
	held, _ := a.Acquire(context.Background(), sp)
	order := make(chan string, 3)
	leases := make(chan *Lease, 3)
	wait := func(name string) {
		l, err := a.Acquire(context.Background(), sp)
		if err != nil {
			t.Error(err)
		}
		order <- name
		leases <- l
	}
	go wait("first")
	for a.QueueDepth() != 1 {
		time.Sleep(time.Millisecond)
	}
	held.Release()
	// The freed slot is the first waiter's, whether or not it has taken
	// it yet.
	if l := a.TryAcquire(sp); l != nil {
		t.Fatal("TryAcquire took the slot freed for the queued request")
	}
	go wait("second")
	if got := <-order; got != "first" {
		t.Fatalf("%s was served first", got)
	}
	(<-leases).Release()
	if got := <-order; got != "second" {
		t.Fatalf("then %s", got)
	}
	(<-leases).Release()
}

// Requests woken to take an instance count as load: at the instant
// between the wake-up and the lease the instance looks idle, and a tick
// then must not take it for one the load does not need.
func TestWokenRequestsCountAsLoad(t *testing.T) {
	c := &clock{t: time.Unix(10000, 0)}
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: 5 * time.Minute, Now: c.now})
	sp := specWith(1, 0, 10)
	l, err := a.Acquire(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	for i := 0; i < 120; i++ { // quiet: the windows see no load
		a.Tick(c.add(time.Second))
		a.settle()
	}
	// A step: two requests at once, so a second instance.
	l1, _ := a.Acquire(context.Background(), sp)
	l2, _ := a.Acquire(context.Background(), sp)
	if n := a.Counts()[sp.Key()]; n != 2 {
		t.Fatalf("%d instances for two requests at concurrency 1", n)
	}
	l1.Release()
	l2.Release()
	// Two queued requests woken for the two instances, not yet back.
	rev := a.revision(sp)
	rev.mu.Lock()
	var ws []*waiter
	for range 2 {
		w := &waiter{ch: make(chan struct{})}
		w.elem = rev.waiters.PushBack(w)
		ws = append(ws, w)
	}
	rev.wakeN(2)
	rev.mu.Unlock()
	a.Tick(c.add(time.Second))
	a.settle()
	if stopped := fb.stoppedIDs(); len(stopped) != 0 {
		t.Fatalf("stopped %v while two woken requests were on their way to the instances", stopped)
	}
	rev.mu.Lock()
	for _, w := range ws {
		rev.awake(w)
	}
	woken := rev.woken
	rev.mu.Unlock()
	if woken != 0 {
		t.Fatalf("woken count %d after every woken waiter came back", woken)
	}
}

func TestQueueFullAndTimeout(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{QueueSize: 1})
	sp := specWith(1, 0, 1)
	l, _ := a.Acquire(context.Background(), sp)
	defer l.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := a.Acquire(ctx, sp); errc <- err }()
	for a.QueueDepth() != 1 {
		time.Sleep(time.Millisecond)
	}
	if _, err := a.Acquire(context.Background(), sp); !errors.Is(err, ErrOverloaded) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("queue full: err = %v", err)
	}
	if err := <-errc; !errors.Is(err, errdefs.ErrTimeout) {
		t.Fatalf("queued past the deadline: err = %v", err)
	}
	if a.QueueDepth() != 0 {
		t.Fatal("a timed-out request stayed queued")
	}
}

func TestBurstStartsInstancesAtOnceUpToMax(t *testing.T) {
	tests := []struct {
		concurrency, max, requests int
		wantStarts                 int32
	}{
		{1, 5, 5, 5},
		{1, 2, 6, 2},
		{4, 10, 16, 4},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("c%d-max%d-n%d", tt.concurrency, tt.max, tt.requests), func(t *testing.T) {
			fb := &fakeBackend{gate: make(chan struct{})}
			a := New(fb, Config{})
			sp := specWith(tt.concurrency, 0, tt.max)
			leases := make(chan *Lease, tt.requests)
			for i := 0; i < tt.requests; i++ {
				go func() {
					l, err := a.Acquire(context.Background(), sp)
					if err != nil {
						t.Error(err)
					}
					leases <- l
				}()
			}
			for a.QueueDepth() != tt.requests {
				time.Sleep(time.Millisecond)
			}
			close(fb.gate)
			var held []*Lease
			for len(held) < min(tt.requests, tt.max*tt.concurrency) {
				held = append(held, <-leases)
			}
			if got := fb.starts.Load(); got != tt.wantStarts {
				t.Fatalf("%d starts, want %d", got, tt.wantStarts)
			}
			for _, l := range held {
				l.Release()
			}
			for i := len(held); i < tt.requests; i++ {
				(<-leases).Release()
			}
		})
	}
}

func TestAutoscalerTicks(t *testing.T) {
	c := &clock{t: time.Unix(10000, 0)}
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: 5 * time.Minute, Now: c.now})
	sp := specWith(1, 0, 10)
	// Six requests at once: six instances.
	var ls []*Lease
	for i := 0; i < 6; i++ {
		l, err := a.Acquire(context.Background(), sp)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	if got := fb.starts.Load(); got != 6 {
		t.Fatalf("%d starts for 6 concurrent requests at concurrency 1", got)
	}
	tick := func() { a.Tick(c.add(time.Second)); a.settle() }
	// Hold the load for a while: no scale down (the autoscaler may add
	// instances to keep utilisation at its target).
	for i := 0; i < 30; i++ {
		tick()
	}
	if len(fb.stoppedIDs()) != 0 {
		t.Fatal("scaled down under steady load")
	}
	for _, l := range ls {
		l.Release()
	}
	// The load is gone: scale down comes slowly (stable window) and to
	// zero only after the grace period.
	counts := func() int { return a.Counts()[sp.Key()] }
	tick()
	if counts() < 6 {
		t.Fatalf("dropped to %d instances one second after the load ended", counts())
	}
	for i := 0; i < 120; i++ {
		tick()
	}
	if n := counts(); n != 1 {
		t.Fatalf("%d instances two minutes after the load, want 1 (grace not over)", n)
	}
	for i := 0; i < 200; i++ {
		tick()
	}
	if n := counts(); n != 0 {
		t.Fatalf("%d instances after the grace period, want 0", n)
	}
}

// An instance that crashes soon after it starts is not replaced at every
// tick: the ticks wait 1 s, then 2 s, 4 s... (a version whose module
// fails to load would otherwise burn a sandbox twice a second, for good);
// an instance that lived past quickCrash ends the backoff.
func TestCrashLoopBackoff(t *testing.T) {
	c := &clock{t: time.Unix(10000, 0)}
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute, Now: c.now})
	sp := specWith(10, 1, 5)
	a.Ensure(sp)
	crash := func() {
		t.Helper()
		a.settle()
		insts := fb.liveInstances()
		if len(insts) != 1 {
			t.Fatalf("%d instances, want 1", len(insts))
		}
		fb.Kill(insts[0].ID, backend.ExitCrashed)
		for a.Counts()[sp.Key()] != 0 {
			time.Sleep(time.Millisecond)
		}
	}
	tick := func(d time.Duration) int32 {
		a.Tick(c.add(d))
		a.settle()
		return fb.starts.Load()
	}
	if n := tick(0); n != 1 {
		t.Fatalf("%d starts for min 1", n)
	}
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		crash()
		starts := fb.starts.Load()
		if n := tick(wait - 500*time.Millisecond); n != starts {
			t.Fatalf("crash %d: started again %v after it, within the backoff of %v", i+1, wait-500*time.Millisecond, wait)
		}
		if n := tick(time.Second); n != starts+1 {
			t.Fatalf("crash %d: not started again once the backoff of %v was over", i+1, wait)
		}
	}
	// A request that waits does not wait for the backoff.
	crash()
	got := make(chan error, 1)
	go func() {
		l, err := a.Acquire(context.Background(), sp)
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// One that lives long enough resets it: its crash waits 1 s again.
	c.add(time.Minute)
	crash()
	starts := fb.starts.Load()
	if n := tick(1500 * time.Millisecond); n != starts+1 {
		t.Fatal("the backoff did not start over after an instance that lived")
	}
}

// A version whose instances end before their function loads (an import
// that throws or exits) is not started again for each request: during the
// crash-loop backoff a request that finds no instance gets the failure at
// once, and so do requests queued when it came; requests that come while a
// failed instance is still ending wait for its end rather than start
// another. After the backoff one start tries again; a crash of a function
// that had loaded, or another version, is not refused.
func TestLoadFailureRefusedDuringBackoff(t *testing.T) {
	c := &clock{t: time.Unix(10000, 0)}
	fb := &fakeBackend{loading: true}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute, Now: c.now})
	sp := specWith(1, 0, 1) // max 1: a request past the first queues
	boom := "the function failed to load: boom at import"
	failLoad := func(inst *backend.Instance) {
		inst.Loaded(errors.New(boom))
		fb.finish(inst, backend.Exit{Reason: backend.ExitCrashed, Detail: boom, BeforeLoad: true})
	}
	only := func() *backend.Instance {
		t.Helper()
		waitFor(t, func() bool { return len(fb.liveInstances()) == 1 })
		a.settle()
		return fb.liveInstances()[0]
	}
	gone := func() {
		t.Helper()
		waitFor(t, func() bool {
			a.mu.Lock()
			rev := a.revs[sp.Key()]
			a.mu.Unlock()
			rev.mu.Lock()
			defer rev.mu.Unlock()
			return len(rev.instances) == 0
		})
	}
	acquire := func() chan error {
		got := make(chan error, 1)
		go func() {
			l, err := a.Acquire(context.Background(), sp)
			if err == nil {
				l.Release()
			}
			got <- err
		}()
		return got
	}
	refused := func(what string) {
		t.Helper()
		starts := fb.starts.Load()
		_, err := a.Acquire(context.Background(), sp)
		if !errors.Is(err, errdefs.ErrFunctionFailed) || err.Error() != boom {
			t.Fatalf("%s: got %v, want the load's failure", what, err)
		}
		a.settle()
		if n := fb.starts.Load(); n != starts {
			t.Fatalf("%s: %d more starts, want none", what, n-starts)
		}
	}

	// The first request leases the loading instance; a second, past its
	// concurrency, queues.
	first, err := a.Acquire(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	inst := only()
	queued := acquire()
	waitFor(t, func() bool { return a.QueueDepth() == 1 })
	// Its load fails: until it has ended, a request waits for that.
	inst.Loaded(errors.New(boom))
	third := acquire()
	waitFor(t, func() bool { return a.QueueDepth() == 2 })
	a.settle()
	if n := fb.starts.Load(); n != 1 {
		t.Fatalf("%d starts while the failed instance ended, want 1", n)
	}
	fb.finish(inst, backend.Exit{Reason: backend.ExitCrashed, Detail: boom, BeforeLoad: true})
	first.Release() // (the instance itself answered its request)
	for _, ch := range []chan error{queued, third} {
		if err := <-ch; !errors.Is(err, errdefs.ErrFunctionFailed) || err.Error() != boom {
			t.Fatalf("a queued request got %v, want the load's failure", err)
		}
	}
	gone()
	refused("within the first backoff")

	// Each backoff over, one start tries again, and doubles it.
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		c.add(wait - time.Millisecond)
		refused(fmt.Sprintf("backoff %d, not yet over", i+1))
		c.add(time.Millisecond)
		got := acquire()
		failLoad(only())
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		gone()
		if n := fb.starts.Load(); n != int32(i+2) {
			t.Fatalf("backoff %d: %d starts, want %d", i+1, n, i+2)
		}
		refused(fmt.Sprintf("after try %d", i+1))
	}

	// Another version (a deploy that fixes it) starts at once.
	fixed := *sp
	fixed.Version = 2
	l, err := a.Acquire(context.Background(), &fixed)
	if err != nil {
		t.Fatalf("another version: %v", err)
	}
	l.Release()
	fb.Kill(l.Instance().ID, backend.ExitStopped)

	// One that loads, then crashes, does not refuse the next request: it
	// may serve.
	c.add(8 * time.Second)
	got := acquire()
	inst = only()
	inst.Loaded(nil)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	fb.finish(inst, backend.Exit{Reason: backend.ExitCrashed, Detail: "the runtime exited unexpectedly: exit status 1"})
	gone()
	starts := fb.starts.Load()
	got = acquire()
	only().Loaded(nil)
	if err := <-got; err != nil {
		t.Fatalf("after a crash of a loaded function: %v", err)
	}
	if n := fb.starts.Load(); n != starts+1 {
		t.Fatalf("%d starts after a crash of a loaded function, want 1", n-starts)
	}
}

func TestMinInstancesKeptWarm(t *testing.T) {
	c := &clock{t: time.Unix(10000, 0)}
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute, Now: c.now})
	sp := specWith(10, 2, 5)
	a.Ensure(sp)
	a.Tick(c.add(time.Second))
	a.settle()
	if n := a.Counts()[sp.Key()]; n != 2 {
		t.Fatalf("%d instances after the first tick, want min 2", n)
	}
	for i := 0; i < 600; i++ {
		a.Tick(c.add(time.Second))
		a.settle()
	}
	if n := a.Counts()[sp.Key()]; n != 2 {
		t.Fatalf("%d instances after 10 idle minutes, want min 2", n)
	}
	// A crashed instance is replaced at the next tick.
	for _, in := range fb.liveInstances() {
		in.Finish(backend.Exit{Reason: backend.ExitCrashed})
		break
	}
	waitFor(t, func() bool { return a.Counts()[sp.Key()] == 1 })
	a.Tick(c.add(time.Second))
	a.settle()
	if n := a.Counts()[sp.Key()]; n != 2 {
		t.Fatalf("%d instances after a crash and a tick, want 2", n)
	}
}

// waitFor waits for the fake backend's goroutines (starts and stops run
// asynchronously); the policy itself never needs waiting.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestStartFailureFailsQueuedRequests(t *testing.T) {
	fb := &fakeBackend{fail: fmt.Errorf("boom: %w", errdefs.ErrUnavailable)}
	a := New(fb, Config{})
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Acquire(context.Background(), spec); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Errorf("err = %v", err)
			}
		}()
	}
	wg.Wait()
}

func TestRetireSendsQueuedRequestsBack(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{})
	sp := specWith(1, 0, 1)
	l, _ := a.Acquire(context.Background(), sp)
	errc := make(chan error)
	go func() { _, err := a.Acquire(context.Background(), sp); errc <- err }()
	for a.QueueDepth() != 1 {
		time.Sleep(time.Millisecond)
	}
	a.RetireExcept(sp.FunctionID, "other-version")
	if err := <-errc; !errors.Is(err, ErrRetired) {
		t.Fatalf("queued request: err = %v", err)
	}
	if _, err := a.Acquire(context.Background(), sp); !errors.Is(err, ErrRetired) {
		t.Fatalf("new request for a retired version: err = %v", err)
	}
	l.Release()
	a.settle()
	if len(fb.stoppedIDs()) != 1 {
		t.Fatal("the retired version's instance was not stopped after its last request")
	}
}

// One owner's functions together run no more instances than the quota: a
// function of that owner with no instance is refused (429) rather than
// queued forever, other owners are not affected, and an instance that
// ends gives its place back.
func TestOwnerInstanceQuota(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute, MaxInstancesPerOwner: 2, Now: clk.now})
	fn := func(owner, name string, min int) *backend.Spec {
		return &backend.Spec{FunctionID: owner + "/" + name, Owner: owner, Name: name, Version: 1, Runtime: "deno", Concurrency: 1, MinScale: min, MaxScale: 10}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// min 5 asks for more than the quota: the ticks start 2 and no more.
	big := fn("alice", "big", 5)
	a.Ensure(big)
	for range 3 {
		a.Tick(clk.add(time.Second))
		a.settle()
	}
	if n := fb.starts.Load(); n != 2 {
		t.Fatalf("alice's min 5 started %d instances, want the quota's 2", n)
	}

	// Another of alice's functions: no instance, none may start.
	other := fn("alice", "other", 0)
	_, err := a.Acquire(ctx, other)
	if !errors.Is(err, ErrQuota) || !errors.Is(err, errdefs.ErrRateLimited) {
		t.Fatalf("over quota: err = %v, want ErrQuota", err)
	}

	// Bob is not alice.
	l, err := a.Acquire(ctx, fn("bob", "x", 0))
	if err != nil {
		t.Fatalf("bob: %v", err)
	}
	l.Release()

	// One of alice's instances ends: her next request gets its place.
	// (Bob's instance lives too, so pick one of big's.)
	killed := false
	for _, in := range fb.liveInstances() {
		if in.Spec.FunctionID == big.FunctionID {
			fb.Kill(in.ID, "test")
			killed = true
			break
		}
	}
	if !killed {
		t.Fatal("no instance of alice's big is live")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		rev := a.revs[big.Key()]
		a.mu.Unlock()
		rev.mu.Lock()
		n := len(rev.instances)
		rev.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed instance was not forgotten")
		}
		time.Sleep(time.Millisecond)
	}
	l, err = a.Acquire(ctx, other)
	if err != nil {
		t.Fatalf("after an instance ended: %v", err)
	}
	l.Release()
	a.settle()
}

// One owner's instances together hold memory limits within the budget: a
// start that would take them past it is refused as the instance quota's
// are (429, counted as a failed cold start), other owners' instances are
// neither counted nor stopped for it, and the instance count is checked
// too.
func TestOwnerMemoryQuota(t *testing.T) {
	type start struct {
		owner string
		mib   int
	}
	tests := []struct {
		name      string
		budget    int // MaxMemoryPerOwnerMiB
		instances int // MaxInstancesPerOwner
		running   []start
		next      start
		want      error
	}{
		{"fits exactly", 512, 0, []start{{"alice", 256}}, start{"alice", 256}, nil},
		{"one MiB past it", 512, 0, []start{{"alice", 256}}, start{"alice", 257}, ErrMemoryQuota},
		{"another owner's are not counted", 512, 0, []start{{"bob", 512}}, start{"alice", 512}, nil},
		{"one instance alone past it", 256, 0, nil, start{"alice", 512}, ErrMemoryQuota},
		{"no bound", 0, 0, []start{{"alice", 4096}, {"alice", 4096}}, start{"alice", 4096}, nil},
		{"the instance quota still holds", 1024, 1, []start{{"alice", 128}}, start{"alice", 128}, ErrQuota},
		{"the memory quota before a free instance place", 256, 10, []start{{"alice", 128}}, start{"alice", 256}, ErrMemoryQuota},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb := &fakeBackend{}
			clk := &clock{t: time.Unix(1000, 0)}
			var mu sync.Mutex
			var refused []error
			a := New(fb, Config{ScaleToZeroAfter: time.Minute, MaxMemoryPerOwnerMiB: tt.budget, MaxInstancesPerOwner: tt.instances, Now: clk.now,
				OnStart: func(_ *backend.Spec, _ time.Duration, err error) {
					if err != nil {
						mu.Lock()
						refused = append(refused, err)
						mu.Unlock()
					}
				}})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			fn := func(i int, s start) *backend.Spec {
				return &backend.Spec{FunctionID: fmt.Sprintf("%s/f%d", s.owner, i), Owner: s.owner, Name: fmt.Sprintf("f%d", i), Version: 1, Runtime: "deno", Concurrency: 1, MaxScale: 10, MemoryMiB: s.mib}
			}
			for i, s := range tt.running {
				l, err := a.Acquire(ctx, fn(i, s))
				if err != nil {
					t.Fatalf("start %d (%s, %d MiB): %v", i, s.owner, s.mib, err)
				}
				defer l.Release()
			}
			l, err := a.Acquire(ctx, fn(len(tt.running), tt.next))
			if l != nil {
				l.Release()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("next start: err = %v, want %v", err, tt.want)
			}
			if tt.want != nil {
				if !errors.Is(err, errdefs.ErrRateLimited) {
					t.Fatalf("err = %v, not rate limited (429)", err)
				}
				mu.Lock()
				n := len(refused)
				mu.Unlock()
				if n != 1 {
					t.Fatalf("the refused start was told to OnStart %d times, want once (spry_cold_starts_total{result=\"error\"})", n)
				}
			}
			a.settle()
			if stopped := fb.stoppedIDs(); len(stopped) != 0 {
				t.Fatalf("instances %v were stopped; a quota stops none", stopped)
			}
			if n := int(fb.starts.Load()); tt.want == nil && n != len(tt.running)+1 || tt.want != nil && n != len(tt.running) {
				t.Fatalf("%d starts reached the backend", n)
			}
		})
	}
}

// A min past the memory budget starts what fits, and an instance that
// ends gives its memory back to its owner's next start.
func TestOwnerMemoryQuotaMinAndRelease(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute, MaxMemoryPerOwnerMiB: 1024, Now: clk.now})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := &backend.Spec{FunctionID: "alice/big", Owner: "alice", Name: "big", Version: 1, Runtime: "deno", Concurrency: 1, MinScale: 5, MaxScale: 10, MemoryMiB: 512}
	a.Ensure(big)
	for range 3 {
		a.Tick(clk.add(time.Second))
		a.settle()
	}
	if n := fb.starts.Load(); n != 2 {
		t.Fatalf("min 5 of 512 MiB started %d instances, want the 1024 MiB budget's 2", n)
	}
	small := &backend.Spec{FunctionID: "alice/small", Owner: "alice", Name: "small", Version: 1, Runtime: "deno", Concurrency: 1, MaxScale: 10, MemoryMiB: 128}
	if _, err := a.Acquire(ctx, small); !errors.Is(err, ErrMemoryQuota) {
		t.Fatalf("over the budget: err = %v, want ErrMemoryQuota", err)
	}
	fb.Kill(fb.liveInstances()[0].ID, "test")
	// The watch gives the memory back once it has seen the end.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if used := a.OwnerUsage("alice").MemoryMiB; used == 512 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice's instances hold %d MiB after one of two ended, want 512", a.OwnerUsage("alice").MemoryMiB)
		}
		time.Sleep(time.Millisecond)
	}
	l, err := a.Acquire(ctx, small)
	if err != nil {
		t.Fatalf("after an instance ended: %v", err)
	}
	l.Release()
	a.settle()
	if got, want := a.OwnerUsage("alice"), (OwnerUsage{Instances: 2, MemoryMiB: 640, MaxMemoryMiB: 1024}); got != want {
		t.Fatalf("alice's use = %+v, want %+v", got, want)
	}
	if got := a.OwnerUsage("bob"); got != (OwnerUsage{MaxMemoryMiB: 1024}) {
		t.Fatalf("bob's use = %+v, want none", got)
	}
}

func TestTryAcquire(t *testing.T) {
	one := *spec
	one.Concurrency = 1
	tests := []struct {
		name  string
		setup func(a *Activator) (cleanup func())
		want  bool
	}{
		{"no instance yet: it never starts one", func(a *Activator) func() { return func() {} }, false},
		{"an idle instance", func(a *Activator) func() {
			l, _ := a.Acquire(context.Background(), &one)
			l.Release()
			return func() {}
		}, true},
		{"the only instance is full", func(a *Activator) func() {
			l, _ := a.Acquire(context.Background(), &one)
			return l.Release
		}, false},
		{"retired", func(a *Activator) func() {
			l, _ := a.Acquire(context.Background(), &one)
			l.Release()
			a.RetireExcept(one.FunctionID, "another-version")
			return func() {}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb := &fakeBackend{}
			a := New(fb, Config{ScaleToZeroAfter: time.Minute})
			defer tt.setup(a)()
			starts := fb.starts.Load()
			l := a.TryAcquire(&one)
			if (l != nil) != tt.want {
				t.Fatalf("TryAcquire gave %v, want a lease: %v", l, tt.want)
			}
			if l != nil {
				l.Release()
			}
			if fb.starts.Load() != starts {
				t.Fatal("TryAcquire started an instance")
			}
		})
	}
}

// Kill ends an instance even while it loads its function: a request
// that could not reach it says it may be dying. (A timeout while it
// loads is TimedOut's, and spares it: TestTimedOutKillsOnlyAStuckInstance.)
func TestKillEndsAnInstanceStillLoading(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	l, err := a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	l.Instance().SetLoading(true)
	l.Kill(backend.ExitCrashed)
	l.Release()
	if n := len(fb.liveInstances()); n != 0 {
		t.Fatalf("%d instances alive after Kill, want 0", n)
	}
}

// A retired version's instances that still serve requests are counted
// until they end; then the version is forgotten.
func TestStatesCountDrainingVersions(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	l, err := a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	a.RetireExcept(spec.FunctionID, "another-version")
	a.settle()
	if got := a.States(); len(got) != 1 || got[0].Busy != 1 {
		t.Fatalf("States() = %+v, want the draining instance busy", got)
	}
	l.Release()
	a.settle()
	waitFor(t, func() bool { return len(fb.liveInstances()) == 0 })
	waitFor(t, func() bool {
		a.Tick(time.Now())
		return len(a.States()) == 0
	})
}

// After Close (a shutdown whose requests outlived its timeout), a request
// starts no instance: it is answered at once, and nothing races Close's
// wait.
func TestNoStartAfterClose(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.Acquire(ctx, spec); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close: %v, want ErrClosed", err)
	}
	if n := fb.starts.Load(); n != 0 {
		t.Fatalf("%d starts after Close", n)
	}
}

// An instance with no request in flight for IdleAfter has its CPU
// throttled at the next tick (work after a response, or a background
// loop, cannot take the machine), and gets it back before its next
// request is sent.
func TestIdleInstancesAreThrottled(t *testing.T) {
	fb := &fakeBackend{}
	c := &clock{t: time.Unix(1000, 0)}
	a := New(fb, Config{ScaleToZeroAfter: time.Hour, IdleAfter: time.Second, Now: c.now})
	l, err := a.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	id := l.Instance().ID
	a.Tick(c.add(5 * time.Second))
	if got := fb.idleCalls(); len(got) != 0 {
		t.Fatalf("a busy instance was throttled: %v", got)
	}
	l.Release()
	a.Tick(c.add(500 * time.Millisecond))
	if got := fb.idleCalls(); len(got) != 0 {
		t.Fatalf("throttled before IdleAfter: %v", got)
	}
	a.Tick(c.add(600 * time.Millisecond))
	a.Tick(c.add(time.Second))
	if got, want := fb.idleCalls(), []string{id + " idle"}; !slices.Equal(got, want) {
		t.Fatalf("after IdleAfter: %v, want %v", got, want)
	}
	for _, acquire := range []func() *Lease{
		func() *Lease { l, _ := a.Acquire(context.Background(), spec); return l },
		func() *Lease { return a.TryAcquire(spec) },
	} {
		l := acquire()
		if l == nil {
			t.Fatal("no lease")
		}
		if got := fb.idleCalls(); got[len(got)-1] != id+" busy" {
			t.Fatalf("leased before its CPU came back: %v", got)
		}
		l.Release()
		a.Tick(c.add(2 * time.Second))
		if got := fb.idleCalls(); got[len(got)-1] != id+" idle" {
			t.Fatalf("not throttled again: %v", got)
		}
	}
}

// A request that ran out of time does not by itself end its instance,
// whose other requests may be doing well: the instance takes no new
// request while the backend probes it, and is killed only if its runtime
// does not answer (or cannot be asked). A timeout while it loads is no
// sign of being stuck.
func TestTimedOutKillsOnlyAStuckInstance(t *testing.T) {
	for _, tc := range []struct {
		name     string
		loading  bool
		hasProbe bool
		probe    error
		checked  bool
		killed   bool
	}{
		{"answers", false, true, nil, true, false},
		{"does not answer", false, true, errors.New("no answer"), true, true},
		{"cannot be asked", false, false, nil, true, true},
		{"still loading", true, true, nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fb := &fakeBackend{}
			a := New(fb, Config{ScaleToZeroAfter: time.Minute})
			l, err := a.Acquire(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			inst := l.Instance()
			inst.SetLoading(tc.loading)
			probing, answer := make(chan struct{}, 1), make(chan struct{})
			if tc.hasProbe {
				inst.SetProbe(func(context.Context) error {
					probing <- struct{}{}
					<-answer
					return tc.probe
				})
			}
			if got := l.TimedOut(); got != tc.checked {
				t.Fatalf("TimedOut = %v, want %v", got, tc.checked)
			}
			l.Release()
			if tc.checked && tc.hasProbe {
				<-probing
				if l2 := a.TryAcquire(spec); l2 != nil {
					t.Fatalf("a suspect instance took a request (%s)", l2.Instance().ID)
				}
			}
			close(answer)
			a.settle()
			if alive := len(fb.liveInstances()) == 1; alive == tc.killed {
				t.Fatalf("instance alive = %v, want killed = %v", alive, tc.killed)
			}
			if tc.killed {
				if ex := inst.Exit(); ex.Reason != backend.ExitTimeout {
					t.Fatalf("exit reason %q, want %q", ex.Reason, backend.ExitTimeout)
				}
				return
			}
			// Back in rotation: the next request gets it, warm.
			l2 := a.TryAcquire(spec)
			if l2 == nil || l2.Instance() != inst {
				t.Fatalf("next lease %v, want the instance %s back", l2, inst.ID)
			}
			l2.Release()
		})
	}
}

// A request queued while the only instance is under suspicion is served
// by it once it answers the probe (max 1: no other instance may start).
func TestQueuedRequestTakesAnInstanceCleared(t *testing.T) {
	fb := &fakeBackend{}
	one := *spec
	one.MaxScale, one.Concurrency = 1, 1
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	l, err := a.Acquire(context.Background(), &one)
	if err != nil {
		t.Fatal(err)
	}
	inst := l.Instance()
	answer := make(chan struct{})
	inst.SetProbe(func(context.Context) error { <-answer; return nil })
	l.TimedOut()
	l.Release()
	got := make(chan *Lease, 1)
	go func() {
		l2, err := a.Acquire(context.Background(), &one)
		if err != nil {
			t.Error(err)
		}
		got <- l2
	}()
	for a.QueueDepth() != 1 {
		runtime.Gosched()
	}
	close(answer)
	l2 := <-got
	if l2 == nil || l2.Instance() != inst {
		t.Fatalf("queued request got %v, want the instance %s", l2, inst.ID)
	}
	l2.Release()
}

// A deleted function's version cannot be started again by a request that
// resolved it just before the delete, but the activator does not keep an
// entry for every function ever deleted: past the horizon it is gone.
func TestRemovedFunctionIsForgottenAfterTheHorizon(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	a := New(&fakeBackend{}, Config{Now: c.now})
	sp := specWith(1, 0, 1)
	a.Remove(sp.FunctionID)
	if _, err := a.Acquire(context.Background(), sp); !errors.Is(err, ErrRetired) {
		t.Fatalf("request for a deleted function: err = %v", err)
	}
	a.Tick(c.add(removedHorizon))
	if n := a.trackedDeleted(); n != 1 {
		t.Fatalf("within the horizon: %d deleted functions tracked, want 1", n)
	}
	a.Tick(c.add(time.Second))
	if n := a.trackedDeleted(); n != 0 {
		t.Fatalf("past the horizon: %d deleted functions tracked, want 0", n)
	}
}

func (a *Activator) trackedDeleted() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, keep := range a.live {
		if len(keep) == 0 {
			n++
		}
	}
	return n
}

// TestActiveKeepsRetiredVersionWhileStarting: a version retired while an
// instance of it starts is listed as active until that instance has
// ended, and not after: nothing can start it again.
func TestActiveKeepsRetiredVersionWhileStarting(t *testing.T) {
	fb := &fakeBackend{gate: make(chan struct{})}
	a := New(fb, Config{ScaleToZeroAfter: time.Minute})
	defer a.Close()
	v1 := *spec
	v2 := v1
	v2.Version = 2
	active := func() []int64 {
		var out []int64
		for _, s := range a.Active() {
			out = append(out, s.Version)
		}
		slices.Sort(out)
		return out
	}
	a.RetireExcept(v1.FunctionID, v1.Key())
	acquired := make(chan error, 1)
	go func() {
		_, err := a.Acquire(context.Background(), &v1)
		acquired <- err
	}()
	for fb.starts.Load() == 0 {
		runtime.Gosched()
	}
	a.Admit(v2.FunctionID, v2.Key())
	a.RetireExcept(v2.FunctionID, v2.Key())
	if err := <-acquired; !errors.Is(err, ErrRetired) {
		t.Fatalf("Acquire of the retired version: %v, want ErrRetired", err)
	}
	if got := active(); !slices.Equal(got, []int64{1}) {
		t.Fatalf("while version 1 starts, retired: active %v, want [1]", got)
	}
	if _, err := a.Acquire(context.Background(), &v1); !errors.Is(err, ErrRetired) {
		t.Fatalf("a new Acquire of the retired version: %v, want ErrRetired", err)
	}
	close(fb.gate)
	a.settle() // the start, then the stop of its instance
	deadline := time.Now().Add(10 * time.Second)
	for len(active()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("once version 1's instance has ended: active %v, want none", active())
		}
		runtime.Gosched()
	}
}

// memorySpec is function name of its own owner, concurrency 1.
func memorySpec(name string, min int) *backend.Spec {
	return &backend.Spec{FunctionID: "mem-" + name, Owner: "o-" + name, Name: name, Version: 1, Runtime: "deno", Concurrency: 1, MinScale: min, MaxScale: 10}
}

// memoryOf is a host whose available memory is *total less 10 per live
// instance of fb.
func memoryOf(fb *fakeBackend, total *atomic.Uint64) func() (uint64, error) {
	return func() (uint64, error) {
		return total.Load() - 10*uint64(len(fb.liveInstances())), nil
	}
}

func memoryTotal(n uint64) *atomic.Uint64 {
	var t atomic.Uint64
	t.Store(n)
	return &t
}

// liveNames lists the functions with a live instance in fb, sorted.
func liveNames(fb *fakeBackend) []string {
	var out []string
	for _, in := range fb.liveInstances() {
		out = append(out, in.Spec.Name)
	}
	slices.Sort(out)
	return out
}

// A request's start on a host short of memory stops other functions'
// idle instances, the least recently used first, until the reserve is
// free, and then starts: no more are stopped than that.
func TestShortOfMemoryStopsTheLeastRecentlyUsed(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	var evicted []string
	a := New(fb, Config{ScaleToZeroAfter: time.Hour, Now: clk.now, MemoryReserve: 100, ReadMemAvailable: memoryOf(fb, memoryTotal(125)),
		OnEvict: func(s *backend.Spec) { evicted = append(evicted, s.Name) }})
	// Used in the order b, a, c: b is the least recently used. Three
	// live leave 95, under the reserve, but the third start found 105.
	for _, name := range []string{"b", "a", "c"} {
		l, err := a.Acquire(t.Context(), memorySpec(name, 0))
		if err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second)
		l.Release()
	}
	if got := liveNames(fb); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("live %v, want a, b and c", got)
	}
	// d's start finds 95: b goes (105 then), and d starts.
	l, err := a.Acquire(t.Context(), memorySpec("d", 0))
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	a.settle()
	if got := liveNames(fb); !slices.Equal(got, []string{"a", "c", "d"}) {
		t.Errorf("live %v, want a, c and d", got)
	}
	if !slices.Equal(evicted, []string{"b"}) {
		t.Errorf("evicted %v, want b", evicted)
	}
}

// Instances with requests in flight, and those that keep a version at
// its minimum, are never stopped for room; with nothing else to stop, a
// request's start fails with 503 and nothing is lost.
func TestShortOfMemoryStopsNoBusyOrMinimumInstance(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	avail := atomic.Uint64{}
	avail.Store(1 << 30)
	a := New(fb, Config{ScaleToZeroAfter: time.Hour, Now: clk.now, MemoryReserve: 100,
		ReadMemAvailable: func() (uint64, error) { return avail.Load(), nil }})
	kept := memorySpec("kept", 1)
	a.Ensure(kept)
	a.Tick(clk.add(time.Second))
	a.settle()
	busy, err := a.Acquire(t.Context(), memorySpec("busy", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Release()
	if got := liveNames(fb); !slices.Equal(got, []string{"busy", "kept"}) {
		t.Fatalf("live %v, want busy and kept", got)
	}
	avail.Store(0)
	_, err = a.Acquire(t.Context(), memorySpec("new", 0))
	if !errors.Is(err, ErrMemory) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrMemory (503)", err)
	}
	a.settle()
	if got := liveNames(fb); !slices.Equal(got, []string{"busy", "kept"}) {
		t.Errorf("live %v, want busy and kept", got)
	}
	if s := fb.stoppedIDs(); len(s) != 0 {
		t.Errorf("stopped %v", s)
	}
	// Room again: the next request starts.
	avail.Store(1 << 30)
	l, err := a.Acquire(t.Context(), memorySpec("new", 0))
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}

// The autoscaler's start for a version's minimum stops an idle instance
// for room; its start for the load does not (another version's next
// tick would stop it back), and waits for a tick with room.
func TestShortOfMemoryOnlyMinimumStartsOfTicksStopOthers(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	total := memoryTotal(125)
	a := New(fb, Config{ScaleToZeroAfter: time.Hour, Now: clk.now, MemoryReserve: 100, ReadMemAvailable: memoryOf(fb, total)})
	for _, name := range []string{"idle1", "idle2"} {
		l, err := a.Acquire(t.Context(), memorySpec(name, 0))
		if err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second) // idle1 the least recently used
		l.Release()
	}
	// One request in flight at concurrency 1: the load asks for a second
	// instance, and the third live one would leave 95.
	loaded := memorySpec("loaded", 0)
	l, err := a.Acquire(t.Context(), loaded)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	tick := func() {
		a.Tick(clk.add(time.Second))
		a.settle()
	}
	tick()
	tick()
	if got := liveNames(fb); !slices.Equal(got, []string{"idle1", "idle2", "loaded"}) {
		t.Fatalf("live %v, want idle1, idle2 and loaded", got)
	}
	// A minimum: idle1, the least recently used, goes for it.
	a.Ensure(memorySpec("min", 1))
	tick()
	if got := liveNames(fb); !slices.Equal(got, []string{"idle2", "loaded", "min"}) {
		t.Fatalf("live %v, want idle2, loaded and min", got)
	}
	// With room, the load's start is made at the next tick.
	total.Store(1 << 30)
	tick()
	if got := liveNames(fb); !slices.Equal(got, []string{"idle2", "loaded", "loaded", "min"}) {
		t.Errorf("live %v, want idle2, loaded twice and min", got)
	}
}

func TestParseMeminfo(t *testing.T) {
	const host = "MemTotal:       24592112 kB\nMemFree:        20000000 kB\nMemAvailable:   22371968 kB\nBuffers: 1 kB\n"
	for _, c := range []struct {
		in, key string
		want    uint64
		ok      bool
	}{
		{host, "MemAvailable", 22371968 << 10, true},
		{host, "MemTotal", 24592112 << 10, true},
		{"MemAvailable: 0 kB", "MemAvailable", 0, true},
		{"MemTotal: 1 kB\n", "MemAvailable", 0, false},
		{"XMemAvailable: 1 kB\n", "MemAvailable", 0, false},
		{"MemAvailable: 12 MB\n", "MemAvailable", 0, false},
		{"MemAvailable: x kB\n", "MemAvailable", 0, false},
	} {
		got, err := parseMeminfo([]byte(c.in), c.key)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%q %s: %d, %v; want %d, ok %v", c.in, c.key, got, err, c.want, c.ok)
		}
	}
	avail, err1 := MemAvailable()
	total, err2 := MemTotal()
	if err1 != nil || err2 != nil || avail == 0 || avail > total {
		t.Errorf("this host: %d (%v) available of %d (%v)", avail, err1, total, err2)
	}
}

// A request that queues while only an autoscaler start for the load is
// under way (scaleForQueue then starts none: that start counts for it)
// is not failed with ErrMemory when that start, which may not stop
// others, finds the host short: an idle instance of another function
// is left to stop (docs/functions.md: 503 only "if that is not
// enough").
func TestShortOfMemoryQueuedBehindALoadStartIsNotFailedUnevicted(t *testing.T) {
	fb := &fakeBackend{}
	clk := &clock{t: time.Unix(1000, 0)}
	total := memoryTotal(1 << 30)
	var hold atomic.Bool
	gate := make(chan struct{})
	read := memoryOf(fb, total)
	a := New(fb, Config{ScaleToZeroAfter: time.Hour, Now: clk.now, MemoryReserve: 100,
		ReadMemAvailable: func() (uint64, error) {
			if hold.CompareAndSwap(true, false) {
				<-gate
			}
			return read()
		}})
	ctx := t.Context()
	// other: one idle instance, which may be stopped for room.
	l, err := a.Acquire(ctx, memorySpec("other", 0))
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	// v: busy for a few ticks, so that its autoscaler wants an
	// instance; then its instance ends.
	v := memorySpec("v", 0)
	l, err = a.Acquire(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		a.Tick(clk.add(time.Second))
		a.settle()
	}
	l.Release()
	for _, in := range fb.liveInstances() {
		if in.Spec.Name == "v" {
			if err := fb.Stop(ctx, in.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, func() bool { return a.Counts()[v.Key()] == 0 })
	// Short of memory while other lives (95 < 100), room once it is
	// stopped (105).
	total.Store(105)
	hold.Store(true)
	// The tick's start for v's load, held in its reading of memory.
	a.Tick(clk.add(time.Second))
	waitFor(t, func() bool { return !hold.Load() })
	errc := make(chan error, 1)
	go func() {
		l, err := a.Acquire(ctx, v)
		if err == nil {
			l.Release()
		}
		errc <- err
	}()
	waitFor(t, func() bool { return a.QueueDepth() == 1 })
	close(gate)
	select {
	case err := <-errc:
		if err != nil {
			a.settle()
			t.Fatalf("queued request: %v, with other's idle instance left to stop (live: %v)", err, liveNames(fb))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued request still waiting")
	}
}

// A queued request whose client left (its context ended) just as it was
// woken for a freed slot is not sent on: it leaves, and the slot goes to
// the next request in the queue.
func TestQueuedRequestWhoseClientLeftIsNotSentOn(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{QueueSize: 10})
	sp := specWith(1, 0, 1)
	held, err := a.Acquire(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gone := make(chan error, 1)
	go func() {
		l, err := a.Acquire(ctx, sp)
		if l != nil {
			l.Release()
		}
		gone <- err
	}()
	waitFor(t, func() bool { return a.QueueDepth() == 1 })
	next := make(chan *Lease, 1)
	go func() {
		l, err := a.Acquire(context.Background(), sp)
		if err != nil {
			t.Error(err)
		}
		next <- l
	}()
	waitFor(t, func() bool { return a.QueueDepth() == 2 })
	// The slot frees and the client goes in one step, as the waiter sees
	// them: woken first, its context done by the time it has the lock.
	rev := a.revision(sp)
	rev.mu.Lock()
	held.in.inflight--
	rev.wakeOne()
	cancel()
	rev.mu.Unlock()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("the request whose client left: err %v, want context.Canceled (it took an instance)", err)
	}
	select {
	case l := <-next:
		l.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the next queued request did not get the slot the departed one was woken for")
	}
}

// At the owner's instance bound, one function's queue does not hold up
// another's: each queues on its own instances, in its own order, and a
// flood of one takes none of the other's capacity.
func TestOwnerBoundQueuesEachFunctionOnItsOwn(t *testing.T) {
	fb := &fakeBackend{}
	a := New(fb, Config{MaxInstancesPerOwner: 2, QueueSize: 100})
	fn := func(name string) *backend.Spec {
		return &backend.Spec{FunctionID: "alice/" + name, Owner: "alice", Name: name, Version: 1, Runtime: "deno", Concurrency: 1, MaxScale: 10}
	}
	flood, quiet := fn("flood"), fn("quiet")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lf, err := a.Acquire(ctx, flood)
	if err != nil {
		t.Fatal(err)
	}
	lq, err := a.Acquire(ctx, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// The bound is reached: flood's queue grows and starts nothing.
	var wg sync.WaitGroup
	served := make(chan *Lease, 20)
	for range 20 {
		wg.Go(func() {
			l, err := a.Acquire(ctx, flood)
			if err != nil {
				t.Error(err)
				return
			}
			served <- l
		})
	}
	waitFor(t, func() bool { return a.QueueDepth() == 20 })
	// quiet's next request waits for quiet's instance only, and gets it
	// as soon as it is free, however long flood's queue.
	got := make(chan *Lease, 1)
	go func() {
		l, err := a.Acquire(ctx, quiet)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waitFor(t, func() bool { return a.QueueDepth() == 21 })
	lq.Release()
	select {
	case l := <-got:
		if l.Instance().Spec != quiet {
			t.Fatalf("quiet got an instance of %s", l.Instance().Spec.Name)
		}
		l.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("quiet's request waited behind flood's queue")
	}
	if n := fb.starts.Load(); n != 2 {
		t.Fatalf("%d starts past the bound of 2", n)
	}
	// flood's queue drains through its one instance.
	lf.Release()
	for range 20 {
		(<-served).Release()
	}
	wg.Wait()
}
