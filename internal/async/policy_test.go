package async

import (
	"testing"
	"time"
)

// The retry decision and its schedule, with the clock and the jitter
// given: what ends an invocation, what is tried again, and when.
func TestPolicyNext(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	p := DefaultPolicy(30 * time.Second)
	for _, tt := range []struct {
		name    string
		attempt int
		r       Result
		rnd     float64
		status  string
		after   time.Duration // from now, for a retry
	}{
		{"200 ends it", 1, Result{Status: 200}, 0.5, StatusSucceeded, 0},
		{"204 ends it", 3, Result{Status: 204}, 0.5, StatusSucceeded, 0},
		{"404 is the function's answer", 1, Result{Status: 404}, 0.5, StatusFailed, 0},
		{"400 too", 1, Result{Status: 400}, 0.5, StatusFailed, 0},
		{"a redirect is no success, nor worth a retry", 1, Result{Status: 302}, 0.5, StatusFailed, 0},
		{"500 first: 30s later", 1, Result{Status: 500}, 0.5, StatusQueued, 30 * time.Second},
		{"502 second: 2m later", 2, Result{Status: 502}, 0.5, StatusQueued, 2 * time.Minute},
		{"503 third: no more", 3, Result{Status: 503}, 0.5, StatusFailed, 0},
		{"429 is retried", 1, Result{Status: 429}, 0.5, StatusQueued, 30 * time.Second},
		{"no answer (connection, timeout) is retried", 1, Result{Error: "timed out"}, 0.5, StatusQueued, 30 * time.Second},
		{"least jitter", 1, Result{Status: 500}, 0, StatusQueued, 24 * time.Second},
		{"most jitter", 2, Result{Status: 500}, 0.999999, StatusQueued, 2*time.Minute + 24*time.Second - 12*time.Microsecond},
		{"a final failure is not retried", 1, Result{Error: "function deleted", Final: true}, 0.5, StatusFailed, 0},
		{"an attempt number out of range fails", 0, Result{Status: 500}, 0.5, StatusFailed, 0},
		// The function's own retries (Result.MaxAttempts: its version's
		// retries and one) cap the policy's.
		{"no retries: the first 500 ends it", 1, Result{Status: 500, MaxAttempts: 1}, 0.5, StatusFailed, 0},
		{"no retries: nor is no answer retried", 1, Result{Error: "timed out", MaxAttempts: 1}, 0.5, StatusFailed, 0},
		{"no retries: a success is one", 1, Result{Status: 200, MaxAttempts: 1}, 0.5, StatusSucceeded, 0},
		{"one retry: the first 500 is retried", 1, Result{Status: 500, MaxAttempts: 2}, 0.5, StatusQueued, 30 * time.Second},
		{"one retry: the second ends it", 2, Result{Status: 500, MaxAttempts: 2}, 0.5, StatusFailed, 0},
		{"two retries: as the policy", 2, Result{Status: 500, MaxAttempts: 3}, 0.5, StatusQueued, 2 * time.Minute},
		{"more than the policy's: the policy's", 3, Result{Status: 500, MaxAttempts: 5}, 0.5, StatusFailed, 0},
		{"lowered after the attempts it allowed: ends it", 3, Result{Status: 500, MaxAttempts: 1}, 0.5, StatusFailed, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, at := p.Next(tt.attempt, tt.r, now, tt.rnd)
			if status != tt.status {
				t.Fatalf("status %q, want %q", status, tt.status)
			}
			if status != StatusQueued {
				if !at.IsZero() {
					t.Errorf("a finished invocation has a next attempt at %v", at)
				}
				return
			}
			if got := at.Sub(now); got.Round(time.Millisecond) != tt.after.Round(time.Millisecond) {
				t.Errorf("next attempt after %v, want %v", got, tt.after)
			}
		})
	}
	if p.MaxAttempts() != DefaultAttempts {
		t.Errorf("MaxAttempts = %d", p.MaxAttempts())
	}
	for max, want := range map[int]int{0: 3, 1: 1, 2: 2, 3: 3, 4: 3} {
		if got := p.Attempts(max); got != want {
			t.Errorf("Attempts(%d) = %d, want %d", max, got, want)
		}
	}
}

// Each attempt's log line says which, how it went and what follows.
func TestOutcome(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	inv := &Invocation{ID: "abc", Attempts: 1}
	for _, tt := range []struct {
		attempts int
		r        Result
		status   string
		next     time.Time
		want     string
	}{
		{1, Result{Status: 500, Duration: 12345 * time.Microsecond, Error: "the function answered 500 Internal Server Error"}, StatusQueued, now.Add(31 * time.Second),
			"async invocation abc, attempt 1 of 3: 500 in 12.3ms (the function answered 500 Internal Server Error); next attempt in 31s"},
		{2, Result{Status: 200, Duration: 4 * time.Millisecond}, StatusSucceeded, time.Time{},
			"async invocation abc, attempt 2 of 3: 200 in 4ms; succeeded"},
		{3, Result{Duration: time.Minute, Error: "timed out"}, StatusFailed, time.Time{},
			"async invocation abc, attempt 3 of 3: no answer after 1m0s (timed out); failed, no attempts left"},
		{1, Result{Status: 404, Duration: time.Millisecond, Error: "the function answered 404 Not Found"}, StatusFailed, time.Time{},
			"async invocation abc, attempt 1 of 3: 404 in 1ms (the function answered 404 Not Found); failed"},
		// A function without retries.
		{1, Result{Status: 500, Duration: time.Millisecond, Error: "the function answered 500 Internal Server Error", MaxAttempts: 1}, StatusFailed, time.Time{},
			"async invocation abc, attempt 1 of 1: 500 in 1ms (the function answered 500 Internal Server Error); failed, no attempts left"},
	} {
		inv.Attempts = tt.attempts
		if got := Outcome(inv, DefaultPolicy(time.Second).Attempts(tt.r.MaxAttempts), tt.r, tt.status, now, tt.next); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
	}
}
