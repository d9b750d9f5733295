//! `cai lambda` (hidden), or the binary started as `bootstrap` (Lambda's `provided.al2023`
//! runtime): serve the handler named by `CAI_HANDLER` (`initialize`, `infer`, `summarize`)
//! on the Lambda runtime API, one event at a time, until the process is stopped.
//!
//! The handlers and the runtime loop are `cai_engine::aws`'s (`lambda`, `runtime`); this
//! sets up logging and the async runtime.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::anyhow;
use cai_engine::aws::runtime::serve;

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
        Ok(rt) => rt.block_on(serve(started)).map_err(anyhow::Error::from),
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
