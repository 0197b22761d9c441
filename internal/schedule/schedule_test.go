package schedule

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		expr string
		ok   bool
	}{
		{"*/5 * * * *", true},
		{"0 3 * * mon-fri", true},
		{"30 */2 * * * *", true}, // seconds first
		{"@hourly", true},
		{"@every 10m", true},
		{"CRON_TZ=Europe/Paris 0 9 * * *", true},
		{"", false},
		{"  ", false},
		{"* * * *", false},
		{"61 * * * *", false},
		{"* * * * * * *", false},
		{"@sometimes", false},
		{"CRON_TZ=Nowhere/Else 0 9 * * *", false},
		{"TZ=", false}, // the parser panics on it
		{"CRON_TZ=UTC", false},
		{"0 0 31 2 *", false}, // February 31st
	} {
		_, err := Parse(c.expr)
		if (err == nil) != c.ok {
			t.Errorf("%q: %v, want ok %v", c.expr, err, c.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: %v is not invalid input", c.expr, err)
		}
	}
}

// recorder is a Fire that notes what it was asked to run.
type recorder struct {
	mu    sync.Mutex
	fired []string // "key at", at in UTC
}

func (r *recorder) fire(_ context.Context, j Job, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, j.Key+" "+at.UTC().Format("15:04:05"))
}

func (r *recorder) take(s *Scheduler) []string {
	s.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.fired
	r.fired = nil
	slices.Sort(out)
	return out
}

// Jobs fire at their times, once however many passed since the last
// tick; a new job waits for its next time; a changed one starts over; a
// gone one is forgotten; a closed scheduler fires nothing.
func TestTick(t *testing.T) {
	var jobs []Job
	rec := &recorder{}
	s := New(Config{Jobs: func() []Job { return jobs }, Fire: rec.fire})
	t0 := time.Date(2026, 11, 24, 10, 0, 30, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	jobs = []Job{{Key: "a", Cron: "* * * * *"}, {Key: "b", Cron: "*/10 * * * * *"}}
	steps := []struct {
		now  time.Time
		jobs []Job // nil: unchanged
		want []string
	}{
		{at(0), nil, nil},               // first seen: a at 10:01:00, b at 10:00:40
		{at(9 * time.Second), nil, nil}, // 10:00:39
		{at(10 * time.Second), nil, []string{"b 10:00:40"}},
		{at(10*time.Second + 500*time.Millisecond), nil, nil},
		{at(29 * time.Second), nil, []string{"b 10:00:50"}}, // 10:00:59
		{at(30 * time.Second), nil, []string{"a 10:01:00", "b 10:01:00"}},
		// A tick late by minutes: one run each, at the first time missed.
		{at(5 * time.Minute), nil, []string{"a 10:02:00", "b 10:01:10"}},
		{at(5*time.Minute + 10*time.Second), nil, []string{"b 10:05:40"}},
		// b changes: it starts over, from its next time.
		{at(5*time.Minute + 11*time.Second), []Job{{Key: "a", Cron: "* * * * *"}, {Key: "b", Cron: "0 0 * * *"}}, nil},
		{at(5*time.Minute + 30*time.Second), nil, []string{"a 10:06:00"}},
		// b goes; a stays.
		{at(6*time.Minute + 30*time.Second), []Job{{Key: "a", Cron: "* * * * *"}}, []string{"a 10:07:00"}},
	}
	for i, st := range steps {
		if st.jobs != nil {
			jobs = st.jobs
		}
		s.Tick(st.now)
		if got := rec.take(s); !slices.Equal(got, st.want) {
			t.Fatalf("step %d (%s): fired %v, want %v", i, st.now.Format("15:04:05.000"), got, st.want)
		}
	}
	if _, ok := s.next["b"]; ok {
		t.Error("b is still scheduled after it went")
	}
	s.Close()
	s.Tick(at(time.Hour))
	if got := rec.take(s); len(got) != 0 {
		t.Errorf("a closed scheduler fired %v", got)
	}
}

// A job whose stored expression no longer parses is not fired, and the
// others are.
func TestTickSkipsABadExpression(t *testing.T) {
	rec := &recorder{}
	jobs := []Job{{Key: "bad", Cron: "nonsense"}, {Key: "good", Cron: "* * * * * *"}}
	s := New(Config{Jobs: func() []Job { return jobs }, Fire: rec.fire})
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	s.Tick(t0)
	s.Tick(t0.Add(time.Second))
	if got := rec.take(s); !slices.Equal(got, []string{"good 10:00:01"}) {
		t.Errorf("fired %v", got)
	}
	s.Close()
}

// FuzzParse: any expression parses or gets invalid input, never a
// panic, and one that parses has a next time.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"*/5 * * * *", "30 0 * * * *", "@every 10m", "CRON_TZ=Europe/Paris 0 9 * * *", "TZ=", "0 0 31 2 *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := Parse(expr)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%q: %v is not invalid input", expr, err)
			}
			return
		}
		_ = s.Next(time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC))
	})
}
