//! One run per results location: the lease.
//!
//! A run takes `<results>/lease.json` ([`layout::LEASE`]) before it writes anything, with a
//! conditional put (S3 `If-None-Match: *`, a hard link on local disk), so of two runs
//! started on one location at once exactly one gets it; the other is refused with
//! [`Error::Leased`], which names the holder (engine, host, pid, start time). The holder
//! renews the lease every [`LeaseConfig::renew_interval`] and deletes it at the end.
//!
//! A run that was killed leaves its lease behind. It is *stale*, and the next run takes it
//! over, once it has not been renewed for [`LeaseConfig::stale_after`] renew intervals, or at
//! once when it names a process on this host that no longer exists (so `cai run --resume`
//! right after a kill on the same machine works).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use cai_core::lease::{Lease, LeaseConfig};
//! use cai_core::StorageUrl;
//! let results = StorageUrl::parse("memory://lease-doc/run").unwrap();
//! let (lease, took_over) = Lease::acquire(&results, "local", &LeaseConfig::default())
//!     .await
//!     .unwrap();
//! assert!(took_over.is_none());
//! // A second run on the same location is refused, naming the first.
//! let e = Lease::acquire(&results, "slurm", &LeaseConfig::default()).await.unwrap_err();
//! assert!(e.to_string().contains("engine local"), "{e}");
//! lease.release().await.unwrap();
//! assert!(Lease::acquire(&results, "slurm", &LeaseConfig::default()).await.is_ok());
//! # });
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout;
use crate::storage::{ObjectVersion, StorageUrl};

/// Default seconds between two renewals.
pub const DEFAULT_RENEW_S: f64 = 30.0;
/// Default renew intervals without renewal after which a lease is stale.
pub const DEFAULT_STALE_AFTER: u32 = 4;
/// Environment variable: seconds between two renewals.
pub const ENV_RENEW_S: &str = "CAI_LEASE_RENEW_S";
/// Environment variable: renew intervals without renewal after which a lease is stale.
pub const ENV_STALE_AFTER: &str = "CAI_LEASE_STALE_AFTER";

/// How often a lease is renewed and when it is stale.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// Time between two renewals (default 30 s).
    pub renew_interval: Duration,
    /// A lease not renewed for this many renew intervals is stale (default 4).
    pub stale_after: u32,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            renew_interval: Duration::from_secs_f64(DEFAULT_RENEW_S),
            stale_after: DEFAULT_STALE_AFTER,
        }
    }
}

impl LeaseConfig {
    /// The defaults, overridden by `CAI_LEASE_RENEW_S` (seconds, > 0) and
    /// `CAI_LEASE_STALE_AFTER` (intervals, ≥ 1) when set.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(
            std::env::var(ENV_RENEW_S).ok().as_deref(),
            std::env::var(ENV_STALE_AFTER).ok().as_deref(),
        )
    }

    /// [`LeaseConfig::from_env`] on given values.
    pub fn from_vars(renew_s: Option<&str>, stale_after: Option<&str>) -> Result<Self> {
        let mut c = Self::default();
        if let Some(v) = renew_s {
            let s: f64 = v.trim().parse().map_err(|_| Error::Invalid {
                field: ENV_RENEW_S.into(),
                reason: format!("{v:?} is not a number of seconds"),
            })?;
            if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
                return Err(Error::Invalid {
                    field: ENV_RENEW_S.into(),
                    reason: format!("{v} must be more than 0 and at most 86400 seconds"),
                });
            }
            c.renew_interval = Duration::from_secs_f64(s);
        }
        if let Some(v) = stale_after {
            c.stale_after = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| (1..=1000).contains(&n))
                .ok_or_else(|| Error::Invalid {
                    field: ENV_STALE_AFTER.into(),
                    reason: format!("{v:?} is not a whole number of intervals from 1 to 1000"),
                })?;
        }
        Ok(c)
    }

    /// Seconds without renewal after which a lease is stale.
    pub fn stale_after_s(&self) -> f64 {
        self.renew_interval.as_secs_f64() * f64::from(self.stale_after)
    }
}

/// What `lease.json` holds: who runs at the location, since when, last seen when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The engine of the run (`local`, `slurm`, `aws`).
    pub engine: String,
    /// The host the run was started on.
    pub host: String,
    /// The process id of the run there.
    pub pid: u32,
    /// Unix time the lease was taken.
    pub started_at: f64,
    /// Unix time it was last renewed.
    pub renewed_at: f64,
    /// Seconds without renewal after which the holder counts it stale.
    pub stale_after_s: f64,
    /// Token unique to this holding, so that a holder knows its own lease.
    pub token: String,
}

impl LeaseHolder {
    /// One line naming the holder, for messages.
    pub fn describe(&self, now: f64) -> String {
        format!(
            "engine {} on host {}, pid {}, started {}, last renewed {:.0} s ago",
            self.engine,
            self.host,
            self.pid,
            utc(self.started_at),
            (now - self.renewed_at).max(0.0)
        )
    }

    /// Why this lease is stale at `now` as seen from `this_host`, or `None` while it holds.
    pub fn stale_reason(&self, now: f64, this_host: &str) -> Option<String> {
        let age = now - self.renewed_at;
        // NaN times (a damaged lease) count as stale rather than holding forever.
        if age.is_nan() || age > self.stale_after_s {
            return Some(format!(
                "not renewed for {age:.0} s (stale after {:.0} s)",
                self.stale_after_s
            ));
        }
        if self.host == this_host && self.pid != std::process::id() && process_gone(self.pid) {
            return Some(format!(
                "process {} on {} no longer exists",
                self.pid, self.host
            ));
        }
        None
    }
}

/// Whether no process `pid` runs on this machine (only known where `/proc` is; elsewhere
/// the time rule alone decides).
fn process_gone(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: f64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("unix time {t:.0}"))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is ours and renewed.
    Renewed,
    /// Another run took the lease over (or it was deleted): this run no longer holds it.
    Lost,
}

/// State shared by a [`Lease`] and its renewal task.
#[derive(Debug)]
struct Held {
    location: StorageUrl,
    holder: Mutex<LeaseHolder>,
    version: Mutex<Option<ObjectVersion>>,
    lost: AtomicBool,
}

impl Held {
    fn doc(&self) -> Result<(LeaseHolder, Vec<u8>)> {
        let h = self
            .holder
            .lock()
            .map_err(|_| poisoned(&self.location))?
            .clone();
        let bytes = encode(&self.location, &h)?;
        Ok((h, bytes))
    }

    async fn renew(&self) -> Result<Renewal> {
        if self.lost.load(Ordering::SeqCst) {
            return Ok(Renewal::Lost);
        }
        {
            let mut h = self.holder.lock().map_err(|_| poisoned(&self.location))?;
            h.renewed_at = unix_now();
        }
        let (h, bytes) = self.doc()?;
        let version = self
            .version
            .lock()
            .map_err(|_| poisoned(&self.location))?
            .clone();
        let outcome = match version {
            Some(v) => match self
                .location
                .put_if_version(layout::LEASE, bytes.clone(), &v)
                .await
            {
                Ok(Some(new)) => Some(Some(new)),
                Ok(None) => None,
                Err(Error::Unsupported { .. }) => self.renew_unconditionally(&h, bytes).await?,
                Err(e) => return Err(e),
            },
            None => self.renew_unconditionally(&h, bytes).await?,
        };
        match outcome {
            Some(v) => {
                *self.version.lock().map_err(|_| poisoned(&self.location))? = v;
                Ok(Renewal::Renewed)
            }
            None => {
                self.lost.store(true, Ordering::SeqCst);
                Ok(Renewal::Lost)
            }
        }
    }

    /// Where the store cannot replace conditionally (local disk): check the token, then
    /// overwrite. `None` when the lease is no longer ours.
    async fn renew_unconditionally(
        &self,
        h: &LeaseHolder,
        bytes: Vec<u8>,
    ) -> Result<Option<Option<ObjectVersion>>> {
        match read_holder(&self.location).await? {
            Some((cur, _)) if cur.token == h.token => {
                self.location.put(layout::LEASE, bytes).await?;
                Ok(Some(None))
            }
            _ => Ok(None),
        }
    }

    /// Delete the lease if it is still ours.
    async fn release(&self) -> Result<()> {
        let token = self
            .holder
            .lock()
            .map_err(|_| poisoned(&self.location))?
            .token
            .clone();
        if let Some((cur, _)) = read_holder(&self.location).await? {
            if cur.token == token {
                self.location.delete(layout::LEASE).await?;
            }
        }
        Ok(())
    }
}

fn poisoned(location: &StorageUrl) -> Error {
    Error::Invalid {
        field: location.url_of(layout::LEASE),
        reason: "the lease's lock was poisoned by a panicking task".into(),
    }
}

fn encode(location: &StorageUrl, h: &LeaseHolder) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(h).map_err(|source| Error::Json {
        what: "lease",
        source_name: location.url_of(layout::LEASE),
        source,
    })
}

/// Read `lease.json` at a results location: its holder and version, if there is one.
pub async fn read_holder(location: &StorageUrl) -> Result<Option<(LeaseHolder, ObjectVersion)>> {
    let Some((bytes, version)) = location.get_versioned(layout::LEASE).await? else {
        return Ok(None);
    };
    let h = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: "lease",
        source_name: location.url_of(layout::LEASE),
        source,
    })?;
    Ok(Some((h, version)))
}

/// A results location's lease, held by this process until [`Lease::release`] (or drop).
/// While held, a task renews it every [`LeaseConfig::renew_interval`].
#[derive(Debug)]
pub struct Lease {
    held: Arc<Held>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl Lease {
    /// Take the lease of `location` for a run of `engine`, or fail with
    /// [`Error::Leased`] naming the run that holds it. A stale lease is taken over; its
    /// holder is returned then, so the caller can say so. Renewal starts at once (it needs
    /// a Tokio runtime).
    pub async fn acquire(
        location: &StorageUrl,
        engine: &str,
        config: &LeaseConfig,
    ) -> Result<(Lease, Option<LeaseHolder>)> {
        let (held, took_over) = Self::take(location, engine, config).await?;
        let held = Arc::new(held);
        let task = held.clone();
        let interval = config.renew_interval;
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match task.renew().await {
                    Ok(Renewal::Renewed) => {}
                    Ok(Renewal::Lost) => {
                        tracing::warn!(
                            "lost the lease of {}: another run took it over",
                            task.location
                        );
                        break;
                    }
                    Err(e) => tracing::warn!("cannot renew the lease: {e}"),
                }
            }
        });
        Ok((
            Lease {
                held,
                renewer: Some(renewer),
                released: false,
            },
            took_over,
        ))
    }

    async fn take(
        location: &StorageUrl,
        engine: &str,
        config: &LeaseConfig,
    ) -> Result<(Held, Option<LeaseHolder>)> {
        let now = unix_now();
        let this_host = host_name();
        let holder = LeaseHolder {
            engine: engine.to_string(),
            host: this_host.clone(),
            pid: std::process::id(),
            started_at: now,
            renewed_at: now,
            stale_after_s: config.stale_after_s(),
            token: token(),
        };
        let bytes = encode(location, &holder)?;
        let held = |version| Held {
            location: location.clone(),
            holder: Mutex::new(holder.clone()),
            version: Mutex::new(version),
            lost: AtomicBool::new(false),
        };
        // A few rounds: the lease may vanish or change between our looks.
        for _ in 0..4 {
            if let Some(v) = location.put_if_absent(layout::LEASE, bytes.clone()).await? {
                return Ok((held(Some(v)), None));
            }
            let Some((old, version)) = read_holder(location).await? else {
                continue;
            };
            let now = unix_now();
            let Some(reason) = old.stale_reason(now, &this_host) else {
                return Err(leased(location, &old, now));
            };
            tracing::warn!(
                "taking over the stale lease of {} ({reason})",
                old.describe(now)
            );
            match location
                .put_if_version(layout::LEASE, bytes.clone(), &version)
                .await
            {
                Ok(Some(v)) => return Ok((held(Some(v)), Some(old))),
                Ok(None) => continue,
                Err(Error::Unsupported { .. }) => {
                    // Local disk: no conditional replace. Remove the stale lease and race
                    // for a fresh one; of two runs doing so, one wins the create.
                    location.delete(layout::LEASE).await?;
                    if let Some(v) = location.put_if_absent(layout::LEASE, bytes.clone()).await? {
                        return Ok((held(Some(v)), Some(old)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        match read_holder(location).await? {
            Some((old, _)) => Err(leased(location, &old, unix_now())),
            None => Err(Error::Invalid {
                field: location.url_of(layout::LEASE),
                reason: "the lease kept changing while we tried to take it; try again".into(),
            }),
        }
    }

    /// Who holds this lease (this process).
    pub fn holder(&self) -> LeaseHolder {
        self.held
            .holder
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Whether another run has taken the lease over since (ours went stale: this process
    /// stalled longer than the stale time).
    pub fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::SeqCst)
    }

    /// Renew now (the renewal task does this every interval).
    pub async fn renew(&self) -> Result<Renewal> {
        self.held.renew().await
    }

    /// Stop renewing and delete the lease (if it is still ours).
    pub async fn release(mut self) -> Result<()> {
        if let Some(t) = self.renewer.take() {
            t.abort();
        }
        self.released = true;
        self.held.release().await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(t) = self.renewer.take() {
            t.abort();
        }
        if self.released {
            return;
        }
        // Dropped without release (an error or Ctrl-C unwound the run): free the location
        // now where that can be done without waiting, else in the background.
        let held = self.held.clone();
        if let Some(path) = held.location.local_path() {
            let file = path.join(layout::LEASE);
            let ours = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<LeaseHolder>(&b).ok())
                .is_some_and(|h| Some(h.token) == held.holder.lock().ok().map(|m| m.token.clone()));
            if ours {
                let _ = std::fs::remove_file(file);
            }
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = held.release().await;
            });
        }
    }
}

fn leased(location: &StorageUrl, h: &LeaseHolder, now: f64) -> Error {
    let left = (h.stale_after_s - (now - h.renewed_at)).max(0.0);
    Error::Leased {
        url: location.url_of(layout::LEASE),
        holder: h.describe(now),
        stale: format!(
            "{:.0} s after its last renewal, in {left:.0} s; if you are sure it is not \
             running, delete {} by hand",
            h.stale_after_s,
            location.url_of(layout::LEASE)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: u32, renewed_at: f64) -> LeaseHolder {
        LeaseHolder {
            engine: "local".into(),
            host: host.into(),
            pid,
            started_at: renewed_at - 10.0,
            renewed_at,
            stale_after_s: 120.0,
            token: "t".into(),
        }
    }

    #[test]
    fn config_from_vars() {
        let c = LeaseConfig::from_vars(None, None).unwrap();
        assert_eq!(c, LeaseConfig::default());
        assert_eq!(c.stale_after_s(), 120.0);
        let c = LeaseConfig::from_vars(Some("0.5"), Some("3")).unwrap();
        assert_eq!(c.stale_after_s(), 1.5);
        for (r, s, want) in [
            (Some("x"), None, ENV_RENEW_S),
            (Some("0"), None, ENV_RENEW_S),
            (Some("NaN"), None, ENV_RENEW_S),
            (None, Some("0"), ENV_STALE_AFTER),
            (None, Some("-1"), ENV_STALE_AFTER),
        ] {
            let e = LeaseConfig::from_vars(r, s).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn stale_by_time_or_by_a_dead_process_here() {
        let now = 1_000_000.0;
        let me = std::process::id();
        // Fresh, held by this very process: not stale.
        assert_eq!(holder("h", me, now - 5.0).stale_reason(now, "h"), None);
        // Not renewed for longer than its stale time.
        let r = holder("elsewhere", 1, now - 121.0).stale_reason(now, "h");
        assert!(r.is_some_and(|r| r.contains("not renewed for 121 s")));
        // A bad clock value counts as stale rather than holding forever.
        assert!(holder("elsewhere", 1, f64::NAN)
            .stale_reason(now, "h")
            .is_some());
        // On another host, a fresh lease holds whatever its pid.
        assert_eq!(
            holder("elsewhere", u32::MAX - 1, now).stale_reason(now, "h"),
            None
        );
        // On this host, a process that has exited frees it at once.
        if std::path::Path::new("/proc/self").exists() {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            let r = holder("h", pid, now).stale_reason(now, "h");
            assert!(r.is_some_and(|r| r.contains("no longer exists")));
        }
    }

    #[test]
    fn description_names_the_holder() {
        let h = holder("node7", 4242, 1_780_000_000.0);
        let d = h.describe(1_780_000_012.0);
        for want in [
            "engine local",
            "host node7",
            "pid 4242",
            "started 2026-05-28",
            "12 s ago",
        ] {
            assert!(d.contains(want), "{want} not in {d}");
        }
    }

    async fn second_run_is_refused_then_takes_over_when_stale(loc: StorageUrl) {
        let cfg = LeaseConfig::default();
        let (first, took) = Lease::acquire(&loc, "local", &cfg).await.unwrap();
        assert!(took.is_none());
        let e = Lease::acquire(&loc, "slurm", &cfg).await.unwrap_err();
        assert!(matches!(e, Error::Leased { .. }), "{e}");
        let msg = e.to_string();
        for want in [
            "engine local",
            &format!("pid {}", std::process::id()),
            "lease.json",
            "started ",
        ] {
            assert!(msg.contains(want), "{want} not in {msg}");
        }
        assert_eq!(first.renew().await.unwrap(), Renewal::Renewed);
        // Age the lease as a killed run leaves it: not renewed for longer than stale.
        let (mut old, _) = read_holder(&loc).await.unwrap().unwrap();
        old.renewed_at -= 1_000.0;
        old.host = "elsewhere".into();
        loc.put(layout::LEASE, serde_json::to_vec(&old).unwrap())
            .await
            .unwrap();
        let (second, took) = Lease::acquire(&loc, "slurm", &cfg).await.unwrap();
        assert_eq!(took.map(|h| h.host), Some("elsewhere".to_string()));
        // The first run finds it lost; releasing it does not free the second's lease.
        assert_eq!(first.renew().await.unwrap(), Renewal::Lost);
        assert!(first.is_lost());
        first.release().await.unwrap();
        let (now_held, _) = read_holder(&loc).await.unwrap().unwrap();
        assert_eq!(now_held.token, second.holder().token);
        assert_eq!(second.renew().await.unwrap(), Renewal::Renewed);
        second.release().await.unwrap();
        assert!(read_holder(&loc).await.unwrap().is_none());
        // Dropped without release (an error unwound the run): freed too.
        let (third, _) = Lease::acquire(&loc, "local", &cfg).await.unwrap();
        drop(third);
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if read_holder(&loc).await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(read_holder(&loc).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lease_in_memory() {
        second_run_is_refused_then_takes_over_when_stale(
            StorageUrl::parse("memory://lease-test/run").unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn lease_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        second_run_is_refused_then_takes_over_when_stale(
            StorageUrl::parse(dir.path().to_str().unwrap()).unwrap(),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_runs_at_once_exactly_one_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        for loc in [
            StorageUrl::parse("memory://lease-race/run").unwrap(),
            StorageUrl::parse(dir.path().to_str().unwrap()).unwrap(),
        ] {
            let cfg = LeaseConfig::default();
            let tries = (0..8).map(|_| {
                let loc = loc.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move { Lease::acquire(&loc, "local", &cfg).await })
            });
            let mut won = Vec::new();
            for t in tries {
                match t.await.unwrap() {
                    Ok((l, _)) => won.push(l),
                    Err(e) => assert!(matches!(e, Error::Leased { .. }), "{e}"),
                }
            }
            assert_eq!(won.len(), 1, "{loc}");
            for l in won {
                l.release().await.unwrap();
            }
        }
    }
}
