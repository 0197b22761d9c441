package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/build"
	"github.com/spry-run/spry/internal/config"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/router"
	"github.com/spry-run/spry/internal/sandbox"
	"github.com/spry-run/spry/internal/server"
)

func newServeCmd(env Env) *cobra.Command {
	var cfg server.Config
	var logLevel, logFormat string
	var egressAllow, trustedProxies []string
	var memoryReserve, allMemory int
	asyncBytes := byteSize(async.DefaultMaxBytesPerOwner)
	userMemory := mebibytes(defaultUserMemory(int(hostMemory()>>20)-defaultMemoryReserve(), 128))
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Spry platform: API, router, autoscaler and runtimes in one process",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := config.ApplyEnv(cmd.Flags(), env.Environ); err != nil {
				return errdefs.Invalid("%v", err)
			}
			if memoryReserve < 0 || uint64(memoryReserve) >= hostMemory()>>20 {
				return errdefs.Invalid("--memory-reserve must be 0 (none) or more, and below the host's memory (%d MiB)", hostMemory()>>20)
			}
			cfg.MemoryReserve = uint64(memoryReserve) << 20
			// Unless chosen, all instances together leave the reserve,
			// whatever it was set to: the kernel then holds what a
			// burst of starts, each finding room, would take from it.
			if !cmd.Flags().Changed("all-memory") {
				allMemory = max(0, int(hostMemory()>>20)-memoryReserve)
			}
			cfg.AllMemory = int64(allMemory) << 20
			if !cmd.Flags().Changed("max-memory-per-user") {
				userMemory = mebibytes(defaultUserMemory(allMemory, cfg.DefaultMemoryMiB))
			}
			cfg.MaxMemoryPerUserMiB = int(userMemory)
			cfg.AsyncMaxBytesPerUser = int64(asyncBytes)
			if err := validate(cfg); err != nil {
				return err
			}
			allow, err := sandbox.ParsePrefixes(egressAllow)
			if err != nil {
				return errdefs.Invalid("--egress-allow: %v", err)
			}
			cfg.EgressAllow = allow
			proxies, err := sandbox.ParsePrefixes(trustedProxies)
			if err != nil {
				return errdefs.Invalid("--trusted-proxies: %v", err)
			}
			cfg.TrustedProxies = proxies
			log, err := newLogger(env.Stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			// The router allocates per request and memory is plentiful on a
			// serving host: collect less often unless the operator chose.
			if lookupEnv(env.Environ, "GOGC") == "" {
				debug.SetGCPercent(400)
			}
			// More Ps than CPUs: a router goroutine whose write wakes the
			// function (or the client) is often preempted inside the
			// syscall, and its P stays held until sysmon takes it back
			// (20 us to 10 ms later) while other goroutines wait. Spare Ps
			// let the kernel run them meanwhile: on 2 CPUs, 4x measured
			// ~15% more requests through the router than 1x
			// (docs/performance.md).
			if lookupEnv(env.Environ, "GOMAXPROCS") == "" {
				runtime.GOMAXPROCS(4 * runtime.GOMAXPROCS(0))
			}
			// The server, once made, for a second signal.
			var srv atomic.Pointer[server.Server]
			ctx, stop := stopSignals(cmd.Context(), log, func() {
				if s := srv.Load(); s != nil {
					s.Hurry()
				}
			})
			defer stop()
			cfg.Version = Version
			if cfg.AsyncMaxPerUser == 0 {
				cfg.AsyncMaxPerUser = -1 // the server's "no bound"
			}
			if cfg.AsyncMaxBytesPerUser == 0 {
				cfg.AsyncMaxBytesPerUser = -1
			}
			s, err := server.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			if err := s.Listen(); err != nil {
				s.Close()
				return err
			}
			srv.Store(s)
			return s.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8080", "address to serve the API and functions on")
	f.StringVar(&cfg.DataDir, "data", "./spry-data", "data directory: database, bundles, admin token")
	f.StringVar(&cfg.RunDir, "run-dir", "", "directory for instance sockets and code (default /run/spry/<id of the data dir>)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM `file` of the listener's certificate (its chain after it): serve HTTPS, read again on SIGHUP and when the file changes; with --tls-key")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "PEM `file` of --tls-cert's private key")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL in function URLs the API returns (default: from the request)")
	f.StringVar(&cfg.FunctionDomain, "function-domain", "", "serve each function at a host of its own too, <name>.<owner>.<this domain> (a wildcard DNS name pointing here; \"localhost\" works in browsers), so that browsers keep functions' cookies and storage apart; function URLs the API returns name that host")
	f.DurationVar(&cfg.ScaleToZeroAfter, "scale-to-zero-after", 5*time.Minute, "stop a function's last instance after it has had no requests this long")
	f.DurationVar(&cfg.IdleCPUAfter, "idle-cpu-after", time.Second, "throttle an instance to 5% of a CPU once it has had no request in flight this long, until its next request (0: never)")
	f.DurationVar(&cfg.AutoscaleWindow, "autoscale-window", 60*time.Second, "the autoscaler's stable window: scale-down follows the average concurrency over it")
	f.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "default for how long an invocation may take, cold start included")
	f.DurationVar(&cfg.WebSocketIdleTimeout, "websocket-idle-timeout", router.DefaultUpgradeIdleTimeout, "close a WebSocket (any upgraded connection) over which neither side has sent anything this long; a function's timeout bounds it only until its 101")
	f.DurationVar(&cfg.MaxTimeout, "max-timeout", 15*time.Minute, "longest timeout a function may ask for")
	f.IntVar(&cfg.MaxMemoryMiB, "max-memory", 2048, "most memory a function may ask for, in MiB")
	f.IntVar(&cfg.Concurrency, "concurrency", 50, "default for how many requests one instance handles at once")
	f.IntVar(&cfg.MaxScale, "max-scale", 100, "default and ceiling for the instances of one function")
	f.StringVar(&cfg.DefaultNetwork, "network", "egress", "default network of functions: egress (public internet only) or none")
	f.StringSliceVar(&trustedProxies, "trusted-proxies", nil, "addresses or CIDR ranges of proxies in front of Spry (a TLS proxy, e.g. 127.0.0.1) whose X-Forwarded-For, -Proto and -Host are believed; anyone else's are replaced with what Spry saw")
	f.StringSliceVar(&egressAllow, "egress-allow", nil, "private CIDR ranges egress functions may reach anyway (e.g. 10.1.2.0/24)")
	f.Int64Var(&cfg.MaxCodeBytes, "max-code-size", 5<<20, "largest function source accepted, in bytes")
	f.Int64Var(&cfg.MaxLogBytes, "max-log-size", logstore.DefaultMaxBytes, "the function log database's bound, in bytes: past it the users holding the most lose their oldest lines first")
	f.Int64Var(&cfg.LogKeepFree, "log-keep-free", 0, "free space, in bytes, the function log database leaves on its disk: while less is free, its file stops growing and new lines take the oldest lines' room (0: 15% of the disk, at most 4 GiB, as journald)")
	f.Int64Var(&cfg.MaxBundleBytes, "max-bundle-size", 50<<20, "largest bundle a deploy may build (code and its dependencies), in bytes")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-size", 100<<20, "largest request body a function may be sent, in bytes")
	f.IntVar(&cfg.RouterLoops, "router-loops", max(1, runtime.NumCPU()/2), "event loops serving the router's fast path (0: none, every request takes the goroutine-per-connection path)")
	// On one CPU a polling loop would only keep the function it waits
	// for from running.
	spin := router.DefaultSpin
	if runtime.NumCPU() < 2 {
		spin = 0
	}
	f.DurationVar(&cfg.RouterSpin, "router-spin", spin, "how long an event loop polls for the next event before it sleeps, while its waits are shorter than that: lower latency under load for some CPU (0: never poll; the default is 0 on one CPU)")
	// A quarter of the server's own open files, read now: without a
	// bound one client's idle connections took them all, and every other
	// client's connections waited in the kernel's queue.
	// Half of them for all clients together: the other half stays for
	// the instances' sockets and pipes and the databases, whatever many
	// clients do at once.
	f.IntVar(&cfg.MaxConns, "max-conns", ownFiles()/2, "client connections the listener holds open at once; at the bound the longest idle keep-alive connections are closed to make room (as nginx does when worker_connections run out), and with none idle a new connection is closed at once (0: no bound; half of spry serve's open-file limit by default)")
	f.IntVar(&cfg.MaxConnsPerClient, "max-conns-per-client", ownFiles()/4, "connections one client address (an IPv6 client's /64) may hold open on the listener at once; more are closed as they come (0: no bound; --trusted-proxies are not bounded; a quarter of spry serve's open-file limit by default)")
	f.Float64Var(&cfg.CPU, "cpu", 1, "CPUs one instance may use (a cgroup quota, at least 0.05; 0 for none)")
	f.IntVar(&cfg.QueueSize, "queue-size", 1000, "requests that may wait for a busy function's capacity before new ones get 503")
	f.IntVar(&cfg.MaxInstancesPerUser, "max-instances-per-user", 1000, "instances one user's functions may run together (0: no limit); past it a function with no instance gets 429")
	f.Var(&userMemory, "max-memory-per-user", "memory limits one user's instances may add up to, in MiB or as a size like 8Gi or 8GiB (0: no bound; by default half of --all-memory, at least --memory): a start past it gets 429, and a deploy whose function alone, or its min instances together, would be past it gets 400")
	// A quarter of what the host has, read now: one user's instances
	// (each up to 256 processes and 21,024 files a process) would
	// otherwise take it all, from the server and every other user.
	f.Int64Var(&cfg.UserPids, "user-pids", sandbox.HostPids()/4, "processes and threads one user's running instances may hold together (0: no bound); each instance gets its share, from 256 down to 32, and a start that does not fit gets 429 (a quarter of kernel.pid_max by default)")
	// The last quarter is the server's and the host's: users together
	// (each with a quarter) could otherwise take it all.
	f.Int64Var(&cfg.AllPids, "all-pids", sandbox.HostPids()*3/4, "processes and threads all instances and builds may hold together (0: no bound); past it their forks fail, and the rest of the host's is the server's and the host's own (three quarters of kernel.pid_max by default)")
	f.Int64Var(&cfg.UserFiles, "user-files", sandbox.HostFiles()/4, "open files one user's running instances may hold together (0: no bound); each instance process gets its share, from 21024 down to 1024 plus two per request of its concurrency, and a start that does not fit gets 429 (a quarter of fs.file-max by default)")
	f.IntVar(&memoryReserve, "memory-reserve", defaultMemoryReserve(), "host memory, in MiB, that instance starts leave available: below it a start for a request first stops other functions' idle instances, least recently used first, and gets 503 if none is left to stop (0: no reserve; default 1/32 of the host's memory, at least 256)")
	f.IntVar(&allMemory, "all-memory", int(hostMemory()>>20)-defaultMemoryReserve(), "memory, in MiB, all instances and builds may hold together, swap included (0: no bound); past it the kernel's OOM killer stops the largest of them, never the server (by default the host's memory less --memory-reserve)")
	f.Int64Var(&cfg.KVMaxBytes, "kv-max-bytes", kv.DefaultMaxBytes, "bytes of keys and values each function's ctx.kv may hold, each entry counted 100 bytes more; a write past it fails with quota_exceeded")
	f.Int64Var(&cfg.KVMaxBytesPerUser, "kv-max-bytes-per-user", kv.DefaultMaxBytesPerOwner, "bytes of keys and values the ctx.kv of all of one user's functions may hold together, counted as for --kv-max-bytes (0: no bound); a write past it fails with quota_exceeded")
	f.IntVar(&cfg.MaxFunctionsPerUser, "max-functions-per-user", 1000, "functions one user may have (0: no limit); deploying one more gets 403 quota_exceeded")
	f.IntVar(&cfg.MaxDeploys, "max-deploys", api.DefaultMaxDeploys, fmt.Sprintf("deploys past admission at once (reading their body, building, storing), at most %d of them one user's; the others wait, their bodies unread", api.MaxDeploysPerUser))
	f.IntVar(&cfg.MaxDeploysWaiting, "max-deploys-waiting", api.DefaultMaxDeploysWaiting, "deploys that may wait for admission at once; one more gets 503 unavailable")
	f.DurationVar(&cfg.DeployBodyTimeout, "deploy-body-timeout", api.DefaultDeployBodyTimeout, "how long an admitted deploy's body may take to arrive whole; past it the deploy gets 408 request_timeout and its slot goes to the next")
	f.IntVar(&cfg.AsyncWorkers, "async-workers", async.DefaultWorkers, "attempts of asynchronous invocations that run at once, server-wide; the others wait their turn")
	f.IntVar(&cfg.AsyncWorkersPerUser, "async-workers-per-user", async.DefaultWorkersPerOwner, "attempts of one user's asynchronous invocations that run at once, so that one user's flood leaves room to the others (at most --async-workers)")
	f.IntVar(&cfg.AsyncMaxPerUser, "async-max-per-user", async.DefaultMaxPendingPerOwner, "asynchronous invocations one user may have not finished (queued, waiting for a retry, or running); one more gets 429 rate_limited (0: no bound)")
	f.Var(&asyncBytes, "async-max-bytes-per-user", "bytes one user's asynchronous invocations may hold, in bytes or as a size like 640Mi or 1GiB: the bodies of those not finished, each counted with 64 KiB for the response it may keep, and the responses kept of those finished (0: no bound); one more past it gets 429 rate_limited")
	f.DurationVar(&cfg.AsyncRetryDelay, "async-retry-delay", async.DefaultRetryDelay, "wait before an asynchronous invocation's first retry; the second waits four times as long (each ±20%)")
	f.DurationVar(&cfg.AsyncRetention, "async-retention", async.DefaultRetention, "how long finished asynchronous invocations are kept, to be read")
	f.IntVar(&cfg.PoolSize, "pool-size", 4, "warm, generic Deno instances kept ready for cold starts")
	f.IntVar(&cfg.NodePoolSize, "node-pool-size", 1, "warm, generic Node instances kept ready for cold starts")
	f.IntVar(&cfg.DefaultMemoryMiB, "memory", 128, "default memory limit of an instance, in MiB")
	f.StringVar(&cfg.DenoBinary, "deno", "", "`PATH` of the deno binary (default: the pinned one make build installs)")
	f.StringVar(&cfg.NodeBinary, "node", "", "`PATH` of the node binary, 22.13 or newer (default: the pinned one make build installs)")
	f.IntVar(&cfg.UIDBase, "uid-base", 2000000, "first host uid for instance sandboxes (each instance gets its own; npm installs run as the uid below it)")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long shutdown waits for in-flight requests")
	f.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", 0, "how long, after SIGTERM, the server serves on with /readyz answering 503 before it stops taking connections (the time a load balancer or Kubernetes takes to see it not ready; a second signal ends it)")
	f.StringVar(&cfg.NPMRegistry, "npm-registry", "", "npm registry for function dependencies at deploy time (default: npm's public registry)")
	f.IntVar(&cfg.NPMMemoryMiB, "npm-memory", int(build.DefaultNPMLimits.MemoryBytes>>20), "memory (swap included) one deploy's npm install may use, in MiB; past it the deploy fails with 413")
	f.IntVar(&cfg.NPMDiskMiB, "npm-disk", build.DefaultNPMWriteBytes>>20, "what one deploy's npm install may write, in MiB: node_modules, the npm cache and temporary files together; past it the deploy fails with 413")
	f.Int64Var(&cfg.NPMCacheBytes, "npm-cache-size", build.DefaultNPMCacheMaxBytes, "the npm cache's bound, in bytes: past it, after an install, the least recently written entries go until it is down to 3/4 of it")
	f.StringVar(&cfg.JSRRegistry, "jsr-registry", "", "npm registry of JSR packages (the @jsr scope), for jsr: imports at deploy time (default: https://npm.jsr.io/)")
	f.BoolVar(&cfg.NewSecretKey, "new-secret-key", false, "if the data dir's secret.key is missing although functions hold secrets, make a new key anyway (those secrets stop opening; set them again)")
	f.StringVar(&cfg.DebugListen, "debug-listen", "", "serve pprof on this loopback address, e.g. 127.0.0.1:6060 (others are refused); never on the public listener")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

func validate(cfg server.Config) error {
	switch {
	case cfg.ScaleToZeroAfter <= 0:
		return errdefs.Invalid("--scale-to-zero-after must be positive")
	case cfg.IdleCPUAfter < 0:
		return errdefs.Invalid("--idle-cpu-after must not be negative")
	case cfg.AutoscaleWindow < time.Second || cfg.AutoscaleWindow > time.Hour:
		// Knative's bounds' upper one: each version keeps a bucket per
		// second of the window and reads them all at every tick.
		return errdefs.Invalid("--autoscale-window must be between 1s and 1h")
	case cfg.Timeout <= 0:
		return errdefs.Invalid("--timeout must be positive")
	case cfg.WebSocketIdleTimeout <= 0:
		return errdefs.Invalid("--websocket-idle-timeout must be positive")
	case cfg.ShutdownTimeout < 0:
		return errdefs.Invalid("--shutdown-timeout must not be negative")
	case cfg.ShutdownDelay < 0:
		return errdefs.Invalid("--shutdown-delay must not be negative")
	case cfg.LogKeepFree < 0:
		return errdefs.Invalid("--log-keep-free must not be negative")
	case cfg.MaxLogBytes < 1<<20:
		return errdefs.Invalid("--max-log-size must be at least 1 MiB (1048576)")
	case cfg.MaxCodeBytes <= 0:
		return errdefs.Invalid("--max-code-size must be positive")
	case cfg.MaxBundleBytes <= 0:
		return errdefs.Invalid("--max-bundle-size must be positive")
	case cfg.MaxBodyBytes <= 0:
		return errdefs.Invalid("--max-body-size must be positive")
	case cfg.CPU != 0 && !(cfg.CPU >= 0.05 && !math.IsInf(cfg.CPU, 1)):
		// The kernel refuses a quota under 1 ms a period, which would fail
		// every instance's start; 0.05 is a function's own least --cpu.
		return errdefs.Invalid("--cpu must be 0 (no quota) or at least 0.05")
	case cfg.QueueSize < 1:
		return errdefs.Invalid("--queue-size must be at least 1")
	case cfg.UserPids != 0 && cfg.UserPids < 256:
		// One instance at its full limit must fit.
		return errdefs.Invalid("--user-pids must be 0 (no bound) or at least 256")
	case cfg.AllPids != 0 && cfg.AllPids < 1024:
		// A pool and a few instances at their full limit must fit.
		return errdefs.Invalid("--all-pids must be 0 (no bound) or at least 1024")
	case cfg.UserFiles != 0 && cfg.UserFiles < 2*(2*server.MaxConcurrency+1024):
		// One instance (the runtime and slirp4netns) at the highest
		// concurrency must fit.
		return errdefs.Invalid("--user-files must be 0 (no bound) or at least %d", 2*(2*server.MaxConcurrency+1024))
	case cfg.AllMemory != 0 && cfg.AllMemory < 256<<20:
		// A pool and an instance at its default limit must fit.
		return errdefs.Invalid("--all-memory must be 0 (no bound) or at least 256 (MiB)")
	case cfg.KVMaxBytes != 0 && cfg.KVMaxBytes < kv.MaxKeyBytes+kv.MaxValueBytes+kv.EntryOverhead:
		// One entry of the largest size must fit.
		return errdefs.Invalid("--kv-max-bytes must be at least %d", kv.MaxKeyBytes+kv.MaxValueBytes+kv.EntryOverhead)
	case cfg.KVMaxBytesPerUser < 0 || cfg.KVMaxBytesPerUser != 0 && cfg.KVMaxBytesPerUser < kv.MaxKeyBytes+kv.MaxValueBytes+kv.EntryOverhead:
		return errdefs.Invalid("--kv-max-bytes-per-user must be 0 (no bound) or at least %d", kv.MaxKeyBytes+kv.MaxValueBytes+kv.EntryOverhead)
	case cfg.MemoryReserve >= hostMemory():
		// Nothing could ever start.
		return errdefs.Invalid("--memory-reserve must be below the host's memory (%d MiB)", hostMemory()>>20)
	case cfg.MaxInstancesPerUser < 0:
		return errdefs.Invalid("--max-instances-per-user must be 0 (no limit) or more")
	case cfg.MaxMemoryPerUserMiB != 0 && cfg.MaxMemoryPerUserMiB < cfg.DefaultMemoryMiB:
		// No function at the default memory could ever start.
		return errdefs.Invalid("--max-memory-per-user must be 0 (no bound) or at least --memory (%d MiB)", cfg.DefaultMemoryMiB)
	case cfg.MaxConnsPerClient < 0:
		return errdefs.Invalid("--max-conns-per-client must be 0 (no bound) or more")
	case cfg.MaxConns < 0:
		return errdefs.Invalid("--max-conns must be 0 (no bound) or more")
	case cfg.RouterLoops < 0:
		return errdefs.Invalid("--router-loops must be 0 (none) or more")
	case cfg.RouterSpin < 0 || cfg.RouterSpin > time.Millisecond:
		return errdefs.Invalid("--router-spin must be between 0 and 1ms")
	case cfg.MaxFunctionsPerUser < 0:
		return errdefs.Invalid("--max-functions-per-user must be 0 (no limit) or more")
	case cfg.MaxDeploys < 1:
		return errdefs.Invalid("--max-deploys must be at least 1")
	case cfg.MaxDeploysWaiting < 1:
		return errdefs.Invalid("--max-deploys-waiting must be at least 1")
	case cfg.DeployBodyTimeout < time.Second:
		// Less would refuse ordinary deploys over an ordinary link.
		return errdefs.Invalid("--deploy-body-timeout must be at least 1s")
	case cfg.AsyncWorkers < 1 || cfg.AsyncWorkers > 1024:
		return errdefs.Invalid("--async-workers must be from 1 to 1024")
	case cfg.AsyncWorkersPerUser < 1 || cfg.AsyncWorkersPerUser > cfg.AsyncWorkers:
		return errdefs.Invalid("--async-workers-per-user must be from 1 to --async-workers (%d)", cfg.AsyncWorkers)
	case cfg.AsyncMaxPerUser < 0:
		return errdefs.Invalid("--async-max-per-user must be 0 (no bound) or more")
	case cfg.AsyncMaxBytesPerUser < 0 || cfg.AsyncMaxBytesPerUser != 0 && cfg.AsyncMaxBytesPerUser < 1<<20:
		// An invocation of the largest body, and its response, must fit.
		return errdefs.Invalid("--async-max-bytes-per-user must be 0 (no bound) or at least 1 MiB (1048576)")
	case cfg.AsyncRetryDelay < 10*time.Millisecond || cfg.AsyncRetryDelay > time.Hour:
		return errdefs.Invalid("--async-retry-delay must be from 10ms to 1h")
	case cfg.AsyncRetention < time.Minute:
		return errdefs.Invalid("--async-retention must be at least 1m")
	case cfg.PoolSize < 0 || cfg.NodePoolSize < 0:
		return errdefs.Invalid("--pool-size must not be negative")
	case cfg.NPMCacheBytes < 1<<20:
		return errdefs.Invalid("--npm-cache-size must be at least 1 MiB (1048576)")
	case cfg.NPMMemoryMiB < 64:
		// npm itself needs ~40 MiB.
		return errdefs.Invalid("--npm-memory must be at least 64 (MiB)")
	case cfg.NPMDiskMiB < 64:
		// npm writes about what it unpacks and caches (a small package:
		// tens of KiB), but single common packages unpack to tens of
		// MiB: a lower bound would fail ordinary deploys.
		return errdefs.Invalid("--npm-disk must be at least 64 (MiB)")
	case cfg.DefaultMemoryMiB < 32:
		return errdefs.Invalid("--memory must be at least 32 (MiB)")
	case cfg.DefaultNetwork != "egress" && cfg.DefaultNetwork != "none":
		return errdefs.Invalid("--network must be egress or none")
	case cfg.MaxMemoryMiB < cfg.DefaultMemoryMiB:
		return errdefs.Invalid("--max-memory is below --memory")
	case cfg.MaxTimeout < cfg.Timeout:
		return errdefs.Invalid("--max-timeout is below --timeout")
	case cfg.Concurrency < 1 || cfg.MaxScale < 1:
		return errdefs.Invalid("--concurrency and --max-scale must be at least 1")
	case cfg.Concurrency > server.MaxConcurrency:
		// Instances get open files for that many requests, no more.
		return errdefs.Invalid("--concurrency must be at most %d", server.MaxConcurrency)
	case cfg.UIDBase < 1000:
		return errdefs.Invalid("--uid-base must be at least 1000")
	case cfg.FunctionDomain != "" && router.ValidDomain(cfg.FunctionDomain) != nil:
		return errdefs.Invalid("--function-domain: %v", router.ValidDomain(cfg.FunctionDomain))
	case cfg.FunctionDomain != "" && publicBelow(cfg.PublicURL, cfg.FunctionDomain):
		// Every host below the domain is a function's: the API there
		// would answer 404 to everything.
		return errdefs.Invalid("--public-url %s is below --function-domain %s, where every host is a function's; give the API a host outside it (the domain itself will do)", cfg.PublicURL, cfg.FunctionDomain)
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return errdefs.Invalid("--tls-cert and --tls-key go together: give both, or neither")
	case !hostPort(cfg.Listen):
		// Refused before anything is made in the data directory.
		return errdefs.Invalid("--listen must be HOST:PORT or :PORT, like 127.0.0.1:8080; not %q", cfg.Listen)
	case cfg.DebugListen != "" && !loopback(cfg.DebugListen):
		// pprof shows the server's memory and stacks: secrets among them.
		return errdefs.Invalid("--debug-listen must be a loopback address, like 127.0.0.1:6060")
	}
	return nil
}

// publicBelow says whether the host of publicURL is below domain.
func publicBelow(publicURL, domain string) bool {
	u, err := url.Parse(publicURL)
	if err != nil || u.Hostname() == "" {
		return false
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	return strings.HasSuffix(host, "."+strings.ToLower(strings.TrimSuffix(domain, ".")))
}

// hostPort says whether addr is a host (or none) and a port number.
func hostPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	_, err = strconv.ParseUint(port, 10, 16)
	return err == nil
}

// loopback says whether addr (host:port) is on a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// newLogger is serve's logger, as --log-level and --log-format ask.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, errdefs.Invalid("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		// A duration as the text format writes it ("1.5s"), not as
		// slog's JSON does (nanoseconds, a bare number a log pipeline
		// cannot tell from seconds or bytes).
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				a.Value = slog.StringValue(a.Value.Duration().String())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errdefs.Invalid("--log-format must be text or json")
}

// hostMemory is the host's memory, or, if it cannot be read, the most
// there is (no reserve is then refused).
func hostMemory() uint64 {
	n, err := activator.MemTotal()
	if err != nil {
		return math.MaxUint64
	}
	return n
}

// defaultUserMemory is --max-memory-per-user's default, in MiB: half of
// allMemory (--all-memory; the host's memory if that is 0), so that one
// user's instances, at their limits, leave the other half to the rest;
// at least defaultMiB (--memory), so that a function at the default
// memory can start.
func defaultUserMemory(allMemory, defaultMiB int) int {
	if allMemory <= 0 {
		allMemory = int(min(hostMemory()>>20, math.MaxInt32))
	}
	return max(allMemory/2, defaultMiB)
}

// mebibytes is a flag of a size in MiB: a bare number of MiB, or a size
// as a function's memory setting takes it ("8Gi", "512Mi", "1G"), with an
// optional trailing B ("8GiB"); 0 is none.
type mebibytes int

func (m *mebibytes) String() string { return strconv.Itoa(int(*m)) }
func (m *mebibytes) Type() string   { return "size" }

func (m *mebibytes) Set(s string) error {
	v := strings.TrimSpace(s)
	if v == "0" {
		*m = 0
		return nil
	}
	mib, err := parseMiB(v)
	if err != nil {
		return fmt.Errorf("want MiB or a size like 8Gi or 8GiB, not %q", s)
	}
	*m = mebibytes(mib)
	return nil
}

// parseMiB reads a size as a function's memory setting takes it, with an
// optional trailing B, into MiB (rounded up).
func parseMiB(v string) (int, error) {
	// "8GiB", "512MB": the B is the only thing ParseMemory does not take.
	if n := len(v); n >= 2 && v[n-1] == 'B' && strings.ContainsRune("iKMG", rune(v[n-2])) {
		v = v[:n-1]
	}
	return functions.ParseMemory(v)
}

// byteSize is a flag of a size in bytes: a bare number of bytes, as
// --kv-max-bytes-per-user takes, or a size as mebibytes takes it
// ("640Mi", "1GiB"), rounded up to a MiB; 0 is none.
type byteSize int64

func (b *byteSize) String() string {
	if n := int64(*b); n > 0 && n%(1<<20) == 0 {
		return strconv.FormatInt(n>>20, 10) + "Mi"
	}
	return strconv.FormatInt(int64(*b), 10)
}

func (b *byteSize) Type() string { return "size" }

func (b *byteSize) Set(s string) error {
	v := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
		*b = byteSize(n)
		return nil
	}
	// A bare number is bytes here, never ParseMemory's MiB.
	mib, err := parseMiB(v)
	if err != nil || strings.TrimRight(v, "0123456789.") == "" {
		return fmt.Errorf("want bytes or a size like 640Mi or 1GiB, not %q", s)
	}
	*b = byteSize(int64(mib) << 20)
	return nil
}

// defaultMemoryReserve is --memory-reserve's default, in MiB: 1/32 of
// the host's memory (768 MiB of 24 GiB), at least 256 MiB, room for a
// few instances to start before the kernel's own reclaim and its OOM
// killer step in.
func defaultMemoryReserve() int {
	n, err := activator.MemTotal()
	if err != nil {
		return 256
	}
	return max(256, int(n>>20)/32)
}

// stopSignals is spry serve's ctx, which SIGINT or SIGTERM ends (the
// drain begins); a second one calls hurry (the drain ends at once).
// stop releases the signals.
func stopSignals(parent context.Context, log *slog.Logger, hurry func()) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for n := 0; ; n++ {
			select {
			case sig := <-sigs:
				if n == 0 {
					log.Info("stopping: in-flight requests may finish first; another signal stops at once", "signal", sig.String())
					cancel()
					continue
				}
				hurry()
			case <-done:
			}
			return
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

// ownFiles is this process's open-file limit (Go's runtime raised the
// soft limit to the hard one at start).
func ownFiles() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<30 {
		return 1 << 30
	}
	return int(l.Cur)
}
