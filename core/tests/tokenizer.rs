//! Tokenizers: ids against the reference made with transformers 5.23 (see
//! tests/fixtures/README.md: byte-level BPE, 512 tokens, shared by the three models),
//! special tokens and chat templates.
#![allow(clippy::unwrap_used)]

use anneal::{ChatMessage, Tokenizer};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

#[test]
fn ids_match_the_reference() {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/tokenizer-reference.json")).unwrap())
            .unwrap();
    for model in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        let tok = Tokenizer::from_dir(format!("{FIXTURES}/{model}")).unwrap();
        let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
        let text = r["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&r["ids"]), "{model}");
        assert_eq!(tok.decode(&ids(&r["ids"]), false).unwrap(), r["decoded"].as_str().unwrap());
        for (text, want) in r["more"].as_object().unwrap() {
            assert_eq!(tok.encode(text, false).unwrap(), ids(want), "{model}: {text:?}");
            assert_eq!(tok.decode(&ids(want), false).unwrap(), *text);
        }
    }
}

#[test]
fn specials_and_template_from_tokenizer_config() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(format!("{FIXTURES}/tiny-llama/tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
    let t = Tokenizer::from_dir(d.path()).unwrap();
    assert!(t.chat_template().is_none());
    // No template: ChatML.
    let msgs = [ChatMessage::new("user", "hi")];
    assert_eq!(t.apply_chat_template(&msgs, true).unwrap(), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    // A Llama-2-like template using bos_token, raise_exception, strip() and trim_blocks.
    let tmpl = "{{ bos_token }}{% for m in messages %}\n{% if m['role'] == 'user' %}[INST] {{ m['content'].strip() }} [/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% else %}{{ raise_exception('bad role') }}{% endif %}\n{% endfor %}";
    let vocab: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("tokenizer.json")).unwrap()).unwrap();
    let some_token = vocab["model"]["vocab"].as_object().unwrap().keys().next().unwrap().clone();
    let tc = serde_json::json!({"chat_template": tmpl, "bos_token": some_token, "eos_token": {"content": some_token},
                                "add_bos_token": true});
    std::fs::write(d.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(d.path().join("generation_config.json"), r#"{"eos_token_id": [7, 9]}"#).unwrap();
    let t = Tokenizer::from_dir(d.path()).unwrap();
    let bos = t.bos_token().unwrap().clone();
    assert_eq!(bos.text, some_token);
    assert_eq!(t.eos_token_ids()[..2], [7, 9]);
    assert!(t.eos_token_ids().contains(&bos.id));
    let out = t
        .apply_chat_template(&[ChatMessage::new("user", "  hello "), ChatMessage::new("assistant", "yo")], false)
        .unwrap();
    assert_eq!(out, format!("{some_token}[INST] hello [/INST] yo{some_token}"));
    let e = t.apply_chat_template(&[ChatMessage::new("tool", "x")], false).unwrap_err();
    assert!(e.to_string().contains("bad role"), "{e}");
    let ids = t.encode("ab", true).unwrap();
    assert_eq!(ids[0], bos.id, "add_bos_token prepends BOS");
    assert_eq!(&ids[1..], t.encode("ab", false).unwrap().as_slice());
}

#[test]
fn byte_level_tokenizer_and_preset_dir_agree() {
    let b = Tokenizer::byte_level().unwrap();
    assert_eq!(b.encode("hé", false).unwrap(), vec![104, 195, 169]);
    assert_eq!(b.eos_token_ids(), &[256, 258]);
    let d = tempfile::tempdir().unwrap();
    let home = anneal::Home::open(d.path()).unwrap();
    let rec = home.models().create_preset("nano", &Default::default()).unwrap();
    let t = Tokenizer::load(&rec).unwrap();
    let text = "<|im_start|>user\nhi there<|im_end|>\n";
    assert_eq!(t.encode(text, true).unwrap(), b.encode(text, true).unwrap());
    let chat = t.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap();
    assert_eq!(chat, b.apply_chat_template(&[ChatMessage::new("user", "hi")], true).unwrap());
    assert_eq!(t.eos_token_ids(), &[256, 258]);
}

/// Chat templates rendered by minijinja match transformers' `apply_chat_template`
/// (tests/fixtures/chat-templates/make_chat_templates.py, transformers 5.23): ChatML with
/// a default system prompt, Llama-3 headers, Llama-2 [INST] with alternation checks,
/// turns with role mapping and `namespace`; errors raised by `raise_exception` too.
#[test]
fn chat_templates_render_like_transformers() {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/chat-templates/reference.json")).unwrap())
            .unwrap();
    let (bos, eos) = (r["bos_token"].as_str().unwrap(), r["eos_token"].as_str().unwrap());
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 32);
    for c in cases {
        let tname = c["template"].as_str().unwrap();
        let cname = c["conversation"].as_str().unwrap();
        let template = r["templates"][tname].as_str().unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(r["conversations"][cname].clone()).unwrap();
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let got = anneal::tokenizer::render_chat_template(template, &messages, agp, Some(bos), Some(eos));
        match (&c["text"], &c["error"]) {
            (Value::String(want), _) => assert_eq!(&got.unwrap(), want, "{tname} / {cname} / {agp}"),
            (_, Value::String(err)) => {
                let e = got.unwrap_err();
                assert_eq!(e.code(), "invalid_config");
                assert!(e.to_string().contains(err.as_str()), "{tname} / {cname}: {e}");
            }
            _ => unreachable!(),
        }
    }
}
