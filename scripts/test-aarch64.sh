#!/usr/bin/env bash
# cai-model's tests for aarch64 (the Lambda arm64 target), cross-compiled and run under
# qemu-user on an x86-64 machine.
#
#   scripts/test-aarch64.sh [extra cargo test args, e.g. a test name filter]
#
# Needs: rustup target aarch64-unknown-linux-gnu, qemu-user (qemu-aarch64) and
# gcc-aarch64-linux-gnu (the linker and /usr/aarch64-linux-gnu for qemu's -L):
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install -y qemu-user gcc-aarch64-linux-gnu
# There are no NEON kernels yet: on aarch64 the dispatch picks the scalar tier, so this
# checks that the crate builds for arm64 and that the scalar kernels (f32, int8, bf16) pass
# there. Measured 2026-11-25 on 2 shared x86 vCPUs: `scripts/test-aarch64.sh --lib` took
# 7 min cold (build) and 15 s of tests (16 passed); the full-model integration tests are
# much slower under qemu. Not in CI for that reason.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
cd "$ROOT"
exec cargo test -p cai-model --target aarch64-unknown-linux-gnu "$@"
