package functions

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/store"
)

// route is what the request path needs of one function, built once per
// change: the live version, the traffic split and the tagged versions.
type route struct {
	id       string
	live     *backend.Spec
	split    []weighted // empty: everything to live
	tags     map[string]*backend.Spec
	versions map[int64]*backend.Spec // by number, for @<n> requests; filled on demand
	// broken holds the versions that cannot run, by number, with why:
	// their secrets do not open with this server's key. The rest of the
	// function still routes, and changes to it still apply.
	broken map[int64]error
	// private: the live version is private, and so, while it is, is
	// every version of the function (a function made private must not
	// stay open at @<n> or a tag naming an older, public version).
	private bool
}

type weighted struct {
	spec *backend.Spec
	upto int // cumulative percent
}

// pick chooses the version for one request without a tag.
func (r *route) pick() *backend.Spec {
	if len(r.split) == 0 {
		return r.live
	}
	n := rand.IntN(100)
	for _, w := range r.split {
		if n < w.upto {
			return w.spec
		}
	}
	return r.live
}

// keys are the versions that may run without being asked for by number.
func (r *route) keys() []string {
	keys := []string{r.live.Key()}
	for _, w := range r.split {
		keys = append(keys, w.spec.Key())
	}
	for _, sp := range r.tags {
		keys = append(keys, sp.Key())
	}
	return keys
}

// specOf builds the backend's view of one version of fn. With a secret
// that does not open, it returns the spec and, as lost, why the version
// cannot run.
func (s *Service) specOf(fn store.Function, v store.Version) (spec *backend.Spec, lost error) {
	env := v.Config.Env
	if len(v.Config.Secrets) > 0 {
		env = edit(env, nil, nil)
		if env == nil {
			env = map[string]string{}
		}
		for k, sealed := range v.Config.Secrets {
			val, err := s.sealer.Open(sealed, secretContext(fn.Owner, fn.Name, k))
			if err != nil {
				s.log.Error("a version cannot run: its secret does not open with this server's key", "owner", fn.Owner, "function", fn.Name, "version", v.Number, "secret", k, "err", err)
				// The caller may be anyone: the message names no secret.
				lost = errdefs.New(errdefs.ErrInternal, "version %d of %s/%s cannot run: its secrets do not open with this server's key; set them again", v.Number, fn.Owner, fn.Name)
				continue
			}
			env[k] = val
		}
	}
	l := v.Config.Limits
	spec = &backend.Spec{
		FunctionID:  fn.ID,
		Owner:       fn.Owner,
		Name:        fn.Name,
		Version:     v.Number,
		Runtime:     v.Config.Runtime,
		Digest:      v.Digest,
		Env:         env,
		MemoryMiB:   or(l.MemoryMiB, s.cfg.DefaultMemoryMiB),
		Network:     l.Network,
		Timeout:     time.Duration(l.TimeoutMs) * time.Millisecond,
		MinScale:    l.MinScale,
		MaxScale:    or(l.MaxScale, s.cfg.DefaultMaxScale),
		Concurrency: or(l.Concurrency, s.cfg.DefaultConcurrency),
		CPUMilli:    l.CPUMilli,
		// Zero means the server's default for these two.
		TargetUtilization: float64(l.TargetPercent) / 100,
		ScaleToZeroAfter:  time.Duration(l.ScaleToZeroMs) * time.Millisecond,
		Isolation:         l.Isolation,
		Cron:              l.Cron,
		Private:           l.Access == AccessPrivate,
		AsyncRetries:      AsyncRetries(l),
		AsyncOnFailure:    l.AsyncOnFailure,
	}
	if spec.Network == "" {
		spec.Network = s.cfg.DefaultNetwork
		if l.Isolation == "gvisor" {
			spec.Network = "none"
		}
	}
	if spec.Timeout == 0 {
		spec.Timeout = s.cfg.DefaultTimeout
	}
	return spec, lost
}

// buildRoute reads the versions fn's routing names.
func (s *Service) buildRoute(ctx context.Context, fn store.Function) (*route, error) {
	r := &route{id: fn.ID, tags: map[string]*backend.Spec{}, versions: map[int64]*backend.Spec{}, broken: map[int64]error{}}
	r.live = r.add(s.specOf(fn, fn.Live))
	// Set before any other version is added: add marks them by it.
	r.private = r.live.Private
	version := func(n int64) (*backend.Spec, error) {
		if sp := r.versions[n]; sp != nil {
			return sp, nil
		}
		v, err := s.store.GetVersion(ctx, fn.Owner, fn.Name, n)
		if err != nil {
			return nil, err
		}
		return r.add(s.specOf(fn, v)), nil
	}
	total := 0
	for _, split := range fn.Routing.Traffic {
		sp, err := version(split.Version)
		if err != nil {
			return nil, err
		}
		total += split.Percent
		r.split = append(r.split, weighted{spec: sp, upto: total})
	}
	for tag, n := range fn.Routing.Tags {
		sp, err := version(n)
		if err != nil {
			return nil, err
		}
		r.tags[tag] = sp
	}
	return r, nil
}

// add records a version specOf built, and lost, why it cannot run. The
// caller holds s.mu if r is published.
func (r *route) add(sp *backend.Spec, lost error) *backend.Spec {
	// A version made private stays so; any version is while the live
	// one is.
	sp.Private = sp.Private || r.private
	r.versions[sp.Version] = sp
	if lost != nil {
		r.broken[sp.Version] = lost
	}
	return sp
}

// runnable returns sp, or why it cannot run.
func (s *Service) runnable(r *route, sp *backend.Spec) (*backend.Spec, error) {
	s.mu.RLock()
	err := r.broken[sp.Version]
	s.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return sp, nil
}

// makeLive updates the cache from fn and retires the instances of every
// version its routing no longer names.
func (s *Service) makeLive(ctx context.Context, fn store.Function) error {
	r, err := s.buildRoute(ctx, fn)
	if err != nil {
		return err
	}
	// Admit the new versions, publish the route, then retire the old
	// ones: a request resolving either way always finds its version
	// allowed to run or retired after the new route is visible.
	// What to keep warm is read before r is published: after, a request
	// for an old version by number may add to r.broken (under s.mu).
	var warm []*backend.Spec
	for _, sp := range append([]*backend.Spec{r.live}, r.versionsInUse()...) {
		if sp.MinScale > 0 && r.broken[sp.Version] == nil {
			warm = append(warm, sp)
		}
	}
	s.retirer.Admit(fn.ID, r.keys()...)
	s.missMu.Lock()
	delete(s.misses, store.FunctionKey{Owner: fn.Owner, Name: fn.Name})
	s.missMu.Unlock()
	s.mu.Lock()
	s.routes[store.FunctionKey{Owner: fn.Owner, Name: fn.Name}] = r
	s.mu.Unlock()
	s.retirer.RetireExcept(fn.ID, r.keys()...)
	for _, sp := range warm {
		s.retirer.Ensure(sp)
	}
	return nil
}

// Live returns the version owner/name's live pointer names (with a
// traffic split, not one drawn from it).
func (s *Service) Live(ctx context.Context, owner, name string) (*backend.Spec, error) {
	r, err := s.loadRoute(ctx, owner, name)
	if err != nil {
		return nil, err
	}
	return r.live, nil
}

// Runnable says why version sp cannot run (its secrets do not open with
// this server's key), or nil.
func (s *Service) Runnable(ctx context.Context, sp *backend.Spec) error {
	r, err := s.loadRoute(ctx, sp.Owner, sp.Name)
	if err != nil {
		return err
	}
	_, err = s.runnable(r, sp)
	return err
}

// Scheduled lists the live versions that have a schedule (Spec.Cron):
// with a traffic split, the version the function's live pointer names.
func (s *Service) Scheduled() []*backend.Spec {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*backend.Spec
	for _, r := range s.routes {
		if r.live != nil && r.live.Cron != "" && r.broken[r.live.Version] == nil {
			out = append(out, r.live)
		}
	}
	return out
}

func (r *route) versionsInUse() []*backend.Spec {
	var out []*backend.Spec
	for _, w := range r.split {
		out = append(out, w.spec)
	}
	for _, sp := range r.tags {
		out = append(out, sp)
	}
	return out
}

// Resolve returns the version to serve a request for owner/name, or for
// owner/name@tag when tag is set (a tag name or a version number). It is
// on the request path, so it answers from memory once the function has
// been seen.
func (s *Service) Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error) {
	key := store.FunctionKey{Owner: owner, Name: name}
	r := s.route(key)
	if r == nil {
		if s.recentlyMissing(key) {
			return nil, fmt.Errorf("function %s/%s: %w", owner, name, errdefs.ErrNotFound)
		}
		var err error
		if r, err = s.loadRoute(ctx, owner, name); err != nil {
			if errors.Is(err, errdefs.ErrNotFound) {
				s.noteMissing(key)
			}
			return nil, err
		}
	}
	if tag == "" {
		return s.runnable(r, r.pick())
	}
	if sp := r.tags[tag]; sp != nil {
		return s.runnable(r, sp)
	}
	n, ok := ParseVersion(tag)
	if !ok {
		return nil, fmt.Errorf("function %s/%s has no tag %q: %w", owner, name, tag, errdefs.ErrNotFound)
	}
	var err error
	s.mu.RLock()
	sp := r.versions[n]
	s.mu.RUnlock()
	if sp == nil {
		if sp, err = s.loadVersion(ctx, r, owner, name, n); err != nil {
			return nil, err
		}
	}
	if sp, err = s.runnable(r, sp); err != nil {
		return nil, err
	}
	// Asked for by number: it may run even if no routing names it. Under
	// the routing lock, and only while r is still the function's route:
	// a delete or deploy that replaced it meanwhile has retired what it
	// does not keep, and tracking the version now would bring it back
	// for good (a deleted function's min instances, kept warm).
	s.mu.RLock()
	if s.routes[key] == r {
		s.retirer.Ensure(sp)
	}
	s.mu.RUnlock()
	return sp, nil
}

// ParseVersion reads a version number as written in a request: decimal,
// positive, in its one spelling ("7", not "07" or "+7"), so one version
// has one name in traffic splits and URLs.
func ParseVersion(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != s {
		return 0, false
	}
	return n, true
}

// Cached is Resolve from memory alone, for callers that must not wait
// (the router's event loop): nil when the function, or the tag asked for,
// is not in memory, or when the tag is a version number (Resolve loads
// those, and says when something does not exist).
func (s *Service) Cached(owner, name, tag string) *backend.Spec {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.routes[store.FunctionKey{Owner: owner, Name: name}]
	if r == nil {
		return nil
	}
	sp := r.tags[tag]
	if tag == "" {
		sp = r.pick()
	}
	if sp == nil || r.broken[sp.Version] != nil {
		// Resolve says why a version cannot run.
		return nil
	}
	return sp
}

// route is the cached routing of a function, or nil.
func (s *Service) route(key store.FunctionKey) *route {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.routes[key]
}

// missTTL is how long a name found missing is answered from memory: a
// flood of requests for unknown functions must not queue database reads
// (and deploys) behind each other.
const missTTL = time.Second

func (s *Service) recentlyMissing(key store.FunctionKey) bool {
	s.missMu.Lock()
	defer s.missMu.Unlock()
	at, ok := s.misses[key]
	return ok && s.cfg.Now().Sub(at) < missTTL
}

func (s *Service) noteMissing(key store.FunctionKey) {
	s.missMu.Lock()
	defer s.missMu.Unlock()
	if len(s.misses) >= 10000 {
		s.misses = map[store.FunctionKey]time.Time{}
	}
	s.misses[key] = s.cfg.Now()
}

func (s *Service) loadRoute(ctx context.Context, owner, name string) (*route, error) {
	if names.User(owner) != nil || names.Function(name) != nil {
		return nil, fmt.Errorf("function %s/%s: %w", owner, name, errdefs.ErrNotFound)
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	key := store.FunctionKey{Owner: owner, Name: name}
	s.mu.RLock()
	r := s.routes[key]
	s.mu.RUnlock()
	if r != nil {
		return r, nil
	}
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return nil, err
	}
	if err := s.makeLive(ctx, fn); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.routes[key], nil
}

func (s *Service) loadVersion(ctx context.Context, r *route, owner, name string, n int64) (*backend.Spec, error) {
	fn := store.Function{ID: r.id, Owner: owner, Name: name}
	v, err := s.store.GetVersion(ctx, owner, name, n)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	sp := r.add(s.specOf(fn, v))
	s.mu.Unlock()
	return sp, nil
}

// Versions lists a function's versions, newest first.
func (s *Service) Versions(ctx context.Context, owner, name string) (store.Function, []store.Version, error) {
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, nil, err
	}
	vs, err := s.store.ListVersions(ctx, owner, name)
	return fn, vs, err
}

// Rollback makes an earlier version live at once (no rebuild): version,
// or if it is 0 the newest version older than the live one. It clears any
// traffic split.
func (s *Service) Rollback(ctx context.Context, owner, name string, version int64) (store.Function, error) {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, err
	}
	if version == 0 {
		vs, err := s.store.ListVersions(ctx, owner, name)
		if err != nil {
			return fn, err
		}
		for _, v := range vs {
			if v.Number < fn.LiveVersion {
				version = v.Number
				break
			}
		}
		if version == 0 {
			return fn, errdefs.New(errdefs.ErrConflict, "version %d is the oldest; there is nothing to roll back to", fn.LiveVersion)
		}
	}
	if err := s.store.SetLive(ctx, owner, name, version, s.cfg.Now()); err != nil {
		return fn, err
	}
	return s.reload(ctx, owner, name)
}

// DeleteVersion deletes one version of a function: not the live one, nor
// one its traffic split or a tag names (the store refuses those, in the
// transaction that deletes). Its instances are retired as a deploy retires
// the versions it replaces, by making the routing without it live: they
// finish the requests they have and stop, and a request for it by number
// finds nothing. Its bundle goes at the blob collector's next pass if no
// other version names it; its log lines stay, to age out as others do.
func (s *Service) DeleteVersion(ctx context.Context, owner, name string, version int64) error {
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	if err := s.store.DeleteVersion(ctx, owner, name, version, s.cfg.Now()); err != nil {
		return err
	}
	if _, err := s.reload(ctx, owner, name); err != nil {
		return err
	}
	s.log.Info("deleted version", "owner", owner, "function", name, "version", version)
	return nil
}

// reload follows a committed change of the routing into the cache, so it
// does so even if the client hangs up: else the router would go on
// serving what the store no longer says.
func (s *Service) reload(ctx context.Context, owner, name string) (store.Function, error) {
	ctx = context.WithoutCancel(ctx)
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, err
	}
	return fn, s.makeLive(ctx, fn)
}

// MaxSplits bounds a traffic split.
const MaxSplits = 10

// MaxTags bounds a function's tags. Each tag keeps its version from being
// pruned (store.MaxVersions), so without a bound a user could keep every
// version ever deployed, each a bundle of up to --max-bundle-size, and
// make every change of the function's routing (under the deploy lock all
// functions share) read and write an ever longer list.
const MaxTags = 100

// SetTraffic splits a function's traffic between versions (percents sum
// to 100). A split of one version at 100% makes it live.
func (s *Service) SetTraffic(ctx context.Context, owner, name string, split []store.Split) (store.Function, error) {
	if len(split) == 0 || len(split) > MaxSplits {
		return store.Function{}, errdefs.Invalid("a traffic split has 1 to %d versions", MaxSplits)
	}
	seen := map[int64]bool{}
	total := 0
	for _, sp := range split {
		if sp.Percent < 0 || sp.Percent > 100 {
			return store.Function{}, errdefs.Invalid("version %d: percent %d is not between 0 and 100", sp.Version, sp.Percent)
		}
		if seen[sp.Version] {
			return store.Function{}, errdefs.Invalid("version %d appears twice", sp.Version)
		}
		seen[sp.Version] = true
		total += sp.Percent
	}
	if total != 100 {
		return store.Function{}, errdefs.Invalid("the percents add up to %d, not 100", total)
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, err
	}
	var kept []store.Split
	for _, sp := range split {
		// Every version named must exist, even at 0%.
		if _, err := s.store.GetVersion(ctx, owner, name, sp.Version); err != nil {
			return fn, err
		}
		if sp.Percent > 0 {
			kept = append(kept, sp)
		}
	}
	if len(kept) == 1 {
		if err := s.store.SetLive(ctx, owner, name, kept[0].Version, s.cfg.Now()); err != nil {
			return fn, err
		}
		return s.reload(ctx, owner, name)
	}
	r := fn.Routing
	r.Traffic = kept
	if err := s.store.SetRouting(ctx, owner, name, r, s.cfg.Now()); err != nil {
		return fn, err
	}
	return s.reload(ctx, owner, name)
}

// SetTag points tag at a version of the function; version 0 removes the tag.
func (s *Service) SetTag(ctx context.Context, owner, name, tag string, version int64) (store.Function, error) {
	if err := names.Validate("tag", tag); err != nil {
		return store.Function{}, err
	}
	if _, err := strconv.ParseInt(tag, 10, 64); err == nil {
		return store.Function{}, errdefs.Invalid("tag %q is a number; numbers already name versions (@%s)", tag, tag)
	}
	s.deployMu.Lock()
	defer s.deployMu.Unlock()
	fn, err := s.store.GetFunction(ctx, owner, name)
	if err != nil {
		return fn, err
	}
	r := fn.Routing
	tags := map[string]int64{}
	for k, v := range r.Tags {
		tags[k] = v
	}
	if version == 0 {
		if _, ok := tags[tag]; !ok {
			return fn, fmt.Errorf("function %s/%s has no tag %q: %w", owner, name, tag, errdefs.ErrNotFound)
		}
		delete(tags, tag)
	} else {
		if _, ok := tags[tag]; !ok && len(tags) >= MaxTags {
			return fn, errdefs.Invalid("function %s/%s has %d tags, the most it may have: remove one first", owner, name, len(tags))
		}
		tags[tag] = version
	}
	r.Tags = tags
	if err := s.store.SetRouting(ctx, owner, name, r, s.cfg.Now()); err != nil {
		return fn, err
	}
	return s.reload(ctx, owner, name)
}
