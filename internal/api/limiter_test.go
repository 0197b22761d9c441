package api

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A client failing from ever new IPv6 addresses of its /64 is limited as
// one client; another /64 is not held back by it.
func TestFailureLimitPerIPv6Prefix(t *testing.T) {
	e := newEnv(t)
	h := e.api.Handler()
	try := func(remote string) int {
		r := httptest.NewRequest("GET", "/api/v1/functions", nil)
		r.RemoteAddr = remote
		r.Header.Set("Authorization", "Bearer spry_nope_nope")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for i := 1; i <= 10; i++ {
		if code := try(fmt.Sprintf("[2001:db8:0:7::%x]:4000", i)); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i, code)
		}
	}
	if code := try("[2001:db8:0:7:abcd::1]:4000"); code != http.StatusTooManyRequests {
		t.Fatalf("a new address of the same /64: %d, want 429", code)
	}
	if code := try("[2001:db8:0:8::1]:4000"); code != http.StatusUnauthorized {
		t.Fatalf("another /64: %d, want 401", code)
	}
}
