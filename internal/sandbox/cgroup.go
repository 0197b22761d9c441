package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	cgv3 "github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const cgroupRoot = "/sys/fs/cgroup"

// Resources are the cgroup limits of one instance.
type Resources struct {
	MemoryBytes int64 // hard limit, swap included
	Pids        int64 // processes and threads
	CPUShares   uint64
	CPUQuotaUs  int64 // per 100ms period; 0 means unlimited
}

// cgroups creates and removes instance cgroups under one parent, named for
// the server, so that a restarted server can find and kill what a killed
// one left behind. v1 (and hybrid, whose controllers are v1) and v2 unified
// hosts are both handled through containerd's cgroups library.
type cgroups struct {
	v2     bool
	parent string // e.g. "spry/3f2a9c" (v2: relative to the root; v1: nested in ours)
	// tree bounds the whole subtree (the parent's pids.max and memory
	// limit; zero fields: none), made before its first group and again
	// after each sweep, which removes the parent.
	tree     Tree
	treeMu   sync.Mutex
	treeMade bool
}

// Tree bounds what every sandbox and build of a server hold together,
// whatever each one's own limits: what is left of the host's is the
// server's and the host's own.
type Tree struct {
	Pids        int64 // processes and threads; past it forks fail (0: no bound)
	MemoryBytes int64 // swap included; past it the kernel's OOM killer stops the largest (0: no bound)
}

func newCgroups(parent string, tree Tree) (*cgroups, error) {
	switch cgv3.Mode() {
	case cgv3.Unified:
		return &cgroups{v2: true, parent: parent, tree: tree}, nil
	case cgv3.Legacy, cgv3.Hybrid:
		return &cgroups{parent: parent, tree: tree}, nil
	default:
		return nil, errors.New("no cgroup filesystem mounted at /sys/fs/cgroup")
	}
}

// makeTree makes the parent with its bounds, unless it is made.
func (c *cgroups) makeTree() error {
	if c.tree == (Tree{}) {
		return nil
	}
	c.treeMu.Lock()
	defer c.treeMu.Unlock()
	if c.treeMade {
		return nil
	}
	r := Resources{Pids: c.tree.Pids, MemoryBytes: c.tree.MemoryBytes}
	var err error
	if c.v2 {
		_, err = cgroup2.NewManager(cgroupRoot, "/"+c.parent, cgroup2.ToResources(r.spec()))
	} else {
		_, err = cgroup1.New(cgroup1.NestedPath(c.parent), r.spec(), cgroup1.WithHierarchy(v1Hierarchy))
	}
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", c.parent, err)
	}
	c.treeMade = true
	return nil
}

// v1Hierarchy limits the library to the controllers we use, so that a host
// missing an unrelated controller does not stop us.
func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	return []cgroup1.Subsystem{
		// A kernel booted without swap accounting has no memsw files.
		cgroup1.NewMemory(cgroupRoot, cgroup1.OptionalSwap()),
		cgroup1.NewPids(cgroupRoot),
		cgroup1.NewCpu(cgroupRoot),
		cgroup1.NewFreezer(cgroupRoot),
	}, nil
}

var v1Names = []cgroup1.Name{cgroup1.Memory, cgroup1.Pids, cgroup1.Cpu, cgroup1.Freezer}

func (r Resources) spec() *specs.LinuxResources {
	lr := &specs.LinuxResources{}
	if r.MemoryBytes > 0 {
		// KernelTCP (v1 only; v2 charges socket buffers to the memory
		// limit by itself): the instance's TCP buffers, slirp4netns's host
		// sockets among them, are bounded too, not only its pages.
		// Swap (memory and swap together, as runc counts it) at the
		// limit: no swap beyond it, on a host that has swap (v2's
		// memory.swap.max 0; v1's memsw where the kernel accounts swap).
		m := r.MemoryBytes
		lr.Memory = &specs.LinuxMemory{Limit: &m, KernelTCP: &m, Swap: &m}
	}
	if r.Pids > 0 {
		p := r.Pids
		lr.Pids = &specs.LinuxPids{Limit: &p}
	}
	cpu := &specs.LinuxCPU{}
	if r.CPUShares > 0 {
		s := r.CPUShares
		cpu.Shares = &s
	}
	if r.CPUQuotaUs > 0 {
		q, p := r.CPUQuotaUs, uint64(100000)
		cpu.Quota, cpu.Period = &q, &p
	}
	lr.CPU = cpu
	return lr
}

// group is one instance's cgroup.
type group struct {
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
	dirs []string // one per hierarchy; cgroup.procs lives in each
}

func (c *cgroups) create(name string, r Resources) (*group, error) {
	if err := c.makeTree(); err != nil {
		return nil, err
	}
	rel := filepath.Join(c.parent, name)
	if c.v2 {
		m, err := cgroup2.NewManager(cgroupRoot, "/"+rel, cgroup2.ToResources(r.spec()))
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", rel, err)
		}
		return &group{v2: m, dirs: []string{filepath.Join(cgroupRoot, rel)}}, nil
	}
	path := cgroup1.NestedPath(rel)
	cg, err := cgroup1.New(path, r.spec(), cgroup1.WithHierarchy(v1Hierarchy))
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", rel, err)
	}
	g := &group{v1: cg}
	for _, n := range v1Names {
		p, err := path(n)
		if err != nil {
			continue
		}
		g.dirs = append(g.dirs, filepath.Join(cgroupRoot, string(n), p))
	}
	return g, nil
}

// openV2 opens a v2 group's directory, for clone3's CLONE_INTO_CGROUP; on
// v1 it returns nil, and the process is moved in after it starts.
func (g *group) openV2() (*os.File, error) {
	if g.v2 == nil {
		return nil, nil
	}
	return os.OpenFile(g.dirs[0], os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
}

// procsFiles are the files a process is written into to join the group.
func (g *group) procsFiles() []string {
	out := make([]string, len(g.dirs))
	for i, d := range g.dirs {
		out[i] = filepath.Join(d, "cgroup.procs")
	}
	return out
}

// setCPU changes the CPU weight (v2: cpu.weight, converted by the
// library) and quota.
func (g *group) setCPU(shares uint64, quotaUs int64) error {
	quota, period := quotaUs, uint64(100000)
	if quota <= 0 {
		quota = -1
	}
	r := &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period}}
	if g.v2 != nil {
		return g.v2.Update(cgroup2.ToResources(r))
	}
	return g.v1.Update(r)
}

// setQuota changes only the CPU quota, writing the one file itself: it
// runs before a request to an idle instance is sent, where setCPU's
// library call (~0.3 ms on v1, every controller visited) would show.
func (g *group) setQuota(quotaUs int64) error {
	if g.v2 != nil {
		v := "max 100000"
		if quotaUs > 0 {
			v = strconv.FormatInt(quotaUs, 10) + " 100000"
		}
		return os.WriteFile(filepath.Join(g.dirs[0], "cpu.max"), []byte(v), 0)
	}
	if quotaUs <= 0 {
		quotaUs = -1
	}
	dir, err := g.v1CPUDir()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.FormatInt(quotaUs, 10)), 0)
}

// setShares changes only the CPU weight, writing the one file itself
// (v2: cpu.weight, converted as the library converts shares).
func (g *group) setShares(shares uint64) error {
	if g.v2 != nil {
		w := cgroup2.ToResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares}}).CPU.Weight
		if w == nil {
			return errors.New("no cpu weight for shares")
		}
		return os.WriteFile(filepath.Join(g.dirs[0], "cpu.weight"), []byte(strconv.FormatUint(*w, 10)), 0)
	}
	dir, err := g.v1CPUDir()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.FormatUint(shares, 10)), 0)
}

// v1CPUDir is the group's directory in the v1 cpu hierarchy.
func (g *group) v1CPUDir() (string, error) {
	for _, d := range g.dirs {
		if strings.HasPrefix(d, filepath.Join(cgroupRoot, string(cgroup1.Cpu))+"/") {
			return d, nil
		}
	}
	return "", errors.New("no cpu controller")
}

// pidsDir is the group's directory in the pids controller.
func (g *group) pidsDir() (string, error) {
	if g.v2 != nil {
		return g.dirs[0], nil
	}
	for _, d := range g.dirs {
		if strings.HasPrefix(d, filepath.Join(cgroupRoot, string(cgroup1.Pids))+"/") {
			return d, nil
		}
	}
	return "", errors.New("no pids controller")
}

// cpuQuota reads the CPU quota back, per 100 ms period; -1: none.
func (g *group) cpuQuota() (int64, error) {
	if g.v2 != nil {
		b, err := os.ReadFile(filepath.Join(g.dirs[0], "cpu.max"))
		if err != nil {
			return 0, err
		}
		q, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		if q == "max" {
			return -1, nil
		}
		return strconv.ParseInt(q, 10, 64)
	}
	dir, err := g.v1CPUDir()
	if err != nil {
		return 0, err
	}
	return readInt(filepath.Join(dir, "cpu.cfs_quota_us"))
}

// cpuWeight reads the CPU weight back, in the hierarchy's own unit (v1:
// cpu.shares, v2: cpu.weight).
func (g *group) cpuWeight() (uint64, error) {
	file := filepath.Join(g.dirs[0], "cpu.weight")
	if g.v2 == nil {
		dir, err := g.v1CPUDir()
		if err != nil {
			return 0, err
		}
		file = filepath.Join(dir, "cpu.shares")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// oomKills reports how many processes the kernel's OOM killer has killed in
// this cgroup.
func (g *group) oomKills() uint64 {
	var file, key string
	if g.v2 != nil {
		file, key = filepath.Join(g.dirs[0], "memory.events"), "oom_kill"
	} else {
		file, key = filepath.Join(g.dirs[0], "memory.oom_control"), "oom_kill"
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == key {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// destroy kills whatever is still in the cgroup and removes it.
func (g *group) destroy() error {
	g.kill()
	if g.v2 != nil {
		return g.v2.Delete()
	}
	return g.v1.Delete()
}

// kill kills every process in the cgroup.
func (g *group) kill() {
	if g.v2 != nil {
		_ = g.v2.Kill()
		return
	}
	killV1(g.dirs)
}

// killV1 kills every process in the given v1 cgroup directories. Freezing
// first (when the freezer is among them) stops a fork bomb from outrunning us.
func killV1(dirs []string) {
	var freezer string
	for _, d := range dirs {
		if strings.Contains(d, "/freezer/") {
			freezer = d
		}
	}
	if freezer != "" {
		_ = os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("FROZEN"), 0)
	}
	for _, d := range dirs {
		for _, pid := range readPids(d) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if freezer != "" {
		_ = os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("THAWED"), 0)
	}
}

func readPids(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// sweep kills every process left in cgroups under the parent (by a server
// that was killed) and removes the cgroups. It returns how many processes it
// killed.
func (c *cgroups) sweep() int {
	var dirs []string
	if c.v2 {
		dirs = []string{filepath.Join(cgroupRoot, c.parent)}
	} else {
		path := cgroup1.NestedPath(c.parent)
		for _, n := range v1Names {
			if p, err := path(n); err == nil {
				dirs = append(dirs, filepath.Join(cgroupRoot, string(n), p))
			}
		}
	}
	killed := 0
	for i := 0; i < 10; i++ {
		n := 0
		for _, d := range dirs {
			n += len(readPids(d))
		}
		if n == 0 {
			break
		}
		killed += n
		if c.v2 {
			for _, d := range dirs {
				_ = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0)
			}
		}
		killV1(dirs)
		// Let the kernel reap before removing directories.
		waitBriefly()
	}
	c.treeMu.Lock()
	for _, d := range dirs {
		removeTree(d)
	}
	c.treeMade = false
	c.treeMu.Unlock()
	return killed
}

// removeTree removes cgroup directories bottom-up (cgroupfs only allows
// rmdir of empty groups, never unlink of their files).
func removeTree(dir string) {
	var all []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			all = append(all, p)
		}
		return nil
	})
	deadline := time.Now().Add(busyFor)
	for i := len(all) - 1; i >= 0; i-- {
		retryBusy(deadline, func() bool { return syscall.Rmdir(all[i]) != syscall.EBUSY })
	}
}
