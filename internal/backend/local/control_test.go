package local

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlAnswersAreBounded: what the server reads of an answer on an
// instance's control socket is bounded. The function's code runs in the
// runtime that answers there (its top level may replace Response.json,
// which the bootstrap answers a specialization with, or Response, which
// answers a probe), so a hostile function decides those bytes; an answer
// with a head of any size was read whole into the server's memory, outside
// every limit of the instance.
func TestControlAnswersAreBounded(t *testing.T) {
	const offered = 32 << 20 // what the hostile runtime tries to send
	line := "X-Big: " + strings.Repeat("y", 1000) + "\r\n"
	// serve answers one connection with an endless head, and reports
	// how much of it the server took.
	serve := func(t *testing.T, readRequest bool) (path string, sent <-chan int) {
		path = filepath.Join(t.TempDir(), "control.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ch := make(chan int, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				ch <- -1
				return
			}
			defer c.Close()
			if readRequest {
				buf := make([]byte, 4096)
				_, _ = c.Read(buf)
			}
			n, _ := c.Write([]byte("HTTP/1.1 200 OK\r\n"))
			for n < offered {
				m, err := c.Write([]byte(line))
				n += m
				if err != nil {
					break
				}
			}
			ch <- n
		}()
		return path, ch
	}
	const most = 1 << 20 // the bound, and the socket's buffers
	t.Run("specialization", func(t *testing.T) {
		path, sent := serve(t, false)
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		failure, answered := readLoadAnswer(c)
		c.Close()
		if n := <-sent; n > most {
			t.Errorf("the server read %d bytes of the answer", n)
		}
		if failure == "" || answered {
			t.Errorf("an answer over the bound: failure %q, answered %v; want a failure", failure, answered)
		}
	})
	t.Run("probe", func(t *testing.T) {
		path, sent := serve(t, true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := probe(ctx, path)
		if n := <-sent; n > most {
			t.Errorf("the server read %d bytes of the answer", n)
		}
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("probe: %v, want an error at once", err)
		}
	})
}
