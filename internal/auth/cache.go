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
	return &Cache{s: s, ttl: ttl, max: max, m: map[[sha256.Size]byte]cached{}}
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

// ForgetToken drops token id (revoked).
func (c *Cache) ForgetToken(id string) {
	c.forget(func(p Principal) bool { return p.TokenID == id })
}

// ForgetUser drops the tokens of user (deleted).
func (c *Cache) ForgetUser(user string) {
	c.forget(func(p Principal) bool { return p.User == user })
}

func (c *Cache) forget(match func(Principal) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for k, e := range c.m {
		if match(e.p) {
			delete(c.m, k)
		}
	}
}

// Len is how many tokens c remembers (for tests).
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
