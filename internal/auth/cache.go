package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"
)

// Cache is Authenticate for the request path (calls to private
// functions): a token verified lately is answered from memory, so that a
// function's every call costs no store read. It remembers a token for at
// most its TTL (and never past the token's expiry), which bounds how long
// a revocation it is not told of (one made by another server on the same
// store, say) takes to count; one made through this server's API counts
// at once (ForgetToken, ForgetUser). Failures are not remembered: a wrong
// token is checked anew each time, as the API checks it.
type Cache struct {
	s   *Service
	ttl time.Duration
	max int

	mu sync.RWMutex
	// Keyed by the SHA-256 of the token's secret, as the store keeps it:
	// no plaintext token is held.
	m map[[sha256.Size]byte]cached
	// gen counts forgets: a check that began before one may have read
	// what was then forgotten, and is not remembered.
	gen uint64
	// watches are the connections let through with a token that outlast
	// their request (a private function's WebSockets), ended when the
	// token stops working (Watch).
	watches map[*watch]struct{}
	// afterFunc is time.AfterFunc (tests fire their own).
	afterFunc func(d time.Duration, f func()) (stop func() bool)
}

// watch is one Watch.
type watch struct {
	p         Principal
	end       func()
	stopTimer func() bool
}

type cached struct {
	p     Principal
	until time.Time
}

// DefaultCacheTTL is how long a verified token is remembered.
const DefaultCacheTTL = 10 * time.Second

// DefaultCacheSize bounds how many tokens a Cache remembers.
const DefaultCacheSize = 10000

// NewCache returns a Cache over s remembering up to max tokens (0:
// DefaultCacheSize) for ttl each (0: DefaultCacheTTL), by s's clock.
func NewCache(s *Service, ttl time.Duration, max int) *Cache {
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	if max <= 0 {
		max = DefaultCacheSize
	}
	return &Cache{s: s, ttl: ttl, max: max, m: map[[sha256.Size]byte]cached{}, watches: map[*watch]struct{}{},
		afterFunc: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }}
}

// Authenticate is Service.Authenticate, from memory when it can be.
func (c *Cache) Authenticate(ctx context.Context, token string) (Principal, error) {
	p, key, gen, now, err := c.lookup(token)
	if err == nil {
		return p, nil
	}
	if err != errNotCached {
		return p, err
	}
	p, err = c.s.Authenticate(ctx, token)
	if err != nil {
		return p, err
	}
	until := now.Add(c.ttl)
	if !p.ExpiresAt.IsZero() && p.ExpiresAt.Before(until) {
		until = p.ExpiresAt
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return p, nil
	}
	if len(c.m) >= c.max {
		c.prune(now)
	}
	c.m[key] = cached{p: p, until: until}
	return p, nil
}

// Cached is Authenticate from memory only: a token verified lately and
// not forgotten since, or false. It never reads the store, so it may
// answer a client that is refused store reads (over the failure limit).
func (c *Cache) Cached(token string) (Principal, bool) {
	p, _, _, _, err := c.lookup(token)
	return p, err == nil
}

var errNotCached = errors.New("not cached")

// lookup finds token in memory: its principal, or errNotCached (with
// what remembering it needs: its key, the forget count read and the
// time), or errBadToken.
func (c *Cache) lookup(token string) (p Principal, key [sha256.Size]byte, gen uint64, now time.Time, err error) {
	id, secret, ok := parse(token)
	if !ok {
		return Principal{}, key, 0, now, errBadToken
	}
	key = [sha256.Size]byte(hash(secret))
	now = c.s.now()
	c.mu.RLock()
	e, hit := c.m[key]
	gen = c.gen
	c.mu.RUnlock()
	// The id too: a secret is a token's only with its own id.
	if hit && e.p.TokenID == id && now.Before(e.until) {
		return e.p, key, gen, now, nil
	}
	return Principal{}, key, gen, now, errNotCached
}

// prune drops what has expired, or, if that leaves the cache full,
// everything: a refill costs one store read per token (c.mu held).
func (c *Cache) prune(now time.Time) {
	for k, e := range c.m {
		if !now.Before(e.until) {
			delete(c.m, k)
		}
	}
	if len(c.m) >= c.max {
		clear(c.m)
	}
}

// ForgetToken drops token id (revoked), and ends its watches.
func (c *Cache) ForgetToken(id string) {
	c.forget(func(p Principal) bool { return p.TokenID == id })
}

// ForgetUser drops the tokens of user (deleted), and ends their
// watches.
func (c *Cache) ForgetUser(user string) {
	c.forget(func(p Principal) bool { return p.User == user })
}

func (c *Cache) forget(match func(Principal) bool) {
	c.mu.Lock()
	c.gen++
	for k, e := range c.m {
		if match(e.p) {
			delete(c.m, k)
		}
	}
	var ended []*watch
	for w := range c.watches {
		if match(w.p) {
			delete(c.watches, w)
			ended = append(ended, w)
		}
	}
	c.mu.Unlock()
	for _, w := range ended {
		w.stop()
		w.end()
	}
}

// Watch calls end once p's token stops working while a connection it
// let through is open (a private function's WebSocket, which outlasts
// the request that was checked): when it is revoked, or its user
// deleted, through this server's API (ForgetToken, ForgetUser), or when
// it expires. It is not told of a revocation made elsewhere (another
// server on the same store). The caller calls stop when the connection
// ends; end is then never called. end runs at most once, without c's
// lock, and should only close the connection.
func (c *Cache) Watch(p Principal, end func()) (stop func()) {
	w := &watch{p: p, end: end}
	c.mu.Lock()
	c.watches[w] = struct{}{}
	if !p.ExpiresAt.IsZero() {
		w.stopTimer = c.afterFunc(p.ExpiresAt.Sub(c.s.now()), func() {
			c.mu.Lock()
			_, ok := c.watches[w]
			delete(c.watches, w)
			c.mu.Unlock()
			if ok {
				w.end()
			}
		})
	}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.watches, w)
		c.mu.Unlock()
		w.stop()
	}
}

// stop stops w's expiry timer, if it has one.
func (w *watch) stop() {
	if w.stopTimer != nil {
		w.stopTimer()
	}
}

// Watches is how many watches are open (for tests).
func (c *Cache) Watches() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.watches)
}

// Len is how many tokens c remembers (for tests).
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
