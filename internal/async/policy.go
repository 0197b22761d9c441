package async

import (
	"fmt"
	"time"
)

// Result is how one attempt went.
type Result struct {
	// Status is the answer's HTTP status; 0 if none came (the
	// connection failed, or the attempt's time ran out).
	Status int
	// Error says what went wrong, for an attempt that failed: the
	// platform's error message, or the function's status.
	Error string
	// Final marks a failure no retry can mend (the function is gone).
	Final       bool
	Duration    time.Duration
	ContentType string
	// Body is the answer's body, its first MaxResponse bytes at most;
	// Truncated says there was more.
	Body      []byte
	Truncated bool
	// Version is the function's version the attempt went to, if known
	// (for its log line).
	Version int64
	// MaxAttempts is how many attempts that version allows (its async
	// retries and one); 0 if unknown (the function was not reached):
	// the policy's.
	MaxAttempts int
	// OnFailure is that version's on-failure destination: the function
	// of the same owner that gets the invocation's event if it fails
	// now ("": none).
	OnFailure string
}

// MaxResponse is how much of an answer's body an invocation keeps.
const MaxResponse = 64 << 10

// Succeeded says whether the attempt succeeded: a 2xx answer.
func (r Result) Succeeded() bool { return r.Status >= 200 && r.Status < 300 }

// Retryable says whether another attempt may go otherwise: no answer
// (a connection error or a timeout), a 5xx (the function failed, or
// the platform could not run it) or a 429 (a quota or a full queue). A
// 2xx ends the invocation as succeeded; a 1xx, 3xx or 4xx other than
// 429 as failed, since the function would answer the same again.
func (r Result) Retryable() bool {
	if r.Final {
		return false
	}
	return r.Status == 0 || r.Status >= 500 || r.Status == 429
}

// Policy is when attempts are retried.
type Policy struct {
	// Delays are the waits before the second attempt, the third...:
	// there are len(Delays)+1 attempts at most.
	Delays []time.Duration
	// Jitter spreads each wait by up to this fraction of it, either
	// way, so that invocations that failed together (their function was
	// down) do not all come back at once.
	Jitter float64
}

// DefaultRetryDelay is the wait before the first retry; the second
// waits DefaultRetryGrowth times as long (30 s, then 2 min).
const (
	DefaultRetryDelay  = 30 * time.Second
	DefaultRetryGrowth = 4
	DefaultJitter      = 0.2
	// DefaultAttempts is how many attempts an invocation gets: the
	// first and two retries, as Lambda's asynchronous invocations.
	DefaultAttempts = 3
)

// DefaultPolicy is three attempts, the retries first after delay and
// then DefaultRetryGrowth times that, each ±DefaultJitter.
func DefaultPolicy(delay time.Duration) Policy {
	return Policy{Delays: []time.Duration{delay, DefaultRetryGrowth * delay}, Jitter: DefaultJitter}
}

// MaxAttempts is how many attempts an invocation gets at most.
func (p Policy) MaxAttempts() int { return len(p.Delays) + 1 }

// Attempts is how many attempts an invocation of a function that allows
// max (0: any number) gets: the fewer of max and the policy's.
func (p Policy) Attempts(max int) int {
	if max <= 0 {
		return p.MaxAttempts()
	}
	return min(max, p.MaxAttempts())
}

// Next decides what follows attempt n (1 for the first) that ended with
// r at now: the invocation's status, and for one queued again, when its
// next attempt may start. rnd, in [0, 1), picks the jitter. The attempts
// r.MaxAttempts allows are those of the version the attempt ran on: a
// function changed between attempts is retried as it is now.
func (p Policy) Next(n int, r Result, now time.Time, rnd float64) (status string, at time.Time) {
	switch {
	case r.Succeeded():
		return StatusSucceeded, time.Time{}
	case !r.Retryable() || n >= p.Attempts(r.MaxAttempts) || n < 1:
		return StatusFailed, time.Time{}
	}
	d := p.Delays[n-1]
	d += time.Duration(float64(d) * p.Jitter * (2*rnd - 1))
	return StatusQueued, now.Add(d)
}

// Outcome is the system log line for one attempt of inv (of at most
// maxAttempts) that ended with r, and what follows: status, and for
// one queued again, next (now is when the attempt ended).
func Outcome(inv *Invocation, maxAttempts int, r Result, status string, now, next time.Time) string {
	line := fmt.Sprintf("async invocation %s, attempt %d of %d: ", inv.ID, inv.Attempts, maxAttempts)
	took := r.Duration.Round(100 * time.Microsecond)
	if r.Status != 0 {
		line += fmt.Sprintf("%d in %v", r.Status, took)
	} else {
		line += fmt.Sprintf("no answer after %v", took)
	}
	if r.Error != "" {
		line += " (" + r.Error + ")"
	}
	switch status {
	case StatusQueued:
		return line + fmt.Sprintf("; next attempt in %v", next.Sub(now).Round(time.Second/10))
	case StatusSucceeded:
		return line + "; succeeded"
	}
	if r.Retryable() && inv.Attempts >= maxAttempts {
		return line + "; failed, no attempts left"
	}
	return line + "; failed"
}
