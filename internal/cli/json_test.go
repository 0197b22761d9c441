package cli

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/client"
)

// The read commands print the API's view as JSON with --json, as ls,
// versions and kv ls do, for scripts: a list is [] when empty, never
// null.
func TestReadCommandsPrintJSON(t *testing.T) {
	url, admin := apiServer(t)
	as := func(token string, args ...string) string {
		t.Helper()
		code, stdout, stderr := spry(t, nil, "s3cret\n", append(args, "--url", url, "--token", token)...)
		if code != 0 {
			t.Fatalf("spry %s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}
	file := helloFile(t, "hello.ts")
	as(admin, "deploy", file)
	bob := strings.TrimSpace(as(admin, "user", "create", "bob"))
	as(bob, "deploy", file, "--env", "A=1", "--env", "B=two")
	as(bob, "secret", "set", "hello", "TOKEN")

	decode := func(out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
	}
	var who client.Whoami
	decode(as(bob, "whoami", "--json"), &who)
	if who.User != "bob" || who.Admin || who.TokenID == "" {
		t.Errorf("whoami --json: %+v", who)
	}
	if out := as(bob, "whoami"); !strings.HasPrefix(out, "bob (token ") {
		t.Errorf("whoami: %q", out)
	}
	if out := as(admin, "whoami"); !strings.HasPrefix(out, "admin (admin, token ") {
		t.Errorf("whoami: %q", out)
	}

	var users []api.UserView
	decode(as(admin, "user", "ls", "--json"), &users)
	if len(users) != 2 || users[0].Name != "admin" || !users[0].Admin || users[1].Name != "bob" || users[1].CreatedAt.IsZero() {
		t.Errorf("user ls --json: %+v", users)
	}

	var tokens []api.TokenView
	decode(as(bob, "token", "ls", "--json"), &tokens)
	if len(tokens) != 1 || tokens[0].ID != who.TokenID || tokens[0].User != "bob" {
		t.Errorf("token ls --json: %+v", tokens)
	}

	var env struct {
		Env     map[string]string `json:"env"`
		Secrets []string          `json:"secrets"`
	}
	decode(as(bob, "env", "ls", "hello", "--json"), &env)
	if !reflect.DeepEqual(env.Env, map[string]string{"A": "1", "B": "two"}) || !reflect.DeepEqual(env.Secrets, []string{"TOKEN"}) {
		t.Errorf("env ls --json: %+v", env)
	}
	var secrets []string
	decode(as(bob, "secret", "ls", "hello", "--json"), &secrets)
	if !reflect.DeepEqual(secrets, []string{"TOKEN"}) {
		t.Errorf("secret ls --json: %q", secrets)
	}

	// Empty: [] and {}, not null.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"env", "ls", "hello", "--json"}, "{\n  \"env\": {},\n  \"secrets\": []\n}\n"},
		{[]string{"secret", "ls", "hello", "--json"}, "[]\n"},
		{[]string{"ls", "--owner", "nobody", "--json"}, "[]\n"},
	} {
		if out := as(admin, tt.args...); out != tt.want {
			t.Errorf("spry %s: %q, want %q", strings.Join(tt.args, " "), out, tt.want)
		}
	}
}
