//! `cai aws package`, `cai aws deploy`, `cai run --engine aws --detach` and `cai aws destroy`
//! against a real moto server: its CloudFormation creates the stack from our template
//! (roles, log groups, functions from the uploaded zip, the state machine), its Step
//! Functions starts the execution with the original's payload, its S3 holds the artifacts.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::s3::S3Server;
use crate::util::{fixtures, Dir};

/// The cai binary of this test build, stripped (the debug build is over Lambda's 250 MB).
fn stripped_cai(d: &Dir) -> PathBuf {
    let out = d.path("cai-stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_cai"))
        .status()
        .expect("run strip (binutils)");
    assert!(status.success(), "strip failed");
    out
}

#[test]
fn package_checks_the_binary_and_zips_bootstrap() {
    let d = Dir::new();
    let bin = stripped_cai(&d);
    let bin = bin.display().to_string();
    let arch = if cfg!(target_arch = "aarch64") {
        ("arm64", "x86_64")
    } else {
        ("x86_64", "arm64")
    };
    let out = d.cai(&[
        "aws", "package", "--arch", arch.0, "--binary", &bin, "--out", "z.zip",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("glibc") {
        eprintln!("NOTE: this machine's glibc is newer than al2023's: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let zip = std::fs::File::open(d.path("z.zip")).expect("zip written");
    let mut zip = zip::ZipArchive::new(zip).expect("a zip");
    let entry = zip.by_name("bootstrap").expect("bootstrap inside");
    assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));

    // The wrong CPU, a script and a missing file are each refused by name.
    let out = d.cai(&[
        "aws", "package", "--arch", arch.1, "--binary", &bin, "--out", "y.zip",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("built for {}", arch.0)));
    std::fs::write(d.path("script"), "#!/bin/sh\necho hi\n").expect("write");
    let out = d.cai(&["aws", "package", "--binary", "script", "--out", "y.zip"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ELF"));
    assert!(!d.path("y.zip").exists(), "nothing half-written");
}

fn cfn_py(moto: &S3Server, code: &str, args: &[&str]) -> Value {
    let script = format!(
        "import json\n\
         cf = boto3.client('cloudformation', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         sf = boto3.client('stepfunctions', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         lam = boto3.client('lambda', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n{code}"
    );
    let out = moto.py(&script, args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn deploy_start_and_destroy_on_moto() {
    let Some(moto) = S3Server::moto() else { return };
    let d = Dir::new();
    let bin = stripped_cai(&d).display().to_string();
    moto.make_bucket("sky");
    moto.make_bucket("out");
    let model = fixtures().model.display().to_string();
    let stack_args = [
        "--data",
        "s3://sky/100MB",
        "--results",
        "s3://out/run1",
        "--model",
        &model,
        "--stack",
        "t1",
        "--memory-mb",
        "3008",
        "--binary",
        &bin,
    ];
    let mut args = vec!["aws", "deploy"];
    args.extend(stack_args);
    let out = moto.cai(&d, &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && stderr.contains("glibc") {
        eprintln!("NOTE: this machine's glibc is newer than al2023's: {stderr}");
        return;
    }
    assert!(out.status.success(), "deploy failed:\n{stderr}");
    let arn = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(arn.contains(":stateMachine:t1-workflow"), "{arn}");
    assert!(stderr.contains("stack t1 created"), "{stderr}");

    // The stack, the functions' settings and the uploaded artifacts.
    let v = cfn_py(
        &moto,
        "s = cf.describe_stacks(StackName='t1')['Stacks'][0]\n\
         f = lam.get_function_configuration(FunctionName='t1-infer')\n\
         print(json.dumps({'status': s['StackStatus'], 'memory': f['MemorySize'],\n\
           'runtime': f['Runtime'], 'env': f['Environment']['Variables']}))",
        &[],
    );
    assert_eq!(v["status"], "CREATE_COMPLETE");
    assert_eq!(v["memory"], 3008);
    assert_eq!(v["runtime"], "provided.al2023");
    assert_eq!(v["env"]["CAI_HANDLER"], "infer");
    let model_url = v["env"]["CAI_MODEL"]
        .as_str()
        .expect("CAI_MODEL")
        .to_string();
    assert!(
        model_url.starts_with("s3://out/cai-artifacts/t1/model-"),
        "{model_url}"
    );
    let artifacts = moto.keys("out", "cai-artifacts/t1");
    assert_eq!(artifacts.len(), 2, "{artifacts:?}");
    assert!(artifacts
        .iter()
        .any(|k| k.starts_with("cai-lambda-x86_64-") || k.starts_with("cai-lambda-arm64-")));
    let uploaded = moto.download(
        "out",
        &model_url["s3://out/".len()..],
        &d.path("model-back"),
    );
    assert_eq!(uploaded, std::fs::read(&model).expect("model"));

    // Deploying again changes nothing and uploads nothing new.
    let again = moto.cai(&d, &args);
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already uploaded"), "{stderr}");
    assert_eq!(moto.keys("out", "cai-artifacts/t1").len(), 2);

    // `cai run --engine aws` with the original's payload starts an execution with it.
    let payload = r#"{"bucket": "out", "file_limit": "2", "batch_size": 128,
        "object_type": "folder", "S3_object_name": "Anomaly Detection",
        "script": "/tmp/Anomaly Detection/Inference/inference.py",
        "result_path": "run1", "data_bucket": "sky", "data_prefix": "100MB"}"#;
    std::fs::write(d.path("payload.json"), payload).expect("write payload");
    let out = moto.cai_ok(
        &d,
        &[
            "run",
            "--engine",
            "aws",
            "--payload",
            "payload.json",
            "--model",
            &model,
            "--stack",
            "t1",
            "--memory-mb",
            "3008",
            "--binary",
            &bin,
            "--detach",
        ],
    );
    let execution = crate::lambda::execution_arn(&out);
    let v = cfn_py(
        &moto,
        "e = sf.describe_execution(executionArn=sys.argv[1])\n\
         print(json.dumps({'input': json.loads(e['input']), 'machine': e['stateMachineArn']}))",
        &[&execution],
    );
    assert_eq!(v["machine"], arn.as_str());
    let sent: Value = serde_json::from_str(payload).expect("payload JSON");
    for key in [
        "bucket",
        "result_path",
        "data_bucket",
        "data_prefix",
        "S3_object_name",
    ] {
        assert_eq!(v["input"][key], sent[key], "{key}");
    }
    assert_eq!(v["input"]["file_limit"], 2);

    // A run on a local results location is refused before anything is deployed.
    let out = moto.cai(
        &d,
        &[
            "run",
            "--engine",
            "aws",
            "--data",
            "s3://sky/100MB",
            "--results",
            "local-dir",
            "--model",
            &model,
            "--stack",
            "t2",
            "--binary",
            &bin,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--results must be an s3://"));

    // Destroy removes the stack, keeps the artifacts.
    moto.cai_ok(&d, &["aws", "destroy", "--stack", "t1"]);
    let v = cfn_py(
        &moto,
        "try:\n\
         \x20   s = cf.describe_stacks(StackName='t1')['Stacks'][0]['StackStatus']\n\
         except Exception as e:\n\
         \x20   s = 'gone'\n\
         print(json.dumps(s))",
        &[],
    );
    assert!(v == "gone" || v == "DELETE_COMPLETE", "{v}");
    assert_eq!(moto.keys("out", "cai-artifacts/t1").len(), 2);
    let out = moto.cai_ok(&d, &["aws", "destroy", "--stack", "t1"]);
    assert!(out.is_empty());
}

/// The generated state machine passes `asl-validator` (npm), with placeholders (as the
/// template embeds it) and with real ARNs. Skipped with a note where it is not installed,
/// except under CI (`.ci/run` installs it).
#[test]
fn state_machine_passes_asl_validator() {
    let installed = Command::new("asl-validator")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        crate::util::unavailable(
            "the ASL validation test",
            "asl-validator (npm install -g asl-validator)",
        );
        return;
    }
    let d = Dir::new();
    let base = [
        "aws",
        "state-machine",
        "--data",
        "s3://sky/100MB",
        "--results",
        "s3://out/run1",
        "--model",
        "s3://out/model.safetensors",
        "--tolerated-failure-percentage",
        "5",
    ];
    for (file, extra) in [
        ("placeholders.json", vec![]),
        (
            "arns.json",
            vec!["--region", "eu-west-1", "--account", "123456789012"],
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        args.extend(["--out", file]);
        d.ok(&args);
        let out = Command::new("asl-validator")
            .arg("--json-path")
            .arg(d.path(file))
            .output()
            .expect("run asl-validator");
        assert!(
            out.status.success(),
            "asl-validator rejects {file}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
