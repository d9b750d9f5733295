//! Any ONNX model as a [`TensorModel`], on `tract` (pure Rust: no C++ runtime, nothing
//! downloaded at build time).
//!
//! [`OnnxModel::load`] reads the graph, refuses what cannot run before any galaxy is seen
//! (an operator tract lacks, naming the node; an input dimension other than the first that
//! is not a number; a non-f32 input), makes the first dimension of every input a symbol
//! `N` (so any batch size runs), and optimises the graph once. [`OnnxInfo::read`] describes a
//! file for `cai model inspect` (inputs, outputs, operator counts, parameters) without
//! optimising it.
//!
//! Inputs take the data's tensor of the same name unless bound otherwise
//! ([`OnnxModel::with_bindings`], the CLI's `--bind INPUT=TENSOR`); outputs are converted
//! to f32 and keep their names.

use std::collections::BTreeMap;

use rayon::prelude::*;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::tensors::{DType, NamedBatch, NamedOutput, NamedOutputs, TensorModel, TensorSpec};
use crate::Error;

mod lower;
mod native;

pub use lower::Lowered;

/// How a loaded graph is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lowering {
    /// CAI's kernels for what [`lower`] recognises (products with constant weights, their
    /// bias, GELU and residual, LayerNorm, attention), tract for the rest: the default.
    #[default]
    Native,
    /// tract for everything (for comparison: the same graph without the lowering).
    Tract,
}

/// An ONNX graph, optimised for a symbolic batch dimension and ready to run.
pub struct OnnxModel {
    file: String,
    plan: Arc<TypedRunnableModel>,
    lowered: Lowered,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    binds: Vec<(String, String)>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("file", &self.file)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("binds", &self.binds)
            .finish()
    }
}

/// True when `bytes` look like an ONNX model rather than safetensors or a PyTorch file: a
/// `.onnx` name, or (nameless) a protobuf that decodes as a model with a graph.
pub fn is_onnx(name: &str, bytes: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".onnx") {
        return true;
    }
    if lower.ends_with(".pt") || lower.ends_with(".pth") || lower.ends_with(".safetensors") {
        return false;
    }
    // Zip (`.pt`) and safetensors (a little-endian header length, then `{`) are not ONNX.
    if bytes.starts_with(b"PK") || bytes.get(8) == Some(&b'{') {
        return false;
    }
    decode_proto(name, bytes)
        .map(|p| p.graph.is_some())
        .unwrap_or(false)
}

fn onnx_err(file: &str, message: impl Into<String>) -> Error {
    Error::Onnx {
        file: file.to_string(),
        message: message.into(),
    }
}

fn decode_proto(file: &str, bytes: &[u8]) -> Result<pb::ModelProto, Error> {
    let mut r = std::io::Cursor::new(bytes);
    tract_onnx::onnx()
        .proto_model_for_read(&mut r)
        .map_err(|e| onnx_err(file, format!("not a readable ONNX model: {e:#}")))
}

/// The ONNX element type code as a [`DType`].
fn onnx_dtype(code: i32) -> DType {
    match code {
        1 => DType::F32,
        6 => DType::I32,
        7 => DType::I64,
        10 => DType::F16,
        11 => DType::F64,
        other => DType::Other(format!("onnx type {other}")),
    }
}

/// One declared dimension: a number, or a symbol's name (`batch`), or `?`.
fn dim_text(d: &pb::tensor_shape_proto::Dimension) -> String {
    use pb::tensor_shape_proto::dimension::Value;
    match &d.value {
        Some(Value::DimValue(v)) => v.to_string(),
        Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
        _ => "?".into(),
    }
}

/// A graph input or output as the file declares it (dims may be symbols).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeclaredTensor {
    /// Name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions as declared, batch first: numbers or symbol names (`?` when unnamed).
    pub dims: Vec<String>,
}

impl DeclaredTensor {
    fn from_value_info(v: &pb::ValueInfoProto) -> Self {
        let (dtype, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => (
                onnx_dtype(t.elem_type),
                t.shape
                    .as_ref()
                    .map(|s| s.dim.iter().map(dim_text).collect())
                    .unwrap_or_default(),
            ),
            None => (DType::Other("unknown".into()), Vec::new()),
        };
        Self {
            name: v.name.clone(),
            dtype,
            dims,
        }
    }

    /// `images f32[batch, 5, 32, 32]`.
    pub fn describe(&self) -> String {
        format!("{} {}[{}]", self.name, self.dtype, self.dims.join(", "))
    }
}

/// What an ONNX file holds, for `cai model inspect`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OnnxInfo {
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<DeclaredTensor>,
    /// Graph outputs.
    pub outputs: Vec<DeclaredTensor>,
    /// Nodes per operator type.
    pub operators: BTreeMap<String, usize>,
    /// Operators tract does not implement, with the first node using each.
    pub unsupported: Vec<(String, String)>,
    /// Values in the initializers (the trained parameters).
    pub parameters: u64,
    /// Producer and opset, e.g. `pytorch 2.5 opset 17`.
    pub producer: String,
}

impl OnnxInfo {
    /// Describe the ONNX model in `bytes` (`file` names it in errors).
    pub fn read(file: &str, bytes: &[u8]) -> Result<Self, Error> {
        Self::from_proto(file, &decode_proto(file, bytes)?)
    }

    fn from_proto(file: &str, proto: &pb::ModelProto) -> Result<Self, Error> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| onnx_err(file, "the model has no graph"))?;
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let register = tract_onnx::onnx().op_register;
        let mut operators = BTreeMap::new();
        let mut unsupported: Vec<(String, String)> = Vec::new();
        for node in &graph.node {
            *operators.entry(node.op_type.clone()).or_insert(0) += 1;
            if !register.0.contains_key(&node.op_type)
                && !unsupported.iter().any(|(op, _)| op == &node.op_type)
            {
                unsupported.push((node.op_type.clone(), node.name.clone()));
            }
        }
        let parameters = graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
            .sum();
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| format!(" opset {}", o.version))
            .unwrap_or_default();
        Ok(Self {
            inputs: graph
                .input
                .iter()
                .filter(|v| !init.contains(v.name.as_str()))
                .map(DeclaredTensor::from_value_info)
                .collect(),
            outputs: graph
                .output
                .iter()
                .map(DeclaredTensor::from_value_info)
                .collect(),
            operators,
            unsupported,
            parameters,
            producer: format!("{} {}{opset}", proto.producer_name, proto.producer_version)
                .trim()
                .to_string(),
        })
    }
}

/// Galaxies per call of the plan at most: a batch is run in chunks of this many, so that
/// one call's activations stay in the core's cache (AstroMAE's export on one Xeon core,
/// galaxies/s by galaxies per call: 4: 103, 8: 112, 16: 110, 32: 106, 64: 97, 128: 86;
/// `examples/onnx_graph.rs --profile`). Galaxies are independent in inference, so only the
/// speed changes.
pub const PLAN_GALAXIES: usize = 8;

/// Types the graph, lowers it (unless `lowering` says not), declutters, fuses and
/// optimises it.
fn optimise(model: InferenceModel, lowering: Lowering) -> TractResult<(TypedModel, Lowered)> {
    let mut typed = model.into_typed()?;
    let mut lowered = Lowered::default();
    if lowering == Lowering::Native {
        lowered = lower::lower(&mut typed)?;
    }
    typed.declutter()?;
    if lowering == Lowering::Native {
        lower::fuse(&mut typed, &mut lowered)?;
    }
    typed.optimize()?;
    Ok((typed, lowered))
}

impl OnnxModel {
    /// Load, check and optimise the ONNX model in `bytes` (`file` names it in errors).
    ///
    /// Refused here, before any data is read: an operator tract lacks (the error names the
    /// node and operator), an input whose non-batch dimension is not a number, a non-f32
    /// input, an output whose per-galaxy shape cannot be resolved.
    pub fn load(file: &str, bytes: &[u8]) -> Result<Self, Error> {
        Self::load_with(file, bytes, Lowering::Native)
    }

    /// [`OnnxModel::load`], choosing whether the graph is lowered onto CAI's kernels.
    pub fn load_with(file: &str, bytes: &[u8], lowering: Lowering) -> Result<Self, Error> {
        Self::from_proto(file, &decode_proto(file, bytes)?, lowering)
    }

    /// [`OnnxModel::load_with`] from a decoded model.
    fn from_proto(file: &str, proto: &pb::ModelProto, lowering: Lowering) -> Result<Self, Error> {
        let info = OnnxInfo::from_proto(file, proto)?;
        if !info.unsupported.is_empty() {
            let list: Vec<String> = info
                .unsupported
                .iter()
                .map(|(op, node)| format!("operator `{op}` (node `{node}`)"))
                .collect();
            return Err(onnx_err(
                file,
                format!(
                    "tract cannot run {}; export with operators it supports (a lower opset, \
                     or the operator decomposed)",
                    list.join(", ")
                ),
            ));
        }
        let onnx = match lowering {
            Lowering::Native => native::onnx_with_native_ops(),
            Lowering::Tract => tract_onnx::onnx(),
        };
        let mut model = onnx
            .model_for_proto_model(proto)
            .map_err(|e| onnx_err(file, format!("cannot translate the graph: {e:#}")))?;
        let batch = model.symbols.sym("N");
        let mut inputs = Vec::new();
        for (i, decl) in info.inputs.iter().enumerate() {
            if decl.dtype != DType::F32 {
                return Err(onnx_err(
                    file,
                    format!(
                        "input `{}` is {}; only f32 inputs can be fed from partitions",
                        decl.name, decl.dtype
                    ),
                ));
            }
            if decl.dims.is_empty() {
                return Err(onnx_err(
                    file,
                    format!(
                        "input `{}` declares no shape; export it with a batch dimension first",
                        decl.name
                    ),
                ));
            }
            let mut per_galaxy = Vec::new();
            for (k, d) in decl.dims.iter().enumerate().skip(1) {
                match d.parse::<usize>() {
                    Ok(v) => per_galaxy.push(v),
                    Err(_) => {
                        return Err(onnx_err(
                            file,
                            format!(
                                "input `{}` dimension {k} is `{d}`, which cannot be resolved: only \
                                 the first (galaxy) dimension may be symbolic",
                                decl.name
                            ),
                        ))
                    }
                }
            }
            let dims: Vec<TDim> = std::iter::once(TDim::from(batch.clone()))
                .chain(per_galaxy.iter().map(|&d| TDim::from(d as i64)))
                .collect();
            model
                .set_input_fact(i, f32::fact(dims).into())
                .map_err(|e| onnx_err(file, format!("input `{}`: {e:#}", decl.name)))?;
            inputs.push(TensorSpec::f32(&decl.name, &per_galaxy));
        }
        let (typed, lowered) = optimise(model, lowering)
            .map_err(|e| onnx_err(file, format!("cannot type and optimise the graph: {e:#}")))?;
        tracing::debug!(file, ?lowered, "ONNX graph lowered onto CAI's kernels");
        let mut outputs = Vec::new();
        for (i, decl) in info.outputs.iter().enumerate() {
            let fact = typed
                .output_fact(i)
                .map_err(|e| onnx_err(file, format!("output `{}`: {e:#}", decl.name)))?;
            let dims: &[TDim] = fact.shape.as_ref();
            let mut per_galaxy = Vec::new();
            for (k, d) in dims.iter().enumerate().skip(1) {
                match d.to_i64() {
                    Ok(v) if v >= 0 => per_galaxy.push(v as usize),
                    _ => {
                        return Err(onnx_err(
                            file,
                            format!(
                                "output `{}` dimension {k} is `{d}`, which does not resolve to a \
                                 number for a batch of N galaxies",
                                decl.name
                            ),
                        ))
                    }
                }
            }
            if dims.is_empty() {
                return Err(onnx_err(
                    file,
                    format!(
                        "output `{}` is a scalar, not one value per galaxy",
                        decl.name
                    ),
                ));
            }
            outputs.push(TensorSpec {
                name: decl.name.clone(),
                dtype: DType::F32,
                shape: per_galaxy,
            });
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| onnx_err(file, format!("cannot plan the graph: {e:#}")))?;
        Ok(Self {
            file: file.to_string(),
            plan,
            lowered,
            inputs,
            outputs,
            binds: Vec::new(),
        })
    }

    /// What the lowering put on CAI's kernels (all zero under [`Lowering::Tract`]).
    pub fn lowered(&self) -> Lowered {
        self.lowered
    }

    /// The optimised plan this model runs (tract's nodes and ours): for profiling it per
    /// operator (`examples/onnx_graph.rs --profile`).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// Feed input `INPUT` from the data's tensor `TENSOR` for each `(INPUT, TENSOR)` (the
    /// CLI's `--bind INPUT=TENSOR`); an input the model lacks is an error listing its
    /// inputs.
    pub fn with_bindings(mut self, binds: &[(String, String)]) -> Result<Self, Error> {
        for (input, _) in binds {
            if !self.inputs.iter().any(|s| &s.name == input) {
                let names: Vec<String> = self.inputs.iter().map(TensorSpec::describe).collect();
                return Err(Error::Binding {
                    message: format!(
                        "--bind names `{input}`, which is not an input of {}; its inputs are: {}",
                        self.file,
                        names.join(", ")
                    ),
                });
            }
        }
        self.binds = binds.to_vec();
        Ok(self)
    }

    /// Run `n` galaxies (inputs in the model's order, each `n × per-galaxy` values) in one
    /// call of the plan.
    fn run_chunk(&self, inputs: &[&[f32]], n: usize) -> Result<Vec<Vec<f32>>, Error> {
        let mut values: TVec<TValue> = TVec::new();
        for (spec, &data) in self.inputs.iter().zip(inputs) {
            let shape: Vec<usize> = std::iter::once(n)
                .chain(spec.shape.iter().copied())
                .collect();
            let t = Tensor::from_shape::<f32>(&shape, data)
                .map_err(|e| onnx_err(&self.file, format!("input `{}`: {e:#}", spec.name)))?;
            values.push(t.into_tvalue());
        }
        let out = self
            .plan
            .run(values)
            .map_err(|e| onnx_err(&self.file, format!("running a batch of {n}: {e:#}")))?;
        let mut result = Vec::with_capacity(out.len());
        for (spec, t) in self.outputs.iter().zip(out.iter()) {
            let f = t
                .cast_to::<f32>()
                .map_err(|e| onnx_err(&self.file, format!("output `{}`: {e:#}", spec.name)))?;
            let view = f
                .to_plain_array_view::<f32>()
                .map_err(|e| onnx_err(&self.file, format!("output `{}`: {e:#}", spec.name)))?;
            let v: Vec<f32> = view.iter().copied().collect();
            if v.len() != n * spec.per_galaxy() {
                return Err(onnx_err(
                    &self.file,
                    format!(
                        "output `{}` has {} values for {n} galaxies, expected {} each",
                        spec.name,
                        v.len(),
                        spec.per_galaxy()
                    ),
                ));
            }
            result.push(v);
        }
        Ok(result)
    }
}

impl TensorModel for OnnxModel {
    fn inputs(&self) -> Vec<TensorSpec> {
        self.inputs.clone()
    }

    fn outputs(&self) -> Vec<TensorSpec> {
        self.outputs.clone()
    }

    fn bindings(&self) -> Vec<(TensorSpec, String)> {
        self.inputs
            .iter()
            .map(|s| {
                let t = self
                    .binds
                    .iter()
                    .find(|(i, _)| i == &s.name)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_else(|| s.name.clone());
                (s.clone(), t)
            })
            .collect()
    }

    /// Runs the batch split into chunks of at most [`PLAN_GALAXIES`], spread over the
    /// threads of the current rayon pool (tract runs a plan on the calling thread).
    fn run(&self, batch: &NamedBatch<'_>) -> Result<NamedOutputs, Error> {
        let n = batch.n;
        let mut feeds = Vec::with_capacity(self.inputs.len());
        for (spec, tensor) in self.bindings() {
            let v = batch.get(&tensor).ok_or_else(|| Error::Binding {
                message: format!(
                    "input `{}` takes tensor `{tensor}`, which the batch lacks; it has: {}",
                    spec.name,
                    batch.names().join(", ")
                ),
            })?;
            if v.len() != n * spec.per_galaxy() {
                return Err(Error::Binding {
                    message: format!(
                        "input `{}` takes {} but tensor `{tensor}` holds {} values for {n} galaxies",
                        spec.name,
                        spec.describe(),
                        v.len()
                    ),
                });
            }
            feeds.push((spec.per_galaxy(), v));
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(threads).clamp(1, PLAN_GALAXIES);
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let parts: Vec<Result<Vec<Vec<f32>>, Error>> = starts
            .par_iter()
            .map(|&s| {
                let m = chunk.min(n - s);
                let ins: Vec<&[f32]> = feeds
                    .iter()
                    .map(|(per, v)| &v[s * per..(s + m) * per])
                    .collect();
                self.run_chunk(&ins, m)
            })
            .collect();
        let mut outputs: Vec<NamedOutput> = self
            .outputs
            .iter()
            .map(|s| NamedOutput {
                spec: s.clone(),
                values: Vec::with_capacity(n * s.per_galaxy()),
            })
            .collect();
        for part in parts {
            for (o, v) in outputs.iter_mut().zip(part?) {
                o.values.extend(v);
            }
        }
        Ok(NamedOutputs { n, outputs })
    }

    fn kind(&self) -> &'static str {
        "onnx"
    }
}

/// What `cai model inspect X.onnx` reports: what the file declares ([`OnnxInfo`]) and
/// whether tract runs it (the per-galaxy shapes it resolved, or why not).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OnnxInspection {
    /// The file as given.
    pub file: String,
    /// Always `onnx`.
    pub form: &'static str,
    /// What the graph declares.
    pub declared: OnnxInfo,
    /// Whether tract loads and optimises it.
    pub runs: bool,
    /// Why not, when it does not.
    pub error: Option<String>,
    /// The inputs per galaxy (batch dimension removed) when it runs.
    pub inputs_per_galaxy: Vec<TensorSpec>,
    /// The outputs per galaxy when it runs.
    pub outputs_per_galaxy: Vec<TensorSpec>,
}

impl OnnxInspection {
    /// Describe the ONNX model in `bytes` and try to load it (`file` names it).
    pub fn read(file: &str, bytes: &[u8]) -> Result<Self, Error> {
        let declared = OnnxInfo::read(file, bytes)?;
        let (runs, error, inputs, outputs) = match OnnxModel::load(file, bytes) {
            Ok(m) => (true, None, m.inputs(), m.outputs()),
            Err(e) => (false, Some(e.to_string()), Vec::new(), Vec::new()),
        };
        Ok(Self {
            file: file.to_string(),
            form: "onnx",
            declared,
            runs,
            error,
            inputs_per_galaxy: inputs,
            outputs_per_galaxy: outputs,
        })
    }
}

/// One `name: value` line per field, as `cai model inspect` prints them.
impl std::fmt::Display for OnnxInspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        let info = &self.declared;
        writeln!(f, "file:          {}", self.file)?;
        writeln!(f, "form:          onnx ({})", info.producer)?;
        let declared = |v: &[DeclaredTensor]| list(v.iter().map(|t| t.describe()).collect());
        writeln!(f, "inputs:        {}", declared(&info.inputs))?;
        writeln!(f, "outputs:       {}", declared(&info.outputs))?;
        let ops = info.operators.iter().map(|(op, n)| format!("{op} {n}"));
        writeln!(
            f,
            "operators:     {} nodes: {}",
            info.operators.values().sum::<usize>(),
            list(ops.collect())
        )?;
        writeln!(f, "parameters:    {}", info.parameters)?;
        match &self.error {
            None => {
                let per = |v: &[TensorSpec]| list(v.iter().map(|t| t.describe()).collect());
                writeln!(f, "runs:          yes (tract; batch dimension N)")?;
                writeln!(f, "  takes:       {}", per(&self.inputs_per_galaxy))?;
                write!(f, "  gives:       {}", per(&self.outputs_per_galaxy))
            }
            Some(e) => write!(f, "runs:          no: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed fixture of scripts/onnx/make_fixtures.py.
    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/onnx")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Seeded inputs for `n` galaxies of the CNN.
    fn inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
        let images = (0..n * 5 * 32 * 32)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mags = (0..n * 5).map(|i| 18.0 + (i % 7) as f32 * 0.3).collect();
        (images, mags)
    }

    fn batch<'a>(n: usize, images: &'a [f32], mags: &'a [f32]) -> NamedBatch<'a> {
        NamedBatch {
            n,
            tensors: vec![
                (TensorSpec::f32("images", &[5, 32, 32]), images),
                (TensorSpec::f32("magnitudes", &[5]), mags),
            ],
        }
    }

    #[test]
    fn the_cnn_loads_with_named_per_galaxy_shapes() {
        let m = OnnxModel::load("cnn5.onnx", &fixture("cnn5.onnx")).unwrap();
        assert_eq!(
            m.inputs(),
            vec![
                TensorSpec::f32("images", &[5, 32, 32]),
                TensorSpec::f32("magnitudes", &[5])
            ]
        );
        assert_eq!(
            m.outputs(),
            vec![
                TensorSpec::f32("probs", &[3]),
                TensorSpec::f32("confidence", &[])
            ]
        );
        let info = OnnxInfo::read("cnn5.onnx", &fixture("cnn5.onnx")).unwrap();
        for (op, n) in [("Conv", 2), ("BatchNormalization", 2), ("Softmax", 1)] {
            assert_eq!(
                info.operators.get(op),
                Some(&n),
                "{op}: {:?}",
                info.operators
            );
        }
        assert!(info.unsupported.is_empty());
        assert!(info.parameters > 500, "{}", info.parameters);
        assert_eq!(info.inputs[0].dims, ["batch", "5", "32", "32"]);
    }

    #[test]
    fn any_batch_size_and_thread_count_give_the_same_rows() {
        let m = OnnxModel::load("cnn5.onnx", &fixture("cnn5.onnx")).unwrap();
        let n = 7;
        let (images, mags) = inputs(n);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let all = pool.install(|| m.run(&batch(n, &images, &mags))).unwrap();
        let probs = &all.get("probs").unwrap().values;
        let conf = &all.get("confidence").unwrap().values;
        assert_eq!((probs.len(), conf.len()), (n * 3, n));
        for g in 0..n {
            let one = m
                .run(&batch(
                    1,
                    &images[g * 5120..(g + 1) * 5120],
                    &mags[g * 5..(g + 1) * 5],
                ))
                .unwrap();
            let p1 = &one.get("probs").unwrap().values;
            for k in 0..3 {
                assert!(
                    (p1[k] - probs[g * 3 + k]).abs() <= 1e-6,
                    "galaxy {g} class {k}"
                );
            }
            let row = &probs[g * 3..(g + 1) * 3];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            assert!((conf[g] - max).abs() <= 1e-6);
        }
    }

    #[test]
    fn graphs_tract_cannot_run_are_refused_naming_node_and_dimension() {
        let e = OnnxModel::load("u.onnx", &fixture("unsupported_op.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("operator `NoSuchOp` (node `mystery_node`)"),
            "{e}"
        );
        let e = OnnxModel::load("s.onnx", &fixture("symbolic_bands.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input `images` dimension 1 is `bands`"), "{e}");
        let e = OnnxModel::load("junk.onnx", b"not a model at all")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("junk.onnx: "), "{e}");
    }

    #[test]
    fn bindings_rename_inputs_and_unknown_inputs_are_listed() {
        let m = OnnxModel::load("cnn5.onnx", &fixture("cnn5.onnx")).unwrap();
        let e = OnnxModel::load("cnn5.onnx", &fixture("cnn5.onnx"))
            .unwrap()
            .with_bindings(&[("pixels".into(), "images".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pixels`, which is not an input"), "{e}");
        assert!(e.contains("images f32[N, 5, 32, 32]"), "{e}");
        let bound = m
            .with_bindings(&[("images".into(), "cutouts".into())])
            .unwrap();
        let (images, mags) = inputs(2);
        let renamed = NamedBatch {
            n: 2,
            tensors: vec![
                (TensorSpec::f32("cutouts", &[5, 32, 32]), &images[..]),
                (TensorSpec::f32("magnitudes", &[5]), &mags[..]),
            ],
        };
        let a = bound.run(&renamed).unwrap();
        assert_eq!(a.get("probs").unwrap().values.len(), 6);
        let e = bound
            .run(&batch(2, &images, &mags))
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes tensor `cutouts`"), "{e}");
    }

    #[test]
    fn onnx_files_are_told_from_other_model_files() {
        assert!(is_onnx("m.ONNX", b""));
        assert!(is_onnx("blob", &fixture("cnn5.onnx")));
        assert!(!is_onnx("m.safetensors", b""));
        assert!(!is_onnx("blob", b"PK\x03\x04zip"));
    }
}
