package cli

import (
	"net/http"
	"os"
	"path/filepath"
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
	dir := t.TempDir()
	file := filepath.Join(dir, "hello.ts")
	if err := os.WriteFile(file, []byte(`export default { fetch() { return new Response("hi") } }`), 0o644); err != nil {
		t.Fatal(err)
	}
	as := func(token string, args ...string) (int, string, string) {
		return spry(t, nil, "", append(args, "--url", url, "--token", token)...)
	}
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
