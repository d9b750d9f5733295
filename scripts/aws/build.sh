#!/usr/bin/env bash
# Build the cai binary for AWS Lambda (provided.al2023) and package it.
#
#   scripts/aws/build.sh [x86_64|arm64] [OUT.zip]
#
# x86_64 builds for this machine's glibc target and `cai aws package` checks that the result
# needs no glibc newer than al2023's 2.34 (Debian 12 and Ubuntu 22.04 builds pass).
# arm64 cross-compiles for aarch64-unknown-linux-gnu (the script runs `rustup target add` and,
# as root, installs Debian's gcc-aarch64-linux-gnu when missing); the same glibc check applies.
set -euo pipefail
arch="${1:-x86_64}"
out="${2:-cai-lambda-$arch.zip}"
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}"

case "$arch" in
  x86_64)
    target=x86_64-unknown-linux-gnu
    ;;
  arm64)
    target=aarch64-unknown-linux-gnu
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    if ! command -v aarch64-linux-gnu-gcc >/dev/null; then
      if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null
      else
        echo "need aarch64-linux-gnu-gcc (Debian/Ubuntu: apt install gcc-aarch64-linux-gnu)" >&2
        exit 2
      fi
    fi
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    ;;
  *)
    echo "usage: $0 [x86_64|arm64] [OUT.zip]" >&2
    exit 2
    ;;
esac

cargo build --locked --profile lambda -p cai --target "$target"
bin="$CARGO_TARGET_DIR/$target/lambda/cai"
# Package with a cai that runs here (the arm64 binary does not).
cargo build --locked --release -p cai
"$CARGO_TARGET_DIR/release/cai" aws package --arch "$arch" --binary "$bin" --out "$out"
