//! Record classes: frozen Python views of the core's record structs, each declared with
//! one [`record_class!`] call, and [`PyField`], how a field's type becomes a Python value.
//!
//! `record_class!` destructures the core struct exhaustively over the listed (and
//! skipped) fields, so adding or removing a field in the core breaks this crate's build
//! until the Python class (and `_anneal.pyi`) is updated.
//!
//! Attribute values: numbers and booleans as themselves; strings, ids (`ModelId`, ...)
//! and enums (their snake_case name) as `str`; paths as `str`; JSON as plain objects;
//! `Option` as the value or `None`; `Vec` as `list`; maps as `dict`; core records that
//! have a record class as that class; other structured values (`TrainSpec`, ...) as
//! plain dicts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::IntoPyObjectExt;
use serde_json::Value;

use crate::conv::{json_to_py, q, to_py};

/// A record field as a Python attribute value, and as shown by the record's `__repr__`.
pub trait PyField {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;

    /// The Python `repr` of [`PyField::to_py`]; strings are quoted by [`q`] instead.
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.to_py(py)?.repr()?.to_string())
    }
}

/// Numbers and booleans: their Python counterpart.
macro_rules! native {
    ($($t:ty),*) => {$(
        impl PyField for $t {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                (*self).into_bound_py_any(py)
            }
        }
    )*};
}
native!(bool, u32, u64, usize, i64, f64);

/// Text-like values (strings, ids, enums): a `str`, given by `$as_str`.
macro_rules! text {
    ($($t:ty => $as_str:expr),* $(,)?) => {$(
        impl PyField for $t {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let as_str: for<'a> fn(&'a $t) -> &'a str = $as_str;
                Ok(PyString::new(py, as_str(self)).into_any())
            }
            fn repr(&self, _py: Python<'_>) -> PyResult<String> {
                let as_str: for<'a> fn(&'a $t) -> &'a str = $as_str;
                Ok(q(as_str(self)))
            }
        }
    )*};
}
text!(
    String => |s| s.as_str(),
    &'static str => |s| *s,
    anneal::ModelId => |id| &id.0,
    anneal::DatasetId => |id| &id.0,
    anneal::JobId => |id| &id.0,
    anneal::GenerationId => |id| &id.0,
    anneal::DatasetFormat => |e| e.as_str(),
    anneal::SourceFormat => |e| e.as_str(),
    anneal::ModelKind => |e| e.as_str(),
    anneal::Storage => |e| e.as_str(),
    anneal::JobStatus => |e| e.as_str(),
    anneal::FinishReason => |e| e.as_str(),
    anneal::Family => |e| e.as_str(),
    anneal::MetricKind => |e| e.as_str(),
    anneal::GenerationKind => |e| e.as_str(),
);

/// A path: its display form.
impl PyField for PathBuf {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(PyString::new(py, &self.display().to_string()).into_any())
    }
}

/// Free-form JSON: plain dicts, lists and scalars.
impl PyField for Value {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, self)
    }
}

/// Structured core values without a Python class: their serde form, as plain dicts.
macro_rules! serialized {
    ($($t:ty),*) => {$(
        impl PyField for $t {
            fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                json_to_py(py, serde_json::to_value(self))
            }
        }
    )*};
}
serialized!(anneal::TrainSpec, anneal::ErrorInfo, anneal::FieldStats, anneal::LengthBucket, anneal::Lineage);

impl<T: PyField> PyField for Option<T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Some(v) => v.to_py(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        match self {
            Some(v) => v.repr(py),
            None => Ok("None".into()),
        }
    }
}

/// A `list`; shown as `[a,b]` (as JSON prints it).
impl<T: PyField> PyField for Vec<T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.iter().map(|v| v.to_py(py)).collect::<PyResult<Vec<_>>>()?).map(Bound::into_any)
    }
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("[{}]", self.iter().map(|v| v.repr(py)).collect::<PyResult<Vec<_>>>()?.join(",")))
    }
}

/// A `dict` (keys in order).
impl<T: PyField> PyField for BTreeMap<String, T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dict = PyDict::new(py);
        for (k, v) in self {
            dict.set_item(k, v.to_py(py)?)?;
        }
        Ok(dict.into_any())
    }
}

/// A frozen record class over a core struct:
///
/// ```ignore
/// record_class! {
///     /// Class docstring.
///     PyThing = "Thing"(anneal::Thing) {
///         fields: [a, /// Docstring of `b`.
///                  b],
///         skip: [c: "why it is not exposed"],   // optional
///         repr: [a],                            // optional: else `extra` has `__repr__`
///         eq: PartialEq,                        // optional: `__eq__` by value
///         extra: { /* more #[pymethods] */ },   // optional
///     }
/// }
/// ```
///
/// One getter per field (converted by [`PyField`]), `to_dict` (the serde form), a
/// `__repr__` showing the `repr` fields, and `PyField` for the core struct (so it nests
/// as this class). Every field of the struct must be in `fields` or `skip`: a never-run
/// exhaustive destructure (and rebuild) of the struct makes drift a compile error.
macro_rules! record_class {
    (
        $(#[$meta:meta])*
        $py_ty:ident = $name:literal ($inner:path) {
            fields: [$($(#[$fmeta:meta])* $field:ident),* $(,)?],
            $(skip: [$($skip:ident: $reason:literal),* $(,)?],)?
            $(repr: $repr:tt,)?
            $(eq: $eq:ident,)?
            $(extra: { $($extra:tt)* },)?
        }
    ) => {
        $(#[$meta])*
        #[::pyo3::pyclass(name = $name, module = "anneal", frozen)]
        pub struct $py_ty {
            pub inner: $inner,
        }

        impl From<$inner> for $py_ty {
            fn from(inner: $inner) -> Self {
                Self { inner }
            }
        }

        impl $crate::records::PyField for $inner {
            fn to_py<'py>(&self, py: ::pyo3::Python<'py>) -> ::pyo3::PyResult<::pyo3::Bound<'py, ::pyo3::PyAny>> {
                Ok(::pyo3::Bound::new(py, $py_ty::from(self.clone()))?.into_any())
            }
        }

        // Fails to compile when the core struct gains or loses a field: the destructure
        // has no `..`, and rebuilding the struct names the field that is missing.
        const _: fn($inner) -> $inner = |record| {
            type Record = $inner;
            let Record { $($field,)* $($($skip,)*)? } = record;
            $($(let _ = $reason;)*)?
            Record { $($field,)* $($($skip,)*)? }
        };

        #[::pyo3::pymethods]
        impl $py_ty {
            $(
                $(#[$fmeta])*
                #[getter]
                fn $field<'py>(&self, py: ::pyo3::Python<'py>) -> ::pyo3::PyResult<::pyo3::Bound<'py, ::pyo3::PyAny>> {
                    $crate::records::PyField::to_py(&self.inner.$field, py)
                }
            )*
            /// Every field as a plain dict.
            fn to_dict<'py>(&self, py: ::pyo3::Python<'py>) -> ::pyo3::PyResult<::pyo3::Bound<'py, ::pyo3::PyAny>> {
                $crate::conv::json_to_py(py, serde_json::to_value(&self.inner))
            }
            $(
                fn __repr__(&self, py: ::pyo3::Python<'_>) -> ::pyo3::PyResult<String> {
                    $crate::records::repr_fields!(py, $name, &self.inner, $repr)
                }
            )?
            $(
                fn __eq__(&self, other: &::pyo3::Bound<'_, ::pyo3::PyAny>) -> bool {
                    other.cast::<Self>().is_ok_and(|o| <$inner as $eq>::eq(&o.get().inner, &self.inner))
                }
            )?
            $($($extra)*)?
        }
    };
}
pub(crate) use record_class;

/// `Name(a=..., b=...)` from the [`PyField::repr`]s of `record.a`, `record.b`.
macro_rules! repr_fields {
    ($py:expr, $name:expr, $record:expr, [$($f:ident),* $(,)?]) => {{
        let record = $record;
        let parts: Vec<String> = vec![$(
            format!("{}={}", stringify!($f), $crate::records::PyField::repr(&record.$f, $py)?)
        ),*];
        Ok(format!("{}({})", $name, parts.join(", ")))
    }};
}
pub(crate) use repr_fields;
