//! `ModelRegistry`: register directories and presets, names, versions, aliases, lineage.

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

/// Registers, names, versions and serves models (`home.models()`).
#[napi]
pub struct ModelRegistry {
    pub(crate) inner: anneal::ModelRegistry,
}

#[napi]
impl ModelRegistry {
    /// Registers a local Hugging Face directory (config.json + safetensors) or a PEFT
    /// LoRA adapter directory. Progress is in bytes.
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn register_dir(
        &self,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "RegisterOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let path = arg!(conv::string(path, "path"));
        let reg = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::RegisterOptions = options!(json)?;
            js!(reg.register_dir_with(&path, &opts, sink, cancel)?)
        })
    }

    /// Registers a GGUF model file (llama, mistral, qwen2, gpt2; f32 / f16 / bf16 /
    /// q8_0 / 4-bit tensors), copied into the home with a derived config.json and
    /// tokenizer. Progress is in bytes.
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn register_file(
        &self,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "RegisterOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let path = arg!(conv::string(path, "path"));
        let reg = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::RegisterOptions = options!(json)?;
            js!(reg.register_file_with(&path, &opts, sink, cancel)?)
        })
    }

    /// Creates a base model from a built-in preset (random weights from `seed`).
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn create_preset(
        &self,
        #[napi(ts_arg_type = "string")] preset: Unknown<'_>,
        #[napi(ts_arg_type = "PresetOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let preset = arg!(conv::string(preset, "preset"));
        let reg = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let opts: anneal::PresetOptions = options!(json)?;
            js!(reg.create_preset(&preset, &opts)?)
        })
    }

    /// The built-in presets.
    #[napi(catch_unwind, ts_return_type = "Preset[]")]
    pub fn presets(env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || anneal::ModelRegistry::presets().iter().map(|p| js!(p)).collect())
    }

    /// A model by id.
    #[napi(catch_unwind, ts_return_type = "ModelRecord")]
    pub fn get(&self, env: Env, #[napi(ts_arg_type = "string")] id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let id = anneal::ModelId(conv::string(id, "id")?);
            js!(self.inner.get(&id)?)
        })
    }

    /// Resolves an id, `name` (latest version), `name@3`, `name@latest` or `name@alias`.
    #[napi(catch_unwind, ts_return_type = "ModelRecord")]
    pub fn resolve(&self, env: Env, #[napi(ts_arg_type = "string")] reference: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.resolve(conv::string(reference, "reference")?)?))
    }

    /// Models matching every given filter field, by name then version.
    #[napi(catch_unwind, ts_return_type = "ModelRecord[]")]
    pub fn list(
        &self,
        env: Env,
        #[napi(ts_arg_type = "ModelFilter")] filter: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let filter: anneal::ModelFilter = options!(conv::plain(filter)?)?;
            js!(self.inner.list(&filter)?)
        })
    }

    /// Points `alias` of the model's name at that model (created or moved atomically).
    #[napi(catch_unwind, ts_return_type = "ModelRecord")]
    pub fn set_alias(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] reference: Unknown<'_>,
        #[napi(ts_arg_type = "string")] alias: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let (reference, alias) = (conv::string(reference, "reference")?, conv::string(alias, "alias")?);
            js!(self.inner.set_alias(reference, &alias)?)
        })
    }

    /// Removes `name@alias`.
    #[napi(catch_unwind)]
    pub fn remove_alias(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] name: Unknown<'_>,
        #[napi(ts_arg_type = "string")] alias: Unknown<'_>,
    ) -> napi::Result<()> {
        errors::sync(&env, || self.inner.remove_alias(&conv::string(name, "name")?, &conv::string(alias, "alias")?))
    }

    /// Deletes a model (row first, files last). Refuses while an adapter or a job
    /// depends on it (code `in_use`) unless `force`, which also deletes its adapters.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn delete(
        &self,
        #[napi(ts_arg_type = "string")] reference: Unknown<'_>,
        #[napi(ts_arg_type = "DeleteOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let reference = arg!(conv::string(reference, "reference"));
        let reg = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let o: anneal::DeleteOptions = options!(json)?;
            reg.delete(reference, o.force)?;
            Ok(Value::Null)
        })
    }

    /// Writes a model out of the home: `format` `"hf"` (a Hugging Face directory; an
    /// adapter merged into its base), `"peft"` (an adapter directory) or `"bundle"` (one
    /// ZIP that `importBundle` restores elsewhere). Progress is in files. An existing
    /// `dest` is refused (code `already_exists`) unless `overwrite`.
    #[napi(catch_unwind, ts_return_type = "Promise<ExportReport>")]
    pub fn export(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "ExportFormat")] format: Unknown<'_>,
        #[napi(ts_arg_type = "string")] dest: Unknown<'_>,
        #[napi(ts_arg_type = "ExportOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let format = arg!(conv::string(format, "format"));
        let dest = arg!(conv::string(dest, "dest"));
        let reg = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::ExportOptions = options!(json)?;
            let format: anneal::ExportFormat = format.parse()?;
            js!(reg.export_with(model, format, &dest, &opts, sink, cancel)?)
        })
    }

    /// Restores a bundle written by `export(model, "bundle", path)`: its models (an
    /// adapter's base first) under the ids they had, with the same content. A tampered
    /// or truncated bundle is refused (code `invalid_data`, naming the entry).
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn import_bundle(
        &self,
        #[napi(ts_arg_type = "string")] path: Unknown<'_>,
        #[napi(ts_arg_type = "ImportBundleOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let path = arg!(conv::string(path, "path"));
        let reg = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::ImportBundleOptions = options!(json)?;
            js!(reg.import_bundle_with(&path, &opts, sink, cancel)?)
        })
    }

    /// Recorded generation and scoring calls, newest first.
    #[napi(catch_unwind, ts_return_type = "GenerationRecord[]")]
    pub fn generations(
        &self,
        env: Env,
        #[napi(ts_arg_type = "GenerationFilter")] filter: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let filter: anneal::GenerationFilter = options!(conv::plain(filter)?)?;
            js!(self.inner.generations(&filter)?)
        })
    }

    /// Usage totals of a model, from the catalog.
    #[napi(catch_unwind, ts_return_type = "ModelUsage")]
    pub fn usage(&self, env: Env, #[napi(ts_arg_type = "string")] model: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.usage(conv::string(model, "model")?)?))
    }
}
