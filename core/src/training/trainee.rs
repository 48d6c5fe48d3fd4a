//! What a run trains, behind one interface, so that one loop (steps, accumulation,
//! clipping, schedule, evaluation, checkpoints, cancel, resume, registration) serves
//! every kind of model: a language model over token sequences ([`LmTrainee`]) and a
//! diffusion UNet over images (`super::diffusion::DiffusionTrainee`).

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::data::{self, Example, IGNORE};
use crate::error::{Error, Location, Result};
use crate::events::CancelToken;
use crate::models::{ForwardMode, LoadOptions, Model, ModelConfig};
use crate::tokenizer::Tokenizer;
use crate::types::{DatasetFormat, Method, ModelRecord, TrainSpec};

/// Characters of the current sample kept as a preview.
const SAMPLE_CHARS: usize = 120;

/// One model being trained with its prepared data.
pub(crate) trait Trainee: Send {
    /// The weights the optimiser updates, by name (the names key the optimiser state).
    fn named_trainable_vars(&self) -> Vec<(String, Var)>;
    fn num_trainable_params(&self) -> usize;
    /// Training and evaluation examples (sequences, images).
    fn num_train(&self) -> usize;
    fn num_eval(&self) -> usize;
    /// What an example is, for logs: `sequences`, `images`.
    fn unit(&self) -> &'static str;
    /// The micro-batches of `epoch` (indices of training examples), a pure function of
    /// the seed and the epoch so that a resumed run sees the same ones.
    fn epoch_batches(&self, seed: u64, epoch: u32, batch_size: usize) -> Vec<Vec<usize>> {
        data::epoch_order(self.num_train(), seed, epoch).chunks(batch_size).map(<[usize]>::to_vec).collect()
    }
    /// The training loss of micro-batch `micro` of optimiser step `step` (1-based),
    /// with gradients to the trainable weights, and the units it trained on (real
    /// tokens, images). Any randomness comes from the seed, the step and `micro`.
    fn loss(&self, batch: &[usize], step: u64, micro: usize) -> Result<(Tensor, usize)>;
    /// [`Trainee::loss`]'s value and units with the gradients of `loss * scale` (the
    /// engine's micro-batch; a trainee may reach them at a lower peak than the loss
    /// tensor's backward).
    fn loss_and_backward(
        &self,
        batch: &[usize],
        step: u64,
        micro: usize,
        scale: f64,
    ) -> Result<(f64, usize, GradStore)> {
        let (loss, units) = self.loss(batch, step, micro)?;
        let value = f64::from(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
        Ok((value, units, (loss * scale)?.backward()?))
    }
    /// The mean evaluation loss (no gradients).
    fn eval_loss(&self, batch_size: usize) -> Result<f64>;
    /// A short preview of training example `i`.
    fn sample(&self, i: usize) -> Option<String>;
    /// Writes what a resumed run loads back (the trainable weights).
    fn save_checkpoint(&self, dir: &Path) -> Result<()>;
    /// Writes the model to register once the run completes.
    fn save_output(&self, dir: &Path) -> Result<()>;
    /// Renders validation output for `step` under `dir` when the run has any (image
    /// models: the fixed prompts with a fixed seed); returns the file to point to.
    fn render(&self, _step: u64, _dir: &Path, _cancel: &CancelToken) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Whether [`Trainee::render`] is due after `step` of `total`.
    fn render_due(&self, _step: u64, _total: u64) -> bool {
        false
    }
}

/// A causal language model and its tokenised sequences.
pub(crate) struct LmTrainee {
    model: Model,
    tok: Tokenizer,
    train: Vec<Example>,
    eval: Vec<Example>,
    pad: u32,
}

impl LmTrainee {
    /// Inputs, labels and real tokens of the training examples `batch`.
    fn train_batch(&self, batch: &[usize]) -> Result<(Tensor, Tensor, usize)> {
        let exs: Vec<&Example> = batch.iter().map(|&i| &self.train[i]).collect();
        data::batch(&exs, self.pad, self.model.device())
    }

    /// Tokenises the records (`eval_records` with their own format) and loads the
    /// model: the base (or the checkpoint's weights) made trainable for a full
    /// fine-tune; the base with a new (or the checkpoint's) adapter for LoRA.
    pub(crate) fn load(
        spec: &TrainSpec,
        base: &ModelRecord,
        train: (DatasetFormat, &[serde_json::Value], &Location),
        eval: (DatasetFormat, &[serde_json::Value], &Location),
        checkpoint: Option<&Path>,
    ) -> Result<Self> {
        let tok = Tokenizer::load(base)?;
        let max_pos = ModelConfig::from_json(&base.config)?.max_position_embeddings;
        if spec.seq_len > max_pos {
            return Err(Error::config(
                "seq_len",
                format!("{} exceeds the model's max_position_embeddings ({max_pos})", spec.seq_len),
            ));
        }
        let examples = data::prepare(train.0, train.1, &tok, spec.seq_len, train.2)?;
        if examples.is_empty() {
            return Err(Error::data(
                train.2.clone(),
                "no trainable example (every record is empty or its trained part was cut by seq_len)",
            ));
        }
        let eval = data::prepare(eval.0, eval.1, &tok, spec.seq_len, eval.2)?;
        let model = load_model(spec, base, checkpoint)?;
        let pad = tok.pad_token().or(tok.eos_token()).map(|t| t.id).unwrap_or(0);
        Ok(Self { model, tok, train: examples, eval, pad })
    }
}

impl Trainee for LmTrainee {
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.model.named_trainable_vars()
    }

    fn num_trainable_params(&self) -> usize {
        self.model.num_trainable_params()
    }

    fn num_train(&self) -> usize {
        self.train.len()
    }

    fn num_eval(&self) -> usize {
        self.eval.len()
    }

    fn unit(&self) -> &'static str {
        "sequences"
    }

    fn loss(&self, batch: &[usize], _step: u64, _micro: usize) -> Result<(Tensor, usize)> {
        let (x, y, real) = self.train_batch(batch)?;
        Ok((self.model.loss(&x, &y, ForwardMode::Train)?, real))
    }

    fn loss_and_backward(
        &self,
        batch: &[usize],
        _step: u64,
        _micro: usize,
        scale: f64,
    ) -> Result<(f64, usize, GradStore)> {
        let (x, y, real) = self.train_batch(batch)?;
        let (loss, grads) = self.model.loss_and_backward(&x, &y, scale)?;
        Ok((f64::from(loss), real, grads))
    }

    /// Token-weighted mean loss over the eval sequences (inference path).
    fn eval_loss(&self, batch_size: usize) -> Result<f64> {
        let (mut sum, mut count) = (0f64, 0usize);
        for chunk in self.eval.chunks(batch_size) {
            let exs: Vec<&Example> = chunk.iter().collect();
            let (x, y, _) = data::batch(&exs, self.pad, self.model.device())?;
            let loss = self.model.loss(&x, &y, ForwardMode::Infer)?.to_scalar::<f32>()? as f64;
            let n: usize = chunk.iter().map(|e| e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()).sum();
            sum += loss * n as f64;
            count += n;
        }
        Ok(sum / count.max(1) as f64)
    }

    fn sample(&self, i: usize) -> Option<String> {
        let text = self.tok.decode(&self.train.get(i)?.ids, false).unwrap_or_default();
        Some(text.chars().take(SAMPLE_CHARS).collect())
    }

    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.save_output(dir)
    }

    /// An HF directory for full fine-tunes, a PEFT adapter directory for LoRA.
    fn save_output(&self, dir: &Path) -> Result<()> {
        if self.model.lora_config().is_some() {
            self.model.save_adapter(dir)
        } else {
            self.model.save(dir)
        }
    }
}

/// The model to train (see [`LmTrainee::load`]).
fn load_model(spec: &TrainSpec, base: &ModelRecord, checkpoint: Option<&Path>) -> Result<Model> {
    match &spec.method {
        Method::Full => {
            let opts = LoadOptions { trainable: true, ..Default::default() };
            let mut m = match checkpoint {
                Some(p) => Model::load(p, &opts)?,
                None => Model::load(base, &opts)?,
            };
            // The checkpoint may be rotated away before the end: the tokenizer and
            // generation files always come from the base.
            m.set_side_files_dir(&base.path);
            m.set_mixed_precision(spec.mixed_precision);
            Ok(m)
        }
        Method::Classifier(_) => Err(Error::config("method", "a classifier is not trained by the language-model loop")),
        Method::Lora(cfg) => {
            let mut m = Model::load(base, &LoadOptions::default())?;
            match checkpoint {
                Some(p) => m.load_adapter(p)?,
                None => m.add_lora(cfg, spec.seed)?,
            }
            m.set_mixed_precision(spec.mixed_precision);
            Ok(m)
        }
    }
}
