//! Model files of every form the original and this project produce, auto-detected:
//!
//! * safetensors (the native form: `cai model init/fit/convert` write it);
//! * a PyTorch `torch.save` zip holding the whole pickled module, bare or inside
//!   `nn.DataParallel` (the original's published checkpoint), saved on a CPU or a GPU
//!   machine (`cuda:0` storages load on the CPU);
//! * a `state_dict` `.pt`, with or without DataParallel's `module.` key prefix;
//! * either of those inside a dict, as training loops save checkpoints
//!   (`{"epoch": …, "model_state_dict": …, "optimizer_state_dict": …}`, Lightning's
//!   `{"state_dict": …}` with `model.`-prefixed keys, `{"model": module}`): the entry
//!   holding AstroMAE's keys ([`MODEL_KEYS`]) is used, and its key is part of the
//!   [`ModelForm`] that `cai model inspect` prints.
//!
//! `.pt` files are read by `cai-torch`, which interprets the pickle without executing
//! anything. Every weight must be finite: a NaN or infinity is an [`Error::NonFinite`]
//! naming its key. For whole modules, the head count and patch size are read from the
//! pickled modules' attributes (`blocks.0.attn.num_heads`, `patch_embed.patch_size`) and
//! checked against the tensor shapes.

use rayon::prelude::*;

use crate::{AstroMae, Error, LoadOptions, Tensor, Weights};

/// Keys every AstroMAE state dict has, used to find the model inside a dict checkpoint
/// (and under a prefix such as Lightning's `model.`).
pub const MODEL_KEYS: [&str; 2] = ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight"];

/// How a model file was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelForm {
    /// A safetensors file of `state_dict`-named tensors.
    Safetensors {
        /// Whether every key carried (and lost) a `module.` prefix.
        module_prefix: bool,
    },
    /// `torch.save(nn.DataParallel(model))`: the original's form.
    WholeModuleDataParallel,
    /// `torch.save(model)`.
    WholeModule,
    /// `torch.save(model.state_dict())`.
    StateDict {
        /// Whether every key carried (and lost) a `module.` prefix.
        module_prefix: bool,
    },
    /// One of the forms above as an entry of a dict checkpoint (`torch.save({"epoch": …,
    /// "model_state_dict": model.state_dict(), …})`).
    Wrapped {
        /// The dict key holding the model (`model_state_dict`, `state_dict`, `model`…).
        key: String,
        /// A prefix removed from the keys (Lightning's `model.`), if any.
        prefix: Option<String>,
        /// How the entry itself was saved.
        inner: Box<ModelForm>,
    },
}

impl std::fmt::Display for ModelForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = |p: bool| {
            if p {
                " (keys with `module.` prefix)"
            } else {
                ""
            }
        };
        match self {
            ModelForm::Safetensors { module_prefix } => {
                write!(f, "safetensors state_dict{}", prefix(*module_prefix))
            }
            ModelForm::WholeModuleDataParallel => {
                write!(f, "PyTorch whole module in DataParallel")
            }
            ModelForm::WholeModule => write!(f, "PyTorch whole module"),
            ModelForm::StateDict { module_prefix } => {
                write!(f, "PyTorch state_dict{}", prefix(*module_prefix))
            }
            ModelForm::Wrapped { key, prefix, inner } => {
                write!(f, "{inner} under key `{key}` of a checkpoint dict")?;
                match prefix {
                    Some(p) => write!(f, " (key prefix `{p}` removed)"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What [`load_model_file`] learned about a file besides the model itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFileInfo {
    /// How the file was saved.
    pub form: ModelForm,
    /// Class paths the pickle named (empty for safetensors and plain state dicts' tensors
    /// only list torch's rebuild helpers).
    pub classes: Vec<String>,
    /// Storage locations named in a `.pt` (`cpu`, `cuda:0`…); empty for safetensors.
    pub locations: Vec<String>,
    /// `num_heads` of the first attention module, for whole-module files.
    pub heads_attr: Option<usize>,
    /// `patch_size` of `patch_embed`, for whole-module files.
    pub patch_attr: Option<usize>,
    /// Keys the model did not read (besides known leftovers such as
    /// `num_batches_tracked`).
    pub unused_keys: Vec<String>,
    /// Parameters as PyTorch's `model.parameters()` counts them.
    pub param_count: usize,
    /// Number of tensors in the file.
    pub tensors: usize,
}

/// What [`read_model_weights`] returns: the weights and what the file says about itself.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// `state_dict`-named tensors, any `module.` prefix removed, as f32.
    pub weights: Weights,
    /// How the file was saved.
    pub form: ModelForm,
    /// Class paths named by the pickle (empty for safetensors).
    pub classes: Vec<String>,
    /// Storage locations (empty for safetensors).
    pub locations: Vec<String>,
    /// `blocks.0.attn.num_heads`, when the file holds pickled modules.
    pub heads_attr: Option<usize>,
    /// `patch_embed.patch_size`, when the file holds pickled modules.
    pub patch_attr: Option<usize>,
}

/// Reads the weights of a model file of any form (detected from its bytes) without
/// building the model. Refuses non-finite weights. `name` labels errors.
pub fn read_model_weights(name: &str, bytes: &[u8]) -> Result<ModelWeights, Error> {
    if cai_torch::is_torch_zip(bytes) {
        return read_torch(name, bytes);
    }
    if bytes.starts_with(b"PK\x03\x04") {
        // A zip that is not a readable torch archive: let cai-torch say what is wrong.
        return match cai_torch::read_checkpoint(name, bytes) {
            Err(e) => Err(Error::Torch(e)),
            Ok(_) => Err(Error::Config {
                file: name.to_string(),
                message: "a zip archive that is not a model file".into(),
            }),
        };
    }
    if bytes.starts_with(b"\x80\x02\x8a\x0a") {
        return Err(Error::Config {
            file: name.to_string(),
            message: "a legacy (pre-1.6, non-zip) PyTorch file; re-save it with \
                      torch.save(..., _use_new_zipfile_serialization=True)"
                .into(),
        });
    }
    let mut weights = Weights::from_safetensors(name, bytes)?;
    let module_prefix = !weights.is_empty() && weights.keys().all(|k| k.starts_with("module."));
    if module_prefix {
        weights = weights.strip_prefix("module.");
    }
    let tensors: Vec<_> = weights.iter().collect();
    tensors
        .into_par_iter()
        .try_for_each(|(key, t)| check_finite(name, key, &t.data))?;
    Ok(ModelWeights {
        weights,
        form: ModelForm::Safetensors { module_prefix },
        classes: Vec::new(),
        locations: Vec::new(),
        heads_attr: None,
        patch_attr: None,
    })
}

/// Loads an AstroMAE from a model file of any form (see the module docs), with the head
/// count from the pickled modules when present. `name` labels errors.
pub fn load_model_file(name: &str, bytes: &[u8]) -> Result<(AstroMae, ModelFileInfo), Error> {
    build_model(name, &read_model_weights(name, bytes)?)
}

/// The second half of [`load_model_file`]: builds the model from weights
/// [`read_model_weights`] read (so a caller can free the file's bytes first). `name`
/// labels errors.
pub fn build_model(name: &str, mw: &ModelWeights) -> Result<(AstroMae, ModelFileInfo), Error> {
    let opts = LoadOptions {
        heads: mw.heads_attr,
        ..LoadOptions::default()
    };
    // A whole module's own `num_heads` is the truth; metadata only exists in safetensors.
    let model = AstroMae::load_with(&mw.weights, name, &opts)?;
    if let Some(p) = mw.patch_attr {
        if p != model.config().patch {
            return Err(Error::Config {
                file: name.to_string(),
                message: format!(
                    "patch_embed.patch_size is {p} but patch_embed.proj.weight has kernel {}",
                    model.config().patch
                ),
            });
        }
    }
    let info = ModelFileInfo {
        form: mw.form.clone(),
        classes: mw.classes.clone(),
        locations: mw.locations.clone(),
        heads_attr: mw.heads_attr,
        patch_attr: mw.patch_attr,
        unused_keys: model.unused_keys().to_vec(),
        param_count: model.param_count(),
        tensors: mw.weights.len(),
    };
    Ok((model, info))
}

/// A file mapped read-only into memory. Model files are mapped rather than read: the
/// weights are decoded straight from the page cache, with no copy into a freshly zeroed
/// buffer (start-up time).
pub struct MappedFile(memmap2::Mmap);

impl MappedFile {
    /// Maps the file at `path`, all of its pages up front.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the map is only read. A file truncated by another process while mapped
        // would fault the read, as with any mapped file; model files are written whole
        // and renamed into place (`cai model init/fit/convert`), and the engine drops the
        // map once the weights are decoded.
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
        Ok(Self(map))
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({} bytes)", self.0.len())
    }
}

fn check_finite(file: &str, key: &str, data: &[f32]) -> Result<(), Error> {
    // Fast pass without an early exit (so it vectorises): all exponent bits set is NaN or
    // infinity. Only a tensor that fails it is searched for the first bad index.
    let bad = |v: &f32| v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    if !data
        .chunks(1024)
        .any(|c| c.iter().fold(false, |acc, v| acc | bad(v)))
    {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            file: file.to_string(),
            key: key.to_string(),
            index,
            value: data[index],
        }),
        None => Ok(()),
    }
}

fn read_torch(name: &str, bytes: &[u8]) -> Result<ModelWeights, Error> {
    let opts = cai_torch::ReadOptions {
        model_keys: MODEL_KEYS.iter().map(|k| k.to_string()).collect(),
        ..Default::default()
    };
    let mut ck = cai_torch::read_checkpoint_with(name, bytes, &opts).map_err(Error::Torch)?;
    let mut form = match ck.form {
        cai_torch::CheckpointForm::WholeModuleDataParallel => ModelForm::WholeModuleDataParallel,
        cai_torch::CheckpointForm::WholeModule => ModelForm::WholeModule,
        cai_torch::CheckpointForm::StateDict { module_prefix } => {
            ModelForm::StateDict { module_prefix }
        }
    };
    if let Some(key) = ck.wrapper_key.take() {
        form = ModelForm::Wrapped {
            key,
            prefix: ck.stripped_prefix.take(),
            inner: Box::new(form),
        };
    }
    let int_attr = |path: &str, attr: &str| -> Option<usize> {
        match ck.module(path)?.attr(attr)? {
            cai_torch::Attr::Int(v) => usize::try_from(*v).ok(),
            cai_torch::Attr::Ints(v) => v.first().and_then(|x| usize::try_from(*x).ok()),
            _ => None,
        }
    };
    let heads_attr = int_attr("blocks.0.attn", "num_heads").filter(|&h| h > 0);
    let patch_attr = int_attr("patch_embed", "patch_size").filter(|&p| p > 0);
    // Each storage is freed as soon as it is converted (peak memory while loading).
    let decoded: Vec<(String, Tensor)> = std::mem::take(&mut ck.tensors)
        .into_par_iter()
        .map(|(key, t)| {
            let data = t.to_f32().map_err(Error::Torch)?;
            // Counters (i64) are never NaN; floats must be finite (f64 beyond f32 range too).
            check_finite(name, &key, &data)?;
            Ok((key, Tensor::new(t.shape, data)))
        })
        .collect::<Result<_, Error>>()?;
    let mut weights = Weights::new();
    for (key, t) in decoded {
        weights.insert(key, t);
    }
    if let Some(h) = heads_attr {
        weights.set_metadata("heads", h.to_string());
    }
    Ok(ModelWeights {
        weights,
        form,
        classes: ck.classes,
        locations: ck.locations,
        heads_attr,
        patch_attr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init, Config};
    use std::collections::BTreeMap;

    fn small() -> Weights {
        let cfg = Config {
            depth: 1,
            ..Config::astromae()
        };
        init::astromae_weights(3, &cfg)
    }

    /// Appends `{key: tensor…}` SETITEMS items for `w` (keys prefixed), numbering
    /// storages from `storages.len()`.
    fn state_dict_items(w: &Weights, prefix: &str, pkl: &mut Vec<u8>, storages: &mut Vec<Vec<u8>>) {
        for (k, t) in w.iter() {
            let i = storages.len();
            let key = format!("{prefix}{k}");
            pkl.push(b'X');
            pkl.extend_from_slice(&(key.len() as u32).to_le_bytes());
            pkl.extend_from_slice(key.as_bytes());
            pkl.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\0\0\0storage");
            pkl.extend_from_slice(b"ctorch\nFloatStorage\n");
            let id = i.to_string();
            pkl.push(b'X');
            pkl.extend_from_slice(&(id.len() as u32).to_le_bytes());
            pkl.extend_from_slice(id.as_bytes());
            pkl.extend_from_slice(b"X\x03\0\0\0cpu");
            pkl.push(b'J');
            pkl.extend_from_slice(&(t.numel() as u32).to_le_bytes());
            pkl.extend_from_slice(b"tQK\0(");
            for &d in &t.shape {
                pkl.push(b'J');
                pkl.extend_from_slice(&(d as u32).to_le_bytes());
            }
            pkl.extend_from_slice(b"t(");
            let mut acc = 1usize;
            let mut strides = vec![0usize; t.shape.len()];
            for (s, &d) in strides.iter_mut().zip(&t.shape).rev() {
                *s = acc;
                acc *= d;
            }
            for s in strides {
                pkl.push(b'J');
                pkl.extend_from_slice(&(s as u32).to_le_bytes());
            }
            pkl.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
            storages.push(t.data.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
    }

    fn zip_pt(pkl: &[u8], storages: &[Vec<u8>]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        use std::io::Write;
        zip.start_file("archive/data.pkl", o).unwrap();
        zip.write_all(pkl).unwrap();
        zip.start_file("archive/byteorder", o).unwrap();
        zip.write_all(b"little").unwrap();
        for (i, s) in storages.iter().enumerate() {
            zip.start_file(format!("archive/data/{i}"), o).unwrap();
            zip.write_all(s).unwrap();
        }
        zip.start_file("archive/version", o).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn state_dict_pt(w: &Weights, prefix: &str) -> Vec<u8> {
        // A state_dict pickle is a dict of tensors; cai-torch writes only TensorDatasets,
        // so build the pickle by hand, like torch.save does.
        let mut pkl = vec![0x80, 2, b'}', b'('];
        let mut storages = Vec::new();
        state_dict_items(w, prefix, &mut pkl, &mut storages);
        pkl.extend_from_slice(b"u.");
        zip_pt(&pkl, &storages)
    }

    /// `{"epoch": 3, <key>: {state dict with keys prefixed>}…, "optimizer_state_dict":
    /// {"state": {}, "param_groups": []}}`, as a training loop saves it.
    fn wrapped_pt(entries: &[(&str, &Weights, &str)]) -> Vec<u8> {
        let mut pkl = vec![0x80, 2, b'}', b'('];
        pkl.extend_from_slice(b"X\x05\0\0\0epochK\x03");
        let mut storages = Vec::new();
        for (key, w, prefix) in entries {
            pkl.push(b'X');
            pkl.extend_from_slice(&(key.len() as u32).to_le_bytes());
            pkl.extend_from_slice(key.as_bytes());
            pkl.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
            state_dict_items(w, prefix, &mut pkl, &mut storages);
            pkl.push(b'u');
        }
        pkl.extend_from_slice(b"X\x14\0\0\0optimizer_state_dict}(X\x05\0\0\0state}");
        pkl.extend_from_slice(b"X\x0c\0\0\0param_groups]u");
        pkl.extend_from_slice(b"u.");
        zip_pt(&pkl, &storages)
    }

    #[test]
    fn wrapped_checkpoints_pick_the_astromae_entry() {
        let w = small();
        let (plain, _) = load_model_file("b.pt", &state_dict_pt(&w, "")).unwrap();
        let img = vec![0.25f32; 5 * 32 * 32];
        let mag = vec![18.0f32; 5];
        use crate::Model;
        let want = plain.predict(&img, &mag, 1).unwrap();
        let mut other = Weights::new();
        other.insert("head.weight", Tensor::new(vec![2, 2], vec![1.0; 4]));
        for (entries, key, prefix) in [
            (vec![("model_state_dict", &w, "")], "model_state_dict", None),
            (
                vec![("state_dict", &w, "model.")],
                "state_dict",
                Some("model."),
            ),
            // An EMA copy under another prefix does not match: the model's entry does.
            (
                vec![("ema", &other, ""), ("model_state_dict", &w, "module.")],
                "model_state_dict",
                None,
            ),
        ] {
            let (m, info) = load_model_file("w.pt", &wrapped_pt(&entries)).unwrap();
            let inner = if prefix.is_none() && entries.iter().any(|e| e.2 == "module.") {
                ModelForm::StateDict {
                    module_prefix: true,
                }
            } else {
                ModelForm::StateDict {
                    module_prefix: false,
                }
            };
            assert_eq!(
                info.form,
                ModelForm::Wrapped {
                    key: key.to_string(),
                    prefix: prefix.map(str::to_string),
                    inner: Box::new(inner),
                }
            );
            let shown = info.form.to_string();
            assert!(shown.contains(&format!("`{key}`")), "{shown}");
            assert_eq!(m.predict(&img, &mag, 1).unwrap(), want);
        }
        // Two entries with AstroMAE's keys: an error naming both.
        let e = load_model_file("two.pt", &wrapped_pt(&[("a", &w, ""), ("b", &w, "model.")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("two.pt") && e.contains("`a`") && e.contains("`b`"),
            "{e}"
        );
        // No state dict at all: an error listing the top-level keys.
        let e = load_model_file("none.pt", &wrapped_pt(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`epoch`") && e.contains("`optimizer_state_dict`"),
            "{e}"
        );
    }

    #[test]
    fn every_form_gives_the_same_model() {
        let w = small();
        let st = w.to_safetensors(&BTreeMap::new()).unwrap();
        let (a, ia) = load_model_file("a.safetensors", &st).unwrap();
        assert_eq!(
            ia.form,
            ModelForm::Safetensors {
                module_prefix: false
            }
        );
        for prefix in ["", "module."] {
            let pt = state_dict_pt(&w, prefix);
            let (b, ib) = load_model_file("b.pt", &pt).unwrap();
            assert_eq!(
                ib.form,
                ModelForm::StateDict {
                    module_prefix: !prefix.is_empty()
                }
            );
            assert_eq!(ib.param_count, ia.param_count);
            assert_eq!(ib.tensors, ia.tensors);
            let img = vec![0.25f32; 5 * 32 * 32];
            let mag = vec![18.0f32; 5];
            use crate::Model;
            assert_eq!(
                a.predict(&img, &mag, 1).unwrap(),
                b.predict(&img, &mag, 1).unwrap()
            );
        }
        let prefixed = {
            let mut p = Weights::new();
            for (k, t) in w.iter() {
                p.insert(format!("module.{k}"), t.clone());
            }
            p.set_metadata("heads", "3");
            p.to_safetensors(&BTreeMap::new()).unwrap()
        };
        let (_, ip) = load_model_file("p.safetensors", &prefixed).unwrap();
        assert_eq!(
            ip.form,
            ModelForm::Safetensors {
                module_prefix: true
            }
        );
    }

    #[test]
    fn non_finite_weights_are_named() {
        for bad in [f32::NAN, f32::INFINITY] {
            let mut w = small();
            let mut t = w.get("blocks.0.mlp.fc1.bias").unwrap().clone();
            t.data[7] = bad;
            w.insert("blocks.0.mlp.fc1.bias", t);
            for (name, bytes) in [
                ("n.pt", state_dict_pt(&w, "")),
                ("n.safetensors", w.to_safetensors(&BTreeMap::new()).unwrap()),
            ] {
                let e = load_model_file(name, &bytes).unwrap_err().to_string();
                assert!(
                    e.contains(name) && e.contains("blocks.0.mlp.fc1.bias") && e.contains("7"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn garbage_and_partitions_are_named_errors() {
        let e = load_model_file("g.bin", b"hello world")
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.bin"), "{e}");
        let e = load_model_file("z.pt", b"PK\x03\x04garbage")
            .unwrap_err()
            .to_string();
        assert!(e.contains("z.pt"), "{e}");
        let t = cai_torch::TorchTensor::from_f32(vec![1], &[1.0]).unwrap();
        let ds = cai_torch::write_tensor_dataset(&[t]).unwrap();
        let e = load_model_file("1.pt", &ds).unwrap_err().to_string();
        assert!(e.contains("1.pt") && e.contains("TensorDataset"), "{e}");
    }
}
