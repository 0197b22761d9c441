package activator

import (
	"context"
	"errors"
	"fmt"
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

var spec = &backend.Spec{FunctionID: "f", Owner: "alice", Name: "hello", Version: 1, Runtime: "deno"}

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
	a.Retire(spec.Key())
	if len(fb.stoppedIDs()) != 0 {
		t.Fatal("retire stopped an instance with a request in flight")
	}
	l.Release()
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
