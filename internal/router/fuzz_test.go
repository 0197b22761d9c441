package router

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
)

// FuzzInstanceResponse: a function is untrusted, so whatever bytes its
// instance answers with, the client gets one well-formed HTTP response
// (the instance's, or the router's 502) that carries the router's
// request id; never a panic, a hang, or a second response smuggled into
// the client's connection.
func FuzzInstanceResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmugl",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: a\rX-B: b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.0 200 OK\r\n\r\nold",
		"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	var answer atomic.Pointer[[]byte]
	sock := filepath.Join(f.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				_, _ = c.Write(*answer.Load())
			}()
		}
	}()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	srv := serveRouter(f, New(oneSpec{spec}, act, Config{}))
	addr := srv.URL[len("http://"):]

	f.Fuzz(func(t *testing.T, b []byte) {
		answer.Store(&b)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var ids []string
		for i := 0; i < 2; i++ {
			if _, err := io.WriteString(c, "GET /fn/alice/fn/x HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
				if i > 0 {
					return // the router closed after the first answer
				}
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "/fn/alice/fn/x", nil)
			res, err := http.ReadResponse(br, req)
			if err != nil {
				if i > 0 && (err == io.EOF || isReset(err)) {
					return
				}
				t.Fatalf("request %d: unreadable response (%v) to instance answer %q", i, err, b)
			}
			id := res.Header.Get("Spry-Request-Id")
			if id == "" {
				t.Fatalf("request %d: a response without the router's request id (smuggled?) to instance answer %q: %+v", i, b, res)
			}
			ids = append(ids, id)
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if err != nil || res.Close || res.StatusCode == http.StatusSwitchingProtocols {
				// A body cut short ends the connection; nothing follows.
				return
			}
		}
		if ids[0] == ids[1] {
			t.Fatalf("one request id twice: %q", ids)
		}
	})
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}
