//! `cai.run(engine="slurm")`, following a run already going, and a run's status, through
//! cai-engine's [`Engine`] trait as `cai run --engine slurm` and `cai status` use it: the
//! Slurm engine submits a job array of `cai worker` tasks and a summarize job, and records
//! their ids at the results location, so any process can follow the run later.
//!
//! Ctrl-C while following stops following only: the jobs go on, and `cai.attach(results)`
//! (or `Run.wait()`) follows them again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cai_core::results::RunState;
use cai_core::StorageUrl;
use cai_engine::engine::{Engine, RunEvent, RunEvents, RunReport};
use cai_engine::slurm::{JobsState, ScriptOptions, SlurmCommands, SlurmEngine};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use std::sync::Mutex;

use crate::{cai_err, error_chain, runtime, wait_interruptible, CaiError};

/// Work done and in all, and its unit (galaxies, ranks), as the engine reports them.
#[derive(Default)]
pub(crate) struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    unit: Mutex<&'static str>,
}

impl RunEvents for Progress {
    fn event(&self, e: RunEvent) {
        match e {
            RunEvent::Advance(k) => {
                self.done.fetch_add(k, Ordering::Relaxed);
            }
            RunEvent::Progress { total, unit, .. } => {
                self.done.store(0, Ordering::Relaxed);
                self.total.store(total, Ordering::Relaxed);
                if let Ok(mut u) = self.unit.lock() {
                    *u = unit;
                }
            }
            _ => {}
        }
    }
}

/// What a run or a follow returns to Python: `{"results", "engine", "complete", "jobs",
/// "failed", "summary"}` as JSON (`summary` is `summary.json`'s content once written).
pub(crate) fn report_json(r: &RunReport) -> PyResult<String> {
    let v = serde_json::json!({
        "results": r.results,
        "engine": r.engine,
        "complete": r.complete(),
        "jobs": r.jobs,
        "failed": r.failed,
        "summary": r.summary,
    });
    serde_json::to_string(&v).map_err(cai_err)
}

/// Drive `work` (an engine's run or attach) on a helper thread while Python waits, draws
/// `progress(done, total, unit)` and checks for Ctrl-C; `Ok(None)` when interrupted.
pub(crate) fn follow<W>(
    py: Python<'_>,
    progress: Option<Bound<'_, PyAny>>,
    events: Arc<Progress>,
    work: W,
) -> PyResult<Option<String>>
where
    W: FnOnce(
            Arc<Progress>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = cai_engine::Result<RunReport>>>,
        > + Send,
{
    let cancel = AtomicBool::new(false);
    let ev = events.clone();
    let cancel_ref = &cancel;
    let job = move || -> Result<Option<RunReport>, String> {
        let rt = runtime().map_err(|e| e.to_string())?;
        let out = rt.block_on(async {
            let watch = async {
                while !cancel_ref.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                r = work(ev) => Some(r),
                () = watch => None,
            }
        });
        rt.shutdown_timeout(Duration::from_secs(10));
        match out {
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(e)) => Err(error_chain(&e)),
            None => Ok(None),
        }
    };
    let draw = |_py: Python<'_>| -> PyResult<()> {
        if let Some(cb) = &progress {
            let unit = events.unit.lock().map(|u| *u).unwrap_or_default();
            cb.call1((
                events.done.load(Ordering::Relaxed),
                events.total.load(Ordering::Relaxed),
                if unit.is_empty() { "ranks" } else { unit },
            ))?;
        }
        Ok(())
    };
    match wait_interruptible(py, &cancel, job, &draw)? {
        Ok(Some(r)) => {
            draw(py)?;
            report_json(&r).map(Some)
        }
        Ok(None) => Ok(None),
        Err(chain) => Err(CaiError::new_err(chain)),
    }
}

/// `ValueError` for a count given as 0 (`batch_size`, `world_size`, …: at least 1).
pub(crate) fn check_counts(counts: &[(&str, Option<usize>)]) -> PyResult<()> {
    for (name, v) in counts {
        if *v == Some(0) {
            return Err(PyValueError::new_err(format!("{name}: must be at least 1")));
        }
    }
    Ok(())
}

/// `poll` seconds as a duration clamped to `floor` .. 1 h, as the CLI's `--poll`; `ValueError`
/// unless it is a number of seconds > 0.
pub(crate) fn poll_interval(poll: f64, floor: f64) -> PyResult<Duration> {
    if !(poll.is_finite() && poll > 0.0) {
        return Err(PyValueError::new_err(format!(
            "poll: expected seconds > 0, got {poll}"
        )));
    }
    Ok(Duration::from_secs_f64(poll.clamp(floor, 3600.0)))
}

/// Submit a run to Slurm (a job array of `cai worker` tasks and a summarize job, as `cai
/// run --engine slurm`); with `wait`, follow it to its summary. Returns the run report as
/// JSON (see [`report_json`]).
#[pyfunction]
#[pyo3(signature = (data, results, model, *, cai_bin, batch_size = None, file_limit = None, world_size = None, threads = None, precision = "f32", resume = false, payload = None, slurm_partition = None, slurm_account = None, slurm_time = None, slurm_mem = None, cpus_per_task = None, max_running = None, setup = None, job_name = "cai", retries = 0, poll = 2.0, wait = true, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_slurm(
    py: Python<'_>,
    data: Option<String>,
    results: Option<String>,
    model: Option<String>,
    cai_bin: PathBuf,
    batch_size: Option<usize>,
    file_limit: Option<usize>,
    world_size: Option<usize>,
    threads: Option<usize>,
    precision: &str,
    resume: bool,
    payload: Option<String>,
    slurm_partition: Option<String>,
    slurm_account: Option<String>,
    slurm_time: Option<String>,
    slurm_mem: Option<String>,
    cpus_per_task: Option<u32>,
    max_running: Option<usize>,
    setup: Option<String>,
    job_name: &str,
    retries: u32,
    poll: f64,
    wait: bool,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    check_counts(&[("threads", threads)])?;
    let poll = poll_interval(poll, 0.1)?;
    if !cai_bin.is_file() {
        return Err(PyValueError::new_err(format!(
            "cai_bin: {} is not a file; the Slurm tasks run this `cai` binary (it must be on a \
             file system the nodes mount)",
            cai_bin.display()
        )));
    }
    let req = crate::run_request(
        data, results, model, payload, batch_size, file_limit, world_size, precision, resume, !wait,
    )?;
    let engine = SlurmEngine {
        commands: SlurmCommands::default(),
        script: ScriptOptions {
            job_name: job_name.to_string(),
            partition: slurm_partition,
            account: slurm_account,
            time: slurm_time,
            mem: slurm_mem,
            cpus_per_task,
            setup,
            max_running,
            threads,
            precision: req.precision,
            cai_bin,
            ..ScriptOptions::default()
        },
        script_dir: None,
        retries,
        poll,
        speculate: cai_engine::local::DEFAULT_SPECULATE,
        dry_run: false,
    };
    let out = follow(py, progress, Arc::default(), move |ev| {
        Box::pin(async move { engine.run(&req, &*ev).await })
    })?;
    out.ok_or_else(|| {
        PyKeyboardInterrupt::new_err(
            "stopped following the run; its Slurm jobs go on: cai.attach(results) follows \
             them again, scancel stops them",
        )
    })
}

/// Follow the run at `results` whose work is recorded there (Slurm jobs in
/// `slurm/jobs.json`, an AWS execution in `aws/execution.json`: a run submitted with
/// `wait=False`, by the CLI, or by another process) to its summary, as `cai status` does.
#[pyfunction]
#[pyo3(signature = (results, *, poll = None, progress = None))]
pub fn attach(
    py: Python<'_>,
    results: String,
    poll: Option<f64>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let url = StorageUrl::parse(&results).map_err(cai_err)?;
    let secs = |default: f64, floor: f64| {
        Duration::from_secs_f64(poll.unwrap_or(default).clamp(floor, 3600.0))
    };
    let rt = runtime()?;
    let engine: Option<Box<dyn Engine + Send + Sync>> = py
        .detach(|| {
            rt.block_on(async {
                if let Some(state) = JobsState::load(&url).await.map_err(|e| error_chain(&e))? {
                    let e = SlurmEngine::for_state(&state, secs(2.0, 0.1));
                    return Ok::<_, String>(Some(Box::new(e) as Box<dyn Engine + Send + Sync>));
                }
                #[cfg(feature = "aws")]
                if let Some(e) = crate::aws::recorded_engine(&url, secs(5.0, 0.05))
                    .await
                    .map_err(|e| error_chain(&e))?
                {
                    return Ok(Some(Box::new(e) as Box<dyn Engine + Send + Sync>));
                }
                Ok(None)
            })
        })
        .map_err(CaiError::new_err)?;
    drop(rt);
    let Some(engine) = engine else {
        return Err(CaiError::new_err(format!(
            "no Slurm jobs or AWS execution are recorded under {results} (slurm/jobs.json, \
             aws/execution.json): nothing to follow; cai.status(results) shows what is there"
        )));
    };
    let out = follow(py, progress, Arc::default(), move |ev| {
        Box::pin(async move { engine.attach(&results, None, &*ev).await })
    })?;
    out.ok_or_else(|| PyKeyboardInterrupt::new_err("stopped following the run; its jobs go on"))
}

/// How far the run at `results` is (`cai status`'s figures) as JSON, or `None` when no
/// run was planned there.
#[pyfunction]
pub fn run_status(py: Python<'_>, results: String) -> PyResult<Option<String>> {
    let url = StorageUrl::parse(&results).map_err(cai_err)?;
    let rt = runtime()?;
    let st = py
        .detach(|| rt.block_on(RunState::of(&url)))
        .map_err(cai_err)?;
    st.map(|s| serde_json::to_string(&s).map_err(cai_err))
        .transpose()
}
