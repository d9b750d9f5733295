//! Measure the report for a large synthetic run:
//! `cargo run --release -p cai-report --example report_scale -- RANKS PREDICTIONS_PER_RANK DIR`
//! (defaults 10240, 100, a temp dir). Prints the times and sizes. `cargo test` runs it on
//! a small run (`quick_run_reports_both_ways`).

use std::path::Path;
use std::time::Instant;

use cai_core::{layout, StorageUrl};
use cai_report::html::{build, write_pngs, ReportOptions};
use cai_report::load::load_all;
use cai_report::synthetic::{write, SyntheticRun};

/// Write a synthetic run of `ranks` ranks under `dir`, then load it and build the report
/// twice (with `combined_data.json`, then from the rank files only); print the times.
/// Returns the report's size and figure count of each build.
async fn measure(
    ranks: usize,
    per: usize,
    dir: &Path,
) -> Result<Vec<(usize, usize)>, Box<dyn std::error::Error>> {
    let _ = std::fs::remove_dir_all(dir);
    let loc = StorageUrl::parse(&dir.display().to_string())?;
    let t = Instant::now();
    write(
        &loc,
        &SyntheticRun {
            ranks,
            failed: 3,
            predictions_per_rank: per,
            straggler_every: 997,
            ..Default::default()
        },
    )
    .await?;
    println!(
        "wrote {ranks} synthetic ranks ({per} predictions each) in {:.2} s to {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    let mut sizes = Vec::new();
    for combined in [true, false] {
        if !combined {
            std::fs::remove_file(dir.join(layout::COMBINED))?;
        }
        let t = Instant::now();
        let runs = load_all(&[dir.display().to_string()], true).await?;
        let t_load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let report = build(&runs, &ReportOptions::default())?;
        let t_build = t.elapsed().as_secs_f64();
        let out = dir.join(layout::REPORT_HTML);
        std::fs::write(&out, &report.html)?;
        println!(
            "{}: load {t_load:.2} s, build {t_build:.2} s, report {} bytes ({} figures) → {}",
            if combined {
                "with combined_data.json"
            } else {
                "rank files only"
            },
            report.html.len(),
            report.figures.len(),
            out.display()
        );
        if combined {
            let t = Instant::now();
            let pngs = write_pngs(&report.figures, &dir.join("png"))?;
            println!("{} PNGs in {:.2} s", pngs.len(), t.elapsed().as_secs_f64());
        }
        sizes.push((report.html.len(), report.figures.len()));
    }
    Ok(sizes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ranks: usize = args.get(1).map_or(Ok(10_240), |s| s.parse())?;
    let per: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let dir = match args.get(3) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("cai-report-scale-{}", std::process::id())),
    };
    measure(ranks, per, &dir).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quick_run_reports_both_ways() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let sizes = super::measure(40, 10, &dir).await.unwrap();
        assert_eq!(sizes.len(), 2);
        // Reading the rank files instead of combined_data.json gives the same report
        // apart from the load path: the same figures.
        assert_eq!(sizes[0].1, sizes[1].1);
        assert!(sizes.iter().all(|&(bytes, figs)| bytes > 0 && figs > 0));
        assert!(dir.join("png").is_dir());
    }
}
