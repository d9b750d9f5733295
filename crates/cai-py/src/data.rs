//! `cai.synth`, `cai.partition`, `cai.read_partition`: datasets through cai-data, as the
//! CLI's `cai synth` and `cai partition` make them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cai_core::StorageUrl;
use cai_data::partition::{parse_size, partition_dataset_as, FileFormat};
use cai_data::{DatasetReader, GalaxySource, Partition, SynthConfig};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{cai_err, runtime, CaiError};

/// A partition's columns as NumPy arrays: `images` (N, C, H, W), `magnitudes` (N, C),
/// and `redshift` (N,) / `object_id` (N,) when present.
fn partition_dict<'py>(py: Python<'py>, p: Partition) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let images = PyArray1::from_vec(py, p.images).reshape([p.n, p.channels, p.height, p.width])?;
    let mags = PyArray1::from_vec(py, p.magnitudes).reshape([p.n, p.channels])?;
    d.set_item("images", images)?;
    d.set_item("magnitudes", mags)?;
    if let Some(z) = p.redshift {
        d.set_item("redshift", PyArray1::from_vec(py, z))?;
    }
    if let Some(ids) = p.object_id {
        d.set_item("object_id", PyArray1::from_vec(py, ids))?;
    }
    Ok(d)
}

/// Synthetic galaxies (the generator behind `cai synth`): written to `out` as the CLI
/// writes them when `out` is given (returns the path), else returned as arrays.
#[pyfunction]
#[pyo3(signature = (n, seed = 1, out = None))]
pub fn synth<'py>(
    py: Python<'py>,
    n: u64,
    seed: u64,
    out: Option<PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    let cfg = SynthConfig {
        galaxies: n,
        seed,
        ..Default::default()
    };
    match out {
        Some(path) => {
            let p2 = path.clone();
            py.detach(move || cai_data::write_dataset(&p2, &cfg, &mut |_| {}))
                .map_err(cai_err)?;
            Ok(path.into_pyobject(py)?.into_any())
        }
        None => {
            let count = usize::try_from(n)
                .map_err(|_| PyValueError::new_err(format!("n: {n} galaxies do not fit")))?;
            let p = py.detach(move || cai_data::generate(&cfg, 0, count));
            Ok(partition_dict(py, p)?.into_any())
        }
    }
}

/// Opens a dataset to partition, as `cai partition` does: a native file is streamed; the
/// original's whole-dataset `TensorDataset` `.pt` is read whole (never executed).
fn open_source(input: &std::path::Path) -> PyResult<Box<dyn GalaxySource + Send>> {
    let mut head = [0u8; 64];
    let got = {
        use std::io::Read;
        let mut f = std::fs::File::open(input).map_err(|e| {
            CaiError::new_err(format!("cannot open the dataset {}: {e}", input.display()))
        })?;
        f.read(&mut head).map_err(|e| {
            CaiError::new_err(format!("cannot read the dataset {}: {e}", input.display()))
        })?
    };
    if cai_data::detect_format(&head[..got]) == cai_data::Format::TorchZip {
        let bytes = std::fs::read(input).map_err(|e| {
            CaiError::new_err(format!("cannot read the dataset {}: {e}", input.display()))
        })?;
        let p = cai_data::read_torch(&input.display().to_string(), &bytes).map_err(cai_err)?;
        return Ok(Box::new(p));
    }
    Ok(Box::new(DatasetReader::open(input).map_err(cai_err)?))
}

/// Cut the dataset `input` into partitions of about `size` under `out` (a path, `file://`
/// or `s3://` URL), writing `manifest.json` last, as `cai partition` does. `format`:
/// `native` (safetensors) or `pt` (the original's `1.pt`, `2.pt`, …). Returns counts.
#[pyfunction]
#[pyo3(signature = (input, out, size = "25MB", format = "native"))]
pub fn partition<'py>(
    py: Python<'py>,
    input: PathBuf,
    out: &str,
    size: &str,
    format: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let format = match format {
        "native" | "safetensors" => FileFormat::Native,
        "pt" => FileFormat::Torch,
        other => {
            return Err(PyValueError::new_err(format!(
                "format: expected \"native\" or \"pt\", got {other:?}"
            )))
        }
    };
    let size_bytes = parse_size(size).map_err(|e| PyValueError::new_err(format!("size: {e}")))?;
    let dest = StorageUrl::parse(out).map_err(cai_err)?;
    let (partitions, galaxies) = py.detach(move || -> PyResult<(usize, u64)> {
        let reader = open_source(&input)?;
        let rt = runtime()?;
        let store_error: Arc<Mutex<Option<cai_core::Error>>> = Arc::default();
        let res = partition_dataset_as(&*reader, size_bytes, format, |file| {
            match rt.block_on(dest.put(&file.key, file.bytes)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let path = PathBuf::from(dest.url_of(&file.key));
                    if let Ok(mut slot) = store_error.lock() {
                        *slot = Some(e);
                    }
                    Err(cai_data::Error::Writer {
                        path,
                        reason: "storage write failed".into(),
                    })
                }
            }
        });
        if let Some(e) = store_error.lock().ok().and_then(|mut s| s.take()) {
            return Err(cai_err(e));
        }
        let manifest = res.map_err(cai_err)?;
        rt.block_on(dest.put(cai_core::layout::MANIFEST, manifest.to_json()))
            .map_err(cai_err)?;
        Ok((manifest.partitions.len(), manifest.total_galaxies))
    })?;
    let d = PyDict::new(py);
    d.set_item("out", out)?;
    d.set_item("partitions", partitions)?;
    d.set_item("galaxies", galaxies)?;
    Ok(d)
}

/// Read one partition (or dataset) file, native or `.pt`, from a path or URL into arrays:
/// `images`, `magnitudes`, and `redshift` / `object_id` when the file has them.
#[pyfunction]
pub fn read_partition<'py>(py: Python<'py>, location: &str) -> PyResult<Bound<'py, PyDict>> {
    let url = StorageUrl::parse(location).map_err(cai_err)?;
    let name = url.to_string();
    let p = py.detach(move || -> PyResult<Partition> {
        let bytes = runtime()?.block_on(url.get("")).map_err(cai_err)?;
        cai_data::read_partition(&name, &bytes).map_err(cai_err)
    })?;
    partition_dict(py, p)
}
