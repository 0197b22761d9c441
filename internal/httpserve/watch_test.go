package httpserve

import (
	"io"
	"net"
	"testing"
	"time"
)

type goner chan struct{}

func (g goner) ClientGone() { g <- struct{}{} }

// AwaitHangUp tells of a hang-up without reading: the bytes the client
// sent before it closed are still there for the handler, and bytes alone
// are not a hang-up.
func TestAwaitHangUp(t *testing.T) {
	for _, tc := range []struct {
		name      string
		close     bool // the client closes after sending
		endFirst  bool // the handler ends the wait before the client closes
		wantGone  bool
		wantBytes string
	}{
		{name: "bytes, then close", close: true, wantGone: true, wantBytes: "body"},
		{name: "bytes, still open", wantBytes: "body"},
		{name: "wait ended, then close", close: true, endFirst: true, wantBytes: "body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			wl := Listener(ln, time.Millisecond, nil)
			defer wl.Close()
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			nc, err := wl.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			c := nc.(*Conn)
			gone := make(goner, 1)
			c.AwaitHangUp(&Wait{}, time.Now(), gone)
			if tc.endFirst {
				c.EndWait()
			}
			io.WriteString(client, "body")
			if tc.close {
				client.Close()
			}
			select {
			case <-gone:
				if !tc.wantGone {
					t.Fatal("ClientGone was called")
				}
			case <-time.After(200 * time.Millisecond): // ~200 sweeps
				if tc.wantGone {
					t.Fatal("ClientGone was not called")
				}
			}
			c.EndWait()
			buf := make([]byte, 16)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := io.ReadAtLeast(c, buf, len(tc.wantBytes))
			if err != nil || string(buf[:n]) != tc.wantBytes {
				t.Fatalf("read %q, %v; want %q", buf[:n], err, tc.wantBytes)
			}
		})
	}
}

// The sweep sleeps while the listener has no connections, and the next
// connection wakes it: its wait is watched as the first one's was.
func TestWatchAfterAnIdleSpell(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := Listener(ln, time.Millisecond, nil)
	defer wl.Close()
	for i := 0; i < 2; i++ {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		nc, err := wl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c := nc.(*Conn)
		gone := make(goner, 1)
		c.AwaitHangUp(&Wait{}, time.Now(), gone)
		client.Close()
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d: ClientGone was not called", i+1)
		}
		c.EndWait()
		c.Close()
		// No connection left: the sweep goes idle (a few of its periods).
		time.Sleep(10 * time.Millisecond)
	}
}
