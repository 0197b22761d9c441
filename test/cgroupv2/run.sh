#!/bin/bash
# Runs the sandbox tests on a cgroup v2 (unified) host. This machine kind is
# v1/hybrid and its v1 controllers cannot be moved while the session's own
# processes sit in them, so the tests run in a guest instead: Debian's
# kernel under QEMU, this machine's own files
# shared read-only over 9p, cgroup2 mounted at /sys/fs/cgroup with every
# controller enabled.
#
# Usage: test/cgroupv2/run.sh [RUN-PATTERN [PACKAGE...]]
# e.g.   test/cgroupv2/run.sh . ./internal/backend/local ./e2e
# The default is every test of the packages that start sandboxes.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
run=${1:-.}
shift || true
pkgs=("${@:-./internal/sandbox ./internal/backend/local ./internal/runtime ./e2e}")
pkgs=(${pkgs[*]})

need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
ls /boot/vmlinuz-* >/dev/null 2>&1 || need="$need linux-image-amd64"
[ -x /bin/busybox ] || need="$need busybox-static"
if [ -n "$need" ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi
make -s deps build

# Not under /tmp: the guest mounts a fresh tmpfs there.
mkdir -p bin
work=$(mktemp -d "$repo/bin/cgroupv2.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

# Test binaries built here; the guest only runs them.
list=""
for p in "${pkgs[@]}"; do
	p=${p#./}
	go test -c -o "$work/$(echo "$p" | tr / _).test" "./$p"
	list="$list,$p"
done

vmlinuz=$(ls /boot/vmlinuz-* | sort -V | tail -1)
kver=${vmlinuz#/boot/vmlinuz-}
mkdir -p "$work/initrd/bin" "$work/initrd/mods"
cp /bin/busybox "$work/initrd/bin/"
mods=$(for m in 9p 9pnet_virtio virtio_pci; do modprobe -S "$kver" --show-depends "$m"; done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++')
order=""
for m in $mods; do cp "$m" "$work/initrd/mods/"; order="$order $(basename "$m")"; done
cat > "$work/initrd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /dev /newroot
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $order; do insmod /mods/\$m; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /newroot || { echo "9p mount failed"; poweroff -f; }
umount /proc /dev
exec switch_root /newroot $repo/test/cgroupv2/guest.sh $work '$run' ${list#,}
INIT
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

# Software emulation: this machine has /dev/kvm, but a nested KVM guest
# hangs right after the kernel is decompressed.
accel=(-accel tcg -cpu max)
echo "booting $vmlinuz with ${accel[*]}"
qemu-system-x86_64 "${accel[@]}" -m 8G -smp "$(nproc)" -nographic -no-reboot -nic none \
	-kernel "$vmlinuz" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1 rdinit=/init" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
	| tee "$work/console.log"
code=$(sed -n 's/.*SPRY-CGROUPV2-EXIT=\([0-9]*\).*/\1/p' "$work/console.log" | tail -1)
echo "guest tests exit code: ${code:-none}"
[ "$code" = 0 ]
