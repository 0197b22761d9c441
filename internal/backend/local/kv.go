package local

import (
	"context"
	"fmt"
	"net"
	"os"
)

// kvConcurrency bounds the ctx.kv requests one instance has answered at
// once; more wait to be accepted.
const kvConcurrency = 8

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
// closed (the instance ended). A generic instance has no function yet,
// and no code of a user's: what connects then is refused.
func (b *Backend) serveKV(p *proc) {
	sem := make(chan struct{}, kvConcurrency)
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
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			b.cfg.KV.ServeConn(context.Background(), conn, spec.FunctionID)
		}()
	}
}
