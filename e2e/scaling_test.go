package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// metric sums the samples of a metric whose line starts with prefix
// (name and label selectors in the text format).
func (s *server) metric(t *testing.T, prefix string, match ...string) float64 {
	t.Helper()
	r := s.do("GET", "/metrics", s.token, nil, nil)
	if r.status != 200 {
		t.Fatalf("metrics: %d %s", r.status, r.body)
	}
	sum := 0.0
lines:
	for _, l := range strings.Split(string(r.body), "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		for _, m := range match {
			if !strings.Contains(l, m) {
				continue lines
			}
		}
		f := strings.Fields(l)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func (s *server) running(t *testing.T, fn string) int {
	return int(s.metric(t, "spry_instances{", `function="`+fn+`"`, `state="busy"`) + s.metric(t, "spry_instances{", `function="`+fn+`"`, `state="idle"`))
}

// TestColdStartSharedAndMetrics: concurrent first requests share one cold
// start, the cold request says so in a header, and /metrics has the
// metrics the platform promises (for the admin only).
func TestColdStartSharedAndMetrics(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "shared", []byte(`export default { async fetch() { await new Promise((r) => setTimeout(r, 50)); return new Response("ok"); } }`), "concurrency=50")
	var wg sync.WaitGroup
	var cold atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := http.Get(s.url + "/fn/admin/shared/")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				t.Errorf("status %d", res.StatusCode)
			}
			if res.Header.Get("Spry-Cold-Start") != "" {
				cold.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := s.metric(t, "spry_cold_starts_total{", `function="shared"`); n != 1 {
		t.Fatalf("%v cold starts for 20 concurrent first requests, want 1", n)
	}
	if cold.Load() == 0 {
		t.Fatal("no response carried Spry-Cold-Start")
	}
	// The first requests waited for a cold start, on the goroutine-per-
	// connection path; with the instance up, the event loops serve.
	if n := s.metric(t, "spry_router_handoffs_total{", `reason="no_capacity"`); n < 1 {
		t.Errorf("%v connections handed over for want of an instance, want at least 1", n)
	}
	loop0 := s.metric(t, "spry_router_loop_requests_total")
	fresh := &http.Client{Transport: &http.Transport{}}
	defer fresh.CloseIdleConnections()
	for i := 0; i < 5; i++ {
		res, err := fresh.Get(s.url + "/fn/admin/shared/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	if n := s.metric(t, "spry_router_loop_requests_total") - loop0; n != 5 {
		t.Errorf("the event loops served %v of 5 requests to a warm instance", n)
	}
	if n := s.metric(t, "spry_router_taken_back_total"); n < 1 {
		t.Errorf("%v connections came back to the event loops after a cold start", n)
	}
	for _, name := range []string{
		`spry_invocations_total{code="200",function="shared",owner="admin"} 25`,
		"spry_invocation_duration_seconds_bucket{",
		"spry_cold_start_duration_seconds_bucket{",
		"spry_instances{",
		"spry_pool_idle{runtime=\"deno\"}",
		"spry_queue_depth 0",
		"spry_log_lines_dropped_total 0",
		"spry_memory_evictions_total 0",
	} {
		if !strings.Contains(string(s.do("GET", "/metrics", s.token, nil, nil).body), name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	alice := strings.TrimSpace(s.mustSpry("user", "create", "alice"))
	if r := s.do("GET", "/metrics", alice, nil, nil); r.status != 403 {
		t.Errorf("a non-admin read metrics: %d", r.status)
	}
	if r := s.get("/metrics"); r.status != 401 {
		t.Errorf("metrics without a token: %d", r.status)
	}
	// A deleted function's series go with it, once its instances have
	// stopped (until then they count as stopping).
	s.mustSpry("rm", "shared")
	eventually(t, 5*time.Second, "the deleted function's series to go", func() bool {
		return !strings.Contains(string(s.do("GET", "/metrics", s.token, nil, nil).body), `function="shared"`)
	})
}

// TestScaleUpAndDownToZero: under load an instance's concurrency limit
// makes more instances start; after the load they go, down to zero after
// the grace; the next request comes back with a cold start.
func TestScaleUpAndDownToZero(t *testing.T) {
	s := startServer(t, "--autoscale-window", "2s", "--scale-to-zero-after", "2s")
	s.deployCode(t, "busy", []byte(`export default { async fetch() { await new Promise((r) => setTimeout(r, 20)); return new Response("ok"); } }`), "concurrency=2&max=10")
	stop := make(chan struct{})
	var failures atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := http.Get(s.url + "/fn/admin/busy/")
				if err != nil || res.StatusCode != 200 {
					failures.Add(1)
				}
				if err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}
		}()
	}
	peak := 0
	eventually(t, 15*time.Second, "at least 6 instances under 12 concurrent requests at concurrency 2", func() bool {
		peak = max(peak, s.running(t, "busy"))
		return peak >= 6
	})
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d requests failed while scaling up", f)
	}
	if n := s.running(t, "busy"); n > 10 {
		t.Fatalf("%d instances, above max 10", n)
	}
	eventually(t, 30*time.Second, "scale to zero after the load", func() bool { return s.running(t, "busy") == 0 })
	r := s.get("/fn/admin/busy/")
	if r.status != 200 || r.header.Get("Spry-Cold-Start") == "" {
		t.Fatalf("after zero: %d, cold start header %q", r.status, r.header.Get("Spry-Cold-Start"))
	}
}

// TestOverloadAndTimeouts: with max instances busy and the queue full,
// requests get 503 with Retry-After at once while queued ones are served;
// a request past the function's timeout gets 504; nothing hangs.
func TestOverloadAndTimeouts(t *testing.T) {
	s := startServer(t, "--queue-size", "2")
	code := []byte(`export default { async fetch(req) {
		const ms = Number(new URL(req.url).searchParams.get("ms") ?? "0");
		await new Promise((r) => setTimeout(r, ms));
		return new Response("done");
	} }`)
	s.deployCode(t, "jam", code, "concurrency=1&max=1&timeout=5s")
	if r := s.get("/fn/admin/jam/"); r.status != 200 {
		t.Fatalf("warm-up: %d", r.status)
	}
	type result struct {
		status     int
		retryAfter string
		took       time.Duration
	}
	call := func(path string, results chan<- result) {
		t0 := time.Now()
		c := &http.Client{Timeout: 20 * time.Second}
		res, err := c.Get(s.url + path)
		if err != nil {
			results <- result{status: -1, took: time.Since(t0)}
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		results <- result{res.StatusCode, res.Header.Get("Retry-After"), time.Since(t0)}
	}
	// One runs, two wait in the queue (and are served in turn), three are
	// refused at once.
	results := make(chan result, 6)
	for i := 0; i < 6; i++ {
		go call("/fn/admin/jam/?ms=600", results)
		time.Sleep(50 * time.Millisecond)
	}
	counts := map[int]int{}
	for i := 0; i < 6; i++ {
		r := <-results
		counts[r.status]++
		if r.status == 503 && (r.retryAfter == "" || r.took > time.Second) {
			t.Errorf("503 after %v with Retry-After %q: want at once, with Retry-After", r.took, r.retryAfter)
		}
		if r.took > 5*time.Second {
			t.Errorf("a request took %v: something hung", r.took)
		}
	}
	if counts[503] != 3 || counts[200] != 3 {
		t.Fatalf("statuses %v, want 3x200 and 3x503", counts)
	}

	// Past its timeout an invocation gets 504 (and its instance, which may
	// be stuck, is replaced).
	s.deployCode(t, "stuck", code, "timeout=1s")
	one := make(chan result, 1)
	call("/fn/admin/stuck/?ms=3000", one)
	if r := <-one; r.status != 504 || r.took > 3*time.Second {
		t.Fatalf("slow invocation: %d after %v, want 504 after about 1s", r.status, r.took)
	}
	if r := s.get("/fn/admin/stuck/"); r.status != 200 {
		t.Fatalf("after a timeout: %d", r.status)
	}
	if r := s.get("/healthz"); r.status != 200 {
		t.Fatal("unhealthy after overload")
	}
}

// TestTimeoutSparesAHealthyInstance: a request past its timeout gets 504
// without ending the other requests its instance serves, when the
// instance still answers (the function waits on something, its event
// loop runs); one whose handler holds the event loop gets 504 and its
// instance is replaced. Both runtimes.
func TestTimeoutSparesAHealthyInstance(t *testing.T) {
	s := startServer(t)
	// Each instance answers with an id of its own.
	code := []byte(`const id = crypto.randomUUID();
	export default { async fetch(req) {
		const q = new URL(req.url).searchParams;
		if (q.has("spin")) for (;;) {}
		await new Promise((r) => setTimeout(r, Number(q.get("ms") ?? "0")));
		return new Response(id);
	} }`)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "patient-" + rt
			s.deployCode(t, name, code, "timeout=1s&concurrency=4&max=1&runtime="+rt)
			path := "/fn/admin/" + name + "/"
			first := s.get(path)
			if first.status != 200 {
				t.Fatalf("warm-up: %d %s", first.status, first.body)
			}
			slow, fine := make(chan response, 1), make(chan response, 1)
			go func() { slow <- s.get(path + "?ms=5000") }()
			time.Sleep(500 * time.Millisecond)
			// In flight when the slow one times out, done 0.3 s after.
			go func() { fine <- s.get(path + "?ms=800") }()
			if r := <-slow; r.status != 504 {
				t.Fatalf("slow request: %d %s, want 504", r.status, r.body)
			}
			if r := <-fine; r.status != 200 {
				t.Fatalf("a request in flight beside the one that timed out: %d %s, want 200", r.status, r.body)
			}
			if r := s.get(path); r.status != 200 || string(r.body) != string(first.body) {
				t.Fatalf("next request: %d from instance %s, want 200 from the same instance %s", r.status, r.body, first.body)
			}
			// A handler that holds the event loop: its instance does not
			// answer the probe, and is replaced (requests meanwhile wait
			// for it, at max 1, and may time out).
			if r := s.get(path + "?spin=1"); r.status != 504 {
				t.Fatalf("spinning request: %d %s, want 504", r.status, r.body)
			}
			var r response
			eventually(t, 15*time.Second, "an answer after the stuck instance", func() bool {
				r = s.get(path)
				return r.status == 200
			})
			if string(r.body) == string(first.body) {
				t.Fatal("the stuck instance served again: want a new one")
			}
		})
	}
}

// TestMinInstancesKeptWarm: min instances start without a request and
// stay through idle time and a restart; the first request is warm; min 0
// lets the function scale to zero again.
func TestMinInstancesKeptWarm(t *testing.T) {
	s := startServer(t, "--scale-to-zero-after", "1s", "--autoscale-window", "1s")
	s.deployCode(t, "warm", example(t, "hello.ts"), "min=2")
	eventually(t, 10*time.Second, "two warm instances", func() bool { return s.running(t, "warm") == 2 })
	time.Sleep(3 * time.Second) // well past the grace and the window
	if n := s.running(t, "warm"); n != 2 {
		t.Fatalf("%d instances after idling, want min 2", n)
	}
	r := s.get("/fn/admin/warm/?name=x")
	if r.status != 200 || r.header.Get("Spry-Cold-Start") != "" {
		t.Fatalf("first request: %d, cold start %q", r.status, r.header.Get("Spry-Cold-Start"))
	}
	// Kept across a restart too.
	s.restart()
	eventually(t, 10*time.Second, "two warm instances after a restart", func() bool { return s.running(t, "warm") == 2 })
	// And min 0 undoes it: the function scales to zero again.
	s.mustSpry("config", "warm", "--min", "0")
	eventually(t, 10*time.Second, "no instance once min is 0", func() bool { return s.running(t, "warm") == 0 })
}

// TestInstanceQuotaPerUser: a user's functions together run no more
// instances than --max-instances-per-user; past it a function with no
// instance gets 429 with Retry-After, never a hang, and a stopped
// instance gives its place back.
func TestInstanceQuotaPerUser(t *testing.T) {
	s := startServer(t, "--max-instances-per-user", "1")
	for _, name := range []string{"first", "second"} {
		if r := s.putCode(s.token, name, example(t, "hello.ts"), ""); r.status != 201 {
			t.Fatalf("deploy %s: %d %s", name, r.status, r.body)
		}
	}
	if r := s.get("/fn/admin/first/?name=a"); r.status != 200 {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	r := s.get("/fn/admin/second/?name=b")
	if r.status != 429 || r.header.Get("Retry-After") == "" || r.errorCode(t) != "rate_limited" || !strings.Contains(string(r.body), "max-instances-per-user") {
		t.Fatalf("over the quota: %d %v %s", r.status, r.header, r.body)
	}
	// Deleting first stops its instance; second may start then.
	s.mustSpry("rm", "first")
	eventually(t, 10*time.Second, "second served once first's instance stopped", func() bool {
		return s.get("/fn/admin/second/?name=b").status == 200
	})
}

// TestMemoryQuotaPerUser: the memory limits of a user's instances add up
// to at most --max-memory-per-user; past it a start gets 429 with
// Retry-After, counted as a failed cold start, and a stopped instance
// gives its memory back. A function that could never fit is refused at
// deploy.
func TestMemoryQuotaPerUser(t *testing.T) {
	s := startServer(t, "--max-memory-per-user", "384Mi")
	if r := s.putCode(s.token, "huge", example(t, "hello.ts"), "memory=512Mi"); r.status != 400 || r.errorCode(t) != "invalid_argument" || !strings.Contains(string(r.body), "max-memory-per-user") {
		t.Fatalf("deploy of a function over the budget alone: %d %s", r.status, r.body)
	}
	s.deployCode(t, "first", example(t, "hello.ts"), "memory=256Mi")
	s.deployCode(t, "second", example(t, "hello.ts"), "memory=256Mi")
	if r := s.get("/fn/admin/first/?name=a"); r.status != 200 {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	r := s.get("/fn/admin/second/?name=b")
	if r.status != 429 || r.header.Get("Retry-After") == "" || r.errorCode(t) != "rate_limited" || !strings.Contains(string(r.body), "max-memory-per-user") {
		t.Fatalf("over the budget: %d %v %s", r.status, r.header, r.body)
	}
	if n := s.metric(t, "spry_cold_starts_total{", `function="second"`, `result="error"`); n != 1 {
		t.Fatalf("%v failed cold starts of second, want 1", n)
	}
	s.mustSpry("rm", "first")
	eventually(t, 10*time.Second, "second served once first's instance stopped", func() bool {
		return s.get("/fn/admin/second/?name=b").status == 200
	})
}

// TestMemoryReserve: with the host's available memory below
// --memory-reserve, a request's cold start first stops other functions'
// idle instances, and, that not being enough, gets 503 with Retry-After,
// never a hang; with memory back, it is served. The test takes the
// memory itself: 2 GiB held below a reserve set 1 GiB under what was
// available.
func TestMemoryReserve(t *testing.T) {
	avail := memAvailable(t)
	if avail < 4<<30 {
		t.Skipf("%d MiB available; the test takes 2 GiB and leaves 1 GiB of margin on each side", avail>>20)
	}
	s := startServer(t, "--memory-reserve", strconv.FormatUint((avail-1<<30)>>20, 10))
	for _, name := range []string{"first", "second"} {
		s.deployCode(t, name, example(t, "hello.ts"), "")
	}
	if r := s.get("/fn/admin/first/?name=a"); r.status != 200 {
		t.Fatalf("first, with room: %d %s", r.status, r.body)
	}
	// 2 GiB, resident (MAP_POPULATE) and off the Go heap.
	ballast, err := syscall.Mmap(-1, 0, 2<<30, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(ballast)
	if now := memAvailable(t); now >= avail-1<<30 {
		t.Fatalf("%d MiB available with the ballast held, %d before", now>>20, avail>>20)
	}
	r := s.get("/fn/admin/second/?name=b")
	if r.status != 503 || r.header.Get("Retry-After") == "" || r.errorCode(t) != "unavailable" || !strings.Contains(string(r.body), "short of memory") {
		t.Fatalf("short of memory: %d %v %s", r.status, r.header, r.body)
	}
	if n := s.metric(t, "spry_memory_evictions_total"); n != 1 {
		t.Errorf("%v instances stopped for room, want first's 1", n)
	}
	if n := s.running(t, "first"); n != 0 {
		t.Errorf("first has %d instances running, want its idle one stopped", n)
	}
	if err := syscall.Munmap(ballast); err != nil {
		t.Fatal(err)
	}
	if r := s.get("/fn/admin/second/?name=b"); r.status != 200 {
		t.Fatalf("second, with room again: %d %s", r.status, r.body)
	}
}

// memAvailable reads the host's MemAvailable, in bytes.
func memAvailable(t *testing.T) uint64 { return meminfo(t, "MemAvailable") }

// memTotal reads the host's MemTotal, in bytes.
func memTotal(t *testing.T) uint64 { return meminfo(t, "MemTotal") }

// meminfo reads one of /proc/meminfo's sizes, in bytes.
func meminfo(t *testing.T, key string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == key+":" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/meminfo", key)
	return 0
}

// TestFunctionQuotaPerUser: a user has no more functions than
// --max-functions-per-user. One more is refused with 403 quota_exceeded
// and nothing stored changes; a new version of an existing function is
// not a new function; other users have their own count; deleting one
// makes room.
func TestFunctionQuotaPerUser(t *testing.T) {
	s := startServer(t, "--max-functions-per-user", "2")
	code := example(t, "hello.ts")
	for _, name := range []string{"a", "b"} {
		if r := s.putCode(s.token, name, code, ""); r.status != 201 {
			t.Fatalf("deploy %s: %d %s", name, r.status, r.body)
		}
	}
	r := s.putCode(s.token, "c", code, "")
	if r.status != 403 || r.errorCode(t) != "quota_exceeded" || !strings.Contains(string(r.body), "max-functions-per-user") {
		t.Fatalf("a third function: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/api/v1/functions/c", s.token, nil, nil); r.status != 404 {
		t.Fatalf("the refused function exists: %d %s", r.status, r.body)
	}
	if r := s.putCode(s.token, "a", code, ""); r.status/100 != 2 {
		t.Fatalf("a new version of a: %d %s", r.status, r.body)
	}
	alice := strings.TrimSpace(s.mustSpry("user", "create", "alice"))
	if r := s.putCode(alice, "c", code, ""); r.status != 201 {
		t.Fatalf("alice's first function: %d %s", r.status, r.body)
	}
	s.mustSpry("rm", "b")
	if r := s.putCode(s.token, "c", code, ""); r.status != 201 {
		t.Fatalf("a function after deleting one: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/c/?name=q"); r.status != 200 {
		t.Fatalf("the new function: %d %s", r.status, r.body)
	}
}

// TestInstanceAtHighConcurrency: one instance holds as many requests at
// once as its concurrency allows, even when they come faster than it
// accepts them. Each holds a connection from the router, so the
// instance's open-file limit must cover them (Deno ends on "Too many open
// files"); and while the function blocks its event loop the instance's
// listen queue fills, which must not fail requests or condemn the
// instance.
func TestInstanceAtHighConcurrency(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { async fetch(req) {
		if (new URL(req.url).searchParams.has("block")) {
			const end = Date.now() + 1500;
			while (Date.now() < end) {}
		}
		await new Promise((r) => setTimeout(r, 300));
		return new Response("done");
	} }`)
	s.deployCode(t, "wide", code, "concurrency=2000&max=1&min=1&memory=512Mi")
	if r := s.get("/fn/admin/wide/"); r.status != 200 {
		t.Fatalf("warm-up: %d", r.status)
	}
	const n = 1500
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[int]int{}
	call := func(path string) {
		defer wg.Done()
		status := -1
		if res, err := c.Get(s.url + path); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			status = res.StatusCode
		}
		mu.Lock()
		counts[status]++
		mu.Unlock()
	}
	wg.Add(1)
	go call("/fn/admin/wide/?block")
	time.Sleep(200 * time.Millisecond) // the function is blocking now
	for i := 0; i < n; i++ {
		wg.Add(1)
		go call("/fn/admin/wide/")
	}
	wg.Wait()
	if counts[200] != n+1 {
		t.Fatalf("statuses %v, want %d x 200", counts, n+1)
	}
	if got := s.metric(t, "spry_cold_starts_total{", `function="wide"`); got != 1 {
		t.Errorf("%v cold starts, want 1: the instance was replaced", got)
	}
}

// TestIdleInstanceIsThrottled: what a function goes on doing with no
// request in flight (here a worker spinning for ever) gets a second at
// full speed, then 5% of a CPU until its next request, which it answers
// as before.
func TestIdleInstanceIsThrottled(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "spinner", []byte(`
		const w = new Worker("data:text/javascript,for(;;){}", { type: "module" });
		export default { fetch() { return new Response("ok"); } };`), "")
	if r := s.get("/fn/admin/spinner/"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	time.Sleep(2500 * time.Millisecond) // past IdleAfter and the next tick
	t0 := s.sandboxCPU(t)
	time.Sleep(2 * time.Second)
	used := s.sandboxCPU(t) - t0
	if used > 300*time.Millisecond {
		t.Errorf("an idle instance used %v of CPU in 2s", used)
	}
	t.Logf("idle instance used %v of CPU in 2s", used)
	if r := s.get("/fn/admin/spinner/"); r.status != 200 || string(r.body) != "ok" {
		t.Fatalf("after idling: %d %s", r.status, r.body)
	}
}

// sandboxCPU is the CPU time the server's sandbox processes have used.
func (s *server) sandboxCPU(t *testing.T) time.Duration {
	t.Helper()
	var ticks int64
	for _, p := range s.sandboxProcs() {
		var pid int
		if _, err := fmt.Sscanf(p, "pid %d", &pid); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // it ended
		}
		// Fields after the command (which may hold spaces), from state:
		// utime and stime are the 12th and 13th.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		for _, i := range []int{11, 12} {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}
