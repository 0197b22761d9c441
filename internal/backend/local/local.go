// Package local is the backend that runs function instances on this
// machine: each instance a runtime process in its own sandbox, serving HTTP
// on a Unix socket. It keeps a warm pool of generic, already sandboxed
// runtime processes and specializes one with a version's bundle when an
// instance is needed, so a cold start costs an import, not a process start.
package local

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/sandbox"
)

// Runtime is what the backend needs of a runtime: how to launch a generic
// instance.
type Runtime interface {
	Name() string
	Launch(o runtime.LaunchOptions) runtime.Launch
}

// Blobs gives the file holding a bundle.
type Blobs interface {
	Path(digest string) (string, error)
}

// LogSink receives every line an instance writes.
type LogSink interface {
	InstanceOutput(spec *backend.Spec, instance, stream string, line []byte)
}

// Config is the backend's setup, resolved once at start.
type Config struct {
	RunDir           string // instance directories live here; must be traversable by other uids (0711)
	Sandbox          *sandbox.Sandbox
	Runtimes         []Runtime
	Blobs            Blobs
	Logs             LogSink
	Logger           *slog.Logger
	PoolSize         int            // warm generic instances kept per runtime at the default memory size and network
	PoolSizes        map[string]int // per-runtime pool sizes, overriding PoolSize
	DefaultMemoryMiB int
	DefaultNetwork   string
	UIDBase          int // first host uid for instances
	UIDCount         int
	StartTimeout     time.Duration
	Pids             int64 // an instance's processes and threads, alone
	CPUQuotaUs       int64 // per 100ms; 100000 is one CPU, 0 no quota
	TmpBytes         int64
	NoFiles          uint64 // open files of each of an instance's processes, alone
	// UserPids and UserFiles bound what one user's instances hold
	// together (share.go); 0: no bound.
	UserPids  int64
	UserFiles uint64
	// KV answers the functions' ctx.kv (nil: they have none).
	KV KV
}

// KV answers the ctx.kv requests of function functionID's code on conn
// until it ends or ctx is done, taking one of slots for each request
// while it is answered, and closes conn (kv.Store).
type KV interface {
	ServeConn(ctx context.Context, conn net.Conn, functionID string, slots chan struct{})
}

// CPU weights (cgroup shares) of a generic instance waiting in the pool,
// of a user's one specialized instance (userShares divides it among
// more), and of one started for a waiting request until it is ready: a
// start boost, as Cloud Run's, since under load an equal weight leaves
// the start (~75 ms of CPU) a slice among the busy instances, and the
// requests queued for it wait many times as long. Only their ratios
// count among the sandboxes; they are 16 times the kernel's default so
// that a user's instances keep a default weight or more up to sixteen
// of them (with 1024 divided among them, cold starts measured ~4 ms
// slower), and the boost is the kernel's largest weight.
const (
	pooledShares = 1024
	activeShares = 16 * pooledShares
	startShares  = 16 * activeShares
)

// userShares is the CPU weight of each of a user's n running instances:
// one instance's weight shared among them, so that under contention each
// user, not each instance, gets a like part of the CPUs (a user with
// fifty busy instances would otherwise take fifty parts to another's
// one). Halved at powers of two, so that a scale-up to n instances
// rewrites the weights O(log n) times, not n. Shares below 2 are not
// kept by the kernel.
func userShares(n int) uint64 {
	if n <= 1 {
		return activeShares
	}
	return max(2, uint64(activeShares)>>bits.Len(uint(n-1)))
}

// reweigh gives each running instance of owner its userShares. It runs
// when an instance of owner is specialized (off the cold start's path)
// and when one ends.
func (b *Backend) reweigh(owner string) {
	b.weighMu.Lock()
	defer b.weighMu.Unlock()
	var ps []*proc
	b.mu.Lock()
	if b.closed {
		// Every instance is going; reweighing each end would cost
		// O(n²) on the way out.
		b.mu.Unlock()
		return
	}
	for _, p := range b.procs {
		p.mu.Lock()
		if p.spec != nil && p.spec.Owner == owner && p.stopping == "" {
			ps = append(ps, p)
		}
		p.mu.Unlock()
	}
	b.mu.Unlock()
	w := userShares(len(ps))
	for _, p := range ps {
		if p.weight == w {
			continue
		}
		// An instance that ended meanwhile has no group to write to;
		// the reweigh its end brings covers the rest.
		if err := p.cmd.SetCPUShares(w); err != nil {
			b.log.Debug("set cpu shares", "instance", p.id, "err", err)
			continue
		}
		p.weight = w
	}
}

// cpuQuota is the quota per 100 ms period for a function asking for
// milli thousandths of a CPU (0: the default).
func cpuQuota(milli int, def int64) int64 {
	if milli > 0 {
		return int64(milli) * 100
	}
	return def
}

// errClosed refuses starts once Close has begun.
var errClosed = fmt.Errorf("the backend is closed: %w", errdefs.ErrUnavailable)

// refillDelay is how long after a cold start the pool refill begins.
const refillDelay = 25 * time.Millisecond

// Backend runs instances on this machine.
type Backend struct {
	cfg      Config
	log      *slog.Logger
	runtimes map[string]Runtime

	mu   sync.Mutex
	pool map[poolKey][]*proc
	// pooled closes (and is replaced) whenever a sandbox joins the pool,
	// waking the starts that wait for their own spawns.
	pooled  chan struct{}
	filling map[poolKey]int
	procs   map[string]*proc
	uids    []bool // in use, indexed from UIDBase
	closed  bool

	refill chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
	// spawns bounds sandboxes starting at once: a burst of fifty on two
	// cores makes every one of them slow, while a few at a time finish
	// in turn. One more than the CPUs: a spawn also sleeps (the kernel's
	// namespace setup waits for RCU grace periods, the supervisor for the
	// runtime), and with one per CPU a burst left the CPUs ~20% idle.
	spawns chan struct{}
	// queued counts spawns that requests wait for which wait for a slot
	// themselves. The pool is not refilled meanwhile: each of those
	// requests has a spawn of its own coming, and a refill would hold a
	// slot that one of them needs, at the pool's low CPU weight, for as
	// long as they keep the CPUs busy. Spawns that run while no other
	// waits (a trickle of cold starts) leave slots free, and the pool
	// refills beside them, so it recovers from running dry.
	queued int

	unwatch context.CancelFunc // ends the watch of the host's addresses

	// weighMu orders the writes of instances' CPU weights (reweigh), so
	// the last one leaves every instance of a user at its due weight.
	weighMu sync.Mutex
	// ledgers order the changes of each user's budgets (share.go);
	// guarded by mu.
	ledgers map[string]*ledger
	// raisesFiles: this server may raise an instance's open-file limit
	// (CAP_SYS_RESOURCE); without it they only go down.
	raisesFiles bool
}

type poolKey struct {
	runtime   string
	memoryMiB int
	network   string
	isolation string
}

// proc is one sandboxed runtime process, generic until specialized.
type proc struct {
	id     string
	key    poolKey
	uid    int
	dir    string
	cmd    *sandbox.Cmd
	booted chan struct{} // closed when the runtime's own code runs (BootLine)
	ready  chan struct{} // closed when the runtime listens
	exited chan struct{}
	// lifeline is the runtime's stdin; see spawn.
	lifeline io.WriteCloser
	// control is a connection to the runtime's control socket, made while
	// the process waits in the pool so that a cold start does not pay for
	// connecting; used once, by specialize.
	control net.Conn
	// kv listens for the function's ctx.kv (nil without Config.KV).
	kv net.Listener

	mu       sync.Mutex
	spec     *backend.Spec // nil while generic
	inst     *backend.Instance
	stopping string // reason, when we kill it on purpose
	// loadFailure says why the function did not load, once the runtime
	// has said so (or did not say in time).
	loadFailure string
	// heapFull: the runtime wrote V8's fatal "Reached heap limit" to
	// stderr; if it then dies, it ran out of JavaScript heap.
	heapFull atomic.Bool

	weight uint64 // CPU shares reweigh last wrote; guarded by weighMu

	// owner is the user whose budgets the instance is admitted to ("" in
	// the pool); guarded by Backend.mu. share is its part of them,
	// guarded by owner's ledger.
	owner string
	share holding
}

// New cleans up what a previous run left behind and starts the pool.
func New(cfg Config) (*Backend, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.DefaultNetwork == "" {
		cfg.DefaultNetwork = runtime.NetworkEgress
	}
	if cfg.UIDCount <= 0 {
		cfg.UIDCount = 10000
	}
	b := &Backend{
		cfg:         cfg,
		log:         cfg.Logger,
		runtimes:    map[string]Runtime{},
		pool:        map[poolKey][]*proc{},
		pooled:      make(chan struct{}),
		filling:     map[poolKey]int{},
		procs:       map[string]*proc{},
		ledgers:     map[string]*ledger{},
		raisesFiles: sandbox.RaisesOpenFiles(),
		uids:        make([]bool, cfg.UIDCount),
		refill:      make(chan struct{}, 1),
		stop:        make(chan struct{}),
		spawns:      make(chan struct{}, max(2, goruntime.NumCPU())+1),
	}
	for _, r := range cfg.Runtimes {
		b.runtimes[r.Name()] = r
	}
	if n := cfg.Sandbox.Sweep() + sandbox.KillUIDs(cfg.UIDBase, cfg.UIDBase+cfg.UIDCount); n > 0 {
		b.log.Warn("killed instances left by a previous run", "count", n)
	}
	instDir := filepath.Join(cfg.RunDir, "i")
	if err := os.RemoveAll(instDir); err != nil {
		return nil, fmt.Errorf("clean %s: %w", instDir, err)
	}
	if err := os.MkdirAll(instDir, 0o711); err != nil {
		return nil, err
	}
	b.wg.Add(1)
	go b.filler()
	b.kick()
	watch, unwatch := context.WithCancel(context.Background())
	b.unwatch = unwatch
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := cfg.Sandbox.WatchHost(watch, b.log, b.recycleEgressPool); err != nil {
			b.log.Warn("running sandboxes will not follow changes of the host's addresses", "err", err)
		}
	}()
	return b, nil
}

// recycleEgressPool replaces the egress sandboxes waiting in the pool
// once the host's addresses changed: their filter rules are loaded again
// (sandbox.WatchHost), but their runtimes took the addresses into their
// own deny list, the second layer, at start.
func (b *Backend) recycleEgressPool() {
	b.mu.Lock()
	var stale []*proc
	for key, ps := range b.pool {
		if key.network == runtime.NetworkEgress {
			stale = append(stale, ps...)
			delete(b.pool, key)
		}
	}
	b.mu.Unlock()
	for _, p := range stale {
		b.kill(p, backend.ExitStopped)
	}
	b.kick()
}

func (b *Backend) defaultKeys() []poolKey {
	keys := make([]poolKey, 0, len(b.runtimes))
	for name := range b.runtimes {
		if b.poolSize(name) > 0 {
			keys = append(keys, poolKey{name, b.cfg.DefaultMemoryMiB, b.cfg.DefaultNetwork, ""})
		}
	}
	return keys
}

func (b *Backend) poolSize(runtime string) int {
	if n, ok := b.cfg.PoolSizes[runtime]; ok {
		return n
	}
	return b.cfg.PoolSize
}

func (b *Backend) kick() {
	select {
	case b.refill <- struct{}{}:
	default:
	}
}

// filler keeps the pool full in the background, one spawn at a time per
// key so refilling never starves request-driven starts of CPU.
func (b *Backend) filler() {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case <-b.refill:
		}
		for {
			key, ok := b.nextToFill()
			if !ok {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), b.cfg.StartTimeout)
			p, err := b.spawn(ctx, key, pooledShares, nil)
			cancel()
			b.mu.Lock()
			b.filling[key]--
			b.mu.Unlock()
			if err == nil {
				b.toPool(p)
				continue
			}
			select {
			case <-b.stop:
				return
			default:
			}
			b.log.Error("pool: starting a runtime failed", "runtime", key.runtime, "err", err)
			select {
			case <-b.stop:
				return
			case <-time.After(time.Second):
			}
		}
	}
}

func (b *Backend) nextToFill() (poolKey, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return poolKey{}, false
	}
	if b.queued > 0 {
		// Their cold starts kick the filler once each is done.
		return poolKey{}, false
	}
	for _, k := range b.defaultKeys() {
		if len(b.pool[k])+b.filling[k] < b.poolSize(k.runtime) {
			b.filling[k]++
			return k, true
		}
	}
	return poolKey{}, false
}

// slot takes one of the spawn slots, waiting for one if need be; demand
// says a request waits for this spawn (see queued), until givenUp closes
// (another sandbox served it): then the wait ends with errGivenUp, and
// the pool's filler, no longer held back, refills at its own weight.
func (b *Backend) slot(ctx context.Context, demand bool, givenUp <-chan struct{}) error {
	select {
	case b.spawns <- struct{}{}:
		return nil
	default:
	}
	if demand {
		b.mu.Lock()
		b.queued++
		b.mu.Unlock()
		defer func() {
			b.mu.Lock()
			b.queued--
			b.mu.Unlock()
		}()
	}
	select {
	case b.spawns <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.stop:
		return errClosed
	case <-givenUp:
		b.kick()
		return errGivenUp
	}
}

// errGivenUp ends a spawn no request waits for any more before it began.
var errGivenUp = errors.New("spawn given up: another sandbox served its request")

// toPool puts a generic sandbox in the pool (or stops it, once the
// backend is closed) and wakes the starts waiting for one.
func (b *Backend) toPool(p *proc) {
	b.mu.Lock()
	closed := b.closed
	// One that died since its spawn has been reaped (and so is no longer
	// in procs): it would count as warm until a start came to it.
	if b.procs[p.id] != p {
		b.mu.Unlock()
		b.kick()
		return
	}
	if !closed {
		b.pool[p.key] = append(b.pool[p.key], p)
		close(b.pooled)
		b.pooled = make(chan struct{})
	}
	b.mu.Unlock()
	if closed {
		b.kill(p, backend.ExitStopped)
	}
}

// PoolIdle reports how many generic instances wait in the pool per runtime.
func (b *Backend) PoolIdle() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for name := range b.runtimes {
		out[name] = 0
	}
	for k, ps := range b.pool {
		out[k.runtime] += len(ps)
	}
	return out
}

// Start returns a running instance of spec: a pooled runtime specialized
// with spec's bundle, or a freshly started one when the pool is empty. It
// returns as soon as the bundle is handed over; the runtime holds requests
// until the import is done, so the caller can send the first request at once.
func (b *Backend) Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error) {
	rt, ok := b.runtimes[spec.Runtime]
	if !ok {
		return nil, errdefs.Invalid("unknown runtime %q", spec.Runtime)
	}
	mem := spec.MemoryMiB
	if mem <= 0 {
		mem = b.cfg.DefaultMemoryMiB
	}
	network := spec.Network
	if network == "" {
		network = b.cfg.DefaultNetwork
	}
	key := poolKey{rt.Name(), mem, network, spec.Isolation}
	code, err := b.cfg.Blobs.Path(spec.Digest)
	if err != nil {
		return nil, fmt.Errorf("bundle of %s/%s v%d: %w", spec.Owner, spec.Name, spec.Version, err)
	}
	// Refill the pool once this cold start is done and its first request
	// served: a spawn started now would take the CPU from them.
	defer time.AfterFunc(refillDelay, b.kick)
	p := b.take(key)
	if p == nil {
		if p, err = b.spawnOrTake(ctx, key); err != nil {
			return nil, err
		}
	}
	if err := b.admit(p, spec); err != nil {
		if !errors.Is(err, errdefs.ErrRateLimited) {
			// Its limits may be half lowered (pids.max written, some
			// open-file limits not), which the pool's next start, of
			// any user, would inherit; or it died. Never pooled again.
			b.kill(p, backend.ExitCrashed)
			return nil, err
		}
		// Refused for the budget before anything of it was changed:
		// still generic, and as it was, it waits for another start (at
		// the pool's weight, should it have been spawned boosted).
		if err := p.cmd.SetCPU(pooledShares, b.cfg.CPUQuotaUs); err != nil {
			b.log.Warn("set cpu limits", "instance", p.id, "err", err)
		}
		b.toPool(p)
		return nil, err
	}
	inst, err := b.specialize(ctx, p, spec, code)
	if err != nil {
		b.kill(p, backend.ExitCrashed)
		return nil, err
	}
	return inst, nil
}

// spawnOrTake starts a sandbox for a request that found the pool empty,
// and returns it, or a pooled one that is ready first (a refill begun
// before the request came, or a spawn whose own request was served so):
// the request waits for the earliest sandbox, not for the one it started.
// A spawn that did not serve its request is still generic, and joins the
// pool.
func (b *Backend) spawnOrTake(ctx context.Context, key poolKey) (*proc, error) {
	type spawned struct {
		p   *proc
		err error
	}
	res := make(chan spawned, 1)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, errClosed
	}
	// Close waits for the spawn, which may outlive the request.
	b.wg.Add(1)
	b.mu.Unlock()
	// The spawn outlives the request if another sandbox serves it; it
	// ends with the request only if the request gives up.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	givenUp := make(chan struct{})
	go func() {
		defer b.wg.Done()
		// A request waits for this one: it starts boosted, and Start's
		// SetCPU brings it down to an instance's weight (or, once given
		// up, spawn drops it to the pool's).
		p, err := b.spawn(sctx, key, startShares, givenUp)
		res <- spawned{p, err}
	}()
	// adopt lets the pool have the spawn once no request waits for it:
	// one still waiting for a slot gives up (it would wait ahead of the
	// pool's refills, and start boosted, for nobody); one under way
	// joins the pool at the pool's weight.
	adopt := func() {
		close(givenUp)
		go func() {
			defer cancel()
			if r := <-res; r.err == nil {
				if err := r.p.cmd.SetCPU(pooledShares, b.cfg.CPUQuotaUs); err != nil {
					b.log.Warn("set cpu limits", "instance", r.p.id, "err", err)
				}
				b.toPool(r.p)
			}
		}()
	}
	for {
		b.mu.Lock()
		pooled := b.pooled
		b.mu.Unlock()
		if p := b.take(key); p != nil {
			adopt()
			return p, nil
		}
		select {
		case r := <-res:
			cancel()
			return r.p, r.err
		case <-pooled:
		case <-ctx.Done():
			// The spawn stops, unless it is done already: then it joins
			// the pool.
			cancel()
			adopt()
			return nil, ctx.Err()
		}
	}
}

func (b *Backend) take(key poolKey) *proc {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		ps := b.pool[key]
		if len(ps) == 0 {
			return nil
		}
		p := ps[len(ps)-1]
		b.pool[key] = ps[:len(ps)-1]
		select {
		case <-p.exited:
			continue // died while idle
		default:
			return p
		}
	}
}

// Stop stops an instance. Stopping one that already ended is not an error.
func (b *Backend) Stop(ctx context.Context, id string) error {
	b.mu.Lock()
	p := b.procs[id]
	b.mu.Unlock()
	if p == nil {
		return nil
	}
	b.kill(p, backend.ExitStopped)
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// idleQuotaUs is an idle instance's CPU quota per 100 ms period: 5% of a
// CPU for whatever it does with no request in flight.
const idleQuotaUs = 5000

// SetIdle throttles an instance's CPU to idleQuotaUs, or gives it its
// own quota back.
func (b *Backend) SetIdle(id string, idle bool) {
	b.mu.Lock()
	p := b.procs[id]
	b.mu.Unlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	spec := p.spec
	p.mu.Unlock()
	if spec == nil {
		return
	}
	q := cpuQuota(spec.CPUMilli, b.cfg.CPUQuotaUs)
	if idle {
		q = idleQuotaUs
	}
	if err := p.cmd.SetCPUQuota(q); err != nil {
		b.log.Warn("set cpu quota", "instance", id, "idle", idle, "err", err)
	}
}

// Kill ends an instance at once and records why (e.g. a timeout).
func (b *Backend) Kill(id, reason string) {
	b.mu.Lock()
	p := b.procs[id]
	b.mu.Unlock()
	if p != nil {
		b.kill(p, reason)
	}
}

func (b *Backend) kill(p *proc, reason string) {
	p.mu.Lock()
	specialized := p.inst != nil
	p.mu.Unlock()
	// A kill often follows the runtime's own end: a probe or a request
	// found it gone. Its exit, not the kill's reason, says why it ended,
	// and bubblewrap, about to pass that exit on, is given a moment to.
	gone := specialized && runtimeGone(p)
	p.mu.Lock()
	if p.stopping == "" && !gone {
		p.stopping = reason
	}
	p.mu.Unlock()
	if p.cmd.Process == nil {
		return
	}
	if gone {
		time.AfterFunc(goneGrace, func() { _ = p.cmd.Kill() })
		return
	}
	_ = p.cmd.Kill()
}

// goneGrace is how long a sandbox whose runtime has ended has to exit by
// itself before it is killed all the same.
const goneGrace = 100 * time.Millisecond

// runtimeGone reports whether a specialized runtime has ended: its control
// socket, which it listens on for its whole life, refuses connections.
// (One alive but not accepting still has the connection queued, or
// refused for a full queue.)
func runtimeGone(p *proc) bool {
	c, err := net.Dial("unix", filepath.Join(p.dir, "sock", runtime.ControlSocketName))
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist)
}

// Close stops every instance and the pool, waits for them, and removes
// the server's cgroups.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.stop)
	b.unwatch()
	all := make([]*proc, 0, len(b.procs))
	for _, p := range b.procs {
		all = append(all, p)
	}
	b.mu.Unlock()
	for _, p := range all {
		b.kill(p, backend.ExitStopped)
	}
	b.wg.Wait()
	// The server's cgroup subtree goes too, as New's sweep would take it:
	// a data directory used once (each test's, say) would otherwise leave
	// its empty groups behind for good.
	b.cfg.Sandbox.Sweep()
	// A spawn killed half way (its bubblewrap before it wrote the uid
	// map) may leave a process outside every cgroup.
	sandbox.KillUIDs(b.cfg.UIDBase, b.cfg.UIDBase+b.cfg.UIDCount)
	return nil
}

func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "i-" + hex.EncodeToString(b[:])
}

func (b *Backend) allocUID() (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, used := range b.uids {
		if !used {
			b.uids[i] = true
			return b.cfg.UIDBase + i, nil
		}
	}
	return 0, fmt.Errorf("all %d instance uids are in use: %w", len(b.uids), errdefs.ErrUnavailable)
}

func (b *Backend) freeUID(uid int) {
	b.mu.Lock()
	b.uids[uid-b.cfg.UIDBase] = false
	b.mu.Unlock()
}

// spawn starts a generic runtime process in a new sandbox, at the given
// CPU weight, and waits until it listens. givenUp (nil for the pool's
// refills) ends its wait for a slot (see slot).
func (b *Backend) spawn(ctx context.Context, key poolKey, shares uint64, givenUp <-chan struct{}) (*proc, error) {
	if err := b.slot(ctx, shares != pooledShares, givenUp); err != nil {
		return nil, err
	}
	defer func() { <-b.spawns }()
	rt := b.runtimes[key.runtime]
	uid, err := b.allocUID()
	if err != nil {
		return nil, err
	}
	p := &proc{id: newID(), key: key, uid: uid, booted: make(chan struct{}), ready: make(chan struct{}), exited: make(chan struct{})}
	p.dir = filepath.Join(b.cfg.RunDir, "i", p.id)
	fail := func(err error) (*proc, error) {
		if p.kv != nil {
			p.kv.Close()
		}
		os.RemoveAll(p.dir)
		b.freeUID(uid)
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(p.dir, "code"), 0o711); err != nil {
		return fail(err)
	}
	sock := filepath.Join(p.dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Chown(sock, uid, uid); err != nil {
		return fail(err)
	}
	l := rt.Launch(runtime.LaunchOptions{MemoryMiB: key.memoryMiB, Network: key.network, DenyNet: b.cfg.Sandbox.EgressRanges(), Isolation: key.isolation})
	mounts := append(l.Mounts,
		sandbox.Mount{Source: filepath.Join(p.dir, "code"), Dest: runtime.CodeDir},
		sandbox.Mount{Source: sock, Dest: runtime.SocketDir, Writable: true},
	)
	if b.cfg.KV != nil {
		if p.kv, err = listenKV(filepath.Join(p.dir, "kv.sock"), uid); err != nil {
			return fail(err)
		}
		// Read-only: the sandbox connects to the socket, and can neither
		// remove nor replace it. The same bind under gVisor: runsc's
		// --host-uds=all (open) connects to it from inside.
		mounts = append(mounts, sandbox.Mount{Source: filepath.Join(p.dir, "kv.sock"), Dest: runtime.KVSocket})
		go b.serveKV(p)
	}
	cmd, err := b.cfg.Sandbox.Command(sandbox.Spec{
		Name:      p.id,
		Program:   l.Program,
		Args:      l.Args,
		Env:       l.Env,
		Mounts:    mounts,
		UID:       uid,
		Network:   key.network,
		Isolation: key.isolation,
		BundleDir: filepath.Join(p.dir, "bundle"),
		Resources: sandbox.Resources{
			MemoryBytes: int64(key.memoryMiB) << 20,
			Pids:        b.cfg.Pids,
			CPUShares:   shares,
			CPUQuotaUs:  b.cfg.CPUQuotaUs,
		},
		TmpBytes: b.cfg.TmpBytes,
		NoFiles:  b.cfg.NoFiles,
	})
	if err != nil {
		return fail(err)
	}
	p.cmd = cmd
	// stdin is the sandbox's lifeline: nothing is ever written to it, and
	// the runtime exits when it closes, which the kernel does when this
	// process dies however it dies (the parent-death signal alone does not
	// always reach through bubblewrap).
	lifeline, err := cmd.StdinPipe()
	if err != nil {
		cmd.Cleanup()
		return fail(err)
	}
	p.lifeline = lifeline
	// Output pipes of our own, not StdoutPipe: Wait closes those as soon
	// as the process exits, losing the last lines still in them (a
	// crash's stack trace). reap reads these to their end first.
	var outR, outW [2]*os.File
	for i := range outR {
		if outR[i], outW[i], err = os.Pipe(); err != nil {
			closeAll(outR[:i], outW[:i])
			cmd.Cleanup()
			return fail(err)
		}
	}
	cmd.Stdout, cmd.Stderr = outW[0], outW[1]
	if err := cmd.Start(); err != nil {
		closeAll(outR[:], outW[:])
		cmd.Cleanup()
		return fail(fmt.Errorf("start sandbox: %w", err))
	}
	closeAll(outW[:])
	cmd.CloseFiles()

	b.mu.Lock()
	b.procs[p.id] = p
	closed := b.closed
	b.mu.Unlock()

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); b.readOutput(p, "stdout", outR[0], true) }()
	go func() { defer readers.Done(); b.readOutput(p, "stderr", outR[1], false) }()
	b.wg.Add(1)
	go b.reap(p, &readers, outR[:])
	if closed {
		// Close has stopped every instance it knew of; this one came
		// after.
		b.kill(p, backend.ExitStopped)
	}

	timer := time.NewTimer(b.cfg.StartTimeout)
	defer timer.Stop()
	// The egress network is set up once the runtime's own code runs, so
	// after bubblewrap has set up the namespace's loopback (doing both at
	// once makes bubblewrap's setup fail now and then), and beside the
	// rest of the runtime's start (~10 ms of a cold start's time), but
	// always before the process can be given any code.
	var network chan error
	startNetwork := func() {
		if network == nil && key.network == runtime.NetworkEgress {
			network = make(chan error, 1)
			go func() { network <- cmd.StartNetwork(ctx) }()
		}
	}
	booted := p.booted
	for {
		select {
		case <-givenUp:
			// No request waits for it any more: it ends its start at
			// the pool's weight, not boosted for nobody.
			givenUp = nil
			if err := cmd.SetCPU(pooledShares, b.cfg.CPUQuotaUs); err != nil {
				b.log.Warn("set cpu limits", "instance", p.id, "err", err)
			}
		case <-booted:
			booted = nil
			startNetwork()
		case <-p.ready:
			fail := func(what string, err error) (*proc, error) {
				b.kill(p, backend.ExitCrashed)
				<-p.exited
				return nil, fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrUnavailable)
			}
			// A runtime that did not say it booted is ready all the same.
			startNetwork()
			if network != nil {
				if err := <-network; err != nil {
					return fail("instance network", err)
				}
			}
			// The runtime has made its sockets, before any function code
			// could run: from now on their directory is root's, so nothing
			// in the sandbox can swap a socket for a link to some host
			// socket that the server, as root, would then connect to.
			if err := os.Chown(sock, 0, 0); err != nil {
				return fail("seal the socket directory", err)
			}
			if err := os.Chmod(sock, 0o755); err != nil {
				return fail("seal the socket directory", err)
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", filepath.Join(sock, runtime.ControlSocketName))
			if err != nil {
				return fail("connect to the runtime's control socket", err)
			}
			p.mu.Lock()
			p.control = c
			p.mu.Unlock()
			return p, nil
		case <-p.exited:
			return nil, fmt.Errorf("runtime %s exited while starting: %s: %w", key.runtime, exitDetail(p), errdefs.ErrUnavailable)
		case <-timer.C:
			b.kill(p, backend.ExitCrashed)
			return nil, fmt.Errorf("runtime %s did not start within %s: %w", key.runtime, b.cfg.StartTimeout, errdefs.ErrUnavailable)
		case <-ctx.Done():
			b.kill(p, backend.ExitStopped)
			return nil, ctx.Err()
		}
	}
}

func exitDetail(p *proc) string {
	if p.cmd.ProcessState == nil {
		return "unknown"
	}
	return p.cmd.ProcessState.String()
}

// maxLine bounds one log line; longer output is split.
const maxLine = 16 << 10

func (b *Backend) readOutput(p *proc, stream string, r io.Reader, watchReady bool) {
	br := bufio.NewReaderSize(r, maxLine)
	// The runtime's first lines are its own: BootLine (optional), then
	// ReadyLine. Anything after is the function's, but for one LoadedLine
	// (the function's top level may write before it).
	boot, first, loaded := watchReady, watchReady, false
	var carry []byte // a character a split line cut short, for the next
	for {
		line, err := br.ReadSlice('\n')
		if len(carry) > 0 {
			line, carry = append(carry, line...), nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			if cut := runeCut(line); cut < len(line) {
				carry = append([]byte(nil), line[cut:]...)
				line = line[:cut]
			}
		}
		if len(line) > 0 {
			line = trimNewline(line)
			if boot && string(line) == runtime.BootLine {
				boot = false
				close(p.booted)
				continue
			}
			boot = false
			if first {
				first = false
				if string(line) == runtime.ReadyLine {
					close(p.ready)
					loaded = true
					continue
				}
			}
			// The function's top level may have left a line unended: the
			// marker then ends that line, whose start is the function's.
			if loaded && bytes.HasSuffix(line, []byte(runtime.LoadedLine)) {
				loaded = false
				if own := line[:len(line)-len(runtime.LoadedLine)]; len(own) > 0 {
					b.output(p, stream, own)
				}
				p.mu.Lock()
				inst := p.inst
				p.mu.Unlock()
				if inst != nil {
					inst.Loaded(nil)
				}
				continue
			}
			if !watchReady && heapAbort(line) {
				p.heapFull.Store(true)
			}
			b.output(p, stream, line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// heapAbort says whether line is what V8 writes to stderr as it aborts
// at its heap limit, for either reason it gives ("Reached heap limit",
// or "Ineffective mark-compacts near heap limit" when collections free
// too little): Deno's "# Fatal JavaScript out of memory: <reason>",
// Node's "FATAL ERROR: <reason> Allocation failed - JavaScript heap out
// of memory". Matching the first reason alone took one Deno abort in
// five for a crash.
func heapAbort(line []byte) bool {
	return bytes.Contains(line, []byte("Fatal JavaScript out of memory")) || bytes.Contains(line, []byte("JavaScript heap out of memory"))
}

// runeCut is where to split b, a line too long to keep whole, so that
// no UTF-8 character is cut in two: before a last character b holds only
// part of, else at its end.
func runeCut(b []byte) int {
	i := len(b) - 1
	for i > 0 && len(b)-i < utf8.UTFMax && !utf8.RuneStart(b[i]) {
		i--
	}
	if i >= 0 && !utf8.FullRune(b[i:]) {
		return i
	}
	return len(b)
}

func closeAll(lists ...[]*os.File) {
	for _, l := range lists {
		for _, f := range l {
			_ = f.Close()
		}
	}
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

func (b *Backend) output(p *proc, stream string, line []byte) {
	p.mu.Lock()
	spec, inst := p.spec, p.inst
	p.mu.Unlock()
	if spec == nil || b.cfg.Logs == nil {
		b.log.Warn("runtime output before specialization", "instance", p.id, "stream", stream, "line", string(line))
		return
	}
	b.cfg.Logs.InstanceOutput(spec, inst.ID, stream, line)
}

// outputGrace bounds how long reap waits, once the runtime has exited,
// for the rest of its output: a process left holding the pipes (which
// Cleanup then kills) must not hold up the instance's end.
const outputGrace = 2 * time.Second

// reap waits for the process, works out why it ended, and cleans up.
func (b *Backend) reap(p *proc, readers *sync.WaitGroup, outputs []*os.File) {
	defer b.wg.Done()
	waitErr := p.cmd.Wait()
	// The end of the output comes when the last process holding the
	// pipes is gone, which bubblewrap's end brings about at once.
	read := make(chan struct{})
	go func() { readers.Wait(); close(read) }()
	select {
	case <-read:
	case <-time.After(outputGrace):
		closeAll(outputs) // ends the readers
		<-read
	}
	closeAll(outputs)
	p.mu.Lock()
	reason, inst, spec, control, loadFailure := p.stopping, p.inst, p.spec, p.control, p.loadFailure
	p.control = nil
	p.mu.Unlock()
	if control != nil {
		control.Close()
	}
	if p.kv != nil {
		p.kv.Close()
	}
	oom := p.cmd.OOMKilled()
	code := -1
	if p.cmd.ProcessState != nil {
		code = p.cmd.ProcessState.ExitCode()
	}
	exit := backend.Exit{Reason: reason, Code: code}
	switch {
	case oom:
		exit = oomExit(p)
		exit.Code = code
	case p.heapFull.Load() && reason == "":
		// V8 aborts (Deno: SIGTRAP, Node: SIGABRT) at its heap limit,
		// before the cgroup's: "exit status 133" told the user nothing.
		exit = backend.Exit{Reason: backend.ExitOOM, Code: code,
			Detail: fmt.Sprintf("out of memory: the JavaScript heap reached its limit (three quarters of the instance's %d MiB) and the runtime ended", p.key.memoryMiB)}
	case reason == backend.ExitTimeout:
		exit.Detail = "killed after the function's timeout"
	case loadFailure != "" && reason != backend.ExitStopped:
		exit.Reason = backend.ExitCrashed
		exit.Detail = loadFailure
	case reason != "":
		exit.Detail = "stopped"
	default:
		exit.Reason = backend.ExitCrashed
		exit.Detail = "the runtime exited unexpectedly: " + describeExit(p, waitErr)
	}
	if inst != nil && exit.Reason != backend.ExitStopped {
		// Whether its function had loaded: the load's reader sees the
		// control connection end with the runtime, at once, but may not
		// have yet. The activator keeps a version whose instances end
		// before they load from starting one per request.
		ctx, cancel := context.WithTimeout(context.Background(), outputGrace)
		exit.BeforeLoad = inst.LoadError(ctx) != nil
		cancel()
	}
	p.cmd.Cleanup()
	_ = os.RemoveAll(p.dir)
	b.freeUID(p.uid)
	b.mu.Lock()
	delete(b.procs, p.id)
	owner := p.owner
	// One that died while it waited in the pool leaves it now, so the
	// filler sees the gap (take would skip it, but only once it came to
	// the top of the stack).
	died := false
	if ps := b.pool[p.key]; inst == nil {
		if i := slices.Index(ps, p); i >= 0 {
			b.pool[p.key] = slices.Delete(ps, i, i+1)
			died = true
		}
	}
	b.mu.Unlock()
	if died {
		b.kick()
	}
	if spec != nil {
		b.reweigh(spec.Owner)
	}
	if owner != "" {
		b.rebalance(owner)
	}
	close(p.exited)
	if inst != nil {
		if exit.Reason != backend.ExitStopped && b.cfg.Logs != nil {
			b.cfg.Logs.InstanceOutput(spec, inst.ID, "system", []byte("instance ended: "+exit.Detail))
		}
		b.log.Debug("instance ended", "instance", p.id, "function", spec.Name, "owner", spec.Owner, "version", spec.Version, "reason", exit.Reason)
		inst.Finish(exit)
	}
}

func oomExit(p *proc) backend.Exit {
	return backend.Exit{Reason: backend.ExitOOM, Code: -1,
		Detail: fmt.Sprintf("out of memory: the instance exceeded its %d MiB limit and was killed", p.key.memoryMiB)}
}

func describeExit(p *proc, waitErr error) string {
	if ps := p.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exit status %d", ps.ExitCode())
	}
	if waitErr != nil {
		return waitErr.Error()
	}
	return "unknown"
}

// specialize hands spec's bundle to a generic process and returns the
// instance without waiting for the import: the runtime holds the requests
// it gets until the import is done, so the first request travels to the
// instance while the function loads rather than after (~0.5 ms of a
// warm-pool cold start's ~4.2). A failed import is answered to those
// requests by the runtime (502 function_failed, naming the error), which
// then exits; load records why.
func (b *Backend) specialize(ctx context.Context, p *proc, spec *backend.Spec, codePath string) (*backend.Instance, error) {
	file := strings.TrimPrefix(spec.Digest, "sha256:") + ".js"
	dst := filepath.Join(p.dir, "code", file)
	if err := linkOrCopy(codePath, dst); err != nil {
		return nil, fmt.Errorf("install bundle: %w", err)
	}
	// Unguessable, so that a function's answer cannot pass for the
	// runtime's errors by carrying it.
	mark := rand.Text()
	msg, err := json.Marshal(runtime.Specialization{
		Module:    "file://" + runtime.CodeDir + "/" + file,
		Name:      spec.Name,
		Owner:     spec.Owner,
		Version:   spec.Version,
		Env:       spec.Env,
		ErrorMark: mark,
	})
	if err != nil {
		return nil, err
	}
	inst := backend.NewInstance(p.id, spec, "unix", filepath.Join(p.dir, "sock", runtime.SocketName))
	inst.ErrorMark = mark
	inst.SetDiagnose(func() (backend.Exit, bool) {
		if p.cmd.OOMKilled() {
			return oomExit(p), true
		}
		return backend.Exit{}, false
	})
	control := filepath.Join(p.dir, "sock", runtime.ControlSocketName)
	inst.SetProbe(func(ctx context.Context) error { return probe(ctx, control) })
	inst.SetScheduled(func(ctx context.Context, cron string, at time.Time) error {
		return runScheduled(ctx, control, cron, at)
	})
	inst.SetLoading(true)
	p.mu.Lock()
	p.spec, p.inst = spec, inst
	conn := p.control
	p.control = nil
	p.mu.Unlock()
	if conn == nil {
		return nil, fmt.Errorf("specialize instance: no control connection: %w", errdefs.ErrUnavailable)
	}
	// The import may take as long as a start may (a top-level await);
	// past that the instance is taken for stuck.
	loadBy := time.Now().Add(b.cfg.StartTimeout)
	if d, ok := ctx.Deadline(); ok {
		loadBy = d
	}
	_ = conn.SetDeadline(loadBy)
	// On the connection kept from the pool: a pipe would cost milliseconds
	// (runtimes read stdin on a blocking thread).
	req := fmt.Sprintf("POST / HTTP/1.1\r\nHost: instance\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(msg))
	if _, err := conn.Write(append([]byte(req), msg...)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("specialize instance: %w: %w", err, errdefs.ErrUnavailable)
	}
	b.wg.Add(1)
	go b.load(p, inst, conn)
	return inst, nil
}

// load finishes a specialization off the cold start's path: it raises the
// instance's CPU weight and applies the function's quota (pooled sandboxes
// run at a low weight, so refilling the pool yields to instances doing
// real work; the cgroup writes take ~0.3 ms on v1), then reads the
// runtime's answer to the specialization. A failed or stuck import ends
// the instance, with the reason as its exit's detail.
func (b *Backend) load(p *proc, inst *backend.Instance, control net.Conn) {
	defer b.wg.Done()
	defer control.Close()
	b.reweigh(inst.Spec.Owner)
	b.rebalance(inst.Spec.Owner)
	if err := p.cmd.SetCPUQuota(cpuQuota(inst.Spec.CPUMilli, b.cfg.CPUQuotaUs)); err != nil {
		b.log.Warn("set cpu quota", "instance", p.id, "err", err)
	}
	failure, answered := readLoadAnswer(control)
	if failure == "" {
		if answered {
			inst.Loaded(nil)
		} else {
			// The runtime ended while it loaded: its exit says why.
			inst.Loaded(errors.New("the runtime ended before its function loaded"))
		}
		return
	}
	p.mu.Lock()
	p.loadFailure = failure
	p.mu.Unlock()
	inst.Loaded(errors.New(failure))
	if !answered {
		b.kill(p, backend.ExitCrashed)
		return
	}
	select {
	case <-p.exited:
		// A runtime whose import failed answers what waits, then exits.
	case <-time.After(loadFailureGrace):
		b.kill(p, backend.ExitCrashed)
	}
}

// loadFailureGrace is how long a runtime whose import failed has to answer
// the requests that waited for it and exit by itself.
const loadFailureGrace = time.Second

// readLoadAnswer reads the runtime's answer to a specialization and
// returns "" if the function loaded, or why it did not, and whether the
// runtime answered at all. A runtime that ended without answering (the
// function's top level exited, or ran out of memory) is described by its
// exit, as any other end is.
func readLoadAnswer(c net.Conn) (failure string, answered bool) {
	lr := &io.LimitedReader{R: c, N: maxControlAnswer}
	res, err := http.ReadResponse(bufio.NewReader(lr), nil)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return "the function did not load in time (its import still ran when the start's time was up)", false
		}
		if lr.N <= 0 {
			return fmt.Sprintf("the runtime's answer to its specialization was over %d bytes", maxControlAnswer), false
		}
		return "", false
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode == http.StatusOK {
		return "", true
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return "the function failed to load: " + oneLine(e.Error), true
}

// maxControlAnswer bounds what the server reads of an answer on an
// instance's control socket. The function's code runs in the runtime that
// answers, and may change what it answers with (a top level that replaces
// Response.json, say): net/http reads a response head of any size, all
// of it held in the server's memory, outside every limit of the instance.
const maxControlAnswer = 64 << 10

// probe asks a specialized runtime, on its control socket, for an answer
// (it refuses a second specialization): any answer shows that its event
// loop runs, which a handler stuck in a loop prevents.
func probe(ctx context.Context, control string) error {
	res, err := controlRequest(ctx, control, "GET / HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n")
	if err != nil {
		return fmt.Errorf("probe the runtime: %w", err)
	}
	res.Body.Close()
	return nil
}

// runScheduled asks a specialized runtime, on its control socket, to run
// its function's scheduled handler for the event of schedule cron at
// time at, and waits for it to return (or ctx to end).
func runScheduled(ctx context.Context, control, cron string, at time.Time) error {
	body, err := json.Marshal(struct {
		Cron          string `json:"cron"`
		ScheduledTime int64  `json:"scheduledTime"`
	}{cron, at.UnixMilli()})
	if err != nil {
		return err
	}
	res, err := controlRequest(ctx, control, fmt.Sprintf("POST /scheduled HTTP/1.1\r\nHost: instance\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
	if err != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return fmt.Errorf("scheduled run: %w", errdefs.ErrTimeout)
		case ctx.Err() != nil:
			return fmt.Errorf("scheduled run: %w", ctx.Err())
		}
		return fmt.Errorf("scheduled run: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusOK {
		return nil
	}
	b, _ := io.ReadAll(res.Body)
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	msg := oneLine(e.Error)
	if msg == "" {
		msg = res.Status
	}
	if res.StatusCode == http.StatusNotImplemented {
		return backend.ErrNoScheduledHandler
	}
	return errdefs.New(errdefs.ErrFunctionFailed, "the scheduled run failed: %s", msg)
}

// controlRequest sends req, a whole HTTP/1.1 request, on a runtime's
// control socket and reads the answer, of at most maxControlAnswer
// bytes; ctx's end, deadline or not, ends the wait (a stuck runtime
// never answers). The caller closes the body, which the connection's
// close also ends.
func controlRequest(ctx context.Context, control, req string) (*http.Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", control)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	if _, err := io.WriteString(c, req); err != nil {
		stop()
		c.Close()
		return nil, err
	}
	res, err := http.ReadResponse(bufio.NewReader(io.LimitReader(c, maxControlAnswer)), nil)
	if err != nil {
		stop()
		c.Close()
		return nil, fmt.Errorf("no answer: %w", err)
	}
	res.Body = &connBody{ReadCloser: res.Body, close: func() { stop(); c.Close() }}
	return res, nil
}

// connBody is a response body that closes its connection too.
type connBody struct {
	io.ReadCloser
	close func()
}

func (b *connBody) Close() error {
	err := b.ReadCloser.Close()
	b.close()
	return err
}

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}
