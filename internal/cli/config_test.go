package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `spry login` leaves its token readable by its user only, even where the
// config file was already there with a looser mode (made by hand, or
// under a umask of 022 by something else).
func TestLoginConfigIsPrivate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/whoami" || r.Header.Get("Authorization") != "Bearer secret" {
			http.Error(w, `{"error":{"code":"unauthenticated","message":"no"}}`, http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"user":"alice","admin":false,"token_id":"1"}`))
	}))
	defer srv.Close()
	for _, tt := range []struct {
		name   string
		before func(path string)
	}{
		{"new", func(string) {}},
		{"existing world-readable", func(p string) {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(`{"url":"http://old","token":"old"}`), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "spry", "config.json")
			tt.before(cfg)
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), Env{
				Args:    []string{"login", "--url", srv.URL, "--token", "secret"},
				Environ: []string{"SPRY_CONFIG=" + cfg},
				Stdin:   strings.NewReader(""),
				Stdout:  &stdout,
				Stderr:  &stderr,
			})
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			fi, err := os.Stat(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if mode := fi.Mode().Perm(); mode != 0o600 {
				t.Errorf("config mode %o, want 600", mode)
			}
			data, _ := os.ReadFile(cfg)
			var fc fileConfig
			if err := json.Unmarshal(data, &fc); err != nil || fc.Token != "secret" || fc.URL != srv.URL {
				t.Errorf("config %q (%v)", data, err)
			}
		})
	}
}

// A config file that does not parse leaves a command without a token, and
// the command says which file is broken (exit 3, as for no token).
func TestBrokenConfigIsNamed(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`{"url": "http://x", "token": `), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), Env{
		Args:    []string{"ls"},
		Environ: []string{"SPRY_CONFIG=" + cfg},
		Stdin:   strings.NewReader(""),
		Stdout:  &stdout,
		Stderr:  &stderr,
	})
	if code != 3 || !strings.Contains(stderr.String(), cfg) || !strings.Contains(stderr.String(), "not valid JSON") {
		t.Fatalf("exit %d, stderr %q: want 3 naming the broken file", code, stderr.String())
	}
}
