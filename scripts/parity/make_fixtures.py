#!/usr/bin/env python3
"""Makes PyTorch fixtures of the AstroMAE structure for the Rust parity tests.

Run with the parity venv (scripts/parity/setup_venv.sh):

    $VENV/bin/python scripts/parity/make_fixtures.py [--out DIR] [--n 8] [--seed 0]

DIR defaults to $CAI_PARITY_DIR or ~/.cache/cai-parity. Written there:

  model_dp.pt                 whole ViT_Astro module inside nn.DataParallel (as the original)
  model_dp_cuda_tagged.pt     the same, as if saved on a GPU machine: storages tagged cuda:0,
                              DataParallel.device_ids [0] and src_device_obj cuda:0
  model.pt                    whole module, no DataParallel
  state_dict.pt               model.state_dict()
  state_dict_module_prefix.pt DataParallel(model).state_dict() (keys start with "module.")
  1.pt                        TensorDataset(images f32 [N,5,32,32], magnitudes f64 [N,5],
                              redshift f32 [N]) as the original's splitter writes it
  expected.pt                 OrderedDict of f32 tensors: "output" [N,1] and per-layer
                              activations ("vit.tokens", "vit.blocks.<i>", "vit.head",
                              "vit_block", "inception_model"); it reads like a state_dict
  meta.json                   config, seed, versions, parameter count

Weights are random (seeded), with non-trivial BatchNorm running statistics; the model is in
eval mode and runs in float32 on one CPU thread.
"""
import argparse
import io
import json
import math
import os
import pickletools
import struct
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from blocks.model_vit_inception import ViT_Astro  # noqa: E402


def randomise(model, gen):
    """Random weights scaled by fan-in, and BatchNorm stats far from the defaults."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # LayerNorm / BatchNorm scale
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        model.cls_token.copy_(0.02 * torch.randn(model.cls_token.shape, generator=gen))
        model.pos_embed.copy_(0.02 * torch.randn(model.pos_embed.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(1234)


def retag_cuda(src, dst):
    """Rewrites a torch.save zip so every storage location reads 'cuda:0' instead of 'cpu'.

    Needs no GPU: only the location strings in data.pkl (protocol 2, no framing) change.
    """
    zin = zipfile.ZipFile(src)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                new = bytearray()
                ops = list(pickletools.genops(data))
                for i, (op, arg, pos) in enumerate(ops):
                    end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
                    if op.name == "BINUNICODE" and arg == "cpu":
                        s = b"cuda:0"
                        new += b"X" + struct.pack("<I", len(s)) + s
                    else:
                        new += data[pos:end]
                data = bytes(new)
            zout.writestr(info, data)
    with open(dst, "wb") as f:
        f.write(out.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("CAI_PARITY_DIR", os.path.expanduser("~/.cache/cai-parity"))
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--n", type=int, default=8, help="galaxies in 1.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--patch", type=int, default=4)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)

    model = ViT_Astro(patch_size=args.patch, depth=args.depth, num_heads=args.heads)
    randomise(model, gen)
    model.eval()

    dp = nn.DataParallel(model)  # on a CPU machine: device_ids == []
    torch.save(dp, os.path.join(args.out, "model_dp.pt"))
    torch.save(model, os.path.join(args.out, "model.pt"))
    torch.save(model.state_dict(), os.path.join(args.out, "state_dict.pt"))
    torch.save(dp.state_dict(), os.path.join(args.out, "state_dict_module_prefix.pt"))

    # As if saved on a GPU machine: DataParallel's device attributes, then cuda:0 tags.
    dp.device_ids = [0]
    dp.output_device = 0
    dp.src_device_obj = torch.device("cuda", 0)
    tmp = os.path.join(args.out, "model_dp_cpu_for_retag.pt")
    torch.save(dp, tmp)
    retag_cuda(tmp, os.path.join(args.out, "model_dp_cuda_tagged.pt"))
    os.remove(tmp)

    n = args.n
    images = (0.5 * torch.randn((n, 5, 32, 32), generator=gen)).float()
    magnitudes = (18.0 + 2.0 * torch.rand((n, 5), generator=gen)).double()
    redshift = (0.3 * torch.rand((n,), generator=gen)).float()
    torch.save(TensorDataset(images, magnitudes, redshift), os.path.join(args.out, "1.pt"))

    trace = {}
    with torch.no_grad():
        out = model(images, magnitudes, trace=trace)
    expected = {"output": out.contiguous()}
    for k, v in trace.items():
        expected[k] = v.contiguous()
    torch.save(expected, os.path.join(args.out, "expected.pt"))

    # Sanity: the cuda-tagged file loads on CPU and agrees.
    reloaded = torch.load(os.path.join(args.out, "model_dp_cuda_tagged.pt"),
                          map_location="cpu", weights_only=False).module
    with torch.no_grad():
        again = reloaded(images, magnitudes)
    assert torch.equal(again, out), "cuda-tagged reload differs"

    import timm
    meta = {
        "seed": args.seed,
        "n": n,
        "image": 32,
        "patch": args.patch,
        "patches": model.patch_embed.num_patches,
        "tokens": model.patch_embed.num_patches + 1,
        "depth": args.depth,
        "heads": args.heads,
        "dim": 192,
        "mlp": 768,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "output_abs_max": float(out.abs().max()),
        "files": sorted(os.listdir(args.out)),
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
