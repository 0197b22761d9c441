package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// uidSpan is how many instance uids one spry serve may use (its default).
const uidSpan = 10000

func newClient(conns int, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        0,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     120 * time.Second,
			DisableCompression:  true,
		},
	}
}

// hit is one finished GET.
type hit struct {
	Status int
	Start  time.Time
	First  time.Time // first response byte
	TTFB   time.Duration
	Total  time.Duration
	Cold   string // Spry-Cold-Start header, ms
	Body   []byte
	Err    error
	// Attempts is how many connections the request was sent on: Go's
	// Transport silently resends a GET whose reused connection failed
	// before any response byte (the server dropped it), so more than one
	// is a failure the status alone would hide.
	Attempts int
}

func get(ctx context.Context, c *http.Client, u string) hit {
	var h hit
	var first time.Time
	trace := &httptrace.ClientTrace{
		GotConn:              func(httptrace.GotConnInfo) { h.Attempts++ },
		GotFirstResponseByte: func() { first = time.Now() },
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "GET", u, nil)
	if err != nil {
		h.Err = err
		return h
	}
	h.Start = time.Now()
	res, err := c.Do(req)
	if err != nil {
		h.Err = err
		return h
	}
	h.Body, h.Err = io.ReadAll(res.Body)
	res.Body.Close()
	h.Total = time.Since(h.Start)
	h.Status = res.StatusCode
	h.First = first
	if first.IsZero() {
		h.First = h.Start.Add(h.Total)
	}
	h.TTFB = h.First.Sub(h.Start)
	h.Cold = res.Header.Get("Spry-Cold-Start")
	return h
}

// ok reports whether a hit is a 200 with the expected body.
func (h hit) ok(body string) error {
	if h.Err != nil {
		return h.Err
	}
	if h.Status != 200 {
		return fmt.Errorf("status %d: %s", h.Status, truncate(string(h.Body), 300))
	}
	if h.Attempts > 1 {
		// Every scenario's connections are idle far less than the
		// router's 120 s keep-alive: a resend is a dropped request.
		return fmt.Errorf("the connection was dropped and the Go client resent the request (%d attempts)", h.Attempts)
	}
	if body != "" && string(h.Body) != body {
		return fmt.Errorf("unexpected body %q", truncate(string(h.Body), 300))
	}
	return nil
}

func (h hit) coldMs() (float64, bool) {
	if h.Cold == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(h.Cold, 64)
	return v, err == nil
}

// deploy PUTs code as function name, with settings in the query.
func (s *spryServer) deploy(ctx context.Context, c *http.Client, name, code string, settings url.Values) (time.Duration, error) {
	u := s.url + "/api/v1/functions/" + name
	if len(settings) > 0 {
		u += "?" + settings.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, "PUT", u, strings.NewReader(code))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/typescript")
	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	d := time.Since(start)
	if res.StatusCode != 200 && res.StatusCode != 201 {
		return d, fmt.Errorf("deploy %s: status %d: %s", name, res.StatusCode, truncate(string(body), 300))
	}
	return d, nil
}

// deployMany deploys n functions with par deploys in flight and returns
// each deploy's latency (index order). It stops at the first error.
func (s *spryServer) deployMany(ctx context.Context, n, par int, name func(int) string, code func(int) string, settings url.Values, progress string) ([]time.Duration, error) {
	c := s.client(par, 2*time.Minute)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	var doneN atomic.Int64
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				mu.Lock()
				stop := firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				d, err := s.deploy(ctx, c, name(i), code(i), settings)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				lat[i] = d
				if k := doneN.Add(1); progress != "" && k%2000 == 0 {
					logf2("%s: %d/%d deployed (%.1fs)", progress, k, n, time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return lat, firstErr
}

// metricsSnapshot is what the benchmark reads from /metrics.
type metricsSnapshot struct {
	PoolIdle  map[string]float64            // runtime -> idle
	Instances map[string]map[string]float64 // owner/function -> state -> count
	Queue     float64
}

func (s *spryServer) metrics(ctx context.Context, c *http.Client) (*metricsSnapshot, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.url+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	res, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != 200 {
		return nil, fmt.Errorf("/metrics: status %d: %s", res.StatusCode, truncate(string(body), 200))
	}
	m := &metricsSnapshot{PoolIdle: map[string]float64{}, Instances: map[string]map[string]float64{}}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		switch name {
		case "spry_pool_idle":
			m.PoolIdle[labels["runtime"]] = value
		case "spry_queue_depth":
			m.Queue = value
		case "spry_instances":
			k := labels["owner"] + "/" + labels["function"]
			if m.Instances[k] == nil {
				m.Instances[k] = map[string]float64{}
			}
			m.Instances[k][labels["state"]] = value
		}
	}
	return m, nil
}

// parseSample parses one Prometheus text-format sample line.
func parseSample(line string) (string, map[string]string, float64, bool) {
	labels := map[string]string{}
	name := line
	rest := ""
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", nil, 0, false
		}
		name = line[:i]
		for _, kv := range splitLabels(line[i+1 : j]) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			labels[k] = v
		}
		rest = strings.TrimSpace(line[j+1:])
	} else {
		f := strings.Fields(line)
		if len(f) < 2 {
			return "", nil, 0, false
		}
		name, rest = f[0], f[1]
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return "", nil, 0, false
	}
	return name, labels, v, true
}

func splitLabels(s string) []string {
	var out []string
	inQ, esc := false, false
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case esc:
			esc = false
		case c == '\\':
			esc = true
		case c == '"':
			inQ = !inQ
		case c == ',' && !inQ:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// waitPool waits until the deno pool holds want idle instances and
// returns how long that took.
func (s *spryServer) waitPool(ctx context.Context, c *http.Client, runtime string, want int, timeout time.Duration, poll time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		m, err := s.metrics(ctx, c)
		if err == nil && int(m.PoolIdle[runtime]) >= want {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			if err != nil {
				return time.Since(start), err
			}
			return time.Since(start), fmt.Errorf("the %s pool did not reach %d idle instances within %s (has %v)", runtime, want, timeout, m.PoolIdle[runtime])
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(poll):
		}
	}
}

// percentile returns the nearest-rank percentile p (0-100) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	// The rank is ceil(p/100 * n); p/100*n picks up rounding error (99.9%
	// of 1000 is 999.0000000000001), which must not push it a rank up.
	k := int(math.Ceil(p*float64(len(s))/100-1e-9)) - 1
	k = max(0, min(k, len(s)-1))
	return s[k]
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	t := 0.0
	for _, x := range xs {
		t += x
	}
	return t / float64(len(xs))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func durationsMs(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

// procInfo is one process's memory as /proc reports it.
type procInfo struct {
	PID     int    `json:"pid"`
	PPID    int    `json:"ppid"`
	UID     int    `json:"uid"`
	Comm    string `json:"comm"`
	RSSKiB  int64  `json:"rss_kib"`
	PSSKiB  int64  `json:"pss_kib"`
	Cmdline string `json:"-"`
}

func readProc(pid int) (procInfo, bool) {
	p := procInfo{PID: pid}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "Name":
			p.Comm = f[0]
		case "PPid":
			p.PPID, _ = strconv.Atoi(f[0])
		case "Uid":
			p.UID, _ = strconv.Atoi(f[0])
		case "VmRSS":
			p.RSSKiB, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	return p, true
}

func readPss(p *procInfo) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p.PID))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				p.PSSKiB, _ = strconv.ParseInt(f[0], 10, 64)
			}
			return
		}
	}
}

// allProcs lists every process, with Pss for those keep selects.
func allProcs(keep func(p procInfo) bool) []procInfo {
	var out []procInfo
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok || !keep(p) {
			continue
		}
		readPss(&p)
		cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		p.Cmdline = strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))
		out = append(out, p)
	}
	return out
}

// sandboxProcs lists the processes running as a uid in [lo, hi).
func sandboxProcs(lo, hi int) []procInfo {
	return allProcs(func(p procInfo) bool { return p.UID >= lo && p.UID < hi })
}

// instanceMem is the memory of one instance's sandbox (every process of
// its uid) plus the slirp4netns that gives it a network.
type instanceMem struct {
	ID          string `json:"id"`
	UID         int    `json:"uid"`
	Runtime     string `json:"runtime"`
	Specialized bool   `json:"specialized"`
	Procs       int    `json:"procs"`
	RSSKiB      int64  `json:"rss_kib"`
	PSSKiB      int64  `json:"pss_kib"`
	SlirpPSSKiB int64  `json:"slirp_pss_kib"`
	SlirpRSSKiB int64  `json:"slirp_rss_kib"`
}

// instanceUID is the uid an instance (its directory under the run dir)
// runs as: the owner of the socket its runtime made. (Not of the sock/
// directory: spry hands that to root once the runtime listens.)
func instanceUID(dir string) (int, bool) {
	st, err := os.Stat(filepath.Join(dir, "sock", "http.sock"))
	if err != nil {
		return 0, false
	}
	return int(st.Sys().(*syscall.Stat_t).Uid), true
}

// instanceMemory maps the server's instance directories to their uids
// (instanceUID) and sums the memory of each sandbox.
func (s *spryServer) instanceMemory() ([]instanceMem, error) {
	dirs, err := filepath.Glob(filepath.Join(s.runDir, "i", "i-*"))
	if err != nil {
		return nil, err
	}
	byUID := map[int]*instanceMem{}
	var out []*instanceMem
	for _, d := range dirs {
		uid, ok := instanceUID(d)
		if !ok {
			continue
		}
		code, _ := os.ReadDir(filepath.Join(d, "code"))
		im := &instanceMem{ID: filepath.Base(d), UID: uid, Specialized: len(code) > 0}
		byUID[uid] = im
		out = append(out, im)
	}
	procs := sandboxProcs(s.uidBase, s.uidBase+uidSpan)
	bwrapPID := map[int]*instanceMem{}
	for _, p := range procs {
		im := byUID[p.UID]
		if im == nil {
			continue
		}
		im.Procs++
		im.RSSKiB += p.RSSKiB
		im.PSSKiB += p.PSSKiB
		switch p.Comm {
		case "deno", "node":
			im.Runtime = p.Comm
		case "bwrap":
			bwrapPID[p.PID] = im
		}
	}
	// slirp4netns runs as root, a child of spry serve, and names the
	// sandbox's network namespace by the pid of a bwrap process.
	spryPID := s.cmd.Process.Pid
	for _, p := range allProcs(func(p procInfo) bool { return p.PPID == spryPID && p.Comm == "slirp4netns" }) {
		for _, f := range strings.Fields(p.Cmdline) {
			if rest, ok := strings.CutPrefix(f, "/proc/"); ok {
				pid, _ := strconv.Atoi(strings.TrimSuffix(rest, "/ns/net"))
				if im := bwrapPID[pid]; im != nil {
					im.SlirpPSSKiB += p.PSSKiB
					im.SlirpRSSKiB += p.RSSKiB
				}
			}
		}
	}
	res := make([]instanceMem, 0, len(out))
	for _, im := range out {
		if im.Procs > 0 {
			res = append(res, *im)
		}
	}
	return res, nil
}

// meminfo reads /proc/meminfo in KiB.
func meminfo() map[string]int64 {
	out := map[string]int64{}
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			out[k] = n
		}
	}
	return out
}

// specializedInstances lists the instance dirs whose code/ holds a file.
func (s *spryServer) specializedInstances() []string {
	var out []string
	dirs, _ := filepath.Glob(filepath.Join(s.runDir, "i", "i-*"))
	for _, d := range dirs {
		if code, _ := os.ReadDir(filepath.Join(d, "code")); len(code) > 0 {
			out = append(out, d)
		}
	}
	return out
}

// cpuStatPath finds the cpu.stat of the cgroup holding the runtime
// process of the instance in instDir (cgroup v1 cpu controller or v2).
func cpuStatPath(instDir string) string {
	uid, ok := instanceUID(instDir)
	if !ok {
		return ""
	}
	ps := allProcs(func(p procInfo) bool { return p.UID == uid && (p.Comm == "deno" || p.Comm == "node") })
	if len(ps) == 0 {
		return ""
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ps[0].PID))
	if err != nil {
		return ""
	}
	var candidates []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				candidates = append(candidates, filepath.Join("/sys/fs/cgroup", f[1], f[2], "cpu.stat"), filepath.Join("/sys/fs/cgroup/cpu", f[2], "cpu.stat"))
			}
		}
		if f[0] == "0" && f[1] == "" {
			candidates = append(candidates, filepath.Join("/sys/fs/cgroup", f[2], "cpu.stat"))
		}
	}
	for _, c := range candidates {
		if m := readCPUStat(c); m != nil {
			return c
		}
	}
	return ""
}

// readCPUStat reads a cgroup's cpu.stat; nil if it is gone.
func readCPUStat(path string) map[string]float64 {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	if _, ok := out["nr_throttled"]; !ok {
		return nil
	}
	return out
}

// throttled returns the throttled periods and milliseconds in a cpu.stat.
func throttled(m map[string]float64) (float64, float64) {
	if m == nil {
		return math.NaN(), math.NaN()
	}
	if v, ok := m["throttled_usec"]; ok {
		return m["nr_throttled"], v / 1000
	}
	return m["nr_throttled"], m["throttled_time"] / 1e6
}

// cpuTicks is one process's CPU time (its own and its reaped children's)
// in clock ticks.
type cpuTicks struct {
	ppid  int
	start string // starttime, to tell a reused pid
	comm  string
	own   float64 // utime + stime
	ticks float64 // own + cutime + cstime
}

func readCPUTicks() map[int]cpuTicks {
	out := map[int]cpuTicks{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
		if len(f) < 20 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var v [4]float64
		for j, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v[j], _ = strconv.ParseFloat(f[k], 64)
		}
		comm := ""
		if j := strings.IndexByte(s, '('); j >= 0 && j < i {
			comm = s[j+1 : i]
		}
		out[pid] = cpuTicks{ppid: ppid, start: f[19], comm: comm, own: v[0] + v[1], ticks: v[0] + v[1] + v[2] + v[3]}
	}
	return out
}

// foreignMeter measures the CPU used by processes that are neither the
// benchmark's (it and its descendants: spry, sandboxes, nginx, wrk) nor
// kernel threads: other work sharing the machine while a figure is taken.
type foreignMeter struct {
	at    time.Time
	snap  map[int]cpuTicks
	steal [2]float64 // steal and total ticks from /proc/stat
}

func startForeign() *foreignMeter {
	return &foreignMeter{at: time.Now(), snap: readCPUTicks(), steal: readSteal()}
}

// readSteal returns the machine's steal and total ticks from /proc/stat.
func readSteal() [2]float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return [2]float64{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var st, total float64
	for i, v := range f[1:] {
		if i >= 8 {
			break
		}
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i == 7 {
			st = x
		}
	}
	return [2]float64{st, total}
}

// stealPct returns the share of CPU time the hypervisor gave to others
// since start, in percent.
func (m *foreignMeter) stealPct() float64 {
	now := readSteal()
	if now[1] <= m.steal[1] {
		return 0
	}
	return 100 * (now[0] - m.steal[0]) / (now[1] - m.steal[1])
}

// foreign marks the pids that belong to neither the benchmark nor the kernel.
func foreign(snap map[int]cpuTicks) map[int]bool {
	self := os.Getpid()
	memo := map[int]int{} // 1 ours or kernel, 2 foreign
	var classify func(pid, depth int) int
	classify = func(pid, depth int) int {
		if v, ok := memo[pid]; ok {
			return v
		}
		v := 2
		p, ok := snap[pid]
		switch {
		case pid == self || pid == 2:
			v = 1
		case !ok || pid <= 1 || depth > 64:
			v = 2
		default:
			if classify(p.ppid, depth+1) == 1 {
				v = 1
			}
		}
		memo[pid] = v
		return v
	}
	out := map[int]bool{}
	for pid := range snap {
		if classify(pid, 0) == 2 {
			out[pid] = true
		}
	}
	return out
}

func (m *foreignMeter) stopTop() (float64, string) {
	now := readCPUTicks()
	el := time.Since(m.at).Seconds()
	fg := foreign(now)
	fg0 := foreign(m.snap)
	gone := map[int]float64{} // parent pid -> time its vanished children had at the start
	for pid, old := range m.snap {
		if p, ok := now[pid]; ok && p.start == old.start {
			continue
		}
		gone[old.ppid] += old.ticks
	}
	byComm := map[string]float64{}
	total := 0.0
	for pid := range fg {
		p := now[pid]
		var d float64
		if old, ok := m.snap[pid]; ok && old.start == p.start {
			if !fg0[pid] {
				continue
			}
			if pid == 1 {
				d = p.own - old.own
			} else {
				d = max(0, p.ticks-old.ticks-gone[pid])
			}
		} else {
			d = p.ticks // started after the first sample
		}
		total += d
		byComm[p.comm] += d
	}
	const hz = 100 // USER_HZ on Linux
	scale := 100 / hz / el / float64(runtime.NumCPU())
	type kv struct {
		k string
		v float64
	}
	var top []kv
	for k, v := range byComm {
		if v*scale >= 1 {
			top = append(top, kv{k, v * scale})
		}
	}
	sort.Slice(top, func(i, j int) bool { return top[i].v > top[j].v })
	var parts []string
	for i, t := range top {
		if i == 4 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f%%", t.k, t.v))
	}
	return total * scale, strings.Join(parts, ", ")
}
