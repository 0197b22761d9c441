package server

import (
	"context"
	"errors"
	"fmt"
	"time"

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
		Fire:   s.runScheduled,
		Logger: s.log,
	})
}

// runScheduled runs one scheduled event of a function: an instance as a
// request would get one (cold start, queue, limits and the function's
// timeout alike), its scheduled handler run there, and a system line in
// the function's logs saying how it went.
func (s *Server) runScheduled(ctx context.Context, j schedule.Job, at time.Time) {
	sp := j.Data.(*backend.Spec)
	timeout := sp.Timeout
	if timeout <= 0 {
		timeout = s.cfg.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	instance := ""
	lease, err := s.act.Acquire(ctx, sp)
	if err == nil {
		instance = lease.Instance().ID
		err = lease.Instance().RunScheduled(ctx, sp.Cron, at)
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.Canceled) {
			lease.TimedOut()
		}
		lease.Release()
	}
	took := time.Since(t0).Round(time.Millisecond)
	line := fmt.Sprintf("scheduled run (%q, for %s): ", sp.Cron, at.UTC().Format(time.RFC3339))
	switch {
	case err == nil:
		line += fmt.Sprintf("done in %v", took)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		line += fmt.Sprintf("timed out after %v", timeout)
	default:
		line += fmt.Sprintf("failed after %v: %v", took, err)
	}
	s.logs.Append(logstore.Entry{Owner: sp.Owner, Function: sp.Name, FunctionID: sp.FunctionID, Version: sp.Version, Instance: instance,
		Stream: logstore.StreamSystem, Line: line})
	s.metrics.Scheduled(sp.Owner, sp.Name, sp.FunctionID, err == nil)
}
