#!/usr/bin/env python3
"""Writes small real torch.save files for cai-torch's zip and checkpoint tests (committed).

Run with the parity venv (scripts/parity/setup_venv.sh):

    $VENV/bin/python scripts/parity/make_torch_zip_fixtures.py [--out DIR]

DIR defaults to crates/cai-torch/tests/torch_files. Written there (each a few KB):

  stem_<n>/<stem>.pt   torch.save({"w": torch.arange(4.)}) under a stem of n characters,
                       n in 1, 2, 15..27, 40, 64. torch names the zip's top folder after
                       the stem, so the first local header's length changes with n; at
                       n = 21 (`astromae_finetuned_v2.pt`) the `zip` crate's reader
                       used to misplace the central directory.
  train_loop.pt        {"epoch", "model_state_dict", "optimizer_state_dict" (Adam after one
                       step), "scheduler_state_dict", numpy scalars "loss" (float64),
                       "best_acc" (float32), "step" (int64), "improved" (bool)}
  lightning.pt         Lightning's layout: {"epoch", "global_step",
                       "pytorch-lightning_version", "state_dict" (keys "model."),
                       "loops", "callbacks", "optimizer_states", "lr_schedulers",
                       "hparams_name", "hyper_parameters"}
  module_in_dict.pt    {"model": the whole nn.Sequential, "epoch": 3}
  two_models.pt        {"model_state_dict", "ema_state_dict"}: two candidates
  no_model.pt          {"epoch": 1, "loss": numpy float64}: no candidate
  meta.json            torch and numpy versions, and the expected tensors

The model is nn.Sequential(Linear(4, 3), ReLU(), Linear(3, 2)) with weights set from
arange, so a test can name every value: `0.weight` = arange(12).reshape(3, 4) / 10,
`0.bias` = [0.5, -0.5, 1.5], `2.weight` = arange(6).reshape(2, 3) - 2.5, `2.bias` = [1, -1].
"""
import argparse
import collections
import json
import os
import shutil

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LENGTHS = [1, 2] + list(range(15, 28)) + [40, 64]
BASE = "astromae_finetuned_v2_epoch0123456789_seed42_lr3e-4_batch256_final_run"


def stem(n):
    """A stem of n characters (no dot): the realistic name, cut or repeated."""
    s = (BASE * 2)[:n]
    assert len(s) == n and "." not in s
    return s


def model():
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(12.0).reshape(3, 4) / 10)
        m[0].bias.copy_(torch.tensor([0.5, -0.5, 1.5]))
        m[2].weight.copy_(torch.arange(6.0).reshape(2, 3) - 2.5)
        m[2].bias.copy_(torch.tensor([1.0, -1.0]))
    return m


def trained():
    """The model after one Adam step (so the optimizer holds state tensors), and its
    optimizer and scheduler. The weights are then reset so tests know every value."""
    m = model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    loss = m(torch.ones(2, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    sched.step()
    fresh = model()
    m.load_state_dict(fresh.state_dict())
    return m, opt, sched


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "crates/cai-torch/tests/torch_files"))
    args = ap.parse_args()
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    for n in LENGTHS:
        d = os.path.join(out, f"stem_{n:02}")
        os.makedirs(d)
        torch.save({"w": torch.arange(4.0)}, os.path.join(d, stem(n) + ".pt"))

    m, opt, sched = trained()
    torch.save(
        {
            "epoch": 7,
            "model_state_dict": m.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(),
            "loss": np.float64(0.125),
            "best_acc": np.float32(0.75),
            "step": np.int64(42),
            "improved": np.bool_(True),
        },
        os.path.join(out, "train_loop.pt"),
    )
    lightning_sd = collections.OrderedDict(("model." + k, v) for k, v in m.state_dict().items())
    torch.save(
        {
            "epoch": 1,
            "global_step": 10,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": lightning_sd,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.5)}},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 1e-3, "depth": 12},
        },
        os.path.join(out, "lightning.pt"),
    )
    torch.save({"model": m, "epoch": 3}, os.path.join(out, "module_in_dict.pt"))
    ema = model()
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    torch.save(
        {"model_state_dict": m.state_dict(), "ema_state_dict": ema.state_dict()},
        os.path.join(out, "two_models.pt"),
    )
    torch.save({"epoch": 1, "loss": np.float64(0.5)}, os.path.join(out, "no_model.pt"))

    meta = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "lengths": LENGTHS,
        "state_dict": {k: v.flatten().tolist() for k, v in m.state_dict().items()},
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main()
