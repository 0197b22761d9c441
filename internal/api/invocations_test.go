package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/async"
)

// withInvocations gives e's API a real invocation store and worker,
// whose attempts send is; the worker runs only if run.
func withInvocations(t *testing.T, e *env, cfg async.Config, run bool) *async.Worker {
	t.Helper()
	st, err := async.Open(t.Context(), filepath.Join(t.TempDir(), "invocations.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	w := async.NewWorker(st, cfg)
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	e.api.cfg.Invocations = w
	return w
}

// post sends a raw body with a content type and returns the answer.
func (e *env) post(token, path, contentType string, body []byte) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { res.Body.Close() })
	return res
}

// An invocation is accepted at once (202, its Location, queued), sent
// later with its path, body and content type, and read back with how
// it went and its answer; the list pages newest first.
func TestInvocations(t *testing.T) {
	e := newEnv(t)
	type sent struct {
		path, ct, body string
		attempt        int
	}
	got := make(chan sent, 10)
	ran := make(chan string, 10)
	withInvocations(t, e, async.Config{
		Send: func(_ context.Context, inv *async.Invocation) async.Result {
			got <- sent{inv.Path, inv.ContentType, string(inv.Body), inv.Attempts}
			if string(inv.Body) == "binary" {
				return async.Result{Status: 200, ContentType: "application/octet-stream", Body: []byte{0xff, 0, 1}}
			}
			return async.Result{Status: 201, ContentType: "text/plain", Body: []byte("done: " + string(inv.Body))}
		},
		OnAttempt: func(inv *async.Invocation, _ async.Result, _ string, _ time.Time) { ran <- inv.ID },
	}, true)
	e.deploy(e.admin, "/api/v1/functions/f")

	res := e.post(e.admin, "/api/v1/functions/f/invocations?path="+url.QueryEscape("/hook/1%3Fa?x=1"), "text/plain; charset=utf-8", []byte("hello"))
	var v InvocationView
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil || res.StatusCode != http.StatusAccepted {
		t.Fatalf("enqueue: %d %v", res.StatusCode, err)
	}
	if v.Status != async.StatusQueued || len(v.ID) != 32 || v.Function != "f" || v.Owner != "admin" || v.Path != "/hook/1%3Fa?x=1" || v.MaxAttempts != 3 || v.FinishedAt != nil {
		t.Errorf("enqueue's answer: %+v", v)
	}
	if loc := res.Header.Get("Location"); loc != "/api/v1/functions/f/invocations/"+v.ID {
		t.Errorf("Location %q", loc)
	}
	if s := <-got; s != (sent{"/hook/1%3Fa?x=1", "text/plain; charset=utf-8", "hello", 1}) {
		t.Errorf("sent %+v", s)
	}
	<-ran
	var one InvocationView
	e.mustDo(e.admin, "GET", "/api/v1/functions/f/invocations/"+v.ID, "", 200, &one)
	if one.Status != async.StatusSucceeded || one.Attempts != 1 || one.HTTPStatus != 201 || one.FinishedAt == nil || one.StartedAt == nil ||
		one.Response == nil || one.Response.Body != "done: hello" || one.Response.Encoding != "text" || one.Response.ContentType != "text/plain" {
		t.Errorf("after it ran: %+v %+v", one, one.Response)
	}

	// An answer that is not UTF-8 is base64.
	res = e.post(e.admin, "/api/v1/functions/f/invocations", "", []byte("binary"))
	_ = json.NewDecoder(res.Body).Decode(&v)
	if s := <-got; s.path != "/" || s.ct != "" {
		t.Errorf("defaults: %+v", s)
	}
	<-ran
	e.mustDo(e.admin, "GET", "/api/v1/functions/f/invocations/"+v.ID, "", 200, &one)
	if one.Response == nil || one.Response.Encoding != "base64" || one.Response.Body != base64.StdEncoding.EncodeToString([]byte{0xff, 0, 1}) {
		t.Errorf("binary answer: %+v", one.Response)
	}

	for i := range 3 {
		e.post(e.admin, "/api/v1/functions/f/invocations", "", fmt.Appendf(nil, "n%d", i))
		<-got
	}
	var page InvocationList
	e.mustDo(e.admin, "GET", "/api/v1/functions/f/invocations?limit=2", "", 200, &page)
	if len(page.Invocations) != 2 || page.Next == "" || page.Invocations[0].Response != nil {
		t.Fatalf("first page: %+v", page)
	}
	first := page.Invocations[0].ID
	next := page.Next
	page = InvocationList{}
	e.mustDo(e.admin, "GET", "/api/v1/functions/f/invocations?limit=10&after="+next, "", 200, &page)
	if len(page.Invocations) != 3 || page.Next != "" || page.Invocations[2].Path != "/hook/1%3Fa?x=1" || page.Invocations[0].ID == first {
		t.Errorf("second page: %+v", page)
	}
}

// What is refused, before anything is stored: no such function, a body
// over 256 KiB, a bad path, an unknown parameter, another's function;
// past the owner's bound of pending invocations, a 429.
func TestInvocationRefusals(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	withInvocations(t, e, async.Config{Send: func(context.Context, *async.Invocation) async.Result { return async.Result{Status: 200} }, MaxPendingPerOwner: 2}, false)
	e.deploy(e.admin, "/api/v1/functions/f")
	for _, tt := range []struct {
		name, token, path string
		body              []byte
		status            int
		code              string
	}{
		{"no such function", e.admin, "/api/v1/functions/nope/invocations", nil, 404, "not_found"},
		{"body over 256 KiB", e.admin, "/api/v1/functions/f/invocations", make([]byte, MaxInvocationBody+1), 413, "too_large"},
		{"path without /", e.admin, "/api/v1/functions/f/invocations?path=x", nil, 400, "invalid_argument"},
		{"path with a space", e.admin, "/api/v1/functions/f/invocations?path=/a%20b", nil, 400, "invalid_argument"},
		{"path with a fragment", e.admin, "/api/v1/functions/f/invocations?path=/a%23b", nil, 400, "invalid_argument"},
		{"path not UTF-8", e.admin, "/api/v1/functions/f/invocations?path=/%ff", nil, 400, "invalid_argument"},
		{"unknown parameter", e.admin, "/api/v1/functions/f/invocations?Path=/", nil, 400, "invalid_argument"},
		{"another's function", alice, "/api/v1/functions/f/invocations?owner=admin", nil, 403, "permission_denied"},
		{"another's invocation list", alice, "/api/v1/functions/f/invocations?owner=admin", nil, 403, "permission_denied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			method := "POST"
			if strings.Contains(tt.name, "list") {
				method = "GET"
			}
			var res *http.Response
			if method == "POST" {
				res = e.post(tt.token, tt.path, "", tt.body)
			} else {
				req, _ := http.NewRequest(method, e.srv.URL+tt.path, nil)
				req.Header.Set("Authorization", "Bearer "+tt.token)
				var err error
				if res, err = e.srv.Client().Do(req); err != nil {
					t.Fatal(err)
				}
				defer res.Body.Close()
			}
			b, _ := io.ReadAll(res.Body)
			wantError(t, tt.name, res.StatusCode, b, tt.status, tt.code)
		})
	}
	// A body of exactly 256 KiB is taken; so is a second; a third of
	// the bound of two is refused, with a wait that is no client's
	// automatic retry.
	if res := e.post(e.admin, "/api/v1/functions/f/invocations", "", make([]byte, MaxInvocationBody)); res.StatusCode != 202 {
		t.Fatalf("256 KiB: %d", res.StatusCode)
	}
	e.post(e.admin, "/api/v1/functions/f/invocations", "", nil)
	res := e.post(e.admin, "/api/v1/functions/f/invocations", "", nil)
	b, _ := io.ReadAll(res.Body)
	wantError(t, "past the pending bound", res.StatusCode, b, 429, "rate_limited")
	if res.Header.Get("Retry-After") != "60" {
		t.Errorf("Retry-After %q", res.Header.Get("Retry-After"))
	}
	var page InvocationList
	e.mustDo(e.admin, "GET", "/api/v1/functions/f/invocations", "", 200, &page)
	if len(page.Invocations) != 2 {
		t.Errorf("%d invocations stored, want the 2 accepted", len(page.Invocations))
	}
	st, body := e.do(e.admin, "GET", "/api/v1/functions/f/invocations/00000000000000000000000000000000", "")
	wantError(t, "no such invocation", st, body, 404, "not_found")
	st, body = e.do(e.admin, "GET", "/api/v1/functions/f/invocations?after=xyz", "")
	wantError(t, "a bad cursor", st, body, 400, "invalid_argument")
}
