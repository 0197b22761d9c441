package router

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// privateEnv is a router whose tokens are checked by the real auth
// service and cache over a real SQLite store, with a clock the test moves.
type privateEnv struct {
	srv    *testServer
	be     *upstreamBackend
	svc    *auth.Service
	cache  *auth.Cache
	st     *sqlite.Store
	mu     sync.Mutex
	now    time.Time
	tokens map[string]string // by name
	ids    map[string]string // token ids, by name
	// limiter counts failed authentications, by the env's clock.
	limiter *auth.FailureLimiter
}

func (e *privateEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *privateEnv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// newPrivateEnv serves alice's private function "secret" (version 2 live,
// version 1 at @1 and tag "old", and at its own host under fn.test), her
// public function "open", and tokens: alice's of each scope, one revoked,
// one expired, bob's (another user), root's (an admin). The instance
// answers with whether it saw an Authorization header, and which.
func newPrivateEnv(t testing.TB) *privateEnv { return newPrivateEnvConfig(t, Config{}) }

// newPrivateEnvConfig is newPrivateEnv with cfg's TrustedProxies.
func newPrivateEnvConfig(t testing.TB, cfg Config) *privateEnv {
	t.Helper()
	ctx := context.Background()
	e := &privateEnv{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), tokens: map[string]string{}, ids: map[string]string{}}
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e.st = st
	e.svc = auth.New(st, e.clock)
	e.cache = auth.NewCache(e.svc, 10*time.Second, 0)
	e.limiter = auth.NewFailureLimiter(auth.FailureEvery, auth.FailureBurst, e.clock)
	for _, u := range []store.User{{Name: "alice"}, {Name: "bob"}, {Name: "root", Admin: true}} {
		tok, tr, err := e.svc.CreateUser(ctx, u, u.Name, auth.TokenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[u.Name], e.ids[u.Name] = tok, tr.ID
	}
	issue := func(name, user string, opt auth.TokenOptions) {
		tok, tr, err := e.svc.IssueToken(ctx, user, name, opt)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens[name], e.ids[name] = tok, tr.ID
	}
	for _, sc := range []auth.Scope{auth.ScopeRead, auth.ScopeInvoke, auth.ScopeDeploy, auth.ScopeMetrics} {
		issue(string(sc), "alice", auth.TokenOptions{Scopes: []auth.Scope{sc}})
	}
	issue("root-read", "root", auth.TokenOptions{Scopes: []auth.Scope{auth.ScopeRead}})
	issue("revoked", "alice", auth.TokenOptions{})
	if err := st.RevokeToken(ctx, e.ids["revoked"], e.now); err != nil {
		t.Fatal(err)
	}
	issue("expired", "alice", auth.TokenOptions{ExpiresAt: e.now.Add(-time.Minute)})

	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			// An echo of each line, until either side closes.
			conn, brw, ok := switchProtocols(w)
			if !ok {
				return
			}
			defer conn.Close()
			fmt.Fprintf(brw, "auth=%q\n", strings.Join(r.Header.Values("Authorization"), ","))
			for brw.Flush() == nil {
				line, err := brw.ReadString('\n')
				if err != nil {
					return
				}
				brw.WriteString("echo: " + line)
			}
			return
		}
		fmt.Fprintf(w, "%s auth=%q", r.URL.Path, strings.Join(r.Header.Values("Authorization"), ","))
	}))
	e.be = &upstreamBackend{addr: sock}
	act := activator.New(e.be, activator.Config{})
	v2 := &backend.Spec{FunctionID: "s", Owner: "alice", Name: "secret", Version: 2, Concurrency: 100, Timeout: 5 * time.Second, Private: true}
	v1 := &backend.Spec{FunctionID: "s", Owner: "alice", Name: "secret", Version: 1, Concurrency: 100, Timeout: 5 * time.Second, Private: true}
	open := &backend.Spec{FunctionID: "o", Owner: "alice", Name: "open", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	rt := New(specsByName{"alice/secret": v2, "alice/secret@1": v1, "alice/secret@old": v1, "alice/open": open}, act,
		Config{Domain: "fn.test", Tokens: e.cache, Limiter: e.limiter, TrustedProxies: cfg.TrustedProxies})
	// The public function's instance is up, so the lane serves it.
	if lease, err := act.Acquire(ctx, open); err == nil {
		lease.Release()
	}
	e.srv = serveRouter(t, rt)
	return e
}

// call sends one request (path, host, Authorization header values) and
// returns its answer and body.
func (e *privateEnv) call(t *testing.T, target, host string, authz ...string) (*http.Response, string) {
	t.Helper()
	var fields []string
	for _, a := range authz {
		fields = append(fields, "Authorization: "+a)
	}
	return e.send(t, target, host, fields...)
}

// send sends one request (path, host, header fields "Name: value") on a
// connection of its own and returns its answer and body.
func (e *privateEnv) send(t *testing.T, target, host string, fields ...string) (*http.Response, string) {
	t.Helper()
	c := e.srv.dial(t, 5*time.Second)
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n", target, host)
	for _, f := range fields {
		req += f + "\r\n"
	}
	fmt.Fprint(c, req+"\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

// A private function answers only a valid token of its owner's or an
// admin's whose scopes allow invoke, on every way to it, and never sees
// the token; a refused call starts no instance.
func TestPrivateFunctionNeedsAToken(t *testing.T) {
	e := newPrivateEnv(t)
	bearer := func(name string) string { return "Bearer " + e.tokens[name] }
	const host = "router.test"
	tests := []struct {
		name, target, host string
		authz              []string
		status             int
		code               string // Spry-Error, for refusals
		body               string // the function's answer, for successes
	}{
		{"no header", "/fn/alice/secret/x", host, nil, 401, "unauthenticated", ""},
		{"not bearer", "/fn/alice/secret/x", host, []string{"Basic YWxpY2U6cHc="}, 401, "unauthenticated", ""},
		{"empty bearer", "/fn/alice/secret/x", host, []string{"Bearer "}, 401, "unauthenticated", ""},
		{"not a token", "/fn/alice/secret/x", host, []string{"Bearer nonsense"}, 401, "unauthenticated", ""},
		{"wrong secret", "/fn/alice/secret/x", host, []string{"Bearer " + e.tokens["alice"][:len(e.tokens["alice"])-4] + "AAAA"}, 401, "unauthenticated", ""},
		{"revoked", "/fn/alice/secret/x", host, []string{bearer("revoked")}, 401, "unauthenticated", ""},
		{"expired", "/fn/alice/secret/x", host, []string{bearer("expired")}, 401, "unauthenticated", ""},
		{"another user's", "/fn/alice/secret/x", host, []string{bearer("bob")}, 403, "permission_denied", ""},
		{"read scope", "/fn/alice/secret/x", host, []string{bearer("read")}, 403, "permission_denied", ""},
		{"metrics scope", "/fn/alice/secret/x", host, []string{bearer("metrics")}, 403, "permission_denied", ""},
		{"an admin's read scope", "/fn/alice/secret/x", host, []string{bearer("root-read")}, 403, "permission_denied", ""},
		{"owner's, all", "/fn/alice/secret/x", host, []string{bearer("alice")}, 200, "", `/x auth=""`},
		{"invoke scope", "/fn/alice/secret/x", host, []string{bearer("invoke")}, 200, "", `/x auth=""`},
		{"deploy scope", "/fn/alice/secret/x", host, []string{bearer("deploy")}, 200, "", `/x auth=""`},
		{"bearer spelt in lower case", "/fn/alice/secret/x", host, []string{"bearer " + e.tokens["invoke"]}, 200, "", `/x auth=""`},
		{"an admin's", "/fn/alice/secret/x", host, []string{bearer("root")}, 200, "", `/x auth=""`},
		{"every Authorization header stripped", "/fn/alice/secret/x", host, []string{bearer("invoke"), "Basic Zm46Zm4="}, 200, "", `/x auth=""`},
		{"@version, no header", "/fn/alice/secret@1/v", host, nil, 401, "unauthenticated", ""},
		{"@version, invoke", "/fn/alice/secret@1/v", host, []string{bearer("invoke")}, 200, "", `/v auth=""`},
		{"@tag, another user's", "/fn/alice/secret@old/t", host, []string{bearer("bob")}, 403, "permission_denied", ""},
		{"@tag, invoke", "/fn/alice/secret@old/t", host, []string{bearer("invoke")}, 200, "", `/t auth=""`},
		{"its host, no header", "/h", "secret.alice.fn.test", nil, 401, "unauthenticated", ""},
		{"its host, invoke", "/h", "secret.alice.fn.test", []string{bearer("invoke")}, 200, "", `/h auth=""`},
		{"a tag's host, read", "/h", "old.secret.alice.fn.test", []string{bearer("read")}, 403, "permission_denied", ""},
		// A public function keeps its callers' Authorization headers.
		{"public, no header", "/fn/alice/open/p", host, nil, 200, "", `/p auth=""`},
		{"public, its own header", "/fn/alice/open/p", host, []string{"Bearer app-token"}, 200, "", `/p auth="Bearer app-token"`},
		// ...but for a Spry token, which no function sees.
		{"public, a Spry token", "/fn/alice/open/p", host, []string{bearer("bob")}, 200, "", `/p auth=""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			starts := e.be.starts.Load()
			res, body := e.call(t, tt.target, tt.host, tt.authz...)
			if res.StatusCode != tt.status {
				t.Fatalf("got %d %s, want %d", res.StatusCode, body, tt.status)
			}
			if tt.status != 200 {
				var eb errdefs.Body
				if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code != tt.code || res.Header.Get("Spry-Error") != tt.code {
					t.Fatalf("body %s, Spry-Error %q; want code %s", body, res.Header.Get("Spry-Error"), tt.code)
				}
				if res.Header.Get("Spry-Request-Id") == "" {
					t.Errorf("no Spry-Request-Id")
				}
				if n := e.be.starts.Load(); n != starts || res.Header.Get("Spry-Cold-Start") != "" {
					t.Errorf("a refused call started %d instances (Spry-Cold-Start %q)", n-starts, res.Header.Get("Spry-Cold-Start"))
				}
			}
			if www := res.Header.Get("WWW-Authenticate"); (tt.status == 401) != strings.HasPrefix(www, `Bearer realm="spry"`) {
				t.Errorf("WWW-Authenticate %q with %d", www, tt.status)
			}
			if tt.status == 200 && body != tt.body {
				t.Fatalf("the function answered %s, want %s", body, tt.body)
			}
		})
	}
	if e.srv.lane != nil {
		if _, _, handoffs := e.srv.lane.Counts(); handoffs["private"] == 0 {
			t.Errorf("no call was handed over as private: %v", handoffs)
		}
	}
}

// Wrong tokens sent to a private function count against the failure
// limiter (the one the server shares with the API), per client: past
// auth.FailureBurst of them, the client's next call, a right token's
// too, is answered 429 with Retry-After and starts nothing, until the
// limit recovers. A missing token and a valid one that may not call the
// function are not failures. The client is the peer, or, behind a
// trusted proxy, the client it names in X-Forwarded-For.
func TestPrivateFailureLimit(t *testing.T) {
	const (
		secret = "/fn/alice/secret/x"
		host   = "router.test"
		wrong  = "Authorization: Bearer spry_0123456789abcdef_nope"
	)
	type call struct {
		n      int    // times sent (0: once)
		target string // secret if ""
		host   string // host if ""
		fields []string
		status int
	}
	// e's tokens are only known once it is made.
	bearer := func(name string) string { return "Authorization: Bearer " + name }
	proxied := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		name    string
		proxies []netip.Prefix // the router's TrustedProxies
		before  []call
		advance time.Duration // on the limiter's clock, after before
		last    call
		retry   string // the last call's Retry-After, for a 429
	}{
		{name: "ten wrong tokens, then a right one not verified lately",
			before: []call{{n: 10, fields: []string{wrong}, status: 401}},
			last:   call{fields: []string{bearer("invoke")}, status: 429}, retry: "7"},
		{name: "invalid, revoked and expired tokens, at every way to it",
			before: []call{
				{n: 3, fields: []string{"Authorization: Bearer nonsense"}, status: 401},
				{n: 3, target: "/fn/alice/secret@1/", fields: []string{bearer("revoked")}, status: 401},
				{n: 4, target: "/h", host: "secret.alice.fn.test", fields: []string{bearer("expired")}, status: 401},
			},
			last: call{fields: []string{bearer("alice")}, status: 429}, retry: "7"},
		{name: "over the limit, a token verified lately still calls it",
			before: []call{{fields: []string{bearer("invoke")}, status: 200}, {n: 10, fields: []string{wrong}, status: 401}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "over the limit, a revoked token is refused unread",
			before: []call{{fields: []string{bearer("revoked")}, status: 401}, {n: 9, fields: []string{wrong}, status: 401}},
			last:   call{fields: []string{bearer("revoked")}, status: 429}, retry: "7"},
		{name: "nine wrong tokens, then a right one",
			before: []call{{n: 9, fields: []string{wrong}, status: 401}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "over the limit, a wrong token",
			before: []call{{n: 10, fields: []string{wrong}, status: 401}, {n: 5, fields: []string{wrong}, status: 429}},
			last:   call{fields: []string{wrong}, status: 429}, retry: "7"},
		{name: "the limit recovers",
			before:  []call{{n: 10, fields: []string{wrong}, status: 401}},
			advance: auth.FailureEvery,
			last:    call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "partly recovered: Retry-After rounds up",
			before:  []call{{n: 10, fields: []string{wrong}, status: 401}},
			advance: 2500 * time.Millisecond,
			last:    call{fields: []string{bearer("invoke")}, status: 429}, retry: "4"},
		{name: "no token is no failure",
			before: []call{{n: 20, status: 401}, {n: 20, fields: []string{"Authorization: Basic YWxpY2U6cHc="}, status: 401}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "over the limit, no token is still 401",
			before: []call{{n: 10, fields: []string{wrong}, status: 401}},
			last:   call{status: 401}},
		{name: "a valid token that may not call it is no failure",
			before: []call{{n: 12, fields: []string{bearer("bob")}, status: 403}, {n: 12, fields: []string{bearer("read")}, status: 403}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "a public function checks no token",
			before: []call{{n: 12, target: "/fn/alice/open/", fields: []string{wrong}, status: 200}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "behind a trusted proxy, the client it names counts", proxies: proxied,
			before: []call{{n: 10, fields: []string{wrong, "X-Forwarded-For: 192.0.2.1"}, status: 401}},
			last:   call{fields: []string{bearer("invoke"), "X-Forwarded-For: 192.0.2.1"}, status: 429}, retry: "7"},
		{name: "behind a trusted proxy, another client is not held back", proxies: proxied,
			before: []call{{n: 10, fields: []string{wrong, "X-Forwarded-For: 192.0.2.1"}, status: 401}},
			last:   call{fields: []string{bearer("invoke"), "X-Forwarded-For: 192.0.2.2"}, status: 200}},
		{name: "behind a trusted proxy, the proxy itself is another client", proxies: proxied,
			before: []call{{n: 10, fields: []string{wrong, "X-Forwarded-For: 192.0.2.1"}, status: 401}},
			last:   call{fields: []string{bearer("invoke")}, status: 200}},
		{name: "an untrusted peer's X-Forwarded-For is not believed",
			before: []call{{n: 10, fields: []string{wrong, "X-Forwarded-For: 192.0.2.1"}, status: 401}},
			last:   call{fields: []string{bearer("invoke"), "X-Forwarded-For: 192.0.2.2"}, status: 429}, retry: "7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newPrivateEnvConfig(t, Config{TrustedProxies: tt.proxies})
			send := func(c call) (*http.Response, string) {
				target, h := c.target, c.host
				if target == "" {
					target = secret
				}
				if h == "" {
					h = host
				}
				fields := make([]string, len(c.fields))
				for i, f := range c.fields {
					if name, ok := strings.CutPrefix(f, "Authorization: Bearer "); ok && e.tokens[name] != "" {
						f = "Authorization: Bearer " + e.tokens[name]
					}
					fields[i] = f
				}
				return e.send(t, target, h, fields...)
			}
			for _, c := range tt.before {
				for i := range max(c.n, 1) {
					if res, body := send(c); res.StatusCode != c.status {
						t.Fatalf("call %d of %v: %d %s, want %d", i+1, c, res.StatusCode, body, c.status)
					}
				}
			}
			e.advance(tt.advance)
			starts := e.be.starts.Load()
			res, body := send(tt.last)
			if res.StatusCode != tt.last.status {
				t.Fatalf("got %d %s, want %d", res.StatusCode, body, tt.last.status)
			}
			if got := res.Header.Get("Retry-After"); got != tt.retry {
				t.Errorf("Retry-After %q, want %q", got, tt.retry)
			}
			if tt.last.status == 429 {
				var eb errdefs.Body
				if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error.Code != "rate_limited" || res.Header.Get("Spry-Error") != "rate_limited" {
					t.Fatalf("body %s, Spry-Error %q; want code rate_limited", body, res.Header.Get("Spry-Error"))
				}
				if n := e.be.starts.Load(); n != starts || res.Header.Get("Spry-Cold-Start") != "" {
					t.Errorf("a refused call started %d instances (Spry-Cold-Start %q)", n-starts, res.Header.Get("Spry-Cold-Start"))
				}
			}
		})
	}
}

// A token is checked in SQLite once, then from memory until its TTL,
// and no longer once revoked through ForgetToken (what the API calls),
// its user deleted (ForgetUser), or it has expired.
func TestPrivateTokenCache(t *testing.T) {
	e := newPrivateEnv(t)
	ctx := context.Background()
	call := func(tok string) int {
		res, _ := e.call(t, "/fn/alice/secret/", "router.test", "Bearer "+tok)
		return res.StatusCode
	}
	tok, tr, err := e.svc.IssueToken(ctx, "alice", "short", auth.TokenOptions{Scopes: []auth.Scope{auth.ScopeInvoke}, ExpiresAt: e.clock().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if s := call(tok); s != 200 {
		t.Fatalf("first call: %d", s)
	}
	// Revoked in the store alone: the cache answers until its TTL.
	if err := e.st.RevokeToken(ctx, tr.ID, e.clock()); err != nil {
		t.Fatal(err)
	}
	if s := call(tok); s != 200 {
		t.Fatalf("within the TTL: %d, want the cached 200", s)
	}
	e.advance(10 * time.Second)
	if s := call(tok); s != 401 {
		t.Fatalf("past the TTL: %d, want 401", s)
	}

	// Revoked through the API: at once.
	tok, tr, err = e.svc.IssueToken(ctx, "alice", "api-revoked", auth.TokenOptions{Scopes: []auth.Scope{auth.ScopeInvoke}})
	if err != nil {
		t.Fatal(err)
	}
	if s := call(tok); s != 200 {
		t.Fatalf("first call: %d", s)
	}
	if err := e.st.RevokeToken(ctx, tr.ID, e.clock()); err != nil {
		t.Fatal(err)
	}
	e.cache.ForgetToken(tr.ID)
	if s := call(tok); s != 401 {
		t.Fatalf("after ForgetToken: %d, want 401", s)
	}

	// Expiring: not past its expiry, however recently it was checked.
	tok, _, err = e.svc.IssueToken(ctx, "alice", "expiring", auth.TokenOptions{Scopes: []auth.Scope{auth.ScopeInvoke}, ExpiresAt: e.clock().Add(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if s := call(tok); s != 200 {
		t.Fatalf("first call: %d", s)
	}
	e.advance(5 * time.Second)
	if s := call(tok); s != 401 {
		t.Fatalf("at its expiry: %d, want 401", s)
	}

	// The owner's user deleted: at once.
	if s := call(e.tokens["invoke"]); s != 200 {
		t.Fatalf("first call: %d", s)
	}
	if err := e.st.DeleteUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	e.cache.ForgetUser("alice")
	if s := call(e.tokens["invoke"]); s != 401 {
		t.Fatalf("after ForgetUser: %d, want 401", s)
	}
}

// BenchmarkPrivateCall is the cost of a private function's call (a
// cached token, handed to the slow path) beside a public one's, each
// client on a kept-alive connection.
func BenchmarkPrivateCall(b *testing.B) {
	e := newPrivateEnv(b)
	for _, tt := range []struct{ name, path, authz string }{
		{"public", "/fn/alice/open/", ""},
		{"private", "/fn/alice/secret/", "Bearer " + e.tokens["invoke"]},
	} {
		b.Run(tt.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", e.srv.URL+tt.path, nil)
					if tt.authz != "" {
						req.Header.Set("Authorization", tt.authz)
					}
					res, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != 200 {
						b.Errorf("status %d", res.StatusCode)
						return
					}
				}
			})
		})
	}
}

// A private function's upgraded connection (a WebSocket) is closed once
// the token that opened it is revoked, or its user deleted, through the
// API (which tells the cache), as a log follow ends; the connections of
// other tokens stay open. The function never sees the token. (The
// cache's own test has a watch end at the token's expiry.)
func TestPrivateUpgradeEndsWithItsToken(t *testing.T) {
	e := newPrivateEnv(t)
	ctx := context.Background()
	issue := func() (string, string) {
		tok, tr, err := e.svc.IssueToken(ctx, "alice", "ws", auth.TokenOptions{Scopes: []auth.Scope{auth.ScopeInvoke}})
		if err != nil {
			t.Fatal(err)
		}
		return tok, tr.ID
	}
	// open opens an upgraded connection to alice's private function
	// with tok and checks that it echoes.
	open := func(tok string) upgraded {
		t.Helper()
		c := upgraded{t: t, Conn: e.srv.dial(t, 10*time.Second)}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /fn/alice/secret/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\nAuthorization: Bearer %s\r\n\r\n", tok)
		c.br = bufio.NewReader(c)
		res, err := http.ReadResponse(c.br, nil)
		if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", res, err)
		}
		if line, err := c.br.ReadString('\n'); line != "auth=\"\"\n" {
			t.Fatalf("the function saw %q %v", line, err)
		}
		c.echoes()
		return c
	}
	revoke := func(id string) {
		if err := e.st.RevokeToken(ctx, id, e.clock()); err != nil {
			t.Fatal(err)
		}
		e.cache.ForgetToken(id)
	}

	tok, id := issue()
	other, _ := issue()
	ws, wsOther, wsRoot := open(tok), open(other), open(e.tokens["root"])
	revoke(id)
	ws.closed()
	wsOther.echoes()
	wsRoot.echoes()
	e.cache.ForgetUser("root")
	wsRoot.closed()
	wsOther.echoes()
	// A token revoked before its upgrade's 101 is not let through.
	late, lateID := issue()
	revoke(lateID)
	res, body := e.call(t, "/fn/alice/secret/ws", "x", "Bearer "+late)
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a revoked token's upgrade: %d %s", res.StatusCode, body)
	}
	wsOther.Close()
	deadline := time.Now().Add(5 * time.Second)
	for e.cache.Watches() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watches left after the connections ended", e.cache.Watches())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// upgraded is a client's upgraded connection to the echo protocol.
type upgraded struct {
	t *testing.T
	net.Conn
	br *bufio.Reader
}

// echoes checks that the connection is open: a line comes back.
func (c upgraded) echoes() {
	c.t.Helper()
	fmt.Fprint(c, "hello\n")
	if line, err := c.br.ReadString('\n'); line != "echo: hello\n" {
		c.t.Fatalf("echo: %q %v", line, err)
	}
}

// closed checks that the router closes the connection.
func (c upgraded) closed() {
	c.t.Helper()
	if rest, err := io.ReadAll(c.br); err != nil || len(rest) != 0 {
		c.t.Fatalf("the connection ended with %q %v, want a close", rest, err)
	}
}

// A browser's CORS preflight carries no token: a private function's is
// refused as any call without one (401, no Access-Control-* field, no
// instance started), so that no page of another origin calls it.
func TestPrivatePreflightIsRefused(t *testing.T) {
	e := newPrivateEnv(t)
	starts := e.be.starts.Load()
	c := e.srv.dial(t, 5*time.Second)
	defer c.Close()
	fmt.Fprint(c, "OPTIONS /fn/alice/secret/x HTTP/1.1\r\nHost: x\r\nOrigin: https://elsewhere.test\r\n"+
		"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || res.Header.Get("Spry-Error") != "unauthenticated" {
		t.Fatalf("preflight: %d %v", res.StatusCode, res.Header)
	}
	for k := range res.Header {
		if strings.HasPrefix(k, "Access-Control-") {
			t.Errorf("the refusal has %s", k)
		}
	}
	if n := e.be.starts.Load(); n != starts {
		t.Errorf("a preflight started %d instances", n-starts)
	}
}
