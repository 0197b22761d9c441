// Package backend holds what every backend (local now, Kubernetes next)
// shares: the spec of what to run and the instance it yields. The interface
// a backend satisfies is declared by its consumer (the activator), kept to
// starting and stopping instances.
package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Spec is one function version, as a backend needs it to run instances.
type Spec struct {
	FunctionID string // never reused, unlike names
	Owner      string
	Name       string
	Version    int64
	Runtime    string
	Digest     string // bundle digest, "sha256:<hex>"
	Env        map[string]string
	MemoryMiB  int
	Network    string        // "none" or "egress"
	Timeout    time.Duration // per invocation
	Cron       string        // the schedule of its scheduled handler; "" for none
	// Scaling policy.
	MinScale          int
	MaxScale          int
	Concurrency       int
	TargetUtilization float64       // 0: the autoscaler's default
	ScaleToZeroAfter  time.Duration // 0: the server's default
	CPUMilli          int           // CPU quota in thousandths of a CPU; 0: the server's default
	Isolation         string        // "" (standard) or "gvisor"
	// Private says a request needs a token to reach the version (the
	// router's concern, not the backend's: it is here because the spec
	// is what the router's lookup yields).
	Private bool
	// AsyncRetries is how many times a failed asynchronous invocation
	// of the version is tried again (the async worker's concern, here
	// for the same reason).
	AsyncRetries int
	// AsyncOnFailure names the function of the same owner that gets
	// the events of the version's failed asynchronous invocations ("":
	// none; the async worker's concern too).
	AsyncOnFailure string
}

// Key identifies the version across the platform.
// (It is looked up on every request: no fmt.)
func (s *Spec) Key() string { return s.FunctionID + "/" + strconv.FormatInt(s.Version, 10) }

// Exit says why an instance ended.
type Exit struct {
	Reason string // ExitStopped, ExitCrashed, ExitOOM, ExitTimeout
	Code   int    // exit code, or -1 if killed by a signal
	Detail string // human-readable, for logs and error messages
	// BeforeLoad: it ended, not stopped, before its function had loaded
	// (the module's top level threw or exited, ran out of memory or of
	// the start's time). Another instance of the version would most
	// likely fail the same way.
	BeforeLoad bool
}

// LoadFailure says, for a client, why an instance that ended BeforeLoad
// did not load: its Detail, as "the function failed to load: ..." when
// the Detail does not already say what failed.
func (e Exit) LoadFailure() string {
	if strings.HasPrefix(e.Detail, "the function ") {
		return e.Detail
	}
	return "the function failed to load: " + e.Detail
}

// Exit reasons.
const (
	ExitStopped = "stopped"
	ExitCrashed = "crashed"
	ExitOOM     = "out_of_memory"
	ExitTimeout = "timeout"
)

// ErrorMarkHeader is the response field in which an instance's runtime
// marks its own error answers with the instance's ErrorMark; it never
// reaches the client.
const ErrorMarkHeader = "Spry-Error-Mark"

// Instance is one running, specialized instance of a function version.
type Instance struct {
	ID      string
	Spec    *Spec
	Network string // "unix" or "tcp"
	Address string
	// ErrorMark is what the runtime's own error answers carry in
	// ErrorMarkHeader (runtime.Specialization); "" trusts none.
	ErrorMark string

	done     chan struct{}
	exitOnce sync.Once
	exit     Exit
	diagnose func() (Exit, bool)
	probe    func(context.Context) error
	schedule func(ctx context.Context, cron string, at time.Time) error
	load     atomic.Int32 // notLoading, loading or loadEnded
	loadOnce sync.Once
	loaded   chan struct{} // closed once the load has ended, well or not
	loadErr  error         // why it did not load; set before loaded is closed
}

// An instance's load states: one its backend never said was loading (it
// was loaded when handed out), one loading, one whose load has ended.
const (
	notLoading int32 = iota
	loading
	loadEnded
)

// NewInstance returns an instance that is running until Finish is called.
func NewInstance(id string, spec *Spec, network, address string) *Instance {
	return &Instance{ID: id, Spec: spec, Network: network, Address: address, done: make(chan struct{}), loaded: make(chan struct{})}
}

// Done is closed when the instance has ended.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Exit is why the instance ended; valid once Done is closed.
func (i *Instance) Exit() Exit { return i.exit }

// SetDiagnose installs the backend's early answer to "why is this instance
// failing?", for the moment between a request failing and the reaper
// finishing the instance. The kernel's OOM kill, say, is known at once,
// while reaping a sandbox can take a while on a loaded host. Call it
// before the instance is handed out.
func (i *Instance) SetDiagnose(f func() (Exit, bool)) { i.diagnose = f }

// Diagnose reports why the instance ended, or is known to be ending.
func (i *Instance) Diagnose() (Exit, bool) {
	select {
	case <-i.done:
		return i.exit, true
	default:
	}
	if i.diagnose != nil {
		return i.diagnose()
	}
	return Exit{}, false
}

// SetProbe installs the backend's check that the instance's runtime still
// answers (its event loop is not held by a handler that never returns).
// Call it before the instance is handed out.
func (i *Instance) SetProbe(f func(context.Context) error) { i.probe = f }

// SetScheduled sets how the backend runs the function's scheduled
// handler in the instance. Call it before the instance is handed out.
func (i *Instance) SetScheduled(f func(ctx context.Context, cron string, at time.Time) error) {
	i.schedule = f
}

// ErrNoScheduled: the backend cannot run scheduled handlers.
var ErrNoScheduled = errors.New("the backend cannot run scheduled handlers")

// ErrNoScheduledHandler: the function's module's default export has no
// scheduled method (invalid input: the user's code).
var ErrNoScheduledHandler = errdefs.New(errdefs.ErrInvalidArgument, "the module's default export has no scheduled method")

// RunScheduled runs the function's scheduled handler for the event of
// schedule cron at time at, and returns once it has: nil if it returned,
// else why not (ErrNoScheduledHandler when the function has none).
func (i *Instance) RunScheduled(ctx context.Context, cron string, at time.Time) error {
	if i.schedule == nil {
		return ErrNoScheduled
	}
	return i.schedule(ctx, cron, at)
}

// ErrNoProbe: the backend cannot tell whether the instance answers.
var ErrNoProbe = errors.New("the backend has no probe for its instances")

// Responsive reports whether the instance's runtime answers a probe
// before ctx ends: nil if it does.
func (i *Instance) Responsive(ctx context.Context) error {
	select {
	case <-i.done:
		return fmt.Errorf("instance %s has ended", i.ID)
	default:
	}
	if i.probe == nil {
		return ErrNoProbe
	}
	return i.probe(ctx)
}

// SetLoading records whether the instance is still loading its function.
// A backend that hands an instance out before its load is done (requests
// wait in it) says so, and says when the load ends (Loaded; false is
// Loaded(nil)); the load has a deadline of its own.
func (i *Instance) SetLoading(yes bool) {
	if !yes {
		i.Loaded(nil)
		return
	}
	i.load.CompareAndSwap(notLoading, loading)
}

// Loading reports whether the instance is still loading its function: a
// request that ran out of time meanwhile was waiting for the load, and
// says nothing of whether the function is stuck.
func (i *Instance) Loading() bool { return i.load.Load() == loading }

// Loaded records that the instance's load has ended: err is nil if its
// function loaded, or says why it did not (the instance is then ending).
// It ends Loading too. Only the first call counts.
func (i *Instance) Loaded(err error) {
	i.loadOnce.Do(func() {
		i.loadErr = err
		// Ended first: whoever WaitLoaded lets go sees it not Loading.
		i.load.Store(loadEnded)
		close(i.loaded)
	})
}

// WaitLoaded waits until the instance's function has loaded, and returns
// nil, or until it is known not to have: the error then says why, in the
// words of the instance's exit once it has ended (an import that threw,
// a runtime that exited or ran out of memory, a load past its deadline).
// An instance that was not loading when it was handed out has loaded. It
// sends the instance nothing. ctx bounds the wait.
func (i *Instance) WaitLoaded(ctx context.Context) error {
	// An instance whose backend never said it was loading has loaded.
	if i.load.Load() == notLoading {
		return nil
	}
	select {
	case <-i.loaded:
		if i.loadErr == nil {
			return nil
		}
		// Its exit, once recorded, says best why: wait for it.
		select {
		case <-i.done:
		case <-ctx.Done():
			return i.loadErr
		}
	case <-i.done:
		// Ended while loading; a load that ended well just before wins.
		select {
		case <-i.loaded:
			if i.loadErr == nil {
				return nil
			}
		default:
		}
	case <-ctx.Done():
		select {
		case <-i.loaded:
			return i.loadErr // what is known when the wait ends
		default:
			return ctx.Err()
		}
	}
	if i.exit.Detail != "" {
		return errors.New(i.exit.Detail)
	}
	return fmt.Errorf("instance %s ended (%s) before its function loaded", i.ID, i.exit.Reason)
}

// LoadFailed reports, without waiting, whether the instance's load has
// ended without its function loading (it is then ending).
func (i *Instance) LoadFailed() bool {
	// loadErr is written before the state is stored.
	return i.load.Load() == loadEnded && i.loadErr != nil
}

// LoadError waits, within ctx, for the instance's load to end, and
// returns why its function did not load, or nil if it did (or if its
// backend never said it was loading). A load still under way when ctx
// ends returns ctx's error. Unlike WaitLoaded it does not wait for the
// instance's end: a backend reaping the instance asks it.
func (i *Instance) LoadError(ctx context.Context) error {
	if i.load.Load() == notLoading {
		return nil
	}
	select {
	case <-i.loaded:
		return i.loadErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Finish records the instance's end; only the first call counts.
func (i *Instance) Finish(e Exit) {
	i.exitOnce.Do(func() {
		i.exit = e
		close(i.done)
	})
}
