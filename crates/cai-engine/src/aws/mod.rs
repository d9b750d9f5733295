//! The AWS engine, generated: the Step Functions state machine (Amazon States Language) and
//! the CloudFormation template that deploys it with its three Lambda functions.
//!
//! The workflow is the original's: `Initialize` (the original's payload in; plan out, with
//! the rank items written to S3 as a JSON array) → `Infer`, a Distributed Map whose
//! ItemReader reads that array (so 10,240 ranks fit: inline state payloads stop at 256 KB),
//! one Lambda invocation per rank → `Summarize`, which also runs when the map failed and
//! reports the failed ranks. Every function runs the same `cai` binary on `provided.al2023`
//! and calls the same stage functions as `cai run`.
//!
//! Generation is pure (no AWS calls): [`state_machine`] and [`template`] return JSON values
//! that tests parse and check. [`lambda`] holds the three handlers' logic; the `cai` binary
//! serves them on the Lambda runtime API.

mod asl;
pub mod lambda;
#[cfg(feature = "lambda")]
pub mod runtime;
mod template;

pub use asl::{infer_function, state_machine, FunctionArns, LAMBDA_RETRY_ERRORS};
pub use template::template;

use serde::{Deserialize, Serialize};

use cai_core::cost::Arch;
use cai_core::layout;

/// An S3 location: a bucket and a key prefix inside it (no leading or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Prefix {
    /// Bucket name.
    pub bucket: String,
    /// Prefix inside the bucket (empty: the whole bucket).
    pub prefix: String,
}

impl S3Prefix {
    /// A location, with the prefix's surrounding slashes removed.
    pub fn new(bucket: &str, prefix: &str) -> Self {
        Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// Parse `s3://bucket/prefix`; `None` when it is not an S3 URL with a bucket.
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.trim().strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| Self::new(bucket, prefix))
    }

    /// `arn:aws:s3:::bucket`.
    pub fn bucket_arn(&self) -> String {
        format!("arn:aws:s3:::{}", self.bucket)
    }

    /// ARN of every object under the prefix: `arn:aws:s3:::bucket/prefix/*`.
    pub fn objects_arn(&self) -> String {
        if self.prefix.is_empty() {
            format!("arn:aws:s3:::{}/*", self.bucket)
        } else {
            format!("arn:aws:s3:::{}/{}/*", self.bucket, self.prefix)
        }
    }

    /// Key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{}", self.prefix, rel)
        }
    }
}

/// What the generated stack is made of and may touch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsConfig {
    /// Stack name; functions and the state machine are named after it (`<stack>-infer`).
    pub stack: String,
    /// Where the partitions are (read only).
    pub data: S3Prefix,
    /// Where results go (plan, rank reports, predictions, summary, map results).
    pub results: S3Prefix,
    /// The model file (read only).
    pub model: S3Prefix,
    /// Memory of the Infer function in MB (sets its vCPUs: 1,769 MB = 1 vCPU, up to 6).
    pub memory_mb: u32,
    /// Memory of the Initialize and Summarize functions in MB.
    pub small_memory_mb: u32,
    /// Infer timeout in seconds (Lambda's maximum is 900).
    pub timeout_s: u32,
    /// CPU architecture of the functions.
    pub arch: Arch,
    /// Ranks run at once (Distributed Map MaxConcurrency; 0 = as many as Step Functions
    /// allows).
    pub max_concurrency: u32,
    /// Share of ranks that may fail before the map fails (0–100).
    pub tolerated_failure_percentage: f64,
    /// Days the functions' log groups keep logs.
    pub log_retention_days: u32,
    /// Arithmetic of the model's weights in the Infer function (its `CAI_PRECISION`).
    #[serde(default, with = "precision_name")]
    pub precision: cai_model::kernels::Precision,
}

/// A precision as its name (`"int8"`), as on the command line.
mod precision_name {
    use cai_model::kernels::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        let name = String::deserialize(d)?;
        Precision::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown precision {name:?}")))
    }
}

impl AwsConfig {
    /// A configuration with the defaults: 10,240 MB Infer (6 vCPUs), 512 MB others, 900 s,
    /// x86_64, concurrency 1,000, 0 % tolerated failures, 14 days of logs, f32.
    pub fn new(stack: &str, data: S3Prefix, results: S3Prefix, model: S3Prefix) -> Self {
        Self {
            stack: stack.to_string(),
            data,
            results,
            model,
            memory_mb: 10_240,
            small_memory_mb: 512,
            timeout_s: 900,
            arch: Arch::X86_64,
            max_concurrency: 1000,
            tolerated_failure_percentage: 0.0,
            log_retention_days: 14,
            precision: cai_model::kernels::Precision::F32,
        }
    }

    /// Name of one of the stack's functions (`initialize`, `infer`, `summarize`).
    pub fn function_name(&self, role: &str) -> String {
        format!("{}-{role}", self.stack)
    }

    /// Name of the state machine.
    pub fn state_machine_name(&self) -> String {
        format!("{}-workflow", self.stack)
    }

    /// Where the Distributed Map writes its own result files.
    pub fn map_results(&self) -> S3Prefix {
        S3Prefix::new(
            &self.results.bucket,
            &self.results.key(layout::AWS_MAP_RESULTS),
        )
    }
}
