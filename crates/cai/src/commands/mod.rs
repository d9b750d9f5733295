//! One module per subcommand; `dispatch` picks it.

#[cfg(feature = "aws")]
pub(crate) mod aws;
mod bench;
pub(crate) mod cost;
mod data;
mod demo;
mod engines;
#[cfg(feature = "aws")]
pub(crate) mod lambda;
mod model;
mod predict;
mod report;
mod run;
mod status;
mod sweep;
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
        Command::Run(a) => run::run(*a, quiet).await,
        Command::Summarize(a) => run::summarize(a).await,
        Command::Predict(a) => predict::predict(a, quiet).await,
        Command::Bench(a) => bench::bench(a, quiet).await,
        Command::Model(ModelCommand::Init(a)) => model::init(a).await,
        Command::Model(ModelCommand::Fit(a)) => model::fit(a, quiet).await,
        Command::Model(ModelCommand::Inspect(a)) => model::inspect(a).await,
        Command::Model(ModelCommand::Convert(a)) => model::convert(a, quiet).await,
        Command::Demo(a) => demo::demo(a, quiet).await,
        Command::Stats(a) => report::stats(a, quiet).await,
        Command::Report(a) => report::report(a, quiet).await,
        Command::Sweep(a) => sweep::sweep(*a, quiet).await,
        Command::Worker(a) => worker::worker(a, quiet).await,
        Command::Status(a) => status::status(a, quiet).await,
        #[cfg(feature = "aws")]
        Command::Aws(c) => aws::aws(c, quiet).await,
        Command::Cost(a) => cost::cost(a).await,
    }
}
