package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cleanups is a LIFO stack of things to undo. It runs once, either at the
// end of main or from the signal handler; anything registered after it ran
// is undone at once.
type cleanupStack struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

var cleanups cleanupStack

func (c *cleanupStack) push(f func()) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		f()
		return
	}
	c.fns = append(c.fns, f)
	c.mu.Unlock()
}

func (c *cleanupStack) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// proc is a child process the benchmark started. Each gets its own process
// group (so a terminal's Ctrl-C reaches only the benchmark, which then
// stops it in order) and SIGTERM when the benchmark dies.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	cleanups.push(func() { _ = p.stop(40 * time.Second) })
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills the whole process
// group. It is safe to call more than once.
func (p *proc) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if st := p.cmd.ProcessState; st != nil && !st.Success() {
			return fmt.Errorf("%s exited with %s after SIGTERM", p.name, st)
		}
		return nil
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed its process group", p.name, grace)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// spryServer is one running `spry serve` on a fresh data directory.
type spryServer struct {
	*proc
	label   string
	dir     string
	data    string
	runDir  string
	url     string
	token   string
	uidBase int
	args    []string
	logPath string
	api     *http.Client
	tls     *benchTLS // its certificate when it serves HTTPS, else nil
	stopped bool      // shutdown ran
}

// client is newClient for this server: it trusts the server's CA when
// the server serves HTTPS.
func (s *spryServer) client(conns int, timeout time.Duration) *http.Client {
	c := newClient(conns, timeout)
	if s.tls != nil {
		c.Transport.(*http.Transport).TLSClientConfig = s.tls.client.Clone()
	}
	return c
}

// startSpry starts `spry serve` on loopback with a fresh data dir under
// env.tmp, with uids from uidBase, plus extra flags.
func startSpry(ctx context.Context, env *benchEnv, label string, uidBase int, extra ...string) (*spryServer, error) {
	return startSpryTLS(ctx, env, label, uidBase, nil, extra...)
}

// startSpryTLS is startSpry serving HTTPS with tlsc's certificate
// (--tls-cert, --tls-key), or plain HTTP when tlsc is nil.
func startSpryTLS(ctx context.Context, env *benchEnv, label string, uidBase int, tlsc *benchTLS, extra ...string) (*spryServer, error) {
	dir := filepath.Join(env.tmp, label)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &spryServer{label: label, dir: dir, data: filepath.Join(dir, "data"), uidBase: uidBase,
		url: fmt.Sprintf("http://127.0.0.1:%d", port), logPath: filepath.Join(dir, "spry.log"), tls: tlsc}
	s.api = s.client(16, 2*time.Minute)
	sum := sha256.Sum256([]byte(s.data))
	s.runDir = filepath.Join("/run/spry", hex.EncodeToString(sum[:6]))
	s.args = append([]string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", s.data,
		"--uid-base", strconv.Itoa(uidBase), "--log-level", "warn"}, env.runtimeFlags...)
	if tlsc != nil {
		s.url = fmt.Sprintf("https://127.0.0.1:%d", port)
		s.args = append(s.args, "--tls-cert", tlsc.certFile, "--tls-key", tlsc.keyFile)
	}
	s.args = append(s.args, extra...)
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(env.spryBin, s.args...)
	cmd.Dir = env.root
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOME="+dir)
	// Pushed before the process's own stop, so that (the cleanups run
	// last in, first out) the run dir goes only once spry serve has
	// stopped and its sandboxes are gone, not from under them.
	cleanups.push(func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if len(sandboxProcs(s.uidBase, s.uidBase+uidSpan)) == 0 {
				break
			}
		}
		_ = os.RemoveAll(s.runDir)
	})
	p, err := startProc("spry serve ("+label+")", cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	s.proc = p
	env.addServer(s)
	logf2("%s: started spry serve %s", label, strings.Join(s.args[1:], " "))
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		if p.exited() {
			return s, fmt.Errorf("spry serve exited while starting: %s", s.logTail(20))
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("spry serve was not ready within 60s: %s", s.logTail(20))
		}
		res, err := s.api.Get(s.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(s.data, "admin.token"))
	if err != nil {
		return s, err
	}
	s.token = strings.TrimSpace(string(tok))
	return s, nil
}

func (s *spryServer) logTail(n int) string {
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// shutdown stops the server, checks that its sandboxes are gone and
// summarises what it logged.
func (s *spryServer) shutdown(env *benchEnv) {
	if s == nil || s.proc == nil || s.stopped {
		return
	}
	s.stopped = true
	if s.exited() {
		env.note("%s: spry serve had already exited (%v) before the benchmark stopped it; log tail:\n%s", s.label, s.cmd.ProcessState, s.logTail(10))
	}
	start := time.Now()
	if err := s.stop(60 * time.Second); err != nil {
		env.note("%s: %v", s.label, err)
	}
	logf2("%s: spry serve stopped in %s", s.label, time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := sandboxProcs(s.uidBase, s.uidBase+uidSpan)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			env.note("%s: %d sandbox processes were still alive 10s after spry serve stopped", s.label, len(left))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.RemoveAll(s.runDir)
	s.summarizeLog(env)
	if env.logDir != "" {
		if data, err := os.ReadFile(s.logPath); err == nil && len(data) > 0 {
			if os.MkdirAll(env.logDir, 0o755) == nil {
				_ = os.WriteFile(filepath.Join(env.logDir, s.label+".log"), data, 0o644)
			}
		}
	}
}

// summarizeLog records the warnings and errors spry logged (it runs at
// --log-level warn), grouped by message.
func (s *spryServer) summarizeLog(env *benchEnv) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	msgRe := regexp.MustCompile(`level=(WARN|ERROR) msg=("(?:[^"\\]|\\.)*"|\S+)`)
	counts := map[string]int{}
	examples := map[string]string{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := msgRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		key := m[1] + " " + m[2]
		if counts[key] == 0 {
			order = append(order, key)
			examples[key] = truncate(line, 400)
		}
		counts[key]++
	}
	info := env.serverInfo(s)
	for _, k := range order {
		info.LogSummary = append(info.LogSummary, logCount{Message: k, Count: counts[k], Example: examples[k]})
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// nginxServer is nginx with its own config, pid file, logs and temp paths
// in a temp dir: one worker, proxying to one Unix socket with keep-alive.
type nginxServer struct {
	*proc
	dir     string
	url     string
	stopped bool
}

// nginxConf is nginx's config: one worker, everything under dir, a
// keep-alive upstream to socket, listening on 127.0.0.1:port, with TLS
// (HTTP/1.1, as spry serve's, TLS 1.2 and 1.3) when tlsc is given.
func nginxConf(dir, socket string, port int, tlsc *benchTLS) string {
	listen := fmt.Sprintf("listen 127.0.0.1:%d;", port)
	if tlsc != nil {
		listen = fmt.Sprintf(`listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;`, port, tlsc.certFile, tlsc.keyFile)
	}
	return fmt.Sprintf(`# written by spry's bench; removed afterwards
user root;
worker_processes 1;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    upstream deno {
        server unix:%[2]s;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        %[3]s
        location / {
            proxy_pass http://deno;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
}
`, dir, socket, listen)
}

// startNginx starts nginx proxying to socket; with tlsc, it serves HTTPS
// with tlsc's certificate.
func startNginx(ctx context.Context, env *benchEnv, socket string, tlsc *benchTLS) (*nginxServer, error) {
	dir := filepath.Join(env.tmp, "nginx")
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := nginxConf(dir, socket, port, tlsc)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	bin := env.nginxBin
	if out, err := exec.Command(bin, "-t", "-q", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nginx -t: %v: %s", err, out)
	}
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := startProc("nginx", cmd)
	logf.Close()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if tlsc != nil {
		scheme = "https"
	}
	n := &nginxServer{proc: p, dir: dir, url: fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)}
	env.nginxPIDs = append(env.nginxPIDs, cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p.exited() {
			data, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return n, fmt.Errorf("nginx exited while starting: %s", data)
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return n, fmt.Errorf("nginx did not listen within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf2("nginx: 1 worker on %s -> unix:%s", n.url, socket)
	return n, nil
}

func (n *nginxServer) shutdown(env *benchEnv) {
	if n == nil || n.proc == nil || n.stopped {
		return
	}
	n.stopped = true
	if err := n.stop(20 * time.Second); err != nil {
		env.note("nginx: %v", err)
	}
	if data, _ := os.ReadFile(filepath.Join(n.dir, "error.log")); len(strings.TrimSpace(string(data))) > 0 {
		env.note("nginx error.log: %s", truncate(strings.TrimSpace(string(data)), 800))
		_ = os.Remove(filepath.Join(n.dir, "error.log"))
	}
}

// wrkResult is what the Lua done() hook and wrk's own summary report.
type wrkResult struct {
	URL         string  `json:"url"`
	Threads     int     `json:"threads"`
	Connections int     `json:"connections"`
	DurationS   float64 `json:"duration_s"`
	Requests    float64 `json:"requests"`
	Bytes       float64 `json:"bytes"`
	RPS         float64 `json:"rps"`
	ErrConnect  float64 `json:"err_connect"`
	ErrRead     float64 `json:"err_read"`
	ErrWrite    float64 `json:"err_write"`
	ErrStatus   float64 `json:"err_status"` // responses with status > 399
	ErrTimeout  float64 `json:"err_timeout"`
	Non2xx      int     `json:"non_2xx_3xx"` // from wrk's own output: the same counter as ErrStatus
	P50us       float64 `json:"p50_us"`
	P90us       float64 `json:"p90_us"`
	P99us       float64 `json:"p99_us"`
	P999us      float64 `json:"p99_9_us"`
	MaxUs       float64 `json:"max_us"`
	MeanUs      float64 `json:"mean_us"`
	// CPU throttling of the Deno instance's cgroup during the run (its
	// --cpu quota), when readable.
	ThrottledPeriods jnum `json:"deno_throttled_periods"`
	ThrottledMs      jnum `json:"deno_throttled_ms"`
	// CPU used by processes other than the benchmark's during the run, in
	// percent of the machine.
	ForeignCPU float64 `json:"other_processes_cpu_pct"`
	StealCPU   float64 `json:"steal_cpu_pct"`
	ForeignTop string  `json:"other_processes_top,omitempty"`
}

// errors counts the failed requests. wrk prints its "Non-2xx or 3xx
// responses" line from the same counter as summary.errors.status
// (responses with status > 399), so the two are one count, not two.
func (w *wrkResult) errors() float64 {
	return w.ErrConnect + w.ErrRead + w.ErrWrite + w.ErrTimeout + math.Max(w.ErrStatus, float64(w.Non2xx))
}

const wrkLua = `-- written by spry's bench: prints one JSON line when wrk is done
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,"err_timeout":%.0f,' ..
    '"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
`

var non2xxRe = regexp.MustCompile(`Non-2xx or 3xx responses:\s*(\d+)`)

// runWrk runs wrk against url and parses its results.
func runWrk(ctx context.Context, env *benchEnv, url string, threads, conns int, d time.Duration) (*wrkResult, error) {
	script := filepath.Join(env.tmp, "wrk.lua")
	if _, err := os.Stat(script); err != nil {
		if err := os.WriteFile(script, []byte(wrkLua), 0o644); err != nil {
			return nil, err
		}
	}
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns), "-d", fmt.Sprintf("%.0fs", d.Seconds()),
		"--timeout", "5s", "--latency", "-s", script, url}
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, env.wrkBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("wrk %s: %v: %s", strings.Join(args, " "), err, out)
	}
	r := &wrkResult{URL: url, Threads: threads, Connections: conns}
	var raw struct {
		Requests, DurationUs, Bytes                          float64
		ErrConnect, ErrRead, ErrWrite, ErrStatus, ErrTimeout float64
		P50, P90, P99, P999, Max, Mean                       float64
	}
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(line, "BENCHJSON "); ok {
			var m map[string]float64
			if err := json.Unmarshal([]byte(j), &m); err != nil {
				return nil, fmt.Errorf("parse wrk summary %q: %v", j, err)
			}
			raw.Requests, raw.DurationUs, raw.Bytes = m["requests"], m["duration_us"], m["bytes"]
			raw.ErrConnect, raw.ErrRead, raw.ErrWrite, raw.ErrStatus, raw.ErrTimeout = m["err_connect"], m["err_read"], m["err_write"], m["err_status"], m["err_timeout"]
			raw.P50, raw.P90, raw.P99, raw.P999, raw.Max, raw.Mean = m["p50"], m["p90"], m["p99"], m["p999"], m["max"], m["mean"]
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("wrk printed no summary: %s", out)
	}
	r.Requests, r.Bytes = raw.Requests, raw.Bytes
	r.DurationS = raw.DurationUs / 1e6
	if r.DurationS > 0 {
		r.RPS = r.Requests / r.DurationS
	}
	r.ErrConnect, r.ErrRead, r.ErrWrite, r.ErrStatus, r.ErrTimeout = raw.ErrConnect, raw.ErrRead, raw.ErrWrite, raw.ErrStatus, raw.ErrTimeout
	r.P50us, r.P90us, r.P99us, r.P999us, r.MaxUs, r.MeanUs = raw.P50, raw.P90, raw.P99, raw.P999, raw.Max, raw.Mean
	if m := non2xxRe.FindStringSubmatch(string(out)); m != nil {
		r.Non2xx, _ = strconv.Atoi(m[1])
	}
	if r.Requests == 0 {
		return r, errors.New("wrk completed no request")
	}
	return r, nil
}
