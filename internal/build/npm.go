package build

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sandbox"
)

// DefaultRegistry is the npm registry used when DirOptions.Registry is
// empty.
const DefaultRegistry = "https://registry.npmjs.org/"

// DefaultJSRRegistry is the npm registry of JSR packages (the @jsr scope)
// used when DirOptions.JSRRegistry is empty: JSR serves every package
// there, as @jsr/<scope>__<name>, compiled to JavaScript.
const DefaultJSRRegistry = "https://npm.jsr.io/"

// DefaultInstallTimeout bounds one npm run when DirOptions.InstallTimeout
// is 0.
const DefaultInstallTimeout = 2 * time.Minute

// DefaultNPMLimits bound one npm run in its cgroup (DirOptions.Cgroups)
// where DirOptions.NPMLimits leaves a field 0. 1 GiB (swap included: none
// beyond it) installs large trees (npm itself takes ~100 MiB; a few
// hundred packages, several hundred); 256 processes and threads are
// npm's dozen or two many times over; one CPU at most, and the weight of
// a pooled instance, 1/16 of a serving one's, so that deploys yield to
// requests.
var DefaultNPMLimits = sandbox.Resources{MemoryBytes: 1 << 30, Pids: 256, CPUShares: 1024, CPUQuotaUs: 100000}

// DefaultNPMWriteBytes bounds what one npm run in its cgroup may write
// (DirOptions.NPMWriteBytes 0): the project's node_modules, the tarballs
// it adds to the cache, its temporary files. An install writes each
// package about twice, packed to the cache and unpacked to
// node_modules; 2 GiB takes trees several times the size of the largest
// common ones.
const DefaultNPMWriteBytes = 2 << 30

// npmLimits fills r's zero fields from DefaultNPMLimits.
func npmLimits(r sandbox.Resources) sandbox.Resources {
	d := DefaultNPMLimits
	if r.MemoryBytes > 0 {
		d.MemoryBytes = r.MemoryBytes
	}
	if r.Pids > 0 {
		d.Pids = r.Pids
	}
	if r.CPUShares > 0 {
		d.CPUShares = r.CPUShares
	}
	if r.CPUQuotaUs > 0 {
		d.CPUQuotaUs = r.CPUQuotaUs
	}
	return d
}

// npmImportsDir is where the packages named by npm: specifiers are
// installed, relative to the project. It lies inside node_modules, which
// the server owns (uploads leave it out), and inside the project, so that
// the bundle names its files by a path that does not depend on where the
// build ran.
const npmImportsDir = "node_modules/.spry-npm"

// stderrLines is how much of npm's error output an install failure shows.
const stderrLines = 20

// npmrcAllowed are the settings of a project's .npmrc that are honoured.
// Everything else (registries, credentials, proxies, the git binary, cafile
// and other paths) could make the server talk to other hosts, run programs
// or read its own files, so the file itself is never given to npm.
var npmrcAllowed = map[string]bool{
	"legacy-peer-deps": true,
	"strict-peer-deps": true,
	"engine-strict":    true,
	"install-strategy": true,
	"prefer-dedupe":    true,
}

var (
	// npmNameRE matches package names, legacy upper case included.
	npmNameRE = regexp.MustCompile(`^(?:@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$`)
	// npmRangeRE matches semver ranges and dist-tags, and nothing that
	// names a file, a URL or a git repository.
	npmRangeRE  = regexp.MustCompile(`^[A-Za-z0-9.^~<>=|*+ -]*$`)
	npmrcLineRE = regexp.MustCompile(`^\s*([a-z-]+)\s*=\s*([A-Za-z0-9._-]+)\s*$`)
)

// npmRunner runs npm with a scrubbed environment.
type npmRunner struct {
	bin      string
	registry string
	jsr      string // the @jsr scope's registry
	cache    string
	home     string // an empty HOME, so no user .npmrc is read
	tmp      string
	timeout  time.Duration
	extraEnv []string // allowed .npmrc settings
	scrub    func(string) string
	cred     *syscall.Credential    // who npm runs as; nil: the caller
	own      func(dir string) error // gives a directory npm works in to cred's uid
	cgroups  *sandbox.Builds        // nil: npm runs unbounded (a local build)
	limits   sandbox.Resources      // under cgroups
	maxWrite int64                  // what one run may write, under cgroups
	shared   *npmCache              // the cache, if builds share it
	cacheMax int64                  // its bound
	log      *slog.Logger
}

// env is npm's whole environment: PATH (npm needs node), proxies, and
// settings that make it quiet, scriptless and bound to one registry. No
// token or other variable of the server gets through.
func (n *npmRunner) env() []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + n.home,
		"TMPDIR=" + n.tmp,
		"NO_COLOR=1",
		"npm_config_cache=" + n.cache,
		"npm_config_userconfig=" + filepath.Join(n.home, ".npmrc"),
		"npm_config_registry=" + n.registry,
		"npm_config_@jsr:registry=" + n.jsr,
		"npm_config_audit=false",
		"npm_config_fund=false",
		"npm_config_update_notifier=false",
		"npm_config_progress=false",
		"npm_config_color=false",
		// No debug log in the (shared) cache: stderr is all a build shows.
		"npm_config_logs_max=0",
	}
	for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	// Last, so that nothing before overrides them (exec keeps a
	// variable's last value).
	return append(append(env, n.extraEnv...), lockedNPMEnv...)
}

// npmLocks remembers, per npm binary, whether it honours lockedNPMEnv.
var npmLocks sync.Map // bin -> error

// checkLocks makes sure this npm knows the allow-* settings (npm 11.x):
// an older one would ignore them, silently, and install git and file
// dependencies again. It asks npm once per binary.
func (n *npmRunner) checkLocks() error {
	if err, ok := npmLocks.Load(n.bin); ok {
		if err == nil {
			return nil
		}
		return err.(error)
	}
	cmd := exec.Command(n.bin, "config", "get", "allow-git")
	cmd.Env = n.env()
	cmd.Dir = n.tmp
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: n.cred}
	out, err := cmd.Output()
	if err == nil && strings.TrimSpace(string(out)) != "none" {
		err = fmt.Errorf("npm %s does not know the allow-git setting (%q); an npm with allow-git, allow-file and allow-remote (11.x) is needed to install dependencies safely", n.bin, strings.TrimSpace(string(out)))
	}
	if err != nil {
		err = fmt.Errorf("build: %w", err)
	}
	npmLocks.Store(n.bin, err)
	return err
}

// lockedNPMEnv keeps npm from running anything or reading anything on the
// server, wherever in the tree a dependency asks: no install scripts, and
// no git, tarball URL, file or directory dependencies but the root's
// (whose specs checkDependencySpec has vetted). A git dependency is
// cloned and may be prepared with a nested npm that reads the clone's own
// .npmrc (git=./evil.sh ran as the server's user); a file: one unpacks a
// server file into the bundle.
var lockedNPMEnv = []string{
	"npm_config_ignore_scripts=true",
	"npm_config_allow_git=none",
	"npm_config_allow_remote=none",
	"npm_config_allow_file=none",
	"npm_config_allow_directory=root",
	// libuv's io_uring writes pass no write(2), so the write bound
	// (sandbox.BuildCmd.LimitWrites, which sums wchar) would not see
	// them; libuv 1.46 uses io_uring only when asked, later ones may not.
	"UV_USE_IO_URING=0",
}

// install runs `npm ci` (with a lockfile) or `npm install` in dir.
//
// --ignore-scripts: no install script of any package (nor node-gyp builds)
// ever runs on the server; packages that need one to work won't.
// --omit=dev: only what the function needs at run time.
func (n *npmRunner) install(ctx context.Context, dir string, ci bool) error {
	cmd := "install"
	if ci {
		cmd = "ci"
	}
	err := n.run(ctx, dir, cmd, "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
	if n.shared != nil {
		// Failed installs fill the cache too.
		removed, perr := n.shared.trim(n.cacheMax)
		if perr != nil {
			n.log.Warn("prune the npm cache", "err", perr)
		} else if removed > 0 {
			n.log.Info("pruned the npm cache", "bytes", removed, "max", n.cacheMax)
		}
	}
	return err
}

func (n *npmRunner) run(ctx context.Context, dir string, args ...string) error {
	if err := n.own(dir); err != nil {
		return err
	}
	if n.shared != nil {
		// Until the last of npm's processes is gone (the cgroup's
		// cleanup, deferred after this).
		n.shared.mu.RLock()
		defer n.shared.mu.RUnlock()
	}
	runCtx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	var cmd *exec.Cmd
	var bounded *sandbox.BuildCmd
	if n.cgroups != nil {
		uid := 0
		if n.cred != nil {
			uid = int(n.cred.Uid)
		}
		var err error
		if bounded, err = n.cgroups.Command(runCtx, n.limits, uid, append([]string{n.bin}, args...)); err != nil {
			return fmt.Errorf("build: npm's cgroup: %w", err)
		}
		defer bounded.Cleanup()
		// No cgroup controller bounds what a process writes (io.max
		// bounds rates, and tmpfs reaches no block device): the
		// cgroup's processes are watched while npm runs instead.
		bounded.LimitWrites(n.maxWrite)
		cmd = bounded.Cmd
	} else {
		cmd = exec.CommandContext(runCtx, n.bin, args...)
		// npm starts node, which may start more: they share a process
		// group, killed as one on timeout or cancellation.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: n.cred}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	}
	cmd.Dir = dir
	cmd.Env = n.env()
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	var err error
	if bounded != nil {
		err = bounded.Run() // its Wait reads what npm wrote once more
	} else {
		err = cmd.Run()
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case runCtx.Err() != nil:
		return errdefs.New(errdefs.ErrTimeout, "dependency install timed out after %v", n.timeout)
	case bounded != nil && errors.Is(bounded.WriteErr(), sandbox.ErrWroteTooMuch):
		return errdefs.New(errdefs.ErrTooLarge, "dependency install wrote too much: npm may write at most %d MiB (node_modules, the npm cache and temporary files together)", n.maxWrite>>20)
	case bounded != nil && bounded.WriteErr() != nil:
		return fmt.Errorf("build: %w", bounded.WriteErr())
	case bounded != nil && bounded.OOMKilled():
		return errdefs.New(errdefs.ErrTooLarge, "dependency install ran out of memory: npm may use at most %d MiB", n.limits.MemoryBytes>>20)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("build: run npm: %w", err)
	}
	return errdefs.Invalid("dependency install failed:\n%s", n.tail(stderr.String()))
}

// tail returns the last lines of npm's error output, without the pointer
// to its log file, and with the server's paths taken out.
func (n *npmRunner) tail(s string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if strings.TrimSpace(line) == "" || strings.Contains(line, "A complete log of this run") || strings.Contains(line, "_logs"+string(filepath.Separator)) {
			continue
		}
		lines = append(lines, oneLine(line))
	}
	lines = dropUsage(lines)
	if len(lines) > stderrLines {
		lines = lines[len(lines)-stderrLines:]
	}
	if len(lines) == 0 {
		return "npm failed without a message"
	}
	out := strings.Join(lines, "\n")
	if n.scrub != nil {
		out = n.scrub(out)
	}
	return out
}

// dropUsage drops the usage npm prints after a usage error (`npm ci`
// with a lockfile out of step with package.json): its description,
// "Usage:" and a page of options, which left the error itself out of the
// lines kept, up to its closing `Run "npm help ci" for more info`.
func dropUsage(lines []string) []string {
	content := func(l string) string { return strings.TrimSpace(strings.TrimPrefix(l, "npm error")) }
	for i, l := range lines {
		if content(l) != "Usage:" {
			continue
		}
		start := i
		for start > 0 && content(lines[start-1]) == "" {
			start--
		}
		if start > 0 && strings.HasPrefix(lines[start-1], "npm error ") {
			start-- // the command's description
		}
		end := len(lines)
		for j := i + 1; j < len(lines); j++ {
			if strings.HasPrefix(content(lines[j]), `Run "npm help`) {
				end = j
				break
			}
		}
		return append(lines[:start:start], lines[end:]...)
	}
	return lines
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// readNPMRC returns the allowed settings of the project's .npmrc as npm
// environment variables, and removes the file so npm never reads it.
func readNPMRC(dir string) ([]string, error) {
	p := filepath.Join(dir, ".npmrc")
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	var env []string
	if fi.Mode().IsRegular() && fi.Size() <= maxConfigSize {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			m := npmrcLineRE.FindStringSubmatch(line)
			if m != nil && npmrcAllowed[m[1]] {
				env = append(env, "npm_config_"+strings.ReplaceAll(m[1], "-", "_")+"="+m[2])
			}
		}
	}
	if err := os.Remove(p); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	return env, nil
}

// checkPackageJSON refuses dependencies npm would fetch from somewhere
// other than the registry (files and directories on the server, git
// repositories, tarball URLs) and workspaces outside the project. file
// is its path in the project, for messages.
func checkPackageJSON(file string, p *packageJSON) error {
	for field, deps := range map[string]map[string]string{
		"dependencies":         p.Dependencies,
		"optionalDependencies": p.OptionalDependencies,
		"peerDependencies":     p.PeerDependencies,
	} {
		names := make([]string, 0, len(deps))
		for name := range deps {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if !validNPMName(name) {
				return errdefs.Invalid("%s: %s: %s is not a valid package name", file, field, quoteName(name))
			}
			if err := checkDependencySpec(deps[name]); err != nil {
				return errdefs.Invalid("%s: %s: %s: %v", file, field, name, err)
			}
		}
	}
	if len(p.Overrides) > 0 {
		var walk func(v any) error
		walk = func(v any) error {
			switch v := v.(type) {
			case string:
				if strings.HasPrefix(v, "$") && validNPMName(v[1:]) {
					return nil // a reference to a direct dependency's spec
				}
				return checkDependencySpec(v)
			case map[string]any:
				for _, x := range v {
					if err := walk(x); err != nil {
						return err
					}
				}
			}
			return nil
		}
		var v any
		if err := json.Unmarshal(p.Overrides, &v); err != nil {
			return errdefs.Invalid("%s: overrides: %v", file, err)
		}
		if err := walk(v); err != nil {
			return errdefs.Invalid("%s: overrides: %v", file, err)
		}
	}
	if len(p.Workspaces) > 0 {
		var list []string
		if err := json.Unmarshal(p.Workspaces, &list); err != nil {
			var obj struct {
				Packages []string `json:"packages"`
			}
			if err := json.Unmarshal(p.Workspaces, &obj); err != nil {
				return errdefs.Invalid("%s: workspaces must be a list of paths", file)
			}
			list = obj.Packages
		}
		for _, w := range list {
			if _, err := localPath(w); err != nil {
				return errdefs.Invalid("%s: workspaces: %v", file, err)
			}
		}
	}
	return nil
}

func validNPMName(name string) bool {
	return len(name) <= 214 && npmNameRE.MatchString(name)
}

// checkDependencySpec accepts registry specs: semver ranges, dist-tags and
// npm: aliases.
func checkDependencySpec(spec string) error {
	if rest, ok := strings.CutPrefix(spec, "npm:"); ok {
		imp, err := parseNPMImport(rest)
		if err != nil {
			return err
		}
		if imp.sub != "" {
			return fmt.Errorf("alias %s must not have a subpath", quoteName(spec))
		}
		return nil
	}
	if !npmRangeRE.MatchString(spec) {
		return fmt.Errorf("%s is not a version range; only registry packages can be installed (no files, URLs or git repositories)", quoteName(spec))
	}
	return nil
}

// checkLockfile refuses lockfile entries that point npm ci anywhere but the
// registry, or outside the project.
func checkLockfile(b []byte, registry, jsr string) error {
	var lock struct {
		Packages map[string]struct {
			Resolved string `json:"resolved"`
			Link     bool   `json:"link"`
		} `json:"packages"`
		Dependencies map[string]json.RawMessage `json:"dependencies"`
	}
	if err := json.Unmarshal(b, &lock); err != nil {
		return errdefs.Invalid("package-lock.json: %v", jsonError(b, err))
	}
	okURL := func(u string) bool {
		for _, r := range []string{registry, DefaultRegistry, jsr, DefaultJSRRegistry} {
			if strings.HasPrefix(u, r) {
				return true
			}
		}
		return u == ""
	}
	keys := make([]string, 0, len(lock.Packages))
	for k := range lock.Packages {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := lock.Packages[k]
		if k != "" {
			if _, err := localPath(k); err != nil {
				return errdefs.Invalid("package-lock.json: packages: %v", err)
			}
		}
		if e.Link {
			if _, err := localPath(e.Resolved); err != nil {
				return errdefs.Invalid("package-lock.json: %s: %v", k, err)
			}
		} else if !okURL(e.Resolved) {
			return errdefs.Invalid("package-lock.json: %s is resolved to %s; only packages from %s can be installed", k, quoteName(e.Resolved), registry)
		}
	}
	// Lockfile version 1 nests "dependencies".
	var walk func(deps map[string]json.RawMessage) error
	walk = func(deps map[string]json.RawMessage) error {
		for name, raw := range deps {
			var d struct {
				Version      string                     `json:"version"`
				Resolved     string                     `json:"resolved"`
				Dependencies map[string]json.RawMessage `json:"dependencies"`
			}
			if err := json.Unmarshal(raw, &d); err != nil {
				return errdefs.Invalid("package-lock.json: %s: %v", name, err)
			}
			if !okURL(d.Resolved) || strings.Contains(d.Version, ":") {
				return errdefs.Invalid("package-lock.json: %s is not from the registry; only packages from %s can be installed", name, registry)
			}
			if err := walk(d.Dependencies); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(lock.Dependencies)
}

// jsrPartRE matches a JSR scope or package name.
var jsrPartRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// parseJSRImport parses what follows "jsr:" in a specifier
// (@scope/name@range/sub) into the npm import of the same package in
// JSR's npm registry: @jsr/scope__name@range/sub.
func parseJSRImport(s string) (npmImport, error) {
	orig := s
	s = strings.TrimPrefix(s, "/")
	scope, rest, ok := strings.Cut(strings.TrimPrefix(s, "@"), "/")
	if !strings.HasPrefix(s, "@") || !ok || !jsrPartRE.MatchString(scope) {
		return npmImport{}, fmt.Errorf("jsr:%s: a JSR package is named @scope/name", orig)
	}
	end := strings.IndexAny(rest, "@/")
	if end < 0 {
		end = len(rest)
	}
	if !jsrPartRE.MatchString(rest[:end]) {
		return npmImport{}, fmt.Errorf("jsr:%s: %s is not a valid package name", orig, quoteName(rest[:end]))
	}
	return parsePackageImport("@jsr/"+scope+"__"+rest, "jsr:"+orig)
}

// specifier names an installed package as the code imports it.
func specifier(name string) string {
	if rest, ok := strings.CutPrefix(name, "@jsr/"); ok {
		if scope, pkg, ok := strings.Cut(rest, "__"); ok {
			return "jsr:@" + scope + "/" + pkg
		}
	}
	return "npm:" + name
}

// npmImport is an npm: specifier: npm:name@range/sub.
type npmImport struct {
	name, rng, sub string
}

// parseNPMImport parses what follows "npm:" in a specifier.
func parseNPMImport(s string) (npmImport, error) { return parsePackageImport(s, "npm:"+s) }

// parsePackageImport parses name@range/sub (s) of the specifier spec,
// which its errors name.
func parsePackageImport(s, spec string) (npmImport, error) {
	s = strings.TrimPrefix(s, "/")
	var imp npmImport
	nameEnd := 0
	if strings.HasPrefix(s, "@") {
		slash := strings.IndexByte(s, '/')
		if slash < 0 {
			return imp, fmt.Errorf("%s: a scoped package needs a name after the scope", spec)
		}
		nameEnd = slash + 1
	}
	if i := strings.IndexAny(s[nameEnd:], "@/"); i >= 0 {
		nameEnd += i
	} else {
		nameEnd = len(s)
	}
	imp.name, s = s[:nameEnd], s[nameEnd:]
	if !validNPMName(imp.name) {
		return imp, fmt.Errorf("%s: %s is not a valid package name", spec, quoteName(imp.name))
	}
	if strings.HasPrefix(s, "@") {
		end := strings.IndexByte(s, '/')
		if end < 0 {
			end = len(s)
		}
		imp.rng, s = s[1:end], s[end:]
		if imp.rng == "" || !npmRangeRE.MatchString(imp.rng) {
			return imp, fmt.Errorf("%s: %s is not a version range", spec, quoteName(imp.rng))
		}
	}
	if s != "" {
		for _, c := range strings.Split(strings.TrimPrefix(s, "/"), "/") {
			if c == "" || c == "." || c == ".." {
				return imp, fmt.Errorf("%s: invalid subpath %s", spec, quoteName(s))
			}
		}
		imp.sub = s
	}
	return imp, nil
}

// npmImports collects the npm: specifiers a build meets, to install them
// together.
type npmImports struct {
	mu     sync.Mutex
	ranges map[string]map[string]bool // name -> ranges ("" for none)
}

func (c *npmImports) add(imp npmImport) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ranges == nil {
		c.ranges = map[string]map[string]bool{}
	}
	if c.ranges[imp.name] == nil {
		c.ranges[imp.name] = map[string]bool{}
	}
	c.ranges[imp.name][imp.rng] = true
}

// dependencies returns the package.json dependencies to install: each
// package at the one range it is imported with ("latest" if none). Two
// different ranges for one package are refused: one copy is bundled.
func (c *npmImports) dependencies() (map[string]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	deps := map[string]string{}
	for name, set := range c.ranges {
		var ranges []string
		for r := range set {
			if r != "" {
				ranges = append(ranges, r)
			}
		}
		sort.Strings(ranges)
		switch len(ranges) {
		case 0:
			deps[name] = "latest"
		case 1:
			deps[name] = ranges[0]
		default:
			return nil, errdefs.Invalid("%s is imported with different versions (%s); import one version", specifier(name), strings.Join(ranges, ", "))
		}
	}
	return deps, nil
}

// writeImportsPackage prepares the directory npm: imports are installed in.
func writeImportsPackage(dir string, deps map[string]string) (string, error) {
	nm := filepath.Join(dir, "node_modules")
	if fi, err := os.Lstat(nm); err == nil && !fi.IsDir() {
		return "", errdefs.Invalid("node_modules is not a directory")
	}
	target := filepath.Join(dir, filepath.FromSlash(npmImportsDir))
	if err := os.RemoveAll(target); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	pkg, err := json.MarshalIndent(map[string]any{
		"name":         "spry-npm-imports",
		"private":      true,
		"dependencies": deps,
	}, "", "  ")
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	if err := os.WriteFile(filepath.Join(target, "package.json"), pkg, 0o644); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	return target, nil
}

// registryURL normalizes a registry URL to end in "/"; empty means def.
func registryURL(s, def string) (string, error) {
	if s == "" {
		return def, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("build: invalid npm registry %q", s)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String(), nil
}

// isDependency reports whether rel (slash-separated, relative to the
// project) is inside a node_modules directory.
func isDependency(rel string) bool {
	for _, c := range strings.Split(path.Clean(rel), "/") {
		if c == "node_modules" {
			return true
		}
	}
	return false
}
