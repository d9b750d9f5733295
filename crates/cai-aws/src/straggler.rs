//! Stragglers on AWS: the follower of an execution (`cai run --engine aws`, `cai status`)
//! times the running ranks and gives one that runs long a second copy.
//!
//! The rule is the local and Slurm engines' ([`straggler_bound`]): once more than half the
//! ranks have ended, a rank running past `speculate` times the median rank time gets a
//! second copy. A rank counts as running from when the follower first sees its
//! `claims/<rank>.started` (the Infer handler leaves it when it starts); finished ranks'
//! times are their reports' `wall_time_s`. The second copy is the Infer function invoked
//! directly (asynchronously) with the rank's map item from `items.json`, the same payload
//! the Distributed Map sends, after marking `claims/<rank>.speculated`. Both copies commit
//! through `claims/<rank>` (`cai_engine::worker::Commit::shared`): the first to finish
//! writes, the other stops and answers success without output.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use aws_config::SdkConfig;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_sfn as sfn;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use cai_core::layout;
use cai_core::plan::RankItem;
use cai_core::results::ResultsListing;
use cai_core::StorageUrl;
use cai_engine::aws::infer_function;
use cai_engine::local::straggler_bound;

use crate::{aws_err, Error, Result};

/// Rank reports read at once when timing finished ranks.
const PARALLEL_READS: usize = 16;

/// The follower's view of the ranks' times, and the second copies it started.
pub struct Stragglers {
    sdk: SdkConfig,
    execution: String,
    speculate: f64,
    /// When each running rank was first seen started.
    started: HashMap<usize, Instant>,
    /// Wall seconds of the finished ranks read so far.
    walls: HashMap<usize, f64>,
    /// Ranks that have a second copy (marked by this follower or an earlier one).
    speculated: HashSet<usize>,
    /// The Infer function, read from the execution's state machine on first use.
    function: Option<String>,
    /// The map's items by rank, read from `items.json` on first use.
    items: Option<HashMap<usize, Value>>,
    /// Invocations in flight (an asynchronous invoke returns at once; an emulator may
    /// answer only when the copy ends).
    invocations: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Stragglers {
    fn drop(&mut self) {
        for i in &self.invocations {
            i.abort();
        }
    }
}

impl Stragglers {
    /// The follower of `execution`, with the straggler factor `speculate` (0: never).
    pub fn new(sdk: &SdkConfig, execution: &str, speculate: f64) -> Self {
        Self {
            sdk: sdk.clone(),
            execution: execution.to_string(),
            speculate,
            started: HashMap::new(),
            walls: HashMap::new(),
            speculated: HashSet::new(),
            function: None,
            items: None,
            invocations: Vec::new(),
        }
    }

    /// One look at the run of `world` ranks at `results` (listed in `listing`): note which
    /// ranks started, time the finished ones, and start a second copy of each straggler.
    /// Returns a line for each copy started.
    pub async fn look(
        &mut self,
        results: &StorageUrl,
        listing: &ResultsListing,
        world: usize,
    ) -> Result<Vec<String>> {
        if self.speculate <= 0.0 || world < 2 {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        for o in results.child(layout::CLAIMS_DIR).list().await? {
            let key = format!("{}/{}", layout::CLAIMS_DIR, o.key);
            if let Some(r) = layout::rank_of_started(&key) {
                self.started.entry(r).or_insert(now);
            } else if let Some(r) = layout::rank_of_speculated(&key) {
                self.speculated.insert(r);
            }
        }
        let below = |r: &usize| *r < world;
        let done: BTreeSet<usize> = listing.done_ranks().into_iter().filter(below).collect();
        let failed = listing.failed_ranks().into_iter().filter(below).count();
        let ended = done.len() + failed;
        if ended * 2 <= world {
            return Ok(Vec::new());
        }
        // Times of the ranks finished since the last look (read once each).
        let unread: Vec<(usize, String)> = listing
            .report_keys(world)
            .into_iter()
            .filter(|(r, _)| !self.walls.contains_key(r))
            .map(|(r, k)| (r, k.to_string()))
            .collect();
        let read: Vec<(usize, f64)> = futures::stream::iter(unread)
            .map(|(r, key)| async move {
                let f = listing.read_report(r, &key).await?;
                Ok::<_, cai_core::Error>((r, f.report.wall_time_s))
            })
            .buffer_unordered(PARALLEL_READS)
            .try_collect()
            .await?;
        self.walls.extend(read);
        let walls: Vec<f64> = self.walls.values().copied().collect();
        let Some(median) = straggler_bound(&walls, ended, world, self.speculate) else {
            return Ok(Vec::new());
        };
        let mut stragglers: Vec<(usize, f64)> = self
            .started
            .iter()
            .filter(|&(r, _)| below(r) && !done.contains(r) && !self.speculated.contains(r))
            .map(|(&r, t)| (r, now.duration_since(*t).as_secs_f64()))
            .filter(|&(_, secs)| secs > self.speculate * median)
            .collect();
        let failed_now = listing.failed_ranks();
        stragglers.retain(|(r, _)| !failed_now.contains(r));
        stragglers.sort_unstable_by_key(|s| s.0);
        let mut notes = Vec::new();
        for (rank, secs) in stragglers {
            let function = self.second_copy(results, rank).await?;
            notes.push(format!(
                "rank {rank} has run {secs:.1} s, over {}× the median rank time ({median:.1} s): \
                 invoked {function} for a second copy; the first to finish counts",
                self.speculate
            ));
        }
        Ok(notes)
    }

    /// Mark `rank` speculated, then invoke the Infer function with its map item; returns
    /// the function's name.
    async fn second_copy(&mut self, results: &StorageUrl, rank: usize) -> Result<String> {
        let function = self.infer_function().await?;
        let item = self.item(results, rank).await?;
        let payload = serde_json::to_vec(&item)
            .map_err(|e| Error::Invalid(format!("cannot encode rank {rank}'s item: {e}")))?;
        results
            .put(&layout::rank_speculated(rank), Vec::new())
            .await?;
        self.speculated.insert(rank);
        let client = aws_sdk_lambda::Client::new(&self.sdk);
        let name = function.clone();
        self.invocations.push(tokio::spawn(async move {
            let sent = client
                .invoke()
                .function_name(&name)
                .invocation_type(InvocationType::Event)
                .payload(Blob::new(payload))
                .send()
                .await;
            if let Err(e) = sent {
                tracing::warn!(
                    "the second copy of rank {rank} did not start: {}",
                    aws_err("Invoke", e)
                );
            }
        }));
        Ok(function)
    }

    /// The Infer function of the execution's state machine.
    async fn infer_function(&mut self) -> Result<String> {
        if let Some(f) = &self.function {
            return Ok(f.clone());
        }
        let client = sfn::Client::new(&self.sdk);
        let e = client
            .describe_execution()
            .execution_arn(&self.execution)
            .send()
            .await
            .map_err(|e| aws_err("DescribeExecution", e))?;
        let sm = client
            .describe_state_machine()
            .state_machine_arn(&e.state_machine_arn)
            .send()
            .await
            .map_err(|e| aws_err("DescribeStateMachine", e))?;
        let definition: Value = serde_json::from_str(&sm.definition).map_err(|err| {
            Error::Invalid(format!(
                "the definition of {} is not JSON: {err}",
                e.state_machine_arn
            ))
        })?;
        let f = infer_function(&definition).ok_or_else(|| {
            Error::Invalid(format!(
                "the state machine {} has no Infer map invoking a function (not one cai generated?)",
                e.state_machine_arn
            ))
        })?;
        self.function = Some(f.clone());
        Ok(f)
    }

    /// Rank `rank`'s item in the map's `items.json`.
    async fn item(&mut self, results: &StorageUrl, rank: usize) -> Result<Value> {
        if self.items.is_none() {
            let bytes = results.get(layout::AWS_ITEMS).await?;
            let list: Vec<Value> = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Invalid(format!(
                    "{}: not a list of rank items: {e}",
                    results.url_of(layout::AWS_ITEMS)
                ))
            })?;
            let by_rank = list
                .into_iter()
                .filter_map(|v| {
                    let r = serde_json::from_value::<RankItem>(v.clone()).ok()?.rank;
                    Some((r, v))
                })
                .collect();
            self.items = Some(by_rank);
        }
        self.items
            .as_ref()
            .and_then(|m| m.get(&rank))
            .cloned()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "rank {rank} has no item in {}",
                    results.url_of(layout::AWS_ITEMS)
                ))
            })
    }
}
