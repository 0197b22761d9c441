package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestNginxConf(t *testing.T) {
	tlsc := &benchTLS{certFile: "/b/tls/cert.pem", keyFile: "/b/tls/key.pem"}
	tests := []struct {
		name    string
		tlsc    *benchTLS
		want    []string
		notWant []string
	}{
		{"plain HTTP", nil,
			[]string{"listen 127.0.0.1:8080;", "server unix:/r/sock/http.sock;", "pid /b/nginx/nginx.pid;", "keepalive 64;"},
			[]string{"ssl"}},
		{"TLS", tlsc,
			[]string{"listen 127.0.0.1:8080 ssl;", "ssl_certificate /b/tls/cert.pem;", "ssl_certificate_key /b/tls/key.pem;",
				"ssl_protocols TLSv1.2 TLSv1.3;", "server unix:/r/sock/http.sock;", "keepalive 64;", "proxy_http_version 1.1;"},
			[]string{"http2", "listen 127.0.0.1:8080;"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := nginxConf("/b/nginx", "/r/sock/http.sock", 8080, tt.tlsc)
			for _, w := range tt.want {
				if !strings.Contains(conf, w) {
					t.Errorf("config lacks %q:\n%s", w, conf)
				}
			}
			for _, nw := range tt.notWant {
				if strings.Contains(conf, nw) {
					t.Errorf("config has %q:\n%s", nw, conf)
				}
			}
		})
	}
}

// TestNginxConfAccepted has nginx itself check both configs (with a
// certificate from makeTLS), when nginx is installed.
func TestNginxConfAccepted(t *testing.T) {
	bin, err := findTool("nginx")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	tlsc, err := makeTLS(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []*benchTLS{nil, tlsc} {
		t.Run(fmt.Sprintf("tls=%v", tc != nil), func(t *testing.T) {
			ndir := t.TempDir()
			if err := os.Mkdir(filepath.Join(ndir, "tmp"), 0o755); err != nil { // as startNginx makes it
				t.Fatal(err)
			}
			path := filepath.Join(ndir, "nginx.conf")
			if err := os.WriteFile(path, []byte(nginxConf(ndir, filepath.Join(ndir, "http.sock"), 8080, tc)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "-t", "-q", "-p", ndir, "-e", filepath.Join(ndir, "error.log"), "-c", path).CombinedOutput()
			if err != nil {
				t.Fatalf("nginx -t: %v: %s", err, out)
			}
		})
	}
}

// TestMakeTLS serves HTTPS with makeTLS's certificate and calls it, over
// loopback, with its client config, which must trust it for 127.0.0.1.
func TestMakeTLS(t *testing.T) {
	tlsc, err := makeTLS(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(tlsc.certFile, tlsc.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, helloBody)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusting client's handshake fails on purpose
	srv.StartTLS()
	defer srv.Close()
	s := &spryServer{tls: tlsc}
	h := get(t.Context(), s.client(1, 0), srv.URL+"/")
	if err := h.ok(helloBody); err != nil {
		t.Fatalf("GET %s: %v", srv.URL, err)
	}
	// Without the CA the certificate is not trusted: the client really
	// verifies it.
	if h := get(t.Context(), newClient(1, 0), srv.URL+"/"); h.Err == nil {
		t.Fatal("a client without the CA accepted the certificate")
	}
}
