package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/schedule"
)

// ScheduleStatus is a function's schedule as the scheduler keeps it:
// its expression (the live version's), next time and last runs.
type ScheduleStatus func(ctx context.Context, owner, name string) (cron string, st schedule.Status, err error)

// ScheduleView is GET .../scheduled: a function's schedule, when it
// runs next, and how its last runs went.
type ScheduleView struct {
	Cron string `json:"cron"` // "" for none
	// NextRunAt is the time the next run is for; null with no schedule.
	NextRunAt *time.Time `json:"next_run_at"`
	// Runs are the last runs of the schedule since the server started,
	// newest first (at most 20).
	Runs []ScheduledRunView `json:"runs"`
}

// ScheduledRunView is one run of a function's schedule.
type ScheduledRunView struct {
	ScheduledTime time.Time  `json:"scheduled_time"` // the time it ran for
	StartedAt     time.Time  `json:"started_at"`
	FinishedAt    *time.Time `json:"finished_at"` // null while it runs
	// Status is running, succeeded, failed, or skipped (its function
	// was deleted, or lost the schedule, before it started).
	Status     string  `json:"status"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	Error      string  `json:"error,omitempty"`
}

// getScheduled shows the function's schedule, its next time and its
// last runs.
func (a *API) getScheduled(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	if a.cfg.ScheduleStatus == nil {
		return errdefs.New(errdefs.ErrUnavailable, "this server runs no scheduled handlers")
	}
	cron, st, err := a.cfg.ScheduleStatus(r.Context(), owner, name)
	if err != nil {
		return err
	}
	v := ScheduleView{Cron: cron, Runs: make([]ScheduledRunView, 0, len(st.Runs))}
	if !st.Next.IsZero() {
		next := st.Next.UTC()
		v.NextRunAt = &next
	}
	for _, run := range st.Runs {
		rv := ScheduledRunView{ScheduledTime: run.At.UTC(), StartedAt: run.Started.UTC(), Status: "running"}
		if !run.Finished.IsZero() {
			end := run.Finished.UTC()
			rv.FinishedAt = &end
			rv.DurationMS = float64(run.Finished.Sub(run.Started).Microseconds()) / 1000
			switch {
			case run.Err == nil:
				rv.Status = "succeeded"
			case errors.Is(run.Err, schedule.ErrSkipped):
				rv.Status, rv.DurationMS = "skipped", 0
			default:
				rv.Status = "failed"
			}
			if run.Err != nil {
				rv.Error = run.Err.Error()
			}
		}
		v.Runs = append(v.Runs, rv)
	}
	return writeJSON(w, http.StatusOK, v)
}
