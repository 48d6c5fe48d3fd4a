//! One error type for the whole library, with a stable `kind()` and `code()`.
//!
//! The bindings map on [`Error::code`]: Python's `err.code` and Node's `err.code` carry
//! exactly these strings, so they are part of the public API and never change meaning.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a user's input a problem was found: file, record (1-based line or record
/// number) and field. Every part is optional because not every source has all three.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The file being read, when the input came from a file.
    pub file: Option<PathBuf>,
    /// 1-based line (JSONL, TXT, CSV) or record (JSON array, in-memory) number.
    pub record: Option<u64>,
    /// The field or column concerned.
    pub field: Option<String>,
}

impl Location {
    /// A location in `file`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { file: Some(path.into()), ..Default::default() }
    }
    /// The same location at `record`.
    pub fn at(mut self, record: u64) -> Self {
        self.record = Some(record);
        self
    }
    /// The same location for `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.file {
            parts.push(p.display().to_string());
        }
        if let Some(r) = self.record {
            parts.push(format!("record {r}"));
        }
        if let Some(field) = &self.field {
            parts.push(format!("field `{field}`"));
        }
        if parts.is_empty() {
            f.write_str("input")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// An opaque SQLite failure. The underlying driver is an implementation detail.
#[derive(Debug)]
pub struct StorageError(pub(crate) String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

/// Every failure anneal reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration, option or argument is invalid; `field` names it.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// User data (a dataset file, records, model files) is malformed.
    #[error("invalid data at {location}: {reason}")]
    InvalidData { location: Location, reason: String },
    /// A catalog object (dataset, model, alias, job) does not exist.
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    /// A name or object that must be unique is already taken.
    #[error("{what} `{id}` already exists{detail}")]
    AlreadyExists { what: &'static str, id: String, detail: String },
    /// The same content is already stored (same sha256) under another name.
    #[error("{what} with the same content (sha256 {sha256}) already exists as `{existing_name}` (id {existing_id})")]
    DuplicateContent { what: &'static str, sha256: String, existing_id: String, existing_name: String },
    /// The object is needed by others (a child adapter, a job) and was not deleted.
    #[error("{what} `{id}` is in use: {reason}")]
    InUse { what: &'static str, id: String, reason: String },
    /// A path given by the user does not exist.
    #[error("file not found: {}", path.display())]
    FileNotFound { path: PathBuf },
    /// Any other I/O failure, with the path concerned.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The home directory was written by a newer anneal; it is left untouched.
    #[error(
        "home {} has catalog schema version {found}, newer than this anneal supports ({supported}); upgrade anneal",
        path.display()
    )]
    IncompatibleHome { path: PathBuf, found: i64, supported: i64 },
    /// The operation was cancelled through its [`crate::CancelToken`].
    #[error("operation cancelled")]
    Cancelled,
    /// A training run was cancelled (kind `cancelled`): which job, and how to continue
    /// it (`TrainingEngine::resume`); see `TrainingEngine::explain`.
    #[error("training cancelled: {hint}")]
    JobCancelled { job_id: String, hint: String },
    /// An event sink (a user's callback) failed; bindings re-raise the original error.
    #[error("event callback failed: {0}")]
    Callback(String),
    /// The catalog database failed.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// A tensor computation failed.
    #[error("compute error: {0}")]
    Compute(String),
    /// Should not happen: a bug or corrupted state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Clone for Error {
    /// A copy that carries the same kind, code, fields and message (an I/O error's
    /// source is copied as its kind and text). Lets several waiters of one job get
    /// the same error.
    fn clone(&self) -> Self {
        match self {
            Error::InvalidConfig { field, reason } => {
                Error::InvalidConfig { field: field.clone(), reason: reason.clone() }
            }
            Error::InvalidData { location, reason } => {
                Error::InvalidData { location: location.clone(), reason: reason.clone() }
            }
            Error::NotFound { what, id } => Error::NotFound { what, id: id.clone() },
            Error::AlreadyExists { what, id, detail } => {
                Error::AlreadyExists { what, id: id.clone(), detail: detail.clone() }
            }
            Error::DuplicateContent { what, sha256, existing_id, existing_name } => Error::DuplicateContent {
                what,
                sha256: sha256.clone(),
                existing_id: existing_id.clone(),
                existing_name: existing_name.clone(),
            },
            Error::InUse { what, id, reason } => Error::InUse { what, id: id.clone(), reason: reason.clone() },
            Error::FileNotFound { path } => Error::FileNotFound { path: path.clone() },
            Error::Io { path, source } => {
                Error::Io { path: path.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
            }
            Error::IncompatibleHome { path, found, supported } => {
                Error::IncompatibleHome { path: path.clone(), found: *found, supported: *supported }
            }
            Error::Cancelled => Error::Cancelled,
            Error::JobCancelled { job_id, hint } => Error::JobCancelled { job_id: job_id.clone(), hint: hint.clone() },
            Error::Callback(m) => Error::Callback(m.clone()),
            Error::Storage(e) => Error::Storage(StorageError(e.0.clone())),
            Error::Compute(m) => Error::Compute(m.clone()),
            Error::Internal(m) => Error::Internal(m.clone()),
        }
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse class of an [`Error`]; what a caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    InvalidConfig,
    InvalidData,
    NotFound,
    AlreadyExists,
    DuplicateContent,
    InUse,
    FileNotFound,
    Io,
    IncompatibleHome,
    Cancelled,
    Callback,
    Storage,
    Compute,
    Internal,
}

impl ErrorKind {
    /// Every kind, in a stable order (for docs and binding tables).
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidData,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::DuplicateContent,
        ErrorKind::InUse,
        ErrorKind::FileNotFound,
        ErrorKind::Io,
        ErrorKind::IncompatibleHome,
        ErrorKind::Cancelled,
        ErrorKind::Callback,
        ErrorKind::Storage,
        ErrorKind::Compute,
        ErrorKind::Internal,
    ];

    /// The stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidData => "invalid_data",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::DuplicateContent => "duplicate_content",
            ErrorKind::InUse => "in_use",
            ErrorKind::FileNotFound => "file_not_found",
            ErrorKind::Io => "io",
            ErrorKind::IncompatibleHome => "incompatible_home",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Callback => "callback_failed",
            ErrorKind::Storage => "storage",
            ErrorKind::Compute => "compute",
            ErrorKind::Internal => "internal",
        }
    }
}

impl Error {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::InvalidData { .. } => ErrorKind::InvalidData,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::DuplicateContent { .. } => ErrorKind::DuplicateContent,
            Error::InUse { .. } => ErrorKind::InUse,
            Error::FileNotFound { .. } => ErrorKind::FileNotFound,
            Error::Io { .. } => ErrorKind::Io,
            Error::IncompatibleHome { .. } => ErrorKind::IncompatibleHome,
            Error::Cancelled | Error::JobCancelled { .. } => ErrorKind::Cancelled,
            Error::Callback(_) => ErrorKind::Callback,
            Error::Storage(_) => ErrorKind::Storage,
            Error::Compute(_) => ErrorKind::Compute,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Stable snake_case code shared by Python (`err.code`) and Node (`err.code`).
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// An [`Error::InvalidConfig`] for `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { field: field.into(), reason: reason.into() }
    }

    /// An [`Error::InvalidData`] at `location`.
    pub fn data(location: Location, reason: impl Into<String>) -> Self {
        Error::InvalidData { location, reason: reason.into() }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { what, id: id.into() }
    }

    /// Maps an I/O error on `path`; a missing file becomes [`Error::FileNotFound`].
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::FileNotFound { path }
        } else {
            Error::Io { path, source }
        }
    }
}

/// Attaches a path to I/O results: `fs::read(&p).with_path(&p)?`.
pub trait IoResultExt<T> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(StorageError(e.to_string()))
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Compute(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            let c = k.code();
            assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'), "{c}");
            assert!(seen.insert(c), "duplicate code {c}");
        }
    }

    #[test]
    fn missing_file_is_file_not_found() {
        let e = std::fs::read("/definitely/not/here").with_path("/definitely/not/here");
        let e = e.unwrap_err();
        assert_eq!(e.code(), "file_not_found");
        assert!(e.to_string().contains("/definitely/not/here"));
    }

    #[test]
    fn data_error_names_file_record_and_field() {
        let e = Error::data(Location::file("a.jsonl").at(7).field("prompt"), "missing");
        let s = e.to_string();
        assert!(s.contains("a.jsonl") && s.contains("record 7") && s.contains("`prompt`"), "{s}");
        assert_eq!(e.kind(), ErrorKind::InvalidData);
    }
}
