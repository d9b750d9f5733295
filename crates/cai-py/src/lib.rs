//! # cai-py
//!
//! The `cai._native` Python extension module: CAI-rs's library crates called from Python
//! through PyO3, built into an abi3 wheel by maturin (`pip install crates/cai-py`). The
//! Python package around it (`python/cai/`) adds pandas/pyarrow results, the progress
//! line and type stubs.
//!
//! * [`model`]: `Model.load` / `Model.predict` on NumPy arrays, and one-call `predict`.
//! * [`data`]: `synth`, `partition`, `read_partition` (cai-data, as `cai synth` /
//!   `cai partition` do).
//! * [`run`]: a local run through cai-engine's stages and local engine, as `cai run`.
//! * [`slurm`]: a Slurm run, following a run (Slurm or AWS), its status (cai-engine's
//!   `Engine` trait, as `cai run --engine slurm` and `cai status`).
//! * `aws` (feature `aws`, on by default): an AWS run (cai-aws's `AwsEngine`, as
//!   `cai run --engine aws`).
//! * [`results`]: results files, `stats` and `report` (cai-report, as `cai stats` /
//!   `cai report`).
//!
//! Every call that computes or does I/O releases the GIL; the long ones run on a helper
//! thread while the calling thread checks for Ctrl-C ([`wait_interruptible`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use cai_engine::engine::RunRequest;
use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

#[cfg(feature = "aws")]
pub mod aws;
pub mod data;
pub mod model;
pub mod results;
pub mod run;
pub mod slurm;

create_exception!(
    _native,
    CaiError,
    PyRuntimeError,
    "An error from CAI-rs; the message carries the Rust error chain (file, key, shape)."
);

/// How often a waiting call looks for Ctrl-C and redraws progress.
const TICK: Duration = Duration::from_millis(100);

/// The error and its causes, one per line (`caused by: …`), skipping a cause whose text
/// the line before already contains (transparent wrappers repeat their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !last.contains(&text) {
            out.push_str("\ncaused by: ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}

/// A Rust error as a Python [`CaiError`] carrying its chain.
pub fn cai_err(e: impl std::error::Error) -> PyErr {
    CaiError::new_err(error_chain(&e))
}

/// The original's `payload.json` at `path`, if given (as `cai run --payload` reads it).
pub fn read_payload(path: Option<String>) -> PyResult<Option<cai_core::payload::Payload>> {
    path.map(|p| {
        let bytes = std::fs::read(&p)
            .map_err(|e| CaiError::new_err(format!("cannot read the payload {p}: {e}")))?;
        cai_core::payload::Payload::from_json(&p, &bytes).map_err(cai_err)
    })
    .transpose()
}

/// The [`RunRequest`] a `cai.run` call plans from, whatever its engine: its locations,
/// payload file (read here) and run options, checked as the CLI checks them (`batch_size`,
/// `world_size` at least 1; a known precision), with the CLI's defaults for the rest (no
/// `--bind`, no `--label`). `detach`: start the run and return (`wait=False`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_request(
    data: Option<String>,
    results: Option<String>,
    model: Option<String>,
    payload: Option<String>,
    batch_size: Option<usize>,
    file_limit: Option<usize>,
    world_size: Option<usize>,
    precision: &str,
    resume: bool,
    detach: bool,
) -> PyResult<RunRequest> {
    slurm::check_counts(&[("batch_size", batch_size), ("world_size", world_size)])?;
    Ok(RunRequest {
        data,
        results,
        model,
        payload: read_payload(payload)?,
        batch_size,
        file_limit,
        world_size,
        precision: model::parse_precision(precision)?,
        resume,
        detach,
        ..RunRequest::default()
    })
}

/// A tokio runtime for one call's storage and engine work.
pub fn runtime() -> PyResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cai-py-io")
        .enable_all()
        .build()
        .map_err(|e| CaiError::new_err(format!("cannot start the I/O runtime: {e}")))
}

/// Run `work` on a helper thread while this (Python) thread waits without the GIL, calls
/// `tick` every [`TICK`] and checks for signals. On Ctrl-C (or an error from `tick`)
/// `cancel` is set, the work is waited for (it must stop soon once `cancel` is set) and
/// the Python exception is raised.
pub fn wait_interruptible<T, F, K>(
    py: Python<'_>,
    cancel: &AtomicBool,
    work: F,
    mut tick: K,
) -> PyResult<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
    K: FnMut(Python<'_>) -> PyResult<()>,
{
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<()>();
        let handle = s.spawn(move || {
            let out = work();
            // The receiver may be gone only if the waiter itself panicked.
            let _ = tx.send(());
            out
        });
        let mut rx = rx;
        let mut interrupted = None;
        loop {
            let (got, back) = py.detach(move || {
                let got = rx.recv_timeout(TICK);
                (got, rx)
            });
            rx = back;
            if !matches!(got, Err(mpsc::RecvTimeoutError::Timeout)) {
                break;
            }
            if let Err(e) = tick(py).and_then(|()| py.check_signals()) {
                cancel.store(true, Ordering::SeqCst);
                interrupted = Some(e);
                // Wait for the work to notice.
                py.detach(move || {
                    let _ = rx.recv();
                });
                break;
            }
        }
        let out = py.detach(move || handle.join());
        if let Some(e) = interrupted {
            return Err(e);
        }
        out.map_err(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            CaiError::new_err(format!("internal error in CAI-rs: {what}"))
        })
    })
}

/// The `cai._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CaiError", m.py().get_type::<CaiError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PREDICTIONS_KEY", cai_core::layout::PREDICTIONS)?;
    m.add("SUMMARY_KEY", cai_core::layout::SUMMARY)?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(model::predict, m)?)?;
    m.add_function(wrap_pyfunction!(model::kernel_tier, m)?)?;
    m.add_function(wrap_pyfunction!(model::init_model, m)?)?;
    m.add_function(wrap_pyfunction!(data::synth, m)?)?;
    m.add_function(wrap_pyfunction!(data::partition, m)?)?;
    m.add_function(wrap_pyfunction!(data::read_partition, m)?)?;
    m.add_function(wrap_pyfunction!(run::run_local, m)?)?;
    m.add_function(wrap_pyfunction!(slurm::run_slurm, m)?)?;
    #[cfg(feature = "aws")]
    m.add_function(wrap_pyfunction!(aws::run_aws, m)?)?;
    m.add_function(wrap_pyfunction!(slurm::attach, m)?)?;
    m.add_function(wrap_pyfunction!(slurm::run_status, m)?)?;
    m.add_function(wrap_pyfunction!(results::read_object, m)?)?;
    m.add_function(wrap_pyfunction!(results::stats, m)?)?;
    m.add_function(wrap_pyfunction!(results::report, m)?)?;
    Ok(())
}
