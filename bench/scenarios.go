package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const helloBody = "Hello world"

// trivCode answers the 11 bytes "Hello world".
const trivCode = `export default { fetch() { return new Response("Hello world"); } };` + "\n"

// distinctCode is a trivial function whose bundle differs per id (so each
// has its own digest) but whose answer is the same 11 bytes.
func distinctCode(id string) string {
	return fmt.Sprintf("const ID = %q;\nexport default { fetch() { return new Response(\"Hello world\", { headers: { \"x-fn\": ID } }); } };\n", id)
}

// stepCode takes about 5 ms per request (a timer), so concurrency matters.
const stepCode = `export default {
  async fetch() {
    await new Promise((resolve) => setTimeout(resolve, 5));
    return new Response("Hello world");
  },
};
`

func uidBaseFor(scenario int) int { return 5100000 + scenario*20000 }

// jnum is a float that encodes NaN and infinities as JSON null.
type jnum float64

func (j jnum) MarshalJSON() ([]byte, error) {
	f := float64(j)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'f', -1, 64), nil
}

func stats(xs []float64) map[string]any {
	return map[string]any{
		"n": len(xs), "p50": jnum(percentile(xs, 50)), "p90": jnum(percentile(xs, 90)),
		"p99": jnum(percentile(xs, 99)), "max": jnum(percentile(xs, 100)), "mean": jnum(mean(xs)),
	}
}

func ratioPtr(r float64) *float64 { return &r }

func paren(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func verdict(ok bool) string {
	if ok {
		return pass
	}
	return miss
}

// ---------------------------------------------------------------------
// Scenarios 1 and 2: warm throughput and latency, spry vs nginx; and
// scenario 9, the same over TLS.

// warmCase is one run of the warm comparison: one spry serve, one
// function instance both spry and nginx send to, throughput at 32
// connections and latency at one, each side's rounds alternated.
type warmCase struct {
	label   string // the spry server's label and the details key
	uidBase int
	tls     *benchTLS // nil: plain HTTP
	tput    string    // scenario of the throughput rows; "" skips them
	lat     string    // scenario of the latency rows; "" skips them
	shared  string    // scenario of the rows about the server both share
	// informational rows have no target: INFO, or INVALID when wrk saw
	// errors.
	informational bool
	spryName      string // the metric naming spry's side
	nginxName     string // the metric naming nginx's side
}

func scenWarm(ctx context.Context, env *benchEnv, do1, do2 bool) error {
	wc := warmCase{label: "warm", uidBase: uidBaseFor(1), shared: "1+2 warm (shared server)",
		spryName: "spry router /fn/admin/triv/", nginxName: "nginx 1 worker -> same Deno socket"}
	if do1 {
		wc.tput = "1 warm throughput"
	}
	if do2 {
		wc.lat = "2 warm latency"
	}
	return runWarm(ctx, env, wc)
}

// scenWarmTLS is scenario 9: scenarios 1 and 2 with spry serve
// --tls-cert/--tls-key and nginx `listen ... ssl` serving one
// certificate, to measure the path every request takes over TLS
// (fasthttp's goroutine per connection, not the router's loops).
func scenWarmTLS(ctx context.Context, env *benchEnv) error {
	tlsc, err := makeTLS(filepath.Join(env.tmp, "tls"))
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	return runWarm(ctx, env, warmCase{label: "warm-tls", uidBase: uidBaseFor(9), tls: tlsc,
		tput: "9 TLS warm throughput", lat: "9 TLS warm latency", shared: scenarioName(9), informational: true,
		spryName: "spry router over TLS", nginxName: "nginx 1 worker, listen ssl -> same Deno socket"})
}

func runWarm(ctx context.Context, env *benchEnv, wc warmCase) error {
	// nginx sends its rounds to the instance directly, past the
	// activator, which would take the instance for idle and throttle it.
	s, err := startSpryTLS(ctx, env, wc.label, wc.uidBase, wc.tls, "--pool-size", strconv.Itoa(env.poolSize), "--idle-cpu-after", "0")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	c := s.client(4, 30*time.Second)
	settings := url.Values{"min": {"1"}, "max": {"1"}, "concurrency": {"1000"}}
	if _, err := s.deploy(ctx, c, "triv", trivCode, settings); err != nil {
		return err
	}
	spryURL := s.url + "/fn/admin/triv/"
	if err := get(ctx, c, spryURL).ok(helloBody); err != nil {
		return fmt.Errorf("GET %s: %w", spryURL, err)
	}
	insts := s.specializedInstances()
	if len(insts) != 1 {
		return fmt.Errorf("want exactly one specialized instance of triv (min=1, max=1), found %d: %v", len(insts), insts)
	}
	cur := insts[0] // the instance nginx proxies to
	ng, err := startNginx(ctx, env, filepath.Join(cur, "sock", "http.sock"), wc.tls)
	defer func() { ng.shutdown(env) }()
	if err != nil {
		return err
	}
	nginxURL := ng.url + "/"
	if err := get(ctx, c, nginxURL).ok(helloBody); err != nil {
		return fmt.Errorf("GET %s (nginx): %w", nginxURL, err)
	}
	details := map[string]any{"instance": filepath.Base(cur), "spry_url": spryURL, "nginx_url": nginxURL}
	defer env.detail(wc.label, details)
	var replaced []string
	// repoint makes sure nginx proxies to the function's current instance:
	// if spry replaced it (min=1 starts a new one when one ends), nginx is
	// restarted on the new socket so both sides keep sharing one instance.
	repoint := func() error {
		var now []string
		deadline := time.Now().Add(15 * time.Second)
		for {
			// A request makes sure the instance spry has is up and warm.
			_ = get(ctx, c, spryURL)
			if now = s.specializedInstances(); len(now) == 1 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("want one specialized instance of triv, found %d", len(now))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if now[0] == cur {
			return nil
		}
		replaced = append(replaced, filepath.Base(cur)+" -> "+filepath.Base(now[0]))
		ng.shutdown(env)
		cur = now[0]
		if ng, err = startNginx(ctx, env, filepath.Join(cur, "sock", "http.sock"), wc.tls); err != nil {
			return err
		}
		nginxURL = ng.url + "/"
		return get(ctx, c, nginxURL).ok(helloBody)
	}

	// run measures spry and nginx in ABBA order over the rounds.
	run := func(threads, conns int, d time.Duration) (sp, nx []*wrkResult, err error) {
		for r := 0; r < env.rounds; r++ {
			order := []string{"spry", "nginx"}
			if r%2 == 1 {
				order = []string{"nginx", "spry"}
			}
			for _, who := range order {
				if err := repoint(); err != nil {
					return nil, nil, err
				}
				u := spryURL
				if who == "nginx" {
					u = nginxURL
				}
				statPath := cpuStatPath(cur)
				n0, t0 := throttled(readCPUStat(statPath))
				fm := startForeign()
				res, err := runWrk(ctx, env, u, threads, conns, d)
				if err != nil {
					return nil, nil, err
				}
				res.StealCPU = fm.stealPct()
				res.ForeignCPU, res.ForeignTop = fm.stopTop()
				// NaN when the instance (and its cgroup) ended meanwhile.
				n1, t1 := throttled(readCPUStat(statPath))
				res.ThrottledPeriods, res.ThrottledMs = jnum(n1-n0), jnum(t1-t0)
				logf2("wrk -t%d -c%d %s: %.0f req/s, p50 %.0f us, p99 %.0f us, errors %.0f; other processes %.0f%%%s, steal %.0f%% of the CPUs",
					threads, conns, who, res.RPS, res.P50us, res.P99us, res.errors(), res.ForeignCPU, paren(res.ForeignTop), res.StealCPU)
				if who == "spry" {
					sp = append(sp, res)
				} else {
					nx = append(nx, res)
				}
			}
		}
		return sp, nx, nil
	}
	avg := func(rs []*wrkResult, f func(*wrkResult) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		return mean(xs)
	}
	sumErr := func(rs []*wrkResult) float64 {
		t := 0.0
		for _, r := range rs {
			t += r.errors()
		}
		return t
	}
	// judge is a row's verdict and target: against its target in
	// scenarios 1 and 2, INFO without one in an informational case; a
	// figure taken while wrk saw errors is INVALID either way.
	judge := func(ok bool, target string, errs float64) (string, string) {
		v := verdict(ok)
		if wc.informational {
			v, target = info, ""
		}
		if errs > 0 {
			v = invalid
		}
		return v, target
	}
	// errRow reports wrk's errors: a target of 0, or (informational) INFO
	// when there were none and INVALID when there were.
	errRow := func(sc string, errs float64) Row {
		r := Row{Scenario: sc, Metric: "non-2xx + socket errors (both)", Value: errs, Unit: "count", Target: "0", Verdict: verdict(errs == 0)}
		if wc.informational {
			r.Target, r.Verdict = "", info
			if errs > 0 {
				r.Verdict = invalid
			}
		}
		return r
	}

	// warmUp runs both paths once (JIT, connection pools) before measuring.
	warmUp := func(threads, conns int) error {
		wu := 2 * time.Second
		if env.quick {
			wu = time.Second
		}
		for _, u := range []string{spryURL, nginxURL} {
			if err := repoint(); err != nil {
				return err
			}
			if _, err := runWrk(ctx, env, u, threads, conns, wu); err != nil {
				return err
			}
		}
		return nil
	}

	if sc := wc.tput; sc != "" {
		if err := warmUp(2, 32); err != nil {
			return err
		}
		sp, nx, err := run(2, 32, env.wrkDur)
		if err != nil {
			return err
		}
		details["throughput"] = map[string]any{"spry": sp, "nginx": nx}
		sr, nr := avg(sp, func(r *wrkResult) float64 { return r.RPS }), avg(nx, func(r *wrkResult) float64 { return r.RPS })
		errs := sumErr(sp) + sumErr(nx)
		note := fmt.Sprintf("wrk -t2 -c32 -d%s, mean of %d run(s) each, ABBA order", env.wrkDur, env.rounds)
		env.add(Row{Scenario: sc, Metric: wc.spryName, Value: sr, Unit: "req/s", Verdict: info, Note: note})
		env.add(Row{Scenario: sc, Metric: wc.nginxName, Value: nr, Unit: "req/s", Verdict: info, Note: note})
		v, target := judge(sr/nr >= 1.0, ">= 1.00x", errs)
		env.add(Row{Scenario: sc, Metric: "spry / nginx throughput", Value: sr / nr, Unit: "x", Target: target, Ratio: ratioPtr(sr / nr), Verdict: v})
		env.add(errRow(sc, errs))
		thr := func(rs []*wrkResult) float64 {
			return avg(rs, func(r *wrkResult) float64 { return float64(r.ThrottledMs) })
		}
		env.add(Row{Scenario: sc, Metric: "Deno cgroup CPU-throttled time, spry runs", Value: thr(sp), Unit: "ms", Verdict: info,
			Note: "per run, from the instance cgroup's cpu.stat (spry serve --cpu 1 quota)"})
		env.add(Row{Scenario: sc, Metric: "Deno cgroup CPU-throttled time, nginx runs", Value: thr(nx), Unit: "ms", Verdict: info})
	}
	if sc := wc.lat; sc != "" {
		if err := warmUp(1, 1); err != nil {
			return err
		}
		sp, nx, err := run(1, 1, env.wrkDur)
		if err != nil {
			return err
		}
		details["latency"] = map[string]any{"spry": sp, "nginx": nx}
		sp50, sp99 := avg(sp, func(r *wrkResult) float64 { return r.P50us }), avg(sp, func(r *wrkResult) float64 { return r.P99us })
		np50, np99 := avg(nx, func(r *wrkResult) float64 { return r.P50us }), avg(nx, func(r *wrkResult) float64 { return r.P99us })
		errs := sumErr(sp) + sumErr(nx)
		note := fmt.Sprintf("wrk -t1 -c1 -d%s --latency, mean of %d run(s) each", env.wrkDur, env.rounds)
		env.add(Row{Scenario: sc, Metric: "spry p50", Value: sp50, Unit: "us", Verdict: info, Note: note})
		env.add(Row{Scenario: sc, Metric: "spry p99", Value: sp99, Unit: "us", Verdict: info})
		env.add(Row{Scenario: sc, Metric: "nginx p50", Value: np50, Unit: "us", Verdict: info})
		env.add(Row{Scenario: sc, Metric: "nginx p99", Value: np99, Unit: "us", Verdict: info})
		v, target := judge(sp50-np50 <= 0, "<= 0 us", errs)
		env.add(Row{Scenario: sc, Metric: "spry p50 - nginx p50 (added-latency difference)", Value: sp50 - np50, Unit: "us",
			Target: target, Ratio: ratioPtr(sp50 / np50), Verdict: v,
			Note: "Deno cannot be called over TCP here, so this is spry's added p50 minus nginx's; nginx's own added p50 over direct Deno is ~40 us on this machine kind (shared/PERF-BASELINES.md)"})
		env.add(errRow(sc, errs))
	}
	details["instances_replaced"] = replaced
	if len(replaced) > 0 {
		r := Row{Scenario: wc.shared, Metric: "times spry replaced the warm instance", Value: float64(len(replaced)), Unit: "count",
			Target: "0", Verdict: miss, Note: "a min=1 instance under steady load should live on; nginx was re-pointed each time (see spry's warnings)"}
		if wc.informational {
			r.Target, r.Verdict = "", info
		}
		env.add(r)
		env.note("scenario %q: spry replaced the function's only instance %d time(s) (%s); nginx was re-pointed to the new socket before its next run", wc.shared, len(replaced), strings.Join(replaced, ", "))
	}
	if ng.exited() {
		env.note("nginx exited during the run")
	}
	return nil
}

// ---------------------------------------------------------------------
// Scenario 3: cold start from zero with a warm pool.

func scenColdStart(ctx context.Context, env *benchEnv) error {
	const sc = "3 cold start, warm pool"
	n := 200
	if env.quick {
		n = 20
	}
	P := env.poolSize
	// Every instance stays up (one user's, 128 MiB each): the per-user
	// memory budget (half the host's by default) is lifted, as what is
	// measured is a cold start, not one user's part of the host.
	s, err := startSpry(ctx, env, "coldstart", uidBaseFor(3), "--pool-size", strconv.Itoa(P), "--max-memory-per-user", "0")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	name := func(i int) string { return fmt.Sprintf("cs-%d", i) }
	t0 := time.Now()
	if _, err := s.deployMany(ctx, n, 4, name, func(i int) string { return distinctCode(name(i)) }, nil, ""); err != nil {
		return err
	}
	logf2("deployed %d functions in %s", n, time.Since(t0).Round(time.Millisecond))
	mc := newClient(2, 10*time.Second)
	c := newClient(2, 30*time.Second)
	_ = get(ctx, c, s.url+"/healthz") // open the keep-alive connection
	if _, err := s.waitPool(ctx, mc, "deno", P, 60*time.Second, 20*time.Millisecond); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	const settle = 100 * time.Millisecond
	var refill []float64
	hits := make([]hit, 0, n)
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h := get(ctx, c, s.url+"/fn/admin/"+name(i)+"/")
		hits = append(hits, h)
		d, err := s.waitPool(ctx, mc, "deno", P, 30*time.Second, 5*time.Millisecond)
		if err != nil {
			return fmt.Errorf("after %s: %w", name(i), err)
		}
		refill = append(refill, ms(h.Total+d))
		time.Sleep(settle)
	}
	ttfb, hdr, errs, notCold, firstErr := coldHits(hits, name)
	env.detail("cold_start_warm_pool", map[string]any{
		"functions": n, "pool_size": P, "settle_ms": ms(settle),
		"client_ttfb_ms": stats(ttfb), "spry_cold_start_header_ms": stats(hdr), "pool_refill_ms": stats(refill),
		"not_cold": notCold, "errors": errs, "first_error": firstErr,
		"client_ttfb_ms_all": ttfb,
	})
	note := fmt.Sprintf("%d distinct functions, one call each, sequential; pool refilled (spry_pool_idle) + %s between calls; spry --pool-size %d", n, settle, P)
	p50, p99 := percentile(ttfb, 50), percentile(ttfb, 99)
	env.add(Row{Scenario: sc, Metric: "client TTFB p50", Value: p50, Unit: "ms", Target: "<= 5 ms", Verdict: verdict(p50 <= 5), Note: note})
	env.add(Row{Scenario: sc, Metric: "client TTFB p99", Value: p99, Unit: "ms", Target: "<= 20 ms", Verdict: verdict(p99 <= 20)})
	env.add(Row{Scenario: sc, Metric: "Spry-Cold-Start header p50", Value: percentile(hdr, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "Spry-Cold-Start header p99", Value: percentile(hdr, 99), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "pool refill after a cold start p50", Value: percentile(refill, 50), Unit: "ms", Verdict: info,
		Note: "from the request's start until spry_pool_idle{runtime=deno} is back to --pool-size"})
	env.add(Row{Scenario: sc, Metric: "spry --pool-size", Value: float64(P), Unit: "count", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "failed calls + calls that were not cold", Value: float64(errs + notCold), Unit: "count", Target: "0",
		Verdict: verdict(errs+notCold == 0), Note: firstErr})
	return nil
}

// coldHits sorts the first calls of new functions (hits[i] called
// name(i)): the client TTFB and Spry-Cold-Start of those that were cold
// starts, and how many failed or were not cold. A call that was not a
// cold start (no Spry-Cold-Start) is left out of the TTFB figures: it
// would pull a cold-start percentile down.
func coldHits(hits []hit, name func(int) string) (ttfb, hdr []float64, errs, notCold int, firstErr string) {
	for i, h := range hits {
		if err := h.ok(helloBody); err != nil {
			errs++
			if firstErr == "" {
				firstErr = fmt.Sprintf("%s: %v", name(i), err)
			}
			continue
		}
		v, ok := h.coldMs()
		if !ok {
			notCold++
			if firstErr == "" {
				firstErr = fmt.Sprintf("%s: answered without Spry-Cold-Start (not a cold start) in %.2f ms", name(i), ms(h.TTFB))
			}
			continue
		}
		ttfb = append(ttfb, ms(h.TTFB))
		hdr = append(hdr, v)
	}
	return ttfb, hdr, errs, notCold, firstErr
}

// ---------------------------------------------------------------------
// Scenario 4: cold start with the pool exhausted (a burst of new functions).

func scenBurst(ctx context.Context, env *benchEnv) error {
	const sc = "4 cold start, pool exhausted"
	n := 50
	if env.quick {
		n = 20
	}
	P := env.poolSize
	// One user's instances at once: the per-user memory budget is lifted
	// (as in scenario 3).
	s, err := startSpry(ctx, env, "burst", uidBaseFor(4), "--pool-size", strconv.Itoa(P), "--max-memory-per-user", "0")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	name := func(i int) string { return fmt.Sprintf("burst-%d", i) }
	if _, err := s.deployMany(ctx, n, 4, name, func(i int) string { return distinctCode(name(i)) }, nil, ""); err != nil {
		return err
	}
	mc := newClient(2, 10*time.Second)
	if _, err := s.waitPool(ctx, mc, "deno", P, 60*time.Second, 20*time.Millisecond); err != nil {
		return err
	}
	c := newClient(n+16, 60*time.Second)
	// Open n keep-alive connections first, so the burst measures spry,
	// not TCP connects.
	burst := func(u func(int) string) []hit {
		out := make([]hit, n)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				out[i] = get(ctx, c, u(i))
			}()
		}
		time.Sleep(50 * time.Millisecond)
		close(gate)
		wg.Wait()
		return out
	}
	burst(func(int) string { return s.url + "/healthz" })
	time.Sleep(time.Second)
	start := time.Now()
	hits := burst(func(i int) string { return s.url + "/fn/admin/" + name(i) + "/" })
	wall := time.Since(start)
	ttfb, hdr, errs, notCold, firstErr := coldHits(hits, name)
	env.detail("cold_start_burst", map[string]any{
		"functions": n, "pool_size": P, "client_ttfb_ms": stats(ttfb), "spry_cold_start_header_ms": stats(hdr),
		"wall_ms": ms(wall), "errors": errs, "not_cold": notCold, "first_error": firstErr, "client_ttfb_ms_all": ttfb,
	})
	p50 := percentile(ttfb, 50)
	env.add(Row{Scenario: sc, Metric: "client TTFB p50", Value: p50, Unit: "ms", Target: "<= 50 ms", Verdict: verdict(p50 <= 50),
		Note: fmt.Sprintf("%d never-called functions requested at once; pool of %d full at the start", n, P)})
	env.add(Row{Scenario: sc, Metric: "client TTFB p90", Value: percentile(ttfb, 90), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "client TTFB max", Value: percentile(ttfb, 100), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "Spry-Cold-Start header p50", Value: percentile(hdr, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "failed calls + calls that were not cold", Value: float64(errs + notCold), Unit: "count", Target: "0",
		Verdict: verdict(errs+notCold == 0), Note: firstErr})
	s.shutdown(env)

	// Reference: the same spawn path one at a time (no pool at all), so
	// the burst's slowdown can be told from the cost of one spawn.
	k := 10
	if env.quick {
		k = 5
	}
	s0, err := startSpry(ctx, env, "spawn-ref", uidBaseFor(4)+uidSpan, "--pool-size", "0", "--node-pool-size", "0")
	defer s0.shutdown(env)
	if err != nil {
		return err
	}
	ref := func(i int) string { return fmt.Sprintf("ref-%d", i) }
	if _, err := s0.deployMany(ctx, k, 2, ref, func(i int) string { return distinctCode(ref(i)) }, nil, ""); err != nil {
		return err
	}
	c0 := newClient(2, 60*time.Second)
	_ = get(ctx, c0, s0.url+"/healthz")
	var single []float64
	for i := 0; i < k; i++ {
		time.Sleep(300 * time.Millisecond)
		h := get(ctx, c0, s0.url+"/fn/admin/"+ref(i)+"/")
		if err := h.ok(helloBody); err != nil {
			return fmt.Errorf("reference cold start %s: %w", ref(i), err)
		}
		single = append(single, ms(h.TTFB))
	}
	sp50 := percentile(single, 50)
	env.detail("cold_start_no_pool_sequential", map[string]any{"calls": k, "client_ttfb_ms": stats(single), "all": single})
	env.add(Row{Scenario: sc, Metric: "reference: one cold start at a time, --pool-size 0, p50", Value: sp50, Unit: "ms", Verdict: info,
		Note: fmt.Sprintf("%d sequential calls of new functions, nothing pooled: the spawn path alone", k)})
	env.add(Row{Scenario: sc, Metric: "burst p50 / one-at-a-time spawn p50", Value: p50 / sp50, Unit: "x", Ratio: ratioPtr(p50 / sp50), Verdict: info})
	return nil
}

// ---------------------------------------------------------------------
// Scenario 5: deploy to first response.

func scenDeploy(ctx context.Context, env *benchEnv) error {
	const sc = "5 deploy to first response"
	n := 50
	if env.quick {
		n = 10
	}
	P := env.poolSize
	s, err := startSpry(ctx, env, "deploy", uidBaseFor(5), "--pool-size", strconv.Itoa(P))
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	mc := newClient(2, 10*time.Second)
	c := newClient(2, 60*time.Second)
	_ = get(ctx, c, s.url+"/healthz")
	if _, err := s.waitPool(ctx, mc, "deno", P, 60*time.Second, 20*time.Millisecond); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	const settle = 100 * time.Millisecond
	var total, put, ttfb []float64
	var errs int
	var firstErr string
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fn := fmt.Sprintf("d-%d", i)
		code := distinctCode(fmt.Sprintf("%s-%d", fn, time.Now().UnixNano()))
		t0 := time.Now()
		d, err := s.deploy(ctx, c, fn, code, nil)
		if err != nil {
			errs++
			if firstErr == "" {
				firstErr = err.Error()
			}
			continue
		}
		h := get(ctx, c, s.url+"/fn/admin/"+fn+"/")
		if err := h.ok(helloBody); err != nil {
			errs++
			if firstErr == "" {
				firstErr = fmt.Sprintf("%s: %v", fn, err)
			}
			continue
		}
		total = append(total, ms(h.First.Sub(t0)))
		put = append(put, ms(d))
		ttfb = append(ttfb, ms(h.TTFB))
		if _, err := s.waitPool(ctx, mc, "deno", P, 30*time.Second, 5*time.Millisecond); err != nil {
			return err
		}
		time.Sleep(settle)
	}
	env.detail("deploy_to_first_response", map[string]any{
		"iterations": n, "total_ms": stats(total), "put_ms": stats(put), "get_ttfb_ms": stats(ttfb), "errors": errs, "first_error": firstErr,
	})
	p50 := percentile(total, 50)
	env.add(Row{Scenario: sc, Metric: "PUT start -> first byte of GET, p50", Value: p50, Unit: "ms", Target: "<= 100 ms", Verdict: verdict(p50 <= 100),
		Note: fmt.Sprintf("%d new functions, each deployed then called once; pool refilled between iterations", n)})
	env.add(Row{Scenario: sc, Metric: "PUT start -> first byte of GET, p99", Value: percentile(total, 99), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "PUT (deploy) p50", Value: percentile(put, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "first GET TTFB p50", Value: percentile(ttfb, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "failed deploys or calls", Value: float64(errs), Unit: "count", Target: "0", Verdict: verdict(errs == 0), Note: firstErr})
	return nil
}

// ---------------------------------------------------------------------
// Scenario 6: step load 1 -> 64 concurrent clients.

type phaseResult struct {
	Clients   int            `json:"clients"`
	DurationS float64        `json:"duration_s"`
	OK        int            `json:"ok"`
	Errors    int            `json:"errors"`
	Statuses  map[string]int `json:"statuses"`
	FirstErr  string         `json:"first_error,omitempty"`
	RPS       float64        `json:"rps"`
	LatencyMs map[string]any `json:"latency_ms"`
	PerSecond []int          `json:"ok_per_second"`
}

// load runs clients goroutines, each looping GETs of u, for d.
func load(ctx context.Context, c *http.Client, u string, clients int, d time.Duration) phaseResult {
	type rec struct {
		lat    []float64
		errs   int
		status map[string]int
		first  string
		sec    []int
	}
	recs := make([]rec, clients)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &recs[i]
			r.status = map[string]int{}
			r.sec = make([]int, int(d/time.Second)+2)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				h := get(ctx, c, u)
				if err := h.ok(helloBody); err != nil {
					r.errs++
					switch {
					case h.Err != nil:
						r.status["transport"]++
					case h.Status == 200 && h.Attempts > 1:
						r.status["resent after a dropped connection"]++
					default:
						r.status[strconv.Itoa(h.Status)]++
					}
					if r.first == "" {
						r.first = err.Error()
					}
					continue
				}
				r.status["200"]++
				r.lat = append(r.lat, ms(h.Total))
				if k := int(time.Since(start) / time.Second); k < len(r.sec) {
					r.sec[k]++
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	pr := phaseResult{Clients: clients, DurationS: el.Seconds(), Statuses: map[string]int{}, PerSecond: make([]int, int(d/time.Second)+2)}
	var lat []float64
	for _, r := range recs {
		lat = append(lat, r.lat...)
		pr.OK += len(r.lat)
		pr.Errors += r.errs
		for k, v := range r.status {
			pr.Statuses[k] += v
		}
		if pr.FirstErr == "" {
			pr.FirstErr = r.first
		}
		for k, v := range r.sec {
			pr.PerSecond[k] += v
		}
	}
	pr.RPS = float64(pr.OK) / el.Seconds()
	pr.LatencyMs = stats(lat)
	return pr
}

type instSample struct {
	T        float64 `json:"t_ms"` // since the step
	Busy     float64 `json:"busy"`
	Idle     float64 `json:"idle"`
	Starting float64 `json:"starting"`
	Queue    float64 `json:"queue"`
	at       time.Time
}

func scenStep(ctx context.Context, env *benchEnv) error {
	const sc = "6 step load 1->64"
	p1d, p2d := 3*time.Second, 10*time.Second
	if env.quick {
		p1d, p2d = 2*time.Second, 5*time.Second
	}
	const window = "10s"
	// Debug logging shows the autoscaler's scale-down decisions.
	s, err := startSpry(ctx, env, "step", uidBaseFor(6), "--pool-size", strconv.Itoa(env.poolSize), "--autoscale-window", window, "--log-level", "debug")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	c := newClient(128, 30*time.Second)
	if _, err := s.deploy(ctx, c, "step", stepCode, url.Values{"concurrency": {"8"}, "max": {"20"}}); err != nil {
		return err
	}
	u := s.url + "/fn/admin/step/"
	if err := get(ctx, c, u).ok(helloBody); err != nil {
		return fmt.Errorf("first call: %w", err)
	}
	var mu sync.Mutex
	var samples []instSample
	var sampleErrs atomic.Int64
	sctx, stopSampler := context.WithCancel(ctx)
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		mc := newClient(2, 5*time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			m, err := s.metrics(sctx, mc)
			if err != nil {
				if sctx.Err() != nil {
					return
				}
				sampleErrs.Add(1)
			} else {
				st := m.Instances["admin/step"]
				mu.Lock()
				samples = append(samples, instSample{Busy: st["busy"], Idle: st["idle"], Starting: st["starting"], Queue: m.Queue, at: time.Now()})
				mu.Unlock()
			}
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	logf2("step: 1 client for %s", p1d)
	p1 := load(ctx, c, u, 1, p1d)
	step := time.Now()
	logf2("step: 64 clients for %s", p2d)
	p2 := load(ctx, c, u, 64, p2d)
	time.Sleep(300 * time.Millisecond)
	stopSampler()
	swg.Wait()
	const want = 8 // ceil(64 / 8)
	reached := math.NaN()
	peak := 0.0
	mu.Lock()
	for i := range samples {
		samples[i].T = ms(samples[i].at.Sub(step))
		ready := samples[i].Busy + samples[i].Idle
		if samples[i].T >= 0 {
			peak = math.Max(peak, ready)
			if math.IsNaN(reached) && ready >= want {
				reached = samples[i].T
			}
		}
	}
	mu.Unlock()
	details := map[string]any{
		"autoscale_window": window, "concurrency": 8, "max": 20, "function_work_ms": 5,
		"phase1": p1, "phase2": p2, "samples": samples, "metrics_errors": sampleErrs.Load(),
		"ms_to_8_ready": jnum(reached), "peak_ready": peak,
	}
	defer env.detail("step_load", details)
	reachedVerdict, reachedNote := capacityVerdict(reached, peak, p2d)
	// Scale-downs (logged at debug) while the 64 clients were running.
	scaleDowns := 0
	if data, err := os.ReadFile(s.logPath); err == nil {
		end := step.Add(p2d)
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, `msg="scaling down"`) || !strings.Contains(line, "function=step") {
				continue
			}
			ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil && !t.Before(step) && t.Before(end) {
				scaleDowns++
			}
		}
	}
	details["scale_downs_during_step"] = scaleDowns
	errs := p1.Errors + p2.Errors
	env.add(Row{Scenario: sc, Metric: "time from step to 8 ready instances", Value: reached, Unit: "ms", Target: "<= 2000 ms", Verdict: reachedVerdict, Note: reachedNote})
	env.add(Row{Scenario: sc, Metric: "errors (non-200, transport, or resent after a dropped connection)", Value: float64(errs), Unit: "count", Target: "0", Verdict: verdict(errs == 0),
		Note: strings.TrimSpace(p1.FirstErr + " " + p2.FirstErr)})
	env.add(Row{Scenario: sc, Metric: "throughput at 1 client", Value: p1.RPS, Unit: "req/s", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "throughput at 64 clients", Value: p2.RPS, Unit: "req/s", Verdict: info,
		Note: "a 5 ms function: the ideal is 64/5ms = 12800 req/s, bounded here by 2 cores"})
	env.add(Row{Scenario: sc, Metric: "latency p99 at 64 clients", Value: toF(p2.LatencyMs["p99"]), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "peak ready instances", Value: peak, Unit: "count", Verdict: info,
		Note: "spry serve --autoscale-window " + window})
	env.add(Row{Scenario: sc, Metric: "instances scaled down while 64 clients ran", Value: float64(scaleDowns), Unit: "count", Verdict: info,
		Note: "\"scaling down\" lines in spry's debug log during the 64-client phase (churn under steady load)"})
	return nil
}

// capacityLimitMs is the target for scenario 6: capacity for the
// 64 clients (64 / concurrency 8 = 8 ready instances) within 2 s.
const capacityLimitMs = 2000

// capacityVerdict judges the time from the step to 8 ready instances
// (NaN: never reached) against capacityLimitMs.
func capacityVerdict(reachedMs, peak float64, step time.Duration) (string, string) {
	if math.IsNaN(reachedMs) {
		return miss, fmt.Sprintf("never reached 8 ready instances during the %s step (peak %.0f)", step, peak)
	}
	return verdict(reachedMs <= capacityLimitMs), "first /metrics sample (every 100 ms) after the step with busy+idle >= 8"
}

func toF(v any) float64 {
	if j, ok := v.(jnum); ok {
		return float64(j)
	}
	return math.NaN()
}

// ---------------------------------------------------------------------
// Scenario 7: density.

func scenDensity(ctx context.Context, env *benchEnv) error {
	const sc = "7 density"
	M, W := 10000, 300
	if env.quick {
		M, W = 300, 20
	}
	P := env.poolSize
	// One user deploys every function here, and the per-user bounds are
	// lifted: what is measured is the host's room, not one user's part
	// of it (by default a user's instances share a quarter of the host's
	// pids, which holds 256 of them on this machine at 32 pids each, and
	// their memory limits half of --all-memory, which holds about 90 of
	// them at 128 MiB on 24 GiB).
	s, err := startSpry(ctx, env, "density", uidBaseFor(7), "--pool-size", strconv.Itoa(P), "--node-pool-size", strconv.Itoa(P), "--scale-to-zero-after", "30m",
		"--max-functions-per-user", "0", "--user-pids", "0", "--user-files", "0", "--max-memory-per-user", "0")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	details := map[string]any{"pool_size": P, "functions": M, "warm_goal": W}
	defer env.detail("density", details)
	mc := newClient(2, 10*time.Second)

	// (a) memory of an idle warm (pooled) instance.
	if _, err := s.waitPool(ctx, mc, "deno", P, 60*time.Second, 20*time.Millisecond); err != nil {
		return err
	}
	if m, err := s.metrics(ctx, mc); err == nil {
		if _, ok := m.PoolIdle["node"]; ok {
			if _, err := s.waitPool(ctx, mc, "node", P, 60*time.Second, 20*time.Millisecond); err != nil {
				return err
			}
		}
	}
	time.Sleep(2 * time.Second)
	pool, err := s.instanceMemory()
	if err != nil {
		return err
	}
	details["pool_instances"] = pool
	for _, rt := range []string{"deno", "node"} {
		var pss, rss, slirp []float64
		for _, im := range pool {
			if im.Runtime == rt && !im.Specialized {
				pss = append(pss, float64(im.PSSKiB)/1024)
				rss = append(rss, float64(im.RSSKiB)/1024)
				slirp = append(slirp, float64(im.SlirpPSSKiB)/1024)
			}
		}
		if len(pss) == 0 {
			continue
		}
		note := fmt.Sprintf("mean over %d pooled %s sandboxes (bwrap x2 + %s, summed by instance uid)", len(pss), rt, rt)
		env.add(Row{Scenario: sc, Metric: fmt.Sprintf("idle pooled %s instance, Pss", rt), Value: mean(pss), Unit: "MiB", Verdict: info, Note: note})
		env.add(Row{Scenario: sc, Metric: fmt.Sprintf("idle pooled %s instance, RSS", rt), Value: mean(rss), Unit: "MiB", Verdict: info})
		if rt == "deno" {
			env.add(Row{Scenario: sc, Metric: "slirp4netns per instance, Pss", Value: mean(slirp), Unit: "MiB", Verdict: info,
				Note: "the egress network helper each instance gets (runs as root, outside the sandbox uid)"})
		}
	}

	// (b) 10,000 functions through the API.
	lc := newClient(2, 2*time.Minute)
	// list gets one page of the function list.
	list := func(query string) (d float64, n, size int, next string, err error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/api/v1/functions"+query, nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		start := time.Now()
		res, err := lc.Do(req)
		if err != nil {
			return 0, 0, 0, "", err
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		d = ms(time.Since(start))
		if err != nil {
			return d, 0, 0, "", err
		}
		if res.StatusCode != 200 {
			return d, 0, 0, "", fmt.Errorf("list: status %d: %s", res.StatusCode, truncate(string(body), 200))
		}
		var v struct {
			Functions []json.RawMessage `json:"functions"`
			Next      string            `json:"next"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return d, 0, len(body), "", err
		}
		return d, len(v.Functions), len(body), v.Next, nil
	}
	// walk gets every page, 1000 functions each (as `spry ls` does).
	walk := func() (d float64, n, size int, err error) {
		q := "?limit=1000"
		for {
			pd, pn, ps, next, err := list(q)
			if err != nil {
				return d, n, size, err
			}
			d, n, size = d+pd, n+pn, size+ps
			if next == "" {
				return d, n, size, nil
			}
			q = "?limit=1000&after=" + url.QueryEscape(next)
		}
	}
	fname := func(i int) string { return fmt.Sprintf("f-%d", i) }
	logf2("density: deploying %d functions (4 in parallel)", M)
	t0 := time.Now()
	lat, err := s.deployMany(ctx, M, 4, fname, func(int) string { return trivCode }, nil, "density")
	total := time.Since(t0)
	if err != nil {
		return fmt.Errorf("deploying %d functions: %w", M, err)
	}
	latMs := durationsMs(lat)
	tenth := max(1, M/10)
	firstP50, lastP50 := percentile(latMs[:tenth], 50), percentile(latMs[M-tenth:], 50)
	var listMs, pageMs []float64
	var listN, listBytes, pageN int
	for i := 0; i < 3; i++ {
		d, n, b, err := walk()
		if err != nil {
			return err
		}
		listMs = append(listMs, d)
		listN, listBytes = n, b
		if d, pageN, _, _, err = list(""); err != nil {
			return err
		}
		pageMs = append(pageMs, d)
	}
	details["deploy_ms"] = stats(latMs)
	details["deploy_total_s"] = total.Seconds()
	details["deploy_p50_first_tenth_ms"], details["deploy_p50_last_tenth_ms"] = firstP50, lastP50
	details["list_ms"] = listMs
	details["first_page_ms"] = pageMs
	details["list_functions"], details["list_bytes"] = listN, listBytes
	env.add(Row{Scenario: sc, Metric: fmt.Sprintf("deploy p50 (%d functions, 4 parallel)", M), Value: percentile(latMs, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "deploy p99", Value: percentile(latMs, 99), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: fmt.Sprintf("deploy %d functions, total", M), Value: total.Seconds(), Unit: "s", Verdict: info,
		Note: fmt.Sprintf("%.0f deploys/s", float64(M)/total.Seconds())})
	env.add(Row{Scenario: sc, Metric: "deploy p50, last tenth / first tenth", Value: lastP50 / firstP50, Unit: "x", Ratio: ratioPtr(lastP50 / firstP50), Verdict: info,
		Note: fmt.Sprintf("%.2f ms -> %.2f ms: does deploying slow down as functions accumulate?", firstP50, lastP50)})
	env.add(Row{Scenario: sc, Metric: fmt.Sprintf("GET /api/v1/functions, first page (%d of %d functions), p50 of 3", pageN, M), Value: percentile(pageMs, 50), Unit: "ms",
		Target: "<= 50 ms", Verdict: verdict(percentile(pageMs, 50) <= 50 && pageN > 0), Note: "the default page size; the threshold for \"stays fast\" is the benchmark's own"})
	lv := verdict(percentile(listMs, 50) <= 500 && listN >= M)
	env.add(Row{Scenario: sc, Metric: fmt.Sprintf("every page of GET /api/v1/functions (%d functions, 1000 a page), p50 of 3", listN), Value: percentile(listMs, 50), Unit: "ms",
		Target: "<= 500 ms", Verdict: lv, Note: fmt.Sprintf("%.1f MiB of JSON in all; the threshold for \"stays fast\" is the benchmark's own", float64(listBytes)/(1<<20))})

	// (c) how many can be warm at once.
	const floorKiB = 2 << 20 // 2 GiB
	mem0 := meminfo()
	details["mem_available_before_kib"] = mem0["MemAvailable"]
	var coldMs []float64
	var errs int
	var firstErr, stopped string
	c := newClient(4, 60*time.Second)
	called := 0
	logf2("density: calling %d distinct functions one after another", W)
	for i := 0; i < W; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if avail := meminfo()["MemAvailable"]; avail < floorKiB {
			stopped = fmt.Sprintf("stopped after %d functions: MemAvailable %.0f MiB is below 2 GiB", i, float64(avail)/1024)
			env.note("scenario 7: %s", stopped)
			break
		}
		h := get(ctx, c, s.url+"/fn/admin/"+fname(i)+"/")
		called++
		if err := h.ok(helloBody); err != nil {
			errs++
			if firstErr == "" {
				firstErr = fmt.Sprintf("%s: %v", fname(i), err)
			}
			if errs > 20 {
				stopped = fmt.Sprintf("stopped after %d functions: %d calls failed (first: %s)", i+1, errs, firstErr)
				env.note("scenario 7: %s", stopped)
				break
			}
			continue
		}
		coldMs = append(coldMs, ms(h.TTFB))
		if (i+1)%100 == 0 {
			logf2("density: %d called, MemAvailable %.1f GiB", i+1, float64(meminfo()["MemAvailable"])/(1<<20))
		}
	}
	time.Sleep(2 * time.Second)
	// Still warm: a second call of each is not a cold start.
	warm := 0
	warmed := make([]bool, called)
	for i := 0; i < called; i++ {
		h := get(ctx, c, s.url+"/fn/admin/"+fname(i)+"/")
		if h.ok(helloBody) == nil && h.Cold == "" {
			warm++
			warmed[i] = true
		}
	}
	// At once: those answering warm must all still have a ready instance
	// after the second pass (an instance stopped once it had answered
	// would otherwise still count).
	atOnce := math.NaN()
	if m, err := s.metrics(ctx, mc); err != nil {
		env.note("scenario 7: /metrics after the second pass: %v; \"functions warm at once\" counts the warm answers alone", err)
	} else {
		n := 0
		for i, w := range warmed {
			if st := m.Instances["admin/"+fname(i)]; w && st["busy"]+st["idle"] >= 1 {
				n++
			}
		}
		atOnce = float64(n)
	}
	warmNow := float64(warm)
	if !math.IsNaN(atOnce) {
		warmNow = atOnce
	}
	mem1 := meminfo()
	insts, err := s.instanceMemory()
	if err != nil {
		return err
	}
	var specN int
	var pssKiB, rssKiB, slirpKiB int64
	for _, im := range insts {
		if im.Specialized {
			specN++
			pssKiB += im.PSSKiB
			rssKiB += im.RSSKiB
			slirpKiB += im.SlirpPSSKiB
		}
	}
	details["warm"] = warm
	details["warm_and_still_ready"] = jnum(atOnce)
	details["called"] = called
	details["call_errors"], details["first_error"], details["stopped"] = errs, firstErr, stopped
	details["first_call_ttfb_ms"] = stats(coldMs)
	details["specialized_instances"] = specN
	details["specialized_pss_kib"], details["specialized_rss_kib"], details["specialized_slirp_pss_kib"] = pssKiB, rssKiB, slirpKiB
	details["mem_available_after_kib"] = mem1["MemAvailable"]
	details["all_instances_after"] = len(insts)
	sort.Slice(insts, func(i, j int) bool { return insts[i].UID < insts[j].UID })
	if len(insts) > 20 {
		details["instances_sample"] = insts[:20]
	} else {
		details["instances_sample"] = insts
	}
	note := fmt.Sprintf("%d distinct functions called once each back to back, then each called again: %d answered warm", called, warm)
	if !math.IsNaN(atOnce) {
		note += fmt.Sprintf(", %.0f of them with a ready instance (spry_instances busy+idle) after the second pass", atOnce)
	}
	if stopped != "" {
		note += "; " + stopped
	}
	env.add(Row{Scenario: sc, Metric: "functions warm at once", Value: warmNow, Unit: "count", Target: fmt.Sprintf(">= %d", W),
		Verdict: verdict(warmNow >= float64(W)), Note: note})
	if specN > 0 {
		env.add(Row{Scenario: sc, Metric: fmt.Sprintf("total Pss of %d warm sandboxes", specN), Value: float64(pssKiB) / 1024, Unit: "MiB", Verdict: info,
			Note: fmt.Sprintf("RSS sum %.0f MiB; slirp4netns Pss %.0f MiB more", float64(rssKiB)/1024, float64(slirpKiB)/1024)})
		env.add(Row{Scenario: sc, Metric: "per warm (specialized, idle) instance, Pss", Value: float64(pssKiB) / 1024 / float64(specN), Unit: "MiB", Verdict: info})
		env.add(Row{Scenario: sc, Metric: "per warm (specialized, idle) instance, RSS", Value: float64(rssKiB) / 1024 / float64(specN), Unit: "MiB", Verdict: info,
			Note: "the issue's measure; summed over the sandbox's processes, so pages they share (the runtime's text) count once per process: an upper bound, Pss the fair share"})
		env.add(Row{Scenario: sc, Metric: "per warm instance incl. slirp4netns, Pss", Value: float64(pssKiB+slirpKiB) / 1024 / float64(specN), Unit: "MiB", Verdict: info})
	}
	drop := float64(mem0["MemAvailable"]-mem1["MemAvailable"]) / 1024
	env.add(Row{Scenario: sc, Metric: "MemAvailable before -> after", Value: float64(mem1["MemAvailable"]) / 1024, Unit: "MiB", Verdict: info,
		Note: fmt.Sprintf("%.0f MiB before, %.0f MiB after, of %.0f MiB total", float64(mem0["MemAvailable"])/1024, float64(mem1["MemAvailable"])/1024, float64(mem1["MemTotal"])/1024)})
	if called > 0 {
		env.add(Row{Scenario: sc, Metric: "MemAvailable drop per warm function", Value: drop / float64(called), Unit: "MiB", Verdict: info})
	}
	env.add(Row{Scenario: sc, Metric: "first-call TTFB p50, called back to back", Value: percentile(coldMs, 50), Unit: "ms", Verdict: info})
	env.add(Row{Scenario: sc, Metric: "failed calls", Value: float64(errs), Unit: "count", Target: "0", Verdict: verdict(errs == 0), Note: firstErr})
	return nil
}

// ---------------------------------------------------------------------
// Scenario 8: what an idle server costs. Not a target of the issue: it
// shows that a server with nothing to do sleeps (docs/performance.md,
// items 32 and 33).

func scenIdle(ctx context.Context, env *benchEnv) error {
	const sc = "8 idle server"
	settle, span := 10*time.Second, 20*time.Second
	if env.quick {
		settle, span = 3*time.Second, 5*time.Second
	}
	s, err := startSpry(ctx, env, "idle", uidBaseFor(8), "--pool-size", "1")
	defer s.shutdown(env)
	if err != nil {
		return err
	}
	c := newClient(2, 60*time.Second)
	if _, err := s.deploy(ctx, c, "idle", distinctCode("idle"), url.Values{"min": {"1"}}); err != nil {
		return err
	}
	// A few calls, so the router holds a pooled connection to the
	// instance and the log store and access sampler have had work.
	for i := 0; i < 3; i++ {
		if err := get(ctx, c, s.url+"/fn/admin/idle/").ok(helloBody); err != nil {
			return err
		}
	}
	c.CloseIdleConnections()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}
	pid := s.cmd.Process.Pid
	sw0, cpu0 := switchesAndCPU(pid)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(span):
	}
	sw1, cpu1 := switchesAndCPU(pid)
	secs := span.Seconds()
	perSec := (sw1 - sw0) / secs
	cpuPct := (cpu1 - cpu0) / clockTicks / secs * 100
	env.detail("idle", map[string]any{"settle_s": settle.Seconds(), "span_s": secs,
		"context_switches": sw1 - sw0, "cpu_ticks": cpu1 - cpu0})
	note := fmt.Sprintf("spry serve, all threads, over %v, %v after three calls to a min-1 function", span, settle)
	env.add(Row{Scenario: sc, Metric: "context switches a second", Value: perSec, Unit: "/s", Verdict: info, Note: note})
	env.add(Row{Scenario: sc, Metric: "CPU", Value: cpuPct, Unit: "%", Verdict: info, Note: "of one CPU"})
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100
// on every Linux architecture Spry runs on).
const clockTicks = 100

// switchesAndCPU sums pid's threads' context switches and reads its CPU
// time in clock ticks.
func switchesAndCPU(pid int) (switches, ticks float64) {
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, f := range dirs {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				switches += n
			}
		}
	}
	return switches, readCPUTicks()[pid].own
}
