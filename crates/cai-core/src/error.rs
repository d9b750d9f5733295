//! Errors of cai-core.

/// What went wrong in cai-core. Every variant names the URL, key or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file could not be written (or moved into place).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A location string could not be understood as a storage URL.
    #[error("bad location {url:?}: {reason}")]
    BadUrl {
        /// The location as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// An object was not found at a location.
    #[error("not found: {url}")]
    NotFound {
        /// Full URL of the missing object.
        url: String,
    },
    /// The object store failed.
    #[error("storage error at {url}: {source}")]
    Store {
        /// Full URL of the object or prefix.
        url: String,
        /// The underlying store error.
        #[source]
        source: object_store::Error,
    },
    /// A JSON document could not be read.
    #[error("cannot read {what} from {source_name}: {source}")]
    Json {
        /// What was being read (payload, plan, rank report...).
        what: &'static str,
        /// Where it came from.
        source_name: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A predictions file could not be written or read.
    #[error("predictions {file}: {reason}")]
    Parquet {
        /// File name.
        file: String,
        /// Why.
        reason: String,
    },
    /// The store cannot do what was asked (a conditional write on local disk…).
    #[error("{url}: the store does not support {what}")]
    Unsupported {
        /// Full URL of the object.
        url: String,
        /// The operation.
        what: String,
    },
    /// Another run holds the results location's lease.
    #[error(
        "{url} is in use by another run: {holder}; wait for it to end (or stop it); a run that \
         was killed frees the location once its lease is stale ({stale})"
    )]
    Leased {
        /// URL of the lease object.
        url: String,
        /// Who holds it: engine, host, pid, start time, last renewal.
        holder: String,
        /// When the lease goes stale and how to free it by hand.
        stale: String,
    },
    /// A rank of the plan would not fit one function invocation (time or memory).
    #[error("rank {rank} {reason}")]
    TooBig {
        /// The worst rank.
        rank: usize,
        /// What it needs, what it has, and the world size or partition size that fits.
        reason: String,
    },
    /// A payload or plan field has a value that cannot be used.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Field name.
        field: String,
        /// Why the value is refused.
        reason: String,
    },
}

/// Result with cai-core's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
