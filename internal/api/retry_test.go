package api

import (
	"context"
	"net/http"
	"testing"

	"github.com/spry-run/spry/internal/activator"
)

// A 429, but for a log follow past a user's 16, and a 503 for a full
// queue carry Retry-After (docs/api.md): the fifth log read of a user
// and a scheduled run that found no instance had none.
func TestRetryAfter(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/hello")
	for _, tc := range []struct {
		name   string
		setup  func()
		method string
		path   string
		status int
		code   string
	}{
		{"fifth log read", func() {
			for i := 0; i < MaxReadsPerUser; i++ {
				if err := e.api.openRead("admin"); err != nil {
					t.Fatal(err)
				}
			}
		}, "GET", "/api/v1/functions/hello/logs", http.StatusTooManyRequests, "rate_limited"},
		{"scheduled run, queue full", func() {
			e.api.cfg.RunScheduled = func(context.Context, string, string) error { return activator.ErrOverloaded }
		}, "POST", "/api/v1/functions/hello/scheduled", http.StatusServiceUnavailable, "unavailable"},
		{"scheduled run, user's instances", func() {
			e.api.cfg.RunScheduled = func(context.Context, string, string) error { return activator.ErrQuota }
		}, "POST", "/api/v1/functions/hello/scheduled", http.StatusTooManyRequests, "rate_limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			req, _ := http.NewRequest(tc.method, e.srv.URL+tc.path, nil)
			req.Header.Set("Authorization", "Bearer "+e.admin)
			res, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != tc.status || res.Header.Get("Retry-After") == "" {
				t.Errorf("%d, Retry-After %q; want %d with Retry-After", res.StatusCode, res.Header.Get("Retry-After"), tc.status)
			}
		})
	}
}
