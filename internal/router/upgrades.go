package router

import (
	"context"
	"sync"
)

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
