//! AstroMAE exported to ONNX (scripts/onnx/make_fixtures.py, the parity re-creation with the
//! original's twelve ViT blocks and seeded weights) gives PyTorch's z within 1e-5 through
//! [`OnnxModel`], its blocks lowered onto CAI's kernels.
//!
//! The export is ≈60 MB, so it is not committed: the script writes it to
//! `$CAI_PARITY_DIR/onnx/`, and this test runs when `CAI_PARITY_DIR` is set (as the other
//! PyTorch parity tests do); with it set, or under `CI=true`, a missing file fails the test.
#![cfg(feature = "onnx")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cai_model::{NamedBatch, OnnxModel, TensorModel, TensorSpec};

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn astromae_exported_to_onnx_matches_pytorch() {
    let Some(dir) = std::env::var_os("CAI_PARITY_DIR").map(std::path::PathBuf::from) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI is set but CAI_PARITY_DIR is not (.ci/run makes the ONNX export)"
        );
        eprintln!("CAI_PARITY_DIR not set: skipping");
        return;
    };
    let dir = dir.join("onnx");
    let onnx = std::fs::read(dir.join("astromae_d12.onnx"))
        .expect("run scripts/onnx/make_fixtures.py to make $CAI_PARITY_DIR/onnx/astromae_d12.onnx");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("astromae_d12.json")).unwrap()).unwrap();
    let n = doc["n"].as_u64().unwrap() as usize;
    let images = floats(&doc["images"]);
    let magnitudes = floats(&doc["magnitudes"]);
    let z_torch = floats(&doc["z_torch"]);
    let model = OnnxModel::load("astromae_d12.onnx", &onnx).unwrap();
    assert_eq!(
        model.inputs(),
        vec![
            TensorSpec::f32("images", &[5, 32, 32]),
            TensorSpec::f32("magnitudes", &[5])
        ]
    );
    assert_eq!(model.outputs(), vec![TensorSpec::f32("z", &[])]);
    let out = model
        .run(&NamedBatch {
            n,
            tensors: vec![
                (TensorSpec::f32("images", &[5, 32, 32]), &images[..]),
                (TensorSpec::f32("magnitudes", &[5]), &magnitudes[..]),
            ],
        })
        .unwrap();
    let z = &out.get("z").unwrap().values;
    assert_eq!(z.len(), n);
    let worst = z
        .iter()
        .zip(&z_torch)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("AstroMAE through ONNX/tract: max |z - z_torch| = {worst:e} over {n} galaxies");
    assert!(worst <= 1e-5, "max |z - z_torch| = {worst:e}");
    // The twelve blocks run on CAI's kernels: every attention, and at least the four
    // products of each block (qkv, proj, fc1, fc2) with their GELU and (all but the first
    // block's attention) residual.
    let lowered = model.lowered();
    eprintln!("lowered onto CAI's kernels: {lowered:?}");
    assert_eq!(lowered.attention, 12, "{lowered:?}");
    // q, k and v read in place from each block's qkv product (no transposed copies).
    assert_eq!(lowered.heads_in_place, 12, "{lowered:?}");
    assert_eq!(lowered.gelu, 12, "{lowered:?}");
    // Every convolution of the CNN branch and the patch embedding, with its ReLU where one
    // follows.
    assert_eq!(lowered.conv, 30, "{lowered:?}");
    assert!(lowered.relu >= 29, "{lowered:?}");
    assert!(
        lowered.linear >= 48 && lowered.residual >= 23,
        "{lowered:?}"
    );
}
