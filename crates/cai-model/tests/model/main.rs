//! Integration tests of cai-model: the fast forward pass against a naive f64 reference,
//! loading errors, key handling, safetensors round trips and seeding.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers are not #[test] fns)

mod mixed;
mod reference;

use std::collections::BTreeMap;

use cai_model::kernels::Precision;
use cai_model::{init, AstroMae, Config, Error, LoadOptions, Model, Tensor, Weights};
use reference::Reference;

fn small() -> Config {
    Config {
        depth: 2,
        ..Config::astromae()
    }
}

/// Deterministic pseudo-random inputs: images in [-1, 3), magnitudes in [14, 22).
fn inputs(n: usize, cfg: &Config, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let img: Vec<f32> = (0..n * cfg.channels * cfg.image * cfg.image)
        .map(|_| 4.0 * next() - 1.0)
        .collect();
    let mag: Vec<f32> = (0..n * 5).map(|_| 14.0 + 8.0 * next()).collect();
    (img, mag)
}

fn max_abs(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, |m, x| m.max(x.abs()))
}

/// Compares the fast path with the f64 reference: ||fast - ref||_inf <= tol * ||ref||_inf,
/// for the features and for the predictions.
fn compare(cfg: &Config, n: usize, seed: u64, tol: f64) {
    let mut w = init::astromae_weights(seed, cfg);
    perturb_bn(&mut w, seed);
    compare_weights(cfg, w, n, seed, tol);
}

/// Gives every BatchNorm non-trivial statistics (init leaves them at identity), so the
/// folding of BN into the convolutions is actually tested.
fn perturb_bn(w: &mut Weights, seed: u64) {
    let keys: Vec<String> = w
        .keys()
        .filter(|k| k.contains(".bn."))
        .map(str::to_string)
        .collect();
    for (n, k) in keys.iter().enumerate() {
        let mut t = w.get(k).unwrap().clone();
        for (i, v) in t.data.iter_mut().enumerate() {
            let u = (((seed as usize + n * 131 + i * 31) % 97) as f32) / 97.0; // [0, 1)
            *v = if k.ends_with("running_var") {
                0.2 + 2.0 * u
            } else if k.ends_with("weight") {
                0.5 + u
            } else {
                u - 0.5
            };
        }
        w.insert(k.as_str(), t);
    }
}

fn compare_weights(cfg: &Config, w: Weights, n: usize, seed: u64, tol: f64) {
    let model = AstroMae::load(&w, "seeded").unwrap();
    assert_eq!(model.config(), cfg);
    let (img, mag) = inputs(n, cfg, seed + 100);
    let feats = model.features(&img, &mag, n).unwrap();
    let preds = model.predict(&img, &mag, n).unwrap();
    let r = Reference::new(&w, cfg.heads);
    let per = cfg.channels * cfg.image * cfg.image;
    let hw = model.feature_width();
    for i in 0..n {
        let (rf, rz) = r.forward(
            &img[i * per..(i + 1) * per],
            &mag[i * 5..(i + 1) * 5],
            cfg.channels,
            cfg.image,
        );
        let scale = max_abs(rf.iter().copied()).max(1e-12);
        let err = max_abs(
            rf.iter()
                .zip(&feats[i * hw..(i + 1) * hw])
                .map(|(a, b)| a - *b as f64),
        );
        assert!(
            err <= tol * scale,
            "galaxy {i}: feature error {err:e} vs scale {scale:e}"
        );
        let zerr = (rz - preds[i] as f64).abs();
        eprintln!(
            "galaxy {i}: feature error {:.2e} (scale {scale:.3e}), z {} vs {rz:.6}",
            err / scale,
            preds[i]
        );
        assert!(
            zerr <= tol * rz.abs().max(1.0),
            "galaxy {i}: prediction {} vs reference {rz}",
            preds[i]
        );
    }
}

#[test]
fn fast_path_matches_reference_depth2() {
    compare(&small(), 6, 1, 1e-4);
}

/// Weights whose head reads only concat columns `keep` (no bias), so the features measure
/// one branch alone and a small error in that branch cannot hide behind the others.
fn isolate(cfg: &Config, seed: u64, keep: std::ops::Range<usize>) -> Weights {
    let mut w = init::astromae_weights(seed, cfg);
    let mut t = w.get("concat_block.0.weight").unwrap().clone();
    for (i, v) in t.data.iter_mut().enumerate() {
        if !keep.contains(&(i % 3216)) {
            *v = 0.0;
        } else {
            *v *= 10.0;
        }
    }
    w.insert("concat_block.0.weight", t);
    w.insert("concat_block.0.bias", Tensor::zeros(&[1024]));
    perturb_bn(&mut w, seed);
    w
}

#[test]
fn each_branch_matches_reference() {
    let cfg = small();
    // Observed errors are ~1e-6; 2e-5 still catches e.g. a BatchNorm eps of 1e-4.
    compare_weights(&cfg, isolate(&cfg, 21, 0..1096), 3, 21, 2e-5);
    compare_weights(&cfg, isolate(&cfg, 22, 1096..2192), 3, 22, 2e-5);
    compare_weights(&cfg, isolate(&cfg, 23, 2192..3216), 3, 23, 2e-5);
}

#[test]
fn fast_path_matches_reference_other_heads_and_patch() {
    // patch 8 (16 tokens), D 128 with 4 heads, MLP 256: exercises the shape inference.
    let cfg = Config {
        patch: 8,
        dim: 128,
        depth: 1,
        heads: 4,
        mlp: 256,
        tokens: 16,
        image: 32,
        channels: 5,
    };
    compare(&cfg, 3, 2, 1e-4);
}

#[test]
fn fast_path_matches_reference_full_model() {
    compare(&Config::astromae(), 2, 3, 1e-4);
}

#[test]
fn predict_equals_features_dot_last_layer() {
    let cfg = small();
    let source = init::astromae_weights(4, &cfg);
    let mut model = AstroMae::load(&source, "s").unwrap();
    let (img, mag) = inputs(3, &cfg, 5);
    let w: Vec<f32> = (0..1024).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    model.set_last_layer(&w, 0.25).unwrap();
    let f = model.features(&img, &mag, 3).unwrap();
    let z = model.predict(&img, &mag, 3).unwrap();
    for i in 0..3 {
        let want: f64 = f[i * 1024..(i + 1) * 1024]
            .iter()
            .zip(&w)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum::<f64>()
            + 0.25;
        assert!((z[i] as f64 - want).abs() < 1e-5 * want.abs().max(1.0));
    }
    assert!(matches!(
        model.set_last_layer(&w[..10], 0.0),
        Err(Error::Input {
            expected: 1024,
            got: 10,
            ..
        })
    ));
    // The new last layer travels with write_back.
    let mut saved = source.clone();
    model.write_back(&mut saved);
    let again = AstroMae::load(&saved, "roundtrip").unwrap();
    assert_eq!(again.predict(&img, &mag, 3).unwrap(), z);
}

#[test]
fn results_do_not_depend_on_thread_count_or_batching() {
    // Every output row is computed with the same arithmetic whatever the chunking, so
    // results are bit-identical across thread counts and batch splits.
    let cfg = small();
    let model = AstroMae::load(&init::astromae_weights(6, &cfg), "s").unwrap();
    let n = 11;
    let (img, mag) = inputs(n, &cfg, 7);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| model.predict(&img, &mag, n).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    let per = cfg.channels * cfg.image * cfg.image;
    let single: Vec<f32> = (0..n)
        .flat_map(|i| {
            model
                .predict(&img[i * per..(i + 1) * per], &mag[i * 5..(i + 1) * 5], 1)
                .unwrap()
        })
        .collect();
    assert_eq!(one, single);
}

#[test]
fn a_lone_galaxy_split_over_threads_gives_the_same_bits() {
    // Fewer galaxies than threads: each galaxy's ViT GEMMs run in two halves of rows on two
    // threads (65 rows at full size; the small config's 17 are too few to split).
    let cfg = Config {
        depth: 2,
        ..Config::astromae()
    };
    let f32_model = AstroMae::load(&init::astromae_weights(3, &cfg), "s").unwrap();
    let n = 3;
    let (img, mag) = inputs(n, &cfg, 5);
    let per = cfg.channels * cfg.image * cfg.image;
    let pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, four) = (pool(1), pool(4));
    for precision in [Precision::F32, Precision::Int16] {
        let mut model = f32_model.clone();
        model.set_precision(precision).unwrap();
        let together = one.install(|| model.predict(&img, &mag, n).unwrap());
        for i in 0..n {
            let (im, mg) = (&img[i * per..(i + 1) * per], &mag[i * 5..(i + 1) * 5]);
            let alone = four.install(|| model.predict(im, mg, 1).unwrap());
            assert_eq!(
                alone[0].to_bits(),
                together[i].to_bits(),
                "{precision} galaxy {i}"
            );
        }
        // Two galaxies on four threads: both split at once.
        let two = four.install(|| model.predict(&img[..2 * per], &mag[..10], 2).unwrap());
        assert_eq!(two, together[..2], "{precision}");
    }
}

#[test]
fn input_sizes_are_checked() {
    let cfg = small();
    let model = AstroMae::load(&init::astromae_weights(1, &cfg), "s").unwrap();
    assert_eq!(model.input_shape(), (5, 32, 32));
    let (img, mag) = inputs(2, &cfg, 1);
    assert!(matches!(
        model.predict(&img[1..], &mag, 2),
        Err(Error::Input { what: "images", .. })
    ));
    assert!(matches!(
        model.predict(&img, &mag[..9], 2),
        Err(Error::Input {
            what: "magnitudes",
            ..
        })
    ));
    assert_eq!(model.predict(&[], &[], 0).unwrap(), Vec::<f32>::new());
}

#[test]
fn missing_key_names_key_and_file() {
    let mut w = init::astromae_weights(1, &small());
    w.remove("blocks.1.attn.proj.weight");
    let err = AstroMae::load(&w, "ckpt.safetensors").unwrap_err();
    match &err {
        Error::MissingKey { file, key } => {
            assert_eq!(file, "ckpt.safetensors");
            assert_eq!(key, "blocks.1.attn.proj.weight");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("blocks.1.attn.proj.weight"));
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let mut w = init::astromae_weights(1, &small());
    w.insert("head.weight", Tensor::zeros(&[192, 191]));
    let err = AstroMae::load(&w, "ckpt.pt").unwrap_err();
    match err {
        Error::Shape {
            file,
            key,
            expected,
            got,
        } => {
            assert_eq!((file.as_str(), key.as_str()), ("ckpt.pt", "head.weight"));
            assert_eq!(expected, vec![192, 192]);
            assert_eq!(got, vec![192, 191]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut w = init::astromae_weights(1, &small());
    w.insert(
        "inception_model.vis_inception.3.branch2.1.conv.weight",
        Tensor::zeros(&[16, 16, 5, 5]),
    );
    let msg = AstroMae::load(&w, "x").unwrap_err().to_string();
    assert!(
        msg.contains("vis_inception.3.branch2.1.conv.weight") && msg.contains("[16, 16, 3, 3]"),
        "{msg}"
    );
    let mut w = init::astromae_weights(1, &small());
    w.insert("concat_block.0.weight", Tensor::zeros(&[1024, 3000]));
    let msg = AstroMae::load(&w, "x").unwrap_err().to_string();
    assert!(
        msg.contains("concat_block.0.weight") && msg.contains("3216"),
        "{msg}"
    );
}

#[test]
fn zero_widths_are_rejected() {
    let mut w = init::astromae_weights(1, &small());
    w.insert(
        "inception_model.magnitude_block.0.weight",
        Tensor::zeros(&[1024, 0]),
    );
    let msg = AstroMae::load(&w, "z.safetensors").unwrap_err().to_string();
    assert!(
        msg.contains("z.safetensors") && msg.contains("magnitude_block.0.weight"),
        "{msg}"
    );
}

#[test]
fn duplicate_first_conv_keys() {
    let cfg = small();
    let w = init::astromae_weights(2, &cfg);
    let (img, mag) = inputs(2, &cfg, 3);
    let base = AstroMae::load(&w, "both")
        .unwrap()
        .predict(&img, &mag, 2)
        .unwrap();
    for drop in [
        "inception_model.conv2d_init",
        "inception_model.vis_inception.0",
    ] {
        let mut only = w.clone();
        only.remove(&format!("{drop}.weight"));
        only.remove(&format!("{drop}.bias"));
        let m = AstroMae::load(&only, "one").unwrap();
        assert!(m.unused_keys().is_empty(), "{:?}", m.unused_keys());
        assert_eq!(m.predict(&img, &mag, 2).unwrap(), base);
    }
    let mut bad = w.clone();
    let mut t = bad
        .get("inception_model.vis_inception.0.bias")
        .unwrap()
        .clone();
    t.data[3] += 1.0;
    bad.insert("inception_model.vis_inception.0.bias", t);
    match AstroMae::load(&bad, "bad.pt").unwrap_err() {
        Error::DuplicateMismatch { file, key_a, key_b } => {
            assert_eq!(file, "bad.pt");
            assert_eq!(key_a, "inception_model.conv2d_init.bias");
            assert_eq!(key_b, "inception_model.vis_inception.0.bias");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unused_keys_are_reported_but_known_leftovers_are_not() {
    let mut w = init::astromae_weights(1, &small());
    w.insert(
        "inception_model.vis_inception.2.branch1.bn.num_batches_tracked",
        Tensor::new(vec![], vec![5.0]),
    );
    assert!(w
        .keys()
        .any(|k| k.starts_with("inception_model.vis_inception.8.branch3.")));
    let m = AstroMae::load(&w, "x").unwrap();
    assert!(m.unused_keys().is_empty(), "{:?}", m.unused_keys());
    w.insert("norm.weight", Tensor::zeros(&[192]));
    w.insert("blocks.7.norm1.bias", Tensor::zeros(&[192])); // a stray block without norm1.weight
    let m = AstroMae::load(&w, "x").unwrap();
    assert_eq!(
        m.unused_keys(),
        &["blocks.7.norm1.bias".to_string(), "norm.weight".to_string()]
    );
}

#[test]
fn module_prefix_is_stripped() {
    let cfg = small();
    let w = init::astromae_weights(3, &cfg);
    let mut pref = Weights::new();
    for (k, t) in w.iter() {
        pref.insert(format!("module.{k}"), t.clone());
    }
    assert!(AstroMae::load(&pref, "dp").is_err());
    let m = AstroMae::load(&pref.strip_prefix("module."), "dp").unwrap();
    assert_eq!(m.config(), &cfg);
}

#[test]
fn safetensors_round_trip_preserves_the_model() {
    let cfg = small();
    let w = init::astromae_weights(9, &cfg);
    let model = AstroMae::load(&w, "s").unwrap();
    let mut meta = BTreeMap::new();
    meta.insert("source".to_string(), "test".to_string());
    let mut saved = w.clone();
    model.write_back(&mut saved);
    let bytes = saved.to_safetensors(&meta).unwrap();
    let back = Weights::from_safetensors("rt.safetensors", &bytes).unwrap();
    assert_eq!(back.metadata().get("heads").map(String::as_str), Some("3"));
    assert_eq!(
        back.metadata().get("source").map(String::as_str),
        Some("test")
    );
    for (k, t) in w.iter() {
        assert_eq!(back.get(k), Some(t), "{k}");
    }
    let again = AstroMae::load(&back, "rt.safetensors").unwrap();
    let (img, mag) = inputs(2, &cfg, 10);
    assert_eq!(
        again.predict(&img, &mag, 2).unwrap(),
        model.predict(&img, &mag, 2).unwrap()
    );
}

#[test]
fn heads_come_from_metadata_then_hint_then_width() {
    let cfg = small();
    let mut w = init::astromae_weights(1, &cfg);
    let (img, mag) = inputs(1, &cfg, 2);
    let three = AstroMae::load(&w, "s").unwrap();
    assert_eq!(three.config().heads, 3);
    // Metadata wins over the hint.
    w.set_metadata("heads", "6");
    let six = AstroMae::load_with(
        &w,
        "s",
        &LoadOptions {
            heads: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(six.config().heads, 6);
    assert_ne!(
        six.predict(&img, &mag, 1).unwrap(),
        three.predict(&img, &mag, 1).unwrap()
    );
    // Compare 6 heads with the reference too.
    let (f, _) = Reference::new(&w, 6).forward(&img, &mag, 5, 32);
    let got = six.features(&img, &mag, 1).unwrap();
    let scale = max_abs(f.iter().copied());
    assert!(max_abs(f.iter().zip(&got).map(|(a, b)| a - *b as f64)) <= 1e-4 * scale);
    // Without metadata the hint is used; a head count that does not divide D is an error.
    let mut plain = init::astromae_weights(1, &cfg);
    plain = {
        let mut p = Weights::new();
        for (k, t) in plain.iter() {
            p.insert(k, t.clone());
        }
        p
    };
    assert_eq!(
        AstroMae::load_with(
            &plain,
            "s",
            &LoadOptions {
                heads: Some(2),
                ..Default::default()
            }
        )
        .unwrap()
        .config()
        .heads,
        2
    );
    assert_eq!(AstroMae::load(&plain, "s").unwrap().config().heads, 3);
    assert!(matches!(
        AstroMae::load_with(
            &plain,
            "s",
            &LoadOptions {
                heads: Some(5),
                ..Default::default()
            }
        ),
        Err(Error::Config { .. })
    ));
    w.set_metadata("heads", "three");
    assert!(matches!(AstroMae::load(&w, "s"), Err(Error::Config { .. })));
}

#[test]
fn init_is_deterministic_per_seed() {
    let cfg = small();
    let a = init::astromae_weights(11, &cfg);
    let b = init::astromae_weights(11, &cfg);
    let c = init::astromae_weights(12, &cfg);
    assert_eq!(a, b);
    assert_ne!(
        a.get("blocks.0.attn.qkv.weight"),
        c.get("blocks.0.attn.qkv.weight")
    );
    assert_eq!(a.get("pos_embed"), c.get("pos_embed"));
    // PyTorch default scales: |w| <= 1/sqrt(fan_in).
    let qkv = a.get("blocks.0.attn.qkv.weight").unwrap();
    let bound = 1.0 / (192f32).sqrt();
    assert!(qkv.data.iter().all(|v| v.abs() <= bound));
    assert!(qkv.data.iter().any(|v| v.abs() > 0.9 * bound));
    assert_eq!(
        a.get("inception_model.conv2d_init.weight"),
        a.get("inception_model.vis_inception.0.weight")
    );
}

#[test]
fn full_config_shape_and_counts() {
    let cfg = Config::astromae();
    let w = init::astromae_weights(0, &cfg);
    let m = AstroMae::load(&w, "full").unwrap();
    assert_eq!(m.config(), &cfg);
    assert!(m.unused_keys().is_empty());
    // Parameters: every tensor but BN buffers, the shared conv counted once.
    let expected: usize = w
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .filter(|(k, _)| !k.starts_with("inception_model.vis_inception.0."))
        .map(|(_, t)| t.numel())
        .sum();
    assert_eq!(m.param_count(), expected);
    let gf = cfg.flops_per_galaxy() as f64 / 1e9;
    assert!((0.74..0.79).contains(&gf), "{gf} GFLOP");
    // The last block's fc2 runs on the pooled row only: 63 of its 64 patch rows skipped.
    assert_eq!(cfg.flops_skipped_per_galaxy(), 2 * 63 * 768 * 192);
    assert_eq!(
        cfg.executed_flops_per_galaxy() + cfg.flops_skipped_per_galaxy(),
        cfg.flops_per_galaxy()
    );
}

mod hostile {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn base() -> &'static Weights {
        static W: OnceLock<Weights> = OnceLock::new();
        W.get_or_init(|| {
            init::astromae_weights(
                5,
                &Config {
                    dim: 64,
                    depth: 1,
                    heads: 1,
                    mlp: 64,
                    ..Config::astromae()
                },
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Replacing any tensor with one of another shape never panics: load fails with an
        /// error naming the key, or (if the shape still fits) the model runs.
        #[test]
        fn reshaped_tensor_never_panics(key_pick in 0usize..10_000, dims in proptest::collection::vec(0usize..6, 0..5)) {
            let mut w = base().clone();
            let keys: Vec<String> = w.keys().map(str::to_string).collect();
            let key = &keys[key_pick % keys.len()];
            w.insert(key.as_str(), Tensor::zeros(&dims));
            match AstroMae::load(&w, "hostile") {
                Ok(m) => {
                    let (c, h, wd) = m.input_shape();
                    let z = m.predict(&vec![0.5; c * h * wd], &vec![18.0; m.magnitudes()], 1).unwrap();
                    prop_assert_eq!(z.len(), 1);
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains("hostile"), "{}", msg);
                }
            }
        }
    }
}
