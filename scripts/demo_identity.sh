#!/usr/bin/env bash
# Check that two `cai` binaries give the same demo outputs: every file `cai demo` writes is
# compared byte for byte, except the JSON files that carry timings (rank reports, the
# combined reports, the summary), which are compared with their timing and memory fields
# removed, the rank predictions files, whose column data is compared (their footer carries
# the rank's report), and the HTML report, whose figures draw those timings. Both demos run in the
# same folder, so paths inside the files match. A safetensors file whose header differs only
# in key order (binaries before 2026-12-06 wrote metadata in hash order) is counted apart.
#
# Usage: scripts/demo_identity.sh OLD_CAI NEW_CAI [cai demo options…]
#   (default options: --galaxies 2000 --train-galaxies 500 --size 1MB: 40 partitions)
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
old=$1
new=$2
shift 2
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--galaxies 2000 --train-galaxies 500 --size 1MB)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for which in old new; do
    bin=${!which}
    echo "demo with $bin …" >&2
    "$bin" demo --dir "$work/demo" -q "${args[@]}" >"$work/$which.txt"
    mv "$work/demo" "$work/$which"
done
python3 - "$work/old" "$work/new" <<'EOF'
import json, os, re, sys

old, new = sys.argv[1], sys.argv[2]
# Fields that measure the run rather than say what it computed.
TIMING = re.compile(r"time|_at$|_s$|persec|per_s|throughput|_bps|memory")

def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if not TIMING.search(k)}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

def same_tensors(x, y):
    # Equal headers as JSON (key order aside: binaries before 2026-12-06 wrote the metadata
    # in hash order) and equal tensor bytes.
    def split(b):
        n = int.from_bytes(b[:8], "little")
        return json.loads(b[8:8 + n]), b[8 + n:]
    (hx, dx), (hy, dy) = split(x), split(y)
    return hx == hy and dx == dy

def parquet_columns(b):
    # A Parquet file's bytes before its footer: the column data. A rank's predictions carry
    # its report (timings) in the footer's metadata, so the footer may differ.
    if len(b) < 12 or b[:4] != b"PAR1" or b[-4:] != b"PAR1":
        return None
    footer = int.from_bytes(b[-8:-4], "little")
    return b[:len(b) - 8 - footer]

def files(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out

a, b = files(old), files(new)
bad = [f"only in old: {f}" for f in sorted(a - b)] + [f"only in new: {f}" for f in sorted(b - a)]
same = timed = reordered = 0
for f in sorted(a & b):
    x, y = (open(os.path.join(r, f), "rb").read() for r in (old, new))
    if f.endswith(".html"):
        timed += 1
        continue
    if x == y:
        same += 1
        continue
    if f.endswith(".json") and strip(json.loads(x)) == strip(json.loads(y)):
        timed += 1
        continue
    if f.endswith(".parquet") and parquet_columns(x) is not None and parquet_columns(x) == parquet_columns(y):
        timed += 1
        continue
    if f.endswith(".safetensors") and same_tensors(x, y):
        reordered += 1
        continue
    bad.append(f"differs: {f}")
for line in bad:
    print(line)
print(f"{same} files byte-identical, {timed} equal apart from timings (JSON, Parquet footers) or not compared (HTML), "
      f"{reordered} safetensors equal apart from the order of header keys, {len(bad)} differ")
sys.exit(1 if bad else 0)
EOF
