package api

import (
	"net/http/httptest"
	"testing"
)

func TestFunctionURL(t *testing.T) {
	tests := []struct {
		publicURL, domain, host string
		want                    string
	}{
		{"", "", "127.0.0.1:8080", "http://127.0.0.1:8080/fn/alice/hello"},
		{"https://spry.example.com/", "", "127.0.0.1:8080", "https://spry.example.com/fn/alice/hello"},
		{"", "fn.example.com", "127.0.0.1:8080", "http://hello.alice.fn.example.com:8080"},
		{"", "Fn.Example.com.", "fn.example.com", "http://hello.alice.fn.example.com"},
		{"https://spry.example.com", "fn.example.com", "127.0.0.1:8080", "https://hello.alice.fn.example.com"},
		{"https://spry.example.com:8443/base", "localhost", "127.0.0.1:8080", "https://hello.alice.localhost:8443"},
	}
	for _, tt := range tests {
		a := &API{cfg: Config{PublicURL: tt.publicURL, FunctionDomain: tt.domain}}
		r := httptest.NewRequest("GET", "/api/v1/functions", nil)
		r.Host = tt.host
		if got := a.functionURL(r, "alice", "hello"); got != tt.want {
			t.Errorf("public URL %q, domain %q, Host %q: got %q, want %q", tt.publicURL, tt.domain, tt.host, got, tt.want)
		}
	}
}
