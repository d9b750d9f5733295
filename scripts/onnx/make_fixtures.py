#!/usr/bin/env python3
"""Makes the committed ONNX fixtures of the "any model through ONNX" tests (issue 23, part 7).

Run with the parity venv (torch, onnx, onnxruntime; scripts/parity/setup_venv.sh):

    ~/.cache/cai-parity-venv/bin/python scripts/onnx/make_fixtures.py [--out DIR] [--astromae-out DIR2] [--depth D]

DIR2 (not committed: the export is ≈60 MB) defaults to $CAI_PARITY_DIR/onnx
(~/.cache/cai-parity/onnx); .ci/run makes it with --astromae-only, and the test reading it
runs when CAI_PARITY_DIR is set (under CI=true it must). Written there:

  astromae_d12.onnx  AstroMAE (the parity re-creation, scripts/parity/blocks) with the
                     original's twelve ViT blocks, seeded random (original-structure) weights, exported with inputs `images` f32[N,5,32,32] and `magnitudes`
                     f32[N,5], output `z` f32[N], the batch dimension symbolic
  astromae_d12.json  8 galaxies' inputs and PyTorch's z (eval mode, f32, one thread), plus
                     ONNX Runtime's z on the same file
  (with --depth D: astromae_dD.*, e.g. --depth 1 for a quick look)

DIR (committed, ≈260 KB) defaults to crates/cai-model/tests/fixtures/onnx. Written there:

  cnn5.onnx          a small 5-band CNN classifier that is not AstroMAE: Conv, BatchNorm,
                     ReLU, MaxPool, global average pooling, Gemm over the pooled features and
                     the magnitudes, Softmax; outputs `probs` f32[N,3] (class probabilities)
                     and `confidence` f32[N] (the largest probability); trained for a few
                     hundred steps on synthetic labels (the brightest band of a galaxy's
                     image decides among three classes)
  cnn5_partition.pt  a partition of 12 galaxies for it, as the original's TensorDataset
                     (images f32 [12,5,32,32], magnitudes f32 [12,5], redshift f32 [12])
  unsupported_op.onnx, symbolic_bands.onnx
                     graphs the loader must refuse (an unknown operator; a symbolic
                     non-batch dimension)
  cnn5.json          ONNX Runtime's `probs` and `confidence` on those galaxies, and PyTorch's

How to export your own model so that `cai` binds it by name: give `torch.onnx.export`
`input_names=["images", "magnitudes"]` (the partition's tensor names; or bind others with
`--bind INPUT=TENSOR`), `output_names=[...]`, and `dynamic_axes={name: {0: "batch"}}` for
every input and output (see `export` below).
"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts", "parity"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from blocks.model_vit_inception import ViT_Astro  # noqa: E402
from make_fixtures import randomise  # noqa: E402  (scripts/parity/make_fixtures.py)


def export(module, args, path, inputs, outputs, keep_batchnorm=False):
    """ONNX with a symbolic batch dimension on every input and output (the legacy
    TorchScript exporter: one self-contained file, no external data). With
    `keep_batchnorm`, BatchNormalization stays a node (inference mode) instead of being
    folded into the convolution before it."""
    extra = {}
    if keep_batchnorm:
        extra = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    torch.onnx.export(
        module,
        args,
        path,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
        opset_version=17,
        dynamo=False,
        **({"do_constant_folding": True} | extra),
    )


def ort_run(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


class AstroMaeZ(nn.Module):
    """AstroMAE with named f32 inputs and one redshift per galaxy."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, magnitudes):
        return self.model(images, magnitudes).reshape(-1)


class Cnn5(nn.Module):
    """A small 5-band classifier: two conv blocks, pooled features and magnitudes, 3 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(5, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.mag = nn.Linear(5, 8)
        self.head = nn.Linear(16 + 8, 3)

    def logits(self, images, magnitudes):
        f = self.features(images)
        m = torch.relu(self.mag((magnitudes - 19.0) / 2.0))
        return self.head(torch.cat([f, m], dim=1))

    def forward(self, images, magnitudes):
        probs = torch.softmax(self.logits(images, magnitudes), dim=1)
        return probs, probs.max(dim=1).values


def synthetic(n, gen):
    """Galaxies whose class is the brightest of bands 0, 2 and 4 (label 0, 1, 2)."""
    images = 0.3 * torch.randn((n, 5, 32, 32), generator=gen)
    label = torch.randint(0, 3, (n,), generator=gen)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / 30.0)
    for i in range(n):
        images[i, 2 * label[i]] += 1.5 * blob
    magnitudes = 18.0 + 2.0 * torch.rand((n, 5), generator=gen)
    redshift = 0.3 * torch.rand((n,), generator=gen)
    return images.float(), magnitudes.float(), redshift.float(), label


def make_astromae(out, gen, depth):
    model = ViT_Astro(patch_size=4, depth=depth, num_heads=3)
    randomise(model, gen)
    model.eval()
    wrapped = AstroMaeZ(model).eval()
    n = 8
    images = (0.5 * torch.randn((n, 5, 32, 32), generator=gen)).float()
    magnitudes = (18.0 + 2.0 * torch.rand((n, 5), generator=gen)).float()
    with torch.no_grad():
        z = wrapped(images, magnitudes)
    stem = f"astromae_d{depth}"
    path = os.path.join(out, stem + ".onnx")
    export(wrapped, (images, magnitudes), path, ["images", "magnitudes"], ["z"])
    (z_ort,) = ort_run(path, {"images": images.numpy(), "magnitudes": magnitudes.numpy()})
    doc = {
        "about": f"scripts/onnx/make_fixtures.py: AstroMAE depth {depth}, seeded random weights",
        "n": n,
        "images": images.reshape(-1).tolist(),
        "magnitudes": magnitudes.reshape(-1).tolist(),
        "z_torch": z.tolist(),
        "z_onnxruntime": z_ort.tolist(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(doc, f)
    print(f"{stem}.onnx {os.path.getsize(path)} bytes; "
          f"max |z_ort - z_torch| {np.abs(z_ort - z.numpy()).max():.2e}")


def make_cnn(out, gen):
    model = Cnn5()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(300):
        images, magnitudes, _, label = synthetic(64, gen)
        loss = nn.functional.cross_entropy(model.logits(images, magnitudes), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    images, magnitudes, redshift, label = synthetic(256, gen)
    with torch.no_grad():
        acc = (model.logits(images, magnitudes).argmax(1) == label).float().mean().item()
    n = 12
    images, magnitudes, redshift, label = synthetic(n, gen)
    with torch.no_grad():
        probs, conf = model(images, magnitudes)
    path = os.path.join(out, "cnn5.onnx")
    export(model, (images, magnitudes), path, ["images", "magnitudes"], ["probs", "confidence"],
           keep_batchnorm=True)
    import onnx
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    assert "BatchNormalization" in ops, ops
    probs_ort, conf_ort = ort_run(
        path, {"images": images.numpy(), "magnitudes": magnitudes.numpy()}
    )
    torch.save(
        TensorDataset(images, magnitudes, redshift), os.path.join(out, "cnn5_partition.pt")
    )
    doc = {
        "about": "scripts/onnx/make_fixtures.py: 5-band CNN classifier, synthetic labels",
        "n": n,
        "accuracy_on_256_synthetic": acc,
        "label": label.tolist(),
        "probs_onnxruntime": probs_ort.tolist(),
        "confidence_onnxruntime": conf_ort.tolist(),
        "probs_torch": probs.tolist(),
        "confidence_torch": conf.tolist(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    with open(os.path.join(out, "cnn5.json"), "w") as f:
        json.dump(doc, f)
    print(f"cnn5.onnx {os.path.getsize(path)} bytes, operators {ops}; accuracy {acc:.3f}; "
          f"max |p_ort - p_torch| {np.abs(probs_ort - probs.numpy()).max():.2e}")


def make_refusals(out):
    """Two tiny graphs tract must refuse at load: an operator no runtime has
    (`NoSuchOp`), and an input whose second dimension is symbolic."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 5, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 32, 32])
    node = helper.make_node("NoSuchOp", ["images"], ["y"], name="mystery_node")
    g = helper.make_graph([node], "unsupported", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              os.path.join(out, "unsupported_op.onnx"))
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", "bands", 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "bands", 32, 32])
    node = helper.make_node("Relu", ["images"], ["y"], name="relu")
    g = helper.make_graph([node], "symbolic", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              os.path.join(out, "symbolic_bands.onnx"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "crates/cai-model/tests/fixtures/onnx"))
    parity = os.environ.get("CAI_PARITY_DIR", os.path.expanduser("~/.cache/cai-parity"))
    ap.add_argument("--astromae-out", default=os.path.join(parity, "onnx"))
    ap.add_argument("--depth", type=int, default=12,
                    help="ViT blocks of the AstroMAE export (12: the original's)")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--skip-astromae", action="store_true",
                    help="only the committed fixtures (the CNN then draws other inputs)")
    ap.add_argument("--astromae-only", action="store_true",
                    help="only the AstroMAE export (what .ci/run makes; the committed fixtures stay)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.astromae_out, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(args.seed)
    if args.astromae_only:
        make_astromae(args.astromae_out, gen, args.depth)
        return
    make_refusals(args.out)
    if not args.skip_astromae:
        make_astromae(args.astromae_out, gen, args.depth)
    make_cnn(args.out, gen)


if __name__ == "__main__":
    main()
