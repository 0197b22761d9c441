package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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
