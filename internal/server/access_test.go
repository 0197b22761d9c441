package server

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/router"
)

func TestAccessSampler(t *testing.T) {
	type req struct {
		at     time.Duration // since the start
		fn     string
		status int
		cold   bool
	}
	ok := func(at time.Duration, fn string) req { return req{at: at, fn: fn, status: 200} }
	tests := []struct {
		name      string
		reqs      []req
		logged    int
		summaries []string // skipped counts, in order, as they appear in summary lines
	}{
		{name: "under the rate: every line", reqs: []req{ok(0, "a"), ok(100*time.Millisecond, "a"), ok(1200*time.Millisecond, "a")}, logged: 3},
		{name: "over the rate: the rest summed up at the next second",
			reqs:      []req{ok(0, "a"), ok(10*time.Millisecond, "a"), ok(20*time.Millisecond, "a"), ok(30*time.Millisecond, "a"), ok(1100*time.Millisecond, "a")},
			logged:    3,
			summaries: []string{" 2 more requests"}},
		{name: "errors and cold starts always",
			reqs:   []req{ok(0, "a"), ok(0, "a"), {at: 0, fn: "a", status: 500}, {at: 0, fn: "a", status: 404}, {at: 0, fn: "a", status: 200, cold: true}},
			logged: 5},
		{name: "functions counted apart", reqs: []req{ok(0, "a"), ok(0, "a"), ok(0, "b"), ok(0, "b")}, logged: 4},
		{name: "a quiet second resets", reqs: []req{ok(0, "a"), ok(0, "a"), ok(3*time.Second, "a"), ok(3*time.Second, "a")}, logged: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Unix(1_800_000_000, 0)
			now := start
			s := newAccessSampler(nil, 2, func() time.Time { return now })
			logged := 0
			var summaries []string
			for _, r := range tt.reqs {
				now = start.Add(r.at)
				a := router.Access{Spec: &backend.Spec{Owner: "alice", Name: r.fn, Version: 3}, Status: r.status, Cold: r.cold}
				ok, sum := s.admit(&a)
				if ok {
					logged++
				}
				if sum != nil {
					summaries = append(summaries, sum.Line)
				}
			}
			if logged != tt.logged {
				t.Errorf("logged %d, want %d", logged, tt.logged)
			}
			if len(summaries) != len(tt.summaries) {
				t.Fatalf("summaries %q, want %d", summaries, len(tt.summaries))
			}
			for i, want := range tt.summaries {
				if !strings.Contains(summaries[i], want) {
					t.Errorf("summary %q does not say %q", summaries[i], want)
				}
			}
		})
	}
}

// TestAccessSamplerSweep: a second's summary reaches the log store even if
// no request follows it, and at shutdown the current second's too.
func TestAccessSamplerSweep(t *testing.T) {
	ctx := context.Background()
	logs, err := logstore.Open(ctx, filepath.Join(t.TempDir(), "logs.db"), logstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	start := time.Unix(1_800_000_000, 0)
	now := start
	s := newAccessSampler(logs, 1, func() time.Time { return now })
	spec := &backend.Spec{Owner: "alice", Name: "a", Version: 2}
	for i := 0; i < 5; i++ {
		s.admit(&router.Access{Spec: spec, Status: 200})
	}
	s.sweep(false) // same second: nothing yet
	now = start.Add(1500 * time.Millisecond)
	s.sweep(false)
	s.admit(&router.Access{Spec: spec, Status: 200})
	s.admit(&router.Access{Spec: spec, Status: 200})
	s.sweep(true)
	if err := logs.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := logs.Query(ctx, logstore.Query{Owner: "alice", Function: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.Contains(got[0].Line, " 4 more requests") || !strings.Contains(got[1].Line, " 1 more request in") || got[0].Version != 2 {
		t.Fatalf("entries %+v", got)
	}
	if len(s.fns) != 1 {
		t.Fatalf("%d windows kept", len(s.fns))
	}
	now = start.Add(2 * time.Minute)
	s.sweep(false)
	if len(s.fns) != 0 {
		t.Fatalf("an idle function's window was kept")
	}
}

// run sweeps while the sampler keeps a window and sleeps while it keeps
// none; a function's first request after that wakes it, and the
// summary of its busy second is written without anything else calling.
func TestAccessSamplerRunSleepsAndWakes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	logs, err := logstore.Open(ctx, filepath.Join(t.TempDir(), "logs.db"), logstore.Options{FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := newAccessSampler(logs, 1, clock)
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	spec := &backend.Spec{Owner: "alice", Name: "a", Version: 1}
	summaries := func() int {
		t.Helper()
		if err := logs.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := logs.Query(ctx, logstore.Query{Owner: "alice", Function: "a"})
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	// waitFor polls cond until it holds; the sampler's own ticks make it.
	waitFor := func(round int, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s", round, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for round := 1; round <= 2; round++ {
		for i := 0; i < 3; i++ {
			s.admit(&router.Access{Spec: spec, Status: 200})
		}
		advance(time.Second)
		waitFor(round, "no summary written", func() bool { return summaries() >= round })
		// A minute later the window is forgotten, and the sampler
		// sleeps until the next request.
		advance(2 * time.Minute)
		waitFor(round, "the window is kept", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.fns) == 0
		})
	}
}
