package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// writeMeter adds up the bytes a cgroup's processes have passed to
// write(2) and its kin: each process's wchar (/proc/PID/io). wchar, not
// write_bytes, because write_bytes counts only what reaches a block
// device: nothing on tmpfs, and dirty pages not yet written back.
//
// A process's wchar holds its own threads', the exited ones' included,
// and the kernel adds a child's to its parent's when the parent reaps
// it. So a process that has left the group is counted from its last
// reading only when no process of the group is its parent (it was reaped
// outside: by init or a subreaper after its parent died, or by the
// server, for the group's first process); otherwise its parent carries
// it and it would be counted twice. What a process wrote after its last
// reading and before it was reaped outside the group is missed; npm
// runs as one process, whose threads are all counted.
type writeMeter struct {
	procs string // the group's cgroup.procs
	last  map[procID]procWrites
	gone  uint64 // what processes reaped outside the group wrote
}

// procID tells a process from a later one given the same pid.
type procID struct {
	pid   int
	start uint64 // clock ticks after boot
}

type procWrites struct {
	wchar uint64
	ppid  int
}

func newWriteMeter(procs string) *writeMeter {
	return &writeMeter{procs: procs, last: map[procID]procWrites{}}
}

// poll reads the group's processes and returns what they have written
// in all since the meter was made.
func (m *writeMeter) poll() (uint64, error) {
	b, err := os.ReadFile(m.procs)
	if err != nil {
		return 0, err
	}
	now := make(map[procID]procWrites, len(m.last))
	live := make(map[int]bool, len(m.last))
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		id, w, err := readProcWrites(pid)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue // gone since the list was read: a vanished one below
		}
		if err != nil {
			return 0, err
		}
		now[id] = w
		live[pid] = true
	}
	for id, w := range m.last {
		if _, ok := now[id]; !ok && !live[w.ppid] {
			m.gone += w.wchar
		}
	}
	m.last = now
	sum := m.gone
	for _, w := range now {
		sum += w.wchar
	}
	return sum, nil
}

// readProcWrites reads a process's start time and parent (from
// /proc/PID/stat) and its wchar.
func readProcWrites(pid int) (procID, procWrites, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return procID{}, procWrites{}, err
	}
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procID{}, procWrites{}, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 of proc(5) (state), so ppid (4) is f[1] and
	// starttime (22) f[19].
	if len(f) < 20 {
		return procID{}, procWrites{}, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procID{}, procWrites{}, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	io, err := os.ReadFile(dir + "/io")
	if err != nil {
		return procID{}, procWrites{}, err
	}
	for _, line := range strings.Split(string(io), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return procID{}, procWrites{}, fmt.Errorf("%s/io: %q", dir, line)
			}
			return procID{pid, start}, procWrites{wchar: n, ppid: ppid}, nil
		}
	}
	return procID{}, procWrites{}, fmt.Errorf("%s/io: no wchar", dir)
}
