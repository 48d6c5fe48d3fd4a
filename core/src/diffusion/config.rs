//! diffusers configuration files: `model_index.json`, `unet/config.json`
//! (UNet2DConditionModel) and `vae/config.json` (AutoencoderKL), resolved into
//! [`UNetConfig`] and [`VaeConfig`].
//!
//! As for the language models, unknown keys are accepted (every diffusers release adds
//! some) but a value that changes the computation and that anneal does not implement is
//! refused with [`Error::InvalidConfig`] whose field names the file and the key
//! (`unet/config.json:class_embed_type`); a value of the wrong type is refused the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::load::{read_json, CONFIG_FILE};
use crate::error::{Error, Location, Result};

/// `<component dir name>/config.json`: how errors name a component's config file.
pub(crate) fn config_label(dir: &Path) -> String {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some(name) => format!("{name}/{CONFIG_FILE}"),
        None => CONFIG_FILE.to_string(),
    }
}

fn parse<T: DeserializeOwned>(v: &Value, label: &str) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        Error::config(format!("{label}:{path}"), e.into_inner().to_string())
    })
}

/// An int or a list (one value per block).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// One value per block, `n` blocks.
    fn per_block(&self, n: usize, label: &str, field: &str) -> Result<Vec<T>> {
        match self {
            OneOrMany::One(x) => Ok(vec![x.clone(); n]),
            OneOrMany::Many(v) if v.len() == n => Ok(v.clone()),
            OneOrMany::Many(v) => Err(Error::config(
                format!("{label}:{field}"),
                format!("has {} entries but there are {n} blocks (down_block_types)", v.len()),
            )),
        }
    }
}

/// `sample_size`: an int or `[height, width]`.
fn sample_size(v: &Option<OneOrMany<usize>>, label: &str) -> Result<Option<[usize; 2]>> {
    Ok(match v {
        None => None,
        Some(OneOrMany::One(s)) => Some([*s, *s]),
        Some(OneOrMany::Many(v)) if v.len() == 2 => Some([v[0], v[1]]),
        Some(OneOrMany::Many(_)) => {
            return Err(Error::config(format!("{label}:sample_size"), "must be an int or [height, width]"))
        }
    })
}

/// Refuses a key whose value is set (not null, false, zero or the diffusers default).
fn refuse_set(label: &str, field: &str, v: &Option<Value>, what: &str) -> Result<()> {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(v) => Err(Error::config(format!("{label}:{field}"), format!("{v} is not supported ({what})"))),
    }
}

fn positive(label: &str, field: &str, x: usize) -> Result<usize> {
    if x == 0 {
        Err(Error::config(format!("{label}:{field}"), "must be > 0"))
    } else {
        Ok(x)
    }
}

fn check_act(label: &str, act: &str) -> Result<()> {
    match act {
        "silu" | "swish" => Ok(()),
        other => Err(Error::config(format!("{label}:act_fn"), format!("`{other}` is not supported (supported: silu)"))),
    }
}

// ---------------------------------------------------------------- UNet

/// A down block of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownBlockType {
    /// `CrossAttnDownBlock2D`: resnets, each followed by a transformer.
    CrossAttnDownBlock2D,
    /// `DownBlock2D`: resnets only.
    DownBlock2D,
}

/// An up block of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpBlockType {
    /// `CrossAttnUpBlock2D`: resnets (on the skip connections), each followed by a transformer.
    CrossAttnUpBlock2D,
    /// `UpBlock2D`: resnets only.
    UpBlock2D,
}

/// The UNet's middle block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MidBlockType {
    /// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
    UNetMidBlock2DCrossAttn,
    /// `UNetMidBlock2D` as the UNet builds it: one resnet, no attention.
    UNetMidBlock2D,
}

/// A resolved `unet/config.json` (diffusers' UNet2DConditionModel, as SD 1.x and 2.x use it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Latent height and width the model was trained at (`sample_size`).
    pub sample_size: Option<[usize; 2]>,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (an up block has one more).
    pub layers_per_block: Vec<usize>,
    /// Transformer blocks per transformer, per down block (the up blocks use it reversed).
    pub transformer_layers_per_block: Vec<usize>,
    /// Attention heads per down block. diffusers' config calls this `attention_head_dim`
    /// (a naming slip it keeps for compatibility): SD 1.x has 8 heads everywhere, SD 2.x
    /// `[5, 10, 20, 20]` (64-wide heads).
    pub num_attention_heads: Vec<usize>,
    /// Width of `encoder_hidden_states`, per down block.
    pub cross_attention_dim: Vec<usize>,
    pub downsample_padding: usize,
    /// Divides the middle block's resnet outputs.
    pub mid_block_scale_factor: f64,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    /// proj_in / proj_out of the transformers are linear layers (SD 2.x), else 1x1 convs.
    pub use_linear_projection: bool,
    /// Width of the time embedding MLP's output (`time_embedding_dim`, default
    /// 4 * block_out_channels[0]).
    pub time_embed_dim: usize,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn silu() -> String {
    "silu".into()
}
fn eps5() -> f64 {
    1e-5
}
fn groups32() -> Option<usize> {
    Some(32)
}
fn default_down() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn default_up() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_boc() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn default_one_many() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn default_heads() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn default_cross() -> OneOrMany<usize> {
    OneOrMany::One(1280)
}
fn default_false_many() -> OneOrMany<bool> {
    OneOrMany::One(false)
}
fn default_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}

/// unet/config.json as written. Booleans are `Option` because some published configs
/// write `null` for them.
#[derive(Debug, Deserialize)]
struct UNetWire {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default)]
    sample_size: Option<OneOrMany<usize>>,
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    #[serde(default)]
    center_input_sample: Option<bool>,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "default_down")]
    down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    up_block_types: Vec<String>,
    #[serde(default = "default_false_many")]
    only_cross_attention: OneOrMany<bool>,
    #[serde(default = "default_boc")]
    block_out_channels: Vec<usize>,
    #[serde(default = "default_layers")]
    layers_per_block: OneOrMany<usize>,
    #[serde(default = "one")]
    downsample_padding: usize,
    #[serde(default = "one_f")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    dropout: f64,
    #[serde(default = "silu")]
    act_fn: String,
    #[serde(default = "groups32")]
    norm_num_groups: Option<usize>,
    #[serde(default = "eps5")]
    norm_eps: f64,
    #[serde(default = "default_cross")]
    cross_attention_dim: OneOrMany<usize>,
    #[serde(default = "default_one_many")]
    transformer_layers_per_block: OneOrMany<usize>,
    #[serde(default)]
    reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    encoder_hid_dim: Option<Value>,
    #[serde(default)]
    encoder_hid_dim_type: Option<Value>,
    #[serde(default = "default_heads")]
    attention_head_dim: OneOrMany<usize>,
    #[serde(default)]
    num_attention_heads: Option<Value>,
    #[serde(default)]
    dual_cross_attention: Option<Value>,
    #[serde(default)]
    use_linear_projection: Option<bool>,
    #[serde(default)]
    class_embed_type: Option<Value>,
    #[serde(default)]
    addition_embed_type: Option<Value>,
    #[serde(default)]
    num_class_embeds: Option<Value>,
    #[serde(default = "default_shift")]
    resnet_time_scale_shift: String,
    #[serde(default)]
    resnet_skip_time_act: Option<Value>,
    #[serde(default = "positional")]
    time_embedding_type: String,
    #[serde(default)]
    time_embedding_dim: Option<usize>,
    #[serde(default)]
    time_embedding_act_fn: Option<Value>,
    #[serde(default)]
    timestep_post_act: Option<Value>,
    #[serde(default)]
    time_cond_proj_dim: Option<Value>,
    #[serde(default = "three")]
    conv_in_kernel: usize,
    #[serde(default = "three")]
    conv_out_kernel: usize,
    #[serde(default)]
    projection_class_embeddings_input_dim: Option<Value>,
    #[serde(default)]
    attention_type: Option<String>,
    #[serde(default)]
    class_embeddings_concat: Option<Value>,
    #[serde(default)]
    mid_block_only_cross_attention: Option<Value>,
    #[serde(default)]
    cross_attention_norm: Option<Value>,
}

impl UNetConfig {
    /// Resolves a parsed unet/config.json; `label` names the file in errors.
    pub fn from_json(v: &Value, label: &str) -> Result<Self> {
        let w: UNetWire = parse(v, label)?;
        let f = |field: &str| format!("{label}:{field}");
        if let Some(c) = &w.class_name {
            if c != "UNet2DConditionModel" {
                return Err(Error::config(f("_class_name"), format!("`{c}` is not a UNet2DConditionModel")));
            }
        }
        let n = w.block_out_channels.len();
        if n == 0 {
            return Err(Error::config(f("block_out_channels"), "must not be empty"));
        }
        for (i, &c) in w.block_out_channels.iter().enumerate() {
            positive(label, &format!("block_out_channels[{i}]"), c)?;
        }
        if w.down_block_types.len() != n || w.up_block_types.len() != n {
            return Err(Error::config(
                f("down_block_types"),
                format!(
                    "{} down and {} up blocks for {n} block_out_channels; all three must have the same length",
                    w.down_block_types.len(),
                    w.up_block_types.len()
                ),
            ));
        }
        let down_block_types = w
            .down_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                other => Err(Error::config(
                    f(&format!("down_block_types[{i}]")),
                    format!("`{other}` is not supported (supported: CrossAttnDownBlock2D, DownBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_block_types = w
            .up_block_types
            .iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                other => Err(Error::config(
                    f(&format!("up_block_types[{i}]")),
                    format!("`{other}` is not supported (supported: CrossAttnUpBlock2D, UpBlock2D)"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block_type = match w.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => Some(MidBlockType::UNetMidBlock2DCrossAttn),
            Some("UNetMidBlock2D") => Some(MidBlockType::UNetMidBlock2D),
            Some(other) => {
                return Err(Error::config(
                    f("mid_block_type"),
                    format!("`{other}` is not supported (supported: UNetMidBlock2DCrossAttn, UNetMidBlock2D, null)"),
                ))
            }
        };
        if w.only_cross_attention.per_block(n, label, "only_cross_attention")?.into_iter().any(|x| x) {
            return Err(Error::config(f("only_cross_attention"), "true is not supported"));
        }
        refuse_set(label, "mid_block_only_cross_attention", &w.mid_block_only_cross_attention, "only false")?;
        if w.dropout != 0.0 {
            return Err(Error::config(f("dropout"), "dropout inside the UNet is not supported (only 0.0)"));
        }
        check_act(label, &w.act_fn)?;
        let norm_num_groups = match w.norm_num_groups {
            Some(g) => positive(label, "norm_num_groups", g)?,
            None => return Err(Error::config(f("norm_num_groups"), "null (no output norm) is not supported")),
        };
        refuse_set(
            label,
            "reverse_transformer_layers_per_block",
            &w.reverse_transformer_layers_per_block,
            "only null",
        )?;
        refuse_set(label, "encoder_hid_dim", &w.encoder_hid_dim, "only null")?;
        refuse_set(label, "encoder_hid_dim_type", &w.encoder_hid_dim_type, "only null")?;
        refuse_set(
            label,
            "num_attention_heads",
            &w.num_attention_heads,
            "diffusers itself refuses it; the head count is `attention_head_dim`",
        )?;
        refuse_set(label, "dual_cross_attention", &w.dual_cross_attention, "only false")?;
        refuse_set(label, "class_embed_type", &w.class_embed_type, "class conditioning is not implemented")?;
        refuse_set(label, "num_class_embeds", &w.num_class_embeds, "class conditioning is not implemented")?;
        refuse_set(
            label,
            "addition_embed_type",
            &w.addition_embed_type,
            "SDXL-style added embeddings are not implemented",
        )?;
        refuse_set(label, "resnet_skip_time_act", &w.resnet_skip_time_act, "only false")?;
        refuse_set(label, "time_embedding_act_fn", &w.time_embedding_act_fn, "only null")?;
        refuse_set(label, "timestep_post_act", &w.timestep_post_act, "only null")?;
        refuse_set(label, "time_cond_proj_dim", &w.time_cond_proj_dim, "only null")?;
        refuse_set(
            label,
            "projection_class_embeddings_input_dim",
            &w.projection_class_embeddings_input_dim,
            "only null",
        )?;
        refuse_set(label, "class_embeddings_concat", &w.class_embeddings_concat, "only false")?;
        refuse_set(label, "cross_attention_norm", &w.cross_attention_norm, "only null")?;
        if w.resnet_time_scale_shift != "default" {
            return Err(Error::config(
                f("resnet_time_scale_shift"),
                format!("`{}` is not supported (only `default`)", w.resnet_time_scale_shift),
            ));
        }
        if w.time_embedding_type != "positional" {
            return Err(Error::config(
                f("time_embedding_type"),
                format!("`{}` is not supported (only `positional`)", w.time_embedding_type),
            ));
        }
        if let Some(t) = w.attention_type.as_deref().filter(|t| *t != "default") {
            return Err(Error::config(f("attention_type"), format!("`{t}` is not supported (only `default`)")));
        }
        for (field, k) in [("conv_in_kernel", w.conv_in_kernel), ("conv_out_kernel", w.conv_out_kernel)] {
            if k.is_multiple_of(2) {
                return Err(Error::config(f(field), format!("{k}: only odd kernel sizes keep the size")));
            }
        }
        if w.norm_eps <= 0.0 || !w.norm_eps.is_finite() {
            return Err(Error::config(f("norm_eps"), "must be a positive number"));
        }
        // (`resnet_out_scale_factor` only acts in block types anneal refuses.)
        if w.mid_block_scale_factor == 0.0 || !w.mid_block_scale_factor.is_finite() {
            return Err(Error::config(f("mid_block_scale_factor"), "must be a non-zero number"));
        }
        let layers_per_block = w.layers_per_block.per_block(n, label, "layers_per_block")?;
        let transformer_layers_per_block =
            w.transformer_layers_per_block.per_block(n, label, "transformer_layers_per_block")?;
        let num_attention_heads = w.attention_head_dim.per_block(n, label, "attention_head_dim")?;
        let cross_attention_dim = w.cross_attention_dim.per_block(n, label, "cross_attention_dim")?;
        for i in 0..n {
            positive(label, &format!("layers_per_block[{i}]"), layers_per_block[i])?;
            positive(label, &format!("transformer_layers_per_block[{i}]"), transformer_layers_per_block[i])?;
            positive(label, &format!("cross_attention_dim[{i}]"), cross_attention_dim[i])?;
            let heads = positive(label, &format!("attention_head_dim[{i}]"), num_attention_heads[i])?;
            if !w.block_out_channels[i].is_multiple_of(heads) {
                return Err(Error::config(
                    f(&format!("attention_head_dim[{i}]")),
                    format!("{heads} heads do not divide block_out_channels[{i}] = {}", w.block_out_channels[i]),
                ));
            }
        }
        let time_embed_dim =
            positive(label, "time_embedding_dim", w.time_embedding_dim.unwrap_or(w.block_out_channels[0] * 4))?;
        Ok(UNetConfig {
            in_channels: positive(label, "in_channels", w.in_channels)?,
            out_channels: positive(label, "out_channels", w.out_channels)?,
            sample_size: sample_size(&w.sample_size, label)?,
            center_input_sample: w.center_input_sample.unwrap_or(false),
            flip_sin_to_cos: w.flip_sin_to_cos,
            freq_shift: w.freq_shift,
            down_block_types,
            mid_block_type,
            up_block_types,
            block_out_channels: w.block_out_channels,
            layers_per_block,
            transformer_layers_per_block,
            num_attention_heads,
            cross_attention_dim,
            downsample_padding: w.downsample_padding,
            mid_block_scale_factor: w.mid_block_scale_factor,
            norm_num_groups,
            norm_eps: w.norm_eps,
            use_linear_projection: w.use_linear_projection.unwrap_or(false),
            time_embed_dim,
            conv_in_kernel: w.conv_in_kernel,
            conv_out_kernel: w.conv_out_kernel,
        })
    }

    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        Self::from_json(&read_json(&dir.join(CONFIG_FILE))?, &config_label(dir))
    }

    /// How much the UNet shrinks its input (2 per downsampling block): latent sizes must
    /// be multiples of it.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

// ---------------------------------------------------------------- VAE

/// A resolved `vae/config.json` (diffusers' AutoencoderKL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: Option<[usize; 2]>,
    /// Latents for the UNet are `(z - shift_factor) * scaling_factor`.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics (some VAEs); the pipeline applies them, not the model.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

fn scaling() -> f64 {
    0.18215
}
fn three_ch() -> usize {
    3
}
fn default_enc() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_dec() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_vae_boc() -> Vec<usize> {
    vec![64]
}

#[derive(Debug, Deserialize)]
struct VaeWire {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default = "three_ch")]
    in_channels: usize,
    #[serde(default = "three_ch")]
    out_channels: usize,
    #[serde(default = "default_enc")]
    down_block_types: Vec<String>,
    #[serde(default = "default_dec")]
    up_block_types: Vec<String>,
    #[serde(default = "default_vae_boc")]
    block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "silu")]
    act_fn: String,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "groups32")]
    norm_num_groups: Option<usize>,
    #[serde(default)]
    sample_size: Option<OneOrMany<usize>>,
    #[serde(default = "scaling")]
    scaling_factor: f64,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default)]
    latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    latents_std: Option<Vec<f64>>,
    #[serde(default)]
    use_quant_conv: Option<bool>,
    #[serde(default)]
    use_post_quant_conv: Option<bool>,
    #[serde(default)]
    mid_block_add_attention: Option<bool>,
}

impl VaeConfig {
    /// Resolves a parsed vae/config.json; `label` names the file in errors.
    pub fn from_json(v: &Value, label: &str) -> Result<Self> {
        let w: VaeWire = parse(v, label)?;
        let f = |field: &str| format!("{label}:{field}");
        if let Some(c) = &w.class_name {
            if c != "AutoencoderKL" {
                return Err(Error::config(f("_class_name"), format!("`{c}` is not an AutoencoderKL")));
            }
        }
        let n = w.block_out_channels.len();
        if n == 0 {
            return Err(Error::config(f("block_out_channels"), "must not be empty"));
        }
        for (i, &c) in w.block_out_channels.iter().enumerate() {
            positive(label, &format!("block_out_channels[{i}]"), c)?;
        }
        for (field, types, want) in [
            ("down_block_types", &w.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &w.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(Error::config(f(field), format!("has {} entries for {n} block_out_channels", types.len())));
            }
            if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| *t != want) {
                return Err(Error::config(
                    f(&format!("{field}[{i}]")),
                    format!("`{t}` is not supported (only {want})"),
                ));
            }
        }
        check_act(label, &w.act_fn)?;
        let norm_num_groups = match w.norm_num_groups {
            Some(g) => positive(label, "norm_num_groups", g)?,
            None => return Err(Error::config(f("norm_num_groups"), "must be set")),
        };
        if w.scaling_factor == 0.0 || !w.scaling_factor.is_finite() {
            return Err(Error::config(f("scaling_factor"), "must be a non-zero number"));
        }
        let latent_channels = positive(label, "latent_channels", w.latent_channels)?;
        for (field, stats) in [("latents_mean", &w.latents_mean), ("latents_std", &w.latents_std)] {
            if stats.as_ref().is_some_and(|s| s.len() != latent_channels) {
                return Err(Error::config(f(field), format!("must have latent_channels = {latent_channels} entries")));
            }
        }
        Ok(VaeConfig {
            in_channels: positive(label, "in_channels", w.in_channels)?,
            out_channels: positive(label, "out_channels", w.out_channels)?,
            block_out_channels: w.block_out_channels,
            layers_per_block: positive(label, "layers_per_block", w.layers_per_block)?,
            latent_channels,
            norm_num_groups,
            sample_size: sample_size(&w.sample_size, label)?,
            scaling_factor: w.scaling_factor,
            shift_factor: w.shift_factor,
            latents_mean: w.latents_mean,
            latents_std: w.latents_std,
            use_quant_conv: w.use_quant_conv.unwrap_or(true),
            use_post_quant_conv: w.use_post_quant_conv.unwrap_or(true),
            mid_block_add_attention: w.mid_block_add_attention.unwrap_or(true),
        })
    }

    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        Self::from_json(&read_json(&dir.join(CONFIG_FILE))?, &config_label(dir))
    }

    /// Image pixels per latent pixel along each side (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

// ---------------------------------------------------------------- model_index.json

/// The pipeline file at the root of a diffusers directory.
pub const MODEL_INDEX_FILE: &str = "model_index.json";

/// Pipeline classes anneal runs.
pub const SUPPORTED_PIPELINES: &[&str] = &["StableDiffusionPipeline"];

/// Components a Stable Diffusion directory must have: (name, library, accepted classes).
const REQUIRED: &[(&str, &str, &[&str])] = &[
    ("unet", "diffusers", &["UNet2DConditionModel"]),
    ("text_encoder", "transformers", &["CLIPTextModel"]),
    ("tokenizer", "transformers", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    ("scheduler", "diffusers", &[]),
];

/// The optional VAE: absent or `[null, null]` makes a pixel-space pipeline.
const VAE: (&str, &str, &[&str]) = ("vae", "diffusers", &["AutoencoderKL"]);

/// Channels of a pixel-space pipeline's UNet (RGB).
pub const PIXEL_CHANNELS: usize = 3;

/// A parsed `model_index.json`: the pipeline class and its components' (library, class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIndex {
    pub class_name: String,
    /// Component name -> (library, class). Components set to `[null, null]` (no safety
    /// checker, no feature extractor, no VAE) are left out.
    pub components: BTreeMap<String, (String, String)>,
}

impl ModelIndex {
    /// Reads and checks `dir/model_index.json`: a supported pipeline class, the
    /// components of Stable Diffusion with the classes anneal implements (the VAE may be
    /// absent or `[null, null]`: a pixel-space pipeline), and a directory for each.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MODEL_INDEX_FILE);
        let v = read_json(&path)?;
        let idx = Self::from_json(&v, &path)?;
        let vae = idx.has_vae().then_some(&VAE);
        for (name, _, _) in REQUIRED.iter().chain(vae) {
            let sub = dir.join(name);
            if !sub.is_dir() {
                return Err(Error::data(
                    Location::file(&path).field(*name),
                    format!("component directory {} does not exist", sub.display()),
                ));
            }
        }
        Ok(idx)
    }

    /// Checks a parsed model_index.json (`path` names it in errors).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let at = |field: &str| Location::file(path).field(field);
        let obj = v.as_object().ok_or_else(|| Error::data(Location::file(path), "must be a JSON object"))?;
        let class_name = obj
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::data(at("_class_name"), "missing: not a diffusers pipeline directory"))?
            .to_string();
        if !SUPPORTED_PIPELINES.contains(&class_name.as_str()) {
            return Err(Error::config(
                format!("{MODEL_INDEX_FILE}:_class_name"),
                format!("pipeline `{class_name}` is not supported (supported: {})", SUPPORTED_PIPELINES.join(", ")),
            ));
        }
        let mut components = BTreeMap::new();
        for (key, value) in obj {
            if key.starts_with('_') {
                continue;
            }
            let Some(pair) = value.as_array() else { continue }; // plain settings (requires_safety_checker)
            match pair.as_slice() {
                [Value::Null, Value::Null] => {}
                [Value::String(lib), Value::String(class)] => {
                    components.insert(key.clone(), (lib.clone(), class.clone()));
                }
                _ => return Err(Error::data(at(key), "must be [library, class] or [null, null]")),
            }
        }
        let vae = components.contains_key(VAE.0).then_some(&VAE);
        for (name, lib, classes) in REQUIRED.iter().chain(vae) {
            let Some((l, c)) = components.get(*name) else {
                return Err(Error::data(at(name), "missing: Stable Diffusion needs this component"));
            };
            let class_ok = if classes.is_empty() { c.ends_with("Scheduler") } else { classes.contains(&c.as_str()) };
            if l != lib || !class_ok {
                let want = if classes.is_empty() { "a scheduler".to_string() } else { classes.join(" or ") };
                return Err(Error::config(
                    format!("{MODEL_INDEX_FILE}:{name}"),
                    format!("[{l}, {c}] is not supported (expected {lib} {want})"),
                ));
            }
        }
        Ok(ModelIndex { class_name, components })
    }

    /// False for a pixel-space pipeline (`"vae"` absent or `[null, null]`): the UNet
    /// denoises the RGB pixels themselves.
    pub fn has_vae(&self) -> bool {
        self.components.contains_key(VAE.0)
    }

    /// The scheduler class the pipeline was saved with (`DDPMScheduler`, `PNDMScheduler`, ...).
    pub fn scheduler_class(&self) -> &str {
        self.components.get("scheduler").map(|(_, c)| c.as_str()).unwrap_or_default()
    }
}

/// The configs of a Stable Diffusion directory, checked against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub dir: PathBuf,
    pub index: ModelIndex,
    pub unet: UNetConfig,
    /// None for a pixel-space pipeline: the UNet works on the RGB pixels (scaled to
    /// `[-1, 1]`, [`PIXEL_CHANNELS`] channels) and nothing decodes them.
    pub vae: Option<VaeConfig>,
    /// `hidden_size` of text_encoder/config.json: the width of the UNet's conditioning.
    pub text_hidden_size: usize,
}

impl PipelineConfig {
    /// Reads model_index.json and the UNet, VAE and text encoder configs of `dir`, and
    /// checks that they fit together: the UNet works on the VAE's latent channels (on
    /// [`PIXEL_CHANNELS`] without a VAE) and attends to the text encoder's hidden states.
    pub fn read(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index = ModelIndex::read(dir)?;
        let unet = UNetConfig::read(&dir.join("unet"))?;
        let vae = if index.has_vae() { Some(VaeConfig::read(&dir.join("vae"))?) } else { None };
        let te = dir.join("text_encoder").join(CONFIG_FILE);
        let te_json = read_json(&te)?;
        let text_hidden_size = te_json
            .get("hidden_size")
            .or_else(|| te_json.get("text_config").and_then(|t| t.get("hidden_size")))
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::data(Location::file(&te).field("hidden_size"), "missing or not an integer"))?
            as usize;
        let cfg = PipelineConfig { dir: dir.to_path_buf(), index, unet, vae, text_hidden_size };
        cfg.check_unet(&cfg.unet)?;
        Ok(cfg)
    }

    /// Checks that a UNet with config `unet` fits this pipeline: it takes and predicts
    /// [`PipelineConfig::latent_channels`] channels and attends to the text encoder's
    /// hidden states. Errors name `unet/config.json:<key>`.
    pub fn check_unet(&self, unet: &UNetConfig) -> Result<()> {
        let want = self.latent_channels();
        for (field, c) in [("in_channels", unet.in_channels), ("out_channels", unet.out_channels)] {
            if c != want {
                let what = match &self.vae {
                    Some(_) => format!("the VAE's latent_channels {want}"),
                    None => format!("the {want} RGB channels of a pixel-space pipeline (no VAE)"),
                };
                return Err(Error::config(format!("unet/config.json:{field}"), format!("{c} does not match {what}")));
            }
        }
        self.check_cross_attention(unet, self.text_hidden_size)
    }

    /// Checks that `unet` attends to states `hidden` wide (the text encoder's hidden_size).
    pub fn check_cross_attention(&self, unet: &UNetConfig, hidden: usize) -> Result<()> {
        if let Some((i, &d)) = unet.cross_attention_dim.iter().enumerate().find(|(_, &d)| d != hidden) {
            return Err(Error::config(
                format!("unet/config.json:cross_attention_dim[{i}]"),
                format!("{d} does not match the text encoder's hidden_size {hidden}"),
            ));
        }
        Ok(())
    }

    /// Channels of what the UNet denoises: the VAE's `latent_channels`, or
    /// [`PIXEL_CHANNELS`] in pixel space.
    pub fn latent_channels(&self) -> usize {
        self.vae.as_ref().map_or(PIXEL_CHANNELS, |v| v.latent_channels)
    }

    /// True when the pipeline has no VAE and denoises RGB pixels directly.
    pub fn is_pixel_space(&self) -> bool {
        self.vae.is_none()
    }

    /// Image pixels per latent pixel (the VAE's factor, 8 for SD; 1 in pixel space).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.as_ref().map_or(1, VaeConfig::downsample_factor)
    }
}
