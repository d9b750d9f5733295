//! `cai`: the CAI-rs command line. Results go to stdout; progress and logs to stderr.
//! Exit codes: 0 done, 1 some ranks failed, 2 usage or other error.

mod cli;
mod commands;
mod printer;
mod progress;
mod settings;

use std::process::ExitCode;

use clap::Parser;

/// How a command ended, when it did not fail outright.
pub enum Outcome {
    /// Everything done.
    Ok,
    /// The run finished but some ranks failed (exit code 1).
    SomeFailed,
}

fn main() -> ExitCode {
    // Lambda starts a custom runtime as `bootstrap`; `cai lambda` is the same, by hand.
    #[cfg(feature = "aws")]
    if commands::lambda::requested() {
        return commands::lambda::main();
    }
    let cli = cli::Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    // S3 requests that are retried (object_store logs each at info) are shown unless quiet:
    // a run that slows down says why.
    let level = if cli.quiet || cli.verbose > 0 {
        level.to_string()
    } else {
        format!("{level},object_store::client=info")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
