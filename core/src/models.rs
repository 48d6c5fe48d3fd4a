//! Model families: GPT-2 and the Llama family (Llama, Mistral, Qwen2, SmolLM,
//! TinyLlama), written for training: every op of the [`ForwardMode::Train`] path has a
//! backward in candle. [`ForwardMode::Infer`] uses candle's fused kernels (softmax,
//! RMSNorm, LayerNorm, RoPE) and gives the same numbers.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{LoadOptions, Model};
//! let model = Model::load("tests/fixtures/tiny-llama", &LoadOptions::default())?;
//! let tokens = model.greedy(&[1, 2, 3], 8, &[], anneal::ForwardMode::Infer)?;
//! # Ok(()) }
//! ```

pub(crate) mod bgemm;
mod cache;
mod config;
pub(crate) mod fused;
pub(crate) mod gemv;
pub(crate) mod gguf;
mod gpt2;
pub(crate) mod linear;
mod llama;
pub(crate) mod load;
pub(crate) mod lora;
pub(crate) mod memory;
pub(crate) use lora::AdapterSlot;
pub mod presets;
pub(crate) mod sgemm;
pub(crate) mod st_header;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use serde_json::Value;

pub use crate::types::Family;
pub use cache::KvCache;
pub use config::{Activation, ModelConfig, RopeScaling};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::types::{LoraConfig, ModelRecord};
use linear::Linear;
use lora::LoraState;

/// Files copied next to saved weights (tokenizer, chat template, generation defaults).
const SIDE_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
];

/// Which implementation of the fused ops a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// Differentiable ops only (gradients reach every weight); LoRA dropout is active.
    #[default]
    Train,
    /// Fused kernels without backward; for generation and evaluation.
    Infer,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Make every base weight a trainable `Var` (full fine-tuning). Leave false for
    /// inference and LoRA, where base weights stay plain tensors without gradients.
    pub trainable: bool,
    /// The compute dtype; weights stored in another dtype are converted. Default f32.
    pub dtype: DType,
    /// Default: CPU.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { trainable: false, dtype: DType::F32, device: Device::Cpu }
    }
}

/// Where a model comes from: a registry record or a Hugging Face directory.
pub trait ModelSource {
    /// The directory holding config.json and the weights.
    fn model_dir(&self) -> PathBuf;
    /// The parsed config.json, when already known.
    fn model_config(&self) -> Option<&Value> {
        None
    }
}

impl ModelSource for ModelRecord {
    fn model_dir(&self) -> PathBuf {
        self.path.clone()
    }
    fn model_config(&self) -> Option<&Value> {
        Some(&self.config)
    }
}
impl<T: ModelSource + ?Sized> ModelSource for &T {
    fn model_dir(&self) -> PathBuf {
        (**self).model_dir()
    }
    fn model_config(&self) -> Option<&Value> {
        (**self).model_config()
    }
}
impl ModelSource for Path {
    fn model_dir(&self) -> PathBuf {
        self.to_path_buf()
    }
}
impl ModelSource for PathBuf {
    fn model_dir(&self) -> PathBuf {
        self.clone()
    }
}
impl ModelSource for str {
    fn model_dir(&self) -> PathBuf {
        PathBuf::from(self)
    }
}
impl ModelSource for String {
    fn model_dir(&self) -> PathBuf {
        PathBuf::from(self)
    }
}

/// Loads a model from a registry record or a directory. Same as [`Model::load`].
pub fn load_model(source: impl ModelSource, opts: &LoadOptions) -> Result<Model> {
    Model::load(source, opts)
}

/// Parameters handed out while loading: plain tensors, or `Var`s for full fine-tuning.
pub(crate) struct Params {
    trainable: bool,
    vars: Vec<(String, Var)>,
}

impl Params {
    pub(crate) fn take(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
        if !self.trainable {
            return Ok(t);
        }
        let v = Var::from_tensor(&t)?;
        let t = v.as_tensor().clone();
        self.vars.push((name.to_string(), v));
        Ok(t)
    }
}

pub(crate) enum Arch {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
}

/// A causal language model of one of the supported families.
pub struct Model {
    arch: Arch,
    config: ModelConfig,
    raw_config: Value,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    /// Full fine-tuning: every weight, under its transformers name.
    vars: Vec<(String, Var)>,
    lora: Option<LoraState>,
    /// Mixed precision: the linear layers' training products multiply in bf16.
    bf16: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("model_type", &self.config.model_type)
            .field("dir", &self.dir)
            .field("trainable", &!self.vars.is_empty())
            .field("lora", &self.lora.as_ref().map(|l| &l.config))
            .finish()
    }
}

impl Model {
    /// Loads config.json and the safetensors weights (single file or sharded), or a
    /// registered GGUF file (`model.gguf`, dequantized to `opts.dtype`).
    pub fn load(source: impl ModelSource, opts: &LoadOptions) -> Result<Model> {
        Self::load_with(source, opts, None)
    }

    /// [`Model::load`]; with `quantized` (inference), the block-quantized matrices of a
    /// GGUF file are held as q8_0 instead of dequantized (see [`gguf`]) and, for bf16,
    /// its f32 / f16 / bf16 matrices as bf16; an f32 safetensors model's matrices are
    /// quantized to that format as each is read (peak memory near the quantized size,
    /// not the dense one).
    pub(crate) fn load_with(
        source: impl ModelSource,
        opts: &LoadOptions,
        quantized: Option<gemv::Quant>,
    ) -> Result<Model> {
        let dir = source.model_dir();
        let adapter_hint = || {
            Error::config(
                "model",
                format!(
                    "{} holds a LoRA adapter, not a model: load its base model, then call Model::load_adapter",
                    dir.display()
                ),
            )
        };
        if source.model_config().is_none()
            && !dir.join("config.json").exists()
            && dir.join("adapter_config.json").exists()
        {
            return Err(adapter_hint());
        }
        let raw_config = match source.model_config() {
            Some(v) => v.clone(),
            None => {
                let p = dir.join("config.json");
                let text = std::fs::read_to_string(&p).with_path(&p)?;
                serde_json::from_str(&text).map_err(|e| Error::data(Location::file(&p), e.to_string()))?
            }
        };
        if raw_config.get("peft_type").is_some() {
            return Err(adapter_hint());
        }
        let config = ModelConfig::from_json(&raw_config)?;
        let gguf_file = dir.join(gguf::GGUF_FILE);
        if quantized.is_some() && opts.trainable {
            return Err(Error::Internal("quantized weights cannot be trained".into()));
        }
        let weights = if gguf::is_gguf_model(&dir) {
            load::Weights::from_gguf(&gguf_file, &config, opts.dtype, &opts.device, quantized)?
        } else if let (Some(q), DType::F32, true) = (quantized, opts.dtype, opts.device.is_cpu()) {
            load::Weights::load_quantized(&dir, &opts.device, &gguf::quantize_on_load(&config)?, q)?
        } else {
            load::Weights::load(&dir, opts.dtype, &opts.device)?
        };
        let mut params = Params { trainable: opts.trainable, vars: Vec::new() };
        let arch = match config.family {
            Family::Gpt2 => Arch::Gpt2(gpt2::Gpt2::load(&config, &weights, &mut params)?),
            Family::Llama => Arch::Llama(llama::Llama::load(&config, &weights, &mut params)?),
            Family::StableDiffusion => {
                return Err(Error::config("model", "a Stable Diffusion pipeline is not a language model"))
            }
            Family::Tabular => return Err(Error::config("model", "a tabular classifier is not a language model")),
        };
        Ok(Model {
            arch,
            config,
            raw_config,
            dir,
            device: opts.device.clone(),
            dtype: weights.dtype(),
            vars: params.vars,
            lora: None,
            bf16: false,
        })
    }

    /// Mixed precision for training ([`crate::MixedPrecision`]): with `Bf16`, every
    /// linear layer (LoRA adapters and the LM head too) multiplies in bf16 and sums in
    /// f32 in the training forward and its backward. Evaluation and generation stay f32.
    pub fn set_mixed_precision(&mut self, mp: crate::MixedPrecision) {
        self.bf16 = mp == crate::MixedPrecision::Bf16;
        let bf16 = self.bf16;
        for (_, l) in self.linears_mut() {
            l.bf16 = bf16;
        }
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the tokenizer and generation files that [`Model::save`] copies from `dir`
    /// (weights loaded from a checkpoint, side files from the model it started from).
    pub(crate) fn set_side_files_dir(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` (`[batch, seq]`, u32), whose first
    /// token sits at position `position_offset`. Training path (differentiable).
    pub fn forward(&self, input_ids: &Tensor, position_offset: usize) -> Result<Tensor> {
        self.forward_with(input_ids, position_offset, ForwardMode::Train)
    }

    /// [`Model::forward`] with an explicit mode.
    pub fn forward_with(&self, input_ids: &Tensor, position_offset: usize, mode: ForwardMode) -> Result<Tensor> {
        check_ids("input_ids", input_ids, self.config.vocab_size, false)?;
        self.logits(input_ids, position_offset, mode, None, false)
    }

    /// The family's last hidden states and its LM head.
    fn hidden_and_head(
        &self,
        ids: &Tensor,
        offset: usize,
        mode: ForwardMode,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<(Tensor, linear::Linear)> {
        Ok(match &self.arch {
            Arch::Gpt2(m) => (m.hidden(ids, offset, mode, cache, last_only)?, m.head()),
            Arch::Llama(m) => (m.hidden(ids, offset, mode, cache, last_only)?, m.head()),
        })
    }

    /// Logits `[batch, seq, vocab]` (`[batch, 1, vocab]` with `last_only`); with a cache,
    /// `ids` continue the cached positions (`offset` is ignored).
    fn logits(
        &self,
        ids: &Tensor,
        offset: usize,
        mode: ForwardMode,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let (x, head) = self.hidden_and_head(ids, offset, mode, cache, last_only)?;
        head.forward(&x, mode == ForwardMode::Train)
    }

    /// Inference with a [`KvCache`]: runs `input_ids` (`[batch, t]`) after the cached
    /// positions, appends their keys and values, and returns the logits of the last
    /// position only (`[batch, vocab]`), or of every new position (`[batch, t, vocab]`).
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        check_ids("input_ids", input_ids, self.config.vocab_size, false)?;
        // On a pool thread, the matrix-vector products' parallel loops are joined by
        // work stealing instead of parking and waking the caller dozens of times a token,
        // and the other threads spin between them instead of parking.
        let logits =
            crate::util::with_pool_spinning(|| self.logits(input_ids, 0, ForwardMode::Infer, Some(cache), last_only))?;
        Ok(if last_only { logits.squeeze(1)? } else { logits })
    }

    /// A cache sized for this model: `batch` rows (left padding `pads`, if given) and up
    /// to `capacity` positions (at most the model's context).
    pub fn new_cache(&self, pads: Vec<usize>, capacity: usize) -> KvCache {
        KvCache::with_padding(pads, capacity.min(self.config.max_position_embeddings))
    }

    /// Causal-LM loss as transformers computes it: logits[:, :-1] against labels[:, 1:],
    /// mean over the positions whose label is not -100. `labels` is `[batch, seq]` i64.
    ///
    /// In [`ForwardMode::Train`] the LM head and the loss are one node when they can be
    /// (f32 on the CPU, a dense head without LoRA or bias): the logits are never a graph
    /// tensor, and their gradient is written over them (see `fused::LmHeadXent`).
    pub fn loss(&self, input_ids: &Tensor, labels: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        if mode == ForwardMode::Infer {
            let logits = self.forward_with(input_ids, 0, mode)?;
            return causal_lm_loss(&logits, labels);
        }
        check_ids("input_ids", input_ids, self.config.vocab_size, false)?;
        let (hidden, head) = self.hidden_and_head(input_ids, 0, mode, None, false)?;
        head_loss(&hidden, &head, labels, None, self.bf16)
    }

    /// One training micro-batch: the loss of [`Model::loss`] in [`ForwardMode::Train`]
    /// and the gradients of `loss * scale` to the trainable weights (`scale`: e.g.
    /// `1 / micro-batches` under gradient accumulation).
    ///
    /// The same gradients as `loss(..)?.affine(scale, 0)?.backward()`, at a lower peak:
    /// the fused LM head's weight gradient skips candle's zero-and-add into the gradient
    /// store (two `[vocab, hidden]` buffers while every activation is still alive) and is
    /// added once the backward is done. The training engine steps through here.
    pub fn loss_and_backward(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        scale: f64,
    ) -> Result<(f32, candle_core::backprop::GradStore)> {
        check_ids("input_ids", input_ids, self.config.vocab_size, false)?;
        let deferred = std::sync::Arc::new(fused::Deferred::default());
        let mut grads = {
            let (hidden, head) = self.hidden_and_head(input_ids, 0, ForwardMode::Train, None, false)?;
            let loss = head_loss(&hidden, &head, labels, Some(deferred.clone()), self.bf16)?;
            let value = loss.to_scalar::<f32>()?;
            let grads = if scale == 1.0 { loss.backward()? } else { (loss * scale)?.backward()? };
            (value, grads)
        };
        deferred.add_to(&mut grads.1)?;
        Ok(grads)
    }

    /// Argmax decoding of up to `max_new_tokens` after `prompt` (full recompute per
    /// token), stopping after any token of `stop`. Returns the new tokens only.
    pub fn greedy(&self, prompt: &[u32], max_new_tokens: usize, stop: &[u32], mode: ForwardMode) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::config("prompt", "must hold at least one token"));
        }
        let mut ids = prompt.to_vec();
        let mut out = Vec::with_capacity(max_new_tokens);
        for _ in 0..max_new_tokens {
            let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
            let logits = self.forward_with(&input, 0, mode)?;
            let t = logits.dim(1)?;
            let next = logits.get(0)?.get(t - 1)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
            ids.push(next);
            out.push(next);
            if stop.contains(&next) {
                break;
            }
        }
        Ok(out)
    }

    /// What an optimiser should update: the LoRA adapters when one is attached, else
    /// every weight of a model loaded with `trainable`, else nothing.
    ///
    /// `candle_nn::AdamW` implements `torch.optim.AdamW` (decoupled weight decay,
    /// bias-corrected moments) to within 1e-8 after a step: see `tests/numerics.rs`.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// [`Model::trainable_vars`] with names: transformers names for full fine-tuning,
    /// PEFT file keys (`base_model.model....lora_A.weight`) for adapters.
    pub fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => l.vars.clone(),
            None => self.vars.clone(),
        }
    }

    /// Number of elements in [`Model::trainable_vars`].
    pub fn num_trainable_params(&self) -> usize {
        self.trainable_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Saves the (possibly fine-tuned) weights and config.json as a Hugging Face
    /// directory that transformers loads, with the tokenizer and generation files of the
    /// source directory. LoRA adapters are not included (merge first to bake them in).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_path(dir)?;
        for side in SIDE_FILES {
            let src = self.dir.join(side);
            let dst = dir.join(side);
            if src.is_file() && !dst.exists() {
                // Read errors name the source, write errors (a full disk) the copy.
                crate::util::copy_hashing(&src, &dst, |_| Ok(()))?;
            }
        }
        let tensors: HashMap<String, Tensor> = self.named_weights()?.into_iter().collect();
        write_safetensors(&tensors, &dir.join("model.safetensors"))?;
        let cfg = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.raw_config).map_err(|e| Error::Internal(e.to_string()))?;
        crate::util::write_atomic(&cfg, text.as_bytes())
    }

    pub(crate) fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match &self.arch {
            Arch::Gpt2(m) => m.named_weights()?,
            Arch::Llama(m) => m.named_weights()?,
        })
    }

    /// Lays weights out for decoding (GPT-2's Conv1D weights held `[out, in]`). For
    /// inference-only models: weights stop being trainable variables.
    pub(crate) fn prepare_for_inference(&mut self) -> Result<()> {
        for (_, l) in self.linears_mut() {
            l.hold_row_major()?;
        }
        Ok(())
    }

    /// Quantizes every linear layer's weight to `q` (inference only; adapters stay f32;
    /// layers already quantized stay as they are). Returns the bytes the quantized
    /// layers hold.
    pub(crate) fn quantize(&mut self, q: gemv::Quant) -> Result<usize> {
        let mut bytes = 0;
        for (_, l) in self.linears_mut() {
            l.hold_row_major()?;
            l.quantize(q)?;
            bytes += l.quantized().map_or(0, |q| q.bytes());
        }
        Ok(bytes)
    }

    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match &mut self.arch {
            Arch::Gpt2(m) => m.linears_mut(),
            Arch::Llama(m) => m.linears_mut(),
        }
    }

    pub(crate) fn is_trainable(&self) -> bool {
        !self.vars.is_empty()
    }

    pub(crate) fn lora_state(&self) -> Option<&LoraState> {
        self.lora.as_ref()
    }

    pub(crate) fn lora_state_mut(&mut self) -> Option<&mut LoraState> {
        self.lora.as_mut()
    }

    pub(crate) fn set_lora_state(&mut self, s: Option<LoraState>) {
        self.lora = s;
    }

    /// The LoRA configuration of the attached adapter.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref().map(|l| &l.config)
    }
}

/// The quantized (q8_0 or bf16) matrix `name` of `w` (`[out, in]`), if it is held
/// quantized; its features must be `(in_f, out_f)`.
pub(crate) fn load_quant(
    w: &load::Weights,
    name: &str,
    in_f: usize,
    out_f: usize,
) -> Result<Option<std::sync::Arc<gemv::QuantWeight>>> {
    let Some(q) = w.quant(name) else { return Ok(None) };
    if q.features() != (in_f, out_f) {
        return Err(Error::data(
            w.location(name),
            format!(
                "tensor has [out, in] = {:?}, config.json implies {:?}",
                (q.features().1, q.features().0),
                (out_f, in_f)
            ),
        ));
    }
    Ok(Some(q))
}

/// Rows of the token embedding for `ids` `[b, t]` -> `[b, t, h]`: from `table`, or
/// dequantized from `quant` when the table is held quantized (q8_0 or bf16).
pub(crate) fn embed(table: &Tensor, quant: Option<&std::sync::Arc<gemv::QuantWeight>>, ids: &Tensor) -> Result<Tensor> {
    let Some(q) = quant else { return ops::embed(table, ids) };
    let (b, t) = ids.dims2()?;
    let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let h = q.features().0;
    Ok(Tensor::from_vec(q.rows_f32(&flat)?, (b, t, h), ids.device())?)
}

/// Writes `tensors` as a safetensors file at `path`, crash-safely (temp file, fsync,
/// rename) and streamed one tensor at a time (no second copy of the weights in memory).
/// A failing write (a full disk) is an [`Error::Io`] naming `path`, never a compute
/// error. Failpoint `write:<file name>`.
pub(crate) fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_safetensors_with_metadata(tensors, None, path)
}

/// [`write_safetensors`] with string metadata in the header (`__metadata__`).
pub(crate) fn write_safetensors_with_metadata(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    use safetensors::View;
    /// A tensor's header entry without its bytes: the `safetensors` crate lays out the
    /// header (offsets, alignment), the bytes are streamed after it.
    struct HeaderOnly<'a>(&'a Tensor);
    impl View for HeaderOnly<'_> {
        fn dtype(&self) -> safetensors::Dtype {
            View::dtype(self.0)
        }
        fn shape(&self) -> &[usize] {
            self.0.dims()
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&[])
        }
        fn data_len(&self) -> usize {
            View::data_len(self.0)
        }
    }
    let internal = |e: String| Error::Internal(format!("cannot write {}: {e}", path.display()));
    let header = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), HeaderOnly(t))), metadata)
        .map_err(|e| internal(e.to_string()))?;
    // The tensors in the order of their offsets in the header.
    let json: serde_json::Map<String, Value> =
        serde_json::from_slice(header.get(8..).unwrap_or_default()).map_err(|e| internal(e.to_string()))?;
    let mut order: Vec<(u64, &Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let start = json.get(name).and_then(|v| v["data_offsets"][0].as_u64());
        order.push((start.ok_or_else(|| internal(format!("tensor `{name}` missing from the header")))?, t));
    }
    order.sort_by_key(|(start, _)| *start);
    crate::util::write_atomic_with(path, |w| {
        w.write_all(&header)?;
        for (_, t) in &order {
            w.write_all(&View::data(*t))?;
        }
        Ok(())
    })
}

/// Checks that `positions` fit the model's context (`field` names the config key).
pub(crate) fn check_positions(positions: usize, max: usize, field: &str) -> Result<()> {
    if positions > max {
        return Err(Error::config("input_ids", format!("sequence of {positions} positions exceeds {field} {max}")));
    }
    Ok(())
}

/// Checks that `ids` are integers in `0..vocab` (`allow_ignore`: -100 too).
fn check_ids(field: &str, ids: &Tensor, vocab: usize, allow_ignore: bool) -> Result<()> {
    if !matches!(ids.dtype(), DType::U32 | DType::I64 | DType::U8) {
        return Err(Error::config(field, format!("must be u32 or i64 token ids, got {:?}", ids.dtype())));
    }
    if ids.elem_count() == 0 {
        return Err(Error::config(field, "is empty"));
    }
    let flat = ids.flatten_all()?.to_dtype(DType::F64)?;
    let max = flat.max(0)?.to_scalar::<f64>()?;
    let min = flat.min(0)?.to_scalar::<f64>()?;
    if max >= vocab as f64 || (min < 0.0 && !(allow_ignore && min == -100.0)) {
        let bad = if max >= vocab as f64 { max } else { min };
        return Err(Error::config(field, format!("token id {bad} is outside the vocabulary (0..{vocab})")));
    }
    Ok(())
}

/// Checks `labels` against a `[b, t]` batch over a vocabulary of `v` for a next-token loss.
fn check_causal_labels(labels: &Tensor, (b, t, v): (usize, usize, usize)) -> Result<()> {
    if labels.dims() != [b, t] {
        return Err(Error::config("labels", format!("shape {:?} does not match logits {:?}", labels.dims(), [b, t])));
    }
    if t < 2 {
        return Err(Error::config("labels", "need at least two positions for a next-token loss"));
    }
    check_ids("labels", labels, v, true)
}

/// The training loss from the final hidden states `[b, t, h]` and the LM head: one fused
/// node for a dense f32 CPU head without LoRA or bias, else the head then
/// [`causal_lm_loss`].
fn head_loss(
    hidden: &Tensor,
    head: &linear::Linear,
    labels: &Tensor,
    defer: Option<std::sync::Arc<fused::Deferred>>,
    bf16: bool,
) -> Result<Tensor> {
    let fusable = match &head.weight {
        linear::Weight::Dense(w) => {
            fused::usable(hidden)
                && fused::usable(w)
                && head.bias.is_none()
                && !head.conv1d
                && head.lora.as_ref().is_none_or(|l| l.merged)
        }
        linear::Weight::Quant(_) => false,
    };
    let w = match (&head.weight, fusable) {
        (linear::Weight::Dense(w), true) => w,
        _ => {
            let mut head = head.clone();
            head.bf16 = bf16;
            return causal_lm_loss(&head.forward(hidden, true)?, labels);
        }
    };
    let (b, t, _) = hidden.dims3()?;
    check_causal_labels(labels, (b, t, w.dim(0)?))?;
    let all: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let Some(op) = fused::LmHeadXent::new(&all, t) else {
        return Err(Error::config("labels", "every label is ignored (-100)"));
    };
    Ok(op.deferring(defer).bf16(bf16).apply(hidden, w)?)
}

/// Mean next-token cross-entropy of `logits` `[b, t, v]` against `labels` `[b, t]`
/// (shifted by one inside; label -100 is ignored).
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    check_causal_labels(labels, (b, t, v))?;
    if fused::usable(logits) {
        let all: Vec<i64> = labels.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        let count = (0..b * t).filter(|r| r % t != t - 1 && all[r + 1] >= 0).count();
        if count == 0 {
            return Err(Error::config("labels", "every label is ignored (-100)"));
        }
        return Ok(logits.contiguous()?.apply_op1(fused::CausalLmXent::new(all, t, count))?);
    }
    let logits = logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?.reshape((b * (t - 1), v))?;
    let labels = labels.narrow(1, 1, t - 1)?.to_dtype(DType::I64)?.reshape(b * (t - 1))?;
    let keep = labels.ge(0i64)?;
    let safe = keep.where_cond(&labels, &labels.zeros_like()?)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let keepf = keep.to_dtype(DType::F32)?;
    let count = keepf.sum_all()?.to_scalar::<f32>()?;
    if count == 0.0 {
        return Err(Error::config("labels", "every label is ignored (-100)"));
    }
    Ok(((picked * keepf)?.sum_all()?.neg()? / count as f64)?)
}

/// Ops shared by the families, each in a differentiable and a fused form.
pub(crate) mod ops {
    use candle_core::{DType, Device, Tensor, D};

    use super::{ForwardMode, RopeScaling};
    use crate::error::Result;

    /// Where one forward pass sits: batch rows, new positions, the first new position,
    /// the cached positions its mask spans, and the rows' left padding.
    pub(crate) struct Pass {
        pub(crate) b: usize,
        pub(crate) t: usize,
        pub(crate) offset: usize,
        pub(crate) past: usize,
        pub(crate) pads: Vec<usize>,
        pub(crate) padded: bool,
    }

    impl Pass {
        /// Checks `ids` against the context (`field` names its config key) and the cache.
        pub(crate) fn new(
            ids: &Tensor,
            offset: usize,
            cache: Option<&super::KvCache>,
            max_positions: usize,
            field: &str,
        ) -> Result<Self> {
            let (b, t) = ids.dims2()?;
            let offset = cache.map_or(offset, |c| c.len());
            super::check_positions(offset + t, max_positions, field)?;
            if let Some(c) = cache {
                c.check(b, t)?;
            }
            let padded = cache.is_some_and(|c| c.has_padding());
            let pads = match cache {
                Some(c) if padded => c.pads().to_vec(),
                _ => vec![0],
            };
            Ok(Self { b, t, offset, past: if cache.is_some() { offset } else { 0 }, pads, padded })
        }
    }

    /// Rows of `table` for `ids` `[b, t]` -> `[b, t, h]`.
    pub(crate) fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = table.dim(1)?;
        Ok(table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?)
    }

    pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, mode: ForwardMode) -> Result<Tensor> {
        rms_norm_with(x, w, eps, mode, false)
    }

    /// [`rms_norm`] of an activation inside a model's training forward that no caller
    /// sees: on the fused path its buffer is released by the backward once every
    /// reader's backward has run (`fused::release`).
    pub(crate) fn rms_norm_internal(x: &Tensor, w: &Tensor, eps: f64, mode: ForwardMode) -> Result<Tensor> {
        rms_norm_with(x, w, eps, mode, true)
    }

    fn rms_norm_with(x: &Tensor, w: &Tensor, eps: f64, mode: ForwardMode, release: bool) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Infer => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?,
            ForwardMode::Train if super::fused::usable(x) && super::fused::usable(w) => {
                super::fused::AffineNorm::apply(x, w, None, eps as f32, release)?
            }
            ForwardMode::Train => {
                let dtype = x.dtype();
                let xf = x.to_dtype(DType::F32)?;
                let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
                let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
                normed.to_dtype(dtype)?.broadcast_mul(w)?
            }
        })
    }

    pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, mode: ForwardMode) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Infer => candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32)?,
            ForwardMode::Train if super::fused::usable(x) && super::fused::usable(w) && super::fused::usable(b) => {
                super::fused::AffineNorm::apply(x, w, Some(b), eps as f32, false)?
            }
            ForwardMode::Train => {
                let dtype = x.dtype();
                let xf = x.to_dtype(DType::F32)?;
                let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
                normed.to_dtype(dtype)?.broadcast_mul(w)?.broadcast_add(b)?
            }
        })
    }

    /// cos and sin tables `[t, head_dim / 2]` for positions `offset..offset + t`,
    /// computed in f32 as transformers does (`inv_freq = 1 / theta^(2i/d)`).
    pub(crate) fn rope_tables(
        theta: f64,
        scaling: Option<RopeScaling>,
        head_dim: usize,
        offset: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let positions: Vec<usize> = (offset..offset + t).collect();
        rope_tables_at(theta, scaling, head_dim, &positions, dtype, dev)
    }

    /// cos and sin tables `[positions.len(), head_dim / 2]` for arbitrary positions.
    pub(crate) fn rope_tables_at(
        theta: f64,
        scaling: Option<RopeScaling>,
        head_dim: usize,
        positions: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
                scale_inv_freq(f, scaling)
            })
            .collect();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for &p in positions {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), dev)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// One inverse frequency after transformers' `rope_type` adjustment (f32 math).
    fn scale_inv_freq(f: f32, scaling: Option<RopeScaling>) -> f32 {
        match scaling {
            None => f,
            Some(RopeScaling::Linear { factor }) => f / factor as f32,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: ctx,
            }) => {
                let (factor, low, high, ctx) = (factor as f32, low as f32, high as f32, ctx as f32);
                let wavelen = 2.0 * std::f32::consts::PI / f;
                let (low_wavelen, high_wavelen) = (ctx / low, ctx / high);
                let llama = if wavelen > low_wavelen { f / factor } else { f };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                if medium {
                    let smooth = (ctx / wavelen - low) / (high - low);
                    (1.0 - smooth) * llama / factor + smooth * llama
                } else {
                    llama
                }
            }
        }
    }

    /// Rotate-half RoPE on `x` `[b, h, t, d]`.
    pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Infer => candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?,
            // Not released: the cache keeps the rotated keys.
            ForwardMode::Train => match super::fused::Rope::apply(x, cos, sin, true, false)? {
                Some(y) => y,
                // [t, d/2] tables broadcast over batch and heads; [b, t, d/2] over heads.
                None => rope_composite(x, cos, sin, |c| {
                    Ok(if c.rank() == 2 { c.unsqueeze(0)?.unsqueeze(0)? } else { c.unsqueeze(1)? })
                })?,
            },
        })
    }

    /// Rotate-half RoPE on `x` `[b, t, h, d]` (the projections' own layout) with `[t, d/2]`
    /// or `[b, t, d/2]` tables.
    pub(crate) fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        Ok(match mode {
            ForwardMode::Infer => candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin)?,
            // Only the attention reads the rotated q and k (no cache on this path).
            ForwardMode::Train => match super::fused::Rope::apply(x, cos, sin, false, true)? {
                Some(y) => y,
                None => rope_composite(x, cos, sin, |c| {
                    Ok(if c.rank() == 2 { c.unsqueeze(0)?.unsqueeze(2)? } else { c.unsqueeze(2)? })
                })?,
            },
        })
    }

    /// RoPE from differentiable ops; `lift` shapes the `[.., d]` tables to broadcast over `x`.
    fn rope_composite(
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        lift: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let half = d / 2;
        let cos = lift(Tensor::cat(&[cos, cos], D::Minus1)?)?;
        let sin = lift(Tensor::cat(&[sin, sin], D::Minus1)?)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, d - half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }

    /// `[b, kv, t, d]` -> `[b, kv * n_rep, t, d]`, each kv head repeated for its group.
    pub(crate) fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
        if n_rep == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?.broadcast_as((b, kv, n_rep, t, d))?.reshape((b, kv * n_rep, t, d))?)
    }

    /// Additive causal mask `[t, past + t]`: 0 where query i (at past + i) may see key
    /// j, -inf elsewhere; `window` limits how far back it sees (Mistral). With left
    /// padding (`pads[row]` > 0 for some row) it is `[b, 1, t, past + t]` and no query
    /// sees a padding key, except a padding query its own (so no row is all -inf).
    pub(crate) fn causal_mask(
        t: usize,
        past: usize,
        window: Option<usize>,
        pads: &[usize],
        dev: &Device,
    ) -> Result<Tensor> {
        let kv = past + t;
        let padded = pads.iter().any(|&p| p > 0);
        let rows: &[usize] = if padded { pads } else { &[0] };
        let mut m = vec![0f32; rows.len() * t * kv];
        for (r, &pad) in rows.iter().enumerate() {
            for i in 0..t {
                let qpos = past + i;
                for j in 0..kv {
                    let visible =
                        (j <= qpos && j >= pad && window.is_none_or(|w| qpos - j < w)) || (j == qpos && qpos < pad);
                    if !visible {
                        m[(r * t + i) * kv + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(if padded { Tensor::from_vec(m, (rows.len(), 1, t, kv), dev)? } else { Tensor::from_vec(m, (t, kv), dev)? })
    }

    /// The causal mask of one forward pass: built on first use only (the fused training
    /// softmax applies it on the fly and never needs the tensor).
    pub(crate) struct CausalMask {
        t: usize,
        past: usize,
        window: Option<usize>,
        pads: Vec<usize>,
        dev: Device,
        tensor: std::sync::OnceLock<Tensor>,
    }

    impl CausalMask {
        pub(crate) fn new(t: usize, past: usize, window: Option<usize>, pads: &[usize], dev: &Device) -> Self {
            Self { t, past, window, pads: pads.to_vec(), dev: dev.clone(), tensor: std::sync::OnceLock::new() }
        }

        /// Whether the mask hides nothing (one new query without padding or window cut).
        fn is_trivial(&self) -> bool {
            self.t == 1 && self.pads.iter().all(|&p| p == 0) && self.window.is_none_or(|w| w > self.past)
        }

        fn padded(&self) -> bool {
            self.pads.iter().any(|&p| p > 0)
        }

        fn tensor(&self) -> Result<&Tensor> {
            if let Some(m) = self.tensor.get() {
                return Ok(m);
            }
            let m = causal_mask(self.t, self.past, self.window, &self.pads, &self.dev)?;
            Ok(self.tensor.get_or_init(|| m))
        }
    }

    /// Causal self-attention over this pass's own keys (no cache): `q` `[b, t, heads * d]`,
    /// `k`, `v` `[b, t, kv_heads * d]` (e.g. column views of a fused projection) to
    /// `[b, t, heads * d]`. Training f32 on the CPU without padding, one fused node
    /// ([`super::fused::CausalAttention`]); otherwise the heads are split for
    /// [`attention`] and merged back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn self_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (heads, kv_heads, head_dim): (usize, usize, usize),
        mask: &CausalMask,
        scale: f64,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        if fused_self_attention(mode, mask, &[q, k, v]) {
            // Its output only feeds the caller's output projection (an internal activation).
            let op =
                super::fused::CausalAttention::new(heads, kv_heads, head_dim, scale as f32, mask.window).released();
            return Ok(q.apply_op3(k, v, op)?);
        }
        let (b, t, _) = q.dims3()?;
        let split = |x: &Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, head_dim))?.transpose(1, 2)?.contiguous()?)
        };
        let y = attention(&split(q, heads)?, &split(k, kv_heads)?, &split(v, kv_heads)?, mask, scale, mode)?;
        Ok(y.transpose(1, 2)?.reshape((b, t, heads * head_dim))?)
    }

    /// Whether a pass's self-attention over `operands` (`[b, t, _]`) is one fused node:
    /// training f32 on the CPU, no cache, no padding.
    fn fused_self_attention(mode: ForwardMode, mask: &CausalMask, operands: &[&Tensor]) -> bool {
        mode == ForwardMode::Train
            && mask.past == 0
            && !mask.padded()
            && operands.iter().all(|x| super::fused::usable(x) && x.rank() == 3)
    }

    /// [`self_attention`] over one packed projection `qkv` `[b, t, (heads + 2 kv_heads) *
    /// d]` (q, k, v side by side, GPT-2's `c_attn`): one fused node whose backward fills
    /// the packed gradient directly ([`super::fused::PackedCausalAttention`]), where
    /// column views would each add a zero-padded copy of their gradient.
    pub(crate) fn packed_self_attention(
        qkv: &Tensor,
        (heads, kv_heads, head_dim): (usize, usize, usize),
        mask: &CausalMask,
        scale: f64,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        if fused_self_attention(mode, mask, &[qkv]) {
            // As in `self_attention`, the output only feeds the output projection.
            let op =
                super::fused::CausalAttention::new(heads, kv_heads, head_dim, scale as f32, mask.window).released();
            return Ok(qkv.apply_op1(super::fused::PackedCausalAttention(op))?);
        }
        let (q, kv) = (heads * head_dim, kv_heads * head_dim);
        let (q, k, v) =
            (qkv.narrow(D::Minus1, 0, q)?, qkv.narrow(D::Minus1, q, kv)?, qkv.narrow(D::Minus1, q + kv, kv)?);
        self_attention(&q, &k, &v, (heads, kv_heads, head_dim), mask, scale, mode)
    }

    /// softmax(q k^T * scale + mask) v, with q `[b, h, t, d]` and k, v `[b, kv, T, d]`
    /// (each kv head serving `h / kv` query heads).
    pub(crate) fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &CausalMask,
        scale: f64,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let n_rep = q.dim(1)? / k.dim(1)?;
        if mode == ForwardMode::Infer && q.dim(2)? == 1 && super::fused::usable(q) && super::fused::usable(k) {
            return super::gemv::decode_attention(q, k, v, scale as f32, &mask.pads, mask.window);
        }
        let (k, v) = (repeat_kv(k, n_rep)?, repeat_kv(v, n_rep)?);
        let (k, v) = (&k, &v);
        if mode == ForwardMode::Train && !mask.padded() && super::fused::usable(q) {
            let scores = q.matmul(&k.t()?)?;
            let op = super::fused::CausalSoftmax { scale: scale as f32, past: mask.past, window: mask.window };
            return Ok(scores.apply_op1(op)?.matmul(&v.contiguous()?)?);
        }
        let mut scores = (super::sgemm::mm(q, &k.t()?)? * scale)?;
        if !mask.is_trivial() {
            scores = scores.broadcast_add(&mask.tensor()?.to_dtype(scores.dtype())?)?;
        }
        let probs = match mode {
            ForwardMode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
            ForwardMode::Train => {
                let sf = scores.to_dtype(DType::F32)?;
                candle_nn::ops::softmax(&sf, D::Minus1)?.to_dtype(scores.dtype())?
            }
        };
        Ok(super::sgemm::mm(&probs, &v.contiguous()?)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn safetensors_are_streamed_in_header_order_and_errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let mut tensors = HashMap::new();
        tensors.insert("b.f32".to_string(), Tensor::arange(0f32, 6., &dev).unwrap().reshape((2, 3)).unwrap());
        tensors.insert("a.bf16".to_string(), Tensor::arange(0f32, 5., &dev).unwrap().to_dtype(DType::BF16).unwrap());
        tensors.insert("c.u32".to_string(), Tensor::new(&[7u32, 9], &dev).unwrap());
        tensors.insert("d.f64".to_string(), Tensor::new(2.5f64, &dev).unwrap());
        let p = d.path().join("x.safetensors");
        write_safetensors(&tensors, &p).unwrap();
        let back = candle_core::safetensors::load(&p, &dev).unwrap();
        assert_eq!(back.len(), 4);
        for (k, t) in &tensors {
            let b = &back[k];
            assert_eq!((b.dtype(), b.dims()), (t.dtype(), t.dims()), "{k}");
            let diff = (b.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap()).unwrap();
            assert_eq!(diff.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap(), 0.0);
        }
        // Only the file: no temp file left next to it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A write that cannot happen is an I/O error naming the file, not a compute error.
        let ro = d.path().join("missing-dir").join("y.safetensors");
        let e = write_safetensors(&tensors, &ro).unwrap_err();
        assert!(matches!(e.code(), "io" | "file_not_found"), "{e}");
        assert!(e.to_string().contains("y.safetensors"), "{e}");
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
    }

    /// Logits `[t, vocab]` of `ids` through the cache (the decoding path: a prompt, then
    /// one token at a time), as one f32 vector per position.
    fn decode_logits(m: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
        let mut cache = m.new_cache(vec![0], 64);
        let prompt = Tensor::new(&ids[..4], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let first = m.forward_cached(&prompt, &mut cache, false).unwrap();
        let mut out: Vec<Vec<f32>> = first.squeeze(0).unwrap().to_vec2().unwrap();
        for &id in &ids[4..] {
            let x = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            out.push(m.forward_cached(&x, &mut cache, true).unwrap().squeeze(0).unwrap().to_vec1().unwrap());
        }
        out
    }

    /// The largest difference between `a` and `b` over the largest magnitude of `a`.
    fn relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        let scale = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }

    /// `quantize: "bf16"` end to end, on the families' test models (GPT-2's tied head
    /// and Conv1D weights, Llama's untied head, a tied Llama with 48-wide MLP rows that
    /// q8_0 leaves dense): every matrix is held as bf16 (the embedding / head too when
    /// read quantized), and the logits stay within 1% of the f32 model's (the tolerance
    /// the docs state) and of those of the f32 model whose matrices were rounded to bf16
    /// (what is left is the inputs' rounding; the products' exact arithmetic is checked
    /// in `gemv::bf16`'s tests).
    #[test]
    fn bf16_products_stay_within_a_percent_of_f32() {
        let ids: Vec<u32> = vec![3, 17, 42, 5, 9, 30, 1, 12, 7];
        for name in ["tiny-llama", "tiny-gpt2", "variants/llama-linear-rope-tied"] {
            let dir = fixture(name);
            let opts = LoadOptions { trainable: false, ..Default::default() };
            let mut f32_model = Model::load(dir.clone(), &opts).unwrap();
            f32_model.prepare_for_inference().unwrap();
            let mut bf = Model::load_with(dir.clone(), &opts, Some(gemv::Quant::Bf16)).unwrap();
            bf.prepare_for_inference().unwrap();
            bf.quantize(gemv::Quant::Bf16).unwrap();
            for (n, l) in bf.linears_mut() {
                assert_eq!(l.quantized().map(|q| q.format()), Some(gemv::Quant::Bf16), "{name} {n}");
            }
            let head = match &bf.arch {
                Arch::Gpt2(m) => m.head(),
                Arch::Llama(m) => m.head(),
            };
            assert_eq!(head.quantized().map(|q| q.format()), Some(gemv::Quant::Bf16), "{name} head");
            // The same model with its matrices rounded to bf16, as f32 weights.
            let tmp = tempfile::tempdir().unwrap();
            std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
            let matrices = gguf::quantize_on_load(f32_model.config()).unwrap();
            let mut tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
            for (k, t) in tensors.iter_mut() {
                if matrices.contains_key(k) {
                    *t = t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
                }
            }
            write_safetensors(&tensors, &tmp.path().join("model.safetensors")).unwrap();
            let mut rounded = Model::load(tmp.path().to_path_buf(), &opts).unwrap();
            rounded.prepare_for_inference().unwrap();
            let (want, exact, got) =
                (decode_logits(&f32_model, &ids), decode_logits(&rounded, &ids), decode_logits(&bf, &ids));
            let (vs_rounded, vs_f32) = (relative(&exact, &got), relative(&want, &got));
            assert!(vs_rounded < 1e-2 && vs_rounded > 0.0, "{name}: {vs_rounded} from the bf16-rounded f32 model");
            assert!(vs_f32 < 1e-2 && vs_f32 > 0.0, "{name}: {vs_f32} from f32");
            eprintln!("{name}: {vs_rounded:e} from the rounded model, {vs_f32:e} from f32");
        }
    }
}
