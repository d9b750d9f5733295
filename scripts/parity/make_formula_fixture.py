#!/usr/bin/env python3
"""Writes the small committed parity fixture: PyTorch outputs of the FULL-SIZE AstroMAE whose
weights and inputs come from a formula that the Rust test implements too.

    ~/.cache/cai-parity-venv/bin/python scripts/parity/make_formula_fixture.py \
        [--out crates/cai-model/tests/fixtures/parity_formula.json]

So the Rust test (crates/cai-model/tests/parity.rs) needs no torch and no 60 MB checkpoint:
it regenerates the same f32 weights and inputs bit for bit, runs its model and compares with
the outputs stored here.

The formula. For a tensor under state_dict key K (the shared first convolution
`inception_model.conv2d_init.*` uses the key of its alias `inception_model.vis_inception.0.*`)
and flat element index i:

    h  = fnv1a64(K as UTF-8)
    x  = splitmix64(h XOR (i * 0xD1B54A32D192ED03 mod 2^64))
    u  = (x >> 40) / 2^24          in [0, 1), exact in f32 and f64
    s  = 2u - 1                    in [-1, 1)

and the value, computed in f64 and rounded once to f32:

    *.running_var              0.5 + u
    *.running_mean             0.2 s
    *.num_batches_tracked      not set (the forward pass never reads it)
    cls_token, pos_embed       0.02 s
    rank >= 2 (Linear, Conv)   s * sqrt(3 / fan_in), fan_in = numel / shape[0]  (variance
                               1/fan_in, so activations keep their size through the depth)
    rank 1 ending in `weight`  1 + 0.2 s          (LayerNorm and BatchNorm scales)
    other rank 1 (biases)      0.1 s

Inputs: images (key `input.images`, [N,5,32,32]) = s; magnitudes (key `input.magnitudes`,
[N,5]) = 18 + 2 s. The model runs in eval mode, float32, one thread.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from blocks.model_vit_inception import ViT_Astro  # noqa: E402

MASK = (1 << 64) - 1
ALIAS = ("inception_model.conv2d_init.", "inception_model.vis_inception.0.")


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK
    return h


def unit(key, n):
    """u in [0, 1) for elements 0..n of key, as float64 (exact 24-bit fractions)."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        x = np.uint64(fnv1a64(key)) ^ (i * np.uint64(0xD1B54A32D192ED03))
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def canonical(key):
    return ALIAS[1] + key[len(ALIAS[0]):] if key.startswith(ALIAS[0]) else key


def formula(key, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    u = unit(canonical(key), n)
    s = 2.0 * u - 1.0
    if key.endswith("running_var"):
        v = 0.5 + u
    elif key.endswith("running_mean"):
        v = 0.2 * s
    elif key in ("cls_token", "pos_embed"):
        v = 0.02 * s
    elif len(shape) >= 2:
        v = s * math.sqrt(3.0 / (n // shape[0]))
    elif key.endswith("weight"):
        v = 1.0 + 0.2 * s
    else:
        v = 0.1 * s
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def f32_list(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(
        HERE, "..", "..", "crates", "cai-model", "tests", "fixtures", "parity_formula.json"))
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)

    model = ViT_Astro(patch_size=4, depth=12, num_heads=3)
    keys = []
    wsum = 0.0
    wabs = 0.0
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            if key.endswith("num_batches_tracked"):
                continue
            v = formula(key, tuple(t.shape))
            t.copy_(v)
            keys.append([key, list(t.shape)])
            wsum += float(v.double().sum())
            wabs += float(v.double().abs().sum())
    model.eval()
    # The alias really is one tensor.
    sd = model.state_dict()
    assert torch.equal(sd["inception_model.conv2d_init.weight"],
                       sd["inception_model.vis_inception.0.weight"])

    n = args.n
    images = torch.from_numpy((2.0 * unit("input.images", n * 5 * 32 * 32) - 1.0)
                              .astype(np.float32).reshape(n, 5, 32, 32))
    magnitudes = torch.from_numpy((18.0 + 2.0 * (2.0 * unit("input.magnitudes", n * 5) - 1.0))
                                  .astype(np.float32).reshape(n, 5))

    trace = {}
    feats = {}
    hook = model.concat_block[1].register_forward_hook(
        lambda m, i, o: feats.__setitem__("features", o))
    with torch.no_grad():
        out = model(images, magnitudes, trace=trace)
    hook.remove()

    acts = {}
    for name in ["vit.tokens", "vit.blocks.0", "vit.blocks.11", "vit.head", "vit_block",
                 "inception_model"]:
        a = trace[name].double()
        acts[name] = {
            "shape": list(a.shape),
            "sum": float(a.sum()),
            "abs_sum": float(a.abs().sum()),
            "first": f32_list(trace[name].reshape(-1)[:8]),
        }

    import timm
    doc = {
        "about": "PyTorch outputs of the full-size AstroMAE with formula weights and inputs; "
                 "made by scripts/parity/make_formula_fixture.py (its docstring is the formula)",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "config": {"patch": 4, "depth": 12, "heads": 3, "dim": 192, "mlp": 768, "image": 32},
        "parameters": sum(p.numel() for p in model.parameters()),
        "n": n,
        "weights_sum": wsum,
        "weights_abs_sum": wabs,
        "keys": keys,
        "input_images_sum": float(images.double().sum()),
        "input_magnitudes_sum": float(magnitudes.double().sum()),
        "output": f32_list(out),
        "features": f32_list(feats["features"]),
        "activations": acts,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    print(f"wrote {args.out}: output {doc['output']}, |out|max {float(out.abs().max()):.4f}, "
          f"{doc['parameters']} parameters")


if __name__ == "__main__":
    main()
