//! Weights of one diffusers component (`diffusion_pytorch_model.safetensors`, or shards
//! listed in `diffusion_pytorch_model.safetensors.index.json`), handed out by their
//! diffusers names with shape checks, as plain tensors (frozen) or `Var`s (trainable).
//! Every tensor of the files must be used: one left over means the files describe
//! another architecture than config.json.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::load::{shard_files, Weights};

/// The weights file of a diffusers component.
pub(crate) const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
const INDEX_FILE: &str = "diffusion_pytorch_model.safetensors.index.json";
/// A component's config file.
pub(crate) const CONFIG_FILE: &str = "config.json";

/// The weight files of a component directory: the single file, the shards of the index,
/// or the fp16 variant when it is the only one.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok((vec![single.clone()], single));
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        return Ok((shard_files(dir, &index)?, index));
    }
    let fp16 = dir.join("diffusion_pytorch_model.fp16.safetensors");
    if fp16.is_file() {
        return Ok((vec![fp16.clone()], fp16));
    }
    let reason = if dir.join("diffusion_pytorch_model.bin").exists() {
        "only diffusion_pytorch_model.bin (a pickle) is present; anneal reads safetensors only: convert it first"
    } else {
        "no weights: expected diffusion_pytorch_model.safetensors or its .index.json"
    };
    Err(Error::data(Location::file(single), reason))
}

/// Loads every tensor of the component in `dir`, converted to `dtype`, on `device`.
pub(crate) fn load_weights(dir: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    let (files, main_file) = weight_files(dir)?;
    Weights::from_files(files, main_file, dtype, device)
}

/// Hands tensors out of [`Weights`] while a model is built: checks shapes, makes `Var`s
/// for full fine-tuning, remembers what was used.
pub(crate) struct Loader<'a> {
    weights: &'a Weights,
    trainable: bool,
    used: BTreeSet<String>,
    vars: Vec<(String, Var)>,
    /// How config errors name the config file (`unet/config.json`).
    pub(crate) config_label: String,
}

impl<'a> Loader<'a> {
    pub(crate) fn new(weights: &'a Weights, trainable: bool, config_label: String) -> Self {
        Self { weights, trainable, used: BTreeSet::new(), vars: Vec::new(), config_label }
    }

    /// An invalid-config error naming `field` of the component's config file.
    pub(crate) fn config_error(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::config(format!("{}:{field}", self.config_label), reason)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_as(name, shape, shape)?;
        self.take(name, t)
    }

    /// The tensor `name` stored with shape `stored` (or `shape`), reshaped to `shape`
    /// (an attention projection saved as a 1x1 convolution).
    pub(crate) fn get_as(&mut self, name: &str, shape: &[usize], stored: &[usize]) -> Result<Tensor> {
        let t = self
            .weights
            .raw(name)
            .ok_or_else(|| Error::data(self.weights.location(name), "missing tensor required by config.json"))?;
        if t.dims() != shape && t.dims() != stored {
            return Err(Error::data(
                self.weights.location(name),
                format!("tensor has shape {:?} but config.json implies {:?}", t.dims(), shape),
            ));
        }
        self.used.insert(name.to_string());
        Ok(if t.dims() == shape { t.clone() } else { t.reshape(shape)? })
    }

    /// Turns `t` into a trainable `Var` under `name` when loading for full fine-tuning.
    pub(crate) fn take(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
        if !self.trainable {
            return Ok(t);
        }
        let v = Var::from_tensor(&t)?;
        let t = v.as_tensor().clone();
        self.vars.push((name.to_string(), v));
        Ok(t)
    }

    /// The trainable variables, after checking that every tensor of the files was used.
    pub(crate) fn finish(self) -> Result<Vec<(String, Var)>> {
        let unused: BTreeMap<&String, ()> =
            self.weights.names().filter(|k| !self.used.contains(*k)).map(|k| (k, ())).collect();
        if let Some((name, ())) = unused.into_iter().next() {
            return Err(Error::data(
                self.weights.location(name),
                "tensor is not part of the model that config.json describes (another architecture or config?)",
            ));
        }
        Ok(self.vars)
    }
}

/// Reads a component's config.json.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&text).map_err(|e| Error::data(Location::file(path), format!("not valid JSON: {e}")))
}

/// Writes `tensors` and `config` as a diffusers component directory, each file
/// crash-safely (a `.tmp-*` file, fsync, rename: [`crate::util::write_atomic`]), so a
/// failure or a kill leaves no half-written file behind and a checkpoint renamed into
/// place after this returns holds weights that are on disk. Failpoints
/// `write:diffusion_pytorch_model.safetensors`, `write:config.json`.
pub(crate) fn save_component(dir: &Path, config: &Value, tensors: Vec<(String, Tensor)>) -> Result<()> {
    std::fs::create_dir_all(dir).with_path(dir)?;
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    crate::models::write_safetensors(&map, &dir.join(WEIGHTS_FILE))?;
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Internal(e.to_string()))?;
    crate::util::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}
