//! `DatasetStore`: import, preview, stats, split, list, get, delete; image datasets.

use napi::bindgen_prelude::{AsyncTask, Buffer, Unknown};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

/// A record of an image dataset with a PNG thumbnail of its image.
#[napi(object, object_from_js = false)]
pub struct Thumbnail {
    /// The stored record (keys unchanged, as `preview` returns them).
    #[napi(ts_type = "Record<string, unknown>")]
    pub record: JsJson,
    /// The thumbnail, a PNG file.
    pub png: Buffer,
}

/// Imports, stores and serves datasets (`home.datasets()`).
#[napi]
pub struct DatasetStore {
    pub(crate) inner: anneal::DatasetStore,
}

#[napi]
impl DatasetStore {
    /// Imports a CSV, TSV, JSON array, JSONL or TXT file. Progress is in bytes.
    #[napi(catch_unwind, ts_return_type = "Promise<DatasetRecord>")]
    pub fn import_file(
        &self,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "ImportOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let path = arg!(conv::string(path, "path"));
        let store = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::ImportOptions = options!(json)?;
            js!(store.import_file_with(&path, &opts, sink, cancel)?)
        })
    }

    /// Imports records given as an array of objects (any of the five shapes). The array
    /// is copied when the call is made; progress is in records.
    #[napi(catch_unwind, ts_return_type = "Promise<DatasetRecord>")]
    pub fn import_records(
        &self,
        #[napi(ts_arg_type = "Array<Record<string, unknown>>")] records: Unknown<'_>,
        #[napi(ts_arg_type = "ImportOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let records = arg!(conv::records(records));
        let store = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::ImportOptions = options!(json)?;
            js!(store.import_records_with(records, &opts, sink, cancel)?)
        })
    }

    /// A dataset by id or name.
    #[napi(catch_unwind, ts_return_type = "DatasetRecord")]
    pub fn get(&self, env: Env, #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.get(conv::string(id_or_name, "idOrName")?)?))
    }

    /// All datasets, oldest first.
    #[napi(catch_unwind, ts_return_type = "DatasetRecord[]")]
    pub fn list(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.list()?))
    }

    /// The first `n` stored (normalised) records, as stored (keys unchanged).
    #[napi(catch_unwind, ts_return_type = "Array<Record<string, unknown>>")]
    pub fn preview(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>,
        #[napi(ts_arg_type = "number")] n: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let id = conv::string(id_or_name, "idOrName")?;
            Ok(Value::Array(self.inner.preview(id, conv::count(n, "n")?)?))
        })
    }

    /// Statistics computed at import.
    #[napi(catch_unwind, ts_return_type = "DatasetStats")]
    pub fn stats(&self, env: Env, #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.stats(conv::string(id_or_name, "idOrName")?)?))
    }

    /// Splits into train and validation datasets, deterministically for a given `seed`.
    #[napi(catch_unwind, ts_return_type = "Promise<DatasetSplit>")]
    pub fn split(
        &self,
        #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>,
        #[napi(ts_arg_type = "number")] val_fraction: Unknown<'_>,
        #[napi(ts_arg_type = "SplitOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let id_or_name = arg!(conv::string(id_or_name, "idOrName"));
        let val_fraction = arg!(conv::number(val_fraction, "valFraction"));
        let store = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let o: anneal::SplitOptions = options!(json)?;
            js!(store.split(id_or_name, val_fraction, o.seed, o.names)?)
        })
    }

    /// Imports a folder of images with captions: an HF imagefolder (`metadata.jsonl` /
    /// `metadata.csv`), kohya sidecar captions (`foo.png` + `foo.txt`), or a DreamBooth
    /// instance set (`instancePrompt`). Every image is decoded; a bad one rejects with
    /// `invalid_data` naming it and nothing is stored. Progress is in images.
    #[napi(catch_unwind, ts_return_type = "Promise<DatasetRecord>")]
    pub fn import_images(
        &self,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "ImageImportOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let path = arg!(conv::string(path, "path"));
        let store = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::ImageImportOptions = options!(json)?;
            js!(store.import_images_with(&path, &opts, sink, cancel)?)
        })
    }

    /// The first `n` records of an image dataset, each with a PNG thumbnail of its image
    /// no larger than `size` x `size` pixels (default 128; aspect ratio kept).
    #[napi(catch_unwind)]
    pub fn thumbnails(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>,
        #[napi(ts_arg_type = "number")] n: Unknown<'_>,
        #[napi(ts_arg_type = "number")] size: Option<Unknown<'_>>,
    ) -> napi::Result<Vec<Thumbnail>> {
        let thumbs = errors::sync(&env, || {
            let id = conv::string(id_or_name, "idOrName")?;
            let n = conv::count(n, "n")?;
            let size = match size {
                Some(s) if s.get_type().ok() != Some(napi::ValueType::Undefined) => conv::count(s, "size")? as u32,
                _ => 128,
            };
            self.inner.thumbnails(id, n, size)
        })?;
        Ok(thumbs.into_iter().map(|(record, png)| Thumbnail { record: JsJson(record), png: png.into() }).collect())
    }

    /// Deletes a dataset (row first, then files). Refuses while a job uses it unless
    /// `force`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn delete(
        &self,
        #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>,
        #[napi(ts_arg_type = "DeleteOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let id_or_name = arg!(conv::string(id_or_name, "idOrName"));
        let store = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let o: anneal::DeleteOptions = options!(json)?;
            store.delete(id_or_name, o.force)?;
            Ok(Value::Null)
        })
    }
}
