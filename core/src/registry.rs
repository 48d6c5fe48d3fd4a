//! ModelRegistry: records, names + versions, aliases, lineage, files.
//!
//! Weights are files under `<home>/models/<id>/` (or, by option, a directory the user
//! owns); rows are metadata. Registering copies into a staging directory, renames it
//! into place, then inserts the row in one transaction; deleting removes the row first
//! and the files last, so a kill at any moment never leaves a row without its files.

pub(crate) mod inspect;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use inspect::SUPPORTED_MODEL_TYPES;

use crate::catalog::models as sql;
use crate::error::{Error, IoResultExt, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::home::HomeInner;
use crate::models::presets::{self, Preset};
use crate::util::{self, StagingDir};
use inspect::Inspected;

/// A model id, e.g. `mdl_3f2a9c0d1b7e4a56`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelId(pub String);

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to a model: an id, `name` (latest version), `name@3`, or `name@alias`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelRef(pub String);

impl From<&str> for ModelRef {
    fn from(s: &str) -> Self {
        ModelRef(s.to_string())
    }
}
impl From<String> for ModelRef {
    fn from(s: String) -> Self {
        ModelRef(s)
    }
}
impl From<ModelId> for ModelRef {
    fn from(id: ModelId) -> Self {
        ModelRef(id.0)
    }
}
impl From<&ModelRef> for ModelRef {
    fn from(r: &ModelRef) -> Self {
        r.clone()
    }
}
impl From<&ModelId> for ModelRef {
    fn from(id: &ModelId) -> Self {
        ModelRef(id.0.clone())
    }
}
impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A base model (registered from a directory or created from a preset).
    Base,
    /// A full fine-tune.
    Full,
    /// A LoRA adapter on a parent model.
    Lora,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Base => "base",
            ModelKind::Full => "full",
            ModelKind::Lora => "lora",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "base" => Ok(ModelKind::Base),
            "full" => Ok(ModelKind::Full),
            "lora" => Ok(ModelKind::Lora),
            o => Err(Error::config("kind", format!("unknown model kind `{o}` (expected base, full or lora)"))),
        }
    }
}

/// Where a model's files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Copied into the home (default): immune to changes of the original.
    #[default]
    Copy,
    /// Left where they are; the registry records the absolute path.
    Reference,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Copy => "copy",
            Storage::Reference => "reference",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "copy" => Ok(Storage::Copy),
            "reference" => Ok(Storage::Reference),
            o => Err(Error::config("storage", format!("unknown storage `{o}` (expected copy or reference)"))),
        }
    }
}

/// One stored file of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A registered model (a catalog row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: ModelId,
    pub name: String,
    pub version: u32,
    pub kind: ModelKind,
    /// `gpt2` or `llama` (Llama, Mistral, Qwen2 ...).
    pub family: String,
    /// `architectures[0]` of config.json, e.g. `LlamaForCausalLM`; `lora` for adapters.
    pub architecture: String,
    pub model_type: String,
    /// Adapters: the model they apply to. Fine-tunes: the base they came from.
    pub parent_id: Option<ModelId>,
    pub params: u64,
    pub dtype: String,
    pub bytes: u64,
    /// Digest of the stored files (sha256 over `name:sha256` lines).
    pub sha256: String,
    pub storage: Storage,
    /// The directory holding the files.
    pub path: PathBuf,
    pub files: Vec<ModelFile>,
    /// The tokenizer file name, when the model has one.
    pub tokenizer: Option<String>,
    /// The registered directory, `preset:<name>`, or `job:<id>`.
    pub source: String,
    pub task: Option<String>,
    pub tags: Vec<String>,
    /// Where it came from: preset and seed, or base, dataset, job, spec, metrics.
    pub lineage: Value,
    /// config.json (or adapter_config.json for adapters).
    pub config: Value,
    pub created_at: String,
    /// Aliases of this model's name that point at this version.
    pub aliases: Vec<String>,
}

impl ModelRecord {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Options for [`ModelRegistry::register_dir`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterOptions {
    /// The model's name; a new version is added if it exists. Default: directory name.
    pub name: Option<String>,
    /// Copy into the home (default) or reference the directory in place.
    pub storage: Storage,
    /// Adapters: the model they apply to (default: `base_model_name_or_path`, if registered).
    pub parent: Option<ModelRef>,
    pub task: Option<String>,
    pub tags: Vec<String>,
}

/// Options for [`ModelRegistry::create_preset`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresetOptions {
    /// Default: the preset's name.
    pub name: Option<String>,
    /// Seed of the random initialisation.
    pub seed: u64,
    pub task: Option<String>,
    pub tags: Vec<String>,
}

/// Filters for [`ModelRegistry::list`]; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFilter {
    pub kind: Option<ModelKind>,
    pub family: Option<String>,
    pub task: Option<String>,
    pub name: Option<String>,
    pub tag: Option<String>,
    pub parent: Option<ModelId>,
}

/// Registers, names, versions and serves models. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ModelRegistry {
    home: Arc<HomeInner>,
}

/// Alias names that cannot be set: they mean something already.
const RESERVED_ALIASES: [&str; 1] = ["latest"];

impl ModelRegistry {
    pub(crate) fn home(&self) -> &Arc<HomeInner> {
        &self.home
    }

    pub(crate) fn new(home: Arc<HomeInner>) -> Self {
        Self { home }
    }

    fn dir(&self) -> PathBuf {
        self.home.root.join("models")
    }

    /// Registers a local Hugging Face directory (config.json + safetensors, single or
    /// sharded) or a PEFT LoRA adapter directory.
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
        let src = fs::canonicalize(src).with_path(src)?;
        let inspected = inspect::inspect_dir(&src)?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::name_from_path(&PathBuf::from(src.file_name().unwrap_or_default())),
        };
        util::validate_name("name", &name)?;
        let (parent, family) = self.adapter_parent(&inspected, opts)?;
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
                family: family.unwrap_or_else(|| inspected.family.clone()),
                parent,
                source,
                task: opts.task.clone(),
                tags: opts.tags.clone(),
                lineage: Value::Object(Default::default()),
            };
            let rec = match opts.storage {
                Storage::Copy => {
                    let id = ModelId(util::new_id("mdl"));
                    let mut staging = StagingDir::new(&self.dir())?;
                    let mut files = Vec::new();
                    for f in &inspected.files {
                        let sha = util::copy_hashing(&src.join(f), &staging.path().join(f), &mut progress)?;
                        files.push(ModelFile {
                            name: f.clone(),
                            bytes: fs::metadata(staging.path().join(f)).with_path(staging.path())?.len(),
                            sha256: sha,
                        });
                    }
                    self.insert_staged(id, &mut staging, files, &inspected, new)?
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
                    let version = self.home.catalog.write(|tx| sql::insert(tx, &rec, &stored))?;
                    ModelRecord { version, ..rec }
                }
            };
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    /// Creates a base model from a built-in preset: a small Llama-family config, random
    /// weights from `seed`, and the byte-level tokenizer. See [`ModelRegistry::presets`].
    pub fn create_preset(&self, preset: &str, opts: &PresetOptions) -> Result<ModelRecord> {
        let p = presets::find(preset)?;
        let name = opts.name.clone().unwrap_or_else(|| p.name.to_string());
        util::validate_name("name", &name)?;
        let mut staging = StagingDir::new(&self.dir())?;
        presets::write_dir(p, opts.seed, staging.path())?;
        let inspected = inspect::inspect_dir(staging.path())?;
        let mut files = Vec::new();
        for f in &inspected.files {
            let path = staging.path().join(f);
            let sha = util::sha256_file(&path, |_| Ok(()))?;
            files.push(ModelFile { name: f.clone(), bytes: fs::metadata(&path).with_path(&path)?.len(), sha256: sha });
        }
        let new = NewModel {
            name: &name,
            kind: ModelKind::Base,
            family: inspected.family.clone(),
            parent: None,
            source: format!("preset:{}", p.name),
            task: opts.task.clone(),
            tags: opts.tags.clone(),
            lineage: serde_json::json!({ "preset": p.name, "seed": opts.seed }),
        };
        self.insert_staged(ModelId(util::new_id("mdl")), &mut staging, files, &inspected, new)
    }

    /// Registers a directory the training engine wrote into `staging` (under
    /// `models/`): full weights as an HF directory (kind `full`) or a PEFT adapter
    /// (kind `lora`, `parent` = the base). Takes the next version of `name`.
    pub(crate) fn register_trained(
        &self,
        staging: &mut StagingDir,
        name: &str,
        parent: &ModelRecord,
        source: String,
        lineage: Value,
    ) -> Result<ModelRecord> {
        util::validate_name("output_name", name)?;
        let inspected = inspect::inspect_dir(staging.path())?;
        let mut files = Vec::new();
        for f in &inspected.files {
            let path = staging.path().join(f);
            let sha = util::sha256_file(&path, |_| Ok(()))?;
            files.push(ModelFile { name: f.clone(), bytes: fs::metadata(&path).with_path(&path)?.len(), sha256: sha });
        }
        let kind = if inspected.kind == ModelKind::Lora { ModelKind::Lora } else { ModelKind::Full };
        let new = NewModel {
            name,
            kind,
            family: parent.family.clone(),
            parent: Some(parent.id.clone()),
            source,
            task: parent.task.clone(),
            tags: Vec::new(),
            lineage,
        };
        self.insert_staged(ModelId(util::new_id("mdl")), staging, files, &inspected, new)
    }

    /// The directory new models are staged in.
    pub(crate) fn staging_root(&self) -> PathBuf {
        self.dir()
    }

    /// The built-in presets.
    pub fn presets() -> &'static [Preset] {
        presets::PRESETS
    }

    fn adapter_parent(
        &self,
        inspected: &Inspected,
        opts: &RegisterOptions,
    ) -> Result<(Option<ModelId>, Option<String>)> {
        if inspected.kind != ModelKind::Lora {
            if opts.parent.is_some() {
                return Err(Error::config("parent", "only adapters have a parent; this directory holds a full model"));
            }
            return Ok((None, None));
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
        Ok((Some(parent.id), Some(parent.family)))
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
        let manifest: String = {
            let mut sorted: Vec<&ModelFile> = files.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            sorted.iter().map(|f| format!("{}:{}\n", f.name, f.sha256)).collect()
        };
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(manifest.as_bytes()));
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
    fn insert_staged(
        &self,
        id: ModelId,
        staging: &mut StagingDir,
        files: Vec<ModelFile>,
        ins: &Inspected,
        new: NewModel<'_>,
    ) -> Result<ModelRecord> {
        let dest = self.dir().join(&id.0);
        let rec = self.record(id.clone(), files, ins, new, Storage::Copy, dest.clone());
        if !staging.persist(&dest)? {
            return Err(Error::Internal(format!("model directory {} already exists", dest.display())));
        }
        let stored = format!("models/{}", id.0);
        match self.home.catalog.write(|tx| sql::insert(tx, &rec, &stored)) {
            Ok(version) => Ok(ModelRecord { version, ..rec }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dest);
                Err(e)
            }
        }
    }

    /// A model by id.
    pub fn get(&self, id: &ModelId) -> Result<ModelRecord> {
        self.home
            .catalog
            .read(|c| sql::by_id(c, &self.home.root, &id.0))?
            .ok_or_else(|| Error::not_found("model", id.0.clone()))
    }

    /// Resolves an id, `name` (latest version), `name@3`, `name@latest` or `name@alias`.
    pub fn resolve(&self, r: impl Into<ModelRef>) -> Result<ModelRecord> {
        let r: ModelRef = r.into();
        let home = &self.home.root;
        let found = self.home.catalog.read(|c| {
            if let Some(m) = sql::by_id(c, home, &r.0)? {
                return Ok(Some(m));
            }
            match r.0.split_once('@') {
                None => sql::latest(c, home, &r.0),
                Some((name, "latest")) => sql::latest(c, home, name),
                Some((name, tail)) => match tail.parse::<u32>() {
                    Ok(v) => sql::by_name_version(c, home, name, v),
                    Err(_) => sql::by_alias(c, home, name, tail),
                },
            }
        })?;
        found.ok_or_else(|| Error::not_found("model", r.0))
    }

    /// Models matching `filter`, by name then version.
    pub fn list(&self, filter: &ModelFilter) -> Result<Vec<ModelRecord>> {
        self.home.catalog.read(|c| sql::list(c, &self.home.root, filter))
    }

    /// Points `alias` of the model's name at that model (creating or moving it
    /// atomically): afterwards `name@alias` resolves to it.
    pub fn set_alias(&self, model: impl Into<ModelRef>, alias: &str) -> Result<ModelRecord> {
        util::validate_name("alias", alias)?;
        if alias.parse::<u32>().is_ok() || RESERVED_ALIASES.contains(&alias) || alias.contains('/') {
            return Err(Error::config(
                "alias",
                format!("`{alias}` cannot be an alias (numbers, `latest` and `/` are reserved)"),
            ));
        }
        let m = self.resolve(model)?;
        let now = util::now();
        self.home.catalog.write(|tx| sql::set_alias(tx, &m.name, alias, &m.id.0, &now))?;
        self.get(&m.id)
    }

    /// Removes `name@alias`.
    pub fn remove_alias(&self, name: &str, alias: &str) -> Result<()> {
        if !self.home.catalog.write(|tx| sql::remove_alias(tx, name, alias))? {
            return Err(Error::not_found("alias", format!("{name}@{alias}")));
        }
        Ok(())
    }

    /// Deletes a model: its row first, then its files (never a referenced directory's).
    /// Refuses while an adapter or a training job depends on it, unless `force`, which
    /// also deletes its adapters and detaches the jobs.
    pub fn delete(&self, model: impl Into<ModelRef>, force: bool) -> Result<()> {
        let m = self.resolve(model)?;
        let home = &self.home.root;
        let removed = self.home.catalog.write(|tx| {
            let children = sql::children(tx, home, &m.id.0)?;
            let jobs = sql::jobs_using(tx, &m.id.0)?;
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
                sql::delete(tx, &c.id.0)?;
                removed.push(c);
            }
            sql::delete(tx, &m.id.0)?;
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

    /// Removes interrupted registrations and model directories no row refers to.
    pub(crate) fn sweep(&self, min_age: std::time::Duration) -> Result<()> {
        let dir = self.dir();
        util::sweep_tmp(&dir, min_age);
        let known: std::collections::HashSet<String> = self.home.catalog.read(sql::all_ids)?.into_iter().collect();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= min_age);
            if name.starts_with("mdl_") && old && !known.contains(&name) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

struct NewModel<'a> {
    name: &'a str,
    kind: ModelKind,
    family: String,
    parent: Option<ModelId>,
    source: String,
    task: Option<String>,
    tags: Vec<String>,
    lineage: Value,
}

#[cfg(test)]
pub(crate) fn inspect_header_for_tests(p: &Path) -> usize {
    inspect::read_safetensors_header(p).map(|h| h.len()).unwrap_or(0)
}
