package async

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Defaults of a Worker's bounds (spry serve's flags).
const (
	// DefaultWorkers bounds the attempts running at once, server-wide.
	DefaultWorkers = 16
	// DefaultWorkersPerOwner bounds one owner's attempts running at
	// once, so that one user's flood leaves the rest to the others.
	DefaultWorkersPerOwner = 4
	// DefaultMaxPendingPerOwner bounds one owner's invocations not
	// finished (queued, waiting for a retry, or running).
	DefaultMaxPendingPerOwner = 10000
	// DefaultMaxBytesPerOwner bounds one owner's bytes (Usage.Bytes):
	// 10,240 invocations not finished, each counted as keeping a whole
	// response, so that the count bound is what small ones meet first.
	DefaultMaxBytesPerOwner = 640 << 20
	// DefaultRetention is how long finished invocations are kept.
	DefaultRetention = 24 * time.Hour
)

// pruneEvery is how often finished invocations past their retention
// are removed.
const pruneEvery = 10 * time.Minute

// Config is a Worker's setup.
type Config struct {
	// Send makes one attempt of inv (inv.Attempts is its number) and
	// says how it went; ctx ends when the server stops.
	Send func(ctx context.Context, inv *Invocation) Result
	// Workers, WorkersPerOwner, MaxPendingPerOwner, MaxBytesPerOwner
	// and Retention: 0 takes the defaults above; MaxPendingPerOwner or
	// MaxBytesPerOwner < 0 is no bound.
	Workers            int
	WorkersPerOwner    int
	MaxPendingPerOwner int
	MaxBytesPerOwner   int64
	Retention          time.Duration
	// Policy is when attempts are retried (zero: DefaultPolicy of
	// DefaultRetryDelay).
	Policy Policy
	// Now is the clock (nil: time.Now); Rand picks the jitter of retry
	// delays, in [0, 1) (nil: math/rand).
	Now  func() time.Time
	Rand func() float64
	// OnAttempt, if set, is told of every attempt that ended (not those
	// the server's stop cut off): its result, and what follows: status,
	// and for one queued again, when.
	OnAttempt func(inv *Invocation, r Result, status string, next time.Time)
	// Destination resolves the on-failure destination of a failed
	// invocation (Result.OnFailure): the id of owner's function name,
	// or an error (errdefs.ErrNotFound if there is none). Nil: failed
	// invocations are not sent on.
	Destination func(ctx context.Context, owner, name string) (string, error)
	// OnForward, if set, is told, after OnAttempt, of each failed
	// invocation with a destination: fwd is the event enqueued for it,
	// or nil and err says why none was (no such function, or its owner's
	// bounds).
	OnForward func(inv *Invocation, dest string, fwd *Invocation, err error)
	// MaxBody bounds an invocation's body, as the server takes it when
	// one is enqueued (0: MaxBody): a failure's event is cut to fit it.
	MaxBody int64
	Logger  *slog.Logger
}

// Worker runs the invocations of a Store.
type Worker struct {
	cfg Config
	st  *Store

	mu      sync.Mutex
	owners  map[string]*ownerState
	running int
	turn    int  // whose turn is first at the next dispatch
	stopped bool // Stop: no more attempts start
	kick    chan struct{}

	attempts sync.WaitGroup
	actx     context.Context
	cancel   context.CancelFunc
}

// ownerState is what the dispatcher knows of one owner's invocations.
type ownerState struct {
	queued  bool      // it may have queued invocations
	next    time.Time // the earliest of them is due then
	gen     uint64    // changes when an invocation is queued for it
	running int
}

// NewWorker returns a worker for st; Run runs it.
func NewWorker(st *Store, cfg Config) *Worker {
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.WorkersPerOwner <= 0 {
		cfg.WorkersPerOwner = DefaultWorkersPerOwner
	}
	switch {
	case cfg.MaxPendingPerOwner == 0:
		cfg.MaxPendingPerOwner = DefaultMaxPendingPerOwner
	case cfg.MaxPendingPerOwner < 0:
		cfg.MaxPendingPerOwner = 0
	}
	switch {
	case cfg.MaxBytesPerOwner == 0:
		cfg.MaxBytesPerOwner = DefaultMaxBytesPerOwner
	case cfg.MaxBytesPerOwner < 0:
		cfg.MaxBytesPerOwner = 0
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = MaxBody
	}
	if len(cfg.Policy.Delays) == 0 {
		cfg.Policy = DefaultPolicy(DefaultRetryDelay)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	actx, cancel := context.WithCancel(context.Background())
	return &Worker{cfg: cfg, st: st, owners: map[string]*ownerState{}, kick: make(chan struct{}, 1), actx: actx, cancel: cancel}
}

// Attempts is how many attempts an invocation of a function that allows
// max (0: any number) gets (Policy.Attempts).
func (w *Worker) Attempts(max int) int { return w.cfg.Policy.Attempts(max) }

// Enqueue stores inv (its owner, function, path, host, content type and
// body set) as a new invocation, due now, and sets its id, status and
// times. Past its owner's bounds (of invocations not finished, of bytes)
// it is an errdefs.ErrRateLimited, and nothing is stored.
func (w *Worker) Enqueue(ctx context.Context, inv *Invocation) error {
	now := w.cfg.Now()
	inv.ID = NewID()
	inv.Status = StatusQueued
	inv.CreatedAt, inv.NextAt = now, now
	if err := w.st.Add(ctx, inv, w.Bounds()); err != nil {
		return err
	}
	w.mu.Lock()
	w.queued(inv.Owner, now)
	w.mu.Unlock()
	w.wake()
	return nil
}

// Bounds are what the worker holds each owner to (0: no bound).
func (w *Worker) Bounds() Bounds {
	return Bounds{Pending: w.cfg.MaxPendingPerOwner, Bytes: w.cfg.MaxBytesPerOwner}
}

// Usage says what owner's invocations take of Bounds.
func (w *Worker) Usage(ctx context.Context, owner string) (Usage, error) {
	return w.st.Usage(ctx, owner)
}

// Get returns the invocation id of the function whose id is fn.
func (w *Worker) Get(ctx context.Context, fn, id string) (Invocation, error) {
	return w.st.Get(ctx, fn, id)
}

// List returns up to limit of fn's invocations, newest first, those
// before the one numbered before (0: from the newest).
func (w *Worker) List(ctx context.Context, fn string, before int64, limit int) ([]Invocation, error) {
	return w.st.List(ctx, fn, before, limit)
}

// Running is how many attempts run now.
func (w *Worker) Running() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running
}

// queued notes that owner has an invocation due at at (w.mu held).
func (w *Worker) queued(owner string, at time.Time) {
	o := w.owners[owner]
	if o == nil {
		o = &ownerState{}
		w.owners[owner] = o
	}
	if !o.queued || at.Before(o.next) {
		o.next = at
	}
	o.queued = true
	o.gen++
}

func (w *Worker) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Stop starts no more attempts; those running go on until Run's ctx
// ends. The server calls it as its shutdown begins.
func (w *Worker) Stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

// Drain stops the worker (Stop) and waits for the attempts running to
// end, until ctx does: those still running then are cut off and queued
// again, their attempt not counted. The server drains the worker before
// it stops what attempts go through.
func (w *Worker) Drain(ctx context.Context) {
	w.Stop()
	done := make(chan struct{})
	go func() { w.attempts.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.cancel()
		<-done
	}
}

// Run runs invocations until ctx ends: first those a stopped server
// left running (again), then each as it is due, and prunes finished
// ones past their retention. When ctx ends, the attempts still running
// are cut off and queued again, their attempt not counted, and Run
// returns once they are.
func (w *Worker) Run(ctx context.Context) {
	defer func() {
		w.Stop()
		w.cancel()
		w.attempts.Wait()
	}()
	if n, err := w.st.Recover(ctx, w.cfg.Now()); err != nil {
		w.cfg.Logger.Error("queue again the invocations a stopped server left running", "err", err)
	} else if n > 0 {
		w.cfg.Logger.Info("queued again the invocations the last server left running; they run again", "count", n)
	}
	// Until the store answers, nothing is known to be due.
	for {
		due, err := w.st.Due(ctx)
		if err == nil {
			w.mu.Lock()
			for owner, at := range due {
				w.queued(owner, at)
			}
			w.mu.Unlock()
			break
		}
		w.cfg.Logger.Error("read the queued invocations", "err", err)
		if !sleep(ctx, time.Second) {
			return
		}
	}
	w.prune(ctx)
	lastPrune := w.cfg.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		wait := w.dispatch(ctx)
		if wait <= 0 || wait > pruneEvery {
			wait = pruneEvery
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-timer.C:
		}
		if now := w.cfg.Now(); now.Sub(lastPrune) >= pruneEvery {
			lastPrune = now
			w.prune(ctx)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (w *Worker) prune(ctx context.Context) {
	n, err := w.st.Prune(ctx, w.cfg.Now().Add(-w.cfg.Retention))
	if err != nil && ctx.Err() == nil {
		w.cfg.Logger.Warn("prune finished invocations", "err", err)
	} else if n > 0 {
		w.cfg.Logger.Debug("pruned finished invocations", "count", n)
	}
}

// dispatch starts the attempts that are due and fit, owners taking
// turns one invocation at a time, and returns how long until the next
// is due (0: none is known).
func (w *Worker) dispatch(ctx context.Context) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.cfg.Now()
	order := make([]string, 0, len(w.owners))
	for name, o := range w.owners {
		if !o.queued && o.running == 0 {
			delete(w.owners, name)
			continue
		}
		order = append(order, name)
	}
	slices.Sort(order)
	if n := len(order); n > 0 {
		// Whoever went first last time goes later now.
		w.turn = (w.turn + 1) % n
		order = append(order[w.turn:], order[:w.turn]...)
	}
	for !w.stopped && w.running < w.cfg.Workers {
		started := false
		for _, name := range order {
			o := w.owners[name]
			if w.stopped || w.running >= w.cfg.Workers {
				break
			}
			if !o.queued || o.running >= w.cfg.WorkersPerOwner || o.next.After(now) {
				continue
			}
			gen := o.gen
			w.mu.Unlock()
			inv, err := w.st.Claim(ctx, name, now)
			var next time.Time
			more := true
			if err == nil && inv == nil {
				next, more, err = w.st.NextDue(ctx, name)
			}
			w.mu.Lock()
			switch {
			case err != nil:
				if ctx.Err() == nil {
					w.cfg.Logger.Error("claim an invocation", "owner", name, "err", err)
				}
				return time.Second
			case inv != nil:
				o.running++
				w.running++
				started = true
				w.attempts.Add(1)
				go w.attempt(inv)
			case o.gen == gen:
				// Unless one was queued meanwhile, the store's word
				// stands.
				o.queued, o.next = more, next
			}
		}
		if !started {
			break
		}
	}
	var wait time.Duration
	for _, o := range w.owners {
		if o.queued && o.running < w.cfg.WorkersPerOwner {
			d := max(o.next.Sub(now), time.Millisecond)
			if wait == 0 || d < wait {
				wait = d
			}
		}
	}
	return wait
}

// attempt makes one attempt of inv and records how it went.
func (w *Worker) attempt(inv *Invocation) {
	defer w.attempts.Done()
	r := w.cfg.Send(w.actx, inv)
	now := w.cfg.Now()
	// Writes go on after the stop: each is one short transaction, and
	// what they record is what the next start goes by.
	ctx := context.Background()
	status, next := StatusQueued, now
	forwarded := false
	if w.actx.Err() != nil {
		// Cut off by the server's stop: the attempt does not count.
		if err := w.st.Release(ctx, inv.ID, now); err != nil {
			w.cfg.Logger.Error("queue again an invocation cut off by the stop", "owner", inv.Owner, "function", inv.Function, "err", err)
		}
	} else {
		status, next = w.cfg.Policy.Next(inv.Attempts, r, now, w.cfg.Rand())
		var fwd *Invocation
		var fwdErr error
		if status == StatusFailed && r.OnFailure != "" && inv.FailureOf == "" && w.cfg.Destination != nil {
			fwd, fwdErr = w.forward(ctx, inv, r, now)
		} else {
			w.record(ctx, inv, r, status, now, next)
		}
		if w.cfg.OnAttempt != nil {
			w.cfg.OnAttempt(inv, r, status, next)
		}
		if fwd != nil || fwdErr != nil {
			if w.cfg.OnForward != nil {
				w.cfg.OnForward(inv, r.OnFailure, fwd, fwdErr)
			}
		}
		forwarded = fwd != nil
	}
	w.mu.Lock()
	w.running--
	o := w.owners[inv.Owner]
	o.running--
	if status == StatusQueued {
		w.queued(inv.Owner, next)
	}
	if forwarded {
		// Same owner: its event is due now.
		w.queued(inv.Owner, now)
	}
	w.mu.Unlock()
	w.wake()
}

// record stores how inv's attempt went. A write that fails (the disk is
// full) is tried again, every second and then less often, until it is
// stored or the worker stops: inv is running in the file until then, and
// forgotten it would stay so until the next start, which queues it again
// (as after a kill -9).
func (w *Worker) record(ctx context.Context, inv *Invocation, r Result, status string, now, next time.Time) {
	_ = w.store(inv, "record an invocation's attempt", func() error {
		return w.st.Record(ctx, inv.ID, r, status, now, next)
	})
}

// store runs write until it succeeds or the worker stops, waiting a
// second after the first failure and then twice as long each time, up
// to 30 s (record says why), and returns its last error.
func (w *Worker) store(inv *Invocation, what string, write func() error) error {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		err := write()
		if err == nil {
			return nil
		}
		w.cfg.Logger.Error(what, "owner", inv.Owner, "function", inv.Function, "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-w.actx.Done():
			return err
		}
	}
}

// forward records inv failed and, in the same transaction, enqueues the
// event of its failure for its destination r.OnFailure (Store.Forward),
// held to the same bounds as any enqueue, its body to MaxBody (cut to
// fit). It returns the event, or nil and why none was enqueued: no such
// function, the owner's bounds, or a bound on bodies too small for the
// event. That is final: the event is not tried again.
func (w *Worker) forward(ctx context.Context, inv *Invocation, r Result, now time.Time) (*Invocation, error) {
	id, err := w.cfg.Destination(ctx, inv.Owner, r.OnFailure)
	var body []byte
	if err == nil {
		body, err = failureEvent(inv, r, int(w.cfg.MaxBody))
	}
	if err != nil {
		w.record(ctx, inv, r, StatusFailed, now, now)
		return nil, err
	}
	fwd := &Invocation{ID: NewID(), Owner: inv.Owner, FunctionID: id, Function: r.OnFailure, Path: "/",
		ContentType: "application/json", Body: body, Status: StatusQueued,
		CreatedAt: now, NextAt: now, FailureOf: inv.ID}
	// One transaction, tried again whole while it fails (a full disk).
	var refused error
	err = w.store(inv, "record an invocation's attempt and send it on", func() (err error) {
		refused, err = w.st.Forward(ctx, inv.ID, r, now, fwd, w.Bounds())
		return err
	})
	switch {
	case err != nil:
		return nil, err
	case errors.Is(refused, ErrGone):
		// Its function's deletion took its invocations: nothing to say.
		return nil, nil
	case refused != nil:
		return nil, refused
	}
	inv.ForwardedTo = fwd.ID
	return fwd, nil
}
