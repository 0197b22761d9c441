package sandbox

import (
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// KillUIDs kills every live process whose real uid is in [lo, hi), the
// range a server gives its sandboxes, and returns how many it signalled.
// The cgroup sweep misses one kind: a sandbox whose bubblewrap died (with
// the server, by kill -9) between making the sandbox's first process and
// writing its uid map leaves that process waiting for the map for ever,
// before it was ever in a cgroup (seen in TestRestartKeepsServing). Only
// sandboxes run as those uids.
func KillUIDs(lo, hi int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if killUID(pid, lo, hi) {
			killed++
		}
	}
	return killed
}

// killUID kills pid if it runs as a uid in [lo, hi). The pidfd is opened
// before the uid is read so that a pid reused in between is never
// signalled: the signal goes to the process the fd names, and fails if
// that one has gone.
func killUID(pid, lo, hi int) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	uid, zombie, threads := -1, false, 0
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		f := bytes.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch string(k) {
		case "State":
			zombie = f[0][0] == 'Z' || f[0][0] == 'X'
		case "Uid":
			uid, _ = strconv.Atoi(string(f[0]))
		case "Threads":
			threads, _ = strconv.Atoi(string(f[0]))
		}
	}
	// A zombie is dead already unless it is a group leader that exited on
	// its own while other threads of its process still run.
	if uid < lo || uid >= hi || zombie && threads <= 1 {
		return false
	}
	return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}
