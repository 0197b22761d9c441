package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
)

// spry deploy --async-retries and spry config --async-retries set how
// many times a failed asynchronous invocation is tried again, each a new
// version shown by ls --json and versions --json; a value out of range
// is bad input (exit 2) and changes nothing; a deploy without the flag
// keeps the live version's.
func TestAsyncRetriesFlag(t *testing.T) {
	url, admin := apiServer(t)
	run, must := cliAt(t, url)
	file := helloFile(t, "hook.ts")
	must(admin, "deploy", file, "--async-retries", "0")
	retries := func() int {
		t.Helper()
		var fns []api.FunctionView
		if err := json.Unmarshal([]byte(must(admin, "ls", "--json")), &fns); err != nil || len(fns) != 1 {
			t.Fatalf("ls --json: %v %+v", err, fns)
		}
		return fns[0].AsyncRetries
	}
	if n := retries(); n != 0 {
		t.Fatalf("deployed with --async-retries 0: %d", n)
	}
	must(admin, "deploy", file)
	if n := retries(); n != 0 {
		t.Fatalf("a deploy without --async-retries: %d, want the live version's 0", n)
	}
	if out := must(admin, "config", "hook", "--async-retries", "1"); !strings.Contains(out, "is now version 3") {
		t.Fatalf("config --async-retries 1: %q", out)
	}
	if n := retries(); n != 1 {
		t.Fatalf("after config --async-retries 1: %d", n)
	}
	for _, bad := range []string{"3", "-1"} {
		if code, _, stderr := run(admin, "config", "hook", "--async-retries", bad); code != 2 || !strings.Contains(stderr, "want 0, 1 or 2") {
			t.Fatalf("config --async-retries %s: exit %d, %s", bad, code, stderr)
		}
	}
	var vs []api.VersionView
	if err := json.Unmarshal([]byte(must(admin, "versions", "hook", "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 || vs[0].AsyncRetries != 1 || vs[1].AsyncRetries != 0 || vs[2].AsyncRetries != 0 {
		t.Fatalf("versions --json: %+v", vs)
	}
	if out := must(admin, "config", "hook", "--async-retries", "2"); !strings.Contains(out, "is now version 4") {
		t.Fatalf("config --async-retries 2: %q", out)
	}
	if n := retries(); n != 2 {
		t.Fatalf("after config --async-retries 2: %d", n)
	}
}
