//! ModelRegistry: records, names + versions, aliases, lineage, files.
//!
//! Weights are files under `<home>/models/<id>/` (or, by option, a directory the user
//! owns); rows are metadata. Registering copies into a staging directory, renames it
//! into place, then inserts the row in one transaction; deleting removes the row first
//! and the files last, so a kill at any moment never leaves a row without its files.

pub(crate) mod aliases;
mod diffusion;
mod export;
mod gguf_in;
pub(crate) mod inspect;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use inspect::SUPPORTED_MODEL_TYPES;

use crate::catalog::generations as gen_sql;
use crate::catalog::models as sql;
use crate::catalog::Conn;
use crate::error::{Error, IoResultExt, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::models::presets::{self, Preset};
use crate::store::Store;
use crate::types::{
    catalog_time, check_reason, AliasAction, AliasChange, AliasMove, ExportFormat, ExportOptions, ExportReport, Family,
    GenerationFilter, GenerationRecord, IfExists, ImportBundleOptions, Lineage, ModelFile, ModelFilter, ModelId,
    ModelKind, ModelRecord, ModelRef, ModelUsage, PresetOptions, PromoteOptions, RegisterOptions, RollbackOptions,
    Storage,
};
use crate::util::{self, StagingDir};
use inspect::Inspected;

/// Registers, names, versions and serves models. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ModelRegistry {
    store: Arc<Store>,
}

/// Alias names that cannot be set: they mean something already.
const RESERVED_ALIASES: [&str; 1] = ["latest"];

impl ModelRegistry {
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn dir(&self) -> PathBuf {
        self.store.root.join("models")
    }

    /// Registers a local Hugging Face directory (config.json + safetensors, single or
    /// sharded) or a PEFT LoRA adapter directory.
    ///
    /// The directory is checked before anything is copied, so that what registers also
    /// loads: config.json's sizes (positive, within anneal's bounds, heads dividing
    /// widths), every tensor the family's loader takes (present, with the shape the
    /// config implies and a float dtype; from the safetensors headers, no weights are
    /// read), tokenizer.json when present (it loads; no id past `vocab_size`), and for
    /// an adapter its `r`, target modules and matrices against each other and against
    /// the parent model. A refusal is `invalid_data` naming the file and the field or
    /// tensor, and leaves the home unchanged.
    pub fn register_dir(&self, path: impl AsRef<Path>, opts: &RegisterOptions) -> Result<ModelRecord> {
        self.register_dir_with(path, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`ModelRegistry::register_dir`] with progress events (`task_*`, in bytes) and cancellation.
    pub fn register_dir_with(
        &self,
        path: impl AsRef<Path>,
        opts: &RegisterOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<ModelRecord> {
        let src = path.as_ref();
        util::check_path("path", src)?;
        let src = fs::canonicalize(src).with_path(src)?;
        let budget = self.store.memory_limit;
        // A lone LoRA file (`x.safetensors`) registers as its folder holding that file only.
        let (src, inspected, default_name) = if src.is_file() {
            let file = src.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if !file.ends_with(".safetensors") {
                return Err(Error::config(
                    "path",
                    format!("{} is a file; give a model directory or a LoRA .safetensors file", src.display()),
                ));
            }
            let dir = src.parent().map(Path::to_path_buf).unwrap_or_default();
            let stem = PathBuf::from(src.file_stem().unwrap_or_default());
            (dir.clone(), diffusion::inspect_lora(&dir, &file)?, stem)
        } else {
            let name = PathBuf::from(src.file_name().unwrap_or_default());
            (src.clone(), inspect::inspect_dir(&src, budget)?, name)
        };
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::name_from_path(&default_name),
        };
        util::validate_name("name", &name)?;
        // Every check happens here, before anything is copied into the home.
        let parent = self.adapter_parent(&inspected, opts)?;
        if let Some(p) = &parent {
            inspect::check_adapter(&inspected, p, budget)?;
        }
        let family = parent
            .as_ref()
            .map(|p| p.family)
            .or(inspected.family)
            .ok_or_else(|| Error::Internal("no family".into()))?;
        let parent = parent.map(|p| p.id);
        let kind = inspected.kind;
        // `if_exists`: a version with the same files, kind and parent (compared by the
        // files' sha256, hashed before anything is copied when the name is taken).
        let parent_of_same = parent.clone();
        let same_files = |sha: &str| {
            let parent = parent_of_same.clone();
            let sha = sha.to_string();
            move |m: &ModelRecord| m.sha256 == sha && m.kind == kind && m.parent_id == parent
        };
        match opts.if_exists {
            IfExists::NewVersion => {}
            IfExists::Error => {
                self.store.catalog.read(|c| self.existing(c, &name, IfExists::Error, None, &|_| false))?;
            }
            IfExists::Reuse => {
                let filter = ModelFilter { name: Some(name.clone()), ..Default::default() };
                if !self.store.catalog.read(|c| sql::list(c, &self.store.root, &filter))?.is_empty() {
                    let files = hash_files_cancellable(&src, &inspected.files, cancel)?;
                    let same = same_files(&content_sha(&files));
                    if let Some(found) =
                        self.store.catalog.read(|c| self.existing(c, &name, IfExists::Reuse, None, &same))?
                    {
                        return Ok(found);
                    }
                }
            }
        }
        let total = inspect::total_bytes(&src, &inspected.files)?;
        let source = src.display().to_string();
        run_task(sink, "register_model", &name, Some(total), "bytes", |rep| {
            let mut done = 0u64;
            let mut progress = |n: u64| -> Result<()> {
                cancel.check()?;
                done += n;
                rep.progress(done)
            };
            let new = NewModel {
                name: &name,
                kind: inspected.kind,
                family,
                parent,
                source,
                task: opts.task.clone(),
                tags: opts.tags.clone(),
                lineage: Lineage::default(),
            };
            let rec = match opts.storage {
                Storage::Copy => {
                    let id = ModelId(util::new_id("mdl"));
                    let mut staging = StagingDir::new(&self.dir())?;
                    let mut files = Vec::new();
                    for f in &inspected.files {
                        // Pipelines keep their files in component folders (`unet/config.json`).
                        if let Some(dir) = staging.path().join(f).parent() {
                            fs::create_dir_all(dir).with_path(dir)?;
                        }
                        let sha = util::copy_hashing(&src.join(f), &staging.path().join(f), &mut progress)?;
                        files.push(ModelFile {
                            name: f.clone(),
                            bytes: fs::metadata(staging.path().join(f)).with_path(staging.path())?.len(),
                            sha256: sha,
                        });
                    }
                    let same = same_files(&content_sha(&files));
                    self.insert_staged_unless(id, &mut staging, files, &inspected, new, opts.if_exists, &same)?
                }
                Storage::Reference => {
                    let mut files = Vec::new();
                    for f in &inspected.files {
                        let p = src.join(f);
                        let sha = util::sha256_file(&p, &mut progress)?;
                        files.push(ModelFile {
                            name: f.clone(),
                            bytes: fs::metadata(&p).with_path(&p)?.len(),
                            sha256: sha,
                        });
                    }
                    let id = ModelId(util::new_id("mdl"));
                    let rec = self.record(id, files, &inspected, new, Storage::Reference, src.clone());
                    let stored = src.display().to_string();
                    let same = same_files(&rec.sha256);
                    self.store.catalog.write(|tx| {
                        if let Some(found) = self.existing(tx, &name, opts.if_exists, None, &same)? {
                            return Ok(found);
                        }
                        let version = sql::insert(tx, &rec, &stored)?;
                        Ok(ModelRecord { version, ..rec.clone() })
                    })?
                }
            };
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    /// Registers a GGUF model file (llama.cpp's format; architectures `llama` (Llama,
    /// Mistral), `qwen2` and `gpt2`; tensors f32, f16, bf16, q8_0, q4_0, q5_0, q4_K,
    /// q6_K). The file is checked whole before anything is copied (architecture,
    /// hyperparameters, every tensor's presence, dims and type, sizes within the file,
    /// the tokenizer), then copied into the home as `model.gguf` beside a `config.json`,
    /// `tokenizer.json` and `tokenizer_config.json` derived from its metadata (see
    /// `registry::gguf_in`). The record's `dtype` is the file's type (`q8_0`,
    /// `q4_k_m`, ...). Generators run the quantized weights as they are; training
    /// dequantizes them to f32. Options: `name` (default: the file's stem), `task`,
    /// `tags`; a GGUF file is always copied (`storage: reference` is refused) and has no
    /// `parent`. A refusal is `invalid_data` naming the file and the key or tensor, and
    /// leaves the home unchanged.
    pub fn register_file(&self, path: impl AsRef<Path>, opts: &RegisterOptions) -> Result<ModelRecord> {
        self.register_file_with(path, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`ModelRegistry::register_file`] with progress events (`task_*`, in bytes) and cancellation.
    pub fn register_file_with(
        &self,
        path: impl AsRef<Path>,
        opts: &RegisterOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<ModelRecord> {
        let src = path.as_ref();
        util::check_path("path", src)?;
        let src = fs::canonicalize(src).with_path(src)?;
        let meta = fs::metadata(&src).with_path(&src)?;
        if !meta.is_file() {
            return Err(Error::config(
                "path",
                format!(
                    "{} is {}; register_file takes a GGUF model file (register_dir takes directories)",
                    src.display(),
                    inspect::file_kind(&meta)
                ),
            ));
        }
        if opts.parent.is_some() {
            return Err(Error::config("parent", "a GGUF model file is a full model: it has no parent"));
        }
        if opts.storage == Storage::Reference {
            return Err(Error::config(
                "storage",
                "a GGUF file is always copied into the home (its derived config.json and tokenizer live beside it)",
            ));
        }
        let model = gguf_in::inspect(&src)?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::name_from_path(&src),
        };
        util::validate_name("name", &name)?;
        let family = model.inspected.family.ok_or_else(|| Error::Internal("no family".into()))?;
        let source = src.display().to_string();
        run_task(sink, "register_model", &name, Some(meta.len()), "bytes", |rep| {
            let mut done = 0u64;
            let mut progress = |n: u64| -> Result<()> {
                cancel.check()?;
                done += n;
                rep.progress(done)
            };
            let mut staging = StagingDir::new(&self.dir())?;
            // Derived files first (cheap, and the tokenizer is checked), then the copy.
            model.write_side_files(staging.path())?;
            let copy = staging.path().join(crate::models::gguf::GGUF_FILE);
            let sha = util::copy_hashing(&src, &copy, &mut progress)?;
            model.check_copy(&copy)?;
            let side: Vec<String> =
                model.inspected.files.iter().filter(|f| gguf_in::SIDE_FILES.contains(&f.as_str())).cloned().collect();
            let mut files = hash_files(staging.path(), &side)?;
            files.push(ModelFile {
                name: crate::models::gguf::GGUF_FILE.to_string(),
                bytes: fs::metadata(&copy).with_path(&copy)?.len(),
                sha256: sha,
            });
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let new = NewModel {
                name: &name,
                kind: ModelKind::Base,
                family,
                parent: None,
                source,
                task: opts.task.clone(),
                tags: opts.tags.clone(),
                lineage: Lineage::default(),
            };
            let rec = self.insert_staged(
                ModelId(util::new_id("mdl")),
                &mut staging,
                files,
                &model.inspected,
                new,
                &|_, _| Ok(()),
            )?;
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    /// Creates a base model from a built-in preset: a small Llama-family config, random
    /// weights from `seed`, and the byte-level tokenizer (see [`ModelRegistry::presets`]);
    /// or a from-scratch text-to-image pipeline (`tiny-shapes`: see
    /// [`crate::diffusion::presets`]).
    ///
    /// With [`IfExists::Reuse`], the version of `name` made from the same preset and
    /// seed is returned and nothing is written; with [`IfExists::Error`], a taken name is
    /// `already_exists`.
    pub fn create_preset(&self, preset: &str, opts: &PresetOptions) -> Result<ModelRecord> {
        let diffusion = crate::diffusion::presets::find(preset);
        let canonical = match diffusion {
            Some(p) => p.name,
            None => presets::find(preset)?.name,
        };
        let name = opts.name.clone().unwrap_or_else(|| canonical.to_string());
        util::validate_name("name", &name)?;
        let seed = opts.seed;
        let same = move |m: &ModelRecord| {
            m.kind == ModelKind::Base && m.lineage.preset.as_deref() == Some(canonical) && m.lineage.seed == Some(seed)
        };
        if let Some(found) = self.store.catalog.read(|c| self.existing(c, &name, opts.if_exists, None, &same))? {
            return Ok(found);
        }
        let mut staging = StagingDir::new(&self.dir())?;
        match diffusion {
            Some(p) => crate::diffusion::presets::write_dir(p, opts.seed, staging.path())?,
            None => presets::write_dir(presets::find(preset)?, opts.seed, staging.path())?,
        }
        self.insert_preset(&mut staging, &name, canonical, opts, &same)
    }

    /// What `if_exists` makes of `name` (`except`: the row just inserted, left out):
    /// `new_version` nothing; `reuse` the latest version that `same` accepts; `error`
    /// `already_exists` when any version exists.
    fn existing(
        &self,
        conn: &Conn,
        name: &str,
        if_exists: IfExists,
        except: Option<&ModelId>,
        same: &dyn Fn(&ModelRecord) -> bool,
    ) -> Result<Option<ModelRecord>> {
        if if_exists == IfExists::NewVersion {
            return Ok(None);
        }
        let filter = ModelFilter { name: Some(name.to_string()), ..Default::default() };
        let mut versions = sql::list(conn, &self.store.root, &filter)?;
        versions.retain(|m| Some(&m.id) != except);
        match if_exists {
            IfExists::Error => match versions.last() {
                Some(latest) => Err(Error::AlreadyExists {
                    what: "model",
                    id: name.to_string(),
                    detail: format!(
                        " (latest {}); if_exists \"new_version\" adds a version, \"reuse\" returns the same one",
                        latest.reference()
                    ),
                }),
                None => Ok(None),
            },
            _ => Ok(versions.into_iter().rev().find(|m| same(m))),
        }
    }

    /// [`ModelRegistry::insert_staged`] under `if_exists`, decided again inside the
    /// insert's transaction (so concurrent calls end as sequential ones would): a
    /// version found there is returned and the staged copy removed.
    #[allow(clippy::too_many_arguments)]
    fn insert_staged_unless(
        &self,
        id: ModelId,
        staging: &mut StagingDir,
        files: Vec<ModelFile>,
        ins: &Inspected,
        new: NewModel<'_>,
        if_exists: IfExists,
        same: &dyn Fn(&ModelRecord) -> bool,
    ) -> Result<ModelRecord> {
        let found = std::cell::RefCell::new(None);
        let name = new.name.to_string();
        let check = |tx: &Conn, rec: &ModelRecord| -> Result<()> {
            if let Some(m) = self.existing(tx, &name, if_exists, Some(&rec.id), same)? {
                *found.borrow_mut() = Some(m);
                // Rolls the insert back; the found version is returned below.
                return Err(Error::Internal("an equal version exists".into()));
            }
            Ok(())
        };
        match self.insert_staged(id, staging, files, ins, new, &check) {
            Err(e) => found.into_inner().ok_or(e),
            ok => ok,
        }
    }

    /// Registers the preset `preset` that was written into `staging` (a language model or
    /// a diffusers pipeline directory: anything [`ModelRegistry::register_dir`] reads).
    fn insert_preset(
        &self,
        staging: &mut StagingDir,
        name: &str,
        preset: &str,
        opts: &PresetOptions,
        same: &dyn Fn(&ModelRecord) -> bool,
    ) -> Result<ModelRecord> {
        let inspected = inspect::inspect_dir(staging.path(), self.store.memory_limit)?;
        let files = hash_files(staging.path(), &inspected.files)?;
        let new = NewModel {
            name,
            kind: ModelKind::Base,
            family: inspected.family.ok_or_else(|| Error::Internal("preset without family".into()))?,
            parent: None,
            source: format!("preset:{preset}"),
            task: opts.task.clone(),
            tags: opts.tags.clone(),
            lineage: Lineage { preset: Some(preset.to_string()), seed: Some(opts.seed), ..Default::default() },
        };
        self.insert_staged_unless(ModelId(util::new_id("mdl")), staging, files, &inspected, new, opts.if_exists, same)
    }

    /// Registers a directory the training engine wrote into `staging` (under
    /// `models/`): full weights as an HF directory or a diffusers pipeline directory
    /// (kind `full`), or a PEFT adapter or a diffusers LoRA (`pytorch_lora_weights.safetensors`;
    /// kind `lora`), with `parent` = the base; the directory must be of the base's family. Takes the next version of `name`. `also` runs
    /// in the registration's transaction (the job's completion: a kill cannot leave a
    /// registered model with a job that would train and register it again).
    pub(crate) fn register_trained(
        &self,
        staging: &mut StagingDir,
        name: &str,
        parent: &ModelRecord,
        source: String,
        lineage: Lineage,
        also: &dyn Fn(&Conn, &ModelRecord) -> Result<()>,
    ) -> Result<ModelRecord> {
        util::validate_name("output_name", name)?;
        let budget = self.store.memory_limit;
        let inspected = inspect::inspect_dir(staging.path(), budget)?;
        if inspected.family.is_some_and(|f| f != parent.family) {
            return Err(Error::Internal(format!(
                "trained output in {} is not a {} model like its base {}",
                staging.path().display(),
                parent.family.as_str(),
                parent.reference()
            )));
        }
        inspect::check_adapter(&inspected, parent, budget)?;
        let files = hash_files(staging.path(), &inspected.files)?;
        let kind = if inspected.kind == ModelKind::Lora { ModelKind::Lora } else { ModelKind::Full };
        let new = NewModel {
            name,
            kind,
            family: parent.family,
            parent: Some(parent.id.clone()),
            source,
            task: parent.task.clone(),
            tags: Vec::new(),
            lineage,
        };
        self.insert_staged(ModelId(util::new_id("mdl")), staging, files, &inspected, new, also)
    }

    /// Registers a tabular classifier the training engine wrote into `staging` (under
    /// `models/`): kind `classifier`, family `tabular`, no parent; `files` are the
    /// directory's files (the classifier's config and weights, its reference profile),
    /// `config` the classifier's config (`classifier.json`), `architecture` `logistic`
    /// or `mlp`. Takes the next version of `name`; `also` runs in the registration's
    /// transaction (the job's completion).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register_classifier(
        &self,
        staging: &mut StagingDir,
        name: &str,
        architecture: &str,
        params: u64,
        config: serde_json::Value,
        source: String,
        lineage: Lineage,
        also: &dyn Fn(&Conn, &ModelRecord) -> Result<()>,
    ) -> Result<ModelRecord> {
        util::validate_name("output_name", name)?;
        let mut names = Vec::new();
        for e in fs::read_dir(staging.path()).with_path(staging.path())? {
            let e = e.with_path(staging.path())?;
            if e.path().is_file() {
                names.push(e.file_name().to_string_lossy().to_string());
            }
        }
        names.sort();
        let files = hash_files(staging.path(), &names)?;
        let inspected = Inspected::classifier(architecture.to_string(), params, config, names);
        let new = NewModel {
            name,
            kind: ModelKind::Classifier,
            family: Family::Tabular,
            parent: None,
            source,
            task: Some("classification".to_string()),
            tags: Vec::new(),
            lineage,
        };
        self.insert_staged(ModelId(util::new_id("mdl")), staging, files, &inspected, new, also)
    }

    /// The directory new models are staged in.
    pub(crate) fn staging_root(&self) -> PathBuf {
        self.dir()
    }

    /// The built-in presets.
    pub fn presets() -> &'static [Preset] {
        presets::PRESETS
    }

    /// The base model of an adapter (`parent`, or its base_model_name_or_path when that
    /// names a model registered here); `None` for a full model.
    fn adapter_parent(&self, inspected: &Inspected, opts: &RegisterOptions) -> Result<Option<ModelRecord>> {
        if inspected.kind != ModelKind::Lora {
            if opts.parent.is_some() {
                return Err(Error::config("parent", "only adapters have a parent; this directory holds a full model"));
            }
            return Ok(None);
        }
        let parent_ref = match (&opts.parent, &inspected.base_hint) {
            (Some(p), _) => p.clone(),
            (None, Some(hint)) => match self.resolve(hint.as_str()) {
                Ok(r) => ModelRef(r.id.0),
                Err(_) => {
                    return Err(Error::config(
                        "parent",
                        format!(
                        "adapter base `{hint}` is not registered here; pass parent (a model id, name or name@version)"
                    ),
                    ))
                }
            },
            (None, None) => return Err(Error::config("parent", "an adapter needs a parent model; pass parent")),
        };
        let parent = self.resolve(parent_ref.clone())?;
        if parent.kind == ModelKind::Lora {
            return Err(Error::config("parent", format!("`{parent_ref}` is itself an adapter")));
        }
        Ok(Some(parent))
    }

    fn record(
        &self,
        id: ModelId,
        files: Vec<ModelFile>,
        ins: &Inspected,
        new: NewModel<'_>,
        storage: Storage,
        path: PathBuf,
    ) -> ModelRecord {
        let sha256 = content_sha(&files);
        ModelRecord {
            id,
            name: new.name.to_string(),
            version: 0,
            kind: new.kind,
            family: new.family,
            architecture: ins.architecture.clone(),
            model_type: ins.model_type.clone(),
            parent_id: new.parent,
            params: ins.params,
            dtype: ins.dtype.clone(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            sha256,
            storage,
            path,
            files,
            tokenizer: ins.tokenizer.clone(),
            source: new.source,
            task: new.task,
            tags: new.tags,
            lineage: new.lineage,
            config: ins.config.clone(),
            created_at: util::now(),
            aliases: Vec::new(),
        }
    }

    /// Moves a staged directory to `models/<id>` and inserts its row.
    /// `also` runs in the same transaction as the insert (a job's completion).
    fn insert_staged(
        &self,
        id: ModelId,
        staging: &mut StagingDir,
        files: Vec<ModelFile>,
        ins: &Inspected,
        new: NewModel<'_>,
        also: &dyn Fn(&Conn, &ModelRecord) -> Result<()>,
    ) -> Result<ModelRecord> {
        let dest = self.dir().join(&id.0);
        let rec = self.record(id.clone(), files, ins, new, Storage::Copy, dest.clone());
        if !staging.persist(&dest)? {
            return Err(Error::Internal(format!("model directory {} already exists", dest.display())));
        }
        let stored = format!("models/{}", id.0);
        let inserted = self.store.catalog.write(|tx| {
            let rec = ModelRecord { version: sql::insert(tx, &rec, &stored)?, ..rec.clone() };
            also(tx, &rec)?;
            Ok(rec)
        });
        match inserted {
            Ok(rec) => Ok(rec),
            Err(e) => {
                let _ = fs::remove_dir_all(&dest);
                Err(e)
            }
        }
    }

    /// Writes `model` out of the home in `format` at `dest` (a directory for `hf` and
    /// `peft`, a file for `bundle`): see [`ExportFormat`]. The export is written under a
    /// temporary name and renamed into place; an existing `dest` is `already_exists`
    /// unless [`ExportOptions::overwrite`]. Every file copied from the home is checked
    /// against the sha256 recorded at registration.
    pub fn export(
        &self,
        model: impl Into<ModelRef>,
        format: ExportFormat,
        dest: impl AsRef<Path>,
        opts: &ExportOptions,
    ) -> Result<ExportReport> {
        self.export_with(model, format, dest, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`ModelRegistry::export`] with progress events (`task_*`, in files) and cancellation.
    pub fn export_with(
        &self,
        model: impl Into<ModelRef>,
        format: ExportFormat,
        dest: impl AsRef<Path>,
        opts: &ExportOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<ExportReport> {
        export::export(self, model.into(), format, dest.as_ref(), opts, sink, cancel)
    }

    /// Restores a bundle written by [`ModelRegistry::export`] (`bundle`): its models
    /// (an adapter's base first) under the ids they had, with the same content. Models
    /// already here with the same id and content are reused. Every entry is checked
    /// (names, sizes, sha256) before anything is registered; a tampered or truncated
    /// bundle is `invalid_data` naming the entry, and leaves the home unchanged.
    pub fn import_bundle(&self, path: impl AsRef<Path>, opts: &ImportBundleOptions) -> Result<ModelRecord> {
        self.import_bundle_with(path, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`ModelRegistry::import_bundle`] with progress events (`task_*`, in bytes) and cancellation.
    pub fn import_bundle_with(
        &self,
        path: impl AsRef<Path>,
        opts: &ImportBundleOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<ModelRecord> {
        export::import_bundle(self, path.as_ref(), opts, sink, cancel)
    }

    /// A model by id.
    pub fn get(&self, id: &ModelId) -> Result<ModelRecord> {
        self.store
            .catalog
            .read(|c| sql::by_id(c, &self.store.root, &id.0))?
            .ok_or_else(|| Error::not_found("model", id.0.clone()))
    }

    /// Whether a model with this id is registered (one cached statement: checked on
    /// every generation call).
    pub(crate) fn is_registered(&self, id: &ModelId) -> Result<bool> {
        self.store.catalog.read(|c| sql::exists(c, &id.0))
    }

    /// Resolves an id, `name` (latest version), `name@3`, `name@latest` or `name@alias`.
    pub fn resolve(&self, r: impl Into<ModelRef>) -> Result<ModelRecord> {
        let r: ModelRef = r.into();
        let home = &self.store.root;
        let found = self.store.catalog.read(|c| sql::resolve(c, home, &r.0))?;
        found.ok_or_else(|| Error::not_found("model", r.0))
    }

    /// Models matching `filter`, by name then version.
    pub fn list(&self, filter: &ModelFilter) -> Result<Vec<ModelRecord>> {
        self.store.catalog.read(|c| sql::list(c, &self.store.root, filter))
    }

    /// Points `alias` of the model's name at that model (creating or moving it
    /// atomically): afterwards `name@alias` resolves to it. The change is recorded in
    /// the alias history (action `set`; nothing when it already pointed there).
    pub fn set_alias(&self, model: impl Into<ModelRef>, alias: &str) -> Result<ModelRecord> {
        check_alias(alias)?;
        let m = self.resolve(model)?;
        let now = util::now();
        let change = sql::Change { action: AliasAction::Set, reason: None, at: &now };
        self.store.catalog.write(|tx| sql::set_alias(tx, &m.name, alias, &m.id.0, &change))?;
        self.get(&m.id)
    }

    /// Removes `name@alias` (recorded in the alias history, action `remove`).
    pub fn remove_alias(&self, name: &str, alias: &str) -> Result<()> {
        let now = util::now();
        let change = sql::Change { action: AliasAction::Remove, reason: None, at: &now };
        if self.store.catalog.write(|tx| sql::remove_alias(tx, name, alias, &change))?.is_none() {
            return Err(Error::not_found("alias", format!("{name}@{alias}")));
        }
        Ok(())
    }

    /// Changes of the aliases of model name `name` (of `alias` only, when given),
    /// newest first. Every change made by this API is there, each with what the alias
    /// pointed at before and after; aliases that existed before the history began
    /// (schema 8) have one `backfill` row each.
    pub fn alias_history(&self, name: &str, alias: Option<&str>) -> Result<Vec<AliasChange>> {
        self.store.catalog.read(|c| sql::history(c, name, alias))
    }

    /// The change of `name@alias` in effect at time `at` (RFC 3339; e.g. "what was
    /// production at 09:00?"): the last change made at or before `at`. `None` when the
    /// alias was not set then (never set yet, or removed); otherwise the change's
    /// `model_id` and `version` say what it pointed at (kept after a delete).
    pub fn alias_at(&self, name: &str, alias: &str, at: &str) -> Result<Option<AliasChange>> {
        let at = catalog_time("at", at)?;
        let found = self.store.catalog.read(|c| sql::change_at(c, name, alias, &at))?;
        Ok(found.filter(|c| c.model_id.is_some()))
    }

    /// Makes `model` the production model of its name, in one transaction:
    /// `production` moves to it, the model it replaces moves to `previous`, and
    /// `candidate` is removed if it pointed at it. Each change is recorded in the alias
    /// history with action `promote` and `reason`. Promoting the production model
    /// changes nothing (but a `candidate` alias on it is still removed). With no
    /// production model before, `previous` is left as it is.
    pub fn promote(&self, model: impl Into<ModelRef>, opts: &PromoteOptions) -> Result<AliasMove> {
        check_reason(&opts.reason)?;
        let m = self.resolve(model)?;
        let now = util::now();
        self.store.catalog.write(|tx| aliases::promote_in(tx, &m, opts.reason.as_deref(), &now))
    }

    /// Moves `production` of model name `name` back to `previous`, in one transaction.
    ///
    /// Precisely: let Q be what `previous` points at. `production` is set to Q (the
    /// model it pointed at is left without an alias), and `previous` is set to the model
    /// Q replaced as production the last time it became production by a promotion or
    /// `set_alias` (rollbacks do not count, so repeated rollbacks walk back through the
    /// promotions: v3 -> v2 -> v1); a deleted model in that chain, or the model rolled
    /// back from, is skipped for the one it replaced in turn. When the chain ends (Q was the first production model),
    /// `previous` is removed. Each change is recorded with action `rollback` and
    /// `reason`. With no `previous`, nothing changes and the error is `not_found`
    /// (`name@previous`).
    pub fn rollback(&self, name: &str, opts: &RollbackOptions) -> Result<AliasMove> {
        check_reason(&opts.reason)?;
        let now = util::now();
        self.store.catalog.write(|tx| aliases::rollback_in(tx, name, opts.reason.as_deref(), &now))
    }

    /// Deletes a model: its row first, then its files (never a referenced directory's).
    /// Refuses (`in_use`) while an adapter or a training job depends on it: a job on it
    /// as its base, or a job that may still run (pending, running, interrupted, or
    /// resumable after a failure or a cancel) continuing it as its
    /// `TrainSpec::init_adapter` (a monitor's `continue` retrain); unless `force`, which
    /// also deletes its adapters and detaches the jobs (a continuing job then fails
    /// with `invalid_config` naming `init_adapter` when it runs).
    pub fn delete(&self, model: impl Into<ModelRef>, force: bool) -> Result<()> {
        let m = self.resolve(model)?;
        let home = &self.store.root;
        let now = util::now();
        let removed = self.store.catalog.write(|tx| {
            let children = sql::children(tx, home, &m.id.0)?;
            let mut jobs = sql::jobs_using(tx, &m.id.0)?;
            for j in sql::jobs_continuing(tx, home, &m.id.0)? {
                if !jobs.contains(&j) {
                    jobs.push(j);
                }
            }
            if !force && (!children.is_empty() || !jobs.is_empty()) {
                let mut why = Vec::new();
                if !children.is_empty() {
                    why.push(format!(
                        "adapter(s) {}",
                        children.iter().map(ModelRecord::reference).collect::<Vec<_>>().join(", ")
                    ));
                }
                if !jobs.is_empty() {
                    why.push(format!("job(s) {}", jobs.join(", ")));
                }
                return Err(Error::InUse {
                    what: "model",
                    id: m.reference(),
                    reason: format!("needed by {}; pass force to delete anyway", why.join(" and ")),
                });
            }
            let mut removed = Vec::new();
            for c in children {
                sql::delete(tx, &c.id.0, &now)?;
                removed.push(c);
            }
            sql::delete(tx, &m.id.0, &now)?;
            removed.push(m.clone());
            Ok(removed)
        })?;
        for r in removed {
            if r.storage == Storage::Copy {
                match fs::remove_dir_all(&r.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&r.path, e)),
                }
            }
        }
        Ok(())
    }

    /// Recorded generation and scoring calls, newest first.
    pub fn generations(&self, filter: &GenerationFilter) -> Result<Vec<GenerationRecord>> {
        let model_id = match &filter.model {
            Some(m) => Some(self.resolve(m.as_str())?.id),
            None => None,
        };
        self.store.catalog.read(|c| gen_sql::list(c, model_id.as_ref(), filter))
    }

    /// Usage totals of a model from the catalog.
    pub fn usage(&self, model: impl Into<ModelRef>) -> Result<ModelUsage> {
        let rec = self.resolve(model)?;
        self.store.catalog.read(|c| gen_sql::usage(c, &rec.id))
    }

    /// Removes interrupted registrations and model directories no row refers to.
    pub(crate) fn sweep(&self, min_age: std::time::Duration) -> Result<()> {
        let known: std::collections::HashSet<String> = self.store.catalog.read(sql::all_ids)?.into_iter().collect();
        util::sweep(&self.dir(), min_age, |name| name.starts_with("mdl_") && !known.contains(name));
        Ok(())
    }
}

/// Checks an alias name (numbers, `latest` and `/` mean something already).
fn check_alias(alias: &str) -> Result<()> {
    util::validate_name("alias", alias)?;
    if alias.parse::<u32>().is_ok() || RESERVED_ALIASES.contains(&alias) || alias.contains('/') {
        return Err(Error::config(
            "alias",
            format!("`{alias}` cannot be an alias (numbers, `latest` and `/` are reserved)"),
        ));
    }
    Ok(())
}

/// Size and sha256 of each of `names` under `dir`.
/// A model's content hash: sha256 over its files' names and sha256s, sorted by name.
fn content_sha(files: &[ModelFile]) -> String {
    use sha2::Digest;
    let mut sorted: Vec<&ModelFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let manifest: String = sorted.iter().map(|f| format!("{}:{}\n", f.name, f.sha256)).collect();
    hex::encode(sha2::Sha256::digest(manifest.as_bytes()))
}

/// [`hash_files`] that stops at a cancel between reads.
fn hash_files_cancellable(dir: &Path, names: &[String], cancel: &CancelToken) -> Result<Vec<ModelFile>> {
    names
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let sha256 = util::sha256_file(&path, |_| cancel.check())?;
            Ok(ModelFile { name: f.clone(), bytes: fs::metadata(&path).with_path(&path)?.len(), sha256 })
        })
        .collect()
}

fn hash_files(dir: &Path, names: &[String]) -> Result<Vec<ModelFile>> {
    names
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let sha256 = util::sha256_file(&path, |_| Ok(()))?;
            Ok(ModelFile { name: f.clone(), bytes: fs::metadata(&path).with_path(&path)?.len(), sha256 })
        })
        .collect()
}

struct NewModel<'a> {
    name: &'a str,
    kind: ModelKind,
    family: Family,
    parent: Option<ModelId>,
    source: String,
    task: Option<String>,
    tags: Vec<String>,
    lineage: Lineage,
}
