//! Golden numerics: anneal against PyTorch / transformers / PEFT.
//
// How the fixtures were made (tests/fixtures/README.md): PyTorch 2.15, transformers
// 5.23, peft 0.21.2, float32, eager attention. Each model folder is a normal Hugging
// Face layout (config.json, model.safetensors, generation_config.json, tokenizer.json)
// with random weights from a fixed seed, plus `reference.json`: what PyTorch computed.
// - tiny-gpt2: GPT2LMHeadModel, 2 layers, 4 heads, n_embd 64, vocab 512, tied, gelu_new.
// - tiny-llama: LlamaForCausalLM, 2 layers, 4 heads, 2 kv heads (GQA), hidden 64,
//   ffn 128, vocab 512, untied, config in the new `rope_parameters` spelling.
// - tiny-qwen2: Qwen2ForCausalLM, q/k/v bias, tied (no lm_head tensor), GQA.
// - tiny-llama-lora: a PEFT LoRA adapter for tiny-llama, r 4, alpha 8, targets
//   q_proj v_proj o_proj down_proj, weights set to non-zero random values.
// reference.json: `last_logits_first20` / `_argmax` / `_sum` (logits of the last
// position), `loss_labels_eq_input_ids` (logits[:, :-1] vs input_ids[:, 1:], mean),
// `greedy_new_tokens` (20 argmax tokens, no EOS); for the adapter also
// `merged_last_logits_first20` and `train_step`: one forward + backward with labels =
// input_ids, per-tensor gradient `first5` and L2 `norm`, then one
// `torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)` step
// over the adapter weights: `after_one_adamw_step_first5`, `loss_after_one_step`.
// Gradient keys carry PEFT's in-memory adapter name (`...lora_A.default.weight`);
// the file stores the same tensors without `.default`.
#![allow(clippy::unwrap_used)]

use anneal::{ForwardMode, LoadOptions, Model};
use candle_core::{Device, Tensor, D};
use candle_nn::Optimizer;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn reference(name: &str) -> Value {
    let p = format!("{FIXTURES}/{name}/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn labels_tensor(ids: &[u32]) -> Tensor {
    let l: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    Tensor::new(l.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn last_logits(model: &Model, ids: &[u32], mode: ForwardMode) -> Vec<f32> {
    let logits = model.forward_with(&ids_tensor(ids), 0, mode).unwrap();
    logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap()
}

/// Checks logits, loss and greedy tokens of `model` against `r` in both modes.
fn check_model(name: &str, model: &Model, r: &Value) {
    let ids = u32s(&r["input_ids"]);
    for mode in [ForwardMode::Train, ForwardMode::Infer] {
        let logits = last_logits(model, &ids, mode);
        let d20 = max_abs_diff(&logits[..20], &f32s(&r["last_logits_first20"]));
        let argmax = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let sum: f64 = logits.iter().map(|&x| x as f64).sum();
        let dsum = r.get("last_logits_sum").map_or(0.0, |want| (sum - want.as_f64().unwrap()).abs());
        let loss = model.loss(&ids_tensor(&ids), &labels_tensor(&ids), mode).unwrap().to_scalar::<f32>().unwrap();
        let dloss = (loss - r["loss_labels_eq_input_ids"].as_f64().unwrap() as f32).abs();
        let want_greedy = u32s(&r["greedy_new_tokens"]);
        let greedy = model.greedy(&ids, want_greedy.len(), &[], mode).unwrap();
        println!("{name} {mode:?}: logits max|d| {d20:.2e}, sum |d| {dsum:.2e}, loss |d| {dloss:.2e}");
        assert!(d20 < 1e-4, "{name} {mode:?}: logits differ by {d20}");
        assert_eq!(argmax as u64, r["last_logits_argmax"].as_u64().unwrap(), "{name} {mode:?}: argmax");
        assert!(dsum < 1e-3, "{name} {mode:?}: logits sum differs by {dsum}");
        assert!(dloss < 1e-4, "{name} {mode:?}: loss differs by {dloss}");
        assert_eq!(greedy, want_greedy, "{name} {mode:?}: greedy tokens");
    }
}

fn load(name: &str) -> Model {
    Model::load(format!("{FIXTURES}/{name}"), &LoadOptions::default()).unwrap()
}

#[test]
fn gpt2_matches_transformers() {
    check_model("tiny-gpt2", &load("tiny-gpt2"), &reference("tiny-gpt2"));
}

#[test]
fn llama_matches_transformers() {
    check_model("tiny-llama", &load("tiny-llama"), &reference("tiny-llama"));
}

#[test]
fn qwen2_matches_transformers() {
    check_model("tiny-qwen2", &load("tiny-qwen2"), &reference("tiny-qwen2"));
}

/// Llama-family variants made by tests/fixtures/variants/make_variants.py (same
/// PyTorch 2.15 / transformers 5.23, eager, float32; script in that folder): MQA with
/// head_dim != hidden/heads, q/k/v/o + MLP bias and Llama 3 RoPE scaling (old
/// `rope_theta` + `rope_scaling` spelling); linear RoPE scaling (new `rope_parameters`)
/// with tied embeddings; Mistral with a sliding window (5) shorter than the prompt (12).
#[test]
fn llama_variants_match_transformers() {
    for name in ["llama-mqa-bias-llama3rope", "llama-linear-rope-tied", "mistral-window"] {
        let name = format!("variants/{name}");
        check_model(&name, &load(&name), &reference(&name));
    }
}

#[test]
fn full_finetune_load_gives_the_same_numbers() {
    let m =
        Model::load(format!("{FIXTURES}/tiny-qwen2"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    assert!(m.num_trainable_params() > 0);
    check_model("tiny-qwen2 (trainable)", &m, &reference("tiny-qwen2"));
}

fn lora_model() -> Model {
    let mut m = load("tiny-llama");
    m.load_adapter(format!("{FIXTURES}/tiny-llama-lora")).unwrap();
    m
}

#[test]
fn lora_unmerged_and_merged_match_peft() {
    let r = reference("tiny-llama-lora");
    let mut m = lora_model();
    check_model("tiny-llama-lora", &m, &r);
    let ids = u32s(&r["input_ids"]);
    m.merge_lora().unwrap();
    assert!(m.is_lora_merged());
    for mode in [ForwardMode::Train, ForwardMode::Infer] {
        let d = max_abs_diff(&last_logits(&m, &ids, mode)[..20], &f32s(&r["merged_last_logits_first20"]));
        println!("tiny-llama-lora merged {mode:?}: logits max|d| {d:.2e}");
        assert!(d < 1e-4, "merged {mode:?}: {d}");
    }
    m.unmerge_lora().unwrap();
    let d = max_abs_diff(&last_logits(&m, &ids, ForwardMode::Train)[..20], &f32s(&r["last_logits_first20"]));
    println!("tiny-llama-lora unmerged again: logits max|d| {d:.2e}");
    assert!(d < 1e-4);
}

/// A PEFT-made adapter on GPT-2's Conv1D layers (fan_in_fan_out), made by
/// tests/fixtures/variants/make_gpt2_lora.py with peft 0.21.2.
#[test]
fn gpt2_conv1d_lora_from_peft_matches() {
    let r = reference("variants/tiny-gpt2-lora");
    let ids = u32s(&r["input_ids"]);
    let mut m = load("tiny-gpt2");
    m.load_adapter(format!("{FIXTURES}/variants/tiny-gpt2-lora")).unwrap();
    for merged in [false, true] {
        if merged {
            m.merge_lora().unwrap();
        }
        let key = if merged { "merged_last_logits_first20" } else { "last_logits_first20" };
        for mode in [ForwardMode::Train, ForwardMode::Infer] {
            let d = max_abs_diff(&last_logits(&m, &ids, mode)[..20], &f32s(&r[key]));
            println!("tiny-gpt2-lora merged={merged} {mode:?}: logits max|d| {d:.2e}");
            assert!(d < 1e-4, "merged={merged} {mode:?}: {d}");
        }
    }
}

/// Full fine-tuning gradients of every weight against PyTorch, for GPT-2 (LayerNorm,
/// GELU, Conv1D, learned positions, tied head) and Qwen2 (RMSNorm, RoPE, GQA, qkv bias,
/// tied head): tests/fixtures/variants/make_full_grads.py.
#[test]
fn full_finetune_gradients_match_torch() {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/variants/full-finetune-grads.json")).unwrap(),
    )
    .unwrap();
    for name in ["tiny-gpt2", "tiny-qwen2"] {
        let want = &all[name];
        let m =
            Model::load(format!("{FIXTURES}/{name}"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
        let ids = u32s(&reference(name)["input_ids"]);
        let loss = m.loss(&ids_tensor(&ids), &labels_tensor(&ids), ForwardMode::Train).unwrap();
        let grads = loss.backward().unwrap();
        let named = m.named_trainable_vars();
        assert_eq!(named.len(), want["grads"].as_object().unwrap().len(), "{name}");
        let (mut worst5, mut worst_rel) = (0f32, 0f64);
        for (key, var) in &named {
            let w = &want["grads"][key];
            assert!(w.is_object(), "{name}: no reference gradient for {key}");
            let flat = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let norm = flat.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let want_norm = w["norm"].as_f64().unwrap();
            let d5 = max_abs_diff(&flat[..5], &f32s(&w["first5"]));
            let rel = (norm - want_norm).abs() / want_norm;
            worst5 = worst5.max(d5);
            worst_rel = worst_rel.max(rel);
            assert!(d5 < 1e-5 + 1e-3 * want_norm as f32, "{name} {key}: first5 differ by {d5}");
            assert!(rel < 1e-4, "{name} {key}: norm {norm} vs {want_norm}");
        }
        println!("{name} full-ft grads: first5 max|d| {worst5:.2e}, norm max rel {worst_rel:.2e}");
    }
}

/// PEFT's in-memory key for a file key.
fn in_memory_key(file_key: &str) -> String {
    file_key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
}

#[test]
fn lora_gradients_and_one_adamw_step_match_torch() {
    let r = reference("tiny-llama-lora");
    let ts = &r["train_step"];
    let m = lora_model();
    let ids = u32s(&r["input_ids"]);
    let (x, y) = (ids_tensor(&ids), labels_tensor(&ids));
    let loss = m.loss(&x, &y, ForwardMode::Train).unwrap();
    let dl = (loss.to_scalar::<f32>().unwrap() - ts["loss_before"].as_f64().unwrap() as f32).abs();
    assert!(dl < 1e-4, "loss_before differs by {dl}");
    let grads = loss.backward().unwrap();
    let named = m.named_trainable_vars();
    assert_eq!(named.len(), ts["grads"].as_object().unwrap().len());
    let (mut worst_first5, mut worst_norm_rel) = (0f32, 0f32);
    for (key, var) in &named {
        let want = &ts["grads"][in_memory_key(key)];
        assert!(want.is_object(), "no reference gradient for {key}");
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {key}"));
        let flat = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d5 = max_abs_diff(&flat[..5], &f32s(&want["first5"]));
        let norm = flat.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let want_norm = want["norm"].as_f64().unwrap();
        let rel = ((norm - want_norm).abs() / want_norm) as f32;
        worst_first5 = worst_first5.max(d5);
        worst_norm_rel = worst_norm_rel.max(rel);
        assert!(d5 < 1e-5 + 1e-3 * want_norm as f32, "{key}: first5 differ by {d5}");
        assert!(rel < 1e-4, "{key}: norm {norm} vs {want_norm}");
    }
    println!("grads: first5 max|d| {worst_first5:.2e}, norm max rel {worst_norm_rel:.2e}");

    let params = candle_nn::ParamsAdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut opt = candle_nn::AdamW::new(m.trainable_vars(), params).unwrap();
    opt.step(&grads).unwrap();
    let mut worst_step = 0f32;
    for (key, var) in &named {
        let want = f32s(&ts["after_one_adamw_step_first5"][in_memory_key(key)]);
        let got = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs_diff(&got[..5], &want);
        worst_step = worst_step.max(d);
        assert!(d < 1e-5, "{key}: after one AdamW step differs by {d}");
    }
    let after = m.loss(&x, &y, ForwardMode::Train).unwrap().to_scalar::<f32>().unwrap();
    let dafter = (after - ts["loss_after_one_step"].as_f64().unwrap() as f32).abs();
    println!("adamw: params max|d| {worst_step:.2e}, loss after |d| {dafter:.2e}");
    assert!(dafter < 1e-4, "loss after one step differs by {dafter}");
}

#[test]
fn infer_and_train_paths_agree_on_every_position() {
    let m = lora_model();
    let ids = u32s(&reference("tiny-llama-lora")["input_ids"]);
    let a = m.forward_with(&ids_tensor(&ids), 0, ForwardMode::Train).unwrap();
    let b = m.forward_with(&ids_tensor(&ids), 0, ForwardMode::Infer).unwrap();
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "{d}");
}
