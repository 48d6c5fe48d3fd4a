//! GGUF weights: a llama.cpp model file (as `registry::export::gguf` writes it, and as
//! llama.cpp's converter does) read back under transformers names, so the family
//! loaders take it like a safetensors directory.
//!
//! The inverse of the export: `token_embd` -> `model.embed_tokens` (`transformer.wte`),
//! `blk.N.attn_q` -> `model.layers.N.self_attn.q_proj`, ...; GGML dims list the row
//! length first (`[in, out]` is transformers' `[out, in]`, same bytes); Llama's q and k
//! rows go back from GGML's interleaved RoPE pairs to rotate-half (within each head, row
//! `2i + j` moves to `j * d/2 + i`; Qwen2 keeps its rows); GPT-2's Conv1D weights are
//! transposed back to `[in, out]`.
//!
//! Two ways to load ([`Weights::from_gguf`]):
//! - dense: every tensor dequantized to the compute dtype (training, merging, f16 /
//!   bf16 / f32 files);
//! - quantized (inference): the matrices (linear weights, the token embedding) of a
//!   block-quantized type become [`Q8Weight`]s with no dense copy. q8_0 blocks are taken
//!   as they are (their f16 scales widened to f32); q4_0, q5_0, q4_K and q6_K are
//!   dequantized one tensor at a time and requantized to q8_0, so memory stays near
//!   the q8_0 size and decoding runs the q8_0 kernel. Loaded for bf16
//!   (`quantize: "bf16"`), the f32 / f16 / bf16 matrices become [`Bf16Weight`]s, one
//!   tensor at a time (bf16 values kept as they are). Everything else is dense f32.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::ModelConfig;
use super::gemv::{Bf16Weight, Q8Weight, Quant, QuantWeight, Q8_BLOCK};
use super::load::{QuantizeOnLoad, Weights};
use crate::error::{Error, Location, Result};
use crate::gguf::{self, GgmlType, GgufFile};
use crate::types::Family;

/// The file name of a GGUF model in its model directory.
pub(crate) const GGUF_FILE: &str = "model.gguf";

/// How a transformers tensor is laid out in the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Plain,
    /// Rows permuted per head (of `heads`) to GGML's interleaved RoPE pairs.
    Rope {
        heads: usize,
    },
    /// A Conv1D weight (`[in, out]`) stored `[out, in]`.
    Transposed,
}

/// One tensor the family's loader takes, and where it is in a GGUF file.
#[derive(Debug, Clone)]
pub(crate) struct Mapped {
    /// The transformers name (GPT-2's with `transformer.`).
    pub(crate) hf: String,
    pub(crate) gguf: String,
    /// Shape in transformers' layout.
    pub(crate) shape: Vec<usize>,
    pub(crate) layout: Layout,
    /// A linear weight or the token embedding: may stay quantized for inference.
    pub(crate) matrix: bool,
}

impl Mapped {
    /// GGML dims of the stored tensor (the row length first).
    pub(crate) fn ggml_dims(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.shape.iter().map(|&d| d as u64).collect();
        if self.layout == Layout::Transposed {
            s.reverse();
        }
        s.reverse();
        s
    }
}

/// The GGUF architecture (`general.architecture`) of a config.
pub(crate) fn arch_name(cfg: &ModelConfig) -> &'static str {
    match (cfg.family, cfg.model_type.as_str()) {
        (Family::Gpt2, _) => "gpt2",
        (_, "qwen2") => "qwen2",
        _ => "llama",
    }
}

/// The GGUF name and layout of transformers tensor `hf`.
fn gguf_name(cfg: &ModelConfig, hf: &str) -> Option<(String, Layout)> {
    let plain = |s: String| Some((s, Layout::Plain));
    if cfg.family == Family::Gpt2 {
        let n = hf.strip_prefix("transformer.")?;
        match n {
            "wte.weight" => return plain("token_embd.weight".into()),
            "wpe.weight" => return plain("position_embd.weight".into()),
            _ => {}
        }
        if let Some(part) = n.strip_prefix("ln_f.") {
            return plain(format!("output_norm.{part}"));
        }
        let rest = n.strip_prefix("h.")?;
        let (i, rest) = rest.split_once('.')?;
        let (module, part) = rest.rsplit_once('.')?;
        let g = match module {
            "ln_1" => "attn_norm",
            "ln_2" => "ffn_norm",
            "attn.c_attn" => "attn_qkv",
            "attn.c_proj" => "attn_output",
            "mlp.c_fc" => "ffn_up",
            "mlp.c_proj" => "ffn_down",
            _ => return None,
        };
        let layout = if part == "weight" && !module.starts_with("ln_") { Layout::Transposed } else { Layout::Plain };
        return Some((format!("blk.{i}.{g}.{part}"), layout));
    }
    match hf {
        "model.embed_tokens.weight" => return plain("token_embd.weight".into()),
        "model.norm.weight" => return plain("output_norm.weight".into()),
        "lm_head.weight" => return plain("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let (module, part) = rest.rsplit_once('.')?;
    let rope = arch_name(cfg) == "llama";
    let (g, layout) = match module {
        "input_layernorm" => ("attn_norm", Layout::Plain),
        "post_attention_layernorm" => ("ffn_norm", Layout::Plain),
        "self_attn.q_proj" if rope => ("attn_q", Layout::Rope { heads: cfg.num_attention_heads }),
        "self_attn.k_proj" if rope => ("attn_k", Layout::Rope { heads: cfg.num_key_value_heads }),
        "self_attn.q_proj" => ("attn_q", Layout::Plain),
        "self_attn.k_proj" => ("attn_k", Layout::Plain),
        "self_attn.v_proj" => ("attn_v", Layout::Plain),
        "self_attn.o_proj" => ("attn_output", Layout::Plain),
        "mlp.gate_proj" => ("ffn_gate", Layout::Plain),
        "mlp.up_proj" => ("ffn_up", Layout::Plain),
        "mlp.down_proj" => ("ffn_down", Layout::Plain),
        _ => return None,
    };
    Some((format!("blk.{i}.{g}.{part}"), layout))
}

/// Every tensor the family's loader takes for `cfg`, with its GGUF name.
pub(crate) fn tensor_map(cfg: &ModelConfig) -> Result<Vec<Mapped>> {
    let mut out = Vec::new();
    for spec in cfg.weight_specs() {
        let (gguf, layout) = gguf_name(cfg, &spec.name)
            .ok_or_else(|| Error::Internal(format!("no GGUF name for tensor `{}`", spec.name)))?;
        let matrix = spec.shape.len() == 2 && !spec.name.ends_with("wpe.weight");
        out.push(Mapped { hf: spec.name, gguf, shape: spec.shape, layout, matrix });
    }
    Ok(out)
}

/// The matrices of `cfg` (linear weights, the token embedding) that a safetensors
/// model holds quantized when it loads for quantized inference, under their file names
/// (GPT-2's also without `transformer.`, as Hub checkpoints store them).
pub(crate) fn quantize_on_load(cfg: &ModelConfig) -> Result<QuantizeOnLoad> {
    let mut out = HashMap::new();
    for m in tensor_map(cfg)?.into_iter().filter(|m| m.matrix) {
        let transposed = m.layout == Layout::Transposed;
        if let Some(short) = m.hf.strip_prefix("transformer.") {
            out.insert(short.to_string(), (m.hf.clone(), transposed));
        }
        out.insert(m.hf.clone(), (m.hf, transposed));
    }
    Ok(out)
}

/// Bytes of `cfg`'s weights loaded that way in format `quant`: q8_0 matrices (36 bytes
/// per 32 values; rows that are not whole blocks stay f32) or bf16 ones (2 bytes per
/// value), everything else f32.
pub(crate) fn quantized_bytes(cfg: &ModelConfig, quant: Quant) -> Result<u128> {
    Ok(tensor_map(cfg)?
        .iter()
        .map(|m| {
            let n = m.shape.iter().product::<usize>() as u128;
            let in_f = if m.layout == Layout::Transposed { m.shape.first() } else { m.shape.last() };
            if m.matrix && in_f.is_some_and(|&i| quant.fits(i)) {
                quant.bytes(n)
            } else {
                4 * n
            }
        })
        .sum())
}

/// The GGUF row that transformers row `r` of a `Rope { heads }` tensor of `rows` rows is.
fn rope_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads.max(1);
    let (h, within) = (r / d, r % d);
    let (j, i) = (within / (d / 2), within % (d / 2));
    h * d + 2 * i + j
}

/// `x` (GGUF row-major, `rows` x `cols`) in transformers' layout.
fn to_hf(x: Vec<f32>, m: &Mapped) -> Vec<f32> {
    let rows = m.shape.first().copied().unwrap_or(1);
    let cols = m.shape.iter().skip(1).product::<usize>().max(1);
    match m.layout {
        Layout::Plain => x,
        Layout::Rope { heads } => {
            let mut out = vec![0f32; x.len()];
            for r in 0..rows {
                let g = rope_row(r, rows, heads);
                out[r * cols..(r + 1) * cols].copy_from_slice(&x[g * cols..(g + 1) * cols]);
            }
            out
        }
        Layout::Transposed => {
            // Stored `[out, in]` (`cols` rows of `rows`); transformers' `[in, out]` is `rows` x `cols`.
            let mut out = vec![0f32; x.len()];
            for o in 0..cols {
                for i in 0..rows {
                    out[i * cols + o] = x[o * rows + i];
                }
            }
            out
        }
    }
}

/// Whether the model directory `dir` holds a registered GGUF file (`model.gguf`, no
/// safetensors weights).
pub(crate) fn is_gguf_model(dir: &Path) -> bool {
    dir.join(GGUF_FILE).is_file() && super::load::weight_files(dir).is_err()
}

/// The f32 values of tensor `m` of `file` in transformers' layout (dequantized; Llama's
/// q/k rows back to rotate-half, GPT-2's Conv1D transposed back), after checking its
/// GGML dims against the config.
pub(crate) fn hf_values(file: &GgufFile, m: &Mapped) -> Result<Vec<f32>> {
    let info = file.tensor(&m.gguf).ok_or_else(|| {
        Error::data(Location::file(&file.path).field(&m.gguf), "missing tensor required by config.json")
    })?;
    if info.dims != m.ggml_dims() {
        return Err(Error::data(
            Location::file(&file.path).field(&m.gguf),
            format!("tensor has GGML dims {:?}, config.json implies {:?}", info.dims, m.ggml_dims()),
        ));
    }
    Ok(to_hf(file.tensor_f32(&m.gguf)?, m))
}

/// A matrix of a block-quantized type as a [`Q8Weight`] `[out, in]` (transformers'
/// row order; a Conv1D weight as its transpose, which is how the GGUF holds it).
fn q8_of(file: &GgufFile, m: &Mapped, ty: GgmlType) -> Result<Q8Weight> {
    let (out_f, in_f) = match m.layout {
        Layout::Transposed => (m.shape[1], m.shape[0]),
        _ => (m.shape[0], m.shape[1]),
    };
    let src_row = |r: usize| match m.layout {
        Layout::Rope { heads } => rope_row(r, out_f, heads),
        _ => r,
    };
    if ty == GgmlType::Q8_0 {
        let bytes = file.tensor_bytes(&m.gguf)?;
        let blocks = in_f / Q8_BLOCK;
        let row_bytes = blocks * 34;
        let mut q = Vec::with_capacity(out_f * in_f);
        let mut scales = Vec::with_capacity(out_f * blocks);
        for r in 0..out_f {
            let g = src_row(r);
            for b in bytes[g * row_bytes..(g + 1) * row_bytes].chunks_exact(34) {
                scales.push(gguf::f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
                q.extend(b[2..].iter().map(|&v| v as i8));
            }
        }
        drop(bytes);
        return Q8Weight::from_parts(out_f, in_f, q, scales);
    }
    let x = file.tensor_f32(&m.gguf)?;
    let x = match m.layout {
        Layout::Rope { .. } => to_hf(x, m),
        _ => x,
    };
    Q8Weight::from_f32(out_f, in_f, &x)
}

/// A matrix of type f32, f16 or bf16 as a [`Bf16Weight`] `[out, in]` (transformers' row
/// order; a Conv1D weight as its transpose, which is how the GGUF holds it).
fn bf16_of(file: &GgufFile, m: &Mapped) -> Result<Bf16Weight> {
    let (out_f, in_f) = match m.layout {
        Layout::Transposed => (m.shape[1], m.shape[0]),
        _ => (m.shape[0], m.shape[1]),
    };
    let x = file.tensor_f32(&m.gguf)?;
    let x = match m.layout {
        Layout::Rope { .. } => to_hf(x, m),
        _ => x,
    };
    Bf16Weight::from_f32(out_f, in_f, &x)
}

/// What loading the GGUF model in `dir` for inference takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GgufLoad {
    /// Some matrix is block-quantized (it is held as q8_0 when loaded quantized).
    pub(crate) quantized: bool,
    /// Bytes of the weights loaded quantized (q8_0 matrices, the rest f32).
    pub(crate) quantized_bytes: u128,
}

/// `Some` when the model in `dir` is a registered GGUF file (no safetensors weights).
pub(crate) fn gguf_load(dir: &Path, cfg: &ModelConfig) -> Result<Option<GgufLoad>> {
    let path = dir.join(GGUF_FILE);
    if !is_gguf_model(dir) {
        return Ok(None);
    }
    let file = GgufFile::open(&path)?;
    let (mut quantized, mut bytes) = (false, 0u128);
    for m in tensor_map(cfg)? {
        let Some(info) = file.tensor(&m.gguf) else { continue };
        let n = u128::from(info.elements());
        if m.matrix && keeps_quantized(info.ty) {
            quantized = true;
            bytes += n / Q8_BLOCK as u128 * (Q8_BLOCK as u128 + 4);
        } else {
            bytes += 4 * n;
        }
    }
    Ok(Some(GgufLoad { quantized, quantized_bytes: bytes }))
}

/// Whether tensors of type `ty` stay quantized for inference.
pub(crate) fn keeps_quantized(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
}

impl Weights {
    /// The weights of `cfg` from GGUF file `path`: every tensor dense in `dtype`, or
    /// with `quantized`, the block-quantized matrices as q8_0 and, for bf16, the float
    /// matrices as bf16 (see the module doc).
    pub(crate) fn from_gguf(
        path: &Path,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
        quantized: Option<Quant>,
    ) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let mut tensors = HashMap::new();
        let mut quant = HashMap::new();
        for m in tensor_map(cfg)? {
            let info = file.tensor(&m.gguf).ok_or_else(|| {
                Error::data(Location::file(path).field(&m.gguf), "missing tensor required by config.json")
            })?;
            if let (Some(q), true) = (quantized, m.matrix && device.is_cpu() && info.dims == m.ggml_dims()) {
                if keeps_quantized(info.ty) {
                    quant.insert(m.hf.clone(), Arc::new(QuantWeight::Q8(q8_of(&file, &m, info.ty)?)));
                    continue;
                }
                if q == Quant::Bf16 {
                    quant.insert(m.hf.clone(), Arc::new(QuantWeight::Bf16(bf16_of(&file, &m)?)));
                    continue;
                }
            }
            let x = hf_values(&file, &m)?;
            let t = Tensor::from_vec(x, m.shape.as_slice(), device)?;
            let t = if dtype == DType::F32 { t } else { t.to_dtype(dtype)? };
            tensors.insert(m.hf, t);
        }
        Ok(Weights::from_parts(tensors, quant, path.to_path_buf(), dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_undo_the_export_permutation() {
        // Export: within a head of d rows, row j * d/2 + i goes to 2i + j.
        let (rows, heads) = (8, 2);
        let d = rows / heads;
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    assert_eq!(rope_row(h * d + j * (d / 2) + i, rows, heads), h * d + 2 * i + j);
                }
            }
        }
    }
}
