package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/runtime"
)

// TestTour follows the README's tour: deploy, curl, invoke, ls, rm.
func TestTour(t *testing.T) {
	s := startServer(t)
	out := s.mustSpry("deploy", "examples/hello.ts", "--name", "hello")
	if !strings.Contains(out, "version 1") || !strings.Contains(out, s.url+"/fn/admin/hello") {
		t.Fatalf("deploy printed %q; want the version and the URL", out)
	}
	r := s.get("/fn/admin/hello?name=Ada")
	if r.status != 200 || string(r.body) != "Hello, Ada\n" {
		t.Fatalf("curl: %d %q", r.status, r.body)
	}
	if r.header.Get("Spry-Request-Id") == "" {
		t.Error("no Spry-Request-Id header")
	}
	if out := s.mustSpry("invoke", "hello", "--path", "/?name=Ada"); out != "Hello, Ada\n" {
		t.Fatalf("invoke printed %q", out)
	}
	ls := lines(s.mustSpry("ls"))
	if len(ls) != 2 {
		t.Fatalf("ls printed %d lines:\n%s", len(ls), strings.Join(ls, "\n"))
	}
	for _, col := range []string{"NAME", "VERSION", "RUNTIME", "ACCESS", "URL", "STATE", "LAST INVOKED"} {
		if !strings.Contains(ls[0], col) {
			t.Errorf("ls header %q lacks %s", ls[0], col)
		}
	}
	for _, want := range []string{"admin/hello", " 1 ", "deno", s.url + "/fn/admin/hello", "running", "ago"} {
		if !strings.Contains(ls[1], want) && !(want == "ago" && strings.Contains(ls[1], "just now")) {
			t.Errorf("ls row %q lacks %q", ls[1], want)
		}
	}
	s.mustSpry("rm", "hello")
	r = s.get("/fn/admin/hello?name=Ada")
	if r.status != 404 || r.errorCode(t) != "not_found" {
		t.Fatalf("after rm: %d %s", r.status, r.body)
	}
	// Deployed again at once, it answers at once (a name just found
	// missing is not remembered past a deploy).
	s.mustSpry("deploy", "examples/hello.ts", "--name", "hello")
	if r := s.get("/fn/admin/hello?name=Bo"); r.status != 200 || string(r.body) != "Hello, Bo\n" {
		t.Fatalf("redeployed: %d %q", r.status, r.body)
	}
}

// TestFunctionHosts: with --function-domain each function answers at a
// host of its own, the whole path its own, and the URL spry deploy
// prints names that host; the path form stays.
func TestFunctionHosts(t *testing.T) {
	s := startServer(t, "--function-domain", "fn.test")
	_, port, _ := net.SplitHostPort(s.addr)
	out := s.mustSpry("deploy", "examples/hello.ts", "--name", "hello")
	if want := "http://hello.admin.fn.test:" + port; !strings.Contains(out, want) {
		t.Fatalf("deploy printed %q; want the URL %s", out, want)
	}
	s.deployCode(t, "echo", example(t, "echo.js"), "")
	get := func(host, path string) response {
		t.Helper()
		req, err := http.NewRequest("GET", s.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return response{status: res.StatusCode, header: res.Header, body: body}
	}
	if r := get("hello.admin.fn.test:"+port, "/?name=Ada"); r.status != 200 || string(r.body) != "Hello, Ada\n" {
		t.Fatalf("hello at its host: %d %q", r.status, r.body)
	}
	// The API's paths are the function's own there.
	if r := get("Echo.Admin.fn.test", "/api/v1/functions?x=1"); r.status != 200 || !strings.Contains(string(r.body), `"path":"/api/v1/functions"`) {
		t.Fatalf("echo at its host: %d %q", r.status, r.body)
	}
	// A tagged version has a host of its own.
	s.mustSpry("tag", "hello", "canary", "1")
	if r := get("canary.hello.admin.fn.test:"+port, "/?name=Cy"); r.status != 200 || string(r.body) != "Hello, Cy\n" {
		t.Fatalf("hello's tag at its host: %d %q", r.status, r.body)
	}
	if r := get("nope.admin.fn.test", "/"); r.status != 404 || r.errorCode(t) != "not_found" {
		t.Fatalf("no such function: %d %q", r.status, r.body)
	}
	if r := s.get("/fn/admin/hello?name=Bo"); r.status != 200 || string(r.body) != "Hello, Bo\n" {
		t.Fatalf("path form: %d %q", r.status, r.body)
	}
}

// TestExamples deploys every example through the CLI and the raw API and
// checks each answers as documented.
func TestExamples(t *testing.T) {
	s := startServer(t)
	s.mustSpry("deploy", "examples/api.ts")
	s.mustSpry("deploy", "examples/env.ts", "--env", "GREETING=Howdy", "--env", "TARGET=partner")
	if r := s.putCode(s.token, "echo", example(t, "echo.js"), "filename=echo.js"); r.status != 201 {
		t.Fatalf("raw PUT: %d %s", r.status, r.body)
	} else {
		m := r.json(t)
		for _, k := range []string{"name", "owner", "version", "url"} {
			if _, ok := m[k]; !ok {
				t.Errorf("deploy response lacks %q: %s", k, r.body)
			}
		}
	}

	t.Run("counter keeps its counts in ctx.kv", func(t *testing.T) {
		s.mustSpry("deploy", "examples/counter.ts")
		for _, want := range []string{"home: 1 visit\n", "home: 2 visits\n"} {
			if r := s.get("/fn/admin/counter/home"); r.status != 200 || string(r.body) != want {
				t.Fatalf("%d %q, want %q", r.status, r.body, want)
			}
		}
		s.get("/fn/admin/counter/about")
		if r := s.get("/fn/admin/counter/all"); r.status != 200 || string(r.body) != `{"about":1,"home":2}` {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if got := s.mustSpry("kv", "ls", "counter"); got != "visits/about\t1\nvisits/home\t2\n" {
			t.Fatalf("spry kv ls counter: %q", got)
		}
	})

	t.Run("json api routes on the sub-path", func(t *testing.T) {
		r := s.get("/fn/admin/api/users/2")
		if r.status != 200 || r.json(t)["name"] != "Grace" {
			t.Fatalf("%d %s", r.status, r.body)
		}
		r = s.do("POST", "/fn/admin/api/users", "", strings.NewReader(`{"name":"Linus"}`), map[string]string{"Content-Type": "application/json"})
		if r.status != 201 || r.json(t)["id"] != float64(3) {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if r := s.get("/fn/admin/api/nope"); r.status != 404 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	})

	t.Run("env", func(t *testing.T) {
		r := s.get("/fn/admin/env")
		if r.status != 200 || !strings.HasPrefix(string(r.body), "Howdy, partner! (from env, request ") {
			t.Fatalf("%d %q", r.status, r.body)
		}
		if id := r.header.Get("Spry-Request-Id"); !strings.Contains(string(r.body), id) {
			t.Fatalf("ctx.requestId is not the request id %s: %q", id, r.body)
		}
	})

	t.Run("echo gets method, path, query, headers and body", func(t *testing.T) {
		for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
			var body io.Reader
			if method != "GET" {
				body = strings.NewReader("payload-" + method)
			}
			r := s.do(method, "/fn/admin/echo/rest/of/path?q=1&r=a%20b", "", body, map[string]string{"X-Custom": "v1"})
			if r.status != 200 {
				t.Fatalf("%s: %d %s", method, r.status, r.body)
			}
			var e struct {
				Method  string            `json:"method"`
				Path    string            `json:"path"`
				Query   string            `json:"query"`
				Headers map[string]string `json:"headers"`
				Body    string            `json:"body"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil {
				t.Fatal(err)
			}
			if e.Method != method || e.Path != "/rest/of/path" || e.Query != "?q=1&r=a%20b" || e.Headers["x-custom"] != "v1" {
				t.Fatalf("%s: echo = %+v", method, e)
			}
			if method != "GET" && e.Body != "payload-"+method {
				t.Fatalf("%s: body = %q", method, e.Body)
			}
			if r.header.Get("X-Echo") != "yes" {
				t.Fatalf("%s: the function's header did not come back", method)
			}
		}
		if r := s.do("HEAD", "/fn/admin/echo/", "", nil, nil); r.status != 200 {
			t.Fatalf("HEAD: %d", r.status)
		}
	})

	t.Run("large bodies stream through both ways", func(t *testing.T) {
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		sum := sha256.Sum256(big)
		r := s.do("POST", "/fn/admin/echo/", "", bytes.NewReader(big), nil)
		m := r.json(t)
		if m["bodySize"] != float64(len(big)) || m["bodySha256"] != hex.EncodeToString(sum[:]) {
			t.Fatalf("echo saw %v bytes, sha %v", m["bodySize"], m["bodySha256"])
		}
	})

	t.Run("invoke through the CLI with a body", func(t *testing.T) {
		out := s.mustSpry("invoke", "echo", "--path", "/x?y=1", "-d", "hi", "-H", "X-A: b")
		if !strings.Contains(out, `"method":"POST"`) || !strings.Contains(out, `"body":"hi"`) || !strings.Contains(out, `"x-a":"b"`) {
			t.Fatalf("invoke printed %s", out)
		}
	})
}

// TestUsersAndNamespaces: the admin creates alice; alice's functions live
// under /fn/alice; users see and change only their own functions.
func TestUsersAndNamespaces(t *testing.T) {
	s := startServer(t)
	s.mustSpry("deploy", "examples/hello.ts", "--name", "hello")
	alice := strings.TrimSpace(s.mustSpry("user", "create", "alice"))
	if !strings.HasPrefix(alice, "spry_") {
		t.Fatalf("user create printed %q, want a token", alice)
	}
	bob := strings.TrimSpace(s.mustSpry("user", "create", "bob"))

	if out, errOut, code := s.spry(alice, "deploy", "examples/hello.ts"); code != 0 {
		t.Fatalf("alice deploy: %d %s %s", code, out, errOut)
	}
	if r := s.get("/fn/alice/hello?name=Alice"); r.status != 200 || string(r.body) != "Hello, Alice\n" {
		t.Fatalf("alice's function: %d %q", r.status, r.body)
	}
	// Alice's list holds only her function; the admin's holds both.
	if out, _, _ := s.spry(alice, "ls"); strings.Contains(out, "admin/") || !strings.Contains(out, "alice/hello") {
		t.Fatalf("alice's ls:\n%s", out)
	}
	if out := s.mustSpry("ls"); !strings.Contains(out, "admin/hello") || !strings.Contains(out, "alice/hello") {
		t.Fatalf("admin's ls:\n%s", out)
	}
	// Bob can neither see, change nor delete alice's function.
	for _, tc := range []struct{ method, path string }{
		{"GET", "/api/v1/functions/hello?owner=alice"},
		{"DELETE", "/api/v1/functions/hello?owner=alice"},
		{"GET", "/api/v1/functions?owner=alice"},
	} {
		if r := s.do(tc.method, tc.path, bob, nil, nil); r.status != 403 || r.errorCode(t) != "permission_denied" {
			t.Errorf("bob %s %s: %d %s", tc.method, tc.path, r.status, r.body)
		}
	}
	if r := s.putCode(bob, "hello", []byte(`export default () => new Response("pwned")`), "owner=alice"); r.status != 403 {
		t.Errorf("bob deploying into alice's namespace: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/alice/hello?name=Alice"); string(r.body) != "Hello, Alice\n" {
		t.Fatalf("alice's function changed: %q", r.body)
	}
	// Only the admin manages users.
	if _, _, code := s.spry(alice, "user", "create", "mallory"); code == 0 {
		t.Error("a non-admin created a user")
	}
	if r := s.do("GET", "/api/v1/users", alice, nil, nil); r.status != 403 {
		t.Errorf("alice listing users: %d", r.status)
	}
	// The admin manages everyone's functions.
	if r := s.do("GET", "/api/v1/functions/hello?owner=alice", s.token, nil, nil); r.status != 200 {
		t.Errorf("admin get alice's function: %d %s", r.status, r.body)
	}
	// Tokens are stored hashed: no token's text is in the database.
	db, err := os.ReadFile(filepath.Join(s.data, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	wal, _ := os.ReadFile(filepath.Join(s.data, "spry.db-wal"))
	for _, tok := range []string{s.token, alice, bob} {
		// "spry_<16 hex id>_<secret>": the secret is base64url and may
		// itself hold "_", so cut at the first separator after the id.
		_, secret, ok := strings.Cut(strings.TrimPrefix(tok, "spry_"), "_")
		if !ok || len(secret) != 43 {
			t.Fatalf("token %q is not spry_<id>_<secret>", tok)
		}
		if bytes.Contains(db, []byte(secret)) || bytes.Contains(wal, []byte(secret)) {
			t.Fatal("a token's secret is stored in the clear")
		}
	}
	// Deleting a user takes their functions with them.
	s.mustSpry("user", "rm", "alice")
	if r := s.get("/fn/alice/hello"); r.status != 404 {
		t.Fatalf("deleted user's function still answers: %d", r.status)
	}
	if r := s.do("GET", "/api/v1/whoami", alice, nil, nil); r.status != 401 {
		t.Fatalf("deleted user's token still works: %d", r.status)
	}
}

// TestBadInput: every bad request gets a clear 4xx JSON error and changes
// nothing that is stored.
func TestBadInput(t *testing.T) {
	s := startServer(t, "--max-code-size", "65536", "--max-body-size", "1048576")
	if r := s.putCode(s.token, "hello", example(t, "hello.ts"), ""); r.status != 201 {
		t.Fatalf("deploy: %d %s", r.status, r.body)
	}
	stable := func(t *testing.T) {
		t.Helper()
		r := s.do("GET", "/api/v1/functions/hello", s.token, nil, nil)
		if r.status != 200 || r.json(t)["version"] != float64(1) {
			t.Fatalf("stored function changed: %d %s", r.status, r.body)
		}
		if r := s.get("/fn/admin/hello?name=Ada"); string(r.body) != "Hello, Ada\n" {
			t.Fatalf("function no longer serves: %d %q", r.status, r.body)
		}
	}
	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     []byte
		ctype    string
		status   int
		code     string
		contains string
	}{
		{"no token", "GET", "/api/v1/functions", "-", nil, "", 401, "unauthenticated", "token"},
		{"wrong token", "GET", "/api/v1/functions", "spry_0123456789abcdef_" + strings.Repeat("A", 43), nil, "", 401, "unauthenticated", "token"},
		{"garbage token", "PUT", "/api/v1/functions/hello", "hunter2", []byte("x"), "", 401, "unauthenticated", ""},
		{"unknown function", "GET", "/api/v1/functions/nope", "", nil, "", 404, "not_found", "nope"},
		{"unknown function url", "GET", "/fn/admin/nope", "-", nil, "", 404, "not_found", "admin/nope"},
		{"unknown owner url", "GET", "/fn/nobody/hello", "-", nil, "", 404, "not_found", ""},
		{"uppercase name", "PUT", "/api/v1/functions/Hello", "", []byte("export default () => new Response()"), "", 400, "invalid_argument", "name"},
		{"underscore name", "PUT", "/api/v1/functions/he_llo", "", []byte("export default () => new Response()"), "", 400, "invalid_argument", "name"},
		{"long name", "PUT", "/api/v1/functions/" + strings.Repeat("a", 64), "", []byte("export default () => new Response()"), "", 400, "invalid_argument", "63"},
		{"empty code", "PUT", "/api/v1/functions/hello", "", nil, "", 400, "invalid_argument", "empty"},
		{"whitespace code", "PUT", "/api/v1/functions/hello", "", []byte("  \n\t "), "", 400, "invalid_argument", "empty"},
		{"oversized code", "PUT", "/api/v1/functions/hello", "", bytes.Repeat([]byte("// pad\n"), 20000), "", 413, "too_large", "limit"},
		{"non-utf8 code", "PUT", "/api/v1/functions/hello", "", []byte("export default () => new Response('\xff\xfe')"), "", 400, "invalid_argument", "UTF-8"},
		{"non-utf8 json", "PUT", "/api/v1/functions/hello", "", []byte("{\"code\":\"\xff\"}"), "application/json", 400, "invalid_argument", "UTF-8"},
		{"syntax error", "PUT", "/api/v1/functions/hello", "", []byte("export default {\n  fetch() { return new Response(\"x\" }\n};\n"), "", 400, "invalid_argument", ":2:"},
		{"no default export", "PUT", "/api/v1/functions/hello", "", []byte("export const x = 1;"), "", 400, "invalid_argument", "default export"},
		{"bad json", "PUT", "/api/v1/functions/hello", "", []byte(`{"code":`), "application/json", 400, "invalid_argument", "JSON"},
		{"unknown runtime", "PUT", "/api/v1/functions/hello?runtime=cobol", "", []byte("export default () => new Response()"), "", 400, "invalid_argument", "runtime"},
		{"wrong method", "POST", "/api/v1/functions/hello", "", []byte("x"), "", 405, "method_not_allowed", "PUT"},
		{"wrong method on list", "DELETE", "/api/v1/functions", "", nil, "", 405, "method_not_allowed", ""},
		{"unknown endpoint", "GET", "/api/v1/nope", "", nil, "", 404, "not_found", ""},
		{"empty path segment", "GET", "/api/v1//functions", "", nil, "", 404, "not_found", "segments"},
		{"dot-dot path", "GET", "/api/v1/functions/x/../hello", "", nil, "", 404, "not_found", "segments"},
		{"json in capitals", "PUT", "/api/v1/functions/hello", "", []byte(`{"code":`), "Application/JSON; charset=utf-8", 400, "invalid_argument", "JSON"},
		{"list for a bad owner", "GET", "/api/v1/functions?owner=Not%20Valid", "", nil, "", 400, "invalid_argument", "name"},
		{"control characters in a token name", "POST", "/api/v1/tokens", "", []byte(`{"name":"a\u001b[31mb"}`), "application/json", 400, "invalid_argument", "control"},
		{"trailing json", "PUT", "/api/v1/functions/hello", "", []byte(`{"code":"export default () => new Response()"} x`), "application/json", 400, "invalid_argument", "more than one value"},
		{"NUL in env", "PUT", "/api/v1/functions/hello", "", []byte(`{"code":"export default () => new Response()","env":{"A":"x\u0000y"}}`), "application/json", 400, "invalid_argument", "NUL"},
		{"rollback to version 0", "POST", "/api/v1/functions/hello/rollback", "", []byte(`{"version":0}`), "application/json", 400, "invalid_argument", "positive"},
		{"bad env name", "PUT", "/api/v1/functions/hello", "", []byte(`{"code":"export default () => new Response()","env":{"1BAD":"x"}}`), "application/json", 400, "invalid_argument", "environment"},
		{"bad user name", "POST", "/api/v1/users", "", []byte(`{"name":"Not Valid"}`), "application/json", 400, "invalid_argument", "name"},
		{"unknown json field", "POST", "/api/v1/users", "", []byte(`{"name":"x","role":"god"}`), "application/json", 400, "invalid_argument", "unknown field"},
		{"oversized invocation body", "POST", "/fn/admin/hello", "-", bytes.Repeat([]byte("x"), 1<<20+1), "", 413, "too_large", "limit"},
		{"no internal endpoints", "GET", "/debug/pprof/", "-", nil, "", 404, "not_found", ""},
		{"no internal api", "GET", "/internal/pool", "-", nil, "", 404, "not_found", ""},
		{"huge header", "GET", "/api/v1/functions", "", nil, "", 431, "", ""},
		{"deploy for missing owner", "PUT", "/api/v1/functions/hello?owner=ghost", "", []byte("export default () => new Response()"), "", 404, "not_found", "ghost"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.token
			switch tok {
			case "":
				tok = s.token
			case "-":
				tok = ""
			}
			hdr := map[string]string{}
			if tt.ctype != "" {
				hdr["Content-Type"] = tt.ctype
			}
			var body io.Reader
			if tt.body != nil {
				body = bytes.NewReader(tt.body)
			}
			if tt.name == "huge header" {
				hdr["X-Big"] = strings.Repeat("h", 128<<10)
			}
			r := s.do(tt.method, tt.path, tok, body, hdr)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			if tt.code == "" {
				stable(t)
				return
			}
			if code := r.errorCode(t); code != tt.code {
				t.Fatalf("code %q, want %q", code, tt.code)
			}
			if !strings.Contains(string(r.body), tt.contains) {
				t.Fatalf("message lacks %q: %s", tt.contains, r.body)
			}
			stable(t)
		})
	}
	t.Run("syntax error names line and column", func(t *testing.T) {
		r := s.putCode(s.token, "hello", []byte("export default {\n  fetch() { return new Response(\"x\" }\n};\n"), "filename=hello.ts")
		var b struct {
			Error struct{ Message string } `json:"error"`
		}
		_ = json.Unmarshal(r.body, &b)
		if !strings.Contains(b.Error.Message, "hello.ts:2:") {
			t.Fatalf("message %q does not name hello.ts line 2 and a column", b.Error.Message)
		}
	})
	t.Run("the CLI exits non-zero with the message", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.ts")
		_ = os.WriteFile(bad, []byte("export default {"), 0o644)
		_, errOut, code := s.spry("", "deploy", bad, "--name", "hello")
		if code == 0 || !strings.Contains(errOut, "bad.ts:1:") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
		stable(t)
	})
	t.Run("OPTIONS * gets the JSON error", func(t *testing.T) {
		c := s.dial(t)
		defer c.Close()
		fmt.Fprint(c, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 400 || !strings.Contains(string(b), `"code":"invalid_argument"`) {
			t.Fatalf("%d %s", res.StatusCode, b)
		}
	})
}

// TestRestartKeepsServing: functions survive a restart, and a kill -9
// leaves nothing the next start does not clean up.
// TestAPIRootIsNoRedirect: docs/api.md has every error in JSON and no
// path answered with a redirect; GET /api was a 307 to /api/ with an
// HTML body.
func TestAPIRootIsNoRedirect(t *testing.T) {
	s := startServer(t)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, path := range []string{"/api", "/api/"} {
		req, _ := http.NewRequest("GET", s.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 404 || res.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(body), `"not_found"`) {
			t.Errorf("GET %s: %d %s %s, want a JSON 404", path, res.StatusCode, res.Header.Get("Content-Type"), body)
		}
	}
}

func TestRestartKeepsServing(t *testing.T) {
	s := startServer(t)
	s.mustSpry("deploy", "examples/hello.ts")
	s.mustSpry("deploy", "examples/env.ts", "--env", "GREETING=Hi", "--env", "TARGET=there")
	if r := s.get("/fn/admin/hello?name=A"); r.status != 200 {
		t.Fatalf("%d", r.status)
	}
	s.restart()
	if r := s.get("/fn/admin/hello?name=B"); string(r.body) != "Hello, B\n" {
		t.Fatalf("after restart: %d %q", r.status, r.body)
	}
	if r := s.get("/fn/admin/env"); !strings.HasPrefix(string(r.body), "Hi, there!") {
		t.Fatalf("env after restart: %q", r.body)
	}
	// The token from the first start still works.
	s.mustSpry("ls")

	// kill -9: the sandboxes die with the server (their lifeline closes),
	// and whatever a sandbox left (bubblewrap's pid-namespace init can
	// linger) is killed by the next start's sweep of the server's cgroups.
	before := s.sandboxProcs()
	s.kill9()
	s.start()
	eventually(t, 5*time.Second, "the killed server's sandboxes to be gone", func() bool {
		now := strings.Join(s.sandboxProcs(), "\n")
		for _, p := range before {
			if strings.Contains(now, strings.Fields(p)[0]+" "+strings.Fields(p)[1]+" ") {
				return false
			}
		}
		return true
	})
	if r := s.get("/fn/admin/hello?name=C"); string(r.body) != "Hello, C\n" {
		t.Fatalf("after kill -9 and start: %d %q", r.status, r.body)
	}
}

// TestGracefulShutdown: a request in flight when SIGTERM arrives finishes.
func TestGracefulShutdown(t *testing.T) {
	s := startServer(t)
	slow := []byte(`export default { async fetch() { await new Promise((r) => setTimeout(r, 3000)); return new Response("finished"); } }`)
	s.deployCode(t, "slow", slow, "")
	var wg sync.WaitGroup
	var got response
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, err := http.Get(s.url + "/fn/admin/slow")
		if err != nil {
			t.Errorf("in-flight request failed: %v", err)
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got = response{status: res.StatusCode, body: b}
	}()
	// Signal only once the request is inside the function (its instance
	// busy), however long the cold start took on a loaded machine.
	eventually(t, 10*time.Second, "the request inside the function", func() bool {
		return s.metric(t, "spry_instances{", `function="slow"`, `state="busy"`) == 1
	})
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	wg.Wait()
	if got.status != 200 || string(got.body) != "finished" {
		t.Fatalf("in-flight request: %d %q", got.status, got.body)
	}
	<-s.done
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestShutdownDelay: with --shutdown-delay, a SIGTERM makes /readyz
// answer 503 at once while everything else is served as before, on new
// connections too, so that a load balancer or Kubernetes stops sending
// traffic before the listener closes (without it, the probe could only
// see a refused connection, and so could clients still sent there); a
// second signal ends the delay, and the server stops cleanly.
func TestShutdownDelay(t *testing.T) {
	s := startServer(t, "--shutdown-delay", "10m")
	s.deployCode(t, "hello", []byte(`export default { fetch() { return new Response("hi"); } }`), "")
	if r := s.get("/readyz"); r.status != 200 {
		t.Fatalf("readyz before the signal: %d %s", r.status, r.body)
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 10*time.Second, "/readyz to answer 503", func() bool { return s.get("/readyz").status == 503 })
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, p := range []string{"/healthz", "/fn/admin/hello/", "/readyz"} {
		res, err := fresh.Get(s.url + p)
		if err != nil {
			t.Fatalf("%s on a new connection during the delay: %v", p, err)
		}
		res.Body.Close()
		if want := map[bool]int{true: 503, false: 200}[p == "/readyz"]; res.StatusCode != want {
			t.Errorf("%s during the delay: %d, want %d", p, res.StatusCode, want)
		}
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("a second signal did not end the shutdown delay")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestStopLeavesNoCgroups: a server that stops removes its cgroup
// subtree, not only its instances' groups: one data directory per run (as
// here, and in any throwaway setup) would otherwise leave empty groups
// behind for good, thousands a day. While it runs, the subtree is
// bounded by --all-pids, and by --all-memory, which is by default the
// host's memory less --memory-reserve.
func TestStopLeavesNoCgroups(t *testing.T) {
	total := memTotal(t)
	s := startServer(t, "--all-pids", "5000", "--memory-reserve", "500")
	wantMemory := fmt.Sprint((total>>20 - 500) << 20)
	s.deployCode(t, "hello", []byte(`export default { fetch() { return new Response("hi"); } }`), "")
	if r := s.get("/fn/admin/hello/"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	dirs := s.cgroupDirs(t)
	if len(dirs) == 0 {
		t.Skip("the server's cgroups are not where this test looks (a nested cgroup)")
	}
	bounded := 0
	for _, d := range dirs {
		if b, err := os.ReadFile(filepath.Join(d, "pids.max")); err == nil {
			if got := strings.TrimSpace(string(b)); got != "5000" {
				t.Errorf("%s/pids.max is %s, want --all-pids 5000", d, got)
			}
			bounded++
		}
	}
	if bounded != 1 {
		t.Errorf("%d of the server's cgroups %v have a pids.max, want 1", bounded, dirs)
	}
	bounded = 0
	for _, d := range dirs {
		for _, f := range []string{"memory.limit_in_bytes", "memory.max"} {
			if b, err := os.ReadFile(filepath.Join(d, f)); err == nil {
				if got := strings.TrimSpace(string(b)); got != wantMemory {
					t.Errorf("%s/%s is %s, want %s (%d MiB less the reserve's 500)", d, f, got, wantMemory, total>>20)
				}
				bounded++
			}
		}
	}
	if bounded != 1 {
		t.Errorf("%d of the server's cgroups %v have a memory limit, want 1", bounded, dirs)
	}
	s.stop()
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s is left behind", d)
		}
	}
}

// TestCrashAndScaleToZero: a crashing instance gets a 502 JSON error and is
// replaced; idle functions scale to zero and come back on the next call.
func TestCrashAndScaleToZero(t *testing.T) {
	// No warm pool, so every sandbox process belongs to the function.
	s := startServer(t, "--scale-to-zero-after", "1s", "--autoscale-window", "2s", "--pool-size", "0", "--node-pool-size", "0")
	crash := []byte(`export default { fetch(req) {
		if (new URL(req.url).pathname === "/crash") Deno.exit(7);
		return new Response("alive");
	} }`)
	s.deployCode(t, "crashy", crash, "")
	if r := s.get("/fn/admin/crashy/"); string(r.body) != "alive" {
		t.Fatalf("%d %q", r.status, r.body)
	}
	r := s.get("/fn/admin/crashy/crash")
	if r.status != 502 {
		t.Fatalf("crash: %d %s", r.status, r.body)
	}
	if code := r.errorCode(t); code != "function_failed" {
		t.Fatalf("crash code %q", code)
	}
	if r := s.get("/fn/admin/crashy/"); string(r.body) != "alive" {
		t.Fatalf("after crash: %d %q", r.status, r.body)
	}
	if r := s.get("/healthz"); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	state := func() string {
		r := s.do("GET", "/api/v1/functions/crashy", s.token, nil, nil)
		return fmt.Sprint(r.json(t)["state"])
	}
	if st := state(); st != "running" {
		t.Fatalf("state %q right after a call", st)
	}
	eventually(t, 10*time.Second, "scale to zero", func() bool { return state() == "idle" })
	eventually(t, 5*time.Second, "the idle instance's process to end", func() bool { return len(s.sandboxProcs()) == 0 })
	if r := s.get("/fn/admin/crashy/"); string(r.body) != "alive" {
		t.Fatalf("after scale to zero: %d %q", r.status, r.body)
	}
}

// TestInvokePlatformErrors: `spry invoke` of a function that outlives
// its timeout (504) or ends its runtime mid-request (502) prints the
// platform's JSON error and fails (exit 6, the error on stderr); it
// exited 0. A function's own 5xx, even in the platform's words, exits 0.
func TestInvokePlatformErrors(t *testing.T) {
	s := startServer(t)
	file := filepath.Join(t.TempDir(), "moody.ts")
	code := `export default { async fetch(req) {
		const p = new URL(req.url).pathname;
		if (p === "/slow") await new Promise((r) => setTimeout(r, 10000));
		if (p === "/crash") Deno.exit(7);
		if (p === "/mine") return Response.json({ error: { code: "timeout", message: "upstream" } }, { status: 504 });
		return new Response("ok");
	} }`
	if err := os.WriteFile(file, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", file, "--timeout", "3s")
	// In this order: the first call's cold start is not in the timeout's
	// way, and the crash comes last.
	for _, tt := range []struct {
		path   string
		exit   int
		code   string // the error code in the body printed
		stderr string
	}{
		{"/", 0, "", ""},
		{"/slow", 6, "timeout", "did not respond within its 3s timeout"},
		{"/mine", 0, "timeout", ""},
		{"/crash", 6, "function_failed", "ended while handling the request"},
	} {
		out, stderr, exit := s.spry("", "invoke", "moody", "--path", tt.path)
		var body struct{ Error struct{ Code string } }
		_ = json.Unmarshal([]byte(out), &body)
		if exit != tt.exit || body.Error.Code != tt.code || (tt.stderr == "") != (stderr == "") || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("invoke %s: exit %d, stdout %q, stderr %q; want exit %d, code %q, stderr with %q", tt.path, exit, out, stderr, tt.exit, tt.code, tt.stderr)
		}
	}
}

// TestListPages: the function list comes in pages (100 by default, at
// most 1000) joined by cursors, and `spry ls` walks them all.
func TestListPages(t *testing.T) {
	// More functions than one user may have by default.
	s := startServer(t, "--max-functions-per-user", "0")
	const n = 1005
	code := []byte(`export default { fetch() { return new Response("x"); } };`)
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if r := s.putCode(s.token, fmt.Sprintf("f%04d", i), code, ""); r.status != 201 {
					errs <- fmt.Sprintf("deploy f%04d: %d %s", i, r.status, r.body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	type page struct {
		Functions []struct{ Name string } `json:"functions"`
		Next      string                  `json:"next"`
	}
	get := func(q string) page {
		t.Helper()
		r := s.do("GET", "/api/v1/functions"+q, s.token, nil, nil)
		if r.status != 200 {
			t.Fatalf("GET %s: %d %s", q, r.status, r.body)
		}
		var p page
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := get(""); len(p.Functions) != 100 || p.Next == "" || p.Functions[0].Name != "f0000" {
		t.Fatalf("first default page: %d functions, next %q", len(p.Functions), p.Next)
	}
	var seen []string
	for q := "?limit=400"; ; {
		p := get(q)
		for _, f := range p.Functions {
			seen = append(seen, f.Name)
		}
		if p.Next == "" {
			break
		}
		q = "?limit=400&after=" + url.QueryEscape(p.Next)
	}
	if len(seen) != n || seen[n-1] != fmt.Sprintf("f%04d", n-1) || !slices.IsSorted(seen) {
		t.Fatalf("walked %d functions (want %d, in order)", len(seen), n)
	}
	for _, q := range []string{"?limit=0", "?limit=1001", "?after=nonsense"} {
		if r := s.do("GET", "/api/v1/functions"+q, s.token, nil, nil); r.status != 400 || r.errorCode(t) != "invalid_argument" {
			t.Errorf("GET %s: %d %s", q, r.status, r.body)
		}
	}
	out := s.mustSpry("ls")
	if got := strings.Count(out, "\nadmin/f"); got != n {
		t.Fatalf("spry ls shows %d functions, want %d", got, n)
	}
}

// TestBundleSizeLimit: a deploy whose bundle (code and dependencies) is
// over --max-bundle-size is refused with 413, and nothing is stored.
func TestBundleSizeLimit(t *testing.T) {
	s := startServer(t, "--max-bundle-size", "4000")
	small := []byte(`export default { fetch() { return new Response("small"); } }`)
	if r := s.putCode(s.token, "sized", small, ""); r.status != 201 {
		t.Fatalf("a small bundle: %d %s", r.status, r.body)
	}
	big := []byte(`const pad = "` + strings.Repeat("x", 5000) + `";
export default { fetch() { return new Response(pad); } }`)
	r := s.putCode(s.token, "sized", big, "")
	if r.status != 413 || r.errorCode(t) != "too_large" || !strings.Contains(string(r.body), "bundle") {
		t.Fatalf("a bundle over the limit: %d %s", r.status, r.body)
	}
	if got := s.get("/fn/admin/sized/"); string(got.body) != "small" {
		t.Fatalf("after the refused deploy: %q", got.body)
	}
}

// TestListenFailureLeavesNothing: a server that cannot bind its address,
// or its --debug-listen address, exits with an error, and takes down what
// it started before trying (the warm pool, its run directory and
// cgroups) rather than leave them to a next start on the same data dir
// that may never come.
func TestListenFailureLeavesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	deno, err := runtime.FindDeno("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, flag string }{
		{"listen", "--listen"},
		{"debug listen", "--debug-listen"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			uidBase := 3000000 + int(uidBases.Add(1))*20000
			// A server that starts anyway is stopped, and fails the test.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary(t), "serve", "--listen", "127.0.0.1:0", tt.flag, busy.Addr().String(),
				"--data", data, "--deno", deno, "--uid-base", strconv.Itoa(uidBase), "--pool-size", "2")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "address already in use") {
				t.Fatalf("spry serve %s on a busy address: %v\n%s", tt.flag, err, out)
			}
			sum := sha256.Sum256([]byte(data))
			id := hex.EncodeToString(sum[:6])
			left, _ := filepath.Glob("/sys/fs/cgroup/*/spry/" + id)
			left = append(left, "/run/spry/"+id, "/sys/fs/cgroup/spry/"+id)
			for _, p := range left {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s is left behind", p)
				}
			}
			if procs := liveProcs(func(uid int, _ string) bool { return uid >= uidBase && uid < uidBase+10000 }); len(procs) > 0 {
				t.Errorf("processes left behind:\n%s", strings.Join(procs, "\n"))
			}
		})
	}
}
