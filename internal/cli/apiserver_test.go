package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
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
