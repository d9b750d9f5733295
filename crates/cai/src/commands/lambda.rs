//! `cai lambda` (hidden), or the binary started as `bootstrap` (Lambda's `provided.al2023`
//! runtime): serve the handler named by `CAI_HANDLER` (`initialize`, `infer`, `summarize`)
//! on the Lambda runtime API, one event at a time, until the process is stopped.
//!
//! The handlers are [`cai_engine::aws::lambda`]'s; this module is the runtime loop. Infer
//! loads the model during the init phase (before asking for the first event), so a cold
//! start pays for it once, and warm invocations reuse it. A failed handler answers with a
//! Lambda error whose `errorType` (`CAI.RankFailed`, `CAI.BadEvent`…) Step Functions'
//! Retry and Catch match on.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cai_engine::aws::lambda::{Handler, Handlers, LambdaConfig, HANDLER_ENV};
use cai_engine::local::kernel_tier;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

/// Variables the runtime API client needs; Lambda (or `cargo lambda watch`) sets them.
const RUNTIME_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// True when this process should serve a handler: it was started as `bootstrap` (how
/// Lambda starts a custom runtime) or as `cai lambda`.
pub fn requested() -> bool {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    let as_bootstrap = argv0
        .as_deref()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "bootstrap");
    as_bootstrap || args.next().is_some_and(|a| a == "lambda")
}

/// Serve the handler; returns when the runtime loop stops (exit code 2 and the reason on
/// stderr when it cannot start).
pub fn main() -> ExitCode {
    let started = Instant::now();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // CloudWatch keeps stderr lines as they are: no colours.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let res = match runtime {
        Ok(rt) => rt.block_on(serve(started)),
        Err(e) => Err(anyhow!(e).context("cannot start the async runtime")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

async fn serve(started: Instant) -> Result<()> {
    let name = std::env::var(HANDLER_ENV).unwrap_or_default();
    let handler = Handler::parse(&name).with_context(|| {
        format!("{HANDLER_ENV}={name:?}: expected initialize, infer or summarize (the CloudFormation template sets it per function)")
    })?;
    for k in RUNTIME_ENV {
        if std::env::var_os(k).is_none() {
            bail!(
                "{k} is not set: `cai lambda` serves the Lambda runtime API, which Lambda (or \
                 `cargo lambda watch`) provides; to run a rank on this machine use `cai worker`"
            );
        }
    }
    let memory = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.trim().parse::<i32>().is_err() {
        bail!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory:?} is not a number of MB");
    }

    let mut cfg = LambdaConfig::from_env();
    cfg.kernels = kernel_tier();
    let handlers = Arc::new(Handlers::new(cfg));
    if handler == Handler::Infer {
        if let Some(e) = handlers.preload().await {
            tracing::warn!("could not load the model ahead of the first event: {e}");
        }
    }
    tracing::info!(
        "cai lambda: {} ready in {:.1} ms ({} thread(s), kernels {}, {memory} MB)",
        handler.name(),
        started.elapsed().as_secs_f64() * 1000.0,
        handlers.config().threads(),
        handlers.config().kernels,
    );
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
        let handlers = handlers.clone();
        async move { invoke(&handlers, handler, ev).await }
    }))
    .await
    .map_err(|e| anyhow!("the Lambda runtime loop stopped: {e}"))
}

/// One invocation: run the handler, log how it went, map errors to Lambda's shape.
async fn invoke(
    handlers: &Handlers,
    handler: Handler,
    ev: LambdaEvent<Value>,
) -> std::result::Result<Value, Diagnostic> {
    let t = Instant::now();
    let id = ev.context.request_id.clone();
    tracing::info!("{} {id}: start", handler.name());
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let done = done.clone();
        Arc::new(move |n: u64| {
            let total = done.fetch_add(n, Ordering::Relaxed) + n;
            tracing::debug!("{total} galaxies done");
        })
    };
    // Lambda gives the deadline in ms since the epoch.
    let deadline = UNIX_EPOCH.checked_add(Duration::from_millis(ev.context.deadline));
    match handlers
        .handle(handler, ev.payload, Some(progress), deadline)
        .await
    {
        Ok(v) => {
            tracing::info!(
                "{} {id}: done in {:.2} s",
                handler.name(),
                t.elapsed().as_secs_f64()
            );
            Ok(v)
        }
        Err(e) => {
            let message = e.message();
            tracing::error!("{} {id}: {}: {message}", handler.name(), e.error_type());
            Err(Diagnostic {
                error_type: e.error_type().to_string(),
                error_message: message,
            })
        }
    }
}
