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
}
