package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/schedule"
)

// newScheduler runs the live versions that have a schedule.
func (s *Server) newScheduler() *schedule.Scheduler {
	return schedule.New(schedule.Config{
		Jobs: func() []schedule.Job {
			specs := s.fns.Scheduled()
			jobs := make([]schedule.Job, 0, len(specs))
			for _, sp := range specs {
				jobs = append(jobs, schedule.Job{Key: sp.FunctionID, Cron: sp.Cron, Data: sp})
			}
			return jobs
		},
		Fire: func(ctx context.Context, j schedule.Job, at time.Time) error {
			return s.runEvent(ctx, j.Data.(*backend.Spec), j.Cron, at, true)
		},
		Logger: s.log,
		// Kept in spry.db: a time that came while the server was down
		// runs once at its start.
		Marks: s.store,
	})
}

// RunScheduled runs owner/name's scheduled handler now, on its live
// version, as its schedule would (spry invoke --scheduled), with the
// schedule's expression in the event if it has one, and returns how it
// went.
func (s *Server) RunScheduled(ctx context.Context, owner, name string) error {
	sp, err := s.fns.Live(ctx, owner, name)
	if err != nil {
		return err
	}
	return s.runEvent(ctx, sp, sp.Cron, time.Now(), false)
}

// ScheduleStatus is owner/name's schedule (its live version's), when it
// runs next and how its last runs went.
func (s *Server) ScheduleStatus(ctx context.Context, owner, name string) (string, schedule.Status, error) {
	sp, err := s.fns.Live(ctx, owner, name)
	if err != nil {
		return "", schedule.Status{}, err
	}
	st := s.sched.Status(sp.FunctionID, sp.Cron, time.Now())
	if s.fns.Runnable(ctx, sp) != nil {
		// Its secrets do not open: the scheduler does not run it
		// (Scheduled leaves it out), so it has no next time.
		st.Next = time.Time{}
	}
	return sp.Cron, st, nil
}

// runEvent runs one scheduled event of a function: an instance as a
// request would get one (cold start, queue, limits and the function's
// timeout alike), its scheduled handler run there, and a system line in
// the function's logs saying how it went. timed: a run of the schedule
// (not one asked for through the API), which on a version retired while
// it waited goes to the new live one if that has the schedule too.
func (s *Server) runEvent(ctx context.Context, sp *backend.Spec, cron string, at time.Time, timed bool) error {
	timeout := sp.Timeout
	if timeout <= 0 {
		timeout = s.cfg.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	instance, err := s.act.RunScheduled(ctx, sp, cron, at)
	// A deploy or a config change made another version live while the
	// run waited: it runs on that one, as a request would (the router
	// resolves again too), if that one still has the schedule.
	for tries := 0; timed && errors.Is(err, activator.ErrRetired) && tries < 3; tries++ {
		if sp = s.scheduledSpec(sp.FunctionID); sp == nil {
			return fmt.Errorf("%w: the function was deleted, or its live version has no schedule now", schedule.ErrSkipped)
		}
		cron = sp.Cron
		instance, err = s.act.RunScheduled(ctx, sp, cron, at)
	}
	line := schedule.Outcome(ctx, cron, at, timed, time.Since(t0), timeout, err)
	s.logs.Append(logstore.Entry{Owner: sp.Owner, Function: sp.Name, FunctionID: sp.FunctionID, Version: sp.Version, Instance: instance,
		Stream: logstore.StreamSystem, Line: line})
	s.metrics.Scheduled(sp.Owner, sp.Name, sp.FunctionID, err == nil)
	return err
}

// scheduledSpec is the live version of function id if it has a
// schedule, or nil.
func (s *Server) scheduledSpec(id string) *backend.Spec {
	for _, sp := range s.fns.Scheduled() {
		if sp.FunctionID == id {
			return sp
		}
	}
	return nil
}
