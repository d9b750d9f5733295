//! Model checkpoints: whole pickled modules (optionally in `DataParallel`) and state dicts.

use std::rc::Rc;

use crate::container::TorchZip;
use crate::pickle::{self, HeapObj, Loaded, ObjId, TensorMeta, Value};
use crate::{Error, ReadOptions, TorchTensor};

/// Class path of `torch.nn.DataParallel`.
const DATA_PARALLEL: &str = "torch.nn.parallel.data_parallel.DataParallel";

/// How the checkpoint was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointForm {
    /// `torch.save(nn.DataParallel(model))`: a whole pickled module inside `DataParallel`
    /// (the original's published checkpoint).
    WholeModuleDataParallel,
    /// `torch.save(model)`: a whole pickled module.
    WholeModule,
    /// `torch.save(model.state_dict())`; `module_prefix` is true if every key started with
    /// `module.` (a `DataParallel` state dict), which has been stripped.
    StateDict {
        /// Whether the keys carried (and lost) a `module.` prefix.
        module_prefix: bool,
    },
}

/// A simple attribute of a pickled module (hyperparameters such as `num_heads`).
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple or list of ints (kernel sizes, strides, `img_size`…).
    Ints(Vec<i64>),
}

/// One module of a whole-module checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleInfo {
    /// Dotted path as in state-dict keys (`blocks.0.attn`); empty for the root.
    pub path: String,
    /// Class path (`timm.models.vision_transformer.Attention`).
    pub class: String,
    /// Attributes with simple values, in pickled order (`num_heads`, `eps`, `kernel_size`…).
    pub attrs: Vec<(String, Attr)>,
}

/// The tensors of a model checkpoint, in `state_dict()` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// How the file was saved.
    pub form: CheckpointForm,
    /// `(key, tensor)` in `state_dict()` order, keys without any `module.` prefix.
    pub tensors: Vec<(String, TorchTensor)>,
    /// Class paths named by the pickle, in first-seen order.
    pub classes: Vec<String>,
    /// Storage locations named in the file (`cpu`, `cuda:0`…), first-seen order; every
    /// tensor is loaded on the CPU whatever its location.
    pub locations: Vec<String>,
    /// For whole-module forms, every module reached (pre-order, as `named_modules()` with
    /// duplicates kept); empty for state dicts.
    pub modules: Vec<ModuleInfo>,
    /// For a checkpoint saved as a dict of several things (a training loop's
    /// `{"epoch": …, "model_state_dict": …, "optimizer_state_dict": …}`, Lightning's
    /// `{"state_dict": …}`, `{"model": module}`), the key whose entry is the model; `form`
    /// then describes that entry.
    pub wrapper_key: Option<String>,
    /// A prefix removed from the tensor keys that had it (Lightning's `model.`): the one
    /// under which [`crate::ReadOptions::model_keys`] were found.
    pub stripped_prefix: Option<String>,
}

impl Checkpoint {
    /// The tensor under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&TorchTensor> {
        self.tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    /// The module at `path`, if this is a whole-module checkpoint that has it.
    pub fn module(&self, path: &str) -> Option<&ModuleInfo> {
        self.modules.iter().find(|m| m.path == path)
    }
}

impl ModuleInfo {
    /// The attribute `name`, if it has a simple value.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// State-dict entries not yet read: key and tensor view, in `state_dict()` order.
type Named = Vec<(String, Rc<TensorMeta>)>;

/// One entry of a dict checkpoint that could be the model: a dict of tensors or a module.
struct Candidate {
    key: String,
    form: CheckpointForm,
    named: Named,
    modules: Vec<ModuleInfo>,
}

/// The state-dict entries of `d` if every value is a tensor (string keys), `module.`
/// prefixes stripped when all keys have one; `None` if it is not a state dict.
fn state_dict_of(d: &pickle::Dict) -> Option<(CheckpointForm, Named)> {
    let mut named = Vec::with_capacity(d.entries.len());
    for (k, v) in &d.entries {
        match (k.as_str(), v) {
            (Some(k), Value::Tensor(t)) => named.push((k.to_string(), t.clone())),
            _ => return None,
        }
    }
    if named.is_empty() {
        return None;
    }
    let module_prefix = named.iter().all(|(k, _)| k.starts_with("module."));
    if module_prefix {
        for (k, _) in &mut named {
            k.drain(.."module.".len());
        }
    }
    Some((CheckpointForm::StateDict { module_prefix }, named))
}

/// The prefix under which every one of `wanted` is a key of `named` (`""` first, then the
/// shortest), if any.
fn prefix_for(named: &[(String, Rc<TensorMeta>)], wanted: &[String]) -> Option<String> {
    let first = wanted.first()?;
    let keys: std::collections::HashSet<&str> = named.iter().map(|(k, _)| k.as_str()).collect();
    let mut prefixes: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_suffix(first.as_str()))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .collect();
    prefixes.sort_by_key(|p| (p.len(), *p));
    prefixes
        .into_iter()
        .find(|p| {
            wanted
                .iter()
                .all(|w| keys.contains(format!("{p}{w}").as_str()))
        })
        .map(str::to_string)
}

pub(crate) fn read(file: &str, bytes: &[u8], opts: &ReadOptions) -> Result<Checkpoint, Error> {
    let mut zip = TorchZip::open(file, bytes, &opts.limits)?;
    let pkl = zip.read_pickle()?;
    let loaded = pickle::load(file, &pkl, opts)?;
    let walker = Walker {
        file,
        loaded: &loaded,
        max_depth: opts.limits.max_depth,
        max_modules: opts.limits.max_modules,
        visited: std::cell::Cell::new(0),
    };
    let unexpected = |found: String| Error::UnexpectedContent {
        file: file.to_string(),
        expected: "a pickled module, a DataParallel, a state_dict, or a dict holding one",
        found,
    };
    let mut wrapper_key = None;
    let (form, mut named, modules) = match &loaded.root {
        Value::Ref(id) => match loaded.heap.get(*id) {
            Some(HeapObj::Object(o))
                if o.class.path == "torch.utils.data.dataset.TensorDataset" =>
            {
                return Err(unexpected(
                    "a TensorDataset (a data partition, not a model)".into(),
                ))
            }
            Some(HeapObj::Object(_)) => walker.whole(*id)?,
            Some(HeapObj::Dict(d)) => match state_dict_of(d) {
                Some((form, named)) => (form, named, Vec::new()),
                None => {
                    let c = choose(file, &walker, d, &opts.model_keys)?;
                    wrapper_key = Some(c.key);
                    (c.form, c.named, c.modules)
                }
            },
            _ => return Err(unexpected(loaded.root.kind(&loaded.heap))),
        },
        other => return Err(unexpected(other.kind(&loaded.heap))),
    };
    let stripped_prefix = prefix_for(&named, &opts.model_keys).filter(|p| !p.is_empty());
    let mut modules = modules;
    if let Some(p) = &stripped_prefix {
        for (k, _) in &mut named {
            if k.starts_with(p.as_str()) {
                k.drain(..p.len());
            }
        }
        for m in &mut modules {
            if let Some(rest) = m.path.strip_prefix(p.as_str()) {
                m.path = rest.to_string();
            }
        }
    }
    let mut produced = 0u64;
    let mut tensors = Vec::with_capacity(named.len());
    let mut locations: Vec<String> = Vec::new();
    for (key, meta) in named {
        if !locations.contains(&meta.storage.location) {
            locations.push(meta.storage.location.clone());
        }
        let t = zip.materialise(&key, &meta, &mut produced)?;
        tensors.push((key, t));
    }
    Ok(Checkpoint {
        form,
        tensors,
        classes: loaded.classes.clone(),
        locations,
        modules,
        wrapper_key,
        stripped_prefix,
    })
}

/// Picks the entry of the dict checkpoint `d` that is the model: the only candidate, or
/// the only one holding every key of `model_keys` (under a common prefix).
fn choose(
    file: &str,
    walker: &Walker<'_>,
    d: &pickle::Dict,
    model_keys: &[String],
) -> Result<Candidate, Error> {
    let heap = &walker.loaded.heap;
    let mut candidates = Vec::new();
    let mut keys = Vec::new();
    for (k, v) in &d.entries {
        let Some(key) = k.as_str() else {
            keys.push(format!("<{}>", k.kind(heap)));
            continue;
        };
        keys.push(key.to_string());
        let Value::Ref(id) = v else { continue };
        match heap.get(*id) {
            Some(HeapObj::Dict(inner)) => {
                if let Some((form, named)) = state_dict_of(inner) {
                    candidates.push(Candidate {
                        key: key.to_string(),
                        form,
                        named,
                        modules: Vec::new(),
                    });
                }
            }
            Some(HeapObj::Object(_)) if walker.is_module(*id) => {
                let (form, named, modules) = walker.whole(*id)?;
                candidates.push(Candidate {
                    key: key.to_string(),
                    form,
                    named,
                    modules,
                });
            }
            _ => {}
        }
    }
    if candidates.is_empty() {
        return Err(Error::NoModelInCheckpoint {
            file: file.to_string(),
            keys,
        });
    }
    if candidates.len() > 1 && !model_keys.is_empty() {
        let matching: Vec<usize> = (0..candidates.len())
            .filter(|&i| prefix_for(&candidates[i].named, model_keys).is_some())
            .collect();
        if let [one] = matching[..] {
            return Ok(candidates.swap_remove(one));
        }
        if matching.len() > 1 {
            return Err(Error::AmbiguousCheckpoint {
                file: file.to_string(),
                candidates: matching
                    .iter()
                    .map(|&i| candidates[i].key.clone())
                    .collect(),
            });
        }
    }
    if candidates.len() > 1 {
        return Err(Error::AmbiguousCheckpoint {
            file: file.to_string(),
            candidates: candidates.into_iter().map(|c| c.key).collect(),
        });
    }
    candidates.pop().ok_or_else(|| Error::NoModelInCheckpoint {
        file: file.to_string(),
        keys: Vec::new(),
    })
}

/// Walks pickled `nn.Module` objects the way `state_dict()` does.
struct Walker<'a> {
    file: &'a str,
    loaded: &'a Loaded,
    max_depth: usize,
    max_modules: usize,
    visited: std::cell::Cell<usize>,
}

impl Walker<'_> {
    /// True if `id` is an object whose state has `_parameters` and `_modules` (an
    /// `nn.Module`), so a dict entry holding it is a model candidate.
    fn is_module(&self, id: ObjId) -> bool {
        self.attrs(id, "")
            .is_ok_and(|a| a.get("_parameters").is_some() && a.get("_modules").is_some())
    }

    /// A whole pickled module (bare or in `DataParallel`): its form, state-dict entries and
    /// modules.
    #[allow(clippy::type_complexity)]
    fn whole(
        &self,
        id: ObjId,
    ) -> Result<
        (
            CheckpointForm,
            Vec<(String, Rc<TensorMeta>)>,
            Vec<ModuleInfo>,
        ),
        Error,
    > {
        let mut named = Vec::new();
        let mut modules = Vec::new();
        let heap = &self.loaded.heap;
        let data_parallel =
            matches!(heap.get(id), Some(HeapObj::Object(o)) if o.class.path == DATA_PARALLEL);
        if data_parallel {
            let inner = self
                .children(id, "")?
                .into_iter()
                .find(|(k, _)| k == "module")
                .ok_or_else(|| Error::UnexpectedContent {
                    file: self.file.to_string(),
                    expected: "a pickled module, a DataParallel or a state_dict",
                    found: "a DataParallel without `module`".to_string(),
                })?;
            self.module(inner.1, "", 0, &mut Vec::new(), &mut named, &mut modules)?;
            Ok((CheckpointForm::WholeModuleDataParallel, named, modules))
        } else {
            self.module(id, "", 0, &mut Vec::new(), &mut named, &mut modules)?;
            Ok((CheckpointForm::WholeModule, named, modules))
        }
    }

    fn bad(&self, path: &str, reason: String) -> Error {
        Error::UnexpectedContent {
            file: self.file.to_string(),
            expected: "nn.Module objects with _parameters, _buffers and _modules",
            found: format!(
                "at `{}`: {reason}",
                if path.is_empty() { "<root>" } else { path }
            ),
        }
    }

    /// The attribute dict (`__dict__` from BUILD) of the object `id`.
    fn attrs(&self, id: ObjId, path: &str) -> Result<&pickle::Dict, Error> {
        let heap = &self.loaded.heap;
        let Some(HeapObj::Object(o)) = heap.get(id) else {
            let v = Value::Ref(id);
            return Err(self.bad(path, format!("{} is not a module", v.kind(heap))));
        };
        match &o.state {
            Value::Ref(s) => match heap.get(*s) {
                Some(HeapObj::Dict(d)) => Ok(d),
                _ => Err(self.bad(path, format!("`{}` has a non-dict state", o.class.path))),
            },
            // (state, slotstate) as object.__reduce_ex__ gives for classes with __slots__.
            Value::Tuple(t) => match t.items.first() {
                Some(Value::Ref(s)) => match heap.get(*s) {
                    Some(HeapObj::Dict(d)) => Ok(d),
                    _ => Err(self.bad(path, format!("`{}` has a non-dict state", o.class.path))),
                },
                _ => Err(self.bad(path, format!("`{}` has a non-dict state", o.class.path))),
            },
            other => Err(self.bad(
                path,
                format!("`{}` has {} as its state", o.class.path, other.kind(heap)),
            )),
        }
    }

    /// The dict attribute `name` (`_parameters`…) of a module, as (key, value) pairs.
    fn dict_attr(&self, id: ObjId, path: &str, name: &str) -> Result<Vec<(String, Value)>, Error> {
        let heap = &self.loaded.heap;
        let attrs = self.attrs(id, path)?;
        let Some(v) = attrs.get(name) else {
            return Err(self.bad(path, format!("no `{name}` attribute")));
        };
        let Value::Ref(d) = v else {
            return Err(self.bad(path, format!("`{name}` is {}", v.kind(heap))));
        };
        let Some(HeapObj::Dict(d)) = heap.get(*d) else {
            return Err(self.bad(path, format!("`{name}` is {}", v.kind(heap))));
        };
        d.entries
            .iter()
            .map(|(k, v)| match k.as_str() {
                Some(k) => Ok((k.to_string(), v.clone())),
                None => Err(self.bad(path, format!("`{name}` has a {} key", k.kind(heap)))),
            })
            .collect()
    }

    /// Child modules (`_modules`) of a module, skipping `None` entries.
    fn children(&self, id: ObjId, path: &str) -> Result<Vec<(String, ObjId)>, Error> {
        let heap = &self.loaded.heap;
        let mut out = Vec::new();
        for (k, v) in self.dict_attr(id, path, "_modules")? {
            match v {
                Value::None => {}
                Value::Ref(c) if matches!(heap.get(c), Some(HeapObj::Object(_))) => {
                    out.push((k, c))
                }
                other => {
                    return Err(self.bad(
                        path,
                        format!("child `{k}` is {}, not a module", other.kind(heap)),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn non_persistent(&self, id: ObjId, path: &str) -> Result<Vec<String>, Error> {
        let heap = &self.loaded.heap;
        let attrs = self.attrs(id, path)?;
        let Some(v) = attrs.get("_non_persistent_buffers_set") else {
            return Ok(Vec::new());
        };
        match v {
            Value::Ref(s) => match heap.get(*s) {
                Some(HeapObj::Set(items) | HeapObj::List(items)) => Ok(items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()),
                _ => Err(self.bad(path, "`_non_persistent_buffers_set` is not a set".into())),
            },
            _ => Err(self.bad(path, "`_non_persistent_buffers_set` is not a set".into())),
        }
    }

    fn info(&self, id: ObjId, path: &str) -> Result<ModuleInfo, Error> {
        let heap = &self.loaded.heap;
        let class = match heap.get(id) {
            Some(HeapObj::Object(o)) => o.class.path.clone(),
            _ => String::new(),
        };
        let mut attrs = Vec::new();
        for (k, v) in &self.attrs(id, path)?.entries {
            let Some(k) = k.as_str() else { continue };
            if k.starts_with('_') {
                continue;
            }
            let a = match v {
                Value::None => Attr::None,
                Value::Bool(b) => Attr::Bool(*b),
                Value::Int(i) => Attr::Int(*i),
                Value::Float(f) => Attr::Float(*f),
                Value::Str(s) => Attr::Str(s.to_string()),
                Value::Tuple(t) => match t.items.iter().map(Value::as_int).collect() {
                    Some(ints) => Attr::Ints(ints),
                    None => continue,
                },
                _ => continue,
            };
            attrs.push((k.to_string(), a));
        }
        Ok(ModuleInfo {
            path: path.to_string(),
            class,
            attrs,
        })
    }

    /// Appends the state-dict entries of module `id` under `prefix` (`"a.b."` or `""`).
    fn module(
        &self,
        id: ObjId,
        prefix: &str,
        depth: usize,
        ancestors: &mut Vec<ObjId>,
        out: &mut Vec<(String, Rc<TensorMeta>)>,
        modules: &mut Vec<ModuleInfo>,
    ) -> Result<(), Error> {
        let path = prefix.strip_suffix('.').unwrap_or(prefix);
        if depth > self.max_depth {
            return Err(Error::Limit {
                file: self.file.to_string(),
                what: "module nesting depth",
                got: depth as u64,
                limit: self.max_depth as u64,
            });
        }
        self.visited.set(self.visited.get() + 1);
        if self.visited.get() > self.max_modules {
            return Err(Error::Limit {
                file: self.file.to_string(),
                what: "modules visited",
                got: self.visited.get() as u64,
                limit: self.max_modules as u64,
            });
        }
        if ancestors.contains(&id) {
            return Err(self.bad(path, "the module contains itself".into()));
        }
        modules.push(self.info(id, path)?);
        let heap = &self.loaded.heap;
        for (k, v) in self.dict_attr(id, path, "_parameters")? {
            match v {
                Value::None => {}
                Value::Tensor(t) => out.push((format!("{prefix}{k}"), t)),
                other => {
                    return Err(self.bad(path, format!("parameter `{k}` is {}", other.kind(heap))))
                }
            }
        }
        let skip = self.non_persistent(id, path)?;
        for (k, v) in self.dict_attr(id, path, "_buffers")? {
            match v {
                Value::None => {}
                _ if skip.contains(&k) => {}
                Value::Tensor(t) => out.push((format!("{prefix}{k}"), t)),
                other => {
                    return Err(self.bad(path, format!("buffer `{k}` is {}", other.kind(heap))))
                }
            }
        }
        ancestors.push(id);
        for (k, child) in self.children(id, path)? {
            self.module(
                child,
                &format!("{prefix}{k}."),
                depth + 1,
                ancestors,
                out,
                modules,
            )?;
        }
        ancestors.pop();
        Ok(())
    }
}
