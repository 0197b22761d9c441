// Package runtime knows the function runtimes (Deno now, Node next): where
// their binaries are, their embedded bootstrap scripts, and the program,
// flags, environment and mounts that start one generic, not yet
// specialized, instance inside a sandbox.
package runtime

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spry-run/spry/internal/sandbox"
)

// Paths inside the sandbox, shared by every runtime.
const (
	// CodeDir holds the specialized function's bundle.
	CodeDir = "/code"
	// SocketDir holds the Unix socket the instance serves HTTP on.
	SocketDir = "/run/spry"
	// SocketName is the socket's file name in SocketDir.
	SocketName = "http.sock"
	// ControlSocketName is where a generic instance takes its one
	// specialization (a POST of a Specialization); only the supervisor
	// connects to it.
	ControlSocketName = "control.sock"
	// KVSocket is where the function's code reaches its key-value
	// storage (ctx.kv): a socket of the server's, bound into the sandbox,
	// that answers for this instance's function only.
	KVSocket = "/run/spry-kv.sock"
	// BootLine is the first line an instance writes on stdout, as soon
	// as its bootstrap runs: the sandbox's setup is done, and the
	// supervisor sets up the instance's network beside the rest of the
	// start.
	BootLine = "SPRY-BOOT"
	// ReadyLine is the line an instance writes on stdout once it listens
	// (after BootLine); it is written before any user code is loaded.
	ReadyLine = "SPRY-READY"
	// LoadedLine is the line an instance writes on stdout once its
	// function is imported, before the function's code serves a request:
	// until then requests wait in it, and a timeout does not take it for
	// stuck. (The answer on the control socket says so too, with a failed
	// import's error, but a handler that blocks the event loop can keep
	// it from being sent; this line is written at once.)
	LoadedLine = "SPRY-LOADED"
)

// Network modes of an instance.
const (
	// NetworkNone gives the instance no network interfaces at all.
	NetworkNone = "none"
	// NetworkEgress lets the instance reach the public internet, and
	// nothing on the host or in private ranges.
	NetworkEgress = "egress"
)

// LaunchOptions are the settings fixed when a generic instance starts
// (so warm pools are kept per combination).
type LaunchOptions struct {
	MemoryMiB int
	Network   string
	// DenyNet lists ranges an egress instance may not reach; the runtime
	// denies them itself too, behind the sandbox's own rules.
	DenyNet []string
	// Isolation is the sandbox's isolation level ("" or "gvisor").
	Isolation string
}

// bootstrapArgs are the arguments after a bootstrap script.
func bootstrapArgs(o LaunchOptions) []string {
	if o.Isolation == "gvisor" {
		return []string{"--no-warmup"}
	}
	return nil
}

// Launch is what starts one generic instance.
type Launch struct {
	Program string
	Args    []string
	Env     []string
	Mounts  []sandbox.Mount
}

// Specialization is the one message an instance takes on its control
// socket: which bundle to import and the context its handler gets. The
// instance answers 200 once the import succeeded, or 500 with
// {"error": "..."} if it failed.
type Specialization struct {
	Module  string            `json:"module"` // file:///code/<file>
	Name    string            `json:"name"`
	Owner   string            `json:"owner"`
	Version int64             `json:"version"`
	Env     map[string]string `json:"env"`
	// ErrorMark goes with the runtime's own error answers (a handler
	// that threw, a module that did not load), in
	// backend.ErrorMarkHeader: the router keeps their Spry-Error only
	// with it, and drops any other, such as one a function copied from
	// a fetch's answer.
	ErrorMark string `json:"error_mark"`
}

//go:embed deno_bootstrap.js
var denoBootstrap []byte

//go:embed kv_client.js
var kvClient []byte

//go:embed body.js
var bodyHelpers []byte

// shared are the parts both bootstraps share, each put in place of its
// marker line: ctx.kv's client, and how an answer's body stream is read.
var shared = []struct {
	marker string
	code   []byte
}{
	{"/* @spry:kv-client */", kvClient},
	{"/* @spry:body */", bodyHelpers},
}

// withShared is a bootstrap with the shared parts in place.
func withShared(boot []byte) []byte {
	for _, s := range shared {
		if !bytes.Contains(boot, []byte(s.marker)) {
			panic("runtime: a bootstrap has no " + s.marker)
		}
		boot = bytes.Replace(boot, []byte(s.marker), s.code, 1)
	}
	return boot
}

// Deno is the Deno runtime.
type Deno struct {
	Binary    string // host path of the deno binary
	bootstrap string // host path of the bootstrap script
	Version   string
}

// DenoBinaryPath is where `npm ci --prefix runtimes` puts the pinned Deno
// binary, relative to the project (or install) directory.
const DenoBinaryPath = "runtimes/node_modules/@deno/linux-x64-glibc/deno"

// FindDeno locates the deno binary: an explicit path, then next to the spry
// binary (bin/spry -> ../runtimes/...), then in the working directory or
// one of its parents, then $PATH.
func FindDeno(explicit string) (string, error) {
	return findBinary(explicit, DenoBinaryPath, "deno", "--deno")
}

// NewDeno prepares the Deno runtime: it writes the bootstrap into dir (a
// directory the server owns) and reads the binary's version.
func NewDeno(binary, dir string) (*Deno, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("run %s --version: %w", binary, err)
	}
	version := strings.TrimPrefix(strings.Fields(string(out) + " ")[1], "v")
	boot := filepath.Join(dir, "deno-bootstrap.js")
	if err := os.WriteFile(boot, withShared(denoBootstrap), 0o644); err != nil {
		return nil, err
	}
	return &Deno{Binary: binary, bootstrap: boot, Version: version}, nil
}

// Name is the runtime's name as users give it (--runtime deno).
func (d *Deno) Name() string { return "deno" }

// Launch returns how to start a generic Deno instance whose V8 heap fits in
// its memory limit.
func (d *Deno) Launch(o LaunchOptions) Launch {
	heap := o.MemoryMiB * 3 / 4
	if heap < 16 {
		heap = 16
	}
	sockets := SocketDir + "/" + SocketName + "," + SocketDir + "/" + ControlSocketName + "," + KVSocket
	args := []string{
		"run",
		"--no-prompt", "--no-config", "--no-lock", "--cached-only",
		// An instance imports its module once; caching V8's code for it
		// would only fill the function's own /tmp (where DENO_DIR is).
		"--no-code-cache",
		// req.signal aborts when the client goes away (or the request
		// times out), not also once a response was sent in full, as on
		// Node: work kept going after the response (ctx.waitUntil) with
		// the request's signal is not cut short. Without it Deno also
		// writes a warning about it into the function's logs.
		"--unstable-no-legacy-abort",
		fmt.Sprintf("--v8-flags=--max-old-space-size=%d", heap),
		// Least privilege: read the code, the sockets and /tmp, write only
		// the sockets and /tmp; no env, run, ffi or sys permission. The
		// sockets, not their directory: it is the host's, outside /tmp's
		// size limit, and the supervisor dials the sockets in it.
		"--allow-read=" + CodeDir + "," + sockets + ",/tmp",
		"--allow-write=" + sockets + ",/tmp",
	}
	if o.Network == NetworkEgress {
		args = append(args, "--allow-net")
		if len(o.DenyNet) > 0 {
			args = append(args, "--deny-net="+strings.Join(append(o.DenyNet, "localhost"), ","))
		}
	} else {
		// Only its own socket: no network at all.
		args = append(args, "--allow-net=unix:"+SocketDir+"/"+SocketName+",unix:"+SocketDir+"/"+ControlSocketName+",unix:"+KVSocket)
	}
	args = append(args, "/spry/bootstrap.js")
	args = append(args, bootstrapArgs(o)...)
	return Launch{
		Program: "/spry/deno",
		Args:    args,
		Env: []string{
			"HOME=/tmp",
			"DENO_DIR=/tmp/.deno",
			"DENO_NO_UPDATE_CHECK=1",
			"NO_COLOR=1",
			"TZ=UTC",
		},
		Mounts: []sandbox.Mount{
			{Source: d.Binary, Dest: "/spry/deno"},
			{Source: d.bootstrap, Dest: "/spry/bootstrap.js"},
		},
	}
}
