//! The exception hierarchy and the one place that maps `anneal::Error` onto it.
//!
//! Every exception carries `.code`, the stable string of `anneal::Error::code()`.
//! `AnnealFileNotFoundError` is also a builtin `FileNotFoundError`, and
//! `AnnealIOError` an `OSError`, so `except FileNotFoundError:` keeps working.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use anneal::{Error, ErrorKind};

create_exception!(anneal, AnnealError, PyException, "Base class of every anneal error. `.code` is its stable code.");
create_exception!(anneal, InvalidConfigError, AnnealError, "An option or argument is invalid (`invalid_config`).");
create_exception!(anneal, InvalidDataError, AnnealError, "Input data is malformed (`invalid_data`).");
create_exception!(anneal, NotFoundError, AnnealError, "A dataset, model or alias does not exist (`not_found`).");
create_exception!(anneal, AlreadyExistsError, AnnealError, "A unique name is taken (`already_exists`).");
create_exception!(
    anneal,
    DuplicateContentError,
    AnnealError,
    "The same content is already stored (`duplicate_content`)."
);
create_exception!(anneal, InUseError, AnnealError, "The object is needed by others (`in_use`).");
create_exception!(
    anneal,
    IncompatibleHomeError,
    AnnealError,
    "The home was written by a newer anneal (`incompatible_home`)."
);
create_exception!(anneal, CancelledError, AnnealError, "The operation was cancelled (`cancelled`).");
create_exception!(anneal, CallbackError, AnnealError, "An event callback failed (`callback_failed`).");
create_exception!(anneal, StorageError, AnnealError, "The catalog database failed (`storage`).");
create_exception!(anneal, ComputeError, AnnealError, "A tensor computation failed (`compute`).");
create_exception!(anneal, InternalError, AnnealError, "A bug or corrupted state (`internal`).");

static FILE_NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static IO_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `class <name>(AnnealError, <os_base>)`, created once.
fn mixed<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    os_base: Bound<'py, PyType>,
    doc: &str,
) -> PyResult<Bound<'py, PyType>> {
    let ty = cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(py, [py.get_type::<AnnealError>(), os_base])?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "anneal")?;
        ns.set_item("__doc__", doc)?;
        let ty = py.get_type::<PyType>().call1((name, bases, ns))?;
        Ok(ty.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py).clone())
}

/// `AnnealFileNotFoundError(AnnealError, FileNotFoundError)`.
pub fn file_not_found_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    mixed(
        py,
        &FILE_NOT_FOUND,
        "AnnealFileNotFoundError",
        py.get_type::<PyFileNotFoundError>(),
        "A path given to anneal does not exist (`file_not_found`); also a FileNotFoundError.",
    )
}

/// `AnnealIOError(AnnealError, OSError)`.
pub fn io_error_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    mixed(py, &IO_ERROR, "AnnealIOError", py.get_type::<PyOSError>(), "Any other I/O failure (`io`); also an OSError.")
}

/// The exception class for a kind.
fn class_for(py: Python<'_>, kind: ErrorKind) -> PyResult<Bound<'_, PyType>> {
    Ok(match kind {
        ErrorKind::InvalidConfig => py.get_type::<InvalidConfigError>(),
        ErrorKind::InvalidData => py.get_type::<InvalidDataError>(),
        ErrorKind::NotFound => py.get_type::<NotFoundError>(),
        ErrorKind::AlreadyExists => py.get_type::<AlreadyExistsError>(),
        ErrorKind::DuplicateContent => py.get_type::<DuplicateContentError>(),
        ErrorKind::InUse => py.get_type::<InUseError>(),
        ErrorKind::FileNotFound => file_not_found_type(py)?,
        ErrorKind::Io => io_error_type(py)?,
        ErrorKind::IncompatibleHome => py.get_type::<IncompatibleHomeError>(),
        ErrorKind::Cancelled => py.get_type::<CancelledError>(),
        ErrorKind::Callback => py.get_type::<CallbackError>(),
        ErrorKind::Storage => py.get_type::<StorageError>(),
        ErrorKind::Compute => py.get_type::<ComputeError>(),
        ErrorKind::Internal => py.get_type::<InternalError>(),
        _ => py.get_type::<AnnealError>(),
    })
}

/// Every class with its code, for the module and the class-level `code` attribute.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<AnnealError>();
    base.setattr("code", "anneal_error")?;
    m.add("AnnealError", base)?;
    for kind in ErrorKind::ALL {
        let cls = class_for(py, kind)?;
        cls.setattr("code", kind.code())?;
        m.add(cls.name()?, cls)?;
    }
    Ok(())
}

/// Structured details of an error, set as attributes next to `.code`.
fn details(py: Python<'_>, e: &Error, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    match e {
        Error::InvalidConfig { field, reason } => {
            exc.setattr("field", field)?;
            exc.setattr("reason", reason)?;
        }
        Error::InvalidData { location, reason } => {
            exc.setattr("file", location.file.as_ref().map(|p| p.display().to_string()))?;
            exc.setattr("record", location.record)?;
            exc.setattr("field", location.field.clone())?;
            exc.setattr("reason", reason)?;
        }
        Error::DuplicateContent { sha256, existing_id, existing_name, .. } => {
            exc.setattr("sha256", sha256)?;
            exc.setattr("existing_id", existing_id)?;
            exc.setattr("existing_name", existing_name)?;
        }
        Error::JobCancelled { job_id, .. } => exc.setattr("job_id", job_id)?,
        Error::IncompatibleHome { path, found, supported } => {
            exc.setattr("path", path.display().to_string())?;
            exc.setattr("found", found)?;
            exc.setattr("supported", supported)?;
        }
        _ => {}
    }
    let _ = py;
    Ok(())
}

/// Maps a core error to its Python exception, with `.code` and details set.
pub fn to_pyerr(py: Python<'_>, e: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = class_for(py, e.kind())?;
        // OSError's own (errno, strerror, filename) form, so `str(e)` reads like Python's
        // own `[Errno 2] No such file or directory: '/path'`; without an errno, the message.
        let exc = match &e {
            Error::FileNotFound { path } => cls.call1((2, "No such file or directory", path.display().to_string()))?,
            Error::Io { path, source } => match source.raw_os_error() {
                Some(errno) => {
                    // The OS's own words, as Python's strerror ("Not a directory"),
                    // without Rust's " (os error 20)".
                    let text = std::io::Error::from_raw_os_error(errno).to_string();
                    let text = text.strip_suffix(&format!(" (os error {errno})")).unwrap_or(&text).to_string();
                    cls.call1((errno, text, path.display().to_string()))?
                }
                None => cls.call1((e.to_string(),))?,
            },
            _ => cls.call1((e.to_string(),))?,
        };
        exc.setattr("code", e.code())?;
        details(py, &e, &exc)?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|err| err)
}

/// Newtype to get `?` from `anneal::Error` into `PyErr` (orphan rule).
pub struct PyAnnealErr(pub Error);

impl From<PyAnnealErr> for PyErr {
    fn from(PyAnnealErr(e): PyAnnealErr) -> PyErr {
        Python::attach(|py| to_pyerr(py, e))
    }
}

impl From<Error> for PyAnnealErr {
    fn from(e: Error) -> Self {
        PyAnnealErr(e)
    }
}

/// Runs core work with the GIL released and maps its error.
pub trait EnterCore {
    fn enter_core<T: Send>(self, f: impl FnOnce() -> anneal::Result<T> + Send) -> PyResult<T>;
}

impl EnterCore for Python<'_> {
    fn enter_core<T: Send>(self, f: impl FnOnce() -> anneal::Result<T> + Send) -> PyResult<T> {
        self.detach(f).map_err(|e| to_pyerr(self, e))
    }
}
