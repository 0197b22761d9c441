package cli

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/certreload/certtest"
)

// tlsAPIServer serves the real API over HTTPS with a certificate of a private CA, whose certificate it writes
// to a file.
func tlsAPIServer(t *testing.T) (url, token, caFile string) {
	t.Helper()
	d := apitest.New(t)
	mux := http.NewServeMux()
	mux.Handle("/", api.New(d.Functions, d.Auth, d.Store, d.Store, nil, d.Logs, api.Config{MaxCodeBytes: 1 << 20}).Handler())
	ca := certtest.NewCA(t)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusting clients' handshakes
	// (Certificates, not GetCertificate: StartTLS puts its own in an
	// empty list, which a request without SNI would get.)
	cert, _ := ca.Certificate(t, 1)(nil)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, d.Admin, caFile
}

func TestCACert(t *testing.T) {
	url, token, caFile := tlsAPIServer(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"SPRY_URL=" + url, "SPRY_TOKEN=" + token}
	for _, tc := range []struct {
		name     string
		environ  []string
		args     []string
		wantCode int
		wantErr  string // in stderr
	}{
		{"untrusted without it", nil, []string{"whoami"}, 6, "not trusted"},
		{"the flag", nil, []string{"whoami", "--ca-cert", caFile}, 0, ""},
		{"the environment", []string{"SPRY_CA_CERT=" + caFile}, []string{"whoami"}, 0, ""},
		{"the flag over the environment", []string{"SPRY_CA_CERT=" + notPEM}, []string{"whoami", "--ca-cert", caFile}, 0, ""},
		// Through TLS to the API, which has no such function.
		{"invoke", nil, []string{"invoke", "hello", "--ca-cert", caFile}, 4, "not found"},
		{"invoke untrusted", nil, []string{"invoke", "hello"}, 6, "--ca-cert"},
		{"a file that is not there", nil, []string{"whoami", "--ca-cert", "/nonexistent/ca.pem"}, 2, "/nonexistent/ca.pem"},
		{"a file with no certificate", []string{"SPRY_CA_CERT=" + notPEM}, []string{"whoami"}, 2, "SPRY_CA_CERT " + notPEM + ": no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := spry(t, append(base, tc.environ...), "", tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.wantCode, tc.wantErr)
			}
			if code != 0 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("stderr is more than one line: %q", stderr)
			}
		})
	}
}

// spry login saves the CA with the URL and token, by its absolute name,
// and later commands trust it for that server.
func TestLoginSavesCACert(t *testing.T) {
	url, token, caFile := tlsAPIServer(t)
	dir := filepath.Dir(caFile)
	config := filepath.Join(t.TempDir(), "config.json")
	env := []string{"SPRY_CONFIG=" + config}
	t.Chdir(dir)
	if code, _, stderr := spry(t, env, "", "login", "--url", url, "--token", token, "--ca-cert", "ca.pem"); code != 0 {
		t.Fatalf("login: exit %d: %s", code, stderr)
	}
	data, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var fc fileConfig
	if err := json.Unmarshal(data, &fc); err != nil || fc.CACert != caFile {
		t.Fatalf("config %s (%v), want ca_cert %s", data, err, caFile)
	}
	t.Chdir(t.TempDir())
	if code, _, stderr := spry(t, env, "", "whoami"); code != 0 {
		t.Fatalf("whoami after login: exit %d: %s", code, stderr)
	}
}
