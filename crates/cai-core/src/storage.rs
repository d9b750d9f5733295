//! Locations as URLs: a plain path or `file://` (this machine), `memory://name` (tests),
//! `s3://bucket/prefix` (feature `aws`), all behind one [`object_store::ObjectStore`].
//!
//! Writes are whole-object puts: a local put goes to a temporary file that is renamed into
//! place, an S3 put is one request, so a reader sees an object complete or not at all.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::error::{Error, Result};

/// Write a local file atomically: a temporary file beside it, renamed into place, so a
/// reader (or a process killed mid-write) never sees half of it. Creates the folder.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let err = |p: &std::path::Path| {
        let path = p.display().to_string();
        move |source| Error::Write { path, source }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(path)(e)
    })
}

/// How S3 requests are bounded and retried (object_store's `RetryConfig` and request
/// timeout, set on every `s3://` store [`StorageUrl::parse`] opens). A request answered
/// 5xx/429 (S3's `SlowDown`, `InternalError`), cut before its answer, or not answered within
/// `request_timeout`, is sent again after an exponential backoff (0.1 s doubling to 15 s,
/// with jitter), at most `max_retries` times and not after `retry_timeout`; a GET whose body
/// is cut resumes from the byte where it stopped. Each retry is logged at `info` (shown by
/// default). A fault that outlasts these bounds is an error naming the object, so a rank
/// fails rather than hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Retry {
    /// Retries of one request (`CAI_S3_RETRIES`, default 10).
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt (`CAI_S3_RETRY_TIMEOUT`,
    /// seconds, default 180).
    pub retry_timeout: std::time::Duration,
    /// One attempt, from connecting to the last byte of the answer (`CAI_S3_TIMEOUT`,
    /// seconds, default 30).
    pub request_timeout: std::time::Duration,
}

impl Default for S3Retry {
    fn default() -> Self {
        Self {
            max_retries: 10,
            retry_timeout: std::time::Duration::from_secs(180),
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl S3Retry {
    /// The defaults, overridden by `CAI_S3_RETRIES`, `CAI_S3_RETRY_TIMEOUT` and
    /// `CAI_S3_TIMEOUT` where set.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`S3Retry::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut r = Self::default();
        if let Some(v) = var("CAI_S3_RETRIES") {
            r.max_retries = v.trim().parse().map_err(|_| Error::Invalid {
                field: "CAI_S3_RETRIES".into(),
                reason: format!("{v:?} is not a whole number of retries"),
            })?;
        }
        let secs = |name: &str, v: String| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
                .map(std::time::Duration::from_secs_f64)
                .ok_or_else(|| Error::Invalid {
                    field: name.into(),
                    reason: format!("{v:?} is not a positive number of seconds"),
                })
        };
        if let Some(v) = var("CAI_S3_RETRY_TIMEOUT") {
            r.retry_timeout = secs("CAI_S3_RETRY_TIMEOUT", v)?;
        }
        if let Some(v) = var("CAI_S3_TIMEOUT") {
            r.request_timeout = secs("CAI_S3_TIMEOUT", v)?;
        }
        Ok(r)
    }

    /// object_store's retry configuration for these bounds.
    #[cfg(feature = "aws")]
    fn config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// A storage location: an object store plus a prefix inside it.
#[derive(Clone)]
pub struct StorageUrl {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: String,
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageUrl({})", self.display)
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// One object found under a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the location listed (e.g. `00001.safetensors` or `ranks/0.json`).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The store's entity tag, when it gives one (S3 does; on local disk object_store makes
    /// one from the inode, the modification time and the size): a changed object has a new one.
    pub e_tag: Option<String>,
}

/// The version of an object as its store reports it (ETag and/or version id), for
/// conditional writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectVersion {
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// The object's version id, on versioned stores.
    pub version: Option<String>,
}

/// Named in-memory stores, so that every `memory://name` opened in one process is the same store.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn bad(url: &str, reason: impl Into<String>) -> Error {
    Error::BadUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// `path` with `.` dropped and each `..` taking away the component before it (as a shell's
/// `cd` does), so that `../models/m.onnx` or `crates/x/../y` is a location object_store's
/// paths accept (they refuse `..` segments).
fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl StorageUrl {
    /// Parse a location: `/abs/path`, `rel/path`, `file:///abs`, `memory://name/prefix`,
    /// or `s3://bucket/prefix` (S3 needs the `aws` feature; credentials, region and
    /// `AWS_ENDPOINT_URL` come from the usual `AWS_*` environment variables).
    pub fn parse(location: &str) -> Result<Self> {
        let location = location.trim();
        if location.is_empty() {
            return Err(bad(location, "empty location"));
        }
        if let Some(rest) = location.strip_prefix("memory://") {
            let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = {
                let mut stores = memory_stores()
                    .lock()
                    .map_err(|_| bad(location, "in-memory store registry poisoned"))?;
                stores
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone()
            };
            return Ok(Self {
                store,
                prefix: Path::from(prefix),
                display: format!("memory://{}", join_display(name, prefix)),
            });
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            return Self::open_s3(location, rest);
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(bad(
                location,
                "unknown scheme (use a path, file://, s3:// or memory://)",
            ));
        }
        let raw = location.strip_prefix("file://").unwrap_or(location);
        let abs = normalize(&std::path::absolute(raw).map_err(|e| bad(location, e.to_string()))?);
        let prefix = Path::from_absolute_path(&abs).map_err(|e| bad(location, e.to_string()))?;
        Ok(Self {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            display: abs.to_string_lossy().trim_end_matches('/').to_string(),
        })
    }

    #[cfg(feature = "aws")]
    fn open_s3(location: &str, rest: &str) -> Result<Self> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(location, "no bucket name"));
        }
        let retry = S3Retry::from_env()?;
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry.config())
            .with_config(
                object_store::aws::AmazonS3ConfigKey::Client(
                    object_store::ClientConfigKey::Timeout,
                ),
                format!("{}ms", retry.request_timeout.as_millis()),
            );
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder
                .with_endpoint(&endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| bad(location, e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::from(prefix),
            display: format!("s3://{}", join_display(bucket, prefix)),
        })
    }

    #[cfg(not(feature = "aws"))]
    fn open_s3(location: &str, _rest: &str) -> Result<Self> {
        Err(bad(
            location,
            "this build of cai has no S3 support (rebuild with the `aws` feature)",
        ))
    }

    /// A location below this one (`rel` may contain `/`).
    pub fn child(&self, rel: &str) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.path_of(rel),
            display: join_display(&self.display, rel),
        }
    }

    /// The full URL of an object under this location, for messages and reports.
    pub fn url_of(&self, key: &str) -> String {
        join_display(&self.display, key)
    }

    /// True for a location on this machine's file system.
    pub fn is_local(&self) -> bool {
        self.display.starts_with('/')
    }

    /// The file-system path of this location, when it is local.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        self.is_local()
            .then(|| std::path::PathBuf::from(&self.display))
    }

    fn path_of(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Read a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path_of(key);
        let res = self.store.get(&path).await;
        match res {
            Ok(r) => r.bytes().await.map_err(|e| self.store_err(key, e)),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Read an object if it exists.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write a whole object (atomic: readers see all of it or none).
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let path = self.path_of(key);
        self.store
            .put(&path, PutPayload::from_bytes(bytes.into()))
            .await
            .map(|_| ())
            .map_err(|e| self.store_err(key, e))
    }

    /// Write an object only if there is none at `key` yet (a conditional put: `If-None-Match`
    /// on S3, a hard link on local disk), so that of two writers exactly one wins. Returns
    /// the new object's version, or `None` when an object was already there.
    pub async fn put_if_absent(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<Option<ObjectVersion>> {
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(
                &self.path_of(key),
                PutPayload::from_bytes(bytes.into()),
                opts,
            )
            .await
        {
            Ok(r) => Ok(Some(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Replace an object only if it is still at `version` (`If-Match` on S3). Returns the
    /// new version, `None` when the object changed (or went) since, and
    /// `Err(Error::Unsupported)` where the store cannot write conditionally (local disk).
    pub async fn put_if_version(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
        version: &ObjectVersion,
    ) -> Result<Option<ObjectVersion>> {
        if version.e_tag.is_none() && version.version.is_none() {
            return Err(Error::Unsupported {
                url: self.url_of(key),
                what: "conditional replace (the store gave the object no version)".into(),
            });
        }
        let opts = PutOptions::from(PutMode::Update(UpdateVersion {
            e_tag: version.e_tag.clone(),
            version: version.version.clone(),
        }));
        match self
            .store
            .put_opts(
                &self.path_of(key),
                PutPayload::from_bytes(bytes.into()),
                opts,
            )
            .await
        {
            Ok(r) => Ok(Some(ObjectVersion {
                e_tag: r.e_tag,
                version: r.version,
            })),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(object_store::Error::NotImplemented { .. }) => Err(Error::Unsupported {
                url: self.url_of(key),
                what: "conditional replace".into(),
            }),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Read an object and its version (for [`StorageUrl::put_if_version`]), if it exists.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let res = match self.store.get(&self.path_of(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_err(key, e)),
        };
        let version = ObjectVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        match res.bytes().await {
            Ok(b) => Ok(Some((b, version))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path_of(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Delete an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path_of(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(key, e)),
        }
    }

    /// Every object under this location (recursively), keys relative to it, sorted.
    pub async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let metas: Vec<_> = match self.store.list(prefix).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.store_err("", e)),
        };
        let base = self.prefix.as_ref();
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let rel = if base.is_empty() {
                    full
                } else {
                    full.strip_prefix(base)?.strip_prefix('/')?
                };
                Some(ObjectInfo {
                    key: rel.to_string(),
                    size: m.size,
                    e_tag: m.e_tag,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The objects directly under this location and the folders there (keys relative to
    /// it, folders without their trailing `/`), in one delimited listing.
    pub async fn list_top(&self) -> Result<(Vec<ObjectInfo>, Vec<String>)> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let res = match self.store.list_with_delimiter(prefix).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(self.store_err("", e)),
        };
        let base = self.prefix.as_ref();
        let rel = |full: &str| -> Option<String> {
            if base.is_empty() {
                Some(full.to_string())
            } else {
                Some(full.strip_prefix(base)?.strip_prefix('/')?.to_string())
            }
        };
        let mut objects: Vec<ObjectInfo> = res
            .objects
            .into_iter()
            .filter_map(|m| {
                Some(ObjectInfo {
                    key: rel(m.location.as_ref())?,
                    size: m.size,
                    e_tag: m.e_tag,
                })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut dirs: Vec<String> = res
            .common_prefixes
            .iter()
            .filter_map(|p| rel(p.as_ref()))
            .collect();
        dirs.sort();
        Ok((objects, dirs))
    }

    fn store_err(&self, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound {
                url: self.url_of(key),
            },
            source => Error::Store {
                url: self.url_of(key),
                source,
            },
        }
    }
}

fn join_display(base: &str, rel: &str) -> String {
    let rel = rel.trim_matches('/');
    if rel.is_empty() {
        base.trim_end_matches('/').to_string()
    } else if base.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new/sub/out.csv");
        write_file_atomic(&out, b"a,b\n").unwrap();
        write_file_atomic(&out, b"c\n").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"c\n");
        let names: Vec<_> = std::fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.csv"]);
        let e = write_file_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.starts_with("cannot write"), "{e}");
    }

    #[tokio::test]
    async fn local_paths_with_dot_dot_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/m.onnx"), b"x").unwrap();
        let via = dir.path().join("a/b/../m.onnx");
        let loc = StorageUrl::parse(via.to_str().unwrap()).unwrap();
        assert_eq!(&loc.get("").await.unwrap()[..], b"x");
        assert!(!loc.to_string().contains(".."), "{loc}");
        let dot = dir.path().join("a/./b/..");
        let loc = StorageUrl::parse(dot.to_str().unwrap()).unwrap();
        assert_eq!(loc.to_string(), dir.path().join("a").display().to_string());
    }

    #[tokio::test]
    async fn memory_round_trip_and_list() {
        let loc = StorageUrl::parse("memory://t1/results").unwrap();
        loc.put("a.json", Bytes::from_static(b"{}")).await.unwrap();
        loc.put("ranks/0.json", Bytes::from_static(b"[]"))
            .await
            .unwrap();
        // Same name, same store.
        let again = StorageUrl::parse("memory://t1/results").unwrap();
        assert_eq!(&again.get("a.json").await.unwrap()[..], b"{}");
        let keys: Vec<_> = again
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["a.json", "ranks/0.json"]);
        assert!(again.get_opt("missing").await.unwrap().is_none());
        match again.get("missing").await {
            Err(Error::NotFound { url }) => assert_eq!(url, "memory://t1/results/missing"),
            other => panic!("{other:?}"),
        }
        assert_eq!(again.child("ranks").list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn local_paths_work_and_missing_dirs_list_empty() {
        let dir = std::env::temp_dir().join(format!("cai-core-test-{}", std::process::id()));
        let loc = StorageUrl::parse(dir.to_str().unwrap()).unwrap();
        assert!(loc.list().await.unwrap().is_empty());
        loc.put("x/y.bin", vec![1u8, 2, 3]).await.unwrap();
        assert!(dir.join("x/y.bin").exists());
        assert!(loc.exists("x/y.bin").await.unwrap());
        assert_eq!(loc.list().await.unwrap()[0].size, 3);
        let file_url = StorageUrl::parse(&format!("file://{}", dir.display())).unwrap();
        assert_eq!(&file_url.get("x/y.bin").await.unwrap()[..], &[1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn s3_retry_bounds_come_from_the_environment() {
        let none = S3Retry::from_vars(|_| None).unwrap();
        assert_eq!(none, S3Retry::default());
        assert_eq!(none.max_retries, 10);
        let vars = |k: &str| match k {
            "CAI_S3_RETRIES" => Some("2".to_string()),
            "CAI_S3_TIMEOUT" => Some("1.5".to_string()),
            _ => None,
        };
        let r = S3Retry::from_vars(vars).unwrap();
        assert_eq!(r.max_retries, 2);
        assert_eq!(r.request_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(r.retry_timeout, none.retry_timeout);
        for bad in ["-1", "x", "inf", "0"] {
            let e = S3Retry::from_vars(|k| (k == "CAI_S3_TIMEOUT").then(|| bad.to_string()));
            assert!(
                matches!(&e, Err(Error::Invalid { field, .. }) if field == "CAI_S3_TIMEOUT"),
                "{bad}: {e:?}"
            );
        }
        assert!(S3Retry::from_vars(|k| (k == "CAI_S3_RETRIES").then(|| "2.5".into())).is_err());
    }

    #[test]
    fn bad_urls_are_named() {
        assert!(matches!(
            StorageUrl::parse("gopher://x"),
            Err(Error::BadUrl { .. })
        ));
        assert!(matches!(StorageUrl::parse(""), Err(Error::BadUrl { .. })));
    }
}
