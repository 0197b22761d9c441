package router

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/logtest"
)

// What a user's function does to one request (it runs out of its time,
// it answers bytes that are not HTTP) is no WARN in the server's log: a
// function that times out on every request would write one a request.
// The line is there, at INFO, with the request's id, which the client
// got in Spry-Request-Id: the id links the two. (Both were WARN lines
// that named the instance but not the function.)
func TestFunctionFaultsLoggedAtInfo(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sock   func(t *testing.T) string
		status int
	}{
		{"timeout", func(t *testing.T) string {
			return serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			}))
		}, http.StatusGatewayTimeout},
		{"malformed answer", func(t *testing.T) string {
			return serveRawRequests(t, func(_ int, c net.Conn) { _, _ = c.Write([]byte("not http at all\r\n\r\n")) })
		}, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf logtest.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			b := &upstreamBackend{addr: tc.sock(t), probe: func(ctx context.Context) error { return nil }}
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 100 * time.Millisecond}
			srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{Logger: log}))
			res, err := http.Get(srv.URL + "/fn/alice/fn/")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			id := res.Header.Get("Spry-Request-Id")
			if res.StatusCode != tc.status || id == "" {
				t.Fatalf("status %d, request id %q; want %d with an id", res.StatusCode, id, tc.status)
			}
			srv.Close()
			var line string
			for _, l := range strings.Split(buf.String(), "\n") {
				if strings.Contains(l, `"request_id":"`+id+`"`) {
					line = l
				}
			}
			if !strings.Contains(line, `"level":"INFO"`) || !strings.Contains(line, `"owner":"alice","function":"fn"`) {
				t.Errorf("the line of request %s: %q; want one at INFO naming the function; log:\n%s", id, line, buf.String())
			}
		})
	}
}
