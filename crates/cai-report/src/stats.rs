//! The original's statistics tables, filled from what runs measured.
//!
//! **Outlier rule.** Before any mean, values outside the Tukey fences
//! `[Q1 − 1.5·IQR, Q3 + 1.5·IQR]` (IQR = Q3 − Q1; a value on a fence is kept) are dropped.
//! Quartiles are by linear interpolation between order statistics (Hyndman–Fan type 7,
//! the default of numpy's `percentile` and pandas' `quantile`): for sorted `x[0..n]`,
//! `Q(p) = x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋])` with `h = (n − 1)·p`.
//! Each column is filtered on its own (a rank with an outlying memory peak still counts
//! for time). Non-finite values are dropped first.
//!
//! **Tables.**
//! - *Per run* ([`RunRow`], one per results location): the original's columns
//!   `partition (MB), data (GB), run, total_cpu_time (seconds), total_cpu_memory (MB),
//!   throughput_bps, total_bits`. The three measures are the filtered means over the run's
//!   ranks; `total_bits` is their sum. `run` numbers repetitions of the same
//!   (partition size, data size, batch size, engine) by start time, from 1.
//! - *Means over repeated runs* ([`MeanRow`]): per configuration, the filtered mean of the
//!   per-run values.
//! - *Workflow durations* ([`MeanRow`] again, other columns): the measured wall time of
//!   the whole run (first rank start to last rank end, `summary.json`), filtered mean, min
//!   and max over repetitions; the original typed these in by hand.
//!
//! Sizes: 1 MB = 2^20 bytes, 1 GB = 2^30 bytes (as the original's `25MB` partitions).

use std::fmt::Write as _;

use crate::load::Run;

/// Bytes in a MB (2^20).
pub const MB: f64 = 1_048_576.0;
/// Bytes in a GB (2^30).
pub const GB: f64 = 1_073_741_824.0;

/// Quantile `p` (0..=1) of sorted, finite values by linear interpolation (type 7).
/// NaN when empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * p.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

/// Tukey fences of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fences {
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Lowest value kept: Q1 − 1.5·IQR.
    pub lo: f64,
    /// Highest value kept: Q3 + 1.5·IQR.
    pub hi: f64,
}

/// The fences of the finite values, None when there are none.
pub fn iqr_fences(values: &[f64]) -> Option<Fences> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q1 = quantile(&v, 0.25);
    let q3 = quantile(&v, 0.75);
    let iqr = q3 - q1;
    Some(Fences {
        q1,
        q3,
        lo: q1 - 1.5 * iqr,
        hi: q3 + 1.5 * iqr,
    })
}

/// The finite values inside the fences, in their original order.
pub fn iqr_filter(values: &[f64]) -> Vec<f64> {
    let Some(f) = iqr_fences(values) else {
        return Vec::new();
    };
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x >= f.lo && *x <= f.hi)
        .collect()
}

/// Arithmetic mean; NaN when empty.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Mean after the IQR filter; NaN when nothing is left.
pub fn filtered_mean(values: &[f64]) -> f64 {
    mean(&iqr_filter(values))
}

/// Median of finite values; NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// One run in the original's per-run table, plus our columns.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Median partition size, MB (2^20 bytes), three significant digits.
    pub partition_mb: f64,
    /// Input data, GB (2^30 bytes), three significant digits.
    pub data_gb: f64,
    /// Repetition number of this configuration, from 1 by start time.
    pub run: usize,
    /// Filtered mean over ranks of inference seconds.
    pub total_cpu_time: f64,
    /// Filtered mean over ranks of peak memory, MB.
    pub total_cpu_memory: f64,
    /// Filtered mean over ranks of input bits per inference second.
    pub throughput_bps: f64,
    /// Input bits over all ranks.
    pub total_bits: u64,
    /// Galaxies per batch.
    pub batch_size: usize,
    /// Engine(s).
    pub engine: String,
    /// Ranks that finished.
    pub ranks: usize,
    /// Ranks that failed or are missing.
    pub failed: usize,
    /// Whole-run wall seconds (first start to last end).
    pub wall_time_s: f64,
    /// Galaxies predicted.
    pub galaxies: u64,
    /// Results location.
    pub results: String,
    /// Unix start time (orders repetitions).
    pub started_at: f64,
}

/// Configuration a run belongs to: rows with equal keys are repetitions.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub struct ConfigKey {
    /// Data GB.
    pub data_gb: f64,
    /// Partition MB.
    pub partition_mb: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Engine.
    pub engine: String,
}

impl RunRow {
    /// The configuration this run repeats.
    pub fn key(&self) -> ConfigKey {
        ConfigKey {
            data_gb: self.data_gb,
            partition_mb: self.partition_mb,
            batch_size: self.batch_size,
            engine: self.engine.clone(),
        }
    }
}

/// `x` rounded to `digits` significant digits: 12.6 GB and 0.000488 GB (a test's few
/// hundred KB) both keep their precision, and files a few header bytes apart fall together.
pub fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = digits - 1 - x.abs().log10().floor() as i32;
    if e >= 0 {
        let s = 10f64.powi(e);
        (x * s).round() / s
    } else {
        let s = 10f64.powi(-e);
        (x / s).round() * s
    }
}

/// A rounded size as the tables show it: shortest form (`25`, `12.6`, `0.000488`).
fn size(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        String::new()
    }
}

/// The per-run row of one run (`run` is set by [`run_rows`]).
pub fn run_row(r: &Run) -> RunRow {
    let col = |f: fn(&cai_core::report::RankReport) -> f64| -> f64 {
        filtered_mean(&r.reports.iter().map(f).collect::<Vec<_>>())
    };
    RunRow {
        partition_mb: round_sig(r.partition_bytes() as f64 / MB, 3),
        data_gb: round_sig(r.data_bytes() as f64 / GB, 3),
        run: 1,
        total_cpu_time: col(|x| x.total_cpu_time),
        total_cpu_memory: col(|x| x.total_cpu_memory),
        throughput_bps: col(|x| x.throughput_bps),
        total_bits: r.reports.iter().map(|x| x.total_bits).sum(),
        batch_size: r.batch_size(),
        engine: r.engine(),
        ranks: r.reports.len(),
        failed: r.summary.failed.len() + r.summary.missing_ranks.len(),
        wall_time_s: r.summary.wall_time_s,
        galaxies: r.summary.galaxies,
        results: r.location.clone(),
        started_at: r.started_at(),
    }
}

/// Per-run rows, sorted by configuration then start time, repetitions numbered.
pub fn run_rows(runs: &[Run]) -> Vec<RunRow> {
    let mut rows: Vec<RunRow> = runs.iter().map(run_row).collect();
    number_runs(&mut rows);
    rows
}

/// Sort rows by configuration and start time and number repetitions from 1.
pub fn number_runs(rows: &mut [RunRow]) {
    rows.sort_by(|a, b| {
        a.key()
            .partial_cmp(&b.key())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.started_at.total_cmp(&b.started_at))
    });
    let mut prev: Option<ConfigKey> = None;
    let mut n = 0;
    for row in rows.iter_mut() {
        let k = row.key();
        n = if prev.as_ref() == Some(&k) { n + 1 } else { 1 };
        row.run = n;
        prev = Some(k);
    }
}

/// Means over the repetitions of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanRow {
    /// The configuration.
    pub key: ConfigKey,
    /// Repetitions.
    pub runs: usize,
    /// Ranks (workers) of the first repetition.
    pub ranks: usize,
    /// Filtered mean of the runs' `total_cpu_time`.
    pub total_cpu_time: f64,
    /// Filtered mean of the runs' `total_cpu_memory`.
    pub total_cpu_memory: f64,
    /// Filtered mean of the runs' `throughput_bps`.
    pub throughput_bps: f64,
    /// Filtered mean of the runs' `total_bits`.
    pub total_bits: f64,
    /// Filtered mean of the runs' whole-run wall time.
    pub wall_time_s: f64,
    /// Shortest wall time.
    pub wall_min_s: f64,
    /// Longest wall time.
    pub wall_max_s: f64,
    /// Galaxies per wall second (mean galaxies / mean wall time).
    pub galaxies_per_s: f64,
}

/// Group numbered rows (as [`run_rows`] returns them) by configuration.
pub fn mean_rows(rows: &[RunRow]) -> Vec<MeanRow> {
    let mut out: Vec<MeanRow> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let k = rows[i].key();
        let mut j = i;
        while j < rows.len() && rows[j].key() == k {
            j += 1;
        }
        let g = &rows[i..j];
        let col = |f: fn(&RunRow) -> f64| filtered_mean(&g.iter().map(f).collect::<Vec<_>>());
        let walls: Vec<f64> = g.iter().map(|r| r.wall_time_s).collect();
        let wall = filtered_mean(&walls);
        let galaxies = mean(&g.iter().map(|r| r.galaxies as f64).collect::<Vec<_>>());
        out.push(MeanRow {
            key: k,
            runs: g.len(),
            ranks: g[0].ranks,
            total_cpu_time: col(|r| r.total_cpu_time),
            total_cpu_memory: col(|r| r.total_cpu_memory),
            throughput_bps: col(|r| r.throughput_bps),
            total_bits: col(|r| r.total_bits as f64),
            wall_time_s: wall,
            wall_min_s: walls.iter().copied().fold(f64::INFINITY, f64::min),
            wall_max_s: walls.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            galaxies_per_s: if wall > 0.0 {
                galaxies / wall
            } else {
                f64::NAN
            },
        });
        i = j;
    }
    out
}

/// A table: a header and rows of already formatted cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        String::new()
    }
}

impl Table {
    /// The per-run table: the original's seven columns first, then ours.
    pub fn per_run(rows: &[RunRow]) -> Self {
        Table {
            header: [
                "partition (MB)",
                "data (GB)",
                "run",
                "total_cpu_time (seconds)",
                "total_cpu_memory (MB)",
                "throughput_bps",
                "total_bits",
                "batch_size",
                "engine",
                "ranks",
                "failed",
                "wall_time (seconds)",
                "galaxies",
                "results",
            ]
            .map(String::from)
            .to_vec(),
            rows: rows
                .iter()
                .map(|r| {
                    vec![
                        size(r.partition_mb),
                        size(r.data_gb),
                        r.run.to_string(),
                        num(r.total_cpu_time, 3),
                        num(r.total_cpu_memory, 1),
                        num(r.throughput_bps, 0),
                        r.total_bits.to_string(),
                        r.batch_size.to_string(),
                        r.engine.clone(),
                        r.ranks.to_string(),
                        r.failed.to_string(),
                        num(r.wall_time_s, 2),
                        r.galaxies.to_string(),
                        r.results.clone(),
                    ]
                })
                .collect(),
        }
    }

    /// Means over repeated runs, after the IQR filter.
    pub fn means(rows: &[MeanRow]) -> Self {
        Table {
            header: [
                "partition (MB)",
                "data (GB)",
                "batch_size",
                "engine",
                "runs",
                "total_cpu_time (seconds)",
                "total_cpu_memory (MB)",
                "throughput_bps",
                "total_bits",
            ]
            .map(String::from)
            .to_vec(),
            rows: rows
                .iter()
                .map(|r| {
                    vec![
                        size(r.key.partition_mb),
                        size(r.key.data_gb),
                        r.key.batch_size.to_string(),
                        r.key.engine.clone(),
                        r.runs.to_string(),
                        num(r.total_cpu_time, 3),
                        num(r.total_cpu_memory, 1),
                        num(r.throughput_bps, 0),
                        num(r.total_bits, 0),
                    ]
                })
                .collect(),
        }
    }

    /// Whole-workflow durations per data size and partition size, measured.
    pub fn workflow(rows: &[MeanRow]) -> Self {
        Table {
            header: [
                "data (GB)",
                "partition (MB)",
                "batch_size",
                "engine",
                "workers",
                "runs",
                "duration (seconds)",
                "min (seconds)",
                "max (seconds)",
                "galaxies/s",
            ]
            .map(String::from)
            .to_vec(),
            rows: rows
                .iter()
                .map(|r| {
                    vec![
                        size(r.key.data_gb),
                        size(r.key.partition_mb),
                        r.key.batch_size.to_string(),
                        r.key.engine.clone(),
                        r.ranks.to_string(),
                        r.runs.to_string(),
                        num(r.wall_time_s, 2),
                        num(r.wall_min_s, 2),
                        num(r.wall_max_s, 2),
                        num(r.galaxies_per_s, 1),
                    ]
                })
                .collect(),
        }
    }

    /// RFC 4180 CSV (cells with `,`, `"` or a line break are quoted).
    pub fn to_csv(&self) -> String {
        let cell = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = line.iter().map(|c| cell(c)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// Aligned text: text columns left-aligned, numbers right-aligned, two spaces apart.
    pub fn to_text(&self) -> String {
        let ncol = self.header.len();
        let width = |c: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..ncol).map(width).collect();
        let numeric: Vec<bool> = (0..ncol)
            .map(|c| {
                self.rows.iter().all(|r| {
                    r.get(c)
                        .is_none_or(|s| s.is_empty() || s.parse::<f64>().is_ok())
                })
            })
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut s = String::new();
            for c in 0..ncol {
                let cell = line.get(c).map_or("", String::as_str);
                let pad = widths[c].saturating_sub(cell.chars().count());
                if c > 0 {
                    s.push_str("  ");
                }
                if numeric[c] {
                    let _ = write!(s, "{}{cell}", " ".repeat(pad));
                } else {
                    let _ = write!(s, "{cell}{}", " ".repeat(pad));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_by_linear_interpolation() {
        // numpy.percentile([1,2,3,4], [25,75]) = [1.75, 3.25]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.75), 3.25);
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&[5.0], 0.25), 5.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn iqr_filter_hand_computed() {
        // sorted 1,2,3,4,100: h(0.25)=1 → Q1=2, h(0.75)=3 → Q3=4, IQR 2, fences -1 .. 7.
        let v = [3.0, 100.0, 1.0, 2.0, 4.0];
        let f = iqr_fences(&v).unwrap();
        assert_eq!((f.q1, f.q3, f.lo, f.hi), (2.0, 4.0, -1.0, 7.0));
        assert_eq!(iqr_filter(&v), vec![3.0, 1.0, 2.0, 4.0]);
        assert_eq!(filtered_mean(&v), 2.5);
        // A value exactly on a fence stays: 1,2,3,4,7 → Q1 2, Q3 4, hi 7.
        assert_eq!(iqr_filter(&[1.0, 2.0, 3.0, 4.0, 7.0]).len(), 5);
        // Three repeats (the original's): 10, 11, 30 → Q1 10.5, Q3 20.5, IQR 10, hi 35.5: kept.
        assert_eq!(filtered_mean(&[10.0, 11.0, 30.0]), 17.0);
        // Non-finite values are dropped before anything.
        assert_eq!(iqr_filter(&[f64::NAN, 1.0, f64::INFINITY]), vec![1.0]);
        assert!(filtered_mean(&[]).is_nan());
    }

    fn row(data_gb: f64, t: f64, wall: f64, started: f64) -> RunRow {
        RunRow {
            partition_mb: 25.0,
            data_gb,
            run: 0,
            total_cpu_time: t,
            total_cpu_memory: 1000.0 + t,
            throughput_bps: 8e6 / t,
            total_bits: 8_000_000,
            batch_size: 512,
            engine: "local".into(),
            ranks: 4,
            failed: 0,
            wall_time_s: wall,
            galaxies: 100,
            results: format!("r{started}"),
            started_at: started,
        }
    }

    #[test]
    fn runs_are_numbered_and_averaged_per_configuration() {
        let mut rows = vec![
            row(1.0, 4.0, 10.0, 30.0),
            row(0.5, 2.0, 5.0, 1.0),
            row(1.0, 2.0, 8.0, 10.0),
            row(1.0, 3.0, 9.0, 20.0),
            row(1.0, 400.0, 500.0, 40.0),
        ];
        number_runs(&mut rows);
        let runs: Vec<(f64, usize)> = rows.iter().map(|r| (r.data_gb, r.run)).collect();
        assert_eq!(runs, vec![(0.5, 1), (1.0, 1), (1.0, 2), (1.0, 3), (1.0, 4)]);
        let m = mean_rows(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].runs, 1);
        assert_eq!(m[0].total_cpu_time, 2.0);
        // 2,3,4,400 → Q1 2.75, Q3 103, IQR 100.25, hi 253.375: 400 dropped → mean 3.
        assert_eq!(m[1].runs, 4);
        assert_eq!(m[1].total_cpu_time, 3.0);
        // walls 8,9,10,500 → same shape: 500 dropped → 9; min 8, max 500 (unfiltered).
        assert_eq!(m[1].wall_time_s, 9.0);
        assert_eq!((m[1].wall_min_s, m[1].wall_max_s), (8.0, 500.0));
        assert!((m[1].galaxies_per_s - 100.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn sizes_keep_three_significant_digits() {
        assert_eq!(round_sig(100.0 * 4.0 / 1024.0, 3), 0.391);
        assert_eq!(round_sig(0.000_488_28, 3), 0.000488);
        assert_eq!(round_sig(12.6, 3), 12.6);
        assert_eq!(round_sig(12_345.0, 3), 12_300.0);
        assert_eq!(round_sig(25.009, 3), 25.0);
        assert_eq!(round_sig(0.0, 3), 0.0);
        assert_eq!(size(25.0), "25");
        assert_eq!(size(0.000488), "0.000488");
    }

    #[test]
    fn csv_and_text() {
        let t = Table {
            header: vec!["name".into(), "value".into()],
            rows: vec![
                vec!["a,b".into(), "1.5".into()],
                vec!["say \"hi\"".into(), "12".into()],
            ],
        };
        assert_eq!(
            t.to_csv(),
            "name,value\n\"a,b\",1.5\n\"say \"\"hi\"\"\",12\n"
        );
        assert_eq!(
            t.to_text(),
            "name      value\na,b         1.5\nsay \"hi\"     12\n"
        );
    }
}
