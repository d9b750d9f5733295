//! The general model seam: named input tensors in, named output tensors out, each with a
//! first (galaxy) dimension.
//!
//! A [`TensorModel`] says what it takes ([`TensorModel::inputs`]) and gives
//! ([`TensorModel::outputs`]) as [`TensorSpec`]s (name, dtype, per-galaxy shape), and runs a
//! [`NamedBatch`] into [`NamedOutputs`]. Every redshift [`Model`] is one (inputs `images`
//! `[C, H, W]` and `magnitudes` `[C]`, output `z`), and so is an ONNX model
//! (`onnx::OnnxModel`). The engine's workers only see this trait, so any model runs through
//! the same partitions, engines and prediction files.

use std::fmt;

use crate::{Error, Model};

/// Element type of a tensor, as a model declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float: what partitions hold and what every input is fed as.
    F32,
    /// 64-bit float.
    F64,
    /// 16-bit float.
    F16,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Anything else, as the runtime names it.
    Other(String),
}

impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::F32 => f.write_str("f32"),
            DType::F64 => f.write_str("f64"),
            DType::F16 => f.write_str("f16"),
            DType::I64 => f.write_str("i64"),
            DType::I32 => f.write_str("i32"),
            DType::Other(s) => f.write_str(s),
        }
    }
}

/// One named tensor a model takes or gives: its dtype and its shape per galaxy (the batch
/// dimension left out; `[]` is a scalar per galaxy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// Name (an ONNX graph input/output name; a partition tensor name).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape of one galaxy's slice.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// An f32 tensor `name` of per-galaxy `shape`.
    pub fn f32(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_string(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    /// Values per galaxy (1 for a scalar).
    pub fn per_galaxy(&self) -> usize {
        self.shape.iter().product()
    }

    /// `name f32[N, 5, 32, 32]`: for messages and `cai model inspect`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = std::iter::once("N".to_string())
            .chain(self.shape.iter().map(|d| d.to_string()))
            .collect();
        format!("{} {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// A batch of `n` galaxies as named f32 tensors, each `n × per-galaxy` values (row-major,
/// galaxy first).
#[derive(Debug, Clone, Default)]
pub struct NamedBatch<'a> {
    /// Galaxies in the batch.
    pub n: usize,
    /// The tensors: spec (per-galaxy shape) and values.
    pub tensors: Vec<(TensorSpec, &'a [f32])>,
}

impl<'a> NamedBatch<'a> {
    /// The tensor called `name`, if the batch has it.
    pub fn get(&self, name: &str) -> Option<&'a [f32]> {
        self.tensors
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, v)| *v)
    }

    /// The tensor called `name`, checked to hold `per_galaxy` values for each galaxy; the
    /// error names `name` when it is missing or sized otherwise.
    pub fn require(&self, name: &'static str, per_galaxy: usize) -> Result<&'a [f32], Error> {
        let v = self.get(name).ok_or_else(|| Error::Binding {
            message: format!(
                "the batch has no tensor `{name}`; it has: {}",
                self.names().join(", ")
            ),
        })?;
        if v.len() != self.n * per_galaxy {
            return Err(Error::Input {
                what: name,
                expected: self.n * per_galaxy,
                got: v.len(),
            });
        }
        Ok(v)
    }

    /// Names of the batch's tensors.
    pub fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(s, _)| s.name.clone()).collect()
    }
}

/// One output of a batch: its spec (per-galaxy shape) and `n × per-galaxy` f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedOutput {
    /// Name, dtype (as converted: always f32 here) and per-galaxy shape.
    pub spec: TensorSpec,
    /// Values, galaxy first.
    pub values: Vec<f32>,
}

/// What a model gave for a batch: one [`NamedOutput`] per model output, in the model's
/// order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamedOutputs {
    /// Galaxies in the batch.
    pub n: usize,
    /// The outputs.
    pub outputs: Vec<NamedOutput>,
}

impl NamedOutputs {
    /// The output called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&NamedOutput> {
        self.outputs.iter().find(|o| o.spec.name == name)
    }
}

/// Name of the output every redshift model gives (one value per galaxy), which becomes
/// the predictions' `z_pred` column.
pub const REDSHIFT_OUTPUT: &str = "z";

/// A model over named tensors with a galaxy dimension: what the engine's workers run.
pub trait TensorModel: Send + Sync {
    /// The inputs the model takes (per-galaxy shapes).
    fn inputs(&self) -> Vec<TensorSpec>;

    /// The outputs it gives (per-galaxy shapes).
    fn outputs(&self) -> Vec<TensorSpec>;

    /// Which partition tensor feeds each input: `(input, tensor name)`; by default each
    /// input takes the tensor of its own name.
    fn bindings(&self) -> Vec<(TensorSpec, String)> {
        self.inputs()
            .into_iter()
            .map(|s| {
                let t = s.name.clone();
                (s, t)
            })
            .collect()
    }

    /// Run one batch; the batch's tensors are named as the data names them (see
    /// [`TensorModel::bindings`]).
    fn run(&self, batch: &NamedBatch<'_>) -> Result<NamedOutputs, Error>;

    /// What kind of model this is, for logs and reports (`native AstroMAE`, `onnx`).
    fn kind(&self) -> &'static str;
}

/// Check that every input of `model` finds a tensor of the right dtype and per-galaxy
/// shape among `available` (what a partition holds). The error lists the model's inputs
/// and the partition's tensors side by side, and how to bind them (`--bind INPUT=TENSOR`).
pub fn check_bindings(model: &dyn TensorModel, available: &[TensorSpec]) -> Result<(), Error> {
    let mut problems = Vec::new();
    for (input, tensor) in model.bindings() {
        match available.iter().find(|t| t.name == tensor) {
            None => problems.push(if tensor == input.name {
                format!("input `{}` has no tensor of that name", input.name)
            } else {
                format!(
                    "input `{}` is bound to `{tensor}`, which the data lacks",
                    input.name
                )
            }),
            Some(t) if t.shape != input.shape => problems.push(format!(
                "input `{}` takes {} per galaxy but tensor `{}` is {}",
                input.name,
                input.describe(),
                t.name,
                t.describe()
            )),
            Some(t) if input.dtype != DType::F32 => problems.push(format!(
                "input `{}` is {} but tensor `{}` is {} (only f32 inputs are fed)",
                input.name, input.dtype, t.name, t.dtype
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let inputs: Vec<String> = model.inputs().iter().map(TensorSpec::describe).collect();
    let tensors: Vec<String> = available.iter().map(TensorSpec::describe).collect();
    let rows = inputs.len().max(tensors.len());
    let width = inputs.iter().map(String::len).max().unwrap_or(0).max(12);
    let mut table = format!("  {:<width$}   {}\n", "model inputs", "data tensors");
    for i in 0..rows {
        let a = inputs.get(i).map(String::as_str).unwrap_or("");
        let b = tensors.get(i).map(String::as_str).unwrap_or("");
        table.push_str(&format!("  {a:<width$}   {b}\n"));
    }
    Err(Error::Binding {
        message: format!(
            "{}\n{table}bind each input to a tensor with `--bind INPUT=TENSOR`",
            problems.join("; ")
        ),
    })
}

/// Every redshift [`Model`] is a [`TensorModel`]: inputs `images` `[C, H, W]` and
/// `magnitudes` `[C]`, output `z` (a scalar per galaxy), computed by [`Model::predict`]
/// unchanged (so results stay bit for bit).
impl<M: Model> TensorModel for M {
    fn inputs(&self) -> Vec<TensorSpec> {
        let (c, h, w) = self.input_shape();
        vec![
            TensorSpec::f32("images", &[c, h, w]),
            TensorSpec::f32("magnitudes", &[c]),
        ]
    }

    fn outputs(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::f32(REDSHIFT_OUTPUT, &[])]
    }

    fn run(&self, batch: &NamedBatch<'_>) -> Result<NamedOutputs, Error> {
        let (c, h, w) = self.input_shape();
        let images = batch.require("images", c * h * w)?;
        let magnitudes = batch.require("magnitudes", c)?;
        let z = self.predict(images, magnitudes, batch.n)?;
        Ok(NamedOutputs {
            n: batch.n,
            outputs: vec![NamedOutput {
                spec: TensorSpec::f32(REDSHIFT_OUTPUT, &[]),
                values: z,
            }],
        })
    }

    fn kind(&self) -> &'static str {
        "native AstroMAE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose prediction is the sum of a galaxy's magnitudes.
    struct Sum;

    impl Model for Sum {
        fn predict(&self, _: &[f32], m: &[f32], n: usize) -> Result<Vec<f32>, Error> {
            Ok(m.chunks(m.len() / n.max(1))
                .map(|c| c.iter().sum())
                .collect())
        }
        fn input_shape(&self) -> (usize, usize, usize) {
            (2, 1, 1)
        }
    }

    #[test]
    fn a_redshift_model_runs_on_named_tensors() {
        let images = [0.0f32; 4];
        let mags = [1.0f32, 2.0, 3.0, 4.0];
        let batch = NamedBatch {
            n: 2,
            tensors: vec![
                (TensorSpec::f32("magnitudes", &[2]), &mags[..]),
                (TensorSpec::f32("images", &[2, 1, 1]), &images[..]),
            ],
        };
        let out = Sum.run(&batch).unwrap();
        assert_eq!(out.get("z").unwrap().values, vec![3.0, 7.0]);
        assert_eq!(out.get("z").unwrap().spec.shape, Vec::<usize>::new());
    }

    #[test]
    fn unbound_inputs_are_listed_beside_the_data() {
        let available = [
            TensorSpec::f32("img", &[2, 1, 1]),
            TensorSpec::f32("magnitudes", &[3]),
        ];
        let e = check_bindings(&Sum, &available).unwrap_err().to_string();
        assert!(
            e.contains("input `images` has no tensor of that name"),
            "{e}"
        );
        assert!(
            e.contains("tensor `magnitudes` is magnitudes f32[N, 3]"),
            "{e}"
        );
        assert!(e.contains("model inputs"), "{e}");
        assert!(e.contains("img f32[N, 2, 1, 1]"), "{e}");
        assert!(e.contains("--bind INPUT=TENSOR"), "{e}");
        let ok = [
            TensorSpec::f32("images", &[2, 1, 1]),
            TensorSpec::f32("magnitudes", &[2]),
        ];
        check_bindings(&Sum, &ok).unwrap();
    }
}
