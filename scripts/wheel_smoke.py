"""A wheel's smoke test (scripts/test-wheel-aarch64.sh): a seeded AstroMAE on synthetic
galaxies and the committed 5-band CNN ONNX fixture.

`write` (the host's package) saves the model, galaxies and predictions under WORK; `check`
(the wheel under test, e.g. aarch64 under qemu) predicts the same and compares: another
CPU's kernels (NEON, not AVX-512) differ in rounding only.
"""

import pathlib
import platform
import sys
import time

import numpy as np

import cai

ROOT = pathlib.Path(__file__).resolve().parents[1]
ONNX = ROOT / "crates" / "cai-model" / "tests" / "fixtures" / "onnx"


def main():
    work, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    model_path = work / "model.safetensors"
    if mode == "write":
        cai.init_model(model_path, seed=3)
        g = cai.synth(4, seed=4)
        np.save(work / "images.npy", g["images"])
        np.save(work / "magnitudes.npy", g["magnitudes"])
    images, mags = np.load(work / "images.npy"), np.load(work / "magnitudes.npy")
    t = time.perf_counter()
    model = cai.Model.load(str(model_path), threads=2)
    z = model.predict(images, mags, batch_size=2)
    cnn = cai.Model.load(str(ONNX / "cnn5.onnx"), threads=2)
    a = cai.read_partition(str(ONNX / "cnn5_partition.pt"))
    probs = cnn.run(images=a["images"], magnitudes=a["magnitudes"], batch_size=5)["probs"]
    secs = time.perf_counter() - t
    if mode == "write":
        np.save(work / "z.npy", z)
        np.save(work / "probs.npy", probs)
        return
    dz = float(np.max(np.abs(z - np.load(work / "z.npy"))))
    dp = float(np.max(np.abs(probs - np.load(work / "probs.npy"))))
    print(f"{platform.machine()} cai {cai.__version__} kernels {cai.kernel_tier()}: "
          f"{len(z)} redshifts max |dz| {dz:.2e} vs the host; CNN probs max |d| {dp:.2e}; "
          f"load + predict {secs:.1f} s")
    assert np.all(np.isfinite(z)) and dz <= 1e-4 and dp <= 1e-5, (dz, dp)


if __name__ == "__main__":
    main()
