package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/async"
)

// spry invoke --async queues a call (a POST of the data with its
// Content-Type, to --path) and prints its id; spry invocations lists
// them and shows one with its answer.
func TestInvokeAsync(t *testing.T) {
	st, err := async.Open(t.Context(), filepath.Join(t.TempDir(), "invocations.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	type sent struct{ path, ct, body string }
	got := make(chan sent, 10)
	ran := make(chan struct{}, 10)
	w := async.NewWorker(st, async.Config{
		Send: func(_ context.Context, inv *async.Invocation) async.Result {
			got <- sent{inv.Path, inv.ContentType, string(inv.Body)}
			return async.Result{Status: 200, ContentType: "text/plain", Body: []byte("thanks\nfor " + string(inv.Body))}
		},
		OnAttempt: func(*async.Invocation, async.Result, string, time.Time) { ran <- struct{}{} },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	url, admin := apiServerConfig(t, nil, api.Config{MaxCodeBytes: 1 << 20, Invocations: w})
	as, _ := cliAt(t, url)
	if code, _, stderr := as(admin, "deploy", helloFile(t, "hello.ts")); code != 0 {
		t.Fatalf("deploy: exit %d: %s", code, stderr)
	}
	data := filepath.Join(t.TempDir(), "event.json")
	if err := os.WriteFile(data, []byte(`{"n":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := as(admin, "invoke", "hello", "--async", "--path", "/hook?x=1", "-d", "@"+data, "-H", "Content-Type: application/json")
	id := strings.TrimSpace(stdout)
	if code != 0 || len(id) != 32 {
		t.Fatalf("invoke --async: exit %d, %q, %s", code, stdout, stderr)
	}
	if s := <-got; s != (sent{"/hook?x=1", "application/json", `{"n":1}`}) {
		t.Errorf("sent %+v", s)
	}
	<-ran

	code, stdout, _ = as(admin, "invocations", "hello")
	if code != 0 || !strings.Contains(stdout, id) || !strings.Contains(stdout, "succeeded") || !strings.Contains(stdout, "1/3") || !strings.Contains(stdout, "/hook?x=1") {
		t.Errorf("invocations: exit %d:\n%s", code, stdout)
	}
	code, stdout, _ = as(admin, "invocations", "hello", id)
	if code != 0 || !strings.Contains(stdout, "status:") || !strings.Contains(stdout, "succeeded") || !strings.Contains(stdout, "thanks\nfor {\"n\":1}") {
		t.Errorf("invocations ID: exit %d:\n%s", code, stdout)
	}
	code, stdout, _ = as(admin, "invocations", "hello", id, "--json")
	var v api.InvocationView
	if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil || v.ID != id || v.HTTPStatus != 200 || v.Response == nil {
		t.Errorf("invocations ID --json: exit %d:\n%s", code, stdout)
	}
	// No data: an empty body, to /.
	if code, _, stderr := as(admin, "invoke", "hello", "--async"); code != 0 {
		t.Errorf("invoke --async without data: exit %d: %s", code, stderr)
	}
	if s := <-got; s != (sent{"/", "", ""}) {
		t.Errorf("sent %+v", s)
	}
	// Two now: a list cut at its --limit says so on stderr; one that is
	// all says nothing.
	for _, tt := range []struct {
		limit string
		more  bool
	}{{"1", true}, {"2", false}, {"20", false}} {
		code, stdout, stderr := as(admin, "invocations", "hello", "--limit", tt.limit)
		if code != 0 || strings.Contains(stderr, "more: the newest 1 are shown; spry invocations hello --limit 2") != tt.more || strings.Contains(stdout, "more:") {
			t.Errorf("invocations --limit %s: exit %d, stdout %q, stderr %q; want more told: %v", tt.limit, code, stdout, stderr, tt.more)
		}
	}

	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"invoke", "hello", "--async", "-X", "GET"}, 2},
		{[]string{"invoke", "hello", "--async", "-H", "X-Other: 1"}, 2},
		{[]string{"invoke", "hello", "--async", "--include"}, 2},
		{[]string{"invoke", "hello", "--async", "--path", "no-slash"}, 2},
		{[]string{"invoke", "nope", "--async"}, 4},
		{[]string{"invocations", "nope"}, 4},
		{[]string{"invocations", "hello", "00000000000000000000000000000000"}, 4},
		{[]string{"invocations", "hello", "--limit", "0"}, 2},
	} {
		if code, _, stderr := as(admin, tt.args...); code != tt.want {
			t.Errorf("spry %s: exit %d, want %d (%s)", strings.Join(tt.args, " "), code, tt.want, stderr)
		}
	}
}
