//! CAI-rs on AWS: everything that talks to AWS's control plane, so that one `cai` binary goes
//! from a build to a running Step Functions workflow.
//!
//! - [`package`]: the Lambda deployment zip (`bootstrap` = the `cai` binary), after checking
//!   the binary runs on `provided.al2023` (right CPU, static or glibc ≤ 2.34, only the
//!   libraries that image has).
//! - [`deploy`]: create or update the CloudFormation stack that `cai aws template` writes,
//!   wait for it, report why it failed; delete it again.
//! - [`execution`]: start the workflow with the original's payload and watch it: ranks done
//!   and failed (read from the results location), the execution's status and output.
//! - [`straggler`]: the follower's second copy of a rank that runs long (the Infer function
//!   invoked directly with the rank's map item).
//! - [`engine`]: [`AwsEngine`], all of the above behind `cai_engine`'s `Engine` trait (what
//!   `cai run --engine aws` and `cai aws watch` use), and [`deploy_run`], which packages,
//!   uploads the code and model, and deploys.
//!
//! What the stack contains (state machine, functions, roles) is generated, without AWS calls,
//! by `cai_engine::aws`, and handed to [`deploy()`] as a template; the Lambda handlers live
//! there too. This crate reads a results location only through `cai_core` (its
//! [`layout`](cai_core::layout) and [`results`](cai_core::results)), so it does not depend on
//! the engine or the model.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod deploy;
pub mod engine;
pub mod execution;
pub mod package;
pub mod straggler;

pub use aws_config::SdkConfig;
pub use deploy::{delete_stack, deploy, Deployed, StackEvent};
pub use engine::{
    deploy_run, package_binary, s3_location, stack_event_line, Artifacts, AwsEngine, StackSettings,
};
pub use execution::{start_execution, watch, Finished, Progress};
pub use package::{check_binary, package, BinaryInfo, Linkage, Package};

/// The AWS SDK configuration (credentials, region, endpoint) from the usual places: `AWS_*`
/// variables, `~/.aws/config` and `~/.aws/credentials` profiles (`AWS_PROFILE`), SSO, and
/// `AWS_ENDPOINT_URL` for S3-compatible or local test endpoints.
pub async fn sdk_config(profile: Option<&str>, region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// What can go wrong packaging, deploying or running on AWS. Every variant names the file,
/// stack, operation or execution at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The binary to package cannot run on Lambda's `provided.al2023`.
    #[error("{path}: {reason}")]
    Binary {
        /// The binary.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the zip failed.
    #[error("cannot write the zip {path}: {source}")]
    Zip {
        /// The zip being written.
        path: String,
        /// The cause.
        source: zip::result::ZipError,
    },
    /// Reading or writing S3 failed.
    #[error(transparent)]
    Storage(#[from] cai_core::Error),
    /// An AWS API call failed.
    #[error("AWS {operation} failed: {message}")]
    Aws {
        /// The API operation (`CreateStack`, `StartExecution`, …).
        operation: &'static str,
        /// The service's message, with its error code.
        message: String,
    },
    /// The stack ended in a failed state.
    #[error("stack {stack} ended {status}: {reasons}")]
    Stack {
        /// Stack name.
        stack: String,
        /// Final status (`ROLLBACK_COMPLETE`, …).
        status: String,
        /// The failed resources' reasons, from the stack's events.
        reasons: String,
    },
    /// A document could not be encoded as JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The template is larger than CloudFormation takes inline.
    #[error("the template is {bytes} bytes; CloudFormation takes at most {max} inline")]
    TemplateTooLarge {
        /// Size of the encoded template.
        bytes: usize,
        /// CloudFormation's limit.
        max: usize,
    },
    /// The stack is being created, updated or deleted by someone else.
    #[error("stack {stack} is busy ({status}); wait for it to finish, then deploy again")]
    StackBusy {
        /// Stack name.
        stack: String,
        /// Its current status (`UPDATE_IN_PROGRESS`, …).
        status: String,
    },
    /// A deployed stack lacks an output the template declares.
    #[error("stack {stack} has no {output} output")]
    MissingOutput {
        /// Stack name.
        stack: String,
        /// The output's key.
        output: &'static str,
    },
    /// A finished execution's output is not JSON.
    #[error("the output of execution {execution} is not JSON: {source}")]
    ExecutionOutput {
        /// The execution's ARN.
        execution: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A step of a run failed; `source` says why.
    #[error("{what}")]
    Context {
        /// The step (`cannot deploy the stack cai`, …).
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something the user asked for cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// An engine step (plan, summary, model hashing) failed.
    #[error(transparent)]
    Engine(Box<cai_engine::Error>),
}

impl From<cai_engine::Error> for Error {
    fn from(e: cai_engine::Error) -> Self {
        Error::Engine(Box::new(e))
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wrap an SDK error with its operation, keeping the service's code and message.
pub(crate) fn aws_err<E: std::error::Error>(operation: &'static str, e: E) -> Error {
    Error::Aws {
        operation,
        message: aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}
