package cli

import (
	"net/http"
	"strings"
	"testing"
)

// `spry invoke` of a function that does not exist (a typo, another
// user's name for it) exits 4 with one line on stderr, as every other
// command does. It printed the router's JSON error on stdout and exited
// 0, so a script took the error for the function's answer. A function's
// own answer, whatever its status, is still printed (exit 0; 22 with
// --fail).
func TestInvokeMissingFunction(t *testing.T) {
	url, admin := apiServerWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Where spry serve's router would run the function.
		if r.URL.Path != "/fn/admin/hello/" {
			t.Errorf("invoked %s", r.URL.Path)
		}
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("the function's own 404"))
	}))
	file := helloFile(t, "hello.ts")
	as, _ := cliAt(t, url)
	if code, _, stderr := as(admin, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d: %s", code, stderr)
	}
	code, bob, stderr := as(admin, "user", "create", "bob")
	if code != 0 {
		t.Fatalf("user create: exit %d: %s", code, stderr)
	}
	bob = strings.TrimSpace(bob)
	for _, tt := range []struct {
		token string
		args  []string
		want  int
		out   string
	}{
		{admin, []string{"invoke", "nope"}, 4, ""},
		{admin, []string{"invoke", "nope", "--owner", "admin"}, 4, ""},
		{admin, []string{"invoke", "hello", "--owner", "bob"}, 4, ""},
		{admin, []string{"invoke", "admin/hello"}, 2, ""}, // as `spry ls` names it
		{bob, []string{"invoke", "hello"}, 4, ""},         // bob has none
		// The function's own answer, found through the caller's owner, an
		// admin's --owner, or another user's (who may invoke it but not
		// read it through the API).
		{admin, []string{"invoke", "hello"}, 0, "the function's own 404"},
		{admin, []string{"invoke", "hello", "--owner", "admin"}, 0, "the function's own 404"},
		{bob, []string{"invoke", "hello", "--owner", "admin"}, 0, "the function's own 404"},
		{bob, []string{"invoke", "hello", "--owner", "admin", "--fail"}, 22, "the function's own 404"},
	} {
		code, stdout, stderr := as(tt.token, tt.args...)
		if code != tt.want || stdout != tt.out {
			t.Errorf("spry %s: exit %d, stdout %q; want %d, %q (stderr %q)", strings.Join(tt.args, " "), code, stdout, tt.want, tt.out, stderr)
		}
		if tt.want != 0 && strings.Count(stderr, "\n") != 1 {
			t.Errorf("spry %s: stderr %q, want one line", strings.Join(tt.args, " "), stderr)
		}
	}
}

// An answer the platform gave instead of the function (marked by the
// router's Spry-Error header: the function timed out, its instance
// crashed, its queue is full) is printed as any answer is, and the
// command fails with its class's exit code: it exited 0, so a script took
// a timeout for the function's answer. A function's own 5xx, however it
// looks, still exits 0 (22 with --fail).
func TestInvokePlatformErrorFails(t *testing.T) {
	timeout := `{"error":{"code":"timeout","message":"the function did not respond within its 2s timeout"}}` + "\n"
	crashed := `{"error":{"code":"function_failed","message":"the function's instance ended while handling the request: exit status 7"}}` + "\n"
	threw := `{"error":{"code":"function_error","message":"the function threw an uncaught exception; see its logs"}}`
	url, admin := apiServerWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Where spry serve's router would answer.
		answer := func(status int, code, body string) {
			if code != "" {
				w.Header().Set("Spry-Error", code)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
		switch r.URL.Path {
		case "/fn/admin/hello/timeout":
			answer(504, "timeout", timeout)
		case "/fn/admin/hello/crash":
			answer(502, "function_failed", crashed)
		case "/fn/admin/hello/full":
			answer(503, "unavailable", `{"error":{"code":"unavailable","message":"the function is at its maximum scale and its queue is full; retry later"}}`)
		case "/fn/admin/hello/throw":
			answer(500, "function_error", threw)
		case "/fn/admin/hello/frob":
			answer(501, "not_implemented", `{"error":{"code":"not_implemented","message":"Node.js serves only the request methods it knows"}}`)
		case "/fn/admin/hello/mine":
			answer(504, "", timeout) // the function's own, in the platform's words
		case "/fn/admin/hello/head":
			answer(504, "timeout", "")
		}
	}))
	file := helloFile(t, "hello.ts")
	if code, _, stderr := spry(t, nil, "", "deploy", file, "--url", url, "--token", admin); code != 0 {
		t.Fatalf("deploy: exit %d: %s", code, stderr)
	}
	for _, tt := range []struct {
		args   []string
		want   int
		out    string
		stderr string
	}{
		{[]string{"--path", "/timeout"}, 6, timeout, "error: the function did not respond within its 2s timeout\n"},
		{[]string{"--path", "/crash"}, 6, crashed, "error: the function's instance ended while handling the request: exit status 7\n"},
		{[]string{"--path", "/crash", "--fail"}, 6, crashed, "error: the function's instance ended while handling the request: exit status 7\n"},
		{[]string{"--path", "/full"}, 6, `{"error":{"code":"unavailable","message":"the function is at its maximum scale and its queue is full; retry later"}}`, "error: the function is at its maximum scale and its queue is full; retry later\n"},
		{[]string{"--path", "/head", "-X", "HEAD"}, 6, "", "error: the platform answered 504 Gateway Timeout (timeout)\n"},
		{[]string{"--path", "/throw"}, 6, threw, "error: the function threw an uncaught exception; see its logs\n"},
		{[]string{"--path", "/frob", "-X", "FROB"}, 2, `{"error":{"code":"not_implemented","message":"Node.js serves only the request methods it knows"}}`, "error: Node.js serves only the request methods it knows\n"},
		{[]string{"--path", "/mine"}, 0, timeout, ""},
		{[]string{"--path", "/mine", "--fail"}, 22, timeout, "function answered 504 Gateway Timeout\n"},
	} {
		args := append([]string{"invoke", "hello", "--url", url, "--token", admin}, tt.args...)
		code, stdout, stderr := spry(t, nil, "", args...)
		if code != tt.want || stdout != tt.out || stderr != tt.stderr {
			t.Errorf("spry %s: exit %d, stdout %q, stderr %q; want %d, %q, %q", strings.Join(tt.args, " "), code, stdout, stderr, tt.want, tt.out, tt.stderr)
		}
	}
}

// A method, path or header that is not one, or a body that cannot be
// read, is bad input (exit 2) said in one line naming the flag, and
// nothing reaches the function. Go's client refused them after the
// command had asked the API for the function: an invalid method or path
// as a parse error (exit 1), a header as a server that cannot be reached
// (exit 6), and so was a -d @FILE that is a directory.
func TestInvokeBadRequestExits2(t *testing.T) {
	url, admin := apiServerWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("invoked %s %s", r.Method, r.URL)
	}))
	file := helloFile(t, "hello.ts")
	as, _ := cliAt(t, url)
	if code, _, stderr := as(admin, "deploy", file); code != 0 {
		t.Fatalf("deploy: exit %d: %s", code, stderr)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-X", "BAD METHOD"}, `--method "BAD METHOD"`},
		{[]string{"-X", "GET\r\nX: y"}, `--method`},
		{[]string{"--path", "/%zz"}, `--path "/%zz": invalid URL escape "%zz"`},
		{[]string{"-H", "Bad Name: v"}, `--header "Bad Name: v": "Bad Name" is not a header name`},
		{[]string{"-H", ": v"}, `--header ": v"`},
		{[]string{"-H", "X-A: a\nb"}, `--header "X-A: a\nb": a value may not hold control characters`},
		{[]string{"-d", "@" + t.TempDir()}, `--data @`},
	} {
		code, stdout, stderr := as(admin, append([]string{"invoke", "hello"}, tt.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("spry invoke hello %q: exit %d, stdout %q, stderr %q; want 2 and one line saying %q", tt.args, code, stdout, stderr, tt.want)
		}
	}
}

// `spry invoke NAME@TAG` (or @VERSION) calls that version at the URL the
// router gives it, as /fn/OWNER/NAME@TAG/ does; it was refused as an
// invalid name.
func TestInvokePinnedVersion(t *testing.T) {
	var got []string
	url, admin := apiServerWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.URL.Path)
		_, _ = w.Write([]byte("ok"))
	}))
	as, _ := cliAt(t, url)
	if code, _, stderr := as(admin, "deploy", helloFile(t, "hello.ts")); code != 0 {
		t.Fatalf("deploy: exit %d: %s", code, stderr)
	}
	for _, tt := range []struct {
		args []string
		code int
		path string
	}{
		{[]string{"invoke", "hello@canary"}, 0, "/fn/admin/hello@canary/"},
		{[]string{"invoke", "hello@2", "--path", "/x?y=1"}, 0, "/fn/admin/hello@2/x"},
		{[]string{"invoke", "nope@canary"}, 4, ""},
		{[]string{"invoke", "hello@"}, 2, ""},
		{[]string{"invoke", "hello@Bad"}, 2, ""},
		{[]string{"invoke", "hello@canary", "--async"}, 2, ""},
		{[]string{"invoke", "hello@canary", "--scheduled"}, 2, ""},
	} {
		got = nil
		code, _, stderr := as(admin, tt.args...)
		path := ""
		if len(got) > 0 {
			path = got[0]
		}
		if code != tt.code || path != tt.path {
			t.Errorf("spry %s: exit %d, called %q; want %d, %q (stderr %q)", strings.Join(tt.args, " "), code, path, tt.code, tt.path, stderr)
		}
	}
}
