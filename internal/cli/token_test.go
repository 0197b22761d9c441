package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/client"
)

// spry token create takes a name, --expires and --scope; token ls,
// whoami and their --json show both; a read token lists but does not
// deploy, and bad values are bad input before anything is sent.
func TestTokenScopesAndExpiry(t *testing.T) {
	url, admin := apiServer(t)
	run, must := cliAt(t, url)
	before := time.Now()
	ci := strings.TrimSpace(must(admin, "token", "create", "ci", "--expires", "30d", "--scope", "read"))
	mon := strings.TrimSpace(must(admin, "token", "create", "--name", "mon", "--scope", "read,metrics", "--scope", "metrics"))

	var who client.Whoami
	if err := json.Unmarshal([]byte(must(ci, "whoami", "--json")), &who); err != nil {
		t.Fatal(err)
	}
	if strings.Join(who.Scopes, ",") != "read" || who.ExpiresAt == nil || who.ExpiresAt.Before(before.Add(30*24*time.Hour-time.Minute)) {
		t.Errorf("whoami --json: %+v", who)
	}
	if out := must(ci, "whoami"); !strings.HasPrefix(out, "admin (admin, token ") || !strings.Contains(out, "scopes read, expires 20") {
		t.Errorf("whoami: %q", out)
	}
	if out := must(admin, "whoami"); !strings.Contains(out, "scopes all, never expires") {
		t.Errorf("whoami of the admin's token: %q", out)
	}

	var tokens []api.TokenView
	if err := json.Unmarshal([]byte(must(admin, "token", "ls", "--json")), &tokens); err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.TokenView{}
	for _, tv := range tokens {
		byName[tv.Name] = tv
	}
	if v := byName["ci"]; v.ExpiresAt == nil || v.Expired || strings.Join(v.Scopes, ",") != "read" {
		t.Errorf("token ls --json, ci: %+v", v)
	}
	if v := byName["mon"]; v.ExpiresAt != nil || strings.Join(v.Scopes, ",") != "read,metrics" {
		t.Errorf("token ls --json, mon: %+v", v)
	}
	ls := strings.Split(must(admin, "token", "ls"), "\n")
	if !strings.Contains(ls[0], "SCOPES") || !strings.Contains(ls[0], "EXPIRES") {
		t.Errorf("token ls header: %q", ls[0])
	}
	for _, l := range ls[1:] {
		if strings.Contains(l, " ci ") && !strings.Contains(l, " read ") {
			t.Errorf("token ls, ci: %q", l)
		}
		if strings.Contains(l, " test ") && (!strings.Contains(l, " all ") || !strings.Contains(l, " never ")) {
			t.Errorf("token ls, the admin's: %q", l)
		}
	}

	// A read token lists; it neither deploys nor makes tokens (exit 3,
	// permission denied, naming the scope it would need).
	file := helloFile(t, "hello.ts")
	must(admin, "deploy", file)
	if out := must(ci, "ls"); !strings.Contains(out, "hello") {
		t.Errorf("ls with a read token: %q", out)
	}
	if code, _, stderr := run(ci, "deploy", file); code != 3 || !strings.Contains(stderr, "scope deploy") {
		t.Errorf("deploy with a read token: exit %d: %s", code, stderr)
	}
	if code, _, stderr := run(mon, "token", "create", "x"); code != 3 || !strings.Contains(stderr, "scope all") {
		t.Errorf("token create with a read,metrics token: exit %d: %s", code, stderr)
	}

	// Bad input, exit 2, naming the flag.
	for _, args := range [][]string{
		{"token", "create", "x", "--expires", "30s"},
		{"token", "create", "x", "--expires", "1y"},
		{"token", "create", "x", "--scope", "write"},
		{"token", "create", "x", "--name", "y"},
		{"user", "create", "eve", "--expires", "soon"},
	} {
		code, _, stderr := run(admin, args...)
		if code != 2 {
			t.Errorf("spry %s: exit %d, want 2: %s", strings.Join(args, " "), code, stderr)
		}
		if strings.Contains(strings.Join(args, " "), "--expires") && !strings.Contains(stderr, "--expires") {
			t.Errorf("spry %s: %q does not name --expires", strings.Join(args, " "), stderr)
		}
	}
	code, stdout, stderr := run(admin, "user", "create", "eve", "--expires", "2d")
	if code != 0 || !strings.Contains(stderr, "it expires at") {
		t.Fatalf("user create --expires: exit %d: %s", code, stderr)
	}
	if out := must(strings.TrimSpace(stdout), "whoami"); !strings.Contains(out, "eve (token ") || !strings.Contains(out, "scopes all, expires 20") {
		t.Errorf("whoami of eve's first token: %q", out)
	}
}
