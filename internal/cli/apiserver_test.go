package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// noInstances runs no instances: the tests that use apiServer are about
// the CLI's talk with the real API, not about running functions.
type noInstances struct{}

func (noInstances) Admit(string, ...string)        {}
func (noInstances) RetireExcept(string, ...string) {}
func (noInstances) Remove(string)                  {}
func (noInstances) Ensure(*backend.Spec)           {}

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
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs, err := logstore.Open(ctx, filepath.Join(dir, "logs.db"), logstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	blobs, err := blob.Open(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	box, err := secrets.New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	fns := functions.New(st, blobs, noInstances{}, box, logs, functions.Config{
		MaxCodeBytes:       1 << 20,
		DefaultRuntime:     "deno",
		Runtimes:           []string{"deno", "node"},
		DefaultMemoryMiB:   128,
		DefaultTimeout:     time.Minute,
		DefaultNetwork:     "egress",
		DefaultConcurrency: 50,
		DefaultMaxScale:    100,
		Bounds:             functions.Bounds{MaxMemoryMiB: 4096, MaxTimeout: time.Hour, MaxScale: 100, MaxConcurrency: 1000, MaxCPUMilli: 4000},
		Builds:             1,
	})
	authn := auth.New(st, nil)
	if err := st.CreateUser(ctx, store.User{Name: "admin", Admin: true, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	tok, _, err := authn.IssueToken(ctx, "admin", "test")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", api.New(fns, authn, st, st, nil, logs, cfg).Handler())
	if fn != nil {
		mux.Handle("/fn/", fn)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, tok
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
