//! `cai.Model` and `cai.predict`: any model `cai` runs, on NumPy arrays.
//!
//! A model is the native AstroMAE (safetensors or the original's `.pt`) or an ONNX graph
//! run by tract (`.onnx`), loaded by the same cai-engine loaders as `cai predict`.
//! `Model.predict(images, magnitudes)` sends AstroMAE's batches to
//! [`cai_model::Model::predict`] on the model's own rayon pool, exactly as cai-engine's
//! `predict_partition` does, including its rule for non-finite inputs: such a galaxy is
//! run on zeros and reported as NaN. The arrays are read in place when they are float32,
//! C-ordered and aligned; anything else float is converted once by NumPy.
//! `Model.run({name: array})` feeds any model its named inputs and returns every output by
//! name, one batch at a time through cai-engine's [`predict_tensors`] (what `cai predict`
//! and the workers run), so its outputs are the CLI's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cai_data::{NamedTensor, StoredDtype, TensorSet, TensorValues};
use cai_engine::stages::{is_onnx_location, load_any_model, load_model_with};
use cai_engine::worker::{predict_tensors, FiniteBatch};
use cai_model::kernels::Precision;
use cai_model::{AstroMae, Model as _, TensorModel, TensorSpec, REDSHIFT_OUTPUT};
use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{cai_err, runtime, wait_interruptible, CaiError};

/// A loaded model (AstroMAE or ONNX) with its own inference thread pool.
#[pyclass(module = "cai", frozen)]
pub struct Model {
    /// The native AstroMAE, read in place by `predict`; `None` for an ONNX model.
    native: Option<Arc<AstroMae>>,
    /// The model as named tensors in, named tensors out (either kind): what `run` feeds.
    model: Arc<dyn TensorModel>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    path: String,
    precision: Precision,
}

/// Parse a precision name (`f32`, `bf16`, `int8`, `int16`) or raise `ValueError`.
pub fn parse_precision(s: &str) -> PyResult<Precision> {
    Precision::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
        PyValueError::new_err(format!(
            "precision: expected one of {}, got {s:?}",
            names.join(", ")
        ))
    })
}

/// A rayon pool of `threads` threads (default: every core this process may use).
fn thread_pool(threads: Option<usize>) -> PyResult<(rayon::ThreadPool, usize)> {
    if threads == Some(0) {
        return Err(PyValueError::new_err(
            "threads: must be at least 1 (or None for every core)",
        ));
    }
    let n = threads.unwrap_or_else(cai_engine::local::available_cores);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("cai-py-infer-{i}"))
        .build()
        .map_err(|e| CaiError::new_err(format!("cannot start {n} inference threads: {e}")))?;
    Ok((pool, n))
}

/// An input as a float32 C-contiguous array: the object itself when it already is one,
/// else a copy made by NumPy. `what` names the argument in errors.
fn as_f32<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{what}: expected a NumPy array, got {ty}"))
    })?;
    let dtype = arr.dtype();
    if dtype.kind() != b'f' || !matches!(dtype.itemsize(), 4 | 8) {
        return Err(PyValueError::new_err(format!(
            "{what}: expected a float32 or float64 array, got dtype {dtype}"
        )));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        if a.is_c_contiguous() && arr.is_aligned() {
            return Ok(a.clone());
        }
    }
    let np = py.import("numpy")?;
    let converted = np
        .getattr("ascontiguousarray")?
        .call1((obj, np.getattr("float32")?))?;
    converted
        .cast_into::<PyArrayDyn<f32>>()
        .map_err(|e| PyValueError::new_err(format!("{what}: cannot convert to float32: {e}")))
}

fn shape_text(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if parts.len() == 1 {
        format!("({},)", parts[0])
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Predict `n` galaxies batch by batch on `pool`; stops with `None` once `cancel` is set.
/// The same batching as cai-engine's `predict_partition`, and its non-finite rule
/// ([`FiniteBatch`]).
#[allow(clippy::too_many_arguments)]
fn predict_slices(
    model: &AstroMae,
    pool: &rayon::ThreadPool,
    images: &[f32],
    mags: &[f32],
    n: usize,
    batch_size: usize,
    cancel: &AtomicBool,
) -> Result<Option<Vec<f32>>, cai_model::Error> {
    let (c, h, w) = model.input_shape();
    let img_len = c * h * w;
    let mut z = Vec::with_capacity(n);
    let mut guard = FiniteBatch::default();
    for start in (0..n).step_by(batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let m = batch_size.max(1).min(n - start);
        let (bi, bm, _) = guard.prepare(
            &images[start * img_len..(start + m) * img_len],
            &mags[start * c..(start + m) * c],
            img_len,
        );
        let mut out = pool.install(|| model.predict(bi, bm, m))?;
        out.truncate(m);
        guard.mark(&mut out);
        z.extend_from_slice(&out);
    }
    Ok(Some(z))
}

/// One named input array checked against the model, read in place (see [`as_f32`]).
struct Feed<'py> {
    /// The tensor name the model reads it as (the dict key).
    name: String,
    /// Per-galaxy shape, as the model declares it.
    shape: Vec<usize>,
    array: Bound<'py, PyArrayDyn<f32>>,
}

/// The arrays of `given` that `model` reads, in its input order, checked: each present,
/// float, of the declared per-galaxy shape, all with the same number of galaxies (that
/// number is returned). Errors are `ValueError`s naming the array (or the missing name).
fn feeds<'py>(
    py: Python<'py>,
    model: &dyn TensorModel,
    given: &[(String, Bound<'py, PyAny>)],
) -> PyResult<(Vec<Feed<'py>>, usize)> {
    let mut out: Vec<Feed<'py>> = Vec::new();
    let mut n: Option<(usize, String)> = None;
    for (spec, tensor) in model.bindings() {
        if out.iter().any(|f| f.name == tensor) {
            continue;
        }
        let Some((_, obj)) = given.iter().find(|(k, _)| *k == tensor) else {
            let takes: Vec<String> = model.inputs().iter().map(TensorSpec::describe).collect();
            let got: Vec<&str> = given.iter().map(|(k, _)| k.as_str()).collect();
            return Err(PyValueError::new_err(format!(
                "{tensor}: missing; the model takes {} and was given {}",
                takes.join(", "),
                if got.is_empty() {
                    "nothing".to_string()
                } else {
                    got.join(", ")
                }
            )));
        };
        let array = as_f32(py, obj, &tensor)?;
        let shape = array.shape().to_vec();
        if shape.len() != spec.shape.len() + 1 || shape[1..] != spec.shape[..] {
            let want: Vec<String> = std::iter::once("N".to_string())
                .chain(spec.shape.iter().map(|d| d.to_string()))
                .collect();
            return Err(PyValueError::new_err(format!(
                "{tensor}: expected shape ({}{}), got {}",
                want.join(", "),
                if want.len() == 1 { "," } else { "" },
                shape_text(&shape)
            )));
        }
        match &n {
            Some((k, first)) if *k != shape[0] => {
                return Err(PyValueError::new_err(format!(
                    "{tensor}: {} galaxies, but {first} has {k}",
                    shape[0]
                )))
            }
            Some(_) => {}
            None => n = Some((shape[0], tensor.clone())),
        }
        out.push(Feed {
            name: tensor,
            shape: spec.shape.clone(),
            array,
        });
    }
    Ok((out, n.map(|(k, _)| k).unwrap_or(0)))
}

/// Run `n` galaxies of `inputs` (name, per-galaxy shape, values) through `model` one batch
/// at a time with cai-engine's [`predict_tensors`] (as `cai predict` runs a partition);
/// every output's values in the model's output order, or `None` once `cancel` is set.
fn run_batches(
    model: &dyn TensorModel,
    pool: &rayon::ThreadPool,
    file: &str,
    inputs: &[(&str, &[usize], &[f32])],
    n: usize,
    batch_size: usize,
    cancel: &AtomicBool,
) -> Result<Option<Vec<Vec<f32>>>, Box<cai_engine::Error>> {
    let specs = model.outputs();
    let z_out = specs
        .iter()
        .position(|s| s.name == REDSHIFT_OUTPUT && s.shape.is_empty());
    let mut outs: Vec<Vec<f32>> = specs
        .iter()
        .map(|s| Vec::with_capacity(n * s.per_galaxy()))
        .collect();
    for start in (0..n).step_by(batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let m = batch_size.max(1).min(n - start);
        let set = TensorSet {
            n: m,
            tensors: inputs
                .iter()
                .map(|&(name, shape, values)| {
                    let per: usize = shape.iter().product();
                    NamedTensor {
                        name: name.to_string(),
                        dtype: StoredDtype::F32,
                        shape: shape.to_vec(),
                        values: TensorValues::F32(values[start * per..(start + m) * per].to_vec()),
                    }
                })
                .collect(),
        };
        let run = predict_tensors(model, pool, &set, file, batch_size, None).map_err(Box::new)?;
        let mut cols = run.outputs.into_iter();
        for (i, out) in outs.iter_mut().enumerate() {
            if Some(i) == z_out {
                out.extend_from_slice(&run.z_pred);
            } else if let Some(col) = cols.next() {
                out.extend(col.values);
            }
        }
    }
    Ok(Some(outs))
}

/// A per-galaxy shape as a Python tuple.
fn shape_tuple<'py>(py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(pyo3::types::PyTuple::new(py, shape)?.into_any())
}

impl Model {
    fn load_inner(
        py: Python<'_>,
        path: &str,
        precision: &str,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let precision = parse_precision(precision)?;
        let (pool, threads) = thread_pool(threads)?;
        let location = path.to_string();
        let (native, model) = py.detach(move || -> PyResult<_> {
            let rt = runtime()?;
            rt.block_on(async {
                if is_onnx_location(&location) {
                    // The CLI's loader: refuses a precision other than f32, and a graph
                    // tract cannot run (naming the node).
                    let m = load_any_model(&location, &[], precision).await?;
                    Ok((None, m))
                } else {
                    let m = load_model_with(&location, precision).await?;
                    let t: Arc<dyn TensorModel> = m.clone();
                    Ok((Some(m), t))
                }
            })
            .map_err(|e: cai_engine::Error| cai_err(e))
        })?;
        Ok(Model {
            native,
            model,
            pool: Arc::new(pool),
            threads,
            path: path.to_string(),
            precision,
        })
    }

    fn predict_inner<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        magnitudes: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size: must be at least 1"));
        }
        let Some(native) = &self.native else {
            return self.predict_any(py, images, magnitudes, batch_size);
        };
        let (c, h, w) = native.input_shape();
        let images = as_f32(py, images, "images")?;
        let magnitudes = as_f32(py, magnitudes, "magnitudes")?;
        let ishape = images.shape().to_vec();
        if ishape.len() != 4 || ishape[1..] != [c, h, w] {
            return Err(PyValueError::new_err(format!(
                "images: expected shape (N, {c}, {h}, {w}), got {}",
                shape_text(&ishape)
            )));
        }
        let n = ishape[0];
        let mshape = magnitudes.shape().to_vec();
        if mshape != [n, c] {
            return Err(PyValueError::new_err(format!(
                "magnitudes: expected shape ({n}, {c}) to match images' {n} galaxies, got {}",
                shape_text(&mshape)
            )));
        }
        let images = images
            .try_readonly()
            .map_err(|e| PyValueError::new_err(format!("images: {e}")))?;
        let magnitudes = magnitudes
            .try_readonly()
            .map_err(|e| PyValueError::new_err(format!("magnitudes: {e}")))?;
        let img = images
            .as_slice()
            .map_err(|e| PyValueError::new_err(format!("images: {e}")))?;
        let mag = magnitudes
            .as_slice()
            .map_err(|e| PyValueError::new_err(format!("magnitudes: {e}")))?;
        let cancel = AtomicBool::new(false);
        let (model, pool) = (&**native, &*self.pool);
        let out = wait_interruptible(
            py,
            &cancel,
            || predict_slices(model, pool, img, mag, n, batch_size, &cancel),
            |_| Ok(()),
        )?;
        match out.map_err(cai_err)? {
            Some(z) => Ok(PyArray1::from_vec(py, z)),
            None => Err(CaiError::new_err("prediction interrupted")),
        }
    }

    /// `predict` for a model other than the native AstroMAE: `run` with the arrays named
    /// `images` and `magnitudes`, and its redshift output `z`.
    fn predict_any<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        magnitudes: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let specs = self.model.outputs();
        if !specs
            .iter()
            .any(|s| s.name == REDSHIFT_OUTPUT && s.shape.is_empty())
        {
            let outs: Vec<String> = specs.iter().map(TensorSpec::describe).collect();
            return Err(PyValueError::new_err(format!(
                "predict: {} gives no redshift output `{REDSHIFT_OUTPUT}` (it gives {}); \
                 model.run({{name: array}}) returns every output",
                self.path,
                outs.join(", ")
            )));
        }
        let given = vec![
            ("images".to_string(), images.clone()),
            ("magnitudes".to_string(), magnitudes.clone()),
        ];
        let out = self.run_inner(py, &given, batch_size)?;
        let z = out
            .get_item(REDSHIFT_OUTPUT)?
            .ok_or_else(|| CaiError::new_err("the model gave no `z`"))?;
        z.cast_into::<PyArray1<f32>>()
            .map_err(|e| CaiError::new_err(format!("output `z`: {e}")))
    }

    /// Every output of the model on the named arrays `given`, as a dict of float32 arrays
    /// of shape (N, *per-galaxy shape).
    fn run_inner<'py>(
        &self,
        py: Python<'py>,
        given: &[(String, Bound<'py, PyAny>)],
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size: must be at least 1"));
        }
        let (feeds, n) = feeds(py, &*self.model, given)?;
        let mut held = Vec::with_capacity(feeds.len());
        for f in &feeds {
            held.push(
                f.array
                    .try_readonly()
                    .map_err(|e| PyValueError::new_err(format!("{}: {e}", f.name)))?,
            );
        }
        let mut inputs: Vec<(&str, &[usize], &[f32])> = Vec::with_capacity(feeds.len());
        for (f, r) in feeds.iter().zip(&held) {
            let values = r
                .as_slice()
                .map_err(|e| PyValueError::new_err(format!("{}: {e}", f.name)))?;
            inputs.push((f.name.as_str(), f.shape.as_slice(), values));
        }
        let cancel = AtomicBool::new(false);
        let (model, pool, file) = (&*self.model, &*self.pool, self.path.as_str());
        let out = wait_interruptible(
            py,
            &cancel,
            || run_batches(model, pool, file, &inputs, n, batch_size, &cancel),
            |_| Ok(()),
        )?;
        let Some(values) = out.map_err(|e| cai_err(*e))? else {
            return Err(CaiError::new_err("prediction interrupted"));
        };
        let d = PyDict::new(py);
        for (spec, v) in self.model.outputs().iter().zip(values) {
            let dims: Vec<usize> = std::iter::once(n)
                .chain(spec.shape.iter().copied())
                .collect();
            d.set_item(&spec.name, PyArray1::from_vec(py, v).reshape(dims)?)?;
        }
        Ok(d)
    }
}

/// `(name, array)` pairs from a dict and keyword arguments; keys must be strings.
fn named_arrays<'py>(
    inputs: Option<&Bound<'py, PyDict>>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let mut out: Vec<(String, Bound<'py, PyAny>)> = Vec::new();
    for d in [inputs, kwargs].into_iter().flatten() {
        for (k, v) in d.iter() {
            let name: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err(format!("inputs: names must be str, got {k}")))?;
            if out.iter().any(|(n, _)| *n == name) {
                return Err(PyValueError::new_err(format!("{name}: given twice")));
            }
            out.push((name, v));
        }
    }
    Ok(out)
}

/// A model's tensors as `{name: per-galaxy shape}`, in the model's order.
fn spec_dict<'py>(py: Python<'py>, specs: &[TensorSpec]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for s in specs {
        d.set_item(&s.name, shape_tuple(py, &s.shape)?)?;
    }
    Ok(d)
}

#[pymethods]
impl Model {
    /// Load a model file: safetensors, the original's PyTorch `.pt` (whole module, bare or
    /// in DataParallel, or a state_dict), or ONNX (`.onnx`, run by tract), from a path,
    /// `file://` or `s3://` URL.
    #[staticmethod]
    #[pyo3(signature = (path, precision = "f32", threads = None))]
    fn load(py: Python<'_>, path: &str, precision: &str, threads: Option<usize>) -> PyResult<Self> {
        Self::load_inner(py, path, precision, threads)
    }

    /// Predicted redshift of each galaxy: `images` (N, 5, 32, 32), `magnitudes` (N, 5),
    /// float32 or float64; returns a float32 array of N (NaN where an input is not finite).
    /// An ONNX model is fed the arrays as its inputs `images` / `magnitudes` and must give
    /// a `z` output; `run` takes any inputs.
    #[pyo3(signature = (images, magnitudes, batch_size = 512))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        magnitudes: &Bound<'py, PyAny>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        self.predict_inner(py, images, magnitudes, batch_size)
    }

    /// Every output of the model on named arrays (a dict, keyword arguments, or both),
    /// each float32 or float64 of shape (N, *the input's per-galaxy shape): a dict of
    /// float32 arrays (N, *the output's shape), NaN for a galaxy with a non-finite input.
    #[pyo3(signature = (inputs = None, *, batch_size = 512, **tensors))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Option<&Bound<'py, PyDict>>,
        batch_size: usize,
        tensors: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let given = named_arrays(inputs, tensors)?;
        self.run_inner(py, &given, batch_size)
    }

    /// The inputs the model reads, `{name: per-galaxy shape}` (float32).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        spec_dict(py, &self.model.inputs())
    }

    /// The outputs it gives, `{name: per-galaxy shape}` (`()` is one value per galaxy).
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        spec_dict(py, &self.model.outputs())
    }

    /// What kind of model this is: `native AstroMAE` or `onnx`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.model.kind()
    }

    /// `(channels, height, width)` of the images the native AstroMAE takes; `None` for an
    /// ONNX model (see `inputs`).
    #[getter]
    fn input_shape(&self) -> Option<(usize, usize, usize)> {
        self.native.as_ref().map(|m| m.input_shape())
    }

    /// Where the model was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// Arithmetic of the trunk weights (`f32`, `bf16`, `int8`, `int16`).
    #[getter]
    fn precision(&self) -> &'static str {
        self.precision.name()
    }

    /// Inference threads.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    fn __repr__(&self) -> String {
        let ins: Vec<String> = self
            .model
            .inputs()
            .iter()
            .map(TensorSpec::describe)
            .collect();
        format!(
            "cai.Model({:?}, kind={:?}, precision={:?}, threads={}, inputs=[{}])",
            self.path,
            self.model.kind(),
            self.precision.name(),
            self.threads,
            ins.join(", ")
        )
    }
}

/// Load `model_path` and predict: `Model.load(model_path, precision, threads).predict(...)`.
#[pyfunction]
#[pyo3(signature = (model_path, images, magnitudes, batch_size = 512, precision = "f32", threads = None))]
pub fn predict<'py>(
    py: Python<'py>,
    model_path: &str,
    images: &Bound<'py, PyAny>,
    magnitudes: &Bound<'py, PyAny>,
    batch_size: usize,
    precision: &str,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let model = Model::load_inner(py, model_path, precision, threads)?;
    model.predict_inner(py, images, magnitudes, batch_size)
}

/// The SIMD kernel tier this process uses (`scalar`, `avx2`, `avx512`, `neon`).
#[pyfunction]
pub fn kernel_tier() -> String {
    format!("{:?}", cai_model::kernels::ops().tier).to_lowercase()
}

/// Write seeded, untrained AstroMAE weights to `out` as safetensors, as
/// `cai model init --seed SEED --out OUT` does (for examples and tests).
#[pyfunction]
#[pyo3(signature = (out, seed = 0))]
pub fn init_model(
    py: Python<'_>,
    out: std::path::PathBuf,
    seed: u64,
) -> PyResult<std::path::PathBuf> {
    let path = out.clone();
    py.detach(move || -> PyResult<()> {
        let bytes = cai_model::init::seeded_safetensors(seed).map_err(cai_err)?;
        cai_core::storage::write_file_atomic(&path, &bytes).map_err(cai_err)
    })?;
    Ok(out)
}
