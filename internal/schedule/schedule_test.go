package schedule

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Parse takes every syntax the docs name, and refuses the rest with
// invalid input that names the field at fault where there is one.
func TestParse(t *testing.T) {
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // a Thursday
	for _, c := range []struct {
		expr string
		next string // the first time after from, UTC; "" if refused
		says string // in the error when refused
	}{
		{"*/5 * * * *", "2026-01-01T00:05:00Z", ""},
		{"0 3 * * mon-fri", "2026-01-01T03:00:00Z", ""},
		{"0 3 * * SAT", "2026-01-03T03:00:00Z", ""},
		{"0 0 1-31/2 jan,mar *", "2026-01-03T00:00:00Z", ""},
		{"15,45 9-17/4 * * *", "2026-01-01T09:15:00Z", ""},
		{"0 0 ? * *", "2026-01-02T00:00:00Z", ""},
		{"0 0 29 2 *", "2028-02-29T00:00:00Z", ""},
		{"0 0 13 * 5", "2026-01-02T00:00:00Z", ""},     // day of month or day of week, as cron(8)
		{"30 */2 * * * *", "2026-01-01T00:00:30Z", ""}, // seconds first
		{"  0	0 * * *  ", "2026-01-02T00:00:00Z", ""},
		{"@yearly", "2027-01-01T00:00:00Z", ""},
		{"@annually", "2027-01-01T00:00:00Z", ""},
		{"@monthly", "2026-02-01T00:00:00Z", ""},
		{"@weekly", "2026-01-04T00:00:00Z", ""},
		{"@daily", "2026-01-02T00:00:00Z", ""},
		{"@midnight", "2026-01-02T00:00:00Z", ""},
		{"@hourly", "2026-01-01T01:00:00Z", ""},
		{"@every 10m", "2026-01-01T00:10:00Z", ""},
		{"CRON_TZ=Europe/Paris 0 9 * * *", "2026-01-01T08:00:00Z", ""},
		{"TZ=Asia/Tokyo 0 9 * * *", "2026-01-02T00:00:00Z", ""},
		{"CRON_TZ=Europe/Berlin @daily", "2026-01-01T23:00:00Z", ""},
		// 7 is Sunday too, as in crontab(5).
		{"0 0 * * 7", "2026-01-04T00:00:00Z", ""},
		{"0 0 * * 6-7", "2026-01-03T00:00:00Z", ""},
		{"0 0 * * 5-7/2", "2026-01-02T00:00:00Z", ""},
		{"0 0 * * 1,7", "2026-01-04T00:00:00Z", ""},
		{"", "", "empty"},
		{"  ", "", "empty"},
		{"* * * *", "", "five fields"},
		{"* * * * * * *", "", "five fields"},
		{"61 * * * *", "", "minute"},
		{"0 25 * * *", "", "hour"},
		{"0 0 0 * *", "", "day-of-month"},
		{"0 0 32 * *", "", "day-of-month"},
		{"0 0 * 13 *", "", "month"},
		{"0 0 * * 8", "", "day-of-week"},
		{"0 0 * * 5-8", "", "day-of-week"},
		{"*/0 * * * *", "", "minute"},
		{"0 */0 * * *", "", "hour"},
		{"5-1 * * * *", "", "minute"},
		{"60 * * * * *", "", "second"},
		{"0 0 L * *", "", "day-of-month"},
		{"0 0 * * 1#2", "", "day-of-week"},
		{"0 0 * foo *", "", "month"},
		{"@sometimes", "", "@sometimes"},
		{"@reboot", "", "@reboot"},
		{"@every", "", "@every"},
		{"@every 500ms", "", "at least 1s"},
		{"CRON_TZ=Nowhere/Else 0 9 * * *", "", "Nowhere/Else"},
		{"TZ=", "", "five fields"}, // the parser panics on it alone
		{"CRON_TZ=UTC", "", "five fields"},
		{"0 0 31 2 *", "", "matches no time"}, // February 31st
		{"0 0 30 2 *", "", "day-of-month \"30\" never comes in month \"2\""},
		{"0 0 31 4,6 *", "", "matches no time"},
	} {
		s, err := Parse(c.expr)
		if c.next == "" {
			if err == nil {
				t.Errorf("%q: accepted, next %v", c.expr, s.Next(from))
			} else if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%q: %v is not invalid input", c.expr, err)
			} else if !strings.Contains(err.Error(), c.says) {
				t.Errorf("%q: %q does not say %q", c.expr, err, c.says)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.expr, err)
			continue
		}
		if got := s.Next(from).UTC().Format(time.RFC3339); got != c.next {
			t.Errorf("%q: next %s, want %s", c.expr, got, c.next)
		}
	}
}

// recorder is a Fire that notes what it was asked to run.
type recorder struct {
	mu    sync.Mutex
	fired []string // "key at", at in UTC
}

func (r *recorder) fire(_ context.Context, j Job, at time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fired = append(r.fired, j.Key+" "+at.UTC().Format("15:04:05"))
	return nil
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
	for _, s := range []string{"*/5 * * * *", "30 0 * * * *", "@every 10m", "CRON_TZ=Europe/Paris 0 9 * * *", "TZ=", "0 0 31 2 *", "0 0 * * 5-7/2", "61 * * * *"} {
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
		from := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
		if next := s.Next(from); !next.After(from) {
			t.Fatalf("%q parses, and its next time after %v is %v", expr, from, next)
		}
	})
}

// Status shows a job's next time and its last runs, newest first: one
// under way without an end, one done with its error, kept when the
// expression changes, at most keepRuns of them; before a tick has seen
// a job, its next time is read from its expression.
func TestStatus(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 10, 0, 30, 0, time.UTC)
	clock := t0
	release := make(chan struct{})
	cron := "* * * * *"
	s := New(Config{
		Jobs: func() []Job { return []Job{{Key: "a", Cron: cron}} },
		Fire: func(_ context.Context, _ Job, at time.Time) error {
			if at.Minute() == 1 {
				<-release // the first run is under way until released
				return errors.New("boom")
			}
			return nil
		},
		Now: func() time.Time { return clock },
	})
	defer s.Close()
	if st := s.Status("a", cron, t0); !st.Next.Equal(t0.Add(30*time.Second)) || len(st.Runs) != 0 {
		t.Fatalf("before a tick: %+v", st)
	}
	s.Tick(t0)
	s.Tick(t0.Add(30 * time.Second)) // fires for 10:01
	st := s.Status("a", cron, t0)
	if len(st.Runs) != 1 || !st.Runs[0].At.Equal(t0.Add(30*time.Second)) || !st.Runs[0].Finished.IsZero() || !st.Next.Equal(t0.Add(90*time.Second)) {
		t.Fatalf("a run under way: %+v", st)
	}
	clock = t0.Add(40 * time.Second)
	close(release)
	s.wg.Wait()
	s.Tick(t0.Add(90 * time.Second)) // 10:02, done at once
	s.wg.Wait()
	st = s.Status("a", cron, t0)
	if len(st.Runs) != 2 || st.Runs[0].Err != nil || st.Runs[1].Err == nil || !st.Runs[1].Finished.Equal(clock) {
		t.Fatalf("two runs: %+v", st)
	}
	cron = "*/10 * * * * *"
	if st := s.Status("a", cron, t0.Add(91*time.Second)); !st.Next.Equal(t0.Add(100*time.Second)) || len(st.Runs) != 2 {
		t.Fatalf("changed, before a tick: %+v", st)
	}
	for i := range 3 * keepRuns {
		s.Tick(t0.Add(91*time.Second + time.Duration(i)*10*time.Second))
	}
	s.wg.Wait()
	st = s.Status("a", cron, t0)
	if len(st.Runs) != keepRuns || !st.Runs[0].At.After(st.Runs[1].At) {
		t.Fatalf("after many runs: %d runs, first %v, second %v", len(st.Runs), st.Runs[0].At, st.Runs[1].At)
	}
	if st := s.Status("gone", "", t0); !st.Next.IsZero() || st.Runs != nil {
		t.Fatalf("no job: %+v", st)
	}
}
