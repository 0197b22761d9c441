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
// it. A process that has left the group is decided once it is reaped
// (its pid freed; a zombie waits): with the processes of the group that
// had left it since the last poll, a chain of them each reaped by the
// next perhaps, it is counted from its last reading unless the live
// process of the group they lead to (their reaper, then) has grown by
// as much since its own last reading, read again once they were reaped.
// So what was reaped inside the group is counted once, at any depth;
// what was reaped outside (by init or a subreaper after its parent died,
// or by the server, for the group's first process) is counted from its
// last reading, except as much as that live process wrote since, which
// may hide it. What a process wrote after its last reading and before it
// was reaped outside the group is missed; npm runs as one process, whose
// threads are all counted.
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
// in all since the meter was made. exited are processes of the group
// that have exited and are not reaped, which cgroup.procs no longer
// lists: the group's first process, held unreaped by BuildCmd.Wait.
func (m *writeMeter) poll(exited ...int) (uint64, error) {
	b, err := os.ReadFile(m.procs)
	if err != nil {
		return 0, err
	}
	now := make(map[procID]procWrites, len(m.last))
	live := make(map[int]procID, len(m.last))
	pids := strings.Fields(string(b))
	for _, pid := range exited {
		pids = append(pids, strconv.Itoa(pid))
	}
	for _, f := range pids {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if _, ok := live[pid]; ok {
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
		live[pid] = id
	}
	// One reaped while the group was read, perhaps after its reaper was
	// read, has left it, as read.
	for id, w := range now {
		if reaped(id) {
			delete(now, id)
			delete(live, id.pid)
			m.last[id] = w
		}
	}
	// Those that left the group. One not yet reaped (a zombie, or still
	// exiting) is read again, as if live: a zombie's reading is final,
	// its reaped children's writes included, and its reaper does not
	// hold them yet. One that cannot be read is kept for a later poll,
	// at its last reading.
	left := map[int]procID{}
	held := map[int]bool{}
	for id, w := range m.last {
		if _, ok := now[id]; ok {
			continue
		}
		if _, ok := live[id.pid]; !ok {
			if nid, nw, err := readProcWrites(id.pid); err == nil && nid == id {
				now[id] = nw
				live[id.pid] = id
				continue
			}
			if !reaped(id) {
				now[id] = w
				held[id.pid] = true
				continue
			}
		}
		left[id.pid] = id
	}
	// A reaped one's parents that left too, each reaped by the next
	// perhaps, lead to a live process of the group, or out of it.
	owed := map[procID]uint64{} // per live process, the lasts it may hold
	for _, id := range left {
		w := m.last[id]
		p, outside := w.ppid, true
		for range len(left) + 1 {
			if _, ok := live[p]; ok || held[p] {
				outside = false
				break
			}
			up, ok := left[p]
			if !ok {
				break
			}
			p = m.last[up].ppid
		}
		switch g, ok := live[p]; {
		case outside:
			m.gone += w.wchar
		case ok:
			owed[g] += w.wchar
		default:
			// Below a zombie, which may hold its writes: decided with
			// it, once it is reaped.
			now[id] = w
		}
	}
	for g, n := range owed {
		// Read again, now that those it may have reaped were seen
		// reaped: it holds their writes by now if it did.
		grown := uint64(0)
		if before, ok := m.last[g]; ok {
			if id, w, err := readProcWrites(g.pid); err == nil && id == g {
				now[g] = w
			}
			grown = now[g].wchar - min(now[g].wchar, before.wchar)
		}
		m.gone += n - min(n, grown)
	}
	m.last = now
	sum := m.gone
	for _, w := range now {
		sum += w.wchar
	}
	return sum, nil
}

// reaped reports whether the process id has been reaped: its pid is free,
// or another process's.
func reaped(id procID) bool {
	now, _, err := readStat(id.pid)
	return err != nil || now != id
}

// readProcWrites reads a process's start time and parent (from
// /proc/PID/stat) and its wchar.
func readProcWrites(pid int) (procID, procWrites, error) {
	id, ppid, err := readStat(pid)
	if err != nil {
		return procID{}, procWrites{}, err
	}
	dir := "/proc/" + strconv.Itoa(pid)
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
			return id, procWrites{wchar: n, ppid: ppid}, nil
		}
	}
	return procID{}, procWrites{}, fmt.Errorf("%s/io: no wchar", dir)
}

// readStat reads a process's start time and parent from /proc/PID/stat.
func readStat(pid int) (procID, int, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return procID{}, 0, err
	}
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields that follow start after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procID{}, 0, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 of proc(5) (state), so ppid (4) is f[1] and
	// starttime (22) f[19].
	if len(f) < 20 {
		return procID{}, 0, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procID{}, 0, fmt.Errorf("%s/stat: %q", dir, stat)
	}
	return procID{pid, start}, ppid, nil
}
