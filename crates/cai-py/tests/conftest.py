"""Fixtures for the `cai` Python package's tests: the CLI binary, a model, a dataset.

The CLI (`cai`) is the reference the package must agree with. It is found through
CAI_BIN, else $CARGO_TARGET_DIR/debug/cai, else target/debug/cai; without it the tests
that compare with it are skipped, except under CI=true, where they fail.
"""

import csv
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _cai_bin():
    cands = []
    if os.environ.get("CAI_BIN"):
        cands.append(pathlib.Path(os.environ["CAI_BIN"]))
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    cands += [target / "debug" / "cai", target / "release" / "cai"]
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


@pytest.fixture(scope="session")
def cai_bin():
    b = _cai_bin()
    if b is None:
        msg = "no cai binary (set CAI_BIN or build it with `cargo build --bin cai`)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return b


def cli_columns(cai_bin, model, partition, out, threads, batch):
    """`cai predict`'s CSV on one partition as {column: float32 array}: the reference."""
    import numpy as np

    subprocess.run(
        [str(cai_bin), "--quiet", "predict", "--model", str(model), "--input", str(partition),
         "--out", str(out), "--threads", str(threads), "--batch-size", str(batch)],
        check=True,
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([r[k] for r in rows]).astype(np.float32) for k in rows[0]}


def need(what):
    """Skip for lack of `what`, except under CI=true, where a missing tool or fixture fails."""
    msg = f"no {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


# The committed ONNX fixtures the CLI's tests use (crates/cai-model/tests/fixtures/onnx):
# a 5-band CNN classifier (inputs `images`; outputs `probs` (3,) and `confidence`) and its
# 12 galaxies as the original's `.pt` partition.
ONNX_FIXTURES = ROOT / "crates" / "cai-model" / "tests" / "fixtures" / "onnx"


@pytest.fixture(scope="session")
def parity_dir():
    """The PyTorch parity fixtures (scripts/parity/make_fixtures.py; .ci/run sets
    CAI_PARITY_DIR): the original's checkpoint forms and a `1.pt` partition."""
    d = os.environ.get("CAI_PARITY_DIR")
    if not d or not (pathlib.Path(d) / "1.pt").is_file():
        need("PyTorch parity fixtures (CAI_PARITY_DIR; scripts/parity/make_fixtures.py)")
    return pathlib.Path(d)


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cai-py")


@pytest.fixture(scope="session")
def model_path(cai_bin, work):
    out = work / "model.safetensors"
    subprocess.run([str(cai_bin), "model", "init", "--seed", "7", "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def dataset(work):
    import cai

    path = work / "synth.safetensors"
    cai.synth(120, seed=11, out=path)
    return path


@pytest.fixture(scope="session")
def parts(dataset, work):
    import cai

    out = work / "parts"
    # About 20 KB a galaxy: several partitions of a few dozen galaxies.
    info = cai.partition(dataset, out, size="600KB")
    assert info["galaxies"] == 120 and info["partitions"] >= 3
    return out
