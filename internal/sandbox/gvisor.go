package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Isolation levels.
const (
	// IsolationStandard is bubblewrap: namespaces, seccomp, the host kernel.
	IsolationStandard = "standard"
	// IsolationGVisor runs the instance under gVisor's runsc: a user-space
	// kernel between the function and the host's, for operators who want
	// a kernel boundary. It costs start time (see docs/security.md) and
	// supports only --network none.
	IsolationGVisor = "gvisor"
)

// runsc finds gVisor's runsc.
func (s *Sandbox) runsc() (string, error) {
	if s.cfg.Runsc != "" {
		return s.cfg.Runsc, nil
	}
	p, err := exec.LookPath("runsc")
	if err != nil {
		return "", errors.New("gVisor isolation needs runsc: apt-get install runsc")
	}
	return p, nil
}

// gvisorCommand builds the runsc invocation for spec: an OCI bundle in
// spec.BundleDir whose mounts mirror what bubblewrap would bind, run with
// no network, Unix sockets the sandbox creates exposed on the host (that is
// how the router reaches the instance) and host sockets bound in
// connectable (ctx.kv's), and our cgroup (joined by the exec step) rather
// than runsc's own.
func (s *Sandbox) gvisorCommand(c *Cmd, spec Spec) ([]string, error) {
	if spec.Network != NetworkNone {
		return nil, fmt.Errorf("sandbox %s: gVisor isolation supports only network none", spec.Name)
	}
	if spec.BundleDir == "" {
		return nil, fmt.Errorf("sandbox %s: gVisor isolation needs a bundle dir", spec.Name)
	}
	runsc, err := s.runsc()
	if err != nil {
		return nil, err
	}
	rootfs := filepath.Join(spec.BundleDir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, err
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
	}
	tmpOpts := []string{"nosuid", "nodev"}
	if spec.TmpBytes > 0 {
		tmpOpts = append(tmpOpts, "size="+strconv.FormatInt(spec.TmpBytes, 10))
	}
	mounts = append(mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: tmpOpts})
	for _, lib := range s.cfg.SystemLibs {
		mounts = append(mounts, specs.Mount{Destination: lib, Type: "bind", Source: lib, Options: []string{"ro", "rbind"}})
	}
	for _, m := range spec.Mounts {
		opt := "ro"
		if m.Writable {
			opt = "rw"
		}
		mounts = append(mounts, specs.Mount{Destination: m.Dest, Type: "bind", Source: m.Source, Options: []string{opt, "rbind"}})
	}
	nofile := spec.NoFiles
	if nofile == 0 {
		nofile = 1024
	}
	oci := specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			// The instance uid owns its socket directory; inside gVisor it
			// is just the id the function runs as.
			User:            specs.User{UID: uint32(spec.UID), GID: uint32(spec.UID)},
			Args:            append([]string{spec.Program}, spec.Args...),
			Env:             spec.Env,
			Cwd:             "/tmp",
			NoNewPrivileges: true,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile}},
		},
		Hostname: "spry",
		Mounts:   mounts,
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
		},
	}
	data, err := json.MarshalIndent(oci, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(spec.BundleDir, "config.json"), data, 0o600); err != nil {
		return nil, err
	}
	c.runscRoot = filepath.Join(s.cfg.StateDir, "runsc")
	c.runscID = spec.Name
	c.runscBin = runsc
	return []string{runsc, "--root", c.runscRoot, "--host-uds=all", "--network=none", "--platform=ptrace",
		"--ignore-cgroups", "run", "--bundle", spec.BundleDir, spec.Name}, nil
}

// deleteRunsc removes runsc's state of an ended sandbox.
func (c *Cmd) deleteRunsc() {
	if c.runscID == "" {
		return
	}
	cmd := exec.Command(c.runscBin, "--root", c.runscRoot, "delete", "-force", c.runscID)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	_ = cmd.Run()
}
