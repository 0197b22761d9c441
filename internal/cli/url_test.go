package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A server URL that is no http(s) URL of a host is bad input (exit 2),
// said in one line naming where it came from. Without a scheme it was
// Go's parse error (exit 1) or "cannot reach the server" (exit 6, as if
// the server were down); a query or fragment had the API's path appended
// to it, so every command answered 404.
func TestServerURLMustBeHTTP(t *testing.T) {
	srvURL, token := apiServer(t)
	host := strings.TrimPrefix(srvURL, "http://")
	for _, bad := range []string{
		host,               // 127.0.0.1:PORT: no scheme
		"localhost:8080",   // parsed as scheme "localhost"
		"ftp://" + host,    // not HTTP
		"http://",          // no host
		"http:///api",      // no host
		srvURL + "/?a=b",   // a query the API's path would follow
		srvURL + "/?",      // an empty one too
		srvURL + "/#frag",  // a fragment
		"http//" + host,    // a typo: a relative path
		srvURL + "/api/v1", // the API's base, to which spry adds /api/v1
		srvURL + "/api/v1/",
	} {
		for _, how := range []string{"--url", "SPRY_URL"} {
			t.Run(how+" "+bad, func(t *testing.T) {
				cfg := filepath.Join(t.TempDir(), "config.json")
				env := []string{"SPRY_CONFIG=" + cfg}
				args := []string{"--token", token}
				if how == "--url" {
					args = append(args, "--url", bad)
				} else {
					env = append(env, "SPRY_URL="+bad)
				}
				for _, cmd := range [][]string{{"ls"}, {"login"}} {
					code, stdout, stderr := spry(t, env, "", append(cmd, args...)...)
					if code != 2 {
						t.Errorf("spry %s: exit %d, want 2 (stderr %q)", cmd[0], code, stderr)
					}
					if stdout != "" {
						t.Errorf("spry %s: stdout %q", cmd[0], stdout)
					}
					if !strings.Contains(stderr, how) || strings.Count(stderr, "\n") != 1 {
						t.Errorf("spry %s: stderr %q does not name %s in one line", cmd[0], stderr, how)
					}
				}
				if _, err := os.Stat(cfg); !os.IsNotExist(err) {
					t.Errorf("login saved a config with the bad URL (%v)", err)
				}
			})
		}
	}
	// What is a server URL: a trailing slash, or a path a proxy serves
	// the API under, is kept (the latter answers 404 here, as it should).
	for _, tt := range []struct {
		url  string
		want int
	}{
		{srvURL, 0},
		{srvURL + "/", 0},
		{strings.Replace(srvURL, "http://", "HTTP://", 1), 0},
		{srvURL + "/prefix", 4},
	} {
		if code, _, stderr := spry(t, nil, "", "ls", "--url", tt.url, "--token", token); code != tt.want {
			t.Errorf("ls --url %s: exit %d, want %d (stderr %q)", tt.url, code, tt.want, stderr)
		}
	}
	// A bad URL in the config file is named as the file's.
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`{"url":"`+host+`","token":"`+token+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := spry(t, []string{"SPRY_CONFIG=" + cfg}, "", "ls"); code != 2 || !strings.Contains(stderr, cfg) {
		t.Errorf("bad URL in the config file: exit %d, stderr %q; want 2 naming %s", code, stderr, cfg)
	}
}
