package auth

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/spry-run/spry/internal/errdefs"
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

// The server's limit, one for the API and the router's private
// functions alike: ten wrong tokens at once, then one every six seconds,
// per client.
const (
	FailureBurst = 10
	FailureEvery = 6 * time.Second
)

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

// ClientKey is whom a FailureLimiter counts the client at ip against:
// ip, but for IPv6 its /64, which one host or site is given whole (each
// new address of it would otherwise be a new client). A peer with no IP
// address (the invalid Addr) is "": all such share one count.
func ClientKey(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	return netip.PrefixFrom(ip, 64).Masked().String()
}

// Refusal is the answer to a client Allowed refused for wait: the value
// of its Retry-After header (whole seconds, rounded up past wait, so that
// a client that waits so long is let in) and a rate_limited error.
func Refusal(wait time.Duration) (retryAfter string, err error) {
	return strconv.Itoa(int(wait.Seconds()) + 1),
		errdefs.New(errdefs.ErrRateLimited, "too many failed authentication attempts; retry in %s", wait.Round(time.Second)+time.Second)
}
