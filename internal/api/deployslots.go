package api

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Deploys past admission (reading their body, building, storing) hold
// up to twice their body in memory, and a JSON body may be six times
// the code limit: they are bounded, server-wide and per user. The rest
// wait before their body is read (a wait holds a connection, not the
// body), a bounded number of them; past that a deploy is refused with
// Retry-After.
const (
	// DefaultMaxDeploys is how many deploys are past admission at once
	// (Config.MaxDeploys).
	DefaultMaxDeploys = 4
	// MaxDeploysPerUser is how many of one user's deploys are past
	// admission at once, so one user's deploys do not take every slot.
	MaxDeploysPerUser = 2
	// MaxDeploysQueuedPerUser is how many deploys one user may have in
	// progress, waiting or not; one more is a 429. A wait holds no body,
	// so this is room for a script deploying a project's functions in
	// parallel (at 4, e2e's eight parallel deploys got 429s), not a
	// memory bound.
	MaxDeploysQueuedPerUser = 16
	// DefaultMaxDeploysWaiting is how many deploys may wait at once,
	// server-wide; one more is a 503.
	DefaultMaxDeploysWaiting = 64
	// DefaultDeployBodyTimeout is how long an admitted deploy's body may
	// take to arrive (Config.DeployBodyTimeout): a slot held by a client
	// that trickles its body stalls the deploys behind it. A minute
	// takes the largest code (5 MiB) at about 90 KB/s.
	DefaultDeployBodyTimeout = 60 * time.Second
	// deployRetryAfter is the Retry-After, in seconds, of a refused
	// deploy: a deploy takes seconds.
	deployRetryAfter = "5"
)

// deploySlots admits deploys: the first waiter whose user is under
// MaxDeploysPerUser gets a freed slot.
type deploySlots struct {
	mu         sync.Mutex
	free       int
	maxWaiting int
	perUser    int // MaxDeploysQueuedPerUser; tests set fewer
	users      map[string]*deployUser
	waiting    []*deployWaiter // in the order they came
}

type deployUser struct{ running, waiting int }

type deployWaiter struct {
	user  string
	ready chan struct{} // closed once admitted
}

func newDeploySlots(n, maxWaiting int) *deploySlots {
	return &deploySlots{free: n, maxWaiting: maxWaiting, perUser: MaxDeploysQueuedPerUser, users: map[string]*deployUser{}}
}

// acquire admits one deploy of user's, waiting while ctx lasts, or
// refuses it at once if too many wait.
func (d *deploySlots) acquire(ctx context.Context, user string) error {
	d.mu.Lock()
	u := d.users[user]
	if u == nil {
		u = &deployUser{}
		d.users[user] = u
	}
	switch {
	case u.running+u.waiting >= d.perUser:
		d.forget(user, u)
		d.mu.Unlock()
		return errdefs.New(errdefs.ErrRateLimited, "%s has %d deploys in progress, the most at once; retry once one has ended", user, d.perUser)
	case d.free > 0 && u.running < MaxDeploysPerUser:
		// (Others may wait, but only those whose users hold their
		// share, or slots would be free.)
		d.free--
		u.running++
		d.mu.Unlock()
		return nil
	case len(d.waiting) >= d.maxWaiting:
		d.forget(user, u)
		d.mu.Unlock()
		return errdefs.New(errdefs.ErrUnavailable, "the server has %d deploys waiting, the most it keeps; retry in a moment", d.maxWaiting)
	}
	w := &deployWaiter{user: user, ready: make(chan struct{})}
	d.waiting = append(d.waiting, w)
	u.waiting++
	d.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	d.mu.Lock()
	if i := slices.Index(d.waiting, w); i >= 0 {
		d.waiting = slices.Delete(d.waiting, i, i+1)
		u.waiting--
		d.forget(user, u)
		d.mu.Unlock()
		return context.Cause(ctx)
	}
	d.mu.Unlock()
	// Admitted as ctx ended: the slot goes on to the next.
	d.release(user)
	return context.Cause(ctx)
}

// release ends one admitted deploy of user's.
func (d *deploySlots) release(user string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.users[user]
	u.running--
	d.free++
	d.forget(user, u)
	for i := 0; i < len(d.waiting) && d.free > 0; {
		w := d.waiting[i]
		wu := d.users[w.user]
		if wu.running >= MaxDeploysPerUser {
			i++
			continue
		}
		d.waiting = slices.Delete(d.waiting, i, i+1)
		wu.waiting--
		wu.running++
		d.free--
		close(w.ready)
	}
}

// forget drops a user with no deploy in progress (d.mu held).
func (d *deploySlots) forget(name string, u *deployUser) {
	if u.running == 0 && u.waiting == 0 {
		delete(d.users, name)
	}
}
