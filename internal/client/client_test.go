package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/errdefs"
)

// A proxy in front of the server (nginx, a load balancer) answers its own
// errors in HTML or plain text. Their class, and so the CLI's exit code,
// comes from the status: a 502 from a proxy is as unserved as the API's.
func TestNonJSONErrorsKeepTheirStatusClass(t *testing.T) {
	for _, tt := range []struct {
		status int
		want   error
		exit   int
	}{
		{http.StatusUnauthorized, errdefs.ErrUnauthenticated, 3},
		{http.StatusForbidden, errdefs.ErrPermissionDenied, 3},
		{http.StatusNotFound, errdefs.ErrNotFound, 4},
		{http.StatusConflict, errdefs.ErrConflict, 5},
		{http.StatusRequestEntityTooLarge, errdefs.ErrTooLarge, 2},
		{http.StatusTooManyRequests, errdefs.ErrRateLimited, 6},
		{http.StatusBadGateway, errdefs.ErrBadGateway, 6},
		{http.StatusServiceUnavailable, errdefs.ErrUnavailable, 6},
		{http.StatusGatewayTimeout, errdefs.ErrTimeout, 6},
		{http.StatusInternalServerError, errdefs.ErrInternal, 1},
	} {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte("<html><body><h1>" + http.StatusText(tt.status) + "</h1></body></html>\n"))
			}))
			defer srv.Close()
			_, err := New(srv.URL, "t").Functions(context.Background(), "")
			var ce *Error
			if !errors.As(err, &ce) || ce.Status != tt.status {
				t.Fatalf("err = %v, want a client Error with status %d", err, tt.status)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("err %v (code %q) is not %v", err, ce.Code, tt.want)
			}
			if got := errdefs.ExitCode(err); got != tt.exit {
				t.Errorf("exit code %d, want %d", got, tt.exit)
			}
		})
	}
}

// A redirect in front of the API must not turn a write into a read: Go
// follows a 301 or 302 with a GET, and the write's caller would be told
// the GET's answer (deployed, deleted) though nothing was written.
func TestRedirectNeverTurnsAWriteIntoARead(t *testing.T) {
	var methods []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		methods = append(methods, r.Method+" "+r.URL.Path)
		if !strings.HasPrefix(r.URL.Path, "/moved/") {
			http.Redirect(w, r, "/moved"+r.URL.Path, http.StatusMovedPermanently)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"owner":"alice","name":"hello","version":3}` + "\n"))
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"deploy", func() error {
			_, err := c.Deploy(context.Background(), "", "hello", api.DeployBody{Code: "export default () => 1"})
			return err
		}},
		{"rm", func() error { return c.DeleteFunction(context.Background(), "", "hello") }},
	} {
		methods = nil
		err := tt.call()
		if err == nil {
			t.Errorf("%s: no error though the server only redirected (requests: %v)", tt.name, methods)
		} else if got := errdefs.ExitCode(err); got != 2 {
			t.Errorf("%s: %v: exit code %d, want 2 (the --url is not the server's own)", tt.name, err, got)
		}
		for _, m := range methods {
			if strings.HasPrefix(m, "GET ") {
				t.Errorf("%s: the redirect was followed with %s", tt.name, m)
			}
		}
	}
}

// The bearer token goes to the server it was given for, never to where a
// redirect points elsewhere: another port of the same host included.
func TestRedirectKeepsTheTokenAtHome(t *testing.T) {
	var leaked []string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			leaked = append(leaked, a)
		}
		_, _ = w.Write([]byte(`{"functions":[]}`))
	}))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c := New(srv.URL, "secret-token")
	_, err := c.Functions(context.Background(), "")
	if len(leaked) > 0 {
		t.Errorf("the token reached %s: %q", other.URL, leaked)
	}
	if err == nil {
		t.Errorf("no error though the server redirected to %s", other.URL)
	}
	_, _ = c.Whoami(context.Background())
	_, _ = c.Logs(context.Background(), "hello", LogOptions{}, func(api.LogLine) error { return nil })
	if len(leaked) > 0 {
		t.Errorf("the token reached %s: %q", other.URL, leaked)
	}
}

// A function's redirect is its answer: invoke shows it, as curl does,
// rather than calling where it points (a POST there turned into a GET).
func TestInvokeShowsAFunctionsRedirect(t *testing.T) {
	var followed []string
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		followed = append(followed, r.Method+" "+r.URL.String())
	}))
	defer other.Close()
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/fn/alice/hello") {
				http.Redirect(w, r, other.URL+"/login", status)
				return
			}
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}))
		res, err := New(srv.URL, "t").Invoke(context.Background(), "alice", "hello", "POST", "/", strings.NewReader("x"), nil)
		srv.Close()
		if err != nil {
			t.Fatalf("%d: %v", status, err)
		}
		res.Body.Close()
		if res.StatusCode != status || res.Header.Get("Location") != other.URL+"/login" {
			t.Errorf("invoke answered %d (Location %q), want the function's %d", res.StatusCode, res.Header.Get("Location"), status)
		}
	}
	if len(followed) > 0 {
		t.Errorf("invoke followed the function's redirect: %v", followed)
	}
}

// An invocation lasts as long as its function may run (--max-timeout,
// 15 minutes by default) or streams its body: the client's own timeout
// for API calls (5 minutes; here shortened) does not cut it.
func TestInvokeOutlastsTheAPITimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("part 1\n"))
		_ = http.NewResponseController(w).Flush()
		time.Sleep(300 * time.Millisecond)
		_, _ = w.Write([]byte("part 2\n"))
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	c.HTTP.Timeout = 100 * time.Millisecond
	res, err := c.Invoke(context.Background(), "alice", "slow", "GET", "/", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || string(body) != "part 1\npart 2\n" {
		t.Errorf("body %q, err %v", body, err)
	}
}

// An expiry under a millisecond (spry kv set --expire-in 500us) is one
// millisecond, not 0, which the API takes for never.
func TestKVSetExpiryUnderAMillisecond(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Query().Get("expireIn")
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{500 * time.Microsecond, "1"}, {1500 * time.Microsecond, "2"}, {time.Second, "1000"}, {0, ""}} {
		if err := c.KVSet(t.Context(), "", "f", "k", []byte("1"), tt.d); err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("KVSet with an expiry of %v: expireIn=%q, want %q", tt.d, got, tt.want)
		}
	}
}

// A log read is bounded by the client's timeout, as every API call is,
// and so is the wait for a follow's answer (the server answers at once
// and streams from there): a server that took the connection and never
// answered kept `spry logs` and `spry logs -f` waiting forever. Once the
// follow's answer has come, only ctx ends it, however long it is quiet.
func TestLogsDoNotWaitForeverForAnAnswer(t *testing.T) {
	line := `{"id":1,"time":"2025-01-02T03:04:05Z","version":1,"stream":"stdout","line":"hello"}` + "\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("version") == "1" {
			<-r.Context().Done() // never answers
			return
		}
		// A follow that answers, is quiet for longer than the timeout,
		// then ends with its last word.
		_, _ = w.Write([]byte(line))
		_ = http.NewResponseController(w).Flush()
		time.Sleep(400 * time.Millisecond)
		_, _ = w.Write([]byte(line + `{"error":{"code":"not_found","message":"function alice/f was deleted"}}` + "\n"))
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	c.HTTP.Timeout = 100 * time.Millisecond
	for _, follow := range []bool{false, true} {
		done := make(chan error, 1)
		go func() {
			_, err := c.Logs(t.Context(), "f", LogOptions{Version: 1, Follow: follow}, func(api.LogLine) error { return nil })
			done <- err
		}()
		select {
		case err := <-done:
			if got := errdefs.ExitCode(err); got != 6 {
				t.Errorf("follow %v: %v (exit %d), want unavailable (exit 6)", follow, err, got)
			}
		case <-time.After(5 * time.Second):
			srv.CloseClientConnections()
			t.Fatalf("follow %v: still waiting for a server that never answers", follow)
		}
	}
	n := 0
	_, err := c.Logs(t.Context(), "f", LogOptions{Follow: true}, func(api.LogLine) error { n++; return nil })
	if n != 2 || !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a follow quiet for longer than the timeout: %d lines, %v; want 2 and not found", n, err)
	}
}

// A proxy's error page (nginx's 502, a load balancer's 503) is said in
// one short line: its status and the start of its text. The whole page,
// up to a MiB of HTML over many lines, was printed as the error, with any
// control characters it held going to the terminal as they were.
func TestProxyErrorPageIsOneLine(t *testing.T) {
	page := "<html>\r\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway</h1></center>\n\x1b]0;owned\x07" +
		strings.Repeat("<!-- padding -->\n", 1000) + "</body>\n</html>\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte(page))
	}))
	defer srv.Close()
	_, err := New(srv.URL, "t").Functions(context.Background(), "")
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "server answered 502 Bad Gateway: <html> <head><title>502 Bad Gateway</title></head>") {
		t.Errorf("message %q does not start with the status and the page's text", msg)
	}
	if len(msg) > 300 {
		t.Errorf("message is %d bytes long: %q", len(msg), msg)
	}
	for _, r := range msg {
		if r < 0x20 || r == 0x7f {
			t.Fatalf("message holds control character %U: %q", r, msg)
		}
	}
	if errdefs.ExitCode(err) != 6 {
		t.Errorf("exit code %d, want 6", errdefs.ExitCode(err))
	}
	// The API's own JSON message too, from a server that is not Spry's.
	apiLike := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no\u001b[2J such\r\nthing\n\tat x.ts:1:2"}}`))
	}))
	defer apiLike.Close()
	_, err = New(apiLike.URL, "t").Functions(context.Background(), "")
	// Newlines and tabs stay (a build error's lines), which drive no
	// terminal.
	if want := "no\\x1b[2J such\\x0d\nthing\n\tat x.ts:1:2"; err == nil || err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// A request the API refused as busy (a 429 or 503 with Retry-After,
// answered before it acted on anything) is sent again, body and all,
// after the wait asked for, a few times; the caller is told of each wait.
// Without Retry-After, past maxBusyWait, or after maxBusyRetries, the
// refusal is the answer. An invocation is never sent again: a 503 may be
// the function's own.
func TestBusyServerIsAskedAgain(t *testing.T) {
	for _, tt := range []struct {
		name       string
		status     int
		retryAfter string
		refusals   int
		wantTries  int
		wantWaits  []time.Duration
		wantErr    error
	}{
		{"429 twice", http.StatusTooManyRequests, "5", 2, 3, []time.Duration{5 * time.Second, 5 * time.Second}, nil},
		{"503 once", http.StatusServiceUnavailable, "1", 1, 2, []time.Duration{time.Second}, nil},
		{"no wait", http.StatusTooManyRequests, "0", 1, 2, []time.Duration{0}, nil},
		{"refused every time", http.StatusServiceUnavailable, "2", 100, maxBusyRetries + 1,
			slices.Repeat([]time.Duration{2 * time.Second}, maxBusyRetries), errdefs.ErrUnavailable},
		{"without Retry-After", http.StatusServiceUnavailable, "", 1, 1, nil, errdefs.ErrUnavailable},
		{"a date", http.StatusTooManyRequests, "Wed, 21 Oct 2015 07:28:00 GMT", 1, 1, nil, errdefs.ErrRateLimited},
		{"longer than the most", http.StatusTooManyRequests, "31", 1, 1, nil, errdefs.ErrRateLimited},
		{"a 502", http.StatusBadGateway, "1", 1, 1, nil, errdefs.ErrBadGateway},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var tries int
			var bodies []string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tries++
				b, _ := io.ReadAll(r.Body)
				bodies = append(bodies, r.Method+" "+string(b))
				if tries <= tt.refusals {
					if tt.retryAfter != "" {
						w.Header().Set("Retry-After", tt.retryAfter)
					}
					errdefs.WriteHTTP(w, errdefs.New(errdefs.FromCode(map[int]string{429: "rate_limited", 503: "unavailable", 502: "bad_gateway"}[tt.status]), "busy"))
					return
				}
				_, _ = w.Write([]byte(`{"name":"f","version":3}`))
			}))
			defer srv.Close()
			c := New(srv.URL, "t")
			var waits, told []time.Duration
			c.Sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			c.Busy = func(d time.Duration, why error) {
				told = append(told, d)
				if why == nil || why.Error() != "busy" {
					t.Errorf("told why %v, want the server's message", why)
				}
			}
			v, err := c.Deploy(t.Context(), "", "f", api.DeployBody{Code: "code"})
			if tt.wantErr == nil && (err != nil || v.Version != 3) {
				t.Errorf("deploy: %+v, %v; want version 3", v, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("deploy: %v, want %v", err, tt.wantErr)
			}
			if tries != tt.wantTries || !slices.Equal(waits, tt.wantWaits) || !slices.Equal(told, tt.wantWaits) {
				t.Errorf("%d tries, waits %v, told %v; want %d, %v", tries, waits, told, tt.wantTries, tt.wantWaits)
			}
			for _, b := range bodies {
				if b != bodies[0] || !strings.HasPrefix(b, `PUT {"code":"code"`) {
					t.Errorf("sent %q, then %q", bodies[0], b)
				}
			}
		})
	}
}

// A wait is cut short by the end of ctx (Ctrl-C), which is the answer.
// A log read is asked again as other calls are. An invocation is not.
func TestBusyWaitEndsWithCtx(t *testing.T) {
	var tries int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tries++
		w.Header().Set("Retry-After", "1")
		errdefs.WriteHTTP(w, errdefs.New(errdefs.ErrRateLimited, "busy"))
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	ctx, cancel := context.WithCancel(t.Context())
	c.Sleep = func(ctx context.Context, d time.Duration) error {
		cancel()
		return sleepCtx(ctx, time.Hour)
	}
	_, err := c.Logs(ctx, "f", LogOptions{}, func(api.LogLine) error { return nil })
	if !errors.Is(err, context.Canceled) || tries != 1 {
		t.Errorf("logs: %v after %d tries, want context.Canceled after 1", err, tries)
	}
	c.Sleep = func(context.Context, time.Duration) error {
		t.Error("an invocation waited to be sent again")
		return nil
	}
	res, err := c.Invoke(t.Context(), "alice", "f", "POST", "/", strings.NewReader("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || tries != 2 {
		t.Errorf("invoke: %d after %d tries in all, want the 429 after 2", res.StatusCode, tries)
	}
}

// A server that cannot be reached is said in one line with what to do,
// not Go's chain (Get "http://...": dial tcp ...: connect: connection
// refused), which repeats the URL and the address.
func TestUnreachableIsOneLineWithAHint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	slow := New(hang.URL, "t")
	slow.HTTP.Timeout = 50 * time.Millisecond

	_, refused := New(closed, "t").Functions(context.Background(), "")
	_, timedOut := slow.Functions(context.Background(), "")
	noHost := &unreachable{"http://spry.invalid:8080", &url.Error{Op: "Get", URL: "http://spry.invalid:8080/api/v1/functions",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "spry.invalid", IsNotFound: true}}}}
	for _, tt := range []struct {
		name string
		err  error
		want []string
	}{
		{"refused", refused, []string{"cannot reach the Spry server at " + closed + " (connection refused)", "--url"}},
		{"no such host", noHost, []string{"(no such host spry.invalid)", "--url"}},
		{"timeout", timedOut, []string{"cannot reach the Spry server at " + hang.URL + ": no answer in time"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg := tt.err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("%q does not say %q", msg, w)
				}
			}
			for _, chain := range []string{`Get "`, "dial tcp", "\n"} {
				if strings.Contains(msg, chain) {
					t.Errorf("%q holds Go's %q", msg, chain)
				}
			}
			if got := errdefs.ExitCode(tt.err); got != 6 {
				t.Errorf("exit code %d, want 6", got)
			}
		})
	}
}
