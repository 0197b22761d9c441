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

// The token `spry login` saved is for the server it saved with: a command
// pointed at another one (--url, SPRY_URL) must not hand it that token.
func TestSavedTokenStaysWithItsServer(t *testing.T) {
	var got []string
	handler := func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Host+" "+r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(`{"functions":[]}`))
	}
	saved := httptest.NewServer(http.HandlerFunc(handler))
	defer saved.Close()
	other := httptest.NewServer(http.HandlerFunc(handler))
	defer other.Close()
	cfg := filepath.Join(t.TempDir(), "config.json")
	for _, tt := range []struct {
		name    string
		args    []string
		environ []string
		code    int
	}{
		{"--url another", []string{"ls", "--url", other.URL}, nil, 3},
		{"SPRY_URL another", []string{"ls"}, []string{"SPRY_URL=" + other.URL}, 3},
		{"login --url another", []string{"login", "--url", other.URL}, nil, 3},
		{"--url the saved one", []string{"ls", "--url", saved.URL}, nil, 0},
		{"the saved one", []string{"ls"}, nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(cfg, []byte(`{"url":"`+saved.URL+`","token":"saved-token"}`), 0o600); err != nil {
				t.Fatal(err)
			}
			got = nil
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), Env{
				Args:    tt.args,
				Environ: append([]string{"SPRY_CONFIG=" + cfg}, tt.environ...),
				Stdin:   strings.NewReader(""),
				Stdout:  &stdout,
				Stderr:  &stderr,
			})
			for _, req := range got {
				if strings.HasPrefix(req, strings.TrimPrefix(other.URL, "http://")+" ") && strings.Contains(req, "saved-token") {
					t.Fatalf("the saved token went to another server: %q", req)
				}
			}
			if code != tt.code {
				t.Fatalf("exit %d, want %d: %s", code, tt.code, stderr.String())
			}
			// Without a token, say where the saved one is and whose it is.
			if code == 3 && tt.args[0] == "ls" && !strings.Contains(stderr.String(), "is for "+saved.URL+", not "+other.URL) {
				t.Errorf("stderr %q does not say the saved token is for %s", stderr.String(), saved.URL)
			}
		})
	}
}

// spry logout removes what spry login saved, so that later commands have
// no token; a second logout, with nothing saved, is no failure.
func TestLogoutRemovesTheSavedLogin(t *testing.T) {
	url, admin := apiServer(t)
	cfg := filepath.Join(t.TempDir(), "config.json")
	env := []string{"SPRY_CONFIG=" + cfg}
	if code, _, stderr := spry(t, env, "", "login", "--url", url, "--token", admin); code != 0 {
		t.Fatalf("login: exit %d: %s", code, stderr)
	}
	if code, stdout, stderr := spry(t, env, "", "logout"); code != 0 || stdout != "logged out of "+url+"; removed "+cfg+"\n" {
		t.Fatalf("logout: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, err := os.Stat(cfg); !os.IsNotExist(err) {
		t.Errorf("the config file is still there (%v)", err)
	}
	if code, _, stderr := spry(t, env, "", "whoami"); code != 3 {
		t.Errorf("whoami after logout: exit %d, want 3 (stderr %q)", code, stderr)
	}
	if code, stdout, stderr := spry(t, env, "", "logout"); code != 0 || stdout != "" || !strings.Contains(stderr, "not logged in") {
		t.Errorf("second logout: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
