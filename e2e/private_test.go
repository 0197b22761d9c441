package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestPrivateFunction: a public function answers anyone and sees its
// callers' Authorization headers; made private with spry config, it
// answers 401 to anyone without a token (at its version's URL too), and
// a token of scope invoke calls it, the function seeing no Authorization
// header; once the token is revoked, 401 again.
func TestPrivateFunction(t *testing.T) {
	s := startServer(t)
	path := filepath.Join(t.TempDir(), "hook.ts")
	code := `export default {
  fetch(req) {
    const a = req.headers.get("authorization");
    return new Response(a === null ? "no authorization" : "authorization: " + a);
  },
};
`
	if err := os.WriteFile(path, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", path)
	if r := s.get("/fn/admin/hook/"); r.status != 200 || string(r.body) != "no authorization" {
		t.Fatalf("public, anonymous: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/fn/admin/hook/", "", nil, map[string]string{"Authorization": "Bearer app"}); r.status != 200 || string(r.body) != "authorization: Bearer app" {
		t.Fatalf("public, its own header: %d %s", r.status, r.body)
	}

	s.mustSpry("config", "hook", "--access", "private")
	for _, p := range []string{"/fn/admin/hook/", "/fn/admin/hook@1/", "/fn/admin/hook@2/"} {
		r := s.get(p)
		if r.status != 401 || r.errorCode(t) != "unauthenticated" || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="spry"`) {
			t.Fatalf("private, anonymous at %s: %d %s %v", p, r.status, r.body, r.header)
		}
		if r.header.Get("Spry-Cold-Start") != "" {
			t.Fatalf("a refused call started an instance: %v", r.header)
		}
	}
	token, stderr, code2 := s.spry("", "token", "create", "svc", "--scope", "invoke")
	if code2 != 0 {
		t.Fatalf("token create: %s", stderr)
	}
	token = strings.TrimSpace(token)
	id := regexp.MustCompile(`created token ([0-9a-f]{16})`).FindStringSubmatch(stderr)
	if id == nil {
		t.Fatalf("token create said %q", stderr)
	}
	for _, p := range []string{"/fn/admin/hook/", "/fn/admin/hook@1/"} {
		if r := s.do("GET", p, token, nil, nil); r.status != 200 || string(r.body) != "no authorization" {
			t.Fatalf("private, invoke token at %s: %d %s", p, r.status, r.body)
		}
	}
	// The invoke token reads nothing through the API.
	if r := s.do("GET", "/api/v1/functions", token, nil, nil); r.status != 403 {
		t.Fatalf("an invoke token listed functions: %d %s", r.status, r.body)
	}

	s.mustSpry("token", "revoke", id[1])
	if r := s.do("GET", "/fn/admin/hook/", token, nil, nil); r.status != 401 || r.errorCode(t) != "unauthenticated" {
		t.Fatalf("after revoking the token: %d %s", r.status, r.body)
	}
	// The admin's own token of scope all still calls it.
	if r := s.do("GET", "/fn/admin/hook/", s.token, nil, nil); r.status != 200 || string(r.body) != "no authorization" {
		t.Fatalf("the admin's token: %d %s", r.status, r.body)
	}
	// An asynchronous invocation was let through when it was enqueued
	// (by a token that may deploy the function): it runs, and the
	// function sees no token.
	r := s.do("POST", "/api/v1/functions/hook/invocations", s.token, strings.NewReader("event"), nil)
	if r.status != 202 {
		t.Fatalf("enqueue: %d %s", r.status, r.body)
	}
	inv := s.waitInvocation(t, "hook", r.json(t)["id"].(string), "succeeded")
	if resp, _ := inv["response"].(map[string]any); resp == nil || resp["body"] != "no authorization" {
		t.Fatalf("the private function's asynchronous invocation: %v", inv)
	}
}

// TestPrivateFailureLimit: wrong tokens sent to a private function count
// against the same limiter as the API's, so that a client cannot guess
// tokens at the router past the API's limit: after ten of them, the
// API answers the next wrong token 429 (a right one it still lets
// through), and the router refuses with 429 even a right token it has
// not verified lately, starting no instance.
func TestPrivateFailureLimit(t *testing.T) {
	s := startServer(t)
	code := `export default { fetch() { return new Response("hi") } }`
	if r := s.do("PUT", "/api/v1/functions/hook", s.token, strings.NewReader(`{"code":`+strconv.Quote(code)+`,"access":"private"}`),
		map[string]string{"Content-Type": "application/json"}); r.status != 201 {
		t.Fatalf("deploy: %d %s", r.status, r.body)
	}
	const wrong = "spry_0123456789abcdef_" + "wrongwrongwrongwrongwrongwrongwrongwrongwro"
	for i := 1; i <= 10; i++ {
		if r := s.do("GET", "/fn/admin/hook/", wrong, nil, nil); r.status != 401 || r.errorCode(t) != "unauthenticated" {
			t.Fatalf("wrong token %d at the router: %d %s", i, r.status, r.body)
		}
	}
	r := s.do("GET", "/api/v1/whoami", wrong, nil, nil)
	if r.status != 429 || r.errorCode(t) != "rate_limited" || r.header.Get("Retry-After") == "" {
		t.Fatalf("a wrong token at the API after ten at the router: %d %s %v", r.status, r.body, r.header)
	}
	if r := s.do("GET", "/api/v1/whoami", s.token, nil, nil); r.status != 200 {
		t.Fatalf("the admin's token at the API: %d %s", r.status, r.body)
	}
	r = s.do("GET", "/fn/admin/hook/", s.token, nil, nil)
	if r.status != 429 || r.errorCode(t) != "rate_limited" || r.header.Get("Retry-After") == "" {
		t.Fatalf("the admin's token at the router, over the limit: %d %s %v", r.status, r.body, r.header)
	}
	if r.header.Get("Spry-Cold-Start") != "" {
		t.Fatalf("a refused call started an instance: %v", r.header)
	}
}
