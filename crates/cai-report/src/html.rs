//! One self-contained HTML report: no script, no network reference, small inline CSS and
//! inline SVG figures. Sections: summary numbers (with a Lambda cost estimate), accuracy
//! with the density plots (a classifier's: per-class table, confusion matrix, ROC curves), the per-rank timeline, sweeps (when several runs are given),
//! the stats tables and a per-rank table.
//!
//! **Stragglers**: ranks whose wall time exceeds median + 3·1.4826·MAD (MAD = median
//! absolute deviation; 1.4826·MAD estimates σ for normal noise, so this is a robust 3σ)
//! *and* 1.25 × median. The floor keeps ordinary jitter from being flagged: with 10,240
//! ranks a 3σ rule alone flags a dozen ranks of pure noise, and when almost every rank
//! takes the same time MAD is about 0.
//!
//! **Cost estimate** (AWS Lambda, as the original works it out by hand): for each finished
//! rank, duration (its wall time measured here, s) × memory (GB = MB/1024: the memory
//! given, else the rank's peak RSS, at least 128 MB) × the x86_64 price per GB-s, plus the
//! price per request (one per rank), both from [`cai_core::cost::PRICES`] ($0.0000166667
//! and $0.0000002). An estimate of what the same work would cost as Lambda invocations of
//! this speed, not a bill.

use std::fmt::Write as _;

use cai_core::cost::{Arch, PRICES};
use cai_core::report::RankReport;

use crate::error::Result;
use cai_core::metrics::{one_vs_rest, roc_curve, ClassMetrics};
use cai_core::predictions::Predictions;

use crate::figures::{
    Confusion, Density, Figure, Panel, Plot, Roc, Sweep, Timeline, TimelineRow, PHASES,
};
use crate::load::{labelled_pairs, Run};
use crate::stats::{mean_rows, median, run_rows, MeanRow, Table, MB};

/// Lambda's smallest memory size, MB.
pub const LAMBDA_MIN_MB: f64 = 128.0;

/// 1.4826 · MAD estimates the standard deviation of normal data.
pub const MAD_TO_SIGMA: f64 = 1.4826;
/// A straggler takes at least this many times the median wall time.
pub const STRAGGLER_FLOOR: f64 = 1.25;

/// Choices for [`build`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Lambda memory (MB) for the cost estimate; None: each rank's peak RSS.
    pub lambda_memory_mb: Option<f64>,
    /// Most rows in the per-rank table (the slowest ranks are kept beyond it).
    pub max_table_rows: usize,
    /// Most rows in a timeline (ranks are grouped beyond it).
    pub max_timeline_rows: usize,
    /// Runs shown in detail (accuracy, timeline, ranks); the rest only in the tables.
    pub detail_runs: usize,
    /// Bins per axis of the density plots.
    pub bins: usize,
    /// Report title.
    pub title: String,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            lambda_memory_mb: None,
            max_table_rows: 1000,
            max_timeline_rows: 200,
            detail_runs: 3,
            bins: 48,
            title: "CAI-rs run report".into(),
        }
    }
}

/// The report: the HTML page and the figures in it (for PNG copies).
#[derive(Debug, Clone)]
pub struct Report {
    /// The whole page.
    pub html: String,
    /// Every figure, in page order.
    pub figures: Vec<Figure>,
}

/// A Lambda cost estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Invocations (finished ranks).
    pub requests: u64,
    /// GB-seconds.
    pub gb_s: f64,
    /// Dollars.
    pub usd: f64,
}

/// The cost estimate of a run's finished ranks (see the module doc for the formula).
pub fn lambda_cost(reports: &[RankReport], memory_mb: Option<f64>) -> Cost {
    let gb_s: f64 = reports
        .iter()
        .map(|r| {
            let mb = memory_mb.unwrap_or(r.total_cpu_memory).max(LAMBDA_MIN_MB);
            r.wall_time_s.max(0.0) * mb / 1024.0
        })
        .sum();
    let requests = reports.len() as u64;
    Cost {
        requests,
        gb_s,
        usd: gb_s * PRICES.gb_second(Arch::X86_64) + requests as f64 * PRICES.lambda_request,
    }
}

/// The straggler threshold (s) of a set of wall times (see the module doc); NaN if empty.
pub fn straggler_threshold(walls: &[f64]) -> f64 {
    let med = median(walls);
    let dev: Vec<f64> = walls.iter().map(|w| (w - med).abs()).collect();
    let mad = median(&dev);
    (med + 3.0 * MAD_TO_SIGMA * mad).max(STRAGGLER_FLOOR * med)
}

/// Ranks (as in the reports) that straggled.
pub fn stragglers(reports: &[RankReport]) -> Vec<usize> {
    let walls: Vec<f64> = reports.iter().map(|r| r.wall_time_s).collect();
    let t = straggler_threshold(&walls);
    reports
        .iter()
        .filter(|r| r.wall_time_s > t)
        .map(|r| r.rank)
        .collect()
}

fn phases(r: &RankReport) -> [f64; 5] {
    let d = r.download_s.max(0.0);
    let c = r.decode_s.max(0.0);
    let i = r.total_cpu_time.max(0.0);
    let u = r.upload_s.max(0.0);
    [d, c, i, u, (r.wall_time_s - d - c - i - u).max(0.0)]
}

/// The timeline of a run: one row per rank, or rows of `ceil(n / max_rows)` consecutive
/// ranks (mean start and phases, min–max whisker) when there are more than `max_rows`.
pub fn timeline(run: &Run, max_rows: usize) -> Timeline {
    let t0 = run.started_at();
    let n = run.reports.len();
    let k = n.div_ceil(max_rows.max(1)).max(1);
    let slow: std::collections::HashSet<usize> = stragglers(&run.reports).into_iter().collect();
    let mut rows = Vec::new();
    let mut marks = Vec::new();
    for (row, group) in run.reports.chunks(k).enumerate() {
        let m = group.len() as f64;
        let mut ph = [0.0; 5];
        for r in group {
            for (a, b) in ph.iter_mut().zip(phases(r)) {
                *a += b / m;
            }
            if slow.contains(&r.rank) {
                marks.push((row, r.ended_at - t0, r.rank));
            }
        }
        let start = group.iter().map(|r| r.started_at - t0).sum::<f64>() / m;
        let span = (k > 1).then(|| {
            let a = group
                .iter()
                .map(|r| r.started_at - t0)
                .fold(f64::INFINITY, f64::min);
            let b = group
                .iter()
                .map(|r| r.ended_at - t0)
                .fold(f64::NEG_INFINITY, f64::max);
            (a, b)
        });
        rows.push(TimelineRow {
            start,
            phases: ph,
            span,
        });
    }
    Timeline {
        rows,
        ranks_per_row: k,
        stragglers: marks,
    }
}

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Make a figure's SVG fit inline in HTML: no XML namespace attribute (HTML parsers do
/// not need it, and the page then carries no `http` string at all), scalable width.
fn inline_svg(svg: &str, title: &str) -> String {
    let s = svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1);
    let s = s.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{}\" ", esc(title)),
        1,
    );
    // Plotters writes `<?xml …?>`-free SVG; drop any leading declaration to be sure.
    match s.find("<svg") {
        Some(i) => s[i..].to_string(),
        None => s,
    }
}

fn fmt_s(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0} s")
    } else if x >= 10.0 {
        format!("{x:.1} s")
    } else {
        format!("{x:.2} s")
    }
}

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1024.0 * MB {
        format!("{:.2} GB", b / (1024.0 * MB))
    } else {
        format!("{:.1} MB", b / MB)
    }
}

fn utc(t: f64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "?".into())
}

const CSS: &str = "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1180px;padding:1em 1.5em;color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}h3{font-size:1.05em;margin:1.2em 0 .4em}
.loc{font-family:ui-monospace,monospace;font-size:.9em;color:#444;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:.6em;margin:.6em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .7em;background:#fafafa}.card b{display:block;font-size:1.3em}.card span{font-size:.85em;color:#555}
.warn{background:#fff4e5;border-color:#f0b35a}.bad{background:#fdecec;border-color:#e08080}
figure{margin:1em 0;max-width:100%}figure svg{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.88em;color:#444;max-width:60em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{padding:.2em .6em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}
td.l,th.l{text-align:left}tr.slow td{background:#fff4e5}tr.fail td{background:#fdecec}.scroll{max-height:34em;overflow:auto;border:1px solid #eee}
.note{font-size:.88em;color:#555}footer{margin-top:3em;font-size:.8em;color:#777}";

struct Page {
    html: String,
    figures: Vec<Figure>,
}

impl Page {
    fn figure(&mut self, f: Figure) -> Result<()> {
        let svg = f.to_svg()?;
        let _ = writeln!(
            self.html,
            "<figure id=\"fig-{id}\"><h3>{t}</h3>{svg}<figcaption>{c}</figcaption></figure>",
            id = esc(&f.id),
            t = esc(&f.title),
            svg = inline_svg(&svg, &f.title),
            c = f.caption, // captions are written by this module, already HTML
        );
        self.figures.push(f);
        Ok(())
    }

    fn table(&mut self, t: &Table, left: &[usize]) {
        self.html
            .push_str("<div class=\"scroll\"><table><thead><tr>");
        for (i, h) in t.header.iter().enumerate() {
            let cls = if left.contains(&i) {
                " class=\"l\""
            } else {
                ""
            };
            let _ = write!(self.html, "<th{cls}>{}</th>", esc(h));
        }
        self.html.push_str("</tr></thead><tbody>\n");
        for r in &t.rows {
            self.html.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                let cls = if left.contains(&i) {
                    " class=\"l\""
                } else {
                    ""
                };
                let _ = write!(self.html, "<td{cls}>{}</td>", esc(c));
            }
            self.html.push_str("</tr>\n");
        }
        self.html.push_str("</tbody></table></div>\n");
    }

    fn card(&mut self, value: &str, label: &str, class: &str) {
        let _ = write!(
            self.html,
            "<div class=\"card {class}\"><b>{}</b><span>{}</span></div>",
            esc(value),
            esc(label)
        );
    }
}

fn slug(i: usize) -> String {
    format!("run{}", i + 1)
}

fn run_section(p: &mut Page, i: usize, run: &Run, opts: &ReportOptions) -> Result<()> {
    let s = &run.summary;
    let id = slug(i);
    let _ = writeln!(
        p.html,
        "<h2 id=\"{id}\">Run {} — summary</h2><p class=\"loc\">{}</p>",
        i + 1,
        esc(&run.location)
    );
    p.html.push_str("<div class=\"cards\">");
    p.card(&fmt_int(s.galaxies), "galaxies predicted", "");
    p.card(
        &fmt_s(s.wall_time_s),
        "wall time (first start → last end)",
        "",
    );
    p.card(
        &format!("{:.1}", s.galaxies_per_s),
        "galaxies / s (wall)",
        "",
    );
    p.card(
        &format!("{} / {}", s.ranks_done, s.ranks_total),
        "ranks finished",
        "",
    );
    let failed = s.failed.len() + s.missing_ranks.len();
    p.card(
        &failed.to_string(),
        "ranks failed or missing",
        if failed > 0 { "bad" } else { "" },
    );
    p.card(&fmt_s(s.inference_s), "inference time, all ranks", "");
    p.card(
        &format!("{:.0} MB", s.peak_memory_mb),
        "largest peak memory",
        "",
    );
    p.card(&fmt_bytes(run.data_bytes() as f64), "input data", "");
    p.card(&run.batch_size().to_string(), "batch size", "");
    p.card(&run.engine(), "engine", "");
    let cost = lambda_cost(&run.reports, opts.lambda_memory_mb);
    p.card(&format!("${:.4}", cost.usd), "Lambda cost estimate", "");
    if s.nonfinite_galaxies > 0 {
        p.card(
            &fmt_int(s.nonfinite_galaxies),
            "galaxies with non-finite inputs (NaN)",
            "warn",
        );
    }
    p.html.push_str("</div>\n");
    let mem = match opts.lambda_memory_mb {
        Some(m) => format!("{m:.0} MB for every rank"),
        None => "each rank's peak RSS (at least 128 MB)".into(),
    };
    let _ = writeln!(
        p.html,
        "<p class=\"note\">Cost estimate, as the original works it out by hand: Σ over the {} finished ranks of \
         duration × memory × ${} per GB-s, + ${} per request; duration = the rank's wall \
         time measured here, memory = {mem}: {:.1} GB-s. It prices the same work as Lambda invocations of \
         this speed; it is not a bill. Started {}.</p>",
        cost.requests,
        PRICES.gb_second(Arch::X86_64),
        PRICES.lambda_request,
        cost.gb_s,
        utc(run.started_at())
    );
    if !s.failed.is_empty() || !s.missing_ranks.is_empty() {
        p.html.push_str("<h3>Failed and missing ranks</h3><ul>");
        for f in s.failed.iter().take(50) {
            let _ = write!(
                p.html,
                "<li>rank {} on {}: {}</li>",
                f.rank,
                esc(&f.host),
                esc(&f.error)
            );
        }
        if s.failed.len() > 50 {
            let _ = write!(
                p.html,
                "<li>… and {} more failed ranks</li>",
                s.failed.len() - 50
            );
        }
        if !s.missing_ranks.is_empty() {
            let shown: Vec<String> = s
                .missing_ranks
                .iter()
                .take(50)
                .map(|r| r.to_string())
                .collect();
            let _ = write!(
                p.html,
                "<li>{} ranks with no result and no failure record: {}{}</li>",
                s.missing_ranks.len(),
                shown.join(", "),
                if s.missing_ranks.len() > 50 {
                    ", …"
                } else {
                    ""
                }
            );
        }
        p.html.push_str("</ul>\n");
    }

    // Accuracy.
    let _ = writeln!(p.html, "<h2>Run {} — accuracy</h2>", i + 1);
    match &s.metrics {
        Some(m) => {
            let t = Table {
                header: ["", "n", "MAE", "MSE", "bias", "NMAD", "R²", "η (|Δz|>0.05)"]
                    .map(String::from)
                    .to_vec(),
                rows: vec![
                    vec![
                        "this run".into(),
                        fmt_int(m.n),
                        format!("{:.4}", m.mae),
                        format!("{:.5}", m.mse),
                        format!("{:+.4}", m.bias),
                        format!("{:.4}", m.nmad),
                        format!("{:.3}", m.r2),
                        format!("{:.3}", m.eta),
                    ],
                    vec![
                        "original AstroMAE, its test split (published)".into(),
                        String::new(),
                        "0.0134".into(),
                        "0.00038".into(),
                        "+0.0029".into(),
                        "0.0118".into(),
                        "0.968".into(),
                        String::new(),
                    ],
                ],
            };
            p.table(&t, &[0]);
            p.html.push_str(
                "<p class=\"note\">Δz = (z_pred − z_true)/(1 + z_true); MAE = mean|z_pred − z_true|; \
                 bias = mean Δz; NMAD = 1.48 × median|Δz − median Δz|; R² = 1 − SS_res/SS_tot; \
                 η = share with |Δz| &gt; 0.05. Galaxies with a NaN prediction are left out.</p>\n",
            );
        }
        None => match &s.class_metrics {
            Some(c) => class_section(p, &id, c, run.predictions.as_ref())?,
            None => p.html.push_str(
                "<p class=\"note\">No accuracy: the data carried no labels (true redshifts or classes), or no predictions file was found.</p>\n",
            ),
        },
    }
    if let (Some(pred), None) = (&run.predictions, &s.class_metrics) {
        let (zp, zt) = labelled_pairs(pred);
        if !zt.is_empty() {
            let d = Density::predicted_vs_true(&zp, &zt, opts.bins);
            let caption =
                format!(
                "{} galaxies binned {b}×{b}, colour = galaxies per bin (log scale); red: y = x.{}",
                fmt_int(zt.len() as u64),
                if d.outside > 0 {
                    format!(" {} pairs outside the axes are not drawn.", fmt_int(d.outside))
                } else {
                    String::new()
                },
                b = opts.bins
            );
            p.figure(Figure {
                id: format!("{id}-pred-vs-true"),
                title: "Predicted against true redshift".into(),
                caption,
                size: (720, 620),
                plot: Plot::Density(d),
            })?;
            let d = Density::delta_z(&zp, &zt, opts.bins);
            let caption = format!(
                "Normalised residual against true redshift, {b}×{b} bins, log colour; lines at 0 and ±0.05 \
                 (the outlier cut of η).{}",
                if d.outside > 0 {
                    format!(" {} galaxies outside the axes are not drawn.", fmt_int(d.outside))
                } else {
                    String::new()
                },
                b = opts.bins
            );
            p.figure(Figure {
                id: format!("{id}-dz-vs-z"),
                title: "Δz against true redshift".into(),
                caption,
                size: (720, 480),
                plot: Plot::Density(d),
            })?;
        }
    }

    // Timeline.
    if !run.reports.is_empty() {
        let _ = writeln!(p.html, "<h2>Run {} — where the time went</h2>", i + 1);
        let tl = timeline(run, opts.max_timeline_rows);
        let walls: Vec<f64> = run.reports.iter().map(|r| r.wall_time_s).collect();
        let thr = straggler_threshold(&walls);
        let slow = stragglers(&run.reports);
        let totals: Vec<f64> = (0..5)
            .map(|k| run.reports.iter().map(|r| phases(r)[k]).sum())
            .collect();
        let all: f64 = totals.iter().sum::<f64>().max(1e-12);
        let shares: Vec<String> = PHASES
            .iter()
            .zip(&totals)
            .map(|(n, t)| format!("{n} {:.0} %", 100.0 * t / all))
            .collect();
        let caption = format!(
            "Each bar is one rank{}: its phases laid end to end from its start (download = time \
             waiting for partitions that prefetch did not hide; decode; inference = the model's \
             forward passes, the original's total_cpu_time; upload = writing predictions; other = \
             the rest of the wall time). Phases overlap in reality; the bar shows how long each \
             took, not when. Share of rank time: {}. Stragglers (red ▲): wall time above {} \
             (median {} + 3 · 1.4826 · MAD, and at least 1.25 × median): {} of {} ranks{}.",
            if tl.ranks_per_row > 1 {
                format!(
                    " group of {} consecutive ranks (mean bars; the grey whisker spans the \
                     group's earliest start to latest end)",
                    tl.ranks_per_row
                )
            } else {
                String::new()
            },
            shares.join(", "),
            fmt_s(thr),
            fmt_s(median(&walls)),
            slow.len(),
            run.reports.len(),
            if slow.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = slow.iter().take(20).map(|r| r.to_string()).collect();
                format!(
                    " (ranks {}{})",
                    ids.join(", "),
                    if slow.len() > 20 { ", …" } else { "" }
                )
            }
        );
        let rows = tl.rows.len() as u32;
        p.figure(Figure {
            id: format!("{id}-timeline"),
            title: "Per-rank timeline".into(),
            caption: esc(&caption),
            size: (1000, (160 + rows * 6).clamp(320, 900)),
            plot: Plot::Timeline(tl),
        })?;
    }

    // Per-rank table.
    let _ = writeln!(p.html, "<h2>Run {} — ranks</h2>", i + 1);
    rank_table(p, run, opts);
    Ok(())
}

/// Most classes drawn as ROC curves (beyond it the curves are unreadable; the table has all).
const ROC_CLASSES: usize = 10;

/// A classifier's accuracy: the table of per-class figures, the confusion matrix and the
/// one-vs-rest ROC curves (from the predictions, when loaded).
fn class_section(
    p: &mut Page,
    id: &str,
    c: &ClassMetrics,
    pred: Option<&Predictions>,
) -> Result<()> {
    let pct = |v: f64| {
        if v.is_finite() {
            format!("{:.1} %", 100.0 * v)
        } else {
            "—".into()
        }
    };
    let auc = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "—".into()
        }
    };
    let _ = writeln!(
        p.html,
        "<p>Output <code>{}</code> judged as class scores against the labels: {} galaxies, \
         accuracy {}, macro ROC AUC {}.</p>",
        esc(&c.output),
        fmt_int(c.n),
        pct(c.accuracy),
        auc(c.macro_roc_auc)
    );
    let t = Table {
        header: [
            "class",
            "galaxies",
            "precision",
            "recall",
            "ROC AUC (one vs rest)",
        ]
        .map(String::from)
        .to_vec(),
        rows: c
            .classes
            .iter()
            .map(|k| {
                vec![
                    k.class.to_string(),
                    fmt_int(k.support),
                    pct(k.precision),
                    pct(k.recall),
                    auc(k.roc_auc),
                ]
            })
            .collect(),
    };
    p.table(&t, &[0]);
    p.html.push_str(
        "<p class=\"note\">The predicted class is the highest score. Precision: of the galaxies \
         predicted as a class, the share that are; recall: of a class's galaxies, the share \
         predicted as it. ROC AUC: the chance that a galaxy of the class scores higher than one \
         of another (ties count half). Galaxies with a non-finite score or a label that is not a \
         class index are left out.</p>\n",
    );
    let classes: Vec<String> = (0..c.confusion.len()).map(|k| k.to_string()).collect();
    p.figure(Figure {
        id: format!("{id}-confusion"),
        title: "Confusion matrix".into(),
        caption: format!(
            "Galaxies by true class (rows) and predicted class (columns); colour = the cell's \
             share of its row, so the diagonal shows each class's recall. {} galaxies.",
            fmt_int(c.n)
        ),
        size: (620, 560),
        plot: Plot::Confusion(Confusion {
            classes,
            counts: c.confusion.clone(),
        }),
    })?;
    if let Some((col, labels)) = pred.and_then(Predictions::class_scores) {
        let width = col.per_galaxy();
        let curves: Vec<(String, Vec<(f64, f64)>)> = c
            .classes
            .iter()
            .take(ROC_CLASSES)
            .filter(|k| k.roc_auc.is_finite())
            .map(|k| {
                let pairs = one_vs_rest(&col.values, width, &labels, k.class);
                (
                    format!("class {} (AUC {:.3})", k.class, k.roc_auc),
                    roc_curve(&pairs),
                )
            })
            .collect();
        if !curves.is_empty() {
            p.figure(Figure {
                id: format!("{id}-roc"),
                title: "ROC curves, one class against the rest".into(),
                caption: format!(
                    "True against false positive rate as the threshold on a class's score falls; \
                     grey: chance.{}",
                    if c.classes.len() > ROC_CLASSES {
                        format!(" The first {ROC_CLASSES} of {} classes.", c.classes.len())
                    } else {
                        String::new()
                    }
                ),
                size: (620, 560),
                plot: Plot::Roc(Roc { curves }),
            })?;
        }
    }
    Ok(())
}

fn rank_table(p: &mut Page, run: &Run, opts: &ReportOptions) {
    let slow: std::collections::HashSet<usize> = stragglers(&run.reports).into_iter().collect();
    let t0 = run.started_at();
    let mut order: Vec<&RankReport> = run.reports.iter().collect();
    let capped = order.len() > opts.max_table_rows;
    if capped {
        order.sort_by(|a, b| b.wall_time_s.total_cmp(&a.wall_time_s));
        order.truncate(opts.max_table_rows);
        let _ = write!(
            p.html,
            "<p class=\"note\">{} ranks: the {} slowest by wall time are listed, slowest first; \
             every rank is in combined_data.json.</p>",
            fmt_int(run.reports.len() as u64),
            opts.max_table_rows
        );
    }
    let speculated: Vec<String> = run
        .reports
        .iter()
        .filter(|r| r.speculated)
        .map(|r| r.rank.to_string())
        .collect();
    if !speculated.is_empty() {
        let _ = write!(
            p.html,
            "<p class=\"note\">Speculated (ran long, so a second copy was started; the first copy \
             to finish counted, the other's outputs were discarded): ranks {}.</p>",
            speculated.join(", ")
        );
    }
    p.html.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>rank</th><th class=\"l\">host</th><th class=\"l\">partitions</th>\
         <th>galaxies</th><th>start (s)</th><th>wall (s)</th><th>download (s)</th><th>decode (s)</th>\
         <th>inference (s)</th><th>upload (s)</th><th>peak MB</th><th>Mbit/s</th><th>galaxies/s</th>\
         <th>threads</th><th class=\"l\">kernels</th></tr></thead><tbody>\n",
    );
    for r in order {
        let parts = match &r.data_path {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) if a.len() == 1 => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            serde_json::Value::Array(a) => format!("{} partitions", a.len()),
            _ => String::new(),
        };
        let _ = writeln!(
            p.html,
            "<tr{}><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.2}</td>\
             <td>{:.2}{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.0}</td>\
             <td>{:.1}</td><td>{:.1}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            if slow.contains(&r.rank) { " class=\"slow\"" } else { "" },
            if r.speculated {
                format!("{} (speculated)", r.rank)
            } else {
                r.rank.to_string()
            },
            esc(&r.host),
            esc(&parts),
            r.galaxies,
            r.started_at - t0,
            r.wall_time_s,
            if slow.contains(&r.rank) { " ▲" } else { "" },
            r.download_s,
            r.decode_s,
            r.total_cpu_time,
            r.upload_s,
            r.total_cpu_memory,
            r.throughput_bps / 1e6,
            r.sample_persec,
            r.threads,
            esc(&r.kernels),
        );
    }
    for f in run.summary.failed.iter().take(opts.max_table_rows) {
        let _ = writeln!(
            p.html,
            "<tr class=\"fail\"><td>{}</td><td class=\"l\">{}</td><td class=\"l\" colspan=\"13\">failed: {}</td></tr>",
            f.rank,
            esc(&f.host),
            esc(&f.error)
        );
    }
    p.html.push_str("</tbody></table></div>\n");
}

fn sweep_figures(means: &[MeanRow]) -> Vec<Figure> {
    let mut figs = Vec::new();
    let distinct = |f: fn(&MeanRow) -> f64| {
        let mut v: Vec<f64> = means.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.len()
    };
    let series = |key: fn(&MeanRow) -> String,
                  x: fn(&MeanRow) -> f64,
                  y: fn(&MeanRow) -> f64|
     -> Vec<(String, Vec<(f64, f64)>)> {
        let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for m in means {
            let k = key(m);
            let pt = (x(m), y(m));
            if !(pt.0.is_finite() && pt.1.is_finite()) {
                continue;
            }
            match out.iter_mut().find(|s| s.0 == k) {
                Some(s) => s.1.push(pt),
                None => out.push((k, vec![pt])),
            }
        }
        for s in &mut out {
            s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    };
    type Of<T> = fn(&MeanRow) -> T;
    // Every sweep figure: inference time and throughput per rank, then one whole-run measure.
    let figure = |id: &str,
                  title: &str,
                  caption: &str,
                  x_label: &str,
                  (key, x): (Of<String>, Of<f64>),
                  (last_title, last_unit, last): (&str, &str, Of<f64>)| {
        let panel = |title: &str, y_label: &str, y: Of<f64>| Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: series(key, x, y),
        };
        Figure {
            id: id.into(),
            title: title.into(),
            caption: caption.into(),
            size: (1140, 380),
            plot: Plot::Sweep(Sweep {
                panels: vec![
                    panel("inference time per rank", "seconds", |m| m.total_cpu_time),
                    panel("throughput per rank", "Mbit/s", |m| m.throughput_bps / 1e6),
                    panel(last_title, last_unit, last),
                ],
            }),
        }
    };
    if distinct(|m| m.key.data_gb) >= 2 {
        figs.push(figure(
            "sweep-data-size",
            "Against data size",
            "Means over repetitions after the IQR filter; one line per partition size and batch \
             size. Inference time and throughput are per rank (the original's total_cpu_time \
             and throughput_bps); the workflow duration is the whole run's measured wall time.",
            "data (GB)",
            (
                |m| format!("{} MB, batch {}", m.key.partition_mb, m.key.batch_size),
                |m| m.key.data_gb,
            ),
            ("workflow duration", "seconds", |m| m.wall_time_s),
        ));
    }
    if distinct(|m| m.key.partition_mb) >= 2 {
        figs.push(figure(
            "sweep-partition-size",
            "Against partition size",
            "Means over repetitions after the IQR filter; one line per batch size and data \
             size. A bigger partition is more work per rank and fewer ranks.",
            "partition (MB)",
            (
                |m| format!("batch {}, {} GB", m.key.batch_size, m.key.data_gb),
                |m| m.key.partition_mb,
            ),
            ("workflow duration", "seconds", |m| m.wall_time_s),
        ));
    }
    if distinct(|m| m.key.batch_size as f64) >= 2 {
        figs.push(figure(
            "sweep-batch-size",
            "Against batch size",
            "Means over repetitions after the IQR filter; one line per partition size and \
             data size.",
            "batch size",
            (
                |m| format!("{} MB, {} GB", m.key.partition_mb, m.key.data_gb),
                |m| m.key.batch_size as f64,
            ),
            ("galaxies per wall second", "galaxies/s", |m| {
                m.galaxies_per_s
            }),
        ));
    }
    figs
}

/// Build the report of one or more runs.
pub fn build(runs: &[Run], opts: &ReportOptions) -> Result<Report> {
    let mut p = Page {
        html: String::with_capacity(1 << 20),
        figures: Vec::new(),
    };
    let _ = writeln!(
        p.html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>",
        esc(&opts.title),
        esc(&opts.title)
    );
    let rows = run_rows(runs);
    let means = mean_rows(&rows);
    if runs.len() > 1 {
        let _ = writeln!(
            p.html,
            "<p>{} runs in {} configurations. Contents: <a href=\"#stats\">tables</a>{}{}</p>",
            runs.len(),
            means.len(),
            if means.len() > 1 {
                " · <a href=\"#sweeps\">sweeps</a>"
            } else {
                ""
            },
            (0..runs.len().min(opts.detail_runs))
                .map(|i| format!(" · <a href=\"#{}\">run {}</a>", slug(i), i + 1))
                .collect::<String>()
        );
    }
    for (i, run) in runs.iter().enumerate().take(opts.detail_runs) {
        run_section(&mut p, i, run, opts)?;
    }
    if runs.len() > opts.detail_runs {
        let _ = writeln!(
            p.html,
            "<p class=\"note\">Runs {}–{} are in the tables below only.</p>",
            opts.detail_runs + 1,
            runs.len()
        );
    }
    let figs = sweep_figures(&means);
    if !figs.is_empty() {
        p.html.push_str("<h2 id=\"sweeps\">Sweeps</h2>\n");
        for f in figs {
            p.figure(f)?;
        }
    }
    p.html
        .push_str("<h2 id=\"stats\">Tables (the original's stats)</h2>\n");
    p.html.push_str("<h3>Per run</h3>\n");
    p.table(&Table::per_run(&rows), &[8, 13]);
    p.html.push_str("<h3>Means over repeated runs</h3>\n");
    p.table(&Table::means(&means), &[3]);
    p.html.push_str("<h3>Workflow durations (measured)</h3>\n");
    p.table(&Table::workflow(&means), &[3]);
    p.html.push_str(
        "<p class=\"note\">Per-run values are means over the run's ranks and means over runs are \
         means over repetitions, each after dropping values outside [Q1 − 1.5·IQR, Q3 + 1.5·IQR] \
         (quartiles by linear interpolation, as numpy/pandas; each column on its own). \
         total_bits is a sum over ranks. 1 MB = 2<sup>20</sup> bytes, 1 GB = 2<sup>30</sup> bytes.</p>\n",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let _ = writeln!(
        p.html,
        "<footer>Made by cai-report {} on {}. Self-contained: no scripts, no external resources.</footer>\n</body></html>",
        env!("CARGO_PKG_VERSION"),
        utc(now)
    );
    Ok(Report {
        html: p.html,
        figures: p.figures,
    })
}

/// Read the runs at `results`, write their report to `out` (atomically, creating its
/// folder) and, with `png`, each figure as a PNG there; returns the number of figures.
/// What `cai report` and the Python package's `cai.report` do.
pub async fn write_report(
    results: &[String],
    out: &std::path::Path,
    png: Option<&std::path::Path>,
    opts: &ReportOptions,
) -> Result<usize> {
    let runs = crate::load::load_all(results, true).await?;
    let report = build(&runs, opts)?;
    cai_core::storage::write_file_atomic(out, report.html.as_bytes())?;
    if let Some(dir) = png {
        write_pngs(&report.figures, dir)?;
    }
    Ok(report.figures.len())
}

/// Write each figure as `<dir>/<id>.png`; returns the paths written.
pub fn write_pngs(figures: &[Figure], dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let ioerr = |path: &std::path::Path, source| crate::Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| ioerr(dir, e))?;
    let mut out = Vec::new();
    for f in figures {
        let path = dir.join(format!("{}.png", f.id));
        std::fs::write(&path, f.to_png()?).map_err(|e| ioerr(&path, e))?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(rank: usize, wall: f64, mem: f64) -> RankReport {
        RankReport {
            rank,
            wall_time_s: wall,
            started_at: 100.0,
            ended_at: 100.0 + wall,
            total_cpu_memory: mem,
            total_cpu_time: wall * 0.5,
            download_s: wall * 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn cost_hand_computed() {
        // The original's 25 MB row: 517 requests × 6.55 s × 2.8 GB → $0.158 (their $0.16).
        let r: Vec<RankReport> = (0..517).map(|i| rep(i, 6.55, 0.0)).collect();
        let c = lambda_cost(&r, Some(2.8 * 1024.0));
        assert!((c.gb_s - 517.0 * 6.55 * 2.8).abs() < 1e-6);
        assert!((c.usd - 0.15814).abs() < 1e-4, "{c:?}");
        // Peak RSS is used when no memory is given, with the 128 MB floor.
        let c = lambda_cost(&[rep(0, 10.0, 64.0), rep(1, 10.0, 2048.0)], None);
        assert!((c.gb_s - (10.0 * 0.125 + 10.0 * 2.0)).abs() < 1e-12);
        // The report's note prints the prices as the original wrote them.
        assert_eq!(PRICES.gb_second(Arch::X86_64).to_string(), "0.0000166667");
        assert_eq!(PRICES.lambda_request.to_string(), "0.0000002");
    }

    #[test]
    fn stragglers_by_mad_with_floor() {
        // walls 10,10,12,10,30: median 10, |dev| 0,0,2,0,20 → MAD 0 → floor 1.25·10 = 12.5.
        let walls = [10.0, 10.0, 12.0, 10.0, 30.0];
        let r: Vec<RankReport> = walls
            .iter()
            .enumerate()
            .map(|(i, &w)| rep(i, w, 1.0))
            .collect();
        assert_eq!(straggler_threshold(&walls), 12.5);
        assert_eq!(stragglers(&r), vec![4]);
        // walls 4,10,12,14,40: median 12, |dev| 8,2,0,2,28 → MAD 2 → 12 + 3·1.4826·2 = 20.8956.
        let t = straggler_threshold(&[4.0, 10.0, 12.0, 14.0, 40.0]);
        assert!((t - 20.8956).abs() < 1e-9, "{t}");
    }

    #[test]
    fn timeline_groups_ranks() {
        let reports: Vec<RankReport> = (0..10).map(|i| rep(i, 1.0 + i as f64, 1.0)).collect();
        let run = Run {
            location: "x".into(),
            plan: None,
            summary: cai_core::summary::Summary::from_reports("x", 10, &reports, vec![]),
            reports,
            failures: vec![],
            predictions: None,
        };
        let t = timeline(&run, 4);
        assert_eq!(t.ranks_per_row, 3);
        assert_eq!(t.rows.len(), 4);
        // Row 0 = ranks 0..3, walls 1,2,3: mean inference 0.5·2 = 1, whisker to 3 s.
        assert!((t.rows[0].phases[2] - 1.0).abs() < 1e-12);
        assert_eq!(t.rows[0].span, Some((0.0, 3.0)));
        let one = timeline(&run, 100);
        assert_eq!((one.ranks_per_row, one.rows.len()), (1, 10));
        assert!(one.rows[0].span.is_none());
    }

    #[test]
    fn the_rank_table_marks_speculated_ranks() {
        let mut reports: Vec<RankReport> = (0..3).map(|i| rep(i, 1.0, 1.0)).collect();
        reports[1].speculated = true;
        let run = Run {
            location: "x".into(),
            plan: None,
            summary: cai_core::summary::Summary::from_reports("x", 3, &reports, vec![]),
            reports,
            failures: vec![],
            predictions: None,
        };
        assert_eq!(run.summary.speculated_ranks, vec![1]);
        let mut p = Page {
            html: String::new(),
            figures: Vec::new(),
        };
        rank_table(&mut p, &run, &ReportOptions::default());
        assert!(p.html.contains("Speculated"), "{}", p.html);
        assert!(p.html.contains("<td>1 (speculated)</td>"), "{}", p.html);
        assert!(!p.html.contains("<td>0 (speculated)</td>"));
    }

    #[test]
    fn escaping_and_inline_svg() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let s = inline_svg(
            "<svg width=\"10\" height=\"10\" viewBox=\"0 0 10 10\" xmlns=\"http://www.w3.org/2000/svg\">\n</svg>",
            "a<b",
        );
        assert!(!s.contains("http"));
        assert!(s.starts_with("<svg role=\"img\" aria-label=\"a&lt;b\" width"));
    }
}
