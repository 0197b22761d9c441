package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/certreload/certtest"
	"github.com/spry-run/spry/internal/httpserve"
)

// routerOverTLS serves a router whose one function's instance serves
// upstream, as spry serve --tls-cert does: fasthttp alone, over
// httpserve.TLSListener. It returns the address and a client config
// trusting the certificate.
func routerOverTLS(t *testing.T, upstream http.Handler) (string, *tls.Config) {
	t.Helper()
	ca := certtest.NewCA(t)
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: serveUnix(t, upstream)}, activator.Config{})
	rt := New(oneSpec{spec}, act, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserve.New(rt.Handle, nil)
	go srv.Serve(httpserve.TLSListener(ln, httpserve.TLSConfig(ca.Certificate(t, 1)), time.Millisecond, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String(), ca.Client()
}

// Over TLS the function is told https, streams flow as they are
// written, upgrades are spliced, an answer that comes before the body
// has all been sent is written by the handler, and a hang-up is seen.
func TestServedOverTLS(t *testing.T) {
	hangUp := make(chan error, 1)
	hold := make(chan struct{})
	defer close(hold)
	addr, ccfg := routerOverTLS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/proto":
			io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: first\n\n")
			w.(http.Flusher).Flush()
			<-hold
		case "/ws":
			echoUpgraded(w)
		case "/slow":
			select {
			case <-r.Context().Done():
				hangUp <- r.Context().Err()
			case <-time.After(5 * time.Second):
				hangUp <- nil
			}
		}
	}))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ccfg}}
	defer hc.CloseIdleConnections()
	url := "https://" + addr + "/fn/alice/fn"
	dial := func(t *testing.T) *tls.Conn {
		c, err := tls.Dial("tcp", addr, ccfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}

	t.Run("X-Forwarded-Proto", func(t *testing.T) {
		res, err := hc.Get(url + "/proto")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != "https" {
			t.Fatalf("X-Forwarded-Proto %q, want https", body)
		}
	})

	for _, method := range []string{"GET", "POST"} {
		// A POST's answer comes before the function reads its body (as
		// in TestForwardEarlyStreamFlows).
		t.Run("a stream flows, "+method, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			var body io.Reader
			if method == "POST" {
				body = strings.NewReader(`{"prompt":"hi"}`)
			}
			req, _ := http.NewRequestWithContext(ctx, method, url+"/events", body)
			res, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			line, err := bufio.NewReader(res.Body).ReadString('\n')
			if err != nil || line != "data: first\n" {
				t.Fatalf("first event: %q (%v)", line, err)
			}
		})
	}

	t.Run("an upgrade is spliced", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != 101 {
			t.Fatalf("%v %v", res, err)
		}
		fmt.Fprintf(c, "hello\n")
		if line, err := br.ReadString('\n'); line != "echo: hello\n" {
			t.Fatalf("%q %v", line, err)
		}
	})

	t.Run("a hang-up aborts the function's request", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "GET /fn/alice/fn/slow HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.CloseWrite() // close_notify
		select {
		case err := <-hangUp:
			if err == nil {
				t.Fatal("the function's request went on for 5 s")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no answer from the function")
		}
	})
}
