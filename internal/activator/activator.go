// Package activator hands each request an instance of its function
// version: the least-loaded running one, or, when the version has none, a
// new one whose cold start is shared by every request that arrives while it
// happens. It also retires instances: idle ones after the scale-to-zero
// grace period, and all of a version's once it is no longer live (after
// their in-flight requests finish).
package activator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
)

// Backend starts and stops instances; backend/local is one.
type Backend interface {
	Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error)
	Stop(ctx context.Context, id string) error
	// Kill ends an instance at once, recording why.
	Kill(id, reason string)
}

// Config is the activator's policy.
type Config struct {
	// ScaleToZeroAfter is how long an instance may sit idle before it is
	// stopped.
	ScaleToZeroAfter time.Duration
	// StartTimeout bounds one cold start.
	StartTimeout time.Duration
	// Now is the clock; tests inject one so they never sleep for policy.
	Now    func() time.Time
	Logger *slog.Logger
	// OnColdStart, if set, is told how long each cold start took (until
	// the backend handed over an instance).
	OnColdStart func(spec *backend.Spec, d time.Duration, err error)
}

// Activator tracks the instances of every version.
type Activator struct {
	cfg     Config
	backend Backend
	log     *slog.Logger

	mu   sync.Mutex
	revs map[string]*revision // by Spec.Key
	// live holds, per function id, the versions that may run, as last set
	// by RetireExcept; a request that resolved a version just before it was
	// retired cannot start it again.
	live map[string][]string
	wg   sync.WaitGroup
}

type revision struct {
	spec *backend.Spec

	mu        sync.Mutex
	instances []*instance
	starting  *startOp
	retired   bool
}

type instance struct {
	inst     *backend.Instance
	inflight int
	lastUsed time.Time
	stopping bool
}

type startOp struct {
	done chan struct{}
	err  error
}

// New returns an activator that starts instances on b.
func New(b Backend, cfg Config) *Activator {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	return &Activator{cfg: cfg, backend: b, log: cfg.Logger, revs: map[string]*revision{}, live: map[string][]string{}}
}

// Lease is one request's hold on an instance; Release it when the
// response is done.
type Lease struct {
	rev  *revision
	in   *instance
	Cold bool // this request waited for a cold start
	a    *Activator
}

// Instance is the leased instance.
func (l *Lease) Instance() *backend.Instance { return l.in.inst }

// Release gives the instance back.
func (l *Lease) Release() {
	now := l.a.cfg.Now()
	l.rev.mu.Lock()
	l.in.inflight--
	l.in.lastUsed = now
	drain := l.rev.retired && l.in.inflight == 0 && !l.in.stopping
	if drain {
		l.in.stopping = true
	}
	l.rev.mu.Unlock()
	if drain {
		l.a.stop(l.rev, l.in)
	}
}

// Kill ends the leased instance at once and takes it out of rotation: a
// function that overran its timeout may be stuck in a loop that would
// hold the instance forever.
func (l *Lease) Kill(reason string) {
	l.rev.mu.Lock()
	l.in.stopping = true
	l.rev.mu.Unlock()
	l.a.backend.Kill(l.in.inst.ID, reason)
}

// ErrRetired is returned for a version that is no longer live.
var ErrRetired = fmt.Errorf("version is no longer live: %w", errdefs.ErrConflict)

// Acquire returns a lease on an instance of spec's version, starting one
// if there is none. It waits for a cold start no longer than ctx allows.
func (a *Activator) Acquire(ctx context.Context, spec *backend.Spec) (*Lease, error) {
	rev := a.revision(spec)
	if rev == nil {
		return nil, ErrRetired
	}
	cold := false
	rev.mu.Lock()
	for {
		if rev.retired {
			rev.mu.Unlock()
			return nil, ErrRetired
		}
		if in := rev.pick(); in != nil {
			in.inflight++
			in.lastUsed = a.cfg.Now()
			rev.mu.Unlock()
			return &Lease{rev: rev, in: in, Cold: cold, a: a}, nil
		}
		op := rev.starting
		if op == nil {
			op = &startOp{done: make(chan struct{})}
			rev.starting = op
			a.wg.Add(1)
			go a.start(rev, op)
		}
		rev.mu.Unlock()
		cold = true
		select {
		case <-op.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for an instance of %s/%s: %w", spec.Owner, spec.Name, ctxErr(ctx))
		}
		if op.err != nil {
			return nil, op.err
		}
		rev.mu.Lock()
	}
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errdefs.ErrTimeout
	}
	return ctx.Err()
}

// pick returns the least-loaded running instance. Callers hold rev.mu.
func (r *revision) pick() *instance {
	var best *instance
	for _, in := range r.instances {
		if in.stopping {
			continue
		}
		select {
		case <-in.inst.Done():
			continue
		default:
		}
		if best == nil || in.inflight < best.inflight {
			best = in
		}
	}
	return best
}

// start runs one cold start for rev, shared by everyone waiting on op.
func (a *Activator) start(rev *revision, op *startOp) {
	defer a.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StartTimeout)
	defer cancel()
	t0 := time.Now()
	inst, err := a.backend.Start(ctx, rev.spec)
	if a.cfg.OnColdStart != nil {
		a.cfg.OnColdStart(rev.spec, time.Since(t0), err)
	}
	rev.mu.Lock()
	rev.starting = nil
	if err != nil {
		op.err = fmt.Errorf("start %s/%s v%d: %w", rev.spec.Owner, rev.spec.Name, rev.spec.Version, err)
	} else {
		in := &instance{inst: inst, lastUsed: a.cfg.Now()}
		rev.instances = append(rev.instances, in)
		if rev.retired {
			in.stopping = true
			defer a.stop(rev, in)
		}
		a.wg.Add(1)
		go a.watch(rev, in)
	}
	rev.mu.Unlock()
	close(op.done)
}

// watch forgets an instance once it has ended, whatever the reason.
func (a *Activator) watch(rev *revision, in *instance) {
	defer a.wg.Done()
	<-in.inst.Done()
	rev.mu.Lock()
	for i, x := range rev.instances {
		if x == in {
			rev.instances = append(rev.instances[:i], rev.instances[i+1:]...)
			break
		}
	}
	rev.mu.Unlock()
	if ex := in.inst.Exit(); ex.Reason != backend.ExitStopped {
		a.log.Warn("instance ended", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "instance", in.inst.ID, "reason", ex.Reason, "detail", ex.Detail)
	}
}

func (a *Activator) revision(spec *backend.Spec) *revision {
	key := spec.Key()
	a.mu.Lock()
	defer a.mu.Unlock()
	rev := a.revs[key]
	if keep, ok := a.live[spec.FunctionID]; rev == nil && ok && !slices.Contains(keep, key) {
		return nil
	}
	if rev == nil {
		rev = &revision{spec: spec}
		a.revs[key] = rev
	}
	return rev
}

func (a *Activator) stop(rev *revision, in *instance) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.backend.Stop(ctx, in.inst.ID); err != nil {
		a.log.Error("stop instance", "instance", in.inst.ID, "err", err)
	}
}

// RetireExcept retires every version of a function except those in keep
// (Spec.Keys; none retires them all, as when the function is deleted).
func (a *Activator) RetireExcept(functionID string, keep ...string) {
	a.mu.Lock()
	a.live[functionID] = keep
	var revs []*revision
	for key, rev := range a.revs {
		if rev.spec.FunctionID == functionID && !slices.Contains(keep, key) {
			revs = append(revs, rev)
			delete(a.revs, key)
		}
	}
	a.mu.Unlock()
	for _, rev := range revs {
		a.retire(rev)
	}
}

// Retire marks a version as no longer live: new requests for it fail with
// ErrRetired, and its instances stop once their in-flight requests finish.
func (a *Activator) Retire(key string) {
	a.mu.Lock()
	rev := a.revs[key]
	delete(a.revs, key)
	a.mu.Unlock()
	if rev != nil {
		a.retire(rev)
	}
}

func (a *Activator) retire(rev *revision) {
	rev.mu.Lock()
	rev.retired = true
	var idle []*instance
	for _, in := range rev.instances {
		if in.inflight == 0 && !in.stopping {
			in.stopping = true
			idle = append(idle, in)
		}
	}
	rev.mu.Unlock()
	for _, in := range idle {
		a.stop(rev, in)
	}
}

// Tick applies the scale-to-zero policy as of now: it stops instances idle
// for at least ScaleToZeroAfter. Run calls it periodically; tests call it
// with the time they choose.
func (a *Activator) Tick(now time.Time) {
	a.mu.Lock()
	revs := make([]*revision, 0, len(a.revs))
	for _, r := range a.revs {
		revs = append(revs, r)
	}
	a.mu.Unlock()
	for _, rev := range revs {
		var idle []*instance
		rev.mu.Lock()
		for _, in := range rev.instances {
			if in.inflight == 0 && !in.stopping && now.Sub(in.lastUsed) >= a.cfg.ScaleToZeroAfter {
				in.stopping = true
				idle = append(idle, in)
			}
		}
		rev.mu.Unlock()
		for _, in := range idle {
			a.log.Debug("scaling to zero", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "instance", in.inst.ID)
			a.stop(rev, in)
		}
	}
}

// Run calls Tick every interval until ctx ends.
func (a *Activator) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Tick(a.cfg.Now())
		}
	}
}

// Counts reports the running instances of each version, by Spec.Key.
func (a *Activator) Counts() map[string]int {
	a.mu.Lock()
	revs := make([]*revision, 0, len(a.revs))
	for _, r := range a.revs {
		revs = append(revs, r)
	}
	a.mu.Unlock()
	out := make(map[string]int, len(revs))
	for _, r := range revs {
		r.mu.Lock()
		n := 0
		for _, in := range r.instances {
			if !in.stopping {
				n++
			}
		}
		r.mu.Unlock()
		out[r.spec.Key()] = n
	}
	return out
}

// Close waits for the activator's goroutines; stop the backend first so
// that instances end.
func (a *Activator) Close() { a.wg.Wait() }
