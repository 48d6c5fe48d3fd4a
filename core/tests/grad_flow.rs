//! After one backward pass every trainable tensor has a non-zero gradient, for every
//! family, with full fine-tuning and with LoRA (candle's fused ops would silently drop
//! gradients: the training path must not use them).
#![allow(clippy::unwrap_used)]

use anneal::{ForwardMode, LoadOptions, LoraConfig, Model};
use candle_core::{Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
const FAMILIES: [&str; 3] = ["tiny-gpt2", "tiny-llama", "tiny-qwen2"];

fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = vec![5, 17, 300, 42, 7, 99, 511, 3, 250, 64, 8, 1];
    let x = Tensor::from_vec(ids.clone(), (2, 6), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), (2, 6), &Device::Cpu).unwrap();
    (x, y)
}

fn assert_all_grads_nonzero(name: &str, m: &Model) {
    let (x, y) = batch();
    let loss = m.loss(&x, &y, ForwardMode::Train).unwrap();
    let grads = loss.backward().unwrap();
    let vars = m.named_trainable_vars();
    assert!(!vars.is_empty(), "{name}: nothing to train");
    for (key, var) in vars {
        let g = grads.get(&var).unwrap_or_else(|| panic!("{name}: no gradient for {key}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "{name}: gradient of {key} is {s}");
    }
}

#[test]
fn full_finetune_every_weight_gets_a_gradient() {
    for f in FAMILIES {
        let m = Model::load(format!("{FIXTURES}/{f}"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
        assert_all_grads_nonzero(f, &m);
    }
}

#[test]
fn lora_every_adapter_gets_a_gradient() {
    for f in FAMILIES {
        let mut m = Model::load(format!("{FIXTURES}/{f}"), &LoadOptions::default()).unwrap();
        let cfg = LoraConfig { target_modules: vec!["all-linear".into()], ..Default::default() };
        m.add_lora(&cfg, 0).unwrap();
        // PEFT init has B = 0, which makes A's first gradient zero; move B off zero.
        for (key, v) in m.named_trainable_vars() {
            if key.contains("lora_B") {
                v.set(&(Tensor::randn(0f32, 0.02, v.shape(), &Device::Cpu).unwrap())).unwrap();
            }
        }
        assert_all_grads_nonzero(f, &m);
    }
}

/// The check above is sensitive: candle's fused kernels (the Infer path) drop
/// gradients silently, and the same check finds weights without one.
#[test]
fn fused_infer_path_would_fail_the_check() {
    let m =
        Model::load(format!("{FIXTURES}/tiny-llama"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let (x, y) = batch();
    let grads = m.loss(&x, &y, ForwardMode::Infer).unwrap().backward().unwrap();
    let missing = m.named_trainable_vars().into_iter().filter(|(_, v)| grads.get(v).is_none()).count();
    assert!(missing > 0);
}

#[test]
fn models_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    assert_send_sync::<anneal::Tokenizer>();
}

/// The training loss (LM head and cross-entropy fused in one node) against the head's
/// logits then `causal_lm_loss`: same loss, and the same gradient for every weight (the
/// head, tied to the embedding in tiny-gpt2 and tiny-qwen2, the final norm just below
/// it, and every block upstream), with ignored labels in the batch.
#[test]
fn fused_head_loss_matches_logits_then_loss() {
    for f in FAMILIES {
        let m = Model::load(format!("{FIXTURES}/{f}"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
        let (x, y) = batch();
        let mut labels: Vec<i64> = y.flatten_all().unwrap().to_vec1().unwrap();
        for i in [2, 3, 9] {
            labels[i] = -100;
        }
        let y = Tensor::from_vec(labels, (2, 6), &Device::Cpu).unwrap();
        let fused = m.loss(&x, &y, ForwardMode::Train).unwrap();
        let plain = anneal::causal_lm_loss(&m.forward(&x, 0).unwrap(), &y).unwrap();
        let (lf, lp) = (fused.to_scalar::<f32>().unwrap(), plain.to_scalar::<f32>().unwrap());
        assert!((lf - lp).abs() < 1e-5, "{f}: loss {lf} vs {lp}");
        let (gf, gp) = (fused.backward().unwrap(), plain.backward().unwrap());
        let vars = m.named_trainable_vars();
        let must = match f {
            "tiny-gpt2" => ["transformer.wte.weight", "transformer.ln_f.weight", "transformer.h.0.attn.c_attn.weight"],
            "tiny-llama" => ["lm_head.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight"],
            _ => ["model.embed_tokens.weight", "model.norm.weight", "model.layers.0.self_attn.q_proj.weight"],
        };
        for name in must {
            assert!(vars.iter().any(|(k, _)| k == name), "{f}: no variable {name}");
        }
        for (key, var) in vars {
            let (a, b) = (gf.get(&var).unwrap(), gp.get(&var).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{f}: gradient of {key} differs by {diff}");
        }
    }
}

/// The engine's micro-batch (`Model::loss_and_backward`, whose head gradient is added
/// after the backward) against `loss` then candle's backward: the same loss and every
/// weight's gradient, scaled, for the untied head (tiny-llama) and the tied ones, and
/// with LoRA (the head frozen).
#[test]
fn loss_and_backward_matches_the_loss_tensors_backward() {
    for (f, lora) in FAMILIES.iter().flat_map(|f| [(*f, false), (*f, true)]) {
        let mut m =
            Model::load(format!("{FIXTURES}/{f}"), &LoadOptions { trainable: !lora, ..Default::default() }).unwrap();
        if lora {
            m.add_lora(&LoraConfig { target_modules: vec!["all-linear".into()], ..Default::default() }, 0).unwrap();
        }
        let (x, y) = batch();
        let want_loss = m.loss(&x, &y, ForwardMode::Train).unwrap();
        let want = (want_loss.clone() * 0.25).unwrap().backward().unwrap();
        let (loss, got) = m.loss_and_backward(&x, &y, 0.25).unwrap();
        assert_eq!(loss, want_loss.to_scalar::<f32>().unwrap(), "{f}");
        let vars = m.named_trainable_vars();
        assert!(lora || vars.iter().any(|(k, _)| k.contains("lm_head") || k.contains("wte") || k.contains("embed")));
        for (key, var) in vars {
            let (a, b) = (want.get(&var), got.get(&var));
            assert_eq!(a.is_some(), b.is_some(), "{f}: gradient of {key} present in one only");
            let (Some(a), Some(b)) = (a, b) else { continue };
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "{f} (lora {lora}): gradient of {key} differs by {diff}");
        }
    }
}
