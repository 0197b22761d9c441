package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLoadFailureCrashLoop: a function whose top level throws, or exits,
// does not start a sandbox per request. Its first instance's failure is
// remembered for the crash-loop backoff: the requests meanwhile get the
// same 502 at once, the server logs a line per instance (not per
// request), spry_instance_failures_total counts them, and a deploy that
// fixes the function serves at once.
func TestLoadFailureCrashLoop(t *testing.T) {
	s := startServer(t)
	for _, tc := range []struct{ name, code, want string }{
		{"throws", `throw new Error("boom at import"); export default { fetch() { return new Response("never"); } };`,
			"the function failed to load: boom at import"},
		{"exits", `Deno.exit(3); export default { fetch() { return new Response("never"); } };`,
			"the function failed to load: the runtime exited unexpectedly: exit status 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.deployCode(t, tc.name, []byte(tc.code), "")
			// Steady requests for 1.5 s, from a few clients.
			const parallel = 3
			until := time.Now().Add(1500 * time.Millisecond)
			var mu sync.Mutex
			var n int
			var bad []string
			var wg sync.WaitGroup
			for w := 0; w < parallel; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(until) {
						r := s.get("/fn/admin/" + tc.name + "/")
						mu.Lock()
						n++
						if r.status != 502 || r.header.Get("Spry-Error") != "function_failed" || !strings.Contains(string(r.body), tc.want) {
							bad = append(bad, fmt.Sprintf("%d %s", r.status, r.body))
						}
						mu.Unlock()
						time.Sleep(10 * time.Millisecond)
					}
				}()
			}
			wg.Wait()
			if len(bad) > 0 {
				t.Fatalf("%d of %d requests did not get the load's failure, first: %s", len(bad), n, bad[0])
			}
			// The first start, and those the backoff allowed while the
			// requests came (1 s, then 2 s), not one per request.
			starts := s.metric(t, "spry_cold_starts_total{", `function="`+tc.name+`"`)
			if starts < 1 || starts > 3 {
				t.Fatalf("%v sandboxes started for %d requests, want 1 to 3", starts, n)
			}
			eventually(t, 5*time.Second, "the failures counted", func() bool {
				return s.metric(t, "spry_instance_failures_total{", `function="`+tc.name+`"`, `reason="load_failed"`) >= starts
			})
			logged := 0
			for _, l := range lines(s.logs.String()) {
				if !strings.Contains(l, "level=DEBUG") && strings.Contains(l, "function="+tc.name+" ") && (strings.Contains(l, "instance ended") || strings.Contains(l, "no instance")) {
					logged++
				}
			}
			if logged > int(starts) {
				t.Fatalf("%d server log lines about %d instances' failures", logged, int(starts))
			}
			// A deploy that fixes it serves at once, backoff or not.
			if r := s.putCode(s.token, tc.name, []byte(`export default { fetch() { return new Response("fixed"); } };`), ""); r.status != 200 {
				t.Fatalf("deploy the fix: %d %s", r.status, r.body)
			}
			if r := s.get("/fn/admin/" + tc.name + "/"); r.status != 200 || string(r.body) != "fixed" {
				t.Fatalf("after the fix: %d %s", r.status, r.body)
			}
		})
	}
}
