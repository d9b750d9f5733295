//! `summary.json`: what a whole run did, from the per-rank reports.

use serde::{Deserialize, Serialize};

use crate::metrics::{class_metrics, redshift_metrics, ClassMetrics, Metrics};
use crate::predictions::Predictions;
use crate::report::{RankFailure, RankReport};

/// The run as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Results location.
    pub results: String,
    /// Galaxies predicted (each exactly once in `predictions.parquet`).
    pub galaxies: u64,
    /// Ranks in the plan.
    pub ranks_total: usize,
    /// Ranks that finished.
    pub ranks_done: usize,
    /// Ranks that failed, with the error naming the file.
    pub failed: Vec<RankFailure>,
    /// Ranks with neither a result nor a failure record (never ran, or still running).
    pub missing_ranks: Vec<usize>,
    /// Wall seconds from the first rank's start to the last rank's end.
    pub wall_time_s: f64,
    /// Galaxies per wall second over the run.
    pub galaxies_per_s: f64,
    /// Sum of the ranks' inference seconds.
    pub inference_s: f64,
    /// Largest peak memory of any worker, MB.
    pub peak_memory_mb: f64,
    /// Input values that were NaN or infinite.
    pub nonfinite_inputs: u64,
    /// Galaxies with a non-finite input (predicted NaN, excluded from metrics).
    pub nonfinite_galaxies: u64,
    /// Accuracy, when the partitions carried redshifts.
    pub metrics: Option<Metrics>,
    /// Accuracy of class scores, for a model without a `z` output whose partitions carry
    /// labels (`--label`): its first vector output against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_metrics: Option<ClassMetrics>,
    /// Engine(s) that ran the ranks.
    pub engines: Vec<String>,
    /// Ranks that ran long and got a second copy (the first copy to finish counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub speculated_ranks: Vec<usize>,
}

impl Summary {
    /// Fold the rank reports into the run's totals (metrics are set by the caller).
    pub fn from_reports(
        results: &str,
        ranks_total: usize,
        reports: &[RankReport],
        failed: Vec<RankFailure>,
    ) -> Self {
        let start = reports
            .iter()
            .map(|r| r.started_at)
            .fold(f64::INFINITY, f64::min);
        let end = reports
            .iter()
            .map(|r| r.ended_at)
            .fold(f64::NEG_INFINITY, f64::max);
        let wall = if reports.is_empty() {
            0.0
        } else {
            (end - start).max(0.0)
        };
        let galaxies: u64 = reports.iter().map(|r| r.galaxies).sum();
        let done: std::collections::BTreeSet<usize> = reports.iter().map(|r| r.rank).collect();
        let failed_set: std::collections::BTreeSet<usize> = failed.iter().map(|f| f.rank).collect();
        let missing_ranks = (0..ranks_total)
            .filter(|r| !done.contains(r) && !failed_set.contains(r))
            .collect();
        let mut engines: Vec<String> = reports.iter().map(|r| r.engine.clone()).collect();
        engines.sort();
        engines.dedup();
        Summary {
            results: results.to_string(),
            galaxies,
            ranks_total,
            ranks_done: done.len(),
            failed,
            missing_ranks,
            wall_time_s: wall,
            galaxies_per_s: if wall > 0.0 {
                galaxies as f64 / wall
            } else {
                0.0
            },
            inference_s: reports.iter().map(|r| r.total_cpu_time).sum(),
            peak_memory_mb: reports
                .iter()
                .map(|r| r.total_cpu_memory)
                .fold(0.0, f64::max),
            nonfinite_inputs: reports.iter().map(|r| r.nonfinite_inputs).sum(),
            nonfinite_galaxies: reports.iter().map(|r| r.nonfinite_galaxies).sum(),
            metrics: None,
            class_metrics: None,
            engines,
            speculated_ranks: reports
                .iter()
                .filter(|r| r.speculated)
                .map(|r| r.rank)
                .collect(),
        }
    }

    /// Judge the predictions against their labels (the `z_true` column): a redshift model's
    /// `z` gets the redshift [`Metrics`]; a model without `z` (a classifier) has its first
    /// vector output judged as class scores ([`ClassMetrics`]). Leaves both `None` when
    /// nothing is labelled.
    pub fn judge(&mut self, all: &Predictions) {
        let (mut zp, mut zt) = (Vec::new(), Vec::new());
        for (p, t) in all.z_pred.iter().zip(&all.z_true) {
            if let Some(t) = t {
                zp.push(*p);
                zt.push(*t);
            }
        }
        if zp.iter().any(|z| !z.is_nan()) {
            self.metrics = redshift_metrics(&zp, &zt);
        } else if let Some((col, labels)) = all.class_scores() {
            self.class_metrics = class_metrics(&col.name, &col.values, col.per_galaxy(), &labels);
        }
    }

    /// True when every rank finished.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.missing_ranks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_missing() {
        let r = |rank, s, e, g| RankReport {
            rank,
            started_at: s,
            ended_at: e,
            galaxies: g,
            engine: "local".into(),
            total_cpu_memory: 100.0 * rank as f64,
            ..Default::default()
        };
        let f = RankFailure {
            rank: 2,
            error: "bad".into(),
            ..Default::default()
        };
        let s = Summary::from_reports(
            "x",
            4,
            &[r(0, 10.0, 12.0, 100), r(1, 11.0, 14.0, 300)],
            vec![f],
        );
        assert_eq!(s.galaxies, 400);
        assert_eq!(s.wall_time_s, 4.0);
        assert_eq!(s.galaxies_per_s, 100.0);
        assert_eq!(s.missing_ranks, vec![3]);
        assert_eq!(s.ranks_done, 2);
        assert_eq!(s.peak_memory_mb, 100.0);
        assert!(s.speculated_ranks.is_empty());
        assert!(!s.complete());
        let mut slow = r(3, 10.0, 20.0, 50);
        slow.speculated = true;
        let s = Summary::from_reports("x", 4, &[r(0, 10.0, 12.0, 100), slow], vec![]);
        assert_eq!(s.speculated_ranks, vec![3]);
    }
}
