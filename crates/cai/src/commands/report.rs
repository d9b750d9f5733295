//! `cai stats` (the original's tables from measured results) and `cai report` (one
//! self-contained HTML file with figures, PNG copies on request).

use std::path::Path;

use anyhow::{Context, Result};
use cai_report::html::{write_report, ReportOptions};
use cai_report::load::load_all;
use cai_report::stats::{mean_rows, run_rows, Table};

use crate::cli::{ReportArgs, StatsArgs};
use crate::printer::Printer;
use crate::Outcome;

/// Sibling file of `path` with `suffix` before the extension: `t.csv` → `t.means.csv`.
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "csv".into());
    path.with_file_name(format!("{stem}.{suffix}.{ext}"))
}

/// `cai stats`.
pub async fn stats(a: StatsArgs, printer: &Printer) -> Result<Outcome> {
    let runs = load_all(&a.results, false).await?;
    let rows = run_rows(&runs);
    let means = mean_rows(&rows);
    let tables = [
        ("per run", Table::per_run(&rows), None),
        (
            "means over repeated runs (IQR-filtered)",
            Table::means(&means),
            Some("means"),
        ),
        (
            "workflow durations (measured)",
            Table::workflow(&means),
            Some("workflow"),
        ),
    ];
    for (i, (title, t, _)) in tables.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{title}");
        print!("{}", t.to_text());
    }
    if let Some(csv) = &a.csv {
        for (_, t, suffix) in &tables {
            let path = match suffix {
                None => csv.clone(),
                Some(s) => sibling(csv, s),
            };
            std::fs::write(&path, t.to_csv())
                .with_context(|| format!("cannot write {}", path.display()))?;
            printer.note(format!("wrote {}", path.display()));
        }
    }
    printer.note(
        "means drop values outside [Q1 − 1.5·IQR, Q3 + 1.5·IQR] (type-7 quartiles), each column on its own",
    );
    Ok(Outcome::Ok)
}

/// `cai report`.
pub async fn report(a: ReportArgs, printer: &Printer) -> Result<Outcome> {
    let opts = ReportOptions {
        lambda_memory_mb: a.lambda_memory_mb,
        title: a
            .title
            .clone()
            .unwrap_or_else(|| ReportOptions::default().title),
        ..ReportOptions::default()
    };
    let n = write_report(&a.results, &a.out, a.png.as_deref(), &opts).await?;
    printer.result(a.out.display());
    printer.note(format!("report with {n} figures written"));
    if let Some(d) = &a.png {
        printer.note(format!("figures as PNG in {}", d.display()));
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_siblings() {
        assert_eq!(
            sibling(Path::new("/t/stats.csv"), "means"),
            Path::new("/t/stats.means.csv")
        );
        assert_eq!(
            sibling(Path::new("s"), "workflow"),
            Path::new("s.workflow.csv")
        );
    }
}
