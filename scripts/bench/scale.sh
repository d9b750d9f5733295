#!/usr/bin/env bash
# Scale benchmark (issue 24 part 2): a plan of N ranks (N partitions in a manifest) and a
# summary of N finished ranks (each <rank>.json and a one-galaxy predictions file), then
# `cai summarize`, `cai status` and `cai report` on that results location, each timed with
# its peak RSS, on local disk and on moto's S3 server; the figures side by side.
#
#   scripts/bench/scale.sh [N]          # N defaults to 10240
#   CAI_BENCH_BASE=/path/to/old/cai scripts/bench/scale.sh [N]
#                                       # also times that binary's summarize, status and
#                                       # report on the same fixture, interleaved (A/B)
#
# Needs /usr/bin/time, and python3 with moto[server] + boto3 for the S3 column (skipped
# with a note when missing). Binaries: release build of `cai` and the `scale_fixture`
# example (built here; CARGO_TARGET_DIR is respected). Not a test: figures depend on the
# machine and its load, which is printed with them.
set -euo pipefail

N="${1:-10240}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TGT="${CARGO_TARGET_DIR:-$ROOT/target}"
PROFILE="${CAI_BENCH_PROFILE:-release}"
WORK="$(mktemp -d /tmp/cai-scale.XXXXXX)"
MOTO_PID=""
cleanup() {
    if [ -n "$MOTO_PID" ]; then kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "scale: $*" >&2; }

say "building cai and the scale_fixture example ($PROFILE)"
( cd "$ROOT" && cargo build --locked --profile "$PROFILE" -p cai \
    && cargo build --locked --profile "$PROFILE" -p cai-engine --features aws --example scale_fixture ) >&2
DIR="$TGT/$PROFILE"
[ "$PROFILE" = dev ] && DIR="$TGT/debug"
CAI="$DIR/cai"
FIX="$DIR/examples/scale_fixture"
BASE="${CAI_BENCH_BASE:-}"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
MODEL="$WORK/model.safetensors"
"$CAI" model init --out "$MODEL" >/dev/null 2>&1 || touch "$MODEL"

# timed LABEL CMD...: runs CMD, records "seconds peak_MB" under LABEL.
declare -A FIG
timed() {
    local label="$1"; shift
    local out="$WORK/time.$label"
    /usr/bin/time -f "%e %M" -o "$out" "$@" >"$WORK/out.$label" 2>"$WORK/err.$label" || {
        say "$label failed:"; tail -5 "$WORK/err.$label" >&2; FIG[$label]="failed"; return 0; }
    read -r secs kb <"$out"
    FIG[$label]="$(printf '%6.2f s %5.0f MB' "$secs" "$((kb / 1024))")"
}

bench() {  # bench COLUMN DATA RESULTS
    local col="$1" data="$2" results="$3"
    say "$col: manifest of $N partitions at $data"
    "$FIX" manifest "$data" "$N"
    timed "$col.plan" "$FIX" plan "$data" "$results" "$MODEL"
    say "$col: writing $N finished ranks under $results"
    "$FIX" ranks "$results" 2>&1 | sed 's/^/scale: /' >&2
    local bin tag
    for step in summarize status report; do
        for bin in ${BASE:+"$BASE"} "$CAI"; do
            tag=""
            [ "$bin" = "$CAI" ] || tag=".base"
            case $step in
            summarize) timed "$col.$step$tag" "$bin" summarize --results "$results" ;;
            status) timed "$col.$step$tag" "$bin" status --results "$results" --once ;;
            report) timed "$col.$step$tag" "$bin" report "$results" --out "$WORK/$col.html" ;;
            esac
        done
    done
}

bench disk "$WORK/data" "$WORK/results"

S3=no
if python3 -c "import moto.server, boto3, flask" 2>/dev/null; then
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    python3 -m moto.server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
    MOTO_PID=$!
    export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=testing \
        AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3
    for _ in $(seq 600); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
        sleep 0.1
    done
    python3 -c "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='scale')"
    bench s3 "s3://scale/data" "s3://scale/results"
    S3=yes
else
    say "no python3 with moto[server] and boto3: S3 column skipped"
fi

echo "scale benchmark: $N ranks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; load before: $LOAD_BEFORE"
row() { printf '%-10s  %-18s  %-18s' "$1" "$2" "$3"; [ -z "$BASE" ] || printf '  %-18s  %-18s' "$4" "$5"; echo; }
row step "local disk" "moto S3" "local disk (base)" "moto S3 (base)"
for step in plan summarize status report; do
    s3="-" s3b="-"
    [ "$S3" = yes ] && s3="${FIG[s3.$step]}" && s3b="${FIG[s3.$step.base]:--}"
    row "$step" "${FIG[disk.$step]}" "$s3" "${FIG[disk.$step.base]:--}" "$s3b"
done
echo "reads in flight: ${CAI_PARALLEL_READS:-default}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
