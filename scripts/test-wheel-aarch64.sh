#!/usr/bin/env bash
# Import the aarch64 `cai-rs` wheel under qemu-user with Debian's aarch64 CPython and predict:
# a seeded AstroMAE on synthetic galaxies, compared with the same prediction by the `cai`
# package installed for the host Python (the x86_64 wheel), and an ONNX model's outputs.
#
#   scripts/test-wheel-aarch64.sh AARCH64_WHEEL [HOST_PYTHON]
#
# HOST_PYTHON (default python3) must have the host's `cai` and numpy installed. Needs
# qemu-user (qemu-aarch64) and apt-get (Debian's arm64 packages are downloaded, not
# installed: a private package list and an unpacked root under $CAI_ARM_ROOT, default
# ~/.cache/cai-arm64-root, kept between runs) and pip (numpy's aarch64 wheel). Not in CI:
# under qemu the import and one prediction take about a minute.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel="$(realpath "${1:?usage: $0 AARCH64_WHEEL [HOST_PYTHON]}")"
host_py="${2:-python3}"
arm="${CAI_ARM_ROOT:-$HOME/.cache/cai-arm64-root}"
say() { echo "test-wheel-aarch64.sh: $*" >&2; }
command -v qemu-aarch64 >/dev/null || { say "needs qemu-user (apt-get install qemu-user)"; exit 2; }
if [ ! -x "$arm/root/usr/bin/python3.11" ]; then
    say "fetching Debian's arm64 python3.11 into $arm"
    mkdir -p "$arm/lists/partial" "$arm/cache/archives/partial" "$arm/debs" "$arm/root"
    touch "$arm/status"
    apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
        -o "Dir::State::Lists=$arm/lists" -o "Dir::Cache=$arm/cache"
        -o "Dir::State::status=$arm/status")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$arm/debs" && apt-get "${apt_opts[@]}" download -qq python3.11-minimal \
        libpython3.11-minimal libpython3.11-stdlib libexpat1 zlib1g libc6 libffi8 libbz2-1.0 \
        liblzma5 libgcc-s1 libstdc++6 libssl3 libuuid1 libsqlite3-0 libnsl2 libtirpc3 \
        libcrypt1 libdb5.3 libncursesw6 libtinfo6 libreadline8)
    for d in "$arm"/debs/*.deb; do dpkg -x "$d" "$arm/root"; done
fi
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
"$host_py" -m pip download -q --only-binary=:all: --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp numpy -d "$arm/wheels"
python3 -m zipfile -e "$(ls "$arm"/wheels/numpy-*.whl | tail -1)" "$site"
python3 -m zipfile -e "$wheel" "$site"
work="$site/work"
mkdir -p "$work"
# The reference: the host's package on the same model and galaxies.
"$host_py" "$ROOT/scripts/wheel_smoke.py" "$work" write
say "importing the aarch64 wheel under qemu-aarch64"
PYTHONPATH="$site" qemu-aarch64 -L "$arm/root" "$arm/root/usr/bin/python3.11" \
    "$ROOT/scripts/wheel_smoke.py" "$work" check
