//! [`AwsEngine`]: the AWS control plane behind `cai_engine`'s [`Engine`] trait.
//!
//! A run packages this binary, uploads the zip (and a local model, named by its hash) beside
//! the results, creates or updates the CloudFormation stack ([`deploy_run`]), starts the Step
//! Functions workflow with the original's payload, and follows it: ranks done and failed
//! from the results location, the execution's status from Step Functions, then the summary.
//! With a state machine given, nothing is deployed: the run starts it as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::SdkConfig;
use cai_core::cost::Arch;
use cai_core::layout;
use cai_core::limits::{FunctionLimits, RankCosts};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::aws::{AwsConfig, S3Prefix};
use cai_engine::engine::{Engine, RunEnd, RunEvent, RunEvents, RunReport, RunRequest};
use sha2::{Digest, Sha256};

use crate::execution::{execution_status, stop_execution, ExecutionRecord};
use crate::straggler::Stragglers;
use crate::{deploy, start_execution, watch, Deployed, Error, Package, Result, StackEvent};

/// The engine's name in rank reports.
const ENGINE: &str = "aws";

/// How the stack runs: everything of an [`AwsConfig`] but the locations, which come from
/// each run. `Default` is the stack `cai` with [`AwsConfig::new`]'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StackSettings {
    /// Stack name (functions are `<stack>-initialize`, `<stack>-infer`, `<stack>-summarize`).
    pub stack: String,
    /// Memory of the Infer function in MB (128–10,240).
    pub memory_mb: u32,
    /// CPU architecture of the functions.
    pub arch: Arch,
    /// Ranks running at once (0: as many as Step Functions allows).
    pub max_concurrency: u32,
    /// Percentage of ranks that may fail before the map stops (0–100).
    pub tolerated_failure_percentage: f64,
    /// Infer timeout in seconds (1–900).
    pub timeout_s: u32,
    /// Days the log groups keep logs.
    pub log_retention_days: u32,
}

impl Default for StackSettings {
    fn default() -> Self {
        let d = AwsConfig::new(
            "cai",
            S3Prefix::new("", ""),
            S3Prefix::new("", ""),
            S3Prefix::new("", ""),
        );
        Self {
            stack: d.stack,
            memory_mb: d.memory_mb,
            arch: d.arch,
            max_concurrency: d.max_concurrency,
            tolerated_failure_percentage: d.tolerated_failure_percentage,
            timeout_s: d.timeout_s,
            log_retention_days: d.log_retention_days,
        }
    }
}

impl StackSettings {
    /// The stack's configuration for these locations, after checking the settings are in
    /// Lambda's and Step Functions' ranges.
    pub fn config(&self, data: S3Prefix, results: S3Prefix, model: S3Prefix) -> Result<AwsConfig> {
        if !(1..=900).contains(&self.timeout_s) {
            return Err(Error::Invalid(format!(
                "--lambda-timeout-s must be 1..=900 (Lambda's limit), got {}",
                self.timeout_s
            )));
        }
        if !(128..=10_240).contains(&self.memory_mb) {
            return Err(Error::Invalid(format!(
                "--lambda-memory-mb must be 128..=10240 (Lambda's range), got {}",
                self.memory_mb
            )));
        }
        if !(0.0..=100.0).contains(&self.tolerated_failure_percentage) {
            return Err(Error::Invalid(
                "--lambda-tolerated-failure-percentage must be 0..=100".into(),
            ));
        }
        let mut cfg = AwsConfig::new(&self.stack, data, results, model);
        cfg.memory_mb = self.memory_mb;
        cfg.arch = self.arch;
        cfg.max_concurrency = self.max_concurrency;
        cfg.tolerated_failure_percentage = self.tolerated_failure_percentage;
        cfg.timeout_s = self.timeout_s;
        cfg.log_retention_days = self.log_retention_days;
        Ok(cfg)
    }

    /// [`StackSettings::config`] for locations given as `s3://` URLs; `model` names an
    /// object, or is `None` while a local model is still to be uploaded ([`deploy_run`]
    /// sets it then).
    pub fn config_at(&self, data: &str, results: &str, model: Option<&str>) -> Result<AwsConfig> {
        let model = match model {
            Some(at) => {
                let m = s3_location("model", at)?;
                if m.prefix.is_empty() {
                    return Err(Error::Invalid(format!(
                        "--model must name an object (s3://bucket/key), got {at:?}"
                    )));
                }
                m
            }
            None => S3Prefix::new("unset", "unset"),
        };
        self.config(
            s3_location("data", data)?,
            s3_location("results", results)?,
            model,
        )
    }
}

/// Where the deployment zip comes from and goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    /// Where the zip (and a local model) are uploaded (default:
    /// `s3://<results bucket>/cai-artifacts/<stack>`).
    pub location: Option<String>,
    /// The cai binary to deploy (default: this process's own executable).
    pub binary: Option<PathBuf>,
}

/// `url` as an S3 location, or an error naming the flag it came from.
pub fn s3_location(flag: &str, url: &str) -> Result<S3Prefix> {
    S3Prefix::parse(url).ok_or_else(|| {
        Error::Invalid(format!(
            "--{flag} must be an s3://bucket/prefix URL, got {url:?}"
        ))
    })
}

/// Check and zip a binary (default: this process's own executable) for Lambda.
pub fn package_binary(binary: Option<&Path>, arch: Arch, out: &Path) -> Result<Package> {
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().map_err(|e| Error::Context {
            what: "cannot find this cai binary".into(),
            source: Box::new(e),
        })?,
    };
    crate::package(&binary, arch, out).map_err(|e| Error::Context {
        what: format!("cannot package {} for Lambda", binary.display()),
        source: Box::new(e),
    })
}

/// A stack event as a line for the user.
pub fn stack_event_line(e: &StackEvent) -> String {
    match &e.reason {
        Some(r) => format!("  {:<24} {} ({r})", e.resource, e.status),
        None => format!("  {:<24} {}", e.resource, e.status),
    }
}

/// Package this binary, upload the zip (and `model` when it is a local file, keyed by its
/// hash so an unchanged model is not sent again) to the artifacts location, point
/// `cfg.model` at the model in S3, and create or update the stack.
pub async fn deploy_run(
    sdk: &SdkConfig,
    cfg: &mut AwsConfig,
    model: &str,
    art: &Artifacts,
    events: &dyn RunEvents,
) -> Result<Deployed> {
    let say = |m: String| events.event(RunEvent::Message(m));
    let artifacts_url = art
        .location
        .clone()
        .unwrap_or_else(|| format!("s3://{}/cai-artifacts/{}", cfg.results.bucket, cfg.stack));
    let artifacts = s3_location("artifacts", &artifacts_url)?;
    let store = StorageUrl::parse(&artifacts_url)?;

    let dir = tempfile::tempdir().map_err(|e| Error::Context {
        what: "cannot make a temporary folder".into(),
        source: Box::new(e),
    })?;
    let pkg = package_binary(art.binary.as_deref(), cfg.arch, &dir.path().join("cai.zip"))?;
    let zip_key = pkg.key_name();
    if store.exists(&zip_key).await? {
        say(format!(
            "code: {} (already uploaded)",
            store.url_of(&zip_key)
        ));
    } else {
        let bytes = std::fs::read(&pkg.path).map_err(|source| Error::Io {
            path: pkg.path.display().to_string(),
            source,
        })?;
        say(format!(
            "uploading the code ({:.1} MB zip; {}) to {}",
            pkg.zip_bytes as f64 / 1e6,
            pkg.binary.describe(),
            store.url_of(&zip_key)
        ));
        store.put(&zip_key, bytes).await?;
    }

    cfg.model = match S3Prefix::parse(model) {
        Some(m) if !m.prefix.is_empty() => m,
        Some(_) => {
            return Err(Error::Invalid(format!(
                "--model must name an object (s3://bucket/key), got {model:?}"
            )))
        }
        None => {
            let bytes = std::fs::read(model).map_err(|e| Error::Context {
                what: format!("cannot read the model {model}"),
                source: Box::new(e),
            })?;
            let ext = Path::new(model)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("safetensors");
            let key = format!("model-{}.{ext}", &hex::encode(Sha256::digest(&bytes))[..16]);
            if !store.exists(&key).await? {
                say(format!(
                    "uploading the model {model} to {}",
                    store.url_of(&key)
                ));
                store.put(&key, bytes).await?;
            }
            S3Prefix::new(&artifacts.bucket, &artifacts.key(&key))
        }
    };

    say(format!("deploying the stack {}", cfg.stack));
    let d = deploy(
        sdk,
        &cfg.stack,
        &cai_engine::aws::template(cfg),
        &artifacts.bucket,
        &artifacts.key(&zip_key),
        Duration::from_secs(2),
        |e| say(stack_event_line(e)),
    )
    .await
    .map_err(|e| Error::Context {
        what: format!("cannot deploy the stack {}", cfg.stack),
        source: Box::new(e),
    })?;
    say(format!(
        "stack {} {}: {}",
        d.stack, d.action, d.state_machine_arn
    ));
    Ok(d)
}

/// Runs ranks as Lambda invocations of a Step Functions Distributed Map.
#[derive(Debug, Clone)]
pub struct AwsEngine {
    /// Credentials, region and endpoint.
    pub sdk: SdkConfig,
    /// Start this state machine instead of deploying the stack.
    pub state_machine: Option<String>,
    /// How the deployed stack runs.
    pub stack: StackSettings,
    /// Where the code comes from and goes.
    pub artifacts: Artifacts,
    /// Time between two looks at the execution and the results.
    pub poll: Duration,
    /// Once more than half the ranks have ended, a rank running past this many times the
    /// median rank time gets a second copy, invoked by the follower (0: never); the local
    /// and Slurm engines' `--speculate`.
    pub speculate: f64,
}

impl AwsEngine {
    /// An engine with these credentials and the default stack, deploying before each run.
    pub fn new(sdk: SdkConfig) -> Self {
        Self {
            sdk,
            state_machine: None,
            stack: StackSettings::default(),
            artifacts: Artifacts::default(),
            poll: Duration::from_secs(2),
            speculate: cai_engine::local::DEFAULT_SPECULATE,
        }
    }

    /// Follow the execution `execution` of the run at `results` to its end, then read the
    /// summary. A rank that runs long gets a second copy ([`Stragglers`]), by the run's
    /// recorded `speculate` when there is one, else this engine's.
    pub async fn follow(
        &self,
        execution: &str,
        results: &StorageUrl,
        events: &dyn RunEvents,
    ) -> Result<RunReport> {
        let say = |m: String| events.event(RunEvent::Message(m));
        let speculate = match ExecutionRecord::load(results).await {
            Ok(Some(r)) if r.execution == execution => r.speculate.unwrap_or(self.speculate),
            _ => self.speculate,
        };
        let mut stragglers = Stragglers::new(&self.sdk, execution, speculate);
        let mut started = false;
        let mut shown = 0u64;
        let finished = watch(
            &self.sdk,
            execution,
            results,
            self.poll,
            Some(&mut stragglers),
            |p| {
                let Some(world) = p.world_size else {
                    say(format!("{}: initializing", p.status));
                    return;
                };
                if !started {
                    started = true;
                    events.event(RunEvent::Progress {
                        label: "ranks".into(),
                        total: world as u64,
                        unit: "ranks",
                    });
                }
                let now = (p.done + p.failed) as u64;
                if now > shown {
                    events.event(RunEvent::Advance(now - shown));
                    shown = now;
                }
                if p.failed > 0 {
                    say(format!("{} rank(s) failed so far", p.failed));
                }
            },
            say,
        )
        .await
        .map_err(|e| Error::Context {
            what: "lost track of the execution".into(),
            source: Box::new(e),
        })?;
        if started {
            events.event(RunEvent::ProgressDone);
        }
        let status = finished.progress.status.clone();
        say(format!("execution {status}"));
        if let (Some(e), c) = (&finished.error, &finished.cause) {
            say(format!("  error {e}: {}", c.as_deref().unwrap_or("")));
        }
        let summary = match results.get_opt(layout::SUMMARY).await? {
            Some(b) => Some(serde_json::from_slice::<Summary>(&b).map_err(|e| {
                Error::Invalid(format!(
                    "cannot read {}: {e}",
                    results.url_of(layout::SUMMARY)
                ))
            })?),
            None => {
                say(format!("no summary.json under {}", results.url_of("")));
                None
            }
        };
        let mut report = match summary {
            Some(s) => RunReport::finished(ENGINE, results, s),
            None => {
                let mut r = RunReport::detached(ENGINE, &results.to_string(), Vec::new());
                r.ranks_total = finished.progress.world_size.unwrap_or(0);
                r.ranks_done = finished.progress.done;
                r.end = RunEnd::Finished;
                r
            }
        };
        report.jobs = vec![execution.to_string()];
        if !finished.succeeded() {
            report.end = RunEnd::Aborted {
                status,
                id: execution.to_string(),
            };
        }
        Ok(report)
    }

    async fn start(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport> {
        let mut payload = req.payload.clone().unwrap_or_default();
        // Flags override the payload, as for the other engines.
        if let Some(d) = &req.data {
            let d = s3_location("data", d)?;
            payload.data_bucket = Some(d.bucket);
            payload.data_prefix = Some(d.prefix);
        }
        if let Some(r) = &req.results {
            let r = s3_location("results", r)?;
            payload.bucket = Some(r.bucket);
            payload.result_path = Some(r.prefix);
        }
        if let Some(b) = req.batch_size {
            payload.batch_size = Some(b as u64);
        }
        if let Some(f) = req.file_limit {
            payload.file_limit = Some(f as u64);
        }
        if let Some(w) = req.world_size {
            payload.world_size = Some(w as u64);
        }
        if !req.binds.is_empty() {
            payload.bind = Some(req.binds.iter().cloned().collect());
        }
        if let Some(l) = &req.label {
            payload.label = Some(l.clone());
        }
        let missing = |what: &str, hint: &str| {
            Error::from(cai_engine::Error::Request {
                what: what.into(),
                hint: hint.into(),
            })
        };
        // Resuming: Initialize keeps the plan and lists only the ranks without a result;
        // what the flags leave out (data, model) is the plan's.
        let planned = match payload.results_url() {
            Some(r) if req.resume => {
                payload.resume = Some(true);
                cai_core::results::load_plan(&StorageUrl::parse(&r)?).await?
            }
            _ => None,
        };
        if let (None, Some(p)) = (payload.data_url(), &planned) {
            let d = s3_location("data", &p.data)?;
            payload.data_bucket = Some(d.bucket);
            payload.data_prefix = Some(d.prefix);
        }
        let data = payload.data_url().ok_or_else(|| {
            missing(
                "no data location",
                "give --data s3://… (or --payload with data_bucket and data_prefix)",
            )
        })?;
        let results = payload.results_url().ok_or_else(|| {
            missing(
                "no results location",
                "give --results s3://… (or --payload with bucket and result_path)",
            )
        })?;
        if self.state_machine.is_none() {
            // Deploying now: the Infer function's memory and timeout are known, so a rank
            // that cannot fit one invocation is refused before anything is deployed.
            check_limits(&data, &results, &payload, &self.stack).await?;
        }
        let state_machine = match &self.state_machine {
            Some(arn) => {
                if req.precision != Default::default() {
                    events.event(RunEvent::Warning(format!(
                        "--precision {} is ignored with --state-machine: the stack's \
                         Infer function uses the precision it was deployed with (cai aws deploy \
                         --precision)",
                        req.precision
                    )));
                }
                arn.clone()
            }
            None => {
                // With --state-machine, the model is the one the stack was deployed with;
                // resuming without --model, the plan's.
                let model = match (&req.model, planned) {
                    (None, Some(p)) => p.model,
                    _ => {
                        let model = req.model_location().await?.ok_or_else(|| {
                            missing(
                                "no model",
                                "give --model (s3://bucket/key, or a local file to upload)",
                            )
                        })?;
                        if req.model.is_none() {
                            events.event(cai_engine::engine::folder_model_chosen(&model));
                        }
                        model
                    }
                };
                let mut cfg = self.stack.config_at(&data, &results, None)?;
                cfg.precision = req.precision;
                deploy_run(&self.sdk, &mut cfg, &model, &self.artifacts, events)
                    .await?
                    .state_machine_arn
            }
        };
        let input = serde_json::to_value(&payload)
            .map_err(|e| Error::Invalid(format!("cannot encode the payload: {e}")))?;
        let execution = start_execution(&self.sdk, &state_machine, &input)
            .await
            .map_err(|e| Error::Context {
                what: "cannot start the workflow".into(),
                source: Box::new(e),
            })?;
        // Recorded beside the results (Initialize leaves it), for `cai status` to reattach.
        ExecutionRecord::new(&execution)
            .with_speculate(self.speculate)
            .save(&StorageUrl::parse(&results)?)
            .await?;
        let region = self
            .sdk
            .region()
            .map_or("us-east-1".to_string(), |r| r.to_string());
        events.event(RunEvent::Output(format!("execution  {execution}")));
        events.event(RunEvent::Message(format!(
            "console: https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution}"
        )));
        if req.detach {
            events.event(RunEvent::Message(format!(
                "follow it with: cai status --results {results}"
            )));
            return Ok(RunReport::detached(ENGINE, &results, vec![execution]));
        }
        let results = StorageUrl::parse(&results)?;
        self.follow(&execution, &results, events).await
    }
}

/// Plan the run here as Initialize will (from the data location's manifest or listing,
/// without writing anything) and refuse it when a rank would not fit one invocation of an
/// Infer function with `stack`'s memory and timeout ([`RankCosts::check`]).
async fn check_limits(
    data: &str,
    results: &str,
    payload: &cai_core::payload::Payload,
    stack: &StackSettings,
) -> Result<()> {
    let (parts, _) = cai_engine::stages::find_partitions(&StorageUrl::parse(data)?)
        .await
        .map_err(|e| Error::Engine(Box::new(e)))?;
    if parts.is_empty() {
        // Initialize says so, naming the location.
        return Ok(());
    }
    let req = cai_core::plan::PlanRequest {
        data: data.to_string(),
        results: results.to_string(),
        model: String::new(),
        binds: Vec::new(),
        label: None,
        batch_size: None,
        file_limit: None,
        world_size: None,
        payload: Some(payload.clone()),
    };
    let plan = cai_core::plan::make_plan(&req, parts)?;
    RankCosts::from_env()?.check(
        &plan,
        &FunctionLimits {
            memory_mb: stack.memory_mb,
            timeout_s: stack.timeout_s,
        },
    )?;
    Ok(())
}

#[async_trait::async_trait(?Send)]
impl Engine for AwsEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    async fn run(&self, req: &RunRequest, events: &dyn RunEvents) -> cai_engine::Result<RunReport> {
        let lease = req.lease(ENGINE, events).await?;
        cai_engine::engine::holding(lease, events, async {
            Ok::<_, cai_engine::Error>(self.start(req, events).await?)
        })
        .await
    }

    async fn attach(
        &self,
        results: &str,
        id: Option<&str>,
        events: &dyn RunEvents,
    ) -> cai_engine::Result<RunReport> {
        let results = StorageUrl::parse(results)?;
        let execution = match id {
            Some(id) => id.to_string(),
            None => recorded(&results).await?,
        };
        Ok(self.follow(&execution, &results, events).await?)
    }

    async fn describe(&self, results: &str) -> cai_engine::Result<Vec<String>> {
        let execution = recorded(&StorageUrl::parse(results)?).await?;
        let (status, started) = execution_status(&self.sdk, &execution).await?;
        Ok(vec![format!(
            "execution  {execution}: {status} (started {started})"
        )])
    }

    fn outlives_process(&self) -> bool {
        true
    }

    fn job_kind(&self) -> &'static str {
        "Step Functions execution"
    }

    fn cancel_command(&self, ids: &str) -> String {
        format!("aws stepfunctions stop-execution --execution-arn {ids}")
    }

    async fn jobs(&self, results: &str) -> cai_engine::Result<Vec<String>> {
        Ok(vec![recorded(&StorageUrl::parse(results)?).await?])
    }

    async fn cancel(&self, results: &str) -> cai_engine::Result<()> {
        let execution = recorded(&StorageUrl::parse(results)?).await?;
        Ok(stop_execution(&self.sdk, &execution).await?)
    }
}

/// The execution recorded at `results`, or an error saying how to name one.
async fn recorded(results: &StorageUrl) -> Result<String> {
    match ExecutionRecord::load(results).await? {
        Some(r) => Ok(r.execution),
        None => Err(Error::from(cai_engine::Error::Request {
            what: format!("no execution recorded under {results}"),
            hint: "give its ARN (`cai aws watch --execution ARN --results …`)".into(),
        })),
    }
}

impl From<Error> for cai_engine::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Engine(inner) => *inner,
            Error::Storage(inner) => cai_engine::Error::Core(inner),
            other => cai_engine::Error::Backend(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_against_lambdas_ranges() {
        let loc = || S3Prefix::new("b", "p");
        let ok = StackSettings::default()
            .config(loc(), loc(), loc())
            .unwrap();
        assert_eq!(ok.memory_mb, 10_240);
        assert_eq!(ok.stack, "cai");
        for (s, want) in [
            (
                StackSettings {
                    timeout_s: 901,
                    ..Default::default()
                },
                "--lambda-timeout-s must be 1..=900",
            ),
            (
                StackSettings {
                    memory_mb: 64,
                    ..Default::default()
                },
                "--lambda-memory-mb must be 128..=10240",
            ),
            (
                StackSettings {
                    tolerated_failure_percentage: 101.0,
                    ..Default::default()
                },
                "--lambda-tolerated-failure-percentage",
            ),
        ] {
            let e = s.config(loc(), loc(), loc()).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = s3_location("data", "/tmp/x").unwrap_err().to_string();
        assert_eq!(
            e,
            "--data must be an s3://bucket/prefix URL, got \"/tmp/x\""
        );
    }
}
