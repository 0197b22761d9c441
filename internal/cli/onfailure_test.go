package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
)

// spry deploy --async-on-failure and spry config --async-on-failure
// name the function that gets a failed asynchronous invocation's event,
// each a new version; the function itself is bad input (exit 2) that
// changes nothing; "none" clears it; a deploy without the flag keeps
// the live version's.
func TestAsyncOnFailureFlag(t *testing.T) {
	url, admin := apiServer(t)
	run, must := cliAt(t, url)
	file := helloFile(t, "hook.ts")
	must(admin, "deploy", file, "--async-on-failure", "dlq")
	dest := func() string {
		t.Helper()
		var fns []api.FunctionView
		if err := json.Unmarshal([]byte(must(admin, "ls", "--json")), &fns); err != nil || len(fns) != 1 {
			t.Fatalf("ls --json: %v %+v", err, fns)
		}
		return fns[0].AsyncOnFailure
	}
	if d := dest(); d != "dlq" {
		t.Fatalf("deployed with --async-on-failure dlq: %q", d)
	}
	must(admin, "deploy", file)
	if d := dest(); d != "dlq" {
		t.Fatalf("a deploy without --async-on-failure: %q, want the live version's", d)
	}
	for _, bad := range []string{"hook", "Not/A/Name"} {
		if code, _, stderr := run(admin, "config", "hook", "--async-on-failure", bad); code != 2 || !strings.Contains(stderr, "async-on-failure") {
			t.Fatalf("config --async-on-failure %s: exit %d, %s", bad, code, stderr)
		}
	}
	if out := must(admin, "config", "hook", "--async-on-failure", "none"); !strings.Contains(out, "is now version 3") {
		t.Fatalf("config --async-on-failure none: %q", out)
	}
	if d := dest(); d != "" {
		t.Fatalf("after config --async-on-failure none: %q", d)
	}
	var vs []api.VersionView
	if err := json.Unmarshal([]byte(must(admin, "versions", "hook", "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 || vs[0].AsyncOnFailure != "" || vs[1].AsyncOnFailure != "dlq" || vs[2].AsyncOnFailure != "dlq" {
		t.Fatalf("versions --json: %+v", vs)
	}
}
