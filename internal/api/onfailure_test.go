package api

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/async"
)

// A function's on-failure destination is set at deploy (JSON body or
// query) and by PATCH, shown in the function, its limits and its
// versions, and cleared by "none" or ""; naming the function itself, or
// a name no function could have, is a 400 that changes nothing; a
// function that does not exist yet may be named. A failed invocation
// sent on shows where it went, and its event where it came from.
func TestAsyncOnFailureSetting(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	withInvocations(t, e, async.Config{
		Send: func(_ context.Context, inv *async.Invocation) async.Result {
			if inv.Function == "f" {
				return async.Result{Status: 400, Error: "the function answered 400", OnFailure: "g"}
			}
			return async.Result{Status: 200}
		},
		Destination: func(ctx context.Context, owner, name string) (string, error) {
			fn, err := e.api.fns.Get(ctx, owner, name)
			return fn.ID, err
		},
		Policy: async.Policy{Delays: []time.Duration{time.Millisecond}},
	}, true)
	const code = `"code":"export default { fetch() { return new Response('hi') } }"`
	var fn FunctionView
	e.mustDo(alice, "PUT", "/api/v1/functions/f", `{`+code+`,"async_on_failure":"g"}`, http.StatusCreated, &fn)
	if fn.AsyncOnFailure != "g" || fn.Limits.AsyncOnFailure != "g" {
		t.Fatalf("deployed with g (not there yet): %+v", fn)
	}
	for _, body := range []string{`{"async_on_failure":"f"}`, `{"async_on_failure":"Not A Name"}`, `{"async_on_failure":"a/b"}`, `{"async_on_failure":1}`} {
		status, b := e.do(alice, "PATCH", "/api/v1/functions/f", body)
		wantError(t, body, status, b, http.StatusBadRequest, "invalid_argument")
	}
	status, b := e.do(alice, "PUT", "/api/v1/functions/f", `{`+code+`,"async_on_failure":"f"}`)
	wantError(t, "deploy naming itself", status, b, http.StatusBadRequest, "invalid_argument")
	e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
	if fn.Version != 1 || fn.AsyncOnFailure != "g" {
		t.Fatalf("after refused changes: version %d, async_on_failure %q", fn.Version, fn.AsyncOnFailure)
	}

	// Sent on once g exists.
	e.mustDo(alice, "PUT", "/api/v1/functions/g", `{`+code+`}`, http.StatusCreated, nil)
	var inv InvocationView
	e.mustDo(alice, "POST", "/api/v1/functions/f/invocations", "x", http.StatusAccepted, &inv)
	deadline := time.Now().Add(10 * time.Second)
	for inv.ForwardedTo == "" {
		if time.Now().After(deadline) {
			t.Fatalf("never sent on: %+v", inv)
		}
		time.Sleep(5 * time.Millisecond)
		e.mustDo(alice, "GET", "/api/v1/functions/f/invocations/"+inv.ID, "", http.StatusOK, &inv)
	}
	var evt InvocationView
	e.mustDo(alice, "GET", "/api/v1/functions/g/invocations/"+inv.ForwardedTo, "", http.StatusOK, &evt)
	if evt.FailureOf != inv.ID || evt.Path != "/" || evt.ContentType != "application/json" || inv.Status != "failed" {
		t.Fatalf("the event: %+v; the source %+v", evt, inv)
	}

	for _, clear := range []string{"none", ""} {
		e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"async_on_failure":"g"}`, http.StatusOK, nil)
		var raw map[string]any
		e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"async_on_failure":"`+clear+`"}`, http.StatusOK, &raw)
		if l, _ := raw["limits"].(map[string]any); raw["async_on_failure"] != nil || l["async_on_failure"] != nil {
			t.Fatalf("cleared with %q: %v", clear, raw)
		}
	}
	var vs struct{ Versions []VersionView }
	e.mustDo(alice, "GET", "/api/v1/functions/f/versions", "", http.StatusOK, &vs)
	if len(vs.Versions) < 3 || vs.Versions[0].AsyncOnFailure != "" || vs.Versions[1].AsyncOnFailure != "g" {
		t.Fatalf("versions: %+v", vs.Versions)
	}

	// A raw deploy takes it in the query.
	for _, q := range []string{"async-on-failure=h", "async-on-failure=Bad!"} {
		status, b := e.deployRaw(alice, "h", q)
		wantError(t, "raw deploy with ?"+q, status, b, http.StatusBadRequest, "invalid_argument")
	}
	if status, b := e.deployRaw(alice, "h", "async-on-failure=f"); status != http.StatusCreated {
		t.Fatalf("raw deploy: %d %s", status, b)
	}
	e.mustDo(alice, "GET", "/api/v1/functions/h", "", http.StatusOK, &fn)
	if fn.AsyncOnFailure != "f" {
		t.Fatalf("raw deploy with ?async-on-failure=f: %+v", fn)
	}
}
