package auth

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// FailureLimiter rate-limits failed authentication per client: each
// client may fail Burst times at once, then once per Every; while it is
// over the limit, its failures are answered 429 (with Retry-After) rather
// than 401. Every token is still checked, and a right one passes: a
// secret has 256 bits, so guessing gains nothing from being answered,
// and clients behind one proxy share an address.
type FailureLimiter struct {
	every time.Duration
	burst int
	now   func() time.Time

	mu      sync.Mutex
	clients map[string]*rate.Limiter
}

// maxClients bounds the limiter's memory. Reaching it, the limiter forgets
// the clients whose budget has fully recovered and, if that leaves it more
// than three quarters full, those nearest recovery, so that the next sweep
// is a quarter of maxClients failures away: an attacker failing from ever
// new addresses neither grows the map nor makes every failure a sweep.
const maxClients = 10000

// NewFailureLimiter allows burst failures, then one per every.
func NewFailureLimiter(every time.Duration, burst int, now func() time.Time) *FailureLimiter {
	if now == nil {
		now = time.Now
	}
	return &FailureLimiter{every: every, burst: burst, now: now, clients: map[string]*rate.Limiter{}}
}

// Allowed reports whether client may try to authenticate now, and if not,
// how long until it may.
func (l *FailureLimiter) Allowed(client string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.clients[client]
	if lim == nil {
		return true, 0
	}
	tokens := lim.TokensAt(l.now())
	if tokens >= 1 {
		return true, 0
	}
	return false, time.Duration((1 - tokens) * float64(l.every))
}

// Failed records a failed attempt by client.
func (l *FailureLimiter) Failed(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	lim := l.clients[client]
	if lim == nil {
		if len(l.clients) >= maxClients {
			l.prune(now)
		}
		lim = rate.NewLimiter(rate.Every(l.every), l.burst)
		l.clients[client] = lim
	}
	lim.AllowN(now, 1)
}

func (l *FailureLimiter) prune(now time.Time) {
	type client struct {
		key    string
		tokens float64
	}
	rest := make([]client, 0, len(l.clients))
	for k, lim := range l.clients {
		tokens := lim.TokensAt(now)
		if tokens >= float64(l.burst) {
			delete(l.clients, k)
			continue
		}
		rest = append(rest, client{k, tokens})
	}
	const keep = maxClients * 3 / 4
	if len(rest) <= keep {
		return
	}
	// Those over their limit stay longest: forgetting one lets it fail
	// a full burst again.
	slices.SortFunc(rest, func(a, b client) int { return cmp.Compare(b.tokens, a.tokens) })
	for _, c := range rest[:len(rest)-keep] {
		delete(l.clients, c.key)
	}
}
