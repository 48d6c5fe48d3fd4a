//! `DatasetStore` and its records.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyList, PyTuple};
use serde_json::Value;

use anneal::ImportOptions;

use crate::conv::{self, q, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::records::record_class;

/// Records pulled from a Python iterable per re-attach.
const CHUNK: usize = 1024;

record_class! {
    /// A stored dataset (a catalog row).
    PyDatasetRecord = "DatasetRecord"(anneal::DatasetRecord) {
        fields: [
            id,
            name,
            /// `text`, `completion`, `instruction`, `chat`, `tabular` or `image`.
            format,
            sha256,
            num_records,
            bytes,
            source,
            source_format,
            columns,
            parent_id,
            created_at,
            path,
        ],
        repr: [id, name, format, num_records],
        eq: PartialEq,
    }
}

record_class! {
    /// Statistics computed at import. Nested values are plain dicts and lists.
    PyDatasetStats = "DatasetStats"(anneal::DatasetStats) {
        fields: [
            num_records,
            bytes,
            /// Per text field: `{min_chars, max_chars, mean_chars, empty}`.
            fields,
            /// `[{min_chars, max_chars, count}, ...]`.
            length_histogram,
            role_counts,
            label_counts,
            /// Image datasets: `{count, width: {min, max, mean}, height, aspect_ratios,
            /// modes, formats}`; None for other formats.
            images,
            tokens,
        ],
        repr: [num_records, bytes],
        eq: PartialEq,
    }
}

record_class! {
    /// The two halves of `DatasetStore.split`; unpacks as `train, val = ...`.
    PyDatasetSplit = "DatasetSplit"(anneal::DatasetSplit) {
        fields: [train, val],
        repr: [train, val],
        extra: {
            fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
                let pair = PyTuple::new(py, [self.train(py)?, self.val(py)?])?;
                pair.as_any().try_iter()
            }
        },
    }
}

/// Pulls records from a Python iterable in chunks: attached to pull and convert, then
/// detached while the core ingests them. A Python exception (from the iterable, a
/// conversion, or Ctrl-C) is kept in `raised` and re-raised unchanged.
struct PyRecords<'a> {
    iter: Py<PyIterator>,
    buf: std::vec::IntoIter<Value>,
    pulled: u64,
    len: Option<usize>,
    done: bool,
    raised: &'a mut Option<PyErr>,
}

impl PyRecords<'_> {
    fn refill(&mut self, py: Python<'_>) -> PyResult<Vec<Value>> {
        py.check_signals()?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut it = self.iter.bind(py).clone();
        while chunk.len() < CHUNK {
            let Some(item) = it.next() else { break };
            self.pulled += 1;
            chunk.push(conv::to_json(&item?, &format!("record {}", self.pulled))?);
        }
        Ok(chunk)
    }
}

impl Iterator for PyRecords<'_> {
    type Item = anneal::Result<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(v) = self.buf.next() {
            return Some(Ok(v));
        }
        if self.done {
            return None;
        }
        Python::attach(|py| match self.refill(py) {
            Ok(chunk) => {
                self.done = chunk.len() < CHUNK;
                self.buf = chunk.into_iter();
                self.buf.next().map(Ok)
            }
            Err(err) => {
                self.done = true;
                let e = events::stand_in(py, &err);
                *self.raised = Some(err);
                Some(Err(e))
            }
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.len {
            Some(n) => (n, Some(n)),
            None => (0, None),
        }
    }
}

/// Builds `ImportOptions` from keyword arguments (defaults and validation: core).
#[allow(clippy::too_many_arguments)]
fn import_options(
    py: Python<'_>,
    name: Option<Bound<'_, PyAny>>,
    format: Option<Bound<'_, PyAny>>,
    columns: Option<Bound<'_, PyAny>>,
    source_format: Option<Bound<'_, PyAny>>,
    txt_mode: Option<Bound<'_, PyAny>>,
    on_duplicate: Option<Bound<'_, PyAny>>,
    max_record_bytes: Option<Bound<'_, PyAny>>,
) -> PyResult<ImportOptions> {
    let value = Options::default()
        .set("name", name.as_ref())?
        .set("format", format.as_ref())?
        .set("columns", columns.as_ref())?
        .set("source_format", source_format.as_ref())?
        .set("txt_mode", txt_mode.as_ref())?
        .set("on_duplicate", on_duplicate.as_ref())?
        .set("max_record_bytes", max_record_bytes.as_ref())?
        .into_value();
    anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))
}

// ---------------------------------------------------------------- image datasets

impl crate::records::PyField for anneal::ImageStats {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        conv::json_to_py(py, serde_json::to_value(self))
    }
}

/// Builds `ImageImportOptions` from keyword arguments (defaults and validation: core).
#[allow(clippy::too_many_arguments)]
fn image_import_options(
    py: Python<'_>,
    name: Option<Bound<'_, PyAny>>,
    layout: Option<Bound<'_, PyAny>>,
    caption_column: Option<Bound<'_, PyAny>>,
    image_column: Option<Bound<'_, PyAny>>,
    caption_extension: Option<Bound<'_, PyAny>>,
    instance_prompt: Option<Bound<'_, PyAny>>,
    on_duplicate: Option<Bound<'_, PyAny>>,
    max_pixels: Option<Bound<'_, PyAny>>,
    max_image_bytes: Option<Bound<'_, PyAny>>,
) -> PyResult<anneal::ImageImportOptions> {
    let value = Options::default()
        .set("name", name.as_ref())?
        .set("layout", layout.as_ref())?
        .set("caption_column", caption_column.as_ref())?
        .set("image_column", image_column.as_ref())?
        .set("caption_extension", caption_extension.as_ref())?
        .set("instance_prompt", instance_prompt.as_ref())?
        .set("on_duplicate", on_duplicate.as_ref())?
        .set("max_pixels", max_pixels.as_ref())?
        .set("max_image_bytes", max_image_bytes.as_ref())?
        .into_value();
    anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))
}

/// PNG bytes as a `PIL.Image.Image` (loaded) when Pillow is importable, else `bytes`.
fn png_to_py<'py>(py: Python<'py>, png: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let bytes = pyo3::types::PyBytes::new(py, png);
    let Ok(pil) = py.import("PIL.Image") else {
        return Ok(bytes.into_any());
    };
    let buf = py.import("io")?.getattr("BytesIO")?.call1((bytes,))?;
    let img = pil.getattr("open")?.call1((buf,))?;
    img.call_method0("load")?;
    Ok(img)
}

/// Imports, stores and serves datasets.
#[pyclass(name = "DatasetStore", module = "anneal", frozen)]
pub struct PyDatasetStore {
    pub inner: anneal::DatasetStore,
    pub root: String,
}

#[pymethods]
impl PyDatasetStore {
    /// Imports a CSV, TSV, JSON array, JSONL or TXT file.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, name=None, format=None, columns=None, source_format=None, txt_mode=None,
                        on_duplicate=None, max_record_bytes=None, on_event=None, cancel=None))]
    fn import_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<Bound<'_, PyAny>>,
        format: Option<Bound<'_, PyAny>>,
        columns: Option<Bound<'_, PyAny>>,
        source_format: Option<Bound<'_, PyAny>>,
        txt_mode: Option<Bound<'_, PyAny>>,
        on_duplicate: Option<Bound<'_, PyAny>>,
        max_record_bytes: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyDatasetRecord> {
        let opts = import_options(py, name, format, columns, source_format, txt_mode, on_duplicate, max_record_bytes)?;
        let (store, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| store.import_file_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    /// Imports records from any iterable of dicts (a list, a generator, ...).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (records, *, name=None, format=None, columns=None, on_duplicate=None,
                        max_record_bytes=None, on_event=None, cancel=None))]
    fn import_records(
        &self,
        py: Python<'_>,
        records: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
        format: Option<Bound<'_, PyAny>>,
        columns: Option<Bound<'_, PyAny>>,
        on_duplicate: Option<Bound<'_, PyAny>>,
        max_record_bytes: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyDatasetRecord> {
        let opts = import_options(py, name, format, columns, None, None, on_duplicate, max_record_bytes)?;
        let (store, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        let mut iter_raised = None;
        let iter = PyRecords {
            iter: records.try_iter()?.unbind(),
            buf: Vec::new().into_iter(),
            pulled: 0,
            len: if records.is_instance_of::<PyList>() || records.is_instance_of::<PyTuple>() {
                records.len().ok()
            } else {
                None
            },
            done: false,
            raised: &mut iter_raised,
        };
        let (result, sink_raised) = events::run_raw(py, events::callback(on_event)?, move |sink| {
            store.import_records_with(iter, &opts, sink, &cancel)
        });
        events::finish(py, result, [iter_raised, sink_raised]).map(Into::into)
    }

    /// A dataset by id or name.
    fn get(&self, py: Python<'_>, id_or_name: String) -> PyResult<PyDatasetRecord> {
        py.enter_core(|| self.inner.get(id_or_name)).map(Into::into)
    }

    /// All datasets, oldest first.
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyDatasetRecord>> {
        Ok(py.enter_core(|| self.inner.list())?.into_iter().map(Into::into).collect())
    }

    /// The first `n` stored (normalised) records, as dicts.
    #[pyo3(signature = (id_or_name, n=5))]
    fn preview<'py>(&self, py: Python<'py>, id_or_name: String, n: i64) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let n = usize::try_from(n)
            .map_err(|_| to_pyerr(py, anneal::Error::config("n", format!("must be 0 or more, got {n}"))))?;
        let records = py.enter_core(|| self.inner.preview(id_or_name, n))?;
        records.iter().map(|r| conv::to_py(py, r)).collect()
    }

    /// Statistics computed at import.
    fn stats(&self, py: Python<'_>, id_or_name: String) -> PyResult<PyDatasetStats> {
        py.enter_core(|| self.inner.stats(id_or_name)).map(Into::into)
    }

    /// Splits deterministically into `<name>-train` / `<name>-val` (or `names`).
    #[pyo3(signature = (id_or_name, val_fraction, *, seed=None, names=None))]
    fn split(
        &self,
        py: Python<'_>,
        id_or_name: String,
        val_fraction: f64,
        seed: Option<Bound<'_, PyAny>>,
        names: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyDatasetSplit> {
        let value = Options::default().set("seed", seed.as_ref())?.set("names", names.as_ref())?.into_value();
        let o: anneal::SplitOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| self.inner.split(id_or_name, val_fraction, o.seed, o.names)).map(Into::into)
    }

    /// Deletes a dataset (refuses while a job uses it, unless `force`).
    #[pyo3(signature = (id_or_name, *, force=None))]
    fn delete(&self, py: Python<'_>, id_or_name: String, force: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let o = crate::conv::delete_options(py, force.as_ref())?;
        py.enter_core(|| self.inner.delete(id_or_name, o.force))
    }

    // -------------------------------------------------------- image datasets
    /// Imports a folder of images with captions (`imagefolder` metadata, sidecar
    /// caption files, or a DreamBooth instance set with `instance_prompt`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, name=None, layout=None, caption_column=None, image_column=None,
                        caption_extension=None, instance_prompt=None, on_duplicate=None, max_pixels=None,
                        max_image_bytes=None, on_event=None, cancel=None))]
    fn import_images(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<Bound<'_, PyAny>>,
        layout: Option<Bound<'_, PyAny>>,
        caption_column: Option<Bound<'_, PyAny>>,
        image_column: Option<Bound<'_, PyAny>>,
        caption_extension: Option<Bound<'_, PyAny>>,
        instance_prompt: Option<Bound<'_, PyAny>>,
        on_duplicate: Option<Bound<'_, PyAny>>,
        max_pixels: Option<Bound<'_, PyAny>>,
        max_image_bytes: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyDatasetRecord> {
        let opts = image_import_options(
            py,
            name,
            layout,
            caption_column,
            image_column,
            caption_extension,
            instance_prompt,
            on_duplicate,
            max_pixels,
            max_image_bytes,
        )?;
        let (store, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| store.import_images_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    /// The first `n` records of an image dataset with a thumbnail of each image (at most
    /// `size` x `size`): `[(record, image), ...]`, the image a PIL image when Pillow is
    /// installed, else PNG bytes.
    #[pyo3(signature = (id_or_name, n=5, *, size=128))]
    fn thumbnails<'py>(
        &self,
        py: Python<'py>,
        id_or_name: String,
        n: i64,
        size: i64,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let n = usize::try_from(n)
            .map_err(|_| to_pyerr(py, anneal::Error::config("n", format!("must be 0 or more, got {n}"))))?;
        let size = u32::try_from(size).map_err(|_| {
            to_pyerr(py, anneal::Error::config("size", format!("must be 1 to 2^32-1 pixels, got {size}")))
        })?;
        let thumbs = py.enter_core(|| self.inner.thumbnails(id_or_name, n, size))?;
        thumbs.iter().map(|(rec, png)| PyTuple::new(py, [conv::to_py(py, rec)?, png_to_py(py, png)?])).collect()
    }

    /// Generates a completion of each prompt with `model` (a language model) and stores
    /// the pairs as a new `completion` dataset, with its lineage (model and settings;
    /// an unset seed is drawn once and recorded). `generation`: a dict of generation
    /// settings (`max_new_tokens`, `temperature`, `seed`, ...). All or nothing.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, prompts, *, name=None, generation=None, batch_size=None, on_duplicate=None,
                        on_event=None, cancel=None))]
    fn generate(
        &self,
        py: Python<'_>,
        model: String,
        prompts: Vec<String>,
        name: Option<Bound<'_, PyAny>>,
        generation: Option<Bound<'_, PyAny>>,
        batch_size: Option<Bound<'_, PyAny>>,
        on_duplicate: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyDatasetRecord> {
        crate::stats::generate(
            py,
            &self.inner,
            model,
            prompts,
            name,
            generation,
            batch_size,
            on_duplicate,
            on_event,
            cancel,
        )
    }

    /// Where a dataset written by `generate` came from (a dict: model, model_ref,
    /// generation, model_defaults, prompts); None for other datasets.
    fn lineage<'py>(&self, py: Python<'py>, id_or_name: String) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::lineage(py, &self.inner, id_or_name)
    }

    fn __repr__(&self) -> String {
        format!("DatasetStore(home={})", q(&self.root))
    }
}
