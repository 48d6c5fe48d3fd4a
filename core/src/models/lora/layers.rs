//! What every model's LoRA shares, whatever the file layout: PEFT's initialisation,
//! putting adapters on a set of [`Linear`] layers (all or nothing), merging, unmerging
//! and stripping them. The language models ([`crate::models::Model`]) and the diffusion
//! UNet ([`crate::diffusion::UNet2DConditionModel`]) both attach through here.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};

use crate::error::{Error, Result};
use crate::models::linear::{Linear, LoraAdapter};
use crate::models::memory;

/// A layer list as the models hand it out: `(module name, layer)`.
pub(crate) type Layers<'a> = Vec<(String, &'a mut Linear)>;

/// PEFT's default initialisation from a seed: A ~ kaiming-uniform(a = sqrt(5)), that is
/// uniform in ±1/sqrt(in_features), B = 0 (the adapted model starts equal to the base).
pub(crate) struct PeftInit {
    rng: rand_chacha::ChaCha8Rng,
    dtype: DType,
    device: Device,
}

impl PeftInit {
    pub(crate) fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self { rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed), dtype, device: device.clone() }
    }

    /// A `[r, in_f]` and B `[out_f, r]`, layers taken in order from one random stream.
    pub(crate) fn make(&mut self, in_f: usize, out_f: usize, r: usize) -> Result<(Tensor, Tensor)> {
        let bound = 1.0 / (in_f as f64).sqrt();
        let dist = Uniform::new_inclusive(-bound, bound).map_err(|e| Error::Internal(e.to_string()))?;
        let a: Vec<f64> = (0..r * in_f).map(|_| dist.sample(&mut self.rng)).collect();
        let a = Tensor::from_vec(a, (r, in_f), &self.device)?.to_dtype(self.dtype)?;
        let b = Tensor::zeros((out_f, r), self.dtype, &self.device)?;
        Ok((a, b))
    }
}

/// Refuses adapters of rank `r` on layers of these `(in, out)` sizes that would not fit
/// in memory, before anything is allocated (a rank of 2^40 is an error, not an abort).
pub(crate) fn check_memory(r: usize, features: Vec<(usize, usize)>, dtype: DType) -> Result<()> {
    let bytes = memory::lora_params(r, features).saturating_mul(dtype.size_in_bytes() as u128);
    memory::Estimate::new().add("adapter", "r", bytes).check(memory::default_memory_limit())
}

/// A and B for one layer, and the factor applied to `B A`.
pub(crate) struct NewAdapter {
    pub(crate) a: Tensor,
    pub(crate) b: Tensor,
    pub(crate) scale: f64,
}

/// An adapter put on a layer: its module name and its two trainable matrices.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub(crate) module: String,
    pub(crate) a: Var,
    pub(crate) b: Var,
}

/// Puts an adapter on every layer for which `make(name, in, out)` returns one (None:
/// the layer stays as it is). A and B become `Var`s. On an error no layer keeps an
/// adapter. Returns the adapted layers in layer order.
pub(crate) fn attach(
    layers: &mut Layers<'_>,
    dropout: f32,
    mut make: impl FnMut(&str, usize, usize) -> Result<Option<NewAdapter>>,
) -> Result<Vec<Attached>> {
    let mut out = Vec::new();
    let mut result = Ok(());
    for (name, lin) in layers.iter_mut() {
        let step = (|| -> Result<()> {
            let (in_f, out_f) = lin.features()?;
            let Some(n) = make(name, in_f, out_f)? else { return Ok(()) };
            let (a, b) = (Var::from_tensor(&n.a)?, Var::from_tensor(&n.b)?);
            out.push(Attached { module: name.clone(), a: a.clone(), b: b.clone() });
            lin.lora = Some(LoraAdapter { a, b, scale: n.scale, dropout, merged: false });
            Ok(())
        })();
        if let Err(e) = step {
            result = Err(e);
            break;
        }
    }
    if let Err(e) = result {
        strip(layers);
        return Err(e);
    }
    Ok(out)
}

/// Takes every adapter off the layers (without unmerging: call [`unmerge`] first).
pub(crate) fn strip(layers: &mut Layers<'_>) {
    for (_, l) in layers.iter_mut() {
        l.lora = None;
    }
}

/// Folds every unmerged adapter into its layer's weight.
pub(crate) fn merge(layers: &mut Layers<'_>) -> Result<()> {
    for (_, l) in layers.iter_mut() {
        l.merge()?;
    }
    Ok(())
}

/// Subtracts every merged adapter from its layer's weight again.
pub(crate) fn unmerge(layers: &mut Layers<'_>) -> Result<()> {
    for (_, l) in layers.iter_mut() {
        l.unmerge()?;
    }
    Ok(())
}
