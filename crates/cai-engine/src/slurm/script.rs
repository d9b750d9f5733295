//! Batch scripts: the array job (one task per rank) and the summarize job.
//!
//! Everything a cluster needs is in the script as `#SBATCH` lines, so the scripts can be
//! read, kept and submitted by hand; only `--array` (for retries and `--resume`) and
//! `--dependency` are given again on the `sbatch` command line, which overrides the script.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

/// What goes into the batch scripts: the cluster's pass-through options and where things are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOptions {
    /// Job name (`--job-name`); the summarize job gets `<name>-summarize`.
    pub job_name: String,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` (per task).
    pub time: Option<String>,
    /// `--mem` (per task).
    pub mem: Option<String>,
    /// `--cpus-per-task`; the worker uses exactly this many threads.
    pub cpus_per_task: Option<u32>,
    /// `--gres`.
    pub gres: Option<String>,
    /// `--constraint`.
    pub constraint: Option<String>,
    /// Extra `#SBATCH` lines, as they go in the script.
    pub extra: Vec<String>,
    /// Shell run before `cai` in every job (module loads, environment).
    pub setup: Option<String>,
    /// At most this many array tasks at once (`--array=…%MAX`).
    pub max_running: Option<usize>,
    /// Inference threads per task (default: the CPUs Slurm gives the task).
    pub threads: Option<usize>,
    /// Arithmetic of the model's weights in every task (`cai worker --precision`).
    pub precision: cai_model::kernels::Precision,
    /// The `cai` binary the jobs run (must be on a file system the nodes mount).
    pub cai_bin: PathBuf,
    /// Directory of the jobs' output and error files.
    pub log_dir: PathBuf,
}

impl Default for ScriptOptions {
    fn default() -> Self {
        Self {
            job_name: "cai".into(),
            partition: None,
            account: None,
            qos: None,
            time: None,
            mem: None,
            cpus_per_task: None,
            gres: None,
            constraint: None,
            extra: Vec::new(),
            setup: None,
            max_running: None,
            threads: None,
            precision: cai_model::kernels::Precision::F32,
            cai_bin: PathBuf::from("cai"),
            log_dir: PathBuf::from(cai_core::layout::SLURM_LOGS_DIR),
        }
    }
}

/// Array indices in Slurm's compact form: `[0,1,2,3,7,9,10]` → `0-3,7,9-10`.
pub fn compact_indices(indices: &[usize]) -> String {
    let mut v = indices.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

/// The `--array` value: compact indices and `%MAX` when limited.
pub fn array_spec(indices: &[usize], max_running: Option<usize>) -> String {
    let mut s = compact_indices(indices);
    if let Some(m) = max_running.filter(|&m| m > 0) {
        let _ = write!(s, "%{m}");
    }
    s
}

/// Parse Slurm's task-id lists (`0-3,7`, `1-9%2`, `0-8:2`) into indices.
pub fn parse_indices(spec: &str) -> Option<Vec<usize>> {
    let spec = spec.split('%').next()?.trim();
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<usize>().ok()?.max(1)),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                out.extend((a..=b).step_by(step));
            }
            None => out.push(range.parse().ok()?),
        }
    }
    Some(out)
}

/// Quote a word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Read extra `#SBATCH` lines from a file: `#SBATCH …` lines as they are, bare options
/// (`--mail-type=END`) get the prefix; blank lines and other comments are skipped.
pub fn read_extra_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_extra_lines(&path.display().to_string(), &text)
}

/// [`read_extra_lines`] on text; `name` names the file in errors.
pub fn parse_extra_lines(name: &str, text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || (t.starts_with('#') && !t.starts_with("#SBATCH")) {
            continue;
        }
        if t.starts_with("#SBATCH") {
            out.push(t.to_string());
        } else if t.starts_with('-') {
            out.push(format!("#SBATCH {t}"));
        } else {
            return Err(Error::Invalid {
                what: format!("{name}:{}", i + 1),
                reason: format!(
                    "{t:?} is neither an `#SBATCH` line nor an sbatch option (`--name=value`)"
                ),
            });
        }
    }
    Ok(out)
}

fn directive(s: &mut String, name: &str, value: &str) {
    let _ = writeln!(s, "#SBATCH --{name}={value}");
}

/// Directives shared by both jobs: where they run and who pays.
fn placement(s: &mut String, o: &ScriptOptions) {
    for (name, v) in [
        ("partition", &o.partition),
        ("account", &o.account),
        ("qos", &o.qos),
        ("time", &o.time),
    ] {
        if let Some(v) = v {
            directive(s, name, v);
        }
    }
}

fn tail(s: &mut String, o: &ScriptOptions) {
    for l in &o.extra {
        s.push_str(l);
        s.push('\n');
    }
    s.push('\n');
    if let Some(setup) = o.setup.as_deref().filter(|t| !t.trim().is_empty()) {
        s.push_str("# --setup\n");
        s.push_str(setup.trim_end());
        s.push_str("\n\n");
    }
}

/// The array job: task `i` runs rank `$CAI_RANK_OFFSET + i` (offset 0 when unset) of the
/// plan at `plan_url`. `probe` is the token the
/// task must find in the results location (else it exits 3: not shared).
pub fn array_script(o: &ScriptOptions, plan_url: &str, probe: &str, indices: &[usize]) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("# Written by `cai run --engine slurm`: one array task per rank of the plan.\n");
    directive(&mut s, "job-name", &o.job_name);
    directive(&mut s, "array", &array_spec(indices, o.max_running));
    directive(&mut s, "ntasks", "1");
    directive(
        &mut s,
        "output",
        &o.log_dir.join("%x-%A_%a.out").display().to_string(),
    );
    directive(
        &mut s,
        "error",
        &o.log_dir.join("%x-%A_%a.err").display().to_string(),
    );
    placement(&mut s, o);
    if let Some(v) = &o.mem {
        directive(&mut s, "mem", v);
    }
    if let Some(v) = o.cpus_per_task {
        directive(&mut s, "cpus-per-task", &v.to_string());
    }
    if let Some(v) = &o.gres {
        directive(&mut s, "gres", v);
    }
    if let Some(v) = &o.constraint {
        directive(&mut s, "constraint", v);
    }
    tail(&mut s, o);
    let _ = write!(
        s,
        "exec {} worker --plan {} --rank \"$((${{{}:-0}} + SLURM_ARRAY_TASK_ID))\" --probe {}",
        sh_quote(&o.cai_bin.display().to_string()),
        sh_quote(plan_url),
        super::RANK_OFFSET_ENV,
        sh_quote(probe)
    );
    if let Some(t) = o.threads {
        let _ = write!(s, " --threads {t}");
    }
    if o.precision != cai_model::kernels::Precision::F32 {
        let _ = write!(s, " --precision {}", o.precision.name());
    }
    s.push('\n');
    s
}

/// The summarize job (held by `--dependency=afterany:<array>` on the command line): gathers
/// the ranks and lists the failed ones; exits 1 when some failed.
pub fn summarize_script(o: &ScriptOptions, results: &str) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("# Written by `cai run --engine slurm`: summarize once the array has ended.\n");
    directive(&mut s, "job-name", &format!("{}-summarize", o.job_name));
    directive(&mut s, "ntasks", "1");
    directive(
        &mut s,
        "output",
        &o.log_dir.join("%x-%j.out").display().to_string(),
    );
    placement(&mut s, o);
    tail(&mut s, o);
    let _ = writeln!(
        s,
        "exec {} summarize --results {}",
        sh_quote(&o.cai_bin.display().to_string()),
        sh_quote(results)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compact_forms() {
        assert_eq!(compact_indices(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(compact_indices(&[4]), "4");
        assert_eq!(compact_indices(&[]), "");
        assert_eq!(array_spec(&[0, 1, 2], Some(2)), "0-2%2");
        assert_eq!(parse_indices("1-9%2").unwrap().len(), 9);
        assert_eq!(parse_indices("0-8:4").unwrap(), vec![0, 4, 8]);
        assert_eq!(parse_indices("3,5").unwrap(), vec![3, 5]);
        assert!(parse_indices("x").is_none());
    }

    proptest! {
        #[test]
        fn compact_round_trips(mut v in proptest::collection::vec(0usize..200, 0..50)) {
            let spec = compact_indices(&v);
            v.sort_unstable();
            v.dedup();
            prop_assert_eq!(parse_indices(&spec).unwrap(), v);
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a/b.json"), "/a/b.json");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn array_script_has_every_option() {
        let o = ScriptOptions {
            job_name: "z".into(),
            partition: Some("gpu".into()),
            account: Some("astro".into()),
            qos: Some("low".into()),
            time: Some("1:00:00".into()),
            mem: Some("4G".into()),
            cpus_per_task: Some(4),
            gres: Some("gpu:1".into()),
            constraint: Some("avx2".into()),
            extra: vec!["#SBATCH --mail-type=END".into()],
            setup: Some("module load foo".into()),
            max_running: Some(3),
            threads: None,
            precision: cai_model::kernels::Precision::F32,
            cai_bin: "/opt/cai".into(),
            log_dir: "/r/slurm/logs".into(),
        };
        let s = array_script(&o, "/r/plan.json", "tok", &[0, 1, 2, 3, 4]);
        for want in [
            "#SBATCH --array=0-4%3",
            "#SBATCH --job-name=z",
            "#SBATCH --output=/r/slurm/logs/%x-%A_%a.out",
            "#SBATCH --error=/r/slurm/logs/%x-%A_%a.err",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=astro",
            "#SBATCH --qos=low",
            "#SBATCH --time=1:00:00",
            "#SBATCH --mem=4G",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --constraint=avx2",
            "#SBATCH --mail-type=END",
            "module load foo\n",
            "exec /opt/cai worker --plan /r/plan.json --rank \"$((${CAI_RANK_OFFSET:-0} + SLURM_ARRAY_TASK_ID))\" --probe tok\n",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        // Every directive comes before the first command, or sbatch ignores it.
        let first_cmd = s.find("module load").unwrap();
        assert!(s.rfind("#SBATCH").unwrap() < first_cmd);
        let sum = summarize_script(&o, "/r");
        assert!(sum.contains("#SBATCH --job-name=z-summarize"));
        assert!(sum.contains("exec /opt/cai summarize --results /r\n"));
        assert!(!sum.contains("--gres"));
    }

    #[test]
    fn threads_and_precision_reach_the_worker() {
        use cai_model::kernels::Precision;
        for (p, tail) in [
            (Precision::F32, " --threads 2\n"),
            (Precision::Int8, " --threads 2 --precision int8\n"),
            (Precision::Bf16, " --threads 2 --precision bf16\n"),
        ] {
            let o = ScriptOptions {
                threads: Some(2),
                precision: p,
                ..ScriptOptions::default()
            };
            let s = array_script(&o, "/r/plan.json", "tok", &[0]);
            let exec = s.lines().last().unwrap_or_default();
            assert!(
                exec.starts_with("exec cai worker --plan /r/plan.json") && s.ends_with(tail),
                "{p}: {s}"
            );
            // The worker parses what the script passes.
            assert_eq!(Precision::parse(p.name()), Some(p));
        }
    }

    #[test]
    fn extra_lines() {
        let l = parse_extra_lines("f", "# c\n\n#SBATCH --x=1\n--y=2\n").unwrap();
        assert_eq!(l, vec!["#SBATCH --x=1", "#SBATCH --y=2"]);
        let e = parse_extra_lines("f", "--ok\nmodule load x\n").unwrap_err();
        assert!(e.to_string().starts_with("f:2:"), "{e}");
    }
}
