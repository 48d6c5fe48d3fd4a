//! GGUF export: a Llama-family (Llama, Mistral, Qwen2) or GPT-2 model as one file that
//! llama.cpp loads, written the way llama.cpp's own `convert_hf_to_gguf.py` and
//! `llama-quantize` would write it; an adapter as a GGUF LoRA adapter
//! (`convert_lora_to_gguf.py`'s layout) for `llama-cli --lora` and Ollama's `ADAPTER`.
//!
//! What changes on the way:
//! - Names: `model.embed_tokens` -> `token_embd`, `model.layers.N.self_attn.q_proj` ->
//!   `blk.N.attn_q`, ..., `model.norm` -> `output_norm`, `lm_head` -> `output` (absent
//!   when tied: llama.cpp then reuses `token_embd`); GPT-2's `wte`, `wpe`, `ln_1`,
//!   `c_attn`, `ln_f` -> `token_embd`, `position_embd`, `attn_norm`, `attn_qkv`,
//!   `output_norm`.
//! - Layouts: GGML dims list the row length first (`[out, in]` -> `[in, out]`, same
//!   bytes). Llama's q and k rows are permuted from transformers' rotate-half RoPE
//!   layout to GGML's interleaved pairs (within each head, row `j * d/2 + i` moves to
//!   `2i + j`); Qwen2 runs GGML's NeoX RoPE and keeps its rows. GPT-2's Conv1D weights
//!   (`[in, out]`) are transposed, its fused q/k/v stays fused (`attn_qkv`).
//! - Types ([`GgufType`]): 1-D tensors (norms, biases) and GPT-2's position embedding
//!   stay f32. `f16` / `bf16` / `q8_0`: every matrix. `q4_0`: every matrix, but the
//!   output matrix (the token embedding when tied) at q6_K, as `llama-quantize Q4_0`
//!   does. `q4_k_m`, llama-quantize's mix: q4_K; q6_K for the output matrix, for
//!   `attn_v` (GPT-2: `attn_qkv`) and `ffn_down` of the layers where
//!   `use_more_bits(i, n)` holds (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`:
//!   the first and last eighth and every third layer between).
//! - Fallbacks, for matrices whose rows are not whole blocks (llama-quantize's
//!   `tensor_type_fallback`): q4_K -> q5_0, q6_K -> q8_0 (also the output matrix of a
//!   model whose width is not a multiple of 256); a type of 32-blocks that still does
//!   not fit -> f16 (llama-quantize stops there for q4_0 / q8_0; f16 is what
//!   `convert_hf_to_gguf.py` falls back to).
//! - Metadata: `general.architecture`, `<arch>.context_length`, `embedding_length`,
//!   `block_count`, `feed_forward_length`, `attention.head_count(_kv)`, the norm
//!   epsilon, `rope.freq_base`, `rope.dimension_count`, linear RoPE scaling (Llama 3's
//!   scaling as a `rope_freqs` tensor), `general.file_type` (llama's ftype number),
//!   `general.name`, and the tokenizer: `tokenizer.ggml.model` (`gpt2` for byte-level
//!   BPE with `merges` and `pre`; `llama` for SentencePiece-style BPE with byte
//!   fallback, with scores from the merge ranks), `tokens`, `token_type`, BOS / EOS /
//!   EOT / UNK / padding ids, `add_bos_token`, `chat_template`. The vocabulary is
//!   padded to `vocab_size` with `[PAD<i>]` tokens of type unused, as the converter does.
//!
//! A model registered from a GGUF file (`register_file`) is written from that file: a
//! tensor whose stored type is the type chosen for it is copied byte for byte (so
//! `q8_0` -> `q8_0` or `q4_k_m` -> `q4_k_m` loses nothing), any other is dequantized
//! and quantized to its new type (`q4_k_m` -> `f16` holds the 4-bit values; `q8_0` ->
//! `q4_0` adds the 4-bit error to the 8-bit one); the `tokenizer.*` keys are the
//! file's own. A GGUF file without a tokenizer cannot be written back for llama.cpp
//! (`invalid_config`; `hf` and `bundle` take it).
//!
//! Not representable, so refused with `invalid_config`: GPT-2 with
//! `scale_attn_by_inverse_layer_idx` or another activation than tanh-GELU, Qwen2 with
//! Llama 3 RoPE scaling, tokenizers other than BPE. Mistral's sliding window is not
//! written (llama.cpp's llama graph attends to the whole context, as for Mistral
//! models converted by llama.cpp itself).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use super::Chain;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::gguf::{self, GgmlType, GgufFile, GgufWriter, Value};
use crate::models::{self, memory, LoadOptions, Model, ModelConfig, RopeScaling};
use crate::registry::ModelRegistry;
use crate::tokenizer::Tokenizer;
use crate::types::{ExportOptions, Family, GgufType, ModelKind, ModelRecord};

/// The GGUF architectures written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arch {
    Llama,
    Qwen2,
    Gpt2,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gpt2 => "gpt2",
        }
    }

    /// The architecture of `cfg`, or why GGUF cannot hold it.
    fn of(cfg: &ModelConfig, what: &str) -> Result<Self> {
        let refuse = |why: String| Err(Error::config("format", format!("{what} cannot be exported as GGUF: {why}")));
        match (cfg.family, cfg.model_type.as_str()) {
            (Family::Gpt2, _) => {
                if cfg.scale_attn_by_inverse_layer_idx {
                    return refuse("llama.cpp's GPT-2 has no scale_attn_by_inverse_layer_idx".into());
                }
                if cfg.activation != models::Activation::GeluTanh {
                    return refuse(format!("llama.cpp's GPT-2 runs tanh-GELU, this model {:?}", cfg.activation));
                }
                Ok(Arch::Gpt2)
            }
            (Family::Llama, "qwen2") => {
                if matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })) {
                    return refuse("Llama 3 RoPE scaling on Qwen2 has no GGUF form".into());
                }
                Ok(Arch::Qwen2)
            }
            (Family::Llama, _) => Ok(Arch::Llama),
            (f, _) => refuse(format!("GGUF holds language models, not {}", f.as_str())),
        }
    }

    /// Whether q/k rows go from rotate-half to GGML's interleaved RoPE layout.
    fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }
}

/// What kind of tensor, for the type mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// 1-D: norms, biases, RoPE factors. Always f32.
    Vector,
    /// GPT-2's learned positions: kept f32, as llama.cpp keeps them.
    Positions,
    TokenEmbd,
    Output,
    AttnV,
    FfnDown,
    Matrix,
}

/// How a GGUF tensor is made from a transformers tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    None,
    /// Permute the rows of each of `heads` heads from rotate-half to interleaved pairs.
    Rope {
        heads: usize,
    },
    /// Conv1D `[in, out]` -> `[out, in]`.
    Transpose,
}

/// One tensor of the file to write.
#[derive(Debug, Clone)]
struct Planned {
    gguf: String,
    /// The transformers name, or `None` for a computed tensor (`rope_freqs`).
    hf: Option<String>,
    /// Shape in transformers' layout (before the transform).
    shape: Vec<usize>,
    transform: Transform,
    role: Role,
    layer: Option<usize>,
}

impl Planned {
    /// GGML dims: the row length first.
    fn dims(&self) -> Vec<u64> {
        let mut s: Vec<u64> = self.shape.iter().map(|&d| d as u64).collect();
        if self.transform == Transform::Transpose {
            s.reverse();
        }
        s.reverse();
        s
    }
}

/// The linear modules of layer `i` with their GGUF names and transforms.
fn layer_modules(cfg: &ModelConfig, arch: Arch, i: usize) -> Vec<(String, String, Transform, Role)> {
    let perm = |heads| if arch.permutes_qk() { Transform::Rope { heads } } else { Transform::None };
    match arch {
        Arch::Gpt2 => {
            let p = format!("transformer.h.{i}");
            vec![
                (format!("{p}.attn.c_attn"), format!("blk.{i}.attn_qkv"), Transform::Transpose, Role::AttnV),
                (format!("{p}.attn.c_proj"), format!("blk.{i}.attn_output"), Transform::Transpose, Role::Matrix),
                (format!("{p}.mlp.c_fc"), format!("blk.{i}.ffn_up"), Transform::Transpose, Role::Matrix),
                (format!("{p}.mlp.c_proj"), format!("blk.{i}.ffn_down"), Transform::Transpose, Role::FfnDown),
            ]
        }
        Arch::Llama | Arch::Qwen2 => {
            let p = format!("model.layers.{i}");
            vec![
                (
                    format!("{p}.self_attn.q_proj"),
                    format!("blk.{i}.attn_q"),
                    perm(cfg.num_attention_heads),
                    Role::Matrix,
                ),
                (
                    format!("{p}.self_attn.k_proj"),
                    format!("blk.{i}.attn_k"),
                    perm(cfg.num_key_value_heads),
                    Role::Matrix,
                ),
                (format!("{p}.self_attn.v_proj"), format!("blk.{i}.attn_v"), Transform::None, Role::AttnV),
                (format!("{p}.self_attn.o_proj"), format!("blk.{i}.attn_output"), Transform::None, Role::Matrix),
                (format!("{p}.mlp.gate_proj"), format!("blk.{i}.ffn_gate"), Transform::None, Role::Matrix),
                (format!("{p}.mlp.up_proj"), format!("blk.{i}.ffn_up"), Transform::None, Role::Matrix),
                (format!("{p}.mlp.down_proj"), format!("blk.{i}.ffn_down"), Transform::None, Role::FfnDown),
            ]
        }
    }
}

/// The GGUF name of every linear module (the names LoRA adapters target), with its
/// transform for the adapter's B matrix (the output rows).
fn module_names(cfg: &ModelConfig, arch: Arch) -> HashMap<String, (String, Transform)> {
    let mut out = HashMap::new();
    for i in 0..cfg.num_hidden_layers {
        for (hf, g, t, _) in layer_modules(cfg, arch, i) {
            out.insert(hf, (g, t));
        }
    }
    if arch != Arch::Gpt2 && !cfg.tie_word_embeddings {
        out.insert("lm_head".to_string(), ("output".to_string(), Transform::None));
    }
    out
}

/// Every tensor of the model file, in llama.cpp's order.
fn plan(cfg: &ModelConfig, arch: Arch) -> Vec<Planned> {
    let h = cfg.hidden_size;
    let mut out = Vec::new();
    let mut add = |gguf: String, hf: Option<String>, shape: Vec<usize>, transform, role, layer| {
        out.push(Planned { gguf, hf, shape, transform, role, layer })
    };
    let shapes: HashMap<String, Vec<usize>> = cfg.weight_specs().into_iter().map(|w| (w.name, w.shape)).collect();
    let shape = |name: &str| shapes.get(name).cloned().unwrap_or_default();
    match arch {
        Arch::Gpt2 => {
            add(
                "token_embd.weight".into(),
                Some("transformer.wte.weight".into()),
                shape("transformer.wte.weight"),
                Transform::None,
                Role::TokenEmbd,
                None,
            );
            add(
                "position_embd.weight".into(),
                Some("transformer.wpe.weight".into()),
                shape("transformer.wpe.weight"),
                Transform::None,
                Role::Positions,
                None,
            );
            for i in 0..cfg.num_hidden_layers {
                let p = format!("transformer.h.{i}");
                for (ln, name) in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")] {
                    for part in ["weight", "bias"] {
                        add(
                            format!("blk.{i}.{name}.{part}"),
                            Some(format!("{p}.{ln}.{part}")),
                            vec![h],
                            Transform::None,
                            Role::Vector,
                            Some(i),
                        );
                    }
                }
                for (hf, g, t, role) in layer_modules(cfg, arch, i) {
                    add(
                        format!("{g}.weight"),
                        Some(format!("{hf}.weight")),
                        shape(&format!("{hf}.weight")),
                        t,
                        role,
                        Some(i),
                    );
                    let b = format!("{hf}.bias");
                    add(format!("{g}.bias"), Some(b.clone()), shape(&b), Transform::None, Role::Vector, Some(i));
                }
            }
            for part in ["weight", "bias"] {
                add(
                    format!("output_norm.{part}"),
                    Some(format!("transformer.ln_f.{part}")),
                    vec![h],
                    Transform::None,
                    Role::Vector,
                    None,
                );
            }
        }
        Arch::Llama | Arch::Qwen2 => {
            add(
                "token_embd.weight".into(),
                Some("model.embed_tokens.weight".into()),
                shape("model.embed_tokens.weight"),
                Transform::None,
                Role::TokenEmbd,
                None,
            );
            if matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })) {
                add("rope_freqs.weight".into(), None, vec![cfg.head_dim / 2], Transform::None, Role::Vector, None);
            }
            for i in 0..cfg.num_hidden_layers {
                let p = format!("model.layers.{i}");
                add(
                    format!("blk.{i}.attn_norm.weight"),
                    Some(format!("{p}.input_layernorm.weight")),
                    vec![h],
                    Transform::None,
                    Role::Vector,
                    Some(i),
                );
                add(
                    format!("blk.{i}.ffn_norm.weight"),
                    Some(format!("{p}.post_attention_layernorm.weight")),
                    vec![h],
                    Transform::None,
                    Role::Vector,
                    Some(i),
                );
                for (hf, g, t, role) in layer_modules(cfg, arch, i) {
                    add(
                        format!("{g}.weight"),
                        Some(format!("{hf}.weight")),
                        shape(&format!("{hf}.weight")),
                        t,
                        role,
                        Some(i),
                    );
                    let b = format!("{hf}.bias");
                    if shapes.contains_key(&b) {
                        // Biases follow their rows (q and k permuted like the weight).
                        add(format!("{g}.bias"), Some(b.clone()), shape(&b), t, Role::Vector, Some(i));
                    }
                }
            }
            add(
                "output_norm.weight".into(),
                Some("model.norm.weight".into()),
                vec![h],
                Transform::None,
                Role::Vector,
                None,
            );
            if !cfg.tie_word_embeddings {
                add(
                    "output.weight".into(),
                    Some("lm_head.weight".into()),
                    shape("lm_head.weight"),
                    Transform::None,
                    Role::Output,
                    None,
                );
            }
        }
    }
    out
}

/// `use_more_bits` of llama-quantize: the layers whose attn_v / ffn_down get 6 bits in Q4_K_M.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The GGML type of a planned tensor (see the module doc).
fn tensor_type(q: GgufType, t: &Planned, n_layers: usize, tied: bool) -> GgmlType {
    if t.role == Role::Vector || t.role == Role::Positions || t.shape.len() < 2 {
        return GgmlType::F32;
    }
    let is_output = t.role == Role::Output || (tied && t.role == Role::TokenEmbd);
    let want = match q {
        GgufType::F32 => return GgmlType::F32,
        GgufType::F16 => return GgmlType::F16,
        GgufType::Bf16 => return GgmlType::Bf16,
        GgufType::Q8_0 => GgmlType::Q8_0,
        GgufType::Q4_0 | GgufType::Q4KM => {
            let default = if q == GgufType::Q4_0 { GgmlType::Q4_0 } else { GgmlType::Q4K };
            let more = |i: Option<usize>| use_more_bits(i.unwrap_or(0), n_layers);
            if is_output {
                if !t.dims()[0].is_multiple_of(default.block_size()) {
                    GgmlType::Q8_0
                } else {
                    GgmlType::Q6K
                }
            } else if q == GgufType::Q4KM && matches!(t.role, Role::AttnV | Role::FfnDown) && more(t.layer) {
                GgmlType::Q6K
            } else {
                default
            }
        }
    };
    fallback(want, t.dims()[0])
}

/// llama-quantize's fallback for rows that are not whole blocks, then f16.
fn fallback(ty: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if row.is_multiple_of(next.block_size()) {
        next
    } else {
        GgmlType::F16
    }
}

/// llama.cpp's `llama_ftype` of a type choice (`general.file_type`).
fn file_type(q: GgufType) -> u32 {
    match q {
        GgufType::F32 => 0,
        GgufType::F16 => 1,
        GgufType::Q4_0 => 2,
        GgufType::Q8_0 => 7,
        GgufType::Q4KM => 15,
        GgufType::Bf16 => 32,
    }
}

/// Rows of `x` (`rows` x `cols`) permuted per head from rotate-half to interleaved:
/// within each head of `d` rows, row `j * d/2 + i` goes to `2i + j`.
fn rope_permute(x: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let from = h * d + j * (d / 2) + i;
                let to = h * d + 2 * i + j;
                out[to * cols..(to + 1) * cols].copy_from_slice(&x[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn apply(t: Transform, x: Vec<f32>, shape: &[usize]) -> Vec<f32> {
    let rows = shape.first().copied().unwrap_or(1);
    let cols = shape.iter().skip(1).product::<usize>().max(1);
    match t {
        Transform::None => x,
        Transform::Rope { heads } => rope_permute(&x, rows, cols, heads),
        Transform::Transpose => transpose(&x, rows, cols),
    }
}

/// Llama 3's RoPE frequency factors (`rope_freqs.weight`), as the converter computes them.
fn llama3_rope_factors(cfg: &ModelConfig) -> Vec<f32> {
    let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old }) =
        cfg.rope_scaling
    else {
        return vec![1.0; cfg.head_dim / 2];
    };
    let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
    (0..cfg.head_dim / 2)
        .map(|i| {
            let freq = 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// Where the f32 values of transformers-named tensors come from.
trait Source {
    /// The values of `name`, row-major in transformers' layout, which has `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// The stored bytes of GGUF tensor `gguf` when the source already holds it as `ty`
    /// with GGML dims `dims` (a registered GGUF file): written as they are.
    fn raw(&mut self, _gguf: &str, _ty: GgmlType, _dims: &[u64]) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// A model directory's safetensors files, read one tensor at a time.
struct FileSource {
    dir: PathBuf,
    index: HashMap<String, (PathBuf, models::st_header::TensorInfo)>,
}

impl FileSource {
    fn open(dir: &Path) -> Result<Self> {
        let mut index = HashMap::new();
        for f in models::load::weight_files(dir)? {
            for (name, info) in models::st_header::read_safetensors_header(&f)? {
                index.insert(name, (f.clone(), info));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), index })
    }
}

impl Source for FileSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        // Hub GPT-2 checkpoints leave out the `transformer.` prefix.
        let found = self.index.get(name).or_else(|| name.strip_prefix("transformer.").and_then(|n| self.index.get(n)));
        let Some((path, info)) = found else {
            return Err(Error::data(Location::file(&self.dir).field(name), "missing tensor required by config.json"));
        };
        let at = || Location::file(path).field(name);
        if info.shape.iter().map(|&d| d as usize).collect::<Vec<_>>() != shape {
            return Err(Error::data(at(), format!("tensor has shape {:?}, config.json implies {shape:?}", info.shape)));
        }
        let mut f = fs::File::open(path).with_path(path)?;
        f.seek(SeekFrom::Start(info.offset)).with_path(path)?;
        let mut b = vec![0u8; info.len as usize];
        f.read_exact(&mut b).with_path(path)?;
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = match info.dtype.as_str() {
            "F32" => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            "F16" => b.chunks_exact(2).map(|c| gguf::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            "BF16" => b.chunks_exact(2).map(|c| gguf::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            "F64" => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            other => return Err(Error::data(at(), format!("tensor dtype {other} is not a float type"))),
        };
        if vals.len() != n {
            return Err(Error::data(at(), format!("{} bytes do not hold {n} {} values", info.len, info.dtype)));
        }
        Ok(vals)
    }
}

/// A registered GGUF file (`model.gguf`): each tensor dequantized and put back in
/// transformers' layout, except that a tensor whose stored type is the type to write
/// is copied byte for byte (re-exporting at the file's own type loses nothing; another
/// type is quantized from the dequantized values).
struct GgufSource {
    file: GgufFile,
    map: HashMap<String, models::gguf::Mapped>,
}

impl GgufSource {
    fn open(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let file = GgufFile::open(dir.join(models::gguf::GGUF_FILE))?;
        let map = models::gguf::tensor_map(cfg)?.into_iter().map(|m| (m.hf.clone(), m)).collect();
        Ok(Self { file, map })
    }
}

impl Source for GgufSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let m = self.map.get(name).ok_or_else(|| Error::Internal(format!("no GGUF tensor for `{name}`")))?;
        if m.shape != shape {
            return Err(Error::Internal(format!("GGUF `{}` maps to shape {:?}, not {shape:?}", m.gguf, m.shape)));
        }
        models::gguf::hf_values(&self.file, m)
    }

    fn raw(&mut self, gguf: &str, ty: GgmlType, dims: &[u64]) -> Result<Option<Vec<u8>>> {
        match self.file.tensor(gguf) {
            Some(info) if info.ty == ty && info.dims == dims => Ok(Some(self.file.tensor_bytes(gguf)?)),
            _ => Ok(None),
        }
    }
}

/// The `tokenizer.*` keys of the registered GGUF file of `rec`, as they are: the
/// vocabulary llama.cpp read from that file before.
fn gguf_tokenizer_metadata(rec: &ModelRecord) -> Result<Vec<(String, Value)>> {
    let f = GgufFile::open(rec.path.join(models::gguf::GGUF_FILE))?;
    let keys: Vec<(String, Value)> = f.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
    if !keys.iter().any(|(k, _)| k == "tokenizer.ggml.tokens") {
        return Err(Error::config(
            "format",
            format!(
                "{} was registered from a GGUF file without a tokenizer (no `tokenizer.ggml.tokens`), and \
                 llama.cpp needs one: export it as `hf` or `bundle`",
                rec.reference()
            ),
        ));
    }
    Ok(keys)
}

/// Tensors already in memory (a base with an adapter merged in).
struct MemSource(HashMap<String, Tensor>);

impl Source for MemSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.0.remove(name).ok_or_else(|| Error::Internal(format!("merged model has no `{name}`")))?;
        if t.dims() != shape {
            return Err(Error::Internal(format!("merged `{name}` has shape {:?}, not {shape:?}", t.dims())));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// `gguf`: the model (an adapter merged into its base with `merge`), or a GGUF LoRA
/// adapter for an adapter without `merge`.
pub(super) fn write(
    registry: &ModelRegistry,
    chain: &Chain,
    path: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    match &chain.base {
        Some(base) if !opts.merge.unwrap_or(false) => write_adapter(&chain.model, base, path, opts, step),
        _ => write_model(registry, chain, path, opts, step),
    }
}

/// The base record (the model itself unless it is an adapter) and its config.
fn base_of(chain: &Chain) -> &ModelRecord {
    chain.base.as_ref().unwrap_or(&chain.model)
}

/// Writes the model file of `chain` (merged when it is an adapter) to `path`.
pub(super) fn write_model(
    registry: &ModelRegistry,
    chain: &Chain,
    path: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let m = &chain.model;
    let base = base_of(chain);
    if !matches!(m.family, Family::Llama | Family::Gpt2) {
        return Err(Error::config(
            "format",
            format!(
                "{} is a {} model: GGUF holds language models (Llama family, GPT-2)",
                m.reference(),
                m.family.as_str()
            ),
        ));
    }
    let cfg = ModelConfig::from_json(&base.config)?;
    let arch = Arch::of(&cfg, &m.reference())?;
    let q = opts.quantization.unwrap_or(GgufType::F16);
    // A registered GGUF file keeps its own tokenizer keys; other models get them from
    // tokenizer.json.
    let from_gguf = models::gguf::is_gguf_model(&base.path);
    let tokenizer = if from_gguf {
        gguf_tokenizer_metadata(base)?
    } else {
        tokenizer_metadata(&base.path, &cfg, &Tokenizer::load(base)?)?
    };
    let mut source: Box<dyn Source> = match &chain.base {
        None if from_gguf => Box::new(GgufSource::open(&m.path, &cfg)?),
        None => Box::new(FileSource::open(&m.path)?),
        Some(base) => {
            let f32_bytes = memory::param_count(&cfg).saturating_mul(4);
            memory::Estimate::new()
                .add("weights", "merged model (f32)", f32_bytes)
                .check(registry.store().memory_limit)?;
            let mut model =
                Model::load(base, &LoadOptions { trainable: false, dtype: DType::F32, device: Device::Cpu })?;
            model.load_adapter(&m.path)?;
            model.merge_lora()?;
            let weights: HashMap<String, Tensor> = model.named_weights()?.into_iter().collect();
            Box::new(MemSource(weights))
        }
    };
    step()?;
    let planned = plan(&cfg, arch);
    let types: Vec<GgmlType> =
        planned.iter().map(|t| tensor_type(q, t, cfg.num_hidden_layers, cfg.tie_word_embeddings)).collect();
    let mut meta = model_metadata(&cfg, arch, &m.name, q);
    meta.extend(tokenizer);
    let infos: Vec<(String, Vec<u64>, GgmlType)> =
        planned.iter().zip(&types).map(|(t, ty)| (t.gguf.clone(), t.dims(), *ty)).collect();
    let file = fs::File::create(path).with_path(path)?;
    let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 20, file), path, &meta, &infos)?;
    for (t, ty) in planned.iter().zip(&types) {
        if let Some(bytes) = source.raw(&t.gguf, *ty, &t.dims())? {
            w.write_tensor(&t.gguf, &bytes)?;
            step()?;
            continue;
        }
        let x = match &t.hf {
            Some(hf) => apply(t.transform, source.get(hf, &t.shape)?, &t.shape),
            None => llama3_rope_factors(&cfg),
        };
        w.write_tensor(&t.gguf, &gguf::quantize(*ty, &x)?)?;
        step()?;
    }
    let out = w.finish()?;
    out.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().with_path(path)
}

/// `general.*` and `<arch>.*` keys of a model file.
fn model_metadata(cfg: &ModelConfig, arch: Arch, name: &str, q: GgufType) -> Vec<(String, Value)> {
    let a = arch.name();
    let u32v = |x: usize| Value::U32(u32::try_from(x).unwrap_or(u32::MAX));
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.type".into(), Value::String("model".into())),
        ("general.name".into(), Value::String(name.into())),
        (format!("{a}.context_length"), u32v(cfg.max_position_embeddings)),
        (format!("{a}.embedding_length"), u32v(cfg.hidden_size)),
        (format!("{a}.block_count"), u32v(cfg.num_hidden_layers)),
        (format!("{a}.feed_forward_length"), u32v(cfg.intermediate_size)),
        (format!("{a}.attention.head_count"), u32v(cfg.num_attention_heads)),
    ];
    match arch {
        Arch::Gpt2 => m.push((format!("{a}.attention.layer_norm_epsilon"), Value::F32(cfg.norm_eps as f32))),
        Arch::Llama | Arch::Qwen2 => {
            m.push((format!("{a}.attention.head_count_kv"), u32v(cfg.num_key_value_heads)));
            m.push((format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.norm_eps as f32)));
            m.push((format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta as f32)));
            m.push((format!("{a}.rope.dimension_count"), u32v(cfg.head_dim)));
            if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
                m.push((format!("{a}.attention.key_length"), u32v(cfg.head_dim)));
                m.push((format!("{a}.attention.value_length"), u32v(cfg.head_dim)));
            }
            m.push((format!("{a}.vocab_size"), u32v(cfg.vocab_size)));
            if let Some(RopeScaling::Linear { factor }) = cfg.rope_scaling {
                m.push((format!("{a}.rope.scaling.type"), Value::String("linear".into())));
                m.push((format!("{a}.rope.scaling.factor"), Value::F32(factor as f32)));
            }
        }
    }
    m.push(("general.file_type".into(), Value::U32(file_type(q))));
    if matches!(q, GgufType::Q8_0 | GgufType::Q4_0 | GgufType::Q4KM) {
        m.push(("general.quantization_version".into(), Value::U32(2)));
    }
    m
}

/// GGUF token types (`llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// A tokenizer.json Split pattern of a known llama.cpp pre-tokenizer.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's name (`tokenizer.ggml.pre`) for a tokenizer.json pre-tokenizer: the
/// byte-level regex of GPT-2 (`gpt-2`, also for a ByteLevel without regex, which
/// gives the same tokens when there are no merges across words), Llama 3's and Qwen2's
/// split patterns, SmolLM's digits + GPT-2; anything else `default`.
fn pre_tokenizer_name(pre: &Json) -> &'static str {
    let ty = |v: &Json| v.get("type").and_then(Json::as_str).unwrap_or("").to_string();
    let pattern = |v: &Json| {
        v.get("pattern")
            .and_then(|p| p.get("Regex").or_else(|| p.get("String")))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    match ty(pre).as_str() {
        "ByteLevel" => "gpt-2",
        "Sequence" => {
            let parts: Vec<&Json> =
                pre.get("pretokenizers").and_then(Json::as_array).map(|a| a.iter().collect()).unwrap_or_default();
            let kinds: Vec<String> = parts.iter().map(|p| ty(p)).collect();
            let split = parts.iter().find(|p| ty(p) == "Split").and_then(|p| pattern(p));
            match (kinds.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), split.as_deref()) {
                (["Split", "ByteLevel"], Some(LLAMA3_SPLIT)) => "llama-bpe",
                (["Split", "ByteLevel"], Some(QWEN2_SPLIT)) => "qwen2",
                (["Digits", "ByteLevel"], _) => "smollm",
                _ => "default",
            }
        }
        _ => "default",
    }
}

/// The `tokenizer.ggml.*` keys for the model in `dir`.
fn tokenizer_metadata(dir: &Path, cfg: &ModelConfig, tok: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let p = dir.join("tokenizer.json");
    let text = fs::read_to_string(&p).with_path(&p)?;
    let tj: Json = serde_json::from_str(&text).map_err(|e| Error::data(Location::file(&p), e.to_string()))?;
    let model = tj.get("model").cloned().unwrap_or(Json::Null);
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("?");
    if kind != "BPE" {
        return Err(Error::config(
            "format",
            format!(
                "the tokenizer is {kind}: GGUF export writes BPE tokenizers (byte-level as llama.cpp's `gpt2`, \
                 SentencePiece-style with byte fallback as `llama`)"
            ),
        ));
    }
    let spm = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let n = cfg.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![NORMAL; n];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let i = usize::try_from(id).ok().filter(|&i| i < n).ok_or_else(|| {
            Error::data(Location::file(&p), format!("token `{text}` has id {id}, beyond vocab_size {n} of config.json"))
        })?;
        tokens[i] = Some(text.to_string());
        types[i] = ty;
        Ok(())
    };
    if let Some(vocab) = model.get("vocab").and_then(Json::as_object) {
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| Error::data(Location::file(&p).field(format!("model.vocab.{text}")), "not an id"))?;
            let is_byte = spm && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
            put(id, text, if is_byte { BYTE } else { NORMAL })?;
        }
    }
    if let Some(added) = tj.get("added_tokens").and_then(Json::as_array) {
        for a in added {
            let (Some(id), Some(text)) = (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
            else {
                continue;
            };
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            put(id, text, if special { CONTROL } else { USER_DEFINED })?;
        }
    }
    if let Some(unk) = model.get("unk_token").and_then(Json::as_str) {
        if let Some(i) = tokens.iter().position(|t| t.as_deref() == Some(unk)) {
            types[i] = UNKNOWN;
        }
    }
    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        Some(m) => m
            .iter()
            .filter_map(|v| match v {
                Json::String(s) => Some(s.clone()),
                Json::Array(pair) => match pair.as_slice() {
                    [Json::String(a), Json::String(b)] => Some(format!("{a} {b}")),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let unknown = types.iter().position(|&t| t == UNKNOWN);
    let mut m: Vec<(String, Value)> = Vec::new();
    if spm {
        // SentencePiece merges by the score of the merged piece: the merge rank, negated.
        let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let mut scores = vec![0f32; n];
        for (rank, mg) in merges.iter().enumerate().rev() {
            if let Some(&i) = index.get(mg.replacen(' ', "", 1).as_str()) {
                scores[i] = -(rank as f32);
            }
        }
        let prepend = tj.get("normalizer").is_some_and(|nz| nz.to_string().contains("\"Prepend\""))
            || tj.get("pre_tokenizer").is_some_and(|pt| {
                pt.to_string().contains("\"Metaspace\"") && !pt.to_string().contains("\"prepend_scheme\":\"never\"")
            });
        m.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
        m.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
        m.push(("tokenizer.ggml.tokens".into(), Value::strings(tokens)));
        m.push(("tokenizer.ggml.scores".into(), Value::f32s(scores)));
        m.push(("tokenizer.ggml.token_type".into(), Value::i32s(types)));
        m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(prepend)));
    } else {
        let pre = pre_tokenizer_name(tj.get("pre_tokenizer").unwrap_or(&Json::Null));
        m.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        m.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
        m.push(("tokenizer.ggml.tokens".into(), Value::strings(tokens)));
        m.push(("tokenizer.ggml.token_type".into(), Value::i32s(types)));
        m.push(("tokenizer.ggml.merges".into(), Value::strings(merges)));
    }
    let id = |x: u32| Value::U32(x);
    let eos = tok.eos_token().map(|t| t.id).or_else(|| tok.eos_token_ids().first().copied());
    if let Some(b) = tok.bos_token() {
        m.push(("tokenizer.ggml.bos_token_id".into(), id(b.id)));
    }
    if let Some(e) = eos {
        m.push(("tokenizer.ggml.eos_token_id".into(), id(e)));
        // Another end-of-generation id (ChatML's <|im_end|>): the end of a turn.
        if let Some(eot) = tok.eos_token_ids().iter().find(|&&x| x != e) {
            m.push(("tokenizer.ggml.eot_token_id".into(), id(*eot)));
        }
    }
    if let Some(u) = unknown {
        m.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(u as u32)));
    }
    if let Some(pad) = tok.pad_token() {
        m.push(("tokenizer.ggml.padding_token_id".into(), id(pad.id)));
    }
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(tok.bos_prefix().is_some())));
    m.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    if let Some(t) = tok.chat_template() {
        m.push(("tokenizer.chat_template".into(), Value::String(t.to_string())));
    }
    Ok(m)
}

/// Writes `adapter` (a LoRA on `base`) as a GGUF LoRA adapter: for every adapted
/// module, `<gguf name>.weight.lora_a` (`[r, in]`, GGML dims `[in, r]`) and `.lora_b`
/// (`[out, r]`, its rows permuted like the base's q / k rows), with `general.type =
/// adapter`, `adapter.type = lora` and `adapter.lora.alpha` (llama.cpp scales by
/// `alpha / r`; for rsLoRA the alpha written is `alpha * sqrt(r)`, which gives PEFT's
/// `alpha / sqrt(r)`). Tensors are f32 for `f32`, bf16 for `bf16`, else f16.
pub(super) fn write_adapter(
    adapter: &ModelRecord,
    base: &ModelRecord,
    path: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    if adapter.kind != ModelKind::Lora {
        return Err(Error::Internal(format!("{} is not an adapter", adapter.reference())));
    }
    let cfg = ModelConfig::from_json(&base.config)?;
    let arch = Arch::of(&cfg, &adapter.reference())?;
    let pc = models::lora::peft::read_config(&adapter.path.join(models::lora::peft::CONFIG_FILE))?;
    let st = adapter.path.join(models::lora::peft::WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .map_err(|e| Error::data(Location::file(&st), format!("not a valid safetensors file: {e}")))?;
    let ty = match opts.quantization.unwrap_or(GgufType::F16) {
        GgufType::F32 => GgmlType::F32,
        GgufType::Bf16 => GgmlType::Bf16,
        _ => GgmlType::F16,
    };
    let names = module_names(&cfg, arch);
    let features: HashMap<String, (usize, usize)> =
        cfg.linear_modules().into_iter().map(|l| (l.name, (l.in_features, l.out_features))).collect();
    // (gguf name, values, GGML dims), A then B per module, in the base's module order.
    let mut out: Vec<(String, Vec<f32>, Vec<u64>)> = Vec::new();
    let ordered: BTreeMap<usize, String> =
        cfg.linear_modules().into_iter().enumerate().map(|(i, l)| (i, l.name)).collect();
    for module in ordered.values() {
        let (ka, kb) = (models::lora::peft::key(module, 'A'), models::lora::peft::key(module, 'B'));
        let (Some(a), Some(b)) = (tensors.remove(&ka), tensors.remove(&kb)) else {
            continue;
        };
        let (Some((g, transform)), Some(&(in_f, out_f))) = (names.get(module), features.get(module)) else {
            continue;
        };
        let r = pc.config.r;
        let at = |k: &str| Location::file(&st).field(k);
        if a.dims() != [r, in_f] {
            return Err(Error::data(at(&ka), format!("shape {:?}, expected {:?}", a.dims(), [r, in_f])));
        }
        if b.dims() != [out_f, r] {
            return Err(Error::data(at(&kb), format!("shape {:?}, expected {:?}", b.dims(), [out_f, r])));
        }
        let vals = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        let b = match transform {
            Transform::Rope { heads } => rope_permute(&vals(b)?, out_f, r, *heads),
            _ => vals(b)?,
        };
        out.push((format!("{g}.weight.lora_a"), vals(a)?, vec![in_f as u64, r as u64]));
        out.push((format!("{g}.weight.lora_b"), b, vec![r as u64, out_f as u64]));
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(Error::data(
            Location::file(&st).field(extra),
            format!("tensor does not belong to any linear module of the base {}", base.reference()),
        ));
    }
    if out.is_empty() {
        return Err(Error::data(Location::file(&st), "the adapter has no LoRA tensors"));
    }
    let alpha = if pc.config.use_rslora { pc.config.alpha * (pc.config.r as f64).sqrt() } else { pc.config.alpha };
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.name().into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(adapter.name.clone())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let infos: Vec<(String, Vec<u64>, GgmlType)> = out.iter().map(|(n, _, d)| (n.clone(), d.clone(), ty)).collect();
    let file = fs::File::create(path).with_path(path)?;
    let mut w = GgufWriter::new(BufWriter::new(file), path, &meta, &infos)?;
    for (name, x, _) in &out {
        w.write_tensor(name, &gguf::quantize(ty, x)?)?;
        step()?;
    }
    let f = w.finish()?;
    f.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().with_path(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rope_permutation_interleaves_the_halves_of_each_head() {
        // 2 heads of 4 rows, 1 column: head rows [a0 a1 b0 b1] -> [a0 b0 a1 b1].
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(rope_permute(&x, 8, 1, 2), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        // Whole rows move.
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(rope_permute(&x, 4, 2, 1), vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
    }

    #[test]
    fn q4_k_m_mix_and_fallbacks_follow_llama_quantize() {
        assert_eq!((0..8).filter(|&i| use_more_bits(i, 8)).collect::<Vec<_>>(), vec![0, 3, 6, 7]);
        assert_eq!((0..32).filter(|&i| use_more_bits(i, 32)).count(), 16);
        assert_eq!(fallback(GgmlType::Q4K, 64), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6K, 64), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q4K, 176), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q8_0, 48), GgmlType::F16);
        assert_eq!(fallback(GgmlType::Q4K, 512), GgmlType::Q4K);
        let t = |role, shape: Vec<usize>, layer| Planned {
            gguf: String::new(),
            hf: None,
            shape,
            transform: Transform::None,
            role,
            layer,
        };
        let q = GgufType::Q4KM;
        assert_eq!(tensor_type(q, &t(Role::Output, vec![1000, 512], None), 8, false), GgmlType::Q6K);
        assert_eq!(tensor_type(q, &t(Role::TokenEmbd, vec![1000, 512], None), 8, false), GgmlType::Q4K);
        assert_eq!(tensor_type(q, &t(Role::TokenEmbd, vec![1000, 512], None), 8, true), GgmlType::Q6K);
        assert_eq!(tensor_type(q, &t(Role::TokenEmbd, vec![1000, 64], None), 8, true), GgmlType::Q8_0);
        assert_eq!(tensor_type(q, &t(Role::AttnV, vec![512, 512], Some(0)), 8, false), GgmlType::Q6K);
        assert_eq!(tensor_type(q, &t(Role::AttnV, vec![512, 512], Some(1)), 8, false), GgmlType::Q4K);
        assert_eq!(tensor_type(q, &t(Role::FfnDown, vec![512, 1024], Some(7)), 8, false), GgmlType::Q6K);
        assert_eq!(tensor_type(q, &t(Role::Vector, vec![512], Some(7)), 8, false), GgmlType::F32);
        assert_eq!(tensor_type(q, &t(Role::Positions, vec![64, 512], None), 8, false), GgmlType::F32);
        let q = GgufType::Q4_0;
        assert_eq!(tensor_type(q, &t(Role::Output, vec![1000, 512], None), 8, false), GgmlType::Q6K);
        assert_eq!(tensor_type(q, &t(Role::Output, vec![1000, 64], None), 8, false), GgmlType::Q8_0);
        assert_eq!(tensor_type(q, &t(Role::FfnDown, vec![512, 1024], Some(0)), 8, false), GgmlType::Q4_0);
    }
}
