//! `cai.Model` and `cai.predict`: the model on NumPy arrays.
//!
//! Batches go to [`cai_model::Model::predict`] on the model's own rayon pool, exactly as
//! cai-engine's `predict_partition` sends a partition's batches (the CLI's `cai predict`),
//! including its rule for non-finite inputs: such a galaxy is run on zeros and reported as
//! NaN. The arrays are read in place when they are float32, C-ordered and aligned;
//! anything else float is converted once by NumPy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cai_engine::worker::FiniteBatch;
use cai_model::kernels::Precision;
use cai_model::{AstroMae, Model as _};
use numpy::{
    PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::{cai_err, runtime, wait_interruptible, CaiError};

/// A loaded AstroMAE model with its own inference thread pool.
#[pyclass(module = "cai", frozen)]
pub struct Model {
    model: Arc<AstroMae>,
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
        let model = py.detach(move || -> PyResult<_> {
            let rt = runtime()?;
            rt.block_on(cai_engine::stages::load_model_with(&location, precision))
                .map_err(cai_err)
        })?;
        Ok(Model {
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
        let (c, h, w) = self.model.input_shape();
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
        let (model, pool) = (&*self.model, &*self.pool);
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
}

#[pymethods]
impl Model {
    /// Load a model file (safetensors, or the original's PyTorch `.pt`: whole module, bare
    /// or in DataParallel, or a state_dict), from a path, `file://` or `s3://` URL.
    #[staticmethod]
    #[pyo3(signature = (path, precision = "f32", threads = None))]
    fn load(py: Python<'_>, path: &str, precision: &str, threads: Option<usize>) -> PyResult<Self> {
        Self::load_inner(py, path, precision, threads)
    }

    /// Predicted redshift of each galaxy: `images` (N, 5, 32, 32), `magnitudes` (N, 5),
    /// float32 or float64; returns a float32 array of N (NaN where an input is not finite).
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

    /// `(channels, height, width)` of the images the model takes.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        self.model.input_shape()
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
        let (c, h, w) = self.model.input_shape();
        format!(
            "cai.Model({:?}, precision={:?}, threads={}, input_shape=({c}, {h}, {w}))",
            self.path,
            self.precision.name(),
            self.threads
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
