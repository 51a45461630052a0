#!/usr/bin/env bash
# Runs the NUMA guest tests (tests/numa_guest.rs; with NODEREP_HWLOC=1 also
# built with the hwloc feature, plus the library's hwloc topology tests and
# lstopo if installed) inside a real Linux kernel on an emulated NUMA
# machine, so that node discovery, pinning and page placement are the
# kernel's, not a simulation's.
#
#   scripts/numa-vm.sh 2            # 2 nodes x 2 CPUs (2 sockets)
#   scripts/numa-vm.sh 4            # 4 nodes x 1 CPU, distances 20/30/40
#   scripts/numa-vm.sh memoryless   # 3 CPU nodes, one of them without
#                                   # memory, plus a memory-only node
#
# Needs qemu-system-x86_64, cpio, gzip and apt-get (Debian's kernel package
# is downloaded once and cached under target/numa-vm/). The guest runs with
# TCG (no KVM). Exits 0 when the guest tests all passed, 1 when they failed
# (or the guest did not report), 2 on bad usage, 77 when this machine
# cannot run a guest (no qemu, cpio or kernel package): scripts/test.sh
# then says it skipped.
# Environment: NODEREP_VM_KERNEL=linux-image-6.1.0-N-amd64 picks the kernel
# package; NODEREP_VM_TIMEOUT (seconds, default 300) bounds one guest run.
set -euo pipefail
cd "$(dirname "$0")/.."

layout="${1:-}"
die() { echo "numa-vm: $*" >&2; exit 2; }
cannot() { echo "numa-vm: cannot run a guest here: $*" >&2; exit 77; }

# ---------------------------------------------------------------- topology
# QEMU_NUMA: the machine; EXPECT: what the guest must find (read by
# tests/numa_guest.rs): "node N cpus LIST|- mem yes|no" and
# "distance A B VALUE" lines.
declare -a QEMU_NUMA
case "$layout" in
  2)
    SMP="4,sockets=2,cores=2,threads=1"; MEM=1G
    QEMU_NUMA=(
      -object memory-backend-ram,id=m0,size=512M -object memory-backend-ram,id=m1,size=512M
      -numa node,nodeid=0,memdev=m0 -numa node,nodeid=1,memdev=m1
      -numa cpu,node-id=0,socket-id=0 -numa cpu,node-id=1,socket-id=1
      -numa dist,src=0,dst=1,val=21
    )
    EXPECT="node 0 cpus 0-1 mem yes
node 1 cpus 2-3 mem yes
distance 0 1 21"
    ;;
  4)
    SMP="4,sockets=4,cores=1,threads=1"; MEM=1G
    QEMU_NUMA=()
    EXPECT=""
    for n in 0 1 2 3; do
      QEMU_NUMA+=(-object "memory-backend-ram,id=m$n,size=256M" -numa "node,nodeid=$n,memdev=m$n"
        -numa "cpu,node-id=$n,socket-id=$n")
      EXPECT+="node $n cpus $n mem yes"$'\n'
    done
    # A chain: 0 - 1 - 2 - 3, ten more per hop.
    for a in 0 1 2 3; do
      for b in 0 1 2 3; do
        if [ "$a" -lt "$b" ]; then
          d=$((10 + 10 * (b - a)))
          QEMU_NUMA+=(-numa "dist,src=$a,dst=$b,val=$d")
          EXPECT+="distance $a $b $d"$'\n'
        fi
      done
    done
    ;;
  memoryless)
    # node 0: CPUs 0-1 and memory; node 1: CPU 2 and memory; node 2: CPU 3
    # and no memory (nearest memory: node 1); node 3: memory, no CPU.
    SMP="4,sockets=4,cores=1,threads=1"; MEM=1G
    QEMU_NUMA=(
      -object memory-backend-ram,id=m0,size=512M -object memory-backend-ram,id=m1,size=256M
      -object memory-backend-ram,id=m3,size=256M
      -numa node,nodeid=0,memdev=m0 -numa node,nodeid=1,memdev=m1
      -numa node,nodeid=2 -numa node,nodeid=3,memdev=m3
      -numa cpu,node-id=0,socket-id=0 -numa cpu,node-id=0,socket-id=1
      -numa cpu,node-id=1,socket-id=2 -numa cpu,node-id=2,socket-id=3
      -numa dist,src=0,dst=1,val=20 -numa dist,src=0,dst=2,val=30 -numa dist,src=0,dst=3,val=25
      -numa dist,src=1,dst=2,val=16 -numa dist,src=1,dst=3,val=25 -numa dist,src=2,dst=3,val=40
    )
    EXPECT="node 0 cpus 0-1 mem yes
node 1 cpus 2 mem yes
node 2 cpus 3 mem no
node 3 cpus - mem yes
distance 0 1 20
distance 0 2 30
distance 0 3 25
distance 1 2 16
distance 1 3 25
distance 2 3 40"
    ;;
  *) die "usage: scripts/numa-vm.sh 2|4|memoryless (the emulated NUMA layout)" ;;
esac

for tool in qemu-system-x86_64 cpio gzip; do
  command -v "$tool" >/dev/null || cannot "$tool is not installed (Debian: apt-get install qemu-system-x86 cpio)"
done

cache=target/numa-vm
mkdir -p "$cache"

# ------------------------------------------------------------------ kernel
kernel_pkg="${NODEREP_VM_KERNEL:-}"
if [ -z "$kernel_pkg" ]; then
  # A kernel cached by an earlier run.
  for cached in "$cache"/boot/vmlinuz-*; do
    [ -f "$cached" ] && kernel_pkg="linux-image-${cached##*/vmlinuz-}"
  done
fi
if [ -z "$kernel_pkg" ]; then
  command -v apt-cache >/dev/null || cannot "no cached kernel in $cache/boot and no apt-cache to find one"
  # The current Debian kernel; linux-image-amd64 itself is not installed
  # (it would pull systemd and initramfs-tools).
  kernel_pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
  [ -n "$kernel_pkg" ] || cannot "apt-cache does not know linux-image-amd64; run apt-get update, or set NODEREP_VM_KERNEL"
fi
vmlinuz="$cache/boot/vmlinuz-${kernel_pkg#linux-image-}"
if [ ! -f "$vmlinuz" ]; then
  echo "numa-vm: downloading $kernel_pkg into $cache"
  (cd "$cache" && rm -f "${kernel_pkg}"_*.deb && apt-get download -q "$kernel_pkg" >/dev/null 2>&1) \
    || cannot "apt-get download $kernel_pkg failed (is the package list current? apt-get update)"
  dpkg-deb --fsys-tarfile "$cache/${kernel_pkg}"_*.deb | tar -x -C "$cache" "./boot/vmlinuz-${kernel_pkg#linux-image-}"
  rm -f "$cache/${kernel_pkg}"_*.deb
fi

# ------------------------------------------------------------ test programs
# Ordinary (dynamically linked) test binaries, so that the guest reuses what
# `cargo test` already built; their shared libraries go into the initramfs.
test_exe() { # cargo args... -> path of the one test executable built
  cargo test --no-run --message-format=json "$@" 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | tail -1
}
guest_test=$(test_exe --test numa_guest)
[ -x "$guest_test" ] || die "cargo could not build the numa_guest test (run: cargo test --no-run --test numa_guest)"
declare -a programs=("$guest_test")
commands="/bin/numa_guest --test-threads=1 --nocapture"
if [ "${NODEREP_HWLOC:-0}" = "1" ]; then
  hwloc_test=$(test_exe --lib --features hwloc)
  [ -x "$hwloc_test" ] || die "cargo could not build the library tests with the hwloc feature"
  # The guest tests again with detection through hwloc, and the library's
  # hwloc-versus-sysfs test.
  guest_hwloc=$(test_exe --test numa_guest --features hwloc)
  [ -x "$guest_hwloc" ] || die "cargo could not build the numa_guest test with the hwloc feature"
  programs+=("$guest_hwloc" "$hwloc_test")
  commands+=$'\n'"/bin/$(basename "$guest_hwloc") --test-threads=1 --nocapture"
  commands+=$'\n'"/bin/$(basename "$hwloc_test") --test-threads=1 topology::"
  if command -v lstopo-no-graphics >/dev/null; then
    programs+=("$(command -v lstopo-no-graphics)")
    commands+=$'\n'"/bin/lstopo-no-graphics --of console --no-io"
  fi
fi

root="$cache/root-$layout"
rm -rf "$root"
mkdir -p "$root/bin" "$root/guest" "$root/proc" "$root/sys" "$root/dev" "$root/tmp"
rustc --edition 2021 -O -C target-feature=+crt-static scripts/numa-vm/init.rs -o "$root/init"
for p in "${programs[@]}"; do
  name=$(basename "$p")
  [ "$p" = "$guest_test" ] && name=numa_guest
  cp "$p" "$root/bin/$name"
  strip --strip-debug "$root/bin/$name" 2>/dev/null || true
  # Shared libraries (and the loader) at the paths the binary asks for.
  ldd "$p" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] || cp -L --parents "$lib" "$root/"
  done
done
printf '%s\n' "$commands" >"$root/guest/commands"
printf '%s\n' "$EXPECT" >"$root/guest/expect"
initrd="$cache/initrd-$layout.cpio.gz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd"

# ------------------------------------------------------------------- guest
log="$cache/guest-$layout.log"
echo "numa-vm: booting $kernel_pkg, layout $layout (-smp $SMP -m $MEM), initramfs $(du -h "$initrd" | cut -f1)"
start=$(date +%s)
set +e
timeout "${NODEREP_VM_TIMEOUT:-300}" qemu-system-x86_64 \
  -accel tcg -machine q35 -smp "$SMP" -m "$MEM" "${QEMU_NUMA[@]}" \
  -kernel "$vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 numa_balancing=disable NODEREP_NUMA_GUEST=/guest/expect" \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  -display none -monitor none -serial stdio -no-reboot </dev/null | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "numa-vm: layout $layout: guest ran $(($(date +%s) - start)) s, qemu status $status"
# isa-debug-exit: qemu exits with (code << 1) | 1, so 1 = passed, 3 = failed.
if [ "$status" = 1 ] && grep -q "^NODEREP-GUEST-RESULT: ok" "$log"; then
  echo "numa-vm: layout $layout: guest tests passed"
  exit 0
fi
if [ "$status" = 3 ]; then
  echo "numa-vm: layout $layout: guest tests FAILED (log: $log)" >&2
elif [ "$status" = 124 ]; then
  echo "numa-vm: layout $layout: the guest did not finish within ${NODEREP_VM_TIMEOUT:-300} s (log: $log)" >&2
else
  echo "numa-vm: layout $layout: the guest stopped without reporting (qemu status $status; log: $log)" >&2
fi
exit 1
