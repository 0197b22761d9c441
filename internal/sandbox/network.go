package sandbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// blockedRanges are never reachable from an egress sandbox unless the
// operator allows them: the host's loopback, private and shared ranges,
// link-local (cloud metadata at 169.254.169.254), and the reserved ones.
var blockedRanges = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
	"224.0.0.0/4", "240.0.0.0/4",
}

// slirpDNS is slirp4netns's built-in DNS forwarder inside the sandbox.
const slirpDNS = "10.0.2.3"

func (s *Sandbox) setupNetwork() error {
	if s.cfg.StateDir == "" {
		return nil
	}
	etc := filepath.Join(s.cfg.StateDir, "etc")
	if err := MkdirReachable(etc); err != nil {
		return err
	}
	files := map[string]string{
		"resolv.conf": "nameserver " + slirpDNS + "\noptions timeout:2 attempts:2\n",
		"hosts":       "127.0.0.1 localhost\n::1 localhost\n",
	}
	for name, content := range files {
		p := filepath.Join(etc, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
		s.netMounts = append(s.netMounts, Mount{Source: p, Dest: "/etc/" + name})
	}
	return nil
}

// hostNets returns the host's own IPv4 addresses (as /32s) and the
// subnets they are on (those of /16 or narrower: the host's neighbours,
// its gateway among them), as they are now. slirp4netns connects from
// the host, so without this a sandbox could reach services on the
// host's public address, or its network's. They are read at each
// sandbox's start, not once: addresses come and go (DHCP, an alias, a
// VPN), and one added after the server started was reachable.
func hostNets() []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		out = append(out, ipn.IP.String()+"/32")
		if ones, _ := ipn.Mask.Size(); ones >= 16 && ones < 32 {
			out = append(out, ipn.IP.Mask(ipn.Mask).String()+"/"+strconv.Itoa(ones))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *Sandbox) currentHostNets() []string {
	if s.hostNets != nil {
		return s.hostNets()
	}
	return hostNets()
}

// EgressRanges returns what egress sandboxes may not reach, for the
// runtime's own deny list (a second layer): the blocked ranges less
// what the operator allows (Deno's deny list wins over its allow list,
// so the holes must be cut out of it), and the host's own addresses and
// subnets as they are now. Callers may append to what it returns.
func (s *Sandbox) EgressRanges() []string {
	host := s.currentHostNets()
	s.denyMu.Lock()
	defer s.denyMu.Unlock()
	if s.deny == nil || !slices.Equal(host, s.denyHost) {
		s.deny, s.denyHost = s.egressRanges(host), host
	}
	return slices.Clip(s.deny)
}

func (s *Sandbox) egressRanges(host []string) []string {
	var allow []netip.Prefix
	for _, p := range s.cfg.EgressAllow {
		if p.Addr().Is4() {
			allow = append(allow, p.Masked())
		}
	}
	var out []string
	for _, r := range blockedRanges {
		for _, p := range without(netip.MustParsePrefix(r), allow) {
			out = append(out, p.String())
		}
	}
	return append(out, host...)
}

// without returns the parts of the IPv4 prefix p that no prefix in holes
// covers, halving p until each part is inside a hole or clear of them.
func without(p netip.Prefix, holes []netip.Prefix) []netip.Prefix {
	for _, h := range holes {
		if !h.Overlaps(p) {
			continue
		}
		if h.Bits() <= p.Bits() {
			return nil // (prefixes that overlap nest)
		}
		bits := p.Bits() + 1
		a := p.Addr().As4()
		hi := binary.BigEndian.Uint32(a[:]) | 1<<(32-bits)
		binary.BigEndian.PutUint32(a[:], hi)
		return append(without(netip.PrefixFrom(p.Addr(), bits), holes), without(netip.PrefixFrom(netip.AddrFrom4(a), bits), holes)...)
	}
	return []netip.Prefix{p}
}

// nftRules is the ruleset loaded into an egress sandbox's network
// namespace. The sandbox has no capabilities there, so it cannot change it.
func (s *Sandbox) nftRules() string {
	var b strings.Builder
	// Replaced whole: RefreshNetworks loads the rules again, in one
	// transaction, into a namespace that has them. Only this table: the
	// namespace has no other.
	b.WriteString("table inet spry {}\ndelete table inet spry\ntable inet spry {\n chain output {\n  type filter hook output priority 0; policy accept;\n  oifname \"lo\" accept\n")
	fmt.Fprintf(&b, "  ip daddr %s udp dport 53 accept\n  ip daddr %s tcp dport 53 accept\n", slirpDNS, slirpDNS)
	// The host's own addresses and subnets before the operator's ranges,
	// which may hold them.
	if host := s.currentHostNets(); len(host) > 0 {
		fmt.Fprintf(&b, "  ip daddr { %s } reject\n", strings.Join(host, ", "))
	}
	for _, p := range s.cfg.EgressAllow {
		if p.Addr().Is4() {
			fmt.Fprintf(&b, "  ip daddr %s accept\n", p)
		}
	}
	fmt.Fprintf(&b, "  ip daddr { %s } reject\n", strings.Join(blockedRanges, ", "))
	b.WriteString("  meta nfproto ipv6 reject\n }\n}\n")
	return b.String()
}

// StartNetwork gives a started egress sandbox its network: it loads the
// filter rules into the sandbox's namespace, then attaches slirp4netns.
// It must run before any user code is given to the sandbox. For other
// network modes it does nothing.
func (c *Cmd) StartNetwork(ctx context.Context) error {
	if !c.egress {
		return nil
	}
	if c.pid <= 0 {
		return errors.New("sandbox network: the sandbox's pid is unknown (not started)")
	}
	netns := fmt.Sprintf("/proc/%d/ns/net", c.pid)
	// The namespace is held open from now on, and every load of the
	// rules enters it through that: a reload by pid after the sandbox
	// died could enter whatever process got the pid next, the host's
	// own namespace among them.
	ns, err := os.Open(netns)
	if err != nil {
		return fmt.Errorf("sandbox network: %w", err)
	}
	// Registered before the first load, which takes the host's addresses
	// under the same lock as a RefreshNetworks would: whichever loads
	// last loads the newest. Not once Cleanup has run.
	c.sb.liveMu.Lock()
	c.netMu.Lock()
	stopped := c.netStopped
	if !stopped {
		c.sb.live[c] = struct{}{}
	}
	c.netMu.Unlock()
	c.sb.liveMu.Unlock()
	if stopped {
		ns.Close()
		return errors.New("sandbox network: the sandbox ended while its network was set up")
	}
	c.rulesMu.Lock()
	c.netns = ns
	c.rulesMu.Unlock()
	if err := c.loadRules(ctx); err != nil {
		return err
	}
	slirpBin := c.sb.cfg.Slirp4netns
	if slirpBin == "" {
		var err error
		if slirpBin, err = exec.LookPath("slirp4netns"); err != nil {
			return errors.New("sandbox network: slirp4netns is not installed: apt-get install slirp4netns")
		}
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer readyR.Close()
	exitR, exitW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return err
	}
	// By path, not by pid: given a pid, slirp4netns would also join the
	// sandbox's (nested, unprivileged) user namespace and then lack the
	// right to enter its network namespace.
	slirp := exec.Command(slirpBin, "--configure", "--mtu=65520", "--disable-host-loopback",
		"--enable-sandbox", "--enable-seccomp", "--ready-fd=3", "--exit-fd=4",
		"--netns-type=path", netns, "tap0")
	slirp.ExtraFiles = []*os.File{readyW, exitR}
	slirp.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
		// slirp4netns's own sandbox unmounts things in its mount namespace;
		// in a namespace of its own, made private (Go does that for
		// CLONE_NEWNS), none of it propagates to the host's shared mounts
		// (such as /run/netns).
		Unshareflags: syscall.CLONE_NEWNS,
	}
	var stderr lockedBuffer
	slirp.Stderr = &stderr
	err = slirp.Start()
	readyW.Close()
	exitR.Close()
	if err != nil {
		exitW.Close()
		return fmt.Errorf("sandbox network: start slirp4netns: %w", err)
	}
	// slirp4netns holds a host socket, and its buffers, for each of the
	// function's connections: it counts as the instance (memory, TCP
	// buffers, pids, CPU) and may hold no more descriptors than the
	// instance may, or a function would grow it, root and outside every
	// limit, by opening connections to a server that never reads. It
	// has done nothing for the function before it is in.
	if err := c.confineSlirp(slirp.Process.Pid); err != nil {
		exitW.Close()
		_ = slirp.Process.Kill()
		_ = slirp.Wait()
		return fmt.Errorf("sandbox network: %w", err)
	}
	c.netMu.Lock()
	stopped = c.netStopped
	if !stopped {
		c.slirp, c.slirpFD = slirp, exitW
	}
	c.netMu.Unlock()
	if stopped {
		exitW.Close()
		_ = slirp.Process.Kill()
		_ = slirp.Wait()
		return errors.New("sandbox network: the sandbox ended while its network was set up")
	}
	ready := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := readyR.Read(b[:])
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("sandbox network: slirp4netns did not start: %v: %s", err, bytes.TrimSpace(stderr.bytes()))
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return errors.New("sandbox network: slirp4netns did not become ready within 10s")
	}
}

// loadRules loads the filter rules, as the host's addresses are now,
// into the sandbox's network namespace.
func (c *Cmd) loadRules(ctx context.Context) error {
	c.rulesMu.Lock()
	defer c.rulesMu.Unlock()
	if c.netns == nil {
		return errors.New("sandbox network: the sandbox has ended")
	}
	nft := exec.CommandContext(ctx, "nsenter", "--net=/proc/self/fd/3", "--", "nft", "-f", "-")
	nft.ExtraFiles = []*os.File{c.netns}
	nft.Stdin = strings.NewReader(c.sb.nftRules())
	if out, err := nft.CombinedOutput(); err != nil {
		return fmt.Errorf("sandbox network: load filter rules: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// RefreshNetworks loads the filter rules again into every running egress
// sandbox if the host's addresses changed since it last looked: each
// sandbox took them at its start, and an address the host gained later
// (DHCP, an alias, a VPN) was reachable from the sandboxes already
// running. It reports whether they changed. The runtimes' own deny lists
// (the second layer) were fixed at their start; a caller may replace the
// sandboxes it holds in reserve.
func (s *Sandbox) RefreshNetworks(ctx context.Context) (bool, error) {
	host := s.currentHostNets()
	s.liveMu.Lock()
	changed := s.seen && !slices.Equal(host, s.seenHost)
	s.seen, s.seenHost = true, host
	cmds := slices.Collect(maps.Keys(s.live))
	s.liveMu.Unlock()
	if !changed {
		return false, nil
	}
	var errs []error
	for _, c := range cmds {
		c.netMu.Lock()
		stopped := c.netStopped
		c.netMu.Unlock()
		if stopped {
			continue
		}
		if err := c.loadRules(ctx); err != nil {
			// One that ended meanwhile has no namespace left.
			c.netMu.Lock()
			stopped = c.netStopped
			c.netMu.Unlock()
			if !stopped {
				errs = append(errs, fmt.Errorf("sandbox %s: %w", c.name, err))
			}
		}
	}
	return true, errors.Join(errs...)
}

// WatchHost calls RefreshNetworks whenever the kernel reports an IPv4
// address added or removed on the host (a netlink subscription: nothing
// runs while nothing changes), then changed if the addresses did. It
// returns when ctx ends.
func (s *Sandbox) WatchHost(ctx context.Context, log *slog.Logger, changed func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("watch host addresses: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch host addresses: %w", err)
	}
	// Non-blocking, so the runtime's poller waits on it and Close ends
	// the read.
	f := os.NewFile(uintptr(fd), "netlink")
	_, _ = s.RefreshNetworks(ctx) // the baseline
	events := make(chan struct{}, 1)
	go func() {
		defer close(events)
		buf := make([]byte, 64<<10)
		for {
			_, err := f.Read(buf)
			if errors.Is(err, unix.ENOBUFS) {
				// Events were lost (a burst of changes): look anyway.
				err = nil
			}
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, os.ErrClosed) {
					log.Warn("the watch of the host's addresses ended: running sandboxes keep the rules they have", "err", err)
				}
				return
			}
			select {
			case events <- struct{}{}:
			default:
			}
		}
	}()
	defer func() {
		f.Close()
		for range events {
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				return nil
			}
		}
		ch, err := s.RefreshNetworks(ctx)
		if err != nil {
			log.Error("load sandboxes' filter rules again after the host's addresses changed", "err", err)
		}
		if ch {
			log.Info("the host's addresses changed: running sandboxes' filter rules reloaded")
			if changed != nil {
				changed()
			}
		}
	}
}

func readChildPid(r io.Reader) (int, error) {
	dec := json.NewDecoder(r)
	var info struct {
		ChildPid int `json:"child-pid"`
	}
	if err := dec.Decode(&info); err != nil {
		return 0, fmt.Errorf("read bubblewrap's info: %w", err)
	}
	if info.ChildPid <= 0 {
		return 0, errors.New("bubblewrap reported no child pid")
	}
	return info.ChildPid, nil
}

func (c *Cmd) stopNetwork() {
	c.sb.liveMu.Lock()
	delete(c.sb.live, c)
	c.sb.liveMu.Unlock()
	c.rulesMu.Lock()
	if c.netns != nil {
		c.netns.Close()
		c.netns = nil
	}
	c.rulesMu.Unlock()
	c.netMu.Lock()
	c.netStopped = true
	slirp, slirpFD := c.slirp, c.slirpFD
	c.slirp, c.slirpFD = nil, nil
	c.netMu.Unlock()
	if slirp != nil {
		slirpFD.Close()
		_ = slirp.Process.Kill()
		_ = slirp.Wait()
	}
}

// ParsePrefixes parses a list of CIDR prefixes or bare addresses (an
// operator flag).
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			// A bare address is its own range.
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				return nil, fmt.Errorf("%q is not an address or a CIDR prefix: %w", s, err)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// lockedBuffer collects a child's stderr, which os/exec copies from its
// own goroutine while we may already be reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

// confineSlirp puts the instance's slirp4netns, pid, in the instance's
// cgroups and under its open-file limit.
func (c *Cmd) confineSlirp(pid int) error {
	if err := c.join(pid); err != nil {
		return err
	}
	if err := raiseOOMScore(pid); err != nil {
		return err
	}
	if c.noFiles > 0 {
		l := unix.Rlimit{Cur: c.noFiles, Max: c.noFiles}
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &l, nil); err != nil {
			return fmt.Errorf("limit slirp4netns's open files: %w", err)
		}
	}
	return nil
}
