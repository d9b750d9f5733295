//! What a run costs on AWS: Lambda GB-seconds and requests, Step Functions state
//! transitions and S3 requests, from measured rank durations (after a run) or from a plan
//! and a throughput (before one).
//!
//! All prices are in [`PRICES`], one table with its date. They are the public list prices
//! for us-east-1 as known when this was written (no network here to check them): check
//! <https://aws.amazon.com/lambda/pricing/>, <https://aws.amazon.com/step-functions/pricing/>
//! and <https://aws.amazon.com/s3/pricing/> before relying on a figure. Free tiers and
//! volume discounts are ignored, so the figures are upper bounds for small accounts.

use serde::{Deserialize, Serialize};

use crate::report::RankReport;

/// Lambda CPU architecture (arm64 GB-seconds are cheaper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Intel/AMD.
    X86_64,
    /// Graviton.
    Arm64,
}

impl Arch {
    /// The name Lambda uses (`x86_64`, `arm64`).
    pub fn lambda_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// A price table (US dollars).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// When these list prices were taken (and that they were not checked online since).
    pub as_of: &'static str,
    /// Region they apply to.
    pub region: &'static str,
    /// Lambda compute per GB-second, x86_64 (first pricing tier).
    pub lambda_gb_s_x86_64: f64,
    /// Lambda compute per GB-second, arm64 (first pricing tier).
    pub lambda_gb_s_arm64: f64,
    /// Lambda, per request.
    pub lambda_request: f64,
    /// Step Functions Standard, per state transition.
    pub sfn_transition: f64,
    /// S3 Standard GET, per request.
    pub s3_get: f64,
    /// S3 Standard PUT/LIST, per request.
    pub s3_put: f64,
}

/// The list prices used everywhere in CAI-rs. Dated; must be checked against AWS's pages.
pub const PRICES: Prices = Prices {
    as_of: "2025-01 list prices, us-east-1, not re-checked online: verify before use",
    region: "us-east-1",
    // $0.0000166667 per GB-s (x86_64), $0.0000133334 per GB-s (arm64), $0.20 per million
    // requests; the original's cost notes use the same x86_64 and request prices.
    lambda_gb_s_x86_64: 0.000_016_666_7,
    lambda_gb_s_arm64: 0.000_013_333_4,
    lambda_request: 0.000_000_2,
    // $0.025 per 1,000 state transitions.
    sfn_transition: 0.000_025,
    // $0.0004 per 1,000 GET, $0.005 per 1,000 PUT/LIST.
    s3_get: 0.000_000_4,
    s3_put: 0.000_005,
};

impl Prices {
    /// Compute price per GB-second for an architecture.
    pub fn gb_second(&self, arch: Arch) -> f64 {
        match arch {
            Arch::X86_64 => self.lambda_gb_s_x86_64,
            Arch::Arm64 => self.lambda_gb_s_arm64,
        }
    }
}

/// A cost, item by item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    /// `measured` (from rank reports) or `estimate` (from a plan and a throughput).
    pub basis: String,
    /// Lambda memory in MB.
    pub memory_mb: f64,
    /// Architecture priced.
    pub arch: Arch,
    /// Infer invocations (one per rank).
    pub invocations: u64,
    /// Sum of billed durations (each rounded up to 1 ms), seconds.
    pub billed_seconds: f64,
    /// Longest single invocation, seconds (the map's critical path at full concurrency).
    pub longest_s: f64,
    /// GB-seconds billed.
    pub gb_seconds: f64,
    /// Lambda compute, USD.
    pub lambda_compute_usd: f64,
    /// Lambda requests (Infer plus Initialize and Summarize), USD.
    pub lambda_requests_usd: f64,
    /// Step Functions state transitions counted.
    pub state_transitions: u64,
    /// Step Functions, USD.
    pub step_functions_usd: f64,
    /// S3 requests (GET and PUT/LIST) counted.
    pub s3_requests: (u64, u64),
    /// S3 requests, USD.
    pub s3_usd: f64,
    /// Everything above, USD.
    pub total_usd: f64,
    /// The price table's date note.
    pub prices_as_of: String,
}

/// The cost as `cai cost` prints it: one `name  value` line per part.
impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "basis        {} ({} invocations, {} MB, {})",
            self.basis,
            self.invocations,
            self.memory_mb,
            self.arch.lambda_name()
        )?;
        writeln!(
            f,
            "duration     {:.1} s billed in all, longest {:.2} s",
            self.billed_seconds, self.longest_s
        )?;
        writeln!(
            f,
            "lambda       {:.1} GB-s = ${:.4} compute + ${:.4} requests",
            self.gb_seconds, self.lambda_compute_usd, self.lambda_requests_usd
        )?;
        writeln!(
            f,
            "stepfns      {} state transitions = ${:.4}",
            self.state_transitions, self.step_functions_usd
        )?;
        writeln!(
            f,
            "s3           {} GET + {} PUT/LIST = ${:.5}",
            self.s3_requests.0, self.s3_requests.1, self.s3_usd
        )?;
        writeln!(f, "total        ${:.4}", self.total_usd)?;
        write!(f, "prices       {}", self.prices_as_of)
    }
}

/// Lambda bills each invocation's duration rounded up to the next millisecond.
pub fn billed_duration(seconds: f64) -> f64 {
    (seconds.max(0.0) * 1000.0).ceil() / 1000.0
}

/// State transitions of one workflow execution with `ranks` map items, each tried
/// `attempts` times on average: Initialize, the Map state, Summarize, the Choice and the
/// final state, plus one transition per Infer attempt.
pub fn state_transitions(ranks: u64, attempts: f64) -> u64 {
    5 + (ranks as f64 * attempts.max(1.0)).ceil() as u64
}

/// Price a set of Infer invocations of these durations at `memory_mb` on `arch`.
///
/// S3 requests assumed per rank: GETs of the plan, the model and each partition; PUTs of
/// the predictions and the report; plus the Initialize and Summarize traffic (a LIST and
/// a GET per rank report, a few PUTs).
pub fn price(
    basis: &str,
    durations_s: &[f64],
    partitions: u64,
    memory_mb: f64,
    arch: Arch,
    prices: &Prices,
) -> Cost {
    let n = durations_s.len() as u64;
    let billed: f64 = durations_s.iter().map(|&d| billed_duration(d)).sum();
    let longest = durations_s.iter().copied().fold(0.0, f64::max);
    let gb_seconds = billed * memory_mb / 1024.0;
    let lambda_compute_usd = gb_seconds * prices.gb_second(arch);
    let lambda_requests_usd = (n + 2) as f64 * prices.lambda_request;
    let state_transitions = state_transitions(n, 1.0);
    let step_functions_usd = state_transitions as f64 * prices.sfn_transition;
    let gets = 2 * n + partitions + 2 * n + 2;
    let puts = 2 * n + 6;
    let s3_usd = gets as f64 * prices.s3_get + puts as f64 * prices.s3_put;
    Cost {
        basis: basis.to_string(),
        memory_mb,
        arch,
        invocations: n,
        billed_seconds: billed,
        longest_s: longest,
        gb_seconds,
        lambda_compute_usd,
        lambda_requests_usd,
        state_transitions,
        step_functions_usd,
        s3_requests: (gets, puts),
        s3_usd,
        total_usd: lambda_compute_usd + lambda_requests_usd + step_functions_usd + s3_usd,
        prices_as_of: prices.as_of.to_string(),
    }
}

/// What a finished run cost, from its rank reports' wall times (`wall_time_s`, the whole
/// rank: download, decode, inference, upload) plus `overhead_s` per invocation (cold start
/// and model load, which happen outside the rank's own clock).
pub fn measured(
    reports: &[RankReport],
    overhead_s: f64,
    memory_mb: f64,
    arch: Arch,
    prices: &Prices,
) -> Cost {
    let durations: Vec<f64> = reports.iter().map(|r| r.wall_time_s + overhead_s).collect();
    let partitions = reports
        .iter()
        .map(|r| match &r.data_path {
            serde_json::Value::Array(a) => a.len() as u64,
            serde_json::Value::Null => 0,
            _ => 1,
        })
        .sum();
    price("measured", &durations, partitions, memory_mb, arch, prices)
}

/// Galaxies per rank when `total` galaxies are cut into partitions of `per_partition`
/// (the last one smaller), one partition per rank: what `cai cost --galaxies` prices.
pub fn split_galaxies(total: u64, per_partition: u64) -> Vec<u64> {
    let per = per_partition.max(1);
    let mut ranks = vec![per; (total / per) as usize];
    if !total.is_multiple_of(per) {
        ranks.push(total % per);
    }
    ranks
}

/// What a run would cost before it runs: each rank's galaxies at `throughput` galaxies/s
/// per invocation, plus `overhead_s` per invocation.
pub fn estimate(
    galaxies_per_rank: &[u64],
    partitions: u64,
    throughput: f64,
    overhead_s: f64,
    memory_mb: f64,
    arch: Arch,
    prices: &Prices,
) -> Cost {
    let rate = throughput.max(f64::MIN_POSITIVE);
    let durations: Vec<f64> = galaxies_per_rank
        .iter()
        .map(|&g| g as f64 / rate + overhead_s)
        .collect();
    price("estimate", &durations, partitions, memory_mb, arch, prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn galaxies_split_into_partitions() {
        assert_eq!(split_galaxies(2_560, 1_280), [1_280, 1_280]);
        assert_eq!(split_galaxies(3_000, 1_280), [1_280, 1_280, 440]);
        assert_eq!(split_galaxies(10, 0), [1; 10]);
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    /// `workers` x86_64 invocations of `secs` each at `gb` GB (as 1024 MB each), one
    /// partition per worker: a row of the original's cost table.
    fn original(workers: usize, secs: f64, gb: f64) -> Cost {
        let durations = vec![secs; workers];
        price(
            "t",
            &durations,
            workers as u64,
            gb * 1024.0,
            Arch::X86_64,
            &PRICES,
        )
    }

    #[test]
    fn the_originals_cost_table_is_reproduced() {
        // REFERENCE.md: 517 workers × 6.55 s × 2.8 GB ≈ $0.16 (they multiply by 2.8 GB, so
        // memory 2.8 × 1024 MB here). 517 × 6.55 × 2.8 = 9,481.78 GB-s × $0.0000166667
        // = $0.158030; requests 519 × $2e-7 = $0.0001038.
        let c = original(517, 6.55, 2.8);
        close(c.gb_seconds, 9_481.78, 1e-6);
        close(c.lambda_compute_usd, 0.158_030, 1e-6);
        close(c.lambda_requests_usd, 0.000_103_8, 1e-9);
        assert_eq!(
            format!("{:.2}", c.lambda_compute_usd + c.lambda_requests_usd),
            "0.16"
        );
        // 100 MB partitions: 129 workers × 25 s × 7 GB = 22,575 GB-s ≈ $0.376 ($0.38).
        let c = original(129, 25.0, 7.0);
        close(c.lambda_compute_usd, 0.376_250, 1e-5);
    }

    #[test]
    fn transitions_requests_and_s3_add_up() {
        let c = price("t", &[1.0, 2.0], 3, 1024.0, Arch::X86_64, &PRICES);
        assert_eq!(c.state_transitions, 7);
        close(c.step_functions_usd, 7.0 * 0.000_025, 1e-12);
        // GETs: plan+model per rank (4), 3 partitions, report LIST+GET per rank (4), 2.
        assert_eq!(c.s3_requests, (13, 10));
        close(c.s3_usd, 13.0 * 4e-7 + 10.0 * 5e-6, 1e-12);
        close(
            c.total_usd,
            c.lambda_compute_usd + c.lambda_requests_usd + c.step_functions_usd + c.s3_usd,
            1e-15,
        );
        close(c.gb_seconds, 3.0, 1e-12);
        close(c.longest_s, 2.0, 0.0);
    }

    #[test]
    fn arm64_is_a_fifth_cheaper_per_gb_second() {
        let x = price("t", &[10.0], 1, 2048.0, Arch::X86_64, &PRICES);
        let a = price("t", &[10.0], 1, 2048.0, Arch::Arm64, &PRICES);
        close(a.lambda_compute_usd / x.lambda_compute_usd, 0.8, 1e-5);
    }

    #[test]
    fn durations_are_billed_by_the_millisecond() {
        close(billed_duration(1.0001), 1.001, 1e-12);
        close(billed_duration(2.0), 2.0, 1e-12);
        close(billed_duration(-1.0), 0.0, 0.0);
    }

    #[test]
    fn an_estimate_is_galaxies_over_throughput_plus_overhead() {
        // 615,000 galaxies in 25 MB partitions (1,280 each) → 481 ranks (the last short).
        let per = 1280u64;
        let total = 615_000u64;
        let mut ranks = vec![per; (total / per) as usize];
        ranks.push(total % per);
        let c = estimate(
            &ranks,
            ranks.len() as u64,
            200.0,
            0.5,
            3008.0,
            Arch::Arm64,
            &PRICES,
        );
        close(
            c.billed_seconds,
            615_000.0 / 200.0 + 0.5 * ranks.len() as f64,
            1e-6,
        );
        close(c.longest_s, 1280.0 / 200.0 + 0.5, 1e-12);
        close(
            c.lambda_compute_usd,
            c.billed_seconds * 3008.0 / 1024.0 * 0.000_013_333_4,
            1e-9,
        );
    }
}
