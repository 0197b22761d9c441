package cli

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDevDefaultsAreServes: what spry dev runs a function with by default
// is what a server gives a deployed function by default, so that what
// works in one works in the other: a call of 45s did not time out when
// deployed, and did in spry dev.
func TestDevDefaultsAreServes(t *testing.T) {
	root := NewRoot(Env{})
	dev, _, err := root.Find([]string{"dev"})
	if err != nil {
		t.Fatal(err)
	}
	serve, _, err := root.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ dev, serve string }{
		{"timeout", "timeout"},
		{"network", "network"},
		{"memory", "memory"},
	} {
		d, s := dev.Flags().Lookup(tt.dev), serve.Flags().Lookup(tt.serve)
		if d == nil || s == nil {
			t.Fatalf("no dev --%s or serve --%s", tt.dev, tt.serve)
		}
		dv, sv := d.DefValue, s.DefValue
		if tt.dev == "memory" {
			dv = dv[:len(dv)-len("Mi")] // dev takes 128Mi, serve MiB
		}
		if dv != sv {
			t.Errorf("spry dev --%s defaults to %s, spry serve --%s to %s", tt.dev, d.DefValue, tt.serve, sv)
		}
	}
}

// TestDevEnvAsDeployed: spry dev refuses an environment a deploy's
// server refuses (a bad name, a NUL byte), before it reads the file: it
// ran with it, and the deploy of what worked failed.
func TestDevEnvAsDeployed(t *testing.T) {
	file := filepath.Join(t.TempDir(), "missing.ts") // never reached
	for _, tt := range []struct{ env, want string }{
		{"1BAD=x", `invalid environment variable name "1BAD"`},
		{"MY-KEY=x", `invalid environment variable name "MY-KEY"`},
		{"K=a\x00b", "environment variable K contains a NUL byte"},
	} {
		env := strings.ReplaceAll(tt.env, `\x00`, "\x00")
		code, _, stderr := spry(t, nil, "", "dev", file, "--env", env)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("spry dev --env %q: exit %d, stderr %q; want 2 and %q", tt.env, code, stderr, tt.want)
		}
	}
}

// TestReadEnvFile: --env-file reads a dotenv file as deno and node
// --env-file do, for the subset they share.
func TestReadEnvFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".env")
	content := "# secrets for spry dev\n\nAPI_KEY=abc=def\nexport REGION = eu \nQUOTED=\"a b # c\"\nSINGLE='x'\r\nEMPTY=\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"API_KEY": "abc=def", "REGION": "eu", "QUOTED": "a b # c", "SINGLE": "x", "EMPTY": ""}
	if !maps.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}

	if err := os.WriteFile(path, []byte("OK=1\nno equals sign\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readEnvFile(path); err == nil || !strings.Contains(err.Error(), ".env:2: want KEY=VALUE") {
		t.Errorf("a line without '=': %v", err)
	}

	// What a deploy refuses is refused from a file too.
	if err := os.WriteFile(path, []byte("MY-KEY=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := spry(t, nil, "", "dev", filepath.Join(t.TempDir(), "missing.ts"), "--env-file", path)
	if code != 2 || !strings.Contains(stderr, `invalid environment variable name "MY-KEY"`) {
		t.Errorf("spry dev --env-file with MY-KEY: exit %d, stderr %q", code, stderr)
	}
}

// TestDevEnv: a later --env-file wins over an earlier one, and --env over
// both.
func TestDevEnv(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.env"), filepath.Join(dir, "b.env")
	if err := os.WriteFile(a, []byte("A=a\nB=a\nC=a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("B=b\nC=b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := devEnv([]string{"C=flag"}, []string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"A": "a", "B": "b", "C": "flag"}; !maps.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
