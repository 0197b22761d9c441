// Package metrics holds Spry's Prometheus registry and metric definitions
// (client_golang, an own registry, not the global one). Labels are bounded:
// owner and function names, status codes, states; never paths or ids.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Gauges are read at scrape time from the parts that own the numbers.
type Gauges interface {
	// Instances reports running instances per owner, function and state.
	Instances() []InstanceCount
	// PoolIdle reports generic warm instances waiting, per runtime.
	PoolIdle() map[string]int
	// QueueDepth reports requests waiting for an instance.
	QueueDepth() int
	// RouterPaths reports, as counters, the requests the router's event
	// loops served, the connections they handed to the goroutine-per-
	// connection path (by reason), and those that came back.
	RouterPaths() (loop, takenBack int64, handoffs map[string]int64)
	// LogLinesDropped reports, as a counter, the log lines lost because
	// the log store fell behind.
	LogLinesDropped() uint64
	// AsyncQueue reports the asynchronous invocations queued (due, or
	// waiting for a retry) and those running.
	AsyncQueue() (queued, running int)
	// BundleHolds reports the holds keeping bundle collection off: the
	// backups under way.
	BundleHolds() int
}

// InstanceCount is one row of the spry_instances gauge.
type InstanceCount struct {
	Owner, Function, State string
	Count                  int
}

// Metrics are Spry's metrics.
type Metrics struct {
	reg         *prometheus.Registry
	invocations *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	coldStarts  *prometheus.CounterVec
	coldStart   *prometheus.HistogramVec
	evictions   prometheus.Counter
	failures    *prometheus.CounterVec
	scheduled   *prometheus.CounterVec
	async       *prometheus.CounterVec

	// gone holds the IDs of the functions deleted lately, and when:
	// requests still in flight when one was deleted end after Forget and
	// must not bring its series back for good. By ID, not name: a
	// function made again under the name is counted, and deleting that
	// one too must not let the first one's late requests in. Usually
	// empty, so the look on each request is one atomic load.
	goneMu sync.Mutex
	gone   atomic.Pointer[map[string]time.Time]

	// counting, a test hook, is called once a request has been found
	// not deleted, before it is counted.
	counting func()
}

// goneFor is how long a deleted function's late requests are not
// counted: longer than any invocation may take.
const goneFor = time.Hour

// latencyBuckets span 100 µs to 60 s.
var latencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// New returns the metrics; g is read at each scrape (it may be nil).
func New(g Gauges) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.invocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spry_invocations_total",
		Help: "Function invocations, by owner, function and response status code.",
	}, []string{"owner", "function", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "spry_invocation_duration_seconds",
		Help:    "Time, in seconds, from a request's arrival to the end of its response, cold starts included.",
		Buckets: latencyBuckets,
	}, []string{"owner", "function"})
	m.coldStarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spry_cold_starts_total",
		Help: "Instances started for a function, by outcome: ok, or error when none could be started. A function that then fails to load answers 502 function_failed (spry_invocations_total) and logs why.",
	}, []string{"owner", "function", "result"})
	m.coldStart = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "spry_cold_start_duration_seconds",
		Help:    "Time, in seconds, from a request finding no instance to the first byte of its response.",
		Buckets: latencyBuckets,
	}, []string{"runtime"})
	m.evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "spry_memory_evictions_total",
		Help: "Idle instances stopped before their time because the host's available memory was below spry serve --memory-reserve when another had to start.",
	})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spry_instance_failures_total",
		Help: "Instances that ended other than stopped, by reason: load_failed (before the function loaded: its top level threw or exited, ran out of memory or of the start's time), crashed, out_of_memory, timeout (killed after a request ran out of time and the instance did not answer).",
	}, []string{"owner", "function", "reason"})
	m.scheduled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spry_scheduled_runs_total",
		Help: "Runs of functions' scheduled handlers, by outcome: ok, or error (it threw, timed out, has no scheduled method, or no instance could start).",
	}, []string{"owner", "function", "result"})
	m.async = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spry_async_invocations_total",
		Help: "Asynchronous invocations that finished, by outcome: succeeded (a 2xx answer), or failed (another answer, or none, on the last attempt allowed); and of failed ones whose function has an on-failure destination, also forwarded (their event enqueued for it) or forward_failed (no such function, or the user's bounds).",
	}, []string{"owner", "function", "outcome"})
	m.reg.MustRegister(m.invocations, m.duration, m.coldStarts, m.coldStart, m.evictions, m.failures, m.scheduled, m.async,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if g != nil {
		m.reg.MustRegister(&gaugeCollector{g: g})
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the registry, for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Invocation records one finished invocation of the function whose id is
// id.
func (m *Metrics) Invocation(owner, function, id string, code int, d time.Duration) {
	if m.isGone(id) {
		return
	}
	if m.counting != nil {
		m.counting()
	}
	m.invocations.WithLabelValues(owner, function, codeLabel(code)).Inc()
	m.duration.WithLabelValues(owner, function).Observe(d.Seconds())
	m.recheck(owner, function, id)
}

// codeLabels are the status codes' labels, made once (this is on every
// request's path). A function picks its statuses (Node sends any of
// 100-999), and each label is a series kept as long as the function:
// the codes HTTP registers (net/http's), and 499 (nginx's, the router's
// for a client gone), keep their number; any other of 100-599 is its
// class ("2xx"); the rest are "other". A function so makes at most 70 or
// so code series, whatever it answers.
var codeLabels = func() (l [600]string) {
	for i := range l {
		switch {
		case i < 100:
			l[i] = codeOther
		case http.StatusText(i) != "" || i == 499:
			l[i] = strconv.Itoa(i)
		default:
			l[i] = strconv.Itoa(i/100) + "xx"
		}
	}
	return l
}()

// codeOther is the code label of a status outside 100-599.
const codeOther = "other"

func codeLabel(code int) string {
	if code >= 0 && code < len(codeLabels) {
		return codeLabels[code]
	}
	return codeOther
}

// ColdStart records one instance start for the function whose id is id.
func (m *Metrics) ColdStart(owner, function, id, result string) {
	if m.isGone(id) {
		return
	}
	if m.counting != nil {
		m.counting()
	}
	m.coldStarts.WithLabelValues(owner, function, result).Inc()
	m.recheck(owner, function, id)
}

// InstanceFailure records one instance of the function whose id is id
// that ended for reason (load_failed, crashed, out_of_memory, timeout).
func (m *Metrics) InstanceFailure(owner, function, id, reason string) {
	if m.isGone(id) {
		return
	}
	m.failures.WithLabelValues(owner, function, reason).Inc()
	m.recheck(owner, function, id)
}

// Scheduled records one run of the scheduled handler of the function
// whose id is id.
func (m *Metrics) Scheduled(owner, function, id string, ok bool) {
	if m.isGone(id) {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.scheduled.WithLabelValues(owner, function, result).Inc()
	m.recheck(owner, function, id)
}

// Async records one asynchronous invocation of the function whose id is
// id that finished with outcome (succeeded or failed).
func (m *Metrics) Async(owner, function, id, outcome string) {
	if m.isGone(id) {
		return
	}
	m.async.WithLabelValues(owner, function, outcome).Inc()
	m.recheck(owner, function, id)
}

// Eviction records one idle instance stopped for another's room.
func (m *Metrics) Eviction() { m.evictions.Inc() }

// ColdStartLatency records how long a request waited for its cold start,
// to the first byte of the response.
func (m *Metrics) ColdStartLatency(runtime string, d time.Duration) {
	m.coldStart.WithLabelValues(runtime).Observe(d.Seconds())
}

func (m *Metrics) isGone(id string) bool {
	g := m.gone.Load()
	if g == nil || len(*g) == 0 {
		return false
	}
	_, ok := (*g)[id]
	return ok
}

// recheck drops the series of a request's function if it was deleted
// while the request was being counted: Forget may have dropped them just
// before the count made them again. Either Forget's own drop comes after
// the count, or this look sees the function gone.
func (m *Metrics) recheck(owner, function, id string) {
	if m.isGone(id) {
		m.deleteSeries(owner, function)
	}
}

// Forget drops the series of a deleted function (id is its id), and
// keeps its late requests out of them: a function made again under the
// name has another id, and is counted.
func (m *Metrics) Forget(owner, function, id string) {
	m.goneMu.Lock()
	now := time.Now()
	next := map[string]time.Time{}
	if g := m.gone.Load(); g != nil {
		for k, at := range *g {
			if now.Sub(at) < goneFor {
				next[k] = at
			}
		}
	}
	next[id] = now
	m.gone.Store(&next)
	m.goneMu.Unlock()
	m.deleteSeries(owner, function)
}

func (m *Metrics) deleteSeries(owner, function string) {
	labels := prometheus.Labels{"owner": owner, "function": function}
	m.invocations.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
	m.coldStarts.DeletePartialMatch(labels)
	m.failures.DeletePartialMatch(labels)
	m.scheduled.DeletePartialMatch(labels)
	m.async.DeletePartialMatch(labels)
}

var (
	instancesDesc = prometheus.NewDesc("spry_instances", "Running instances, by owner, function and state (busy, idle, starting, stopping).", []string{"owner", "function", "state"}, nil)
	poolDesc      = prometheus.NewDesc("spry_pool_idle", "Generic, already sandboxed runtime instances waiting in the warm pool.", []string{"runtime"}, nil)
	queueDesc     = prometheus.NewDesc("spry_queue_depth", "Requests waiting for an instance with free capacity.", nil, nil)
	loopDesc      = prometheus.NewDesc("spry_router_loop_requests_total", "Requests the router's event loops served in place (its fast path).", nil, nil)
	backDesc      = prometheus.NewDesc("spry_router_taken_back_total", "Connections the router's event loops took back after the other path served a function request on them.", nil, nil)
	droppedDesc   = prometheus.NewDesc("spry_log_lines_dropped_total", "Log lines lost because the log store fell behind or could not write them (each function that lost lines also gets a system line saying how many).", nil, nil)
	asyncDesc     = prometheus.NewDesc("spry_async_queue_depth", "Asynchronous invocations queued: due, or waiting for a retry (not those running).", nil, nil)
	asyncRunDesc  = prometheus.NewDesc("spry_async_running", "Attempts of asynchronous invocations running now.", nil, nil)
	holdsDesc     = prometheus.NewDesc("spry_bundle_collection_holds", "Backups under way that keep the bundle collector from removing anything until they end.", nil, nil)
	handoffDesc   = prometheus.NewDesc("spry_router_handoffs_total", "Connections the router's event loops handed to the goroutine-per-connection path, by reason (no_capacity: a cold start or a queue; not_cached: a function not in memory yet, or none; body: chunked, large or split; head: split or large; protocol: upgrades, HTTP/1.0 without Host; malformed: a request the router refuses; not_function: the API, metrics, health; network: an instance not on a Unix socket; dial: an instance that could not be dialled; retry: a request served again elsewhere; private: a private function's call, whose token is checked there).", []string{"reason"}, nil)
)

type gaugeCollector struct{ g Gauges }

func (c *gaugeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- poolDesc
	ch <- queueDesc
	ch <- loopDesc
	ch <- backDesc
	ch <- handoffDesc
	ch <- droppedDesc
	ch <- asyncDesc
	ch <- asyncRunDesc
	ch <- holdsDesc
}

func (c *gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	// A function has a row per version that has instances (traffic
	// splits, versions draining); a series is per function, and one
	// collected twice fails the whole scrape.
	instances := map[[3]string]int{}
	for _, ic := range c.g.Instances() {
		instances[[3]string{ic.Owner, ic.Function, ic.State}] += ic.Count
	}
	for k, n := range instances {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), k[0], k[1], k[2])
	}
	for rt, n := range c.g.PoolIdle() {
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(n), rt)
	}
	ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(c.g.QueueDepth()))
	loop, back, handoffs := c.g.RouterPaths()
	ch <- prometheus.MustNewConstMetric(loopDesc, prometheus.CounterValue, float64(loop))
	ch <- prometheus.MustNewConstMetric(backDesc, prometheus.CounterValue, float64(back))
	for reason, n := range handoffs {
		ch <- prometheus.MustNewConstMetric(handoffDesc, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(c.g.LogLinesDropped()))
	queued, running := c.g.AsyncQueue()
	ch <- prometheus.MustNewConstMetric(asyncDesc, prometheus.GaugeValue, float64(queued))
	ch <- prometheus.MustNewConstMetric(asyncRunDesc, prometheus.GaugeValue, float64(running))
	ch <- prometheus.MustNewConstMetric(holdsDesc, prometheus.GaugeValue, float64(c.g.BundleHolds()))
}
