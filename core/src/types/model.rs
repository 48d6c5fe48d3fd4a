//! Models: families, kinds, records, registration options, filters, LoRA settings.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{DatasetId, JobId, ModelId, ModelRef};
use super::names::named_enum;
use super::training::TrainSpec;
use crate::error::{Error, Result};

named_enum! {
    /// A model family: one implementation each.
    pub enum Family("family") {
        /// GPT-2: learned positions, LayerNorm, Conv1D weights, GELU MLP, tied head.
        Gpt2 = "gpt2",
        /// Llama, Mistral, Qwen2, SmolLM, TinyLlama: RoPE, RMSNorm, SwiGLU, GQA.
        Llama = "llama",
        /// Stable Diffusion 1.x / 2.x in the diffusers layout (`model_index.json`, `unet/`,
        /// `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`): a text-to-image pipeline.
        StableDiffusion = "stable-diffusion",
        /// A tabular classifier (logistic regression or a small MLP on candle), trained
        /// by the `classifier` method; its directory holds `classifier.json`,
        /// `model.safetensors` and the reference profile of its training rows.
        Tabular = "tabular",
    }
}

named_enum! {
    /// What a model is.
    pub enum ModelKind("kind") {
        /// A base model (registered from a directory or created from a preset).
        Base = "base",
        /// A full fine-tune.
        Full = "full",
        /// A LoRA adapter on a parent model.
        Lora = "lora",
        /// A tabular classifier (family `tabular`).
        Classifier = "classifier",
    }
}

named_enum! {
    /// What a call that would add a version (`create_preset`, `register_dir`, a training
    /// job) does when the name already holds the same thing: the same preset and seed,
    /// the same files, or a job with the same spec on the same base and data.
    #[derive(Default)]
    pub enum IfExists("if_exists") {
        /// Always add the next version (and, for training, a new job). The default.
        #[default]
        NewVersion = "new_version",
        /// Return the existing model (or job) when it is the same; otherwise add the next
        /// version. Re-running a script or a notebook cell then changes nothing.
        Reuse = "reuse",
        /// Refuse with `already_exists` when the name is taken at all.
        Error = "error",
    }
}

named_enum! {
    /// Where a model's files live.
    #[derive(Default)]
    pub enum Storage("storage") {
        /// Copied into the home (default): immune to changes of the original.
        #[default]
        Copy = "copy",
        /// Left where they are; the registry records the absolute path.
        Reference = "reference",
    }
}

/// One stored file of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A registered model (a catalog row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRecord {
    pub id: ModelId,
    pub name: String,
    pub version: u32,
    pub kind: ModelKind,
    /// `gpt2` or `llama` (Llama, Mistral, Qwen2 ...).
    pub family: Family,
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
    pub lineage: Lineage,
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

/// Where a model came from: for a preset, the preset and the seed of its weights; for
/// a trained model, its base, data, job, spec and final metrics; empty for a
/// registered directory. Unset parts are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Lineage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The model it was trained from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<ModelId>,
    /// The base as `name@version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_dataset: Option<DatasetId>,
    /// The training job that produced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<TrainSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<TrainMetrics>,
    /// Made by [`crate::Continual::learn`]: the records and the SGD steps (`base` is
    /// the version it was learned from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned: Option<super::continual::LearnLineage>,
}

/// The final figures of the run that produced a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TrainMetrics {
    /// Loss of the last optimiser step.
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub steps: u64,
    pub tokens: u64,
    pub duration_s: f64,
    /// Classifiers: accuracy on the training rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Classifiers: accuracy on the held-out rows (`eval_dataset` / `eval_fraction`, else
    /// the fit's validation split at its best epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

/// Options for [`ModelRegistry::register_dir`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// When `name` exists: `new_version` (default), `reuse` (the version with the same
    /// files, kind and parent is returned, nothing is copied) or `error`.
    pub if_exists: IfExists,
}

/// Options for [`ModelRegistry::create_preset`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PresetOptions {
    /// Default: the preset's name.
    pub name: Option<String>,
    /// Seed of the random initialisation.
    pub seed: u64,
    pub task: Option<String>,
    pub tags: Vec<String>,
    /// When `name` exists: `new_version` (default), `reuse` (the version made from the
    /// same preset and seed is returned) or `error`.
    pub if_exists: IfExists,
}

/// Filters for [`ModelRegistry::list`]; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFilter {
    pub kind: Option<ModelKind>,
    pub family: Option<Family>,
    pub task: Option<String>,
    pub name: Option<String>,
    pub tag: Option<String>,
    pub parent: Option<ModelId>,
}

/// A LoRA adapter's shape and targets (PEFT semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank. Default 8.
    pub r: usize,
    /// Scaling numerator: the delta is `alpha / r * B A`. Default 16.
    pub alpha: f64,
    /// Dropout on the adapter's input during training. Default 0.
    pub dropout: f64,
    /// Module names, matched like PEFT: a module is adapted when its name equals a
    /// target or ends with `.target` (`q_proj`, `v_proj`, `c_attn`...). `["all-linear"]`
    /// adapts every linear layer but the LM head. Empty: the family default
    /// (`q_proj`, `v_proj` for the Llama family, `c_attn` for GPT-2).
    pub target_modules: Vec<String>,
    /// Whether the base weights are stored `[in, out]` (GPT-2's Conv1D). `None`: from
    /// the family (true for GPT-2, false otherwise); an explicit value must agree.
    pub fan_in_fan_out: Option<bool>,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, dropout: 0.0, target_modules: Vec::new(), fan_in_fan_out: None, use_rslora: false }
    }
}

impl LoraConfig {
    /// Checks ranges (InvalidConfig naming the field).
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("r", "must be > 0"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config("alpha", format!("must be a positive number, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.target_modules.iter().any(|t| t.is_empty()) {
            return Err(Error::config("target_modules", "contains an empty name"));
        }
        Ok(())
    }

    /// The factor applied to `B A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// `target_modules`, or the family's default when empty.
    pub fn targets_for(&self, family: Family) -> Vec<String> {
        if !self.target_modules.is_empty() {
            return self.target_modules.clone();
        }
        match family {
            Family::Gpt2 => vec!["c_attn".into()],
            Family::Llama => vec!["q_proj".into(), "v_proj".into()],
            // diffusers' training scripts: the UNet's attention projections.
            Family::StableDiffusion => ["to_k", "to_q", "to_v", "to_out.0"].map(String::from).to_vec(),
            // No linear layer a LoRA adapter could target.
            Family::Tabular => Vec::new(),
        }
    }

    /// Whether module `name` is adapted (PEFT's suffix rule; `all-linear` skips lm_head).
    pub(crate) fn matches(targets: &[String], name: &str) -> bool {
        targets.iter().any(|t| {
            if t == "all-linear" {
                name != "lm_head"
            } else {
                name == t || name.ends_with(&format!(".{t}"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = LoraConfig::default();
        assert_eq!((c.r, c.alpha, c.dropout), (8, 16.0, 0.0));
        assert_eq!(c.scale(), 2.0);
        assert_eq!(c.targets_for(Family::Llama), ["q_proj", "v_proj"]);
        assert_eq!(c.targets_for(Family::Gpt2), ["c_attn"]);
        let c: LoraConfig = serde_json::from_str(r#"{"r": 4}"#).unwrap();
        assert_eq!((c.r, c.alpha), (4, 16.0));
        assert!(serde_json::from_str::<LoraConfig>(r#"{"rank": 4}"#).is_err());
        let e = LoraConfig { r: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("`r`"), "{e}");
        let e = LoraConfig { dropout: 1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("dropout"), "{e}");
        let t = vec!["c_proj".to_string()];
        assert!(LoraConfig::matches(&t, "transformer.h.0.attn.c_proj"));
        assert!(LoraConfig::matches(&t, "transformer.h.0.mlp.c_proj"));
        assert!(!LoraConfig::matches(&t, "transformer.h.0.mlp.xc_proj"));
        let all = vec!["all-linear".to_string()];
        assert!(LoraConfig::matches(&all, "model.layers.0.mlp.up_proj") && !LoraConfig::matches(&all, "lm_head"));
    }
}
