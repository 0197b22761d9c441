#!/bin/bash
# Runs as pid 1 in the guest that test/cgroupv2/run.sh boots: the host's
# files read-only, fresh writable tmpfs where the tests write, and cgroup v2
# as the only cgroup filesystem.
work=$1 run=$2 pkgs=$3
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for d in /tmp /run /var/lib/spry /var/tmp /root; do mount -t tmpfs -o mode=755 tmpfs $d; done
chmod 1777 /tmp /var/tmp
mkdir -p /run/netns
modprobe -a tun veth dummy nf_tables
ip link set lo up
# A host has an address besides loopback; without one the kernel has no
# source address for the test hosts that the network tests create.
ip link add eth0 type dummy && ip addr add 192.0.2.1/24 dev eth0 && ip link set eth0 up
echo "cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "+cpu +memory +pids +io +cpuset" > /sys/fs/cgroup/cgroup.subtree_control
echo "enabled: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
export PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export SPRY_BIN=$(dirname "$0")/../../bin/spry
cd "$(dirname "$0")/../.."
code=0
for pkg in ${pkgs//,/ }; do
	t=${pkg//\//_}
	echo "=== $pkg"
	(cd "$pkg" && "$work/$t.test" -test.run "$run" -test.timeout 30m -test.v >/tmp/$t.log 2>&1); c=$?
	grep -E '^(=== RUN|\s*--- |PASS|FAIL|ok|panic)|_test.go:' /tmp/$t.log
	if [ $c -ne 0 ]; then
		code=$c
		echo "--- last lines of the $pkg log"
		tail -n 300 /tmp/$t.log
	fi
done
echo "SPRY-CGROUPV2-EXIT=$code"
busybox poweroff -f
