//! Errors of the reporting crate; each names the file or figure at fault.

/// What went wrong while reading results or writing a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Storage or a core format failed (names the URL).
    #[error(transparent)]
    Core(Box<cai_core::Error>),
    /// A JSON file under the results could not be read as expected.
    #[error("{file}: {reason}")]
    Json {
        /// URL of the file.
        file: String,
        /// What was wrong.
        reason: String,
    },
    /// A location holds no run (no plan.json, summary.json or `<rank>.json`).
    #[error("{location}: no run results here (no plan.json, summary.json or <rank>.json, in it or below it)")]
    NoRuns {
        /// The location given.
        location: String,
    },
    /// Drawing a figure failed.
    #[error("figure {figure}: {reason}")]
    Plot {
        /// Figure id.
        figure: String,
        /// What the plotting library said.
        reason: String,
    },
    /// Writing an output file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<cai_core::Error> for Error {
    fn from(e: cai_core::Error) -> Self {
        Error::Core(Box::new(e))
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
