//! LoRA files in PEFT's layout. The layout followed is PEFT 0.21.2's, as written by
//! `PeftModel.save_pretrained` in tests/fixtures/tiny-llama-lora (see numerics.rs for
//! how the fixture was made): `adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module>.lora_{A,B}.weight`, A `[r, in]`, B `[out, r]`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use anneal::{ErrorKind, ForwardMode, LoadOptions, LoraConfig, Model};
use candle_core::{Device, Tensor};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn keys_and_shapes(p: &Path) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<_> = candle_core::safetensors::load(p, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect();
    v.sort();
    v
}

fn llama() -> Model {
    Model::load(format!("{FIXTURES}/tiny-llama"), &LoadOptions::default()).unwrap()
}

fn logits(m: &Model) -> Vec<f32> {
    let x = Tensor::new(&[[431u32, 26, 386, 294, 289]], &Device::Cpu).unwrap();
    m.forward_with(&x, 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn saved_adapter_has_peft_0_21_2_files_keys_and_config_fields() {
    let fixture = Path::new(FIXTURES).join("tiny-llama-lora");
    let mut m = llama();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"].map(String::from).to_vec(),
        ..Default::default()
    };
    m.add_lora(&cfg, 0).unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save_adapter(out.path()).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    assert_eq!(
        keys_and_shapes(&out.path().join("adapter_model.safetensors")),
        keys_and_shapes(&fixture.join("adapter_model.safetensors"))
    );
    let ours = json(&out.path().join("adapter_config.json"));
    let theirs = json(&fixture.join("adapter_config.json"));
    let (o, t) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
    assert_eq!(o.keys().collect::<Vec<_>>(), t.keys().collect::<Vec<_>>(), "same fields, same order");
    for (k, v) in t {
        match k.as_str() {
            // The path the base was loaded from (PEFT writes the name it was given).
            "base_model_name_or_path" => assert!(o[k].is_string()),
            // PEFT writes a set: order is arbitrary.
            "target_modules" => {
                let set = |v: &Value| v.as_array().unwrap().iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
                assert_eq!(set(&o[k]), set(v));
            }
            _ => assert_eq!(&o[k], v, "field {k}"),
        }
    }
}

#[test]
fn peft_adapter_round_trips_through_anneal() {
    let mut m = llama();
    m.load_adapter(Path::new(FIXTURES).join("tiny-llama-lora")).unwrap();
    let want = logits(&m);
    assert_ne!(want, logits(&llama()), "the adapter changes the output");
    let out = tempfile::tempdir().unwrap();
    m.save_adapter(out.path()).unwrap();
    let fixture = Path::new(FIXTURES).join("tiny-llama-lora/adapter_model.safetensors");
    let a = candle_core::safetensors::load(&fixture, &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    for (k, t) in &a {
        let u = &b[k];
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    assert_eq!(json(&out.path().join("adapter_config.json"))["base_model_name_or_path"], "tiny-llama");
    let mut m2 = llama();
    m2.load_adapter(out.path()).unwrap();
    assert_eq!(logits(&m2), want);
    // Removing the adapter restores the base model, merged or not.
    m2.merge_lora().unwrap();
    m2.remove_lora().unwrap();
    let base = logits(&llama());
    let d = logits(&m2).iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "{d}");
    assert!(m2.trainable_vars().is_empty());
}

#[test]
fn new_adapter_is_peft_initialised() {
    let mut m = llama();
    m.add_lora(&LoraConfig::default(), 7).unwrap();
    let vars = m.named_trainable_vars();
    // Default targets for the Llama family: q_proj and v_proj, 2 layers, A and B each.
    assert_eq!(vars.len(), 8);
    for (k, v) in vars {
        let x = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if k.contains("lora_B") {
            assert!(x.iter().all(|&y| y == 0.0), "{k}");
        } else {
            let bound = 1.0 / (64f32).sqrt();
            assert!(x.iter().all(|y| y.abs() <= bound) && x.iter().any(|&y| y != 0.0), "{k}");
        }
    }
    // B = 0: output unchanged.
    assert_eq!(logits(&m), logits(&llama()));
    assert_eq!(m.lora_config().unwrap().r, 8);
}

#[test]
fn gpt2_conv1d_adapter_merges_transposed() {
    let mut m = Model::load(format!("{FIXTURES}/tiny-gpt2"), &LoadOptions::default()).unwrap();
    m.add_lora(&LoraConfig { target_modules: vec!["c_attn".into(), "c_proj".into()], ..Default::default() }, 1)
        .unwrap();
    for (k, v) in m.named_trainable_vars() {
        if k.contains("lora_B") {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let x = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
    let unmerged = m.forward_with(&x, 0, ForwardMode::Train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    m.merge_lora().unwrap();
    let merged = m.forward_with(&x, 0, ForwardMode::Train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = unmerged.iter().zip(&merged).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "{d}");
    let out = tempfile::tempdir().unwrap();
    m.save_adapter(out.path()).unwrap();
    let cfg = json(&out.path().join("adapter_config.json"));
    assert_eq!(cfg["fan_in_fan_out"], true);
    assert!(keys_and_shapes(&out.path().join("adapter_model.safetensors"))
        .contains(&("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight".to_string(), vec![8, 64])));
}

#[test]
fn adapter_errors_are_typed() {
    let mut m = llama();
    let e = m.add_lora(&LoraConfig { target_modules: vec!["c_attn".into()], ..Default::default() }, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("q_proj"), "lists the available modules: {e}");
    let e = m.add_lora(&LoraConfig { fan_in_fan_out: Some(true), ..Default::default() }, 0).unwrap_err();
    assert!(e.to_string().contains("fan_in_fan_out"), "{e}");
    // A PEFT config with a feature anneal lacks.
    let d = tempfile::tempdir().unwrap();
    let fx = Path::new(FIXTURES).join("tiny-llama-lora");
    std::fs::copy(fx.join("adapter_model.safetensors"), d.path().join("adapter_model.safetensors")).unwrap();
    let mut cfg = json(&fx.join("adapter_config.json"));
    cfg["use_dora"] = true.into();
    std::fs::write(d.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = m.load_adapter(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("use_dora"), "{e}");
    // Weights that don't match r.
    cfg["use_dora"] = false.into();
    cfg["r"] = 8.into();
    std::fs::write(d.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = m.load_adapter(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("lora_A.weight"), "{e}");
    assert!(m.trainable_vars().is_empty(), "a failed load leaves no half adapter");
    // Full fine-tuning and LoRA don't mix.
    let mut full =
        Model::load(format!("{FIXTURES}/tiny-llama"), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    assert_eq!(full.add_lora(&LoraConfig::default(), 0).unwrap_err().kind(), ErrorKind::InvalidConfig);
}

#[test]
fn merged_adapter_exports_as_a_plain_model() {
    let mut m = llama();
    m.load_adapter(Path::new(FIXTURES).join("tiny-llama-lora")).unwrap();
    let want = logits(&m);
    m.merge_lora().unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    let exported = Model::load(out.path(), &LoadOptions::default()).unwrap();
    let d = logits(&exported).iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "{d}");
    // An adapter directory is not a model.
    let e = Model::load(Path::new(FIXTURES).join("tiny-llama-lora"), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("load_adapter"), "{e}");
}

/// Writes anneal-made adapters (B moved off zero) for tiny-llama and tiny-gpt2 with
/// anneal's logits, for tests/fixtures/check_peft_interop.py to load in PEFT:
/// ANNEAL_PEFT_EXPORT=/tmp/x cargo test -p anneal --test integration lora_peft:: -- --ignored
#[test]
#[ignore]
fn export_for_peft_interop() {
    let out = std::path::PathBuf::from(std::env::var("ANNEAL_PEFT_EXPORT").unwrap());
    let ids: Vec<u32> = vec![431, 26, 386, 294, 289, 429, 282, 31, 414, 26];
    for (name, targets) in [("tiny-llama", vec!["all-linear"]), ("tiny-gpt2", vec!["c_attn", "c_proj", "c_fc"])] {
        let mut m = Model::load(format!("{FIXTURES}/{name}"), &LoadOptions::default()).unwrap();
        let cfg = LoraConfig {
            r: 4,
            alpha: 12.0,
            target_modules: targets.into_iter().map(String::from).collect(),
            ..Default::default()
        };
        m.add_lora(&cfg, 3).unwrap();
        for (k, v) in m.named_trainable_vars() {
            if k.contains("lora_B") {
                v.set(&Tensor::randn(0f32, 0.1, v.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let dir = out.join(name);
        m.save_adapter(&dir).unwrap();
        let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<f32> =
            m.forward_with(&x, 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let v = serde_json::json!({"input_ids": ids, "logits": logits});
        std::fs::write(dir.join("anneal_logits.json"), v.to_string()).unwrap();
    }
}
