//! LoRA on the diffusion UNet, in the files diffusers reads: attach (PEFT
//! initialisation), train, merge / unmerge, remove, save and load.
//!
//! **Saved** as diffusers' `StableDiffusionLoraLoaderMixin.save_lora_weights` writes an
//! adapter with its config (diffusers 0.42, peft 0.21): one
//! `pytorch_lora_weights.safetensors` with keys `unet.<module>.lora_A.weight` (`[r, in]`)
//! and `unet.<module>.lora_B.weight` (`[out, r]`; `[.., 1, 1]` on the 1x1 convolutions
//! proj_in / proj_out of SD 1.x), and the adapter's config in the header
//! (`__metadata__.lora_adapter_metadata`: JSON with `unet.r`, `unet.lora_alpha`,
//! `unet.target_modules`, ...), which `pipe.load_lora_weights(dir)` turns into the
//! PEFT `LoraConfig` (without it diffusers would take alpha = r, scale 1).
//!
//! **Loaded** from those files and from the other layouts in circulation:
//! - diffusers' training scripts (`train_text_to_image_lora.py`,
//!   `train_dreambooth_lora.py`): `unet.<module>.lora.down.weight` / `lora.up.weight`
//!   (`convert_state_dict_to_diffusers`), no metadata: scale 1;
//! - diffusers < 0.21 attention processors: `[unet.]<block>.attn1.processor.to_q_lora.down.weight`,
//!   `to_out_lora.up.weight`: scale 1;
//! - kohya-ss sd-scripts (A1111, ComfyUI): `lora_unet_<module with _>.lora_down.weight`,
//!   `.lora_up.weight` and `.alpha` (scale `alpha / r` per module; `alpha = r` when absent).
//!
//! With metadata the scale follows PEFT: `lora_alpha / r`, with `rank_pattern` and
//! `alpha_pattern` per module, `alpha / sqrt(r)` with `use_rslora`.
//!
//! **The text encoder** (CLIP) takes LoRA too, as diffusers' `train_dreambooth_lora.py
//! --train_text_encoder` trains it: keys `text_encoder.<module>.lora_A.weight` (modules
//! `text_model.encoder.layers.<i>.self_attn.{q,k,v,out}_proj` by default, `mlp.fc1/fc2`
//! when targeted), its config under `text_encoder.` in the metadata, kohya's `lora_te_` /
//! `lora_te1_` keys. [`StableDiffusionPipeline::load_lora_file`](super::StableDiffusionPipeline::load_lora_file)
//! attaches every part of a file and one scale applies to both (diffusers'
//! `cross_attention_kwargs["scale"]` is passed to `encode_prompt` as `lora_scale`);
//! [`save_lora_weights`] writes both parts in one file. SDXL's second text encoder
//! (`text_encoder_2.`, `lora_te2_`) is refused: the pipelines here have one. DoRA,
//! LoHa / LoKr, LoRA biases and convolution LoRA beyond 1x1 (LoCon) are refused naming
//! the key; so is every key that does not fit the model.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::clip::ClipTextModel;
use super::unet::UNet2DConditionModel;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::linear::Linear;
use crate::models::lora::layers::{self, NewAdapter, PeftInit};
use crate::types::LoraConfig;

/// The file `save_lora_weights` writes and `load_lora_weights(dir)` looks for.
pub const LORA_WEIGHTS_FILE: &str = "pytorch_lora_weights.safetensors";
/// The targets of diffusers' `train_text_to_image_lora.py` / `train_dreambooth_lora.py`,
/// used when [`LoraConfig::target_modules`] is empty.
pub const DEFAULT_UNET_TARGETS: [&str; 4] = ["to_k", "to_q", "to_v", "to_out.0"];
/// The text encoder's targets in `train_dreambooth_lora.py --train_text_encoder`.
pub const DEFAULT_TEXT_ENCODER_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];
/// The header entry holding the adapter config (diffusers' `LORA_ADAPTER_METADATA_KEY`).
pub const METADATA_KEY: &str = "lora_adapter_metadata";

/// The key layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraLayout {
    /// `unet.<module>.lora_A.weight` / `lora_B.weight` (what anneal writes).
    Peft,
    /// `unet.<module>.lora.down.weight` / `lora.up.weight` (diffusers' training scripts).
    Diffusers,
    /// `unet.<block>.processor.to_q_lora.down.weight` (diffusers < 0.21).
    DiffusersOld,
    /// `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` (kohya-ss).
    Kohya,
}

/// The pipeline model an adapted module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraComponent {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder (`text_encoder_2.`, `lora_te2_`).
    TextEncoder2,
}

impl LoraComponent {
    /// The prefix of its keys and metadata in diffusers' files.
    pub fn prefix(self) -> &'static str {
        match self {
            LoraComponent::Unet => "unet",
            LoraComponent::TextEncoder => "text_encoder",
            LoraComponent::TextEncoder2 => "text_encoder_2",
        }
    }

    /// How errors name it.
    pub fn describe(self) -> &'static str {
        match self {
            LoraComponent::Unet => "UNet",
            LoraComponent::TextEncoder => "text encoder",
            LoraComponent::TextEncoder2 => "second text encoder (SDXL)",
        }
    }
}

/// One adapted module of a LoRA file.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub component: LoraComponent,
    /// diffusers' module name (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`);
    /// in the kohya layout the name with `_` for `.` (`down_blocks_0_..._attn1_to_q`),
    /// resolved against the model's modules when applied.
    pub name: String,
    /// A (`down`), as stored: `[r, in]`, or `[r, in, k, k]` for a convolution.
    pub down: Tensor,
    /// B (`up`), as stored: `[out, r]`, or `[out, r, 1, 1]`.
    pub up: Tensor,
    /// kohya's per-module alpha.
    pub alpha: Option<f64>,
    /// The key `down` was stored under (errors name it).
    pub down_key: String,
    pub up_key: String,
}

impl LoraModule {
    /// The rank: `down`'s first dimension.
    pub fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(0)
    }
}

/// The UNet's part of `lora_adapter_metadata`: what PEFT's `LoraConfig` would get.
#[derive(Debug, Clone, PartialEq)]
struct AdapterMeta {
    r: usize,
    alpha: f64,
    dropout: f64,
    use_rslora: bool,
    rank_pattern: Vec<(String, usize)>,
    alpha_pattern: Vec<(String, f64)>,
}

/// A LoRA file, read and checked for its own consistency (pairs, ranks, dtypes); fitting
/// it to a model happens in [`UNet2DConditionModel::load_lora_file`].
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub path: PathBuf,
    pub layout: LoraLayout,
    /// In key order.
    pub modules: Vec<LoraModule>,
    /// Each component's part of `lora_adapter_metadata`.
    metas: BTreeMap<LoraComponent, AdapterMeta>,
}

/// The weights file of `path`: the file itself, or in a directory
/// `pytorch_lora_weights.safetensors`, else its only `.safetensors` file (as diffusers
/// guesses the weight name).
fn weights_path(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(Error::not_found("LoRA file", path.display().to_string()));
        }
        return Ok(path.to_path_buf());
    }
    let p = path.join(LORA_WEIGHTS_FILE);
    if p.is_file() {
        return Ok(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_path(path)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::data(
            Location::file(&p),
            "no LoRA weights: expected pytorch_lora_weights.safetensors (only safetensors files are read)",
        )),
        _ => Err(Error::data(
            Location::file(&p),
            format!("missing, and the directory holds {} other .safetensors files: name one", found.len()),
        )),
    }
}

/// A tensor of the file on the CPU (floating point only).
fn to_tensor(path: &Path, key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        other => {
            return Err(Error::data(
                Location::file(path).field(key),
                format!("LoRA weights must be floating point, found {other:?}"),
            ))
        }
    };
    Ok(Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?)
}

/// A scalar of any numeric dtype (kohya's `.alpha` is f16, f32, or an integer).
fn to_scalar(path: &Path, key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<f64> {
    let bad = |reason: String| Error::data(Location::file(path).field(key), reason);
    if view.shape().iter().product::<usize>() != 1 {
        return Err(bad(format!("alpha must be a single number, found shape {:?}", view.shape())));
    }
    let d = view.data();
    let int = |n: usize| -> Result<i64> {
        let b = d.get(..n).ok_or_else(|| bad("alpha holds too few bytes".into()))?;
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(b);
        // Sign-extend from n bytes.
        let shift = 64 - 8 * n as u32;
        Ok((i64::from_le_bytes(buf) << shift) >> shift)
    };
    let v = match view.dtype() {
        safetensors::Dtype::I64 => int(8)? as f64,
        safetensors::Dtype::I32 => int(4)? as f64,
        safetensors::Dtype::I16 => int(2)? as f64,
        safetensors::Dtype::U8 => d.first().copied().map(f64::from).ok_or_else(|| bad("alpha is empty".into()))?,
        _ => to_tensor(path, key, view)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(bad(format!("alpha must be a positive number, found {v}")));
    }
    Ok(v)
}

/// What a key of the file is.
enum KeyKind {
    Down,
    Up,
    Alpha,
}

/// Splits a key into (component, module name, kind, layout), or says why it is refused.
fn parse_key(key: &str) -> std::result::Result<(LoraComponent, String, KeyKind, LoraLayout), String> {
    const KOHYA: [(&str, LoraComponent); 4] = [
        ("lora_unet_", LoraComponent::Unet),
        ("lora_te1_", LoraComponent::TextEncoder),
        ("lora_te2_", LoraComponent::TextEncoder2),
        ("lora_te_", LoraComponent::TextEncoder),
    ];
    for (prefix, component) in KOHYA {
        if let Some(rest) = key.strip_prefix(prefix) {
            let (name, suffix) = rest.split_once('.').ok_or("a kohya key without a `.` suffix")?;
            let kind = match suffix {
                "lora_down.weight" => KeyKind::Down,
                "lora_up.weight" => KeyKind::Up,
                "alpha" => KeyKind::Alpha,
                "dora_scale" => return Err("DoRA adapters are not supported".into()),
                s if s.starts_with("hada_") || s.starts_with("lokr_") => {
                    return Err("LyCORIS LoHa / LoKr adapters are not supported (only LoRA)".into())
                }
                s => return Err(format!("unknown kohya LoRA tensor `.{s}`")),
            };
            return Ok((component, name.to_string(), kind, LoraLayout::Kohya));
        }
    }
    let (component, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (LoraComponent::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (LoraComponent::TextEncoder2, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (LoraComponent::TextEncoder, r)
    } else {
        // `unet.save_attn_procs` wrote the UNet's keys without a prefix.
        (LoraComponent::Unet, key)
    };
    for (suffix, kind, layout) in [
        (".lora_A.weight", KeyKind::Down, LoraLayout::Peft),
        (".lora_B.weight", KeyKind::Up, LoraLayout::Peft),
        (".lora.down.weight", KeyKind::Down, LoraLayout::Diffusers),
        (".lora.up.weight", KeyKind::Up, LoraLayout::Diffusers),
        (".lora_linear_layer.down.weight", KeyKind::Down, LoraLayout::Diffusers),
        (".lora_linear_layer.up.weight", KeyKind::Up, LoraLayout::Diffusers),
    ] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Ok((component, module.to_string(), kind, layout));
        }
    }
    // diffusers < 0.21: `<block>.attn1.processor.to_q_lora.down.weight`.
    for (proj, module) in [("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")] {
        for (which, kind) in [("down", KeyKind::Down), ("up", KeyKind::Up)] {
            let suffix = format!("{proj}_lora.{which}.weight");
            if let Some(block) = rest.strip_suffix(&suffix) {
                let block = block.strip_suffix('.').ok_or("not a LoRA tensor")?;
                let block = block.strip_suffix(".processor").unwrap_or(block);
                return Ok((component, format!("{block}.{module}"), kind, LoraLayout::DiffusersOld));
            }
        }
    }
    if rest.contains("lora_magnitude_vector") {
        return Err("DoRA adapters are not supported".into());
    }
    if rest.ends_with(".lora_B.bias") {
        return Err("LoRA bias terms (lora_bias) are not supported".into());
    }
    if rest.contains("lokr_") || rest.contains("hada_") {
        return Err("LoHa / LoKr adapters are not supported (only LoRA)".into());
    }
    Err("not a LoRA tensor (expected lora_A/lora_B, lora.down/lora.up, to_q_lora.down or kohya's lora_down/lora_up/alpha)".into())
}

/// Reads `component`'s part of `lora_adapter_metadata` (None when absent).
fn read_meta(
    path: &Path,
    header: Option<&HashMap<String, String>>,
    component: LoraComponent,
) -> Result<Option<AdapterMeta>> {
    let Some(raw) = header.and_then(|m| m.get(METADATA_KEY)) else {
        return Ok(None);
    };
    let prefix = format!("{}.", component.prefix());
    let field = |f: &str| format!("__metadata__.{METADATA_KEY}.{prefix}{f}");
    let bad = |f: &str, reason: String| Error::data(Location::file(path).field(field(f)), reason);
    let v: Value = serde_json::from_str(raw).map_err(|e| {
        Error::data(Location::file(path).field(format!("__metadata__.{METADATA_KEY}")), format!("not valid JSON: {e}"))
    })?;
    let obj = v.as_object().ok_or_else(|| {
        Error::data(Location::file(path).field(format!("__metadata__.{METADATA_KEY}")), "not a JSON object")
    })?;
    let own: BTreeMap<&str, &Value> =
        obj.iter().filter_map(|(k, v)| k.strip_prefix(prefix.as_str()).map(|k| (k, v))).collect();
    if own.is_empty() {
        return Ok(None);
    }
    let get = |f: &str| own.get(f).copied().filter(|v| !v.is_null());
    let flag = |f: &str| -> Result<bool> {
        match get(f) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| bad(f, format!("expected true or false, found {v}"))),
        }
    };
    let positive = |f: &str, v: &Value| -> Result<f64> {
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| bad(f, format!("expected a positive number, found {v}")))
    };
    let rank = |f: &str, v: &Value| -> Result<usize> {
        v.as_u64()
            .filter(|&x| x > 0)
            .map(|x| x as usize)
            .ok_or_else(|| bad(f, format!("expected a positive integer, found {v}")))
    };
    if flag("use_dora")? {
        return Err(bad("use_dora", "DoRA adapters are not supported".into()));
    }
    if flag("lora_bias")? {
        return Err(bad("lora_bias", "LoRA bias terms are not supported".into()));
    }
    if let Some(t) = get("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(bad("peft_type", format!("unsupported adapter type `{t}` (only LORA)")));
        }
    }
    // PEFT's LoraConfig defaults.
    let r = get("r").map(|v| rank("r", v)).transpose()?.unwrap_or(8);
    let alpha = get("lora_alpha").map(|v| positive("lora_alpha", v)).transpose()?.unwrap_or(8.0);
    let dropout = match get("lora_dropout") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .filter(|d| (0.0..1.0).contains(d))
            .ok_or_else(|| bad("lora_dropout", format!("expected a number in [0, 1), found {v}")))?,
    };
    let pattern = |f: &str| -> Result<Vec<(String, Value)>> {
        match get(f) {
            None => Ok(Vec::new()),
            Some(Value::Object(m)) => {
                for k in m.keys() {
                    regex::Regex::new(k).map_err(|e| bad(f, format!("`{k}` is not a valid pattern: {e}")))?;
                }
                Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Some(v) => Err(bad(f, format!("expected an object, found {v}"))),
        }
    };
    let rank_pattern =
        pattern("rank_pattern")?.into_iter().map(|(k, v)| Ok((k, rank("rank_pattern", &v)?))).collect::<Result<_>>()?;
    let alpha_pattern = pattern("alpha_pattern")?
        .into_iter()
        .map(|(k, v)| Ok((k, positive("alpha_pattern", &v)?)))
        .collect::<Result<_>>()?;
    Ok(Some(AdapterMeta { r, alpha, dropout, use_rslora: flag("use_rslora")?, rank_pattern, alpha_pattern }))
}

/// PEFT's `get_pattern_key`: the first pattern key that matches the end of `module` at a
/// `.` boundary (`re.match(rf"(.*\.)?({key})$", module)`).
fn pattern_value<T: Copy>(pattern: &[(String, T)], module: &str) -> Option<T> {
    pattern.iter().find_map(|(k, v)| {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).ok()?;
        re.is_match(module).then_some(*v)
    })
}

impl LoraFile {
    /// Reads a LoRA file, or the weights file of a directory (see [`LORA_WEIGHTS_FILE`]).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = weights_path(path.as_ref())?;
        let bytes = std::fs::read(&path).with_path(&path)?;
        let invalid = |e: safetensors::SafeTensorError| {
            Error::data(Location::file(&path), format!("not a valid safetensors file: {e}"))
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
        let mut metas = BTreeMap::new();
        for c in [LoraComponent::Unet, LoraComponent::TextEncoder, LoraComponent::TextEncoder2] {
            if let Some(m) = read_meta(&path, header.metadata().as_ref(), c)? {
                metas.insert(c, m);
            }
        }

        #[derive(Default)]
        struct Parts {
            down: Option<(String, Tensor)>,
            up: Option<(String, Tensor)>,
            alpha: Option<(String, f64)>,
        }
        let mut parts: BTreeMap<(LoraComponent, String), Parts> = BTreeMap::new();
        let mut layouts: BTreeMap<String, LoraLayout> = BTreeMap::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        if names.is_empty() {
            return Err(Error::data(Location::file(&path), "the file holds no tensors"));
        }
        for key in &names {
            let at = || Location::file(&path).field(key);
            let (component, module, kind, layout) = parse_key(key).map_err(|reason| Error::data(at(), reason))?;
            layouts.entry(key.clone()).or_insert(layout);
            let view = st.tensor(key).map_err(|e| Error::data(at(), e.to_string()))?;
            let entry = parts.entry((component, module)).or_default();
            let (slot_key, taken) = match kind {
                KeyKind::Down => {
                    let t = to_tensor(&path, key, &view)?;
                    (entry.down.as_ref().map(|(k, _)| k.clone()), entry.down.replace((key.clone(), t)).is_some())
                }
                KeyKind::Up => {
                    let t = to_tensor(&path, key, &view)?;
                    (entry.up.as_ref().map(|(k, _)| k.clone()), entry.up.replace((key.clone(), t)).is_some())
                }
                KeyKind::Alpha => {
                    let a = to_scalar(&path, key, &view)?;
                    (entry.alpha.as_ref().map(|(k, _)| k.clone()), entry.alpha.replace((key.clone(), a)).is_some())
                }
            };
            if taken {
                return Err(Error::data(
                    at(),
                    format!("the same module's tensor also appears as `{}`", slot_key.unwrap_or_default()),
                ));
            }
        }
        let kohya = layouts.values().any(|l| *l == LoraLayout::Kohya);
        if let Some((k, _)) = layouts.iter().find(|(_, l)| (**l == LoraLayout::Kohya) != kohya) {
            return Err(Error::data(
                Location::file(&path).field(k),
                "the file mixes kohya keys (lora_unet_...) with diffusers keys",
            ));
        }
        // The layout of the first UNet key (of any key when there is none).
        let layout = names
            .iter()
            .find(|k| parse_key(k).is_ok_and(|(c, ..)| c == LoraComponent::Unet))
            .or(names.first())
            .and_then(|k| layouts.get(k).copied())
            .unwrap_or(LoraLayout::Peft);

        let mut modules = Vec::with_capacity(parts.len());
        for ((component, name), p) in parts {
            let any_key = p
                .down
                .as_ref()
                .map(|x| x.0.clone())
                .or_else(|| p.up.as_ref().map(|x| x.0.clone()))
                .or_else(|| p.alpha.as_ref().map(|x| x.0.clone()))
                .unwrap_or_default();
            let at = |k: &str| Location::file(&path).field(k);
            let (Some((down_key, down)), Some((up_key, up))) = (p.down, p.up) else {
                return Err(Error::data(at(&any_key), "LoRA module without its pair (down/A and up/B both needed)"));
            };
            let (dd, ud) = (down.dims().to_vec(), up.dims().to_vec());
            let ok_rank = |d: &[usize]| d.len() == 2 || d.len() == 4;
            if !ok_rank(&dd) || dd[0] == 0 {
                return Err(Error::data(
                    at(&down_key),
                    format!("expected [r, in] (or 4-D for a convolution), found {dd:?}"),
                ));
            }
            if !ok_rank(&ud) || ud.len() != dd.len() || ud[1] != dd[0] || (ud.len() == 4 && ud[2..] != [1, 1]) {
                return Err(Error::data(
                    at(&up_key),
                    format!(
                        "expected [out, {}]{}, found {ud:?} (down is {dd:?})",
                        dd[0],
                        if dd.len() == 4 { " x 1 x 1" } else { "" }
                    ),
                ));
            }
            if !kohya {
                if let Some((k, _)) = &p.alpha {
                    return Err(Error::data(at(k), "an alpha tensor outside the kohya layout"));
                }
            }
            modules.push(LoraModule { component, name, down, up, alpha: p.alpha.map(|(_, a)| a), down_key, up_key });
        }
        Ok(Self { path, layout, modules, metas })
    }

    /// Whether the file adapts a text encoder too.
    pub fn has_text_encoder(&self) -> bool {
        self.modules.iter().any(|m| m.component != LoraComponent::Unet)
    }

    /// Drops the text encoders' modules, keeping the UNet's.
    pub fn drop_text_encoder(&mut self) {
        self.keep_only(LoraComponent::Unet);
    }

    /// Keeps `component`'s modules alone.
    pub fn keep_only(&mut self, component: LoraComponent) {
        self.modules.retain(|m| m.component == component);
    }

    /// The components the file adapts, in pipeline order.
    pub fn components(&self) -> Vec<LoraComponent> {
        let mut c: Vec<LoraComponent> = self.modules.iter().map(|m| m.component).collect();
        c.sort();
        c.dedup();
        c
    }

    /// The scale `B A` is multiplied by for module `m` of rank `r`, as diffusers computes
    /// it from this file (before the user's adapter scale). The metadata's patterns are
    /// matched against each of `names` (the module's name in the file, then its aliases)
    /// until one matches. Errors name the module's key.
    fn module_scale(&self, m: &LoraModule, names: &[String], r: usize) -> Result<(f64, f64)> {
        if let Some(alpha) = m.alpha {
            return Ok((alpha, alpha / r as f64));
        }
        let Some(meta) = self.metas.get(&m.component) else {
            // diffusers: no alphas, no config -> lora_alpha = r.
            return Ok((r as f64, 1.0));
        };
        fn find<T: Copy>(pattern: &[(String, T)], names: &[String]) -> Option<T> {
            names.iter().find_map(|n| pattern_value(pattern, n))
        }
        let want_r = find(&meta.rank_pattern, names).unwrap_or(meta.r);
        if want_r != r {
            return Err(Error::data(
                Location::file(&self.path).field(&m.down_key),
                format!("rank {r}, but {METADATA_KEY} says r = {want_r} for `{}`", m.name),
            ));
        }
        let alpha = find(&meta.alpha_pattern, names).unwrap_or(meta.alpha);
        let scale = if meta.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        Ok((alpha, scale))
    }
}

/// One adapted layer of a component.
#[derive(Debug, Clone)]
pub(crate) struct AdaptedModule {
    pub(crate) name: String,
    pub(crate) a: Var,
    pub(crate) b: Var,
    /// PEFT's `lora_alpha` for this module (scale = alpha / r, or / sqrt(r) with rsLoRA).
    alpha: f64,
    /// `B A`'s factor at adapter scale 1.
    base_scale: f64,
}

/// The adapter attached to one component of a pipeline (the UNet or the text encoder).
#[derive(Debug, Clone)]
pub(crate) struct ComponentLora {
    component: LoraComponent,
    config: LoraConfig,
    pub(crate) modules: Vec<AdaptedModule>,
    /// The user's multiplier on every module's scale (diffusers' `cross_attention_kwargs["scale"]`,
    /// `lora_scale` of `encode_prompt`).
    scale: f64,
    merged: bool,
}

/// The key of module `name`'s A (`'A'`) or B in the saved file.
fn file_key(component: LoraComponent, name: &str, which: char) -> String {
    format!("{}.{name}.lora_{which}.weight", component.prefix())
}

impl ComponentLora {
    /// A and B of every module under their keys in the saved file.
    pub(crate) fn named_vars(&self) -> Vec<(String, Var)> {
        let c = self.component;
        self.modules
            .iter()
            .flat_map(|m| [(file_key(c, &m.name, 'A'), m.a.clone()), (file_key(c, &m.name, 'B'), m.b.clone())])
            .collect()
    }

    pub(crate) fn config(&self) -> &LoraConfig {
        &self.config
    }

    pub(crate) fn module_names(&self) -> Vec<String> {
        self.modules.iter().map(|m| m.name.clone()).collect()
    }

    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    pub(crate) fn is_merged(&self) -> bool {
        self.merged
    }
}

/// A model of a pipeline that LoRA attaches to: the UNet or the CLIP text encoder.
pub(crate) trait LoraHost {
    /// Its part of a LoRA file.
    const COMPONENT: LoraComponent;
    /// `target_modules` when the config names none.
    const DEFAULT_TARGETS: &'static [&'static str];
    fn lora(&self) -> Option<&ComponentLora>;
    fn lora_slot(&mut self) -> &mut Option<ComponentLora>;
    /// Every linear layer under its module name.
    fn lora_linears(&mut self) -> Vec<(String, &mut Linear)>;
    fn lora_dtype(&self) -> DType;
    fn lora_device(&self) -> Device;
    /// Whether the base weights are trainable (LoRA needs them frozen).
    fn weights_trainable(&self) -> bool;
    /// Whether module `name` is a 1x1 convolution held as a linear layer (SD 1.x's
    /// proj_in / proj_out): its LoRA is stored 4-D.
    fn is_conv_1x1(&self, _name: &str) -> bool {
        false
    }
    /// Modules LoRA cannot adapt (convolutions), by name and by kohya's `_` spelling, to
    /// say why a key does not fit.
    fn other_modules(&mut self) -> Result<HashMap<String, String>> {
        Ok(HashMap::new())
    }
    /// Other names files give module `name` (besides kohya's `_` spelling).
    fn aliases(_name: &str) -> Vec<String> {
        Vec::new()
    }
    /// The `rank_pattern` / `alpha_pattern` key that names module `name` alone.
    fn pattern_key(name: &str) -> String {
        format!("^{name}")
    }
    /// Module `name` in the metadata's `target_modules`.
    fn target_name(name: &str) -> &str {
        name
    }
}

/// A number as Python's json writes an int or a float that PEFT keeps as an int.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// The most common value (ties: the smallest).
fn most_common<T: Copy + PartialOrd>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal)));
    counts.first().map(|(v, _)| *v)
}

fn no_adapter<H: LoraHost>() -> Error {
    Error::config("adapter", format!("the {} has no LoRA adapter", H::COMPONENT.describe()))
}

fn check_can_attach<H: LoraHost>(h: &H) -> Result<()> {
    let what = H::COMPONENT.describe();
    if h.lora().is_some() {
        return Err(Error::config("adapter", format!("the {what} already has a LoRA adapter; remove it first")));
    }
    if h.weights_trainable() {
        return Err(Error::config(
            "trainable",
            format!("LoRA needs frozen base weights: load the {what} with trainable = false"),
        ));
    }
    Ok(())
}

/// The last one or two parts of each linear layer's name (`to_q`, `to_out.0`, `q_proj`),
/// for an error that lists what could be targeted.
fn short_names(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut available: Vec<String> = names
        .map(|n| {
            let parts: Vec<&str> = n.rsplitn(2, '.').collect();
            match parts.as_slice() {
                [last, rest] if last.parse::<usize>().is_ok() => {
                    format!("{}.{last}", rest.rsplit('.').next().unwrap_or(rest))
                }
                [last, ..] => last.to_string(),
                [] => n.clone(),
            }
        })
        .collect();
    available.sort();
    available.dedup();
    available
}

/// Attaches a new adapter to the linear layers of `h` that `cfg.target_modules` names
/// (PEFT's suffix rule; empty: `H::DEFAULT_TARGETS`; `all-linear`: every linear layer),
/// initialised as PEFT does (A kaiming-uniform from `seed`, B = 0).
pub(crate) fn add<H: LoraHost>(h: &mut H, cfg: &LoraConfig, seed: u64) -> Result<()> {
    cfg.validate()?;
    if cfg.fan_in_fan_out == Some(true) {
        return Err(Error::config(
            "fan_in_fan_out",
            format!("must be false for the {} (its weights are [out, in])", H::COMPONENT.describe()),
        ));
    }
    check_can_attach(h)?;
    let targets: Vec<String> = if cfg.target_modules.is_empty() {
        H::DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        cfg.target_modules.clone()
    };
    let hit = |name: &str| LoraConfig::matches(&targets, name);
    let (dtype, device) = (h.lora_dtype(), h.lora_device());
    let planned = h.lora_linears().into_iter().filter(|(n, _)| hit(n)).map(|(_, l)| l.features());
    let planned = planned.collect::<Result<Vec<_>>>()?;
    if planned.is_empty() {
        let available = short_names(h.lora_linears().into_iter().map(|(n, _)| n));
        return Err(Error::config(
            "target_modules",
            format!(
                "no linear layer of the {} matches {targets:?} (linear layers: {})",
                H::COMPONENT.describe(),
                available.join(", ")
            ),
        ));
    }
    layers::check_memory(cfg.r, planned, dtype)?;
    let mut init = PeftInit::new(seed, dtype, &device);
    let (r, scale) = (cfg.r, cfg.scale());
    let mut linears = h.lora_linears();
    let attached = layers::attach(&mut linears, cfg.dropout as f32, |name, in_f, out_f| {
        if !hit(name) {
            return Ok(None);
        }
        let (a, b) = init.make(in_f, out_f, r)?;
        Ok(Some(NewAdapter { a, b, scale }))
    })?;
    drop(linears);
    let modules = attached
        .into_iter()
        .map(|m| AdaptedModule { name: m.module, a: m.a, b: m.b, alpha: cfg.alpha, base_scale: scale })
        .collect();
    let config = LoraConfig { target_modules: targets, fan_in_fan_out: Some(false), ..cfg.clone() };
    *h.lora_slot() = Some(ComponentLora { component: H::COMPONENT, config, modules, scale: 1.0, merged: false });
    Ok(())
}

/// Attaches `H`'s part of `file` (its other components' modules are left to their own
/// models). Every module must be a linear layer (or 1x1 convolution) of `h` with
/// matching shapes; otherwise nothing is attached and the error names the file and key.
pub(crate) fn load<H: LoraHost>(h: &mut H, file: &LoraFile) -> Result<()> {
    check_can_attach(h)?;
    let what = H::COMPONENT.describe();
    let at = |key: &str| Location::file(&file.path).field(key);
    let own: Vec<&LoraModule> = file.modules.iter().filter(|m| m.component == H::COMPONENT).collect();
    if own.is_empty() {
        return Err(Error::data(Location::file(&file.path), format!("the file holds no LoRA module for the {what}")));
    }
    let (dtype, device) = (h.lora_dtype(), h.lora_device());
    // The modules by name (and kohya's `_` spelling), and the ones LoRA cannot adapt, to
    // say why a LoCon key cannot be used.
    let mut linear_names: HashMap<String, String> = HashMap::new();
    let mut features: HashMap<String, (usize, usize)> = HashMap::new();
    for (name, lin) in h.lora_linears() {
        features.insert(name.clone(), lin.features()?);
        linear_names.insert(name.replace('.', "_"), name.clone());
        for alias in H::aliases(&name) {
            linear_names.insert(alias, name.clone());
        }
        linear_names.insert(name.clone(), name);
    }
    let convs = h.other_modules()?;
    struct Planned {
        a: Tensor,
        b: Tensor,
        alpha: f64,
        scale: f64,
    }
    let mut planned: HashMap<String, Planned> = HashMap::new();
    let mut ranks = Vec::new();
    for m in own {
        let Some(name) = linear_names.get(&m.name).cloned() else {
            let reason = match convs.get(&m.name) {
                Some(c) => format!("LoRA on the convolution `{c}` (LoCon) is not supported; only linear layers"),
                None => format!("no module `{}` in this {what}: a LoRA for another model or architecture?", m.name),
            };
            return Err(Error::data(at(&m.down_key), reason));
        };
        let (in_f, out_f) = features[&name];
        let r = m.rank();
        let fits = |d: &[usize], want: [usize; 2]| d == want || d == [want[0], want[1], 1, 1];
        if !fits(m.down.dims(), [r, in_f]) {
            return Err(Error::data(
                at(&m.down_key),
                format!("shape {:?} does not fit `{name}` ({in_f} inputs): expected [{r}, {in_f}]", m.down.dims()),
            ));
        }
        if !fits(m.up.dims(), [out_f, r]) {
            return Err(Error::data(
                at(&m.up_key),
                format!("shape {:?} does not fit `{name}` ({out_f} outputs): expected [{out_f}, {r}]", m.up.dims()),
            ));
        }
        // Patterns match the module's name as the file's writer knew it.
        let names: Vec<String> = std::iter::once(m.name.clone()).chain(H::aliases(&m.name)).collect();
        let (alpha, scale) = file.module_scale(m, &names, r)?;
        let a = m.down.reshape((r, in_f))?.to_dtype(dtype)?.to_device(&device)?;
        let b = m.up.reshape((out_f, r))?.to_dtype(dtype)?.to_device(&device)?;
        if planned.insert(name.clone(), Planned { a, b, alpha, scale }).is_some() {
            return Err(Error::data(at(&m.down_key), format!("module `{name}` appears twice")));
        }
        ranks.push((r, alpha));
    }
    let meta = file.metas.get(&H::COMPONENT);
    let dropout = meta.map_or(0.0, |m| m.dropout);
    let mut linears = h.lora_linears();
    let attached = layers::attach(&mut linears, dropout as f32, |name, _, _| {
        Ok(planned.get(name).map(|p| NewAdapter { a: p.a.clone(), b: p.b.clone(), scale: p.scale }))
    })?;
    drop(linears);
    let modules: Vec<AdaptedModule> = attached
        .into_iter()
        .map(|m| {
            let p = &planned[&m.module];
            AdaptedModule { name: m.module, a: m.a, b: m.b, alpha: p.alpha, base_scale: p.scale }
        })
        .collect();
    let r = meta.map(|m| m.r).or_else(|| most_common(ranks.iter().map(|x| x.0))).unwrap_or(1);
    let alpha = meta.map(|m| m.alpha).or_else(|| most_common(ranks.iter().map(|x| x.1))).unwrap_or(r as f64);
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        target_modules: modules.iter().map(|m| m.name.clone()).collect(),
        fan_in_fan_out: Some(false),
        use_rslora: meta.is_some_and(|m| m.use_rslora),
    };
    *h.lora_slot() = Some(ComponentLora { component: H::COMPONENT, config, modules, scale: 1.0, merged: false });
    Ok(())
}

/// Adds `h`'s adapter (at scale 1) to `tensors` and its config to `meta`, under its
/// component's prefix, as diffusers' `save_lora_weights` writes them.
fn save_part<H: LoraHost>(
    h: &H,
    tensors: &mut HashMap<String, Tensor>,
    meta: &mut BTreeMap<String, Value>,
) -> Result<()> {
    let lora = h.lora().ok_or_else(no_adapter::<H>)?;
    let c = H::COMPONENT;
    for m in &lora.modules {
        let (mut a, mut b) = (m.a.as_tensor().detach(), m.b.as_tensor().detach());
        if h.is_conv_1x1(&m.name) {
            let ((r, i), (o, _)) = (a.dims2()?, b.dims2()?);
            a = a.reshape((r, i, 1, 1))?;
            b = b.reshape((o, r, 1, 1))?;
        }
        tensors.insert(file_key(c, &m.name, 'A'), a.contiguous()?);
        tensors.insert(file_key(c, &m.name, 'B'), b.contiguous()?);
    }
    let cfg = &lora.config;
    // rank_pattern / alpha_pattern (keys `^<module>`, as diffusers writes them) for the
    // modules whose rank or alpha differs from the config's.
    let mut rank_pattern = BTreeMap::new();
    let mut alpha_pattern = BTreeMap::new();
    for m in &lora.modules {
        let r = m.a.dims().first().copied().unwrap_or(0);
        if r != cfg.r {
            rank_pattern.insert(H::pattern_key(&m.name), Value::from(r));
        }
        if m.alpha != cfg.alpha {
            alpha_pattern.insert(H::pattern_key(&m.name), num(m.alpha));
        }
    }
    let mut targets: Vec<String> = lora.modules.iter().map(|m| H::target_name(&m.name).to_string()).collect();
    targets.sort();
    let mut put = |k: &str, v: Value| meta.insert(format!("{}.{k}", c.prefix()), v);
    put("alpha_pattern", serde_json::to_value(alpha_pattern).map_err(|e| Error::Internal(e.to_string()))?);
    put("bias", Value::from("none"));
    put("init_lora_weights", Value::from(true));
    put("lora_alpha", num(cfg.alpha));
    put("lora_dropout", Value::from(cfg.dropout));
    put("r", Value::from(cfg.r));
    put("rank_pattern", serde_json::to_value(rank_pattern).map_err(|e| Error::Internal(e.to_string()))?);
    put("target_modules", Value::from(targets));
    put("use_rslora", Value::from(cfg.use_rslora));
    Ok(())
}

/// Writes the adapters of `unet` and `text_encoder` (either may be None, not both) as
/// `dir/pytorch_lora_weights.safetensors` (created; replaced atomically), in the layout
/// `pipe.load_lora_weights(dir)` reads with the scales diffusers needs (see the module
/// docs). Scale multipliers ([`set_scale`]) are not saved. Returns the file's path.
pub fn save_lora_weights(
    dir: impl AsRef<Path>,
    unet: Option<&UNet2DConditionModel>,
    text_encoder: Option<&ClipTextModel>,
) -> Result<PathBuf> {
    let dir = dir.as_ref();
    let mut tensors = HashMap::new();
    let mut meta: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(u) = unet {
        save_part(u, &mut tensors, &mut meta)?;
    }
    if let Some(te) = text_encoder {
        save_part(te, &mut tensors, &mut meta)?;
    }
    if tensors.is_empty() {
        return Err(Error::config(
            "adapter",
            "no LoRA adapter to save (neither the UNet nor the text encoder has one)",
        ));
    }
    let json = serde_json::to_string_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
    let header = HashMap::from([("format".to_string(), "pt".to_string()), (METADATA_KEY.to_string(), json)]);
    std::fs::create_dir_all(dir).with_path(dir)?;
    let p = dir.join(LORA_WEIGHTS_FILE);
    crate::models::write_safetensors_with_metadata(&tensors, Some(header), &p)?;
    Ok(p)
}

/// Multiplies every module's scale by `scale` (1: the adapter as trained, 0: the base).
/// Refused while merged.
pub(crate) fn set_scale<H: LoraHost>(h: &mut H, scale: f64) -> Result<()> {
    if !scale.is_finite() {
        return Err(Error::config("scale", format!("must be a finite number, got {scale}")));
    }
    let lora = h.lora_slot().as_mut().ok_or_else(no_adapter::<H>)?;
    if lora.merged {
        return Err(Error::config("adapter", "the adapter is merged: unmerge it before changing its scale"));
    }
    lora.scale = scale;
    let scales: HashMap<String, f64> = lora.modules.iter().map(|m| (m.name.clone(), m.base_scale * scale)).collect();
    for (name, lin) in h.lora_linears() {
        if let (Some(l), Some(s)) = (lin.lora.as_mut(), scales.get(&name)) {
            l.scale = *s;
        }
    }
    Ok(())
}

/// Folds the adapter (at its current scale) into the base weights.
pub(crate) fn merge<H: LoraHost>(h: &mut H) -> Result<()> {
    if h.lora().is_none() {
        return Err(no_adapter::<H>());
    }
    layers::merge(&mut h.lora_linears())?;
    if let Some(l) = h.lora_slot().as_mut() {
        l.merged = true;
    }
    Ok(())
}

/// Subtracts a merged adapter from the base weights again.
pub(crate) fn unmerge<H: LoraHost>(h: &mut H) -> Result<()> {
    layers::unmerge(&mut h.lora_linears())?;
    if let Some(l) = h.lora_slot().as_mut() {
        l.merged = false;
    }
    Ok(())
}

/// Detaches the adapter (unmerging it first).
pub(crate) fn remove<H: LoraHost>(h: &mut H) -> Result<()> {
    unmerge(h)?;
    layers::strip(&mut h.lora_linears());
    *h.lora_slot() = None;
    Ok(())
}

/// The accessors both hosts implement the same way (a `lora` field, `linears_mut`,
/// `dtype`, `device`).
macro_rules! host_accessors {
    () => {
        fn lora(&self) -> Option<&ComponentLora> {
            self.lora.as_ref()
        }

        fn lora_slot(&mut self) -> &mut Option<ComponentLora> {
            &mut self.lora
        }

        fn lora_linears(&mut self) -> Vec<(String, &mut Linear)> {
            self.linears_mut()
        }

        fn lora_dtype(&self) -> DType {
            self.dtype()
        }

        fn lora_device(&self) -> Device {
            self.device().clone()
        }
    };
}

impl LoraHost for UNet2DConditionModel {
    const COMPONENT: LoraComponent = LoraComponent::Unet;
    const DEFAULT_TARGETS: &'static [&'static str] = &DEFAULT_UNET_TARGETS;

    host_accessors!();

    fn weights_trainable(&self) -> bool {
        self.weights_are_trainable()
    }

    fn is_conv_1x1(&self, name: &str) -> bool {
        !self.config().use_linear_projection && (name.ends_with(".proj_in") || name.ends_with(".proj_out"))
    }

    fn other_modules(&mut self) -> Result<HashMap<String, String>> {
        let linears: std::collections::HashSet<String> = self.linears_mut().into_iter().map(|(n, _)| n).collect();
        let mut convs = HashMap::new();
        for (w, t) in self.named_weights()? {
            if let (Some(module), 4) = (w.strip_suffix(".weight"), t.rank()) {
                if !linears.contains(module) {
                    convs.insert(module.replace('.', "_"), module.to_string());
                    convs.insert(module.to_string(), module.to_string());
                }
            }
        }
        Ok(convs)
    }
}

impl LoraHost for ClipTextModel {
    const COMPONENT: LoraComponent = LoraComponent::TextEncoder;
    const DEFAULT_TARGETS: &'static [&'static str] = &DEFAULT_TEXT_ENCODER_TARGETS;

    host_accessors!();

    fn weights_trainable(&self) -> bool {
        !self.named_base_vars().is_empty()
    }

    /// transformers 5 names the modules without `text_model.` (diffusers strips it).
    fn aliases(name: &str) -> Vec<String> {
        name.strip_prefix(TEXT_MODEL).map(str::to_string).into_iter().collect()
    }

    /// Without `text_model.` and unanchored, so that the key names the module under
    /// transformers 4's names and 5's (diffusers strips the prefix from the tensors'
    /// keys, not from the patterns).
    fn pattern_key(name: &str) -> String {
        Self::target_name(name).to_string()
    }

    /// Without `text_model.`: PEFT matches a target at the end of a module's name, so
    /// it finds the module under both transformers' names (a full name with the prefix
    /// matches nothing under transformers 5).
    fn target_name(name: &str) -> &str {
        name.strip_prefix(TEXT_MODEL).unwrap_or(name)
    }
}

/// The prefix of the text encoder's modules under transformers 4 (what anneal writes).
const TEXT_MODEL: &str = "text_model.";

/// The LoRA methods of the UNet and of the text encoder, the same for both.
macro_rules! lora_methods {
    ($ty:ty, $what:literal) => {
        impl $ty {
            #[doc = concat!("Attaches a new adapter to the linear layers of the ", $what, " that ")]
            /// `cfg.target_modules` names (PEFT's suffix rule; empty: the defaults,
            /// [`DEFAULT_UNET_TARGETS`] or [`DEFAULT_TEXT_ENCODER_TARGETS`];
            /// `all-linear`: every linear layer), initialised as PEFT does: A ~
            /// kaiming-uniform from `seed`, B = 0, so the output is unchanged until
            /// training moves B. The scale is `alpha / r` (`alpha / sqrt(r)` with
            /// `use_rslora`).
            pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
                add(self, cfg, seed)
            }

            #[doc = concat!("Attaches the ", $what, "'s part of `file`, which must have one. Every module ")]
            /// must be a linear layer (or 1x1 convolution) with matching shapes;
            /// otherwise nothing is attached and the error names the file and the key.
            /// A file that also adapts another component of the pipeline is refused:
            /// [`StableDiffusionPipeline::load_lora_file`](super::StableDiffusionPipeline::load_lora_file)
            /// loads every part.
            pub fn load_lora_file(&mut self, file: &LoraFile) -> Result<()> {
                if let Some(m) = file.modules.iter().find(|m| m.component != <$ty as LoraHost>::COMPONENT) {
                    return Err(Error::data(
                        Location::file(&file.path).field(&m.down_key),
                        format!(
                            "the file adapts the {} too: load it into the pipeline \
                             (StableDiffusionPipeline::load_lora_file), or keep the {} part alone \
                             (LoraFile::keep_only)",
                            m.component.describe(),
                            $what
                        ),
                    ));
                }
                load(self, file)
            }

            /// [`Self::load_lora_file`] of a file, or of the weights file of a directory
            /// (as `pipe.load_lora_weights(dir)` finds it).
            pub fn load_lora(&mut self, path: impl AsRef<Path>) -> Result<()> {
                self.load_lora_file(&LoraFile::read(path)?)
            }

            #[doc = concat!("Writes the ", $what, "'s adapter alone as `dir/pytorch_lora_weights.safetensors` ")]
            /// (see [`save_lora_weights`]). Returns the file's path.
            pub fn save_lora(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
                self.save_lora_alone(dir.as_ref())
            }

            /// The attached adapter's configuration (for a loaded file: the most common
            /// rank and alpha, and the adapted modules' full names as targets).
            pub fn lora_config(&self) -> Option<&LoraConfig> {
                self.lora.as_ref().map(ComponentLora::config)
            }

            /// The adapted modules' names, in layer order.
            pub fn lora_modules(&self) -> Vec<String> {
                self.lora.as_ref().map(ComponentLora::module_names).unwrap_or_default()
            }

            /// Multiplies every module's scale by `scale` (diffusers' LoRA scale:
            /// `cross_attention_kwargs={"scale": s}`, `fuse_lora(lora_scale=s)`); 1 is the
            /// adapter as trained, 0 the base. Refused while merged (unmerge first).
            pub fn set_lora_scale(&mut self, scale: f64) -> Result<()> {
                set_scale(self, scale)
            }

            /// The multiplier set by `set_lora_scale` (1 without one).
            pub fn lora_scale(&self) -> f64 {
                self.lora.as_ref().map_or(1.0, ComponentLora::scale)
            }

            /// Folds the adapter (at its current scale) into the base weights; the
            /// forward then skips it. `unmerge_lora` undoes it.
            pub fn merge_lora(&mut self) -> Result<()> {
                merge(self)
            }

            /// Subtracts a merged adapter from the base weights again.
            pub fn unmerge_lora(&mut self) -> Result<()> {
                unmerge(self)
            }

            /// Whether the adapter is merged into the weights.
            pub fn is_lora_merged(&self) -> bool {
                self.lora.as_ref().is_some_and(ComponentLora::is_merged)
            }

            /// Detaches the adapter (unmerging it first): the model is the base again.
            pub fn remove_lora(&mut self) -> Result<()> {
                remove(self)
            }
        }
    };
}

lora_methods!(UNet2DConditionModel, "UNet");
lora_methods!(ClipTextModel, "text encoder");

impl UNet2DConditionModel {
    fn save_lora_alone(&self, dir: &Path) -> Result<PathBuf> {
        save_lora_weights(dir, Some(self), None)
    }
}

impl ClipTextModel {
    fn save_lora_alone(&self, dir: &Path) -> Result<PathBuf> {
        save_lora_weights(dir, None, Some(self))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(key: &str) -> (LoraComponent, String, LoraLayout) {
        let (c, n, _, l) = parse_key(key).unwrap();
        (c, n, l)
    }

    #[test]
    fn keys_of_every_layout_name_their_module() {
        let m = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        assert_eq!(
            parsed(&format!("unet.{m}.to_q.lora_A.weight")),
            (LoraComponent::Unet, format!("{m}.to_q"), LoraLayout::Peft)
        );
        assert_eq!(
            parsed(&format!("unet.{m}.to_out.0.lora.up.weight")),
            (LoraComponent::Unet, format!("{m}.to_out.0"), LoraLayout::Diffusers)
        );
        assert_eq!(
            parsed(&format!("unet.{m}.processor.to_out_lora.down.weight")),
            (LoraComponent::Unet, format!("{m}.to_out.0"), LoraLayout::DiffusersOld)
        );
        assert_eq!(
            parsed(&format!("{m}.processor.to_k_lora.up.weight")),
            (LoraComponent::Unet, format!("{m}.to_k"), LoraLayout::DiffusersOld)
        );
        assert_eq!(
            parsed("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"),
            (LoraComponent::Unet, "mid_block_attentions_0_proj_in".into(), LoraLayout::Kohya)
        );
        assert_eq!(parsed("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha").0, LoraComponent::TextEncoder);
        assert_eq!(
            parsed("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight").0,
            LoraComponent::TextEncoder
        );
        for (key, needle) in [
            ("lora_unet_x.dora_scale", "DoRA"),
            ("lora_unet_x.hada_w1_a", "LoHa"),
            (&format!("unet.{m}.to_q.lora_magnitude_vector"), "DoRA"),
            (&format!("unet.{m}.to_q.lora_B.bias"), "bias"),
            (&format!("unet.{m}.to_q.weight"), "not a LoRA tensor"),
            (&format!("unet.{m}.to_q.alpha"), "not a LoRA tensor"),
        ] {
            let e = parse_key(key).err().unwrap();
            assert!(e.contains(needle), "{key}: {e}");
        }
    }

    #[test]
    fn pattern_keys_match_like_peft() {
        let p = vec![("^down_blocks.0.attn1.to_q".to_string(), 2usize), ("attn2.to_k".to_string(), 3)];
        assert_eq!(pattern_value(&p, "down_blocks.0.attn1.to_q"), Some(2));
        // `^` anchors at the start of the name: no match deeper down.
        assert_eq!(pattern_value(&p, "up_blocks.down_blocks.0.attn1.to_q"), None);
        assert_eq!(pattern_value(&p, "mid_block.attn2.to_k"), Some(3));
        assert_eq!(pattern_value(&p, "mid_block.xattn2.to_k"), None);
        assert_eq!(most_common([4usize, 2, 4, 2, 8].into_iter()), Some(2));
        assert_eq!(num(8.0), Value::from(8));
        assert_eq!(num(2.5), Value::from(2.5));
    }
}
