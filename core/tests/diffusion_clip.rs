//! The CLIP text encoder and tokenizer against transformers 5.24 on a tiny random
//! `CLIPTextModel` (hidden 32, 2 layers, 4 heads, a 1000-token BPE vocabulary trained
//! in CLIP's layout), made by `tests/fixtures/make_sd_refs.py` (committed; not run in CI):
//! token ids equal to `CLIPTokenizer(padding="max_length", truncation=True)` from
//! vocab.json + merges.txt and from tokenizer.json; last_hidden_state, pooled output,
//! penultimate hidden state and diffusers' clip_skip embeddings within 1e-4; every
//! weight receives a gradient in training mode.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal::diffusion::{ClipTextModel, ClipTokenizer};
use anneal::{ErrorKind, ForwardMode, LoadOptions};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn clip_dir(sub: &str) -> PathBuf {
    Path::new(FIXTURES).join("tiny-clip").join(sub)
}

fn token_refs() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/sd-refs/clip_tokenizer.json")).unwrap()).unwrap()
}

fn model_refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{FIXTURES}/sd-refs/clip_text_encoder.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenizer_ids_match_transformers() {
    let r = token_refs();
    let prompts: Vec<&str> = r["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for sub in ["tokenizer", "tokenizer-json"] {
        let tok = ClipTokenizer::from_dir(clip_dir(sub)).unwrap();
        assert_eq!(tok.model_max_length(), 77);
        assert_eq!(tok.pad_token_id() as u64, r["pad_token_id"].as_u64().unwrap());
        assert_eq!(tok.bos_token_id() as u64, r["bos_token_id"].as_u64().unwrap());
        assert_eq!(tok.eos_token_id() as u64, r["eos_token_id"].as_u64().unwrap());
        assert_eq!(tok.vocab_size(), 1000);
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(tok.encode(p).unwrap(), ids_of(&r["padded"][i]), "{sub}: padded ids of {p:?}");
            assert_eq!(tok.encode_full(p).unwrap(), ids_of(&r["unpadded"][i]), "{sub}: ids of {p:?}");
        }
        // the long prompt is cut to BOS + 75 tokens + EOS
        let long = tok.encode(prompts[prompts.len() - 1]).unwrap();
        assert!(tok.encode_full(prompts[prompts.len() - 1]).unwrap().len() > 77);
        assert_eq!((long.len(), long[0], long[76]), (77, tok.bos_token_id(), tok.eos_token_id()));
        let t = tok.to_tensor(&prompts[..3], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [3, 77]);
        assert_eq!(tok.decode(&tok.encode_full("A red circle!").unwrap(), true).unwrap(), "a red circle !");
    }
}

#[test]
fn tokenizer_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let src = clip_dir("tokenizer");
    let copy = |name: &str| std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    // nothing to load
    let e = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("merges.txt"), "{e}");
    copy("vocab.json");
    copy("special_tokens_map.json");
    copy("tokenizer_config.json");
    // a merge of tokens the vocabulary lacks: named by file and line
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b\nzzz qqq\n").unwrap();
    let e = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("merges.txt") && e.to_string().contains("record 3"), "{e}");
    copy("merges.txt");
    assert!(ClipTokenizer::from_dir(dir.path()).is_ok());
    // a pad token that is not in the vocabulary
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "<pad>"}"#).unwrap();
    let e = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("pad_token"), "{e}");
    // SD 2's pad token "!" (id 0) and a shorter model_max_length
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "!"}"#).unwrap();
    let cfg = std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&cfg).unwrap();
    cfg["model_max_length"] = 16.into();
    cfg["pad_token"] = "!".into();
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let ids = tok.encode("a red circle").unwrap();
    assert_eq!(ids.len(), 16);
    assert_eq!(&ids[5..], &[0; 11]);
    cfg["model_max_length"] = "77".into();
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let e = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("model_max_length"), "{e}");
}

/// A copy of the text encoder in `dir` with config changes and tensors renamed by `rename`.
fn variant(dir: &Path, config: &[(&str, Value)], rename: impl Fn(&str) -> Option<String>) -> PathBuf {
    let src = clip_dir("text_encoder");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in config {
        cfg[*k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> =
        tensors.into_iter().filter_map(|(k, v)| rename(&k).map(|k| (k, v))).collect();
    candle_core::safetensors::save(&renamed, dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

#[test]
fn text_encoder_matches_transformers() {
    let r = model_refs();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let enc = ClipTextModel::load(clip_dir("text_encoder"), &LoadOptions::default()).unwrap();
    let mut worst: Vec<(&str, f32)> = Vec::new();
    let mut check = |what: &'static str, got: &Tensor, want: &str| {
        let d = max_abs(got, &r[want]);
        assert!(d < 1e-4, "{what}: differs from transformers by {d}");
        worst.push((what, d));
    };
    for mode in [ForwardMode::Train, ForwardMode::Infer] {
        let out = enc.forward(&ids, mode).unwrap();
        check("last_hidden_state", &out.last_hidden_state, "last_hidden_state");
        check("pooler_output", &out.pooler_output, "pooler_output");
        check("penultimate", &enc.hidden_state(&ids, 1, mode).unwrap(), "hidden_state_penultimate");
        check("clip_skip=1", &enc.prompt_embeds(&ids, Some(1), mode).unwrap(), "clip_skip_1");
        assert_eq!(max_abs(&enc.prompt_embeds(&ids, None, mode).unwrap(), &out.last_hidden_state), 0.0);
    }
    let hs = enc.hidden_states(&ids, ForwardMode::Infer).unwrap();
    assert_eq!(hs.len(), 3);
    check("hidden_states[-2]", &hs[1], "hidden_state_penultimate");
    // i64 ids (as torch hands them) work too
    let out = enc.forward(&r["input_ids"], ForwardMode::Infer).unwrap();
    check("last_hidden_state (i64 ids)", &out.last_hidden_state, "last_hidden_state");

    let dir = tempfile::tempdir().unwrap();
    // SD 2's OpenCLIP encoders use erf GELU
    let gelu = ClipTextModel::load(
        variant(dir.path(), &[("hidden_act", "gelu".into())], |k| Some(k.into())),
        &LoadOptions::default(),
    )
    .unwrap();
    check(
        "last_hidden_state (gelu)",
        &gelu.forward(&ids, ForwardMode::Train).unwrap().last_hidden_state,
        "last_hidden_state_gelu",
    );
    // configs from before transformers 4.33 (eos_token_id 2) pool at the largest id
    let legacy = tempfile::tempdir().unwrap();
    let legacy = ClipTextModel::load(
        variant(legacy.path(), &[("eos_token_id", 2.into())], |k| Some(k.into())),
        &LoadOptions::default(),
    )
    .unwrap();
    check(
        "pooler_output (legacy argmax)",
        &legacy.forward(&ids, ForwardMode::Infer).unwrap().pooler_output,
        "pooler_output_argmax",
    );
    // transformers 5 saves CLIPTextModel without the `text_model.` prefix
    let v5 = tempfile::tempdir().unwrap();
    let v5 = ClipTextModel::load(
        variant(v5.path(), &[], |k| Some(k.strip_prefix("text_model.").unwrap().to_string())),
        &LoadOptions::default(),
    )
    .unwrap();
    check(
        "last_hidden_state (v5 names)",
        &v5.forward(&ids, ForwardMode::Infer).unwrap().last_hidden_state,
        "last_hidden_state",
    );
    for (what, d) in worst {
        eprintln!("{what}: max abs diff {d:.2e}");
    }
}

#[test]
fn tokenizer_and_encoder_together_reproduce_the_reference() {
    let r = token_refs();
    let tok = ClipTokenizer::from_dir(clip_dir("tokenizer")).unwrap();
    let enc = ClipTextModel::load(clip_dir("text_encoder"), &LoadOptions::default()).unwrap();
    let prompts: Vec<&str> = r["prompts"].as_array().unwrap()[..4].iter().map(|p| p.as_str().unwrap()).collect();
    let ids = tok.to_tensor(&prompts, enc.device()).unwrap();
    let cond = enc.prompt_embeds(&ids, None, ForwardMode::Infer).unwrap();
    assert!(max_abs(&cond, &model_refs()["last_hidden_state"]) < 1e-4);
}

#[test]
fn every_weight_gets_a_gradient_in_training_mode() {
    let enc =
        ClipTextModel::load(clip_dir("text_encoder"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let ids = model_refs()["input_ids"].to_dtype(DType::U32).unwrap();
    let loss = |mode| {
        let out = enc.forward(&ids, mode).unwrap();
        (out.last_hidden_state.sqr().unwrap().mean_all().unwrap()
            + out.pooler_output.sqr().unwrap().mean_all().unwrap())
        .unwrap()
    };
    let grads = loss(ForwardMode::Train).backward().unwrap();
    let vars = enc.named_trainable_vars();
    assert_eq!(vars.len(), 2 + 2 * 16 + 2);
    for (name, v) in &vars {
        let g = grads.get(v).unwrap_or_else(|| panic!("no gradient for {name}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "gradient of {name} is {s}");
    }
    // the check is sensitive: the fused inference kernels drop gradients
    let grads = loss(ForwardMode::Infer).backward().unwrap();
    assert!(vars.iter().any(|(_, v)| grads.get(v).is_none()));
    // names are transformers' (with the `text_model.` prefix), as diffusers saves them
    assert!(vars.iter().any(|(n, _)| n == "text_model.encoder.layers.1.self_attn.q_proj.weight"));
    let weights = enc.named_weights();
    assert_eq!(weights.len(), vars.len());
}

#[test]
fn bad_weights_and_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = "text_model.encoder.layers.1.mlp.fc2.bias";
    let p = variant(dir.path(), &[], |k| (k != missing).then(|| k.to_string()));
    let e = ClipTextModel::load(&p, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains(missing) && e.to_string().contains("model.safetensors"), "{e}");
    // a config that disagrees with the tensors' shapes
    let dir = tempfile::tempdir().unwrap();
    let p = variant(dir.path(), &[("intermediate_size", 48.into())], |k| Some(k.into()));
    let e = ClipTextModel::load(&p, &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("fc1.weight") && e.to_string().contains("[48, 32]"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = variant(dir.path(), &[("hidden_act", "relu6".into())], |k| Some(k.into()));
    let e = ClipTextModel::load(&p, &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("hidden_act") && e.to_string().contains("config.json"), "{e}");

    let enc = ClipTextModel::load(clip_dir("text_encoder"), &LoadOptions::default()).unwrap();
    let dev = Device::Cpu;
    for (ids, what) in [
        (Tensor::new(&[[5u32, 1000]], &dev).unwrap(), "outside the vocabulary"),
        (Tensor::zeros((1, 78), DType::U32, &dev).unwrap(), "max_position_embeddings"),
        (Tensor::zeros(4, DType::U32, &dev).unwrap(), "[batch, seq]"),
        (Tensor::new(&[[1i64, -3]], &dev).unwrap(), "negative"),
        (Tensor::zeros((1, 4), DType::F32, &dev).unwrap(), "integers"),
    ] {
        let e = enc.forward(&ids, ForwardMode::Infer).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let ids = Tensor::zeros((1, 4), DType::U32, &dev).unwrap();
    assert!(enc.prompt_embeds(&ids, Some(3), ForwardMode::Infer).unwrap_err().to_string().contains("clip_skip"));
    // clip_skip = number of layers: the embeddings through the final LayerNorm
    assert!(enc.prompt_embeds(&ids, Some(2), ForwardMode::Infer).is_ok());
}
