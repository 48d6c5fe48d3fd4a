//! [`DatasetStore::generate`]: a model's generations for a list of prompts, stored as a
//! new `completion` dataset whose lineage names the model and the settings.

use serde_json::{Map, Value};

use super::read::RawRecord;
use super::{DatasetStore, Ingest};
use crate::catalog::{datasets as sql, to_json};
use crate::error::{Error, Location, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::generation::Generator;
use crate::registry::ModelRegistry;
use crate::types::{
    DatasetFormat, DatasetId, DatasetLineage, DatasetRecord, GenerateDatasetOptions, GeneratorOptions, ImportOptions,
    ModelRef, SourceFormat, MAX_GENERATE_PROMPTS,
};
use crate::util;

/// Most prompts per batch.
const MAX_BATCH: usize = 1024;

impl DatasetStore {
    /// Generates a completion of each prompt with `model` (a language model: base, full
    /// fine-tune or LoRA adapter) and stores the pairs as a new `completion` dataset
    /// (`{"prompt", "completion"}` per prompt, in order). Its `source` is
    /// `generate:<model id>` and its [`DatasetStore::lineage`] holds the model and the
    /// settings (an unset seed is drawn once and recorded). The generation calls are
    /// recorded in the catalog like any other. All or nothing: a failed or cancelled
    /// run stores nothing.
    pub fn generate<S: AsRef<str>>(
        &self,
        model: impl Into<ModelRef>,
        prompts: &[S],
        opts: &GenerateDatasetOptions,
    ) -> Result<DatasetRecord> {
        self.generate_with(model, prompts, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`DatasetStore::generate`] as a task (`task: "generate_dataset"`, progress in
    /// prompts), cancellable between batches and decoding steps.
    pub fn generate_with<S: AsRef<str>>(
        &self,
        model: impl Into<ModelRef>,
        prompts: &[S],
        opts: &GenerateDatasetOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<DatasetRecord> {
        if prompts.is_empty() {
            return Err(Error::config("prompts", "is empty; give at least one prompt"));
        }
        if prompts.len() > MAX_GENERATE_PROMPTS {
            return Err(Error::config("prompts", format!("at most {MAX_GENERATE_PROMPTS} prompts per call")));
        }
        if let Some(i) = prompts.iter().position(|p| p.as_ref().trim().is_empty()) {
            return Err(Error::config(format!("prompts[{i}]"), "is empty"));
        }
        if !(1..=MAX_BATCH).contains(&opts.batch_size) {
            return Err(Error::config("batch_size", format!("must be between 1 and {MAX_BATCH}")));
        }
        if let Some(n) = &opts.name {
            util::validate_name("name", n)?;
        }
        let registry = ModelRegistry::new(self.store.clone());
        let generator = Generator::load(&registry, model, &GeneratorOptions::default())?;
        let rec = generator.model().clone();
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::new_id(&format!("{}-generated", rec.name)),
        };
        util::validate_name("name", &name)?;
        let mut cfg = opts.generation.clone();
        if cfg.seed.is_none() {
            cfg.seed = Some(rand::random::<u32>() as u64);
        }
        let lineage = DatasetLineage {
            model: rec.id.clone(),
            model_ref: rec.reference(),
            generation: cfg.clone(),
            model_defaults: generator.defaults(),
            prompts: prompts.len() as u64,
        };
        let total = prompts.len() as u64;
        run_task(sink, "generate_dataset", &name, Some(total), "prompts", |rep| {
            let import = ImportOptions { format: Some(DatasetFormat::Completion), ..Default::default() };
            let mut ingest = Ingest::new(&self.dir(), &import, Location::default(), None)?;
            let mut index = 0u64;
            for chunk in prompts.chunks(opts.batch_size) {
                cancel.check()?;
                let texts: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
                let out = generator.generate_batch_with(&texts, &cfg, &mut NoopSink, cancel)?;
                for (p, g) in texts.iter().zip(out) {
                    index += 1;
                    let mut fields = Map::new();
                    fields.insert("prompt".into(), Value::from(*p));
                    fields.insert("completion".into(), Value::from(g.text));
                    ingest.push(RawRecord { index, fields })?;
                }
                rep.progress(index)?;
            }
            cancel.check()?;
            let mut staged = ingest.finish(&name, format!("generate:{}", rec.id), SourceFormat::Records, None)?;
            staged.lineage = Some(to_json(&lineage)?);
            let out = self.store_one(staged, opts.on_duplicate)?;
            let id = out.id.0.clone();
            Ok((out, Some(id)))
        })
    }

    /// Where a dataset came from beyond its `source`: the model and settings of a
    /// dataset written by [`DatasetStore::generate`]; `None` for other datasets.
    pub fn lineage(&self, id_or_name: impl Into<DatasetId>) -> Result<Option<DatasetLineage>> {
        let rec = self.get(id_or_name)?;
        self.store.catalog.read(|c| sql::lineage(c, &rec.id.0))
    }
}
