//! Every key a run writes under its results location, and the one key of a data location,
//! named once. Engines write these keys, and `cai status`, `cai report` and `cai aws watch`
//! read them, so every crate takes them from here.
//!
//! ```text
//! <results>/plan.json                 the plan (Initialize)
//! <results>/lease.json                the run holding the location (engine, host, pid)
//! <results>/payload.json              the original's payload, as planned
//! <results>/<rank>.json               a finished rank's report
//! <results>/failed/<rank>.json        a failed rank's record (removed when it finishes)
//! <results>/predictions/<rank>.parquet  a rank's predictions
//! <results>/combined_data.json        every <rank>.json, concatenated (Summarize)
//! <results>/predictions.parquet       every rank's predictions (Summarize)
//! <results>/summary.json              the run's totals and accuracy (Summarize)
//! <results>/report.html               `cai demo`'s report
//! <results>/slurm/jobs.json           Slurm job ids, for `cai status`
//! <results>/slurm/probe               the token a Slurm task checks (shared storage)
//! <results>/slurm/logs/               Slurm task logs (local results; else --slurm-dir)
//! <results>/items.json                the AWS Distributed Map's items
//! <results>/stepfunctions/            the AWS Distributed Map's own result files
//! <results>/sweep.json                `cai sweep`'s list of experiments
//! <data>/manifest.json                the partitions of a data location
//! ```
//!
//! ```
//! use cai_core::layout;
//! assert_eq!(layout::rank_report(3), "3.json");
//! assert_eq!(layout::rank_of_failure("failed/3.json"), Some(3));
//! assert!(layout::is_run_output("predictions/3.parquet"));
//! assert!(!layout::is_run_output(layout::PLAN));
//! ```

/// The plan (Initialize's output).
pub const PLAN: &str = "plan.json";
/// The lease of the run writing the location (see `cai_core::lease`).
pub const LEASE: &str = "lease.json";
/// The original's payload, as planned.
pub const PAYLOAD: &str = "payload.json";
/// The concatenated rank reports (the original's output).
pub const COMBINED: &str = "combined_data.json";
/// All predictions, one row per galaxy.
pub const PREDICTIONS: &str = "predictions.parquet";
/// The run summary.
pub const SUMMARY: &str = "summary.json";
/// What summarize has gathered so far (every rank report it read and those ranks'
/// predictions, with the listed identity of each `<rank>.json`): a later summarize reads only
/// the ranks finished or changed since. Written during a run by the driver and by each
/// summarize; a cache, never an output (a stale or unreadable one is ignored).
pub const SUMMARY_CHECKPOINT: &str = "summary-checkpoint.parquet";
/// The footer metadata key of [`SUMMARY_CHECKPOINT`] holding its index (JSON).
pub const SUMMARY_CHECKPOINT_METADATA: &str = "cai.summary_checkpoint";
/// The HTML report `cai demo` writes beside the results.
pub const REPORT_HTML: &str = "report.html";
/// Folder of failed ranks' records.
pub const FAILED_DIR: &str = "failed";
/// Folder of per-rank predictions.
pub const PREDICTIONS_DIR: &str = "predictions";
/// Folder of the claims by which, of several copies of a rank in separate processes (a
/// speculated Slurm task), the first to finish alone writes the rank's outputs.
pub const CLAIMS_DIR: &str = "claims";
/// Key, in the footer metadata of a rank's predictions file, of a copy of its `<rank>.json`
/// (the same bytes), so summarize reads one object per rank instead of two.
pub const RANK_REPORT_METADATA: &str = "cai.rank_report";
/// Folder of the Slurm engine's files (and, on a local results location, its scripts and
/// logs).
pub const SLURM_DIR: &str = "slurm";
/// Folder of the Slurm tasks' logs, inside the Slurm folder.
pub const SLURM_LOGS_DIR: &str = "logs";
/// The Slurm jobs of a run.
pub const SLURM_JOBS: &str = "slurm/jobs.json";
/// The token a Slurm task reads to check that the results location is shared.
pub const SLURM_PROBE: &str = "slurm/probe";
/// The AWS Distributed Map's items (one per rank).
pub const AWS_ITEMS: &str = "items.json";
/// The AWS engine's record of a run's Step Functions execution (what `cai status`
/// reattaches to); a fresh run's Initialize leaves it, the next run replaces it.
pub const AWS_EXECUTION: &str = "aws/execution.json";
/// Folder the AWS Distributed Map writes its own result files to.
pub const AWS_MAP_RESULTS: &str = "stepfunctions";
/// `cai sweep`'s list of experiments, at the sweep's root.
pub const SWEEP: &str = "sweep.json";
/// Folder under a sweep's root where re-cut partitions go by default.
pub const SWEEP_PARTITIONS_DIR: &str = "partitions";
/// The partition manifest, under a data location.
pub const MANIFEST: &str = "manifest.json";

/// How the rank reports' keys look, for messages: `<rank>.json`.
pub const RANK_REPORT_PATTERN: &str = "<rank>.json";

/// Key of a rank's report: `<rank>.json`.
pub fn rank_report(rank: usize) -> String {
    format!("{rank}.json")
}

/// Key of a rank's failure record: `failed/<rank>.json`.
pub fn failure(rank: usize) -> String {
    format!("{FAILED_DIR}/{rank}.json")
}

/// Key of a rank's predictions: `predictions/<rank>.parquet`.
pub fn rank_predictions(rank: usize) -> String {
    format!("{PREDICTIONS_DIR}/{rank}.parquet")
}

/// Key of a rank's commit claim: `claims/<rank>` (written once, by the copy that writes
/// the rank's outputs).
pub fn rank_claim(rank: usize) -> String {
    format!("{CLAIMS_DIR}/{rank}")
}

/// Key of the mark that a rank got a second copy: `claims/<rank>.speculated`.
pub fn rank_speculated(rank: usize) -> String {
    format!("{CLAIMS_DIR}/{rank}.speculated")
}

/// The rank of a `claims/<rank>.speculated` key, if it is one.
pub fn rank_of_speculated(key: &str) -> Option<usize> {
    rank_of_claims_mark(key, ".speculated")
}

/// Key of the mark a Lambda copy of a rank leaves when it starts: `claims/<rank>.started`
/// (the AWS follower times running ranks from when it first sees it).
pub fn rank_started(rank: usize) -> String {
    format!("{CLAIMS_DIR}/{rank}.started")
}

/// The rank of a `claims/<rank>.started` key, if it is one.
pub fn rank_of_started(key: &str) -> Option<usize> {
    rank_of_claims_mark(key, ".started")
}

/// The rank of a `claims/<rank><suffix>` key.
fn rank_of_claims_mark(key: &str, suffix: &str) -> Option<usize> {
    let stem = key
        .strip_prefix(CLAIMS_DIR)?
        .strip_prefix('/')?
        .strip_suffix(suffix)?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The rank of a top-level `<rank>.json` key, if it is one.
pub fn rank_of_report(key: &str) -> Option<usize> {
    let stem = key.strip_suffix(".json")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The rank of a `failed/<rank>.json` key, if it is one.
pub fn rank_of_failure(key: &str) -> Option<usize> {
    key.strip_prefix(FAILED_DIR)?
        .strip_prefix('/')
        .and_then(rank_of_report)
}

/// Is this folder a run's failed-ranks folder (`failed`, or `<run>/failed` below a sweep)?
pub fn is_failed_dir(dir: &str) -> bool {
    dir == FAILED_DIR
        || dir
            .strip_suffix(FAILED_DIR)
            .is_some_and(|d| d.ends_with('/'))
}

/// Is this key one of a run's outputs (rank reports, failures, predictions, combined and
/// summary files), which a fresh run at the same location removes first?
pub fn is_run_output(key: &str) -> bool {
    rank_of_report(key).is_some()
        || key
            .strip_prefix(FAILED_DIR)
            .is_some_and(|k| k.starts_with('/'))
        || key
            .strip_prefix(PREDICTIONS_DIR)
            .is_some_and(|k| k.starts_with('/'))
        || key
            .strip_prefix(CLAIMS_DIR)
            .is_some_and(|k| k.starts_with('/'))
        || [COMBINED, PREDICTIONS, SUMMARY, SUMMARY_CHECKPOINT].contains(&key)
}

/// Does a key with this name show that its folder holds a run (a plan, a summary, the
/// combined reports or a rank report)?
pub fn marks_a_run(name: &str) -> bool {
    name == PLAN || name == SUMMARY || name == COMBINED || rank_of_report(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_keys_round_trip() {
        for r in [0, 1, 12, 10_239] {
            assert_eq!(rank_of_report(&rank_report(r)), Some(r));
            assert_eq!(rank_of_failure(&failure(r)), Some(r));
            assert_eq!(rank_of_report(&failure(r)), None);
            assert!(is_run_output(&rank_predictions(r)));
            assert!(is_run_output(&rank_claim(r)));
            assert_eq!(rank_of_speculated(&rank_speculated(r)), Some(r));
            assert_eq!(rank_of_speculated(&rank_claim(r)), None);
            assert_eq!(rank_of_started(&rank_started(r)), Some(r));
            assert_eq!(rank_of_started(&rank_speculated(r)), None);
        }
        assert_eq!(rank_of_report("12.json"), Some(12));
        assert_eq!(rank_of_report("plan.json"), None);
        assert_eq!(rank_of_report("failed/1.json"), None);
        assert_eq!(rank_of_report(".json"), None);
        assert_eq!(rank_of_failure("failedx/1.json"), None);
        assert_eq!(rank_of_failure("1.json"), None);
    }

    #[test]
    fn run_outputs_are_what_a_fresh_run_replaces() {
        for k in [
            "3.json",
            "failed/3.json",
            "predictions/3.parquet",
            COMBINED,
            SUMMARY_CHECKPOINT,
        ] {
            assert!(is_run_output(k), "{k}");
        }
        for k in [
            PLAN,
            PAYLOAD,
            SLURM_JOBS,
            SLURM_PROBE,
            AWS_ITEMS,
            LEASE,
            "failedx",
            "x/3.json",
        ] {
            assert!(!is_run_output(k), "{k}");
        }
        assert!(is_run_output(PREDICTIONS) && is_run_output(SUMMARY));
    }

    #[test]
    fn failed_folders_and_run_markers() {
        assert!(is_failed_dir("failed") && is_failed_dir("p25MB-b128-r1/failed"));
        assert!(!is_failed_dir("notfailed") && !is_failed_dir("failed/x"));
        assert!(marks_a_run(PLAN) && marks_a_run("7.json") && marks_a_run(COMBINED));
        assert!(!marks_a_run(PAYLOAD) && !marks_a_run(PREDICTIONS));
    }
}
