package functions

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// A change that changes nothing makes no version: it would push real
// versions out of those kept and end a traffic split. One that changes
// anything, a secret's value included, makes one.
func TestReconfigureWithoutEffect(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno", "node"}, MaxCodeBytes: 1 << 20, Bounds: Bounds{MaxMemoryMiB: 1024}})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	for i := 0; i < 2; i++ {
		if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reconfigure(ctx, "alice", "f", "alice", Change{
		SetEnv: map[string]string{"K": "v"}, SetSecrets: map[string]string{"S": "x"},
		Settings: map[string]string{SettingMemory: "256Mi"},
	}); err != nil {
		t.Fatal(err)
	}
	split := []store.Split{{Version: 2, Percent: 50}, {Version: 3, Percent: 50}}
	if _, err := s.SetTraffic(ctx, "alice", "f", split); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		change     Change
		newVersion bool
	}{
		{"same env", Change{SetEnv: map[string]string{"K": "v"}}, false},
		{"same secret", Change{SetSecrets: map[string]string{"S": "x"}}, false},
		{"same memory", Change{Settings: map[string]string{SettingMemory: "256Mi"}}, false},
		{"same runtime", Change{Runtime: "deno"}, false},
		{"unset what is not set", Change{UnsetEnv: []string{"NOPE"}, UnsetSecrets: []string{"NOPE"}}, false},
		{"secret set and unset", Change{SetSecrets: map[string]string{"T": "y"}, UnsetSecrets: []string{"T"}}, false},
		{"new env value", Change{SetEnv: map[string]string{"K": "w"}}, true},
		{"new secret value", Change{SetSecrets: map[string]string{"S": "y"}}, true},
		{"env moved to a secret", Change{UnsetEnv: []string{"K"}, SetSecrets: map[string]string{"K": "w"}}, true},
		{"new memory", Change{Settings: map[string]string{SettingMemory: "512Mi"}}, true},
		{"async retries at their default", Change{Settings: map[string]string{SettingAsyncRetries: "2"}}, false},
		{"no async retries", Change{Settings: map[string]string{SettingAsyncRetries: "0"}}, true},
		{"no async retries again", Change{Settings: map[string]string{SettingAsyncRetries: "0"}}, false},
		{"async retries back to the default", Change{Settings: map[string]string{SettingAsyncRetries: "2"}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, err := s.Get(ctx, "alice", "f")
			if err != nil {
				t.Fatal(err)
			}
			after, err := s.Reconfigure(ctx, "alice", "f", "alice", tt.change)
			if err != nil {
				t.Fatal(err)
			}
			if got := after.LiveVersion != before.LiveVersion; got != tt.newVersion {
				t.Fatalf("live version %d -> %d: new version %v, want %v", before.LiveVersion, after.LiveVersion, got, tt.newVersion)
			}
			stored, err := s.Get(ctx, "alice", "f")
			if err != nil {
				t.Fatal(err)
			}
			if stored.LiveVersion != after.LiveVersion {
				t.Fatalf("answered version %d, stored %d", after.LiveVersion, stored.LiveVersion)
			}
			if !tt.newVersion && len(stored.Routing.Traffic) != len(before.Routing.Traffic) {
				t.Fatalf("traffic split %v became %v", before.Routing.Traffic, stored.Routing.Traffic)
			}
		})
	}
}

// stores are a real sqlite store and blob store in a test's directory.
func stores(t *testing.T) (*sqlite.Store, *blob.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.Open(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return st, blobs
}

// An env var and a secret never share a name: the function would get one
// value while the API showed the other. Setting a name as one makes it
// stop being the other (the secret won before, whatever the env said);
// setting it as both at once is refused.
func TestEnvAndSecretShareNoName(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno"}, MaxCodeBytes: 1 << 20})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice",
		Secrets: map[string]string{"S": "secret"}}); err != nil {
		t.Fatal(err)
	}
	check := func(what, want string, secret bool) {
		t.Helper()
		fn, err := s.Get(ctx, "alice", "f")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := fn.Live.Config.Secrets["S"]; ok != secret {
			t.Errorf("%s: S is a secret: %v, want %v", what, ok, secret)
		}
		if v, ok := fn.Live.Config.Env["S"]; ok == secret || !secret && v != want {
			t.Errorf("%s: env S = %q (%v)", what, v, ok)
		}
		sp, err := s.Resolve(ctx, "alice", "f", "")
		if err != nil {
			t.Fatal(err)
		}
		if got := sp.Env["S"]; got != want {
			t.Errorf("%s: the function gets S = %q, want %q", what, got, want)
		}
	}
	check("deployed", "secret", true)
	if _, err := s.Reconfigure(ctx, "alice", "f", "alice", Change{SetEnv: map[string]string{"S": "plain"}}); err != nil {
		t.Fatal(err)
	}
	check("set as an env var", "plain", false)
	if _, err := s.Reconfigure(ctx, "alice", "f", "alice", Change{SetSecrets: map[string]string{"S": "again"}}); err != nil {
		t.Fatal(err)
	}
	check("set as a secret", "again", true)
	_, err := s.Reconfigure(ctx, "alice", "f", "alice", Change{SetEnv: map[string]string{"S": "x"}, SetSecrets: map[string]string{"S": "y"}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("set as both: %v, want invalid argument", err)
	}
	check("refused", "again", true)
}

// A rollback brings back the env and secrets of the version it makes
// live, and every version keeps its own at @<number>.
func TestRollbackRestoresEnvAndSecrets(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno"}, MaxCodeBytes: 1 << 20})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice",
		Env: map[string]string{"E": "1"}, Secrets: map[string]string{"S": "old"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reconfigure(ctx, "alice", "f", "alice", Change{SetEnv: map[string]string{"E": "2"}, SetSecrets: map[string]string{"S": "new"}}); err != nil {
		t.Fatal(err)
	}
	env := func(tag string) map[string]string {
		t.Helper()
		sp, err := s.Resolve(ctx, "alice", "f", tag)
		if err != nil {
			t.Fatal(err)
		}
		return sp.Env
	}
	if e := env(""); e["E"] != "2" || e["S"] != "new" {
		t.Fatalf("after the change: %v", e)
	}
	if _, err := s.Rollback(ctx, "alice", "f", 1); err != nil {
		t.Fatal(err)
	}
	if e := env(""); e["E"] != "1" || e["S"] != "old" {
		t.Errorf("after the rollback: %v", e)
	}
	if e := env("2"); e["E"] != "2" || e["S"] != "new" {
		t.Errorf("@2: %v", e)
	}
}
