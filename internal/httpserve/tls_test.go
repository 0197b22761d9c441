package httpserve

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/certreload/certtest"
)

// tlsServer serves h over TLSListener on loopback and returns its
// address and a client config that trusts it.
func tlsServer(t *testing.T, h fasthttp.RequestHandler) (string, *tls.Config) {
	t.Helper()
	ca := certtest.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(h, nil)
	go func() { _ = srv.Serve(TLSListener(ln, TLSConfig(ca.Certificate(t, 7)), 5*time.Millisecond, nil)) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String(), ca.Client()
}

func TestTLS(t *testing.T) {
	addr, ccfg := tlsServer(t, func(ctx *fasthttp.RequestCtx) {
		c, ok := ConnOf(ctx.Conn())
		if p := string(ctx.Path()); ok && (p == "/wait" || p == "/poll") {
			// As the router waits on a function (Await: the watch reads
			// the TLS connection) or sends a body (AwaitHangUp: it polls
			// the socket below) for a hang-up.
			gone := make(goner, 1)
			if p == "/wait" {
				c.Await(&Wait{}, time.Now(), gone)
			} else {
				c.AwaitHangUp(&Wait{}, time.Now(), gone)
			}
			select {
			case <-gone:
				ctx.SetBodyString("gone")
			case <-time.After(5 * time.Second):
				ctx.SetBodyString("not gone")
			}
			c.EndWait()
			return
		}
		if ctx.IsTLS() && ok {
			ctx.SetBodyString("tls " + ctx.TLSConnectionState().NegotiatedProtocol)
		}
	})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ccfg, ForceAttemptHTTP2: true}}

	t.Run("a request is served over TLS, as HTTP/1.1", func(t *testing.T) {
		res, err := hc.Get("https://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != "tls http/1.1" || res.ProtoMajor != 1 {
			t.Fatalf("%s %q, want HTTP/1.1 and %q", res.Proto, body, "tls http/1.1")
		}
	})

	t.Run("plain HTTP is answered 400 at once", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 400 || !strings.Contains(string(body), "https://") {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
	})

	for _, tt := range []struct {
		name, path string
		hangUp     func(c *tls.Conn)
	}{
		// close_notify: the client is gone (its reading side stays open,
		// for the answer that tells what the handler saw).
		{"a hang-up is seen while the handler waits", "/wait", func(c *tls.Conn) { _ = c.CloseWrite() }},
		// A FIN below TLS: the kernel's POLLRDHUP on the socket.
		{"a hang-up is seen without reading", "/poll", func(c *tls.Conn) { _ = c.NetConn().(*net.TCPConn).CloseWrite() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", addr, ccfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _ = io.WriteString(c, "GET "+tt.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			tt.hangUp(c)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			if string(body) != "gone" {
				t.Fatalf("%q, want the hang-up seen", body)
			}
		})
	}
}
