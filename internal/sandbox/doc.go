// Package sandbox builds the command that runs one function instance in its
// own sandbox: bubblewrap for the namespaces and the minimal read-only root,
// a cgroup per instance for memory, CPU and process limits, an unprivileged
// host uid per instance, and rlimits. It builds the command without starting
// it; the backend's supervisor owns start, stop and reaping.
//
// The command is "spry __sandbox-exec ... -- bwrap ...": a short re-exec of
// the spry binary that joins the instance's cgroups, sets rlimits, drops to
// the instance's uid and then execs bubblewrap, so that the sandbox is inside
// its limits before its first instruction runs.
package sandbox
