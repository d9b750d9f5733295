//! `--help` of every subcommand against a committed snapshot (`tests/help/<command>.txt`),
//! and the old names of renamed engine options, which scripts still use.
//! `CAI_UPDATE_HELP=1 cargo test -p cai --test cli help` rewrites the snapshots; review
//! the diff. A missing snapshot fails (it is never made up by the test).

use std::path::PathBuf;
use std::process::Command;

use crate::util::manifest_dir;

/// Every command path, `cai` itself first.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["synth"],
    &["partition"],
    &["run"],
    &["summarize"],
    &["predict"],
    &["bench"],
    &["model"],
    &["model", "init"],
    &["model", "fit"],
    &["model", "inspect"],
    &["model", "convert"],
    &["demo"],
    &["stats"],
    &["report"],
    &["sweep"],
    &["worker"],
    &["status"],
    &["aws"],
    &["aws", "state-machine"],
    &["aws", "template"],
    &["aws", "package"],
    &["aws", "deploy"],
    &["aws", "watch"],
    &["aws", "destroy"],
    &["cost"],
];

/// Variables a flag reads: their values would show in the help.
const ENV: &[&str] = &[
    "CAI_QUIET",
    "CAI_DATA",
    "CAI_RESULTS",
    "CAI_MODEL",
    "CAI_ENGINE",
    "CAI_WORKERS",
    "CAI_THREADS",
    "CAI_PRECISION",
    "CAI_BATCH_SIZE",
    "CAI_POLL",
    "CAI_PARITY_DIR",
    "CAI_SLURM_PARTITION",
    "CAI_SLURM_ACCOUNT",
    "CAI_SLURM_QOS",
    "CAI_SLURM_TIME",
    "CAI_SLURM_MEM",
    "CAI_SLURM_BIN",
    "CAI_STACK",
    "AWS_PROFILE",
    "SLURM_ARRAY_TASK_ID",
];

fn help(path: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cai"));
    cmd.args(path).arg("--help").env("COLUMNS", "100");
    for v in ENV {
        cmd.env_remove(v);
    }
    let out = cmd.output().expect("run cai");
    assert!(out.status.success(), "cai {path:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

fn snapshot(path: &[&str]) -> PathBuf {
    let name = if path.is_empty() {
        "cai".to_string()
    } else {
        path.join("-")
    };
    manifest_dir()
        .join("tests/help")
        .join(format!("{name}.txt"))
}

#[test]
#[cfg(all(feature = "slurm", feature = "aws"))]
fn help_matches_the_snapshots() {
    let update = std::env::var("CAI_UPDATE_HELP").is_ok_and(|v| v == "1");
    let mut differ = Vec::new();
    for path in COMMANDS {
        let got = help(path);
        let file = snapshot(path);
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (CAI_UPDATE_HELP=1 writes it)", file.display()));
        if got != want {
            differ.push(format!("{}:\n{got}", file.display()));
        }
    }
    assert!(
        differ.is_empty(),
        "--help changed (CAI_UPDATE_HELP=1 rewrites the snapshots):\n{}",
        differ.join("\n")
    );
}

#[test]
#[cfg(feature = "slurm")]
fn renamed_engine_options_show_only_their_new_names() {
    let run = help(&["run"]);
    for new in [
        "--slurm-partition",
        "--slurm-time",
        "--slurm-mem",
        "--slurm-retries",
    ] {
        assert!(run.contains(new), "{new} missing from `cai run --help`");
    }
    for old in ["--partition ", "--time ", "--mem ", "--retries "] {
        assert!(!run.contains(old), "{old} still shown in `cai run --help`");
    }
    #[cfg(feature = "aws")]
    for new in ["--lambda-memory-mb", "--lambda-timeout-s", "--aws-stack"] {
        assert!(run.contains(new), "{new} missing from `cai run --help`");
    }
}

#[test]
fn old_cost_names_still_parse() {
    let d = crate::util::Dir::new();
    let args = |mem: &str, arch: &str| {
        let out = d.ok(&[
            "cost",
            "--galaxies",
            "12800",
            "--partition-galaxies",
            "1280",
            "--throughput",
            "100",
            mem,
            "2048",
            arch,
            "arm64",
            "--json",
        ]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let new = args("--lambda-memory-mb", "--lambda-arch");
    let old = args("--memory-mb", "--arch");
    assert_eq!(new, old);
    assert_eq!(new["memory_mb"], 2048.0);
    assert_eq!(new["arch"], old["arch"]);
}
