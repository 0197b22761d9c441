package local

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// kvConcurrency bounds the ctx.kv requests one instance has answered at
// once, over all its connections; more wait to be read. kvConns bounds
// its connections: ctx.kv keeps one, and code that speaks the socket's
// protocol itself may open a few; past the bound one is refused.
const (
	kvConcurrency = 8
	kvConns       = 8
)

// listenKV makes the socket one sandbox reaches its function's ctx.kv
// through, connectable by the sandbox's uid only.
func listenKV(path string, uid int) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("kv socket: %w", err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		ln.Close()
		return nil, fmt.Errorf("kv socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("kv socket: %w", err)
	}
	return ln, nil
}

// serveKV answers the ctx.kv requests of p's code until its listener is
// closed (the instance ended), and then closes the connections still
// open and returns once they are done. A generic instance has no
// function yet, and no code of a user's: what connects then is refused.
func (b *Backend) serveKV(p *proc) {
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	defer conns.Wait()
	defer cancel()
	slots := make(chan struct{}, kvConcurrency)
	open := make(chan struct{}, kvConns)
	for {
		conn, err := p.kv.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		spec := p.spec
		p.mu.Unlock()
		if spec == nil {
			conn.Close()
			continue
		}
		select {
		case open <- struct{}{}:
		default:
			// Waiting would hold the connection until another ends, which
			// a kept one need never do.
			conns.Go(func() { refuseKV(conn) })
			continue
		}
		conns.Go(func() {
			defer func() { <-open }()
			b.cfg.KV.ServeConn(ctx, conn, spec.FunctionID, slots)
		})
	}
}

// refuseKV answers a connection past kvConns with an error, and closes
// it as kv.ServeConn closes one after a line it cannot read: its write
// side first, then what the client still sends read (to its end, a
// bound or a deadline), so that the close does not reset the connection
// before the client has read why.
func refuseKV(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	_, _ = fmt.Fprintf(conn, `{"error":{"code":"rate_limited","message":"kv: an instance has at most %d connections to its storage at once"}}`+"\n", kvConns)
	if uc, ok := conn.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
}
