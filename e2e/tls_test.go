package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/certreload/certtest"
)

// TestTLS: spry serve --tls-cert/--tls-key serves the API and functions
// over HTTPS. The CLI deploys and invokes trusting the private CA
// (--ca-cert, here SPRY_CA_CERT), and says what to do without it;
// functions on both runtimes see an https URL and X-Forwarded-Proto; a
// plain HTTP request is answered at once; and a renewed certificate is
// served after SIGHUP. (Upgrades and streams over TLS: the router's
// TestServedOverTLS.)
func TestTLS(t *testing.T) {
	ca := certtest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	ca.WriteServer(t, 1, certFile, keyFile)
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startTLSServer(t, certFile, keyFile, caFile)

	code := `export default { fetch(req) {
		return new Response(req.url + " " + req.headers.get("x-forwarded-proto"));
	} }`
	src := filepath.Join(t.TempDir(), "url.ts")
	if err := os.WriteFile(src, []byte(code), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []string{"deno", "node"} {
		out := s.mustSpry("deploy", src, "--name", "url-"+rt, "--runtime", rt)
		if want := "https://" + s.addr + "/fn/admin/url-" + rt; !strings.Contains(out, want) {
			t.Errorf("deploy said %q, want the function's URL %s", out, want)
		}
		got := s.mustSpry("invoke", "url-"+rt, "--path", "/x?y=1")
		if want := "https://" + s.addr + "/x?y=1 https"; strings.TrimSpace(got) != want {
			t.Errorf("%s: invoke said %q, want %q", rt, got, want)
		}
	}

	t.Run("plain HTTP is answered at once", func(t *testing.T) {
		c := s.dial(t)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /fn/admin/url-deno/ HTTP/1.1\r\nHost: "+s.addr+"\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 400 || !strings.Contains(string(body), "https://") {
			t.Fatalf("%d %q, want a 400 saying to use https", res.StatusCode, body)
		}
	})

	t.Run("the CLI without the CA says what to do", func(t *testing.T) {
		cmd := exec.Command(s.bin, "ls")
		cmd.Env = []string{"SPRY_URL=" + s.url, "SPRY_TOKEN=" + s.token, "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		msg := strings.TrimSpace(string(out))
		if err == nil || !strings.Contains(msg, "not trusted") || !strings.Contains(msg, "--ca-cert") || strings.Contains(msg, "\n") {
			t.Fatalf("spry ls: %v, %q; want a failure in one line suggesting --ca-cert", err, msg)
		}
	})

	t.Run("a renewed certificate after SIGHUP", func(t *testing.T) {
		ca.WriteServer(t, 2, certFile, keyFile)
		if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the new certificate", func() bool {
			c := s.dialTLS(t)
			defer c.Close()
			return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64() == 2
		})
		// And it serves.
		if r := s.get("/fn/admin/url-node/"); r.status != 200 {
			t.Fatalf("after the renewal: %d %s", r.status, r.body)
		}
	})
}

// dialTLS opens a TLS connection to a server started with
// startTLSServer, trusting its CA; it is closed after the test.
func (s *server) dialTLS(t *testing.T) *tls.Conn {
	t.Helper()
	pem, err := os.ReadFile(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
