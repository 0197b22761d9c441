package sandbox

import (
	"fmt"
	"os"
	goruntime "runtime"
	"strings"
	"sync"
)

// procViews are the sandbox's own versions of /proc's system-wide files
// that a runtime's APIs read: Node's os module (libuv) reads the host's
// load, memory, uptime and CPU times from them, which are no function's
// business (another tenant's activity shows in them). Deno refuses those
// calls without the sys permission, which it does not grant. Each is
// bound read-only over the file in the sandbox's /proc. The memory is
// the sandbox's limit, all of it free; the rest reads as a machine just
// started and idle. The formats are the kernel's: libuv aborts on a
// /proc/stat it cannot parse.
func procViews(memoryBytes int64) map[string]string {
	v := map[string]string{
		"loadavg": "0.00 0.00 0.00 1/1 1\n",
		"uptime":  "0.00 0.00\n",
	}
	var stat strings.Builder
	const zeros = " 0 0 0 0 0 0 0 0 0 0\n"
	stat.WriteString("cpu " + zeros)
	for i := range goruntime.NumCPU() {
		fmt.Fprintf(&stat, "cpu%d%s", i, zeros)
	}
	stat.WriteString("intr 0\nctxt 0\nbtime 0\nprocesses 1\nprocs_running 1\nprocs_blocked 0\nsoftirq 0 0 0 0 0 0 0 0 0 0 0\n")
	v["stat"] = stat.String()
	if memoryBytes > 0 {
		kb := memoryBytes >> 10
		v["meminfo"] = fmt.Sprintf("MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n"+
			"Buffers:               0 kB\nCached:                0 kB\nSwapCached:            0 kB\n"+
			"SwapTotal:             0 kB\nSwapFree:              0 kB\n", kb, kb, kb)
	}
	return v
}

// maskedProc are the world-readable files and directories of /proc that
// show the whole host's activity, which no runtime API reads: memory
// and paging (vmstat, zoneinfo, buddyinfo), disks (diskstats,
// partitions, swaps, and fs/: ext4's map of each disk's free blocks,
// which moves with every tenant's writes), interrupts (interrupts,
// softirqs), other processes' file locks (locks), the key counts of
// every user (key-users), pressure stall information (pressure/), the
// number of cgroups of each controller (cgroups: one more for each
// instance any user starts), the host's open files, inodes, dentries,
// AIO contexts, quota operations and terminals (sys/fs/file-nr,
// inode-nr, inode-state, dentry-state, aio-nr, quota/,
// sys/kernel/pty/nr: a login shows there). Read over time, they tell a
// function what its neighbours do (Docker masks several for the same
// reason). Two more say which host it is, not what happens there: the
// kernel's command line (cmdline: the host's boot settings) and the
// boot's id (sys/kernel/random/boot_id, which two functions compare to
// learn they share a machine, the first step of a side channel). A
// function reaches /proc only past its runtime's permissions; then these
// cannot be read (a device node on a nodev mount, or an empty
// directory).
var maskedProc = []string{
	"vmstat", "zoneinfo", "buddyinfo", "diskstats", "partitions", "swaps", "fs", "interrupts", "softirqs", "locks", "key-users", "pressure",
	"cgroups", "sys/fs/file-nr", "sys/fs/inode-nr", "sys/fs/inode-state", "sys/fs/dentry-state", "sys/fs/aio-nr", "sys/fs/quota", "sys/kernel/pty/nr",
	"cmdline", "sys/kernel/random/boot_id",
}

// procMasks are bubblewrap's arguments that mask maskedProc, those the
// host's /proc has (the sandbox's is the same kernel's): /dev/null over
// a file, an empty read-only tmpfs over a directory.
var procMasks = sync.OnceValue(func() []string {
	var args []string
	for _, name := range maskedProc {
		p := "/proc/" + name
		fi, err := os.Stat(p)
		switch {
		case err != nil:
		case fi.IsDir():
			args = append(args, "--tmpfs", p, "--remount-ro", p)
		default:
			args = append(args, "--ro-bind", "/dev/null", p)
		}
	}
	return args
})
