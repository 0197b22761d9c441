package e2e

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
)

// scheduleOf reads a function's schedule through spry schedule --json.
func (s *server) scheduleOf(t *testing.T, name string) api.ScheduleView {
	t.Helper()
	var v api.ScheduleView
	if err := json.Unmarshal([]byte(s.mustSpry("schedule", name, "--json")), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// spry schedule shows a function's schedule, its next time and its last
// runs, newest first, each with its status and a failure's error; only
// to its owner. The schedule survives a restart (the runs shown start
// over); --cron none leaves no next time; a user deleted takes their
// schedules with them: none of their functions runs again.
func TestScheduleStatus(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { fetch() { return new Response("hi"); },
  scheduled(event) { if (new Date(event.scheduledTime).getSeconds() % 2) throw new Error("odd second"); } }`)
	s.deployCode(t, "ticks", code, "cron="+url.QueryEscape("* * * * * *"))
	var v api.ScheduleView
	eventually(t, 15*time.Second, "a run that succeeded and one that failed", func() bool {
		v = s.scheduleOf(t, "ticks")
		var ok, failed bool
		for _, r := range v.Runs {
			ok = ok || r.Status == "succeeded"
			failed = failed || r.Status == "failed" && strings.Contains(r.Error, "odd second")
		}
		return ok && failed
	})
	if v.Cron != "* * * * * *" || v.NextRunAt == nil || !v.NextRunAt.After(v.Runs[0].ScheduledTime) {
		t.Errorf("cron %q, next %v, last run for %v", v.Cron, v.NextRunAt, v.Runs[0].ScheduledTime)
	}
	for i, r := range v.Runs {
		if i > 0 && !r.ScheduledTime.Before(v.Runs[i-1].ScheduledTime) {
			t.Errorf("runs not newest first: %v then %v", v.Runs[i-1].ScheduledTime, r.ScheduledTime)
		}
		if r.Status != "running" && (r.FinishedAt == nil || r.FinishedAt.Before(r.StartedAt)) {
			t.Errorf("run %+v", r)
		}
	}
	if out := s.mustSpry("schedule", "ticks"); !strings.Contains(out, "next run:") || !strings.Contains(out, "odd second") {
		t.Errorf("spry schedule:\n%s", out)
	}

	alice := strings.TrimSpace(s.mustSpry("user", "create", "alice"))
	if r := s.do("GET", "/api/v1/functions/ticks/scheduled?owner=admin", alice, nil, nil); r.status != 403 && r.status != 404 {
		t.Errorf("another user read the schedule: %d %s", r.status, r.body)
	}
	if r := s.putCode(alice, "hers", []byte(`export default { fetch() { return new Response("hi"); }, scheduled() {} }`),
		"cron="+url.QueryEscape("* * * * * *")); r.status != 201 {
		t.Fatalf("alice's deploy: %d %s", r.status, r.body)
	}
	eventually(t, 10*time.Second, "a run of alice's", func() bool {
		return s.metric(t, "spry_scheduled_runs_total{", `owner="alice"`) >= 1
	})

	s.restart()
	eventually(t, 15*time.Second, "a run after the restart", func() bool {
		v = s.scheduleOf(t, "ticks")
		return len(v.Runs) > 0 && v.Runs[len(v.Runs)-1].FinishedAt != nil
	})
	eventually(t, 10*time.Second, "a run of alice's after the restart", func() bool {
		return s.metric(t, "spry_scheduled_runs_total{", `owner="alice"`) >= 1
	})

	s.mustSpry("user", "rm", "alice")
	time.Sleep(2500 * time.Millisecond) // two ticks and more
	r := s.do("GET", "/metrics", s.token, nil, nil)
	if strings.Contains(string(r.body), `owner="alice"`) {
		t.Errorf("a deleted user's function still runs, or its series stay:\n%s", grepLines(string(r.body), `owner="alice"`))
	}

	s.mustSpry("config", "ticks", "--cron", "none")
	if v = s.scheduleOf(t, "ticks"); v.Cron != "" || v.NextRunAt != nil {
		t.Errorf("no schedule: cron %q, next %v", v.Cron, v.NextRunAt)
	}
}

// A time that came while the server was down runs once when it starts
// again, for the first time missed (as systemd's persistent timers and
// a CronJob within its deadline do); the others are not made up.
func TestScheduleMissedWhileDownRunsOnce(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "ticks", []byte(`export default { fetch() { return new Response("hi"); }, scheduled() {} }`), "cron="+url.QueryEscape("* * * * * *"))
	var before time.Time
	eventually(t, 15*time.Second, "a run", func() bool {
		v := s.scheduleOf(t, "ticks")
		if len(v.Runs) > 0 {
			before = v.Runs[0].ScheduledTime
		}
		return !before.IsZero()
	})
	s.stop()
	time.Sleep(3 * time.Second) // the server is down across three times
	restarted := time.Now()
	s.start()
	var v api.ScheduleView
	eventually(t, 15*time.Second, "runs after the restart", func() bool {
		v = s.scheduleOf(t, "ticks")
		return len(v.Runs) >= 3
	})
	var missed []time.Time
	for _, r := range v.Runs {
		if r.ScheduledTime.Before(restarted) {
			missed = append(missed, r.ScheduledTime)
		}
	}
	if len(missed) != 1 || !missed[0].After(before) {
		t.Errorf("runs for times while down: %v (the last before the stop: %v); want one, after it", missed, before)
	}
}
