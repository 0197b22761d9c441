package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestScheduledFunctions: a function deployed with --cron runs its
// scheduled handler on the schedule, on both runtimes, with the event
// and its context; each run leaves a system line in its logs and counts
// in spry_scheduled_runs_total; one without a scheduled method says so;
// --cron none stops the runs, and spry invoke --scheduled runs it once,
// for its owner only; a bad expression is refused with 400.
func TestScheduledFunctions(t *testing.T) {
	s := startServer(t)
	const code = `export default {
		fetch() { return new Response("hi"); },
		async scheduled(event, ctx) {
			console.log("tick", event.type, event.cron, typeof event.scheduledTime, event.scheduledTime % 1000, ctx.name);
		},
	}`
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "cron-" + rt
			s.deployCode(t, name, []byte(code), "runtime="+rt+"&cron="+"*+*+*+*+*+*")
			eventually(t, 10*time.Second, "two scheduled runs", func() bool {
				out, _, _ := s.spry("", "logs", name)
				return strings.Count(out, "tick scheduled * * * * * * number 0 "+name) >= 2 &&
					strings.Count(out, `scheduled run ("* * * * * *", for `) >= 2 && strings.Contains(out, "): done in ")
			})
			if n := s.metric(t, "spry_scheduled_runs_total{", `function="`+name+`"`, `result="ok"`); n < 2 {
				t.Errorf("spry_scheduled_runs_total ok: %v, want at least 2", n)
			}
			// It still answers requests.
			if r := s.get("/fn/admin/" + name + "/"); r.status != 200 || string(r.body) != "hi" {
				t.Errorf("fetch: %d %s", r.status, r.body)
			}
			// No schedule, no runs.
			s.mustSpry("config", name, "--cron", "none")
			time.Sleep(1500 * time.Millisecond) // a run begun before the change may end
			before := s.metric(t, "spry_scheduled_runs_total{", `function="`+name+`"`, `result="ok"`)
			time.Sleep(2500 * time.Millisecond)
			if after := s.metric(t, "spry_scheduled_runs_total{", `function="`+name+`"`, `result="ok"`); after != before {
				t.Errorf("%v runs after --cron none, want none", after-before)
			}
			// A run asked for, with no schedule: the event's cron is "".
			if out := s.mustSpry("invoke", name, "--scheduled"); !strings.Contains(out, "scheduled run done") {
				t.Errorf("invoke --scheduled: %q", out)
			}
			eventually(t, 5*time.Second, "the run asked for in the logs", func() bool {
				out, _, _ := s.spry("", "logs", name)
				return strings.Contains(out, "tick scheduled  number") && strings.Contains(out, `scheduled run asked for (""): done in `)
			})
		})
	}
	// A schedule on a function with no scheduled method: each run fails,
	// and says why.
	s.deployCode(t, "cron-none", []byte(`export default { fetch() { return new Response("hi"); } }`), "cron=*+*+*+*+*+*")
	eventually(t, 10*time.Second, "a failed run's line", func() bool {
		out, _, _ := s.spry("", "logs", "cron-none")
		return strings.Contains(out, "failed after") && strings.Contains(out, "no scheduled method")
	})
	s.mustSpry("config", "cron-none", "--cron", "none")
	// Asked for, it fails the same way, with 400.
	if _, stderr, code := s.spry("", "invoke", "cron-none", "--scheduled"); code != 2 || !strings.Contains(stderr, "no scheduled method") {
		t.Errorf("invoke --scheduled without the method: exit %d, %q", code, stderr)
	}
	// Another user may not run it.
	bob := strings.TrimSpace(s.mustSpry("user", "create", "bob"))
	if r := s.do("POST", "/api/v1/functions/cron-none/scheduled?owner=admin", bob, nil, nil); r.status != 403 && r.status != 404 {
		t.Errorf("another user ran admin's scheduled handler: %d %s", r.status, r.body)
	}
	// A bad expression is refused, and nothing is stored.
	if r := s.putCode(s.token, "cron-bad", []byte(`export default { fetch() { return new Response("hi"); } }`), "cron=61+*+*+*+*"); r.status != 400 || r.errorCode(t) != "invalid_argument" {
		t.Fatalf("bad cron: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/cron-bad/"); r.status != 404 {
		t.Errorf("the refused function answers %d", r.status)
	}
}
