#!/usr/bin/env python3
"""Benchmark (not a test): two installs of the `cai` package (e.g. a `release` wheel and a
`wheel`-profile one, each in its own venv) side by side on the same machine and load.

For each model, `model.predict`'s galaxies/s and CPU seconds per galaxy in each interpreter,
in alternating rounds (A B, then B A, ...), so both see the same load; the B/A ratio per
round. Then import + load to the first prediction in fresh interpreters, alternating, wall
and CPU seconds. CPU seconds (getrusage, all threads) barely depend on the other load on
the machine; wall seconds do.

Usage: python3 scripts/bench/python_wheels.py --a VENV_A/bin/python --b VENV_B/bin/python \
           --model m.safetensors [--model astromae.onnx] [--threads 2] [--batch 64] \
           [--seconds 4] [--rounds 3] [--first-rounds 5]
"""

import argparse
import os
import statistics
import subprocess
import sys

PREDICT = r"""
import resource, sys, time
import numpy as np
import cai

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

path, threads, batch, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
m = cai.Model.load(path, threads=threads)
rng = np.random.default_rng(0)
images = rng.random((batch, 5, 32, 32), dtype=np.float32)
mags = (18 + 4 * rng.random((batch, 5))).astype(np.float32)
m.predict(images, mags, batch_size=batch)  # warm-up
n, t0, c0 = 0, time.perf_counter(), cpu()
while time.perf_counter() - t0 < seconds:
    m.predict(images, mags, batch_size=batch)
    n += batch
print(n / (time.perf_counter() - t0), (cpu() - c0) / n)
"""

FIRST = r"""
import resource, sys, time
t0 = time.perf_counter()
import numpy as np
import cai
m = cai.Model.load(sys.argv[1])
m.predict(np.zeros((1, 5, 32, 32), np.float32), np.zeros((1, 5), np.float32), batch_size=1)
r = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - t0, r.ru_utime + r.ru_stime)
"""


def child(python, script, *args):
    out = subprocess.run([python, "-c", script, *map(str, args)], check=True,
                         capture_output=True, text=True)
    return [float(x) for x in out.stdout.split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="python of install A (the reference)")
    ap.add_argument("--b", required=True, help="python of install B")
    ap.add_argument("--model", action="append", required=True,
                    help="model file (safetensors, .pt or .onnx); repeatable")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first-rounds", type=int, default=5)
    a = ap.parse_args()
    pys = {"A": a.a, "B": a.b}
    print(f"A = {a.a}\nB = {a.b}\nload {os.getloadavg()[0]:.2f}; threads {a.threads}, "
          f"batch {a.batch}, {a.seconds} s per timing")
    for model in a.model:
        ratios = []
        for r in range(a.rounds):
            order = "AB" if r % 2 == 0 else "BA"
            got = {k: child(pys[k], PREDICT, model, a.threads, a.batch, a.seconds) for k in order}
            (ga, ca), (gb, cb) = got["A"], got["B"]
            ratios.append((gb / ga, cb / ca))
            print(f"{os.path.basename(model)} round {r + 1} ({order}): A {ga:.1f} galaxies/s, "
                  f"{ca * 1e3:.2f} CPU ms/galaxy; B {gb:.1f}, {cb * 1e3:.2f}; "
                  f"B/A speed {gb / ga:.3f}, CPU {cb / ca:.3f}")
        print(f"{os.path.basename(model)}: B/A speed median "
              f"{statistics.median(x for x, _ in ratios):.3f}, CPU per galaxy median "
              f"{statistics.median(y for _, y in ratios):.3f}")
    first = {"A": [], "B": []}
    for r in range(a.first_rounds):
        for k in ("AB" if r % 2 == 0 else "BA"):
            first[k].append(child(pys[k], FIRST, a.model[0]))
    for k, runs in first.items():
        walls = sorted(w for w, _ in runs)
        cpus = sorted(c for _, c in runs)
        print(f"import + load + first prediction, {k}: wall best {walls[0]:.3f} median "
              f"{statistics.median(walls):.3f} s; CPU best {cpus[0]:.3f} median "
              f"{statistics.median(cpus):.3f} s ({a.first_rounds} fresh interpreters)")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
