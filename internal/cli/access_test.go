package cli

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/client"
)

// spry deploy --access and spry config --access set who may call a
// function, each a new version shown by ls and versions (and --json); a
// wrong value is bad input (exit 2) and changes nothing; a token of scope
// invoke can be made.
func TestAccessFlag(t *testing.T) {
	url, admin := apiServer(t)
	run, must := cliAt(t, url)
	file := helloFile(t, "hook.ts")
	must(admin, "deploy", file, "--access", "private")
	access := func() string {
		t.Helper()
		var fns []api.FunctionView
		if err := json.Unmarshal([]byte(must(admin, "ls", "--json")), &fns); err != nil || len(fns) != 1 {
			t.Fatalf("ls --json: %v %+v", err, fns)
		}
		return fns[0].Access
	}
	if a := access(); a != "private" {
		t.Fatalf("deployed with --access private: %s", a)
	}
	if out := must(admin, "config", "hook", "--access", "public"); !strings.Contains(out, "is now version 2") {
		t.Fatalf("config --access public: %q", out)
	}
	if a := access(); a != "public" {
		t.Fatalf("after config --access public: %s", a)
	}
	if code, _, stderr := run(admin, "config", "hook", "--access", "internal"); code != 2 || !strings.Contains(stderr, "want public or private") {
		t.Fatalf("config --access internal: exit %d, %s", code, stderr)
	}
	var vs []api.VersionView
	if err := json.Unmarshal([]byte(must(admin, "versions", "hook", "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 || vs[0].Access != "public" || vs[1].Access != "private" {
		t.Fatalf("versions --json: %+v", vs)
	}
	// The tables show it too.
	if out := must(admin, "ls"); !strings.Contains(out, "ACCESS") || !strings.Contains(out, " public ") {
		t.Fatalf("ls: %q", out)
	}
	if out := must(admin, "versions", "hook"); !strings.Contains(out, "ACCESS") || !strings.Contains(out, " private ") || !strings.Contains(out, " public ") {
		t.Fatalf("versions: %q", out)
	}

	svc := strings.TrimSpace(must(admin, "token", "create", "svc", "--scope", "invoke"))
	var who client.Whoami
	if err := json.Unmarshal([]byte(must(svc, "whoami", "--json")), &who); err != nil || strings.Join(who.Scopes, ",") != "invoke" {
		t.Fatalf("whoami of an invoke token: %+v %v", who, err)
	}
	if code, _, _ := run(svc, "ls"); code == 0 {
		t.Fatal("an invoke token listed functions")
	}
}

// spry invoke sends the caller's token to a private function (the router
// checks it, and takes it out), and never to a public one, which would
// see it.
func TestInvokePrivateSendsTheToken(t *testing.T) {
	var got []string
	url, admin := apiServerWith(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Where spry serve's router would run the function.
		got = append(got, r.Header.Get("Authorization"))
	}))
	_, must := cliAt(t, url)
	must(admin, "deploy", helloFile(t, "open.ts"))
	must(admin, "deploy", helloFile(t, "hook.ts"), "--access", "private")
	must(admin, "invoke", "open")
	must(admin, "invoke", "hook")
	must(admin, "invoke", "hook", "-H", "Authorization: Bearer mine")
	want := []string{"", "Bearer " + admin, "Bearer mine"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("the functions were sent Authorization %q, want %q", got, want)
	}
}

// A change that changes nothing makes no version, and the CLI says so
// rather than "is now version N".
func TestUnchangedConfig(t *testing.T) {
	url, admin := apiServer(t)
	_, must := cliAt(t, url)
	must(admin, "deploy", helloFile(t, "same.ts"), "--env", "A=1", "--access", "public")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"config", "same", "--access", "public"}, "admin/same unchanged: still version 1"},
		{[]string{"env", "set", "same", "A=1"}, "admin/same unchanged: still version 1"},
		{[]string{"env", "unset", "same", "B"}, "admin/same unchanged: still version 1"},
		{[]string{"secret", "unset", "same", "S"}, "admin/same unchanged: still version 1"},
		{[]string{"env", "set", "same", "A=2"}, "admin/same is now version 2"},
		{[]string{"env", "set", "same", "A=2"}, "admin/same unchanged: still version 2"},
	} {
		if out := must(admin, tc.args...); strings.TrimSpace(out) != tc.want {
			t.Errorf("%v: %q, want %q", tc.args, out, tc.want)
		}
	}
}
