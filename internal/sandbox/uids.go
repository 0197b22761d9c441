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
// sandboxes run as those uids; zombies are dead already and skipped.
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
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		uid, zombie := -1, false
		for _, line := range bytes.Split(b, []byte{'\n'}) {
			if v, ok := bytes.CutPrefix(line, []byte("State:")); ok {
				v = bytes.TrimSpace(v)
				zombie = len(v) > 0 && (v[0] == 'Z' || v[0] == 'X')
			}
			if v, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
				if f := bytes.Fields(v); len(f) > 0 {
					uid, _ = strconv.Atoi(string(f[0]))
				}
				break
			}
		}
		if zombie || uid < lo || uid >= hi {
			continue
		}
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}
