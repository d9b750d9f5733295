#!/usr/bin/env python3
"""Check `cai-rs` wheels (scripts/build-wheels.sh): size within the budget, the extension
module an ELF of the wheel's architecture, needing only libraries the manylinux policy
allows, and no glibc symbol newer than the wheel's manylinux tag says.

Usage: scripts/check-wheel.py WHEEL...   (exit 1 when a check fails)
"""

import os
import re
import subprocess
import sys
import tempfile
import zipfile

BUDGET_MB = 15.0
# PEP 599 (manylinux2014) / PEP 600 external libraries a wheel may link against.
ALLOWED = {
    "libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6",
    "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "libX11.so.6",
    "libXext.so.6", "libXrender.so.1", "libICE.so.6", "libSM.so.6", "libGL.so.1",
    "libgobject-2.0.so.0", "libgthread-2.0.so.0", "libglib-2.0.so.0",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
}
MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


def check(wheel):
    problems = []
    size_mb = os.path.getsize(wheel) / 1e6
    if size_mb > BUDGET_MB:
        problems.append(f"{size_mb:.1f} MB, over the {BUDGET_MB:.0f} MB budget")
    m = re.search(r"-(manylinux_(\d+)_(\d+)|manylinux2014|linux)_(x86_64|aarch64)\.whl$", wheel)
    if not m:
        return size_mb, "?", [f"cannot read the platform tag of {wheel}"]
    tag, arch = m.group(1), m.group(4)
    glibc = (int(m.group(2)), int(m.group(3))) if m.group(2) else (2, 17)
    if tag == "linux":
        problems.append("tagged linux_*, not manylinux: maturin's audit did not pass")
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as d:
        sos = [n for n in z.namelist() if n.endswith(".so")]
        if len(sos) != 1:
            return size_mb, arch, problems + [f"expected one extension module, found {sos}"]
        so = z.extract(sos[0], d)
        with open(so, "rb") as f:
            head = f.read(20)
        if head[:4] != b"\x7fELF":
            problems.append(f"{sos[0]} is not an ELF file")
        elif int.from_bytes(head[18:20], "little") != MACHINE[arch]:
            problems.append(f"{sos[0]} is not an {arch} ELF (e_machine {head[18:20].hex()})")
        dyn = subprocess.run(["readelf", "-d", so], capture_output=True, text=True).stdout
        needed = re.findall(r"\(NEEDED\).*\[(.+?)\]", dyn)
        extra = sorted(set(needed) - ALLOWED)
        if extra:
            problems.append(f"needs libraries manylinux does not allow: {', '.join(extra)}")
        syms = subprocess.run(["readelf", "-V", so], capture_output=True, text=True).stdout
        versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+)", syms)}
        newest = max(versions, default=(0, 0))
        if newest > glibc:
            problems.append(f"uses GLIBC_{newest[0]}.{newest[1]} but is tagged {tag}")
    print(f"{os.path.basename(wheel)}: {size_mb:.1f} MB, {arch} ELF, needs {', '.join(needed)}; "
          f"newest glibc symbol {newest[0]}.{newest[1]}")
    return size_mb, arch, problems


def main():
    failed = False
    for w in sys.argv[1:]:
        _, _, problems = check(w)
        for p in problems:
            print(f"  problem: {p}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
