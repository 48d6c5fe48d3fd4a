//! Tokenizers: the built-in byte-level tokenizer used by presets. HF `tokenizer.json`
//! loading and chat templates arrive with the model issue.

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
