package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestTrustedProxies: what a function is told of its client, on both
// runtimes, with and without a trusted proxy in front (--trusted-proxies):
// a client's own X-Forwarded-* headers are replaced with what Spry saw;
// a trusted proxy's stand, so the function's URL has the scheme the
// client used, as do the function URLs the API gives. Behind a trusted
// proxy the API's limit on failed authentications counts each client,
// not the proxy.
func TestTrustedProxies(t *testing.T) {
	code := []byte(`export default { fetch(req) {
		return new Response([req.url, req.headers.get("x-forwarded-for"), req.headers.get("x-forwarded-host")].join(" "));
	} }`)
	claims := map[string]string{"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
	for _, tt := range []struct {
		name    string
		flags   []string
		want    string
		wantURL string // the function's URL the API gives
	}{
		{"no proxy trusted", nil, "http://%[1]s/x 127.0.0.1 %[1]s", "http://%s/fn/admin/who-deno"},
		{"loopback trusted", []string{"--trusted-proxies", "127.0.0.1,::1"}, "https://%[1]s/x 198.51.100.7, 127.0.0.1 api.example.com", "https://api.example.com/fn/admin/who-deno"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.flags...)
			s.deployCode(t, "who-deno", code, "")
			s.deployCode(t, "who-node", code, "runtime=node")
			for _, name := range []string{"who-deno", "who-node"} {
				r := s.do("GET", "/fn/admin/"+name+"/x", "", nil, claims)
				if want := fmt.Sprintf(tt.want, s.addr); r.status != 200 || string(r.body) != want {
					t.Errorf("%s: %d %q, want 200 %q", name, r.status, r.body, want)
				}
			}
			var fn struct{ URL string }
			if r := s.do("GET", "/api/v1/functions/who-deno", s.token, nil, claims); r.status != 200 || json.Unmarshal(r.body, &fn) != nil {
				t.Fatalf("GET the function: %d %s", r.status, r.body)
			}
			if want := strings.ReplaceAll(tt.wantURL, "%s", s.addr); fn.URL != want {
				t.Errorf("the API gives the function's URL as %s, want %s", fn.URL, want)
			}
			// Eleven failed authentications from one client: the limit (10)
			// is met; from another client behind the trusted proxy, not.
			var last response
			for i := 0; i < 11; i++ {
				last = s.do("GET", "/api/v1/functions", "spry_0000000000000000_bad", nil, map[string]string{"X-Forwarded-For": "198.51.100.7"})
			}
			if last.status != 429 {
				t.Fatalf("the 11th failure: %d, want 429", last.status)
			}
			other := s.do("GET", "/api/v1/functions", "spry_0000000000000000_bad", nil, map[string]string{"X-Forwarded-For": "198.51.100.8"})
			trusted := len(tt.flags) > 0
			if want := map[bool]int{true: 401, false: 429}[trusted]; other.status != want {
				t.Fatalf("another client's failure: %d, want %d (%s)", other.status, want, strings.TrimSpace(string(other.body)))
			}
		})
	}
}
