package httpserve

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func serve(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(h, nil)
	go srv.Serve(ln)
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func TestAdaptBuffered(t *testing.T) {
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("X-A", "1")
		w.Header().Add("X-A", "2")
		w.WriteHeader(201)
		fmt.Fprintf(w, "%s %s %s %s %d", r.Method, r.URL.RequestURI(), r.Header.Get("X-In"), body, r.ContentLength)
	}), nil))
	req, _ := http.NewRequest("PUT", url+"/a/b?c=d", strings.NewReader("hello"))
	req.Header.Set("X-In", "v")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 201 || string(b) != "PUT /a/b?c=d v hello 5" || len(res.Header.Values("X-A")) != 2 {
		t.Fatalf("%d %q %v", res.StatusCode, b, res.Header)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("sniffed Content-Type %q", ct)
	}
}

// A flushed response reaches the client while the handler runs on, and a
// client that goes away cancels the request's context (as `spry logs -f`
// needs).
func TestAdaptStreamsAndCancels(t *testing.T) {
	next := make(chan struct{})
	cancelled := make(chan struct{})
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		io.WriteString(w, "one\n")
		w.(http.Flusher).Flush()
		<-next
		io.WriteString(w, "two\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		close(cancelled)
	}), nil))
	res, err := http.Get(url + "/follow")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(res.Body)
	for i, want := range []string{"one\n", "two\n"} {
		line, err := br.ReadString('\n')
		if line != want {
			t.Fatalf("line %d: %q, %v", i, line, err)
		}
		if i == 0 {
			close(next)
		}
	}
	res.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context was not cancelled when the client went away")
	}
}

func TestHeaderTooLarge(t *testing.T) {
	url := serve(t, func(ctx *fasthttp.RequestCtx) {})
	req, _ := http.NewRequest("GET", url+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("h", MaxHeaderBytes+1))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 431 || !strings.Contains(string(b), `"code":"header_too_large"`) {
		t.Fatalf("%d %s", res.StatusCode, b)
	}
}

func TestAdaptPanic(t *testing.T) {
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }), nil))
	res, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 500 {
		t.Fatalf("%d", res.StatusCode)
	}
}

// A request refused before its body is read (too large) or with a head
// over the limit gets its answer, not a connection reset: the server
// closes lingering.
func TestRefusalReachesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(func(ctx *fasthttp.RequestCtx) {
		ctx.SetConnectionClose()
		ctx.SetStatusCode(413)
	}, nil)
	go srv.Serve(Listener(ln, time.Second))
	t.Cleanup(func() { _ = srv.Shutdown() })
	url := "http://" + ln.Addr().String()
	for i := range 20 {
		req, _ := http.NewRequest("POST", url, strings.NewReader(strings.Repeat("x", 4<<20)))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		res.Body.Close()
		if res.StatusCode != 413 {
			t.Fatalf("body %d: status %d", i, res.StatusCode)
		}
		req, _ = http.NewRequest("GET", url, nil)
		req.Header.Set("X-Big", strings.Repeat("h", 2*MaxHeaderBytes))
		res, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("head %d: %v", i, err)
		}
		res.Body.Close()
		if res.StatusCode != 431 {
			t.Fatalf("head %d: status %d", i, res.StatusCode)
		}
	}
}

// What a handler leaves of a body is never read as the next request: the
// connection closes after the answer.
func TestAdaptUnreadBodyEndsConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PUT" {
			_, _ = io.ReadFull(r.Body, make([]byte, 10))
			w.WriteHeader(413)
			return
		}
		io.WriteString(w, "ok")
	}), nil), nil)
	go srv.Serve(Listener(ln, time.Second))
	t.Cleanup(func() { _ = srv.Shutdown() })
	url := "http://" + ln.Addr().String()
	// The leftover is a request of its own, as a smuggler would send it.
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	body := strings.Repeat("x", 64<<10) + smuggled
	for i := range 5 {
		req, _ := http.NewRequest("PUT", url, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 413 || !res.Close {
			t.Fatalf("put %d: status %d, close %v", i, res.StatusCode, res.Close)
		}
		res, err = http.Get(url + "/next")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("get %d: %d %q", i, res.StatusCode, b)
		}
	}
}
