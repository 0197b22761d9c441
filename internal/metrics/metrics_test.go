package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// gauges reports fixed numbers, as the server's parts would.
type gauges struct{ instances []InstanceCount }

func (g gauges) Instances() []InstanceCount                  { return g.instances }
func (gauges) PoolIdle() map[string]int                      { return map[string]int{"deno": 2} }
func (gauges) QueueDepth() int                               { return 0 }
func (gauges) RouterPaths() (int64, int64, map[string]int64) { return 0, 0, nil }
func (gauges) LogLinesDropped() uint64                       { return 7 }
func (gauges) AsyncQueue() (int, int)                        { return 5, 2 }
func (gauges) BundleHolds() int                              { return 1 }

// Two versions of one function (a traffic split, or one draining) are one
// series per state, summed: a series collected twice fails the scrape.
func TestInstancesSummedPerFunction(t *testing.T) {
	m := New(gauges{instances: []InstanceCount{
		{Owner: "alice", Function: "hello", State: "busy", Count: 1},
		{Owner: "alice", Function: "hello", State: "busy", Count: 2},
		{Owner: "alice", Function: "hello", State: "stopping", Count: 1},
		{Owner: "bob", Function: "hello", State: "busy", Count: 4},
	}})
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			got[key] = mt.GetGauge().GetValue() + mt.GetCounter().GetValue()
		}
	}
	for k, v := range map[string]float64{
		"spry_instances function=hello owner=alice state=busy":     3,
		"spry_instances function=hello owner=alice state=stopping": 1,
		"spry_instances function=hello owner=bob state=busy":       4,
		"spry_log_lines_dropped_total":                             7,
		"spry_async_queue_depth":                                   5,
		"spry_async_running":                                       2,
		"spry_bundle_collection_holds":                             1,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	var series []string
	for k := range got {
		if len(k) > 14 && k[:15] == "spry_instances " {
			series = append(series, k)
		}
	}
	if len(series) != 3 {
		t.Errorf("spry_instances series: %q", series)
	}
}

// A deleted function's series go, and requests of it that end later (in
// flight at the delete) do not bring them back; a function made again
// under the name is counted.
func TestForgetOutlastsLateRequests(t *testing.T) {
	m := New(nil)
	count := func() float64 {
		families, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0.0
		for _, f := range families {
			if f.GetName() == "spry_invocations_total" || f.GetName() == "spry_cold_starts_total" || f.GetName() == "spry_async_invocations_total" {
				for _, mt := range f.GetMetric() {
					n += mt.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	m.ColdStart("alice", "hello", "id-1", "ok")
	m.Invocation("alice", "hello", "id-1", 200, time.Millisecond)
	m.Async("alice", "hello", "id-1", "succeeded")
	if n := count(); n != 3 {
		t.Fatalf("before the delete: %v, want 3", n)
	}
	m.Forget("alice", "hello", "id-1")
	m.Invocation("alice", "hello", "id-1", 200, time.Millisecond) // late
	m.ColdStart("alice", "hello", "id-1", "ok")
	m.Async("alice", "hello", "id-1", "failed")
	if n := count(); n != 0 {
		t.Fatalf("after the delete and late requests: %v, want 0", n)
	}
	m.Invocation("alice", "hello", "id-2", 200, time.Millisecond) // made again
	m.Invocation("bob", "hello", "id-3", 200, time.Millisecond)
	if n := count(); n != 2 {
		t.Fatalf("a new function of the name and another owner's: %v, want 2", n)
	}
}

// counted returns the invocations and cold starts counted for owner's
// function.
func counted(t *testing.T, m *Metrics, owner, function string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["owner"] == owner && labels["function"] == function {
				n += mt.GetCounter().GetValue() + float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	return n
}

// A request that ends as its function is deleted, having found it not yet
// deleted, does not bring its series back.
func TestForgetDuringARequest(t *testing.T) {
	for _, what := range []string{"invocation", "cold start"} {
		t.Run(what, func(t *testing.T) {
			m := New(nil)
			m.Invocation("alice", "hello", "id-1", 200, time.Millisecond)
			m.counting = func() {
				m.counting = nil
				m.Forget("alice", "hello", "id-1")
			}
			if what == "invocation" {
				m.Invocation("alice", "hello", "id-1", 200, time.Millisecond)
			} else {
				m.ColdStart("alice", "hello", "id-1", "ok")
			}
			if n := counted(t, m, "alice", "hello"); n != 0 {
				t.Errorf("after the delete: %v counted, want 0", n)
			}
		})
	}
}

// A function deleted, made again under its name and deleted again: the
// first one's late requests are still not counted.
func TestForgetTwiceUnderOneName(t *testing.T) {
	m := New(nil)
	m.Invocation("alice", "hello", "id-1", 200, time.Millisecond)
	m.Forget("alice", "hello", "id-1")
	m.Invocation("alice", "hello", "id-2", 200, time.Millisecond)
	m.Forget("alice", "hello", "id-2")
	m.Invocation("alice", "hello", "id-1", 200, time.Millisecond) // late, of the first
	m.ColdStart("alice", "hello", "id-1", "ok")
	if n := counted(t, m, "alice", "hello"); n != 0 {
		t.Errorf("after both deletes: %v counted, want 0", n)
	}
}

// The code label takes a bounded set of values, whatever statuses a
// function answers: registered codes as they are, others by class.
func TestCodeLabelBounded(t *testing.T) {
	for _, c := range []struct {
		code int
		want string
	}{
		{200, "200"}, {204, "204"}, {404, "404"}, {429, "429"}, {499, "499"}, {502, "502"}, {504, "504"},
		{100, "100"}, {299, "2xx"}, {342, "3xx"}, {452, "4xx"}, {599, "5xx"}, {199, "1xx"},
		{0, "other"}, {99, "other"}, {600, "other"}, {999, "other"}, {-1, "other"}, {1 << 20, "other"},
	} {
		if got := codeLabel(c.code); got != c.want {
			t.Errorf("codeLabel(%d) = %q, want %q", c.code, got, c.want)
		}
	}
	m := New(nil)
	for code := -10; code < 2000; code++ {
		m.Invocation("alice", "hostile", "id", code, time.Millisecond)
	}
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "spry_invocations_total" {
			if n := len(f.GetMetric()); n > 70 {
				t.Errorf("%d code series for one function", n)
			}
		}
	}
}

// Every metric passes promtool's lint rules (names, _total on counters,
// base units), and the HELP of every spry_ metric with a unit says it:
// an operator reading a dashboard's tooltip sees the unit.
func TestMetricsLint(t *testing.T) {
	m := New(gauges{instances: []InstanceCount{{Owner: "alice", Function: "hello", State: "busy", Count: 1}}})
	m.Invocation("alice", "hello", "id1", 200, time.Millisecond)
	m.ColdStart("alice", "hello", "id1", "ok")
	m.ColdStartLatency("deno", time.Millisecond)
	m.Scheduled("alice", "hello", "id1", true)
	m.Async("alice", "hello", "id1", "succeeded")
	m.Eviction()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	for _, f := range families {
		name := f.GetName()
		if strings.HasPrefix(name, "spry_") && strings.Contains(name, "_seconds") && !strings.Contains(f.GetHelp(), "seconds") {
			t.Errorf("%s: HELP does not say its unit: %q", name, f.GetHelp())
		}
	}
}
