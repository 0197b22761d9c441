package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
)

// WaitUpgrades waits for the upgraded connections being spliced (which
// the server's Shutdown does not wait for), until its ctx ends: the
// server's drain gives a WebSocket the time a streamed answer gets.
func TestWaitUpgrades(t *testing.T) {
	bye := make(chan struct{})
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, ok := switchProtocols(w)
		if !ok {
			return
		}
		defer conn.Close()
		// The instance speaks first, then waits for the client's line.
		brw.WriteString("hello\n")
		brw.Flush()
		if line, _ := brw.ReadString('\n'); line == "bye\n" {
			close(bye)
		}
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	rt := New(oneSpec{spec}, activator.New(&upstreamBackend{addr: sock}, activator.Config{}), Config{})
	srv := serveRouterWatching(t, rt, time.Millisecond)

	if err := rt.WaitUpgrades(context.Background()); err != nil {
		t.Fatalf("no upgrade: %v", err)
	}
	conn := srv.dial(t, 5*time.Second)
	fmt.Fprintf(conn, "GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("%v %v", res, err)
	}
	if line, err := br.ReadString('\n'); line != "hello\n" {
		t.Fatalf("%q %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := rt.WaitUpgrades(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with an upgrade spliced: %v, want the deadline", err)
	}
	fmt.Fprintf(conn, "bye\n")
	<-bye
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rt.WaitUpgrades(ctx); err != nil {
		t.Fatalf("once the upgrade ended: %v", err)
	}
}

// An upgraded connection (a WebSocket) is bounded by the function's
// timeout only until its 101: after it, it lasts while either side
// sends (each way alone keeps it), holding its lease, so its instance
// counts as busy; once neither has sent anything for the idle timeout it
// is closed, both ways, and the lease is given back.
func TestUpgradeOutlivesTheTimeoutUntilIdle(t *testing.T) {
	const (
		timeout = 200 * time.Millisecond
		idle    = 400 * time.Millisecond
		every   = 50 * time.Millisecond
		lasting = 4 * timeout
	)
	tests := []struct {
		name   string
		talker string // who sends: "client" (echoed back) or "instance"
	}{
		{"client talks, instance echoes", "client"},
		{"instance talks, client only reads", "instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			instEnded := make(chan struct{})
			stop := make(chan struct{})
			sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, brw, ok := switchProtocols(w)
				if !ok {
					return
				}
				defer close(instEnded)
				defer conn.Close()
				if tt.talker == "instance" {
					for i := 0; ; i++ {
						select {
						case <-stop:
							// Quiet from now on: it waits for the router's close.
							_, _ = brw.ReadString('\n')
							return
						case <-time.After(every):
						}
						if _, err := fmt.Fprintf(brw, "tick %d\n", i); err != nil || brw.Flush() != nil {
							return
						}
					}
				}
				for {
					line, err := brw.ReadString('\n')
					if err != nil {
						return
					}
					brw.WriteString("echo: " + line)
					if brw.Flush() != nil {
						return
					}
				}
			}))
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: timeout}
			act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
			rt := New(oneSpec{spec}, act, Config{UpgradeIdleTimeout: idle})
			srv := serveRouter(t, rt)
			busy := func() int {
				n := 0
				for _, s := range act.States() {
					n += s.Busy
				}
				return n
			}

			conn := srv.dial(t, 10*time.Second)
			fmt.Fprintf(conn, "GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			if err != nil || res.StatusCode != 101 {
				t.Fatalf("%v %v", res, err)
			}
			start := time.Now()
			for i := 0; time.Since(start) < lasting; i++ {
				want := fmt.Sprintf("tick %d\n", i)
				if tt.talker == "client" {
					fmt.Fprintf(conn, "m%d\n", i)
					want = fmt.Sprintf("echo: m%d\n", i)
					time.Sleep(every)
				}
				if line, err := br.ReadString('\n'); line != want {
					t.Fatalf("after %v (the timeout is %v): %q %v, want %q", time.Since(start), timeout, line, err, want)
				}
			}
			if n := busy(); n != 1 {
				t.Fatalf("%d instances busy while the WebSocket is open, want 1", n)
			}
			close(stop)
			// Both quiet now: the router closes the connection after idle.
			quiet := time.Now()
			rest, err := io.ReadAll(br)
			if err != nil {
				t.Fatalf("the client's connection ended with %v (rest %q), not a close", err, rest)
			}
			// (The last byte may have gone up to every before quiet, in
			// either direction, and the deadline's timer has its jitter.)
			if d := time.Since(quiet); d < idle/2 || d > idle+2*time.Second {
				t.Fatalf("closed %v after the last byte, want about %v", d, idle)
			}
			select {
			case <-instEnded:
			case <-time.After(5 * time.Second):
				t.Fatal("the instance's side was not closed")
			}
			deadline := time.Now().Add(5 * time.Second)
			for busy() != 0 {
				if time.Now().After(deadline) {
					t.Fatal("the lease was not given back")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// Until its 101 an upgrade has the function's time, as any request: an
// instance that does not answer it gets the client a 504.
func TestUpgradeNotSwitchedInTimeIsATimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 200 * time.Millisecond}
	rt := New(oneSpec{spec}, activator.New(&upstreamBackend{addr: sock, probe: func(context.Context) error { return nil }}, activator.Config{}), Config{})
	srv := serveRouter(t, rt)
	conn := srv.dial(t, 10*time.Second)
	fmt.Fprintf(conn, "GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || res.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("%v %v, want a 504", res, err)
	}
}
