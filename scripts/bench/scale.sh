#!/usr/bin/env bash
# Scale benchmark (issue 24 part 2): a plan of N ranks (N partitions in a manifest) and a
# summary of N finished ranks (each <rank>.json and a one-galaxy predictions file), then
# `cai summarize` (from scratch, and as at the end of a run `cai run` followed: with the
# summary checkpoint holding all but the last tenth of the ranks), `cai status` and
# `cai report` on that results location, each timed with
# its peak RSS, on local disk, on moto's S3 server (one request at a time, what the tests
# use) and on s3s-fs (a Rust S3 server over a folder that serves requests in parallel); the
# figures side by side; and s3s-fs again behind a proxy that holds each request 20 ms
# (CAI_BENCH_LATENCY_MS; 0 leaves that column out), about a real S3 GET's time from
# inside its region, so only requests in flight hide it. Each location also gets a copy of the ranks in the older layout
# (predictions without the rank report inside: two reads per rank), whose summarize is
# timed alternately with the current one ("summarize (old layout)").
#
#   scripts/bench/scale.sh [N]          # N defaults to 10240
#   CAI_BENCH_BASE=/path/to/old/cai scripts/bench/scale.sh [N]
#                                       # also times that binary's summarize, status and
#                                       # report on the same fixture, interleaved (A/B)
#
# Needs /usr/bin/time; python3 with moto[server] + boto3 for the moto column, and s3s-fs
# (`cargo install s3s-fs --features binary`, 0.14.1 for rustc 1.95; on PATH or as
# $S3S_FS) for the s3s column; a column whose server is missing is skipped with a note.
# Binaries: release build of `cai` and the `scale_fixture`
# example (built here; CARGO_TARGET_DIR is respected). Not a test: figures depend on the
# machine and its load, which is printed with them.
set -euo pipefail

N="${1:-10240}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TGT="${CARGO_TARGET_DIR:-$ROOT/target}"
PROFILE="${CAI_BENCH_PROFILE:-release}"
WORK="$(mktemp -d /tmp/cai-scale.XXXXXX)"
MOTO_PID=""
S3S_PID=""
PROXY_PID=""
LATENCY_MS="${CAI_BENCH_LATENCY_MS:-20}"
stop() {  # stop PID: end a server this script started
    if [ -n "$1" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
cleanup() {
    stop "$MOTO_PID"
    stop "$S3S_PID"
    stop "$PROXY_PID"
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

# fx ARGS...: the fixture writer, straight to the server when FIX_ENDPOINT is set (the
# latency column times only cai's own steps through the delaying proxy).
fx() {
    if [ -n "${FIX_ENDPOINT:-}" ]; then AWS_ENDPOINT_URL="$FIX_ENDPOINT" "$FIX" "$@"; else "$FIX" "$@"; fi
}

bench() {  # bench COLUMN DATA RESULTS
    local col="$1" data="$2" results="$3"
    say "$col: manifest of $N partitions at $data"
    fx manifest "$data" "$N"
    timed "$col.plan" "$FIX" plan "$data" "$results" "$MODEL"
    fx plan "$data" "$results-old" "$MODEL" 2>/dev/null
    say "$col: writing $N finished ranks under $results (and $results-old, older layout)"
    fx ranks "$results" 2>&1 | sed 's/^/scale: /' >&2
    fx ranks "$results-old" old 2>&1 | sed 's/^/scale: /' >&2
    local bin tag
    for step in summarize status report; do
        for bin in ${BASE:+"$BASE"} "$CAI"; do
            tag=""
            [ "$bin" = "$CAI" ] || tag=".base"
            case $step in
            summarize)
                timed "$col.summarize-old$tag" "$bin" summarize --results "$results-old"
                timed "$col.$step$tag" "$bin" summarize --results "$results"
                if [ "$bin" = "$CAI" ]; then
                    # The end of a followed run: its checkpoint holds the ranks finished
                    # before the last tenth; those written again since must be read.
                    say "$col: writing the last tenth of the ranks again"
                    fx ranks "$results" new $((N * 9 / 10)) "$N" 2>&1 | sed 's/^/scale: /' >&2
                    timed "$col.summarize-ckpt" "$bin" summarize --results "$results"
                fi ;;
            status) timed "$col.$step$tag" "$bin" status --results "$results" --once ;;
            report) timed "$col.$step$tag" "$bin" report "$results" --out "$WORK/$col.html" ;;
            esac
        done
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 600); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
        sleep 0.1
    done
}
s3_env() {  # s3_env PORT: point the AWS client at a loopback server
    export AWS_ENDPOINT_URL="http://127.0.0.1:$1" AWS_ACCESS_KEY_ID=testing \
        AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ALLOW_HTTP=true
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3
}

bench disk "$WORK/data" "$WORK/results"

COLS="disk"
if python3 -c "import moto.server, boto3, flask" 2>/dev/null; then
    PORT="$(free_port)"
    python3 -m moto.server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
    MOTO_PID=$!
    s3_env "$PORT"
    wait_port "$PORT"
    python3 -c "import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket='scale')"
    bench moto "s3://scale/data" "s3://scale/results"
    stop "$MOTO_PID"; MOTO_PID=""
    COLS="$COLS moto"
else
    say "no python3 with moto[server] and boto3: moto column skipped"
fi

S3S="${S3S_FS:-$(command -v s3s-fs || true)}"
if [ -n "$S3S" ] && [ -x "$S3S" ]; then
    PORT="$(free_port)"
    mkdir -p "$WORK/s3s/scale"
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key testing --secret-key testing "$WORK/s3s" >/dev/null 2>&1 &
    S3S_PID=$!
    s3_env "$PORT"
    wait_port "$PORT"
    bench s3s "s3://scale/data" "s3://scale/results"
    COLS="$COLS s3s"
    if [ "$LATENCY_MS" != 0 ]; then
        # The same server at a real S3's distance: every request held LATENCY_MS first.
        PROXY_PORT="$(free_port)"
        python3 "$ROOT/scripts/bench/latency_proxy.py" "$PROXY_PORT" "$PORT" "$LATENCY_MS" &
        PROXY_PID=$!
        wait_port "$PROXY_PORT"
        mkdir -p "$WORK/s3s/lat"
        FIX_ENDPOINT="$AWS_ENDPOINT_URL"
        s3_env "$PROXY_PORT"
        bench lat "s3://lat/data" "s3://lat/results"
        FIX_ENDPOINT=""
        stop "$PROXY_PID"; PROXY_PID=""
        COLS="$COLS lat"
    fi
    stop "$S3S_PID"; S3S_PID=""
else
    say "no s3s-fs (cargo install s3s-fs --features binary, or set S3S_FS): s3s column skipped"
fi

echo "scale benchmark: $N ranks, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; load before: $LOAD_BEFORE"
declare -A NAME=([disk]="local disk" [moto]="moto S3" [s3s]="s3s-fs S3" [lat]="s3s-fs +${LATENCY_MS} ms")
row() { printf '%-24s' "$1"; shift; printf '  %-18s' "$@"; echo; }
head=(step)
for c in $COLS; do head+=("${NAME[$c]}"); [ -z "$BASE" ] || head+=("${NAME[$c]} (base)"); done
row "${head[@]}"
for step in plan summarize summarize-ckpt summarize-old status report; do
    cells=()
    for c in $COLS; do
        cells+=("${FIG[$c.$step]:--}")
        [ -z "$BASE" ] || cells+=("${FIG[$c.$step.base]:--}")
    done
    label=$step
    [ "$step" = summarize-old ] && label="summarize (old layout)"
    [ "$step" = summarize ] && label="summarize (from scratch)"
    [ "$step" = summarize-ckpt ] && label="summarize (checkpoint)"
    row "$label" "${cells[@]}"
done
echo "reads in flight: ${CAI_PARALLEL_READS:-default}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
