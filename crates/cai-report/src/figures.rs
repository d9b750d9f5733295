//! Figures, drawn once with `plotters` onto any backend: inline SVG for the HTML report
//! (text stays `<text>`, set by the browser's sans-serif) and PNG for papers (text
//! rasterised with the embedded DejaVu Sans through plotters' `ab_glyph` feature, so no
//! system font library is needed).
//!
//! Kinds: a [`Density`] map (2D histogram coloured by log count, viridis), a per-rank
//! [`Timeline`], [`Sweep`] panels (a measure against data size or batch size), and a
//! classifier's [`Confusion`] matrix and [`Roc`] curves.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// DejaVu Sans (fonts-dejavu-core; Bitstream Vera licence, see assets/).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot {
            figure: "(font)".into(),
            reason: "the embedded DejaVu Sans could not be parsed".into(),
        })
    }
}

/// Viridis, five anchors, linear in between; `t` in 0..=1.
pub fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    let mix = |p: f64, q: f64| (p + f * (q - p)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Axis tick text: at most three decimals, no trailing zeros, no negative zero.
fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "-0" | "" => "0".to_string(),
        _ => s.to_string(),
    }
}

/// Colours of series and phases (colour-blind-safe Okabe–Ito).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(120, 120, 120),
];

/// A 2D histogram of (x, y) pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Density {
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// X range.
    pub x_range: (f64, f64),
    /// Y range.
    pub y_range: (f64, f64),
    /// Bins per axis.
    pub bins: usize,
    /// Counts, row-major `[iy * bins + ix]`.
    pub counts: Vec<u32>,
    /// Pairs outside the ranges (not drawn).
    pub outside: u64,
    /// Draw y = x.
    pub diagonal: bool,
    /// Horizontal reference lines (value, label).
    pub hlines: Vec<(f64, String)>,
}

fn finite_quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::stats::quantile(v, p)
}

impl Density {
    /// Bin pairs (non-finite ones skipped) into `bins`² cells over the given ranges.
    pub fn new(
        xs: &[f64],
        ys: &[f64],
        x_range: (f64, f64),
        y_range: (f64, f64),
        bins: usize,
    ) -> Self {
        let bins = bins.max(1);
        let mut counts = vec![0u32; bins * bins];
        let mut outside = 0;
        let (x0, x1) = x_range;
        let (y0, y1) = y_range;
        for (&x, &y) in xs.iter().zip(ys) {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            if x < x0 || x > x1 || y < y0 || y > y1 {
                outside += 1;
                continue;
            }
            let ix = (((x - x0) / (x1 - x0) * bins as f64) as usize).min(bins - 1);
            let iy = (((y - y0) / (y1 - y0) * bins as f64) as usize).min(bins - 1);
            counts[iy * bins + ix] = counts[iy * bins + ix].saturating_add(1);
        }
        Density {
            x_label: String::new(),
            y_label: String::new(),
            x_range,
            y_range,
            bins,
            counts,
            outside,
            diagonal: false,
            hlines: Vec::new(),
        }
    }

    /// Predicted against true redshift, one shared range (0.1 %..99.9 % of both, padded).
    pub fn predicted_vs_true(z_pred: &[f32], z_true: &[f32], bins: usize) -> Self {
        let xs: Vec<f64> = z_true.iter().map(|&v| v as f64).collect();
        let ys: Vec<f64> = z_pred.iter().map(|&v| v as f64).collect();
        let mut all: Vec<f64> = xs
            .iter()
            .chain(&ys)
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite_quantile(&mut all, 0.001).min(0.0);
        let hi = crate::stats::quantile(&all, 0.999);
        let hi = if hi.is_finite() && hi > lo {
            hi
        } else {
            lo + 1.0
        };
        let pad = 0.02 * (hi - lo);
        let r = (lo - if lo < 0.0 { pad } else { 0.0 }, hi + pad);
        let mut d = Density::new(&xs, &ys, r, r, bins);
        d.x_label = "true (spectroscopic) z".into();
        d.y_label = "predicted z".into();
        d.diagonal = true;
        d
    }

    /// Δz = (z_pred − z_true)/(1 + z_true) against z_true, with 0 and ±0.05 marked.
    pub fn delta_z(z_pred: &[f32], z_true: &[f32], bins: usize) -> Self {
        let xs: Vec<f64> = z_true.iter().map(|&v| v as f64).collect();
        let ys: Vec<f64> = z_pred
            .iter()
            .zip(z_true)
            .map(|(&p, &t)| (p as f64 - t as f64) / (1.0 + t as f64))
            .collect();
        let mut fx: Vec<f64> = xs.iter().copied().filter(|v| v.is_finite()).collect();
        let x0 = finite_quantile(&mut fx, 0.001).min(0.0);
        let x1 = crate::stats::quantile(&fx, 0.999);
        let x1 = if x1.is_finite() && x1 > x0 {
            x1
        } else {
            x0 + 1.0
        };
        let mut fy: Vec<f64> = ys.iter().copied().filter(|v| v.is_finite()).collect();
        let ylo = finite_quantile(&mut fy, 0.005);
        let yhi = crate::stats::quantile(&fy, 0.995);
        let m = ylo.abs().max(yhi.abs()).max(0.1) * 1.05;
        let m = if m.is_finite() { m } else { 1.0 };
        let mut d = Density::new(&xs, &ys, (x0, x1 + 0.02 * (x1 - x0)), (-m, m), bins);
        d.x_label = "true (spectroscopic) z".into();
        d.y_label = "Δz = (z_pred − z_true) / (1 + z_true)".into();
        d.hlines = vec![
            (0.0, "Δz = 0".into()),
            (0.05, "|Δz| = 0.05 (outlier)".into()),
            (-0.05, String::new()),
        ];
        d
    }

    /// Largest bin count.
    pub fn max_count(&self) -> u32 {
        self.counts.iter().copied().max().unwrap_or(0)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let (w, _) = area.dim_in_pixel();
        let (main, bar) = area.split_horizontally(w.saturating_sub(95));
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let mut chart = ChartBuilder::on(&main)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        let max = self.max_count().max(1) as f64;
        let n = self.bins;
        let (dx, dy) = ((x1 - x0) / n as f64, (y1 - y0) / n as f64);
        chart.draw_series(self.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(
            |(i, &c)| {
                let (ix, iy) = ((i % n) as f64, (i / n) as f64);
                let t = (c as f64).ln_1p() / max.ln_1p();
                Rectangle::new(
                    [
                        (x0 + ix * dx, y0 + iy * dy),
                        (x0 + (ix + 1.0) * dx, y0 + (iy + 1.0) * dy),
                    ],
                    viridis(t).filled(),
                )
            },
        ))?;
        let mut labelled = false;
        if self.diagonal {
            let lo = x0.max(y0);
            let hi = x1.min(y1);
            chart
                .draw_series(LineSeries::new(
                    vec![(lo, lo), (hi, hi)],
                    RED.stroke_width(2),
                ))?
                .label("y = x")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
            labelled = true;
        }
        for (v, label) in &self.hlines {
            let style = if *v == 0.0 {
                RED.stroke_width(2)
            } else {
                RED.mix(0.6).stroke_width(1)
            };
            // Unlabelled: data fills the whole plane, a legend box would hide some; the
            // caption names the lines.
            let _ = label;
            chart.draw_series(LineSeries::new(vec![(x0, *v), (x1, *v)], style))?;
        }
        if labelled {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font((FAMILY, 14))
                .draw()?;
        }
        // Colour bar: galaxies per bin, log scale.
        let mut cb = ChartBuilder::on(&bar)
            .margin_top(12)
            .margin_bottom(56)
            .margin_right(8)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..1f64, (1f64..max.max(2.0)).log_scale())?;
        cb.configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FAMILY, 13))
            .y_desc("galaxies per bin")
            .axis_desc_style((FAMILY, 14))
            .draw()?;
        let steps = 48;
        let top = max.max(2.0);
        cb.draw_series((0..steps).map(|i| {
            let a = top.powf(i as f64 / steps as f64);
            let b = top.powf((i + 1) as f64 / steps as f64);
            let t = a.ln_1p() / top.ln_1p();
            Rectangle::new([(0.0, a), (1.0, b)], viridis(t).filled())
        }))?;
        Ok(())
    }
}

/// One row of a timeline: one rank, or the mean of a group of ranks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimelineRow {
    /// Seconds from the run's start to the row's start.
    pub start: f64,
    /// Phase seconds: download, decode, inference, upload, other (wall − the four).
    pub phases: [f64; 5],
    /// For a group: earliest start and latest end (a whisker); None for one rank.
    pub span: Option<(f64, f64)>,
}

/// Download / decode / inference / upload per rank, stragglers marked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// Rows from the first rank down.
    pub rows: Vec<TimelineRow>,
    /// Ranks per row (1: one row per rank).
    pub ranks_per_row: usize,
    /// Stragglers: (row, seconds from the run start to its end, rank).
    pub stragglers: Vec<(usize, f64, usize)>,
}

/// Names of the timeline's phases, in drawing order.
pub const PHASES: [&str; 5] = ["download", "decode", "inference", "upload", "other"];

impl Timeline {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let n = self.rows.len().max(1) as f64;
        let end = self
            .rows
            .iter()
            .map(|r| {
                r.span
                    .map_or(r.start + r.phases.iter().sum::<f64>(), |s| s.1)
            })
            .fold(0.0, f64::max)
            .max(1e-3);
        let y_desc = if self.ranks_per_row > 1 {
            format!(
                "rank (rows of {} ranks: mean bars, min–max whiskers)",
                self.ranks_per_row
            )
        } else {
            "rank".to_string()
        };
        let rpr = self.ranks_per_row.max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(62)
            .build_cartesian_2d(0f64..end * 1.3, n..0f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .x_desc("seconds since the run started")
            .y_desc(y_desc.as_str())
            .y_label_formatter(&|v| format!("{:.0}", v * rpr))
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        let h = 0.8;
        for (p, name) in PHASES.iter().enumerate() {
            let color = if p == 4 {
                PALETTE[6].mix(0.5)
            } else {
                PALETTE[p].mix(1.0)
            };
            chart
                .draw_series(self.rows.iter().enumerate().filter_map(|(i, r)| {
                    let len = r.phases[p];
                    if len <= 0.0 {
                        return None;
                    }
                    let s = r.start + r.phases[..p].iter().sum::<f64>();
                    let y = i as f64 + (1.0 - h) / 2.0;
                    Some(Rectangle::new([(s, y), (s + len, y + h)], color.filled()))
                }))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart.draw_series(self.rows.iter().enumerate().filter_map(|(i, r)| {
            r.span.map(|(a, b)| {
                let y = i as f64 + 0.5;
                PathElement::new(vec![(a, y), (b, y)], BLACK.mix(0.5).stroke_width(1))
            })
        }))?;
        if !self.stragglers.is_empty() {
            chart
                .draw_series(self.stragglers.iter().map(|&(row, t, _)| {
                    TriangleMarker::new((t, row as f64 + 0.5), 6, RED.filled())
                }))?
                .label("straggler")
                .legend(|(x, y)| TriangleMarker::new((x + 6, y), 6, RED.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font((FAMILY, 14))
            .draw()?;
        Ok(())
    }
}

/// One panel of a sweep figure: series of (x, y) points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Named series, points sorted by x.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Panels side by side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sweep {
    /// The panels.
    pub panels: Vec<Panel>,
}

fn span(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        })
}

/// Tick text of a sweep axis: at most four significant digits (no `0.6000000000000001`),
/// scientific below 0.01 and from 10,000 on.
fn sweep_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        "0".to_string()
    } else if v.abs() >= 1e4 || v.abs() < 1e-2 {
        format!("{v:.1e}")
    } else {
        format!("{}", crate::stats::round_sig(v, 4))
    }
}

impl Panel {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let pts = || self.series.iter().flat_map(|(_, p)| p.iter());
        let (x0, x1) = span(pts().map(|p| p.0));
        let (_, y1) = span(pts().map(|p| p.1));
        if !x0.is_finite() || !y1.is_finite() {
            return Ok(());
        }
        let log_x = x0 > 0.0 && x1 / x0 >= 8.0;
        let y_top = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
        let mut b = ChartBuilder::on(area);
        b.margin(10)
            .caption(self.title.as_str(), (FAMILY, 16))
            .x_label_area_size(44)
            .y_label_area_size(70);
        let fmt = |v: &f64| sweep_tick(*v);
        macro_rules! body {
            ($chart:ident) => {{
                $chart
                    .configure_mesh()
                    .light_line_style(WHITE.mix(0.0))
                    .bold_line_style(BLACK.mix(0.08))
                    .x_desc(self.x_label.as_str())
                    .y_desc(self.y_label.as_str())
                    .y_label_formatter(&fmt)
                    .x_label_formatter(&fmt)
                    .x_labels(6)
                    .label_style((FAMILY, 13))
                    .axis_desc_style((FAMILY, 14))
                    .draw()?;
                for (k, (name, p)) in self.series.iter().enumerate() {
                    let c = PALETTE[k % PALETTE.len()];
                    $chart.draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))?;
                    $chart
                        .draw_series(p.iter().map(|&q| Circle::new(q, 4, c.filled())))?
                        .label(name.as_str())
                        .legend(move |(x, y)| Circle::new((x + 6, y), 4, c.filled()));
                }
                if self.series.len() > 1 || !self.series.iter().all(|s| s.0.is_empty()) {
                    $chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperLeft)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK.mix(0.4))
                        .label_font((FAMILY, 13))
                        .draw()?;
                }
            }};
        }
        if log_x {
            let mut chart = b.build_cartesian_2d((x0 / 1.3..x1 * 1.3).log_scale(), 0f64..y_top)?;
            body!(chart);
        } else {
            let pad = if x1 > x0 {
                0.08 * (x1 - x0)
            } else {
                0.5 * x0.abs().max(1.0)
            };
            let mut chart = b.build_cartesian_2d(x0 - pad..x1 + pad, 0f64..y_top)?;
            body!(chart);
        }
        Ok(())
    }
}

impl Sweep {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let parts = area.split_evenly((1, self.panels.len().max(1)));
        for (p, a) in self.panels.iter().zip(parts.iter()) {
            p.draw(a)?;
        }
        Ok(())
    }
}

/// A confusion matrix: galaxy counts by true class (rows) and predicted class (columns),
/// each cell coloured by its share of the row (the class's recall on the diagonal).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Confusion {
    /// Class names, in index order.
    pub classes: Vec<String>,
    /// `counts[true][predicted]`.
    pub counts: Vec<Vec<u64>>,
}

/// Largest number of classes whose cells carry their count as text.
const CONFUSION_TEXT_UP_TO: usize = 16;

impl Confusion {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let k = self.classes.len().max(1) as i32;
        // Rows from the top (class 0 first, as a table reads): row `t` sits at `y = k-1-t`.
        let name = |i: i32| {
            self.classes
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default()
        };
        let x_name = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => name(*i),
            SegmentValue::Last => String::new(),
        };
        let y_name = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => name(k - 1 - *i),
            SegmentValue::Last => String::new(),
        };
        // `(0..k-1).into_segmented()` has one segment per value of 0..=k-1: k cells.
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d((0..k - 1).into_segmented(), (0..k - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .x_labels(self.classes.len().min(24))
            .y_labels(self.classes.len().min(24))
            .x_label_formatter(&x_name)
            .y_label_formatter(&y_name)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        let text = self.classes.len() <= CONFUSION_TEXT_UP_TO;
        for (t, row) in self.counts.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &c) in row.iter().enumerate() {
                let share = c as f64 / total;
                let (x, y) = (p as i32, k - 1 - t as i32);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    viridis(share).filled(),
                )))?;
                if text {
                    let colour = if share > 0.6 { &BLACK } else { &WHITE };
                    chart.draw_series(std::iter::once(Text::new(
                        c.to_string(),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        (FAMILY, 15).into_font().color(colour).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    )))?;
                }
            }
        }
        Ok(())
    }
}

/// One-vs-rest ROC curves, one per class, with the chance diagonal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Roc {
    /// Per class: its legend label (name and AUC) and its (false, true positive rate) points.
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

impl Roc {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DResult<DB> {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1.0001f64)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.08))
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.35).stroke_width(1),
        ))?;
        for (i, (label, points)) in self.curves.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FAMILY, 14))
            .draw()?;
        Ok(())
    }
}

type DResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// What a figure shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Plot {
    /// A density map.
    Density(Density),
    /// A per-rank timeline.
    Timeline(Timeline),
    /// Sweep panels.
    Sweep(Sweep),
    /// A confusion matrix.
    Confusion(Confusion),
    /// ROC curves.
    Roc(Roc),
}

/// A figure: an id (file name of its PNG), a title, a caption, a size and what to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Short id, used for `<id>.png` and the HTML anchor.
    pub id: String,
    /// Title shown above it.
    pub title: String,
    /// What it shows and how it was made.
    pub caption: String,
    /// Pixels.
    pub size: (u32, u32),
    /// The drawing.
    pub plot: Plot,
}

impl Figure {
    fn draw_on<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let err = |e: String| Error::Plot {
            figure: self.id.clone(),
            reason: e,
        };
        area.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        match &self.plot {
            Plot::Density(d) => d.draw(area),
            Plot::Timeline(t) => t.draw(area),
            Plot::Sweep(s) => s.draw(area),
            Plot::Confusion(c) => c.draw(area),
            Plot::Roc(r) => r.draw(area),
        }
        .map_err(|e| err(e.to_string()))?;
        area.present().map_err(|e| err(e.to_string()))
    }

    /// The figure as an SVG document (text as `<text>`, sans-serif).
    pub fn to_svg(&self) -> Result<String> {
        register_font()?;
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size).into_drawing_area();
            self.draw_on(&root)?;
        }
        Ok(s)
    }

    /// The figure as RGB pixels (`size.0 × size.1 × 3`).
    pub fn to_rgb(&self) -> Result<Vec<u8>> {
        register_font()?;
        let (w, h) = self.size;
        let mut buf = vec![255u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, self.size).into_drawing_area();
            self.draw_on(&root)?;
        }
        Ok(buf)
    }

    /// The figure as a PNG file's bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let rgb = self.to_rgb()?;
        let perr = |e: png::EncodingError| Error::Plot {
            figure: self.id.clone(),
            reason: format!("PNG encoding: {e}"),
        };
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.size.0, self.size.1);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(perr)?;
            w.write_image_data(&rgb).map_err(perr)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_and_outside() {
        let d = Density::new(
            &[0.0, 0.49, 0.5, 1.0, 2.0, f64::NAN],
            &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            (0.0, 1.0),
            (0.0, 1.0),
            2,
        );
        // (0,0),(0.49,0) → bin (0,0); (0.5,1) and (1,1) → bin (1,1); 2.0 outside; NaN skipped.
        assert_eq!(d.counts, vec![2, 0, 0, 2]);
        assert_eq!(d.outside, 1);
        assert_eq!(d.max_count(), 2);
    }

    #[test]
    fn sweep_ticks_are_short() {
        assert_eq!(sweep_tick(0.6000000000000001), "0.6");
        assert_eq!(sweep_tick(0.8999999999999999), "0.9");
        assert_eq!(sweep_tick(0.00045), "4.5e-4");
        assert_eq!(sweep_tick(25.0), "25");
        assert_eq!(sweep_tick(123456.0), "1.2e5");
        assert_eq!(sweep_tick(0.0), "0");
    }

    #[test]
    fn viridis_ends() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
    }

    fn sample_figures() -> Vec<Figure> {
        let t: Vec<f32> = (0..500).map(|i| (i % 50) as f32 / 60.0).collect();
        let p: Vec<f32> = t
            .iter()
            .enumerate()
            .map(|(i, z)| z + ((i % 7) as f32 - 3.0) * 0.01)
            .collect();
        vec![
            Figure {
                id: "pz".into(),
                title: "t".into(),
                caption: String::new(),
                size: (600, 500),
                plot: Plot::Density(Density::predicted_vs_true(&p, &t, 40)),
            },
            Figure {
                id: "tl".into(),
                title: "t".into(),
                caption: String::new(),
                size: (600, 400),
                plot: Plot::Timeline(Timeline {
                    rows: vec![
                        TimelineRow {
                            start: 0.0,
                            phases: [1.0, 0.5, 3.0, 0.2, 0.3],
                            span: None,
                        },
                        TimelineRow {
                            start: 0.5,
                            phases: [1.0, 0.5, 9.0, 0.2, 0.3],
                            span: Some((0.2, 12.0)),
                        },
                    ],
                    ranks_per_row: 1,
                    stragglers: vec![(1, 11.5, 1)],
                }),
            },
            Figure {
                id: "sw".into(),
                title: "t".into(),
                caption: String::new(),
                size: (900, 350),
                plot: Plot::Sweep(Sweep {
                    panels: vec![Panel {
                        title: "time".into(),
                        x_label: "batch".into(),
                        y_label: "s".into(),
                        series: vec![("25 MB".into(), vec![(32.0, 3.0), (512.0, 2.0)])],
                    }],
                }),
            },
            Figure {
                id: "cm".into(),
                title: "t".into(),
                caption: String::new(),
                size: (560, 480),
                plot: Plot::Confusion(Confusion {
                    classes: vec!["0".into(), "1".into(), "2".into()],
                    counts: vec![vec![5, 1, 0], vec![2, 7, 1], vec![0, 0, 9]],
                }),
            },
            Figure {
                id: "roc".into(),
                title: "t".into(),
                caption: String::new(),
                size: (560, 480),
                plot: Plot::Roc(Roc {
                    curves: vec![(
                        "class 0 (AUC 0.75)".into(),
                        vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)],
                    )],
                }),
            },
        ]
    }

    #[test]
    fn svg_has_text_and_no_namespace_needed_png_is_not_blank() {
        for f in sample_figures() {
            let svg = f.to_svg().unwrap();
            assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
            assert!(svg.contains("<text"), "{} has no text", f.id);
            assert!(svg.contains("<rect") || svg.contains("<polyline"));
            let rgb = f.to_rgb().unwrap();
            let non_white = rgb.chunks(3).filter(|p| p != &[255, 255, 255]).count();
            assert!(
                non_white > 1000,
                "{}: only {non_white} non-white pixels",
                f.id
            );
            let png = f.to_png().unwrap();
            assert_eq!(&png[1..4], b"PNG");
        }
    }
}
