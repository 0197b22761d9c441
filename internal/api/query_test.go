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
