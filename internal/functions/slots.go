package functions

import (
	"context"
	"slices"
	"sync"
)

// buildSlots bounds how many deploys build at once, and shares the
// builds out among users: a freed slot goes to the waiting user holding
// the fewest, and among those to the one served longest ago, so that
// one user's queue of deploys (each may take minutes in npm) does not
// stand in front of another user's deploy. A user alone may use every
// slot.
type buildSlots struct {
	mu      sync.Mutex
	free    int
	held    map[string]int
	last    map[string]uint64 // when each user holding or waiting was last given a slot
	seq     uint64
	waiting []*slotWaiter // in the order they came
}

type slotWaiter struct {
	owner string
	ready chan struct{} // closed once the slot is the waiter's
}

func newBuildSlots(n int) *buildSlots {
	return &buildSlots{free: n, held: map[string]int{}, last: map[string]uint64{}}
}

// acquire waits for a slot for owner, or for ctx to end.
func (b *buildSlots) acquire(ctx context.Context, owner string) error {
	b.mu.Lock()
	if b.free > 0 {
		// (Slots free means no one waits: release hands a slot to a
		// waiter rather than free it.)
		b.free--
		b.grant(owner)
		b.mu.Unlock()
		return nil
	}
	w := &slotWaiter{owner: owner, ready: make(chan struct{})}
	b.waiting = append(b.waiting, w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	if i := slices.Index(b.waiting, w); i >= 0 {
		b.waiting = slices.Delete(b.waiting, i, i+1)
		b.forget(owner)
		b.mu.Unlock()
		return ctx.Err()
	}
	b.mu.Unlock()
	// Given the slot as ctx ended: it goes on to the next.
	b.release(owner)
	return ctx.Err()
}

// release gives back a slot owner holds.
func (b *buildSlots) release(owner string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[owner]--; b.held[owner] <= 0 {
		delete(b.held, owner)
	}
	b.forget(owner)
	if len(b.waiting) == 0 {
		b.free++
		return
	}
	next := 0
	for i, w := range b.waiting {
		n, m := b.held[w.owner], b.held[b.waiting[next].owner]
		if n < m || n == m && b.last[w.owner] < b.last[b.waiting[next].owner] {
			next = i
		}
	}
	w := b.waiting[next]
	b.waiting = slices.Delete(b.waiting, next, next+1)
	b.grant(w.owner)
	close(w.ready)
}

func (b *buildSlots) grant(owner string) {
	b.held[owner]++
	b.seq++
	b.last[owner] = b.seq
}

// forget drops what is kept of owner once it holds nothing and waits for
// nothing: a user who comes back later counts as served longest ago.
func (b *buildSlots) forget(owner string) {
	if b.held[owner] > 0 || slices.ContainsFunc(b.waiting, func(w *slotWaiter) bool { return w.owner == owner }) {
		return
	}
	delete(b.last, owner)
}
