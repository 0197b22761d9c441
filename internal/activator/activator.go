// Package activator hands each request an instance of its function
// version with free capacity: the least-loaded running one, or, when every
// instance is at its concurrency limit, a place in a bounded queue while
// more instances start. Concurrent requests share cold starts. A periodic
// tick feeds the version's concurrency into its autoscaler (KPA-style
// stable and panic windows) and applies the decision: start instances up
// to the desired count, stop idle ones down to it, never below min or
// above max, and to zero only after the grace period without traffic.
// When the host is short of memory, a start stops other versions' idle
// instances first. Versions that are no longer live drain their in-flight
// requests and stop.
package activator

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/autoscaler"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
)

// Backend starts and stops instances; backend/local is one.
type Backend interface {
	// Start returns an instance that takes requests. It may still be
	// loading the function: requests wait in it until it has, and if it
	// cannot, it answers them with the error and ends. ctx's deadline
	// bounds the load too.
	Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error)
	Stop(ctx context.Context, id string) error
	// Kill ends an instance at once, recording why.
	Kill(id, reason string)
	// SetIdle throttles an instance's CPU (idle) or gives it back.
	SetIdle(id string, idle bool)
}

// Config is the activator's policy.
type Config struct {
	// ScaleToZeroAfter is how long a version may go without requests
	// before its last instance is stopped.
	ScaleToZeroAfter time.Duration
	// StartTimeout bounds one cold start.
	StartTimeout time.Duration
	// QueueSize bounds the requests waiting for capacity per version;
	// past it requests are refused with ErrOverloaded.
	QueueSize int
	// IdleAfter is how long an instance may go without a request in
	// flight before its CPU is throttled (Backend.SetIdle), until the
	// next request: work a function goes on with after its response
	// (ctx.waitUntil, a timer, a worker) gets that long at full speed.
	// Default 1s; negative: never.
	IdleAfter time.Duration
	// StableWindow is the autoscaler's averaging window (default 60s);
	// scaling down follows it, and so does scaling to zero.
	StableWindow time.Duration
	// TargetUtilization is the share of an instance's concurrency the
	// autoscaler aims to use (default 0.7).
	TargetUtilization float64
	// MaxInstancesPerOwner bounds the instances (starting, running or
	// stopping) of all of one owner's functions together, so one user
	// cannot take the machine from the others; 0 means no bound.
	MaxInstancesPerOwner int
	// MaxMemoryPerOwnerMiB bounds the memory limits (Spec.MemoryMiB) of
	// the same instances added up, so that one user's large functions
	// cannot promise themselves the host's memory up to the instance
	// bound; 0 means no bound.
	MaxMemoryPerOwnerMiB int
	// Now is the clock; tests inject one so they never sleep for policy.
	Now    func() time.Time
	Logger *slog.Logger
	// OnStart, if set, is told how each instance start went and how long
	// the backend took.
	OnStart func(spec *backend.Spec, d time.Duration, err error)
	// MemoryReserve is the host memory (MemAvailable) an instance start
	// leaves free: below it, a start for waiting requests or for a
	// version's minimum first stops idle instances of other versions,
	// least recently used first, and fails with ErrMemory if stopping
	// them all does not make room; the autoscaler's other starts wait
	// for a tick with room. 0: no reserve.
	MemoryReserve uint64
	// ReadMemAvailable reads the host's available memory; nil:
	// MemAvailable.
	ReadMemAvailable func() (uint64, error)
	// OnEvict, if set, is told of each instance stopped to make room.
	OnEvict func(spec *backend.Spec)
	// OnExit, if set, is told of each instance that ended other than
	// stopped (crashed, out of memory, killed after a timeout, or before
	// its function loaded).
	OnExit func(spec *backend.Spec, ex backend.Exit)
}

// Activator tracks the instances of every version.
type Activator struct {
	cfg     Config
	backend Backend
	log     *slog.Logger

	mu   sync.Mutex
	revs map[string]*revision // by Spec.Key
	// retiring holds retired versions until their last instance has
	// ended, so that States still counts the instances draining.
	retiring map[*revision]struct{}
	// live holds, per function id, the versions that may run, as last set
	// by RetireExcept; a request that resolved a version just before it was
	// retired cannot start it again.
	live map[string][]string
	// removed stamps the live entries of deleted functions (which keep
	// nothing) with the time of their deletion, so that Tick can forget
	// them once no request that resolved the function before can still be
	// on its way: ids are never reused, and an entry kept for ever per
	// deleted function grows without bound under deploy-delete churn.
	removed map[string]time.Time
	wg      sync.WaitGroup // every goroutine
	ops     sync.WaitGroup // starts and stops in progress
	// closeMu orders wg.Add before Close's Wait: requests still served
	// after a shutdown's timeout may start or stop instances, and a
	// WaitGroup must not be added to from zero while it is waited on.
	closeMu sync.RWMutex
	closed  bool

	quotaMu sync.Mutex          // a leaf lock: taken under rev.mu
	owned   map[string]ownerUse // what is counted against each owner's quotas

	// evicting makes starts short of memory take turns (a semaphore of
	// one that a start's deadline may give up on): each stops what it
	// needs, and the next reads what is left, so that a burst does not
	// stop an instance per start for one start's room.
	evicting chan struct{}
}

// ownerUse is one owner's instances (starting, running or stopping) and
// the sum of their memory limits, in MiB.
type ownerUse struct {
	instances int
	memoryMiB int
}

type revision struct {
	spec   *backend.Spec
	scaler *autoscaler.Scaler

	mu           sync.Mutex
	instances    []*instance
	starting     int
	waiters      list.List // of *waiter, oldest first
	woken        int       // waiters woken, not yet back under the lock: load all the same
	retired      bool
	lastActivity time.Time // last request in or out, for the scale-to-zero grace
	// Crash-loop backoff: instances that crashed soon after they started
	// (or before their function loaded), in a row, and when another may
	// start again.
	crashes   int
	restartAt time.Time
	// failure is why the last of them ended, if it ended before its
	// function loaded: until restartAt, a request that finds no instance
	// gets it at once rather than start one that would fail the same.
	failure error
}

type instance struct {
	inst     *backend.Instance
	inflight int
	started  time.Time
	lastUsed time.Time
	stopping bool
	// suspect: a request ran out of time on it, and a probe is under way
	// (TimedOut); it takes no new request meanwhile.
	suspect bool
	idle    bool // its CPU should be throttled (guarded by rev.mu)
	// idleMu orders the backend calls that apply idle; applied is what
	// the last one set.
	idleMu  sync.Mutex
	applied bool
}

// Crash-loop backoff (as Kubernetes's CrashLoopBackOff): after an
// instance crashes within quickCrash of its start, or before its function
// loaded, the autoscaler waits before it starts another for the minimum or
// the load, 1 s doubling to maxBackoff. A version whose module fails to
// load would otherwise burn a sandbox at every tick, for good. Requests
// meanwhile: if the instance ended before its function loaded, those that
// find no instance get its failure at once (another would fail the same
// way, and one sandbox per request is a CPU each under steady traffic);
// after a crash of a loaded function they start one anyway, which may
// serve them. A crash more than backoffReset after the backoff's end
// starts it over at 1 s. A new version (a deploy, a change of settings)
// starts with none.
const (
	quickCrash   = 10 * time.Second
	maxBackoff   = time.Minute
	backoffReset = 10 * time.Minute
)

// waiter is a request queued for capacity. ch is closed to wake it; err,
// set before, fails it.
type waiter struct {
	ch    chan struct{}
	err   error
	elem  *list.Element
	woken bool // counted in revision.woken
}

// Errors of Acquire.
var (
	// ErrRetired: the version is no longer live; resolve it again.
	ErrRetired = fmt.Errorf("version is no longer live: %w", errdefs.ErrConflict)
	// ErrOverloaded: every instance is busy, max is reached and the queue
	// is full.
	ErrOverloaded = errdefs.New(errdefs.ErrUnavailable, "the function is at its maximum scale and its queue is full; retry later")
	// ErrQuota: the version has no instance and its owner runs as many as
	// one user may.
	ErrQuota = errdefs.New(errdefs.ErrRateLimited, "the function's owner runs as many instances as one user may (spry serve --max-instances-per-user); retry later")
	// ErrMemoryQuota: one more instance of the version would take its
	// owner's instances' memory limits past one user's budget.
	ErrMemoryQuota = errdefs.New(errdefs.ErrRateLimited, "the function's owner runs instances whose memory limits together leave no room for one more of this function within one user's budget (spry serve --max-memory-per-user); retry later")
	// ErrClosed: the platform is shutting down and starts no instance.
	ErrClosed = errdefs.New(errdefs.ErrUnavailable, "the platform is shutting down; retry later")
	// ErrMemory: the host's available memory is below the reserve, and
	// no idle instance is left to stop for room.
	ErrMemory = errdefs.New(errdefs.ErrUnavailable, "the host is short of memory and every instance is busy or kept at its minimum; retry later")
)

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
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 1000
	}
	if cfg.ScaleToZeroAfter == 0 {
		cfg.ScaleToZeroAfter = 5 * time.Minute
	}
	if cfg.IdleAfter == 0 {
		cfg.IdleAfter = time.Second
	}
	if cfg.ReadMemAvailable == nil {
		cfg.ReadMemAvailable = MemAvailable
	}
	return &Activator{cfg: cfg, backend: b, log: cfg.Logger, revs: map[string]*revision{}, retiring: map[*revision]struct{}{}, live: map[string][]string{}, removed: map[string]time.Time{}, owned: map[string]ownerUse{},
		evicting: make(chan struct{}, 1)}
}

func (a *Activator) scalerConfig(spec *backend.Spec) autoscaler.Config {
	target := spec.TargetUtilization
	if target == 0 {
		target = a.cfg.TargetUtilization
	}
	return autoscaler.Config{
		Min:               spec.MinScale,
		Max:               spec.MaxScale,
		Concurrency:       max(spec.Concurrency, 1),
		TargetUtilization: target,
		StableWindow:      a.cfg.StableWindow,
		ScaleToZeroGrace:  a.grace(spec),
	}
}

// grace is how long spec's version may go without requests before its
// last instance stops.
func (a *Activator) grace(spec *backend.Spec) time.Duration {
	if spec.ScaleToZeroAfter > 0 {
		return spec.ScaleToZeroAfter
	}
	return a.cfg.ScaleToZeroAfter
}

// Lease is one request's hold on an instance; Release it when the
// response is done.
type Lease struct {
	rev  *revision
	in   *instance
	Cold bool // this request waited for an instance to start
	a    *Activator
	wake bool // the instance was idle: its CPU must be given back
}

// Instance is the leased instance.
func (l *Lease) Instance() *backend.Instance { return l.in.inst }

// Release gives the instance back.
func (l *Lease) Release() {
	now := l.a.cfg.Now()
	rev := l.rev
	rev.mu.Lock()
	l.in.inflight--
	l.in.lastUsed = now
	rev.lastActivity = now
	drain := rev.retired && l.in.inflight == 0 && !l.in.stopping
	if drain {
		l.in.stopping = true
	} else if !l.in.stopping {
		rev.wakeOne()
	}
	rev.mu.Unlock()
	if drain {
		l.a.stopAsync(rev, l.in)
	}
}

// Kill ends the leased instance at once and takes it out of rotation (a
// request that never reached it: it may be dying), loading or not.
// Timeouts go through TimedOut.
func (l *Lease) Kill(reason string) {
	l.rev.mu.Lock()
	l.in.stopping = true
	l.rev.mu.Unlock()
	l.a.backend.Kill(l.in.inst.ID, reason)
}

// StuckAfter is how long an instance's runtime has to answer a probe after
// one of its requests ran out of time before it is taken for stuck.
const StuckAfter = time.Second

// TimedOut handles a request that ran out of time on the leased instance.
// The instance may be stuck (a handler in a loop holds its event loop for
// good), or only slow for that one request (a handler waiting on a slow
// upstream) while it serves its other requests well; killing it at once
// would end every request it has in flight. So it takes no new request
// while the backend asks its runtime whether it still answers
// (Instance.Responsive), and is killed only if it does not within
// StuckAfter. A timeout while the instance still loads its function says
// neither (the load has a deadline of its own). It reports whether the
// instance is being checked or killed.
func (l *Lease) TimedOut() bool {
	rev, in := l.rev, l.in
	if in.inst.Loading() {
		return false
	}
	rev.mu.Lock()
	if in.stopping || in.suspect {
		rev.mu.Unlock()
		return true
	}
	in.suspect = true
	rev.mu.Unlock()
	if !l.a.track() {
		return true // shutting down: every instance is being stopped
	}
	go l.a.check(rev, in)
	return true
}

// check probes a suspect instance: back into rotation if it answers,
// killed if not.
func (a *Activator) check(rev *revision, in *instance) {
	defer a.wg.Done()
	defer a.ops.Done()
	ctx, cancel := context.WithTimeout(context.Background(), StuckAfter)
	err := in.inst.Responsive(ctx)
	cancel()
	rev.mu.Lock()
	in.suspect = false
	if err == nil {
		if !in.stopping {
			rev.wakeN(max(rev.spec.Concurrency, 1) - in.inflight)
		}
		rev.mu.Unlock()
		return
	}
	in.stopping = true
	rev.mu.Unlock()
	a.log.Warn("an instance did not answer after a request ran out of time; killing it", "owner", rev.spec.Owner, "function", rev.spec.Name, "instance", in.inst.ID, "err", err)
	a.backend.Kill(in.inst.ID, backend.ExitTimeout)
}

// RunScheduled runs spec's scheduled handler for the event (cron, at)
// on an instance leased as a request's is (cold start, queue, limits),
// within ctx's deadline, the function's timeout: one that runs out has
// its instance checked, as a request's would. It returns the
// instance's id ("" if none was leased) and how the run went; an
// ErrRetired means it never ran.
func (a *Activator) RunScheduled(ctx context.Context, spec *backend.Spec, cron string, at time.Time) (string, error) {
	lease, err := a.Acquire(ctx, spec)
	if err != nil {
		return "", err
	}
	defer lease.Release()
	err = lease.Instance().RunScheduled(ctx, cron, at)
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
		lease.TimedOut()
	}
	return lease.Instance().ID, err
}

// Acquire returns a lease on an instance of spec's version with free
// capacity, starting instances or queueing as needed, for no longer than
// ctx allows.
func (a *Activator) Acquire(ctx context.Context, spec *backend.Spec) (*Lease, error) {
	rev := a.revision(spec)
	if rev == nil {
		return nil, ErrRetired
	}
	var w *waiter
	cold := false
	rev.mu.Lock()
	for {
		if rev.retired {
			rev.unqueue(w)
			rev.mu.Unlock()
			return nil, ErrRetired
		}
		if in := rev.pick(); in != nil && (w != nil || rev.spare()) {
			rev.unqueue(w)
			l := a.lease(rev, in, cold)
			rev.mu.Unlock()
			a.woken(l)
			return l, nil
		}
		// (A waiter woken by a release, not yet back when the queue was
		// failed, sees the failure here.)
		if err := rev.crashLooping(a.cfg.Now); err != nil {
			rev.unqueue(w)
			rev.mu.Unlock()
			return nil, err
		}
		if w == nil {
			if rev.waiters.Len() >= a.cfg.QueueSize {
				rev.mu.Unlock()
				return nil, ErrOverloaded
			}
			w = &waiter{ch: make(chan struct{})}
			w.elem = rev.waiters.PushBack(w)
			if rev.running() == 0 {
				cold = true
			}
		} else if w.elem == nil {
			// Woken but beaten to the capacity: back to the front.
			w.ch = make(chan struct{})
			w.elem = rev.waiters.PushFront(w)
		}
		a.scaleForQueue(rev)
		ch := w.ch
		rev.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		rev.mu.Lock()
		rev.awake(w)
		if w.err != nil {
			err := w.err
			rev.mu.Unlock()
			return nil, err
		}
		// Also when woken: a wake-up and the client's leaving may come
		// together, and a request nobody waits for must not take the
		// slot (nor reach the function); the next in line gets it.
		if ctx.Err() != nil {
			rev.unqueue(w)
			rev.wakeIfSpare()
			rev.mu.Unlock()
			return nil, fmt.Errorf("waiting for an instance of %s/%s: %w", spec.Owner, spec.Name, ctxErr(ctx))
		}
	}
}

// TryAcquire returns a lease on an instance of spec's version with free
// capacity now, or nil: when none has any, when requests already wait (a
// caller that cannot wait must not pass them), or when the version is
// retired. It never starts an instance; Acquire does what it does not.
func (a *Activator) TryAcquire(spec *backend.Spec) *Lease {
	rev := a.revision(spec)
	if rev == nil {
		return nil
	}
	rev.mu.Lock()
	if rev.retired || rev.waiters.Len()+rev.woken > 0 {
		rev.mu.Unlock()
		return nil
	}
	var l *Lease
	if in := rev.pick(); in != nil {
		l = a.lease(rev, in, false)
	}
	rev.mu.Unlock()
	if l != nil {
		a.woken(l)
	}
	return l
}

// lease takes a request's slot on in. Callers hold rev.mu, and call
// woken once they have let it go.
func (a *Activator) lease(rev *revision, in *instance, cold bool) *Lease {
	now := a.cfg.Now()
	in.inflight++
	in.lastUsed = now
	rev.lastActivity = now
	l := &Lease{rev: rev, in: in, Cold: cold, a: a}
	if in.idle {
		in.idle, l.wake = false, true
	}
	return l
}

// woken gives an idle instance its CPU back before its request is sent.
func (a *Activator) woken(l *Lease) {
	if l.wake {
		a.applyIdle(l.rev, l.in)
	}
}

// applyIdle tells the backend whether in is idle, as it is now: calls
// from a tick and a request may cross, and the last word must be the
// current state.
func (a *Activator) applyIdle(rev *revision, in *instance) {
	in.idleMu.Lock()
	defer in.idleMu.Unlock()
	rev.mu.Lock()
	want := in.idle
	rev.mu.Unlock()
	if want != in.applied {
		a.backend.SetIdle(in.inst.ID, want)
		in.applied = want
	}
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errdefs.ErrTimeout
	}
	return ctx.Err()
}

// pick returns the least-loaded running instance with free capacity.
// Callers hold rev.mu.
func (r *revision) pick() *instance {
	var best *instance
	limit := max(r.spec.Concurrency, 1)
	for _, in := range r.instances {
		if in.stopping || in.suspect || in.inflight >= limit || in.ending() {
			continue
		}
		if best == nil || in.inflight < best.inflight {
			best = in
		}
	}
	return best
}

// spare says whether a request that has not waited may take a free slot
// now: only one the waiting requests (queued, or woken and on their way
// to take theirs) leave over. Queued requests are served in order; a
// newcomer does not take the slot a release freed for the oldest.
// Callers hold rev.mu.
func (r *revision) spare() bool {
	ahead := r.waiters.Len() + r.woken
	if ahead == 0 {
		return true
	}
	limit := max(r.spec.Concurrency, 1)
	free := 0
	for _, in := range r.instances {
		if in.stopping || in.suspect || in.inflight >= limit || in.ending() {
			continue
		}
		free += limit - in.inflight
	}
	return free > ahead
}

// crashLooping returns the failure a request that finds no instance
// gets at once, during the backoff after an instance that ended before its
// function loaded; nil if it may start one. Callers hold r.mu.
func (r *revision) crashLooping(now func() time.Time) error {
	if r.failure == nil || r.running()+r.starting > 0 || !now().Before(r.restartAt) {
		return nil
	}
	return r.failure
}

// ending says whether in has ended, or failed to load and is ending, and
// watch has not yet forgotten it: it takes no request, and requests that
// find no other wait for watch, which knows whether to start another.
func (in *instance) ending() bool {
	select {
	case <-in.inst.Done():
		return true
	default:
		return in.inst.LoadFailed()
	}
}

// running counts instances that take requests (not stopping).
func (r *revision) running() int {
	n := 0
	for _, in := range r.instances {
		if !in.stopping {
			n++
		}
	}
	return n
}

func (r *revision) unqueue(w *waiter) {
	if w != nil && w.elem != nil {
		r.waiters.Remove(w.elem)
		w.elem = nil
	}
}

// wakeOne wakes the oldest waiter (capacity was freed).
func (r *revision) wakeOne() {
	if e := r.waiters.Front(); e != nil {
		w := r.waiters.Remove(e).(*waiter)
		w.elem = nil
		w.woken = true
		r.woken++
		close(w.ch)
	}
}

// awake takes w, back under the lock, out of the woken count.
func (r *revision) awake(w *waiter) {
	if w.woken {
		w.woken = false
		r.woken--
	}
}

// wakeIfSpare passes on a wake-up a departing waiter may have taken.
func (r *revision) wakeIfSpare() {
	if r.pick() != nil {
		r.wakeOne()
	}
}

// wakeN wakes up to n waiters.
func (r *revision) wakeN(n int) {
	for i := 0; i < n; i++ {
		r.wakeOne()
	}
}

// failAll fails every waiter with err.
func (r *revision) failAll(err error) {
	for e := r.waiters.Front(); e != nil; e = r.waiters.Front() {
		w := r.waiters.Remove(e).(*waiter)
		w.elem = nil
		w.err = err
		close(w.ch)
	}
}

// scaleForQueue starts one more instance when the queued requests exceed
// what the instances already starting will take, so a burst is answered
// at once rather than at the next tick. Callers hold rev.mu.
func (a *Activator) scaleForQueue(rev *revision) {
	limit := max(rev.spec.Concurrency, 1)
	maxScale := rev.spec.MaxScale
	if maxScale <= 0 {
		maxScale = 1000
	}
	if rev.running()+rev.starting >= maxScale {
		return
	}
	pending := rev.starting
	for _, in := range rev.instances {
		if !in.stopping && in.ending() {
			pending++ // watch starts another, unless it should not
		}
	}
	if pending*limit >= rev.waiters.Len() {
		return
	}
	err := a.startLocked(rev, true)
	if errors.Is(err, errdefs.ErrRateLimited) && a.cfg.OnStart != nil {
		// A start requests wait for, refused by a quota: counted as a
		// failed cold start, as one refused for want of memory is.
		a.cfg.OnStart(rev.spec, 0, err)
	}
	if err != nil && rev.running()+rev.starting == 0 {
		// Nothing would ever serve the queue.
		rev.failAll(err)
	}
}

// startLocked begins one instance start, unless the owner's quotas are
// used up (ErrQuota, ErrMemoryQuota) or the activator is closed
// (ErrClosed). evict: the
// start may stop idle instances of other versions if the host is short
// of memory (see Config.MemoryReserve). Callers hold rev.mu.
func (a *Activator) startLocked(rev *revision, evict bool) error {
	if err := a.reserve(rev.spec); err != nil {
		return err
	}
	if !a.track() {
		a.unreserve(rev.spec)
		return ErrClosed
	}
	rev.starting++
	go a.start(rev, evict)
	return nil
}

// OwnerUsage is what one owner's instances count against their quotas:
// instances starting, running or stopping, the sum of their memory
// limits, and the bounds of both (0: none).
type OwnerUsage struct {
	Instances, MaxInstances int
	MemoryMiB, MaxMemoryMiB int
}

// OwnerUsage reports what owner's instances count against its quotas,
// as reserve counts them: the totals kept with every start and end, read
// under the leaf lock that guards them, so it is cheap to ask often.
func (a *Activator) OwnerUsage(owner string) OwnerUsage {
	a.quotaMu.Lock()
	use := a.owned[owner]
	a.quotaMu.Unlock()
	return OwnerUsage{Instances: use.instances, MaxInstances: a.cfg.MaxInstancesPerOwner,
		MemoryMiB: use.memoryMiB, MaxMemoryMiB: a.cfg.MaxMemoryPerOwnerMiB}
}

// track counts a goroutine about to start or stop an instance, unless the
// activator is closed.
func (a *Activator) track() bool {
	a.closeMu.RLock()
	defer a.closeMu.RUnlock()
	if a.closed {
		return false
	}
	a.wg.Add(1)
	a.ops.Add(1)
	return true
}

// reserve counts one more instance of spec, and its memory limit,
// against its owner's quotas, if they allow.
func (a *Activator) reserve(spec *backend.Spec) error {
	a.quotaMu.Lock()
	defer a.quotaMu.Unlock()
	use := a.owned[spec.Owner]
	if limit := a.cfg.MaxInstancesPerOwner; limit > 0 && use.instances >= limit {
		return ErrQuota
	}
	if limit := a.cfg.MaxMemoryPerOwnerMiB; limit > 0 && use.memoryMiB+spec.MemoryMiB > limit {
		return ErrMemoryQuota
	}
	use.instances++
	use.memoryMiB += spec.MemoryMiB
	a.owned[spec.Owner] = use
	return nil
}

// unreserve gives back what reserve counted.
func (a *Activator) unreserve(spec *backend.Spec) {
	a.quotaMu.Lock()
	defer a.quotaMu.Unlock()
	use := a.owned[spec.Owner]
	use.instances--
	use.memoryMiB -= spec.MemoryMiB
	if use.instances <= 0 {
		delete(a.owned, spec.Owner)
		return
	}
	a.owned[spec.Owner] = use
}

func (a *Activator) start(rev *revision, evict bool) {
	defer a.wg.Done()
	defer a.ops.Done()
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StartTimeout)
	defer cancel()
	err := a.makeRoom(ctx, rev, evict)
	if err != nil && evict && a.cfg.OnStart != nil {
		a.cfg.OnStart(rev.spec, 0, err) // a start requests waited for, refused
	}
	var inst *backend.Instance
	if err == nil {
		t0 := time.Now()
		inst, err = a.backend.Start(ctx, rev.spec)
		if a.cfg.OnStart != nil {
			a.cfg.OnStart(rev.spec, time.Since(t0), err)
		}
	}
	rev.mu.Lock()
	rev.starting--
	if err != nil {
		a.unreserve(rev.spec)
		err = fmt.Errorf("start %s/%s v%d: %w", rev.spec.Owner, rev.spec.Name, rev.spec.Version, err)
		level := slog.LevelError
		switch {
		case errors.Is(err, ErrMemory) && !evict:
			level = slog.LevelDebug // the next tick tries again
			if rev.waiters.Len() > 0 && !rev.retired {
				// Requests queued behind this start, counting on it
				// (scaleForQueue started none for them): theirs may
				// stop others' idle instances for room.
				a.log.Debug("instance start failed", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "err", err)
				a.scaleForQueue(rev)
				rev.mu.Unlock()
				return
			}
		case errors.Is(err, ErrMemory):
			level = slog.LevelWarn // the host's state, not this start's fault
		}
		a.log.Log(ctx, level, "instance start failed", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "err", err)
		if rev.running() == 0 && rev.starting == 0 {
			rev.failAll(err)
		}
		rev.mu.Unlock()
		return
	}
	now := a.cfg.Now()
	in := &instance{inst: inst, started: now, lastUsed: now}
	rev.instances = append(rev.instances, in)
	if rev.retired {
		in.stopping = true
		rev.mu.Unlock()
		a.stopAsync(rev, in)
	} else {
		rev.wakeN(max(rev.spec.Concurrency, 1))
		rev.mu.Unlock()
	}
	a.wg.Add(1)
	go a.watch(rev, in)
}

// makeRoom returns nil once the host's available memory is at least the
// reserve. Below it, with evict, it stops idle instances of other
// versions, the least recently used first, until it is, and returns
// ErrMemory if none is left to stop; without evict, ErrMemory at once.
func (a *Activator) makeRoom(ctx context.Context, rev *revision, evict bool) error {
	if a.cfg.MemoryReserve == 0 {
		return nil
	}
	locked := false
	defer func() {
		if locked {
			<-a.evicting
		}
	}()
	for {
		avail, err := a.cfg.ReadMemAvailable()
		if err != nil {
			// Fail open: a start refused for want of a reading would
			// be an outage of its own; the OOM killer still takes
			// instances first (the sandbox's oom_score_adj).
			a.log.Warn("read available memory", "err", err)
			return nil
		}
		if avail >= a.cfg.MemoryReserve {
			return nil
		}
		if !evict {
			return ErrMemory
		}
		if !locked {
			// Another start may be stopping instances: read again once
			// it is done.
			select {
			case a.evicting <- struct{}{}:
			case <-ctx.Done():
				return ctxErr(ctx)
			}
			locked = true
			continue
		}
		victim, in := a.evictee(rev)
		if in == nil {
			return ErrMemory
		}
		a.log.Info("stopping an idle instance: the host is short of memory", "owner", victim.spec.Owner, "function", victim.spec.Name, "version", victim.spec.Version, "instance", in.inst.ID,
			"idle_for", a.cfg.Now().Sub(in.lastUsed).Round(time.Second), "available_mib", avail>>20, "reserve_mib", a.cfg.MemoryReserve>>20,
			"for_owner", rev.spec.Owner, "for_function", rev.spec.Name)
		if a.cfg.OnEvict != nil {
			a.cfg.OnEvict(victim.spec)
		}
		if err := a.backend.Stop(ctx, in.inst.ID); err != nil {
			return fmt.Errorf("stop an idle instance for room: %w", err)
		}
		select {
		case <-in.inst.Done():
		case <-ctx.Done():
			return ctxErr(ctx)
		}
	}
}

// evictee finds the least recently used idle instance of an evictable
// version other than rev, marks it stopping and returns it, or nil.
func (a *Activator) evictee(rev *revision) (*revision, *instance) {
	for {
		var victim *revision
		var best *instance
		var bestUsed time.Time
		for _, r := range a.snapshot() {
			if r == rev {
				continue
			}
			r.mu.Lock()
			if r.evictable() {
				for _, in := range r.instances {
					if r.idleInstance(in) && (best == nil || in.lastUsed.Before(bestUsed)) {
						victim, best, bestUsed = r, in, in.lastUsed
					}
				}
			}
			r.mu.Unlock()
		}
		if best == nil {
			return nil, nil
		}
		// It may have been leased, or stopped, since.
		victim.mu.Lock()
		ok := victim.idleInstance(best) && victim.evictable()
		if ok {
			best.stopping = true
		}
		victim.mu.Unlock()
		if ok {
			return victim, best
		}
	}
}

// evictable reports whether one of r's idle instances may be stopped for
// another version's room: r runs more than its minimum, and no request
// waits for it, nor has been woken to take an instance that looks idle.
// Callers hold r.mu.
func (r *revision) evictable() bool {
	return r.running() > r.spec.MinScale && r.waiters.Len()+r.woken == 0
}

// idleInstance reports whether in is running with nothing in flight.
// Callers hold r.mu.
func (r *revision) idleInstance(in *instance) bool {
	return !in.stopping && !in.suspect && in.inflight == 0 && !in.inst.Loading()
}

// MemAvailable reads the host's available memory (MemAvailable in
// /proc/meminfo: free memory and what the kernel can reclaim without
// swapping).
func MemAvailable() (uint64, error) { return meminfo("MemAvailable") }

// MemTotal reads the host's memory (MemTotal in /proc/meminfo).
func MemTotal() (uint64, error) { return meminfo("MemTotal") }

// meminfoFile is /proc/meminfo, held open: a read at offset 0 makes the
// kernel write it anew, in ~11 µs here, against ~38 µs for an open, a
// read and a close, on each start's path.
var meminfoFile = sync.OnceValues(func() (*os.File, error) { return os.Open("/proc/meminfo") })

func meminfo(key string) (uint64, error) {
	f, err := meminfoFile()
	if err != nil {
		return 0, err
	}
	var buf [4096]byte // its first fields, which are all we read
	n, err := f.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	return parseMeminfo(buf[:n], key)
}

// parseMeminfo reads field key, in kB, of /proc/meminfo's text b, in
// bytes.
func parseMeminfo(b []byte, key string) (uint64, error) {
	var rest []byte
	for line := range bytes.Lines(b) {
		if r, ok := bytes.CutPrefix(line, []byte(key+":")); ok {
			rest = r
			break
		}
	}
	if rest == nil {
		return 0, fmt.Errorf("/proc/meminfo: no %s", key)
	}
	f := strings.Fields(string(rest))
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("/proc/meminfo: %s:%s", key, bytes.TrimRight(rest, "\n"))
	}
	kb, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/meminfo: %s:%s", key, bytes.TrimRight(rest, "\n"))
	}
	return kb << 10, nil
}

// watch forgets an instance once it has ended, whatever the reason.
func (a *Activator) watch(rev *revision, in *instance) {
	defer a.wg.Done()
	<-in.inst.Done()
	a.unreserve(rev.spec)
	now := a.cfg.Now()
	rev.mu.Lock()
	for i, x := range rev.instances {
		if x == in {
			rev.instances = append(rev.instances[:i], rev.instances[i+1:]...)
			break
		}
	}
	ex := in.inst.Exit()
	switch {
	case ex.Reason != backend.ExitStopped && (ex.BeforeLoad || now.Sub(in.started) < quickCrash):
		if now.Sub(rev.restartAt) > backoffReset {
			rev.crashes = 0 // crashes long apart: not a loop
		}
		rev.crashes++
		rev.restartAt = now.Add(min(time.Second<<min(rev.crashes-1, 10), maxBackoff))
		rev.failure = nil
		if ex.BeforeLoad {
			rev.failure = errdefs.New(errdefs.ErrFunctionFailed, "%s", ex.LoadFailure())
		}
	default:
		rev.crashes, rev.restartAt, rev.failure = 0, time.Time{}, nil
	}
	if rev.waiters.Len() > 0 && !rev.retired {
		if err := rev.crashLooping(a.cfg.Now); err != nil {
			// They would start another that fails the same way.
			rev.failAll(err)
		} else {
			// Requests queued for it must not wait for a tick: start
			// another.
			a.scaleForQueue(rev)
		}
	}
	crashes, restartAt := rev.crashes, rev.restartAt
	rev.mu.Unlock()
	if ex.Reason != backend.ExitStopped {
		// One line per instance, whatever the requests: those refused
		// during the backoff are not logged one by one.
		args := []any{"owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "instance", in.inst.ID, "reason", ex.Reason, "detail", ex.Detail}
		if crashes > 1 {
			args = append(args, "crashes_in_a_row", crashes, "next_start_after", restartAt.Sub(now).Round(time.Millisecond))
		}
		a.log.Warn("instance ended", args...)
		if a.cfg.OnExit != nil {
			a.cfg.OnExit(rev.spec, ex)
		}
	}
}

// revision returns the state of spec's version, or nil if the version is
// no longer live (unless force).
func (a *Activator) revision(spec *backend.Spec, force ...bool) *revision {
	// The key is built on the stack and the lookup does not copy it:
	// this runs on every request, and most find their revision.
	var buf [64]byte
	k := append(buf[:0], spec.FunctionID...)
	k = strconv.AppendInt(append(k, '/'), spec.Version, 10)
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev := a.revs[string(k)]; rev != nil {
		return rev
	}
	key := string(k)
	if keep, ok := a.live[spec.FunctionID]; ok && !slices.Contains(keep, key) && len(force) == 0 {
		return nil
	}
	rev := &revision{spec: spec, scaler: autoscaler.New(a.scalerConfig(spec)), lastActivity: a.cfg.Now()}
	a.revs[key] = rev
	return rev
}

// Ensure makes the activator track spec's version, even one that is not
// live (asked for by number): its minimum instances start at the next tick
// and requests may start it until routing changes again.
func (a *Activator) Ensure(spec *backend.Spec) {
	a.revision(spec, true)
}

func (a *Activator) stopAsync(rev *revision, in *instance) {
	if !a.track() {
		return // the backend, closed first, has stopped every instance
	}
	go func() {
		defer a.wg.Done()
		defer a.ops.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.backend.Stop(ctx, in.inst.ID); err != nil {
			a.log.Error("stop instance", "instance", in.inst.ID, "err", err)
		}
	}()
}

// Admit lets versions of a function run, keeping those already allowed.
// A version is admitted before requests can resolve to it and the old
// ones are retired after, so no request finds its version neither live nor
// admitted.
func (a *Activator) Admit(functionID string, keys ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	live, ok := a.live[functionID]
	if !ok {
		return // everything is allowed until the first RetireExcept
	}
	for _, k := range keys {
		if !slices.Contains(live, k) {
			live = append(live, k)
		}
	}
	a.live[functionID] = live
}

// RetireExcept retires every version of a function except those in keep
// (Spec.Keys; none retires them all, as when the function is deleted).
func (a *Activator) RetireExcept(functionID string, keep ...string) {
	a.mu.Lock()
	a.live[functionID] = keep
	delete(a.removed, functionID)
	var revs []*revision
	for key, rev := range a.revs {
		if rev.spec.FunctionID == functionID && !slices.Contains(keep, key) {
			revs = append(revs, rev)
			delete(a.revs, key)
			a.retiring[rev] = struct{}{}
		}
	}
	a.mu.Unlock()
	for _, rev := range revs {
		a.retire(rev)
	}
}

// Remove retires every version of a deleted function and ends its
// instances at once, requests in flight on them included: a deploy lets
// the old version's requests finish, but a deleted function (or one of a
// deleted user) must not run on, streaming or reaching out for as long as
// its timeout allows. Instances of versions a deploy retired earlier and
// that still drain end too.
func (a *Activator) Remove(functionID string) {
	a.RetireExcept(functionID)
	a.mu.Lock()
	a.removed[functionID] = a.cfg.Now()
	var revs []*revision
	for rev := range a.retiring {
		if rev.spec.FunctionID == functionID {
			revs = append(revs, rev)
		}
	}
	a.mu.Unlock()
	for _, rev := range revs {
		rev.mu.Lock()
		var kill []*instance
		for _, in := range rev.instances {
			if in.inflight > 0 {
				in.stopping = true
				kill = append(kill, in)
			}
		}
		rev.mu.Unlock()
		for _, in := range kill {
			a.backend.Kill(in.inst.ID, backend.ExitStopped)
		}
	}
}

func (a *Activator) retire(rev *revision) {
	rev.mu.Lock()
	rev.retired = true
	// Queued requests go back to the router, which finds the new version.
	rev.failAll(ErrRetired)
	var idle []*instance
	for _, in := range rev.instances {
		if in.inflight == 0 && !in.stopping {
			in.stopping = true
			idle = append(idle, in)
		}
	}
	rev.mu.Unlock()
	for _, in := range idle {
		a.stopAsync(rev, in)
	}
}

// Tick runs the autoscaler for every version as of now: it records each
// version's concurrency (in flight plus queued), asks for the desired
// instance count, and starts or stops instances to reach it. Run calls it
// periodically; tests call it with the time they choose.
func (a *Activator) Tick(now time.Time) {
	for _, rev := range a.snapshot() {
		a.scale(rev, now)
	}
	a.pruneRetiring()
	a.pruneRemoved(now)
}

// removedHorizon is how long a deleted function's entry in live outlives
// it. A request resolves its function and asks for its version at once;
// a minute covers any scheduling delay between the two by far.
const removedHorizon = time.Minute

// pruneRemoved forgets deleted functions' entries older than the horizon.
func (a *Activator) pruneRemoved(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, at := range a.removed {
		if now.Sub(at) > removedHorizon {
			delete(a.removed, id)
			delete(a.live, id)
		}
	}
}

// pruneRetiring forgets retired versions whose instances have all ended.
func (a *Activator) pruneRetiring() {
	a.mu.Lock()
	revs := make([]*revision, 0, len(a.retiring))
	for r := range a.retiring {
		revs = append(revs, r)
	}
	a.mu.Unlock()
	for _, r := range revs {
		r.mu.Lock()
		done := len(r.instances) == 0 && r.starting == 0
		r.mu.Unlock()
		if done {
			a.mu.Lock()
			delete(a.retiring, r)
			a.mu.Unlock()
		}
	}
}

func (a *Activator) scale(rev *revision, now time.Time) {
	rev.mu.Lock()
	if rev.retired {
		rev.mu.Unlock()
		return
	}
	load := rev.waiters.Len() + rev.woken
	for _, in := range rev.instances {
		load += in.inflight
	}
	running := rev.running()
	rev.scaler.Record(now, float64(load))
	d := rev.scaler.Decide(now, running+rev.starting)
	desired := d.Desired
	// Never to zero while requests are recent (the scaler samples at
	// ticks and may not have seen short ones).
	if desired == 0 && (load > 0 || now.Sub(rev.lastActivity) < a.grace(rev.spec)) && running+rev.starting > 0 {
		desired = 1
	}
	backoff := now.Before(rev.restartAt) && rev.waiters.Len() == 0
	if backoff && desired > running+rev.starting {
		a.log.Debug("crash-loop backoff", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "crashes", rev.crashes, "until", rev.restartAt)
	}
	for n := desired - running - rev.starting; n > 0 && !backoff; n-- {
		// Only a version's minimum may stop others' idle instances for
		// room: a start for the load average that did would stop
		// another version's, whose next tick would stop this one's.
		if a.startLocked(rev, running+rev.starting < rev.spec.MinScale) != nil {
			a.log.Debug("no instance started: quota reached or shutting down", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "desired", desired)
			break
		}
	}
	var throttle []*instance
	if a.cfg.IdleAfter > 0 {
		for _, in := range rev.instances {
			if !in.idle && !in.stopping && !in.suspect && in.inflight == 0 && now.Sub(in.lastUsed) >= a.cfg.IdleAfter && !in.inst.Loading() {
				in.idle = true
				throttle = append(throttle, in)
			}
		}
	}
	var stop []*instance
	if excess := running - desired; excess > 0 {
		// Idle instances only, least recently used first.
		idle := make([]*instance, 0, len(rev.instances))
		for _, in := range rev.instances {
			if !in.stopping && in.inflight == 0 {
				idle = append(idle, in)
			}
		}
		sort.Slice(idle, func(i, j int) bool { return idle[i].lastUsed.Before(idle[j].lastUsed) })
		for _, in := range idle[:min(excess, len(idle))] {
			in.stopping = true
			stop = append(stop, in)
		}
	}
	rev.mu.Unlock()
	for _, in := range throttle {
		a.applyIdle(rev, in)
	}
	for _, in := range stop {
		a.log.Debug("scaling down", "owner", rev.spec.Owner, "function", rev.spec.Name, "version", rev.spec.Version, "instance", in.inst.ID, "desired", desired)
		a.stopAsync(rev, in)
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
	out := map[string]int{}
	for _, r := range a.snapshot() {
		r.mu.Lock()
		out[r.spec.Key()] = r.running()
		r.mu.Unlock()
	}
	return out
}

func (a *Activator) snapshot() []*revision {
	a.mu.Lock()
	defer a.mu.Unlock()
	revs := make([]*revision, 0, len(a.revs))
	for _, r := range a.revs {
		revs = append(revs, r)
	}
	return revs
}

// Active lists the versions an instance may still be started from or
// run: those not retired, and retired ones with an instance starting,
// running or stopping. A retired version starts no instance once it has
// none starting, so one this leaves out needs its bundle no more.
func (a *Activator) Active() []*backend.Spec {
	a.mu.Lock()
	revs := make([]*revision, 0, len(a.revs)+len(a.retiring))
	for _, r := range a.revs {
		revs = append(revs, r)
	}
	for r := range a.retiring {
		revs = append(revs, r)
	}
	a.mu.Unlock()
	var out []*backend.Spec
	for _, r := range revs {
		r.mu.Lock()
		active := !r.retired || r.starting > 0 || len(r.instances) > 0
		r.mu.Unlock()
		if active {
			out = append(out, r.spec)
		}
	}
	return out
}

// InstanceStates counts a version's instances by state: "busy" (with
// requests in flight), "idle", "starting", "stopping".
type InstanceStates struct {
	Owner, Function string
	Busy, Idle      int
	Starting        int
	Stopping        int // draining their requests, or ending
}

// States reports instance states of every version that has instances or
// is live.
func (a *Activator) States() []InstanceStates {
	var out []InstanceStates
	revs := a.snapshot()
	a.mu.Lock()
	for r := range a.retiring {
		revs = append(revs, r)
	}
	a.mu.Unlock()
	for _, r := range revs {
		r.mu.Lock()
		s := InstanceStates{Owner: r.spec.Owner, Function: r.spec.Name, Starting: r.starting}
		for _, in := range r.instances {
			switch {
			case in.stopping:
				s.Stopping++
			case in.inflight > 0:
				s.Busy++
			default:
				s.Idle++
			}
		}
		r.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// QueueDepth reports how many requests wait for capacity, over all versions.
func (a *Activator) QueueDepth() int {
	n := 0
	for _, r := range a.snapshot() {
		r.mu.Lock()
		n += r.waiters.Len()
		r.mu.Unlock()
	}
	return n
}

// settle waits for the starts and stops in progress (for tests: the policy
// is synchronous, its effects are not).
func (a *Activator) settle() { a.ops.Wait() }

// Close waits for the activator's goroutines; stop the backend first so
// that instances end. No instance starts or stops after it.
func (a *Activator) Close() {
	a.closeMu.Lock()
	a.closed = true
	a.closeMu.Unlock()
	a.wg.Wait()
}
