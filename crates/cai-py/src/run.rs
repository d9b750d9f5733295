//! `cai.run` for the local engine: plan, run the ranks on this machine, summarize, through
//! the same cai-engine calls as `cai run` (crates/cai/src/commands/run.rs).
//!
//! The run goes on a helper thread with its own tokio runtime; the Python thread draws the
//! progress and checks for Ctrl-C. On Ctrl-C every worker stops at its next batch (the
//! model refuses to run once cancelled), the runtime is shut down without recording those
//! ranks as failed, and `KeyboardInterrupt` is raised: `resume=True` runs what is left.
//!
//! Planning is cai-engine's [`RunRequest::plan`] and the ranks run on
//! [`LocalEngine::run_ranks`], as under `cai run`; the Slurm and AWS engines (the `Engine`
//! trait's other implementations) are not offered from Python yet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cai_core::StorageUrl;
use cai_engine::engine::{galaxies_in, RunEvent, RunEvents, RunRequest};
use cai_engine::local::LocalEngine;
use cai_engine::stages::load_model_with;
use cai_engine::summarize::{checkpointing, summarize};
use cai_model::{AstroMae, Model};
use pyo3::prelude::*;

use crate::model::kernel_tier;
use crate::{error_chain, runtime, wait_interruptible, CaiError};

/// A model that refuses to run once its run is cancelled, so every worker stops at its
/// next batch.
struct Cancellable {
    inner: Arc<AstroMae>,
    cancel: Arc<AtomicBool>,
}

impl Model for Cancellable {
    fn predict(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, cai_model::Error> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(cai_model::Error::Cancelled {
                reason: "KeyboardInterrupt in cai.run; run again with resume=True".into(),
            });
        }
        self.inner.predict(images, magnitudes, n)
    }

    fn input_shape(&self) -> (usize, usize, usize) {
        self.inner.input_shape()
    }
}

/// What `cai.run` passes down: the run's request and the local engine's options, as
/// `cai run --engine local` takes them.
struct RunOptions {
    request: RunRequest,
    workers: Option<usize>,
    threads: Option<usize>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn msg(s: impl Into<String>) -> BoxError {
    s.into().into()
}

/// Run the plan's ranks on this machine, as `cai run --engine local` does; the summary as
/// JSON. Planning (or resuming) is [`RunRequest::plan`], the ranks run through
/// [`LocalEngine::run_ranks`] with a model that stops at the next batch once cancelled.
async fn run_plan(
    o: &RunOptions,
    cancel: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
) -> Result<String, BoxError> {
    let (plan, ranks) = o.request.plan().await?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let model = load_model_with(&plan.model, o.request.precision)
        .await
        .map_err(|e| {
            msg(format!(
                "cannot load the model {}: {}",
                plan.model,
                error_chain(&e)
            ))
        })?;
    total.store(galaxies_in(&plan, &ranks), Ordering::Relaxed);
    let engine = LocalEngine {
        workers: o.workers,
        threads: o.threads,
        kernels: kernel_tier(),
        ..LocalEngine::default()
    };
    let model: Arc<dyn cai_model::TensorModel> = Arc::new(Cancellable {
        inner: model,
        cancel: cancel.clone(),
    });
    // Finished ranks are gathered while the run goes, so the summary reads only the last.
    checkpointing(
        Some(&plan.results),
        engine.run_ranks(plan.clone(), &ranks, model, Arc::new(Count(done))),
    )
    .await?;
    if cancel.load(Ordering::SeqCst) {
        // Ctrl-C: the ranks stopped early; summarizing now would write a partial summary.
        return Err(msg("interrupted"));
    }
    let results = StorageUrl::parse(&plan.results)?;
    let summary = summarize(&results, Some(&plan)).await?;
    Ok(serde_json::to_string(&summary)?)
}

/// Counts the galaxies the workers report done.
struct Count(Arc<AtomicU64>);

impl RunEvents for Count {
    fn event(&self, e: RunEvent) {
        if let RunEvent::Advance(k) = e {
            self.0.fetch_add(k, Ordering::Relaxed);
        }
    }
}

/// Run on the local engine and summarize; returns `summary.json`'s text. `progress` is
/// called as `progress(done, total)` about ten times a second and once at the end.
#[pyfunction]
#[pyo3(signature = (data, results, model, *, batch_size = None, file_limit = None, world_size = None, workers = None, threads = None, precision = "f32", resume = false, payload = None, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_local(
    py: Python<'_>,
    data: Option<String>,
    results: Option<String>,
    model: Option<String>,
    batch_size: Option<usize>,
    file_limit: Option<usize>,
    world_size: Option<usize>,
    workers: Option<usize>,
    threads: Option<usize>,
    precision: &str,
    resume: bool,
    payload: Option<String>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    crate::slurm::check_counts(&[("workers", workers), ("threads", threads)])?;
    let opts = RunOptions {
        request: crate::run_request(
            data, results, model, payload, batch_size, file_limit, world_size, precision, resume,
            false,
        )?,
        workers,
        threads,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let (c2, d2, t2) = (cancel.clone(), done.clone(), total.clone());
    let work = move || -> Result<Option<String>, String> {
        let rt = runtime().map_err(|e| e.to_string())?;
        let out = rt.block_on(async {
            let run = run_plan(&opts, c2.clone(), d2, t2);
            let watch = async {
                while !c2.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                r = run => Some(r),
                () = watch => None,
            }
        });
        // After Ctrl-C the workers' tasks are dropped here (no failure records); their
        // blocking inference ends at the next batch.
        rt.shutdown_timeout(Duration::from_secs(60));
        match out {
            Some(Ok(json)) => Ok(Some(json)),
            Some(Err(e)) => Err(error_chain(&*e)),
            None => Ok(None),
        }
    };
    let draw = |py: Python<'_>| -> PyResult<()> {
        if let Some(cb) = &progress {
            cb.call1((done.load(Ordering::Relaxed), total.load(Ordering::Relaxed)))?;
        }
        let _ = py;
        Ok(())
    };
    let out = wait_interruptible(py, &cancel, work, &draw)?;
    match out {
        Ok(Some(json)) => {
            draw(py)?;
            Ok(json)
        }
        Ok(None) => Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
            "run interrupted",
        )),
        Err(chain) => Err(CaiError::new_err(chain)),
    }
}
