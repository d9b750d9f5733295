#!/usr/bin/env bash
# Builds Bochs 3.0 (Debian trixie's source package, fetched from deb.debian.org) for
# scripts/test-avx512.sh, whose newer CPU models need it: Bochs 2.7 (bookworm's) has no
# AVX512_BF16 or AVX-VNNI in any model; 3.0's sapphire_rapids has AVX512_BF16/VNNI/FP16 and
# AVX-VNNI, arrow_lake AVX-VNNI without AVX-512.
#
#   scripts/avx512/build-bochs.sh     # prints the bochs binary's path (built once, cached)
#
# Built without the debugger and GUI and with handler chaining, so it also runs guests
# faster than Debian's bochs-bin. Needs curl, xz, a C++ compiler and make; takes about
# 2 minutes on 2 cores. Output: ~/.cache/cai-avx512/bochs-3.0/{bochs,BIOS-bochs-latest}.
set -euo pipefail
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cai-avx512"
OUT="$CACHE/bochs-3.0"
MIRROR="${CAI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { echo "build-bochs.sh: $*" >&2; }
if [ -x "$OUT/bochs" ] && [ -f "$OUT/BIOS-bochs-latest" ]; then
    echo "$OUT/bochs"
    exit 0
fi
command -v c++ >/dev/null && command -v make >/dev/null || { say "needs a C++ compiler and make"; exit 1; }
src="$(mktemp -d "${TMPDIR:-/tmp}/cai-bochs.XXXXXX")"
trap 'rm -rf "$src"' EXIT
fetch() { curl -fsS --retry 3 -o "$src/$1" "$MIRROR/pool/main/b/bochs/$1"; }
say "fetching Bochs 3.0 (Debian trixie's source) from $MIRROR"
fetch bochs_3.0+dfsg.orig.tar.xz
fetch bochsbios_3.0+dfsg-1_all.deb
# The checksums Debian's trixie Sources index gives for these files.
echo "fbdcfe265449f5014d164dcafe1151ef  $src/bochs_3.0+dfsg.orig.tar.xz" | md5sum -c --quiet
tar -xf "$src/bochs_3.0+dfsg.orig.tar.xz" -C "$src"
dpkg-deb -x "$src/bochsbios_3.0+dfsg-1_all.deb" "$src/bios"
say "building (about 2 minutes)"
(
    cd "$src/bochs-3.0"
    ./configure --with-nogui --enable-x86-64 --enable-cpu-level=6 --enable-avx --enable-evex \
        --enable-amx --enable-all-optimizations --disable-debugger --disable-plugins \
        --enable-pci --enable-repeat-speedups --enable-fpu --enable-a20-pin --disable-sb16 \
        --disable-ne2000 --disable-usb --disable-gameport >"$src/configure.log" 2>&1 ||
        { tail -n 20 "$src/configure.log" >&2; exit 1; }
    make -j"$(nproc)" >"$src/make.log" 2>&1 || { tail -n 30 "$src/make.log" >&2; exit 1; }
)
mkdir -p "$OUT"
cp "$src/bochs-3.0/bochs" "$OUT/bochs.tmp" && mv "$OUT/bochs.tmp" "$OUT/bochs"
cp "$src/bios/usr/share/bochs/BIOS-bochs-latest" "$OUT/"
echo "$OUT/bochs"
