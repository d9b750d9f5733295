#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time (issue 24 part 7); a crash, a timeout or an
# out-of-memory input fails the script, which prints the input libFuzzer saved.
#
#   scripts/fuzz.sh [SECONDS]      # seconds per target, default 25 (CAI_FUZZ_SECONDS)
#
# Targets: crates/cai-torch/fuzz and crates/cai-data/fuzz (docs/testing.md#fuzzing). Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); without them it
# says so and skips, except under CI=true, where it fails. Builds into CAI_FUZZ_TARGET
# (default ~/.cache/cai-fuzz-target) and keeps each target's corpus in CAI_FUZZ_CORPUS
# (default ~/.cache/cai-fuzz-corpus), so a later run starts from what earlier runs found.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
SECS="${1:-${CAI_FUZZ_SECONDS:-25}}"
export CARGO_TARGET_DIR="${CAI_FUZZ_TARGET:-$HOME/.cache/cai-fuzz-target}"
CORPUS="${CAI_FUZZ_CORPUS:-$HOME/.cache/cai-fuzz-corpus}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

missing() {
    if [ "${CI:-}" = true ]; then
        echo "fuzz.sh: $1; the fuzz targets cannot run (CI=true: failing)" >&2
        exit 1
    fi
    echo "fuzz.sh: $1; the fuzz targets are skipped" >&2
    exit 0
}
rustup run nightly rustc --version >/dev/null 2>&1 \
    || missing "no nightly toolchain (rustup toolchain install nightly)"
command -v cargo-fuzz >/dev/null \
    || missing "no cargo-fuzz (cargo install cargo-fuzz --locked)"

# seed CRATE TARGET FILES...: the target's seed folder, from files in the repo.
SEEDS="$(mktemp -d /tmp/cai-fuzz-seeds.XXXXXX)"
trap 'rm -rf "$SEEDS"' EXIT
seed() {
    local dir="$SEEDS/$1/$2"
    mkdir -p "$dir"
    shift 2
    local f
    for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/"; done
    return 0
}
torch_tests=crates/cai-torch/tests
hostile=("$torch_tests"/hostile/*.pt)
torch_files=("$torch_tests"/torch_files/*.pt "$torch_tests"/torch_files/stem_*/*.pt)
seed cai-torch read_checkpoint "${hostile[@]}" "${torch_files[@]}"
seed cai-torch read_tensor_dataset "${hostile[@]}" "${torch_files[@]}"
seed cai-torch pickle_in_zip
seed cai-torch zip_index "${hostile[@]}" "${torch_files[@]}"
seed cai-data read_partition "${hostile[@]}" "${torch_files[@]}"
seed cai-data manifest_from_json
numpy_files=(crates/cai-data/tests/fixtures/numpy/*.npy crates/cai-data/tests/fixtures/numpy/*.npz)
seed cai-data read_tensors "${numpy_files[@]}" "${torch_files[@]}"
# A valid manifest (cai-data's partition.rs) to start the JSON target from.
printf '%s' '{"format":"cai-partition","version":1,"total_galaxies":3,"image_shape":[5,32,32],"labelled":true,"partitions":[{"key":"00001.safetensors","galaxies":3,"bytes":61952,"sha256":"0000000000000000000000000000000000000000000000000000000000000001","first_galaxy":0}]}' \
    >"$SEEDS/cai-data/manifest_from_json/manifest.json"

failed=()
for crate in cai-torch cai-data; do
    dir="crates/$crate/fuzz"
    echo "== cargo fuzz build ($dir)"
    (cd "$dir" && cargo +nightly fuzz build -O)
    for target in $(cd "$dir" && cargo +nightly fuzz list); do
        corpus="$CORPUS/$crate/$target"
        artifacts="$CORPUS/artifacts/$crate/$target/"
        mkdir -p "$corpus" "$artifacts" "$SEEDS/$crate/$target"
        echo "== $crate/$target: ${SECS} s"
        start=$SECONDS
        if (cd "$dir" && cargo +nightly fuzz run -O "$target" "$corpus" "$SEEDS/$crate/$target" -- \
            -max_total_time="$SECS" -timeout=20 -rss_limit_mb=4096 -artifact_prefix="$artifacts" \
            -print_final_stats=1 2>&1) >"$SEEDS/log" 2>&1; then
            runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$SEEDS/log" | tail -1)"
            echo "   ok: ${runs:-?} runs in $((SECONDS - start)) s, corpus $(find "$corpus" -type f | wc -l) inputs"
        else
            tail -40 "$SEEDS/log"
            echo "   FAILED: $crate/$target; the input is under $artifacts (reproduce:" \
                "cd $dir && cargo +nightly fuzz run $target <file>)" >&2
            failed+=("$crate/$target")
        fi
    done
done
cd "$ROOT"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: every target ran ${SECS} s without a crash"
