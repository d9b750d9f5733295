//! Results: raw files under a results location, `cai.stats` and `cai.report` (cai-report,
//! as `cai stats` and `cai report` use it).

use std::path::PathBuf;

use cai_core::StorageUrl;
use cai_report::html::{write_report, ReportOptions};
use cai_report::load::load_all;
use cai_report::stats::run_rows;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{cai_err, runtime, CaiError};

/// The bytes of `key` under the location `results` (a path, `file://` or `s3://` URL).
#[pyfunction]
pub fn read_object<'py>(
    py: Python<'py>,
    results: &str,
    key: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let url = StorageUrl::parse(results).map_err(cai_err)?;
    let key = key.to_string();
    let bytes = py.detach(move || -> PyResult<bytes::Bytes> {
        runtime()?.block_on(url.get(&key)).map_err(|e| match e {
            cai_core::Error::NotFound { url } => CaiError::new_err(format!(
                "{url} not found: has the run finished and been summarized (`cai summarize`)?"
            )),
            other => cai_err(other),
        })
    })?;
    Ok(PyBytes::new(py, &bytes))
}

/// The per-run table of `cai stats` over result locations, as JSON columns.
#[pyfunction]
pub fn stats(py: Python<'_>, results: Vec<String>) -> PyResult<String> {
    py.detach(move || -> PyResult<String> {
        let runs = runtime()?
            .block_on(load_all(&results, false))
            .map_err(cai_err)?;
        let rows = run_rows(&runs);
        let col = |f: &dyn Fn(&cai_report::stats::RunRow) -> serde_json::Value| {
            serde_json::Value::Array(rows.iter().map(f).collect())
        };
        let table = serde_json::json!({
            "results": col(&|r| r.results.clone().into()),
            "engine": col(&|r| r.engine.clone().into()),
            "run": col(&|r| r.run.into()),
            "data_gb": col(&|r| r.data_gb.into()),
            "partition_mb": col(&|r| r.partition_mb.into()),
            "batch_size": col(&|r| r.batch_size.into()),
            "ranks": col(&|r| r.ranks.into()),
            "failed": col(&|r| r.failed.into()),
            "galaxies": col(&|r| r.galaxies.into()),
            "total_cpu_time": col(&|r| r.total_cpu_time.into()),
            "total_cpu_memory": col(&|r| r.total_cpu_memory.into()),
            "throughput_bps": col(&|r| r.throughput_bps.into()),
            "total_bits": col(&|r| r.total_bits.into()),
            "wall_time_s": col(&|r| r.wall_time_s.into()),
            "started_at": col(&|r| r.started_at.into()),
        });
        serde_json::to_string(&table).map_err(|e| CaiError::new_err(e.to_string()))
    })
}

/// Write the HTML report of result locations to `out`, as `cai report` does; returns the
/// number of figures.
#[pyfunction]
#[pyo3(signature = (results, out, title = None))]
pub fn report(
    py: Python<'_>,
    results: Vec<String>,
    out: PathBuf,
    title: Option<String>,
) -> PyResult<usize> {
    py.detach(move || -> PyResult<usize> {
        let opts = ReportOptions {
            title: title.unwrap_or_else(|| ReportOptions::default().title),
            ..ReportOptions::default()
        };
        runtime()?
            .block_on(write_report(&results, &out, None, &opts))
            .map_err(cai_err)
    })
}
