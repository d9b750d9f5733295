#!/usr/bin/env bash
# Build the `cai-rs` Python wheels (crates/cai-py; abi3, CPython >= 3.9) for Linux x86_64 and
# aarch64 with maturin, into OUT (default dist/).
#
#   scripts/build-wheels.sh [OUT] [x86_64|aarch64 ...]       (default: both)
#
# Needs maturin (pip install maturin) and, for aarch64 on an x86-64 machine, the Rust target
# aarch64-unknown-linux-gnu and Debian's gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (the
# linker, and a C compiler for the AWS SDK's aws-lc); the script adds the target and, as root,
# apt-installs the packages when they are missing, as scripts/aws/build.sh does.
# The wheels are built with the workspace's `wheel` profile (Cargo.toml: release with fat LTO,
# one codegen unit, stripped, dependencies optimized for size but the kernels'), which keeps
# the default wheel (ONNX and AWS) under the 15 MB budget; WHEEL_PROFILE overrides it (e.g.
# WHEEL_PROFILE=release: a faster build, an 18.7 MB wheel). Extra maturin flags go in
# MATURIN_ARGS, e.g. MATURIN_ARGS="--no-default-features" for a wheel without the AWS engine
# or ONNX. Prints each wheel's size and checks it against the 15 MB
# budget, and that the aarch64 extension is an aarch64 ELF needing only libraries manylinux
# allows (scripts/check-wheel.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$ROOT/dist}"
shift || true
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}"
say() { echo "build-wheels.sh: $*" >&2; }
command -v maturin >/dev/null || { say "needs maturin (pip install maturin)"; exit 2; }
mkdir -p "$out"
for arch in "${arches[@]}"; do
    target="$arch-unknown-linux-gnu"
    case "$arch" in
    x86_64) ;;
    aarch64)
        need=()
        command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
        [ -f /usr/aarch64-linux-gnu/lib/crti.o ] || need+=(libc6-dev-arm64-cross)
        if [ ${#need[@]} -gt 0 ]; then
            [ "$(id -u)" = 0 ] || { say "needs ${need[*]} (apt-get install, as root)"; exit 2; }
            say "installing ${need[*]}"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "${need[@]}" >/dev/null
        fi
        rustup target list --installed | grep -qx "$target" || rustup target add "$target"
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
        export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
        export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
        ;;
    *)
        say "unknown architecture $arch (x86_64 or aarch64)"
        exit 2
        ;;
    esac
    say "building the $arch wheel"
    # maturin's audit tags the wheel manylinux_2_N from the newest glibc symbol it uses.
    # shellcheck disable=SC2086
    maturin build --profile "${WHEEL_PROFILE:-wheel}" --locked \
        -m "$ROOT/crates/cai-py/Cargo.toml" --target "$target" -o "$out" ${MATURIN_ARGS:-}
done
python3 "$ROOT/scripts/check-wheel.py" "$out"/cai_rs-*.whl
