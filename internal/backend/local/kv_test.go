package local

import (
	"bufio"
	"context"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/kv"
)

// An instance's ctx.kv connections are kept open, a few at once, and
// end with it: when its socket's listener is closed, serveKV closes the
// connections still open and returns, leaving no goroutine behind. A
// generic instance (no function yet) has each connection closed at
// once.
func TestKVConnectionsEndWithTheInstance(t *testing.T) {
	store, err := kv.Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	b := &Backend{cfg: Config{KV: store}}
	for _, tt := range []struct {
		name string
		spec *backend.Spec
	}{
		{"specialized", &backend.Spec{FunctionID: "f"}},
		{"generic", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := goruntime.NumGoroutine()
			path := filepath.Join(t.TempDir(), "kv.sock")
			ln, err := listenKV(path, os.Getuid())
			if err != nil {
				t.Fatal(err)
			}
			p := &proc{kv: ln, spec: tt.spec}
			done := make(chan struct{})
			go func() { b.serveKV(p); close(done) }()
			type conn struct {
				c net.Conn
				r *bufio.Reader
			}
			var conns []conn
			for i := range kvConns + 1 {
				c, err := net.Dial("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				cn := conn{c, bufio.NewReader(c)}
				conns = append(conns, cn)
				// A closed connection may refuse the write itself.
				if _, err := c.Write([]byte(`{"id":1,"op":"get","key":"k"}` + "\n")); err != nil && tt.spec != nil && i < kvConns {
					t.Fatal(err)
				}
				answer, err := cn.r.ReadString('\n')
				switch {
				case tt.spec == nil:
					if err == nil {
						t.Fatalf("a generic instance's connection is answered: %s", answer)
					}
				case i < kvConns:
					if answer != `{"id":1,"value":null,"version":null}`+"\n" {
						t.Fatalf("connection %d: %q, %v", i, answer, err)
					}
				default:
					// Past the bound: refused, with a word why.
					if !strings.Contains(answer, `"rate_limited"`) {
						t.Fatalf("connection %d past the bound: %q, %v", i, answer, err)
					}
					_ = cn.c.(*net.UnixConn).CloseWrite()
					if _, err := cn.r.ReadString('\n'); err == nil {
						t.Fatal("a connection past the bound stays open")
					}
				}
			}
			ln.Close() // as the instance's end does
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("serveKV goes on after its listener closed")
			}
			for i, cn := range conns {
				if line, err := cn.r.ReadString('\n'); err == nil {
					t.Errorf("connection %d open after the instance's end: %q", i, line)
				}
			}
			for deadline := time.Now().Add(10 * time.Second); goruntime.NumGoroutine() > before; goruntime.Gosched() {
				if time.Now().After(deadline) {
					t.Fatalf("%d goroutines, %d before", goruntime.NumGoroutine(), before)
				}
			}
		})
	}
}
