#!/usr/bin/env bash
# cai bench beside PyTorch (and ONNX Runtime when installed in the venv) on the same weights,
# inputs, thread counts and batch sizes, in one run, with a table of ratios.
#
#   scripts/bench/run.sh [--threads 1,2] [--batch 1,32,128,512] [--seconds 3] [--onnx]
#                        [--precision f32|bf16|int8|int16|all] [--rounds 1] [--kernels avx512,avx2]
#                        [--fixture DIR]...
#
# With --onnx, ONNX Runtime runs the same weights exported to ONNX, and cai runs that file
# through its ONNX path (`cai bench --model astromae.onnx`) in every round after PyTorch: the
# table's "cai onnx" rows, beside "cai f32" (the native path), "torch" and "onnxruntime".
#
# With --rounds N, cai and PyTorch (and ONNX Runtime) take turns N times and the table keeps
# each one's best galaxies/s per case, with the range over the rounds beside it: on a shared
# machine a single pass compares whatever moments each side happened to get.
#
# With --kernels, cai runs once per kernel tier listed (CAI_KERNELS: amx, avx512, avx2, neon,
# scalar) in each round and the table labels each cai row with its tier: on an AVX-512 machine
# `--kernels avx512,avx2` shows what the 512-bit kernels gain in the same run. A tier this CPU
# lacks stops the run (cai would have fallen back to another).
#
# Reduced precisions report their max/mean |Δz| against f32 on the PyTorch parity fixtures
# in ${CAI_PARITY_DIR:-~/.cache/cai-parity} when model.pt and 1.pt are there; `auto` is chosen
# on that model.
#
# With --fixture DIR (repeatable; a directory with model.pt and 1.pt, such as
# scripts/parity/train_fixture.py's ~/.cache/cai-trained), cai bench runs again in every
# round judged on that fixture, and the table labels each cai row with its fixture's
# directory name ("auto cai-parity", "auto cai-trained"): `auto`'s mix, so its speed, and
# every reduced precision's error depend on the weights they are judged on (a random
# fixture's z reacts to 8-bit noise far more than a trained one's). Not with --kernels.
#
# The venv is ${CAI_PARITY_VENV:-~/.cache/cai-parity-venv} (created with
# scripts/parity/setup_venv.sh if missing; `--onnx` pip-installs onnxruntime and onnx into
# it). The cai binary is $CAI_BIN, else cai built (or found up to date) by cargo in
# $CARGO_TARGET_DIR (default ~/.cache/cai-target).
# Output files go to ${CAI_BENCH_DIR:-~/.cache/cai-bench}: weights.safetensors (seeded
# weights), cai.N.json and torch.N.json per round N, astromae.onnx.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${CAI_PARITY_VENV:-$HOME/.cache/cai-parity-venv}"
OUT="${CAI_BENCH_DIR:-$HOME/.cache/cai-bench}"
THREADS="" BATCH="1,32,128,512" SECONDS_PER_CASE=3 ONNX=0 PRECISION=all ROUNDS=1 KERNELS=""
FIXTURES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --seconds) SECONDS_PER_CASE="$2"; shift 2 ;;
        --onnx) ONNX=1; shift ;;
        --precision) PRECISION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --kernels) KERNELS="$2"; shift 2 ;;
        --fixture) FIXTURES+=("$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in
    ''|*[!0-9]*|0) echo "--rounds takes a positive whole number, not '$ROUNDS'" >&2; exit 2 ;;
esac
if [ "${#FIXTURES[@]}" -gt 0 ] && [ -n "$KERNELS" ]; then
    echo "--fixture and --kernels do not go together" >&2; exit 2
fi
for d in "${FIXTURES[@]}"; do
    if [ ! -f "$d/model.pt" ] || [ ! -f "$d/1.pt" ]; then
        echo "--fixture $d: no model.pt and 1.pt there" >&2; exit 2
    fi
done
if [ -z "$THREADS" ]; then
    THREADS="$(seq -s, 1 "$(nproc)")"
fi

if [ -z "${CAI_BIN:-}" ]; then
    # The same target dir as scripts/test.sh and CI; always build (a no-op when up to date),
    # so a binary older than the source is never the one measured.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}"
    (cd "$ROOT" && cargo build --release -p cai)
    CAI_BIN="$CARGO_TARGET_DIR/release/cai"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$ROOT/scripts/parity/setup_venv.sh"
fi
if [ "$ONNX" = 1 ] && ! "$VENV/bin/python" -c "import onnxruntime, onnx" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet onnxruntime onnx || echo "could not install onnxruntime; continuing without it"
fi

mkdir -p "$OUT"
PARITY="${CAI_PARITY_DIR:-$HOME/.cache/cai-parity}"
PARITY_FLAG=()
if [ -f "$PARITY/model.pt" ] && [ -f "$PARITY/1.pt" ]; then
    PARITY_FLAG=(--parity-dir "$PARITY")
fi
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$CAI_BIN" -q model init --seed 0 --out "$OUT/weights.safetensors"
ONNX_FLAG=()
[ "$ONNX" = 1 ] && ONNX_FLAG=(--onnx --onnx-file "$OUT/astromae.onnx")
rm -f "$OUT"/cai.*.json "$OUT"/torch.*.json
ROUND_FILES=()
cai_bench() {
    "$CAI_BIN" bench --model "$OUT/weights.safetensors" --threads "$THREADS" --batch "$BATCH" \
        --seconds "$SECONDS_PER_CASE" --precision "$PRECISION" "$@" --json
}
for r in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $r of $ROUNDS (load $(cut -d' ' -f1 /proc/loadavg))"
    if [ "${#FIXTURES[@]}" -gt 0 ]; then
        PARTS=()
        if [ "${#PARITY_FLAG[@]}" -gt 0 ]; then
            cai_bench "${PARITY_FLAG[@]}" > "$OUT/cai.$r.main.json"
            PARTS+=("$(basename "$PARITY")=$OUT/cai.$r.main.json")
        fi
        for d in "${FIXTURES[@]}"; do
            name="$(basename "$(cd "$d" && pwd)")"
            cai_bench --parity-dir "$d" > "$OUT/cai.$r.$name.json"
            PARTS+=("$name=$OUT/cai.$r.$name.json")
        done
        "$VENV/bin/python" "$HERE/torch_bench.py" --merge-fixtures "$OUT/cai.$r.json" "${PARTS[@]}"
    elif [ -z "$KERNELS" ]; then
        cai_bench "${PARITY_FLAG[@]}" > "$OUT/cai.$r.json"
    else
        PARTS=()
        for t in ${KERNELS//,/ }; do
            CAI_KERNELS="$t" cai_bench "${PARITY_FLAG[@]}" > "$OUT/cai.$r.$t.json"
            PARTS+=("$t=$OUT/cai.$r.$t.json")
        done
        "$VENV/bin/python" "$HERE/torch_bench.py" --merge-cai "$OUT/cai.$r.json" "${PARTS[@]}"
    fi
    "$VENV/bin/python" "$HERE/torch_bench.py" --weights "$OUT/weights.safetensors" --cai "$OUT/cai.$r.json" \
        --threads "$THREADS" --batch "$BATCH" --seconds "$SECONDS_PER_CASE" "${ONNX_FLAG[@]}" \
        --json-out "$OUT/torch.$r.json" --no-table
    if [ "$ONNX" = 1 ] && [ -s "$OUT/astromae.onnx" ]; then
        # The file ONNX Runtime just ran (exported from the same weights), through cai's
        # ONNX path: the round's "cai onnx" rows.
        "$CAI_BIN" -q bench --model "$OUT/astromae.onnx" --threads "$THREADS" --batch "$BATCH" \
            --seconds "$SECONDS_PER_CASE" --json > "$OUT/cai.$r.onnx.json"
        "$VENV/bin/python" "$HERE/torch_bench.py" --add-onnx-path "$OUT/torch.$r.json" "$OUT/cai.$r.onnx.json"
    fi
    ROUND_FILES+=("$OUT/torch.$r.json")
done
"$VENV/bin/python" "$HERE/torch_bench.py" --table "${ROUND_FILES[@]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
