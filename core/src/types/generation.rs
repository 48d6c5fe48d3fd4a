//! Generation: loading options, request settings, prompts, results, usage records.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::ids::{GenerationId, ModelId};
use super::names::named_enum;
use crate::error::{Error, Result};

/// Used when neither the request nor the model's generation_config.json sets it.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// How to load a model for generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorOptions {
    /// For an adapter: fold it into the base weights at load (fastest). With `false` the
    /// base stays as it is and adapters are applied per request, so several adapters
    /// of one base share one loaded model ([`Generator::add_adapter`],
    /// [`GenerationConfig::adapter`]).
    pub merge_adapter: bool,
    /// Compute dtype: `f32` (default), `bf16` or `f16`.
    pub dtype: String,
    /// Record every call in the catalog's `generations` table (usage statistics).
    pub record: bool,
    /// `q8_0`: hold the linear layers' weights as 8-bit integers in blocks of 32 with
    /// one scale each (GGML's q8_0), ~3.5x less memory to stream per token, each
    /// layer's input quantized to 8-bit blocks too (as GGML does); outputs differ
    /// slightly from f32. `bf16`: hold them as bfloat16 (each weight rounded to nearest
    /// even; half of f32's bytes), each layer's input rounded to bfloat16 too (as GGML's
    /// bf16 and PyTorch's autocast do), the products exact and summed in f32 (logits
    /// within 1% of their largest magnitude on the test models). The rest of the model
    /// (norms, attention, sampling) stays f32, and both need `dtype` `f32`. Adapters are
    /// merged first (or stay f32 when separate).
    pub quantize: Option<String>,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        Self { merge_adapter: true, dtype: "f32".into(), record: true, quantize: None }
    }
}

/// Settings of one request. Unset fields come from the model's
/// `generation_config.json` (as transformers does), then from the built-in defaults:
/// greedy decoding (temperature 0), no top-k / top-p / min-p filter, no repetition
/// penalty, [`DEFAULT_MAX_NEW_TOKENS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Most tokens to generate (also bounded by the model's context).
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy (argmax); above 0 samples from softmax(logits / temperature).
    pub temperature: Option<f64>,
    /// Sample among the k most likely tokens only (0 = off).
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to top_p (1 = off).
    pub top_p: Option<f64>,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: Option<f64>,
    /// Penalise tokens already in the prompt or output (CTRL; 1 = off).
    pub repetition_penalty: Option<f64>,
    /// Seed of the sampler: same seed, same prompt, same settings -> same output.
    /// Unset: a random seed, reported in [`Generation::seed`].
    pub seed: Option<u64>,
    /// Stop before any of these strings (matched across token boundaries; not included
    /// in the text). One string is a one-element list.
    #[serde(deserialize_with = "one_or_many")]
    #[schemars(with = "Vec<String>")]
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// The adapter to apply (a model reference) on a generator loaded with
    /// `merge_adapter: false`; loaded on first use. Unset: the generator's own.
    pub adapter: Option<String>,
}

/// `stop` as one string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A prompt: text (tokenised with the model's special tokens, e.g. BOS), chat messages
/// (rendered with the model's chat template, ChatML when it has none), or token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}
impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}
impl From<&String> for Prompt {
    fn from(s: &String) -> Self {
        Prompt::Text(s.clone())
    }
}
impl From<Vec<ChatMessage>> for Prompt {
    fn from(m: Vec<ChatMessage>) -> Self {
        Prompt::Chat(m)
    }
}
impl From<&[ChatMessage]> for Prompt {
    fn from(m: &[ChatMessage]) -> Self {
        Prompt::Chat(m.to_vec())
    }
}
impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Tokens(ids)
    }
}
impl From<&[u32]> for Prompt {
    fn from(ids: &[u32]) -> Self {
        Prompt::Tokens(ids.to_vec())
    }
}
impl From<&Prompt> for Prompt {
    fn from(p: &Prompt) -> Self {
        p.clone()
    }
}

/// Why generation ended.
impl Prompt {
    /// A prompt from JSON as the bindings receive it: a string (text), an array of
    /// `{role, content}` objects (chat) or an array of whole numbers (token ids).
    /// Anything else is `invalid_config` naming `field` (and the element, e.g.
    /// `prompt[1].content`).
    pub fn from_json(value: Value, field: &str) -> Result<Prompt> {
        const EXPECTED: &str = "a string, a list of {role, content} messages, or a list of token ids";
        let items = match value {
            Value::String(s) => return Ok(Prompt::Text(s)),
            Value::Array(items) => items,
            other => return Err(Error::config(field, format!("must be {EXPECTED}, got {}", json_kind(&other)))),
        };
        if items.first().is_some_and(Value::is_number) {
            let ids = items.iter().enumerate().map(|(i, v)| {
                v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    Error::config(format!("{field}[{i}]"), format!("must be a token id (0..2^32), got {v}"))
                })
            });
            return Ok(Prompt::Tokens(ids.collect::<Result<_>>()?));
        }
        let mut messages = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let Value::Object(mut m) = item else {
                return Err(Error::config(
                    format!("{field}[{i}]"),
                    format!("must be a {{role, content}} message, got {}", json_kind(&item)),
                ));
            };
            let mut text = |key: &str| match m.remove(key) {
                Some(Value::String(s)) => Ok(s),
                Some(other) => Err(Error::config(
                    format!("{field}[{i}].{key}"),
                    format!("must be a string, got {}", json_kind(&other)),
                )),
                None => Err(Error::config(format!("{field}[{i}].{key}"), "is missing")),
            };
            let (role, content) = (text("role")?, text("content")?);
            if let Some(extra) = m.keys().next() {
                return Err(Error::config(
                    format!("{field}[{i}].{extra}"),
                    "unknown key (a message has role and content)",
                ));
            }
            messages.push(ChatMessage { role, content });
        }
        Ok(Prompt::Chat(messages))
    }
}

/// A JSON value's kind, for messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

named_enum! {
    /// Why generation ended.
    pub enum FinishReason("finish_reason") {
        /// An end-of-sequence token was generated.
        Eos = "eos",
        /// A stop sequence appeared.
        Stop = "stop",
        /// `max_new_tokens` or the model's context was reached.
        Length = "length",
    }
}

named_enum! {
    /// What a recorded generation call was.
    pub enum GenerationKind("kind") {
        Generate = "generate",
        Stream = "stream",
        Batch = "batch",
        Score = "score",
        /// Text-to-image ([`crate::ImageGenerator`]).
        Txt2Img = "txt2img",
    }
}

/// Where the time of one request went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    /// From the call to the first generated token (tokenising + the prompt's forward pass).
    pub ttft_ms: f64,
    /// After the first token, until the end.
    pub decode_ms: f64,
    pub total_ms: f64,
    /// Prompt tokens per second of the first forward pass.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens after the first, per second of decoding.
    pub decode_tokens_per_s: f64,
}

/// The result of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Generation {
    /// The catalog row of this call (`None` when recording is off).
    pub id: Option<GenerationId>,
    /// The model used: the adapter's id when one was applied.
    pub model_id: ModelId,
    /// The generated text (without the prompt, special tokens or the stop sequence).
    pub text: String,
    /// Every generated token (an end-of-sequence token included).
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The stop sequence that ended generation.
    pub stop_sequence: Option<String>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The sampler's seed (`None` for greedy decoding).
    pub seed: Option<u64>,
    pub timings: Timings,
}

/// One piece of a stream: valid UTF-8 text and the tokens it came from. Pieces add up
/// to [`Generation::text`]; a token that ends inside a character (or text that may
/// start a stop sequence) is held back until it resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StreamChunk {
    pub text: String,
    pub token_ids: Vec<u32>,
}

/// Options of [`crate::Generator::score`] as the bindings take them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreOptions {
    /// The adapter to apply, as [`GenerationConfig::adapter`].
    pub adapter: Option<String>,
}

/// Loss and perplexity of one text under the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Score {
    /// Mean next-token cross-entropy (nats) over the predicted tokens.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens predicted (the text's tokens minus the first).
    pub tokens: usize,
}

/// A row of the catalog's `generations` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerationRecord {
    pub id: GenerationId,
    pub model_id: ModelId,
    pub base_model_id: ModelId,
    pub kind: GenerationKind,
    /// The resolved settings.
    pub params: Value,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub finish_reason: Option<FinishReason>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub created_at: String,
}

/// Which rows [`ModelRegistry::generations`] returns (newest first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationFilter {
    /// Only calls of this model (a reference); unset: every model.
    pub model: Option<String>,
    pub kind: Option<GenerationKind>,
    pub limit: Option<usize>,
}

/// Totals of a model's recorded calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelUsage {
    pub model_id: ModelId,
    /// Every recorded call (generations and scoring).
    pub calls: u64,
    /// Prompts generated for (a batch counts each prompt).
    pub generations: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    pub total_duration_ms: f64,
    pub last_used_at: Option<String>,
}
