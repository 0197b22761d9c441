package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Changes under live traffic: steady concurrent keep-alive traffic is
// driven at functions while they are deployed, rolled back, split,
// tagged, reconfigured, deleted, scaled to zero or crash, and every
// single answer is checked.

// shot is one request of the traffic and what it got.
type shot struct {
	start, end time.Time
	status     int
	code       string // the platform's Spry-Error, if any
	body       string
	err        error
}

func (h shot) String() string {
	if h.err != nil {
		return fmt.Sprintf("[%s +%v] error %v", h.start.Format("15:04:05.000"), h.end.Sub(h.start).Round(time.Millisecond), h.err)
	}
	return fmt.Sprintf("[%s +%v] %d %s %.200q", h.start.Format("15:04:05.000"), h.end.Sub(h.start).Round(time.Millisecond), h.status, h.code, h.body)
}

// traffic is conns clients, each sending one request after the other on
// its own kept-alive connection, until end.
type traffic struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	tr    *http.Transport
	mu    sync.Mutex
	shots []shot
}

// drive starts traffic at path on s. pause, if set, is how long each
// client waits between its requests.
func (s *server) drive(t *testing.T, conns int, path string, header map[string]string, pause func() time.Duration) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{}), tr: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}}
	client := &http.Client{Transport: tr.tr, Timeout: 15 * time.Second}
	for i := 0; i < conns; i++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				tr.add(shoot(client, s.url+path, header))
				if pause != nil {
					select {
					case <-tr.stop:
						return
					case <-time.After(pause()):
					}
				}
			}
		}()
	}
	t.Cleanup(func() { tr.end() })
	return tr
}

func shoot(client *http.Client, url string, header map[string]string) shot {
	h := shot{start: time.Now()}
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := client.Do(req)
	if err == nil {
		var b []byte
		b, err = io.ReadAll(res.Body)
		res.Body.Close()
		h.status, h.code, h.body = res.StatusCode, res.Header.Get("Spry-Error"), string(b)
	}
	h.err, h.end = err, time.Now()
	return h
}

func (tr *traffic) add(h shot) {
	tr.mu.Lock()
	tr.shots = append(tr.shots, h)
	tr.mu.Unlock()
}

// end stops the traffic and returns every request it sent.
func (tr *traffic) end() []shot {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
	tr.tr.CloseIdleConnections()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.shots)
}

// change is one change made through the API while traffic runs, and the
// answers a request may get once it has returned.
type change struct {
	what       string
	sent, done time.Time
	allowed    []string
}

// changes records a sequence of changes, starting from the answers
// allowed before the first.
type changes struct {
	t    *testing.T
	list []change
}

func newChanges(t *testing.T, allowed ...string) *changes {
	return &changes{t: t, list: []change{{what: "start", allowed: allowed}}}
}

// do makes one change with the API (method, path, JSON body) and records
// what is allowed once it has returned.
func (c *changes) do(s *server, what, method, path, body string, allowed ...string) {
	c.t.Helper()
	ch := change{what: what, sent: time.Now(), allowed: allowed}
	var rd io.Reader
	hdr := map[string]string{}
	if body != "" {
		rd = strings.NewReader(body)
		hdr["Content-Type"] = "application/json"
		if strings.HasPrefix(body, "export") {
			hdr["Content-Type"] = "application/typescript"
		}
	}
	r := s.do(method, path, s.token, rd, hdr)
	ch.done = time.Now()
	if r.status/100 != 2 {
		c.t.Fatalf("%s: %s %s: %d %s", what, method, path, r.status, r.body)
	}
	c.list = append(c.list, ch)
}

// check says which requests got an answer not allowed: a request
// started after a change returned may get what that change allows, or
// what a later change allows if that change was sent before the request
// ended.
func (c *changes) check(shots []shot) []string {
	var bad []string
	for _, h := range shots {
		base := 0
		for i, ch := range c.list {
			if i > 0 && !ch.done.After(h.start) {
				base = i
			}
		}
		ok := h.err == nil && h.status == 200 && slices.Contains(c.list[base].allowed, h.body)
		for _, ch := range c.list[base+1:] {
			if ok || h.err != nil || h.status != 200 {
				break
			}
			ok = ch.sent.Before(h.end) && slices.Contains(ch.allowed, h.body)
		}
		if !ok {
			bad = append(bad, fmt.Sprintf("%v (after %q, which allows %q)", h, c.list[base].what, c.list[base].allowed))
		}
	}
	return bad
}

// report fails t with the first of bad, or logs how many requests were
// sent.
func report(t *testing.T, what string, shots []shot, bad []string) {
	t.Helper()
	if len(bad) > 0 {
		t.Errorf("%s: %d of %d requests wrong; the first:\n%s", what, len(bad), len(shots), strings.Join(bad[:min(len(bad), 10)], "\n"))
		return
	}
	var ds []time.Duration
	for _, h := range shots {
		ds = append(ds, h.end.Sub(h.start))
	}
	slices.Sort(ds)
	if len(ds) == 0 {
		t.Errorf("%s: no request was sent", what)
		return
	}
	t.Logf("%s: %d requests, all as expected; latency p50 %v, p99 %v, max %v", what, len(shots),
		ds[len(ds)/2].Round(time.Millisecond/10), ds[len(ds)*99/100].Round(time.Millisecond/10), ds[len(ds)-1].Round(time.Millisecond/10))
}

// rollCode answers with its version, env FOO and secret S.
func rollCode(n int) string {
	return fmt.Sprintf(`export default { async fetch(req, ctx) {
		await new Promise((r) => setTimeout(r, 5)); // code %d
		return new Response(ctx.version + " " + (ctx.env.FOO ?? "-") + " " + (ctx.env.S ?? "-"));
	} }`, n)
}

// TestRolloutUnderLoad: deploys (several in a row), a rollback, traffic
// splits, tag moves, env and secret changes under steady traffic lose no
// request, and once a change has returned no new request is answered by
// a version it replaced. On the event loops (a public function), on the
// goroutine-per-connection path (a private one), and with no event loops.
func TestRolloutUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   []string
		private bool
	}{
		{name: "lane"},
		{name: "private", private: true},
		{name: "no-lane", flags: []string{"--router-loops", "0"}},
		// Every new version's first instance a sandbox started while
		// requests queue for it.
		{name: "no-pool", flags: []string{"--pool-size", "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, tc.flags...)
			query := ""
			var auth map[string]string
			if tc.private {
				query = "access=private"
				auth = map[string]string{"Authorization": "Bearer " + s.token}
			}
			s.deployCode(t, "roll", []byte(rollCode(1)), query)
			api := "/api/v1/functions/roll"
			c := newChanges(t, "1 - -")
			// The tag's own traffic is checked apart.
			c.do(s, "tag canary 1", "PUT", api+"/tags/canary", `{"version":1}`, "1 - -")
			tagged := newChanges(t, "1 - -")
			if r := s.do("GET", "/fn/admin/roll/", s.token, nil, nil); r.status != 200 {
				t.Fatalf("warm-up: %d %s", r.status, r.body)
			}
			main := s.drive(t, 24, "/fn/admin/roll/", auth, nil)
			tag := s.drive(t, 4, "/fn/admin/roll@canary/", auth, nil)
			pause := func() { time.Sleep(250 * time.Millisecond) }
			pause()
			// Deploys in a row, with no pause between them.
			for n := 2; n <= 8; n++ {
				c.do(s, fmt.Sprintf("deploy %d", n), "PUT", api+"?"+query, rollCode(n), fmt.Sprintf("%d - -", n))
			}
			pause()
			c.do(s, "rollback", "POST", api+"/rollback", "", "7 - -")
			pause()
			c.do(s, "split 3/8", "PUT", api+"/traffic", `{"3":50,"8":50}`, "3 - -", "8 - -")
			pause()
			c.do(s, "8 at 100", "PUT", api+"/traffic", `{"8":100}`, "8 - -")
			pause()
			c.do(s, "env set", "PATCH", api, `{"env":{"FOO":"a"}}`, "9 a -")
			pause()
			c.do(s, "env unset", "PATCH", api, `{"unset_env":["FOO"]}`, "10 - -")
			pause()
			c.do(s, "secret set", "PATCH", api, `{"secrets":{"S":"x"}}`, "11 - x")
			pause()
			tagged.do(s, "tag canary 11", "PUT", api+"/tags/canary", `{"version":11}`, "11 - x")
			pause()
			tagged.do(s, "tag canary 3", "PUT", api+"/tags/canary", `{"version":3}`, "3 - -")
			pause()
			shots := main.end()
			report(t, "live", shots, c.check(shots))
			tshots := tag.end()
			report(t, "@canary", tshots, tagged.check(tshots))
		})
	}
}

// TestSettingsUnderLoad: PATCHes of concurrency, max, min, memory,
// timeout and access (public, private, public) while every instance is
// busy and requests queue: each makes a new version, the queued and
// in-flight requests of the one replaced are served (by it or by the
// new one), and none is answered by an older version once the PATCH has
// returned.
func TestSettingsUnderLoad(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "busy", []byte(`export default { async fetch(req, ctx) {
		await new Promise((r) => setTimeout(r, 30));
		return new Response(String(ctx.version));
	} }`), "concurrency=4&max=2&timeout=10s")
	if r := s.get("/fn/admin/busy/"); r.status != 200 {
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}
	// The admin's token throughout: the function is private for a while.
	load := s.drive(t, 24, "/fn/admin/busy/", map[string]string{"Authorization": "Bearer " + s.token}, nil)
	c := newChanges(t, "1")
	api := "/api/v1/functions/busy"
	for i, patch := range []string{
		`{"concurrency":1}`, // 2 requests at once, 22 queued
		`{"max":1}`,         // 1 at once
		`{"min":1}`,
		`{"max":3,"concurrency":8}`,
		`{"memory":"256Mi"}`,
		`{"timeout":"5s"}`,
		`{"access":"private"}`,
		`{"access":"public"}`,
		`{"concurrency":2,"max":1}`,
	} {
		time.Sleep(300 * time.Millisecond)
		c.do(s, "PATCH "+patch, "PATCH", api, patch, fmt.Sprint(i+2))
	}
	time.Sleep(500 * time.Millisecond)
	shots := load.end()
	report(t, "PATCHes", shots, c.check(shots))
}

// TestLowerMaxUnderOverload: with a short queue and timeout, lowering
// max and concurrency of a function whose queue is full gets each
// request an answer, 200 or the documented 503 (queue full) or 504
// (timeout), never a hang or another error.
func TestLowerMaxUnderOverload(t *testing.T) {
	s := startServer(t, "--queue-size", "4")
	s.deployCode(t, "over", []byte(`export default { async fetch(req, ctx) {
		await new Promise((r) => setTimeout(r, 200));
		return new Response(String(ctx.version));
	} }`), "concurrency=2&max=2&timeout=1s")
	if r := s.get("/fn/admin/over/"); r.status != 200 {
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}
	load := s.drive(t, 24, "/fn/admin/over/", nil, func() time.Duration { return 10 * time.Millisecond })
	time.Sleep(500 * time.Millisecond)
	changed := time.Now()
	if r := s.do("PATCH", "/api/v1/functions/over", s.token, strings.NewReader(`{"max":1,"concurrency":1}`), nil); r.status != 200 {
		t.Fatalf("PATCH: %d %s", r.status, r.body)
	}
	time.Sleep(1500 * time.Millisecond)
	shots := load.end()
	var bad []string
	counts := map[string]int{}
	for _, h := range shots {
		key := fmt.Sprint(h.status, " ", h.code)
		switch {
		case h.err != nil:
			bad = append(bad, h.String())
		case h.status == 200 && (h.body == "1" || h.body == "2"):
			key = "200 v" + h.body
			if h.body == "1" && h.start.After(changed.Add(time.Second)) {
				bad = append(bad, h.String()+" (the old version, long after the PATCH)")
			}
		case h.status == 503 && h.code == "unavailable", h.status == 504 && h.code == "timeout":
		default:
			bad = append(bad, h.String())
		}
		if d := h.end.Sub(h.start); d > 3*time.Second {
			bad = append(bad, h.String()+" (took longer than the timeout by far)")
		}
		counts[key]++
	}
	t.Logf("answers: %v", counts)
	report(t, "overload", shots, bad)
}

// TestDeleteUnderLoad: a function deleted while traffic runs on both
// router paths: requests in flight get their answer or the documented
// 502, every request sent once the DELETE has returned gets 404 at
// once, nothing hangs, and no sandbox or cgroup of it is left. Made
// again under the same name right after, it serves its own code, with
// none of the old one's env or key-value entries.
func TestDeleteUnderLoad(t *testing.T) {
	// No warm pool: every sandbox process is a function's.
	s := startServer(t, "--pool-size", "0", "--node-pool-size", "0")
	code := `export default { async fetch(req, ctx) {
		const seen = (await ctx.kv.get("mark")) ?? "-";
		if (new URL(req.url).pathname === "/mark") await ctx.kv.set("mark", ctx.env.WHO);
		await new Promise((r) => setTimeout(r, 20));
		return new Response(ctx.env.WHO + " " + (ctx.env.OLD ?? "-") + " " + seen);
	} }`
	deployJSON := func(fields map[string]any) {
		t.Helper()
		fields["code"] = code
		b, _ := json.Marshal(fields)
		if r := s.do("PUT", "/api/v1/functions/gone", s.token, bytes.NewReader(b), map[string]string{"Content-Type": "application/json"}); r.status != 201 {
			t.Fatalf("deploy: %d %s", r.status, r.body)
		}
	}
	deployJSON(map[string]any{"env": map[string]string{"WHO": "old", "OLD": "yes"}, "concurrency": 4})
	if r := s.get("/fn/admin/gone/mark"); r.status != 200 || string(r.body) != "old yes -" {
		t.Fatalf("first call: %d %s", r.status, r.body)
	}
	public := s.drive(t, 16, "/fn/admin/gone/", nil, nil)
	// A token sends its requests the goroutine-per-connection way.
	slow := s.drive(t, 8, "/fn/admin/gone/", map[string]string{"Authorization": "Bearer " + s.token}, nil)
	eventually(t, 10*time.Second, "several instances", func() bool { return s.running(t, "gone") >= 2 })
	sent := time.Now()
	if r := s.do("DELETE", "/api/v1/functions/gone", s.token, nil, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	deleted := time.Now()
	time.Sleep(500 * time.Millisecond)
	shots := append(public.end(), slow.end()...)
	var bad []string
	after, late := 0, 0
	for _, h := range shots {
		switch {
		case h.err != nil:
			bad = append(bad, h.String())
		case h.status == 200 && h.start.Before(sent) && h.end.After(deleted.Add(50*time.Millisecond)):
			// An instance the delete killed served on for a few hundred
			// ms (bubblewrap, killed, tore its namespaces down before the
			// sandbox got its parent-death signal), its ctx.kv already
			// empty: the whole sandbox is killed now.
			late++
			bad = append(bad, h.String()+" (answered by the deleted function)")
		case h.end.Sub(h.start) > 2*time.Second:
			bad = append(bad, h.String()+" (slow)")
		case h.start.After(deleted):
			after++
			if h.status != 404 || h.code != "not_found" {
				bad = append(bad, h.String()+" (sent after the delete)")
			}
		// The documented 502 of a request in flight on an instance the
		// delete ended: function_failed once its end is known, else
		// bad_gateway (the answer did not come).
		case h.status == 200 && h.body == "old yes old",
			h.status == 502 && (h.code == "function_failed" || h.code == "bad_gateway") && h.end.After(sent),
			h.status == 404 && h.code == "not_found" && h.end.After(sent):
		default:
			bad = append(bad, h.String())
		}
	}
	t.Logf("DELETE sent at %s, returned at %s", sent.Format("15:04:05.000"), deleted.Format("15:04:05.000"))
	report(t, "delete", shots, bad)
	if late > 0 {
		t.Logf("%d requests in flight at the delete were answered by the function over 50 ms after it", late)
	}
	if after == 0 {
		t.Errorf("no request was sent after the delete")
	}
	eventually(t, 5*time.Second, "the deleted function's sandboxes to end", func() bool { return len(s.sandboxProcs()) == 0 })
	// Only the server's own groups are left, no instance's.
	eventually(t, 5*time.Second, "the deleted function's cgroups and run directories to go", func() bool {
		for _, p := range s.hostState(t) {
			if strings.Contains(filepath.Base(p), "i-") {
				return false
			}
		}
		return true
	})
	if n := s.running(t, "gone"); n != 0 {
		t.Errorf("%d instances of the deleted function counted", n)
	}

	// The same name again, at once: its own env, an empty kv.
	deployJSON(map[string]any{"env": map[string]string{"WHO": "new"}})
	for i := 0; i < 3; i++ {
		if r := s.get("/fn/admin/gone/"); r.status != 200 || string(r.body) != "new - -" {
			t.Fatalf("the function made again: %d %s", r.status, r.body)
		}
	}
	if r := s.do("GET", "/api/v1/functions/gone/versions", s.token, nil, nil); r.status != 200 || strings.Count(string(r.body), `"version"`) != 1 {
		t.Fatalf("versions of the function made again: %d %s", r.status, r.body)
	}
}

// since returns what was written to b from off on, and where it ends.
func (s *syncBuffer) since(off int) (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b.Bytes()[off:]), s.b.Len()
}

// scaledDown watches s's log for the autoscaler's "scaling down" lines
// and sends, on the channel of the function each names, when it saw one.
func (s *server) scaledDown(t *testing.T, fns ...string) map[string]chan time.Time {
	chans := map[string]chan time.Time{}
	for _, fn := range fns {
		chans[fn] = make(chan time.Time, 64)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		off, partial := 0, ""
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			var more string
			more, off = s.logs.since(off)
			more = partial + more
			i := strings.LastIndexByte(more, '\n')
			partial = more[i+1:]
			now := time.Now()
			for _, l := range strings.Split(more[:i+1], "\n") {
				if !strings.Contains(l, "scaling down") {
					continue
				}
				for fn, ch := range chans {
					if strings.Contains(l, " function="+fn+" ") {
						select {
						case ch <- now:
						default:
						}
					}
				}
			}
		}
	}()
	return chans
}

// TestScaleToZeroRace: with a short scale-to-zero grace and ticks every
// 20 ms, requests come at jittered times around the moment the last
// instance is stopped (learnt from the server's log), many times over:
// each gets its answer (from the instance, or from a new one started for
// it), never a 502 or a reset.
func TestScaleToZeroRace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		auth  bool
	}{
		{name: "lane"},
		{name: "private (no lane)", auth: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, append([]string{"--scale-to-zero-after", "100ms", "--autoscale-window", "1s"}, tc.flags...)...)
			var auth map[string]string
			if tc.auth {
				auth = map[string]string{"Authorization": "Bearer " + s.token}
			}
			var fns []string
			for i := 0; i < 6; i++ {
				fns = append(fns, fmt.Sprintf("nap%d", i))
				s.deployCode(t, fns[i], []byte(`export default { fetch(req, ctx) { return new Response("v" + ctx.version); } }`), "")
			}
			downs := s.scaledDown(t, fns...)
			client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 15 * time.Second}
			defer client.CloseIdleConnections()
			var mu sync.Mutex
			var shots []shot
			var wg sync.WaitGroup
			end := time.Now().Add(5 * time.Second)
			for _, fn := range fns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					shoot := func() shot {
						h := shoot(client, s.url+"/fn/admin/"+fn+"/", auth)
						mu.Lock()
						shots = append(shots, h)
						mu.Unlock()
						return h
					}
					// The first stop: how long after a request it comes.
					h := shoot()
					var gap time.Duration
					select {
					case at := <-downs[fn]:
						gap = at.Sub(h.end)
					case <-time.After(5 * time.Second):
						return
					}
					for time.Now().Before(end) {
						h := shoot()
						time.Sleep(time.Until(h.end.Add(gap + time.Duration(rand.IntN(40)-25)*time.Millisecond)))
						for len(downs[fn]) > 0 {
							<-downs[fn]
						}
					}
				}()
			}
			wg.Wait()
			var bad []string
			var slowest time.Duration
			for _, h := range shots {
				if h.err != nil || h.status != 200 || h.body != "v1" {
					bad = append(bad, h.String())
				}
				slowest = max(slowest, h.end.Sub(h.start))
			}
			cold := s.metric(t, "spry_cold_starts_total{", `result="ok"`)
			t.Logf("%v cold starts in %d requests; the slowest answer took %v", cold, len(shots), slowest.Round(time.Millisecond))
			if cold < 10 {
				t.Errorf("only %v cold starts: the race was not run", cold)
			}
			report(t, tc.name, shots, bad)
		})
	}
}

// TestIdleThrottleRace: with the idle CPU throttle after 50 ms, requests
// come at jittered times across it: each is answered, at full speed.
func TestIdleThrottleRace(t *testing.T) {
	for _, auth := range []bool{false, true} {
		t.Run(fmt.Sprint("private=", auth), func(t *testing.T) {
			s := startServer(t, "--idle-cpu-after", "50ms", "--autoscale-window", "1s")
			s.deployCode(t, "nap", []byte(`export default { fetch(req, ctx) { return new Response("v" + ctx.version); } }`), "")
			var hdr map[string]string
			if auth {
				hdr = map[string]string{"Authorization": "Bearer " + s.token}
			}
			load := s.drive(t, 2, "/fn/admin/nap/", hdr, func() time.Duration { return time.Duration(10+rand.IntN(110)) * time.Millisecond })
			time.Sleep(3 * time.Second)
			shots := load.end()
			var bad []string
			var slowest time.Duration
			for _, h := range shots {
				if h.err != nil || h.status != 200 || h.body != "v1" {
					bad = append(bad, h.String())
				}
				slowest = max(slowest, h.end.Sub(h.start))
			}
			t.Logf("the slowest answer took %v", slowest.Round(time.Millisecond))
			report(t, "idle throttle", shots, bad)
		})
	}
}

// TestCrashUnderLoad: an instance that ends (Deno.exit) on some requests
// while others are in flight on it: those get the documented 502
// function_failed (never a reset, a hang or another error), the rest are
// answered, and once the crashes stop every request is.
func TestCrashUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		auth  bool
	}{
		{name: "lane"},
		{name: "private", auth: true},
		{name: "no lane", flags: []string{"--router-loops", "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, tc.flags...)
			s.deployCode(t, "crashy", []byte(`export default { async fetch(req) {
				if (new URL(req.url).pathname === "/crash") {
					await new Promise((r) => setTimeout(r, 10));
					Deno.exit(3);
				}
				await new Promise((r) => setTimeout(r, 20));
				return new Response("ok");
			} }`), "concurrency=8")
			var hdr map[string]string
			if tc.auth {
				hdr = map[string]string{"Authorization": "Bearer " + s.token}
			}
			load := s.drive(t, 16, "/fn/admin/crashy/", hdr, nil)
			var crashes []shot
			for i := 0; i < 10; i++ {
				time.Sleep(150 * time.Millisecond)
				crashes = append(crashes, shoot(http.DefaultClient, s.url+"/fn/admin/crashy/crash", hdr))
			}
			lastCrash := time.Now()
			time.Sleep(time.Second)
			shots := load.end()
			var bad []string
			failed := 0
			for _, h := range crashes {
				if h.err != nil || h.status != 502 || h.code != "function_failed" {
					bad = append(bad, h.String()+" (a crash)")
				}
			}
			for _, h := range shots {
				switch {
				case h.err != nil || h.end.Sub(h.start) > 5*time.Second:
					bad = append(bad, h.String())
				case h.status == 200 && h.body == "ok":
				case h.status == 502 && h.code == "function_failed" && h.start.Before(lastCrash):
					failed++
				default:
					bad = append(bad, h.String())
				}
			}
			t.Logf("%d requests in flight on a crashing instance got 502", failed)
			report(t, "crashes", append(shots, crashes...), bad)
		})
	}
}

// TestAccessUnderLoad: a public function made private under traffic
// that carries no token: once the PATCH has returned, no request is
// answered by the function (401, on either router path), and once it is
// public again every one is. A version deleted (@1) and a tag removed
// under traffic answer 404 once the call has returned, and a request
// in flight across a deploy and a change of memory is answered whole by
// the version it started on.
func TestAccessUnderLoad(t *testing.T) {
	for _, flags := range [][]string{nil, {"--router-loops", "0"}} {
		t.Run(fmt.Sprint("flags=", flags), func(t *testing.T) {
			s := startServer(t, flags...)
			s.deployCode(t, "door", []byte(`export default { async fetch(req, ctx) {
				const ms = Number(new URL(req.url).searchParams.get("ms") ?? 2);
				await new Promise((r) => setTimeout(r, ms));
				return new Response("v" + ctx.version);
			} }`), "")
			api := "/api/v1/functions/door"
			if r := s.do("PUT", api+"/tags/old", s.token, strings.NewReader(`{"version":1}`), nil); r.status != 200 {
				t.Fatalf("tag: %d %s", r.status, r.body)
			}
			// A request in flight across two changes.
			long := make(chan shot, 1)
			go func() { long <- shoot(http.DefaultClient, s.url+"/fn/admin/door/?ms=1500", nil) }()
			time.Sleep(200 * time.Millisecond)
			anon := s.drive(t, 16, "/fn/admin/door/", nil, nil)
			tagged := s.drive(t, 4, "/fn/admin/door@old/", nil, nil)
			byNumber := s.drive(t, 4, "/fn/admin/door@1/", nil, nil)
			patch := func(body string) (time.Time, time.Time) {
				t.Helper()
				sent := time.Now()
				if r := s.do("PATCH", api, s.token, strings.NewReader(body), nil); r.status != 200 {
					t.Fatalf("PATCH %s: %d %s", body, r.status, r.body)
				}
				return sent, time.Now()
			}
			time.Sleep(200 * time.Millisecond)
			patch(`{"memory":"256Mi"}`) // v2
			time.Sleep(200 * time.Millisecond)
			privSent, priv := patch(`{"access":"private"}`) // v3
			time.Sleep(300 * time.Millisecond)
			pubSent, pub := patch(`{"access":"public"}`) // v4
			time.Sleep(300 * time.Millisecond)
			untagSent := time.Now()
			if r := s.do("DELETE", api+"/tags/old", s.token, nil, nil); r.status/100 != 2 {
				t.Fatalf("untag: %d %s", r.status, r.body)
			}
			untag := time.Now()
			time.Sleep(200 * time.Millisecond)
			rmSent := time.Now()
			if r := s.do("DELETE", api+"/versions/1", s.token, nil, nil); r.status != 204 {
				t.Fatalf("versions rm: %d %s", r.status, r.body)
			}
			rm := time.Now()
			time.Sleep(300 * time.Millisecond)
			if h := <-long; h.err != nil || h.status != 200 || h.body != "v1" {
				t.Errorf("the request in flight across a deploy and a change of memory: %v", h)
			}

			var bad []string
			shots := anon.end()
			for _, h := range shots {
				private := h.start.After(priv) && h.end.Before(pubSent)
				public := h.end.Before(privSent) || h.start.After(pub)
				switch {
				case h.err != nil:
					bad = append(bad, h.String())
				case h.status == 200 && private:
					bad = append(bad, h.String()+" (answered by the function while it was private)")
				case h.status == 401 && public:
					bad = append(bad, h.String()+" (refused while the function was public)")
				case h.status != 200 && h.status != 401:
					bad = append(bad, h.String())
				}
			}
			report(t, "access", shots, bad)
			gone := func(what string, shots []shot, sent, done time.Time) {
				t.Helper()
				var bad []string
				for _, h := range shots {
					switch {
					case h.err != nil:
						bad = append(bad, h.String())
					case h.start.After(done) && (h.status != 404 || h.code != "not_found"):
						bad = append(bad, h.String()+" (sent once it was gone)")
					case h.end.Before(sent) && h.status != 200 && h.status != 401:
						bad = append(bad, h.String()+" (before it went)")
					}
				}
				report(t, what, shots, bad)
			}
			gone("@old", tagged.end(), untagSent, untag)
			gone("@1", byNumber.end(), rmSent, rm)
		})
	}
}

// TestRecreateUnderLoad: traffic goes on while a function is deleted and
// deployed again under its name, ten times: once the deploy has
// returned, every request is answered by the new function; in between,
// 404 (or the 502 of a request in flight on an instance the delete
// ended). And a crash while requests queue for the only instance
// (max 1): the queued ones are served by the next instance.
func TestRecreateUnderLoad(t *testing.T) {
	s := startServer(t)
	code := func(n int) []byte {
		return []byte(fmt.Sprintf(`export default { async fetch(req, ctx) {
			if (new URL(req.url).pathname === "/crash") Deno.exit(3);
			await new Promise((r) => setTimeout(r, 10));
			return new Response("life %d v" + ctx.version);
		} }`, n))
	}
	s.deployCode(t, "phoenix", code(0), "")
	load := s.drive(t, 16, "/fn/admin/phoenix/", nil, nil)
	type life struct{ deleted, made time.Time }
	var lives []life
	for n := 1; n <= 10; n++ {
		time.Sleep(100 * time.Millisecond)
		deleted := time.Now() // its effect may be seen before it returns
		if r := s.do("DELETE", "/api/v1/functions/phoenix", s.token, nil, nil); r.status != 204 {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
		if n%2 == 0 {
			time.Sleep(50 * time.Millisecond) // some requests find nothing
		}
		s.deployCode(t, "phoenix", code(n), "")
		lives = append(lives, life{deleted, time.Now()})
	}
	time.Sleep(200 * time.Millisecond)
	shots := load.end()
	var bad []string
	for _, h := range shots {
		// The life a request started in: the last made before it.
		n := 0
		for i, l := range lives {
			if l.made.Before(h.start) {
				n = i + 1
			}
		}
		want := fmt.Sprintf("life %d v1", n)
		switch {
		case h.err != nil:
			bad = append(bad, h.String())
		case h.status == 200 && h.body == want:
		case h.status == 200 && n < len(lives) && h.body == fmt.Sprintf("life %d v1", n+1) && lives[n].deleted.Before(h.end):
		case (h.status == 404 && h.code == "not_found" || h.status == 502) && n < len(lives) && lives[n].deleted.Before(h.end):
		default:
			bad = append(bad, fmt.Sprintf("%v (want %q)", h, want))
		}
	}
	report(t, "re-created", shots, bad)

	// A crash while requests queue for the one instance.
	s.deployCode(t, "single", code(0), "max=1&concurrency=2")
	load = s.drive(t, 16, "/fn/admin/single/", nil, nil)
	var crashes []shot
	for i := 0; i < 5; i++ {
		time.Sleep(200 * time.Millisecond)
		crashes = append(crashes, shoot(http.DefaultClient, s.url+"/fn/admin/single/crash", nil))
	}
	last := time.Now()
	time.Sleep(500 * time.Millisecond)
	shots = load.end()
	bad = nil
	for _, h := range crashes {
		if h.status != 502 || h.code != "function_failed" {
			bad = append(bad, h.String()+" (a crash)")
		}
	}
	for _, h := range shots {
		switch {
		case h.err != nil:
			bad = append(bad, h.String())
		case h.status == 200 && h.body == "life 0 v1":
		case h.status == 502 && h.code == "function_failed" && h.start.Before(last):
		default:
			bad = append(bad, h.String())
		}
	}
	report(t, "crashes at max 1", shots, bad)
}
