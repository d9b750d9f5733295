//! Start the workflow and watch it.
//!
//! Progress comes from two places: the execution's status (Step Functions) and the results
//! location, where each rank leaves `<rank>.json` when it is done and `failed/<rank>.json`
//! when it gave up. Reading the results rather than the map's internals keeps the count true
//! whatever Step Functions retried, and works the same for a run started elsewhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::SdkConfig;
use aws_sdk_sfn as sfn;
use serde_json::Value;

use cai_core::layout;
use cai_core::results::{load_plan, ResultsListing};
use cai_core::StorageUrl;
use serde::{Deserialize, Serialize};

use crate::straggler::Stragglers;
use crate::{aws_err, Error, Result};

/// Where a run is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The execution's status (`RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`).
    pub status: String,
    /// Ranks in the plan, once Initialize has written it.
    pub world_size: Option<usize>,
    /// Ranks with a `<rank>.json`.
    pub done: usize,
    /// Ranks with a `failed/<rank>.json` and no `<rank>.json`.
    pub failed: usize,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The last progress seen (its status is the final one).
    pub progress: Progress,
    /// The execution's output (Summarize's answer), when it succeeded.
    pub output: Option<Value>,
    /// Error name, when it did not.
    pub error: Option<String>,
    /// Error cause, when it did not.
    pub cause: Option<String>,
}

impl Finished {
    /// Whether the execution succeeded.
    pub fn succeeded(&self) -> bool {
        self.progress.status == "SUCCEEDED"
    }
}

/// Whether an execution status is final.
pub fn is_terminal(status: &str) -> bool {
    !matches!(status, "RUNNING" | "PENDING_REDRIVE" | "")
}

/// Start the state machine with `input` (the original's payload); return the execution's ARN.
/// Executions are named `cai-<unix milliseconds>`, so they sort by start time in the console.
pub async fn start_execution(
    sdk: &SdkConfig,
    state_machine_arn: &str,
    input: &Value,
) -> Result<String> {
    let client = sfn::Client::new(sdk);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let out = client
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(format!("cai-{millis}"))
        .input(input.to_string())
        .send()
        .await
        .map_err(|e| aws_err("StartExecution", e))?;
    Ok(out.execution_arn)
}

/// The execution of a run, recorded at its results location ([`layout::AWS_EXECUTION`]) when
/// it starts, so that `cai status --results …` can find and follow it from anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// The execution's ARN.
    pub execution: String,
    /// The region it runs in (the ARN's), for the client that follows it.
    pub region: Option<String>,
    /// The run's straggler factor (`--speculate`), for whoever follows it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculate: Option<f64>,
}

impl ExecutionRecord {
    /// The record of `execution`, its region read from the ARN
    /// (`arn:aws:states:REGION:ACCOUNT:execution:…`).
    pub fn new(execution: &str) -> Self {
        Self {
            execution: execution.to_string(),
            region: execution
                .split(':')
                .nth(3)
                .filter(|r| !r.is_empty())
                .map(String::from),
            speculate: None,
        }
    }

    /// The record with the run's straggler factor.
    pub fn with_speculate(mut self, speculate: f64) -> Self {
        self.speculate = Some(speculate);
        self
    }

    /// Write it under `results`.
    pub async fn save(&self, results: &StorageUrl) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the execution record: {e}")))?;
        results.put(layout::AWS_EXECUTION, json).await?;
        Ok(())
    }

    /// The record under `results`, if a run on AWS left one.
    pub async fn load(results: &StorageUrl) -> Result<Option<Self>> {
        let Some(bytes) = results.get_opt(layout::AWS_EXECUTION).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Invalid(format!(
                "{}: not an execution record: {e}",
                results.url_of(layout::AWS_EXECUTION)
            ))
        })
    }
}

/// Stop the execution `execution_arn` (its running ranks end; the results stay).
pub async fn stop_execution(sdk: &SdkConfig, execution_arn: &str) -> Result<()> {
    sfn::Client::new(sdk)
        .stop_execution()
        .execution_arn(execution_arn)
        .cause("stopped from cai")
        .send()
        .await
        .map_err(|e| aws_err("StopExecution", e))?;
    Ok(())
}

/// The execution's status (`RUNNING`, `SUCCEEDED`, …) and start time (RFC 3339).
pub async fn execution_status(sdk: &SdkConfig, execution_arn: &str) -> Result<(String, String)> {
    let d = sfn::Client::new(sdk)
        .describe_execution()
        .execution_arn(execution_arn)
        .send()
        .await
        .map_err(|e| aws_err("DescribeExecution", e))?;
    let started = d
        .start_date
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    Ok((d.status.as_str().to_string(), started))
}

/// Count done and failed ranks under `results`.
pub async fn count_ranks(results: &StorageUrl) -> Result<(usize, usize)> {
    let listing = ResultsListing::list(results).await?;
    Ok((listing.done_ranks().len(), listing.failed_ranks().len()))
}

/// Poll the execution and the results location every `poll` until the execution ends,
/// calling `on_progress` whenever the counts or the status change. With `stragglers`, each
/// look while the execution runs also gives a straggling rank a second copy; `on_note`
/// gets a line for each (and for a copy that could not be started).
pub async fn watch(
    sdk: &SdkConfig,
    execution_arn: &str,
    results: &StorageUrl,
    poll: Duration,
    mut stragglers: Option<&mut Stragglers>,
    mut on_progress: impl FnMut(&Progress),
    mut on_note: impl FnMut(String),
) -> Result<Finished> {
    let client = sfn::Client::new(sdk);
    let mut last = Progress::default();
    loop {
        let d = client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(|e| aws_err("DescribeExecution", e))?;
        let status = d.status.as_str().to_string();
        let world_size = match last.world_size {
            Some(w) => Some(w),
            None => load_plan(results)
                .await
                .ok()
                .flatten()
                .map(|p| p.world_size),
        };
        let listing = ResultsListing::list(results).await?;
        let (done, failed) = (listing.done_ranks().len(), listing.failed_ranks().len());
        if let (Some(s), Some(world), "RUNNING") =
            (stragglers.as_deref_mut(), world_size, status.as_str())
        {
            match s.look(results, &listing, world).await {
                Ok(notes) => notes.into_iter().for_each(&mut on_note),
                Err(e) => on_note(format!("cannot give a straggler a second copy: {e}")),
            }
        }
        let now = Progress {
            status: status.clone(),
            world_size,
            done,
            failed,
        };
        if now != last {
            on_progress(&now);
            last = now;
        }
        if is_terminal(&status) {
            let output = d
                .output
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|source| Error::ExecutionOutput {
                    execution: execution_arn.to_string(),
                    source,
                })?;
            return Ok(Finished {
                progress: last,
                output,
                error: d.error,
                cause: d.cause,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses() {
        assert!(!is_terminal("RUNNING"));
        assert!(!is_terminal("PENDING_REDRIVE"));
        for s in ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"] {
            assert!(is_terminal(s), "{s}");
        }
    }

    #[tokio::test]
    async fn counts_done_and_failed_ranks() {
        let r = StorageUrl::parse("memory://count-ranks").expect("memory url");
        for (k, v) in [
            ("0.json", "{}"),
            ("1.json", "{}"),
            ("failed/1.json", "{}"), // failed once, then done on a retry
            ("failed/2.json", "{}"),
            ("plan.json", "{}"),
            ("predictions/0.parquet", ""),
        ] {
            r.put(k, v.as_bytes().to_vec()).await.expect("put");
        }
        assert_eq!(count_ranks(&r).await.expect("count"), (2, 1));
    }
}
