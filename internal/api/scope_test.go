package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
)

// routeScopes is the scope each route of the API needs, decided here a
// second time: a route added to the API without its line here fails
// TestEveryRouteHasItsScope, so none is served without a decision.
var routeScopes = map[string]auth.Scope{
	"GET /api/v1/whoami":                                 anyScope,
	"GET /api/v1/usage":                                  auth.ScopeRead,
	"GET /api/v1/functions":                              auth.ScopeRead,
	"GET /api/v1/functions/{name}":                       auth.ScopeRead,
	"PUT /api/v1/functions/{name}":                       auth.ScopeDeploy,
	"PATCH /api/v1/functions/{name}":                     auth.ScopeDeploy,
	"DELETE /api/v1/functions/{name}":                    auth.ScopeDeploy,
	"GET /api/v1/functions/{name}/logs":                  auth.ScopeRead,
	"GET /api/v1/functions/{name}/versions":              auth.ScopeRead,
	"DELETE /api/v1/functions/{name}/versions/{version}": auth.ScopeDeploy,
	"POST /api/v1/functions/{name}/rollback":             auth.ScopeDeploy,
	"GET /api/v1/functions/{name}/scheduled":             auth.ScopeRead,
	"POST /api/v1/functions/{name}/scheduled":            auth.ScopeDeploy,
	"PUT /api/v1/functions/{name}/traffic":               auth.ScopeDeploy,
	"PUT /api/v1/functions/{name}/tags/{tag}":            auth.ScopeDeploy,
	"DELETE /api/v1/functions/{name}/tags/{tag}":         auth.ScopeDeploy,
	"GET /api/v1/functions/{name}/kv":                    auth.ScopeRead,
	"GET /api/v1/functions/{name}/kv/{key...}":           auth.ScopeRead,
	"PUT /api/v1/functions/{name}/kv/{key...}":           auth.ScopeDeploy,
	"DELETE /api/v1/functions/{name}/kv/{key...}":        auth.ScopeDeploy,
	"POST /api/v1/functions/{name}/invocations":          auth.ScopeDeploy,
	"GET /api/v1/functions/{name}/invocations":           auth.ScopeRead,
	"GET /api/v1/functions/{name}/invocations/{id}":      auth.ScopeRead,
	"GET /api/v1/users":                                  auth.ScopeAll,
	"POST /api/v1/users":                                 auth.ScopeAll,
	"GET /api/v1/users/{name}":                           auth.ScopeAll,
	"DELETE /api/v1/users/{name}":                        auth.ScopeAll,
	"GET /api/v1/tokens":                                 auth.ScopeAll,
	"POST /api/v1/tokens":                                auth.ScopeAll,
	"DELETE /api/v1/tokens/{id}":                         auth.ScopeAll,
	"GET /api/v1/backup":                                 auth.ScopeAll,
}

// Every route the API serves has the scope decided above, and every
// token is let through, or refused with a 403 naming the scope, as its
// scopes say: each route called with a token of each scope.
func TestEveryRouteHasItsScope(t *testing.T) {
	e := newEnv(t)
	routes := e.api.routes()
	seen := map[string]bool{}
	for _, rt := range routes {
		key := rt.method + " " + rt.pattern
		seen[key] = true
		want, ok := routeScopes[key]
		if !ok {
			t.Errorf("route %s has no scope decided in routeScopes", key)
			continue
		}
		if rt.need != want {
			t.Errorf("route %s needs %q, want %q", key, rt.need, want)
		}
	}
	for key := range routeScopes {
		if !seen[key] {
			t.Errorf("routeScopes names %s, which the API does not serve", key)
		}
	}

	// The admin's tokens of each scope, on paths where nothing is found
	// or the body is refused, so that what is let through changes
	// nothing.
	tokens := map[auth.Scope]string{auth.ScopeAll: e.admin}
	for _, sc := range []auth.Scope{auth.ScopeRead, auth.ScopeInvoke, auth.ScopeDeploy, auth.ScopeMetrics} {
		var tok struct{ Token string }
		e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"`+string(sc)+`","scopes":["`+string(sc)+`"]}`, http.StatusCreated, &tok)
		tokens[sc] = tok.Token
	}
	fill := strings.NewReplacer("/users/{name}", "/users/nobody", "{name}", "nofn", "{tag}", "t", "{version}", "1", "{key...}", "k", "{id}", "0000000000000000")
	for _, rt := range routes {
		for _, held := range auth.Scopes {
			t.Run(rt.method+" "+rt.pattern+" as "+string(held), func(t *testing.T) {
				status, body := e.do(tokens[held], rt.method, fill.Replace(rt.pattern), "")
				var eb errdefs.Body
				_ = json.Unmarshal(body, &eb)
				denied := status == http.StatusForbidden && strings.Contains(eb.Error.Message, "needs a token with scope")
				allowed := rt.need == anyScope || auth.Allows([]auth.Scope{held}, rt.need)
				if allowed && denied {
					t.Errorf("a %s token is refused: %d %s", held, status, body)
				}
				if !allowed && (!denied || eb.Error.Code != "permission_denied" || !strings.Contains(eb.Error.Message, string(rt.need))) {
					t.Errorf("a %s token: %d %s; want 403 permission_denied naming scope %s", held, status, body, rt.need)
				}
			})
		}
	}
}

// /metrics is for an admin's token that has scope all or metrics; a
// metrics token reads nothing else but whoami.
func TestMetricsScope(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	metricsSrv := httptest.NewServer(e.api.RequireAdmin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("spry_up 1\n"))
	})))
	defer metricsSrv.Close()
	scrape := func(token string) int {
		req, _ := http.NewRequest("GET", metricsSrv.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := metricsSrv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	mint := func(scopes string) string {
		var tok struct {
			Token  string
			Scopes []string
		}
		e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"mon","scopes":`+scopes+`}`, http.StatusCreated, &tok)
		return tok.Token
	}
	metrics, read, readMetrics := mint(`["metrics"]`), mint(`["read"]`), mint(`["read,metrics"]`)
	for _, tt := range []struct {
		name, token string
		want        int
	}{
		{"admin all", e.admin, 200},
		{"admin metrics", metrics, 200},
		{"admin read+metrics", readMetrics, 200},
		{"admin read", read, 403},
		{"alice all", alice, 403},
	} {
		if got := scrape(tt.token); got != tt.want {
			t.Errorf("%s: /metrics %d, want %d", tt.name, got, tt.want)
		}
	}
	var who map[string]any
	e.mustDo(metrics, "GET", "/api/v1/whoami", "", http.StatusOK, &who)
	if s, _ := json.Marshal(who["scopes"]); string(s) != `["metrics"]` || who["expires_at"] != nil {
		t.Errorf("whoami of a metrics token: %v", who)
	}
	s, body := e.do(metrics, "GET", "/api/v1/functions", "")
	wantError(t, "a metrics token lists functions", s, body, http.StatusForbidden, "permission_denied")
	// Only an admin's token may hold it.
	s, body = e.do(e.admin, "POST", "/api/v1/tokens", `{"user":"alice","scopes":["metrics"]}`)
	wantError(t, "a metrics token for alice", s, body, http.StatusForbidden, "permission_denied")
}

// A token made with expires_in or expires_at works until then by the
// API's clock, shows its expiry in listings and whoami, and is then
// refused with the 401 of a revoked token.
func TestTokenExpiry(t *testing.T) {
	e, c := newClockEnv(t)
	alice := e.user("alice")
	start := c.Now()
	var tok struct {
		Token, ID string
		Scopes    []string
		ExpiresAt *time.Time `json:"expires_at"`
	}
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"ci","expires_in":"2d","scopes":["deploy"]}`, http.StatusCreated, &tok)
	if tok.ExpiresAt == nil || !tok.ExpiresAt.Equal(start.Add(48*time.Hour)) || strings.Join(tok.Scopes, ",") != "deploy" {
		t.Fatalf("created: %+v", tok)
	}
	var at struct {
		ExpiresAt *time.Time `json:"expires_at"`
	}
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"at","expires_at":"2030-01-02T05:04:05+01:00"}`, http.StatusCreated, &at)
	if at.ExpiresAt == nil || !at.ExpiresAt.Equal(start.Add(time.Hour)) {
		t.Fatalf("expires_at: %+v", at)
	}
	var who struct {
		Scopes    []string   `json:"scopes"`
		ExpiresAt *time.Time `json:"expires_at"`
	}
	e.mustDo(tok.Token, "GET", "/api/v1/whoami", "", http.StatusOK, &who)
	if strings.Join(who.Scopes, ",") != "deploy" || who.ExpiresAt == nil || !who.ExpiresAt.Equal(*tok.ExpiresAt) {
		t.Errorf("whoami: %+v", who)
	}
	list := func() map[string]TokenView {
		var out struct{ Tokens []TokenView }
		e.mustDo(alice, "GET", "/api/v1/tokens", "", http.StatusOK, &out)
		m := map[string]TokenView{}
		for _, v := range out.Tokens {
			m[v.Name] = v
		}
		return m
	}
	ls := list()
	if v := ls["ci"]; v.Expired || v.ExpiresAt == nil || strings.Join(v.Scopes, ",") != "deploy" {
		t.Errorf("listed before expiry: %+v", v)
	}
	if v := ls["created with the user"]; v.ExpiresAt != nil || v.Expired || strings.Join(v.Scopes, ",") != "all" {
		t.Errorf("the user's first token: %+v", v)
	}

	c.Advance(48*time.Hour - time.Millisecond)
	e.mustDo(tok.Token, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
	c.Advance(time.Millisecond)
	s, expired := e.do(tok.Token, "GET", "/api/v1/whoami", "")
	wantError(t, "an expired token", s, expired, http.StatusUnauthorized, "unauthenticated")
	var revoked struct{ Token, ID string }
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"gone"}`, http.StatusCreated, &revoked)
	e.mustDo(alice, "DELETE", "/api/v1/tokens/"+revoked.ID, "", http.StatusNoContent, nil)
	if s2, body := e.do(revoked.Token, "GET", "/api/v1/whoami", ""); s2 != s || string(body) != string(expired) {
		t.Errorf("an expired token answers %d %s, a revoked one %d %s", s, expired, s2, body)
	}
	if v := list()["ci"]; !v.Expired {
		t.Errorf("listed after expiry: %+v", v)
	}
	// Far later, tokens without expiry still work.
	c.Advance(20 * 365 * 24 * time.Hour)
	e.mustDo(alice, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
	e.mustDo(e.admin, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
}

// A user's first token may be given an expiry; it has every right.
func TestCreateUserWithExpiry(t *testing.T) {
	e, c := newClockEnv(t)
	var res struct {
		Token     string
		ExpiresAt *time.Time `json:"expires_at"`
	}
	e.mustDo(e.admin, "POST", "/api/v1/users", `{"name":"temp","expires_in":"1h"}`, http.StatusCreated, &res)
	if res.ExpiresAt == nil || !res.ExpiresAt.Equal(c.Now().Add(time.Hour)) {
		t.Fatalf("created: %+v", res)
	}
	e.mustDo(res.Token, "POST", "/api/v1/tokens", `{"name":"more"}`, http.StatusCreated, nil)
	c.Advance(time.Hour)
	s, body := e.do(res.Token, "GET", "/api/v1/whoami", "")
	wantError(t, "expired first token", s, body, http.StatusUnauthorized, "unauthenticated")
	s, body = e.do(e.admin, "POST", "/api/v1/users", `{"name":"bad","expires_in":"1s"}`)
	wantError(t, "a user with a 1s token", s, body, http.StatusBadRequest, "invalid_argument")
	if s, _ := e.do(e.admin, "GET", "/api/v1/users/bad", ""); s != http.StatusNotFound {
		t.Errorf("the refused user was made: %d", s)
	}
}

// Bad expiries and scopes are 400s naming the field; a token never makes
// one beyond its own scopes, and only all tokens manage tokens.
func TestCreateTokenRefusals(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	var dep struct{ Token string }
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"d","scopes":["deploy"]}`, http.StatusCreated, &dep)
	for _, tt := range []struct {
		token, body string
		status      int
		code, names string
	}{
		{alice, `{"expires_in":"30s"}`, 400, "invalid_argument", "expires_in"},
		{alice, `{"expires_in":"3651d"}`, 400, "invalid_argument", "expires_in"},
		{alice, `{"expires_in":"soon"}`, 400, "invalid_argument", "expires_in"},
		{alice, `{"expires_in":3600}`, 400, "invalid_argument", "expires_in"},
		{alice, `{"expires_at":"2001-01-01T00:00:00Z"}`, 400, "invalid_argument", "expires_at"},
		{alice, `{"expires_at":"tomorrow"}`, 400, "invalid_argument", "expires_at"},
		{alice, `{"expires_in":"1h","expires_at":"2100-01-01T00:00:00Z"}`, 400, "invalid_argument", "expires_at"},
		{alice, `{"scopes":["write"]}`, 400, "invalid_argument", "scope"},
		{alice, `{"scopes":["any"]}`, 400, "invalid_argument", "scope"},
		{alice, `{"scopes":["metrics"]}`, 403, "permission_denied", "metrics"},
		{dep.Token, `{"scopes":["all"]}`, 403, "permission_denied", "all"},
		{dep.Token, `{"scopes":["read"]}`, 403, "permission_denied", "all"},
	} {
		s, body := e.do(tt.token, "POST", "/api/v1/tokens", tt.body)
		wantError(t, tt.body, s, body, tt.status, tt.code)
		if !strings.Contains(string(body), tt.names) {
			t.Errorf("%s: %s does not name %s", tt.body, body, tt.names)
		}
	}
	var out struct{ Tokens []TokenView }
	e.mustDo(alice, "GET", "/api/v1/tokens", "", http.StatusOK, &out)
	if len(out.Tokens) != 2 {
		t.Errorf("refused requests made tokens: %+v", out.Tokens)
	}
}

// Expired tokens do not count against a user's bound: a CI job making a
// short-lived token per run never runs out, and the expired ones are
// recorded as revoked at their expiry (and so pruned as those are).
func TestExpiredTokensDoNotCount(t *testing.T) {
	e, c := newClockEnv(t)
	alice := e.user("alice")
	for i := 1; i < MaxTokensPerUser; i++ {
		e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"run","expires_in":"1h"}`, http.StatusCreated, nil)
	}
	s, body := e.do(alice, "POST", "/api/v1/tokens", `{"name":"one more"}`)
	wantError(t, "a token past the bound", s, body, http.StatusForbidden, "quota_exceeded")
	expiry := c.Now().Add(time.Hour)
	c.Advance(time.Hour)
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"after"}`, http.StatusCreated, nil)
	var out struct{ Tokens []TokenView }
	e.mustDo(alice, "GET", "/api/v1/tokens", "", http.StatusOK, &out)
	runs := 0
	for _, v := range out.Tokens {
		if v.Name == "run" {
			runs++
			if !v.Expired || v.RevokedAt == nil || !v.RevokedAt.Equal(expiry) {
				t.Errorf("an expired token: %+v, want expired and revoked at %v", v, expiry)
			}
		}
	}
	if runs != MaxTokensPerUser-1 {
		t.Errorf("%d expired tokens listed, want %d", runs, MaxTokensPerUser-1)
	}
}
