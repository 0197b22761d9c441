package local

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sandbox"
)

// A user's running instances share one budget of processes (threads
// included) and one of open files, so that one user cannot take the
// host's pids or files from everyone else (the server, other users'
// instances), as each instance's own limits, many times over, could.
// Each instance is given its share when it is specialized, before its
// function runs (one pids.max write and a prlimit(2) per process on the
// cold start's path), and the shares are rewritten, off that path, as
// the user's instances come and go: as the CPU weight is, halved at
// powers of two, between a floor that an instance needs to run and the
// limit of a lone instance (Config.Pids, Config.NoFiles).
//
// The bound is on what the instances may hold, not only on the sum of
// their limits: a limit lowered below what an instance has already stops
// it from taking more but takes nothing back, so each instance counts as
// holding the larger of its limit and what it has (sandbox.Cmd.SetPids,
// SetNoFiles), and an instance is started only while that sum, with its
// own share, stays within the budget. A start that does not fit even at
// the floor, were the others lowered to their shares (they are, only for
// a start that then fits), is refused (429: it may fit once an instance
// ends), and its pooled sandbox goes back to the pool, unchanged; a
// sandbox whose limits could not all be set is discarded instead
// (Backend.Start).
//
// Open files are bounded per process (RLIMIT_NOFILE, soft and hard); the
// processes that open files for a function are its runtime and
// slirp4netns, each counted at its own limit (a share assumes two per
// instance). A process the runtime forks (its permissions refuse that;
// the seccomp filter does not) has its parent's limit and is counted
// only from the next change of shares (see ledger.bucket): past the runtime's permissions the bound
// is the instance's pids share times its files share. Without
// CAP_SYS_RESOURCE an open-file limit can only be lowered: instances
// keep the share they were given when others end (pids shares grow back
// either way).

// minPids is the fewest processes and threads an instance is left with:
// bubblewrap's two, slirp4netns and Deno's ~10-20 threads (5 idle, more
// under load), with room to spare.
const minPids = 32

// minFiles is the fewest open files an instance's processes are each
// left with: as the lone instance's limit (internal/server), two for each
// request in flight at the function's concurrency (the router's two
// paths keep connections of their own) and 1024 of the function's own.
func minFiles(spec *backend.Spec) uint64 {
	return 2*uint64(max(spec.Concurrency, 0)) + 1024
}

// halvings is how many times a budget is halved for each of a user's n
// instances: none for a lone one, and otherwise once more at each power
// of two, reached one instance early (bits.Len(n), not bits.Len(n-1)).
// So the instance that halves the shares fits beside the others' shares
// as they were (2^k-1 instances at 1/2^k each leave 1/2^k, and it takes
// half that) and its start does not wait for them to be lowered, which
// it did at a user's 33rd, 65th and 129th instance (15-80 ms on its cold
// start); rebalance lowers them after, off its path.
func halvings(n int) int {
	if n <= 1 {
		return 0
	}
	return bits.Len(uint(n))
}

// pidsShare is the pids limit of each of a user's n instances.
func (b *Backend) pidsShare(n int) int64 {
	s := b.cfg.UserPids >> halvings(n)
	return max(minPids, min(b.cfg.Pids, s))
}

// filesShare is the open-file limit of each process of a user's n
// instances whose least is floor: each instance has two such processes.
func (b *Backend) filesShare(n int, floor uint64) uint64 {
	s := b.cfg.UserFiles >> (halvings(n) + 1)
	return max(floor, min(b.cfg.NoFiles, s))
}

// errBudget refuses an instance that its user's budget cannot hold.
func errBudget(what string, budget uint64) error {
	return errdefs.New(errdefs.ErrRateLimited, "the function's owner runs instances that hold all of one user's %d %s (spry serve --user-%s); retry later", budget, what, what)
}

// ledger orders the budget's changes for one user.
type ledger struct {
	mu sync.Mutex
	// bucket is halvings(n) of the instance count n the shares were
	// last given for: the shares change only when it does, and only then
	// is every instance's use read again from /proc (O(n) reads at each
	// power of two, not at every start and end, which took the CPU from
	// the cold starts of a user with hundreds of instances).
	bucket int
	// pidsHeld and filesHeld are what the user's admitted instances are
	// counted at, added up, as mu's holder last counted them: atomics,
	// so that OwnerBudgets reads them without waiting for mu, which is
	// held across /proc reads and limit-setting calls.
	pidsHeld  atomic.Int64
	filesHeld atomic.Uint64
}

// count records what ps, all of the user's admitted instances, are
// counted at, for OwnerBudgets; l.mu held.
func (l *ledger) count(ps []*proc) {
	pids, files := heldBy(ps)
	l.pidsHeld.Store(pids)
	l.filesHeld.Store(files)
}

// OwnerBudgets reports owner's use of the per-user budgets of processes
// and open files (Config.UserPids, Config.UserFiles; 0: none), as the
// budget check counts it: each of their admitted instances not yet
// reaped (stopping ones too) at its limits, or more if it holds more
// (sandbox.Cmd.SetPids, SetNoFiles), added up as last counted when the
// shares were given or rewritten. It waits for no /proc read or limit change.
func (b *Backend) OwnerBudgets(owner string) (pidsUsed, pidsLimit int64, filesUsed, filesLimit uint64) {
	b.mu.Lock()
	l := b.ledgers[owner]
	b.mu.Unlock()
	if l != nil {
		pidsUsed, filesUsed = l.pidsHeld.Load(), l.filesHeld.Load()
	}
	return pidsUsed, b.cfg.UserPids, filesUsed, b.cfg.UserFiles
}

// holding is an instance's part in its user's budgets; guarded by its
// user's ledger.
type holding struct {
	pids     int64  // its pids.max
	pidsHeld int64  // what it may hold: pids, or more (see SetPids)
	files    uint64 // its processes' open-file limit
	// filesHeld is what its processes may hold of open files.
	filesHeld uint64
	minFiles  uint64
	// fixed: its limits are not changed (gVisor's runsc, whose own
	// processes are not the function's), only counted.
	fixed bool
	// openers is how many of its processes open files (k: its files
	// limit holds k times over).
	openers uint64
}

// lockLedger returns owner's ledger, locked. rebalance removes the
// ledger of an owner left with no instance (else one stayed for every
// user that ever ran one), so the one found may be gone by the time its
// lock is held: then the one that replaced it is taken.
func (b *Backend) lockLedger(owner string) *ledger {
	for {
		b.mu.Lock()
		l := b.ledgers[owner]
		if l == nil {
			l = &ledger{}
			b.ledgers[owner] = l
		}
		b.mu.Unlock()
		l.mu.Lock()
		b.mu.Lock()
		current := b.ledgers[owner] == l
		b.mu.Unlock()
		if current {
			return l
		}
		l.mu.Unlock()
	}
}

// members are the instances admitted to owner's budget that have not
// been reaped, and how many of them are not stopping (those the shares
// are for); self, being admitted, is left out.
func (b *Backend) members(owner string, self *proc) (all []*proc, active int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.procs {
		if p == self || p.owner != owner {
			continue
		}
		all = append(all, p)
		p.mu.Lock()
		if p.stopping == "" {
			active++
		}
		p.mu.Unlock()
	}
	return all, active
}

// budgeted reports whether instances share budgets at all.
func (b *Backend) budgeted() bool { return b.cfg.UserPids > 0 || b.cfg.UserFiles > 0 }

// admit gives p, about to be specialized with spec, its share of spec's
// owner's budgets, lowering the others first if the budget is held.
// It refuses p (errBudget: ErrRateLimited), changing nothing of it, if p
// does not fit at its floor; any other error may leave p's limits half
// set, and p must then be discarded, never pooled.
func (b *Backend) admit(p *proc, spec *backend.Spec) error {
	if !b.budgeted() {
		return nil
	}
	l := b.lockLedger(spec.Owner)
	defer l.mu.Unlock()
	h := holding{minFiles: min(b.cfg.NoFiles, minFiles(spec)), fixed: spec.Isolation == sandbox.IsolationGVisor}
	others, active := b.members(spec.Owner, p)
	// The others may be lowered below even if p is refused; p counts
	// once it joins.
	counted := others
	defer func() { l.count(counted) }()
	n := active + 1
	wantPids, wantFiles := b.pidsShare(n), b.filesShare(n, h.minFiles)
	openers, err := p.cmd.Openers()
	if err != nil {
		// Most likely the sandbox died since it was taken: 503, as a
		// dead spawn's start gets, not an internal error.
		return fmt.Errorf("admit instance: %w: %w", err, errdefs.ErrUnavailable)
	}
	k := uint64(max(1, len(openers)))
	pidsFree, filesFree := b.free(others)
	if (b.cfg.UserPids > 0 && pidsFree < wantPids) || (b.cfg.UserFiles > 0 && filesFree < k*wantFiles) {
		// Take back what the others hold above their shares, if that
		// lets p in: lowered for a start refused all the same, they
		// would keep the shares of one instance more until the user's
		// next start or end (open-file limits, without
		// CAP_SYS_RESOURCE, for good).
		needPids, needFiles := int64(minPids), k*h.minFiles
		if h.fixed {
			needPids, needFiles = b.cfg.Pids, k*b.cfg.NoFiles
		}
		pidsFree, filesFree = b.freeLowered(others, n)
		if (b.cfg.UserPids == 0 || pidsFree >= needPids) && (b.cfg.UserFiles == 0 || filesFree >= needFiles) {
			b.lower(others, n, true)
			pidsFree, filesFree = b.free(others)
		}
	}
	if h.fixed {
		// gVisor's runsc keeps the limits it started with.
		wantPids, wantFiles = b.cfg.Pids, b.cfg.NoFiles
		if b.cfg.UserPids > 0 && pidsFree < wantPids {
			return errBudget("pids", uint64(b.cfg.UserPids))
		}
		if b.cfg.UserFiles > 0 && filesFree < k*wantFiles {
			return errBudget("files", b.cfg.UserFiles)
		}
		h.pids, h.files, h.openers = wantPids, wantFiles, k
		if h.pidsHeld, err = p.cmd.PidsHeld(); err == nil {
			h.filesHeld, err = p.cmd.FilesHeld()
		}
		if err != nil {
			return fmt.Errorf("admit instance: %w: %w", err, errdefs.ErrUnavailable)
		}
		b.join(p, spec.Owner, h)
		counted = append(others, p)
		return nil
	}
	h.pids, h.files = b.cfg.Pids, b.cfg.NoFiles
	if b.cfg.UserPids > 0 {
		h.pids = min(wantPids, pidsFree)
		if h.pids < minPids {
			return errBudget("pids", uint64(b.cfg.UserPids))
		}
	}
	if b.cfg.UserFiles > 0 {
		h.files = min(wantFiles, filesFree/k)
		if h.files < h.minFiles {
			return errBudget("files", b.cfg.UserFiles)
		}
	}
	// No function has run in it yet: it holds its limits, no more.
	if err := p.cmd.LimitFresh(h.pids, h.files, openers); err != nil {
		return fmt.Errorf("admit instance: %w: %w", err, errdefs.ErrUnavailable)
	}
	h.pidsHeld, h.filesHeld, h.openers = h.pids, k*h.files, k
	b.join(p, spec.Owner, h)
	counted = append(others, p)
	return nil
}

// join records p as admitted to owner's budgets with h.
func (b *Backend) join(p *proc, owner string, h holding) {
	p.share = h
	b.mu.Lock()
	p.owner = owner
	b.mu.Unlock()
}

// heldBy is what ps are counted at against their user's budgets, added up.
func heldBy(ps []*proc) (pids int64, files uint64) {
	for _, p := range ps {
		pids += p.share.pidsHeld
		files += p.share.filesHeld
	}
	return pids, files
}

// free is what the budgets leave beside what ps hold (0 if none).
func (b *Backend) free(ps []*proc) (pids int64, files uint64) {
	hp, hf := heldBy(ps)
	return max(0, b.cfg.UserPids-hp), b.cfg.UserFiles - min(b.cfg.UserFiles, hf)
}

// freeLowered is what the budgets would leave beside ps were they
// lowered to the shares of n instances (lower(ps, n, true)), as they hold
// now; what cannot be read counts as they were last counted.
func (b *Backend) freeLowered(ps []*proc, n int) (pids int64, files uint64) {
	var hp int64
	var hf uint64
	for _, p := range ps {
		h := &p.share
		pidsHeld, filesHeld := h.pidsHeld, h.filesHeld
		if !h.fixed {
			if b.cfg.UserPids > 0 {
				if held, err := p.cmd.PidsHeldAt(min(h.pids, b.pidsShare(n))); err == nil {
					pidsHeld = held
				}
			}
			if b.cfg.UserFiles > 0 {
				if held, err := p.cmd.FilesHeldAt(min(h.files, b.filesShare(n, h.minFiles))); err == nil {
					filesHeld = held
				}
			}
		}
		hp += pidsHeld
		hf += filesHeld
	}
	return max(0, b.cfg.UserPids-hp), b.cfg.UserFiles - min(b.cfg.UserFiles, hf)
}

// lower brings each of ps above the shares of n instances down to them,
// and counts again what those still above their limits hold (they may
// have let some go); with recount, what every instance holds of open
// files is counted again too (a process forked since counts from then).
func (b *Backend) lower(ps []*proc, n int, recount bool) {
	for _, p := range ps {
		h := &p.share
		if h.fixed {
			continue
		}
		if w := b.pidsShare(n); b.cfg.UserPids > 0 && h.pids > w {
			if held, err := p.cmd.SetPids(w); err == nil {
				h.pids, h.pidsHeld = w, held
			} else {
				// An instance that ended meanwhile holds nothing; its
				// reap rebalances the rest.
				b.log.Debug("lower pids", "instance", p.id, "err", err)
			}
		} else if h.pidsHeld > h.pids {
			if held, err := p.cmd.PidsHeld(); err == nil {
				h.pidsHeld = held
			}
		}
		if w := b.filesShare(n, h.minFiles); b.cfg.UserFiles > 0 && h.files > w {
			if held, err := p.cmd.SetNoFiles(w); err == nil {
				h.files, h.filesHeld = w, held
			} else {
				b.log.Debug("lower open files", "instance", p.id, "err", err)
			}
		} else if !recount && h.filesHeld <= h.openers*h.files {
			// At its limits, and nothing has changed them.
		} else if held, err := p.cmd.FilesHeld(); err == nil {
			// Less if it let files go; more if a process was forked
			// since (see above).
			h.filesHeld = held
		}
	}
}

// rebalance gives each of owner's instances its share of the budgets,
// now that one was admitted or ended: those above it are lowered first,
// then those below it (admitted short, or left from more instances) are
// raised as far as the budget allows.
func (b *Backend) rebalance(owner string) {
	if !b.budgeted() {
		return
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		// Every instance is going.
		return
	}
	l := b.lockLedger(owner)
	defer l.mu.Unlock()
	ps, n := b.members(owner, nil)
	if len(ps) == 0 {
		// None is left, and none joins while l is held (join is under
		// it): the owner's next start makes a new ledger.
		b.mu.Lock()
		delete(b.ledgers, owner)
		b.mu.Unlock()
		return
	}
	// Counted whatever is changed below, and when only stopping ones
	// are left.
	defer l.count(ps)
	if n == 0 {
		return
	}
	bucket := halvings(n)
	b.lower(ps, n, bucket != l.bucket)
	l.bucket = bucket
	pidsFree, filesFree := b.free(ps)
	for _, p := range ps {
		h := &p.share
		p.mu.Lock()
		stopping := p.stopping != ""
		p.mu.Unlock()
		if h.fixed || stopping {
			continue
		}
		if w := b.pidsShare(n); b.cfg.UserPids > 0 && h.pids < w {
			if to := min(w, h.pids+pidsFree); to > h.pids {
				if held, err := p.cmd.SetPids(to); err == nil {
					pidsFree -= max(0, held-h.pidsHeld)
					h.pids, h.pidsHeld = to, held
				}
			}
		}
		if w := b.filesShare(n, h.minFiles); b.cfg.UserFiles > 0 && h.files < w && b.raisesFiles {
			openers, err := p.cmd.Openers()
			if err != nil {
				continue
			}
			k := uint64(max(1, len(openers)))
			if to := min(w, h.files+filesFree/k); to > h.files {
				if held, err := p.cmd.SetNoFiles(to); err == nil {
					filesFree -= min(filesFree, held-min(held, h.filesHeld))
					h.files, h.filesHeld = to, held
				}
			}
		}
	}
}
