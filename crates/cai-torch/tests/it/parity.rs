//! Real PyTorch fixtures (scripts/parity/make_fixtures.py), read only when `CAI_PARITY_DIR`
//! names the directory it wrote. Skipped otherwise.

use std::path::PathBuf;

use cai_torch::{read_checkpoint, read_tensor_dataset, Attr, CheckpointForm, DType};

fn dir() -> Option<PathBuf> {
    let d = std::env::var_os("CAI_PARITY_DIR")?;
    Some(PathBuf::from(d))
}

fn load(d: &std::path::Path, name: &str) -> cai_torch::Checkpoint {
    let bytes = std::fs::read(d.join(name)).unwrap();
    read_checkpoint(name, &bytes).unwrap()
}

#[test]
fn pytorch_fixtures_read_the_same_in_every_form() {
    let Some(d) = dir() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI is set but CAI_PARITY_DIR is not (.ci/run makes the fixtures)"
        );
        eprintln!("skipped: set CAI_PARITY_DIR (scripts/parity/make_fixtures.py)");
        return;
    };
    let dp = load(&d, "model_dp.pt");
    assert_eq!(dp.form, CheckpointForm::WholeModuleDataParallel);
    for class in [
        "blocks.model_vit_inception.ViT_Astro",
        "blocks.photoz.Input_Mix_Model",
        "blocks.photoz.InceptionBlock",
        "blocks.photoz.ConvBlock",
        "timm.models.vision_transformer.Block",
        "timm.models.vision_transformer.Attention",
        "timm.models.layers.mlp.Mlp",
        "timm.models.layers.patch_embed.PatchEmbed",
    ] {
        assert!(dp.classes.iter().any(|c| c == class), "{class}");
    }
    // Hyperparameters that shapes alone do not tell.
    let attn = dp.module("blocks.0.attn").unwrap();
    assert_eq!(attn.attr("num_heads"), Some(&Attr::Int(3)));
    let pe = dp.module("patch_embed").unwrap();
    assert_eq!(pe.attr("patch_size"), Some(&Attr::Ints(vec![4, 4])));
    let depth = dp
        .modules
        .iter()
        .filter(|m| m.class == "timm.models.vision_transformer.Block")
        .count();
    assert_eq!(depth, 12);

    // The shared first conv is listed under both names, as state_dict() does.
    assert!(dp.get("inception_model.conv2d_init.weight").is_some());
    assert_eq!(
        dp.get("inception_model.conv2d_init.weight"),
        dp.get("inception_model.vis_inception.0.weight")
    );
    let bn = dp
        .get("inception_model.vis_inception.2.branch1.bn.num_batches_tracked")
        .unwrap();
    assert_eq!((bn.dtype, bn.to_f32().unwrap()), (DType::I64, vec![1234.0]));

    let params: usize = dp
        .tensors
        .iter()
        .filter(|(k, t)| t.dtype == DType::F32 && !k.contains("running_"))
        .filter(|(k, _)| !k.starts_with("inception_model.conv2d_init."))
        .map(|(_, t)| t.numel())
        .sum();
    assert_eq!(params, 15_764_649);

    let sd = load(&d, "state_dict.pt");
    assert_eq!(
        sd.form,
        CheckpointForm::StateDict {
            module_prefix: false
        }
    );
    // Same keys, same order, same bytes: the module walk matches torch's state_dict().
    assert_eq!(dp.tensors, sd.tensors);
    let sdp = load(&d, "state_dict_module_prefix.pt");
    assert_eq!(
        sdp.form,
        CheckpointForm::StateDict {
            module_prefix: true
        }
    );
    assert_eq!(sdp.tensors, sd.tensors);
    let whole = load(&d, "model.pt");
    assert_eq!(whole.form, CheckpointForm::WholeModule);
    assert_eq!(whole.tensors, sd.tensors);
    let gpu = load(&d, "model_dp_cuda_tagged.pt");
    assert_eq!(gpu.form, CheckpointForm::WholeModuleDataParallel);
    assert_eq!(gpu.locations, vec!["cuda:0".to_string()]);
    assert_eq!(gpu.tensors, sd.tensors);

    let part = read_tensor_dataset("1.pt", &std::fs::read(d.join("1.pt")).unwrap()).unwrap();
    assert_eq!(part.len(), 3);
    assert_eq!(
        (part[0].dtype, part[0].shape[1..].to_vec()),
        (DType::F32, vec![5, 32, 32])
    );
    assert_eq!((part[1].dtype, part[1].shape[1]), (DType::F64, 5));
    let n = part[0].shape[0];
    let expected = load(&d, "expected.pt");
    assert_eq!(expected.get("output").unwrap().shape, vec![n, 1]);
    assert_eq!(
        expected.get("vit.blocks.11").unwrap().shape,
        vec![n, 65, 192]
    );
}
