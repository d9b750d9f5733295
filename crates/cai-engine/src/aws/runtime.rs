//! The Lambda runtime loop (feature `lambda`): serve the handler named by `CAI_HANDLER`
//! (`initialize`, `infer`, `summarize`) on the Lambda runtime API, one event at a time,
//! until the process is stopped. What `cai lambda`, or the `cai` binary started as
//! `bootstrap` on `provided.al2023`, runs.
//!
//! The handlers are [`super::lambda`]'s. Infer loads the model during the init phase
//! (before asking for the first event), so a cold start pays for it once, and warm
//! invocations reuse it. A failed handler answers with a Lambda error whose `errorType`
//! (`CAI.RankFailed`, `CAI.BadEvent`…) Step Functions' Retry and Catch match on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

use super::lambda::{Handler, Handlers, LambdaConfig, HANDLER_ENV};
use crate::error::{Error, Result};
use crate::local::kernel_tier;

/// Variables the runtime API client needs; Lambda (or `cargo lambda watch`) sets them.
const RUNTIME_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

fn request(what: String, hint: &str) -> Error {
    Error::Request {
        what,
        hint: hint.into(),
    }
}

/// Serve the handler `CAI_HANDLER` names until the runtime loop stops; `started` is when
/// the process started (the log line says how long the init phase took).
pub async fn serve(started: Instant) -> Result<()> {
    let name = std::env::var(HANDLER_ENV).unwrap_or_default();
    let handler = Handler::parse(&name).ok_or_else(|| {
        request(
            format!("{HANDLER_ENV}={name:?}"),
            "expected initialize, infer or summarize (the CloudFormation template sets it per \
             function)",
        )
    })?;
    for k in RUNTIME_ENV {
        if std::env::var_os(k).is_none() {
            return Err(request(
                format!("{k} is not set"),
                "`cai lambda` serves the Lambda runtime API, which Lambda (or `cargo lambda \
                 watch`) provides; to run a rank on this machine use `cai worker`",
            ));
        }
    }
    let memory = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_default();
    if memory.trim().parse::<i32>().is_err() {
        return Err(request(
            format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory:?}"),
            "it must be a number of MB",
        ));
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
    .map_err(Error::Backend)
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
