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
use crate::printer::Printer;
use crate::Outcome;

/// Run the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<Outcome> {
    let printer = &Printer::new(cli.quiet);
    match cli.command {
        Command::Synth(a) => data::synth(a, printer).await,
        Command::Partition(a) => data::partition(a, printer).await,
        Command::Run(a) => run::run(*a, printer).await,
        Command::Summarize(a) => run::summarize(a, printer).await,
        Command::Predict(a) => predict::predict(a, printer).await,
        Command::Bench(a) => bench::bench(a, printer).await,
        Command::Model(ModelCommand::Init(a)) => model::init(a, printer).await,
        Command::Model(ModelCommand::Fit(a)) => model::fit(a, printer).await,
        Command::Model(ModelCommand::Inspect(a)) => model::inspect(a, printer).await,
        Command::Model(ModelCommand::Convert(a)) => model::convert(a, printer).await,
        Command::Demo(a) => demo::demo(a, printer).await,
        Command::Stats(a) => report::stats(a, printer).await,
        Command::Report(a) => report::report(a, printer).await,
        Command::Sweep(a) => sweep::sweep(*a, printer).await,
        Command::Worker(a) => worker::worker(a, printer).await,
        Command::Status(a) => status::status(a, printer).await,
        #[cfg(feature = "aws")]
        Command::Aws(c) => aws::aws(c, printer).await,
        Command::Cost(a) => cost::cost(a, printer).await,
    }
}
