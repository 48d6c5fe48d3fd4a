//! `DatasetStore`: import, preview, stats, split, list, get, delete.

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

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
