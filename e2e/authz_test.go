package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// endpoint is one management API call, with a body if it needs one. The
// matrix below runs every endpoint as each user against each owner.
type endpoint struct {
	method, path, body string
}

// managementEndpoints are the calls that act on one function; {owner}
// and {name} are filled in.
var managementEndpoints = []endpoint{
	{"GET", "/api/v1/functions?owner={owner}", ""},
	{"GET", "/api/v1/functions/{name}?owner={owner}", ""},
	{"PUT", "/api/v1/functions/{name}?owner={owner}", `export default () => new Response("replaced")`},
	{"PATCH", "/api/v1/functions/{name}?owner={owner}", `{"env":{"X":"1"}}`},
	{"GET", "/api/v1/functions/{name}/logs?owner={owner}", ""},
	{"GET", "/api/v1/functions/{name}/versions?owner={owner}", ""},
	// Neither live nor tagged when it comes: the deploy before each call
	// makes a new live version, and tags come below.
	{"DELETE", "/api/v1/functions/{name}/versions/2?owner={owner}", ""},
	{"POST", "/api/v1/functions/{name}/rollback?owner={owner}", `{"version":1}`},
	{"PUT", "/api/v1/functions/{name}/traffic?owner={owner}", `{"1":100}`},
	{"PUT", "/api/v1/functions/{name}/tags/canary?owner={owner}", `{"version":1}`},
	{"POST", "/api/v1/functions/{name}/invocations?owner={owner}&path=/event", `an event`},
	{"GET", "/api/v1/functions/{name}/invocations?owner={owner}", ""},
	{"DELETE", "/api/v1/functions/{name}?owner={owner}", ""},
}

func fill(s, owner, name string) string {
	return strings.NewReplacer("{owner}", owner, "{name}", name).Replace(s)
}

// TestAuthorizationMatrix: user A cannot read, change, delete or manage
// user B's functions through any endpoint; only the admin manages users
// and everyone's functions.
func TestAuthorizationMatrix(t *testing.T) {
	s := startServer(t)
	tokens := map[string]string{"admin": s.token}
	for _, u := range []string{"alice", "bob"} {
		tokens[u] = strings.TrimSpace(s.mustSpry("user", "create", u))
	}
	deploy := func(owner string) {
		t.Helper()
		if r := s.putCode(tokens["admin"], "fn", []byte(`export default () => new Response("`+owner+`")`), "owner="+owner); r.status/100 != 2 {
			t.Fatalf("deploy %s/fn: %d %s", owner, r.status, r.body)
		}
	}
	for _, caller := range []string{"alice", "bob"} {
		for _, owner := range []string{"alice", "bob", "admin"} {
			if owner == caller {
				continue
			}
			for _, ep := range managementEndpoints {
				t.Run(caller+" "+ep.method+" "+fill(ep.path, owner, "fn"), func(t *testing.T) {
					deploy(owner)
					r := s.do(ep.method, fill(ep.path, owner, "fn"), tokens[caller], strings.NewReader(ep.body), map[string]string{"Content-Type": contentType(ep)})
					if r.status != 403 || r.errorCode(t) != "permission_denied" {
						t.Fatalf("%s got %d %s", caller, r.status, r.body)
					}
					// Nothing changed: still version 1 with its code.
					if got := s.get("/fn/" + owner + "/fn"); string(got.body) != owner {
						t.Fatalf("%s's function now answers %q", owner, got.body)
					}
				})
			}
		}
	}
	// Each user may do all of it to their own functions, and the admin to
	// anyone's.
	for _, caller := range []string{"alice", "admin"} {
		for _, ep := range managementEndpoints {
			owner := "alice"
			t.Run("allowed "+caller+" "+ep.method, func(t *testing.T) {
				deploy(owner)
				r := s.do(ep.method, fill(ep.path, owner, "fn"), tokens[caller], strings.NewReader(ep.body), map[string]string{"Content-Type": contentType(ep)})
				if r.status/100 != 2 {
					t.Fatalf("%s %s: %d %s", caller, ep.method, r.status, r.body)
				}
			})
		}
	}

	userOnly := []endpoint{
		{"GET", "/api/v1/users", ""},
		{"POST", "/api/v1/users", `{"name":"mallory"}`},
		{"GET", "/api/v1/users/bob", ""},
		{"DELETE", "/api/v1/users/bob", ""},
		{"GET", "/api/v1/tokens?user=bob", ""},
		{"POST", "/api/v1/tokens", `{"user":"bob"}`},
	}
	for _, ep := range userOnly {
		t.Run("alice "+ep.method+" "+ep.path, func(t *testing.T) {
			r := s.do(ep.method, ep.path, tokens["alice"], strings.NewReader(ep.body), map[string]string{"Content-Type": "application/json"})
			if r.status != 403 {
				t.Fatalf("got %d %s", r.status, r.body)
			}
		})
	}
	t.Run("alice cannot revoke bob's token", func(t *testing.T) {
		who := s.do("GET", "/api/v1/whoami", tokens["bob"], nil, nil).json(t)
		r := s.do("DELETE", "/api/v1/tokens/"+who["token_id"].(string), tokens["alice"], nil, nil)
		if r.status != 404 {
			t.Fatalf("got %d %s", r.status, r.body)
		}
		if r := s.do("GET", "/api/v1/whoami", tokens["bob"], nil, nil); r.status != 200 {
			t.Fatal("bob's token stopped working")
		}
	})
}

func contentType(ep endpoint) string {
	if strings.HasPrefix(ep.body, "{") {
		return "application/json"
	}
	return "application/typescript"
}

// TestTokens: tokens are revocable, failed attempts are rate limited.
func TestTokens(t *testing.T) {
	s := startServer(t)
	tok := strings.TrimSpace(s.mustSpry("token", "create", "--name", "ci"))
	if r := s.do("GET", "/api/v1/whoami", tok, nil, nil); r.status != 200 {
		t.Fatalf("new token: %d", r.status)
	}
	id := s.do("GET", "/api/v1/whoami", tok, nil, nil).json(t)["token_id"].(string)
	if out := s.mustSpry("token", "ls"); !strings.Contains(out, id) || !strings.Contains(out, "ci") {
		t.Fatalf("token ls:\n%s", out)
	}
	s.mustSpry("token", "revoke", id)
	if r := s.do("GET", "/api/v1/whoami", tok, nil, nil); r.status != 401 {
		t.Fatalf("revoked token: %d", r.status)
	}

	// Ten wrong tokens (the revoked one was the first) are answered 401,
	// at the API or at /metrics alike; then the client's wrong tokens are
	// refused at both with 429 and Retry-After until it has waited, while
	// a right token from the same address still passes (clients behind
	// one proxy share it).
	bad := "spry_0123456789abcdef_" + strings.Repeat("B", 43)
	for i := 1; i < 10; i++ {
		path := "/api/v1/whoami"
		if i%2 == 0 {
			path = "/metrics"
		}
		if r := s.do("GET", path, bad, nil, nil); r.status != 401 {
			t.Fatalf("attempt %d at %s: %d", i, path, r.status)
		}
	}
	for _, path := range []string{"/api/v1/whoami", "/metrics"} {
		r := s.do("GET", path, bad, nil, nil)
		if r.status != 429 || r.errorCode(t) != "rate_limited" || r.header.Get("Retry-After") == "" {
			t.Fatalf("%s after 10 failures: %d %s (Retry-After %q)", path, r.status, r.body, r.header.Get("Retry-After"))
		}
		if r := s.do("GET", path, s.token, nil, nil); r.status != 200 {
			t.Fatalf("%s with a right token after 10 failures: %d %s", path, r.status, r.body)
		}
	}
}

// TestEnvAndSecrets: env and secrets reach the function; secret values are
// stored encrypted and never returned.
func TestEnvAndSecrets(t *testing.T) {
	s := startServer(t)
	code := `export default { fetch(req, ctx) { return Response.json(ctx.env); } }`
	path := filepath.Join(t.TempDir(), "envy.ts")
	if err := os.WriteFile(path, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", path, "--env", "PLAIN=visible")
	const secret = "s3cr3t-value-9f8e7d"
	if out, errOut, code := s.spryIn("", strings.NewReader(secret+"\n"), "secret", "set", "envy", "DB_PASSWORD"); code != 0 || !strings.Contains(out, "version 2") {
		t.Fatalf("secret set: %d %s %s", code, out, errOut)
	}
	s.mustSpry("env", "set", "envy", "MORE=yes")
	env := s.get("/fn/admin/envy").json(t)
	if env["PLAIN"] != "visible" || env["DB_PASSWORD"] != secret || env["MORE"] != "yes" {
		t.Fatalf("function env: %v", env)
	}
	// The API lists the secret's name only.
	r := s.do("GET", "/api/v1/functions/envy", s.token, nil, nil)
	if bytes.Contains(r.body, []byte(secret)) || !bytes.Contains(r.body, []byte("DB_PASSWORD")) {
		t.Fatalf("API shows: %s", r.body)
	}
	if out := s.mustSpry("env", "ls", "envy"); !strings.Contains(out, "DB_PASSWORD=<secret>") || strings.Contains(out, secret) {
		t.Fatalf("env ls:\n%s", out)
	}
	// Not in the database or its WAL, not in the server log.
	for _, f := range []string{"spry.db", "spry.db-wal"} {
		data, _ := os.ReadFile(filepath.Join(s.data, f))
		if bytes.Contains(data, []byte(secret)) {
			t.Fatalf("secret in clear in %s", f)
		}
	}
	if strings.Contains(s.logs.String(), secret) {
		t.Fatal("secret in the server log")
	}
	// A redeploy of the code keeps env and secrets; unset removes them.
	s.mustSpry("deploy", path)
	if env := s.get("/fn/admin/envy").json(t); env["DB_PASSWORD"] != secret || env["PLAIN"] != "visible" {
		t.Fatalf("after redeploy: %v", env)
	}
	s.mustSpry("secret", "unset", "envy", "DB_PASSWORD")
	s.mustSpry("env", "unset", "envy", "PLAIN")
	if env := s.get("/fn/admin/envy").json(t); len(env) != 1 || env["MORE"] != "yes" {
		t.Fatalf("after unset: %v", env)
	}
	// Secrets survive a restart (the key is in the data dir).
	s.spryIn("", strings.NewReader(secret), "secret", "set", "envy", "TOKEN")
	s.restart()
	if env := s.get("/fn/admin/envy").json(t); env["TOKEN"] != secret {
		t.Fatalf("after restart: %v", env)
	}
	// Env and secrets share one size limit, as an instance gets both:
	// secrets set one request at a time cannot pass it either.
	big := func(k string) io.Reader {
		return strings.NewReader(`{"secrets":{"` + k + `":"` + strings.Repeat("s", 40000) + `"}}`)
	}
	if r := s.do("PATCH", "/api/v1/functions/envy", s.token, big("BIG1"), map[string]string{"Content-Type": "application/json"}); r.status != 200 {
		t.Fatalf("one big secret: %d %s", r.status, r.body)
	}
	live := s.do("GET", "/api/v1/functions/envy", s.token, nil, nil).json(t)["version"]
	r = s.do("PATCH", "/api/v1/functions/envy", s.token, big("BIG2"), map[string]string{"Content-Type": "application/json"})
	if r.status != 413 || r.errorCode(t) != "too_large" {
		t.Fatalf("a second big secret: %d %s", r.status, r.body)
	}
	if v := s.do("GET", "/api/v1/functions/envy", s.token, nil, nil).json(t)["version"]; v != live {
		t.Fatalf("a refused change made version %v (live was %v)", v, live)
	}
	// A deploy refused after its build stores no bundle.
	blobs := func() int {
		n := 0
		_ = filepath.WalkDir(filepath.Join(s.data, "blobs"), func(_ string, d fs.DirEntry, _ error) error {
			if d != nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	before := blobs()
	deploy := `{"code":"export default { fetch() { return new Response('new code') } }","env":{"HUGE":"` + strings.Repeat("e", 40000) + `"}}`
	r = s.do("PUT", "/api/v1/functions/envy", s.token, strings.NewReader(deploy), map[string]string{"Content-Type": "application/json"})
	if r.status != 413 {
		t.Fatalf("a deploy over the env limit: %d %s", r.status, r.body)
	}
	if after := blobs(); after != before {
		t.Fatalf("a refused deploy stored a bundle: %d blobs before, %d after", before, after)
	}
}

// TestLostSecretKey: a server that finds secret.key gone while functions
// hold secrets refuses to start rather than make a new key in silence;
// told to make one, it runs, the versions whose secrets do not open
// answer 500 without naming a secret, and the function can still be
// changed (each change answered truly) until its secrets are set again.
func TestLostSecretKey(t *testing.T) {
	s := startServer(t)
	path := filepath.Join(t.TempDir(), "vault.ts")
	code := `export default { fetch(req, ctx) { return Response.json(ctx.env); } }`
	if err := os.WriteFile(path, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", path)                                                      // v1: no secrets
	s.spryIn("", strings.NewReader("hunter2"), "secret", "set", "vault", "API_KEY") // v2
	// A scheduled function with a secret: once its secret is lost, its
	// schedule does not run, and says it has no next time.
	s.deployCode(t, "nightly", []byte(`export default { fetch() { return new Response("hi"); }, scheduled() {} }`), "cron="+url.QueryEscape("0 3 * * *"))
	s.spryIn("", strings.NewReader("s3cret"), "secret", "set", "nightly", "TOKEN")
	if v := s.scheduleOf(t, "nightly"); v.NextRunAt == nil {
		t.Fatalf("before: no next run: %+v", v)
	}
	if env := s.get("/fn/admin/vault").json(t); env["API_KEY"] != "hunter2" {
		t.Fatalf("before: %v", env)
	}
	s.stop()
	if err := os.Remove(filepath.Join(s.data, "secret.key")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.bin, "serve", "--listen", freePort(t), "--data", s.data,
		"--uid-base", strconv.Itoa(s.uidBase)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--new-secret-key") {
		t.Fatalf("start without the key: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(s.data, "secret.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused start made a key: %v", err)
	}

	s.args = append(s.args, "--new-secret-key")
	s.start()
	if v := s.scheduleOf(t, "nightly"); v.NextRunAt != nil || v.Cron != "0 3 * * *" {
		t.Errorf("a schedule whose secrets are lost: cron %q, next run %v; want its cron and no next run", v.Cron, v.NextRunAt)
	}
	r := s.get("/fn/admin/vault")
	if r.status != 500 || bytes.Contains(r.body, []byte("API_KEY")) || !bytes.Contains(r.body, []byte("set them again")) {
		t.Fatalf("invoking a version whose secret is lost: %d %s", r.status, r.body)
	}
	// Changes answer what they did: a tag and a rollback apply (the old
	// version has no secrets and runs), and an edit that would carry the
	// lost secret on is refused, naming it to its owner.
	json := map[string]string{"Content-Type": "application/json"}
	if r := s.do("PUT", "/api/v1/functions/vault/tags/keyed", s.token, strings.NewReader(`{"version":2}`), json); r.status != 200 {
		t.Fatalf("tag: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/vault@keyed"); r.status != 500 {
		t.Fatalf("tagged version whose secret is lost: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/api/v1/functions/vault/rollback", s.token, nil, nil); r.status != 200 {
		t.Fatalf("rollback: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/vault"); r.status != 200 {
		t.Fatalf("after rollback to v1: %d %s", r.status, r.body)
	}
	if r := s.do("PATCH", "/api/v1/functions/vault", s.token, strings.NewReader(`{"env":{"X":"1"}}`), json); r.status != 200 {
		t.Fatalf("env on v1 (no secrets): %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/api/v1/functions/vault/rollback", s.token, strings.NewReader(`{"version":2}`), json); r.status != 200 {
		t.Fatalf("rollback to v2: %d %s", r.status, r.body)
	}
	r = s.do("PATCH", "/api/v1/functions/vault", s.token, strings.NewReader(`{"env":{"X":"1"}}`), json)
	if r.status != 409 || !bytes.Contains(r.body, []byte("API_KEY")) {
		t.Fatalf("env over a lost secret: %d %s", r.status, r.body)
	}
	s.spryIn("", strings.NewReader("correct-horse"), "secret", "set", "vault", "API_KEY")
	if env := s.get("/fn/admin/vault").json(t); env["API_KEY"] != "correct-horse" {
		t.Fatalf("after setting the secret again: %v", env)
	}
}

// TestNoFunctionOutlivesItsOwner: a user deleted while their deploy
// builds leaves no function behind (it was served, and a new user of the
// same name inherited it).
func TestNoFunctionOutlivesItsOwner(t *testing.T) {
	s := startServer(t)
	carol := strings.TrimSpace(s.mustSpry("user", "create", "carol"))
	// A build that takes a while: the delete comes during it.
	var code strings.Builder
	for i := 0; code.Len() < 4<<20; i++ {
		fmt.Fprintf(&code, "export const v%d = %d * 2;\n", i, i)
	}
	code.WriteString("export default { fetch() { return new Response('orphan') } };\n")
	done := make(chan response, 1)
	go func() { done <- s.putCode(carol, "orphan", []byte(code.String()), "") }()
	time.Sleep(300 * time.Millisecond)
	s.mustSpry("user", "rm", "carol")
	r := <-done
	t.Logf("the deploy answered %d", r.status)
	if r := s.get("/fn/carol/orphan/"); r.status != 404 {
		t.Errorf("the deleted user's function answers %d %s", r.status, r.body)
	}
	if out := s.mustSpry("ls", "--owner", "carol"); strings.Contains(out, "orphan") {
		t.Errorf("the deleted user's function is listed:\n%s", out)
	}
	carol = strings.TrimSpace(s.mustSpry("user", "create", "carol"))
	if r := s.do("GET", "/api/v1/functions/orphan", carol, nil, nil); r.status != 404 {
		t.Errorf("a new carol sees the old one's function: %d %s", r.status, r.body)
	}

}

// TestTokenScopes: a read token made with the CLI lists functions but
// its deploy is a 403 (exit 3), through the CLI and the API alike; a
// metrics token of the admin's scrapes /metrics and does nothing else;
// the admin's read token does not scrape. (Expiry is checked with an
// injected clock in internal/api and internal/auth: its minimum is a
// minute.)
func TestTokenScopes(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "hello", []byte(`export default () => new Response("hi")`), "")
	read := strings.TrimSpace(s.mustSpry("token", "create", "ro", "--scope", "read", "--expires", "1h"))
	metrics := strings.TrimSpace(s.mustSpry("token", "create", "prom", "--scope", "metrics"))

	if out, errOut, code := s.spry(read, "ls"); code != 0 || !strings.Contains(out, "hello") {
		t.Fatalf("ls with a read token: exit %d: %s%s", code, out, errOut)
	}
	if out, errOut, code := s.spry(read, "whoami"); code != 0 || !strings.Contains(out, "scopes read, expires ") {
		t.Fatalf("whoami with a read token: exit %d: %s%s", code, out, errOut)
	}
	file := filepath.Join(t.TempDir(), "hello.ts")
	if err := os.WriteFile(file, []byte(`export default () => new Response("changed")`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := s.spry(read, "deploy", file, "--name", "hello"); code != 3 || !strings.Contains(errOut, "scope deploy") {
		t.Fatalf("deploy with a read token: exit %d: %s", code, errOut)
	}
	r := s.putCode(read, "hello", []byte(`export default () => new Response("changed")`), "")
	if r.status != 403 || r.errorCode(t) != "permission_denied" {
		t.Fatalf("PUT with a read token: %d %s", r.status, r.body)
	}
	if got := s.get("/fn/admin/hello"); string(got.body) != "hi" {
		t.Fatalf("the function now answers %q", got.body)
	}
	if r := s.do("GET", "/metrics", metrics, nil, nil); r.status != 200 || !strings.Contains(string(r.body), "spry_invocations_total") {
		t.Fatalf("/metrics with a metrics token: %d", r.status)
	}
	if r := s.do("GET", "/metrics", read, nil, nil); r.status != 403 {
		t.Fatalf("/metrics with a read token: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/api/v1/functions", metrics, nil, nil); r.status != 403 || r.errorCode(t) != "permission_denied" {
		t.Fatalf("functions with a metrics token: %d %s", r.status, r.body)
	}
	out := s.mustSpry("token", "ls")
	if !strings.Contains(out, "SCOPES") || !strings.Contains(out, "read") || !strings.Contains(out, "metrics") {
		t.Fatalf("token ls: %s", out)
	}
}
