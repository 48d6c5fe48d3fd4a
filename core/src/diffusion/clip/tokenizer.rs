//! CLIP's tokenizer, as diffusers pipelines call it: `padding="max_length"`,
//! `max_length=model_max_length` (77), `truncation=True`.
//!
//! A pipeline's `tokenizer/` holds `vocab.json` + `merges.txt` (and a `tokenizer.json`
//! when saved by a fast tokenizer). `tokenizer.json` is used as it is; otherwise CLIP's
//! byte-level BPE is built from the vocab and merges the way transformers'
//! `CLIPTokenizer` builds it: NFC, whitespace runs to one space and lowercase; CLIP's
//! split pattern, then the byte-level mapping; BPE with the `</w>` end-of-word suffix;
//! `<|startoftext|> ... <|endoftext|>` around every text.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{Error, IoResultExt, Location, Result};

/// CLIP's pre-tokenization pattern (transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// transformers writes this "no limit" value as `model_max_length` when none is known.
const UNLIMITED: f64 = 1e29;

/// CLIP's tokenizer, padding and truncating to `model_max_length`. Cheap to clone.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// With padding and truncation set.
    padded: std::sync::Arc<tokenizers::Tokenizer>,
    /// Neither padding nor truncation (to see how long a prompt really is).
    plain: std::sync::Arc<tokenizers::Tokenizer>,
    max_length: usize,
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("model_max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_path(path)?;
    let v =
        serde_json::from_str(&text).map_err(|e| Error::data(Location::file(path), format!("not valid JSON: {e}")))?;
    Ok(Some(v))
}

/// A special token's text: a string, or an `AddedToken` object with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Special tokens and length from tokenizer_config.json, overridden by
/// special_tokens_map.json (transformers' precedence).
struct Specials {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
    max_length: usize,
    /// `added_tokens_decoder` of tokenizer_config.json: (id, token).
    added: Vec<(u32, AddedToken)>,
}

fn read_specials(dir: &Path) -> Result<Specials> {
    let mut s = Specials {
        bos: BOS.into(),
        eos: EOS.into(),
        pad: EOS.into(),
        unk: EOS.into(),
        max_length: 77,
        added: Vec::new(),
    };
    let cfg_path = dir.join("tokenizer_config.json");
    let map_path = dir.join("special_tokens_map.json");
    let cfg = read_json(&cfg_path)?;
    let map = read_json(&map_path)?;
    for (path, v) in [(&cfg_path, &cfg), (&map_path, &map)] {
        let Some(v) = v else { continue };
        for (key, slot) in
            [("bos_token", &mut s.bos), ("eos_token", &mut s.eos), ("pad_token", &mut s.pad), ("unk_token", &mut s.unk)]
        {
            match v.get(key) {
                None | Some(Value::Null) => {}
                Some(t) => {
                    *slot = token_text(t).ok_or_else(|| {
                        Error::data(Location::file(path).field(key), format!("expected a token string, got {t}"))
                    })?
                }
            }
        }
    }
    if let Some(v) = &cfg {
        match v.get("model_max_length") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let m = n.as_f64().unwrap_or(0.0);
                if m >= UNLIMITED {
                    // no limit recorded: CLIP's context
                } else if m >= 2.0 && m.fract() == 0.0 {
                    s.max_length = m as usize;
                } else {
                    return Err(Error::data(
                        Location::file(&cfg_path).field("model_max_length"),
                        format!("expected a whole number of at least 2, got {n}"),
                    ));
                }
            }
            Some(other) => {
                return Err(Error::data(
                    Location::file(&cfg_path).field("model_max_length"),
                    format!("expected a number, got {other}"),
                ))
            }
        }
        if let Some(Value::Object(added)) = v.get("added_tokens_decoder") {
            for (id, t) in added {
                let field = format!("added_tokens_decoder.{id}");
                let bad = |why: &str| Error::data(Location::file(&cfg_path).field(&field), why.to_string());
                let id: u32 = id.parse().map_err(|_| bad("the key must be a token id"))?;
                let content = t.get("content").and_then(Value::as_str).ok_or_else(|| bad("missing `content`"))?;
                let flag = |k: &str, d: bool| t.get(k).and_then(Value::as_bool).unwrap_or(d);
                let tok = AddedToken::from(content.to_string(), flag("special", true))
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .single_word(flag("single_word", false))
                    .normalized(flag("normalized", true));
                s.added.push((id, tok));
            }
        }
    }
    Ok(s)
}

fn build_from_vocab(dir: &Path, sp: &Specials) -> Result<tokenizers::Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.exists() || !merges_path.exists() {
        return Err(Error::data(
            Location::file(dir),
            "no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
        ));
    }
    let text = std::fs::read_to_string(&vocab_path).with_path(&vocab_path)?;
    let vocab: HashMap<String, u32> = serde_json::from_str(&text)
        .map_err(|e| Error::data(Location::file(&vocab_path), format!("expected a token -> id object: {e}")))?;
    let text = std::fs::read_to_string(&merges_path).with_path(&merges_path)?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line.split_once(' ').filter(|(_, b)| !b.contains(' ')).ok_or_else(|| {
            Error::data(Location::file(&merges_path).at(i as u64 + 1), "expected two tokens separated by one space")
        })?;
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(Error::data(
                    Location::file(&merges_path).at(i as u64 + 1),
                    format!("token `{part}` is not in vocab.json"),
                ));
            }
        }
        merges.push((a.to_string(), b.to_string()));
    }
    for (field, t) in [("unk_token", &sp.unk), ("bos_token", &sp.bos), ("eos_token", &sp.eos)] {
        if !vocab.contains_key(t.as_str()) {
            return Err(Error::data(
                Location::file(&vocab_path).field(field),
                format!("special token `{t}` is not in the vocabulary"),
            ));
        }
    }
    let bos_id = vocab[sp.bos.as_str()];
    let eos_id = vocab[sp.eos.as_str()];
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), merges)
        .unk_token(sp.unk.clone())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .build()
        .map_err(|e| Error::data(Location::file(&vocab_path), format!("cannot build the BPE model: {e}")))?;
    let internal = |e: tokenizers::Error| Error::Internal(format!("CLIP tokenizer pipeline: {e}"));
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let whitespace =
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ").map_err(internal)?;
    tok.with_normalizer(Some(NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()])))
        .map_err(internal)?;
    let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
        .map_err(internal)?;
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    let mut post = RobertaProcessing::new((sp.eos.clone(), eos_id), (sp.bos.clone(), bos_id));
    post.trim_offsets = false;
    post.add_prefix_space = false;
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let mut added: Vec<AddedToken> = sp.added.iter().map(|(_, t)| t.clone()).collect();
    if added.is_empty() {
        added = [&sp.bos, &sp.eos].into_iter().map(|t| AddedToken::from(t.clone(), true)).collect();
    }
    tok.add_special_tokens(added).map_err(internal)?;
    for (id, t) in &sp.added {
        if tok.token_to_id(&t.content) != Some(*id) {
            return Err(Error::data(
                Location::file(dir.join("tokenizer_config.json")).field(format!("added_tokens_decoder.{id}")),
                format!("token `{}` has another id in vocab.json", t.content),
            ));
        }
    }
    Ok(tok)
}

impl ClipTokenizer {
    /// Loads a pipeline's `tokenizer/` directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let sp = read_specials(dir)?;
        let json = dir.join("tokenizer.json");
        let mut plain = if json.exists() {
            tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| Error::data(Location::file(&json), format!("cannot load tokenizer: {e}")))?
        } else {
            build_from_vocab(dir, &sp)?
        };
        let id = |field: &str, t: &str| -> Result<u32> {
            plain.token_to_id(t).ok_or_else(|| {
                Error::data(
                    Location::file(dir.join("special_tokens_map.json")).field(field),
                    format!("special token `{t}` is not in the vocabulary"),
                )
            })
        };
        let (pad_id, bos_id, eos_id) =
            (id("pad_token", &sp.pad)?, id("bos_token", &sp.bos)?, id("eos_token", &sp.eos)?);
        plain.with_padding(None);
        plain.with_truncation(None).map_err(|e| Error::Internal(format!("CLIP tokenizer: {e}")))?;
        let mut padded = plain.clone();
        padded.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(sp.max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: sp.pad.clone(),
        }));
        padded
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: sp.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::Internal(format!("CLIP tokenizer: {e}")))?;
        Ok(Self {
            padded: std::sync::Arc::new(padded),
            plain: std::sync::Arc::new(plain),
            max_length: sp.max_length,
            pad_id,
            bos_id,
            eos_id,
        })
    }

    /// `model_max_length` (77 for CLIP): every encoding has exactly this many ids.
    pub fn model_max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_token_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_token_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    pub fn vocab_size(&self) -> usize {
        self.plain.get_vocab_size(true)
    }

    fn err(e: tokenizers::Error) -> Error {
        Error::config("prompt", format!("cannot tokenize: {e}"))
    }

    /// The ids of `prompt`, truncated and padded to `model_max_length`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.padded.encode(prompt, true).map_err(Self::err)?.get_ids().to_vec())
    }

    /// [`ClipTokenizer::encode`] for several prompts.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }

    /// The ids of `prompt` with BOS and EOS, neither truncated nor padded (to tell
    /// whether a prompt was cut).
    pub fn encode_full(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.plain.encode(prompt, true).map_err(Self::err)?.get_ids().to_vec())
    }

    /// `[prompts.len(), model_max_length]` u32 ids on `device`.
    pub fn to_tensor(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let rows = self.encode_batch(prompts)?;
        let flat: Vec<u32> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (prompts.len(), self.max_length), device)?)
    }

    /// Text of `ids` (CLIP's `</w>` word ends become spaces).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.plain.decode(ids, skip_special_tokens).map_err(Self::err)?;
        Ok(text.replace("</w>", " ").trim().to_string())
    }
}
