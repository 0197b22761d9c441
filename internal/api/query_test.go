package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
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

// A boolean query parameter takes strconv.ParseBool's spellings (1, t,
// true, 0, f, false, in any of their cases) and nothing else: before,
// follow=yes (or on, or follow with no value) was a plain read, in
// silence. Anything else is a 400 naming the parameter.
func TestBoolQuery(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/hello")
	for _, tc := range []struct {
		value  string
		follow bool
		bad    bool
	}{
		{"1", true, false}, {"true", true, false}, {"TRUE", true, false}, {"t", true, false}, {"True", true, false},
		{"0", false, false}, {"false", false, false}, {"F", false, false},
		{"yes", false, true}, {"on", false, true}, {"no", false, true}, {"", false, true}, {"2", false, true}, {"tRuE", false, true},
	} {
		path := "/api/v1/functions/hello/logs?follow=" + tc.value
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "GET", e.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+e.admin)
		res, err := e.srv.Client().Do(req)
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", path, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		// A follow's body never ends by itself: only the deadline ends it.
		followed := errors.Is(err, context.DeadlineExceeded)
		switch {
		case tc.bad:
			wantError(t, path, res.StatusCode, body, http.StatusBadRequest, "invalid_argument")
			if !strings.Contains(string(body), "follow") {
				t.Errorf("%s: the error does not name the parameter: %s", path, body)
			}
		case res.StatusCode != http.StatusOK || followed != tc.follow:
			t.Errorf("%s: status %d, followed %v, want 200, followed %v", path, res.StatusCode, followed, tc.follow)
		}
	}
}
