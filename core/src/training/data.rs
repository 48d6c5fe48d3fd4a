//! Training data: tokenise records with the base model's tokenizer, mask prompts from
//! the loss, pack plain text into full sequences, and order batches from the seed.
//!
//! | format | input | labels |
//! |---|---|---|
//! | `text` | all texts joined with EOS, cut into `seq_len` blocks | every token |
//! | `completion` | prompt + completion + EOS | completion + EOS |
//! | `instruction` | alpaca prompt + output + EOS | output + EOS |
//! | `chat` | the chat template's rendering | assistant turns only |

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::error::{Error, Location, Result};
use crate::tokenizer::Tokenizer;
use crate::types::{ChatMessage, DatasetFormat};

/// Label of a position that does not count in the loss.
pub(crate) const IGNORE: i64 = -100;

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Example {
    pub(crate) ids: Vec<u32>,
    pub(crate) labels: Vec<i64>,
}

/// The alpaca prompt used for `instruction` records.
pub(crate) fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        format!("### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!("### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
    }
}

fn field<'a>(rec: &'a Value, name: &str, loc: &Location) -> Result<&'a str> {
    rec.get(name).and_then(Value::as_str).ok_or_else(|| Error::data(loc.clone().field(name), "missing string"))
}

/// Which records go to evaluation: the same selection as `DatasetStore::split`
/// (shuffle `0..n` with ChaCha8 from `seed`, the first `round(n * fraction)` are eval).
pub(crate) fn eval_mask(n: usize, fraction: f64, seed: u64) -> Result<Vec<bool>> {
    let n_val = ((n as f64) * fraction).round() as usize;
    if n_val == 0 || n_val >= n {
        return Err(Error::config(
            "eval_fraction",
            format!("{fraction} of {n} records leaves an empty half; use a larger dataset or another fraction"),
        ));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut mask = vec![false; n];
    for &i in &order[..n_val] {
        mask[i] = true;
    }
    Ok(mask)
}

/// Tokenises `records` (stored, normalised form) into training sequences.
pub(crate) fn prepare(
    format: DatasetFormat,
    records: &[Value],
    tok: &Tokenizer,
    seq_len: usize,
    source: &Location,
) -> Result<Vec<Example>> {
    let eos = tok.eos_token().map(|t| t.id);
    // As `encode(text, true)` does at generation (chat templates write their own BOS).
    let bos = tok.bos_prefix();
    let mut out = Vec::new();
    if format == DatasetFormat::Text {
        let mut stream = Vec::new();
        for (i, r) in records.iter().enumerate() {
            stream.extend(bos);
            stream.extend(tok.encode_long(field(r, "text", &source.clone().at(i as u64 + 1))?)?);
            stream.extend(eos);
        }
        for chunk in stream.chunks(seq_len) {
            if chunk.len() >= 2 {
                out.push(Example { ids: chunk.to_vec(), labels: chunk.iter().map(|&t| t as i64).collect() });
            }
        }
        return Ok(out);
    }
    for (i, r) in records.iter().enumerate() {
        let loc = source.clone().at(i as u64 + 1);
        // (text, trained) segments, tokenised one by one and concatenated.
        let segments: Vec<(String, bool)> = match format {
            DatasetFormat::Completion => {
                vec![(field(r, "prompt", &loc)?.to_string(), false), (field(r, "completion", &loc)?.to_string(), true)]
            }
            DatasetFormat::Instruction => vec![
                (
                    alpaca_prompt(field(r, "instruction", &loc)?, r.get("input").and_then(Value::as_str).unwrap_or("")),
                    false,
                ),
                (field(r, "output", &loc)?.to_string(), true),
            ],
            DatasetFormat::Chat => chat_segments(r, tok, &loc, seq_len)?,
            DatasetFormat::Image => {
                return Err(Error::config("dataset", "an image dataset trains a diffusion model, not a language model"))
            }
            DatasetFormat::Tabular | DatasetFormat::Text => {
                return Err(Error::config(
                    "dataset",
                    "a tabular dataset cannot train a language model (use text, completion, instruction or chat)",
                ))
            }
        };
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        if let Some(b) = bos.filter(|_| format != DatasetFormat::Chat) {
            ids.push(b);
            labels.push(IGNORE);
        }
        for (text, trained) in &segments {
            // Only the first seq_len tokens are kept: a huge record is not tokenised whole.
            let Some(room) = seq_len.checked_sub(ids.len()).filter(|&n| n > 0) else { break };
            let t = tok.encode(tok.prefix_for_tokens(text, room + 1), false)?;
            labels.extend(t.iter().map(|&x| if *trained { x as i64 } else { IGNORE }));
            ids.extend(t);
        }
        if format != DatasetFormat::Chat {
            if let Some(e) = eos {
                ids.push(e);
                labels.push(e as i64);
            }
        }
        ids.truncate(seq_len);
        labels.truncate(seq_len);
        // Skip sequences with nothing to learn (the first label never counts).
        if ids.len() >= 2 && labels.iter().skip(1).any(|&l| l != IGNORE) {
            out.push(Example { ids, labels });
        }
    }
    Ok(out)
}

/// Splits a conversation's rendering into prompt parts (masked) and assistant parts
/// (trained) by rendering growing prefixes of the conversation, up to the message that
/// takes the rendering past `seq_len` tokens' worth of text.
fn chat_segments(r: &Value, tok: &Tokenizer, loc: &Location, seq_len: usize) -> Result<Vec<(String, bool)>> {
    let msgs: Vec<ChatMessage> = r
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::data(loc.clone().field("messages"), "missing"))?
        .iter()
        .map(|m| {
            ChatMessage::new(
                m.get("role").and_then(Value::as_str).unwrap_or("user"),
                m.get("content").and_then(Value::as_str).unwrap_or(""),
            )
        })
        .collect();
    let mut segments = Vec::new();
    let mut done = String::new();
    let not_prefix = || {
        Error::data(
            loc.clone().field("messages"),
            "the chat template does not render conversations incrementally; cannot mask prompts",
        )
    };
    for k in 0..msgs.len() {
        if tok.prefix_for_tokens(&done, seq_len + 1).len() < done.len() {
            break;
        }
        if msgs[k].role == "assistant" {
            let with_prompt = tok.apply_chat_template(&msgs[..k], true)?;
            let head = with_prompt.strip_prefix(done.as_str()).ok_or_else(not_prefix)?;
            segments.push((head.to_string(), false));
            let full = tok.apply_chat_template(&msgs[..=k], false)?;
            let body = full.strip_prefix(with_prompt.as_str()).ok_or_else(not_prefix)?;
            segments.push((body.to_string(), true));
            done = full;
        } else {
            let full = tok.apply_chat_template(&msgs[..=k], false)?;
            let part = full.strip_prefix(done.as_str()).ok_or_else(not_prefix)?;
            segments.push((part.to_string(), false));
            done = full;
        }
    }
    Ok(segments)
}

/// The example order of `epoch`: a shuffle of `0..n` from `seed + epoch`.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order
}

/// `[b, t]` inputs (u32) and labels (i64), right-padded to the longest example with
/// `pad` / -100; also the number of real tokens.
pub(crate) fn batch(examples: &[&Example], pad: u32, device: &Device) -> Result<(Tensor, Tensor, usize)> {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut labels = Vec::with_capacity(b * t);
    let mut real = 0;
    for e in examples {
        real += e.ids.len();
        ids.extend(&e.ids);
        ids.extend(std::iter::repeat_n(pad, t - e.ids.len()));
        labels.extend(&e.labels);
        labels.extend(std::iter::repeat_n(IGNORE, t - e.ids.len()));
    }
    Ok((Tensor::from_vec(ids, (b, t), device)?, Tensor::from_vec(labels, (b, t), device)?, real))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn completion_masks_prompt_and_text_is_packed() {
        let tok = Tokenizer::byte_level().unwrap();
        let loc = Location::default();
        let recs = vec![json!({"prompt": "ab", "completion": "cd"})];
        let ex = prepare(DatasetFormat::Completion, &recs, &tok, 64, &loc).unwrap();
        assert_eq!(ex[0].ids, vec![97, 98, 99, 100, 256]);
        assert_eq!(ex[0].labels, vec![-100, -100, 99, 100, 256]);
        let recs = vec![json!({"text": "abc"}), json!({"text": "de"})];
        let ex = prepare(DatasetFormat::Text, &recs, &tok, 4, &loc).unwrap();
        assert_eq!(ex.iter().map(|e| e.ids.len()).collect::<Vec<_>>(), vec![4, 3]);
        assert_eq!(ex[0].ids, vec![97, 98, 99, 256]);
    }

    #[test]
    fn huge_records_are_tokenised_only_as_far_as_they_are_used() {
        let tok = Tokenizer::byte_level().unwrap();
        let loc = Location::default();
        let huge = "word ".repeat(2_000_000);
        for (format, rec) in [
            (DatasetFormat::Completion, json!({"prompt": "ab", "completion": huge})),
            (DatasetFormat::Instruction, json!({"instruction": "do", "output": huge})),
            (
                DatasetFormat::Chat,
                json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": huge}, {"role": "user", "content": huge}]}),
            ),
        ] {
            // The same record with every text cut to 200 bytes: more than 64 tokens.
            fn short(v: &Value) -> Value {
                match v {
                    Value::String(s) => Value::String(s[..s.len().min(200)].to_string()),
                    Value::Array(a) => Value::Array(a.iter().map(short).collect()),
                    Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), short(v))).collect()),
                    other => other.clone(),
                }
            }
            let whole = prepare(format, &[short(&rec)], &tok, 64, &loc).unwrap();
            let cut = prepare(format, &[rec], &tok, 64, &loc).unwrap();
            assert_eq!(cut, whole, "{format:?}");
            assert_eq!(cut[0].ids.len(), 64, "{format:?}");
        }
    }

    #[test]
    fn long_texts_are_tokenised_in_pieces_without_losing_a_byte() {
        let tok = Tokenizer::byte_level().unwrap();
        let text: String =
            (0..100_000).map(|i| if i % 7 == 0 { "é line\n".to_string() } else { format!("ü{i} ") }).collect();
        assert!(text.len() > 2 * crate::tokenizer::LONG_TEXT_PIECE);
        assert_eq!(tok.encode_long(&text).unwrap(), tok.encode(&text, false).unwrap());
        let no_space = "é".repeat(3 * crate::tokenizer::LONG_TEXT_PIECE / 2);
        assert_eq!(tok.encode_long(&no_space).unwrap(), tok.encode(&no_space, false).unwrap());
    }

    #[test]
    fn sequences_start_like_generation_prompts_when_the_tokenizer_adds_bos() {
        let dir = tempfile::tempdir().unwrap();
        let tj = crate::tokenizer::byte_level::tokenizer_json().to_string();
        std::fs::write(dir.path().join("tokenizer.json"), tj).unwrap();
        let tc = json!({"add_bos_token": true, "bos_token": "<|im_start|>", "eos_token": "<|endoftext|>"});
        std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.bos_prefix(), Some(257));
        let recs = vec![json!({"prompt": "ab", "completion": "cd"})];
        let ex = prepare(DatasetFormat::Completion, &recs, &tok, 64, &Location::default()).unwrap();
        let prompt = tok.encode("ab", true).unwrap();
        assert_eq!(prompt, [257, 97, 98]);
        assert_eq!(ex[0].ids[..3], prompt[..]);
        assert_eq!(ex[0].labels, vec![-100, -100, -100, 99, 100, 256]);
        let ex = prepare(DatasetFormat::Text, &[json!({"text": "ab"})], &tok, 64, &Location::default()).unwrap();
        assert_eq!(ex[0].ids, vec![257, 97, 98, 256]);
    }

    #[test]
    fn chat_trains_on_assistant_turns_only() {
        let tok = Tokenizer::byte_level().unwrap();
        let recs =
            vec![json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})];
        let ex = prepare(DatasetFormat::Chat, &recs, &tok, 256, &Location::default()).unwrap();
        let trained: Vec<u32> = ex[0].labels.iter().filter(|&&l| l >= 0).map(|&l| l as u32).collect();
        let text = tok.decode(&trained, false).unwrap();
        assert!(text.starts_with("yo"), "{text:?}");
        assert!(!text.contains("hi") && !text.contains("user"), "{text:?}");
    }

    #[test]
    fn order_is_deterministic_per_epoch() {
        assert_eq!(epoch_order(10, 1, 0), epoch_order(10, 1, 0));
        assert_ne!(epoch_order(10, 1, 0), epoch_order(10, 1, 1));
        let m = eval_mask(10, 0.2, 3).unwrap();
        assert_eq!(m.iter().filter(|&&x| x).count(), 2);
    }
}
