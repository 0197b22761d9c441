// Package schedule runs functions on a schedule: each function's live
// version may carry a cron expression (Limits.Cron), and a Scheduler
// ticking once a second fires every function whose next time has come.
// Its decisions take the time as an argument (Tick), so that tests never
// wait for a clock.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/spry-run/spry/internal/errdefs"
)

// parser reads standard five-field expressions (minute, hour, day of
// month, month, day of week), an optional leading seconds field, and
// descriptors (@hourly, @every 10m); CRON_TZ=Zone first picks a time
// zone (UTC otherwise).
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse checks a cron expression: nil, or an invalid-input error that
// says what is wrong.
func Parse(expr string) (sched cron.Schedule, err error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errdefs.Invalid("cron: empty expression")
	}
	// The parser panics on some input ("TZ=" with nothing after it):
	// user input must get a 400, never a crash.
	defer func() {
		if recover() != nil {
			sched, err = nil, errdefs.Invalid("cron %q: not an expression it can read", expr)
		}
	}()
	if d, ok := strings.CutPrefix(strings.TrimSpace(expr), "@every "); ok {
		// The parser takes any duration, and makes one under a second
		// (a typo's "-1h", "0s") every second.
		if n, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && n < time.Second {
			return nil, errdefs.Invalid("cron %q: @every needs a duration of at least 1s", expr)
		}
	}
	s, err := parser.Parse(expr)
	if err != nil {
		return nil, errdefs.Invalid("cron %q: %v (want five fields, minute hour day-of-month month day-of-week, like \"*/5 * * * *\", an optional seconds field first, or a descriptor like @hourly)", expr, err)
	}
	// The parser looks five years ahead, and gives the zero time for
	// an expression that matches no day in them (February 31st).
	if s.Next(time.Now()).IsZero() {
		return nil, errdefs.Invalid("cron %q: matches no time", expr)
	}
	return s, nil
}

// Job is one function's schedule, as the source lists it.
type Job struct {
	Key  string // the function's id: a job is the same job while its key and cron are
	Cron string
	// Data is handed back to Fire.
	Data any
}

// Config is the scheduler's.
type Config struct {
	// Jobs lists the schedules now, each Tick.
	Jobs func() []Job
	// Fire runs one job's event for time at, in its own goroutine; ctx
	// ends when the scheduler is closed.
	Fire   func(ctx context.Context, j Job, at time.Time)
	Logger *slog.Logger
}

// Scheduler fires jobs at their times.
type Scheduler struct {
	cfg  Config
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	stopped bool              // by Stop: Tick fires nothing more
	next    map[string]*entry // by Job.Key
}

type entry struct {
	cron  string
	sched cron.Schedule // nil: the expression does not parse (said once)
	at    time.Time     // the next time it fires
}

// after is the job's next time after now, past the time it just fired
// for (at; zero on first sight), in its zone as cron(8) keeps time
// across daylight saving's changes:
//   - on the day clocks go back, 02:30 comes twice in
//     CRON_TZ=Europe/Berlin, and a daily job runs once;
//   - on the day they go forward, 02:30 never comes, and a job set for
//     an hour (not "*") whose time fell in the skipped hour runs at the
//     jump; one that runs every hour simply has one hour fewer.
func (e *entry) after(now, at time.Time) time.Time {
	next := e.sched.Next(now.UTC())
	ss, ok := e.sched.(*cron.SpecSchedule)
	if !ok || ss.Location == time.Local || next.IsZero() {
		return next // UTC (time.Local here means the time's own zone), or @every
	}
	if !at.IsZero() && next.In(ss.Location).Format(time.DateTime) == at.In(ss.Location).Format(time.DateTime) {
		next = e.sched.Next(next)
	}
	if ss.Hour&starBit == 0 {
		if jump := skipped(ss, now, next); !jump.IsZero() {
			return jump
		}
	}
	return next
}

// starBit marks a field written "*" in the library's bit sets.
const starBit = 1 << 63

// skipped is the first instant after now and before next at which the
// clocks of ss's zone jump forward over a wall-clock time ss matches,
// or zero.
func skipped(ss *cron.SpecSchedule, now, next time.Time) time.Time {
	_, end := now.In(ss.Location).ZoneBounds()
	for jump := end; !jump.IsZero() && jump.Before(next); _, jump = jump.In(ss.Location).ZoneBounds() {
		_, before := jump.Add(-time.Second).In(ss.Location).Zone()
		_, after := jump.In(ss.Location).Zone()
		if after <= before {
			continue // clocks went back, or only the zone's name changed
		}
		// The wall times skipped, read in the zone as it was before the
		// jump, are the instants [jump, jump+gap): does ss match one?
		was := *ss
		was.Location = time.FixedZone("", before)
		if m := was.Next(jump.Add(-time.Second)); !m.IsZero() && m.Before(jump.Add(time.Duration(after-before)*time.Second)) {
			return jump
		}
	}
	return time.Time{}
}

// New returns a scheduler; call Run to tick it, Close to stop it.
func New(cfg Config) *Scheduler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Scheduler{cfg: cfg, ctx: ctx, stop: stop, next: map[string]*entry{}}
}

// Tick fires the jobs whose time has come by now, once each however
// many of their times have passed since the last tick (a server that
// was stopped, or a slow tick, does not make up runs), and notes each
// job's next time. A job first seen fires at its next time after now.
func (s *Scheduler) Tick(now time.Time) {
	jobs := s.cfg.Jobs()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.ctx.Err() != nil {
		return // stopped, or closed
	}
	seen := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		seen[j.Key] = true
		e := s.next[j.Key]
		if e == nil || e.cron != j.Cron {
			sched, err := Parse(j.Cron)
			if err != nil {
				// Stored before a stricter parser, or its CRON_TZ zone
				// gone from this host: not fired, and said once.
				s.cfg.Logger.Warn("a function's schedule does not parse; it does not run", "key", j.Key, "err", err)
				s.next[j.Key] = &entry{cron: j.Cron}
				continue
			}
			e = &entry{cron: j.Cron, sched: sched}
			e.at = e.after(now, time.Time{})
			s.next[j.Key] = e
			continue
		}
		if e.sched == nil || e.at.IsZero() || now.Before(e.at) {
			continue // never (it does not parse, or matches no time now), or not yet
		}
		at := e.at
		e.at = e.after(now, at)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.cfg.Fire(s.ctx, j, at)
		}()
	}
	for k := range s.next {
		if !seen[k] {
			delete(s.next, k)
		}
	}
}

// Run ticks every second until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.Tick(now)
		}
	}
}

// Stop makes Tick fire nothing more; runs under way go on.
func (s *Scheduler) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// Close ends the runs under way (their ctx) and waits for them.
func (s *Scheduler) Close() {
	s.mu.Lock()
	s.stop()
	s.mu.Unlock()
	s.wg.Wait()
}

// Outcome is the line that says how one run went, for the function's
// logs: a run of the schedule (timed) for time at, or one asked for;
// ctx is the run's, its deadline the function's timeout.
func Outcome(ctx context.Context, cron string, at time.Time, timed bool, took, timeout time.Duration, err error) string {
	line := fmt.Sprintf("scheduled run (%q, for %s): ", cron, at.UTC().Format(time.RFC3339))
	if !timed {
		line = fmt.Sprintf("scheduled run asked for (%q): ", cron)
	}
	took = took.Round(time.Millisecond)
	switch {
	case err == nil:
		return line + fmt.Sprintf("done in %v", took)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return line + fmt.Sprintf("timed out after %v", timeout)
	case errors.Is(ctx.Err(), context.Canceled) && timed:
		return line + fmt.Sprintf("cut off after %v: the server is shutting down", took)
	default:
		return line + fmt.Sprintf("failed after %v: %v", took, err)
	}
}
