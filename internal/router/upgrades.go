package router

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultUpgradeIdleTimeout ends an upgraded connection (a WebSocket)
// over which neither side has sent anything for this long. It is the
// order of Cloudflare's (100 s); Deno's WebSockets ping a quiet peer
// every 30 s by default, so a live one is never idle that long.
const DefaultUpgradeIdleTimeout = 2 * time.Minute

// splice copies client to inst and instR (inst's reader, holding what
// came after the 101) to client until either side ends or fails, or
// neither has sent anything for idle; then it closes both.
func splice(client, inst net.Conn, instR io.Reader, idle time.Duration) {
	sp := &splicing{base: time.Now(), idle: idle}
	done := make(chan struct{}, 2)
	go func() { sp.pipe(inst, client, client); done <- struct{}{} }()
	go func() { sp.pipe(client, inst, instR); done <- struct{}{} }()
	<-done
	// One side ended: end the other way's wait at once. (Closing alone
	// would not: the server's close of a client's connection shuts only
	// its writing side, and lingers.)
	sp.ended.Store(true)
	now := time.Now()
	for _, c := range []net.Conn{client, inst} {
		_ = c.SetDeadline(now)
	}
	<-done
	client.Close()
	inst.Close()
}

// splicing is one splice's shared state.
type splicing struct {
	base  time.Time
	idle  time.Duration
	last  atomic.Int64 // when the latest byte either way came, since base
	ended atomic.Bool
}

// pipe copies r (src's) to dst, marking each piece in last. A read that
// times out goes on while the other way has been busy: the connection is
// idle only when both ways are.
func (sp *splicing) pipe(dst, src net.Conn, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		_ = src.SetReadDeadline(sp.base.Add(time.Duration(sp.last.Load()) + sp.idle))
		if sp.ended.Load() {
			// The other way ended, and its deadline of now may have come
			// before the one just set, which would wait out the idle time.
			return
		}
		n, err := r.Read(buf)
		if n > 0 {
			sp.last.Store(int64(time.Since(sp.base)))
			// A peer that does not read is as good as gone once the idle
			// time passes.
			_ = dst.SetWriteDeadline(time.Now().Add(sp.idle))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err == nil {
			continue
		}
		if isTimeout(err) && !sp.ended.Load() && time.Since(sp.base) < time.Duration(sp.last.Load())+sp.idle {
			continue
		}
		return
	}
}

// upgrades counts the upgraded connections (WebSockets) being spliced:
// the server's Shutdown does not wait for hijacked connections, and a
// drain would otherwise cut them off at once, where a streamed response
// gets the drain's time.
type upgrades struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0
}

func (u *upgrades) add() {
	u.mu.Lock()
	if u.n == 0 {
		u.idle = make(chan struct{})
	}
	u.n++
	u.mu.Unlock()
}

func (u *upgrades) done() {
	u.mu.Lock()
	if u.n--; u.n == 0 {
		close(u.idle)
	}
	u.mu.Unlock()
}

// WaitUpgrades waits until no upgraded connection (a WebSocket) is being
// spliced, or ctx ends (its error then): the server's drain, after
// Shutdown, which does not wait for them.
func (rt *Router) WaitUpgrades(ctx context.Context) error {
	for {
		rt.upgrades.mu.Lock()
		n, idle := rt.upgrades.n, rt.upgrades.idle
		rt.upgrades.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
