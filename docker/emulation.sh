# docker/emulation.sh — sourced by build.sh, smoke.sh and parity.sh: build and run a foreign-
# architecture image (linux/arm64 on an x86-64 machine) through qemu user mode and binfmt_misc.
#
# ensure_emulator ARCH   register qemu-user-static for ARCH with the kernel's binfmt_misc (mount it,
#                        `update-binfmts --enable qemu-aarch64`); needs root. No-op for the host's own
#                        architecture. The entry must carry the F flag (Debian's does): the kernel then
#                        opens the emulator once, so it runs inside a chroot that lacks it.
# emulation_args ARCH    set EMU_VOLUMES (podman build / buildah run -v arguments) and EMU_ENV (buildah
#                        run -e arguments) for ARCH; empty for the host's own architecture.
#
# Why EMU_VOLUMES: qemu 7.2 (Debian 12) shows an emulated process the host's x86 /proc/cpuinfo, and
# onnxruntime's CPU detection crashes on it at import. qemu looks every absolute path up under its
# interpreter prefix first (Debian builds it as /etc/qemu-binfmt/<arch>), so an ARM cpuinfo mounted
# at /etc/qemu-binfmt/aarch64/proc/cpuinfo shadows the real one. It is a mount, never part of the image.
# Why EMU_ENV: qemu's default CPU model ("max") makes numpy raise spurious floating-point warnings;
# QEMU_CPU (default cortex-a72) picks a concrete core.

host_arch() {
  local m=${HOSTTYPE:-$(uname -m)}  # bash's own, so no external command is needed
  case "$m" in x86_64) echo amd64 ;; aarch64 | arm64) echo arm64 ;; *) echo "$m" ;; esac
}

qemu_arch() {
  case "$1" in amd64) echo x86_64 ;; arm64) echo aarch64 ;; *) echo "$1" ;; esac
}

ensure_emulator() {
  local arch=$1 q entry
  [ "$arch" = "$(host_arch)" ] && return 0
  q=$(qemu_arch "$arch")
  entry=/proc/sys/fs/binfmt_misc/qemu-$q
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    echo "+ mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
      echo "emulation: cannot mount binfmt_misc (needs root, and a kernel/sandbox that allows it)" >&2; return 2; }
  fi
  if ! head -n 1 "$entry" 2>/dev/null | grep -qx enabled; then
    command -v "qemu-$q-static" >/dev/null 2>&1 && command -v update-binfmts >/dev/null 2>&1 || {
      echo "emulation: linux/$arch on $(uname -m) needs qemu-$q-static and update-binfmts" \
           "(Debian: apt-get install -y qemu-user-static binfmt-support)" >&2; return 2; }
    echo "+ update-binfmts --enable qemu-$q"
    update-binfmts --enable "qemu-$q" || { echo "emulation: update-binfmts --enable qemu-$q failed" >&2; return 2; }
  fi
  grep -q '^flags:.*F' "$entry" || {
    echo "emulation: $entry lacks the F (fix-binary) flag, so the emulator is not found inside a container;" \
         "use Debian's qemu-user-static (it registers with F)" >&2; return 2; }
}

emulation_args() {
  local arch=$1 dir i
  EMU_VOLUMES=() EMU_ENV=()
  [ "$arch" = "$(host_arch)" ] && return 0
  EMU_ENV=(-e "QEMU_CPU=${QEMU_CPU:-cortex-a72}")
  [ "$arch" = arm64 ] || return 0
  dir=${FACEDISTILL_EMU_DIR:-/var/tmp/facedistill-emu}/aarch64
  mkdir -p "$dir/proc"
  # One entry per host CPU; MIDR of a Cortex-A72 (implementer 0x41, part 0xd08).
  : > "$dir/proc/cpuinfo.tmp"
  for ((i = 0; i < $(getconf _NPROCESSORS_ONLN); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 0\n\n' \
      "$i" >> "$dir/proc/cpuinfo.tmp"
  done
  mv "$dir/proc/cpuinfo.tmp" "$dir/proc/cpuinfo"
  EMU_VOLUMES=(-v "$dir:/etc/qemu-binfmt/aarch64:ro")
}
