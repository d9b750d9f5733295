#!/usr/bin/env python3
"""Writes the NumPy fixtures cai-data's reader tests read (issue 23 part 3).

    ~/.cache/cai-parity-venv/bin/python scripts/data/make_numpy_fixtures.py

Into crates/cai-data/tests/fixtures/numpy/: files written by NumPy itself (np.save,
np.savez, np.savez_compressed), in the layouts real pipelines produce (C and Fortran order,
little- and big-endian, ints, bools, halves), and values.json with every array's values,
dtype and shape as NumPy sees them. A few KB in all; deterministic (fixed values, no RNG).
"""
import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/cai-data/tests/fixtures/numpy"
OUT.mkdir(parents=True, exist_ok=True)

flux = (np.arange(4 * 5, dtype=np.float32).reshape(4, 5) * 0.25 - 1.0).astype(np.float32)
ids = np.array([10, 11, 12, 2**40], dtype=np.int64)
mask = np.array([True, False, True, True])
cube = (np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3) / 7.0)
half = np.array([[0.5, -2.0], [1.25, 3.0], [0.0, -0.125], [8.0, 1.0]], dtype=np.float16)

arrays = {
    "flux.npy": flux,
    "cube_fortran.npy": np.asfortranarray(cube),
    "flux_bigendian.npy": flux.astype(">f4"),
    "half.npy": half,
}
for name, a in arrays.items():
    np.save(OUT / name, a)
np.savez(OUT / "members.npz", flux=flux, ids=ids, mask=mask)
np.savez_compressed(OUT / "members_compressed.npz", flux=flux, cube=cube, half=half)

values = {}
for name, a in {**arrays, "ids": ids, "mask": mask, "cube": cube}.items():
    values[name] = {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "values": np.ascontiguousarray(a).astype(np.float64).ravel().tolist(),
    }
(OUT / "values.json").write_text(json.dumps(values, indent=1) + "\n")
print("wrote", sorted(p.name for p in OUT.iterdir()))
