//! Redshift metrics as the original defines them, plus the outlier fraction η.
//!
//! With Δz = (z_pred − z_true)/(1 + z_true): MAE = mean|z_pred − z_true|, MSE,
//! bias = mean(Δz), NMAD = 1.48 × median(|Δz − median(Δz)|), R² = 1 − SS_res/SS_tot,
//! η = share of galaxies with |Δz| > 0.05.

use serde::{Deserialize, Serialize};

/// Outlier threshold on |Δz| for η.
pub const OUTLIER_DZ: f64 = 0.05;

/// Accuracy of predicted against true redshifts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Galaxies compared (pairs with a finite prediction and truth).
    pub n: u64,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean squared error.
    pub mse: f64,
    /// Mean of Δz.
    pub bias: f64,
    /// Normalised median absolute deviation of Δz.
    pub nmad: f64,
    /// Coefficient of determination.
    pub r2: f64,
    /// Catastrophic outlier fraction, |Δz| > 0.05.
    pub eta: f64,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Compute the metrics; pairs where either value is not finite are skipped.
/// Returns None when no pair is left.
pub fn redshift_metrics(pred: &[f32], truth: &[f32]) -> Option<Metrics> {
    let pairs: Vec<(f64, f64)> = pred
        .iter()
        .zip(truth)
        .filter(|(p, t)| p.is_finite() && t.is_finite())
        .map(|(&p, &t)| (p as f64, t as f64))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let mut dz: Vec<f64> = pairs.iter().map(|(p, t)| (p - t) / (1.0 + t)).collect();
    let mae = pairs.iter().map(|(p, t)| (p - t).abs()).sum::<f64>() / n;
    let mse = pairs.iter().map(|(p, t)| (p - t).powi(2)).sum::<f64>() / n;
    let bias = dz.iter().sum::<f64>() / n;
    let eta = dz.iter().filter(|d| d.abs() > OUTLIER_DZ).count() as f64 / n;
    let mean_t = pairs.iter().map(|(_, t)| t).sum::<f64>() / n;
    let ss_tot: f64 = pairs.iter().map(|(_, t)| (t - mean_t).powi(2)).sum();
    let ss_res: f64 = pairs.iter().map(|(p, t)| (p - t).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    let med = median(&mut dz);
    let mut dev: Vec<f64> = dz.iter().map(|d| (d - med).abs()).collect();
    let nmad = 1.48 * median(&mut dev);
    Some(Metrics {
        n: pairs.len() as u64,
        mae,
        mse,
        bias,
        nmad,
        r2,
        eta,
    })
}

/// One class's precision and recall (one-vs-rest), with its support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    /// Class index (the position in the score vector).
    pub class: usize,
    /// Galaxies labelled with this class.
    pub support: u64,
    /// Of the galaxies predicted as this class, the share that are (NaN when none is).
    pub precision: f64,
    /// Of the galaxies of this class, the share predicted as it (NaN when there are none).
    pub recall: f64,
    /// ROC AUC of this class's score against the rest (NaN when the labels hold only one
    /// side).
    pub roc_auc: f64,
}

/// Accuracy of class scores (a vector output per galaxy) against integer labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The output judged.
    pub output: String,
    /// Galaxies compared (finite scores and a label in `0..classes`).
    pub n: u64,
    /// Share of galaxies whose highest score is their label.
    pub accuracy: f64,
    /// Per class: precision, recall, one-vs-rest ROC AUC.
    pub classes: Vec<ClassStats>,
    /// Mean of the per-class ROC AUCs that are defined (macro average).
    pub macro_roc_auc: f64,
    /// `confusion[label][predicted]`: galaxy counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Judge `scores` (`width` values per galaxy, higher = more likely; probabilities or
/// logits) against `labels` (the class index, as a float). Galaxies with a non-finite
/// score or a label that is not an integer in `0..width` are skipped; None when none is
/// left or `width` is 0.
pub fn class_metrics(
    output: &str,
    scores: &[f32],
    width: usize,
    labels: &[f32],
) -> Option<ClassMetrics> {
    if width == 0 {
        return None;
    }
    let rows: Vec<(&[f32], usize)> = judged_rows(scores, width, labels).collect();
    if rows.is_empty() {
        return None;
    }
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0
    };
    let mut confusion = vec![vec![0u64; width]; width];
    for (row, l) in &rows {
        confusion[*l][argmax(row)] += 1;
    }
    let n = rows.len() as u64;
    let correct: u64 = (0..width).map(|c| confusion[c][c]).sum();
    let classes: Vec<ClassStats> = (0..width)
        .map(|c| {
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|r| r[c]).sum();
            let ratio = |a: u64, b: u64| {
                if b == 0 {
                    f64::NAN
                } else {
                    a as f64 / b as f64
                }
            };
            let pairs = one_vs_rest(scores, width, labels, c);
            ClassStats {
                class: c,
                support,
                precision: ratio(confusion[c][c], predicted),
                recall: ratio(confusion[c][c], support),
                roc_auc: roc_auc(&pairs),
            }
        })
        .collect();
    let aucs: Vec<f64> = classes
        .iter()
        .map(|c| c.roc_auc)
        .filter(|a| a.is_finite())
        .collect();
    Some(ClassMetrics {
        output: output.to_string(),
        n,
        accuracy: correct as f64 / n as f64,
        macro_roc_auc: if aucs.is_empty() {
            f64::NAN
        } else {
            aucs.iter().sum::<f64>() / aucs.len() as f64
        },
        classes,
        confusion,
    })
}

/// ROC AUC of `(score, positive)` pairs: the probability that a random positive scores
/// above a random negative, ties counting half (the Mann-Whitney U statistic over
/// average ranks). NaN when either side is empty.
pub fn roc_auc(pairs: &[(f64, bool)]) -> f64 {
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        // Ranks i+1..=j share their average.
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * sorted[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (p, q) = (pos as f64, neg as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// The galaxies class metrics judge: rows of `width` finite scores whose label is an
/// integer in `0..width`, with that label.
fn judged_rows<'a>(
    scores: &'a [f32],
    width: usize,
    labels: &'a [f32],
) -> impl Iterator<Item = (&'a [f32], usize)> + 'a {
    scores
        .chunks_exact(width.max(1))
        .zip(labels)
        .filter(move |(row, &l)| {
            width > 0
                && l.is_finite()
                && l >= 0.0
                && l.fract() == 0.0
                && (l as usize) < width
                && row.iter().all(|v| v.is_finite())
        })
        .map(|(row, &l)| (row, l as usize))
}

/// The ROC curve of `(score, positive)` pairs, one-vs-rest: `(false positive rate, true
/// positive rate)` points from (0, 0) to (1, 1), one per distinct score taken as the
/// threshold (ties step together, so the trapezoid area under it is [`roc_auc`]). Empty
/// when either side is empty.
pub fn roc_curve(pairs: &[(f64, bool)]) -> Vec<(f64, f64)> {
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return Vec::new();
    }
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            if sorted[j].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        points.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
        i = j;
    }
    points
}

/// The `(score, is this class)` pairs of class `class` over the galaxies [`class_metrics`]
/// judges (finite scores, an integer label in `0..width`).
pub fn one_vs_rest(scores: &[f32], width: usize, labels: &[f32], class: usize) -> Vec<(f64, bool)> {
    if width == 0 {
        return Vec::new();
    }
    judged_rows(scores, width, labels)
        .map(|(row, l)| (f64::from(row[class]), l == class))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn hand_computed_values() {
        // z_true = [0.1, 0.2, 0.3, 0.4], z_pred = [0.1, 0.3, 0.3, 0.2]
        let t = [0.1f32, 0.2, 0.3, 0.4];
        let p = [0.1f32, 0.3, 0.3, 0.2];
        let m = redshift_metrics(&p, &t).unwrap();
        assert_eq!(m.n, 4);
        // |err| = 0, .1, 0, .2 → MAE .075; squares 0,.01,0,.04 → MSE .0125
        assert!(close(m.mae, 0.075), "{m:?}");
        assert!(close(m.mse, 0.0125), "{m:?}");
        // Δz = 0, .1/1.2, 0, -.2/1.4 → bias = (0.083333 - 0.142857)/4
        let d1 = 0.1 / 1.2;
        let d3 = -0.2 / 1.4;
        assert!(close(m.bias, (d1 + d3) / 4.0), "{m:?}");
        // median Δz = (0 + 0)/2 = 0; |Δz| sorted 0,0,.0833,.1429 → median .041667 → ×1.48
        assert!(close(m.nmad, 1.48 * d1 / 2.0), "{m:?}");
        // mean t .25; SS_tot = .0225+.0025+.0025+.0225=.05; SS_res=.05 → R² = 0
        assert!(close(m.r2, 0.0), "{m:?}");
        // |Δz| > .05: two of four
        assert!(close(m.eta, 0.5), "{m:?}");
    }

    #[test]
    fn perfect_and_nonfinite() {
        let t = [0.1f32, 0.5, f32::NAN, 0.2];
        let p = [0.1f32, 0.5, 0.3, f32::INFINITY];
        let m = redshift_metrics(&p, &t).unwrap();
        assert_eq!(m.n, 2);
        assert_eq!(m.mae, 0.0);
        assert!(close(m.r2, 1.0));
        assert!(redshift_metrics(&[f32::NAN], &[0.1]).is_none());
    }

    #[test]
    fn class_metrics_by_hand() {
        // 3 classes, 5 galaxies; galaxy 3's scores hold a NaN and galaxy 4's label is 7:
        // both skipped.
        let scores = [
            0.7,
            0.2,
            0.1, // label 0, predicted 0
            0.1,
            0.5,
            0.4, // label 2, predicted 1
            0.2,
            0.2,
            0.6, // label 2, predicted 2
            f32::NAN,
            0.0,
            0.0, // skipped
            0.3,
            0.3,
            0.4, // label 7: skipped
        ];
        let labels = [0.0, 2.0, 2.0, 1.0, 7.0];
        let m = class_metrics("probs", &scores, 3, &labels).unwrap();
        assert_eq!(m.n, 3);
        assert!(close(m.accuracy, 2.0 / 3.0));
        assert_eq!(m.confusion, [[1, 0, 0], [0, 0, 0], [0, 1, 1]]);
        assert!(close(m.classes[0].precision, 1.0) && close(m.classes[0].recall, 1.0));
        assert!(m.classes[1].precision == 0.0 && m.classes[1].recall.is_nan());
        assert!(close(m.classes[2].precision, 1.0) && close(m.classes[2].recall, 0.5));
        // Class 0's score separates it perfectly; class 1 has no positives; class 2: the
        // positives score 0.4 and 0.6 against the negative's 0.1: AUC 1.
        assert!(close(m.classes[0].roc_auc, 1.0));
        assert!(m.classes[1].roc_auc.is_nan());
        assert!(close(m.classes[2].roc_auc, 1.0));
        assert!(close(m.macro_roc_auc, 1.0));
        assert!(class_metrics("p", &scores, 3, &[f32::NAN; 5]).is_none());
    }

    #[test]
    fn roc_auc_counts_ties_half_and_matches_pair_counting() {
        assert!(close(roc_auc(&[(0.5, true), (0.5, false)]), 0.5));
        assert!(close(roc_auc(&[(0.1, true), (0.9, false)]), 0.0));
        // Against the definition: share of (pos, neg) pairs ordered right, ties half.
        let pairs: Vec<(f64, bool)> = (0..40)
            .map(|i| (((i * 37) % 11) as f64, (i * 7) % 3 == 0))
            .collect();
        let (mut good, mut all) = (0.0, 0.0);
        for a in pairs.iter().filter(|p| p.1) {
            for b in pairs.iter().filter(|p| !p.1) {
                all += 1.0;
                good += if a.0 > b.0 {
                    1.0
                } else if a.0 == b.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert!(close(roc_auc(&pairs), good / all));
    }

    #[test]
    fn roc_curve_runs_corner_to_corner_and_its_area_is_the_auc() {
        let pairs: Vec<(f64, bool)> = (0..60)
            .map(|i| (((i * 37) % 13) as f64, (i * 5) % 4 == 0))
            .collect();
        let curve = roc_curve(&pairs);
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
        assert!(curve
            .windows(2)
            .all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
        let area: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!(close(area, roc_auc(&pairs)));
        assert!(roc_curve(&[(0.3, true)]).is_empty());
        // One-vs-rest pairs skip rows class metrics skip (NaN score, label out of range).
        let scores = [0.9f32, 0.1, f32::NAN, 0.5, 0.2, 0.8, 0.6, 0.4];
        let labels = [0.0f32, 1.0, 1.0, 7.0];
        assert_eq!(
            one_vs_rest(&scores, 2, &labels, 1),
            vec![(0.1f32 as f64, false), (0.8f32 as f64, true)]
        );
    }
}
