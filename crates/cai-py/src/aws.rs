//! `cai.run(engine="aws")`: the AWS engine `cai run --engine aws` uses ([`AwsEngine`], from
//! cai-aws), with the CLI's AWS options as keyword arguments. It deploys the stack (packaging
//! the given `cai` binary for Lambda, uploading it and a local model) unless a state machine
//! is given, starts the Step Functions workflow with the original's payload, records the
//! execution at the results location and follows it to the summary.
//!
//! Ctrl-C while following stops following only: the execution goes on, and
//! `cai.attach(results)` follows it again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cai_aws::{Artifacts, AwsEngine, StackSettings};
use cai_core::cost::Arch;
use cai_engine::engine::Engine;
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;

use crate::slurm::{follow, poll_interval};

/// The AWS options of `cai run --engine aws`, with the CLI's defaults.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// `--aws-state-machine`: start this state machine instead of deploying.
    pub state_machine: Option<String>,
    /// `--aws-stack`, `--lambda-*`: how the deployed stack runs.
    pub stack: StackSettings,
    /// `--aws-profile`.
    pub profile: Option<String>,
    /// `--aws-region`.
    pub region: Option<String>,
    /// `--aws-artifacts`, `--lambda-binary`.
    pub artifacts: Artifacts,
    /// `--poll`: seconds between two looks at the execution.
    pub poll: Duration,
}

/// The engine for `o`, its SDK configuration read from the usual places (`AWS_*`,
/// `~/.aws`, `AWS_ENDPOINT_URL`).
pub async fn engine(o: AwsOptions) -> AwsEngine {
    let sdk = cai_aws::sdk_config(o.profile.as_deref(), o.region.as_deref()).await;
    AwsEngine {
        sdk,
        state_machine: o.state_machine,
        stack: o.stack,
        artifacts: o.artifacts,
        poll: o.poll,
        speculate: cai_engine::local::DEFAULT_SPECULATE,
    }
}

/// The engine following the execution recorded at `results`, if one is.
pub async fn recorded_engine(
    results: &cai_core::StorageUrl,
    poll: Duration,
) -> cai_engine::Result<Option<AwsEngine>> {
    let Some(r) = cai_aws::execution::ExecutionRecord::load(results)
        .await
        .map_err(cai_engine::Error::from)?
    else {
        return Ok(None);
    };
    Ok(Some(AwsEngine {
        poll,
        ..AwsEngine::new(cai_aws::sdk_config(None, r.region.as_deref()).await)
    }))
}

/// `lambda_arch` as the CLI's `--lambda-arch` takes it.
fn parse_arch(s: &str) -> PyResult<Arch> {
    match s {
        "x86_64" | "x86-64" => Ok(Arch::X86_64),
        "arm64" | "aarch64" => Ok(Arch::Arm64),
        other => Err(PyValueError::new_err(format!(
            "lambda_arch: expected \"x86_64\" or \"arm64\", got {other:?}"
        ))),
    }
}

/// Run on AWS (Step Functions over Lambda, as `cai run --engine aws`); with `wait`, follow
/// the execution to its summary. Returns the run report as JSON (`slurm::report_json`'s
/// fields).
#[pyfunction]
#[pyo3(signature = (data, results, model, *, batch_size = None, file_limit = None, world_size = None, precision = "f32", resume = false, payload = None, aws_state_machine = None, aws_stack = "cai", lambda_memory_mb = 10_240, lambda_arch = "x86_64", lambda_max_concurrency = 1000, lambda_tolerated_failure_percentage = 0.0, lambda_timeout_s = 900, lambda_log_retention_days = 14, aws_profile = None, aws_region = None, aws_artifacts = None, lambda_binary = None, poll = 5.0, wait = true, progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn run_aws(
    py: Python<'_>,
    data: Option<String>,
    results: Option<String>,
    model: Option<String>,
    batch_size: Option<usize>,
    file_limit: Option<usize>,
    world_size: Option<usize>,
    precision: &str,
    resume: bool,
    payload: Option<String>,
    aws_state_machine: Option<String>,
    aws_stack: &str,
    lambda_memory_mb: u32,
    lambda_arch: &str,
    lambda_max_concurrency: u32,
    lambda_tolerated_failure_percentage: f64,
    lambda_timeout_s: u32,
    lambda_log_retention_days: u32,
    aws_profile: Option<String>,
    aws_region: Option<String>,
    aws_artifacts: Option<String>,
    lambda_binary: Option<PathBuf>,
    poll: f64,
    wait: bool,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<Option<String>> {
    let poll = poll_interval(poll, 0.05)?;
    if let Some(b) = &lambda_binary {
        if !b.is_file() {
            return Err(PyValueError::new_err(format!(
                "lambda_binary: {} is not a file; it is the `cai` binary deployed to Lambda",
                b.display()
            )));
        }
    }
    let req = crate::run_request(
        data, results, model, payload, batch_size, file_limit, world_size, precision, resume, !wait,
    )?;
    let options = AwsOptions {
        state_machine: aws_state_machine,
        stack: StackSettings {
            stack: aws_stack.to_string(),
            memory_mb: lambda_memory_mb,
            arch: parse_arch(lambda_arch)?,
            max_concurrency: lambda_max_concurrency,
            tolerated_failure_percentage: lambda_tolerated_failure_percentage,
            timeout_s: lambda_timeout_s,
            log_retention_days: lambda_log_retention_days,
        },
        profile: aws_profile,
        region: aws_region,
        artifacts: Artifacts {
            location: aws_artifacts,
            binary: lambda_binary,
        },
        poll,
    };
    let out = follow(py, progress, Arc::default(), move |ev| {
        Box::pin(async move { engine(options).await.run(&req, &*ev).await })
    })?;
    out.map(Some).ok_or_else(|| {
        PyKeyboardInterrupt::new_err(
            "stopped following the run; its Step Functions execution goes on: \
             cai.attach(results) follows it again",
        )
    })
}
