#!/usr/bin/env bash
# cai-model's tests for aarch64 (the Lambda arm64 target), cross-compiled and run under
# qemu-user on an x86-64 machine.
#
#   scripts/test-aarch64.sh [extra cargo test args, e.g. a test name filter]
#
# Needs: rustup target aarch64-unknown-linux-gnu, qemu-user (qemu-aarch64),
# gcc-aarch64-linux-gnu (the linker) and libc6-dev-arm64-cross (/usr/aarch64-linux-gnu, also
# for qemu's -L); the script adds the target and, as root, apt-installs the packages when
# they are missing.
# On aarch64 the dispatch picks the NEON tier (kernels/aarch64.rs: f32 and integer
# products), so this checks the NEON kernels against the scalar reference
# (odd shapes, proptests), the scalar kernels themselves, and, without `--lib`, the
# full-model tests on NEON. qemu's default CPU has DotProd, so int8 runs on `sdot`; with
# QEMU_CPU=cortex-a72 (no DotProd) on `smlal` (the lib tests cover both either way).
# qemu says nothing about NEON speed. Set CARGO_TARGET_DIR (e.g.
# /root/.cache/cai-target-arm64) to keep the arm64 build apart from the x86 one.
# Measured 2026-11-25 on 2 shared x86 vCPUs (load 3-4), with `--release`: a cold build
# about 7 min, 1.3 min after a cai-model change; `--lib` 26 s of tests (27 passed; on
# 2026-11-26, with the integer kernel, 33 passed in 15-17 s); `--test '*'` 4.2 min
# (tests/model, 18 passed) and 4.0 min (tests/parity, 5 passed; with CAI_PARITY_DIR set,
# its two PyTorch-fixture tests take 4.9 min more: max |Δ| 3.7e-6; 6.3 min in all on
# 2026-11-26, int16 |Δz| 2.1e-4).
# Not in CI for that reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
say() { echo "test-aarch64.sh: $*" >&2; }
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
# The arm64 C library to link against and for qemu's -L (only recommended by the compiler).
[ -f /usr/aarch64-linux-gnu/lib/crti.o ] || need+=(libc6-dev-arm64-cross)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { say "needs ${need[*]} (apt-get install, as root)"; exit 1; }
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    say "adding the Rust target aarch64-unknown-linux-gnu (rustup)"
    rustup target add aarch64-unknown-linux-gnu >/dev/null
fi
cd "$ROOT"
exec cargo test -p cai-model --target aarch64-unknown-linux-gnu "$@"
