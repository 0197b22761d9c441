package api

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/schedule"
)

// who says which callers a route serves.
type who int

const (
	// anyToken: any valid token (whoami).
	anyToken who = iota
	// ownOrAdmin: a user's own functions, usage, tokens and user, and
	// an admin's for everyone. Another's is refused with one answer
	// whether or not it exists.
	ownOrAdmin
	// adminOnly: users and backups; a user gets 403, whatever the
	// target.
	adminOnly
)

// routeRule is a route's rule and the request that aims it at another's
// things: {owner} is the other user, {fn} a function of theirs, {token}
// a token id of theirs (filled in by TestEveryRouteHasItsPrincipals).
type routeRule struct {
	who        who
	path, body string
}

// routeRules is who may call each route of the API, decided here a
// second time (as routeScopes is for scopes): a route added to the API
// without its line here fails TestEveryRouteHasItsPrincipals.
var routeRules = map[string]routeRule{
	"GET /api/v1/whoami":                                 {anyToken, "/api/v1/whoami", ""},
	"GET /api/v1/usage":                                  {ownOrAdmin, "/api/v1/usage?user={owner}", ""},
	"GET /api/v1/functions":                              {ownOrAdmin, "/api/v1/functions?owner={owner}", ""},
	"GET /api/v1/functions/{name}":                       {ownOrAdmin, "/api/v1/functions/{fn}?owner={owner}", ""},
	"PUT /api/v1/functions/{name}":                       {ownOrAdmin, "/api/v1/functions/{fn}?owner={owner}", `{"code":"export default { fetch() { return new Response('mine') } }"}`},
	"PATCH /api/v1/functions/{name}":                     {ownOrAdmin, "/api/v1/functions/{fn}?owner={owner}", `{"env":{"X":"1"}}`},
	"DELETE /api/v1/functions/{name}":                    {ownOrAdmin, "/api/v1/functions/{fn}?owner={owner}", ""},
	"GET /api/v1/functions/{name}/logs":                  {ownOrAdmin, "/api/v1/functions/{fn}/logs?owner={owner}", ""},
	"GET /api/v1/functions/{name}/versions":              {ownOrAdmin, "/api/v1/functions/{fn}/versions?owner={owner}", ""},
	"DELETE /api/v1/functions/{name}/versions/{version}": {ownOrAdmin, "/api/v1/functions/{fn}/versions/1?owner={owner}", ""},
	"POST /api/v1/functions/{name}/rollback":             {ownOrAdmin, "/api/v1/functions/{fn}/rollback?owner={owner}", `{"version":1}`},
	"POST /api/v1/functions/{name}/scheduled":            {ownOrAdmin, "/api/v1/functions/{fn}/scheduled?owner={owner}", ""},
	"GET /api/v1/functions/{name}/scheduled":             {ownOrAdmin, "/api/v1/functions/{fn}/scheduled?owner={owner}", ""},
	"PUT /api/v1/functions/{name}/traffic":               {ownOrAdmin, "/api/v1/functions/{fn}/traffic?owner={owner}", `{"1":100}`},
	"PUT /api/v1/functions/{name}/tags/{tag}":            {ownOrAdmin, "/api/v1/functions/{fn}/tags/t?owner={owner}", `{"version":1}`},
	"DELETE /api/v1/functions/{name}/tags/{tag}":         {ownOrAdmin, "/api/v1/functions/{fn}/tags/keep?owner={owner}", ""},
	"GET /api/v1/functions/{name}/kv":                    {ownOrAdmin, "/api/v1/functions/{fn}/kv?owner={owner}", ""},
	"GET /api/v1/functions/{name}/kv/{key...}":           {ownOrAdmin, "/api/v1/functions/{fn}/kv/k?owner={owner}", ""},
	"PUT /api/v1/functions/{name}/kv/{key...}":           {ownOrAdmin, "/api/v1/functions/{fn}/kv/k?owner={owner}", `"mine"`},
	"DELETE /api/v1/functions/{name}/kv/{key...}":        {ownOrAdmin, "/api/v1/functions/{fn}/kv/k?owner={owner}", ""},
	"POST /api/v1/functions/{name}/invocations":          {ownOrAdmin, "/api/v1/functions/{fn}/invocations?owner={owner}", `{}`},
	"GET /api/v1/functions/{name}/invocations":           {ownOrAdmin, "/api/v1/functions/{fn}/invocations?owner={owner}", ""},
	"GET /api/v1/functions/{name}/invocations/{id}":      {ownOrAdmin, "/api/v1/functions/{fn}/invocations/{invocation}?owner={owner}", ""},
	"GET /api/v1/users":                                  {adminOnly, "/api/v1/users", ""},
	"POST /api/v1/users":                                 {adminOnly, "/api/v1/users", `{"name":"{owner}2"}`},
	"GET /api/v1/users/{name}":                           {ownOrAdmin, "/api/v1/users/{owner}", ""},
	"DELETE /api/v1/users/{name}":                        {adminOnly, "/api/v1/users/{owner}", ""},
	"GET /api/v1/tokens":                                 {ownOrAdmin, "/api/v1/tokens?user={owner}", ""},
	"POST /api/v1/tokens":                                {ownOrAdmin, "/api/v1/tokens", `{"user":"{owner}"}`},
	"DELETE /api/v1/tokens/{id}":                         {ownOrAdmin, "/api/v1/tokens/{token}", ""},
	"GET /api/v1/backup":                                 {adminOnly, "/api/v1/backup", ""},
}

// Every route the API serves has a rule above and keeps to it, for a
// caller with no token or a wrong one (401), a user aiming at another
// user's things, which exist or not (403, or 404 for a token id, with
// one answer for both, and nothing changed), a user at an admin's route
// (403, never 404 or 500), and the admin. Every route is named in
// docs/api.md.
func TestEveryRouteHasItsPrincipals(t *testing.T) {
	d := apitest.New(t)
	kvs, backups := apitest.Backups(t, d)
	var mu sync.Mutex
	var scheduled []string
	// Wrong tokens are sent to every route: more than the failure
	// limit lets through.
	limiter := auth.NewFailureLimiter(auth.FailureEvery, 1<<20, nil)
	e := newEnvOn(t, d, Config{MaxCodeBytes: 1 << 20, KV: kvs, Backups: backups, Limiter: limiter,
		RunScheduled: func(_ context.Context, owner, name string) error {
			mu.Lock()
			defer mu.Unlock()
			scheduled = append(scheduled, owner+"/"+name)
			return nil
		},
		ScheduleStatus: func(ctx context.Context, owner, name string) (string, schedule.Status, error) {
			sp, err := d.Functions.Live(ctx, owner, name)
			if err != nil {
				return "", schedule.Status{}, err
			}
			return sp.Cron, schedule.Status{}, nil
		}})
	withInvocations(t, e, async.Config{Send: func(context.Context, *async.Invocation) async.Result { return async.Result{Status: 200} }}, false)
	alice := e.user("alice")
	e.user("bob")
	e.user("carol") // the admin's target

	routes := e.api.routes()
	seen := map[string]bool{}
	for _, rt := range routes {
		key := rt.method + " " + rt.pattern
		seen[key] = true
		if _, ok := routeRules[key]; !ok {
			t.Errorf("route %s has no rule in routeRules", key)
		}
	}
	for key := range routeRules {
		if !seen[key] {
			t.Errorf("routeRules names %s, which the API does not serve", key)
		}
	}
	docs, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range routes {
		if p := strings.Replace(rt.pattern, "{key...}", "{key}", 1); !strings.Contains(string(docs), p) {
			t.Errorf("docs/api.md does not name %s %s", rt.method, p)
		}
	}

	// Bob's things, which alice aims at.
	e.deploy(e.admin, "/api/v1/functions/fn?owner=bob")
	e.deploy(e.admin, "/api/v1/functions/fn?owner=bob")
	e.mustDo(e.admin, "PUT", "/api/v1/functions/fn/tags/keep?owner=bob", `{"version":1}`, http.StatusOK, nil)
	e.mustDo(e.admin, "PUT", "/api/v1/functions/fn/kv/k?owner=bob", `"bob's"`, http.StatusNoContent, nil)
	var inv InvocationView
	e.mustDo(e.admin, "POST", "/api/v1/functions/fn/invocations?owner=bob", `{}`, http.StatusAccepted, &inv)
	var tok struct{ ID string }
	e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"user":"bob","name":"bob's"}`, http.StatusCreated, &tok)
	bobState := func() string {
		t.Helper()
		_, fn := e.do(e.admin, "GET", "/api/v1/functions/fn?owner=bob", "")
		_, vs := e.do(e.admin, "GET", "/api/v1/functions/fn/versions?owner=bob", "")
		_, kv := e.do(e.admin, "GET", "/api/v1/functions/fn/kv?owner=bob", "")
		_, invs := e.do(e.admin, "GET", "/api/v1/functions/fn/invocations?owner=bob", "")
		_, toks := e.do(e.admin, "GET", "/api/v1/tokens?user=bob", "")
		_, user := e.do(e.admin, "GET", "/api/v1/users/bob", "")
		return string(fn) + string(vs) + string(kv) + string(invs) + string(toks) + string(user)
	}
	before := bobState()

	// Bob's things as they are, bob's missing ones, and a user that
	// does not exist: one answer for the three, but for the names.
	targets := []*strings.Replacer{
		strings.NewReplacer("{owner}", "bob", "{fn}", "fn", "{token}", tok.ID, "{invocation}", inv.ID),
		strings.NewReplacer("{owner}", "bob", "{fn}", "nofn", "{token}", "0123456789abcdef", "{invocation}", "0123456789abcdef"),
		strings.NewReplacer("{owner}", "ghost", "{fn}", "fn", "{token}", "fedcba9876543210", "{invocation}", "fedcba9876543210"),
	}
	same := strings.NewReplacer("nofn", "fn", "ghost", "bob", tok.ID, "ID", inv.ID, "ID", "0123456789abcdef", "ID", "fedcba9876543210", "ID")
	for _, rt := range routes {
		key := rt.method + " " + rt.pattern
		rule, ok := routeRules[key]
		if !ok {
			continue
		}
		t.Run(key, func(t *testing.T) {
			for _, tk := range []string{"", "spry_0123456789abcdef_" + strings.Repeat("A", 43), "Bearer"} {
				status, _, body := e.raw(tk, rt.method, targets[0].Replace(rule.path), "", nil, nil)
				wantError(t, "token "+tk, status, body, http.StatusUnauthorized, "unauthenticated")
			}
			var first string
			for i, r := range targets {
				status, body := e.do(alice, rt.method, r.Replace(rule.path), r.Replace(rule.body))
				switch rule.who {
				case anyToken:
					if status != http.StatusOK {
						t.Errorf("alice: %d %s", status, body)
					}
					continue
				case adminOnly:
					wantError(t, "alice", status, body, http.StatusForbidden, "permission_denied")
				case ownOrAdmin:
					want, code := http.StatusForbidden, "permission_denied"
					if key == "DELETE /api/v1/tokens/{id}" {
						// Others' tokens are invisible.
						want, code = http.StatusNotFound, "not_found"
					}
					wantError(t, "alice at "+r.Replace("{owner}/{fn}"), status, body, want, code)
				}
				answer := same.Replace(string(body))
				if i == 0 {
					first = answer
				} else if answer != first {
					t.Errorf("alice tells bob's things from missing ones: %s, then %s", first, answer)
				}
			}
			// The admin is let through (what follows is the handler's),
			// here at carol's things, which may be deleted.
			carol := strings.NewReplacer("{owner}", "carol", "{fn}", "nofn", "{token}", "0123456789abcdef", "{invocation}", "0123456789abcdef")
			status, body := e.do(e.admin, rt.method, carol.Replace(rule.path), carol.Replace(rule.body))
			if status == http.StatusUnauthorized || status == http.StatusForbidden || status >= 500 {
				t.Errorf("the admin: %d %s", status, body)
			}
		})
	}
	if after := bobState(); after != before {
		t.Errorf("bob's things changed:\n%s\nthen\n%s", before, after)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range scheduled {
		if s == "bob/fn" {
			t.Errorf("bob's scheduled handler was run")
		}
	}
}

// The Authorization header as the API reads it: scheme Bearer in any
// case, then spaces and the token; only the first field; never a token
// from the query string. Everything else is the one 401 (a malformed
// token answers as an unknown or wrong one does), never a 500.
func TestAuthorizationHeader(t *testing.T) {
	limiter := auth.NewFailureLimiter(auth.FailureEvery, 1<<20, nil)
	e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, Limiter: limiter})
	alice := e.user("alice")
	wrong := alice[:len(alice)-4] + "AAAA"
	if wrong == alice {
		wrong = alice[:len(alice)-4] + "BBBB"
	}
	const invalid = `{"error":{"code":"unauthenticated","message":"invalid, expired or revoked token"}}`
	const missing = `{"error":{"code":"unauthenticated","message":"missing bearer token: send Authorization: Bearer \u003ctoken\u003e"}}`
	for _, tt := range []struct {
		name   string
		fields []string
		query  string
		status int
		body   string // for refusals
	}{
		{"bearer", []string{"Bearer " + alice}, "", 200, ""},
		{"scheme in any case, spaces", []string{"bEaReR   " + alice + " "}, "", 200, ""},
		{"the first of two", []string{"Bearer " + alice, "Bearer " + wrong}, "", 200, ""},
		{"a wrong first of two", []string{"Bearer " + wrong, "Bearer " + alice}, "", 401, invalid},
		{"Basic first", []string{"Basic YWxpY2U6cHc=", "Bearer " + alice}, "", 401, missing},
		{"no scheme", []string{alice}, "", 401, missing},
		{"tab", []string{"Bearer\t" + alice}, "", 401, missing},
		{"token and more", []string{"Bearer " + alice + " x"}, "", 401, invalid},
		{"wrong secret", []string{"Bearer " + wrong}, "", 401, invalid},
		{"unknown id", []string{"Bearer spry_0123456789abcdef_" + strings.Repeat("A", 43)}, "", 401, invalid},
		{"not a token", []string{"Bearer x"}, "", 401, invalid},
		{"long", []string{"Bearer " + strings.Repeat("a", 6000)}, "", 401, invalid},
		{"in the query", nil, "?access_token=" + alice, 401, missing},
		{"in the query too", []string{"Bearer " + alice}, "?access_token=" + alice, 400, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := e.raw("", "GET", "/api/v1/whoami"+tt.query, "", nil, http.Header{"Authorization": tt.fields})
			if status != tt.status || tt.body != "" && strings.TrimSpace(string(body)) != tt.body {
				t.Errorf("%d %s, want %d %s", status, body, tt.status, tt.body)
			}
		})
	}
}
