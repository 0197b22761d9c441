// Package functions owns the life of a function: deploying a version
// (validate, bundle, store the bundle by digest, record the version and make
// it live), deleting, listing, and resolving a name to its live version for
// the router, from a cache so the request path does not touch the database.
package functions

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/archive"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/build"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/sandbox"
	"github.com/spry-run/spry/internal/store"
)

// Blobs stores bundles by digest.
type Blobs interface {
	Put(data []byte) (string, error)
}

// Sealer encrypts secrets for storage.
type Sealer interface {
	Seal(value, context string) (string, error)
	Open(sealed, context string) (string, error)
}

// LogDeleter removes a function's logs when it is deleted, and drops the
// lines its ID still writes.
type LogDeleter interface {
	DeleteFunction(ctx context.Context, owner, name, id string) error
}

// Retirer is told when versions become live (so those with minimum
// instances get them at once) and when they stop being live (so their
// instances drain).
type Retirer interface {
	Admit(functionID string, keys ...string)
	RetireExcept(functionID string, keep ...string)
	// Remove retires every version of a deleted function and ends its
	// instances at once, requests in flight included.
	Remove(functionID string)
	Ensure(spec *backend.Spec)
}

// Config is the service's setup.
type Config struct {
	MaxCodeBytes     int64
	DefaultRuntime   string
	Runtimes         []string // runtimes this server runs
	DefaultMemoryMiB int
	DefaultTimeout   time.Duration
	DefaultNetwork   string
	// DefaultConcurrency is how many requests one instance takes at once.
	DefaultConcurrency int
	// DefaultMaxScale caps a function's instances unless it sets max.
	DefaultMaxScale int
	// MaxFunctionsPerOwner bounds how many functions one owner may have
	// (0: no limit); deploying one more is refused with ErrQuotaExceeded.
	MaxFunctionsPerOwner int
	Bounds               Bounds
	// NPMCache, NPMRegistry and JSRRegistry serve dependency installs at
	// deploy time.
	NPMCache    string
	NPMRegistry string
	// TempDir is where builds make their scratch directories (uploads
	// unpacked, npm's home); empty means os.TempDir().
	TempDir string
	// NPMCacheMaxBytes bounds NPMCache (build.DirOptions).
	NPMCacheMaxBytes int64
	JSRRegistry      string
	// NPMUID, if not 0, is the host uid npm runs as; NPMCgroups, if set,
	// bounds each npm run by NPMLimits and NPMWriteBytes
	// (build.DirOptions).
	NPMUID        int
	NPMCgroups    *sandbox.Builds
	NPMLimits     sandbox.Resources
	NPMWriteBytes int64
	// MaxBundleBytes bounds a built bundle (0: DefaultMaxBundleBytes);
	// Builds bounds how many deploys build at once (0: the CPUs).
	MaxBundleBytes int64
	Builds         int
	// Forget, if set, is told when a function is deleted (its metrics
	// series go with it).
	Forget func(owner, name, id string)
	Now    func() time.Time
	Logger *slog.Logger
}

// Service deploys, deletes and resolves functions.
type Service struct {
	cfg     Config
	store   store.Functions
	blobs   Blobs
	retirer Retirer
	sealer  Sealer
	logs    LogDeleter
	log     *slog.Logger

	// deployMu serialises deploys of one function, so that "make live"
	// and "retire the others" happen in the order the versions were made.
	deployMu sync.Mutex

	mu     sync.RWMutex
	routes map[store.FunctionKey]*route
	// misses remembers names recently found missing; see missTTL.
	missMu  sync.Mutex
	misses  map[store.FunctionKey]time.Time
	invoked map[store.FunctionKey]time.Time // not yet flushed to the store
	// builds holds a slot per deploy that is building: a build takes a
	// CPU and up to a GB of memory (esbuild on a 200 MiB project), and
	// deploys that come at once must not all take them together.
	builds *buildSlots
}

// DefaultMaxBundleBytes bounds a built bundle: it is stored per version
// and loaded by every instance.
const DefaultMaxBundleBytes = 50 << 20

// New returns a Service.
func New(s store.Functions, blobs Blobs, retirer Retirer, sealer Sealer, logs LogDeleter, cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBundleBytes <= 0 {
		cfg.MaxBundleBytes = DefaultMaxBundleBytes
	}
	if cfg.Builds <= 0 {
		cfg.Builds = goruntime.NumCPU()
	}
	return &Service{
		cfg: cfg, store: s, blobs: blobs, retirer: retirer, sealer: sealer, logs: logs, log: cfg.Logger,
		builds:  newBuildSlots(cfg.Builds),
		routes:  map[store.FunctionKey]*route{},
		misses:  map[store.FunctionKey]time.Time{},
		invoked: map[store.FunctionKey]time.Time{},
	}
}

// DeployRequest is one deploy.
type DeployRequest struct {
	Owner    string
	Name     string
	Filename string
	Code     []byte
	// Archive, if set instead of Code, is a project (tar, tar.gz or zip)
	// bundled from its Entry (or its package.json, or index.ts, ...).
	Archive []byte
	Entry   string
	Runtime string
	Env     map[string]string
	Secrets map[string]string // plaintext; sealed before storing
	// Settings are the per-function limits as strings ("memory": "128Mi"),
	// parsed with ParseLimits.
	Settings map[string]string
	By       string
}

// MaxEnvVars and MaxEnvBytes bound a function's environment.
const (
	MaxEnvVars  = 128
	MaxEnvBytes = 64 << 10
)

func (s *Service) validate(req *DeployRequest) error {
	if err := names.User(req.Owner); err != nil {
		return err
	}
	if err := names.Function(req.Name); err != nil {
		return err
	}
	// An empty runtime keeps the live version's (or, for a new function,
	// takes the server's default).
	known := req.Runtime == ""
	for _, r := range s.cfg.Runtimes {
		known = known || r == req.Runtime
	}
	if !known {
		return errdefs.Invalid("unknown runtime %q (this server runs %v)", req.Runtime, s.cfg.Runtimes)
	}
	return ValidateEnv(req.Env)
}

// envBytes is the size of env's names and values.
func envBytes(env map[string]string) int {
	n := 0
	for k, v := range env {
		n += len(k) + len(v)
	}
	return n
}

// ValidateEnv checks environment variable names and sizes.
func ValidateEnv(env map[string]string) error {
	if len(env) > MaxEnvVars {
		return errdefs.New(errdefs.ErrTooLarge, "%d environment variables; the limit is %d", len(env), MaxEnvVars)
	}
	for k, v := range env {
		if len(k) > maxEnvName {
			// Named by its start: the whole would fill the message.
			return errdefs.Invalid("environment variable name %q... is %d bytes; names are at most %d", k[:32], len(k), maxEnvName)
		}
		if !validEnvName(k) {
			return errdefs.Invalid("invalid environment variable name %q: use letters, digits and '_', not starting with a digit", k)
		}
		if !utf8.ValidString(v) {
			return errdefs.Invalid("environment variable %s is not valid UTF-8", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			// A process's environment cannot hold one: Node would cut
			// the value there while ctx.env kept it whole.
			return errdefs.Invalid("environment variable %s contains a NUL byte", k)
		}
	}
	if total := envBytes(env); total > MaxEnvBytes {
		return errdefs.New(errdefs.ErrTooLarge, "environment is %d bytes; the limit is %d", total, MaxEnvBytes)
	}
	return nil
}

// maxEnvName bounds an env var's name, in bytes.
const maxEnvName = 256

func validEnvName(k string) bool {
	if k == "" || len(k) > maxEnvName {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Deploy bundles the code and makes it the function's new live version.
// Settings, env and secrets the request names change; the rest carry over
// from the live version. Nothing is stored unless the code builds.
func (s *Service) Deploy(ctx context.Context, req DeployRequest) (store.Function, error) {
	if err := s.validate(&req); err != nil {
		return store.Function{}, err
	}
	if err := ValidateEnv(req.Secrets); err != nil {
		return store.Function{}, err
	}
	// Checked before the (costly) build; applied to the live version's
	// settings in newVersion.
	if _, err := ParseLimits(req.Settings, s.cfg.Bounds); err != nil {
		return store.Function{}, err
	}
	// So is the quota, which newVersion checks again under deployMu: a
	// deploy refused for it builds nothing and stores no bundle.
	cur, err := s.store.GetFunction(ctx, req.Owner, req.Name)
	if errors.Is(err, errdefs.ErrNotFound) {
		if err := s.checkFunctionQuota(ctx, req.Owner); err != nil {
			return store.Function{}, err
		}
	} else if err == nil && req.Runtime == "" {
		// An empty runtime keeps the live version's: the code is built
		// for it (a package's "deno" or "node" condition), and the
		// version keeps the runtime it was built for.
		req.Runtime = cur.Live.Config.Runtime
	}
	// And the memory budget, against the settings the version would
	// have (newVersion checks again against what is live then).
	var limits store.Limits
	if err == nil {
		limits = cur.Live.Config.Limits
	}
	if limits, err = ApplySettings(limits, req.Settings, s.cfg.Bounds); err != nil {
		return store.Function{}, err
	}
	if err := s.checkLimits(limits, req.Name); err != nil {
		return store.Function{}, err
	}
	res, err := s.build(ctx, req)
	if err != nil {
		return store.Function{}, err
	}
	return s.newVersion(ctx, req.Owner, req.Name, req.By, &bundle{code: res.Code, size: int64(len(res.Code))}, Change{
		Runtime:    req.Runtime,
		Settings:   req.Settings,
		SetEnv:     req.Env,
		SetSecrets: req.Secrets,
	})
}

// build bundles req's code, one build per CPU at a time, shared out
// among users, and bounds the bundle's size.
func (s *Service) build(ctx context.Context, req DeployRequest) (build.Result, error) {
	if err := s.builds.acquire(ctx, req.Owner); err != nil {
		return build.Result{}, err
	}
	defer s.builds.release(req.Owner)
	var (
		res build.Result
		err error
	)
	if req.Archive != nil {
		res, err = s.bundleArchive(ctx, req)
	} else {
		res, err = build.BundleFile(ctx, build.Source{Filename: req.Filename, Code: req.Code}, s.dirOptions(req))
	}
	if err == nil && int64(len(res.Code)) > s.cfg.MaxBundleBytes {
		err = errdefs.New(errdefs.ErrTooLarge, "the bundle is %d bytes; the limit is %d", len(res.Code), s.cfg.MaxBundleBytes)
	}
	return res, err
}

// bundleArchive unpacks a project upload into a scratch directory and
// bundles it, installing its dependencies.
func (s *Service) bundleArchive(ctx context.Context, req DeployRequest) (build.Result, error) {
	if int64(len(req.Archive)) > s.cfg.MaxCodeBytes {
		return build.Result{}, errdefs.New(errdefs.ErrTooLarge, "archive is %d bytes; the limit is %d", len(req.Archive), s.cfg.MaxCodeBytes)
	}
	tmp, err := os.MkdirTemp(s.cfg.TempDir, "spry-build-")
	if err != nil {
		return build.Result{}, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil { // npm, as NPMUID, works in src
		return build.Result{}, err
	}
	dir := filepath.Join(tmp, "src")
	if err := archive.Extract(bytes.NewReader(req.Archive), archive.FormatAuto, dir, archive.Limits{SpoolDir: s.cfg.TempDir}); err != nil {
		return build.Result{}, err
	}
	return build.BundleDir(ctx, dir, s.dirOptions(req))
}

// dirOptions are the build options of req's deploy.
func (s *Service) dirOptions(req DeployRequest) build.DirOptions {
	runtime := req.Runtime
	if runtime == "" {
		runtime = s.cfg.DefaultRuntime
	}
	return build.DirOptions{
		Entry:            req.Entry,
		Runtime:          runtime,
		MaxSize:          s.cfg.MaxCodeBytes,
		NPMCache:         s.cfg.NPMCache,
		Registry:         s.cfg.NPMRegistry,
		JSRRegistry:      s.cfg.JSRRegistry,
		NPMUID:           s.cfg.NPMUID,
		Cgroups:          s.cfg.NPMCgroups,
		NPMLimits:        s.cfg.NPMLimits,
		NPMWriteBytes:    s.cfg.NPMWriteBytes,
		NPMCacheMaxBytes: s.cfg.NPMCacheMaxBytes,
		TempDir:          s.cfg.TempDir,
		Logger:           s.log,
	}
}

// Change is a change of a function's configuration, made as a new version
// with the live version's code.
type Change struct {
	Runtime      string
	Settings     map[string]string // as ParseLimits reads them
	SetEnv       map[string]string
	UnsetEnv     []string
	SetSecrets   map[string]string // plaintext; sealed before storing
	UnsetSecrets []string
}

type bundle struct {
	code   []byte // built, not stored yet; nil for a stored bundle
	digest string
	size   int64
}

// Reconfigure makes a new version of a function with the live version's
// code and ch applied to its configuration.
func (s *Service) Reconfigure(ctx context.Context, owner, name, by string, ch Change) (store.Function, error) {
	if err := ValidateEnv(ch.SetEnv); err != nil {
		return store.Function{}, err
	}
	if err := ValidateEnv(ch.SetSecrets); err != nil {
		return store.Function{}, err
	}
	if ch.Runtime != "" {
		req := DeployRequest{Owner: owner, Name: name, Runtime: ch.Runtime}
		if err := s.validate(&req); err != nil {
			return store.Function{}, err
		}
	}
	if _, err := ParseLimits(ch.Settings, s.cfg.Bounds); err != nil {
		return store.Function{}, err
	}
	return s.newVersion(ctx, owner, name, by, nil, ch)
}

// newVersion stores a new live version: code is b, or the live version's
// if b is nil; its configuration is the live version's with ch applied.
func (s *Service) newVersion(ctx context.Context, owner, name, by string, b *bundle, ch Change) (store.Function, error) {
	if b != nil && b.code != nil {
		// The checks run first outside the lock, against what is live
		// now, so that a refused deploy stores no bundle, and the
		// bundle's write (up to the bundle limit, synced) holds up no
		// other change or first request. Under the lock they run again
		// against what is live then.
		if _, _, _, err := s.nextConfig(ctx, owner, name, b, ch); err != nil {
			return store.Function{}, err
		}
		digest, err := s.blobs.Put(b.code)
		if err != nil {
			return store.Function{}, fmt.Errorf("store bundle: %w", err)
		}
		b = &bundle{digest: digest, size: b.size}
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	reconfig := b == nil
	cfg, b, cur, err := s.nextConfig(ctx, owner, name, b, ch)
	if err != nil {
		return store.Function{}, err
	}
	// A change of configuration that changes nothing makes no version: it
	// would only push real ones out of those kept, and undo a traffic
	// split.
	if reconfig && s.sameConfig(owner, name, cur.Live.Config, cfg, ch.SetSecrets) {
		return cur, nil
	}
	v, err := s.store.Deploy(ctx, newID(), store.Version{
		Owner:     owner,
		Name:      name,
		Digest:    b.digest,
		Size:      b.size,
		Config:    cfg,
		CreatedAt: s.cfg.Now(),
		CreatedBy: by,
	})
	if err != nil {
		return store.Function{}, err
	}
	// Committed: the router must serve it even if the client hangs up now.
	ctx = context.WithoutCancel(ctx)
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return store.Function{}, err
	}
	if err := s.makeLive(ctx, fn); err != nil {
		return store.Function{}, err
	}
	s.log.Info("deployed", "owner", v.Owner, "function", v.Name, "version", v.Number, "digest", v.Digest, "size", v.Size)
	return fn, nil
}

// nextConfig is the configuration of the version newVersion would make,
// checked, its bundle (the live version's if b is nil), and the function
// as it is (zero if it is new).
func (s *Service) nextConfig(ctx context.Context, owner, name string, b *bundle, ch Change) (store.Config, *bundle, store.Function, error) {
	var cfg store.Config
	cur, err := s.store.GetFunction(ctx, owner, name)
	switch {
	case err == nil:
		cfg = cur.Live.Config
		if b == nil {
			// The live bundle was built for its runtime (a package's
			// "deno" or "node" export condition), and its source is not
			// kept: run on another runtime, it would run the other's
			// build. Checked here, under deployMu, against the version
			// the change would be made from.
			if live := cmp.Or(cfg.Runtime, s.cfg.DefaultRuntime); ch.Runtime != "" && ch.Runtime != live {
				return store.Config{}, nil, store.Function{}, errdefs.New(errdefs.ErrConflict,
					"%s/%s was built for %s; a change of runtime needs its code built again: redeploy it with the runtime (spry deploy FILE --runtime %s)", owner, name, live, ch.Runtime)
			}
			b = &bundle{digest: cur.Live.Digest, size: cur.Live.Size}
		}
	case errors.Is(err, errdefs.ErrNotFound) && b != nil:
		if err := s.checkFunctionQuota(ctx, owner); err != nil {
			return store.Config{}, nil, store.Function{}, err
		}
		cfg = store.Config{Runtime: s.cfg.DefaultRuntime}
	default:
		return store.Config{}, nil, store.Function{}, err
	}
	if ch.Runtime != "" {
		cfg.Runtime = ch.Runtime
	}
	// Checks min against a max set earlier, and the isolation against
	// the server.
	if cfg.Limits, err = ApplySettings(cfg.Limits, ch.Settings, s.cfg.Bounds); err != nil {
		return store.Config{}, nil, store.Function{}, err
	}
	if err := s.checkLimits(cfg.Limits, name); err != nil {
		return store.Config{}, nil, store.Function{}, err
	}
	// A name is one variable in ctx.env: an env var and a secret may not
	// share it. Set as one, it stops being the other; before, the secret
	// went on winning, while the API showed the env var's new value.
	for k := range ch.SetEnv {
		if _, ok := ch.SetSecrets[k]; ok {
			return store.Config{}, nil, store.Function{}, errdefs.Invalid("%s is set both as an environment variable and as a secret", k)
		}
	}
	cfg.Env = edit(cfg.Env, ch.SetEnv, slices.Concat(ch.UnsetEnv, slices.Collect(maps.Keys(ch.SetSecrets))))
	sealed := map[string]string{}
	for k, v := range ch.SetSecrets {
		if sealed[k], err = s.sealer.Seal(v, secretContext(owner, name, k)); err != nil {
			return store.Config{}, nil, store.Function{}, fmt.Errorf("seal secret: %w", err)
		}
	}
	cfg.Secrets = edit(cfg.Secrets, sealed, slices.Concat(ch.UnsetSecrets, slices.Collect(maps.Keys(ch.SetEnv))))
	if err := ValidateEnv(cfg.Env); err != nil {
		return store.Config{}, nil, store.Function{}, err
	}
	if len(cfg.Env)+len(cfg.Secrets) > MaxEnvVars {
		return store.Config{}, nil, store.Function{}, errdefs.New(errdefs.ErrTooLarge, "%d environment variables and secrets; the limit is %d", len(cfg.Env)+len(cfg.Secrets), MaxEnvVars)
	}
	// An instance gets both in its environment, so they share the size
	// limit too (and each version stores them all again).
	size := envBytes(cfg.Env)
	for k, v := range cfg.Secrets {
		plain, ok := ch.SetSecrets[k]
		if !ok {
			if plain, err = s.sealer.Open(v, secretContext(owner, name, k)); err != nil {
				return store.Config{}, nil, store.Function{}, errdefs.New(errdefs.ErrConflict, "secret %s does not open with this server's key (was its key file lost?): set it again or unset it", k)
			}
		}
		size += len(k) + len(plain)
	}
	if size > MaxEnvBytes {
		return store.Config{}, nil, store.Function{}, errdefs.New(errdefs.ErrTooLarge, "environment variables and secrets are %d bytes; the limit is %d", size, MaxEnvBytes)
	}
	return cfg, b, cur, nil
}

// sameConfig says whether next, a change of cur, is cur again. Sealing
// is randomised, so a secret set again is compared by its plain value.
func (s *Service) sameConfig(owner, name string, cur, next store.Config, set map[string]string) bool {
	if cur.Runtime != next.Runtime || cur.Limits != next.Limits || !maps.Equal(cur.Env, next.Env) ||
		len(cur.Secrets) != len(next.Secrets) {
		return false
	}
	for k, sealed := range next.Secrets {
		old, ok := cur.Secrets[k]
		switch {
		case !ok:
			return false
		case old == sealed:
		default:
			plain, err := s.sealer.Open(old, secretContext(owner, name, k))
			if err != nil || plain != set[k] {
				return false
			}
		}
	}
	return true
}

// checkLimits refuses the limits l of function name, at a deploy or a
// change, that are whole but could never work: an on-failure
// destination that is the function itself, or instances the owner's
// budgets could never hold.
func (s *Service) checkLimits(l store.Limits, name string) error {
	if err := checkOnFailure(l, name); err != nil {
		return err
	}
	return checkOwnerBudgets(l, s.cfg.DefaultMemoryMiB, s.cfg.Bounds)
}

// Count returns how many functions owner has, as checkFunctionQuota
// counts them, and how many one owner may have (0: no limit).
func (s *Service) Count(ctx context.Context, owner string) (n, limit int, err error) {
	n, err = s.store.CountFunctions(ctx, owner)
	return n, max(s.cfg.MaxFunctionsPerOwner, 0), err
}

// checkFunctionQuota refuses a new function to an owner at the limit.
// Deploys are serialised by deployMu, so the count cannot go stale
// before the new function is stored.
func (s *Service) checkFunctionQuota(ctx context.Context, owner string) error {
	limit := s.cfg.MaxFunctionsPerOwner
	if limit <= 0 {
		return nil
	}
	n, err := s.store.CountFunctions(ctx, owner)
	if err != nil {
		return err
	}
	if n >= limit {
		return errdefs.New(errdefs.ErrQuotaExceeded, "%s has %d functions, as many as one user may (spry serve --max-functions-per-user); delete one to deploy another", owner, n)
	}
	return nil
}

// secretContext binds a sealed secret to its function and name.
func secretContext(owner, name, key string) string { return owner + "/" + name + "/" + key }

// edit returns a copy of m with set applied and unset removed (nil if
// empty), leaving m itself, which a stored version shares, untouched.
func edit(m, set map[string]string, unset []string) map[string]string {
	out := make(map[string]string, len(m)+len(set))
	for k, v := range m {
		out[k] = v
	}
	for k, v := range set {
		out[k] = v
	}
	for _, k := range unset {
		delete(out, k)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Load reads every function's live version at start, so the request path
// never waits on the database for a known function and functions with
// minimum instances get them without waiting for a request.
func (s *Service) Load(ctx context.Context) error {
	fns, err := s.store.ListFunctions(ctx, "", store.Page{})
	if err != nil {
		return err
	}
	for _, fn := range fns {
		if err := s.makeLive(ctx, fn); err != nil {
			s.log.Error("load function", "owner", fn.Owner, "function", fn.Name, "err", err)
		}
	}
	return nil
}

func or(v, def int) int {
	if v != 0 {
		return v
	}
	return def
}

// Delete deletes a function, all its versions, and its instances.
func (s *Service) Delete(ctx context.Context, owner, name string) error {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return err
	}
	if err := s.store.DeleteFunction(ctx, owner, name); err != nil {
		return err
	}
	// Deleted: its logs go too, even if the client hangs up now.
	ctx = context.WithoutCancel(ctx)
	key := store.FunctionKey{Owner: owner, Name: name}
	s.mu.Lock()
	delete(s.routes, key)
	delete(s.invoked, key)
	s.mu.Unlock()
	s.retirer.Remove(fn.ID)
	if err := s.logs.DeleteFunction(ctx, owner, name, fn.ID); err != nil {
		s.log.Error("delete logs", "owner", owner, "function", name, "err", err)
	}
	if s.cfg.Forget != nil {
		s.cfg.Forget(owner, name, fn.ID)
	}
	s.log.Info("deleted", "owner", owner, "function", name)
	return nil
}

// Owners returns the owners of the functions of ids that exist, by id,
// from memory: the key-value store learns so whose namespace it is
// (kv.Options.Owners), once for each.
func (s *Service) Owners(ids []string) map[string]string {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	out := make(map[string]string, len(ids))
	s.mu.RLock()
	defer s.mu.RUnlock()
	for k, r := range s.routes {
		if want[r.id] {
			out[r.id] = k.Owner
		}
	}
	return out
}

// Get returns one function with its live version.
func (s *Service) Get(ctx context.Context, owner, name string) (store.Function, error) {
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, err
	}
	s.overlayInvoked(&fn)
	return fn, nil
}

// List returns owner's functions, or everyone's if owner is "": the part
// page selects.
func (s *Service) List(ctx context.Context, owner string, page store.Page) ([]store.Function, error) {
	fns, err := s.store.ListFunctions(ctx, owner, page)
	if err != nil {
		return nil, err
	}
	for i := range fns {
		s.overlayInvoked(&fns[i])
	}
	return fns, nil
}

func (s *Service) overlayInvoked(fn *store.Function) {
	s.mu.RLock()
	t, ok := s.invoked[store.FunctionKey{Owner: fn.Owner, Name: fn.Name}]
	s.mu.RUnlock()
	if ok && t.After(fn.LastInvokedAt) {
		fn.LastInvokedAt = t
	}
}

// Invoked records that a function was invoked now; the time reaches the
// store at the next Flush.
func (s *Service) Invoked(spec *backend.Spec) {
	now := s.cfg.Now()
	key := store.FunctionKey{Owner: spec.Owner, Name: spec.Name}
	s.mu.Lock()
	s.invoked[key] = now
	s.mu.Unlock()
}

// Flush writes recorded invocation times to the store.
func (s *Service) Flush(ctx context.Context) error {
	s.mu.Lock()
	batch := s.invoked
	s.invoked = map[store.FunctionKey]time.Time{}
	s.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := s.store.SetLastInvoked(ctx, batch); err != nil {
		// Put them back so the next flush retries.
		s.mu.Lock()
		for k, t := range batch {
			if cur, ok := s.invoked[k]; !ok || t.After(cur) {
				s.invoked[k] = t
			}
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// RunFlusher flushes every interval until ctx ends, then once more.
func (s *Service) RunFlusher(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.Flush(fctx); err != nil {
				s.log.Error("flush invocation times", "err", err)
			}
			return
		case <-t.C:
			if err := s.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
				s.log.Error("flush invocation times", "err", err)
			}
		}
	}
}

// EnvKeys lists env var names, sorted, for display.
func EnvKeys(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
