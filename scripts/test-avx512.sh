#!/usr/bin/env bash
# cai-model's lib tests on an emulated AVX-512 CPU: this machine (Zen 3) has no AVX-512 and
# QEMU's TCG cannot run it, so the static (musl) test binary is run as /init's child in a
# Linux guest booted in Bochs, whose CPU models emulate EVEX/AVX-512.
#
#   scripts/test-avx512.sh [test binary args, e.g. a name filter: kernels::avx512 --exact ...]
#   scripts/test-avx512.sh --probe       # feature probe + a few AVX-512 instructions
#   scripts/test-avx512.sh --exe FILE [args]   # any static x86-64 binary instead
#
# Prints the guest program's output and exits with its exit status (125: the guest never
# reported one; the serial log is then shown). Arguments go through the kernel command
# line, so they may not contain spaces or quotes; leading CAI_NAME=value arguments are set
# in the program's environment (e.g. CAI_PARITY_DIR=... for the parity test's fixtures,
# whose files CAI_AVX512_FILES must list).
# Env: CAI_AVX512_CPU (Bochs model, default corei7_icelake_u), CAI_AVX512_PROFILE (release,
# the default, or dev), CAI_AVX512_TIMEOUT (seconds, default 3600), CAI_AVX512_MEGS
# (guest RAM, default 1024), CAI_AVX512_KEEP=1 (keep the work dir and print its path),
# CAI_AVX512_FILES (space-separated files the program reads by absolute path, copied to the
# same paths in the guest; e.g. tests/fixtures/parity_formula.json for the parity test).
#
# Needs: Debian's bochs + bochsbios + vgabios (2.7, built with EVEX and its debugger) or
# our Bochs 3.0 (see below; it still takes vgabios's VGA BIOS),
# rustup target x86_64-unknown-linux-musl (added if missing), and syslinux, mtools,
# dosfstools, cpio (apt-installed if missing, as root). The guest kernel is Debian's
# linux-image-*-cloud-amd64 (apt-get download, cached in ~/.cache/cai-avx512); /init is
# scripts/avx512/init.rs.
# CPU models (Bochs 2.7 has no AVX512_BF16, AVX-VNNI or AVX512_FP16 in any model):
#   corei7_icelake_u  AVX-512 F/CD/BW/DQ/VL/VNNI/IFMA/VBMI/VBMI2/BITALG/VPOPCNTDQ, GFNI,
#                     VAES, VPCLMULQDQ (the default);
#   corei7_skylake_x  AVX-512 F/CD/BW/DQ/VL only (use it to check the no-VNNI path);
#   sapphire_rapids   icelake's AVX-512 plus AVX512_BF16, AVX512_FP16, AMX and AVX-VNNI;
#   arrow_lake        AVX2 with AVX-VNNI (VEX vpdpwssd), no AVX-512.
# The last two need Bochs 3.0, which scripts/avx512/build-bochs.sh builds from Debian trixie's
# source (once, about 2 minutes, cached) and this script then uses for every model
# (CAI_AVX512_BOCHS=debian keeps Debian's 2.7 for the older models).
# Bochs 2.7 bugs worked around on the kernel command line: it reports the standard-format
# XSAVE size for the compacted format (clearcpuid=xsavec,xsaves, else Linux turns XSAVE and
# so AVX off), gives no CPUID size for PKRU on icelake/tigerlake (clearcpuid=pku,ospke), and
# with FSRM advertised the icelake guest kernel overwrites its own page-fault entry code and
# hangs early in boot (clearcpuid=fsrm; the bug itself was not pinned down, FSRM switches
# the kernel's memmove to short `rep movsb`). tigerlake hung too (not retried with fsrm
# cleared). `--probe` checks overlapping forward `rep movsb/movsq` in user space (musl's
# memcpy uses them): OK. Bochs 3.0's sapphire_rapids has LA57: the guest kernel turns on
# 5-level paging and Bochs's return from SMM then panics ("CR4 consistency check failed":
# check_CR4 refuses a CR4.LA57 that differs from the current one), hence no5lvl. Bochs 3.0
# also writes the low source into both halves of a 512-bit vcvtne2ps2bf16 (the probe shows
# it; cai uses vcvtneps2bf16 instead).
# Measured 2026-11-26 on 2 shared Zen 3 vCPUs (release build; a cai-model rebuild for musl
# about 40 s, cold about 1 min): boot to /init plus power-off 25-27 s; `--probe` 29 s in all;
# `kernels::avx512` (4 VNNI tests, 10 s of guest time) 277 s in Bochs; `kernels::x86` (11
# tests) 109 s. Bochs runs about 4-6 M guest instructions/s here (guest clock: ips=100M;
# Debian builds it with the debugger, without handler chaining), so the whole lib suite or
# the integration tests would take a long time. With our Bochs 3.0 (no debugger, handler
# chaining; measured the same day, often beside another job): `--probe` 10-12 s in all;
# sapphire_rapids `bf16` (5 tests) 153 s, `kernels::avx512` (11) 293 s, `kernels::` (35)
# 397-419 s; arrow_lake `avxvnni` (2) 49-62 s; the parity test's `pt_reduced` on model.pt
# (CAI_AVX512_MEGS=2048, CAI_AVX512_FILES with 1.pt, model.pt, expected.pt) 298 s. Not in
# CI for that reason, and because Bochs's AVX-512 is only as right as Bochs (so check any
# failure against the scalar reference before blaming a kernel).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CPU="${CAI_AVX512_CPU:-corei7_icelake_u}"
PROFILE="${CAI_AVX512_PROFILE:-release}"
TIMEOUT="${CAI_AVX512_TIMEOUT:-3600}"
MEGS="${CAI_AVX512_MEGS:-1024}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cai-avx512"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target-musl}"
TARGET=x86_64-unknown-linux-musl
KERNEL_ARGS="console=ttyS0,115200 quiet panic=-1 mitigations=off no5lvl clearcpuid=321,323,515,516,580"
say() { echo "test-avx512.sh: $*" >&2; }

mode=cargo exe=""
case "${1:-}" in
--probe) mode=probe; shift ;;
--exe) [ $# -ge 2 ] || { say "--exe needs a file"; exit 2; }; mode=exe exe="$(realpath "$2")"; shift 2 ;;
esac
for a in "$@"; do
    case "$a" in *[[:space:]\"\']*) say "argument '$a' has a space or quote; not supported"; exit 2 ;; esac
done

# Bochs 3.0 (ours, built without GUI or debugger) for the models 2.7 lacks, and for every
# model once it is built unless CAI_AVX512_BOCHS=debian; else Debian's bochs-bin (2.7).
bochs3="${XDG_CACHE_HOME:-$HOME/.cache}/cai-avx512/bochs-3.0/bochs"
case "$CPU" in
sapphire_rapids | arrow_lake) [ -x "$bochs3" ] || bochs3="$("$ROOT/scripts/avx512/build-bochs.sh")" ;;
esac
ours=0
if [ "${CAI_AVX512_BOCHS:-}" != debian ] && [ -x "$bochs3" ]; then ours=1; fi
need=()
# The VGA BIOS from Debian's vgabios package (Debian's bochs only links to it).
vgabios=/usr/share/vgabios/vgabios.bin
[ -f "$vgabios" ] || need+=(vgabios)
[ $ours = 1 ] || command -v bochs-bin >/dev/null || need+=(bochs bochsbios)
command -v syslinux >/dev/null || need+=(syslinux syslinux-common)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.fat >/dev/null || need+=(dosfstools)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The guest's /init and test binary are static musl builds.
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    say "adding the Rust target $TARGET (rustup)"
    rustup target add "$TARGET" >/dev/null
fi

# Kernel: Debian's cloud kernel (8250 console, initramfs and devtmpfs built in), cached.
mkdir -p "$CACHE"
vmlinuz="$(ls "$CACHE"/vmlinuz-* 2>/dev/null | head -n1 || true)"
if [ -z "$vmlinuz" ]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
    [ -n "$pkg" ] || { say "cannot find the linux-image-*-cloud-amd64 package (apt-get update?)"; exit 1; }
    say "downloading $pkg"
    dl="$(mktemp -d)"
    (cd "$dl" && apt-get download -q "$pkg" >/dev/null 2>&1) || { rm -rf "$dl"; say "apt-get download $pkg failed"; exit 1; }
    dpkg -x "$dl"/*.deb "$dl/x"
    cp "$dl"/x/boot/vmlinuz-* "$CACHE/"
    rm -rf "$dl"
    vmlinuz="$(ls "$CACHE"/vmlinuz-* | head -n1)"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cai-avx512.XXXXXX")"
bochs_pid=""
cleanup() {
    [ -z "$bochs_pid" ] || kill "$bochs_pid" 2>/dev/null || true
    if [ "${CAI_AVX512_KEEP:-0}" = 1 ]; then say "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

rustc_static() { rustc --edition 2021 --target "$TARGET" -C opt-level=2 -C strip=symbols -o "$2" "$1"; }
mkdir -p "$work/root/dev" "$work/root/tmp" "$work/root/proc" "$work/root/sys"
rustc_static "$ROOT/scripts/avx512/init.rs" "$work/root/init"
case "$mode" in
probe) rustc_static "$ROOT/scripts/avx512/probe.rs" "$work/root/test" ;;
exe) cp "$exe" "$work/root/test" ;;
cargo)
    profile_flag=(--release)
    [ "$PROFILE" = release ] || profile_flag=(--profile "$PROFILE")
    (cd "$ROOT" && cargo test --no-run "${profile_flag[@]}" --target "$TARGET" -p cai-model --lib \
        --message-format=json-render-diagnostics >"$work/build.json")
    exe="$(sed -n 's/.*"target":{[^}]*"name":"cai_model"[^}]*"test":true.*"executable":"\([^"]*\)".*/\1/p' \
        "$work/build.json" | tail -n1)"
    [ -n "$exe" ] || { say "no test executable in cargo's output"; exit 1; }
    say "test binary: $exe"
    cp "$exe" "$work/root/test"
    ;;
esac
# Files the guest program reads by absolute path (e.g. an integration test's fixtures, whose
# paths are compiled in), copied to the same paths in the initramfs.
for f in ${CAI_AVX512_FILES:-}; do
    [ -f "$f" ] || { say "CAI_AVX512_FILES: no file $f"; exit 2; }
    f="$(realpath "$f")"
    mkdir -p "$work/root$(dirname "$f")"
    cp "$f" "$work/root$f"
done
file -L "$work/root/test" 2>/dev/null | grep -q 'statically linked\|static-pie' ||
    say "warning: $work/root/test does not look statically linked; it will not run in the guest"
strip "$work/root/test" 2>/dev/null || true

# initramfs (newc cpio; /dev/console is needed for init's stdout).
mknod "$work/root/dev/console" c 5 1
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")

# Boot disk: a FAT16 "superfloppy" with syslinux. Size: a whole number of 16x63 cylinders.
cat >"$work/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz $KERNEL_ARGS -- CAI-ARGS $*
EOF
bytes=$(($(stat -c%s "$vmlinuz") + $(stat -c%s "$work/initrd.gz") + 8 * 1024 * 1024))
cyl=$((bytes / 516096 + 1))
truncate -s $((cyl * 516096)) "$work/disk.img"
mkfs.fat -F 16 -g 16/63 "$work/disk.img" >/dev/null
mcopy -i "$work/disk.img" "$vmlinuz" ::/vmlinuz
mcopy -i "$work/disk.img" "$work/initrd.gz" "$work/syslinux.cfg" ::/
syslinux --install "$work/disk.img"

# Bochs: Debian's build has no "nogui" display, so rfb with no wait for a VNC client, and it
# has the debugger built in, so -rc feeds it "c"; ours has neither. The guest's ACPI
# power-off ends Bochs.
if [ $ours = 1 ]; then
    bochs_cmd=("$bochs3" -q -f bochsrc) display='nogui' bios="$(dirname "$bochs3")/BIOS-bochs-latest"
    devices=''
else
    bochs_cmd=(bochs-bin -q -f bochsrc -rc dbgcmds) display='rfb, options="timeout=0"'
    bios=/usr/share/bochs/BIOS-bochs-latest
    # Debian's build has every device as a plugin: leave out what the guest does not need.
    devices='sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
speaker: enabled=0
plugin_ctrl: speaker=0, unmapped=0, biosdev=0, extfpuirq=0, parallel=0, gameport=0, e1000=0, ne2k=0, sb16=0, es1370=0, usb_uhci=0, usb_ohci=0, usb_ehci=0, usb_xhci=0, voodoo=0'
fi
cat >"$work/bochsrc" <<EOF
config_interface: textconfig
display_library: $display
$devices
megs: $MEGS
cpu: model=$CPU, count=1, ips=100000000, reset_on_triple_fault=1, ignore_bad_msrs=1
romimage: file=$bios
vgaromimage: file=$vgabios
ata0-master: type=disk, path="$work/disk.img", mode=flat, cylinders=$cyl, heads=16, spt=63
boot: disk
com1: enabled=1, mode=file, dev="$work/serial.log"
log: "$work/bochs.log"
panic: action=fatal
error: action=ignore
info: action=ignore
clock: sync=none, time0=utc
EOF
echo c >"$work/dbgcmds"
: >"$work/serial.log"
start=$(date +%s)
say "booting $CPU in Bochs $([ $ours = 1 ] && echo 3.0 || echo 2.7) (args: $*)"
(cd "$work" && exec timeout "$TIMEOUT" "${bochs_cmd[@]}" </dev/null >"$work/bochs.out" 2>&1) &
bochs_pid=$!
# Stream the guest program's output (the lines from init's START line on) while it runs; stop
# Bochs if the kernel panics (it would reboot and loop).
printed=0 started=0
while :; do
    alive=1
    kill -0 "$bochs_pid" 2>/dev/null || alive=0
    total=$(wc -l <"$work/serial.log")
    if [ "$total" -gt "$printed" ]; then
        chunk="$(sed -n "$((printed + 1)),${total}p" "$work/serial.log" | tr -d '\r')"
        printed=$total
        if [ $started = 0 ] && grep -q '^CAI-AVX512-START' <<<"$chunk"; then
            started=1
            chunk="$(sed -n '/^CAI-AVX512-START/,$p' <<<"$chunk")"
            say "guest up after $(($(date +%s) - start)) s"
        fi
        [ $started = 0 ] || printf '%s\n' "$chunk" | grep -v '^CAI-AVX512-\|^\[ *[0-9.]*\] \(ACPI: PM\|reboot\):' || true
        if grep -q 'Kernel panic' <<<"$chunk"; then kill "$bochs_pid" 2>/dev/null || true; fi
    fi
    [ $alive = 1 ] || break
    sleep 1
done
wait "$bochs_pid" 2>/dev/null || true
bochs_pid=""
elapsed=$(($(date +%s) - start))
code="$(tr -d '\r' <"$work/serial.log" | sed -n 's/^CAI-AVX512-EXIT \([0-9]*\)$/\1/p' | tail -n1)"
if [ -z "$code" ]; then
    say "the guest reported no exit status after $elapsed s (timeout ${TIMEOUT}s?); serial log tail:"
    tail -n 40 "$work/serial.log" >&2
    grep -E '\]p\[|\]e\[' "$work/bochs.log" | grep -v RDMSR | tail -n 5 >&2 || true
    exit 125
fi
say "guest exit status $code, $elapsed s in Bochs ($CPU)"
exit "$code"
