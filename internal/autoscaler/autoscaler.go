package autoscaler

import (
	"math"
	"sync"
	"time"
)

// Defaults for the zero values of Config's fields.
const (
	defaultTargetUtilization = 0.7
	defaultStableWindow      = 60 * time.Second
	defaultPanicThreshold    = 2.0
	defaultScaleToZeroGrace  = 5 * time.Minute
	defaultMaxScaleDownRate  = 2.0
	defaultMaxScaleUpRate    = 1000.0
	// unboundedMax is the instance cap used when Config.Max is 0.
	unboundedMax = 1000
	// epsilon absorbs floating-point noise when turning a concurrency
	// into an instance count, so that e.g. exactly 2×target asks for 2
	// instances, not 3.
	epsilon = 1e-9
)

// Config is one function version's scaling policy. Zero (and invalid)
// values take the defaults documented on each field.
type Config struct {
	// Min and Max bound the instance count. Min may be 0 (scale to zero).
	// Max 0 means unbounded, capped at 1000. Negative values count as 0;
	// a Min above a non-zero Max is lowered to Max.
	Min, Max int
	// Concurrency is the most requests one instance serves at once (the
	// hard limit). Values below 1 count as 1.
	Concurrency int
	// TargetUtilization is the fraction of Concurrency to aim for per
	// instance; default 0.7, values above 1 count as 1.
	TargetUtilization float64
	// StableWindow is the averaging window for normal decisions and how
	// long panic mode lasts after its last trigger; default 60s. It is
	// handled in whole seconds (rounded up).
	StableWindow time.Duration
	// PanicWindow is the averaging window used to detect bursts; default
	// 10% of StableWindow (6s), at least 1s and at most StableWindow.
	PanicWindow time.Duration
	// PanicThreshold: panic mode starts when the panic window asks for at
	// least PanicThreshold × the ready instances; default 2.0. Values
	// not above 1 take the default (they would make every decision a
	// panic and forbid scaling down).
	PanicThreshold float64
	// ScaleToZeroGrace is how long a version must see no traffic before
	// it may go to zero instances; default (and for 0) 5m.
	ScaleToZeroGrace time.Duration
	// MaxScaleDownRate bounds a scale-down: a decision never goes below
	// ready/MaxScaleDownRate (rounded down), so the default 2.0 at most
	// halves the instances. Values not above 1 take the default.
	MaxScaleDownRate float64
	// MaxScaleUpRate bounds a scale-up: a decision never goes above
	// ready×MaxScaleUpRate (rounded up), counting 0 ready as 1. Default
	// 1000; values not above 1 take the default.
	MaxScaleUpRate float64
}

// normalized returns c with defaults filled in and invalid values fixed.
func (c Config) normalized() Config {
	c.Min = max(c.Min, 0)
	c.Max = max(c.Max, 0)
	if c.Max > 0 && c.Min > c.Max {
		c.Min = c.Max
	}
	c.Concurrency = max(c.Concurrency, 1)
	if !(c.TargetUtilization > 0) {
		c.TargetUtilization = defaultTargetUtilization
	}
	c.TargetUtilization = min(c.TargetUtilization, 1)
	if c.StableWindow <= 0 {
		c.StableWindow = defaultStableWindow
	}
	c.StableWindow = roundUpToSecond(c.StableWindow)
	if c.PanicWindow <= 0 {
		c.PanicWindow = c.StableWindow / 10
	}
	c.PanicWindow = min(roundUpToSecond(c.PanicWindow), c.StableWindow)
	if !(c.PanicThreshold > 1) {
		c.PanicThreshold = defaultPanicThreshold
	}
	if c.ScaleToZeroGrace <= 0 {
		c.ScaleToZeroGrace = defaultScaleToZeroGrace
	}
	if !(c.MaxScaleDownRate > 1) {
		c.MaxScaleDownRate = defaultMaxScaleDownRate
	}
	if !(c.MaxScaleUpRate > 1) {
		c.MaxScaleUpRate = defaultMaxScaleUpRate
	}
	return c
}

// roundUpToSecond rounds d up to a whole number of seconds, at least one.
func roundUpToSecond(d time.Duration) time.Duration {
	s := (d + time.Second - 1) / time.Second
	return max(s, 1) * time.Second
}

// maxInstances is the effective upper bound of a normalized Config.
func (c Config) maxInstances() int {
	if c.Max > 0 {
		return c.Max
	}
	return max(unboundedMax, c.Min)
}

func (c Config) seconds(d time.Duration) int { return int(d / time.Second) }

// Decision is the result of Scaler.Decide.
type Decision struct {
	// Desired is the number of instances the version should have.
	Desired int
	// Panic reports whether the scaler is in panic mode.
	Panic bool
	// StableConcurrency is the average in-flight count over the stable
	// window; PanicConcurrency is the burst signal: the larger of the
	// panic-window average and the average of the newest second.
	StableConcurrency, PanicConcurrency float64
}

// Scaler keeps the recent concurrency history of one function version and
// turns it into scaling decisions. It is safe for concurrent use.
type Scaler struct {
	mu  sync.Mutex
	cfg Config // normalized
	win *window

	// started is set by the first Record or Decide, at time start; until
	// the version has seen traffic, the scale-to-zero grace runs from then.
	started bool
	start   time.Time
	// lastActive is the time of the newest observation above zero.
	lastActive time.Time

	// panicTime is when panic mode was last triggered; zero when not
	// panicking. panicHigh is the highest count asked for in this panic.
	panicTime time.Time
	panicHigh int
}

// New returns a Scaler with policy cfg and no history.
func New(cfg Config) *Scaler {
	c := cfg.normalized()
	return &Scaler{cfg: c, win: newWindow(c.seconds(c.StableWindow))}
}

// SetConfig replaces the policy; the next decision uses it. The history is
// kept (its newest part, if the stable window shrinks), and so is panic
// mode.
func (s *Scaler) SetConfig(cfg Config) {
	c := cfg.normalized()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := c.seconds(c.StableWindow); n != len(s.win.buckets) {
		s.win = s.win.resized(n)
	}
	s.cfg = c
}

// Record adds an observation: the number of requests in flight at now,
// including those queued waiting for an instance. The caller samples it
// regularly (every 100ms to 1s), including zeros, and also whenever a
// request arrives at a version with no instances. Negative values count as
// 0; NaN and infinite ones are ignored, and so are observations older than
// the stable window.
func (s *Scaler) Record(now time.Time, inflight float64) {
	if math.IsNaN(inflight) || math.IsInf(inflight, 0) {
		return
	}
	inflight = max(inflight, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touch(now)
	s.win.record(now.Unix(), inflight)
	if inflight > 0 && now.After(s.lastActive) {
		s.lastActive = now
	}
}

func (s *Scaler) touch(now time.Time) {
	if !s.started {
		s.started, s.start = true, now
	}
}

// Decide returns the desired instance count at now, given that ready
// instances are currently serving. The caller calls it on its own ticker
// (typically every 1-2s) and on a request arriving at zero instances.
// A now older than the stable window before the newest observation means
// the clock was set back: the history is moved to end at now.
func (s *Scaler) Decide(now time.Time, ready int) Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touch(now)
	s.setBack(now)
	c := s.cfg
	ready = max(ready, 0)

	sec := now.Unix()
	stable, _ := s.win.mean(sec, c.seconds(c.StableWindow))
	panicAvg, _ := s.win.mean(sec, c.seconds(c.PanicWindow))
	// A burst shows in the newest second before the panic-window average
	// has caught up with it; in-flight counts include queued requests, so
	// a high newest second is real unserved demand, not noise. Look at the
	// previous second too, in case no sample has landed in this one yet.
	burst := max(panicAvg, s.win.latest(sec, 2))

	target := float64(c.Concurrency) * c.TargetUtilization
	wantStable := instancesFor(stable, target)
	wantPanic := instancesFor(burst, target)

	// Rate limits, as in Knative: 0 ready counts as 1, so a cold start may
	// go straight to MaxScaleUpRate instances.
	cur := float64(max(ready, 1))
	upLimit := math.Ceil(cur * c.MaxScaleUpRate)
	downLimit := math.Floor(cur / c.MaxScaleDownRate)
	limitedStable := min(max(wantStable, downLimit), upLimit)
	limitedPanic := min(max(wantPanic, downLimit), upLimit)

	// Panic mode starts (or is extended) when the burst signal asks for
	// PanicThreshold times the ready instances, or for any instance at
	// all when none is ready; it ends once a stable window has passed
	// since it was last triggered.
	var over bool
	if ready > 0 {
		over = wantPanic/float64(ready) >= c.PanicThreshold
	} else {
		over = burst > 0
	}
	switch {
	case over:
		if s.panicTime.IsZero() || now.After(s.panicTime) {
			s.panicTime = now
		}
	case !s.panicTime.IsZero() && now.Sub(s.panicTime) > c.StableWindow:
		s.panicTime, s.panicHigh = time.Time{}, 0
	}
	panicking := !s.panicTime.IsZero()

	hi := c.maxInstances()
	// Outside panic mode the stable window decides, but it never removes
	// instances the panic window still needs: the activator starts
	// instances for queued requests on its own, which can keep a ramp-up
	// below the panic threshold while the stable window still holds the
	// quiet seconds before it.
	desired := max(limitedStable, min(limitedPanic, float64(ready)))
	// Nor does it remove instances the highest load of the panic window
	// needs at full concurrency. The averages lag a step up (a second's
	// mean mixes the samples before it with those after), while the
	// activator's starts answer it at once: a decision in between stopped
	// instances the step had just started.
	peak := s.win.highest(sec, max(c.seconds(c.PanicWindow), 2), func(b bucket) float64 { return b.peak })
	desired = max(desired, min(instancesFor(peak, float64(c.Concurrency)), float64(ready)))
	// Nor does it remove instances that a second of the stable window
	// needed at the target: load that comes back within the window (bursts
	// every 30s, a load swinging about one instance's target) would
	// otherwise see its instances stopped between two bursts, once panic
	// mode has ended, and started again by the next one's panic, every
	// stable window.
	busiest := s.win.highest(sec, c.seconds(c.StableWindow), bucket.mean)
	desired = max(desired, min(instancesFor(busiest, target), float64(ready)))
	if panicking {
		// Never scale down while panicking: keep the highest count
		// asked for in this panic, and the instances already ready.
		desired = max(desired, limitedPanic, float64(s.panicHigh), float64(ready))
		s.panicHigh = int(min(desired, float64(hi)))
	}

	lo := c.Min
	if lo == 0 && ready >= 1 && !s.idleFor(now, c.ScaleToZeroGrace) {
		lo = 1
	}
	// Clamp in float first: desired may be huge (or infinite with an
	// infinite MaxScaleUpRate). lo <= hi holds for a normalized Config.
	n := max(int(min(desired, float64(hi))), lo)

	return Decision{
		Desired:           n,
		Panic:             panicking,
		StableConcurrency: stable,
		PanicConcurrency:  burst,
	}
}

// setBack copes with a clock set back: a decision asked for at a time
// older than the window reaches back from its newest observation. Every
// observation from then on would be dropped as too old and every average
// be empty, so that the instances of a steady load were halved at each
// decision for as long as the clock took to catch up. The history is moved
// to end at now instead, and times after now (of wall clocks only: times
// with monotonic readings are not after now) are brought back to now, so
// that panic mode and the scale-to-zero grace do not last until the clock
// catches up with them either.
func (s *Scaler) setBack(now time.Time) {
	sec := now.Unix()
	if !s.win.any || sec > s.win.newest-int64(len(s.win.buckets)) {
		return
	}
	s.win.shift(s.win.newest - sec)
	for _, t := range []*time.Time{&s.start, &s.lastActive, &s.panicTime} {
		if !t.IsZero() && t.After(now) {
			*t = now
		}
	}
}

// idleFor reports whether the version has seen no traffic for at least d,
// counting from its first observation or decision if it never has.
func (s *Scaler) idleFor(now time.Time, d time.Duration) bool {
	since := s.start
	if s.lastActive.After(since) {
		since = s.lastActive
	}
	return now.Sub(since) >= d
}

// instancesFor is the number of instances that serve concurrency at target
// each: 0 for no load, at least 1 for any load.
func instancesFor(concurrency, target float64) float64 {
	if concurrency <= 0 {
		return 0
	}
	return max(math.Ceil(concurrency/target-epsilon), 1)
}
