package api

import (
	"net/http"
	"strings"
	"testing"
)

// A change of configuration keeps the live version's bundle, which was
// built for its runtime (a package's "deno" or "node" export condition):
// a change of runtime is refused with a 409 that says to redeploy, and
// stores nothing. Before, PATCH {"runtime":"node"} made a version that
// ran the Deno build on Node. Naming the runtime the function has is no
// change, and a redeploy with the runtime is how to change it.
func TestConfigureRuntime(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/f")
	for _, tc := range []struct {
		body    string
		status  int
		version int64
	}{
		{`{"runtime":"node"}`, http.StatusConflict, 1},
		{`{"runtime":"node","memory":"256Mi","env":{"K":"v"}}`, http.StatusConflict, 1},
		{`{"runtime":"deno"}`, http.StatusOK, 1},
		{`{"runtime":"deno","memory":"256Mi"}`, http.StatusOK, 2},
		{`{"runtime":"cobol"}`, http.StatusBadRequest, 2},
	} {
		status, body := e.do(e.admin, "PATCH", "/api/v1/functions/f", tc.body)
		switch tc.status {
		case http.StatusConflict:
			wantError(t, tc.body, status, body, tc.status, "conflict")
			if !strings.Contains(string(body), "spry deploy") || !strings.Contains(string(body), "--runtime node") {
				t.Errorf("%s: the error does not say how to change the runtime: %s", tc.body, body)
			}
		case http.StatusBadRequest:
			wantError(t, tc.body, status, body, tc.status, "invalid_argument")
		default:
			if status != tc.status {
				t.Errorf("%s: %d %s, want %d", tc.body, status, body, tc.status)
			}
		}
		var fn FunctionView
		e.mustDo(e.admin, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
		if fn.Version != tc.version || fn.Runtime != "deno" || len(fn.Env) != 0 {
			t.Errorf("after %s: version %d, runtime %s, env %v; want version %d on deno, no env", tc.body, fn.Version, fn.Runtime, fn.Env, tc.version)
		}
	}
	// A redeploy with the runtime changes it, code and all.
	status, body := e.do(e.admin, "PUT", "/api/v1/functions/f", `{"code":"export default { fetch() { return new Response('hi') } }","runtime":"node"}`)
	if status != http.StatusOK || !strings.Contains(string(body), `"runtime": "node"`) {
		t.Errorf("redeploy with runtime node: %d %s", status, body)
	}
}
