//! What a request will hold in memory at its peak, estimated from the configuration
//! alone, so that sizes are checked against the home's memory limit before anything is
//! allocated (a LoRA rank of 2^40 or a 2^40-position KV cache is refused with a typed
//! error instead of aborting the process).
//!
//! The estimates are deliberately simple upper-ish bounds (f32 training, every saved
//! activation counted, the attention matrix materialised), computed in `u128` so that no
//! size can overflow them. They guard against sizes that cannot work; they are not a
//! precise budget.

use crate::error::{Error, Result};

use super::config::ModelConfig;
use crate::diffusion::{DownBlockType, MidBlockType, UNetConfig, VaeConfig};

/// Bytes of an f32.
const F32: u128 = 4;

/// Default share of the machine's memory one request may plan to use.
const DEFAULT_SHARE: f64 = 0.8;

/// Used when the machine's memory cannot be read (not Linux).
const FALLBACK_MACHINE_BYTES: u64 = 16 << 30;

/// One part of an estimate: what it is, the setting that sizes it, its bytes.
#[derive(Debug, Clone)]
struct Part {
    what: &'static str,
    field: String,
    bytes: u128,
}

/// The parts of a request's peak memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct Estimate {
    parts: Vec<Part>,
}

impl Estimate {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` of `what`, sized by the setting `field`.
    pub(crate) fn add(mut self, what: &'static str, field: impl Into<String>, bytes: u128) -> Self {
        self.parts.push(Part { what, field: field.into(), bytes });
        self
    }

    pub(crate) fn total(&self) -> u128 {
        self.parts.iter().fold(0u128, |a, p| a.saturating_add(p.bytes))
    }

    /// Refuses with `invalid_config` when the total is above `limit`, naming the setting
    /// behind the largest part and every part's size.
    pub(crate) fn check(&self, limit: u64) -> Result<()> {
        let total = self.total();
        if total <= u128::from(limit) {
            return Ok(());
        }
        let largest = self.parts.iter().max_by_key(|p| p.bytes).map_or("memory_limit", |p| p.field.as_str());
        let parts: Vec<String> = self.parts.iter().map(|p| format!("{} {}", p.what, human(p.bytes))).collect();
        Err(Error::config(
            largest,
            format!(
                "needs about {} of memory ({}), above the memory limit of {} (HomeOptions.memory_limit)",
                human(total),
                parts.join(", "),
                human(u128::from(limit))
            ),
        ))
    }
}

/// `n` bytes for people: `512 B`, `3.2 MiB`, `1.0 GiB`, up to exbibytes and beyond.
pub(crate) fn human(n: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn u(n: usize) -> u128 {
    n as u128
}

/// Parameters of a model with this configuration (embeddings, layers, head).
pub(crate) fn param_count(cfg: &ModelConfig) -> u128 {
    let (h, i, l, v) = (u(cfg.hidden_size), u(cfg.intermediate_size), u(cfg.num_hidden_layers), u(cfg.vocab_size));
    let q = u(cfg.num_attention_heads).saturating_mul(u(cfg.head_dim));
    let kv = u(cfg.num_key_value_heads).saturating_mul(u(cfg.head_dim));
    let attn = h.saturating_mul(q.saturating_mul(2).saturating_add(kv.saturating_mul(2)));
    let mlp_mats: u128 = if cfg.family == crate::types::Family::Gpt2 { 2 } else { 3 };
    let mlp = h.saturating_mul(i).saturating_mul(mlp_mats);
    let layer = attn.saturating_add(mlp).saturating_add(h.saturating_mul(4));
    let embed = v.saturating_mul(h);
    let head = if cfg.tie_word_embeddings { 0 } else { embed };
    let positions =
        if cfg.family == crate::types::Family::Gpt2 { u(cfg.max_position_embeddings).saturating_mul(h) } else { 0 };
    layer.saturating_mul(l).saturating_add(embed).saturating_add(head).saturating_add(positions)
}

/// Activations one forward pass over `batch x t` positions keeps (for the backward pass
/// when training): per layer the hidden states around attention and the MLP, the
/// attention matrix, and the logits.
fn activations(cfg: &ModelConfig, batch: usize, t: usize, dtype_bytes: u128, logit_copies: u128) -> (u128, u128) {
    let bt = u(batch).saturating_mul(u(t));
    let per_layer = bt
        .saturating_mul(
            u(cfg.hidden_size).saturating_mul(14).saturating_add(u(cfg.intermediate_size).saturating_mul(4)),
        )
        .saturating_add(
            u(batch)
                .saturating_mul(u(cfg.num_attention_heads))
                .saturating_mul(u(t))
                .saturating_mul(u(t))
                .saturating_mul(3),
        )
        .saturating_mul(dtype_bytes);
    let layers = per_layer.saturating_mul(u(cfg.num_hidden_layers));
    let logits = bt.saturating_mul(u(cfg.vocab_size)).saturating_mul(F32).saturating_mul(logit_copies);
    (layers, logits)
}

/// A training run: f32 weights, the trainable parameters' gradients and AdamW moments
/// (`trainable`: all of them for a full fine-tune, the adapter's for LoRA), and one
/// batch's activations.
pub(crate) fn training(cfg: &ModelConfig, batch: usize, seq_len: usize, lora_params: Option<u128>) -> Estimate {
    let weights = param_count(cfg).saturating_mul(F32);
    let (layers, logits) = activations(cfg, batch, seq_len, F32, 3);
    let est = Estimate::new().add("weights", "base", weights);
    let est = match lora_params {
        // weights, gradients and two moments of the adapter
        Some(p) => est.add("adapter and optimiser state", "method.lora.r", p.saturating_mul(F32 * 4)),
        None => est.add("gradients and optimiser state", "base", weights.saturating_mul(3)),
    };
    est.add("activations", "batch_size", layers).add("logits", "batch_size", logits)
}

/// Parameters a LoRA adapter of rank `r` adds to linear layers of these
/// `(in_features, out_features)`.
pub(crate) fn lora_params(r: usize, layers: impl IntoIterator<Item = (usize, usize)>) -> u128 {
    layers.into_iter().fold(0u128, |acc, (i, o)| acc.saturating_add(u(r).saturating_mul(u(i).saturating_add(u(o)))))
}

/// A generation request beyond the loaded weights: the KV cache of `batch` rows of
/// `capacity` positions, and the prefill of `width` prompt positions.
pub(crate) fn decoding(cfg: &ModelConfig, dtype_bytes: u128, batch: usize, width: usize, capacity: usize) -> Estimate {
    let kv = u(cfg.num_key_value_heads).saturating_mul(u(cfg.head_dim));
    let cache = u(batch)
        .saturating_mul(u(capacity))
        .saturating_mul(kv)
        .saturating_mul(u(cfg.num_hidden_layers).saturating_mul(2))
        .saturating_mul(dtype_bytes);
    // Activations of one layer at a time during the prefill; logits of the last position.
    let (layers, _) = activations(cfg, batch, width, dtype_bytes, 0);
    let one_layer = layers / u(cfg.num_hidden_layers.max(1));
    let logits = u(batch).saturating_mul(u(cfg.vocab_size)).saturating_mul(F32);
    Estimate::new()
        .add("KV cache", "max_new_tokens", cache)
        .add("prompt activations", "prompt", one_layer)
        .add("logits", "prompt", logits)
}

/// Scoring one text of `t` tokens: one layer's activations and every position's logits.
pub(crate) fn scoring(cfg: &ModelConfig, dtype_bytes: u128, t: usize, field: &str) -> Estimate {
    let (layers, logits) = activations(cfg, 1, t, dtype_bytes, 3);
    let one_layer = layers / u(cfg.num_hidden_layers.max(1));
    Estimate::new().add("activations", field, one_layer).add("logits", field, logits)
}

/// Sampling `images` images of `height x width` pixels with a Stable Diffusion pipeline,
/// beyond its loaded weights: the UNet's pass over the latent batch (doubled by
/// classifier-free guidance) with its skip connections, its widest intermediate
/// tensors and the largest self-attention matrix (scores and probabilities, every head);
/// then (with a VAE) the VAE decoder's widest full-resolution tensors and its middle attention over
/// every latent pixel (one image at a time); plus the latents, the text embeddings and
/// the output pixels. Every part is sized by `field`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn diffusion_sampling(
    unet: &UNetConfig,
    vae: Option<&VaeConfig>,
    text: (usize, usize),
    images: usize,
    guidance: bool,
    (height, width): (usize, usize),
    dtype_bytes: u128,
    field: &str,
) -> Estimate {
    let f = vae.map_or(1, VaeConfig::downsample_factor).max(1);
    let (lh, lw) = (u(height / f), u(width / f));
    let rows = u(images).saturating_mul(if guidance { 2 } else { 1 });
    let (mut skips, mut widest, mut attention) = (0u128, 0u128, 0u128);
    let n = unet.block_out_channels.len();
    for i in 0..n {
        let scale = 1u128 << i.min(60);
        let tokens = (lh / scale).max(1).saturating_mul((lw / scale).max(1));
        let c = u(unet.block_out_channels[i]);
        let layers = u(unet.layers_per_block.get(i).copied().unwrap_or(1));
        skips = skips.saturating_add(layers.saturating_add(1).saturating_mul(c).saturating_mul(tokens));
        widest = widest.max(c.saturating_mul(tokens));
        let cross = unet.down_block_types.get(i) == Some(&DownBlockType::CrossAttnDownBlock2D)
            || (i + 1 == n && unet.mid_block_type == Some(MidBlockType::UNetMidBlock2DCrossAttn));
        if cross {
            let heads = u(unet.num_attention_heads.get(i).copied().unwrap_or(1));
            attention = attention.max(heads.saturating_mul(tokens).saturating_mul(tokens));
        }
    }
    let unet_bytes = skips
        .saturating_add(widest.saturating_mul(16))
        .saturating_add(attention.saturating_mul(2))
        .saturating_mul(rows)
        .saturating_mul(dtype_bytes);
    let (h, w) = (u(height), u(width));
    let lat_tokens = lh.saturating_mul(lw);
    let (mut vae_widest, mut vae_attention) = (0u128, 0u128);
    if let Some(vae) = vae {
        let m = vae.block_out_channels.len();
        for j in 0..m {
            let scale = 1u128 << j.min(60);
            let tokens = (h / scale).max(1).saturating_mul((w / scale).max(1));
            let c = vae.block_out_channels[j].max(vae.block_out_channels[(j + 1).min(m - 1)]);
            vae_widest = vae_widest.max(u(c).saturating_mul(tokens));
        }
        if vae.mid_block_add_attention {
            vae_attention = lat_tokens.saturating_mul(lat_tokens);
        }
    }
    let vae_bytes =
        vae_widest.saturating_mul(6).saturating_add(vae_attention.saturating_mul(2)).saturating_mul(dtype_bytes);
    let latents = rows.saturating_mul(u(unet.in_channels)).saturating_mul(lat_tokens).saturating_mul(F32 * 4);
    let embeds = rows.saturating_mul(u(text.0)).saturating_mul(u(text.1)).saturating_mul(F32 * 2);
    let pixels = u(images).saturating_mul(h).saturating_mul(w).saturating_mul(3 * (F32 + 1));
    Estimate::new()
        .add("UNet activations", field, unet_bytes)
        .add("VAE decoder activations", field, vae_bytes)
        .add("latents and text embeddings", field, latents.saturating_add(embeds))
        .add("output pixels", field, pixels)
}

/// Training a Stable Diffusion UNet on `batch` images of `res x res` pixels: the
/// pipeline's weights (`params`), gradients and AdamW moments of the `trainable` ones,
/// and the activations the backward pass keeps: every intermediate of the UNet's
/// forward, taken as four times what one sampling pass holds at once (doubled by
/// DreamBooth's prior preservation, `rows_per_image` 2).
pub(crate) fn diffusion_training(
    unet: &UNetConfig,
    vae: Option<&VaeConfig>,
    text: (usize, usize),
    (batch, rows_per_image): (usize, usize),
    res: usize,
    (params, trainable): (u128, u128),
) -> Estimate {
    let rows = batch.saturating_mul(rows_per_image);
    let pass = diffusion_sampling(unet, vae, text, rows, false, (res, res), F32, "batch_size").total();
    Estimate::new()
        .add("weights", "base", params.saturating_mul(F32))
        .add("gradients and AdamW state", "method", trainable.saturating_mul(F32 * 3))
        .add("activations", "batch_size", pass.saturating_mul(4))
}

/// The machine's memory in bytes: the cgroup's limit when one is set and lower, else
/// `MemTotal` of `/proc/meminfo` (16 GiB where neither can be read).
pub fn machine_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok()));
    match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => FALLBACK_MACHINE_BYTES,
    }
}

/// The memory limit when none is configured: 80% of [`machine_memory`].
pub fn default_memory_limit() -> u64 {
    (machine_memory() as f64 * DEFAULT_SHARE) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::presets;

    fn nano() -> ModelConfig {
        let p = presets::find("nano").unwrap();
        ModelConfig::from_json(&presets::config_json(p)).unwrap()
    }

    #[test]
    fn absurd_sizes_saturate_and_are_refused_naming_the_setting() {
        let cfg = nano();
        let lora = lora_params(1 << 40, [(64, 64); 8]);
        let e = training(&cfg, 1, 16, Some(lora)).check(8 << 30).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("method.lora.r"), "{e}");
        assert!(e.to_string().contains("TiB") || e.to_string().contains("PiB"), "{e}");
        let e = decoding(&cfg, 4, 1, 8, 1 << 40).check(8 << 30).unwrap_err();
        assert!(e.to_string().contains("max_new_tokens"), "{e}");
        assert!(training(&cfg, usize::MAX, usize::MAX, None).total() > u128::from(u64::MAX));
    }

    #[test]
    fn small_requests_fit_and_grow_with_their_sizes() {
        let cfg = nano();
        let small = training(&cfg, 2, 32, None);
        small.check(1 << 30).unwrap();
        assert!(training(&cfg, 4, 32, None).total() > small.total());
        assert!(training(&cfg, 2, 32, Some(lora_params(8, [(64, 64)]))).total() < small.total());
        assert!(param_count(&cfg) > 0);
        assert!(machine_memory() > 0 && default_memory_limit() < machine_memory());
    }

    #[test]
    fn diffusion_sampling_scales_with_size_and_batch() {
        // Stable Diffusion 1.5's UNet (the config defaults) and VAE.
        let unet = UNetConfig::from_json(&serde_json::json!({}), "unet").unwrap();
        let vae = VaeConfig::from_json(
            &serde_json::json!({
                "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
                "layers_per_block": 2
            }),
            "vae",
        )
        .unwrap();
        let est =
            |images, guidance, size| diffusion_sampling(&unet, Some(&vae), (77, 768), images, guidance, size, F32, "x");
        let one = est(1, true, (512, 512)).total();
        // Materialised attention at 64x64 latents (2 x 8 heads x 4096^2 floats, twice) and
        // the VAE's full-resolution tensors: a few GiB, not tens.
        assert!(one > 2 << 30 && one < 8 << 30, "{}", human(one));
        assert!(est(1, false, (512, 512)).total() < one);
        assert!(est(4, true, (512, 512)).total() > 2 * one, "{}", human(est(4, true, (512, 512)).total()));
        assert!(est(1, true, (768, 512)).total() > one);
        let huge = est(1, true, (10_240, 10_240));
        let e = huge.check(64 << 30).unwrap_err();
        assert!(e.to_string().contains("`x`") && e.to_string().contains("TiB"), "{e}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(u128::from(u64::MAX) * 4), "64.0 EiB");
    }
}
