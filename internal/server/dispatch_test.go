package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/httpserve"
	"github.com/spry-run/spry/internal/router"
)

// A request answered without its body being read (OPTIONS *, a host
// below the function domain that names no function) closes its
// connection: the rest of the body is never read as the next request.
func TestDispatchUnreadBodyIsNoRequest(t *testing.T) {
	var rested atomic.Int32
	rt := router.New(nil, nil, router.Config{Domain: "fn.test"})
	srv := httpserve.New(dispatch(rt, func(ctx *fasthttp.RequestCtx) { rested.Add(1) }), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(httpserve.Listener(ln, httpserve.WatchAfter, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	const next = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	// fasthttp reads 8 KiB of a body before the handler runs, none of a
	// chunked one.
	pad := strings.Repeat("x", 8<<10)
	for _, head := range []string{"OPTIONS * HTTP/1.1\r\nHost: a\r\n", "POST / HTTP/1.1\r\nHost: alice.fn.test\r\n"} {
		for _, framing := range []string{fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(pad)+len(next), pad), "Transfer-Encoding: chunked\r\n\r\n"} {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			br := bufio.NewReader(c)
			fmt.Fprint(c, head+framing)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			fmt.Fprint(c, next)
			if res.StatusCode/100 != 4 || !res.Close {
				t.Errorf("%q: %d %s (close %v); want a 4xx and the connection closed", head, res.StatusCode, b, res.Close)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
				t.Errorf("%q: then %q, %v; want the connection's end", head, rest, err)
			}
			c.Close()
		}
	}
	if n := rested.Load(); n != 0 {
		t.Fatalf("the bodies were served as %d requests", n)
	}
}
