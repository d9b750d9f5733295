//! Will each rank fit one function invocation? Checked when a run is planned, so that a
//! rank that cannot finish inside the Infer function's timeout, or whose partitions do not
//! fit its memory, is refused before any work starts, with the world size or partition size
//! that would fit.
//!
//! Time: a rank's galaxies ÷ (per-vCPU throughput × the function's vCPUs) plus a fixed
//! overhead (start, model load) must fit the timeout less the margin a rank keeps in hand
//! (it stops that long before its deadline). Lambda gives one vCPU per 1,769 MB of memory,
//! up to 6. Memory: the model and runtime plus [`RankCosts::partition_copies`] copies of the
//! rank's largest partition (one downloading while one, and its decoded form, computes).
//!
//! ```
//! use cai_core::limits::{lambda_vcpus, FunctionLimits, RankCosts};
//! use cai_core::plan::{make_plan, PartitionRef, PlanRequest};
//! let parts = (1..=8)
//!     .map(|i| PartitionRef {
//!         key: format!("{i}.pt"),
//!         galaxies: Some(50_000),
//!         bytes: 100 << 20,
//!         sha256: None,
//!         first_galaxy: None,
//!     })
//!     .collect();
//! let req = PlanRequest { world_size: Some(2), ..Default::default() };
//! let plan = make_plan(&req, parts).unwrap();
//! let f = FunctionLimits { memory_mb: 10_240, timeout_s: 900 };
//! assert_eq!(lambda_vcpus(10_240), 6.0);
//! // 4 partitions of 50,000 galaxies per rank at 95 galaxies/s per vCPU: ~351 s each; fits.
//! assert!(RankCosts::default().check(&plan, &f).is_ok());
//! // At 10 galaxies/s per vCPU it does not, and the message says which world size fits.
//! let slow = RankCosts { galaxies_per_vcpu_s: 10.0, ..RankCosts::default() };
//! let e = slow.check(&plan, &f).unwrap_err().to_string();
//! assert!(e.contains("world size of 8"), "{e}");
//! ```

use crate::error::{Error, Result};
use crate::plan::{assign, Plan};

/// Memory (MB) that buys one Lambda vCPU.
pub const MB_PER_VCPU: f64 = 1_769.0;
/// Most vCPUs a Lambda function gets.
pub const MAX_VCPUS: f64 = 6.0;
/// Bytes per galaxy when a partition's count is unknown: the seed's 12.6 GB for 615,000
/// galaxies.
pub const DEFAULT_BYTES_PER_GALAXY: f64 = 20_500.0;
/// Galaxies per second per vCPU when none was measured: the project machine's measured
/// per-core speed (docs/aws.md: 95 galaxies/s per core, f32).
pub const DEFAULT_GALAXIES_PER_VCPU_S: f64 = 95.0;

/// vCPUs of a Lambda function with `memory_mb` of memory (a share below one at less than
/// 1,769 MB).
pub fn lambda_vcpus(memory_mb: u32) -> f64 {
    if memory_mb >= MAX_MEMORY_MB {
        MAX_VCPUS
    } else {
        (f64::from(memory_mb) / MB_PER_VCPU).min(MAX_VCPUS)
    }
}

/// Most memory a Lambda function can have (MB), which gets [`MAX_VCPUS`].
pub const MAX_MEMORY_MB: u32 = 10_240;

/// A rate for messages: whole numbers as such, else one decimal.
fn rate_text(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// What one invocation of the Infer function has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FunctionLimits {
    /// Memory in MB (sets its vCPUs, [`lambda_vcpus`]).
    pub memory_mb: u32,
    /// Timeout in seconds.
    pub timeout_s: u32,
}

/// What a rank costs: the measured speed and the fixed parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankCosts {
    /// Measured galaxies per second per vCPU (`cai bench` or an earlier run).
    pub galaxies_per_vcpu_s: f64,
    /// Seconds per invocation besides inference (start, model load).
    pub overhead_s: f64,
    /// Seconds before the deadline at which a rank stops (it keeps these in hand).
    pub margin_s: f64,
    /// Memory of the model and the runtime, MB.
    pub base_memory_mb: f64,
    /// Copies of its largest partition a rank holds at once.
    pub partition_copies: f64,
    /// Bytes per galaxy for partitions whose galaxy count the plan does not know.
    pub bytes_per_galaxy: f64,
}

impl Default for RankCosts {
    fn default() -> Self {
        Self {
            galaxies_per_vcpu_s: DEFAULT_GALAXIES_PER_VCPU_S,
            overhead_s: 5.0,
            margin_s: 10.0,
            base_memory_mb: 600.0,
            partition_copies: 3.0,
            bytes_per_galaxy: DEFAULT_BYTES_PER_GALAXY,
        }
    }
}

/// Galaxies and bytes of each partition, from the plan (counts estimated from bytes when
/// unknown).
fn partition_sizes(plan: &Plan, c: &RankCosts) -> Vec<(f64, u64)> {
    plan.partitions
        .iter()
        .map(|p| {
            let g = p
                .galaxies
                .map(|g| g as f64)
                .unwrap_or(p.bytes as f64 / c.bytes_per_galaxy.max(1.0));
            (g, p.bytes)
        })
        .collect()
}

/// The most galaxies any rank gets when `sizes` are dealt to `world` ranks.
fn worst_rank_galaxies(sizes: &[(f64, u64)], world: usize) -> f64 {
    assign(sizes.len(), world)
        .into_iter()
        .map(|r| sizes[r].iter().map(|s| s.0).sum::<f64>())
        .fold(0.0, f64::max)
}

const MB: f64 = 1_048_576.0;

/// Environment variable: measured galaxies per second per vCPU (`cai bench`'s figure for
/// one thread), used for the plan-time check instead of [`DEFAULT_GALAXIES_PER_VCPU_S`].
pub const ENV_GALAXIES_PER_VCPU_S: &str = "CAI_GALAXIES_PER_VCPU_S";

impl RankCosts {
    /// The defaults, with the throughput from `CAI_GALAXIES_PER_VCPU_S` when set.
    pub fn from_env() -> Result<Self> {
        let mut c = Self::default();
        if let Ok(v) = std::env::var(ENV_GALAXIES_PER_VCPU_S) {
            c.galaxies_per_vcpu_s = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| Error::Invalid {
                    field: ENV_GALAXIES_PER_VCPU_S.into(),
                    reason: format!("{v:?} is not a positive number of galaxies/s"),
                })?;
        }
        Ok(c)
    }

    /// Seconds a rank of `galaxies` takes on a function of `f`.
    pub fn rank_seconds(&self, galaxies: f64, f: &FunctionLimits) -> f64 {
        let rate = (self.galaxies_per_vcpu_s * lambda_vcpus(f.memory_mb)).max(f64::MIN_POSITIVE);
        self.overhead_s + galaxies / rate
    }

    /// Seconds of inference a rank has: the timeout less the overhead and the margin.
    fn seconds_for_galaxies(&self, f: &FunctionLimits) -> f64 {
        f64::from(f.timeout_s) - self.margin_s - self.overhead_s
    }

    /// Memory (MB) a rank whose largest partition has `bytes` needs.
    pub fn rank_memory_mb(&self, bytes: u64) -> f64 {
        self.base_memory_mb + self.partition_copies * bytes as f64 / MB
    }

    /// Refuse `plan` if one of its ranks would not fit `f`: too slow for the timeout (the
    /// error names the world size that fits, or the partition size when even one
    /// partition is too much), or partitions too large for the memory (the partition size
    /// that fits).
    pub fn check(&self, plan: &Plan, f: &FunctionLimits) -> Result<()> {
        if !(self.galaxies_per_vcpu_s.is_finite() && self.galaxies_per_vcpu_s > 0.0) {
            return Err(Error::Invalid {
                field: "throughput".into(),
                reason: format!(
                    "{} galaxies/s per vCPU: must be a positive number",
                    self.galaxies_per_vcpu_s
                ),
            });
        }
        let sizes = partition_sizes(plan, self);
        let vcpus = lambda_vcpus(f.memory_mb);
        let rate = self.galaxies_per_vcpu_s * vcpus;
        let function = format!(
            "a {} MB function ({} vCPUs, {} s timeout)",
            f.memory_mb,
            rate_text((vcpus * 10.0).round() / 10.0),
            f.timeout_s
        );

        // Memory: the largest partition decides, whatever the world size.
        let (big_rank, big_bytes) = plan
            .ranks
            .iter()
            .enumerate()
            .map(|(r, idx)| (r, idx.iter().map(|&i| sizes[i].1).max().unwrap_or(0)))
            .max_by_key(|&(_, b)| b)
            .unwrap_or((0, 0));
        let need = self.rank_memory_mb(big_bytes);
        if need > f64::from(f.memory_mb) {
            let fit_mb =
                ((f64::from(f.memory_mb) - self.base_memory_mb) / self.partition_copies).floor();
            let fix = if fit_mb >= 1.0 {
                format!("re-cut the data into partitions of at most {fit_mb:.0} MB (`cai partition --partition-mb {fit_mb:.0}`) or give the function more memory")
            } else {
                format!(
                    "give the function more memory: the model and runtime alone take about {:.0} MB",
                    self.base_memory_mb
                )
            };
            return Err(Error::TooBig {
                rank: big_rank,
                reason: format!(
                    "needs about {need:.0} MB ({:.0} MB for the model and runtime + {} × its \
                     largest partition of {:.1} MB), more than {function}: {fix}",
                    self.base_memory_mb,
                    self.partition_copies,
                    big_bytes as f64 / MB
                ),
            });
        }

        // Time.
        let budget = self.seconds_for_galaxies(f);
        let fit_galaxies = budget.max(0.0) * rate;
        let per_rank: Vec<f64> = plan
            .ranks
            .iter()
            .map(|idx| idx.iter().map(|&i| sizes[i].0).sum())
            .collect();
        let over: Vec<usize> = (0..per_rank.len())
            .filter(|&r| per_rank[r] > fit_galaxies)
            .collect();
        let Some(&worst) = over
            .iter()
            .max_by(|&&a, &&b| per_rank[a].total_cmp(&per_rank[b]).then(b.cmp(&a)))
        else {
            return Ok(());
        };
        let largest = sizes.iter().map(|s| s.0).fold(0.0, f64::max);
        let fix = if largest > fit_galaxies || budget <= 0.0 {
            let bytes_per_galaxy = if largest > 0.0 {
                sizes
                    .iter()
                    .map(|s| s.1 as f64 / s.0.max(1.0))
                    .fold(0.0, f64::max)
            } else {
                self.bytes_per_galaxy
            };
            let fit_mb = (fit_galaxies * bytes_per_galaxy / MB).floor();
            if fit_mb >= 1.0 {
                format!(
                    "even one partition is too much: re-cut the data into partitions of at \
                     most {fit_mb:.0} MB (about {fit_galaxies:.0} galaxies; `cai partition \
                     --partition-mb {fit_mb:.0}`), then one per rank, or give the function \
                     more memory (more vCPUs)"
                )
            } else {
                format!(
                    "the timeout leaves no time for inference after the {:.0} s overhead \
                     and the {:.0} s margin: raise the timeout",
                    self.overhead_s, self.margin_s
                )
            }
        } else {
            // The smallest world size whose every rank fits (more ranks never give a rank
            // more partitions under the original's assignment).
            let (mut lo, mut hi) = (plan.world_size, sizes.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if worst_rank_galaxies(&sizes, mid) <= fit_galaxies {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            format!(
                "a world size of {lo} or more fits (at most {} partition(s) per rank), or \
                 give the function more memory (more vCPUs)",
                sizes.len().div_ceil(lo.max(1))
            )
        };
        Err(Error::TooBig {
            rank: worst,
            reason: format!(
                "needs about {:.0} s ({} partition(s), {:.0} galaxies at {} galaxies/s per \
                 vCPU, plus {:.0} s overhead), more than the {:.0} s {function} leaves it \
                 after a {:.0} s margin; {} of {} ranks are over: {fix}",
                self.rank_seconds(per_rank[worst], f),
                plan.ranks[worst].len(),
                per_rank[worst],
                rate_text(self.galaxies_per_vcpu_s),
                self.overhead_s,
                f64::from(f.timeout_s) - self.margin_s,
                self.margin_s,
                over.len(),
                plan.world_size,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{make_plan, PartitionRef, PlanRequest};

    fn plan(parts: &[(Option<u64>, u64)], world: usize) -> Plan {
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, &(g, bytes))| PartitionRef {
                key: format!("{}.pt", i + 1),
                galaxies: g,
                bytes,
                sha256: None,
                first_galaxy: None,
            })
            .collect();
        let req = PlanRequest {
            world_size: Some(world),
            ..Default::default()
        };
        make_plan(&req, parts).unwrap()
    }

    #[test]
    fn vcpus_follow_memory() {
        assert_eq!(lambda_vcpus(1_769), 1.0);
        assert_eq!(lambda_vcpus(3_538), 2.0);
        assert_eq!(lambda_vcpus(10_240), 6.0);
        assert!((lambda_vcpus(885) - 0.5).abs() < 1e-3);
    }

    #[test]
    fn the_arithmetic() {
        let c = RankCosts::default();
        let f = FunctionLimits {
            memory_mb: 3_538,
            timeout_s: 900,
        };
        // 2 vCPUs × 95 = 190 galaxies/s; 19,000 galaxies = 100 s + 5 s overhead.
        assert!((c.rank_seconds(19_000.0, &f) - 105.0).abs() < 1e-9);
        // 600 MB + 3 × 100 MB.
        assert_eq!(c.rank_memory_mb(100 << 20), 900.0);
        // 885 s of inference fit 168,150 galaxies.
        assert_eq!(c.seconds_for_galaxies(&f) * 190.0, 168_150.0);
    }

    #[test]
    fn too_slow_names_the_world_size_that_fits() {
        // 64 partitions of 10,000 galaxies on 4 ranks (16 each, 160,000 galaxies):
        // 1 vCPU at 95/s gives 885 s × 95 = 84,075 galaxies, 8 partitions: 8 ranks fit.
        let p = plan(&[(Some(10_000), 200 << 20); 64], 4);
        let f = FunctionLimits {
            memory_mb: 1_769,
            timeout_s: 900,
        };
        let e = RankCosts::default().check(&p, &f).unwrap_err();
        let Error::TooBig { rank, reason } = &e else {
            panic!("{e}")
        };
        assert_eq!(*rank, 0);
        let msg = e.to_string();
        for want in [
            "rank 0",
            "needs about 1689 s",
            "16 partition(s), 160000 galaxies at 95 galaxies/s per vCPU",
            "a 1769 MB function (1 vCPUs, 900 s timeout)",
            "4 of 4 ranks are over",
            "a world size of 8 or more fits (at most 8 partition(s) per rank)",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        assert!(reason.contains("more than the 890 s"), "{reason}");
        // And that world size passes.
        assert!(RankCosts::default()
            .check(&plan(&[(Some(10_000), 200 << 20); 64], 8), &f)
            .is_ok());
        assert!(RankCosts::default()
            .check(&plan(&[(Some(10_000), 200 << 20); 64], 7), &f)
            .is_err());
    }

    #[test]
    fn one_partition_too_many_galaxies_names_a_partition_size() {
        // One partition of 100,000 galaxies in 2 GB: 84,075 fit, at 20,972 bytes each
        // (2 GiB / 100,000 = 21,474.8 bytes) → 1,721 MB.
        let p = plan(&[(Some(100_000), 2 << 30)], 1);
        let f = FunctionLimits {
            memory_mb: 10_240,
            timeout_s: 900,
        };
        let c = RankCosts {
            galaxies_per_vcpu_s: 95.0 / 6.0,
            ..RankCosts::default()
        };
        let msg = c.check(&p, &f).unwrap_err().to_string();
        assert!(msg.contains("even one partition is too much"), "{msg}");
        assert!(msg.contains("partitions of at most 1721 MB"), "{msg}");
    }

    #[test]
    fn too_large_for_memory_names_a_partition_size() {
        // 3 × 1 GiB + 600 MB > 3,008 MB: at most (3008 − 600) / 3 = 802 MB partitions.
        let p = plan(&[(Some(10), 1 << 30), (Some(10), 1 << 20)], 2);
        let f = FunctionLimits {
            memory_mb: 3_008,
            timeout_s: 900,
        };
        let e = RankCosts::default().check(&p, &f).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::TooBig { rank: 0, .. }), "{msg}");
        for want in [
            "needs about 3672 MB",
            "largest partition of 1024.0 MB",
            "partitions of at most 802 MB",
            "--partition-mb 802",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }

    #[test]
    fn unknown_counts_come_from_bytes_and_a_bad_throughput_is_refused() {
        // 10 × 205 MB partitions ≈ 10,486 galaxies each at 20,500 bytes; one rank of all
        // ten at 6 × 95/s takes ~189 s: fits 900 s.
        let p = plan(&[(None, 205 << 20); 10], 1);
        let f = FunctionLimits {
            memory_mb: 10_240,
            timeout_s: 900,
        };
        assert!(RankCosts::default().check(&p, &f).is_ok());
        let short = FunctionLimits {
            memory_mb: 10_240,
            timeout_s: 60,
        };
        let msg = RankCosts::default()
            .check(&p, &short)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a world size of"), "{msg}");
        let bad = RankCosts {
            galaxies_per_vcpu_s: f64::NAN,
            ..RankCosts::default()
        };
        assert!(bad
            .check(&p, &f)
            .unwrap_err()
            .to_string()
            .contains("throughput"));
    }
}
