package async

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	st, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newInv(owner, fn string, body string) *Invocation {
	return &Invocation{Owner: owner, FunctionID: "id-" + fn, Function: fn, Path: "/x?y=1", Host: "h", ContentType: "text/plain", Body: []byte(body)}
}

// The store keeps what an invocation is and how it went, lists a
// function's newest first in pages, claims the oldest due first, and
// bounds what an owner may have pending.
func TestStore(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	t0 := time.Unix(1000, 0)
	var ids []string
	for i := range 5 {
		inv := newInv("alice", "f", fmt.Sprint("body", i))
		inv.ID, inv.CreatedAt, inv.NextAt = NewID(), t0, t0.Add(time.Duration(i)*time.Second)
		if err := st.Add(ctx, inv, Bounds{Pending: 5}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, inv.ID)
	}
	over := newInv("alice", "g", "")
	over.ID = NewID()
	if err := st.Add(ctx, over, Bounds{Pending: 5}); !errors.Is(err, errdefs.ErrRateLimited) {
		t.Errorf("a sixth of five pending: %v", err)
	}
	if n, err := st.Pending(ctx, "alice"); err != nil || n != 5 {
		t.Errorf("Pending = %d, %v", n, err)
	}
	other := newInv("bob", "h", "b")
	other.ID = NewID()
	if err := st.Add(ctx, other, Bounds{Pending: 5}); err != nil {
		t.Fatal(err)
	}

	page, err := st.List(ctx, "id-f", 0, 2)
	if err != nil || len(page) != 2 || page[0].ID != ids[4] || page[1].ID != ids[3] {
		t.Fatalf("first page: %+v %v", page, err)
	}
	page, err = st.List(ctx, "id-f", page[1].Seq, 10)
	if err != nil || len(page) != 3 || page[2].ID != ids[0] {
		t.Fatalf("second page: %+v %v", page, err)
	}
	if _, err := st.Get(ctx, "id-g", ids[0]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another function's invocation: %v", err)
	}

	// Only what is due, oldest first, with its body.
	inv, err := st.Claim(ctx, "alice", t0.Add(1500*time.Millisecond))
	if err != nil || inv == nil || inv.ID != ids[0] || string(inv.Body) != "body0" || inv.Attempts != 1 || inv.Status != StatusRunning {
		t.Fatalf("claim: %+v %v", inv, err)
	}
	inv2, _ := st.Claim(ctx, "alice", t0.Add(1500*time.Millisecond))
	if inv2 == nil || inv2.ID != ids[1] {
		t.Fatalf("second claim: %+v", inv2)
	}
	if inv3, err := st.Claim(ctx, "alice", t0.Add(1500*time.Millisecond)); inv3 != nil || err != nil {
		t.Fatalf("a claim with nothing due: %+v %v", inv3, err)
	}
	if next, ok, err := st.NextDue(ctx, "alice"); !ok || err != nil || !next.Equal(t0.Add(2*time.Second)) {
		t.Errorf("NextDue = %v %v %v", next, ok, err)
	}

	// One succeeds, one is queued again for a retry.
	done := t0.Add(2 * time.Second)
	r := Result{Status: 200, Duration: time.Millisecond, ContentType: "text/plain", Body: []byte("ok")}
	if err := st.Record(ctx, inv.ID, r, StatusSucceeded, done, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Record(ctx, inv2.ID, Result{Status: 500, Error: "function answered 500"}, StatusQueued, done, done.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, "id-f", inv.ID)
	if err != nil || got.Status != StatusSucceeded || !got.FinishedAt.Equal(done) || got.Last.Status != 200 || string(got.Last.Body) != "ok" || got.Body != nil {
		t.Errorf("succeeded: %+v %v", got, err)
	}
	got, _ = st.Get(ctx, "id-f", inv2.ID)
	if got.Status != StatusQueued || got.Attempts != 1 || !got.NextAt.Equal(done.Add(time.Minute)) || got.Last.Error != "function answered 500" || !got.FinishedAt.IsZero() {
		t.Errorf("queued for a retry: %+v", got)
	}
	if n, _ := st.Pending(ctx, "alice"); n != 4 {
		t.Errorf("Pending after one finished = %d", n)
	}
	if n, _ := st.Queued(ctx); n != 5 {
		t.Errorf("Queued = %d", n)
	}

	// Finished ones go after their retention; a deleted function's go
	// at once.
	if n, err := st.Prune(ctx, done); err != nil || n != 0 {
		t.Errorf("Prune of nothing old enough = %d, %v", n, err)
	}
	if n, err := st.Prune(ctx, done.Add(time.Nanosecond)); err != nil || n != 1 {
		t.Errorf("Prune = %d, %v", n, err)
	}
	if err := st.DeleteFunction(ctx, "id-f"); err != nil {
		t.Fatal(err)
	}
	if fns, err := st.Functions(ctx); err != nil || len(fns) != 1 || fns[0] != "id-h" {
		t.Errorf("Functions after the delete = %q, %v", fns, err)
	}
	if page, _ := st.List(ctx, "id-f", 0, 10); len(page) != 0 {
		t.Errorf("a deleted function's invocations: %d", len(page))
	}
}

// recorder is a Send that answers from a script and tells of each
// attempt.
type recorder struct {
	mu      sync.Mutex
	answers map[string][]int // by body: the status of each attempt
	// maxAttempts, by body: what the version live at each attempt
	// allows (Result.MaxAttempts); none: 0, the policy's.
	maxAttempts map[string][]int
	attempts    map[string]int
	block       chan struct{} // if set, each attempt waits for it (or ctx)
	inFlight    map[string]int
	peak        map[string]int
	seen        chan string // bodies as their attempts start
}

func newRecorder() *recorder {
	return &recorder{answers: map[string][]int{}, maxAttempts: map[string][]int{}, attempts: map[string]int{}, inFlight: map[string]int{}, peak: map[string]int{}, seen: make(chan string, 1000)}
}

func (rc *recorder) send(ctx context.Context, inv *Invocation) Result {
	rc.mu.Lock()
	n := rc.attempts[string(inv.Body)]
	rc.attempts[string(inv.Body)]++
	rc.inFlight[inv.Owner]++
	rc.peak[inv.Owner] = max(rc.peak[inv.Owner], rc.inFlight[inv.Owner])
	script := rc.answers[string(inv.Body)]
	var maxAttempts int
	if m := rc.maxAttempts[string(inv.Body)]; n < len(m) {
		maxAttempts = m[n]
	}
	rc.mu.Unlock()
	defer func() {
		rc.mu.Lock()
		rc.inFlight[inv.Owner]--
		rc.mu.Unlock()
	}()
	rc.seen <- string(inv.Body)
	if rc.block != nil {
		select {
		case <-rc.block:
		case <-ctx.Done():
			return Result{Error: "cut off"}
		}
	}
	status := 200
	if n < len(script) {
		status = script[n]
	}
	return Result{Status: status, Body: []byte(fmt.Sprint("attempt ", n+1)), MaxAttempts: maxAttempts}
}

// events collects OnAttempt's calls.
type events chan string

func (e events) on(inv *Invocation, r Result, status string, _ time.Time) {
	e <- fmt.Sprintf("%s #%d %d %s", inv.Body, inv.Attempts, r.Status, status)
}

func (e events) want(t *testing.T, want ...string) {
	t.Helper()
	got := map[string]bool{}
	for range want {
		select {
		case ev := <-e:
			got[ev] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("got %v, want %q", got, w)
		}
	}
}

func runWorker(t *testing.T, w *Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// Failed attempts are retried on the policy's schedule (shortened
// here), and what the last one said is kept.
func TestWorkerRetries(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	rc := newRecorder()
	rc.answers["flaky"] = []int{500, 200}
	rc.answers["broken"] = []int{503, 502, 500}
	rc.answers["refused"] = []int{400}
	ev := make(events, 100)
	w := NewWorker(st, Config{Send: rc.send, OnAttempt: ev.on, Policy: Policy{Delays: []time.Duration{time.Millisecond, 2 * time.Millisecond}}})
	runWorker(t, w)
	invs := map[string]*Invocation{}
	for _, body := range []string{"flaky", "broken", "refused"} {
		inv := newInv("alice", "f", body)
		if err := w.Enqueue(ctx, inv); err != nil {
			t.Fatal(err)
		}
		invs[body] = inv
	}
	ev.want(t, "flaky #1 500 queued", "flaky #2 200 succeeded",
		"broken #1 503 queued", "broken #2 502 queued", "broken #3 500 failed",
		"refused #1 400 failed")
	for body, want := range map[string]struct {
		status   string
		attempts int
		code     int
	}{"flaky": {StatusSucceeded, 2, 200}, "broken": {StatusFailed, 3, 500}, "refused": {StatusFailed, 1, 400}} {
		got, err := w.Get(ctx, "id-f", invs[body].ID)
		if err != nil || got.Status != want.status || got.Attempts != want.attempts || got.Last.Status != want.code ||
			string(got.Last.Body) != fmt.Sprint("attempt ", want.attempts) || got.FinishedAt.IsZero() {
			t.Errorf("%s: %+v %v", body, got, err)
		}
	}
}

// A function's own async retries cap the policy's: with 0 a failed
// attempt ends the invocation, with 1 the second does, and an attempt
// goes by the version live when it ran (a function whose retries were
// lowered after its first attempt stops at its second).
func TestWorkerFunctionRetries(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	rc := newRecorder()
	for body, max := range map[string][]int{
		"none":    {1},
		"one":     {2, 2},
		"lowered": {3, 1},
		"more":    {5, 5, 5}, // more than the policy's: the policy's
	} {
		rc.answers[body] = []int{500, 500, 500, 500, 500}
		rc.maxAttempts[body] = max
	}
	ev := make(events, 100)
	w := NewWorker(st, Config{Send: rc.send, OnAttempt: ev.on, Policy: Policy{Delays: []time.Duration{time.Millisecond, 2 * time.Millisecond}}})
	runWorker(t, w)
	invs := map[string]*Invocation{}
	for _, body := range []string{"none", "one", "lowered", "more"} {
		inv := newInv("alice", "f", body)
		if err := w.Enqueue(ctx, inv); err != nil {
			t.Fatal(err)
		}
		invs[body] = inv
	}
	ev.want(t, "none #1 500 failed",
		"one #1 500 queued", "one #2 500 failed",
		"lowered #1 500 queued", "lowered #2 500 failed",
		"more #1 500 queued", "more #2 500 queued", "more #3 500 failed")
	for body, attempts := range map[string]int{"none": 1, "one": 2, "lowered": 2, "more": 3} {
		got, err := w.Get(ctx, "id-f", invs[body].ID)
		if err != nil || got.Status != StatusFailed || got.Attempts != attempts || got.Last.Status != 500 {
			t.Errorf("%s: %+v %v", body, got, err)
		}
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if n := rc.attempts["none"]; n != 1 {
		t.Errorf("a function without retries was attempted %d times", n)
	}
}

// At most Workers attempts run at once, at most WorkersPerOwner of one
// owner's: another owner's invocation runs while the first's flood
// waits.
func TestWorkerBounds(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	rc := newRecorder()
	rc.block = make(chan struct{})
	ev := make(events, 100)
	w := NewWorker(st, Config{Send: rc.send, OnAttempt: ev.on, Workers: 3, WorkersPerOwner: 2})
	runWorker(t, w)
	for i := range 6 {
		if err := w.Enqueue(ctx, newInv("alice", "f", fmt.Sprint("a", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Enqueue(ctx, newInv("bob", "f", "b0")); err != nil {
		t.Fatal(err)
	}
	started := map[string]bool{}
	for range 3 {
		select {
		case b := <-rc.seen:
			started[b] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("started %v", started)
		}
	}
	if !started["b0"] {
		t.Errorf("bob's waited behind alice's: %v", started)
	}
	select {
	case b := <-rc.seen:
		t.Fatalf("%s started past the bounds", b)
	default:
	}
	if w.Running() != 3 {
		t.Errorf("Running = %d", w.Running())
	}
	close(rc.block)
	for range 4 {
		<-rc.seen
	}
	for range 7 {
		<-ev
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.peak["alice"] > 2 || rc.peak["bob"] != 1 {
		t.Errorf("peaks %v", rc.peak)
	}
}

// A restart runs what was queued, and again what was running when the
// server stopped (killed: left running in the file; stopped: cut off
// and queued again), its cut-off attempt not counted.
func TestWorkerRestart(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "invocations.db")
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// A server killed during an attempt: the file says running.
	killed := newInv("alice", "f", "killed")
	queued := newInv("alice", "f", "queued")
	w := NewWorker(st, Config{Send: func(context.Context, *Invocation) Result { panic("no worker runs") }})
	for _, inv := range []*Invocation{killed, queued} {
		if err := w.Enqueue(ctx, inv); err != nil {
			t.Fatal(err)
		}
	}
	if inv, err := st.Claim(ctx, "alice", time.Now()); err != nil || inv.ID != killed.ID {
		t.Fatalf("claim: %+v %v", inv, err)
	}
	st.Close()

	// A server that starts, begins both, and is stopped during them.
	st = openStore(t, path)
	rc := newRecorder()
	rc.block = make(chan struct{})
	w = NewWorker(st, Config{Send: rc.send})
	stop := runWorker(t, w)
	<-rc.seen
	<-rc.seen
	w.Stop()
	stop()
	for _, inv := range []*Invocation{killed, queued} {
		got, err := st.Get(ctx, "id-f", inv.ID)
		if err != nil || got.Status != StatusQueued || got.Attempts != 0 {
			t.Errorf("%s after the stop: %+v %v", inv.Body, got, err)
		}
	}
	st.Close()

	// The next start runs both to the end.
	st = openStore(t, path)
	rc = newRecorder()
	ev := make(events, 10)
	w = NewWorker(st, Config{Send: rc.send, OnAttempt: ev.on})
	runWorker(t, w)
	ev.want(t, "killed #1 200 succeeded", "queued #1 200 succeeded")
}

// Past an owner's bound of pending invocations, Enqueue refuses, and
// another owner is not held to it.
func TestWorkerPendingBound(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	w := NewWorker(st, Config{Send: newRecorder().send, MaxPendingPerOwner: 2})
	for i := range 3 {
		err := w.Enqueue(ctx, newInv("alice", "f", fmt.Sprint(i)))
		if (i < 2) != (err == nil) {
			t.Errorf("enqueue %d: %v", i, err)
		}
		if i == 2 && !errors.Is(err, errdefs.ErrRateLimited) {
			t.Errorf("past the bound: %v", err)
		}
	}
	if err := w.Enqueue(ctx, newInv("bob", "f", "b")); err != nil {
		t.Errorf("another owner: %v", err)
	}
}
