// Package dev runs one function on this machine for development (`spry
// dev`). It assembles the platform's own parts around one source file or
// project directory — build, blob, sandbox, a runtime, backend/local, the
// activator and the router — so the function runs exactly as it would
// when deployed, with no data directory, store or token. It serves the
// function's paths at the root of a local port, rebuilds and swaps in a
// new version whenever the source changes (a build error, or a module that does not load, keeps the
// previous version serving), and prints the function's output and one
// line per request.
package dev

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/archive"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/backend/local"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/build"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/httpserve"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/router"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/sandbox"
	"github.com/spry-run/spry/internal/schedule"
)

// Owner is the namespace the function runs in: ctx.owner.
const Owner = "dev"

// Default instance uids start here (plus 100 per port number, so that
// sessions on different ports get distinct uids, well away from the
// range `spry serve` uses by default).
const (
	defaultUIDBase = 2100000
	uidCount       = 100
)

// Config is one `spry dev` session.
type Config struct {
	// File is the function's source: one file, built as `spry deploy
	// FILE` builds it, or a project directory, built as `spry deploy
	// DIR` builds it (its imports, package.json dependencies, deno.json).
	File        string
	Entry       string            // a project's entry file, relative to it; "" finds it
	NPMRegistry string            // the npm registry for dependencies; "" is npm's
	Name        string            // ctx.name; a valid function name
	Listen      string            // host:port to serve on
	Runtime     string            // "deno" or "node"
	Env         map[string]string // ctx.env
	MemoryMiB   int
	Timeout     time.Duration // per invocation
	Network     string        // "egress" or "none"
	// UIDBase is the first host uid for instances; 0 picks one from the
	// port.
	UIDBase    int
	DenoBinary string // "" finds the pinned one
	NodeBinary string
	Poll       time.Duration // how often the file is checked; 0 means 250ms
	// SlowLoad is how long a new version may load before the terminal
	// says it still is; 0 means 2s.
	SlowLoad time.Duration
	// Cron, if set, runs the scheduled handler on that schedule, as
	// `spry serve` runs a deployed function's.
	Cron string
	// TestScheduled serves /__scheduled, which runs the scheduled
	// handler once now (its event's cron from ?cron=, or Cron), as
	// wrangler dev --test-scheduled does.
	TestScheduled bool
	// Out is the terminal: builds, reloads, the function's output and one
	// access line per request.
	Out io.Writer
	// Logger gets the parts' own logs (failed starts and the like).
	Logger *slog.Logger
	// Hurry, once closed (a second Ctrl-C), ends the wait for requests in
	// flight after ctx ends: they are cut as the instances are killed.
	// What the session made is removed all the same. nil never hurries.
	Hurry <-chan struct{}
}

// blobsFor is what the backend reads bundles through: the store. A
// variable, so that a test can hold a start at its bundle's lookup.
var blobsFor = func(s *blob.Store) local.Blobs { return s }

// drainTimeout is how long requests in flight may take to finish once
// the session stops, unless Hurry cuts it short.
const drainTimeout = 5 * time.Second

// session is a running `spry dev`.
type session struct {
	cfg      Config
	id       string // "dev-<random>": names what the session makes
	dir      bool   // cfg.File is a project directory
	npmCache string // npm's cache for the session's builds
	log      *slog.Logger
	blobs    *blob.Store
	act      *activator.Activator
	prefix   string // "/fn/dev/<name>", what the router expects in front of the path

	live    atomic.Pointer[backend.Spec]
	lastErr atomic.Pointer[string] // the build error while nothing is live

	// Owned by reload, and by the load it leaves pending until that ends
	// (reload is not called meanwhile):
	version  int64 // the last version number given, live or not
	unloaded bool  // the last save built but did not load, or was dropped

	outMu sync.Mutex
}

// Run serves cfg.File until ctx ends, then lets requests in flight
// finish (for up to drainTimeout, or until cfg.Hurry is closed), stops
// every instance and removes what it made (run directory, cgroups,
// bundles). It needs root, as `spry serve` does.
func Run(ctx context.Context, cfg Config) error {
	if os.Geteuid() != 0 {
		return errdefs.New(errdefs.ErrPermissionDenied, "spry dev needs root: it runs the function in the platform's sandbox (a cgroup and a host uid per instance); run it with sudo")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.SlowLoad <= 0 {
		cfg.SlowLoad = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// The source is read before anything is made: one that cannot be
	// read (missing, unreadable) stops the session here.
	fi, err := os.Stat(cfg.File)
	if err != nil {
		return errdefs.Invalid("%v", err)
	}
	if cfg.Entry != "" && !fi.IsDir() {
		return errdefs.Invalid("--entry is for a project directory; %s is a file", cfg.File)
	}
	w := &watcher{path: cfg.File, dir: fi.IsDir(), now: time.Now}
	code, _, err := w.check()
	if err != nil {
		return errdefs.Invalid("%v", err)
	}
	if cfg.Cron != "" {
		if _, err := schedule.Parse(cfg.Cron); err != nil {
			return err
		}
	}
	s := &session{cfg: cfg, dir: w.dir, log: cfg.Logger, prefix: router.Prefix + Owner + "/" + cfg.Name}

	ln, err := net.Listen("tcp", cfg.Listen)
	if errors.Is(err, syscall.EADDRINUSE) {
		return errdefs.New(errdefs.ErrUnavailable, "%s is in use (another spry dev?): pass another --port, or --port 0 for a free one", cfg.Listen)
	}
	if err != nil {
		return errdefs.New(errdefs.ErrUnavailable, "%v", err)
	}
	defer ln.Close()
	uidBase := cfg.UIDBase
	if uidBase == 0 {
		uidBase = defaultUIDBase + ln.Addr().(*net.TCPAddr).Port*uidCount
	}

	// Everything this session makes is named by one random id and removed
	// on the way out, in the reverse order.
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	id := "dev-" + randomHex(6)
	s.id = id
	blobDir, err := os.MkdirTemp("", "spry-"+id+"-")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(blobDir) })
	if s.blobs, err = blob.Open(blobDir); err != nil {
		return err
	}
	// ctx.kv works as deployed, on entries that last the session.
	kvDir, err := os.MkdirTemp("", "spry-"+id+"-kv-")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(kvDir) })
	// npm's cache lasts the session, so that a save does not fetch the
	// dependencies again.
	if s.npmCache, err = os.MkdirTemp("", "spry-"+id+"-npm-"); err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(s.npmCache) })
	store, err := kv.Open(ctx, filepath.Join(kvDir, "kv.db"), kv.Options{})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { store.Close() })
	runDir := filepath.Join("/run/spry", id)
	cleanups = append(cleanups, func() { os.RemoveAll(runDir) })
	if err := sandbox.MkdirReachable(runDir); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}

	rt, libs, err := newRuntime(cfg, runDir)
	if err != nil {
		return err
	}
	sb, err := sandbox.New(sandbox.Config{CgroupParent: "spry/" + id, SystemLibs: libs, StateDir: runDir})
	if err != nil {
		return err
	}
	// Sweep after the backend has stopped: whatever is left in the
	// session's cgroups is killed, and the cgroups removed.
	cleanups = append(cleanups, func() { sb.Sweep() })
	back, err := local.New(local.Config{
		RunDir:           runDir,
		Sandbox:          sb,
		Runtimes:         []local.Runtime{rt},
		Blobs:            blobsFor(s.blobs),
		Logs:             s,
		Logger:           s.log,
		PoolSize:         1,
		DefaultMemoryMiB: cfg.MemoryMiB,
		DefaultNetwork:   cfg.Network,
		UIDBase:          uidBase,
		UIDCount:         uidCount,
		Pids:             256,
		CPUQuotaUs:       100000,
		TmpBytes:         64 << 20,
		NoFiles:          1024,
		KV:               store,
	})
	if err != nil {
		return err
	}
	s.act = activator.New(back, activator.Config{ScaleToZeroAfter: time.Hour, StartTimeout: loadTimeout, Logger: s.log})
	cleanups = append(cleanups, func() {
		back.Close()
		s.act.Close()
	})
	rtr := router.New(s, s.act, router.Config{Timeout: cfg.Timeout, Logger: s.log, Access: s})

	s.reload(ctx, code) // the first version goes live at once: nothing pends
	srv := httpserve.New(s.handler(rtr), s.log)
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.act.Run(bg, 500*time.Millisecond) }()
	go func() { defer wg.Done(); s.watch(bg, w) }()
	cleanups = append(cleanups, func() { stopBG(); wg.Wait() })
	if cfg.Cron != "" {
		sched := s.scheduler()
		wg.Add(1)
		go func() { defer wg.Done(); sched.Run(bg) }()
		// Before the background stops: no run starts while the
		// instances stop, and those under way are cut off.
		cleanups = append(cleanups, sched.Close)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(httpserve.Listener(ln, httpserve.WatchAfter, s.log)) }()
	s.printf("serving %s (%s) on http://%s/\n", cfg.File, rt.Name(), ln.Addr())
	s.printf("instances run in %s as uids %d-%d; reloading on save; Ctrl-C stops\n", runDir, uidBase, uidBase+uidCount-1)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.printf("stopping\n")
	// Hurry only shortens this wait: the cleanups above run either way,
	// so a second Ctrl-C leaves nothing behind either.
	sctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	go func() {
		select {
		case <-cfg.Hurry:
			cancel()
		case <-sctx.Done():
		}
	}()
	if err := srv.ShutdownWithContext(sctx); err != nil && hurried(cfg.Hurry) {
		s.printf("stopping now: requests in flight are cut\n")
	}
	return nil
}

// hurried reports whether h has been closed.
func hurried(h <-chan struct{}) bool {
	select {
	case <-h:
		return true
	default:
		return false
	}
}

// newRuntime prepares the one runtime the session uses and the host
// libraries its binary needs inside the sandbox.
func newRuntime(cfg Config, runDir string) (local.Runtime, []string, error) {
	find, cache := runtime.FindDeno, "/var/lib/spry/runtimes"
	explicit := cfg.DenoBinary
	if cfg.Runtime == "node" {
		find, explicit = runtime.FindNode, cfg.NodeBinary
	}
	bin, err := find(explicit)
	if err != nil {
		return nil, nil, err
	}
	libs, err := sandbox.SharedLibs(bin)
	if err != nil {
		return nil, nil, err
	}
	exposed, err := sandbox.Expose(bin, cache)
	if err != nil {
		return nil, nil, fmt.Errorf("make %s reachable from sandboxes: %w", bin, err)
	}
	bin = exposed
	switch cfg.Runtime {
	case "deno":
		rt, err := runtime.NewDeno(bin, runDir)
		return rt, libs, err
	case "node":
		rt, err := runtime.NewNode(bin, runDir)
		return rt, libs, err
	}
	return nil, nil, errdefs.Invalid("unknown runtime %q: want deno or node", cfg.Runtime)
}

// handler gives the router the function to serve a request to /<rest>
// with: this session's.
func (s *session) handler(rt *router.Router) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if s.live.Load() == nil {
			// Nothing to route to yet: say why, and log the request as the
			// router would.
			start := time.Now()
			httpserve.WriteError(ctx, s.notBuilt())
			s.access(nil, string(ctx.Method()), string(ctx.RequestURI()), ctx.Response.StatusCode(), time.Since(start), false)
			return
		}
		path := string(ctx.URI().PathOriginal())
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		if s.cfg.TestScheduled && path == scheduledPath {
			s.testScheduled(ctx)
			return
		}
		rt.ServeFunction(ctx, Owner, s.cfg.Name, path)
	}
}

// scheduledPath runs the scheduled handler (Config.TestScheduled).
const scheduledPath = "/__scheduled"

// scheduler runs the live version's scheduled handler on Config.Cron.
func (s *session) scheduler() *schedule.Scheduler {
	return schedule.New(schedule.Config{
		Jobs: func() []schedule.Job { return []schedule.Job{{Key: s.cfg.Name, Cron: s.cfg.Cron}} },
		Fire: func(ctx context.Context, j schedule.Job, at time.Time) error {
			return s.runScheduled(ctx, j.Cron, at, true)
		},
		Logger: s.log,
	})
}

// testScheduled answers a request for /__scheduled: the scheduled
// handler run now, 200 once it has returned, or its error's status (400
// without a scheduled method, 502 if it threw, 504 past the timeout).
func (s *session) testScheduled(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	cron := s.cfg.Cron
	if c := ctx.QueryArgs().Peek("cron"); c != nil {
		cron = string(c)
	}
	// Not the request's context: fasthttp's RequestCtx.Done races with
	// its server's shutdown. The run is bounded by the timeout.
	if err := s.runScheduled(context.Background(), cron, start, false); err != nil {
		httpserve.WriteError(ctx, err)
	} else {
		ctx.SetContentType("text/plain; charset=utf-8")
		ctx.SetBodyString("ran the scheduled handler\n")
	}
	s.access(s.live.Load(), string(ctx.Method()), string(ctx.RequestURI()), ctx.Response.StatusCode(), time.Since(start), false)
}

// runScheduled runs the live version's scheduled handler for the event
// (cron, at) within the function's timeout, and prints how it went.
func (s *session) runScheduled(ctx context.Context, cron string, at time.Time, timed bool) error {
	spec := s.live.Load()
	if spec == nil {
		return s.notBuilt()
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	t0 := time.Now()
	_, err := s.act.RunScheduled(ctx, spec, cron, at)
	s.printf("v%d %s\n", spec.Version, schedule.Outcome(ctx, cron, at, timed, time.Since(t0), s.cfg.Timeout, err))
	return err
}

// Resolve is the router's resolver: there is one function, and its live
// version is the last one that built.
func (s *session) Resolve(_ context.Context, owner, name, _ string) (*backend.Spec, error) {
	if owner != Owner || name != s.cfg.Name {
		return nil, errdefs.ErrNotFound
	}
	if spec := s.live.Load(); spec != nil {
		return spec, nil
	}
	return nil, s.notBuilt()
}

// notBuilt is the answer to requests while no version has built.
func (s *session) notBuilt() error {
	msg := "the build failed"
	if p := s.lastErr.Load(); p != nil {
		msg = *p
	}
	return errdefs.New(errdefs.ErrUnavailable, "%s does not build yet; fix it and save: %s", s.label(), msg)
}

// label names the source in the terminal: the file's name, or the
// project directory's with a slash.
func (s *session) label() string {
	if !s.dir {
		return filepath.Base(s.cfg.File)
	}
	abs, err := filepath.Abs(s.cfg.File)
	if err != nil {
		abs = s.cfg.File
	}
	return filepath.Base(abs) + "/"
}

// Invoked is part of the resolver; nothing records invocations here.
func (s *session) Invoked(*backend.Spec) {}

// watch rebuilds the function whenever w reports that the file changed,
// checking every Poll. A new version loads while the checks go on: a
// change drops a version still loading before it builds the new one.
func (s *session) watch(ctx context.Context, w *watcher) {
	var failing string // the error last printed, while checks fail
	var p *pending     // the version loading, if any
	var psum [32]byte  // the content p was built from
	defer func() { p.wait() }()
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		code, changed, err := w.check()
		if err != nil {
			// Editors that save by deleting and writing anew leave the
			// file missing for a moment; say so once, and keep serving.
			if msg := err.Error(); msg != failing {
				s.printf("cannot read %s: %v\n", s.cfg.File, err)
				failing = msg
			}
			continue
		}
		failing = ""
		if changed {
			// The content p loads, read again (a touch, or a save whose
			// stamp the previous check read before it): building it again
			// would drop a load as good as the next and start it over.
			if p.loading() && w.sum == psum {
				continue
			}
			p.supersede()
			psum = w.sum
			p = s.reload(ctx, code)
		}
	}
}

// pending is a new version loading while the previous one serves.
type pending struct {
	cancel context.CancelCauseFunc
	done   chan struct{} // closed once it is live, dropped or failed
}

// errSuperseded ends a pending load: the file changed again.
var errSuperseded = errors.New("the file changed again")

// supersede drops p's version unless it is live already, and returns
// once it has settled (at once: nothing waits for the instance to end).
// A nil p has nothing to drop.
func (p *pending) supersede() {
	if p != nil {
		p.cancel(errSuperseded)
		p.wait()
	}
}

// loading reports whether p's version is still loading.
func (p *pending) loading() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait returns once p's version is live, dropped or failed.
func (p *pending) wait() {
	if p != nil {
		<-p.done
	}
}

// reload builds code, the file's content, and, if it built into a new
// bundle, makes that the live version: the first one at once (the next
// request starts it), a later one once an instance of it has loaded its
// module (one that does not load leaves the previous version serving).
// That load goes on after reload returns, which gives it back to be
// superseded by the next change; the terminal is told if it takes over
// SlowLoad. The previous version's instances finish their requests and
// stop. A build or load that ctx ends (the session stopping) is dropped
// without a word. Calls must not overlap, nor overlap a load still
// pending.
func (s *session) reload(ctx context.Context, code []byte) *pending {
	cur := s.live.Load()
	res, err := s.build(ctx, code)
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		_, err = s.blobs.Put(res.Code)
	}
	if err != nil {
		msg := err.Error()
		if !s.dir && relativeImport.MatchString(msg) {
			// As `spry deploy FILE`, which sends the file alone; a user
			// of deno serve --watch FILE expects its imports to build.
			msg += fmt.Sprintf("\n(a file is built alone, as spry deploy FILE sends it: serve its project to build the files it imports: spry dev %s)", projectOf(s.cfg.File))
		}
		s.lastErr.Store(&msg)
		if cur == nil {
			s.printf("build failed:\n%s\n", indent(msg))
		} else {
			s.printf("build failed; still serving version %d:\n%s\n", cur.Version, indent(msg))
		}
		return nil
	}
	hadErr := s.lastErr.Swap(nil) != nil || s.unloaded
	s.unloaded = false
	if cur != nil && cur.Digest == res.Digest {
		if hadErr {
			s.printf("builds again; unchanged (version %d)\n", cur.Version)
		}
		return nil
	}
	s.version++
	spec := &backend.Spec{
		FunctionID:  Owner + "/" + s.cfg.Name,
		Owner:       Owner,
		Name:        s.cfg.Name,
		Version:     s.version,
		Runtime:     s.cfg.Runtime,
		Digest:      res.Digest,
		Env:         s.cfg.Env,
		MemoryMiB:   s.cfg.MemoryMiB,
		Network:     s.cfg.Network,
		Timeout:     s.cfg.Timeout,
		MaxScale:    10,
		Concurrency: 50,
	}
	s.act.Admit(spec.FunctionID, spec.Key())
	if cur == nil {
		s.live.Store(spec)
		s.act.RetireExcept(spec.FunctionID, spec.Key())
		s.printf("built %s (version 1)\n", s.label())
		return nil
	}
	// A version that does not load must not replace one that serves:
	// start it, and make it live only once its module has loaded.
	lctx, cancel := context.WithCancelCause(ctx)
	p := &pending{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer cancel(nil)
		err := s.awaitLoad(lctx, spec, cur)
		switch {
		case lctx.Err() != nil:
			if context.Cause(lctx) == errSuperseded {
				s.act.RetireExcept(spec.FunctionID, cur.Key())
				s.unloaded = true
				s.printf("version %d dropped before it loaded: %v\n", spec.Version, errSuperseded)
			}
		case err != nil:
			s.act.RetireExcept(spec.FunctionID, cur.Key())
			s.unloaded = true
			s.printf("version %d did not load; still serving version %d: %v\n", spec.Version, cur.Version, err)
		default:
			s.live.Store(spec)
			s.act.RetireExcept(spec.FunctionID, spec.Key())
			s.printf("reloaded (version %d)\n", spec.Version)
			s.collect(spec)
		}
	}()
	return p
}

// build bundles the function as a deploy would: code, the file's
// content, or the project directory, packed as `spry deploy DIR` packs
// it (without node_modules, .git and what .gitignore excludes) and
// unpacked in a scratch directory, as the server does. So what builds
// here builds deployed, and npm writes nothing in the project.
func (s *session) build(ctx context.Context, code []byte) (build.Result, error) {
	opts := build.DirOptions{Runtime: s.cfg.Runtime, Registry: s.cfg.NPMRegistry, NPMCache: s.npmCache}
	if !s.dir {
		return build.BundleFile(ctx, build.Source{Filename: filepath.Base(s.cfg.File), Code: code}, opts)
	}
	packed, err := archive.PackProject(s.cfg.File)
	if err != nil {
		return build.Result{}, err
	}
	tmp, err := os.MkdirTemp("", "spry-"+s.id+"-build-")
	if err != nil {
		return build.Result{}, err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "src")
	if err := archive.Extract(bytes.NewReader(packed), archive.FormatTarGz, dir, archive.Limits{}); err != nil {
		return build.Result{}, err
	}
	opts.Entry = s.cfg.Entry
	return build.BundleDir(ctx, dir, opts)
}

// relativeImport matches esbuild's error for an import of another file
// that a single file's build cannot resolve.
var relativeImport = regexp.MustCompile(`Could not resolve "\.\.?/`)

// projectOf is how to name file's directory on the command line.
func projectOf(file string) string {
	if dir := filepath.Dir(file); dir != "." {
		return dir
	}
	return "."
}

// collect removes the bundles no instance can need any more: all but
// live's and those of versions with an instance starting or running (a
// request for a version just retired may have begun a start of it; it
// installs the bundle only once a sandbox is ready). Bundles are put only
// by reload, which does not overlap a pending load, where this is called,
// so none is put meanwhile.
func (s *session) collect(live *backend.Spec) {
	keep := map[string]bool{live.Digest: true}
	for _, v := range s.act.Active() {
		keep[v.Digest] = true
	}
	_, _ = s.blobs.Collect(keep, time.Time{})
}

// loadTimeout bounds a new version's start, the load of its module
// included (a top-level await that never ends): the activator's default,
// as `spry serve` has it, so that what loads when deployed loads here.
const loadTimeout = 30 * time.Second

// awaitLoad is load, telling the terminal if it takes over SlowLoad: a
// top level that awaits something slow, or that never ends, would
// otherwise be silent until loadTimeout.
func (s *session) awaitLoad(ctx context.Context, spec, cur *backend.Spec) error {
	res := make(chan error, 1)
	go func() { res <- s.load(ctx, spec) }()
	slow := time.NewTimer(s.cfg.SlowLoad)
	defer slow.Stop()
	select {
	case err := <-res:
		return err
	case <-slow.C:
		s.printf("version %d is still loading after %v (its top level has not ended); version %d serves until it loads, for up to %v, or the next save replaces it\n", spec.Version, s.cfg.SlowLoad, cur.Version, loadTimeout)
	}
	return <-res
}

// load starts an instance of spec, a version admitted but not yet live,
// and waits until its module has loaded: nil, or why it did not (its top
// level threw, exited the runtime, or did not end in time). It sends the
// function no request: the instance, loaded, takes the version's first
// ones. When ctx ends first, the instance goes on loading until its
// version is retired.
func (s *session) load(ctx context.Context, spec *backend.Spec) error {
	// The backend ends a load past the start's deadline; this only
	// bounds the wait should the instance not end then.
	ctx, cancel := context.WithTimeout(ctx, loadTimeout+5*time.Second)
	defer cancel()
	l, err := s.act.Acquire(ctx, spec)
	if err != nil {
		return err
	}
	defer l.Release()
	return l.Instance().WaitLoaded(ctx)
}

// InstanceOutput prints a line the function wrote.
func (s *session) InstanceOutput(spec *backend.Spec, _ string, stream string, line []byte) {
	switch stream {
	case "stdout":
		s.printf("v%d | %s\n", spec.Version, line)
	default:
		s.printf("v%d %s | %s\n", spec.Version, stream, line)
	}
}

// Access prints one line per request: method, path, status, duration and
// whether it waited for a cold start.
func (s *session) Access(a router.Access) {
	path := strings.TrimPrefix(a.Path, s.prefix)
	if path == "" || path[0] == '?' {
		path = "/" + path
	}
	s.access(a.Spec, a.Method, path, a.Status, a.Duration, a.Cold)
}

func (s *session) access(spec *backend.Spec, method, path string, status int, d time.Duration, cold bool) {
	version, temp := "--", "not built"
	if spec != nil {
		version, temp = fmt.Sprintf("v%d", spec.Version), "warm"
		if cold {
			temp = "cold"
		}
	}
	s.printf("%s %s %s %d %.1fms %s\n", version, method, path, status, float64(d.Microseconds())/1000, temp)
}

// printf writes one timestamped entry to the terminal.
func (s *session) printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.outMu.Lock()
	defer s.outMu.Unlock()
	_, _ = io.WriteString(s.cfg.Out, time.Now().Format("15:04:05")+" "+msg)
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
