package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/logtest"
)

// The server's log says ERROR only for the server's own faults, which an
// operator must look at: a user's function that threw or timed out in a
// scheduled run asked for through the API, or a client that hung up, is
// the user's business (the function's logs and the answer say it). Each
// was an ERROR line.
func TestAPIErrorLogLevels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		run    func(ctx context.Context) error
		cancel bool // the client hangs up while the run goes on
		error  bool // an ERROR line is wanted
	}{
		{"function threw", func(context.Context) error {
			return errdefs.New(errdefs.ErrFunctionFailed, "the scheduled run failed: boom")
		}, false, false},
		{"function timed out", func(context.Context) error {
			return errdefs.New(errdefs.ErrTimeout, "the scheduled run did not finish within its 1s timeout")
		}, false, false},
		{"function error", func(context.Context) error {
			return errdefs.New(errdefs.ErrFunctionError, "the function threw")
		}, false, false},
		{"client gone", func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, true, false},
		{"server fault", func(context.Context) error { return errors.New("database is locked") }, false, true},
		{"runtime does not start", func(context.Context) error {
			return fmt.Errorf("runtime deno exited while starting: %w", errdefs.ErrUnavailable)
		}, false, true},
		{"disk full", func(context.Context) error {
			return errdefs.New(errdefs.ErrInsufficientStorage, "the server's disk is full")
		}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.deploy(e.admin, "/api/v1/functions/hello")
			var buf logtest.Buffer
			e.api.log = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			started := make(chan struct{})
			done := make(chan struct{})
			e.api.cfg.RunScheduled = func(ctx context.Context, _, _ string) error {
				defer close(done)
				close(started)
				return tc.run(ctx)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/api/v1/functions/hello/scheduled", nil)
			req.Header.Set("Authorization", "Bearer "+e.admin)
			if tc.cancel {
				go func() { <-started; cancel() }()
			}
			res, err := e.srv.Client().Do(req)
			if err == nil {
				res.Body.Close()
			}
			<-done
			// The handler logs after the run returns: Close waits for it.
			e.srv.Close()
			got := strings.Contains(buf.String(), `"level":"ERROR"`)
			if got != tc.error {
				t.Errorf("ERROR logged: %v, want %v; log:\n%s", got, tc.error, buf.String())
			}
		})
	}
}
