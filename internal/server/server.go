// Package server assembles `spry serve`: the store, the sandbox and local
// backend, the activator, the functions service, the management API and
// the router, behind one HTTP listener; and it shuts them down in order.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/backend/local"
	"github.com/spry-run/spry/internal/backup"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/certreload"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/httpserve"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/metrics"
	"github.com/spry-run/spry/internal/router"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/sandbox"
	"github.com/spry-run/spry/internal/schedule"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// Config is everything `spry serve` is told, resolved once.
type Config struct {
	Listen           string
	DataDir          string
	RunDir           string // "" means /run/spry/<hash of DataDir>
	PublicURL        string
	ScaleToZeroAfter time.Duration
	// FunctionDomain, if set, serves each function at
	// "<name>.<owner>.<FunctionDomain>" too, an origin of its own.
	FunctionDomain string
	// IdleCPUAfter is how long an instance goes without a request in
	// flight before its CPU is throttled; 0: never.
	IdleCPUAfter    time.Duration
	AutoscaleWindow time.Duration
	Timeout         time.Duration // default per invocation
	// WebSocketIdleTimeout ends an upgraded connection (a WebSocket)
	// over which neither side has sent anything this long; the function's
	// timeout bounds it only until its 101.
	WebSocketIdleTimeout time.Duration
	MaxTimeout           time.Duration
	MaxMemoryMiB         int
	Concurrency          int // default per instance
	MaxScale             int // default and ceiling of instances per function
	DefaultNetwork       string
	EgressAllow          []netip.Prefix
	// TrustedProxies are the peers whose X-Forwarded-* headers are
	// believed (router.Config.TrustedProxies, httpserve.RealClient).
	TrustedProxies httpserve.Proxies
	MaxCodeBytes   int64
	MaxLogBytes    int64 // the log database's bound (0: logstore's default)
	LogKeepFree    int64 // the free space the log database leaves on its disk (0: logstore's default)
	MaxBundleBytes int64
	QueueSize      int // requests waiting for capacity, per version
	// MemoryReserve is the host memory instance starts leave free,
	// stopping idle instances for it (activator.Config.MemoryReserve);
	// 0: none.
	MemoryReserve uint64
	// MaxInstancesPerUser bounds the instances of one user's functions
	// together; 0 means no bound.
	MaxInstancesPerUser int
	// MaxMemoryPerUserMiB bounds the memory limits of one user's
	// instances added up, and what one function may ask for alone or at
	// its min; 0 means no bound.
	MaxMemoryPerUserMiB int
	// UserPids and UserFiles bound the processes (threads included) and
	// open files one user's running instances hold together; 0: no
	// bound. spry serve's defaults are a quarter of the host's.
	UserPids  int64
	UserFiles int64
	// AllPids and AllMemory bound the processes and threads, and the
	// memory (bytes, swap included), of every instance and build
	// together (the server's cgroup subtree); 0: no bound.
	AllPids   int64
	AllMemory int64
	// KVMaxBytes bounds each function's ctx.kv, keys and values
	// together (0: kv.DefaultMaxBytes); KVMaxBytesPerUser, all of one
	// user's functions' together (0: no bound).
	KVMaxBytes        int64
	KVMaxBytesPerUser int64
	// MaxFunctionsPerUser bounds how many functions one user may have;
	// 0 means no bound.
	MaxFunctionsPerUser int
	MaxBodyBytes        int64 // largest invocation request body
	// MaxDeploys and MaxDeploysWaiting bound the deploys past admission
	// and those waiting for it, server-wide; DeployBodyTimeout is how
	// long an admitted deploy's body may take (api.Config's; 0: the
	// API's defaults).
	MaxDeploys        int
	MaxDeploysWaiting int
	DeployBodyTimeout time.Duration
	// RouterLoops is how many event loops serve the public listener's
	// fast path (router.Lane); 0 serves every connection with fasthttp.
	RouterLoops int
	// RouterSpin is how long an event loop polls before it sleeps while
	// its waits are short (router.LaneConfig.Spin).
	RouterSpin time.Duration
	// MaxConnsPerClient bounds the connections one client address (an
	// IPv6 client's /64) holds on the public listener; the trusted
	// proxies are not bounded. 0: no bound (httpserve.ConnLimit).
	MaxConnsPerClient int
	// MaxConns bounds the client connections of the public listener
	// together; at it the event loops close their longest idle ones to
	// make room. 0: no bound (httpserve.ConnLimit).
	MaxConns int
	// TLSCert and TLSKey, if set, are the files of the listener's
	// certificate and key: it then serves HTTPS, without the event loops
	// (they read raw sockets), and reads the pair again on SIGHUP and
	// when the files change (certreload).
	TLSCert, TLSKey  string
	CPU              float64 // CPUs one instance may use
	PoolSize         int
	NodePoolSize     int
	DefaultMemoryMiB int
	DenoBinary       string
	NodeBinary       string
	UIDBase          int
	ShutdownTimeout  time.Duration
	ShutdownDelay    time.Duration // serving on, not ready, before the listener closes (Run)
	DebugListen      string        // pprof, on its own listener
	NPMRegistry      string        // for dependencies at deploy time; "" is npm's public registry
	JSRRegistry      string        // for jsr: imports at deploy time; "" is JSR's npm registry
	NPMMemoryMiB     int           // one npm install's memory limit (0: build.DefaultNPMLimits')
	NPMDiskMiB       int           // what one npm install may write (0: build.DefaultNPMWriteBytes)
	NPMCacheBytes    int64         // the npm cache's bound (0: build.DefaultNPMCacheMaxBytes)
	// AsyncWorkers and AsyncWorkersPerUser bound the attempts of
	// asynchronous invocations running at once, server-wide and of one
	// user's; AsyncMaxPerUser bounds one user's invocations not finished
	// and AsyncMaxBytesPerUser their bytes (async.Usage; -1: no bound);
	// AsyncRetryDelay is the wait before the first retry
	// (the second waits four times as long); AsyncRetention is how long
	// finished invocations are kept. 0: async's defaults.
	AsyncWorkers         int
	AsyncWorkersPerUser  int
	AsyncMaxPerUser      int
	AsyncMaxBytesPerUser int64
	AsyncRetryDelay      time.Duration
	AsyncRetention       time.Duration
	// NewSecretKey lets a server whose secret key is missing make a new
	// one although stored versions hold secrets sealed with the old.
	NewSecretKey bool
	// Version is spry's, for the manifests of backups.
	Version string
}

// tree is the bound of the server's cgroup subtree.
func (cfg Config) tree() sandbox.Tree {
	return sandbox.Tree{Pids: cfg.AllPids, MemoryBytes: cfg.AllMemory}
}

// Server is a running Spry.
type Server struct {
	cfg   Config
	log   *slog.Logger
	lock  *os.File
	store *sqlite.Store
	blobs *blob.Store
	logs  *logstore.Store
	kv    *kv.Store
	// kvDeletes are deleted functions' entries being removed.
	kvDeletes sync.WaitGroup
	metrics   *metrics.Metrics
	access    *accessSampler
	back      *local.Backend
	act       *activator.Activator
	fns       *functions.Service
	sched     *schedule.Scheduler
	// invocations are the asynchronous invocations, which async runs,
	// sending each attempt to the router through asyncLn (served by
	// asyncHTTP) with asyncClient.
	invocations *async.Store
	async       *async.Worker
	asyncLn     *fasthttputil.InmemoryListener
	asyncHTTP   *fasthttp.Server
	asyncClient *http.Client
	http        *fasthttp.Server
	router      *router.Router
	lane        *router.Lane
	ln          net.Listener
	certs       *certreload.Pair // --tls-cert's, nil without TLS
	dbgLn       net.Listener     // --debug-listen's, nil without it
	ready       atomic.Bool
	// hurry is closed by Hurry: the drain ends at once.
	hurry     chan struct{}
	hurryOnce sync.Once
	stop      context.CancelFunc
	bg        chan struct{}
	runDir    string
	scratch   string // builds' scratch directories; see freshDir
}

const (
	// MaxConcurrency bounds a function's concurrency setting, and
	// --concurrency.
	MaxConcurrency = 10000
	// instanceFiles is an instance's open-file limit. Every request in
	// flight holds a connection from the router, and the router's two
	// paths (event loops and fasthttp) each keep their own idle ones, so
	// a function at the highest concurrency may need twice that; the rest
	// is the function's own. Deno ends on "Too many open files".
	instanceFiles = 2*MaxConcurrency + 1024
)

// openFileLimit is want, or this process's own hard limit if that is
// lower: a sandbox cannot be given more without CAP_SYS_RESOURCE.
func openFileLimit(want uint64) uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Max < want {
		return l.Max
	}
	return want
}

// New prepares a server: it opens (or initialises) the data directory,
// cleans up after a previous run that was killed, and starts the warm pool.
// It does not listen yet.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, bg: make(chan struct{}), hurry: make(chan struct{})}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		// Before anything is made: a bad pair is the operator's to fix.
		if s.certs, err = certreload.Load(cfg.TLSCert, cfg.TLSKey, time.Now, log); err != nil {
			return nil, errdefs.Invalid("%v", err)
		}
	}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if s.lock, err = lockDir(dataDir); err != nil {
		return nil, err
	}
	if err := backup.RemoveTemp(dataDir); err != nil {
		log.Warn("remove what a backup cut off by the last stop left", "err", err)
	}
	npmCache, npmUID, err := npmSetup(dataDir, cfg.UIDBase, log)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(dataDir))
	id := hex.EncodeToString(sum[:6])
	// Builds' scratch directories (an upload unpacked, npm's home) go in
	// one of the server's own, made afresh here under the data
	// directory's lock: what a build cut off by a kill left goes now.
	if err := freshDir(filepath.Join(os.TempDir(), "spry-"+id)); err != nil {
		return nil, fmt.Errorf("scratch dir: %w", err)
	}
	s.scratch = filepath.Join(os.TempDir(), "spry-"+id)
	runDir := cfg.RunDir
	if runDir == "" {
		runDir = filepath.Join("/run/spry", id)
	}
	if err := sandbox.MkdirReachable(runDir); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	s.runDir = runDir

	s.store, err = sqlite.Open(ctx, filepath.Join(dataDir, "spry.db"))
	if err != nil {
		return nil, err
	}
	box, err := s.openSecretKey(ctx, filepath.Join(dataDir, "secret.key"))
	if err != nil {
		return nil, err
	}
	blobs, err := blob.Open(filepath.Join(dataDir, "blobs"))
	s.blobs = blobs
	if err != nil {
		return nil, err
	}
	s.logs, err = logstore.Open(ctx, filepath.Join(dataDir, "logs.db"), logstore.Options{Logger: log, MaxBytes: cfg.MaxLogBytes, KeepFree: cfg.LogKeepFree})
	if err != nil {
		return nil, err
	}
	s.kv, err = kv.Open(ctx, filepath.Join(dataDir, "kv.db"), kv.Options{MaxBytes: cfg.KVMaxBytes, MaxBytesPerOwner: cfg.KVMaxBytesPerUser,
		// Asked at a namespace's first write, once the server serves:
		// s.fns is set by then.
		Owners: func(ids []string) map[string]string {
			if s.fns == nil {
				return nil
			}
			return s.fns.Owners(ids)
		}})
	if err != nil {
		return nil, err
	}
	if err := s.openAsync(ctx, dataDir); err != nil {
		return nil, err
	}

	denoPath, err := runtime.FindDeno(cfg.DenoBinary)
	if err != nil {
		return nil, err
	}
	libs, err := sandbox.SharedLibs(denoPath)
	if err != nil {
		return nil, err
	}
	if denoPath, err = sandbox.Expose(denoPath, "/var/lib/spry/runtimes"); err != nil {
		return nil, fmt.Errorf("make the deno binary reachable from sandboxes: %w", err)
	}
	deno, err := runtime.NewDeno(denoPath, runDir)
	if err != nil {
		return nil, err
	}
	runtimes := []local.Runtime{deno}
	names := []string{deno.Name()}
	if nodePath, err := runtime.FindNode(cfg.NodeBinary); err != nil {
		log.Warn("the node runtime is not available; functions run on deno only", "err", err)
	} else {
		nodeLibs, err := sandbox.SharedLibs(nodePath)
		if err != nil {
			return nil, err
		}
		libs = append(libs, nodeLibs...)
		if nodePath, err = sandbox.Expose(nodePath, "/var/lib/spry/runtimes"); err != nil {
			return nil, fmt.Errorf("make the node binary reachable from sandboxes: %w", err)
		}
		node, err := runtime.NewNode(nodePath, runDir)
		if err != nil {
			return nil, err
		}
		runtimes = append(runtimes, node)
		names = append(names, node.Name())
	}
	slices.Sort(libs)
	libs = slices.Compact(libs)
	sb, err := sandbox.New(sandbox.Config{CgroupParent: "spry/" + id, Tree: cfg.tree(), SystemLibs: libs, StateDir: runDir, EgressAllow: cfg.EgressAllow})
	if err != nil {
		return nil, err
	}
	s.back, err = local.New(local.Config{
		RunDir:           runDir,
		Sandbox:          sb,
		Runtimes:         runtimes,
		Blobs:            blobs,
		Logs:             logSink{logs: s.logs},
		Logger:           log,
		PoolSize:         cfg.PoolSize,
		PoolSizes:        map[string]int{"node": cfg.NodePoolSize},
		DefaultMemoryMiB: cfg.DefaultMemoryMiB,
		DefaultNetwork:   cfg.DefaultNetwork,
		UIDBase:          cfg.UIDBase,
		Pids:             256,
		CPUQuotaUs:       int64(cfg.CPU * 100000),
		TmpBytes:         64 << 20,
		NoFiles:          openFileLimit(instanceFiles),
		UserPids:         cfg.UserPids,
		UserFiles:        uint64(cfg.UserFiles),
		KV:               s.kv,
	})
	if err != nil {
		return nil, err
	}
	s.metrics = metrics.New(gauges{s})
	s.act = activator.New(s.back, activator.Config{
		ScaleToZeroAfter:     cfg.ScaleToZeroAfter,
		IdleAfter:            idleAfter(cfg.IdleCPUAfter),
		StableWindow:         cfg.AutoscaleWindow,
		QueueSize:            cfg.QueueSize,
		MaxInstancesPerOwner: cfg.MaxInstancesPerUser,
		MaxMemoryPerOwnerMiB: cfg.MaxMemoryPerUserMiB,
		MemoryReserve:        cfg.MemoryReserve,
		OnEvict:              func(*backend.Spec) { s.metrics.Eviction() },
		OnExit: func(spec *backend.Spec, ex backend.Exit) {
			reason := ex.Reason
			if ex.BeforeLoad {
				reason = "load_failed"
			}
			s.metrics.InstanceFailure(spec.Owner, spec.Name, spec.FunctionID, reason)
		},
		Logger: log,
		OnStart: func(spec *backend.Spec, d time.Duration, err error) {
			result := "ok"
			if err != nil {
				result = "error"
			}
			s.metrics.ColdStart(spec.Owner, spec.Name, spec.FunctionID, result)
		},
	})
	// Each deploy's npm runs in a cgroup of its own under the instances'
	// parent: the sweeps at start and close take what a killed server left.
	npmGroups, err := sandbox.NewBuilds("spry/"+id, "", cfg.tree())
	if err != nil {
		return nil, err
	}
	s.fns = functions.New(s.store, blobs, s.act, box, s.logs, functions.Config{
		MaxCodeBytes:         cfg.MaxCodeBytes,
		MaxBundleBytes:       cfg.MaxBundleBytes,
		DefaultRuntime:       deno.Name(),
		Runtimes:             names,
		DefaultMemoryMiB:     cfg.DefaultMemoryMiB,
		DefaultTimeout:       cfg.Timeout,
		DefaultNetwork:       cfg.DefaultNetwork,
		DefaultConcurrency:   cfg.Concurrency,
		DefaultMaxScale:      cfg.MaxScale,
		MaxFunctionsPerOwner: cfg.MaxFunctionsPerUser,
		Forget:               s.forget,
		NPMCache:             npmCache,
		NPMUID:               npmUID,
		NPMCgroups:           npmGroups,
		NPMCacheMaxBytes:     cfg.NPMCacheBytes,
		TempDir:              s.scratch,
		NPMLimits:            sandbox.Resources{MemoryBytes: int64(cfg.NPMMemoryMiB) << 20},
		NPMWriteBytes:        int64(cfg.NPMDiskMiB) << 20,
		NPMRegistry:          cfg.NPMRegistry,
		JSRRegistry:          cfg.JSRRegistry,
		Bounds: functions.Bounds{
			MaxMemoryMiB:   cfg.MaxMemoryMiB,
			MaxTimeout:     cfg.MaxTimeout,
			MaxScale:       cfg.MaxScale,
			MaxConcurrency: MaxConcurrency,
			MaxCPUMilli:    goruntime.NumCPU() * 1000,
			// Checked at deploy against the limits' defaults too.
			MaxMemoryPerOwnerMiB: cfg.MaxMemoryPerUserMiB,
			MaxInstancesPerOwner: cfg.MaxInstancesPerUser,
		},
		Logger: log,
	})
	if err := s.fns.Load(ctx); err != nil {
		return nil, err
	}
	authn := auth.New(s.store, nil)
	if err := s.bootstrapAdmin(ctx, authn, dataDir); err != nil {
		return nil, err
	}
	// Snapshots are made in the data directory: its file system has room
	// for a copy of what it holds.
	// Private functions' calls check their tokens in memory; the API
	// tells the cache of each revocation and user deletion.
	tokens := auth.NewCache(authn, 0, 0)
	// One count of failed authentications per client, the API's and the
	// private functions' alike: neither is a side door for guessing
	// tokens past the other's limit.
	failures := auth.NewFailureLimiter(auth.FailureEvery, auth.FailureBurst, nil)
	backups := &backup.Source{Store: s.store, KV: s.kv, Invocations: s.invocations, Logs: s.logs, Blobs: blobs,
		SecretKey: filepath.Join(dataDir, "secret.key"), TempDir: dataDir, Version: cfg.Version}
	// Reported only where kept: with neither bound, no instance is
	// counted.
	var budgets api.Budgets
	if cfg.UserPids > 0 || cfg.UserFiles > 0 {
		budgets = s.back
	}
	apiS := api.New(s.fns, authn, s.store, s.store, s.act, s.logs, api.Config{
		MaxCodeBytes:      cfg.MaxCodeBytes,
		MaxDeploys:        cfg.MaxDeploys,
		MaxDeploysWaiting: cfg.MaxDeploysWaiting,
		DeployBodyTimeout: cfg.DeployBodyTimeout,
		PublicURL:         cfg.PublicURL,
		FunctionDomain:    cfg.FunctionDomain,
		RunScheduled:      s.RunScheduled,
		ScheduleStatus:    s.ScheduleStatus,
		KV:                s.kv,
		Backups:           backups,
		Invocations:       s.async,
		Budgets:           budgets,
		// The worker's too: failures' events are cut to fit it.
		MaxInvocationBytes: s.asyncMaxBody(),
		Forget:             tokens,
		Limiter:            failures,
		Logger:             log,
	})
	s.access = newAccessSampler(s.logs, accessPerSecond, time.Now)
	sink := logSink{s.logs, s.metrics, s.access}
	rt := router.New(s.fns, s.act, router.Config{
		Timeout: cfg.Timeout, UpgradeIdleTimeout: cfg.WebSocketIdleTimeout, MaxBodyBytes: cfg.MaxBodyBytes, Logger: log, Access: sink,
		OnColdStart: func(spec *backend.Spec, d time.Duration) { s.metrics.ColdStartLatency(spec.Runtime, d) },
		Domain:      cfg.FunctionDomain, TrustedProxies: cfg.TrustedProxies, Tokens: tokens, Limiter: failures,
	})

	// Everything but functions is net/http, served through the adaptor.
	mux := http.NewServeMux()
	// "/api" too: the mux would answer it with a redirect to "/api/".
	apiH := apiS.Handler()
	mux.Handle("/api/", apiH)
	mux.Handle("/api", apiH)
	// Metrics name every function, so they are for the admin only.
	mux.Handle("/metrics", apiS.RequireAdmin(s.metrics.Handler()))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !s.ready.Load() {
			errdefs.WriteHTTP(w, errdefs.New(errdefs.ErrUnavailable, "not ready"))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ready"}` + "\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		errdefs.WriteHTTP(w, errdefs.New(errdefs.ErrNotFound, "nothing at %s: functions are under /fn/<owner>/<name>/, the API under /api/v1/", r.URL.Path))
	})
	s.router = rt
	s.serveAsync(rt)
	rest := httpserve.Adapt(httpserve.RealClient(cleanPaths(mux), cfg.TrustedProxies), log)
	s.http = httpserve.New(dispatch(rt, rest), log)
	s.sched = s.newScheduler()
	return s, nil
}

// freshDir removes dir and whatever is in it, and makes it again, empty:
// 0711, so that npm, as its own uid, reaches the build directories in it.
// Mkdir, not MkdirAll: in a shared /tmp, a path another user made
// between the two (a symbolic link) is an error, not a place to write.
func freshDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o711)
}

// dispatch sends functions' requests to the router, the rest to rest.
func dispatch(rt *router.Router, rest fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		uri := ctx.Request.Header.RequestURI()
		switch {
		case string(uri) == "*":
			// OPTIONS * (net/http's mux would answer a bare 400).
			httpserve.WriteError(ctx, errdefs.New(errdefs.ErrInvalidArgument, "the request target * is not served here"))
			httpserve.LeaveBody(ctx)
		case rt.Serves(uri, ctx.Request.Header.Host()):
			rt.Handle(ctx)
		default:
			rest(ctx)
		}
	}
}

// lockDir takes an exclusive lock on the data dir, so two servers never
// share one.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "spry.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another spry serve is using %s", dir)
	}
	return f, nil
}

// AdminTokenFile is where the first start writes the admin's token.
const AdminTokenFile = "admin.token"

// bootstrapToken names the admin token bootstrapAdmin makes.
const bootstrapToken = "created at start, in " + AdminTokenFile

// bootstrapAdmin makes sure there is a way in: at first start it creates
// the admin user and a token, written to AdminTokenFile. The same is done
// whenever that file is missing and no admin holds a token but one made
// here (revoked, then, for the new one): a start that died between
// creating the user and writing the file, or admins all deleted, would
// otherwise leave no one able to manage the platform, for good.
func (s *Server) bootstrapAdmin(ctx context.Context, authn *auth.Service, dataDir string) error {
	path := filepath.Join(dataDir, AdminTokenFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	users, err := s.store.ListUsers(ctx)
	if err != nil {
		return err
	}
	admin, taken := "", map[string]bool{}
	var stale []string
	for _, u := range users {
		taken[u.Name] = true
		if !u.Admin {
			continue
		}
		if admin == "" {
			admin = u.Name
		}
		toks, err := s.store.ListTokens(ctx, u.Name)
		if err != nil {
			return err
		}
		for _, t := range toks {
			switch {
			case !t.RevokedAt.IsZero():
			case t.Name == bootstrapToken || t.Name == "created at first start":
				stale = append(stale, t.ID)
			default:
				return nil // an admin has a token of their own
			}
		}
	}
	if admin == "" {
		admin = "admin"
		for i := 2; taken[admin]; i++ {
			admin = fmt.Sprintf("admin%d", i)
		}
		if err := s.store.CreateUser(ctx, store.User{Name: admin, Admin: true, CreatedAt: time.Now()}); err != nil {
			return err
		}
	}
	for _, id := range stale {
		if err := s.store.RevokeToken(ctx, id, time.Now()); err != nil {
			return err
		}
	}
	tok, _, err := authn.IssueToken(ctx, admin, bootstrapToken, auth.TokenOptions{})
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return err
	}
	s.log.Info("made an API token for admin user "+admin+"; it is in "+path, "path", path)
	return nil
}

// Listen binds the listener (and --debug-listen's, so that a taken
// debug port fails the start rather than a log line nobody reads); Addr
// is valid after it.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	if s.cfg.DebugListen != "" {
		dbg, err := net.Listen("tcp", s.cfg.DebugListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--debug-listen: %w", err)
		}
		s.dbgLn = dbg
	}
	s.ln = ln
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Run serves until ctx ends, then shuts down gracefully: it reports not
// ready, serves on for ShutdownDelay, stops taking new connections, lets in-flight requests finish (up to ShutdownTimeout),
// stops every instance and flushes state.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			s.closeAll()
			return err
		}
	}
	bgCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go func() {
		defer close(s.bg)
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { s.fns.RunFlusher(bgCtx, 10*time.Second) })
		wg.Go(func() { s.access.run(bgCtx) })
		wg.Go(func() { s.collectBlobs(bgCtx, time.Hour) })
		wg.Go(func() { s.sched.Run(bgCtx) })
		wg.Go(func() { s.sweepKV(bgCtx, time.Minute) })
		wg.Go(func() {
			if err := s.pruneAsync(bgCtx); err != nil && bgCtx.Err() == nil {
				s.log.Warn("remove deleted functions' invocations", "err", err)
			}
			s.async.Run(bgCtx)
		})
		// The autoscaler samples concurrency at each tick.
		interval := max(min(s.cfg.AutoscaleWindow/60, 500*time.Millisecond), 20*time.Millisecond)
		s.act.Run(bgCtx, interval)
	}()
	if s.dbgLn != nil {
		dbg := &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			// closeAll may close the listener before dbg is closed: the
			// end of a shutdown, not a failure.
			if err := dbg.Serve(s.dbgLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				s.log.Error("debug listener", "err", err)
			}
		}()
		defer dbg.Close()
	}
	errc := make(chan error, 1)
	var ln net.Listener
	// Notified before the server is ready, with or without TLS: a SIGHUP
	// (a reload, a closed terminal) would otherwise kill it outright,
	// with no drain and its instances' cgroups and run dir left behind.
	// Until Run returns: the drain is no time to die of one either.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	hupCtx, hupDone := context.WithCancel(context.Background())
	defer hupDone()
	go s.reloadOnHangUp(hupCtx, hup)
	limit := httpserve.NewConnLimit(s.cfg.MaxConnsPerClient, s.cfg.MaxConns, s.cfg.TrustedProxies)
	if s.certs != nil {
		// The event loops read raw sockets and cannot speak TLS: every
		// connection is fasthttp's (docs/architecture.md says the cost).
		ln = httpserve.TLSListener(limit.Listener(s.ln), s.tlsConfig(), httpserve.WatchAfter, s.log)
	} else {
		// The loops count what they accept themselves, and the slot goes
		// with a connection they hand to fasthttp.
		ln = limit.Listener(s.ln)
		if s.cfg.RouterLoops > 0 {
			lane, err := s.router.NewLane(s.ln, router.LaneConfig{Loops: s.cfg.RouterLoops, Spin: s.cfg.RouterSpin, Limit: limit})
			if err != nil {
				s.closeAll()
				return err
			}
			s.lane, ln = lane, lane.Handoff()
		}
		// Its connections can be watched for a client's hang-up while a
		// function computes (see the router).
		ln = httpserve.Listener(ln, httpserve.WatchAfter, s.log)
	}
	go func() { errc <- s.http.Serve(ln) }()
	go func() {
		if err := s.asyncHTTP.Serve(s.asyncLn); err != nil && !errors.Is(err, fasthttputil.ErrInmemoryListenerClosed) {
			s.log.Error("the router's listener for asynchronous invocations", "err", err)
		}
	}()
	s.ready.Store(true)
	s.log.Info("spry is serving", "addr", s.Addr(), "data", s.cfg.DataDir, "tls", s.certs != nil)

	select {
	case err := <-errc:
		s.stopLane(context.Background())
		s.closeAll()
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	s.ready.Store(false)
	// Served on, /readyz answering 503, for the time a load balancer or
	// Kubernetes needs to see it and send no more: connections refused
	// meanwhile would be errors for the clients still sent here.
	if d := s.cfg.ShutdownDelay; d > 0 {
		s.log.Info("not ready; serving on until load balancers have seen it", "shutdown_delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-s.hurry:
		}
		t.Stop()
	}
	// No scheduled run starts while requests drain; those under way
	// go on until closeAll.
	s.sched.Stop()
	s.logs.EndFollows()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.hurry:
			s.log.Warn("told again to stop: in-flight requests are cut off now")
			cancel()
		case <-sctx.Done():
		}
	}()
	laneDone := make(chan struct{})
	go func() { s.stopLane(sctx); close(laneDone) }()
	// Asynchronous attempts under way finish as requests do; those cut
	// off at the timeout are queued again, and the next start runs them.
	asyncDone := make(chan struct{})
	go func() {
		s.async.Drain(sctx)
		_ = s.asyncHTTP.ShutdownWithContext(sctx)
		close(asyncDone)
	}()
	err := s.http.ShutdownWithContext(sctx)
	if err == nil {
		// WebSockets: Shutdown does not wait for hijacked connections.
		err = s.router.WaitUpgrades(sctx)
	}
	<-laneDone
	<-asyncDone
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		// What is still in flight ends with the instances, below.
		if errors.Is(err, context.DeadlineExceeded) {
			s.log.Warn("in-flight requests did not finish in time", "timeout", s.cfg.ShutdownTimeout)
		}
		err = nil
	}
	s.closeAll()
	return err
}

// Hurry ends the shutdown delay and the drain of a Run shutting down at
// once (a second signal):
// what is still in flight is cut off as at ShutdownTimeout, and the
// instances are stopped and cleared all the same. Before the shutdown
// it makes the drain none.
func (s *Server) Hurry() { s.hurryOnce.Do(func() { close(s.hurry) }) }

// tlsConfig is the listener's (httpserve.TLSConfig), with the
// certificate the files hold now.
func (s *Server) tlsConfig() *tls.Config { return httpserve.TLSConfig(s.certs.GetCertificate) }

// reloadOnHangUp reads the certificate and key again at each SIGHUP on
// hup until ctx ends (a pair that does not load is logged and the old
// one kept); without TLS there is nothing to read again, and the signal
// is only logged.
func (s *Server) reloadOnHangUp(ctx context.Context, hup chan os.Signal) {
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if s.certs == nil {
				s.log.Info("SIGHUP: nothing to reload (no --tls-cert); SIGTERM stops the server")
				continue
			}
			_ = s.certs.Reload()
		}
	}
}

// stopLane stops the event loops (letting their requests finish while
// ctx lasts) and closes the listener they served.
func (s *Server) stopLane(ctx context.Context) {
	if s.lane == nil {
		return
	}
	_ = s.lane.Shutdown(ctx)
	s.ln.Close()
}

// Close stops what New started, for a server that will not Run (one
// whose Listen failed): its warm pool, run directory and cgroups would
// otherwise stay until the next start on its data dir. Run closes the
// server itself.
func (s *Server) Close() { s.closeAll() }

// closeAll stops what New started, in dependency order.
func (s *Server) closeAll() {
	if s.ln != nil {
		// Closed already unless Run failed before serving it.
		_ = s.ln.Close()
	}
	if s.dbgLn != nil {
		_ = s.dbgLn.Close()
	}
	if s.asyncLn != nil {
		// Closed already unless Run failed before its shutdown.
		_ = s.asyncLn.Close()
	}
	if s.stop != nil {
		s.stop()
		<-s.bg
	}
	if s.sched != nil {
		// Scheduled runs under way end (their context) before the
		// instances they hold do.
		s.sched.Close()
	}
	if s.back != nil {
		s.back.Close()
		// Instances are gone; so goes their directory (bootstrap files,
		// sockets, code copies).
		_ = os.RemoveAll(s.runDir)
	}
	if s.act != nil {
		s.act.Close()
	}
	if s.scratch != "" {
		// The API has stopped: no build runs.
		_ = os.RemoveAll(s.scratch)
	}
	if s.store != nil {
		s.store.Close()
	}
	if s.logs != nil {
		s.logs.Close()
	}
	if s.kv != nil {
		s.kvDeletes.Wait()
		s.kv.Close()
	}
	if s.invocations != nil {
		s.kvDeletes.Wait()
		s.invocations.Close()
	}
	if s.lock != nil {
		s.lock.Close()
	}
}

// logSink files instance output and access lines in the log store, and
// counts invocations.
type logSink struct {
	logs    *logstore.Store
	metrics *metrics.Metrics
	access  *accessSampler
}

func (l logSink) InstanceOutput(spec *backend.Spec, instance, stream string, line []byte) {
	l.logs.Append(logstore.Entry{Owner: spec.Owner, Function: spec.Name, FunctionID: spec.FunctionID, Version: spec.Version, Instance: instance, Stream: stream, Line: string(line)})
}

func (l logSink) Access(a router.Access) {
	l.metrics.Invocation(a.Spec.Owner, a.Spec.Name, a.Spec.FunctionID, a.Status, a.Duration)
	logged, summary := l.access.admit(&a)
	if summary != nil {
		l.logs.Append(*summary)
	}
	if !logged {
		return
	}
	temp := "warm"
	if a.Cold {
		temp = "cold"
	}
	l.logs.Append(logstore.Entry{
		Owner: a.Spec.Owner, Function: a.Spec.Name, FunctionID: a.Spec.FunctionID, Version: a.Spec.Version, Instance: a.Instance,
		Stream: logstore.StreamAccess, RequestID: a.RequestID,
		Line: fmt.Sprintf("%s %s %d %.1fms %s", a.Method, a.Path, a.Status, float64(a.Duration.Microseconds())/1000, temp),
	})
}

// gauges reads the metrics that are states, at scrape time.
type gauges struct{ s *Server }

func (g gauges) Instances() []metrics.InstanceCount {
	var out []metrics.InstanceCount
	for _, st := range g.s.act.States() {
		for state, n := range map[string]int{"busy": st.Busy, "idle": st.Idle, "starting": st.Starting, "stopping": st.Stopping} {
			out = append(out, metrics.InstanceCount{Owner: st.Owner, Function: st.Function, State: state, Count: n})
		}
	}
	return out
}

func (g gauges) PoolIdle() map[string]int { return g.s.back.PoolIdle() }
func (g gauges) QueueDepth() int          { return g.s.act.QueueDepth() }
func (g gauges) LogLinesDropped() uint64  { return g.s.logs.Dropped() }
func (g gauges) BundleHolds() int         { return g.s.blobs.Holds() }

func (g gauges) AsyncQueue() (queued, running int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	queued, err := g.s.invocations.Queued(ctx)
	if err != nil {
		g.s.log.Warn("count the queued invocations", "err", err)
	}
	return queued, g.s.async.Running()
}

func (g gauges) RouterPaths() (int64, int64, map[string]int64) {
	if lane := g.s.lane; lane != nil {
		return lane.Counts()
	}
	return 0, 0, nil
}

// debugMux serves pprof; it is only ever on the --debug-listen listener.
func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// npmSetup picks who dependency installs run as, and their cache: npm
// runs as the uid just below the instances' range, never as root, so
// that a flaw in its handling of a hostile package reaches no more than
// that uid can. The cache, kept across builds in the data dir, must be
// reachable by it; the data dir is made searchable (not listable) by
// others for that (everything in it is the server's own, 0600 or 0700).
// Where its parents are not searchable, each build gets a cache of its
// own instead.
func npmSetup(dataDir string, uidBase int, log *slog.Logger) (string, int, error) {
	uid := uidBase - 1
	fi, err := os.Stat(dataDir)
	if err != nil {
		return "", 0, fmt.Errorf("data dir: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o001 == 0 {
		if err := os.Chmod(dataDir, perm|0o001); err != nil {
			return "", 0, fmt.Errorf("data dir: %w", err)
		}
	}
	cache := filepath.Join(dataDir, "npm-cache")
	if err := sandbox.MkdirReachable(cache); err != nil {
		log.Warn("dependency installs get no shared cache", "err", err)
		cache = ""
	}
	return cache, uid, nil
}

// collectBlobs removes, at start and then every interval, the bundles no
// version names any more (those of deleted functions and of deploys that
// failed after storing theirs) and what writes that died left, once an
// interval old: a deploy stores its bundle before its version.
func (s *Server) collectBlobs(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := s.collectBlobsOnce(ctx, time.Now().Add(-interval)); err != nil && ctx.Err() == nil {
			s.log.Error("collect bundles", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// collectBlobsOnce is one pass of collectBlobs, sparing what was put
// since before.
func (s *Server) collectBlobsOnce(ctx context.Context, before time.Time) error {
	keep, err := s.store.Digests(ctx)
	if err != nil {
		return err
	}
	n, err := s.blobs.Collect(keep, before)
	if n > 0 {
		s.log.Info("removed bundles no version names", "count", n)
	}
	return err
}

// cleanPaths answers a path with an empty, . or .. segment with a JSON
// 404 before the mux would answer it with a bare redirect, which clients
// follow, method and all, to a resource the caller never named. The path
// is read escaped, as the mux reads it: an escaped '/' or '.' is part of
// a segment (a kv key's: "%2Fx", "a%2F%2Fb", "%2E"), not a separator or
// a dot segment.
func cleanPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.EscapedPath()
		c := path.Clean(p)
		if strings.HasSuffix(p, "/") && c != "/" {
			c += "/"
		}
		if c != p {
			errdefs.WriteHTTP(w, errdefs.New(errdefs.ErrNotFound, "nothing at %s: paths have no empty, . or .. segments", p))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// openSecretKey opens the key that seals functions' secrets, making one
// at first start. A missing key when versions hold secrets means the key
// was lost: a new one would seal new secrets beside old ones that never
// open again, so that takes the operator's word (--new-secret-key). So
// does a key that is there but not theirs (another server's, a damaged
// file), which the check sealed with the right key in spry.db tells;
// the file is never replaced, as it may be some other data dir's key.
func (s *Server) openSecretKey(ctx context.Context, path string) (*secrets.Box, error) {
	made := false
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		n, err := s.store.CountSecretVersions(ctx)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			if !s.cfg.NewSecretKey {
				return nil, fmt.Errorf("%s is missing, but %d stored versions hold secrets sealed with it: restore the file, or start once with --new-secret-key to make a new key (those secrets will not open again; set them anew)", path, n)
			}
			s.log.Warn("making a new secret key; secrets sealed with the lost one will not open", "path", path, "versions", n)
		}
		made = true
	case err != nil:
		return nil, fmt.Errorf("secret key: %w", err)
	case fi.Mode().Perm()&0o077 != 0:
		// A key copied in by hand (after a restore without it) takes
		// the umask's mode, and the data dir is searchable by others
		// (npm's uid reaches its cache through it).
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("secret key: %w", err)
		}
		s.log.Warn("the secret key was readable by other users; made it 0600 (if one may have read it, rotate it: docs/security.md)", "path", path, "mode", fi.Mode().Perm().String())
	}
	box, err := secrets.OpenKeyFile(path)
	if err != nil {
		return nil, err
	}
	check, err := s.store.SecretKeyCheck(ctx)
	if err != nil {
		return nil, err
	}
	if check != "" && box.CheckKey(check) {
		return box, nil
	}
	if check != "" && !made {
		n, err := s.store.CountSecretVersions(ctx)
		if err != nil {
			return nil, err
		}
		// With no secret stored, the old key sealed nothing kept.
		if n > 0 {
			return nil, fmt.Errorf("%s is not the key the secrets of %d stored versions were sealed with (another server's, or a damaged file): put the right one back, or move it aside and start once with --new-secret-key to make a new key (those secrets will not open again; set them anew)", path, n)
		}
	}
	// A new key, or the first start that keeps a check: this key is the
	// secrets' from now on.
	if check, err = box.KeyCheck(); err != nil {
		return nil, err
	}
	if err := s.store.SetSecretKeyCheck(ctx, check); err != nil {
		return nil, err
	}
	return box, nil
}

// idleAfter is the activator's IdleAfter for --idle-cpu-after d (0: never).
func idleAfter(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// forget drops what a deleted function leaves beside its versions: its
// metrics, its ctx.kv entries and its asynchronous invocations.
func (s *Server) forget(owner, name, id string) {
	s.metrics.Forget(owner, name, id)
	// In the background: the deletion holds every deploy (forget is
	// called under the functions' deploy lock), and a function's
	// millions of entries take seconds to remove. The function is gone
	// already, and one made again with its name has another id; should
	// the server stop first, pruneKV removes the rest.
	s.kvDeletes.Go(func() {
		if err := s.kv.DeleteFunction(context.Background(), id); err != nil {
			s.log.Error("delete a function's kv entries", "owner", owner, "function", name, "err", err)
		}
	})
	// Those of its attempts under way record nothing: their rows are
	// gone. pruneAsync takes what a stop in between leaves.
	s.kvDeletes.Go(func() {
		if err := s.invocations.DeleteFunction(context.Background(), id); err != nil {
			s.log.Error("delete a function's invocations", "owner", owner, "function", name, "err", err)
		}
	})
}

// sweepKV removes expired ctx.kv entries every interval, and the
// entries of deleted functions at its start and every hour after, until
// ctx ends.
func (s *Server) sweepKV(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	lastPrune := time.Time{}
	for {
		if time.Since(lastPrune) >= time.Hour {
			lastPrune = time.Now()
			if err := s.pruneKV(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("remove deleted functions' kv entries", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := s.kv.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("sweep expired kv entries", "err", err)
		} else if n > 0 {
			s.log.Debug("swept expired kv entries", "entries", n)
		}
	}
}

// pruneKV removes the entries of functions that no longer exist: a
// write under way while its function was deleted (an instance's, or
// the API's) may land after the deletion took the function's entries,
// and a server stopped in between never took them.
func (s *Server) pruneKV(ctx context.Context) error {
	// Namespaces first: one listed then whose function lives was made
	// before the functions are read, so the functions name it.
	spaces, err := s.kv.Namespaces(ctx)
	if err != nil || len(spaces) == 0 {
		return err
	}
	fns, err := s.store.ListFunctions(ctx, "", store.Page{})
	if err != nil {
		return err
	}
	live := make(map[string]bool, len(fns))
	for _, fn := range fns {
		live[fn.ID] = true
	}
	for _, id := range spaces {
		if !live[id] {
			if err := s.kv.DeleteFunction(ctx, id); err != nil {
				return err
			}
			s.log.Info("removed a deleted function's kv entries", "function_id", id)
		}
	}
	return nil
}
