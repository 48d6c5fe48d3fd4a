//! Tokenizers: Hugging Face `tokenizer.json` (through the `tokenizers` crate, offline),
//! or the built-in byte-level tokenizer of the presets; special tokens, BOS/EOS from
//! config.json / generation_config.json / tokenizer_config.json, and chat templates
//! rendered with minijinja (the model's own `chat_template`, ChatML as the fallback).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoResultExt, Location, Result};
use crate::types::ChatMessage;

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// A tokenizer with its special tokens and chat template. Cheap to clone.
#[derive(Clone)]
pub struct Tokenizer {
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    /// Every id that ends generation (generation_config first, then config, then the EOS token).
    eos_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// An upper bound of the input bytes one token covers (see [`Tokenizer::min_tokens`]).
    max_token_bytes: usize,
}

/// Bytes of the longest token string, times 4 for normalizers that shrink text (NFKC
/// folds a 3-byte ligature into 2 bytes): no token covers more input bytes.
/// Bytes of text [`Tokenizer::encode_long`] tokenises at once.
pub(crate) const LONG_TEXT_PIECE: usize = 256 << 10;

/// The first char boundary of `s` at or after `i` (`s.len()` past the end).
fn ceil_char_boundary(s: &str, i: usize) -> usize {
    (i..s.len()).find(|&j| s.is_char_boundary(j)).unwrap_or(s.len())
}

fn max_token_bytes(inner: &tokenizers::Tokenizer) -> usize {
    inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1) * 4
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_path(path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::data(Location::file(path), e.to_string()))
}

/// A token in tokenizer_config.json: `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Token ids given as a number or a list; an id beyond u32 names no token and is
/// skipped, never wrapped onto another id.
pub(crate) fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect(),
        _ => Vec::new(),
    }
}

impl Tokenizer {
    /// The tokenizer of a registry record or model directory ([`Tokenizer::from_dir`]).
    pub fn load(source: impl crate::models::ModelSource) -> Result<Self> {
        Self::from_dir(source.model_dir())
    }

    /// Loads `tokenizer.json` from a model directory, with the special tokens and chat
    /// template of tokenizer_config.json, config.json and generation_config.json.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).with_path(&tok_path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::data(Location::file(&tok_path), format!("cannot load tokenizer: {e}")))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json_opt(&tc_path)?.unwrap_or(Value::Null);
        let config = read_json_opt(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let gen = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let special = |key: &str, id_key: &str| -> Option<SpecialToken> {
            if let Some(text) = token_text(tc.get(key)) {
                if let Some(id) = inner.token_to_id(&text) {
                    return Some(SpecialToken { text, id });
                }
            }
            let id =
                ids_of(gen.get(id_key)).into_iter().next().or_else(|| ids_of(config.get(id_key)).into_iter().next())?;
            let text = inner.id_to_token(id)?;
            Some(SpecialToken { text, id })
        };
        let bos = special("bos_token", "bos_token_id");
        let eos = special("eos_token", "eos_token_id");
        let pad = special("pad_token", "pad_token_id");
        let mut eos_ids = ids_of(gen.get("eos_token_id"));
        for id in ids_of(config.get("eos_token_id")).into_iter().chain(eos.as_ref().map(|t| t.id)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take `default`.
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let p = dir.join("chat_template.jinja");
                if p.exists() {
                    Some(std::fs::read_to_string(&p).with_path(&p)?)
                } else {
                    None
                }
            }
        };
        Ok(Self {
            max_token_bytes: max_token_bytes(&inner),
            inner: std::sync::Arc::new(inner),
            bos,
            eos,
            pad,
            eos_ids,
            add_bos: tc.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            add_eos: tc.get("add_eos_token").and_then(Value::as_bool).unwrap_or(false),
            chat_template,
        })
    }

    /// The built-in byte-level tokenizer of the presets: ids 0..=255 are bytes, then
    /// `<|endoftext|>` (BOS/EOS), `<|im_start|>`, `<|im_end|>` (also EOS), `<|pad|>`.
    pub fn byte_level() -> Result<Self> {
        let json = byte_level::tokenizer_json().to_string();
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| Error::Internal(format!("built-in tokenizer: {e}")))?;
        let sp = |i: usize| SpecialToken { text: byte_level::SPECIALS[i].1.to_string(), id: byte_level::SPECIALS[i].0 };
        Ok(Self {
            max_token_bytes: max_token_bytes(&inner),
            inner: std::sync::Arc::new(inner),
            bos: Some(sp(0)),
            eos: Some(sp(0)),
            pad: Some(sp(3)),
            eos_ids: vec![sp(0).id, sp(2).id],
            add_bos: false,
            add_eos: false,
            chat_template: Some(CHATML_TEMPLATE.to_string()),
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's post-processor
    /// runs and BOS/EOS are added when tokenizer_config.json asks for them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| Error::Compute(format!("tokenizer: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            if let Some(b) = self.bos.as_ref().filter(|_| self.add_bos) {
                if ids.first() != Some(&b.id) {
                    ids.insert(0, b.id);
                }
            }
            if let Some(e) = self.eos.as_ref().filter(|_| self.add_eos) {
                if ids.last() != Some(&e.id) {
                    ids.push(e.id);
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| Error::Compute(format!("tokenizer: {e}")))
    }

    /// A lower bound of the tokens `text` encodes to, known without tokenising it (so a
    /// text that cannot fit a context is refused before any work).
    pub fn min_tokens(&self, text: &str) -> usize {
        text.len() / self.max_token_bytes
    }

    /// The start of `text` that holds at least its first `n` tokens: `n` times the
    /// longest token's bytes, extended to the next whitespace (within 4 KiB) so that no
    /// word is cut; all of `text` when it is shorter. Tokenising the prefix instead of a
    /// huge text keeps memory bounded; the first `n` tokens are the same for tokenizers
    /// that split words at whitespace before merging.
    pub(crate) fn prefix_for_tokens<'a>(&self, text: &'a str, n: usize) -> &'a str {
        let want = n.saturating_mul(self.max_token_bytes);
        if text.len() <= want {
            return text;
        }
        let end = ceil_char_boundary(text, want);
        let window = &text[end..ceil_char_boundary(text, end.saturating_add(4096).min(text.len()))];
        let end = end + window.find(char::is_whitespace).unwrap_or(window.len());
        &text[..end]
    }

    /// Token ids of a text of any length, tokenised in pieces of about
    /// [`LONG_TEXT_PIECE`] bytes cut after a line break (else after whitespace, else
    /// anywhere) so that memory stays bounded: the tokenizer's own bookkeeping takes
    /// ~200 bytes per byte of text. Texts shorter than a piece (nearly all) are
    /// tokenised whole, exactly as [`Tokenizer::encode`]; at each cut of a longer one the
    /// tokens may differ from tokenising it whole.
    pub(crate) fn encode_long(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let piece = if rest.len() <= LONG_TEXT_PIECE {
                rest
            } else {
                let min = ceil_char_boundary(rest, LONG_TEXT_PIECE);
                let max = ceil_char_boundary(rest, (2 * LONG_TEXT_PIECE).min(rest.len()));
                let window = &rest[min..max];
                let cut = window
                    .find('\n')
                    .or_else(|| window.find(char::is_whitespace))
                    .map_or(min, |i| min + i + window[i..].chars().next().map_or(1, char::len_utf8));
                &rest[..cut]
            };
            ids.extend(self.encode(piece, false)?);
            rest = &rest[piece.len()..];
        }
        Ok(ids)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The largest id the tokenizer can produce (added tokens included), with its text.
    pub(crate) fn max_token(&self) -> Option<(u32, String)> {
        self.inner.get_vocab(true).into_iter().max_by_key(|(_, id)| *id).map(|(t, id)| (id, t))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    pub fn eos_token(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    pub fn pad_token(&self) -> Option<&SpecialToken> {
        self.pad.as_ref()
    }

    /// The BOS id that `encode(text, true)` puts first (tokenizer_config.json's
    /// `add_bos_token`); training sequences start with it too, so a fine-tuned model sees
    /// the same start at generation.
    pub fn bos_prefix(&self) -> Option<u32> {
        self.bos.as_ref().filter(|_| self.add_bos).map(|b| b.id)
    }

    /// Ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The model's own chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (ChatML when it has none), as
    /// transformers' `apply_chat_template(..., tokenize=False)` does.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos.as_ref().map(|t| t.text.as_str()),
            self.eos.as_ref().map(|t| t.text.as_str()),
        )
    }
}

/// Renders a Hugging Face chat template (Jinja) with minijinja, configured like
/// transformers (trim_blocks, lstrip_blocks, `raise_exception`, Python string methods).
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
    env.add_filter("tojson", python_tojson);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| Error::config("chat_template", format!("invalid template: {e}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
    })
    .map_err(|e| Error::config("chat_template", format!("rendering failed: {e}")))
}

/// `tojson` as transformers defines it for chat templates: Python's
/// `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, whose spacing
/// (`", "`, `": "`) differs from minijinja's compact built-in.
fn python_tojson(
    value: &minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&v, indent, sort_keys.unwrap_or(false), ensure_ascii.unwrap_or(false), 0, &mut out);
    Ok(out)
}

fn write_py_json(v: &Value, indent: Option<usize>, sort: bool, ascii: bool, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::String(s) => {
            let quoted = serde_json::to_string(s).unwrap_or_default();
            if ascii {
                for c in quoted.chars() {
                    if c.is_ascii() {
                        out.push(c);
                    } else {
                        let mut buf = [0u16; 2];
                        for u in c.encode_utf16(&mut buf) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                }
            } else {
                out.push_str(&quoted);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_py_json(x, indent, sort, ascii, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(m) if !m.is_empty() => {
            let mut items: Vec<(&String, &Value)> = m.iter().collect();
            if sort {
                items.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_py_json(&Value::String(k.clone()), indent, sort, ascii, level + 1, out);
                out.push_str(": ");
                write_py_json(x, indent, sort, ascii, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// ChatML, the fallback chat template (Jinja, as in tokenizer_config.json).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A byte-level tokenizer: one token per byte (ids 0..=255) plus four specials. It is
/// written as a standard `tokenizer.json` (byte-level BPE with no merges), so the HF
/// tokenizers library loads it as is.
pub mod byte_level {
    use serde_json::{json, Map, Value};

    /// (id, text) of the special tokens.
    pub const SPECIALS: [(u32, &str); 4] =
        [(256, "<|endoftext|>"), (257, "<|im_start|>"), (258, "<|im_end|>"), (259, "<|pad|>")];

    /// 256 bytes + the specials.
    pub const VOCAB_SIZE: usize = 260;

    /// GPT-2's reversible byte -> printable char map (used by byte-level BPE).
    pub fn byte_to_char(b: u8) -> char {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        if printable {
            return char::from(b);
        }
        // Non-printable bytes map to 256.. in the order they appear.
        let mut n = 0u32;
        for x in 0..b {
            let p = (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || (0xAE..=0xFF).contains(&x);
            if !p {
                n += 1;
            }
        }
        char::from_u32(256 + n).unwrap_or('?')
    }

    /// The tokenizer.json document.
    pub fn tokenizer_json() -> Value {
        let mut vocab = Map::new();
        for b in 0..=255u8 {
            vocab.insert(byte_to_char(b).to_string(), json!(b));
        }
        let added: Vec<Value> = SPECIALS
            .iter()
            .map(|(id, t)| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                                   "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::byte_level;

    #[test]
    fn token_ids_beyond_u32_are_skipped_not_wrapped() {
        let v = serde_json::json!([2, 4294967298u64, 7]);
        assert_eq!(super::ids_of(Some(&v)), vec![2, 7]);
        assert!(super::ids_of(Some(&serde_json::json!(4294967298u64))).is_empty());
    }

    #[test]
    fn tojson_spaces_like_python() {
        let t = r#"{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|{{ "é" | tojson(ensure_ascii=true) }}"#;
        let x = serde_json::json!({"name": "f", "args": {"x": 1.5, "y": [1, "é<\"\n"], "z": {}}, "n": null, "t": true, "e": []});
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", super::python_tojson);
        let out = env.render_str(t, minijinja::context! { x => x }).unwrap();
        // Expected strings printed by Python's json.dumps(x, ensure_ascii=False[, indent=2 | sort_keys=True]).
        let want = [
            r#"{"name": "f", "args": {"x": 1.5, "y": [1, "é<\"\n"], "z": {}}, "n": null, "t": true, "e": []}"#,
            "{\n  \"name\": \"f\",\n  \"args\": {\n    \"x\": 1.5,\n    \"y\": [\n      1,\n      \"é<\\\"\\n\"\n    ],\n    \"z\": {}\n  },\n  \"n\": null,\n  \"t\": true,\n  \"e\": []\n}",
            r#"{"args": {"x": 1.5, "y": [1, "é<\"\n"], "z": {}}, "e": [], "n": null, "name": "f", "t": true}"#,
            r#""\u00e9""#,
        ]
        .join("|");
        assert_eq!(out, want);
    }

    #[test]
    fn byte_tokenizer_loads_in_hf_tokenizers_and_round_trips() {
        let json = byte_level::tokenizer_json().to_string();
        let tok = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        let text = "héllo <|im_end|>\n\tworld";
        let enc = tok.encode(text, false).unwrap();
        let ids = enc.get_ids();
        let mut expect: Vec<u32> = "héllo ".bytes().map(u32::from).collect();
        expect.push(258);
        expect.extend("\n\tworld".bytes().map(u32::from));
        assert_eq!(ids, expect.as_slice());
        assert_eq!(tok.decode(ids, false).unwrap(), text);
        assert_eq!(tok.get_vocab_size(true), byte_level::VOCAB_SIZE);
    }
}
