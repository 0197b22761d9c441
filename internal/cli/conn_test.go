package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Where the server and token come from, first found first: --url and
// --token, then SPRY_URL and SPRY_TOKEN, then the file spry login wrote
// (whose token is for its own server only), then http://127.0.0.1:8080
// and no token.
func TestServerAndTokenPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`{"url":"http://saved:1","token":"saved-token"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name             string
		file             bool
		flagURL, flagTok string
		environ          []string
		url, token, from string
	}{
		{"nothing", false, "", "", nil, defaultURL, "", ""},
		{"the file", true, "", "", nil, "http://saved:1", "saved-token", cfg},
		{"env over the file", true, "", "", []string{"SPRY_URL=http://env:1", "SPRY_TOKEN=env-token"}, "http://env:1", "env-token", "SPRY_TOKEN"},
		{"env token, the file's server", true, "", "", []string{"SPRY_TOKEN=env-token"}, "http://saved:1", "env-token", "SPRY_TOKEN"},
		{"env server: not the file's token", true, "", "", []string{"SPRY_URL=http://env:1"}, "http://env:1", "", ""},
		{"flags over env", true, "http://flag:1", "flag-token", []string{"SPRY_URL=http://env:1", "SPRY_TOKEN=env-token"}, "http://flag:1", "flag-token", "--token"},
		{"--url of the file's server over env", true, "http://saved:1", "", []string{"SPRY_URL=http://env:1"}, "http://saved:1", "saved-token", cfg},
		{"white space around a token", false, "", "", []string{"SPRY_TOKEN= env-token\r\n"}, defaultURL, "env-token", "SPRY_TOKEN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			environ := []string{"SPRY_CONFIG=" + filepath.Join(t.TempDir(), "none.json")}
			if tt.file {
				environ = []string{"SPRY_CONFIG=" + cfg}
			}
			c := &connFlags{env: Env{Environ: append(environ, tt.environ...)}, url: tt.flagURL, token: tt.flagTok}
			url, token, _, err := c.resolve()
			if err != nil || url != tt.url || token != tt.token || c.tokenFrom != tt.from {
				t.Errorf("resolve: %q, %q from %q, %v; want %q, %q from %q", url, token, c.tokenFrom, err, tt.url, tt.token, tt.from)
			}
		})
	}
}

// A token with a space or control character in it is no token: said as
// such (exit 3) naming where it came from, without printing it. Go
// refused it as a header, which the CLI said as a server that cannot be
// reached (exit 6). A token the server refuses is named by where it came
// from too: a stale SPRY_TOKEN is taken before a fresh spry login's.
func TestBadTokenSaysWhichItWas(t *testing.T) {
	url, admin := apiServer(t)
	cfg := filepath.Join(t.TempDir(), "config.json")
	if code, _, stderr := spry(t, []string{"SPRY_CONFIG=" + cfg}, "", "login", "--url", url, "--token", admin); code != 0 {
		t.Fatalf("login: exit %d: %s", code, stderr)
	}
	for _, tt := range []struct {
		name    string
		args    []string
		environ []string
		code    int
		say     string
	}{
		{"pasted with a CR", []string{"--token", admin + "\r"}, nil, 0, ""},
		{"inner space", []string{"--token", "spry_secret part"}, nil, 3, "the token from --token is not a Spry token"},
		{"inner newline", nil, []string{"SPRY_TOKEN=spry_secret\npart"}, 3, "the token from SPRY_TOKEN is not a Spry token"},
		{"stale env", nil, []string{"SPRY_TOKEN=spry_secret"}, 3, "invalid, expired or revoked token (the token from SPRY_TOKEN)"},
		{"wrong flag", []string{"--token", "spry_secret"}, nil, 3, "(the token from --token)"},
		{"the saved one", nil, nil, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := spry(t, append([]string{"SPRY_CONFIG=" + cfg}, tt.environ...), "", append([]string{"whoami"}, tt.args...)...)
			if code != tt.code || !strings.Contains(stderr, tt.say) {
				t.Fatalf("exit %d, stderr %q; want %d saying %q", code, stderr, tt.code, tt.say)
			}
			if code != 0 && (strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "secret")) {
				t.Errorf("stderr %q: want one line without the token", stderr)
			}
		})
	}
}

// A URL with a user name or password is refused (exit 2) without
// printing the password: the token, not the URL's user, is what is sent,
// and every message naming the server printed the URL as it was.
func TestServerURLWithPasswordIsRefused(t *testing.T) {
	url, admin := apiServer(t)
	withPass := strings.Replace(url, "http://", "http://me:hunter2@", 1)
	for _, args := range [][]string{{"ls", "--url", withPass, "--token", admin}, {"login", "--url", withPass, "--token", admin}} {
		code, stdout, stderr := spry(t, nil, "", args...)
		if code != 2 || stdout != "" || strings.Contains(stderr, "hunter2") || !strings.Contains(stderr, "user name or password") {
			t.Errorf("spry %s: exit %d, stdout %q, stderr %q; want 2 without the password", args[0], code, stdout, stderr)
		}
	}
}
