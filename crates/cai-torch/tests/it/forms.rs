//! Every form of model file, built by hand the way torch 2.x pickles it.

use cai_torch::{read_checkpoint, read_tensor_dataset, Attr, CheckpointForm, DType, Error};

use crate::util::{f32_storage, torch_zip, Child, M, P, T};

/// A small model: root{ patch_embed.proj (Conv2d), blocks (Sequential of 2 Linear),
/// norm (BatchNorm2d with buffers) }.
fn model() -> M {
    let conv = M::new("torch.nn.modules.conv.Conv2d")
        .param("weight", T::f32("0", &[4, 5, 2, 2]))
        .param("bias", T::f32("1", &[4]));
    let lin = |w: &str, b: &str| {
        M::new("torch.nn.modules.linear.Linear")
            .param("weight", T::f32(w, &[3, 4]))
            .param("bias", T::f32(b, &[3]))
    };
    let mut bn = M::new("torch.nn.modules.batchnorm.BatchNorm2d")
        .param("weight", T::f32("6", &[3]))
        .param("bias", T::f32("7", &[3]));
    let mut rm = T::f32("8", &[3]);
    rm.param = false;
    let mut nbt = T::f32("9", &[]);
    nbt.param = false;
    nbt.storage = "LongStorage";
    bn.buffers = vec![
        ("running_mean".into(), rm),
        ("num_batches_tracked".into(), nbt),
    ];
    let mut attn = M::new("timm.models.vision_transformer.Attention");
    attn.attrs = vec![("num_heads".into(), 3)];
    M::new("blocks.model_vit_inception.ViT_Astro")
        .child(
            "patch_embed",
            M::new("timm.models.layers.patch_embed.PatchEmbed").child("proj", conv),
        )
        .child(
            "blocks",
            M::new("torch.nn.modules.container.Sequential")
                .child("0", lin("2", "3"))
                .child("1", lin("4", "5"))
                .child("attn", attn),
        )
        .child("norm", bn)
}

fn storages() -> Vec<(&'static str, Vec<u8>)> {
    let sizes = [80usize, 4, 12, 3, 12, 3, 3, 3, 3];
    let mut s: Vec<(&'static str, Vec<u8>)> = ["0", "1", "2", "3", "4", "5", "6", "7", "8"]
        .iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, (k, n))| (*k, f32_storage(i as u32, n)))
        .collect();
    s.push(("9", 7i64.to_le_bytes().to_vec()));
    s
}

const KEYS: [&str; 10] = [
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "blocks.0.weight",
    "blocks.0.bias",
    "blocks.1.weight",
    "blocks.1.bias",
    "norm.weight",
    "norm.bias",
    "norm.running_mean",
    "norm.num_batches_tracked",
];

fn check_tensors(c: &cai_torch::Checkpoint) {
    let keys: Vec<&str> = c.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, KEYS);
    let w = c.get("blocks.0.weight").unwrap();
    assert_eq!(w.shape, vec![3, 4]);
    assert_eq!(w.to_f32().unwrap()[5], 2005.0);
    let nbt = c.get("norm.num_batches_tracked").unwrap();
    assert_eq!((nbt.dtype, nbt.shape.len()), (DType::I64, 0));
    assert_eq!(nbt.to_f32().unwrap(), vec![7.0]);
}

#[test]
fn whole_module_in_data_parallel() {
    let mut p = P::new();
    let dp = M::new("torch.nn.parallel.data_parallel.DataParallel").child("module", model());
    p.module(&dp);
    let bytes = torch_zip(&p.stop(), &storages());
    let c = read_checkpoint("dp.pt", &bytes).unwrap();
    assert_eq!(c.form, CheckpointForm::WholeModuleDataParallel);
    check_tensors(&c);
    assert_eq!(c.classes[0], "torch.nn.parallel.data_parallel.DataParallel");
    assert!(c
        .classes
        .contains(&"timm.models.layers.patch_embed.PatchEmbed".to_string()));
    let attn = c.module("blocks.attn").unwrap();
    assert_eq!(attn.class, "timm.models.vision_transformer.Attention");
    assert_eq!(attn.attr("num_heads"), Some(&Attr::Int(3)));
    assert_eq!(attn.attr("training"), Some(&Attr::Bool(true)));
    assert_eq!(c.modules[0].path, "");
}

#[test]
fn whole_module_bare() {
    let mut p = P::new();
    p.module(&model());
    let c = read_checkpoint("m.pt", &torch_zip(&p.stop(), &storages())).unwrap();
    assert_eq!(c.form, CheckpointForm::WholeModule);
    check_tensors(&c);
}

fn state_dict(prefix: &str, location: &str) -> Vec<u8> {
    let mut p = P::new();
    p.ordered_dict();
    p.put();
    p.mark();
    let m = model();
    // Same order as the module walk.
    let mut flat: Vec<(String, T)> = Vec::new();
    fn walk(m: &M, pre: &str, out: &mut Vec<(String, T)>) {
        for (k, t) in &m.params {
            out.push((format!("{pre}{k}"), t.clone().unwrap()));
        }
        for (k, t) in &m.buffers {
            out.push((format!("{pre}{k}"), t.clone()));
        }
        for (k, c) in &m.children {
            if let Child::M(c) = c {
                walk(c, &format!("{pre}{k}."), out);
            }
        }
    }
    walk(&m, prefix, &mut flat);
    for (k, mut t) in flat {
        t.param = false;
        t.location = location.to_string();
        p.str(&k).tensor(&t);
    }
    p.raw(b"u");
    // state_dict()._metadata, set by BUILD on the OrderedDict.
    p.raw(b"}")
        .str("_metadata")
        .raw(b"}")
        .str("")
        .raw(b"}")
        .str("version")
        .int(1);
    p.raw(b"sssb");
    torch_zip(&p.stop(), &storages())
}

#[test]
fn state_dict_plain_and_prefixed_and_gpu_tagged() {
    let c = read_checkpoint("sd.pt", &state_dict("", "cpu")).unwrap();
    assert_eq!(
        c.form,
        CheckpointForm::StateDict {
            module_prefix: false
        }
    );
    check_tensors(&c);
    assert!(c.modules.is_empty());
    let c = read_checkpoint("sd.pt", &state_dict("module.", "cuda:0")).unwrap();
    assert_eq!(
        c.form,
        CheckpointForm::StateDict {
            module_prefix: true
        }
    );
    assert_eq!(c.locations, vec!["cuda:0".to_string()]);
    check_tensors(&c);
}

#[test]
fn shared_module_appears_under_both_names_and_none_entries_are_skipped() {
    let mut p = P::new();
    // root { a: Linear, b: <same Linear>, c: None } with a None parameter and a
    // non-persistent buffer.
    let mut lin = M::new("torch.nn.modules.linear.Linear").param("weight", T::f32("0", &[2, 2]));
    lin.params.push(("bias".into(), None));
    let mut rm = T::f32("1", &[2]);
    rm.param = false;
    lin.buffers = vec![("tmp".into(), rm)];
    lin.non_persistent = vec!["tmp".into()];
    // Pickle `a` first to learn its memo index, then refer to it for `b`.
    let mut root = M::new("torch.nn.modules.container.Sequential").child("a", lin);
    root.children.push(("c".into(), Child::None));
    // The module `a` is the second object pickled: memo index 1.
    root.children.push(("b".into(), Child::Memo(1)));
    p.module(&root);
    let bytes = torch_zip(
        &p.stop(),
        &[("0", f32_storage(0, 4)), ("1", f32_storage(1, 2))],
    );
    let c = read_checkpoint("shared.pt", &bytes).unwrap();
    let keys: Vec<&str> = c.tensors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["a.weight", "b.weight"]);
    assert_eq!(c.tensors[0].1, c.tensors[1].1);
}

#[test]
fn strided_views_are_materialised() {
    // Storage holds 0..6 (f32); a [3, 2] transposed view with offset 0, and a [2] view at
    // offset 4; an f64 and a big-endian storage are covered elsewhere.
    let mut p = P::new();
    let mut t = T::f32("0", &[3, 2]);
    t.stride = vec![1, 3];
    t.numel = 6;
    let mut u = T::f32("0", &[2]);
    u.offset = 4;
    u.numel = 6;
    let m = M::new("torch.nn.modules.linear.Linear")
        .param("weight", t)
        .param("bias", u);
    p.module(&m);
    let c = read_checkpoint("v.pt", &torch_zip(&p.stop(), &[("0", f32_storage(0, 6))])).unwrap();
    assert_eq!(c.tensors[0].1.shape, vec![3, 2]);
    assert_eq!(
        c.tensors[0].1.to_f32().unwrap(),
        vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
    assert_eq!(c.tensors[1].1.to_f32().unwrap(), vec![4.0, 5.0]);
}

/// A TensorDataset pickle over (images f32 [2,5,2,2], magnitudes f64 [2,5], z f16 [2]).
pub fn dataset_pickle(keys: [&str; 3]) -> Vec<u8> {
    let mut p = P::new();
    p.global("torch.utils.data.dataset", "TensorDataset")
        .raw(b")\x81}")
        .str("tensors")
        .mark();
    let mut img = T::f32(keys[0], &[2, 5, 2, 2]);
    img.param = false;
    let mut mag = T::f32(keys[1], &[2, 5]);
    mag.param = false;
    mag.storage = "DoubleStorage";
    let mut z = T::f32(keys[2], &[2]);
    z.param = false;
    z.storage = "HalfStorage";
    p.tensor(&img).tensor(&mag).tensor(&z);
    p.raw(b"tsb");
    p.stop()
}

pub fn dataset_storages() -> Vec<(&'static str, Vec<u8>)> {
    let mag: Vec<u8> = (0..10)
        .flat_map(|i| (20.0 + i as f64 / 4.0).to_le_bytes())
        .collect();
    let z: Vec<u8> = [0x3c00u16, 0x3800]
        .iter()
        .flat_map(|h| h.to_le_bytes())
        .collect();
    vec![("0", f32_storage(0, 40)), ("1", mag), ("2", z)]
}

#[test]
fn tensor_dataset_with_mixed_dtypes() {
    let bytes = torch_zip(&dataset_pickle(["0", "1", "2"]), &dataset_storages());
    let ts = read_tensor_dataset("1.pt", &bytes).unwrap();
    assert_eq!(ts.len(), 3);
    assert_eq!(ts[0].shape, vec![2, 5, 2, 2]);
    assert_eq!(ts[1].dtype, DType::F64);
    assert_eq!(ts[1].to_f32().unwrap()[3], 20.75);
    assert_eq!(ts[2].to_f32().unwrap(), vec![1.0, 0.5]);
    // A dataset is not a model, and a model is not a dataset.
    assert!(matches!(
        read_checkpoint("1.pt", &bytes),
        Err(Error::UnexpectedContent { .. })
    ));
    let mut p = P::new();
    p.module(&model());
    assert!(matches!(
        read_tensor_dataset("m.pt", &torch_zip(&p.stop(), &storages())),
        Err(Error::UnexpectedContent { .. })
    ));
}

#[test]
fn big_endian_storages_are_swapped() {
    let mut p = P::new();
    let m = M::new("torch.nn.modules.linear.Linear").param("weight", T::f32("0", &[2]));
    p.module(&m);
    let be: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let pkl = p.stop();
    let bytes = crate::util::zip_of(&[
        ("archive/data.pkl", &pkl),
        ("archive/byteorder", b"big"),
        ("archive/data/0", &be),
        ("archive/version", b"3\n"),
    ]);
    let c = read_checkpoint("be.pt", &bytes).unwrap();
    assert_eq!(c.tensors[0].1.to_f32().unwrap(), vec![1.5, -2.0]);
}

#[test]
fn protocol_4_framing_memoize_and_stack_global() {
    // FRAME, STACK_GLOBAL, MEMOIZE and SHORT_BINUNICODE as pickle protocol 4 writes them.
    let mut p = P::default();
    p.raw(&[0x80, 4, 0x95]).raw(&0u64.to_le_bytes());
    let short = |p: &mut P, s: &str| {
        p.raw(&[0x8c, s.len() as u8]).raw(s.as_bytes()).raw(&[0x94]);
    };
    short(&mut p, "collections");
    short(&mut p, "OrderedDict");
    p.raw(&[0x93, 0x94]).raw(b")R").raw(&[0x94]).mark();
    short(&mut p, "w");
    let mut t = T::f32("0", &[2]);
    t.param = false;
    p.tensor(&t).raw(b"u");
    let c = read_checkpoint("p4.pt", &torch_zip(&p.stop(), &[("0", f32_storage(0, 2))])).unwrap();
    assert_eq!(c.tensors[0].0, "w");
}

#[test]
fn old_torch_cuda_storage_names_and_deflated_entries() {
    // torch < 1.13 pickles GPU storages as `torch.cuda.FloatStorage`; some tools re-zip
    // checkpoints with deflate.
    let mut p = P::new();
    let mut t = T::f32("0", &[3]);
    t.storage = "cuda.FloatStorage";
    t.location = "cuda:0".into();
    p.module(&M::new("torch.nn.modules.linear.Linear").param("weight", t));
    let pkl = p.stop();
    let s = f32_storage(0, 3);
    let bytes = crate::util::zip_with(
        &[
            ("archive/data.pkl", &pkl),
            ("archive/data/0", &s),
            ("archive/version", b"3\n"),
        ],
        zip::CompressionMethod::Deflated,
    );
    let c = read_checkpoint("old.pt", &bytes).unwrap();
    assert_eq!(c.tensors[0].1.to_f32().unwrap(), vec![0.0, 1.0, 2.0]);
    assert_eq!(c.locations, vec!["cuda:0".to_string()]);
}
