package httpserve

import (
	"errors"
	"net"
	"os"
	"time"
)

// fasthttp does not read a connection while its handler runs, so a client
// that hangs up is not noticed until the response is written. A handler
// that waits long (a function computing) can watch the connection itself:
// Listener's connections let it.

// Listener wraps ln so that its connections are *Conn.
func Listener(ln net.Listener) net.Listener { return watchListener{ln} }

type watchListener struct{ net.Listener }

func (l watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c}, nil
}

// Conn is a client connection a handler can watch while it waits.
type Conn struct {
	net.Conn
	early []byte // read by a watch before the server asked for it
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// aLongTimeAgo, as a read deadline, ends a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// Watch reads the connection in the background and calls gone (once,
// from another goroutine) if the client closes it or it fails. It is for
// a handler that has read its whole request and is waiting on something
// else. A byte that arrives meanwhile (a pipelined request) ends the
// watch quietly and is kept for the server. stop ends the watch and
// returns once the background read is over (and gone, if called, has
// returned); the read deadline is then cleared, for the server to set
// its own.
func (c *Conn) Watch(gone func()) (stop func()) {
	// A deadline left from reading the request head would end the watch
	// early; stop sets the only one that matters.
	_ = c.Conn.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [1]byte
		n, err := c.Conn.Read(b[:])
		if n > 0 {
			c.early = append(c.early, b[0])
			return
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			gone()
		}
	}()
	return func() {
		_ = c.Conn.SetReadDeadline(aLongTimeAgo)
		<-done
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
}
