//! Checkpoints as training loops save them: the model inside a dict next to the epoch,
//! the optimizer and numpy scalars. Real files from tests/torch_files
//! (scripts/parity/make_torch_zip_fixtures.py, torch 2.15, numpy 2.4) and hand-built
//! pickles for numpy 1.x's `numpy.core` path.

use std::path::PathBuf;

use cai_torch::{read_checkpoint, read_checkpoint_with, CheckpointForm, Error, ReadOptions};

use crate::util::{f32_storage, torch_zip, P, T};

fn load(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    std::fs::read(dir.join("tests/torch_files").join(name)).unwrap()
}

/// The fixture model's state dict (see the script's docstring).
fn expected() -> Vec<(&'static str, Vec<f32>)> {
    vec![
        ("0.weight", (0..12).map(|i| i as f32 / 10.0).collect()),
        ("0.bias", vec![0.5, -0.5, 1.5]),
        ("2.weight", (0..6).map(|i| i as f32 - 2.5).collect()),
        ("2.bias", vec![1.0, -1.0]),
    ]
}

fn check(c: &cai_torch::Checkpoint, prefix: &str) {
    let got: Vec<(String, Vec<f32>)> = c
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_f32().unwrap()))
        .collect();
    let want: Vec<(String, Vec<f32>)> = expected()
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    assert_eq!(got, want);
}

fn with_keys(keys: &[&str]) -> ReadOptions {
    ReadOptions {
        model_keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn training_loop_checkpoint_with_optimizer_and_numpy_scalars() {
    let c = read_checkpoint("train_loop.pt", &load("train_loop.pt")).unwrap();
    assert_eq!(c.wrapper_key.as_deref(), Some("model_state_dict"));
    assert_eq!(
        c.form,
        CheckpointForm::StateDict {
            module_prefix: false
        }
    );
    assert_eq!(c.stripped_prefix, None);
    check(&c, "");
}

#[test]
fn lightning_checkpoint_strips_the_model_prefix_when_asked() {
    let bytes = load("lightning.pt");
    let c = read_checkpoint("lightning.pt", &bytes).unwrap();
    assert_eq!(c.wrapper_key.as_deref(), Some("state_dict"));
    check(&c, "model.");
    let c =
        read_checkpoint_with("lightning.pt", &bytes, &with_keys(&["0.weight", "2.bias"])).unwrap();
    assert_eq!(c.stripped_prefix.as_deref(), Some("model."));
    check(&c, "");
}

#[test]
fn whole_module_in_a_dict() {
    let c = read_checkpoint("module_in_dict.pt", &load("module_in_dict.pt")).unwrap();
    assert_eq!(c.wrapper_key.as_deref(), Some("model"));
    assert_eq!(c.form, CheckpointForm::WholeModule);
    assert_eq!(c.modules[0].class, "torch.nn.modules.container.Sequential");
    check(&c, "");
}

#[test]
fn several_candidates_are_an_error_listing_them() {
    let bytes = load("two_models.pt");
    for opts in [ReadOptions::default(), with_keys(&["0.weight"])] {
        match read_checkpoint_with("two_models.pt", &bytes, &opts) {
            Err(e @ Error::AmbiguousCheckpoint { .. }) => {
                let msg = e.to_string();
                assert!(msg.starts_with("two_models.pt: "), "{msg}");
                let Error::AmbiguousCheckpoint { candidates, .. } = e else {
                    unreachable!()
                };
                assert_eq!(candidates, ["model_state_dict", "ema_state_dict"]);
            }
            other => panic!("{other:?}"),
        }
    }
    // Keys neither has: still ambiguous.
    let c = read_checkpoint_with("two_models.pt", &bytes, &with_keys(&["missing"]));
    assert!(matches!(c, Err(Error::AmbiguousCheckpoint { .. })));
}

#[test]
fn no_candidate_is_an_error_listing_the_top_level_keys() {
    match read_checkpoint("no_model.pt", &load("no_model.pt")) {
        Err(Error::NoModelInCheckpoint { file, keys }) => {
            assert_eq!(file, "no_model.pt");
            assert_eq!(keys, ["epoch", "loss"]);
        }
        other => panic!("{other:?}"),
    }
}

/// `{"loss": numpy.core.multiarray.scalar(float64), "ema": {..}, "model_state_dict": {..}}`
/// as numpy 1.x pickles it; the model keys pick `model_state_dict` over `ema`.
#[test]
fn numpy_1_scalars_and_a_choice_by_model_keys() {
    let mut p = P::new();
    p.raw(b"}").mark().str("loss");
    p.global("numpy.core.multiarray", "scalar");
    p.global("numpy", "dtype")
        .str("f8")
        .raw(&[0x89, 0x88, 0x87])
        .raw(b"R");
    p.mark()
        .int(3)
        .str("<")
        .raw(b"NNN")
        .int(-1)
        .int(-1)
        .int(0)
        .tuple()
        .raw(b"b");
    p.global("_codecs", "encode");
    let latin1: String = 0.125f64
        .to_le_bytes()
        .iter()
        .map(|&b| char::from(b))
        .collect();
    p.str(&latin1)
        .str("latin1")
        .raw(&[0x86])
        .raw(b"R")
        .raw(&[0x86])
        .raw(b"R");
    for (key, name, storage) in [
        ("ema", "head.weight", "0"),
        ("model_state_dict", "blocks.0.w", "1"),
    ] {
        let mut t = T::f32(storage, &[2]);
        t.param = false;
        p.str(key).raw(b"}").mark().str(name).tensor(&t).raw(b"u");
    }
    p.raw(b"u");
    let bytes = torch_zip(
        &p.stop(),
        &[("0", f32_storage(0, 2)), ("1", f32_storage(1, 2))],
    );
    assert!(matches!(
        read_checkpoint("np1.pt", &bytes),
        Err(Error::AmbiguousCheckpoint { .. })
    ));
    let c = read_checkpoint_with("np1.pt", &bytes, &with_keys(&["blocks.0.w"])).unwrap();
    assert_eq!(c.wrapper_key.as_deref(), Some("model_state_dict"));
    assert_eq!(c.tensors[0].1.to_f32().unwrap(), vec![1000.0, 1001.0]);
}
