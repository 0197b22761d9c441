package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/api/apitest"
)

// apiServer serves the real management API (over the real sqlite, blob
// and log stores) with httptest, and returns its URL and an admin token.
func apiServer(t *testing.T) (url, token string) {
	t.Helper()
	return apiServerWith(t, nil)
}

// apiServerWith is apiServer with fn serving /fn/, where spry serve has
// its router.
func apiServerWith(t *testing.T, fn http.Handler) (url, token string) {
	t.Helper()
	return apiServerConfig(t, fn, api.Config{MaxCodeBytes: 1 << 20})
}

// apiServerConfig is apiServerWith with the API's config.
func apiServerConfig(t *testing.T, fn http.Handler, cfg api.Config) (url, token string) {
	t.Helper()
	d := apitest.New(t)
	mux := http.NewServeMux()
	mux.Handle("/", api.New(d.Functions, d.Auth, d.Store, d.Store, nil, d.Logs, cfg).Handler())
	if fn != nil {
		mux.Handle("/fn/", fn)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, d.Admin
}

// spry runs the CLI in process with args and environ (a config file of
// its own unless environ names one) and stdin.
func spry(t *testing.T, environ []string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	environ = append([]string{"SPRY_CONFIG=" + filepath.Join(t.TempDir(), "config.json"), "HOME=" + t.TempDir()}, environ...)
	code = Main(context.Background(), Env{
		Args:    args,
		Environ: environ,
		Stdin:   strings.NewReader(stdin),
		Stdout:  &out,
		Stderr:  &errb,
	})
	return code, out.String(), errb.String()
}

// helloFile writes a function that answers "hi" to a file called name in
// a temporary directory of t's, and returns its path.
func helloFile(t *testing.T, name string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(`export default { fetch() { return new Response("hi") } }`), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// cliAt runs the CLI against the server at url with a token: run says
// how it went, must fails t unless it exits 0 and returns its output.
func cliAt(t *testing.T, url string) (run func(token string, args ...string) (int, string, string), must func(token string, args ...string) string) {
	run = func(token string, args ...string) (int, string, string) {
		t.Helper()
		return spry(t, nil, "", append(args, "--url", url, "--token", token)...)
	}
	must = func(token string, args ...string) string {
		t.Helper()
		code, stdout, stderr := run(token, args...)
		if code != 0 {
			t.Fatalf("spry %s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}
	return run, must
}
