//! The CloudFormation template (JSON): three functions on `provided.al2023` running the
//! `cai` binary as `bootstrap`, one least-privilege role each (S3 access scoped to the
//! named buckets and prefixes, logs to the function's own log group), the log groups, and
//! the state machine with a role that may invoke only these functions.
//!
//! The deployment zip's location is a template parameter (`CodeBucket`, `CodeKey`).

use serde_json::{json, Map, Value};

use super::asl::{state_machine, FunctionArns};
use super::{AwsConfig, S3Prefix};

/// `(logical id prefix, function role)` of the three functions.
const FUNCTIONS: [(&str, &str); 3] = [
    ("Initialize", "initialize"),
    ("Infer", "infer"),
    ("Summarize", "summarize"),
];

fn statement(actions: &[&str], resources: Value) -> Value {
    json!({ "Effect": "Allow", "Action": actions, "Resource": resources })
}

/// ListBucket on the whole bucket, not only under the prefix: S3 answers a GET or HEAD of a
/// missing key with 404 only to a caller who may list the bucket, and with 403 to anyone else
/// — and a `s3:prefix` condition does not count for that check. The handlers look up keys
/// that may be missing (`manifest.json` beside the original's `.pt` files, `<rank>.json` of a
/// rank not done), so a 403 there would fail the run. Listing shows key names, never content.
fn list_statement(loc: &S3Prefix) -> Value {
    json!({
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": [loc.bucket_arn()]
    })
}

fn object_arn(loc: &S3Prefix) -> String {
    format!("arn:aws:s3:::{}/{}", loc.bucket, loc.prefix)
}

/// The S3 statements of one function.
fn s3_statements(cfg: &AwsConfig, role: &str) -> Vec<Value> {
    let results_rw = statement(
        &["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
        json!([cfg.results.objects_arn()]),
    );
    match role {
        // Lists and reads the partitions (manifest), writes plan.json and items.json,
        // clears the outputs of an earlier run at the same results location.
        "initialize" => vec![
            list_statement(&cfg.data),
            statement(&["s3:GetObject"], json!([cfg.data.objects_arn()])),
            list_statement(&cfg.results),
            results_rw,
        ],
        // Reads its partitions, the model and the plan; writes its report and predictions.
        "infer" => vec![
            statement(
                &["s3:GetObject"],
                json!([cfg.data.objects_arn(), object_arn(&cfg.model)]),
            ),
            list_statement(&cfg.results),
            statement(
                &["s3:GetObject", "s3:PutObject"],
                json!([cfg.results.objects_arn()]),
            ),
            // A rank that finishes deletes its failed/<rank>.json (left by an earlier attempt).
            statement(
                &["s3:DeleteObject"],
                json!([S3Prefix::new(
                    &cfg.results.bucket,
                    &cfg.results.key(cai_core::layout::FAILED_DIR)
                )
                .objects_arn()]),
            ),
        ],
        // Reads every rank's outputs, writes the combined ones.
        _ => vec![
            list_statement(&cfg.results),
            statement(
                &["s3:GetObject", "s3:PutObject"],
                json!([cfg.results.objects_arn()]),
            ),
        ],
    }
}

fn lambda_role(cfg: &AwsConfig, id: &str, role: &str) -> Value {
    let mut statements = vec![statement(
        &["logs:CreateLogStream", "logs:PutLogEvents"],
        json!([{ "Fn::GetAtt": [format!("{id}LogGroup"), "Arn"] }]),
    )];
    statements.extend(s3_statements(cfg, role));
    iam_role(
        "lambda.amazonaws.com",
        &format!("{}-{role}", cfg.stack),
        statements,
    )
}

/// An IAM role that `service` may assume, with one inline policy of `statements`.
fn iam_role(service: &str, policy_name: &str, statements: Vec<Value>) -> Value {
    json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "Service": service },
                    "Action": "sts:AssumeRole"
                }]
            },
            "Policies": [{
                "PolicyName": policy_name,
                "PolicyDocument": { "Version": "2012-10-17", "Statement": statements }
            }]
        }
    })
}

fn function(cfg: &AwsConfig, id: &str, role: &str) -> Value {
    let memory = if role == "infer" {
        cfg.memory_mb
    } else {
        cfg.small_memory_mb
    };
    let timeout = if role == "infer" { cfg.timeout_s } else { 900 };
    json!({
        "Type": "AWS::Lambda::Function",
        "Properties": {
            "FunctionName": cfg.function_name(role),
            "Description": format!("CAI-rs {role} ({})", cfg.stack),
            "Runtime": "provided.al2023",
            "Handler": "bootstrap",
            "Architectures": [cfg.arch.lambda_name()],
            "MemorySize": memory,
            "Timeout": timeout,
            "Code": { "S3Bucket": { "Ref": "CodeBucket" }, "S3Key": { "Ref": "CodeKey" } },
            "Role": { "Fn::GetAtt": [format!("{id}Role"), "Arn"] },
            "LoggingConfig": { "LogGroup": { "Ref": format!("{id}LogGroup") } },
            "Environment": {
                "Variables": {
                    "CAI_HANDLER": role,
                    "CAI_MODEL": format!("s3://{}/{}", cfg.model.bucket, cfg.model.prefix),
                    "CAI_RESULTS_ROOT": format!("s3://{}/{}", cfg.results.bucket, cfg.results.prefix),
                    "CAI_DATA_ROOT": format!("s3://{}/{}", cfg.data.bucket, cfg.data.prefix),
                    "CAI_PRECISION": cfg.precision.name()
                }
            }
        }
    })
}

fn state_machine_role(cfg: &AwsConfig) -> Value {
    let name = cfg.state_machine_name();
    let mut invoke = Vec::new();
    for (id, _) in FUNCTIONS {
        invoke.push(json!({ "Fn::GetAtt": [format!("{id}Function"), "Arn"] }));
        invoke.push(json!({ "Fn::Sub": format!("${{{id}Function.Arn}}:*") }));
    }
    let statements = vec![
        statement(&["lambda:InvokeFunction"], Value::Array(invoke)),
        // ItemReader: items.json under the results location.
        statement(&["s3:GetObject"], json!([cfg.results.objects_arn()])),
        // ResultWriter: the map's result files.
        statement(
            &[
                "s3:PutObject",
                "s3:GetObject",
                "s3:ListMultipartUploadParts",
                "s3:AbortMultipartUpload",
            ],
            json!([cfg.map_results().objects_arn()]),
        ),
        // A Distributed Map runs its children as executions of this state machine.
        statement(
            &["states:StartExecution"],
            json!([{ "Fn::Sub": format!(
                "arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:stateMachine:{name}"
            ) }]),
        ),
        statement(
            &["states:DescribeExecution", "states:StopExecution"],
            json!([{ "Fn::Sub": format!(
                "arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:execution:{name}:*"
            ) }]),
        ),
    ];
    iam_role(
        "states.amazonaws.com",
        &format!("{}-workflow", cfg.stack),
        statements,
    )
}

/// The CloudFormation template for `cfg`.
pub fn template(cfg: &AwsConfig) -> Value {
    let mut resources = Map::new();
    for (id, role) in FUNCTIONS {
        resources.insert(
            format!("{id}LogGroup"),
            json!({
                "Type": "AWS::Logs::LogGroup",
                "DeletionPolicy": "Delete",
                "Properties": {
                    "LogGroupName": format!("/aws/lambda/{}", cfg.function_name(role)),
                    "RetentionInDays": cfg.log_retention_days
                }
            }),
        );
        resources.insert(format!("{id}Role"), lambda_role(cfg, id, role));
        resources.insert(format!("{id}Function"), function(cfg, id, role));
    }
    resources.insert("StateMachineRole".into(), state_machine_role(cfg));
    let mut substitutions = Map::new();
    for (id, _) in FUNCTIONS {
        substitutions.insert(
            format!("{id}FunctionArn"),
            json!({ "Fn::GetAtt": [format!("{id}Function"), "Arn"] }),
        );
    }
    resources.insert(
        "StateMachine".into(),
        json!({
            "Type": "AWS::StepFunctions::StateMachine",
            "Properties": {
                "StateMachineName": cfg.state_machine_name(),
                "StateMachineType": "STANDARD",
                "Definition": state_machine(cfg, &FunctionArns::placeholders()),
                "DefinitionSubstitutions": substitutions,
                "RoleArn": { "Fn::GetAtt": ["StateMachineRole", "Arn"] }
            }
        }),
    );
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "CAI-rs {}: AstroMAE photometric redshifts on Step Functions + Lambda (data s3://{}/{}, results s3://{}/{})",
            cfg.stack, cfg.data.bucket, cfg.data.prefix, cfg.results.bucket, cfg.results.prefix
        ),
        "Parameters": {
            "CodeBucket": { "Type": "String", "Description": "Bucket of the deployment zip (`cai aws package`)." },
            "CodeKey": { "Type": "String", "Description": "Key of the deployment zip." }
        },
        "Resources": resources,
        "Outputs": {
            "StateMachineArn": { "Value": { "Ref": "StateMachine" } },
            "Results": { "Value": format!("s3://{}/{}", cfg.results.bucket, cfg.results.prefix) }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use cai_core::cost::Arch;

    fn cfg() -> AwsConfig {
        let mut c = AwsConfig::new(
            "cai",
            S3Prefix::new("cosmicai-data", "100MB"),
            S3Prefix::new("cosmicai-results", "runs"),
            S3Prefix::new("cosmicai-models", "astromae/model.safetensors"),
        );
        c.arch = Arch::Arm64;
        c
    }

    fn roles(t: &Value) -> Vec<(String, Vec<Value>)> {
        t["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::IAM::Role")
            .map(|(id, r)| {
                let st = r["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
                    .as_array()
                    .unwrap()
                    .clone();
                (id.clone(), st)
            })
            .collect()
    }

    #[test]
    fn every_reference_names_a_resource_of_the_template() {
        let t = template(&cfg());
        let text = serde_json::to_string(&t).unwrap();
        let t: Value = serde_json::from_str(&text).unwrap();
        let ids: BTreeSet<String> = t["Resources"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let params: BTreeSet<&str> = ["CodeBucket", "CodeKey"].into();
        fn walk(v: &Value, f: &mut dyn FnMut(&str, &Value)) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        f(k, x);
                        walk(x, f);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
                _ => {}
            }
        }
        let mut refs = 0;
        walk(&t, &mut |k, x| match k {
            "Ref" => {
                let r = x.as_str().unwrap();
                assert!(ids.contains(r) || params.contains(r), "Ref {r}");
                refs += 1;
            }
            "Fn::GetAtt" => {
                let r = x[0].as_str().unwrap();
                assert!(ids.contains(r), "GetAtt {r}");
                refs += 1;
            }
            "DependsOn" => {
                for d in x.as_array().unwrap() {
                    assert!(ids.contains(d.as_str().unwrap()));
                }
            }
            _ => {}
        });
        assert!(refs > 10);
        for (id, role) in FUNCTIONS {
            let f = &t["Resources"][format!("{id}Function")]["Properties"];
            assert_eq!(f["Runtime"], "provided.al2023");
            assert_eq!(f["Handler"], "bootstrap");
            assert_eq!(f["Architectures"], json!(["arm64"]));
            assert_eq!(f["Environment"]["Variables"]["CAI_HANDLER"], role);
            assert_eq!(f["Environment"]["Variables"]["CAI_PRECISION"], "f32");
            assert_eq!(
                t["Resources"][format!("{id}LogGroup")]["Properties"]["LogGroupName"],
                format!("/aws/lambda/cai-{role}")
            );
        }
        assert_eq!(
            t["Resources"]["InferFunction"]["Properties"]["MemorySize"],
            10_240
        );
        let sm = &t["Resources"]["StateMachine"]["Properties"];
        let subs: BTreeSet<&String> = sm["DefinitionSubstitutions"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let def = serde_json::to_string(&sm["Definition"]).unwrap();
        for s in &subs {
            assert!(def.contains(&format!("${{{s}}}")), "{s} unused");
        }
        assert_eq!(subs.len(), 3);
        // `cai run --engine aws --precision int8` reaches the Infer function.
        let mut c = cfg();
        c.precision = cai_model::kernels::Precision::Int8;
        let t = template(&c);
        assert_eq!(
            t["Resources"]["InferFunction"]["Properties"]["Environment"]["Variables"]
                ["CAI_PRECISION"],
            "int8"
        );
    }

    #[test]
    fn iam_is_limited_to_the_named_buckets_prefixes_and_own_resources() {
        let c = cfg();
        let t = template(&c);
        let allowed_s3: BTreeSet<String> = [
            "arn:aws:s3:::cosmicai-data",
            "arn:aws:s3:::cosmicai-data/100MB/*",
            "arn:aws:s3:::cosmicai-results",
            "arn:aws:s3:::cosmicai-results/runs/*",
            "arn:aws:s3:::cosmicai-results/runs/failed/*",
            "arn:aws:s3:::cosmicai-results/runs/stepfunctions/*",
            "arn:aws:s3:::cosmicai-models/astromae/model.safetensors",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let rs = roles(&t);
        assert_eq!(rs.len(), 4, "three function roles and the workflow's");
        let mut s3_seen = BTreeSet::new();
        for (id, statements) in rs {
            for st in statements {
                assert_eq!(st["Effect"], "Allow");
                for a in st["Action"].as_array().unwrap() {
                    let a = a.as_str().unwrap();
                    assert!(!a.contains('*'), "{id}: wildcard action {a}");
                }
                for r in st["Resource"].as_array().unwrap() {
                    match r {
                        Value::String(s) => {
                            assert!(allowed_s3.contains(s), "{id}: resource {s} not named");
                            s3_seen.insert(s.clone());
                        }
                        Value::Object(o) => {
                            let (k, v) = o.iter().next().unwrap();
                            match k.as_str() {
                                "Fn::GetAtt" => {
                                    let target = v[0].as_str().unwrap();
                                    assert!(
                                        target.ends_with("LogGroup")
                                            || target.ends_with("Function"),
                                        "{id}: {target}"
                                    );
                                }
                                "Fn::Sub" => {
                                    let s = v.as_str().unwrap();
                                    assert!(
                                        s.contains(&c.state_machine_name())
                                            || s.starts_with("${") && s.contains("Function.Arn}:*"),
                                        "{id}: {s}"
                                    );
                                }
                                other => panic!("{id}: {other}"),
                            }
                        }
                        other => panic!("{id}: resource {other}"),
                    }
                }
                if st["Action"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("s3:ListBucket"))
                {
                    // Buckets only (key names), never objects.
                    for r in st["Resource"].as_array().unwrap() {
                        let r = r.as_str().unwrap();
                        assert!(
                            r.starts_with("arn:aws:s3:::") && !r.contains('/'),
                            "{id}: {r}"
                        );
                    }
                }
            }
        }
        assert_eq!(s3_seen, allowed_s3);
        // Infer may read the model and data but not write them.
        let infer = roles(&t)
            .into_iter()
            .find(|(id, _)| id == "InferRole")
            .unwrap()
            .1;
        for st in infer {
            let acts = st["Action"].to_string();
            let res = st["Resource"].to_string();
            if acts.contains("PutObject") {
                assert!(!res.contains("cosmicai-data") && !res.contains("cosmicai-models"));
            }
            // It deletes only failure records (the worker clears its own after a retry).
            if acts.contains("DeleteObject") {
                assert_eq!(res, r#"["arn:aws:s3:::cosmicai-results/runs/failed/*"]"#);
            }
        }
    }

    /// cfn-lint (pip) checks the template and the embedded state machine against AWS's
    /// schemas; skipped with a note when it is not installed.
    #[test]
    fn cfn_lint_accepts_the_template() {
        let probe = std::process::Command::new("cfn-lint")
            .arg("--version")
            .output();
        if !matches!(&probe, Ok(o) if o.status.success()) {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI is set but cfn-lint is missing (.ci/run installs it with pip)"
            );
            eprintln!("NOTE: cfn-lint not installed (pip install cfn-lint); skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for arch in [Arch::X86_64, Arch::Arm64] {
            let mut c = cfg();
            c.arch = arch;
            let path = dir.path().join(format!("{}.json", arch.lambda_name()));
            std::fs::write(&path, serde_json::to_vec_pretty(&template(&c)).unwrap()).unwrap();
            let out = std::process::Command::new("cfn-lint")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cfn-lint:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
