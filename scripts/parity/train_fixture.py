#!/usr/bin/env python3
"""Trains the original-structure AstroMAE a little on synthetic galaxies: a checkpoint shaped
by training, for judging reduced precisions (issue 26) beside make_fixtures.py's random one.

The random fixture's weights (randn / sqrt(fan_in)) give a network whose redshift reacts to
8-bit noise in the trunk far more than a trained one: on 2026-12-07 (docs/performance.md, "On
a trained checkpoint") all 48 ViT block layers in int8 moved z by 7.5e-3 on the random
fixture and 2.2e-4 on a checkpoint trained for only 150 steps. Run with the parity venv
(scripts/parity/setup_venv.sh) and a `cai` binary (for `cai synth`):

    $VENV/bin/python scripts/parity/train_fixture.py [--out DIR] [--cai PATH]
        [--galaxies 8192] [--steps 150] [--minutes 60] [--seed 3] [--threads 2]
        [--save-every N] [--resume]

DIR defaults to $CAI_TRAINED_DIR or ~/.cache/cai-trained. Written there, as make_fixtures.py
writes them, so `cai bench --model DIR/model.pt --parity-dir DIR` and the examples'
`CAI_PARITY_DIR=DIR` read it:

  model.pt    the whole ViT_Astro module, eval mode (PyTorch's default initialisation, then
              AdamW, lr 3e-4, weight decay 0.01, batch 64, mean squared error of z)
  1.pt        TensorDataset(images f32 [8,5,32,32], magnitudes f64 [8,5], redshift f32 [8]):
              the last 8 of the held-out galaxies
  meta.json   steps, minutes, held-out MAE and NMAD, seed, versions

Training stops at --steps or after --minutes, whichever comes first; on 2 shared vCPUs a step
takes 5-15 s. The last 512 galaxies are held out and never trained on. --save-every N writes
the three files every N steps as well (each replaced whole, never half-written), so a run cut
short leaves its last checkpoint; --resume continues from DIR/model.pt (a fresh optimiser) and
counts its steps on from meta.json's.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from blocks.model_vit_inception import ViT_Astro  # noqa: E402

HELD_OUT = 512


def read_safetensors(path):
    """The tensors of a safetensors file as numpy arrays (F32 and I64 only: cai synth's)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        start, end = v["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=dtype).reshape(v["shape"])
    return out


def held_out_metrics(model, images, magnitudes, z):
    """MAE and NMAD (as the original defines them) of the model on the held-out galaxies."""
    model.eval()
    with torch.no_grad():
        pred = model(images, magnitudes).squeeze(1)
    model.train()
    dz = (pred - z) / (1 + z)
    nmad = 1.48 * (dz - dz.median()).abs().median()
    return float((pred - z).abs().mean()), float(nmad), float(pred.std())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("CAI_TRAINED_DIR", os.path.expanduser("~/.cache/cai-trained"))
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--cai", default=os.environ.get("CAI_BIN", "cai"), help="cai binary")
    ap.add_argument("--galaxies", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=0,
                    help="also write the checkpoint every N steps (0: only at the end)")
    ap.add_argument("--resume", action="store_true",
                    help="continue training DIR/model.pt instead of a fresh model")
    args = ap.parse_args()
    if args.galaxies <= HELD_OUT + 64:
        sys.exit(f"train_fixture.py: --galaxies must exceed {HELD_OUT + 64}")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synth.safetensors")
        subprocess.run([args.cai, "synth", "-q", "-n", str(args.galaxies),
                        "--seed", str(args.seed), "-o", path], check=True)
        data = read_safetensors(path)
    images = torch.from_numpy(data["images"].copy())
    mags = torch.from_numpy(data["magnitudes"].copy())
    z = torch.from_numpy(data["redshift"].copy())
    train = args.galaxies - HELD_OUT
    test = (images[train:], mags[train:], z[train:])

    model, step, minutes_before = ViT_Astro(), 0, 0.0
    if args.resume:
        model = torch.load(os.path.join(args.out, "model.pt"), weights_only=False)
        with open(os.path.join(args.out, "meta.json")) as f:
            meta = json.load(f)
        step, minutes_before = meta["steps"], meta.get("minutes", 0.0)
        print(f"train_fixture.py: resuming {args.out} at step {step}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    start, first = time.time(), step
    model.train()
    while step - first < args.steps and time.time() - start < 60 * args.minutes:
        idx = torch.randint(0, train, (64,))
        loss = ((model(images[idx], mags[idx]).squeeze(1) - z[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            mae, nmad, sd = held_out_metrics(model, *test)
            print(f"step {step} ({time.time() - start:.0f} s): loss {loss.item():.5f}, "
                  f"held-out MAE {mae:.4f}, NMAD {nmad:.4f}, z sd {sd:.3f}", flush=True)
        if args.save_every and step % args.save_every == 0:
            save(model, images, mags, z, test, step, minutes_before + (time.time() - start) / 60,
                 args)
            model.train()
    mae, nmad = save(model, images, mags, z, test, step,
                     minutes_before + (time.time() - start) / 60, args)
    print(f"train_fixture.py: {step} steps, held-out MAE {mae:.4f}, NMAD {nmad:.4f}; "
          f"wrote {args.out}")


def save(model, images, mags, z, test, step, minutes, args):
    """Writes model.pt, 1.pt and meta.json into args.out, each through a temporary file and a
    rename, so a reader never sees half a checkpoint. Returns the held-out MAE and NMAD."""
    mae, nmad, _ = held_out_metrics(model, *test)
    model.eval()

    def write(name, fn):
        tmp = os.path.join(args.out, f".{name}.tmp")
        fn(tmp)
        os.replace(tmp, os.path.join(args.out, name))

    write("model.pt", lambda p: torch.save(model, p))
    write("1.pt", lambda p: torch.save(
        TensorDataset(images[-8:].clone(), mags[-8:].double().clone(), z[-8:].clone()), p))
    meta = {"steps": step, "minutes": minutes, "held_out": HELD_OUT,
            "held_out_mae": mae, "held_out_nmad": nmad, "galaxies": args.galaxies,
            "seed": args.seed, "torch": torch.__version__}

    def dump(p):
        with open(p, "w") as f:
            json.dump(meta, f, indent=1)
    write("meta.json", dump)
    return mae, nmad

if __name__ == "__main__":
    main()
