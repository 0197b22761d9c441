// Package sandbox builds the command that runs one function instance in its
// own sandbox: bubblewrap for the namespaces and the minimal read-only root,
// a cgroup per instance for memory, CPU and process limits, an unprivileged
// host uid per instance, and rlimits. It builds the command without starting
// it; the backend's supervisor owns start, stop and reaping.
//
// bubblewrap runs as the instance's uid, behind prlimit(1) for the
// rlimits, and holds the sandbox, its namespaces built, until it is in the
// instance's cgroups (on v2 it starts there; on v1 Cmd.Start moves it in);
// so the runtime is inside its limits before its first instruction runs. gVisor's runsc, which cannot be held, starts
// through "spry __sandbox-exec", a re-exec of the spry binary that does the
// same before it execs runsc.
package sandbox
