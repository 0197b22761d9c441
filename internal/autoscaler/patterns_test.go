package autoscaler

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// trace is what a simulated run decided, one entry per decision.
type trace struct {
	at      []time.Duration // since the run began
	desired []int
}

// reversals counts the changes of direction of the desired count within
// [from, to): an up after a down or a down after an up. A scaler that
// flaps (up and down every window) has about one per change.
func (tr trace) reversals(from, to time.Duration) int {
	n, dir := 0, 0
	for i := 1; i < len(tr.desired); i++ {
		if tr.at[i] < from || tr.at[i] >= to {
			continue
		}
		d := tr.desired[i] - tr.desired[i-1]
		if d == 0 {
			continue
		}
		s := 1
		if d < 0 {
			s = -1
		}
		if dir != 0 && s != dir {
			n++
		}
		dir = s
	}
	return n
}

// first returns the first time at or after from at which ok holds, or -1.
func (tr trace) first(from time.Duration, ok func(int) bool) time.Duration {
	for i, at := range tr.at {
		if at >= from && ok(tr.desired[i]) {
			return at
		}
	}
	return -1
}

// maxIn is the highest desired count within [from, to).
func (tr trace) maxIn(from, to time.Duration) int {
	m := 0
	for i, at := range tr.at {
		if at >= from && at < to {
			m = max(m, tr.desired[i])
		}
	}
	return m
}

// minIn is the lowest desired count within [from, to).
func (tr trace) minIn(from, to time.Duration) int {
	m := math.MaxInt
	for i, at := range tr.at {
		if at >= from && at < to {
			m = min(m, tr.desired[i])
		}
	}
	return m
}

// simulate drives a Scaler for dur with the load as a function of the
// time since the start, recorded every 500ms and decided every second,
// as the activator does; instances become ready startDelay after they
// were asked for (the decisions' history of the last startDelay is what
// is ready), and stop at once. It returns every decision.
func simulate(cfg Config, dur, startDelay time.Duration, load func(t time.Duration) float64) trace {
	s := New(cfg)
	var tr trace
	ready := 0
	// asked holds, per decision, its desired count, to apply the start
	// delay: ready is the count asked for startDelay ago, or less if the
	// scaler has asked for fewer since (stops are instant).
	for t := time.Duration(0); t < dur; t += 500 * time.Millisecond {
		now := base.Add(t)
		s.Record(now, load(t))
		if t%time.Second != 0 {
			continue
		}
		d := s.Decide(now, ready)
		tr.at = append(tr.at, t)
		tr.desired = append(tr.desired, d.Desired)
		// What is ready next: a scale-down at once; a scale-up once the
		// decision startDelay ago asked for it.
		target := d.Desired
		if target > ready {
			back := len(tr.desired) - 1 - int(startDelay/time.Second)
			if back < 0 {
				target = ready
			} else {
				target = max(ready, min(target, tr.desired[back]))
			}
		}
		ready = target
	}
	return tr
}

// TestTrafficPatterns runs realistic loads through the scaler and checks
// what an operator expects of each: no flapping, capacity fast on a
// burst, never above max, at least min, and zero only after the grace.
func TestTrafficPatterns(t *testing.T) {
	const conc = 10 // target 7 per instance at the default utilization
	square := func(t time.Duration) float64 {
		// bursts of 70 for 10 s every 30 s, 7 in between
		if (t/time.Second)%30 < 10 {
			return 70
		}
		return 7
	}
	tests := []struct {
		name  string
		cfg   Config
		dur   time.Duration
		delay time.Duration
		load  func(t time.Duration) float64
		check func(t *testing.T, tr trace)
	}{
		{
			"square wave every 30s holds the burst's capacity",
			Config{Concurrency: conc}, 10 * time.Minute, time.Second, square,
			func(t *testing.T, tr trace) {
				if at := tr.first(0, func(n int) bool { return n >= 10 }); at < 0 || at > 2*time.Second {
					t.Errorf("first burst reached 10 instances at %v, want within 2s", at)
				}
				if r := tr.reversals(2*time.Minute, 10*time.Minute); r > 0 {
					t.Errorf("%d reversals in 8 minutes of a steady square wave", r)
				}
				if lo := tr.minIn(2*time.Minute, 10*time.Minute); lo < 10 {
					t.Errorf("dropped to %d instances between bursts 30s apart", lo)
				}
			},
		},
		{
			"slow ramp only goes up",
			Config{Concurrency: conc}, 5 * time.Minute, 2 * time.Second,
			func(t time.Duration) float64 { return t.Seconds() / 3 }, // 0 to 100 in 5 min
			func(t *testing.T, tr trace) {
				for i := 1; i < len(tr.desired); i++ {
					if tr.desired[i] < tr.desired[i-1] {
						t.Fatalf("at %v went down from %d to %d during a ramp", tr.at[i], tr.desired[i-1], tr.desired[i])
					}
				}
				// The stable window lags a ramp by half its length (the
				// last minute averages 90, 13 instances at 7 each), and the
				// ramp never doubles within a panic window: the instances
				// run above the target, but serve the load without a queue
				// (100 at 10 each).
				if end := tr.desired[len(tr.desired)-1]; end < 10 || end > 15 {
					t.Errorf("at the ramp's end: %d instances, want 10 to 15", end)
				}
			},
		},
		{
			"a 1s spike goes away slowly, and to zero only after the grace",
			Config{Concurrency: conc, ScaleToZeroGrace: 2 * time.Minute}, 6 * time.Minute, time.Second,
			func(t time.Duration) float64 {
				if t >= 30*time.Second && t < 31*time.Second {
					return 100
				}
				if t < 30*time.Second {
					return 1
				}
				return 0
			},
			func(t *testing.T, tr trace) {
				if hi := tr.maxIn(30*time.Second, 33*time.Second); hi < 15 {
					t.Errorf("the spike got %d instances, want 15", hi)
				}
				if r := tr.reversals(31*time.Second, 6*time.Minute); r > 0 {
					t.Errorf("%d reversals after a single spike", r)
				}
				zero := tr.first(31*time.Second, func(n int) bool { return n == 0 })
				if zero < 0 || zero < 31*time.Second+2*time.Minute {
					t.Errorf("zero at %v, want after the 2m grace from the spike's end (31s)", zero)
				}
			},
		},
		{
			"just under one instance's target: one instance, no flapping",
			Config{Concurrency: conc}, 5 * time.Minute, time.Second,
			func(t time.Duration) float64 { return 6.5 + 0.5*math.Sin(t.Seconds()) }, // 6 to 7
			func(t *testing.T, tr trace) {
				if hi := tr.maxIn(10*time.Second, 5*time.Minute); hi > 2 {
					t.Errorf("up to %d instances for a load under 7", hi)
				}
				if r := tr.reversals(10*time.Second, 5*time.Minute); r > 1 {
					t.Errorf("%d reversals: flapping around one instance's target", r)
				}
			},
		},
		{
			"just over one instance's target: two instances, no flapping",
			Config{Concurrency: conc}, 5 * time.Minute, time.Second,
			func(t time.Duration) float64 { return 7.5 + 0.5*math.Sin(t.Seconds()) }, // 7 to 8
			func(t *testing.T, tr trace) {
				if lo, hi := tr.minIn(time.Minute, 5*time.Minute), tr.maxIn(time.Minute, 5*time.Minute); lo != 2 || hi != 2 {
					t.Errorf("between %d and %d instances for a load of 7 to 8, want 2", lo, hi)
				}
				if r := tr.reversals(10*time.Second, 5*time.Minute); r > 1 {
					t.Errorf("%d reversals: flapping around one instance's target", r)
				}
			},
		},
		{
			"load alternating across the target every few seconds",
			Config{Concurrency: conc}, 5 * time.Minute, time.Second,
			func(t time.Duration) float64 {
				if (t/(3*time.Second))%2 == 0 {
					return 6
				}
				return 8
			},
			func(t *testing.T, tr trace) {
				if r := tr.reversals(time.Minute, 5*time.Minute); r > 1 {
					t.Errorf("%d reversals for a load alternating 6/8", r)
				}
			},
		},
		{
			"a long idle then a burst reaches capacity at once",
			Config{Concurrency: conc, Max: 12}, 2*time.Hour + time.Minute, 2 * time.Second,
			func(t time.Duration) float64 {
				if t < time.Minute {
					return 3
				}
				if t < 2*time.Hour {
					return 0
				}
				return 200
			},
			func(t *testing.T, tr trace) {
				if z := tr.first(time.Minute, func(n int) bool { return n == 0 }); z < 0 || z < 6*time.Minute {
					t.Errorf("went to zero at %v, want after the 5m grace", z)
				}
				if at := tr.first(2*time.Hour, func(n int) bool { return n == 12 }); at != 2*time.Hour {
					t.Errorf("burst after idle reached max 12 at +%v, want at once", at-2*time.Hour)
				}
				if hi := tr.maxIn(0, 3*time.Hour); hi > 12 {
					t.Errorf("%d instances, above max 12", hi)
				}
			},
		},
		{
			"min kept through idle and bursts",
			Config{Concurrency: conc, Min: 3, Max: 8}, 10 * time.Minute, time.Second,
			func(t time.Duration) float64 {
				if (t/time.Minute)%3 == 0 {
					return 500
				}
				return 0
			},
			func(t *testing.T, tr trace) {
				if lo, hi := tr.minIn(0, 10*time.Minute), tr.maxIn(0, 10*time.Minute); lo < 3 || hi > 8 {
					t.Errorf("between %d and %d instances, want within [3, 8]", lo, hi)
				}
			},
		},
		{
			"a trickle of single requests keeps one instance until the grace",
			Config{Concurrency: conc, ScaleToZeroGrace: time.Minute}, 10 * time.Minute, time.Second,
			func(t time.Duration) float64 {
				if t < 5*time.Minute && (t/time.Second)%20 == 0 {
					return 1
				}
				return 0
			},
			func(t *testing.T, tr trace) {
				if lo, hi := tr.minIn(0, 5*time.Minute+40*time.Second), tr.maxIn(0, 10*time.Minute); lo != 1 || hi != 1 {
					t.Errorf("between %d and %d instances for a trickle, want 1", lo, hi)
				}
				if z := tr.first(0, func(n int) bool { return n == 0 }); z < 5*time.Minute+40*time.Second {
					t.Errorf("zero at %v, want after the 1m grace from the last request (4m40s)", z)
				}
			},
		},
	}
	// Load swinging about one instance's capacity (the hard limit), and
	// about multiples of the target: the count settles.
	for _, mid := range []float64{9.5, 10.5, 14, 21, 69, 71} {
		tests = append(tests, struct {
			name  string
			cfg   Config
			dur   time.Duration
			delay time.Duration
			load  func(t time.Duration) float64
			check func(t *testing.T, tr trace)
		}{
			fmt.Sprintf("load %g +- 1 settles", mid),
			Config{Concurrency: conc}, 10 * time.Minute, time.Second,
			func(t time.Duration) float64 {
				if (t/time.Second)%7 < 3 {
					return mid + 1
				}
				return mid - 1
			},
			func(t *testing.T, tr trace) {
				if r := tr.reversals(time.Minute, 10*time.Minute); r > 0 {
					t.Errorf("%d reversals for a load of %g +- 1", r, mid)
				}
				if lo := tr.minIn(time.Minute, 10*time.Minute); float64(lo*conc) < mid+1 {
					t.Errorf("%d instances cannot serve %g at once", lo, mid+1)
				}
			},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := simulate(tt.cfg, tt.dur, tt.delay, tt.load)
			tt.check(t, tr)
			if t.Failed() {
				t.Logf("decisions: %s", summarize(tr))
			}
		})
	}
}

// summarize prints a trace as its changes.
func summarize(tr trace) string {
	out := ""
	for i := range tr.desired {
		if i == 0 || tr.desired[i] != tr.desired[i-1] {
			out += fmt.Sprintf(" %v:%d", tr.at[i], tr.desired[i])
		}
	}
	return out
}

// TestEdgeSettings runs a burst then idle through the extreme policies an
// operator may set.
func TestEdgeSettings(t *testing.T) {
	burst := func(t time.Duration) float64 {
		switch {
		case t < time.Minute:
			return 5
		case t < 2*time.Minute:
			return 100
		}
		return 0
	}
	tests := []struct {
		name   string
		cfg    Config
		lo, hi int // bounds of every decision
		steady int // decisions at the steady load of 5, after its first 10s
		peak   int // the most asked for
		zeroBy time.Duration
	}{
		{"concurrency 1, utilization 1: one instance per request", Config{Concurrency: 1, TargetUtilization: 1}, 0, 100, 5, 100, 8 * time.Minute},
		{"concurrency 1, default utilization", Config{Concurrency: 1}, 0, 143, 8, 143, 8 * time.Minute},
		{"max 1", Config{Concurrency: 10, Max: 1}, 0, 1, 1, 1, 8 * time.Minute},
		{"min = max", Config{Concurrency: 10, Min: 3, Max: 3}, 3, 3, 3, 3, -1},
		{"utilization 0.1 (the API's least)", Config{Concurrency: 10, TargetUtilization: 0.1}, 0, 100, 5, 100, 8 * time.Minute},
		{"utilization far below the API's least", Config{Concurrency: 10, TargetUtilization: 1e-300}, 0, unboundedMax, unboundedMax, unboundedMax, 8 * time.Minute},
		{"grace 0 takes the default 5m", Config{Concurrency: 10, ScaleToZeroGrace: 0}, 0, 15, 1, 15, 8 * time.Minute},
		{"shortest grace", Config{Concurrency: 10, ScaleToZeroGrace: time.Second}, 0, 15, 1, 15, 3*time.Minute + 10*time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := simulate(tt.cfg, 10*time.Minute, time.Second, burst)
			for i, n := range tr.desired {
				at := tr.at[i]
				if n < tt.lo || n > tt.hi {
					t.Fatalf("at %v: %d instances, want within [%d, %d]", at, n, tt.lo, tt.hi)
				}
				if at >= 10*time.Second && at < time.Minute && n != tt.steady {
					t.Fatalf("at %v: %d instances for a steady 5, want %d", at, n, tt.steady)
				}
				// The load was last seen at 2m: zero not before the grace.
				if n == 0 && at > 0 && at < 2*time.Minute+tt.cfg.normalized().ScaleToZeroGrace {
					t.Fatalf("zero at %v, within the grace", at)
				}
			}
			if p := tr.maxIn(0, 10*time.Minute); p != tt.peak {
				t.Errorf("peak %d, want %d", p, tt.peak)
			}
			z := tr.first(2*time.Minute, func(n int) bool { return n == 0 })
			if tt.zeroBy < 0 && z >= 0 || tt.zeroBy >= 0 && (z < 0 || z > tt.zeroBy) {
				t.Errorf("zero at %v, want by %v", z, tt.zeroBy)
			}
			if t.Failed() {
				t.Logf("decisions: %s", summarize(tr))
			}
		})
	}
}
