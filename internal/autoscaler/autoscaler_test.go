package autoscaler

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// base is the fixed start of every test's simulated clock.
var base = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// feed records load every step in [from, from+dur) and returns from+dur.
func feed(s *Scaler, from time.Time, dur, step time.Duration, load float64) time.Time {
	for t := from; t.Before(from.Add(dur)); t = t.Add(step) {
		s.Record(t, load)
	}
	return from.Add(dur)
}

// sim drives a Scaler as a caller would: it records the load every
// recordEvery, decides every decideEvery and, if follow is set, makes the
// desired count ready at once (instances start instantly).
type sim struct {
	s           *Scaler
	now         time.Time
	ready       int
	follow      bool
	recordEvery time.Duration
	decideEvery time.Duration
	lastDecide  time.Time
}

func newSim(cfg Config, ready int) *sim {
	return &sim{
		s:           New(cfg),
		now:         base,
		ready:       ready,
		follow:      true,
		recordEvery: 500 * time.Millisecond,
		decideEvery: time.Second,
		lastDecide:  base.Add(-time.Hour),
	}
}

// run simulates dur at a constant load, calling check on every decision.
func (m *sim) run(dur time.Duration, load float64, check func(now time.Time, ready int, d Decision)) {
	end := m.now.Add(dur)
	for m.now.Before(end) {
		m.s.Record(m.now, load)
		if m.now.Sub(m.lastDecide) >= m.decideEvery {
			d := m.s.Decide(m.now, m.ready)
			if check != nil {
				check(m.now, m.ready, d)
			}
			if m.follow {
				m.ready = d.Desired
			}
			m.lastDecide = m.now
		}
		m.now = m.now.Add(m.recordEvery)
	}
}

func TestConfigDefaults(t *testing.T) {
	got := Config{}.normalized()
	want := Config{
		Min: 0, Max: 0, Concurrency: 1, TargetUtilization: 0.7,
		StableWindow: 60 * time.Second, PanicWindow: 6 * time.Second,
		PanicThreshold: 2, ScaleToZeroGrace: 5 * time.Minute,
		MaxScaleDownRate: 2, MaxScaleUpRate: 1000,
	}
	if got != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}

	tests := []struct {
		name  string
		in    Config
		check func(c Config) bool
	}{
		{"negative min and max", Config{Min: -1, Max: -5}, func(c Config) bool { return c.Min == 0 && c.Max == 0 && c.maxInstances() == unboundedMax }},
		{"min above max is lowered", Config{Min: 8, Max: 3}, func(c Config) bool { return c.Min == 3 && c.Max == 3 }},
		{"min above unbounded cap raises cap", Config{Min: 2000}, func(c Config) bool { return c.maxInstances() == 2000 }},
		{"utilization above 1", Config{TargetUtilization: 3}, func(c Config) bool { return c.TargetUtilization == 1 }},
		{"utilization NaN", Config{TargetUtilization: math.NaN()}, func(c Config) bool { return c.TargetUtilization == 0.7 }},
		{"panic window is 10% of stable", Config{StableWindow: 2 * time.Minute}, func(c Config) bool { return c.PanicWindow == 12*time.Second }},
		{"tiny stable window", Config{StableWindow: time.Millisecond}, func(c Config) bool { return c.StableWindow == time.Second && c.PanicWindow == time.Second }},
		{"stable window rounds up", Config{StableWindow: 1500 * time.Millisecond}, func(c Config) bool { return c.StableWindow == 2*time.Second }},
		{"panic window capped by stable", Config{StableWindow: 10 * time.Second, PanicWindow: time.Minute}, func(c Config) bool { return c.PanicWindow == 10*time.Second }},
		{"threshold not above 1", Config{PanicThreshold: 1}, func(c Config) bool { return c.PanicThreshold == 2 }},
		{"rates not above 1", Config{MaxScaleDownRate: 1, MaxScaleUpRate: 0.5}, func(c Config) bool { return c.MaxScaleDownRate == 2 && c.MaxScaleUpRate == 1000 }},
		{"explicit values kept", Config{Min: 1, Max: 9, Concurrency: 8, TargetUtilization: 0.5, PanicThreshold: 3, ScaleToZeroGrace: time.Minute, MaxScaleDownRate: 4, MaxScaleUpRate: 10},
			func(c Config) bool {
				return c.Min == 1 && c.Max == 9 && c.Concurrency == 8 && c.TargetUtilization == 0.5 && c.PanicThreshold == 3 &&
					c.ScaleToZeroGrace == time.Minute && c.MaxScaleDownRate == 4 && c.MaxScaleUpRate == 10
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c := tt.in.normalized(); !tt.check(c) {
				t.Fatalf("normalized(%+v) = %+v", tt.in, c)
			}
		})
	}
}

func TestSteadyStateHolds(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		load float64
		want int
	}{
		{"8 per instance, load 20", Config{Concurrency: 8}, 20, 4}, // 20/5.6 = 3.57
		{"exact multiple of target", Config{Concurrency: 1}, 3.5, 5},
		{"light load keeps one", Config{Concurrency: 100}, 0.5, 1},
		{"min above need", Config{Concurrency: 8, Min: 3}, 1, 3},
		{"full utilization", Config{Concurrency: 10, TargetUtilization: 1}, 95, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newSim(tt.cfg, tt.want)
			m.run(10*time.Minute, tt.load, func(now time.Time, ready int, d Decision) {
				if d.Desired != tt.want || d.Panic {
					t.Fatalf("at %v: got %+v, want %d without panic", now.Sub(base), d, tt.want)
				}
			})
		})
	}
}

func TestBurstScalesUpFast(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		history func(s *Scaler) time.Time // returns when the burst starts
		ready   int
		want    int
	}{
		{"cold start, no history", Config{Concurrency: 8}, func(*Scaler) time.Time { return base }, 0, 12},
		{"from zero after an idle hour", Config{Concurrency: 8}, func(s *Scaler) time.Time {
			return feed(s, base, time.Hour, time.Second, 0)
		}, 0, 12},
		{"from one instance with light load", Config{Concurrency: 8}, func(s *Scaler) time.Time {
			return feed(s, base, 10*time.Minute, time.Second, 2)
		}, 1, 12},
		{"from one instance, sampled every 100ms", Config{Concurrency: 8}, func(s *Scaler) time.Time {
			return feed(s, base, 10*time.Minute, 100*time.Millisecond, 1)
		}, 1, 12},
		{"capped by max", Config{Concurrency: 8, Max: 5}, func(s *Scaler) time.Time {
			return feed(s, base, time.Minute, time.Second, 1)
		}, 1, 5},
		{"limited by scale-up rate", Config{Concurrency: 8, MaxScaleUpRate: 4}, func(s *Scaler) time.Time {
			return feed(s, base, time.Minute, time.Second, 1)
		}, 1, 4},
		{"scale-up rate from zero counts zero as one", Config{Concurrency: 8, MaxScaleUpRate: 3}, func(*Scaler) time.Time { return base }, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(tt.cfg)
			at := tt.history(s)
			s.Record(at, 64)
			d := s.Decide(at, tt.ready)
			if d.Desired != tt.want || !d.Panic {
				t.Fatalf("first decision after burst: got %+v, want %d in panic", d, tt.want)
			}
			// Decided a moment later, before the next sample: still there.
			if d := s.Decide(at.Add(time.Second), tt.ready); d.Desired != tt.want {
				t.Fatalf("decision 1s later: got %+v, want %d", d, tt.want)
			}
		})
	}
}

func TestScaleDownSlowly(t *testing.T) {
	cfg := Config{Concurrency: 8}
	m := newSim(cfg, 1)
	m.run(2*time.Minute, 2, nil)
	if m.ready != 1 {
		t.Fatalf("before burst: ready %d, want 1", m.ready)
	}
	burstStart := m.now
	m.run(30*time.Second, 64, func(now time.Time, ready int, d Decision) {
		if d.Desired != 12 || !d.Panic {
			t.Fatalf("during burst at +%v: %+v, want 12 in panic", now.Sub(burstStart), d)
		}
	})
	burstEnd := m.now
	var (
		panicEnd time.Time
		steps    []int
		zeroAt   time.Time
	)
	m.run(15*time.Minute, 0, func(now time.Time, ready int, d Decision) {
		if d.Panic {
			if d.Desired < ready {
				t.Fatalf("scaled down from %d to %d while panicking", ready, d.Desired)
			}
			if now.Sub(burstStart) > cfg.normalized().StableWindow+time.Second {
				t.Fatalf("still panicking at +%v after the only trigger", now.Sub(burstStart))
			}
			return
		}
		if panicEnd.IsZero() {
			panicEnd = now
		}
		if d.Desired > ready {
			t.Fatalf("scaled up from %d to %d with no load", ready, d.Desired)
		}
		if floor := ready / 2; d.Desired < floor {
			t.Fatalf("at +%v scaled down from %d to %d, below the rate limit %d", now.Sub(burstEnd), ready, d.Desired, floor)
		}
		if d.Desired != ready {
			steps = append(steps, d.Desired)
		}
		if d.Desired == 0 && zeroAt.IsZero() {
			zeroAt = now
		}
	})
	if panicEnd.IsZero() || panicEnd.Sub(burstStart) < cfg.normalized().StableWindow {
		t.Fatalf("panic ended at +%v after the burst started, want >= the stable window", panicEnd.Sub(burstStart))
	}
	if len(steps) < 3 || steps[0] < 6 {
		t.Fatalf("scale-down steps %v: want gradual (first step to at least 6)", steps)
	}
	if zeroAt.IsZero() {
		t.Fatalf("never reached zero; steps %v", steps)
	}
	if idle := zeroAt.Sub(burstEnd); idle < 5*time.Minute {
		t.Fatalf("reached zero %v after the last load, before the 5m grace", idle)
	}
	if steps[len(steps)-2] != 1 {
		t.Fatalf("steps %v: want to hold 1 before going to 0", steps)
	}
}

// TestPanicKeepsItsHighWaterMark: while instances are still starting
// (ready lags behind the decision) and the burst signal dips, panic mode
// keeps asking for the most it asked for.
func TestPanicKeepsItsHighWaterMark(t *testing.T) {
	s := New(Config{Concurrency: 8})
	now := feed(s, base, time.Minute, time.Second, 1)
	s.Record(now, 64)
	if d := s.Decide(now, 1); d.Desired != 12 {
		t.Fatalf("burst: %+v", d)
	}
	for i := 1; i <= 50; i++ {
		now = now.Add(time.Second)
		s.Record(now, 8) // queue drained, only one instance ready so far
		if d := s.Decide(now, 1+i/10); d.Desired != 12 || !d.Panic {
			t.Fatalf("+%ds: %+v, want 12 in panic", i, d)
		}
	}
}

func TestPanicExitsAfterStableWindow(t *testing.T) {
	s := New(Config{Concurrency: 10, TargetUtilization: 1})
	s.Record(base, 40)
	if d := s.Decide(base, 1); !d.Panic || d.Desired != 4 {
		t.Fatalf("trigger: %+v", d)
	}
	// A second trigger at +30s extends panic to +90s.
	feed(s, base.Add(time.Second), 29*time.Second, time.Second, 0)
	s.Record(base.Add(30*time.Second), 80)
	if d := s.Decide(base.Add(30*time.Second), 4); !d.Panic || d.Desired != 8 {
		t.Fatalf("re-trigger: %+v", d)
	}
	feed(s, base.Add(31*time.Second), 5*time.Minute, time.Second, 0)
	for _, tc := range []struct {
		at    time.Duration
		panic bool
	}{{60 * time.Second, true}, {89 * time.Second, true}, {90 * time.Second, true}, {91 * time.Second, false}} {
		if d := s.Decide(base.Add(tc.at), 8); d.Panic != tc.panic {
			t.Fatalf("at +%v: panic=%v, want %v (%+v)", tc.at, d.Panic, tc.panic, d)
		}
	}
}

func TestScaleRateLimits(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		load  float64 // recorded for the last minute
		ready int
		want  int
	}{
		{"down: default halves", Config{Concurrency: 8}, 0, 10, 5},
		{"down: default halves, rounding down", Config{Concurrency: 8}, 0, 9, 4},
		{"down: rate 4", Config{Concurrency: 8, MaxScaleDownRate: 4}, 0, 10, 2},
		{"down: rate 1.5", Config{Concurrency: 8, MaxScaleDownRate: 1.5}, 0, 10, 6},
		{"down: invalid rate 1 takes the default", Config{Concurrency: 8, MaxScaleDownRate: 1}, 0, 10, 5},
		{"down: the load needs more than the limit", Config{Concurrency: 1, TargetUtilization: 1}, 7, 10, 7},
		{"down: limit never below min", Config{Concurrency: 8, Min: 8}, 0, 10, 8},
		{"down: one instance may reach the grace floor", Config{Concurrency: 8}, 0, 1, 1},
		{"up: rate 2", Config{Concurrency: 1, MaxScaleUpRate: 2}, 1000, 2, 4},
		{"up: rate 1.5 rounds up", Config{Concurrency: 1, MaxScaleUpRate: 1.5}, 1000, 3, 5},
		{"up: invalid rate 1 takes the default", Config{Concurrency: 1, MaxScaleUpRate: 1}, 100, 1, 143},
		{"up: infinite rate", Config{Concurrency: 1, MaxScaleUpRate: math.Inf(1)}, 100, 1, 143},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(tt.cfg)
			now := feed(s, base, time.Minute, time.Second, tt.load)
			if d := s.Decide(now, tt.ready); d.Desired != tt.want {
				t.Fatalf("ready %d: got %+v, want %d", tt.ready, d, tt.want)
			}
		})
	}
}

func TestNeverBelowMin(t *testing.T) {
	for _, minN := range []int{1, 2, 5} {
		for _, startReady := range []int{0, minN, minN + 7, 40} {
			m := newSim(Config{Min: minN, Concurrency: 4}, startReady)
			check := func(now time.Time, ready int, d Decision) {
				if d.Desired < minN {
					t.Fatalf("min %d, ready %d: desired %d", minN, ready, d.Desired)
				}
			}
			m.run(time.Minute, 30, check)
			m.run(2*time.Hour, 0, check)
			if m.ready != minN {
				t.Fatalf("min %d: settled at %d", minN, m.ready)
			}
		}
	}
}

func TestNeverAboveMax(t *testing.T) {
	for _, maxN := range []int{1, 3, 10} {
		for _, load := range []float64{0.5, 50, 1e6} {
			for _, ready := range []int{0, 1, maxN, 3 * maxN} {
				s := New(Config{Max: maxN, Concurrency: 2})
				now := feed(s, base, 90*time.Second, 250*time.Millisecond, load)
				for range 5 {
					d := s.Decide(now, ready)
					if d.Desired > maxN || d.Desired < 1 {
						t.Fatalf("max %d, load %v, ready %d: desired %d", maxN, load, ready, d.Desired)
					}
					now = now.Add(time.Second)
				}
			}
		}
	}
	// Unbounded is capped too.
	s := New(Config{Concurrency: 1})
	s.Record(base, 1e9)
	if d := s.Decide(base, 1); d.Desired != unboundedMax {
		t.Fatalf("unbounded: desired %d, want %d", d.Desired, unboundedMax)
	}
}

func TestScaleToZeroOnlyAfterGrace(t *testing.T) {
	tests := []struct {
		name  string
		grace time.Duration
		want  time.Duration // idle time at which 0 is first desired
	}{
		{"default grace", 0, 5 * time.Minute},
		{"two minutes", 2 * time.Minute, 2 * time.Minute},
		{"ten minutes", 10 * time.Minute, 10 * time.Minute},
		// Shorter than the stable window: the load must also have
		// left the stable average.
		{"grace shorter than stable window", 20 * time.Second, 60 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{Concurrency: 10, ScaleToZeroGrace: tt.grace})
			now := feed(s, base, time.Minute, time.Second, 3)
			lastLoad := now.Add(-time.Second)
			var zeroAt time.Time
			for ; now.Before(lastLoad.Add(20 * time.Minute)); now = now.Add(time.Second) {
				s.Record(now, 0)
				d := s.Decide(now, 1)
				if d.Desired == 0 {
					zeroAt = now
					break
				}
				if d.Desired != 1 {
					t.Fatalf("idle %v: desired %d, want 1", now.Sub(lastLoad), d.Desired)
				}
			}
			if zeroAt.IsZero() {
				t.Fatal("never scaled to zero")
			}
			if idle := zeroAt.Sub(lastLoad); idle < tt.want || idle > tt.want+2*time.Second {
				t.Fatalf("scaled to zero after %v idle, want %v", idle, tt.want)
			}
		})
	}
}

func TestScaleToZeroEdgeCases(t *testing.T) {
	t.Run("new scaler with an instance waits the grace", func(t *testing.T) {
		s := New(Config{Concurrency: 10})
		if d := s.Decide(base, 1); d.Desired != 1 {
			t.Fatalf("got %+v, want 1", d)
		}
		if d := s.Decide(base.Add(5*time.Minute-time.Second), 1); d.Desired != 1 {
			t.Fatalf("just before grace: %+v, want 1", d)
		}
		if d := s.Decide(base.Add(5*time.Minute), 1); d.Desired != 0 {
			t.Fatalf("after grace: %+v, want 0", d)
		}
	})
	t.Run("no instances and no traffic starts nothing", func(t *testing.T) {
		s := New(Config{Concurrency: 10})
		feed(s, base, time.Minute, time.Second, 0)
		if d := s.Decide(base.Add(time.Minute), 0); d.Desired != 0 {
			t.Fatalf("got %+v, want 0", d)
		}
	})
	t.Run("traffic resets the grace", func(t *testing.T) {
		s := New(Config{Concurrency: 10, ScaleToZeroGrace: 2 * time.Minute})
		now := feed(s, base, 100*time.Second, time.Second, 0)
		s.Record(now, 1)
		now = feed(s, now.Add(time.Second), 110*time.Second, time.Second, 0)
		if d := s.Decide(now, 1); d.Desired != 1 {
			t.Fatalf("%v after the last request: %+v, want 1", 111*time.Second, d)
		}
		now = feed(s, now, 10*time.Second, time.Second, 0)
		if d := s.Decide(now, 1); d.Desired != 0 {
			t.Fatalf("%v after the last request: %+v, want 0", 121*time.Second, d)
		}
	})
}

func TestMinOneNeverReachesZero(t *testing.T) {
	m := newSim(Config{Min: 1, Concurrency: 8, ScaleToZeroGrace: time.Second}, 3)
	m.run(time.Minute, 10, nil)
	m.run(6*time.Hour, 0, func(now time.Time, ready int, d Decision) {
		if d.Desired < 1 {
			t.Fatalf("at %v: desired %d with min 1", now.Sub(base), d.Desired)
		}
	})
	if m.ready != 1 {
		t.Fatalf("settled at %d, want 1", m.ready)
	}
}

func TestColdStart(t *testing.T) {
	histories := []struct {
		name string
		fill func(s *Scaler) time.Time
	}{
		{"no history", func(*Scaler) time.Time { return base }},
		{"idle hour of zeros", func(s *Scaler) time.Time { return feed(s, base, time.Hour, 500*time.Millisecond, 0) }},
		{"traffic long ago", func(s *Scaler) time.Time {
			now := feed(s, base, time.Minute, time.Second, 50)
			return feed(s, now, 20*time.Minute, time.Second, 0)
		}},
	}
	loads := []struct {
		load float64
		want int
	}{{1e-12, 1}, {0.2, 1}, {1, 1}, {3, 1}, {6, 2}, {64, 12}}
	for _, h := range histories {
		for _, l := range loads {
			s := New(Config{Concurrency: 8})
			now := h.fill(s)
			s.Record(now, l.load)
			d := s.Decide(now, 0)
			if d.Desired != l.want || !d.Panic {
				t.Fatalf("%s, load %v: got %+v, want %d in panic", h.name, l.load, d, l.want)
			}
		}
	}

	t.Run("request gone before the instance is ready", func(t *testing.T) {
		s := New(Config{Concurrency: 8})
		now := feed(s, base, time.Hour, time.Second, 0)
		s.Record(now, 1)
		if d := s.Decide(now, 0); d.Desired != 1 {
			t.Fatalf("cold start: %+v", d)
		}
		// The request is cancelled; the instance is still starting.
		now = feed(s, now.Add(time.Second), 3*time.Second, time.Second, 0)
		if d := s.Decide(now, 0); d.Desired != 1 {
			t.Fatalf("cold start was cancelled: %+v", d)
		}
	})
	t.Run("min 0 with an instance and a request is not a panic", func(t *testing.T) {
		s := New(Config{Concurrency: 8})
		s.Record(base, 1)
		if d := s.Decide(base, 1); d.Desired != 1 || d.Panic {
			t.Fatalf("got %+v, want 1 without panic", d)
		}
	})
}

func TestSetConfigApplies(t *testing.T) {
	tests := []struct {
		name   string
		before Config
		after  Config
		load   float64
		ready  int
		want   int
	}{
		{"higher concurrency needs fewer", Config{Concurrency: 8}, Config{Concurrency: 16}, 64, 12, 6},
		{"lower concurrency needs more", Config{Concurrency: 16}, Config{Concurrency: 8}, 64, 6, 12},
		{"max lowered", Config{Concurrency: 8}, Config{Concurrency: 8, Max: 5}, 64, 12, 5},
		{"min raised", Config{Concurrency: 8}, Config{Concurrency: 8, Min: 3}, 1, 1, 3},
		{"utilization raised", Config{Concurrency: 10}, Config{Concurrency: 10, TargetUtilization: 1}, 50, 8, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(tt.before)
			now := feed(s, base, 2*time.Minute, time.Second, tt.load)
			s.SetConfig(tt.after)
			if d := s.Decide(now, tt.ready); d.Desired != tt.want {
				t.Fatalf("after SetConfig: %+v, want %d", d, tt.want)
			}
		})
	}

	t.Run("shorter grace", func(t *testing.T) {
		s := New(Config{Concurrency: 8})
		now := feed(s, base, time.Minute, time.Second, 1)
		now = feed(s, now, 2*time.Minute, time.Second, 0)
		if d := s.Decide(now, 1); d.Desired != 1 {
			t.Fatalf("before: %+v", d)
		}
		s.SetConfig(Config{Concurrency: 8, ScaleToZeroGrace: time.Minute})
		if d := s.Decide(now, 1); d.Desired != 0 {
			t.Fatalf("after: %+v", d)
		}
	})

	t.Run("stable window resized keeps newest history", func(t *testing.T) {
		s := New(Config{Concurrency: 1, TargetUtilization: 1})
		now := feed(s, base, 50*time.Second, time.Second, 10)
		now = feed(s, now, 10*time.Second, time.Second, 2)
		last := now.Add(-time.Second)
		if d := s.Decide(last, 10); math.Abs(d.StableConcurrency-(50*10+10*2)/60.0) > 1e-9 {
			t.Fatalf("60s window average %v", d.StableConcurrency)
		}
		s.SetConfig(Config{Concurrency: 1, TargetUtilization: 1, StableWindow: 10 * time.Second})
		if n := len(s.win.buckets); n != 10 {
			t.Fatalf("%d buckets after shrinking, want 10", n)
		}
		if d := s.Decide(last, 10); d.StableConcurrency != 2 {
			t.Fatalf("10s window average %v, want 2", d.StableConcurrency)
		}
		s.SetConfig(Config{Concurrency: 1, TargetUtilization: 1, StableWindow: 2 * time.Minute})
		if n := len(s.win.buckets); n != 120 {
			t.Fatalf("%d buckets after growing, want 120", n)
		}
		if d := s.Decide(last, 10); d.StableConcurrency != 2 {
			t.Fatalf("after growing, average %v, want 2 (older history was dropped)", d.StableConcurrency)
		}
		now = feed(s, now, 30*time.Second, time.Second, 5)
		if d := s.Decide(now.Add(-time.Second), 10); math.Abs(d.StableConcurrency-(10*2+30*5)/40.0) > 1e-9 {
			t.Fatalf("grown window average %v", d.StableConcurrency)
		}
	})
}

func TestShortHistory(t *testing.T) {
	tests := []struct {
		name       string
		samples    int
		step       time.Duration
		load       float64
		wantStable float64
		want       int
	}{
		{"single observation", 1, time.Second, 11.2, 11.2, 2},
		{"ten seconds", 10, time.Second, 11.2, 11.2, 2},
		{"three seconds at 100ms", 30, 100 * time.Millisecond, 20, 20, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Config{Concurrency: 8})
			now := base
			for i := range tt.samples {
				now = base.Add(time.Duration(i) * tt.step)
				s.Record(now, tt.load)
			}
			d := s.Decide(now, tt.want)
			if math.Abs(d.StableConcurrency-tt.wantStable) > 1e-9 || math.Abs(d.PanicConcurrency-tt.wantStable) > 1e-9 {
				t.Fatalf("averages %v/%v, want %v (not diluted by the unfilled window)", d.StableConcurrency, d.PanicConcurrency, tt.wantStable)
			}
			if d.Desired != tt.want {
				t.Fatalf("desired %d, want %d", d.Desired, tt.want)
			}
		})
	}
}

func TestWindowAverages(t *testing.T) {
	t.Run("sampling rate does not change the average", func(t *testing.T) {
		for _, step := range []time.Duration{100 * time.Millisecond, time.Second, 2 * time.Second, 3 * time.Second} {
			s := New(Config{Concurrency: 8})
			now := feed(s, base, 5*time.Minute, step, 10)
			d := s.Decide(now, 2)
			if d.StableConcurrency != 10 || d.PanicConcurrency != 10 {
				t.Fatalf("step %v: averages %v/%v, want 10", step, d.StableConcurrency, d.PanicConcurrency)
			}
		}
	})
	t.Run("per-second buckets then mean", func(t *testing.T) {
		s := New(Config{Concurrency: 8, StableWindow: 10 * time.Second, PanicWindow: 2 * time.Second})
		// Second 0: samples 0 and 10 (mean 5); seconds 1-8: 1 each; second 9: 4.
		s.Record(base, 0)
		s.Record(base.Add(500*time.Millisecond), 10)
		for i := 1; i <= 8; i++ {
			s.Record(base.Add(time.Duration(i)*time.Second), 1)
		}
		s.Record(base.Add(9*time.Second), 4)
		d := s.Decide(base.Add(9*time.Second), 1)
		if want := (5 + 8*1 + 4) / 10.0; math.Abs(d.StableConcurrency-want) > 1e-9 {
			t.Fatalf("stable %v, want %v", d.StableConcurrency, want)
		}
		if want := 4.0; d.PanicConcurrency != want { // max(mean(1,4), newest 4)
			t.Fatalf("panic %v, want %v", d.PanicConcurrency, want)
		}
		// Ten seconds later, second 0 has left the window.
		d = s.Decide(base.Add(10*time.Second), 1)
		if want := (8*1 + 4) / 9.0; math.Abs(d.StableConcurrency-want) > 1e-9 {
			t.Fatalf("stable after a second %v, want %v", d.StableConcurrency, want)
		}
		// With no observation in the last window, there is no load.
		d = s.Decide(base.Add(time.Minute), 1)
		if d.StableConcurrency != 0 || d.PanicConcurrency != 0 {
			t.Fatalf("stale history still counted: %+v", d)
		}
	})
}

func TestRecordInput(t *testing.T) {
	s := New(Config{Concurrency: 1, TargetUtilization: 1})
	s.Record(base, 4)
	s.Record(base, math.NaN())
	s.Record(base, math.Inf(1))
	s.Record(base, math.Inf(-1))
	if d := s.Decide(base, 4); d.StableConcurrency != 4 {
		t.Fatalf("NaN/Inf were not ignored: %+v", d)
	}
	s.Record(base.Add(time.Second), -3)
	if d := s.Decide(base.Add(time.Second), 4); d.StableConcurrency != 2 {
		t.Fatalf("negative not counted as 0: %+v", d)
	}
	// Out of order, within the window: counted.
	s.Record(base.Add(30*time.Second), 0)
	s.Record(base.Add(10*time.Second), 6)
	if d := s.Decide(base.Add(30*time.Second), 4); d.StableConcurrency != (4+0+6+0)/4.0 {
		t.Fatalf("out-of-order sample: %+v", d)
	}
	// Older than the window relative to the newest: dropped.
	s.Record(base.Add(5*time.Minute), 7)
	s.Record(base.Add(time.Minute), 100) // same ring slot as +5m
	if d := s.Decide(base.Add(5*time.Minute), 4); d.StableConcurrency != 7 {
		t.Fatalf("too-old sample counted: %+v", d)
	}
	// A negative ready count is treated as 0.
	s.Record(base.Add(6*time.Minute), 3)
	if d := s.Decide(base.Add(6*time.Minute), -2); d.Desired != 3 {
		t.Fatalf("negative ready: %+v", d)
	}
}

func TestBucketMemoryBounded(t *testing.T) {
	s := New(Config{Concurrency: 8})
	now := base
	for i := range 6 * 60 * 60 * 10 { // six hours at 100ms
		load := float64(i % 37)
		if (i/36000)%2 == 1 {
			load = 0
		}
		s.Record(now, load)
		if i%20 == 0 {
			s.Decide(now, 3)
			if n := len(s.win.buckets); n != 60 {
				t.Fatalf("after %v: %d buckets, want 60", now.Sub(base), n)
			}
		}
		now = now.Add(100 * time.Millisecond)
	}
	if n := len(s.win.buckets); n != 60 {
		t.Fatalf("%d buckets, want 60", n)
	}
	filled := 0
	for _, b := range s.win.buckets {
		if b.n > 0 {
			filled++
			if b.n > 10 {
				t.Fatalf("bucket of second %d holds %d samples, want <= 10", b.sec, b.n)
			}
		}
	}
	if filled != 60 {
		t.Fatalf("%d filled buckets, want 60", filled)
	}
	// A long window costs one bucket per second of it, no more.
	s.SetConfig(Config{Concurrency: 8, StableWindow: 10 * time.Minute})
	feed(s, now, 3*time.Hour, 250*time.Millisecond, 5)
	if n := len(s.win.buckets); n != 600 {
		t.Fatalf("%d buckets for a 10m window, want 600", n)
	}
}

// TestRandomSequences checks the bounds every decision must respect, over
// random policies, loads, clocks and ready counts.
func TestRandomSequences(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 42))
	randomConfig := func() Config {
		c := Config{
			Min:               rng.IntN(7) - 1,
			Max:               rng.IntN(25) - 1,
			Concurrency:       rng.IntN(20),
			TargetUtilization: rng.Float64() * 1.2,
			StableWindow:      time.Duration(rng.IntN(120)) * time.Second,
			PanicWindow:       time.Duration(rng.IntN(15000)) * time.Millisecond,
			PanicThreshold:    rng.Float64() * 4,
			ScaleToZeroGrace:  time.Duration(rng.IntN(400)) * time.Second,
			MaxScaleDownRate:  rng.Float64() * 5,
			MaxScaleUpRate:    rng.Float64() * 20,
		}
		if rng.IntN(5) == 0 {
			c.MaxScaleUpRate = math.Inf(1)
		}
		return c
	}
	randomLoad := func() float64 {
		switch rng.IntN(10) {
		case 0, 1, 2, 3:
			return 0
		case 4:
			return rng.Float64() * 1000
		case 5:
			return []float64{-1, math.NaN(), math.Inf(1), 0.001}[rng.IntN(4)]
		default:
			return rng.Float64() * 30
		}
	}

	for run := range 300 {
		cfg := randomConfig()
		s := New(cfg)
		now := base.Add(time.Duration(rng.Int64N(int64(time.Hour))))
		var lastActive, lastPositive time.Time
		started := false
		ready := rng.IntN(30)
		for step := range 1500 {
			switch rng.IntN(20) {
			case 0:
				now = now.Add(time.Duration(rng.Int64N(int64(2 * time.Hour))))
			case 1:
				cfg = randomConfig()
				s.SetConfig(cfg)
			case 2:
				ready = rng.IntN(60)
			default:
				now = now.Add(time.Duration(rng.Int64N(int64(3 * time.Second))))
			}
			if !started {
				started, lastActive = true, now
			}
			if rng.IntN(3) > 0 {
				load := randomLoad()
				s.Record(now, load)
				if load > 0 && !math.IsInf(load, 0) {
					lastActive, lastPositive = now, now
				}
				continue
			}
			d := s.Decide(now, ready)
			c := cfg.normalized()
			hi := c.maxInstances()
			fail := func(why string) {
				t.Fatalf("run %d step %d: %s\ncfg %+v\nready %d decision %+v", run, step, why, c, ready, d)
			}
			if d.Desired < c.Min || d.Desired > hi {
				fail("desired outside [min, max]")
			}
			if c.Max > 0 && d.Desired > c.Max {
				fail("desired above max")
			}
			if d.Desired == 0 && ready > 0 && now.Sub(lastActive) < c.ScaleToZeroGrace {
				fail("scaled to zero within the grace period")
			}
			if ready == 0 && !lastPositive.IsZero() && now.Unix()-lastPositive.Unix() <= 1 && d.Desired < 1 {
				fail("no instance for a request at zero instances")
			}
			if d.Panic && d.Desired < min(ready, hi) {
				fail("scaled down while panicking")
			}
			if !(d.StableConcurrency >= 0) || !(d.PanicConcurrency >= 0) || math.IsInf(d.StableConcurrency+d.PanicConcurrency, 0) {
				fail("bad averages")
			}
			if rng.IntN(2) == 0 {
				ready = d.Desired // the caller followed the decision
			}
		}
	}
}

// TestConcurrentUse is for the race detector: the request path records
// while a ticker decides and an operator changes the policy.
func TestConcurrentUse(t *testing.T) {
	s := New(Config{Concurrency: 8})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				s.Record(base.Add(time.Duration(i)*10*time.Millisecond), float64(g+i%5))
			}
		})
	}
	wg.Go(func() {
		for i := range 500 {
			s.Decide(base.Add(time.Duration(i)*40*time.Millisecond), i%7)
		}
	})
	wg.Go(func() {
		for i := range 50 {
			s.SetConfig(Config{Concurrency: 8, StableWindow: time.Duration(30+i) * time.Second})
		}
	})
	wg.Wait()
	if d := s.Decide(base.Add(20*time.Second), 2); d.Desired < 1 {
		t.Fatalf("after concurrent use: %+v", d)
	}
}

// TestNoScaleDownDuringRampWithReactiveStarts: the activator starts
// instances for queued requests on its own, so a ramp-up can arrive with
// enough instances ready that the panic threshold is never crossed. The
// stable window, still full of quiet seconds, must not take them away
// while the panic window shows they are needed.
func TestNoScaleDownDuringRampWithReactiveStarts(t *testing.T) {
	cfg := Config{Concurrency: 8, StableWindow: 10 * time.Second, PanicWindow: time.Second}
	m := newSim(cfg, 1)
	m.follow = false
	m.run(3*time.Second, 1, nil) // one client
	// 64 clients; the activator has already started 9 instances for them
	// (64/8/0.7 = 11.4 wanted, 11.4/9 < the panic threshold of 2).
	m.ready = 9
	m.run(5*time.Second, 64, func(now time.Time, ready int, d Decision) {
		if d.Desired < ready {
			t.Fatalf("%v into the ramp: desired %d < %d ready (stable %.1f, panic %.1f)", now.Sub(base), d.Desired, ready, d.StableConcurrency, d.PanicConcurrency)
		}
	})
	// Once the load has gone for a panic window, the stable window may
	// scale down again.
	m.run(20*time.Second, 0, nil)
	if d := m.s.Decide(m.now, m.ready); d.Desired >= m.ready {
		t.Fatalf("after the load went: desired %d, ready %d", d.Desired, m.ready)
	}
}

// The second in which a step up begins mixes samples from before it with
// those after, so its mean lags; the instances the activator has already
// started for the step are kept while the panic window's highest load
// needs them at full concurrency, and only that long.
func TestNoScaleDownBelowThePanicWindowsPeak(t *testing.T) {
	tests := []struct {
		name    string
		samples []float64 // one every 166 ms after the step
		ready   int
		want    int // at least
	}{
		{"step to 64 at concurrency 8, 8 started", []float64{64, 40}, 8, 8},
		{"a dip right after the step", []float64{64, 20, 12}, 8, 8},
		{"peak needs fewer than are ready", []float64{24}, 8, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Concurrency: 8, StableWindow: 10 * time.Second}
			s := New(cfg)
			now := feed(s, base, 5*time.Second+600*time.Millisecond, 166*time.Millisecond, 1)
			for _, v := range tt.samples {
				s.Record(now, v)
				now = now.Add(166 * time.Millisecond)
			}
			d := s.Decide(now, tt.ready)
			if d.Desired < tt.want {
				t.Fatalf("desired %d, want at least %d (panic %.1f, stable %.1f)", d.Desired, tt.want, d.PanicConcurrency, d.StableConcurrency)
			}
			// Once the load has gone for longer than the windows, the
			// floor goes with it.
			now = feed(s, now, 30*time.Second, 500*time.Millisecond, 0)
			if d := s.Decide(now, tt.ready); d.Desired >= tt.ready {
				t.Fatalf("after the load went: desired %d, ready %d", d.Desired, tt.ready)
			}
		})
	}
}

// The clock set back by more than the stable window (an NTP step, a
// clock that was fast) leaves the scaler working: a steady load keeps its
// instances, and once the load ends the version still goes to zero after
// the grace, counted from the time as it now is.
func TestClockSetBack(t *testing.T) {
	for _, back := range []time.Duration{2 * time.Minute, time.Hour} {
		t.Run(back.String(), func(t *testing.T) {
			m := newSim(Config{Concurrency: 1, TargetUtilization: 1, ScaleToZeroGrace: 2 * time.Minute}, 0)
			m.run(2*time.Minute, 10, nil)
			if m.ready != 10 {
				t.Fatalf("before: %d ready, want 10", m.ready)
			}
			m.now = m.now.Add(-back)
			m.lastDecide = m.now.Add(-time.Hour)
			setBack := m.now
			m.run(2*time.Minute, 10, func(now time.Time, ready int, d Decision) {
				if d.Desired < 10 {
					t.Fatalf("%v after the clock went back: desired %d for a load of 10 (%+v)", now.Sub(setBack), d.Desired, d)
				}
			})
			idle := m.now
			var zeroAt time.Time
			m.run(10*time.Minute, 0, func(now time.Time, ready int, d Decision) {
				if d.Desired == 0 && zeroAt.IsZero() {
					zeroAt = now
				}
			})
			if zeroAt.IsZero() || zeroAt.Sub(idle) > 3*time.Minute {
				t.Fatalf("went to zero at %v after the load ended, want about the 2m grace", zeroAt.Sub(idle))
			}
		})
	}
}
