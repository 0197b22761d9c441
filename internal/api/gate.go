package api

import (
	"context"
	"net/http"
	"sync"
)

// userGate orders a user's making and deletion with the requests made as
// or for that user, so that each comes out as in one of their serial
// orders. A user is named, not numbered: a request of the old user's
// still running when the user was deleted and made again would act on
// the new one (its deploy or its token landed on the new user, after
// the deletion's sweep), and a sweep after the deletion would take what
// the new user had made.
//
// A request holds the users it acts as or for (hold) until it ends; the
// deletion of a user cancels its holders, with the cause they answer
// with, and waits for them to end; making a user and deleting one wait
// for each other. A request that came while a deletion ran waits for it
// and then finds its user gone.
type userGate struct {
	mu    sync.Mutex
	users map[string]*gated
	// deleted counts the deletions that have ended: a request that saw
	// it change between its authentication and its hold checks its
	// token again.
	deleted uint64
}

// gated is one user's state at the gate.
type gated struct {
	holds map[*gateHold]struct{}
	busy  bool          // being made or deleted
	wake  chan struct{} // closed, and replaced, when busy ends or a hold goes
}

// gateHold is one request's hold on a user.
type gateHold struct {
	cancel context.CancelCauseFunc
	cause  error // why the request ends if the user is deleted
}

func newUserGate() *userGate {
	return &userGate{users: map[string]*gated{}}
}

// get returns name's state (g.mu held).
func (g *userGate) get(name string) *gated {
	st, ok := g.users[name]
	if !ok {
		st = &gated{holds: map[*gateHold]struct{}{}, wake: make(chan struct{})}
		g.users[name] = st
	}
	return st
}

// wakeAll wakes name's waiters and forgets name if nothing is kept of
// it (g.mu held).
func (g *userGate) wakeAll(name string, st *gated) {
	close(st.wake)
	st.wake = make(chan struct{})
	if !st.busy && len(st.holds) == 0 {
		delete(g.users, name)
	}
}

// wait waits, with g.mu held and given back meanwhile, until woken or
// ctx ends.
func (g *userGate) wait(ctx context.Context, st *gated) error {
	wake := st.wake
	g.mu.Unlock()
	defer g.mu.Lock()
	select {
	case <-wake:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// hold holds name for a request until release is called, once no
// making or deletion of name runs; a deletion cancels the request with
// cause.
func (g *userGate) hold(ctx context.Context, name string, cancel context.CancelCauseFunc, cause error) (release func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.get(name)
	for st.busy {
		if err := g.wait(ctx, st); err != nil {
			g.wakeAll(name, st) // forgets name if nothing else keeps it
			return nil, err
		}
		st = g.get(name)
	}
	h := &gateHold{cancel: cancel, cause: cause}
	st.holds[h] = struct{}{}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		delete(st.holds, h)
		g.wakeAll(name, st)
	}, nil
}

// change runs a making (deleting false) or a deletion of name, alone:
// after any other, and, for a deletion, once its holders, cancelled,
// have ended.
func (g *userGate) change(ctx context.Context, name string, deleting bool, do func() error) error {
	g.mu.Lock()
	st := g.get(name)
	for st.busy {
		if err := g.wait(ctx, st); err != nil {
			g.wakeAll(name, st)
			g.mu.Unlock()
			return err
		}
		st = g.get(name)
	}
	st.busy = true
	defer func() {
		g.mu.Lock()
		st.busy = false
		if deleting {
			g.deleted++
		}
		g.wakeAll(name, st)
		g.mu.Unlock()
	}()
	if deleting {
		for h := range st.holds {
			h.cancel(h.cause)
		}
		// The holders end soon, their contexts cancelled; one that
		// committed a change first finishes it, and the deletion then
		// takes it away.
		for len(st.holds) > 0 {
			if err := g.wait(ctx, st); err != nil {
				g.mu.Unlock()
				return err
			}
		}
	}
	g.mu.Unlock()
	return do()
}

// deletions is how many deletions have ended.
func (g *userGate) deletions() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.deleted
}

// holds is a request's holds on users (principal and target), released
// when it ends.
type holds struct {
	cancel   context.CancelCauseFunc
	mu       sync.Mutex
	names    map[string]bool
	releases []func()
}

func (h *holds) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.releases {
		r()
	}
	h.releases = nil
}

// holdUser holds name for the rest of r, as a user the request acts as
// or for: a deletion of that user ends the request with cause. Reads
// hold nothing: one that began before a deletion is one made before it,
// and a long one (a log read to a client that reads nothing) must not
// hold a deletion up. Log follows, which never end by themselves, are
// ended by the deletion (endFollows).
func (a *API) holdUser(r *http.Request, name string, cause error) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	h, _ := r.Context().Value(holdsKey).(*holds)
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.names[name] {
		return nil
	}
	release, err := a.gate.hold(r.Context(), name, h.cancel, cause)
	if err != nil {
		return err
	}
	h.names[name] = true
	h.releases = append(h.releases, release)
	return nil
}
