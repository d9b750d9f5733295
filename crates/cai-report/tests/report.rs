//! The report and the stats from synthetic runs on disk: a sweep of data sizes, batch sizes
//! and repetitions; the page is self-contained; with `CAI_TEST_BROWSER=1`, headless
//! Chromium opens it and takes a screenshot (written as a test artifact).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cai_core::StorageUrl;
use cai_report::html::{build, write_pngs, ReportOptions};
use cai_report::load::{find_runs, load_all};
use cai_report::stats::{mean_rows, run_rows, Table};
use cai_report::synthetic::{write, SyntheticRun};

/// A sweep: 2 data sizes × 2 batch sizes × 3 repetitions, 25 MB partitions.
async fn sweep(dir: &Path) -> Vec<String> {
    let mut runs = Vec::new();
    let mut seed = 1;
    for ranks in [4usize, 8] {
        for batch in [128u64, 512] {
            for rep in 1..=3 {
                let sub = format!("r{ranks}-b{batch}-{rep}");
                let loc = StorageUrl::parse(dir.join(&sub).to_str().unwrap()).unwrap();
                write(
                    &loc,
                    &SyntheticRun {
                        ranks,
                        failed: 0,
                        predictions_per_rank: 200,
                        batch_size: batch,
                        s_per_galaxy: if batch == 128 { 0.006 } else { 0.005 },
                        straggler_every: 4,
                        seed,
                        t0: 1.7e9 + seed as f64 * 100.0,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                seed += 1;
                runs.push(sub);
            }
        }
    }
    runs
}

#[tokio::test]
async fn sweep_tables_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let subs = sweep(tmp.path()).await;
    let root = StorageUrl::parse(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(find_runs(&root).await.unwrap().len(), subs.len());

    let runs = load_all(&[tmp.path().display().to_string()], true)
        .await
        .unwrap();
    assert_eq!(runs.len(), 12);
    let rows = run_rows(&runs);
    let means = mean_rows(&rows);
    assert_eq!(means.len(), 4);
    assert!(means.iter().all(|m| m.runs == 3));
    // 4 ranks × 25 MB = 0.0977 GB, 8 ranks = 0.195 GB (three significant digits).
    let gbs: Vec<f64> = means.iter().map(|m| m.key.data_gb).collect();
    assert_eq!(gbs, vec![0.0977, 0.0977, 0.195, 0.195]);
    let t = Table::per_run(&rows).to_text();
    assert!(t.starts_with("partition (MB)  data (GB)  run"), "{t}");
    let csv = Table::workflow(&means).to_csv();
    assert_eq!(csv.lines().count(), 5);

    let report = build(&runs, &ReportOptions::default()).unwrap();
    let html = &report.html;
    check_self_contained(html);
    for id in [
        "sweep-data-size",
        "sweep-batch-size",
        "run1-pred-vs-true",
        "run1-timeline",
    ] {
        assert!(html.contains(&format!("id=\"fig-{id}\"")), "{id} missing");
    }
    // Every figure has drawn content.
    for f in &report.figures {
        let svg = f.to_svg().unwrap();
        assert!(
            svg.matches("<rect").count() + svg.matches("<polyline").count() > 3,
            "{}",
            f.id
        );
    }
    let pngs = write_pngs(&report.figures, &tmp.path().join("png")).unwrap();
    assert_eq!(pngs.len(), report.figures.len());
}

/// No script, no network: no `http`, no `src=`, every `href` an in-page anchor.
fn check_self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    let lower = html.to_lowercase();
    assert!(
        !lower.contains("http:") && !lower.contains("https:"),
        "an http(s) reference"
    );
    assert!(!lower.contains("<script"), "a script");
    assert!(!lower.contains(" src="), "an external source");
    assert!(!lower.contains("url("), "a CSS url()");
    for part in lower.split("href=\"").skip(1) {
        assert!(
            part.starts_with('#'),
            "href to {}",
            &part[..part.len().min(40)]
        );
    }
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|n| {
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(n))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|p| p.is_file())
}

#[tokio::test]
async fn headless_browser_screenshot() {
    if std::env::var("CAI_TEST_BROWSER").as_deref() != Ok("1") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI is set but CAI_TEST_BROWSER is not 1: scripts/test.sh installs chromium under CI"
        );
        eprintln!("skipped: set CAI_TEST_BROWSER=1 (needs Debian's chromium)");
        return;
    }
    let browser = chromium().expect("CAI_TEST_BROWSER=1 but no chromium on PATH");
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let loc = StorageUrl::parse(run_dir.to_str().unwrap()).unwrap();
    write(
        &loc,
        &SyntheticRun {
            ranks: 24,
            failed: 1,
            straggler_every: 11,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let runs = load_all(&[run_dir.display().to_string()], true)
        .await
        .unwrap();
    let report = build(&runs, &ReportOptions::default()).unwrap();
    check_self_contained(&report.html);
    let page = tmp.path().join("report.html");
    std::fs::write(&page, &report.html).unwrap();

    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shot = artifacts.join("cai-report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(shot.is_file(), "no screenshot; chromium said:\n{log}");
    // The page has no script, so a console message could only be a load error.
    for line in log.lines() {
        assert!(!line.contains("CONSOLE"), "console message: {line}");
        assert!(!line.contains("ERR_FILE_NOT_FOUND"), "{line}");
    }

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let non_white = pixels.iter().filter(|p| p[..3] != [255, 255, 255]).count();
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    eprintln!(
        "screenshot {} ({}×{}): {:.1} % non-white, {} colours",
        shot.display(),
        info.width,
        info.height,
        100.0 * non_white as f64 / pixels.len() as f64,
        colours.len()
    );
    assert!(
        non_white as f64 > 0.05 * pixels.len() as f64,
        "screenshot is almost blank"
    );
    assert!(
        colours.len() > 50,
        "screenshot has only {} colours",
        colours.len()
    );
}
