"""Every model form `cai` reads, from Python: ONNX (run by tract) with any named inputs,
and the original's PyTorch checkpoints; outputs equal the CLI's `cai predict`."""

import numpy as np
import pytest

import cai
from conftest import ONNX_FIXTURES, cli_columns


def test_onnx_model_runs_named_inputs_and_equals_cli(cai_bin, work):
    onnx = ONNX_FIXTURES / "cnn5.onnx"
    part = ONNX_FIXTURES / "cnn5_partition.pt"
    model = cai.Model.load(str(onnx), threads=2)
    assert model.kind == "onnx"
    assert model.inputs == {"images": (5, 32, 32), "magnitudes": (5,)}
    assert model.outputs == {"probs": (3,), "confidence": ()}
    assert model.input_shape is None
    a = cai.read_partition(str(part))
    out = model.run({"images": a["images"], "magnitudes": a["magnitudes"]}, batch_size=5)
    assert sorted(out) == ["confidence", "probs"]
    assert out["probs"].shape == (12, 3) and out["probs"].dtype == np.float32
    assert out["confidence"].shape == (12,)
    # The CLI on the same partition, threads and batch size: the same numbers.
    want = cli_columns(cai_bin, onnx, part, work / "cnn.csv", threads=2, batch=5)
    np.testing.assert_array_equal(
        out["probs"], np.stack([want[f"probs_{j}"] for j in range(3)], axis=1))
    np.testing.assert_array_equal(out["confidence"], want["confidence"])
    # Keyword arguments, float64, extra arrays the model does not read: the same.
    again = model.run(images=a["images"].astype(np.float64),
                      magnitudes=np.asfortranarray(a["magnitudes"]), redshift=a["redshift"],
                      batch_size=5)
    np.testing.assert_array_equal(again["probs"], out["probs"])
    # A dict and keywords together.
    np.testing.assert_array_equal(
        model.run({"images": a["images"]}, magnitudes=a["magnitudes"], batch_size=5)[
            "confidence"], out["confidence"])
    # A non-finite galaxy is NaN in every output; the others are untouched.
    imgs = a["images"].copy()
    imgs[3, 1, 2, 2] = np.inf
    bad = model.run(images=imgs, magnitudes=a["magnitudes"], batch_size=5)
    assert np.isnan(bad["probs"][3]).all() and np.isnan(bad["confidence"][3])
    keep = [i for i in range(12) if i != 3]
    np.testing.assert_array_equal(bad["probs"][keep], out["probs"][keep])


def test_onnx_model_errors_name_the_input(work):
    model = cai.Model.load(str(ONNX_FIXTURES / "cnn5.onnx"), threads=1)
    imgs = np.zeros((2, 5, 32, 32), np.float32)
    mags = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"images: missing.*images f32\[N, 5, 32, 32\]"):
        model.run({"pixels": imgs, "magnitudes": mags})
    with pytest.raises(ValueError, match=r"images: expected shape \(N, 5, 32, 32\)"):
        model.run(images=np.zeros((2, 5, 16, 16), np.float32), magnitudes=mags)
    with pytest.raises(ValueError, match=r"magnitudes: expected shape \(N, 5\)"):
        model.run(images=imgs, magnitudes=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="magnitudes: 3 galaxies, but images has 2"):
        model.run(images=imgs, magnitudes=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="images.*dtype"):
        model.run(images=imgs.astype(np.int64), magnitudes=mags)
    with pytest.raises(ValueError, match="given twice"):
        model.run({"images": imgs}, images=imgs)
    with pytest.raises(ValueError, match="batch_size"):
        model.run(images=imgs, magnitudes=mags, batch_size=0)
    # No redshift output: predict says so and points at run.
    with pytest.raises(ValueError, match=r"no redshift output `z`.*probs.*run"):
        model.predict(imgs, mags)
    # The CLI's rules: only f32 for ONNX, and a graph tract cannot run names its node.
    with pytest.raises(cai.CaiError, match="precision"):
        cai.Model.load(str(ONNX_FIXTURES / "cnn5.onnx"), precision="bf16")
    with pytest.raises(cai.CaiError, match="mystery_node"):
        cai.Model.load(str(ONNX_FIXTURES / "unsupported_op.onnx"))
    assert model.run(images=imgs[:0], magnitudes=mags[:0])["probs"].shape == (0, 3)


def test_native_model_runs_by_name_as_it_predicts(model_path, parts):
    import os

    part = sorted(p for p in os.listdir(parts) if p.endswith(".safetensors"))[0]
    a = cai.read_partition(str(parts / part))
    model = cai.Model.load(str(model_path), threads=2)
    assert model.kind == "native AstroMAE"
    assert model.inputs == {"images": (5, 32, 32), "magnitudes": (5,)}
    assert model.outputs == {"z": ()}
    out = model.run(images=a["images"], magnitudes=a["magnitudes"], batch_size=16)
    np.testing.assert_array_equal(
        out["z"], model.predict(a["images"], a["magnitudes"], batch_size=16))


CHECKPOINTS = ["model.pt", "model_dp.pt", "model_dp_cuda_tagged.pt", "state_dict.pt",
               "state_dict_module_prefix.pt"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_original_checkpoints_predict_as_the_cli(parity_dir, cai_bin, work, name):
    """The original's `.pt` forms (whole module, bare or in DataParallel, CUDA-tagged;
    state_dict with or without `module.`) load and predict what `cai predict` does on the
    original's `1.pt` (float64 magnitudes)."""
    ckpt = parity_dir / name
    part = parity_dir / "1.pt"
    want = cli_columns(cai_bin, ckpt, part, work / f"{name}.csv", threads=2, batch=4)["z_pred"]
    a = cai.read_partition(str(part))
    model = cai.Model.load(str(ckpt), threads=2)
    assert model.kind == "native AstroMAE"
    got = model.predict(a["images"], a["magnitudes"], batch_size=4)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, want)
