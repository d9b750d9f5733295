#!/usr/bin/env bash
# Run every example briefly, so that none rots: the measuring examples of cai-model with the
# smallest arguments (their figures mean nothing here: debug build, tiny sizes); the
# examples of cai-engine, cai-report and cai-torch run their own quick tests under
# `cargo test` (`test = true` in their Cargo.toml). Part of scripts/test.sh.
# Usage: scripts/examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}"
cargo build --locked -q -p cai-model --examples
bin="$CARGO_TARGET_DIR/debug/examples"
run() {
    local t=$SECONDS
    if ! out="$("$bin/$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        echo "examples.sh: example $* failed" >&2
        exit 1
    fi
    echo "example $*: ok ($((SECONDS - t)) s): $(printf '%s\n' "$out" | tail -1 | cut -c1-90)"
}
run fit_erf
run tile_ceiling 1
GEMM_M=8 run gemm_speed
# One galaxy of the parity model when CAI_PARITY_DIR is set (CI), else the formula model.
run quant_study 1
# auto chosen on 2 galaxies (one held out), checked on 2 others.
run auto_heldout parity 2 1e-3 2 on
# The forward pass alone (the profiler's target): one galaxy in f32, one pass.
run forward_loop f32 1 0.01
# One attention head in f32 and bf16, one round.
run attention_speed 1
# Each multiply instruction's rate on this CPU (a few milliseconds each).
run isa_rates 0.005
