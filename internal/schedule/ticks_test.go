package schedule

import (
	"context"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/store"
)

// countFires ticks a scheduler with one job every step from from to to
// and returns the times it fired for.
func countFires(t *testing.T, cron string, from, to time.Time, step time.Duration) []string {
	t.Helper()
	rec := &recorder{}
	s := New(Config{Jobs: func() []Job { return []Job{{Key: "a", Cron: cron}} }, Fire: func(ctx context.Context, j Job, at time.Time) error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.fired = append(rec.fired, at.UTC().Format(time.RFC3339))
		return nil
	}})
	defer s.Close()
	for now := from; !now.After(to); now = now.Add(step) {
		s.Tick(now)
	}
	return rec.take(s)
}

// Jobs in a zone with daylight saving time run as cron(8) runs them. On
// the day clocks go back (Europe/Berlin, 2026-10-25, 03:00 CEST -> 02:00
// CET) 02:30 local comes twice, and a daily job at 02:30 runs once (it
// ran twice). On the day clocks go forward (2026-03-29, 02:00 CET ->
// 03:00 CEST) 02:30 never comes: a job set for that hour runs at the
// jump, 03:00 CEST (it did not run that day), and one that runs every
// hour has one run fewer, as that day has an hour fewer.
func TestJobsAcrossDST(t *testing.T) {
	for _, tt := range []struct {
		name     string
		cron     string
		from, to time.Time
		want     []string
	}{
		{"daily, fall back", "CRON_TZ=Europe/Berlin 30 2 * * *",
			time.Date(2026, 10, 24, 12, 0, 0, 0, time.UTC), time.Date(2026, 10, 26, 12, 0, 0, 0, time.UTC),
			[]string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"daily, spring forward", "CRON_TZ=Europe/Berlin 30 2 * * *",
			time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 30, 12, 0, 0, 0, time.UTC),
			[]string{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}},
		{"twice in the skipped hour", "CRON_TZ=Europe/Berlin 15,45 2 * * *",
			time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 29, 12, 0, 0, 0, time.UTC),
			[]string{"2026-03-29T01:00:00Z"}},
		{"daily, outside the skipped hour", "CRON_TZ=Europe/Berlin 30 4 * * *",
			time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 30, 12, 0, 0, 0, time.UTC),
			[]string{"2026-03-29T02:30:00Z", "2026-03-30T02:30:00Z"}},
		{"hourly, spring forward", "CRON_TZ=Europe/Berlin 30 * * * *",
			time.Date(2026, 3, 28, 23, 0, 0, 0, time.UTC), time.Date(2026, 3, 29, 3, 0, 0, 0, time.UTC),
			[]string{"2026-03-28T23:30:00Z", "2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z"}},
		{"first seen just before the jump", "CRON_TZ=Europe/Berlin 30 2 * * *",
			time.Date(2026, 3, 29, 0, 59, 0, 0, time.UTC), time.Date(2026, 3, 29, 2, 0, 0, 0, time.UTC),
			[]string{"2026-03-29T01:00:00Z"}},
		{"UTC has no jumps", "30 2 * * *",
			time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 3, 30, 12, 0, 0, 0, time.UTC),
			[]string{"2026-03-29T02:30:00Z", "2026-03-30T02:30:00Z"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := countFires(t, tt.cron, tt.from, tt.to, 30*time.Second)
			if !slices.Equal(got, tt.want) {
				t.Errorf("fired for %v, want %v", got, tt.want)
			}
		})
	}
}

// "@every" with a duration under a second is refused: the parser rounds
// it (zero and negative ones too) up to a second, so "@every -1h" (a
// typo for 1h) or "@every 0s" would run the function every second.
func TestEveryUnderASecondIsRefused(t *testing.T) {
	for _, expr := range []string{"@every -1h", "@every 0s", "@every -5m"} {
		if _, err := Parse(expr); err == nil {
			got := countFires(t, expr, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC), time.Second)
			t.Errorf("Parse(%q) accepted it; it fires %d times in 10s", expr, len(got))
		}
	}
}

// A stored schedule that no longer parses (a zone this host's tzdata
// lacks, say) is warned about once, not at every tick.
func TestUnparsableScheduleWarnsOnce(t *testing.T) {
	var h countHandler
	s := New(Config{Jobs: func() []Job { return []Job{{Key: "a", Cron: "CRON_TZ=Nowhere/Else 0 9 * * *"}} },
		Fire: func(context.Context, Job, time.Time) error { return nil }, Logger: slog.New(&h)})
	defer s.Close()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 60 {
		s.Tick(t0.Add(time.Duration(i) * time.Second))
	}
	if n := h.n.Load(); n > 1 {
		t.Errorf("%d warnings in a minute for one unparsable schedule", n)
	}
}

type countHandler struct{ n atomic.Int64 }

func (h *countHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (h *countHandler) Handle(context.Context, slog.Record) error { h.n.Add(1); return nil }
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler        { return h }
func (h *countHandler) WithGroup(string) slog.Handler             { return h }

// Concurrent Tick and Close: nothing fires after Close returns, and the
// race detector is quiet.
func TestTickAndCloseRace(t *testing.T) {
	for range 50 {
		var fired atomic.Int64
		var closed atomic.Bool
		s := New(Config{Jobs: func() []Job { return []Job{{Key: "a", Cron: "* * * * * *"}} },
			Fire: func(ctx context.Context, j Job, at time.Time) error {
				if closed.Load() {
					t.Error("fired after Close returned")
				}
				fired.Add(1)
				return nil
			}})
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		s.Tick(t0)
		done := make(chan struct{})
		go func() {
			for i := 1; i < 200; i++ {
				s.Tick(t0.Add(time.Duration(i) * time.Second))
			}
			close(done)
		}()
		s.Close()
		closed.Store(true)
		<-done
	}
}

// A clock that steps back (NTP, a host's clock set right) makes no
// burst and no time run twice: a step of minutes waits for the times
// not yet run; a step of more than three hours (a clock that was far
// ahead) starts the schedule over from the clock's new time, as
// cron(8) does, rather than waiting for the wrong time to come again
// (a year without runs).
func TestClockStepsBack(t *testing.T) {
	day := func(h, m, s int) time.Time { return time.Date(2026, 11, 24, h, m, s, 0, time.UTC) }
	yearAhead := func(h, m, s int) time.Time { return day(h, m, s).AddDate(1, 0, 0) }
	span := func(from, to time.Time) []time.Time {
		var out []time.Time
		for now := from; !now.After(to); now = now.Add(30 * time.Second) {
			out = append(out, now)
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		ticks []time.Time
		want  []string
	}{
		{"back a minute", append(span(day(10, 0, 30), day(10, 2, 0)), span(day(10, 1, 0), day(10, 4, 0))...),
			[]string{"2026-11-24T10:01:00Z", "2026-11-24T10:02:00Z", "2026-11-24T10:03:00Z", "2026-11-24T10:04:00Z"}},
		{"back an hour", append(span(day(10, 0, 30), day(10, 1, 0)), span(day(9, 0, 0), day(10, 3, 0))...),
			[]string{"2026-11-24T10:01:00Z", "2026-11-24T10:02:00Z", "2026-11-24T10:03:00Z"}},
		{"back a year", append(span(yearAhead(10, 0, 30), yearAhead(10, 1, 0)), span(day(10, 0, 30), day(10, 3, 0))...),
			[]string{"2026-11-24T10:01:00Z", "2026-11-24T10:02:00Z", "2026-11-24T10:03:00Z", "2027-11-24T10:01:00Z"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			s := New(Config{Jobs: func() []Job { return []Job{{Key: "a", Cron: "* * * * *"}} }, Fire: func(ctx context.Context, j Job, at time.Time) error {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				rec.fired = append(rec.fired, at.UTC().Format(time.RFC3339))
				return nil
			}})
			defer s.Close()
			for _, now := range tt.ticks {
				s.Tick(now)
			}
			if got := rec.take(s); !slices.Equal(got, tt.want) {
				t.Errorf("fired for %v, want %v", got, tt.want)
			}
		})
	}
}

// A run that outlasts its period overlaps the next, as the docs say
// (Cloudflare's cron triggers, a CronJob's Allow): the next time fires
// while the first still runs, and Status shows both running.
func TestRunsOverlap(t *testing.T) {
	release := make(chan struct{})
	var running atomic.Int64
	s := New(Config{Jobs: func() []Job { return []Job{{Key: "a", Cron: "* * * * * *"}} },
		Fire: func(context.Context, Job, time.Time) error {
			running.Add(1)
			<-release
			return nil
		}})
	defer s.Close()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		s.Tick(t0.Add(time.Duration(i) * time.Second))
	}
	for running.Load() < 2 {
		runtime.Gosched() // the two goroutines Tick started
	}
	st := s.Status("a", "* * * * * *", t0)
	if len(st.Runs) != 2 || !st.Runs[0].Finished.IsZero() || !st.Runs[1].Finished.IsZero() {
		t.Errorf("two runs under way, Status: %+v", st)
	}
	close(release)
}

// memMarks keeps marks in memory, as the store keeps them in its file.
type memMarks struct {
	mu sync.Mutex
	m  map[string]store.ScheduleMark
}

func (k *memMarks) ScheduleMarks(context.Context) (map[string]store.ScheduleMark, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.m), nil
}

func (k *memMarks) MarkSchedules(_ context.Context, m map[string]store.ScheduleMark) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	maps.Copy(k.m, m)
	return nil
}

// A time that came while the server was down runs once when it starts
// again, for the first time missed, as a late tick does; none runs twice,
// a job whose expression changed (a mark of another) or that appears
// after the first tick makes nothing up, nor does a clock that went back.
func TestMissedWhileDownRunsOnce(t *testing.T) {
	at := func(hms string) time.Time {
		tm, err := time.Parse(time.DateTime, "2026-11-25 "+hms)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	// run is one server's life: jobs, and its ticks, in order.
	type life struct {
		jobs  []Job
		ticks []string
		late  []Job // listed from the second tick on
	}
	for _, tt := range []struct {
		name  string
		lives []life
		want  [][]string // fired, per life
	}{
		{"down across two times", []life{
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:01:00", "10:05:00"}},
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:17:30", "10:18:00", "10:20:00"}},
		}, [][]string{{"a 10:05:00"}, {"a 10:10:00", "a 10:20:00"}}},
		{"down across none", []life{
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:01:00", "10:05:00"}},
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:07:00", "10:10:00"}},
		}, [][]string{{"a 10:05:00"}, {"a 10:10:00"}}},
		{"seen, not yet run, then down", []life{
			{jobs: []Job{{Key: "a", Cron: "0 * * * *"}}, ticks: []string{"10:01:00"}},
			{jobs: []Job{{Key: "a", Cron: "0 * * * *"}}, ticks: []string{"13:30:00", "13:31:00"}},
		}, [][]string{nil, {"a 11:00:00"}}},
		{"another expression's mark", []life{
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:01:00"}},
			{jobs: []Job{{Key: "a", Cron: "*/7 * * * *"}}, ticks: []string{"10:30:00", "10:35:00"}},
		}, [][]string{nil, {"a 10:35:00"}}},
		{"listed after the first tick", []life{
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:01:00"}},
			{late: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:30:00", "10:31:00", "10:35:00"}},
		}, [][]string{nil, {"a 10:35:00"}}},
		{"the clock went back while down", []life{
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"10:01:00", "10:05:00"}},
			{jobs: []Job{{Key: "a", Cron: "*/5 * * * *"}}, ticks: []string{"09:00:30", "09:05:00"}},
		}, [][]string{{"a 10:05:00"}, {"a 09:05:00"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			marks := &memMarks{m: map[string]store.ScheduleMark{}}
			for i, l := range tt.lives {
				rec := &recorder{}
				var ticked atomic.Int32
				s := New(Config{Jobs: func() []Job {
					if ticked.Add(1) > 1 {
						return append(slices.Clone(l.jobs), l.late...)
					}
					return l.jobs
				}, Fire: rec.fire, Marks: marks})
				for _, tick := range l.ticks {
					s.Tick(at(tick))
				}
				got := rec.take(s)
				s.Close()
				if !slices.Equal(got, tt.want[i]) {
					t.Errorf("life %d fired %q, want %q", i+1, got, tt.want[i])
				}
			}
		})
	}
}
