//! LoRA adapters: attach (PEFT initialisation), train, merge / unmerge, and save or
//! load in PEFT's layout so adapters move both ways between anneal and PEFT.
//!
//! Base weights stay plain tensors (no gradient); A and B are `Var`s, the only thing
//! [`Model::trainable_vars`] returns while an adapter is attached.

pub(crate) mod layers;
pub mod peft;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};

use super::linear::LoraAdapter;
use super::Model;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::types::{Family, LoraConfig};
use peft::Targets;

/// An attached adapter.
#[derive(Debug, Clone)]
pub(crate) struct LoraState {
    pub(crate) config: LoraConfig,
    /// The adapted modules' last name components (PEFT's `target_modules` on save).
    pub(crate) target_names: Vec<String>,
    /// (PEFT file key, Var), A then B per module, in module order.
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) merged: bool,
    pub(crate) base_model_name_or_path: Option<String>,
}

/// An unmerged adapter taken off a model's layers, to be put back later (several
/// adapters sharing one loaded base).
#[derive(Debug, Clone)]
pub(crate) struct AdapterSlot {
    state: LoraState,
    layers: HashMap<String, LoraAdapter>,
}

impl Model {
    /// Takes the attached (unmerged) adapter off the layers; the model is then the base.
    pub(crate) fn take_adapter(&mut self) -> Result<Option<AdapterSlot>> {
        if self.is_lora_merged() {
            return Err(Error::config("adapter", "a merged adapter cannot be detached; unmerge it first"));
        }
        let Some(state) = self.lora_state().cloned() else {
            return Ok(None);
        };
        let mut layers = HashMap::new();
        for (name, l) in self.linears_mut() {
            if let Some(a) = l.lora.take() {
                layers.insert(name, a);
            }
        }
        self.set_lora_state(None);
        Ok(Some(AdapterSlot { state, layers }))
    }

    /// Puts `slot` on the layers (or none: the bare base), replacing an unmerged adapter.
    pub(crate) fn put_adapter(&mut self, slot: Option<&AdapterSlot>) -> Result<()> {
        if self.is_lora_merged() {
            return Err(Error::config("adapter", "the model has a merged adapter; it cannot be switched"));
        }
        for (name, l) in self.linears_mut() {
            l.lora = slot.and_then(|s| s.layers.get(&name).cloned());
        }
        self.set_lora_state(slot.map(|s| s.state.clone()));
        Ok(())
    }

    /// Attaches a new adapter initialised as PEFT does: A ~ kaiming-uniform(a = sqrt(5))
    /// (uniform in ±1/sqrt(in_features)) from `seed`, B = 0, so the model's output is
    /// unchanged until training moves B.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        let mut init = layers::PeftInit::new(seed, self.dtype(), &self.device().clone());
        let targets = Targets::Names(cfg.targets_for(self.config().family));
        self.attach(cfg, &targets, |_, in_f, out_f, r| init.make(in_f, out_f, r))
    }

    /// Loads a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load_adapter(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(peft::CONFIG_FILE);
        let pc = peft::read_config(&cfg_path)?;
        let st = dir.join(peft::WEIGHTS_FILE);
        let bytes = std::fs::read(&st).with_path(&st)?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, self.device())
            .map_err(|e| Error::data(Location::file(&st), format!("not a valid safetensors file: {e}")))?;
        let dtype = self.dtype();
        let mut take = |module: &str, which: char, shape: [usize; 2]| -> Result<Tensor> {
            let k = peft::key(module, which);
            let t = tensors.remove(&k).ok_or_else(|| {
                Error::data(
                    Location::file(&st).field(&k),
                    "missing tensor for a module targeted by adapter_config.json",
                )
            })?;
            if t.dims() != shape {
                return Err(Error::data(
                    Location::file(&st).field(&k),
                    format!("tensor has shape {:?}, expected {:?} from r and the base model", t.dims(), shape),
                ));
            }
            Ok(t.to_dtype(dtype)?)
        };
        self.attach(&pc.config, &pc.targets, |module, in_f, out_f, r| {
            Ok((take(module, 'A', [r, in_f])?, take(module, 'B', [out_f, r])?))
        })?;
        if let Some(extra) = tensors.keys().min() {
            let extra = extra.clone();
            self.set_lora_state(None);
            self.strip_adapters();
            return Err(Error::data(
                Location::file(&st).field(extra),
                "tensor does not belong to any module this adapter targets in this model",
            ));
        }
        if let Some(state) = self.lora_state_mut() {
            state.base_model_name_or_path = pc.base_model_name_or_path;
        }
        Ok(())
    }

    /// Writes the adapter in PEFT's layout into `dir` (created if needed).
    pub fn save_adapter(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let state = self.lora_state().ok_or_else(|| Error::config("adapter", "the model has no LoRA adapter"))?;
        std::fs::create_dir_all(dir).with_path(dir)?;
        let base = state.base_model_name_or_path.clone().unwrap_or_else(|| self.dir().display().to_string());
        let fan_in_fan_out = self.config().family == Family::Gpt2;
        let cfg = peft::config_json(&state.config, &state.target_names, fan_in_fan_out, Some(&base));
        let p = dir.join(peft::CONFIG_FILE);
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Internal(e.to_string()))?;
        crate::util::write_atomic(&p, text.as_bytes())?;
        let tensors: HashMap<String, Tensor> =
            state.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
        super::write_safetensors(&tensors, &dir.join(peft::WEIGHTS_FILE))
    }

    /// Folds the adapter into the base weights (`W + alpha/r * B A`; transposed for
    /// Conv1D). The forward then skips the adapter; [`Model::unmerge_lora`] undoes it.
    pub fn merge_lora(&mut self) -> Result<()> {
        if self.lora_state().is_none() {
            return Err(Error::config("adapter", "the model has no LoRA adapter to merge"));
        }
        layers::merge(&mut self.linears_mut())?;
        if let Some(s) = self.lora_state_mut() {
            s.merged = true;
        }
        Ok(())
    }

    /// Subtracts a merged adapter from the base weights again.
    pub fn unmerge_lora(&mut self) -> Result<()> {
        layers::unmerge(&mut self.linears_mut())?;
        if let Some(s) = self.lora_state_mut() {
            s.merged = false;
        }
        Ok(())
    }

    /// Whether the adapter is merged into the weights.
    pub fn is_lora_merged(&self) -> bool {
        self.lora_state().is_some_and(|s| s.merged)
    }

    /// Detaches the adapter (unmerging it first), restoring the base model.
    pub fn remove_lora(&mut self) -> Result<()> {
        self.unmerge_lora()?;
        self.strip_adapters();
        self.set_lora_state(None);
        Ok(())
    }

    fn strip_adapters(&mut self) {
        layers::strip(&mut self.linears_mut());
    }

    /// Attaches adapters to every module matching `targets`, with A and B from `make`
    /// (module name, in, out, r).
    fn attach(
        &mut self,
        cfg: &LoraConfig,
        targets: &Targets,
        mut make: impl FnMut(&str, usize, usize, usize) -> Result<(Tensor, Tensor)>,
    ) -> Result<()> {
        cfg.validate()?;
        if self.lora_state().is_some() {
            return Err(Error::config("adapter", "the model already has a LoRA adapter; remove it first"));
        }
        if self.is_trainable() {
            return Err(Error::config(
                "trainable",
                "LoRA needs frozen base weights: load the model with trainable = false",
            ));
        }
        let family = self.config().family;
        let conv1d = family == Family::Gpt2;
        if let Some(f) = cfg.fan_in_fan_out {
            if f != conv1d {
                return Err(Error::config(
                    "fan_in_fan_out",
                    format!("must be {conv1d} for {} (its weights are stored that way)", family.as_str()),
                ));
            }
        }
        let re = match targets {
            Targets::Regex(s) => Some(
                regex::Regex::new(&format!("^(?:{s})$"))
                    .map_err(|e| Error::config("target_modules", format!("invalid regex: {e}")))?,
            ),
            Targets::Names(_) => None,
        };
        let hit = |name: &str| match (targets, re.as_ref()) {
            (_, Some(re)) => re.is_match(name),
            (Targets::Names(t), None) => LoraConfig::matches(t.as_slice(), name),
            (Targets::Regex(_), None) => false,
        };
        // Sized before anything is allocated: a rank of 2^40 is an error, not an abort.
        let planned = self.linears_mut().into_iter().filter(|(n, _)| hit(n)).map(|(_, l)| l.features());
        layers::check_memory(cfg.r, planned.collect::<Result<Vec<_>>>()?, self.dtype())?;
        let scale = cfg.scale();
        let mut names = BTreeSet::new();
        let mut available = BTreeSet::new();
        let mut linears = self.linears_mut();
        let attached = layers::attach(&mut linears, cfg.dropout as f32, |name, in_f, out_f| {
            let short = name.rsplit('.').next().unwrap_or(name).to_string();
            available.insert(short.clone());
            if !hit(name) {
                return Ok(None);
            }
            let (a, b) = make(name, in_f, out_f, cfg.r)?;
            names.insert(short);
            Ok(Some(layers::NewAdapter { a, b, scale }))
        })?;
        drop(linears);
        let vars: Vec<(String, Var)> = attached
            .into_iter()
            .flat_map(|m| [(peft::key(&m.module, 'A'), m.a), (peft::key(&m.module, 'B'), m.b)])
            .collect();
        if vars.is_empty() {
            return Err(Error::config(
                "target_modules",
                format!(
                    "no module of this {} model matches {:?} (linear modules: {})",
                    family.as_str(),
                    targets,
                    available.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let target_names: Vec<String> = names.into_iter().collect();
        let config = LoraConfig { target_modules: target_names.clone(), fan_in_fan_out: Some(conv1d), ..cfg.clone() };
        self.set_lora_state(Some(LoraState {
            config,
            target_names,
            vars,
            merged: false,
            base_model_name_or_path: None,
        }));
        Ok(())
    }
}
