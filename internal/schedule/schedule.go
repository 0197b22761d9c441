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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// parser reads standard five-field expressions (minute, hour, day of
// month, month, day of week), an optional leading seconds field, and
// descriptors (@hourly, @every 10m); CRON_TZ=Zone first picks a time
// zone (UTC otherwise). Parse reads a day of week 7 as Sunday before it.
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
	zone, fields := splitExpr(expr)
	if len(fields) > 0 && !strings.HasPrefix(fields[0], "@") {
		// cron(8) reads 7 as Sunday too; the parser knows only 0.
		fields[len(fields)-1] = sundaySeven(fields[len(fields)-1])
	}
	s, err := parser.Parse(zone + strings.Join(fields, " "))
	if err != nil {
		if f := badField(zone, fields); f != "" {
			return nil, errdefs.Invalid("cron %q: %s: %v", expr, f, err)
		}
		return nil, errdefs.Invalid("cron %q: %v (want five fields, minute hour day-of-month month day-of-week, like \"*/5 * * * *\", an optional seconds field first, or a descriptor like @hourly)", expr, err)
	}
	// The parser looks five years ahead, and gives the zero time for
	// an expression that matches no day in them (February 31st).
	if s.Next(time.Now()).IsZero() {
		if n := len(fields); n >= 5 {
			return nil, errdefs.Invalid("cron %q: matches no time: day-of-month %q never comes in month %q", expr, fields[n-3], fields[n-2])
		}
		return nil, errdefs.Invalid("cron %q: matches no time", expr)
	}
	return s, nil
}

// splitExpr splits expr into its CRON_TZ= or TZ= prefix (with its
// space, or "") and its fields.
func splitExpr(expr string) (zone string, fields []string) {
	fields = strings.Fields(expr)
	if len(fields) > 0 && (strings.HasPrefix(fields[0], "CRON_TZ=") || strings.HasPrefix(fields[0], "TZ=")) {
		zone, fields = fields[0]+" ", fields[1:]
	}
	return zone, fields
}

// fieldNames names the fields of a five-field expression, and of a
// six-field one with seconds first.
var fieldNames = map[int][]string{
	5: {"minute", "hour", "day-of-month", "month", "day-of-week"},
	6: {"second", "minute", "hour", "day-of-month", "month", "day-of-week"},
}

// badField names the first field of an expression the parser refused
// that it refuses alone (every other field "*"), or "" (the count of
// fields is wrong, or a descriptor, or the zone).
func badField(zone string, fields []string) string {
	names := fieldNames[len(fields)]
	for i, name := range names {
		alone := make([]string, len(fields))
		for j := range alone {
			alone[j] = "*"
		}
		alone[i] = fields[i]
		if _, err := parser.Parse(zone + strings.Join(alone, " ")); err != nil {
			return name
		}
	}
	return ""
}

// sundaySeven rewrites a day-of-week field's 7 (Sunday, as cron(8) and
// crontab(5) allow) as the parser's 0: "7" is "0", and a range that
// ends at 7, "5-7" or "1-7/2", ends at 6 and adds 0 when its step
// lands on 7. Anything else is left for the parser to judge.
func sundaySeven(field string) string {
	parts := strings.Split(field, ",")
	for i, p := range parts {
		rng, step, hasStep := strings.Cut(p, "/")
		lo, hi, isRange := strings.Cut(rng, "-")
		if !isRange {
			if rng == "7" && !hasStep {
				parts[i] = "0"
			}
			continue
		}
		from, err := strconv.Atoi(lo)
		if hi != "7" || err != nil || from < 0 || from > 7 {
			continue
		}
		by := 1
		if hasStep {
			if by, err = strconv.Atoi(step); err != nil || by <= 0 {
				continue
			}
		}
		var out []string
		if from <= 6 {
			r := fmt.Sprintf("%d-6", from)
			if hasStep {
				r += "/" + step
			}
			out = append(out, r)
		}
		if (7-from)%by == 0 {
			out = append(out, "0")
		}
		parts[i] = strings.Join(out, ",")
	}
	return strings.Join(parts, ",")
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
	// Fire runs one job's event for time at, in its own goroutine, and
	// returns how it went; ctx ends when the scheduler is closed.
	Fire   func(ctx context.Context, j Job, at time.Time) error
	Logger *slog.Logger
	// Now is the clock a run's end is read by (time.Now if nil); its
	// start is the tick's time.
	Now func() time.Time
	// Marks, if set, keeps how far each job has run across restarts
	// (nil: a time missed while the server was down is not made up).
	Marks Marks
}

// Marks keeps each job's store.ScheduleMark, by Job.Key: the time it
// last ran for, or when it was first seen. At the first tick a job
// whose mark (of its expression) is older than a time it had runs once,
// for the first time it missed, as a late tick does; its runs, and
// jobs seen anew, are marked before they start, so that none runs
// twice.
type Marks interface {
	ScheduleMarks(ctx context.Context) (map[string]store.ScheduleMark, error)
	MarkSchedules(ctx context.Context, marks map[string]store.ScheduleMark) error
}

// Scheduler fires jobs at their times.
type Scheduler struct {
	cfg  Config
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	first sync.Once // the first Tick reads the marks

	mu      sync.Mutex
	stopped bool              // by Stop: Tick fires nothing more
	next    map[string]*entry // by Job.Key
}

type entry struct {
	cron  string
	sched cron.Schedule // nil: the expression does not parse (said once)
	at    time.Time     // the next time it fires
	seen  time.Time     // the last tick's time
	runs  []*Run        // the last keepRuns, oldest first
}

// keepRuns is how many of a job's last runs Status shows.
const keepRuns = 20

// Run is one run of a job.
type Run struct {
	At       time.Time // the time it ran for
	Started  time.Time
	Finished time.Time // zero while it runs
	Err      error     // how it failed
}

// ErrSkipped is a run's error when the time came but the run did not
// start: its function was deleted, or lost the schedule, before it.
var ErrSkipped = errors.New("skipped")

// Status is a job's schedule as Status shows it.
type Status struct {
	Next time.Time // zero: none (it matches no time now, or does not parse)
	Runs []Run     // its last runs, newest first, since the server started
}

// stepBack is how far back a clock must step for a job to start over
// from the clock's new time, as cron(8) does: a shorter step waits for
// the times not yet run (none runs twice), a longer one (a clock that
// was far ahead, set right) does not wait for the wrong time to come
// again, which could be a year without runs.
const stepBack = 3 * time.Hour

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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Scheduler{cfg: cfg, ctx: ctx, stop: stop, next: map[string]*entry{}}
}

// Tick fires the jobs whose time has come by now, once each however
// many of their times have passed since the last tick (a slow tick, or
// a machine suspended, does not make up runs), and notes each job's next
// time. A job first seen fires at its next time after now; so does one
// whose clock stepped back more than stepBack. At the first tick, with
// Marks, a job that missed a time while the server was down fires once
// for the first of them.
func (s *Scheduler) Tick(now time.Time) {
	// Schedules keep wall-clock time: a ticker's time carries a
	// monotonic reading, which would hide a clock that steps back (and
	// stands still while the machine is suspended).
	now = now.Round(0)
	var loaded map[string]store.ScheduleMark
	s.first.Do(func() {
		if s.cfg.Marks == nil {
			return
		}
		var err error
		if loaded, err = s.cfg.Marks.ScheduleMarks(s.ctx); err != nil {
			s.cfg.Logger.Warn("cannot read how far the schedules ran; times missed while the server was down are not made up", "err", err)
		}
	})
	jobs := s.cfg.Jobs()
	marks := map[string]store.ScheduleMark{}
	var fires []func()
	s.mu.Lock()
	if s.stopped || s.ctx.Err() != nil {
		s.mu.Unlock()
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
			// A changed schedule keeps the runs it made.
			var runs []*Run
			if e != nil {
				runs = e.runs
			}
			e = &entry{cron: j.Cron, sched: sched, seen: now, runs: runs}
			s.next[j.Key] = e
			if m, ok := loaded[j.Key]; ok && m.Cron == j.Cron {
				if missed := e.after(m.At, m.At); !missed.IsZero() && !missed.After(now) {
					s.cfg.Logger.Info("a scheduled time came while the server was down; it runs now", "key", j.Key, "cron", j.Cron, "for", missed)
					e.at = missed // fired below, as a late tick's
				}
			}
			if e.at.IsZero() {
				e.at = e.after(now, time.Time{})
				marks[j.Key] = store.ScheduleMark{Cron: j.Cron, At: now}
				continue
			}
		}
		if e.sched != nil && now.Before(e.seen.Add(-stepBack)) {
			e.at = e.after(now, time.Time{})
		}
		e.seen = now
		if e.sched == nil || e.at.IsZero() || now.Before(e.at) {
			continue // never (it does not parse, or matches no time now), or not yet
		}
		at := e.at
		e.at = e.after(now, at)
		marks[j.Key] = store.ScheduleMark{Cron: j.Cron, At: at}
		run := &Run{At: at, Started: now}
		e.runs = append(e.runs, run)
		if len(e.runs) > keepRuns {
			e.runs = slices.Delete(e.runs, 0, len(e.runs)-keepRuns)
		}
		// Counted now, under the lock, for Close to wait for; started
		// once the marks are kept.
		s.wg.Add(1)
		fires = append(fires, func() {
			defer s.wg.Done()
			err := s.cfg.Fire(s.ctx, j, at)
			s.mu.Lock()
			defer s.mu.Unlock()
			run.Finished, run.Err = s.cfg.Now(), err
		})
	}
	for k := range s.next {
		if !seen[k] {
			delete(s.next, k)
		}
	}
	s.mu.Unlock()
	if s.cfg.Marks != nil && len(marks) > 0 {
		// A run whose mark could not be kept still runs: only a restart
		// right after would run its time again.
		if err := s.cfg.Marks.MarkSchedules(s.ctx, marks); err != nil && s.ctx.Err() == nil {
			s.cfg.Logger.Warn("cannot keep how far the schedules ran", "err", err)
		}
	}
	for _, f := range fires {
		go f()
	}
}

// Status is the schedule of the job key, whose expression is now cron:
// its next time, as the scheduler will fire it (or, before its first
// tick sees it, as the expression reads after now), and its last runs.
func (s *Scheduler) Status(key, cron string, now time.Time) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st Status
	e := s.next[key]
	if e != nil {
		for _, r := range slices.Backward(e.runs) {
			st.Runs = append(st.Runs, *r)
		}
	}
	switch {
	case e != nil && e.cron == cron:
		st.Next = e.at
	case cron != "":
		if sched, err := Parse(cron); err == nil {
			st.Next = (&entry{cron: cron, sched: sched}).after(now.Round(0), time.Time{})
		}
	}
	return st
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
