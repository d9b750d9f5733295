#!/usr/bin/env bash
# Run the CAI-rs test suite: every crate's unit tests, the integration tests and doctests.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The Slurm engine's tests need a Slurm cluster. Unless CAI_TEST_SLURM is already set
# (1: a cluster is running here; 0: skip those tests), start a single-node one when we can
# (as root; apt installs slurm and munge if missing) and stop it on exit if we started it.
if [ -z "${CAI_TEST_SLURM:-}" ]; then
    slurm_dir="${CAI_SLURM_DIR:-/tmp/cai-slurm}"
    if [ "$(id -u)" != 0 ]; then
        echo "test.sh: not root, so no Slurm cluster is started; the Slurm engine's tests are skipped (they fail under CI=true)" >&2
    else
        was_up=0
        if [ -s "$slurm_dir/run/slurmctld.pid" ] && kill -0 "$(cat "$slurm_dir/run/slurmctld.pid")" 2>/dev/null; then
            was_up=1
        fi
        if conf="$(scripts/slurm/start.sh)"; then
            eval "$conf"
            export SLURM_CONF CAI_TEST_SLURM=1
            [ "$was_up" = 1 ] || trap 'scripts/slurm/stop.sh' EXIT
        else
            echo "test.sh: could not start a Slurm cluster (above); the Slurm engine's tests are skipped (they fail under CI=true)" >&2
        fi
    fi
fi
# The HTML report's browser test (crates/cai-report/tests/report.rs) needs Debian's chromium.
# Unless CAI_TEST_BROWSER is already set (1: run it; 0: skip it), CI running as root installs
# chromium and runs it; elsewhere it is skipped.
if [ -z "${CAI_TEST_BROWSER:-}" ] && [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ]; then
    if command -v chromium >/dev/null || { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
        export CAI_TEST_BROWSER=1
    else
        echo "test.sh: could not install chromium; the report's browser test fails under CI=true" >&2
    fi
fi
cargo test --workspace --locked "$@"

# Every example, briefly, so none rots (CAI_TEST_EXAMPLES=0 skips them).
if [ "${CAI_TEST_EXAMPLES:-1}" != 0 ]; then
    scripts/examples.sh
fi

# The Python package (crates/cai-py): build and install it into a venv under ~/.cache (kept
# between runs), then run its pytest suite, which compares it with the `cai` binary that
# the tests above built. CAI_TEST_PYTHON=0 skips this; under CI=true a missing tool fails.
if [ "${CAI_TEST_PYTHON:-1}" != 0 ]; then
    py_venv="${CAI_PY_VENV:-$HOME/.cache/cai-py-venv}"
    py_missing() {
        if [ "${CI:-}" = true ]; then
            echo "test.sh: $1; the Python package cannot be tested" >&2
            exit 1
        fi
        echo "test.sh: $1; the Python package's tests are skipped" >&2
    }
    if ! { [ -x "$py_venv/bin/python" ] || python3 -m venv "$py_venv"; }; then
        py_missing "cannot make a Python venv at $py_venv (python3 -m venv)"
    elif ! "$py_venv/bin/python" -c "import maturin, numpy, pandas, pyarrow, pytest" 2>/dev/null &&
        ! "$py_venv/bin/python" -m pip install --quiet maturin numpy pandas pyarrow pytest; then
        py_missing "cannot install maturin, numpy, pandas, pyarrow and pytest into $py_venv"
    else
        cargo build --locked --bin cai
        # The venv's maturin builds the wheel (on PATH for pip's build backend).
        PATH="$py_venv/bin:$PATH" "$py_venv/bin/python" -m pip install --quiet \
            --no-build-isolation ./crates/cai-py
        CAI_BIN="$CARGO_TARGET_DIR/debug/cai" "$py_venv/bin/python" -m pytest -q crates/cai-py/tests
    fi
fi
