package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

// A proxy in front of the server (nginx, a load balancer) answers its own
// errors in HTML or plain text. Their class, and so the CLI's exit code,
// comes from the status: a 502 from a proxy is as unserved as the API's.
func TestNonJSONErrorsKeepTheirStatusClass(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   error
		exit   int
	}{
		{http.StatusUnauthorized, errdefs.ErrUnauthenticated, 3},
		{http.StatusForbidden, errdefs.ErrPermissionDenied, 3},
		{http.StatusNotFound, errdefs.ErrNotFound, 4},
		{http.StatusConflict, errdefs.ErrConflict, 5},
		{http.StatusRequestEntityTooLarge, errdefs.ErrTooLarge, 2},
		{http.StatusTooManyRequests, errdefs.ErrRateLimited, 6},
		{http.StatusBadGateway, errdefs.ErrBadGateway, 6},
		{http.StatusServiceUnavailable, errdefs.ErrUnavailable, 6},
		{http.StatusGatewayTimeout, errdefs.ErrTimeout, 6},
		{http.StatusInternalServerError, errdefs.ErrInternal, 1},
	} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte("<html><body><h1>" + http.StatusText(tt.status) + "</h1></body></html>\n"))
			}))
			defer srv.Close()
			_, err := New(srv.URL, "t").Functions(context.Background(), "")
			var ce *Error
			if !errors.As(err, &ce) || ce.Status != tt.status {
				t.Fatalf("err = %v, want a client Error with status %d", err, tt.status)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("err %v (code %q) is not %v", err, ce.Code, tt.want)
			}
			if got := errdefs.ExitCode(err); got != tt.exit {
				t.Errorf("exit code %d, want %d", got, tt.exit)
			}
		})
	}
}
