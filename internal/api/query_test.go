package api

import (
	"net/http"
	"testing"
)

// A query string that does not parse, or names a parameter twice, is a
// 400: before, net/http dropped the pairs it could not parse and the
// handlers took the first of repeated ones, so a request went ahead
// without what it asked for. An admin's DELETE of another user's
// function with a mistyped ?owner= deleted the admin's own function of
// that name, and a deploy's bad setting was ignored instead of refused.
func TestMalformedQuery(t *testing.T) {
	e := newEnv(t)
	e.user("alice")
	e.deploy(e.admin, "/api/v1/functions/hello")
	e.deploy(e.admin, "/api/v1/functions/hello?owner=alice")
	code := `{"code":"export default { fetch() { return new Response('x') } }"}`
	for _, tc := range []struct{ method, path, body string }{
		{"DELETE", "/api/v1/functions/hello?owner=alice%zz", ""},
		{"DELETE", "/api/v1/functions/hello?owner=alice;x=1", ""},
		{"DELETE", "/api/v1/functions/hello?owner=admin&owner=alice", ""},
		{"PUT", "/api/v1/functions/hello?memory=64Mi%", code},
		{"PUT", "/api/v1/functions/hello?memory=64Mi;timeout=5s", code},
		{"PUT", "/api/v1/functions/hello?memory=64Mi&memory=99999Gi", code},
		{"GET", "/api/v1/functions?owner=%zz", ""},
		{"GET", "/api/v1/functions/hello/logs?limit=1&limit=99999", ""},
	} {
		status, body := e.do(e.admin, tc.method, tc.path, tc.body)
		wantError(t, tc.method+" "+tc.path, status, body, http.StatusBadRequest, "invalid_argument")
	}
	// Nothing changed: both functions are there, at their first version.
	for _, path := range []string{"/api/v1/functions/hello", "/api/v1/functions/hello?owner=alice"} {
		var fn FunctionView
		e.mustDo(e.admin, "GET", path, "", http.StatusOK, &fn)
		if fn.Version != 1 {
			t.Errorf("%s: version %d, want 1", path, fn.Version)
		}
	}
}

// A query parameter the endpoint does not read is a 400 too, as a
// deploy's is: an admin's ?Owner=alice, ?user=alice (as the tokens
// endpoint spells it) or ?ownr=alice went unread, so the request acted
// on the admin's own function of that name (a DELETE deleted it, its
// versions, logs and kv entries with it), and GET /tokens?owner=alice
// listed the admin's own tokens as if they were alice's.
func TestUnknownQueryParameter(t *testing.T) {
	e := newEnv(t)
	e.user("alice")
	e.deploy(e.admin, "/api/v1/functions/hello")
	e.deploy(e.admin, "/api/v1/functions/hello?owner=alice")
	e.deploy(e.admin, "/api/v1/functions/hello")
	e.mustDo(e.admin, "PUT", "/api/v1/functions/hello/tags/beta", `{"version":1}`, http.StatusOK, nil)
	for _, tc := range []struct{ method, path, body string }{
		{"DELETE", "/api/v1/functions/hello?Owner=alice", ""},
		{"DELETE", "/api/v1/functions/hello?user=alice", ""},
		{"GET", "/api/v1/functions/hello?ownr=alice", ""},
		{"PATCH", "/api/v1/functions/hello?user=alice", `{"env":{"A":"1"}}`},
		{"POST", "/api/v1/functions/hello/rollback?user=alice", ""},
		{"PUT", "/api/v1/functions/hello/traffic?user=alice", `{"1":50,"2":50}`},
		{"DELETE", "/api/v1/functions/hello/tags/beta?user=alice", ""},
		{"GET", "/api/v1/functions/hello/versions?user=alice", ""},
		{"GET", "/api/v1/functions/hello/logs?user=alice", ""},
		{"GET", "/api/v1/functions/hello/logs?owner=alice&folow=1", ""},
		{"GET", "/api/v1/functions?user=alice", ""},
		{"GET", "/api/v1/tokens?owner=alice", ""},
		{"GET", "/api/v1/users/alice?admin=1", ""},
		{"GET", "/api/v1/whoami?user=alice", ""},
	} {
		status, body := e.do(e.admin, tc.method, tc.path, tc.body)
		wantError(t, tc.method+" "+tc.path, status, body, http.StatusBadRequest, "invalid_argument")
	}
	// Nothing changed: the admin's function is at its second version,
	// tagged and unsplit, and alice's at its first.
	var fn FunctionView
	e.mustDo(e.admin, "GET", "/api/v1/functions/hello", "", http.StatusOK, &fn)
	if fn.Version != 2 || fn.Tags["beta"] != 1 || len(fn.Traffic) != 0 || len(fn.Env) != 0 {
		t.Errorf("admin/hello: version %d, tags %v, traffic %v, env %v; want 2, beta 1, none, none", fn.Version, fn.Tags, fn.Traffic, fn.Env)
	}
	e.mustDo(e.admin, "GET", "/api/v1/functions/hello?owner=alice", "", http.StatusOK, &fn)
	if fn.Version != 1 {
		t.Errorf("alice/hello: version %d, want 1", fn.Version)
	}
	// What each endpoint reads still passes.
	for _, path := range []string{
		"/api/v1/functions?owner=alice&limit=5",
		"/api/v1/functions/hello/logs?owner=alice&since=1h&version=1&after=0&limit=10",
		"/api/v1/tokens?user=alice",
	} {
		e.mustDo(e.admin, "GET", path, "", http.StatusOK, nil)
	}
}
