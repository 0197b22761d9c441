package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/httpserve"
)

// Every body but a deploy's must arrive within Config.BodyTimeout of
// its handler starting to read it: a client that trickles one gets a
// 408 request_timeout and changes nothing. Before, past the 8 KiB
// fasthttp reads with the head, such a body had no deadline at all.
// Both servers the API runs on are tried, as for deploys
// (TestDeployBodyTimeout).
func TestBodyTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	requests := []struct {
		method, path string
		// unchanged checks that nothing was stored.
		unchanged func(t *testing.T, e *env)
	}{
		{"POST", "/api/v1/tokens", func(t *testing.T, e *env) {
			var out struct{ Tokens []TokenView }
			e.mustDo(e.admin, "GET", "/api/v1/tokens", "", http.StatusOK, &out)
			if len(out.Tokens) != 1 {
				t.Errorf("tokens: %+v, want the admin's only", out.Tokens)
			}
		}},
		{"POST", "/api/v1/users", func(t *testing.T, e *env) {
			var out struct{ Users []UserView }
			e.mustDo(e.admin, "GET", "/api/v1/users", "", http.StatusOK, &out)
			if len(out.Users) != 1 {
				t.Errorf("users: %+v, want the admin only", out.Users)
			}
		}},
		{"PATCH", "/api/v1/functions/f", func(t *testing.T, e *env) {
			var fn FunctionView
			e.mustDo(e.admin, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
			if fn.Version != 1 {
				t.Errorf("function at version %d, want 1", fn.Version)
			}
		}},
		{"PUT", "/api/v1/functions/f/kv/k", func(t *testing.T, e *env) {
			status, b := e.do(e.admin, "GET", "/api/v1/functions/f/kv/k", "")
			wantError(t, "the key", status, b, http.StatusNotFound, "not_found")
		}},
	}
	for _, srv := range apiServers {
		for _, rq := range requests {
			t.Run(srv.name+" "+rq.method+" "+rq.path, func(t *testing.T) {
				e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, BodyTimeout: timeout})
				withKV(t, e)
				e.deploy(e.admin, "/api/v1/functions/f")
				addr := srv.serve(t, e)
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				// 16 KiB at once (past what fasthttp reads with the
				// head), then a byte every 10 ms of the 60 KiB announced.
				fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
					"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{%s", rq.method, rq.path, addr, e.admin, 60<<10, strings.Repeat(" ", 16<<10))
				start := time.Now()
				defer trickle(conn)()
				wantRequestTimeout(t, conn, "the slow request")
				if took := time.Since(start); took < timeout/2 {
					t.Errorf("answered after %s, well before its %s", took, timeout)
				}
				rq.unchanged(t, e)
			})
		}
	}
}

// trickle writes a byte to conn every 10 ms, a body that never ends,
// until the returned func is called.
func trickle(conn net.Conn) (stop func()) {
	answered := make(chan struct{})
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-answered:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	return func() { close(answered) }
}

// wantRequestTimeout reads what's answer from conn and checks that it
// is a 408 request_timeout.
func wantRequestTimeout(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var eb errdefs.Body
	if res.StatusCode != http.StatusRequestTimeout || json.Unmarshal(b, &eb) != nil || eb.Error.Code != "request_timeout" {
		t.Errorf("%s: %d %s, want 408 request_timeout", what, res.StatusCode, b)
	}
}

// apiServers are the two servers the API runs on, each serving e's API
// and giving its address: net/http (httptest) and the server's own
// fasthttp adaptor.
var apiServers = []struct {
	name  string
	serve func(t *testing.T, e *env) string
}{
	{"net/http", func(t *testing.T, e *env) string { return e.srv.Listener.Addr().String() }},
	{"httpserve", func(t *testing.T, e *env) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := httpserve.New(httpserve.Adapt(e.api.Handler(), nil), nil)
		go func() { _ = srv.Serve(httpserve.Listener(ln, httpserve.WatchAfter, nil)) }()
		t.Cleanup(func() { _ = srv.Shutdown() })
		return ln.Addr().String()
	}},
}
