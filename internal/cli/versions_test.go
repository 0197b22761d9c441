package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
)

// spry versions rm deletes a version nothing routes to and says so;
// what it may not delete (live, split, tagged), what does not exist and
// what is not a number exit as the server's answer says (5, 4, 2), with
// its message; --owner is the admin's as for the other version commands,
// and versions NAME still lists.
func TestVersionsRm(t *testing.T) {
	url, admin := apiServer(t)
	run := func(args ...string) (int, string, string) {
		t.Helper()
		return spry(t, nil, "", append(args, "--url", url, "--token", admin)...)
	}
	must := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := run(args...)
		if code != 0 {
			t.Fatalf("spry %s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}
	file := helloFile(t, "hello.ts")
	must("user", "create", "alice")
	for range 5 {
		// Each deploy of the same code is a version of its own.
		must("deploy", file, "--name", "hello", "--owner", "alice")
	}
	must("tag", "hello", "stable", "2", "--owner", "alice")
	must("traffic", "hello", "5=90", "4=10", "--owner", "alice")

	if out := must("versions", "rm", "hello", "1", "--owner", "alice"); out != "removed version 1 of hello\n" {
		t.Errorf("versions rm: %q", out)
	}
	var vs []api.VersionView
	if err := json.Unmarshal([]byte(must("versions", "hello", "--owner", "alice", "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 4 || vs[len(vs)-1].Version != 2 {
		t.Errorf("versions after rm 1: %+v", vs)
	}

	for _, tt := range []struct {
		args   []string
		exit   int
		stderr string
	}{
		{[]string{"versions", "rm", "hello", "5", "--owner", "alice"}, 5, "version 5 of alice/hello is live"},
		{[]string{"versions", "rm", "hello", "4", "--owner", "alice"}, 5, "change the traffic first"},
		{[]string{"versions", "rm", "hello", "2", "--owner", "alice"}, 5, "tag stable"},
		{[]string{"versions", "rm", "hello", "1", "--owner", "alice"}, 4, "not found"},
		{[]string{"versions", "rm", "hello", "9", "--owner", "alice"}, 4, "not found"},
		// The admin's own namespace, without --owner.
		{[]string{"versions", "rm", "hello", "3"}, 4, "admin/hello"},
		{[]string{"versions", "rm", "hello", "x", "--owner", "alice"}, 2, `version "x" is not a positive number`},
		{[]string{"versions", "rm", "hello", "0", "--owner", "alice"}, 2, "not a positive number"},
		{[]string{"versions", "rm", "hello", "--owner", "alice"}, 2, "accepts 2 arg(s)"},
	} {
		code, _, stderr := run(tt.args...)
		if code != tt.exit || !strings.HasPrefix(stderr, "error: ") || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("spry %s: exit %d %q; want exit %d saying %q", strings.Join(tt.args, " "), code, stderr, tt.exit, tt.stderr)
		}
	}
	if err := json.Unmarshal([]byte(must("versions", "hello", "--owner", "alice", "--json")), &vs); err != nil || len(vs) != 4 {
		t.Errorf("versions after refused removals: %+v, %v", vs, err)
	}
}
