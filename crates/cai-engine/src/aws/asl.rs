//! The state machine in Amazon States Language (JSONPath flavour).
//!
//! ```text
//! Initialize ─► Infer (Distributed Map over items.json) ─► Summarize ─► Complete? ─► Done
//!                  └── map failed (Catch) ───────────────────┘             └──► RanksFailed
//! ```
//! Contracts with the handlers: Initialize returns `{items_bucket, items_key, results,
//! world_size}` (`items_key` is a JSON array of the original's rank items, one per rank);
//! Infer gets one item; Summarize gets `{results}` and returns `{complete, galaxies,
//! ranks_done, failed_ranks, missing_ranks, summary}`.

use serde_json::{json, Value};

use super::AwsConfig;

/// Lambda errors worth retrying (throttling, service and client-side transport errors).
pub const LAMBDA_RETRY_ERRORS: [&str; 4] = [
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
];

/// The three function ARNs the state machine invokes. [`FunctionArns::placeholders`] gives
/// `${…}` names that CloudFormation's `DefinitionSubstitutions` fills in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionArns {
    /// Initialize function.
    pub initialize: String,
    /// Infer function (one invocation per rank).
    pub infer: String,
    /// Summarize function.
    pub summarize: String,
}

impl FunctionArns {
    /// `${InitializeFunctionArn}`, `${InferFunctionArn}`, `${SummarizeFunctionArn}`.
    pub fn placeholders() -> Self {
        Self {
            initialize: "${InitializeFunctionArn}".into(),
            infer: "${InferFunctionArn}".into(),
            summarize: "${SummarizeFunctionArn}".into(),
        }
    }

    /// The ARNs the stack's functions get in `region` of `account`.
    pub fn of_stack(cfg: &AwsConfig, region: &str, account: &str) -> Self {
        let arn = |role: &str| {
            format!(
                "arn:aws:lambda:{region}:{account}:function:{}",
                cfg.function_name(role)
            )
        };
        Self {
            initialize: arn("initialize"),
            infer: arn("infer"),
            summarize: arn("summarize"),
        }
    }
}

/// Retry of a Lambda task on throttling and service errors: 2 s, then doubling, with full
/// jitter, 6 attempts (about two minutes in all).
fn lambda_retry() -> Value {
    json!([{
        "ErrorEquals": LAMBDA_RETRY_ERRORS,
        "IntervalSeconds": 2,
        "MaxAttempts": 6,
        "BackoffRate": 2.0,
        "MaxDelaySeconds": 60,
        "JitterStrategy": "FULL"
    }])
}

/// The ASL document for `cfg`, invoking `arns`.
pub fn state_machine(cfg: &AwsConfig, arns: &FunctionArns) -> Value {
    let map_results = cfg.map_results();
    let mut map = json!({
        "Type": "Map",
        "Comment": "One Infer invocation per rank; items are read from S3, not passed inline.",
        "ItemReader": {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": { "InputType": "JSON" },
            "Parameters": {
                "Bucket.$": "$.init.items_bucket",
                "Key.$": "$.init.items_key"
            }
        },
        "ItemProcessor": {
            "ProcessorConfig": { "Mode": "DISTRIBUTED", "ExecutionType": "STANDARD" },
            "StartAt": "InferRank",
            "States": {
                "InferRank": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": { "FunctionName": arns.infer, "Payload.$": "$" },
                    "OutputPath": "$.Payload",
                    "TimeoutSeconds": cfg.timeout_s + 60,
                    "Retry": lambda_retry(),
                    "End": true
                }
            }
        },
        "ToleratedFailurePercentage": cfg.tolerated_failure_percentage,
        "ResultWriter": {
            "Resource": "arn:aws:states:::s3:putObject",
            "Parameters": { "Bucket": map_results.bucket, "Prefix": map_results.prefix }
        },
        "ResultPath": "$.map",
        "Catch": [{
            "ErrorEquals": ["States.ALL"],
            "ResultPath": "$.map_error",
            "Next": "Summarize"
        }],
        "Next": "Summarize"
    });
    if cfg.max_concurrency > 0 {
        map["MaxConcurrency"] = json!(cfg.max_concurrency);
    }
    json!({
        "Comment": format!(
            "CAI-rs {}: Initialize → Distributed Map of Infer (one per rank) → Summarize",
            cfg.stack
        ),
        "StartAt": "Initialize",
        "States": {
            "Initialize": {
                "Type": "Task",
                "Comment": "The original's payload in; plan.json and items.json out, in S3.",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": { "FunctionName": arns.initialize, "Payload.$": "$" },
                "ResultSelector": {
                    "items_bucket.$": "$.Payload.items_bucket",
                    "items_key.$": "$.Payload.items_key",
                    "results.$": "$.Payload.results",
                    "world_size.$": "$.Payload.world_size"
                },
                "ResultPath": "$.init",
                "Retry": lambda_retry(),
                "Next": "Infer"
            },
            "Infer": map,
            "Summarize": {
                "Type": "Task",
                "Comment": "combined_data.json, predictions.parquet, summary.json; names failed ranks.",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {
                    "FunctionName": arns.summarize,
                    "Payload": { "results.$": "$.init.results" }
                },
                "ResultSelector": {
                    "complete.$": "$.Payload.complete",
                    "galaxies.$": "$.Payload.galaxies",
                    "ranks_done.$": "$.Payload.ranks_done",
                    "failed_ranks.$": "$.Payload.failed_ranks",
                    "missing_ranks.$": "$.Payload.missing_ranks",
                    "summary.$": "$.Payload.summary"
                },
                "ResultPath": "$.summary",
                "Retry": lambda_retry(),
                "Next": "Complete?"
            },
            "Complete?": {
                "Type": "Choice",
                "Choices": [{
                    "Variable": "$.summary.complete",
                    "BooleanEquals": true,
                    "Next": "Done"
                }],
                "Default": "RanksFailed"
            },
            "Done": { "Type": "Succeed" },
            "RanksFailed": {
                "Type": "Fail",
                "Error": "CAI.RanksFailed",
                "Cause": "Some ranks failed or are missing: see summary.json and failed/<rank>.json under the results location."
            }
        }
    })
}

/// The Infer function a state machine's Distributed Map invokes (its `InferRank` task's
/// `FunctionName`), read from the definition, so that the follower of an execution can
/// invoke it for one rank (a straggler's second copy) with the same item the map sends.
pub fn infer_function(definition: &Value) -> Option<String> {
    definition
        .pointer("/States/Infer/ItemProcessor/States/InferRank/Parameters/FunctionName")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use super::*;
    use crate::aws::S3Prefix;

    fn cfg() -> AwsConfig {
        AwsConfig::new(
            "cai",
            S3Prefix::new("cosmicai-data", "100MB"),
            S3Prefix::new("cosmicai-results", "runs"),
            S3Prefix::new("cosmicai-models", "astromae.safetensors"),
        )
    }

    /// Every `Next`/`Default` target of a `States` object, per state.
    fn targets(state: &Value) -> Vec<String> {
        let mut t = Vec::new();
        for k in ["Next", "Default"] {
            if let Some(n) = state.get(k).and_then(Value::as_str) {
                t.push(n.to_string());
            }
        }
        for list in ["Choices", "Catch"] {
            for c in state
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(n) = c.get("Next").and_then(Value::as_str) {
                    t.push(n.to_string());
                }
            }
        }
        t
    }

    /// Check one level of states (and recurse into map processors): start exists, every
    /// target exists, every state reachable, every non-terminal state has a way out.
    fn check_graph(machine: &Value) {
        let states = machine["States"].as_object().unwrap();
        let start = machine["StartAt"].as_str().unwrap();
        assert!(states.contains_key(start), "StartAt {start} missing");
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([start.to_string()]);
        while let Some(s) = queue.pop_front() {
            if !seen.insert(s.clone()) {
                continue;
            }
            let state = &states[&s];
            let ty = state["Type"].as_str().unwrap();
            let out = targets(state);
            for n in &out {
                assert!(states.contains_key(n), "{s} → {n}, which does not exist");
                queue.push_back(n.clone());
            }
            let terminal = matches!(ty, "Succeed" | "Fail") || state["End"] == json!(true);
            assert!(terminal || !out.is_empty(), "{s} has no way out");
            if ty == "Map" {
                check_graph(&state["ItemProcessor"]);
            }
        }
        let all: BTreeSet<String> = states.keys().cloned().collect();
        assert_eq!(seen, all, "unreachable states");
    }

    #[test]
    fn every_state_is_reachable_and_every_target_exists() {
        let sm = state_machine(&cfg(), &FunctionArns::placeholders());
        // It survives a round trip through text (what `cai aws state-machine` writes).
        let text = serde_json::to_string_pretty(&sm).unwrap();
        let sm: Value = serde_json::from_str(&text).unwrap();
        check_graph(&sm);
        assert_eq!(sm["StartAt"], "Initialize");
        assert_eq!(sm["States"]["Initialize"]["Next"], "Infer");
        assert_eq!(sm["States"]["Infer"]["Next"], "Summarize");
        assert_eq!(sm["States"]["Infer"]["Catch"][0]["Next"], "Summarize");
    }

    #[test]
    fn the_map_reads_items_from_s3_with_retries_and_limits() {
        let mut c = cfg();
        c.max_concurrency = 500;
        c.tolerated_failure_percentage = 5.0;
        let arns = FunctionArns::of_stack(&c, "us-east-1", "123456789012");
        let sm = state_machine(&c, &arns);
        let map = &sm["States"]["Infer"];
        assert_eq!(map["Type"], "Map");
        assert_eq!(
            map["ItemProcessor"]["ProcessorConfig"]["Mode"],
            "DISTRIBUTED"
        );
        let reader = &map["ItemReader"];
        assert_eq!(reader["Resource"], "arn:aws:states:::s3:getObject");
        assert_eq!(reader["ReaderConfig"]["InputType"], "JSON");
        assert_eq!(reader["Parameters"]["Bucket.$"], "$.init.items_bucket");
        assert_eq!(reader["Parameters"]["Key.$"], "$.init.items_key");
        assert!(map.get("ItemsPath").is_none(), "items must not be inline");
        assert_eq!(map["MaxConcurrency"], 500);
        assert_eq!(map["ToleratedFailurePercentage"], 5.0);
        let writer = &map["ResultWriter"];
        assert_eq!(writer["Resource"], "arn:aws:states:::s3:putObject");
        assert_eq!(writer["Parameters"]["Bucket"], "cosmicai-results");
        assert_eq!(writer["Parameters"]["Prefix"], "runs/stepfunctions");
        let task = &map["ItemProcessor"]["States"]["InferRank"];
        assert_eq!(
            task["Parameters"]["FunctionName"],
            "arn:aws:lambda:us-east-1:123456789012:function:cai-infer"
        );
        // The follower finds the function it invokes for a straggler there.
        assert_eq!(
            infer_function(&sm).as_deref(),
            Some("arn:aws:lambda:us-east-1:123456789012:function:cai-infer")
        );
        assert_eq!(infer_function(&json!({"States": {}})), None);
        let retry = &task["Retry"][0];
        let errors: Vec<&str> = retry["ErrorEquals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(errors, LAMBDA_RETRY_ERRORS);
        assert!(retry["BackoffRate"].as_f64().unwrap() > 1.0);
        assert!(retry["MaxAttempts"].as_u64().unwrap() >= 3);
        // Initialize and Summarize retry the same way.
        for s in ["Initialize", "Summarize"] {
            assert_eq!(sm["States"][s]["Retry"][0]["ErrorEquals"], json!(errors));
        }
    }

    #[test]
    fn unlimited_concurrency_leaves_the_field_out() {
        let mut c = cfg();
        c.max_concurrency = 0;
        let sm = state_machine(&c, &FunctionArns::placeholders());
        assert!(sm["States"]["Infer"].get("MaxConcurrency").is_none());
    }
}
