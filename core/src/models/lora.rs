//! LoRA adapters: attach (PEFT initialisation), train, merge / unmerge, and save or
//! load in PEFT's layout so adapters move both ways between anneal and PEFT.
//!
//! Base weights stay plain tensors (no gradient); A and B are `Var`s, the only thing
//! [`Model::trainable_vars`] returns while an adapter is attached.

pub mod peft;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};

use super::linear::LoraAdapter;
use super::memory;
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
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dtype = self.dtype();
        let device = self.device().clone();
        let targets = Targets::Names(cfg.targets_for(self.config().family));
        self.attach(cfg, &targets, |_, in_f, out_f, r| {
            let bound = 1.0 / (in_f as f64).sqrt();
            let dist = Uniform::new_inclusive(-bound, bound).map_err(|e| Error::Internal(e.to_string()))?;
            let a: Vec<f64> = (0..r * in_f).map(|_| dist.sample(&mut rng)).collect();
            let a = Tensor::from_vec(a, (r, in_f), &device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out_f, r), dtype, &device)?;
            Ok((a, b))
        })
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
        for (_, l) in self.linears_mut() {
            l.merge()?;
        }
        if let Some(s) = self.lora_state_mut() {
            s.merged = true;
        }
        Ok(())
    }

    /// Subtracts a merged adapter from the base weights again.
    pub fn unmerge_lora(&mut self) -> Result<()> {
        for (_, l) in self.linears_mut() {
            l.unmerge()?;
        }
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
        for (_, l) in self.linears_mut() {
            l.lora = None;
        }
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
        let planned = planned.collect::<Result<Vec<_>>>()?;
        let bytes = memory::lora_params(cfg.r, planned).saturating_mul(self.dtype().size_in_bytes() as u128);
        memory::Estimate::new().add("adapter", "r", bytes).check(memory::default_memory_limit())?;
        let scale = cfg.scale();
        let dropout = cfg.dropout as f32;
        let mut vars = Vec::new();
        let mut names = BTreeSet::new();
        let mut available = BTreeSet::new();
        let mut result = Ok(());
        for (name, lin) in self.linears_mut() {
            let short = name.rsplit('.').next().unwrap_or(&name).to_string();
            available.insert(short.clone());
            if !hit(&name) {
                continue;
            }
            let step = (|| -> Result<()> {
                let (in_f, out_f) = lin.features()?;
                let (a, b) = make(&name, in_f, out_f, cfg.r)?;
                let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
                vars.push((peft::key(&name, 'A'), a.clone()));
                vars.push((peft::key(&name, 'B'), b.clone()));
                lin.lora = Some(LoraAdapter { a, b, scale, dropout, merged: false });
                Ok(())
            })();
            if let Err(e) = step {
                result = Err(e);
                break;
            }
            names.insert(short);
        }
        if let Err(e) = result {
            self.strip_adapters();
            return Err(e);
        }
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
