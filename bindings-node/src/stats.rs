//! `home.stats()`, the registry's promotions and alias history, and
//! `datasets.generate()` / `lineage()`: more methods of `Home`, `ModelRegistry` and
//! `DatasetStore` (napi merges the impl blocks). Alias calls are catalog rows and
//! synchronous, as `setAlias`; `stats` and `generate` return Promises.

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi::Env;
use napi_derive::napi;

use crate::conv::{self, js, options, JsJson};
use crate::dataset::DatasetStore;
use crate::errors;
use crate::events::{arg, LongTask};
use crate::home::Home;
use crate::notify::given;
use crate::registry::ModelRegistry;

#[napi]
impl Home {
    /// Statistics of this home, read from the catalog now (off the event loop): jobs by
    /// status and their durations, recent activity, preset / method / generation use,
    /// inventories, alias changes and production models. `since` (RFC 3339) limits what
    /// happened to what happened since; `recent` is the number of activity entries
    /// (default 20).
    #[napi(catch_unwind, ts_return_type = "Promise<HomeStats>")]
    pub fn stats(&self, #[napi(ts_arg_type = "StatsOptions")] options: Option<Unknown<'_>>) -> AsyncTask<LongTask> {
        let home = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let opts: anneal::StatsOptions = options!(json)?;
            js!(home.stats(&opts)?)
        })
    }
}

#[napi]
impl ModelRegistry {
    /// Makes the model the production model of its name in one transaction:
    /// `production` moves to it, the model it replaces to `previous`, and `candidate`
    /// is removed if it pointed at it.
    #[napi(catch_unwind, ts_return_type = "AliasMove")]
    pub fn promote(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] reference: Unknown<'_>,
        #[napi(ts_arg_type = "PromoteOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let reference = conv::string(reference, "reference")?;
            let opts: anneal::PromoteOptions = options!(conv::plain(options)?)?;
            js!(self.inner.promote(reference, &opts)?)
        })
    }

    /// Moves `production` of model name `name` back to `previous` (code `not_found`
    /// when there is no `previous`).
    #[napi(catch_unwind, ts_return_type = "AliasMove")]
    pub fn rollback(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] name: Unknown<'_>,
        #[napi(ts_arg_type = "RollbackOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let name = conv::string(name, "name")?;
            let opts: anneal::RollbackOptions = options!(conv::plain(options)?)?;
            js!(self.inner.rollback(&name, &opts)?)
        })
    }

    /// Changes of the aliases of `name` (of `alias` only, when given), newest first.
    #[napi(catch_unwind, ts_return_type = "AliasChange[]")]
    pub fn alias_history(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] name: Unknown<'_>,
        #[napi(ts_arg_type = "string")] alias: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let name = conv::string(name, "name")?;
            let alias = given(alias).map(|a| conv::string(a, "alias")).transpose()?;
            js!(self.inner.alias_history(&name, alias.as_deref())?)
        })
    }

    /// The change of `name@alias` in effect at `at` (RFC 3339, e.g.
    /// `date.toISOString()`), or null when the alias was not set then.
    #[napi(catch_unwind, ts_return_type = "AliasChange | null")]
    pub fn alias_at(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] name: Unknown<'_>,
        #[napi(ts_arg_type = "string")] alias: Unknown<'_>,
        #[napi(ts_arg_type = "string")] at: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let (name, alias, at) =
                (conv::string(name, "name")?, conv::string(alias, "alias")?, conv::string(at, "at")?);
            js!(self.inner.alias_at(&name, &alias, &at)?)
        })
    }
}

#[napi]
impl DatasetStore {
    /// Generates a completion of each prompt with `model` (a language model) and stores
    /// the pairs as a new `completion` dataset with its lineage (model and settings; an
    /// unset seed is drawn once and recorded). All or nothing. Progress is in prompts.
    #[napi(catch_unwind, ts_return_type = "Promise<DatasetRecord>")]
    pub fn generate(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "string[]")] prompts: Unknown<'_>,
        #[napi(ts_arg_type = "GenerateDatasetOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let prompts = arg!(conv::list(prompts, "prompts", "an array of strings"));
        let prompts: Vec<String> = arg!(prompts
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(anneal::Error::config(format!("prompts[{i}]"), "expected a string")),
            })
            .collect::<anneal::Result<Vec<_>>>());
        let store = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::GenerateDatasetOptions = options!(json)?;
            js!(store.generate_with(model, &prompts, &opts, sink, cancel)?)
        })
    }

    /// Where a dataset written by `generate` came from; null for other datasets.
    #[napi(catch_unwind, ts_return_type = "DatasetLineage | null")]
    pub fn lineage(&self, env: Env, #[napi(ts_arg_type = "string")] id_or_name: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.lineage(conv::string(id_or_name, "idOrName")?)?))
    }
}
