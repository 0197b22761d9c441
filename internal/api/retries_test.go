package api

import (
	"context"
	"net/http"
	"testing"

	"github.com/spry-run/spry/internal/async"
)

// A function's async retries are set at deploy (JSON body or query) and
// by PATCH, each a new version, shown in the function and each version;
// a value out of range, or not a number, is a 400 that changes nothing.
// An invocation's max_attempts is what the function allows.
func TestAsyncRetriesSetting(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	withInvocations(t, e, async.Config{Send: func(context.Context, *async.Invocation) async.Result { return async.Result{Status: 200} }}, false)
	var fn FunctionView
	e.mustDo(alice, "PUT", "/api/v1/functions/f", `{"code":"export default { fetch() { return new Response('hi') } }"}`, http.StatusCreated, &fn)
	if fn.AsyncRetries != 2 || !fn.Limits.AsyncRetries.IsZero() {
		t.Fatalf("deployed without: async_retries %d, limits %+v", fn.AsyncRetries, fn.Limits)
	}
	e.mustDo(alice, "PUT", "/api/v1/functions/f", `{"code":"export default { fetch() { return new Response('hi') } }","async_retries":0}`, http.StatusOK, &fn)
	if fn.Version != 2 || fn.AsyncRetries != 0 || fn.Limits.AsyncRetries.Or(-1) != 0 {
		t.Fatalf("deployed with 0: version %d, async_retries %d, limits %+v", fn.Version, fn.AsyncRetries, fn.Limits)
	}
	var raw map[string]any
	e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &raw)
	if l, _ := raw["limits"].(map[string]any); raw["async_retries"] != 0.0 || l["async_retries"] != 0.0 {
		t.Fatalf("GET shows %v", raw)
	}

	var inv InvocationView
	e.mustDo(alice, "POST", "/api/v1/functions/f/invocations", "x", http.StatusAccepted, &inv)
	if inv.MaxAttempts != 1 {
		t.Fatalf("an invocation of a function without retries: max_attempts %d", inv.MaxAttempts)
	}

	e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"async_retries":1}`, http.StatusOK, &fn)
	if fn.Version != 3 || fn.AsyncRetries != 1 {
		t.Fatalf("PATCH 1: version %d, async_retries %d", fn.Version, fn.AsyncRetries)
	}
	// An invocation shows what the function allows now: its next
	// attempt goes by the version live then.
	var one InvocationView
	e.mustDo(alice, "GET", "/api/v1/functions/f/invocations/"+inv.ID, "", http.StatusOK, &one)
	if one.MaxAttempts != 2 {
		t.Fatalf("after PATCH 1: max_attempts %d", one.MaxAttempts)
	}
	e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"async_retries":1}`, http.StatusOK, &fn)
	if fn.Version != 3 {
		t.Fatalf("the same again made version %d", fn.Version)
	}
	for _, body := range []string{`{"async_retries":-1}`, `{"async_retries":3}`, `{"async_retries":"x"}`, `{"async_retries":1.5}`} {
		status, b := e.do(alice, "PATCH", "/api/v1/functions/f", body)
		wantError(t, body, status, b, http.StatusBadRequest, "invalid_argument")
	}
	e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
	if fn.Version != 3 || fn.AsyncRetries != 1 {
		t.Fatalf("after refused changes: version %d, async_retries %d", fn.Version, fn.AsyncRetries)
	}
	var vs struct{ Versions []VersionView }
	e.mustDo(alice, "GET", "/api/v1/functions/f/versions", "", http.StatusOK, &vs)
	if len(vs.Versions) != 3 || vs.Versions[0].AsyncRetries != 1 || vs.Versions[1].AsyncRetries != 0 || vs.Versions[2].AsyncRetries != 2 {
		t.Fatalf("versions: %+v", vs.Versions)
	}
	fn = FunctionView{} // limits leave the default out
	e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"async_retries":2}`, http.StatusOK, &fn)
	if fn.Version != 4 || fn.AsyncRetries != 2 || !fn.Limits.AsyncRetries.IsZero() {
		t.Fatalf("PATCH 2: version %d, async_retries %d, limits %+v", fn.Version, fn.AsyncRetries, fn.Limits)
	}
	var list InvocationList
	e.mustDo(alice, "GET", "/api/v1/functions/f/invocations", "", http.StatusOK, &list)
	if len(list.Invocations) != 1 || list.Invocations[0].MaxAttempts != 3 {
		t.Fatalf("list after PATCH 2: %+v", list)
	}

	// A raw deploy takes it in the query.
	for _, q := range []string{"async-retries=3", "async-retries=x", "async_retries=0"} {
		status, b := e.deployRaw(alice, "g", q)
		wantError(t, "raw deploy with ?"+q, status, b, http.StatusBadRequest, "invalid_argument")
	}
	if status, b := e.deployRaw(alice, "g", "async-retries=0"); status != http.StatusCreated {
		t.Fatalf("raw deploy: %d %s", status, b)
	}
	e.mustDo(alice, "GET", "/api/v1/functions/g", "", http.StatusOK, &fn)
	if fn.Version != 1 || fn.AsyncRetries != 0 {
		t.Fatalf("raw deploy with ?async-retries=0: version %d, async_retries %d", fn.Version, fn.AsyncRetries)
	}
}
