package e2e

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// series lists the spry_ series /metrics has now, one per line (name and
// labels, no value).
func (s *server) series(t *testing.T) []string {
	t.Helper()
	r := s.do("GET", "/metrics", s.token, nil, nil)
	if r.status != 200 {
		t.Fatalf("metrics: %d %s", r.status, r.body)
	}
	var out []string
	for _, l := range strings.Split(string(r.body), "\n") {
		if strings.HasPrefix(l, "spry_") {
			out = append(out, l[:strings.LastIndexByte(l, ' ')])
		}
	}
	return out
}

// codeLabel is an invocation counter's code label.
var codeLabel = regexp.MustCompile(`code="([^"]*)"`)

// TestMetricsSeriesGoWithFunctions: /metrics does not grow with the
// functions that come and go: each function's series (invocations,
// durations, cold starts, instances, scheduled runs, asynchronous
// invocations) go when it is deleted, a retired version leaves none of
// its own, and a function answering statuses of its choice (any of
// 100-999 on Node) makes a bounded number of code series.
func TestMetricsSeriesGoWithFunctions(t *testing.T) {
	s := startServer(t)
	// One cycle first: series of bounded label sets (the runtimes' cold
	// starts, the router's hand-off reasons) exist from then on.
	cycle := func(n int) {
		t.Helper()
		for i := range n {
			name := fmt.Sprintf("f%d", i)
			s.deployCode(t, name, []byte(`export default {
  fetch() { return new Response("hi"); },
  scheduled() {},
}`), "cron=@every+1h")
			s.deployCode(t, name+"-node", []byte(`module.exports = (req, res) => { res.status(Number(req.query.code ?? 200)).send("x"); };`), "runtime=node&filename=fn.js")
			if r := s.get("/fn/admin/" + name + "/"); r.status != 200 {
				t.Fatalf("%s: %d %s", name, r.status, r.body)
			}
			s.mustSpry("invoke", name, "--scheduled")
			id := strings.TrimSpace(s.mustSpry("invoke", name, "--async"))
			s.waitInvocation(t, name, id, "succeeded")
			if r := s.get("/fn/admin/" + name + "-node/"); r.status != 200 {
				t.Fatalf("%s-node: %d %s", name, r.status, r.body)
			}
			// A second version; the first retired, then deleted.
			if r := s.putCode(s.token, name, []byte(`export default { fetch() { return new Response("v2"); } }`), ""); r.status != 200 {
				t.Fatalf("deploy %s v2: %d %s", name, r.status, r.body)
			}
			if r := s.get("/fn/admin/" + name + "@1/"); r.status != 200 {
				t.Fatalf("%s@1: %d %s", name, r.status, r.body)
			}
			s.mustSpry("versions", "rm", name, "1")
		}
	}
	remove := func(n int) {
		t.Helper()
		for i := range n {
			s.mustSpry("rm", fmt.Sprintf("f%d", i))
			s.mustSpry("rm", fmt.Sprintf("f%d-node", i))
		}
	}
	cycle(1)
	remove(1)
	var base []string
	eventually(t, 10*time.Second, "the first cycle's series to go", func() bool {
		base = s.series(t)
		return !strings.Contains(strings.Join(base, "\n"), `function="`)
	})

	const n = 4
	cycle(n)
	// A hostile function's statuses: all of 600-999 are answered, and
	// uncommon ones in 100-599; the code label takes a bounded set.
	for code := 600; code <= 999; code += 7 {
		s.get(fmt.Sprintf("/fn/admin/f0-node/?code=%d", code))
	}
	for _, code := range []int{209, 299, 342, 452, 499, 599} {
		s.get(fmt.Sprintf("/fn/admin/f0-node/?code=%d", code))
	}
	codes := map[string]bool{}
	during := s.series(t)
	for _, l := range during {
		if strings.HasPrefix(l, "spry_invocations_total{") && strings.Contains(l, `function="f0-node"`) {
			codes[codeLabel.FindStringSubmatch(l)[1]] = true
		}
	}
	if len(codes) > 10 {
		t.Errorf("%d code series for one function's answers: %v", len(codes), codes)
	}
	for code := range codes {
		if !regexp.MustCompile(`^([1-5][0-9][0-9]|[1-5]xx|other)$`).MatchString(code) {
			t.Errorf("code label %q", code)
		}
	}
	for _, l := range during {
		if strings.Contains(l, "version=") || strings.Contains(l, "path=") {
			t.Errorf("a series labelled by version or path: %s", l)
		}
	}
	t.Logf("%d series at base, %d with %d functions", len(base), len(during), 2*n)

	remove(n)
	eventually(t, 10*time.Second, "the series to return to the base", func() bool {
		return len(s.series(t)) == len(base)
	})
	if after := strings.Join(s.series(t), "\n"); after != strings.Join(base, "\n") {
		t.Errorf("series after the functions went:\n%s\nwant:\n%s", after, strings.Join(base, "\n"))
	}
}

// TestMetricsForAMonitoringSystem: what a Prometheus given a metrics-only
// token scrapes passes promtool's lint rules as a whole (the Go runtime's
// and process's metrics too), and holds none of what functions are told
// in confidence or asked for: env values, secrets, paths, queries,
// tokens.
func TestMetricsForAMonitoringSystem(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "hello", []byte(`export default { fetch() { return new Response("hi"); } }`), "")
	r := s.do("PATCH", "/api/v1/functions/hello", s.token, strings.NewReader(`{"env":{"PLAIN":"env-value-4817"},"secrets":{"SECRET":"secret-value-9263"}}`), map[string]string{"Content-Type": "application/json"})
	if r.status != 200 {
		t.Fatalf("set env and secrets: %d %s", r.status, r.body)
	}
	for range 3 {
		if r := s.get("/fn/admin/hello/private-path-5521?key=query-value-3390"); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	prom := strings.TrimSpace(s.mustSpry("token", "create", "prometheus", "--scope", "metrics"))
	r = s.do("GET", "/metrics", prom, nil, nil)
	if r.status != 200 {
		t.Fatalf("metrics with a metrics token: %d %s", r.status, r.body)
	}
	problems, err := promlint.New(bytes.NewReader(r.body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if !strings.Contains(string(r.body), `spry_invocations_total{code="200",function="hello",owner="admin"} 3`) {
		t.Error("the three calls are not counted")
	}
	for _, secret := range []string{"env-value-4817", "secret-value-9263", "private-path-5521", "query-value-3390", "PLAIN", "SECRET", s.token, prom} {
		if strings.Contains(string(r.body), secret) {
			t.Errorf("/metrics shows %q", secret)
		}
	}
	if r := s.do("GET", "/api/v1/functions", prom, nil, nil); r.status != 403 {
		t.Errorf("a metrics token listed functions: %d", r.status)
	}
}
