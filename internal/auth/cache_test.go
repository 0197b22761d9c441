package auth

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// countingStore is the real store, counting its token reads.
type countingStore struct {
	*sqlite.Store
	reads atomic.Int32
}

func (c *countingStore) GetToken(ctx context.Context, id string) (store.Token, error) {
	c.reads.Add(1)
	return c.Store.GetToken(ctx, id)
}

// The cache reads a token from the store once per TTL, never past its
// expiry, never a wrong one, and drops what it is told to forget at once;
// it holds at most its bound.
func TestCache(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer sq.Close()
	st := &countingStore{Store: sq}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := New(st, func() time.Time { return now })
	for _, u := range []string{"alice", "bob"} {
		if err := st.CreateUser(ctx, store.User{Name: u}); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(user string, opt TokenOptions) (string, string) {
		tok, tr, err := s.IssueToken(ctx, user, "t", opt)
		if err != nil {
			t.Fatal(err)
		}
		return tok, tr.ID
	}
	c := NewCache(s, 10*time.Second, 3)
	// check authenticates tok and says how many store reads it took.
	check := func(tok string, wantErr bool) int32 {
		t.Helper()
		before := st.reads.Load()
		_, err := c.Authenticate(ctx, tok)
		if (err != nil) != wantErr {
			t.Fatalf("Authenticate: %v, want error %v", err, wantErr)
		}
		if err != nil && !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Fatalf("Authenticate: %v, want unauthenticated", err)
		}
		return st.reads.Load() - before
	}

	tok, id := issue("alice", TokenOptions{Scopes: []Scope{ScopeInvoke}})
	if n := check(tok, false); n != 1 {
		t.Fatalf("first check: %d reads, want 1", n)
	}
	for range 100 {
		if n := check(tok, false); n != 0 {
			t.Fatalf("a cached check read the store %d times", n)
		}
	}
	if p, _ := c.Authenticate(ctx, tok); p.User != "alice" || p.TokenID != id || !p.Allows(ScopeInvoke) || p.Allows(ScopeRead) {
		t.Fatalf("cached principal %+v", p)
	}
	// Cached answers what memory holds, and never reads the store.
	before := st.reads.Load()
	if p, ok := c.Cached(tok); !ok || p.TokenID != id {
		t.Fatalf("Cached of a verified token: %+v %v", p, ok)
	}
	if _, ok := c.Cached(tok[:len(tok)-4] + "AAAA"); ok {
		t.Fatal("Cached of a wrong secret")
	}
	if st.reads.Load() != before {
		t.Fatal("Cached read the store")
	}
	// Its secret with another id is no token, cached or not.
	other := "spry_" + "0123456789abcdef" + tok[len("spry_")+16:]
	if n := check(other, true); n != 1 {
		t.Fatalf("a secret under another id: %d reads, want 1", n)
	}
	// A wrong secret is checked anew each time.
	wrong := tok[:len(tok)-4] + "AAAA"
	if check(wrong, true)+check(wrong, true) != 2 {
		t.Fatal("a wrong token was remembered")
	}
	if n := check("not a token", true); n != 0 {
		t.Fatalf("a malformed token read the store %d times", n)
	}

	now = now.Add(10 * time.Second)
	if n := check(tok, false); n != 1 {
		t.Fatalf("past the TTL: %d reads, want 1", n)
	}

	if err := st.RevokeToken(ctx, id, now); err != nil {
		t.Fatal(err)
	}
	check(tok, false) // cached: the store's revocation alone counts at the TTL
	c.ForgetToken(id)
	if _, ok := c.Cached(tok); ok {
		t.Fatal("Cached of a forgotten token")
	}
	check(tok, true)

	bobs, _ := issue("bob", TokenOptions{})
	check(bobs, false)
	c.ForgetUser("alice")
	if n := check(bobs, false); n != 0 {
		t.Fatalf("ForgetUser(alice) dropped bob's token")
	}
	c.ForgetUser("bob")
	if n := check(bobs, false); n != 1 {
		t.Fatalf("after ForgetUser(bob): %d reads, want 1", n)
	}

	exp, _ := issue("alice", TokenOptions{ExpiresAt: now.Add(3 * time.Second)})
	check(exp, false)
	now = now.Add(3 * time.Second)
	check(exp, true)

	for range 5 {
		tok, _ := issue("bob", TokenOptions{})
		check(tok, false)
		if c.Len() > 3 {
			t.Fatalf("the cache holds %d tokens, over its bound of 3", c.Len())
		}
	}
}

// A watch ends when its token is forgotten (revoked), when its user is
// (deleted), or when the token expires, once; a watch stopped first, or
// of another token or user, is not ended.
func TestCacheWatch(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := NewCache(New(nil, func() time.Time { return now }), 0, 0)
	var timers []func()
	var delays []time.Duration
	c.afterFunc = func(d time.Duration, f func()) func() bool {
		timers, delays = append(timers, f), append(delays, d)
		return func() bool { return true }
	}
	ended := map[string]int{}
	watch := func(name, id, user string, expires time.Time) func() {
		return c.Watch(Principal{User: user, TokenID: id, ExpiresAt: expires}, func() { ended[name]++ })
	}
	watch("revoked", "t1", "alice", time.Time{})
	watch("alice's other", "t2", "alice", time.Time{})
	watch("bob's", "t3", "bob", time.Time{})
	stop := watch("stopped", "t1", "alice", time.Time{})
	watch("expiring", "t4", "carol", now.Add(time.Hour))
	if len(delays) != 1 || delays[0] != time.Hour {
		t.Fatalf("expiry timers %v, want one of 1h", delays)
	}
	stop()
	c.ForgetToken("t1")
	c.ForgetToken("t1")
	if ended["revoked"] != 1 || ended["stopped"] != 0 || ended["alice's other"] != 0 || ended["bob's"] != 0 {
		t.Fatalf("after revoking t1: %v", ended)
	}
	c.ForgetUser("alice")
	if ended["alice's other"] != 1 || ended["bob's"] != 0 {
		t.Fatalf("after deleting alice: %v", ended)
	}
	timers[0]()
	timers[0]()
	c.ForgetUser("carol")
	if ended["expiring"] != 1 || ended["bob's"] != 0 {
		t.Fatalf("after the expiry: %v", ended)
	}
	if n := c.Watches(); n != 1 {
		t.Fatalf("%d watches left, want bob's", n)
	}
}
