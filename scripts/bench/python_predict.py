#!/usr/bin/env python3
"""Benchmark (not a test) of the `cai` Python package against `cai bench`.

Prints, for the same threads and batch size, `model.predict`'s galaxies/s on a NumPy batch
beside `cai bench`'s model-only figure, taken in alternating rounds (A/B) so both see the
same load; then import + load to the first prediction (fresh interpreters, best of --first-rounds),
with each stage's wall and CPU time (import numpy, import cai, Model.load, first predict);
then the size of the wheel (--wheel) or, without one, of the installed extension module.

Usage: python scripts/bench/python_predict.py --cai target/release/cai \
           [--threads 2] [--batch 512] [--seconds 5] [--rounds 3] [--wheel dist/x.whl]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import cai


def cai_bench(cai_bin, model, threads, batch, seconds):
    out = subprocess.run(
        [cai_bin, "bench", "--model", model, "--threads", str(threads), "--batch", str(batch),
         "--seconds", str(seconds), "--peak-seconds", "0.1", "--json"],
        check=True, capture_output=True, text=True,
    )
    report = json.loads(out.stdout)
    case = report["cases"][0]
    return case["galaxies_per_s"], report.get("cpu", "?")


def py_bench(model, batch, seconds):
    rng = np.random.default_rng(0)
    images = rng.random((batch, 5, 32, 32), dtype=np.float32)
    mags = (18 + 4 * rng.random((batch, 5))).astype(np.float32)
    model.predict(images, mags, batch_size=batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.predict(images, mags, batch_size=batch)
        n += batch
    return n / (time.perf_counter() - t0)


FIRST = r"""
import resource, sys, time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


marks = [("start", time.perf_counter(), cpu())]
import numpy as np
marks.append(("import_numpy", time.perf_counter(), cpu()))
import cai
marks.append(("import_cai", time.perf_counter(), cpu()))
m = cai.Model.load(sys.argv[1])
marks.append(("Model.load", time.perf_counter(), cpu()))
m.predict(np.zeros((1, 5, 32, 32), np.float32), np.zeros((1, 5), np.float32), batch_size=1)
marks.append(("first_predict", time.perf_counter(), cpu()))
print(" ".join(f"{n}={w - w0:.4f}/{c - c0:.4f}"
               for (n, w, c), (_, w0, c0) in zip(marks[1:], marks)))
"""


def first_prediction(model_path):
    """Import + load + first prediction in a fresh interpreter: {stage: (wall s, CPU s)}."""
    out = subprocess.run([sys.executable, "-c", FIRST, model_path], check=True,
                         capture_output=True, text=True)
    stages = {}
    for part in out.stdout.split():
        name, _, secs = part.rpartition("=")
        wall, cpu = secs.split("/")
        stages[name] = (float(wall), float(cpu))
    return stages


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cai", required=True, help="the cai binary (a release build)")
    ap.add_argument("--model", help="model file (default: seeded weights, as `cai model init`)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wheel", help="a built wheel whose size to print")
    ap.add_argument("--first-rounds", type=int, default=5,
                    help="fresh interpreters timed for import + load + first prediction")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="cai-pybench-")
    model_path = a.model or str(cai.init_model(os.path.join(tmp, "m.safetensors"), seed=0))
    model = cai.Model.load(model_path, threads=a.threads)
    print(f"load {os.getloadavg()[0]:.2f}; kernels {cai.kernel_tier()}; threads {a.threads}, batch {a.batch}")
    ratios = []
    for r in range(a.rounds):
        cli, cpu = cai_bench(a.cai, model_path, a.threads, a.batch, a.seconds)
        py = py_bench(model, a.batch, a.seconds)
        ratios.append(py / cli)
        print(f"round {r + 1}: cai bench {cli:.1f} galaxies/s, model.predict {py:.1f} galaxies/s, "
              f"ratio {py / cli:.3f}  ({cpu})")
    ratios.sort()
    print(f"model.predict / cai bench: median {ratios[len(ratios) // 2]:.3f} "
          f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f}) over {a.rounds} rounds")

    runs = [first_prediction(model_path) for _ in range(a.first_rounds)]
    totals = sorted((sum(w for w, _ in r.values()), sum(c for _, c in r.values()), i)
                    for i, r in enumerate(runs))
    wall, cpu_s, best = totals[0]
    print(f"import + load + first prediction: best {wall:.3f} s wall ({cpu_s:.3f} s CPU) of "
          f"{[round(t[0], 3) for t in sorted(totals, key=lambda t: t[2])]}")
    print("  stages of the best (wall/CPU s): " + ", ".join(
        f"{n} {w:.3f}/{c:.3f}" for n, (w, c) in runs[best].items()))

    if a.wheel:
        print(f"wheel {os.path.basename(a.wheel)}: {os.path.getsize(a.wheel) / 1e6:.2f} MB")
    so = cai._native.__file__
    print(f"extension module {os.path.basename(so)}: {os.path.getsize(so) / 1e6:.2f} MB")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
