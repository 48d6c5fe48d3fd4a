//! Llama-family variants the fixtures don't cover (MQA, explicit head_dim, Llama
//! attention/MLP bias, old `rope_theta` spelling, Mistral sliding window) and GPT-2 in
//! the hub's un-prefixed key layout: the training and inference paths agree and every
//! weight gets a gradient. Parity with PyTorch itself is covered by numerics.rs.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use anneal::{ForwardMode, LoadOptions, Model};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// Writes a random Llama-family model for `cfg` into `dir`.
fn write_llama(dir: &Path, cfg: &Value) {
    let g = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (h, heads, ffn, vocab) = (g("hidden_size"), g("num_attention_heads"), g("intermediate_size"), g("vocab_size"));
    let kv = cfg.get("num_key_value_heads").map(|v| v.as_u64().unwrap() as usize).unwrap_or(heads);
    let hd = cfg.get("head_dim").map(|v| v.as_u64().unwrap() as usize).unwrap_or(h / heads);
    let attn_bias = cfg.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
    let mlp_bias = cfg.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false);
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize]| {
        t.insert(name, Tensor::randn(0f32, 0.2, shape, &Device::Cpu).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[vocab, h]);
    put("lm_head.weight".into(), &[vocab, h]);
    put("model.norm.weight".into(), &[h]);
    for i in 0..g("num_hidden_layers") {
        let l = format!("model.layers.{i}");
        put(format!("{l}.input_layernorm.weight"), &[h]);
        put(format!("{l}.post_attention_layernorm.weight"), &[h]);
        for (n, o, i_) in
            [("q_proj", heads * hd, h), ("k_proj", kv * hd, h), ("v_proj", kv * hd, h), ("o_proj", h, heads * hd)]
        {
            put(format!("{l}.self_attn.{n}.weight"), &[o, i_]);
            if attn_bias {
                put(format!("{l}.self_attn.{n}.bias"), &[o]);
            }
        }
        for (n, o, i_) in [("gate_proj", ffn, h), ("up_proj", ffn, h), ("down_proj", h, ffn)] {
            put(format!("{l}.mlp.{n}.weight"), &[o, i_]);
            if mlp_bias {
                put(format!("{l}.mlp.{n}.bias"), &[o]);
            }
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

fn ids() -> Tensor {
    Tensor::new(&[[3u32, 14, 15, 92, 65, 35, 89, 79], [2, 71, 82, 81, 82, 84, 59, 0]], &Device::Cpu).unwrap()
}

/// Train and Infer paths agree; full fine-tuning sends a gradient to every weight.
fn check(dir: &Path) -> Vec<f32> {
    let m = Model::load(dir, &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let a = m.forward_with(&ids(), 0, ForwardMode::Train).unwrap();
    let b = m.forward_with(&ids(), 0, ForwardMode::Infer).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "{}: train/infer differ by {d}", dir.display());
    let labels = ids().to_dtype(candle_core::DType::I64).unwrap();
    let grads = m.loss(&ids(), &labels, ForwardMode::Train).unwrap().backward().unwrap();
    for (k, v) in m.named_trainable_vars() {
        let s = grads.get(&v).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0, "{}: no gradient for {k}", dir.display());
    }
    a.flatten_all().unwrap().to_vec1().unwrap()
}

fn base() -> Value {
    json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
           "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 64, "tie_word_embeddings": false})
}

#[test]
fn llama_variants_train_and_infer_agree() {
    let mut variants = vec![];
    let mut mqa = base();
    mqa["num_key_value_heads"] = 1.into();
    variants.push(mqa);
    let mut wide_heads = base();
    wide_heads["head_dim"] = 16.into(); // heads * head_dim = 64 != hidden 32
    wide_heads["num_key_value_heads"] = 2.into();
    wide_heads["attention_bias"] = true.into();
    wide_heads["mlp_bias"] = true.into();
    variants.push(wide_heads);
    let mut qwen = base();
    qwen["model_type"] = "qwen2".into();
    qwen["attention_bias"] = true.into(); // q/k/v bias only for Qwen2; the file has o_proj.bias too, unused
    variants.push(qwen);
    for cfg in variants {
        let d = tempfile::tempdir().unwrap();
        write_llama(d.path(), &cfg);
        check(d.path());
    }
}

#[test]
fn mistral_sliding_window_limits_attention() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = base();
    cfg["model_type"] = "mistral".into();
    cfg["num_key_value_heads"] = 2.into();
    cfg["sliding_window"] = 3.into();
    write_llama(d.path(), &cfg);
    let windowed = check(d.path());
    cfg["sliding_window"] = Value::Null;
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let full = check(d.path());
    let v = 100;
    // Positions 0..3 see the same keys either way; later ones don't.
    let same = |p: usize| windowed[p * v..(p + 1) * v] == full[p * v..(p + 1) * v];
    assert!(same(0) && same(1) && same(2));
    assert!(!same(5));
}

#[test]
fn gpt2_hub_layout_without_transformer_prefix_loads() {
    let src = Path::new(FIXTURES).join("tiny-gpt2");
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), d.path().join("config.json")).unwrap();
    let t = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut renamed: HashMap<String, Tensor> =
        t.into_iter().map(|(k, v)| (k.trim_start_matches("transformer.").to_string(), v)).collect();
    // Old checkpoints also carry the causal-mask buffers; they are ignored.
    renamed
        .insert("h.0.attn.bias".into(), Tensor::ones((1, 1, 128, 128), candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&renamed, d.path().join("model.safetensors")).unwrap();
    let a = check(d.path());
    let b = check(&src);
    assert_eq!(a, b);
}

#[test]
fn bf16_weights_run_both_paths_close_to_f32() {
    let src = Path::new(FIXTURES);
    for name in ["tiny-llama", "tiny-gpt2"] {
        let f32m = Model::load(src.join(name), &LoadOptions::default()).unwrap();
        let bf = Model::load(src.join(name), &LoadOptions { dtype: candle_core::DType::BF16, ..Default::default() })
            .unwrap();
        let want: Vec<f32> =
            f32m.forward_with(&ids(), 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for mode in [ForwardMode::Train, ForwardMode::Infer] {
            let got: Vec<f32> = bf
                .forward_with(&ids(), 0, mode)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 0.1, "{name} {mode:?}: bf16 differs from f32 by {d}");
        }
    }
}
