//! One module per subcommand; `dispatch` picks it.

mod bench;
mod bench;
mod data;
mod demo;
mod model;
mod predict;
mod run;
#[cfg(feature = "slurm")]
mod slurm;
mod status;
mod worker;

use anyhow::Result;

use crate::cli::{Cli, Command, ModelCommand};
use crate::Outcome;

/// Run the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<Outcome> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Synth(a) => data::synth(a, quiet).await,
        Command::Partition(a) => data::partition(a, quiet).await,
        Command::Run(a) => run::run(a, quiet).await,
        Command::Summarize(a) => run::summarize(a).await,
        Command::Predict(a) => predict::predict(a, quiet).await,
        Command::Bench(a) => bench::bench(a, quiet).await,
        Command::Bench(a) => bench::bench(a, quiet).await,
        Command::Model(ModelCommand::Init(a)) => model::init(a).await,
        Command::Model(ModelCommand::Fit(a)) => model::fit(a, quiet).await,
        Command::Demo(a) => demo::demo(a, quiet).await,
        Command::Worker(a) => worker::worker(a, quiet).await,
        Command::Status(a) => status::status(a, quiet).await,
    }
}
