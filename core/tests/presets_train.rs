//! A preset made in a temporary home loads and trains: a few AdamW steps on a
//! repeated short text make the loss fall.
#![allow(clippy::unwrap_used)]

use anneal::{load_model, ForwardMode, LoadOptions, LoraConfig, Tokenizer};
use candle_core::{Device, Tensor};
use candle_nn::Optimizer;

fn batch(tok: &Tokenizer) -> (Tensor, Tensor) {
    let text = "the cat sat on the mat. ".repeat(3);
    let ids = tok.encode(&text, false).unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let y: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    (x, Tensor::new(y.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap())
}

#[test]
fn nano_preset_full_finetune_loss_falls() {
    let d = tempfile::tempdir().unwrap();
    let home = anneal::Home::open(d.path()).unwrap();
    let rec = home.models().create_preset("nano", &Default::default()).unwrap();
    let model = load_model(&rec, &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    assert_eq!(model.num_trainable_params() as u64, rec.params);
    let tok = Tokenizer::from_dir(&rec.path).unwrap();
    let (x, y) = batch(&tok);
    let params = candle_nn::ParamsAdamW { lr: 3e-3, ..Default::default() };
    let mut opt = candle_nn::AdamW::new(model.trainable_vars(), params).unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = model.loss(&x, &y, ForwardMode::Train).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    println!("losses: {losses:?}");
    assert!(losses[0] > 5.0, "random init is near ln(260) = 5.56: {}", losses[0]);
    assert!(losses[7] < losses[0] - 0.5, "{losses:?}");
    // Saved weights reload to the same model.
    let out = d.path().join("saved");
    model.save(&out).unwrap();
    assert!(out.join("tokenizer.json").exists() && out.join("generation_config.json").exists());
    let again = load_model(out.as_path(), &LoadOptions::default()).unwrap();
    let a = model.forward_with(&x, 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = again.forward_with(&x, 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn nano_preset_lora_loss_falls() {
    let d = tempfile::tempdir().unwrap();
    let home = anneal::Home::open(d.path()).unwrap();
    let rec = home.models().create_preset("nano", &Default::default()).unwrap();
    let mut model = load_model(&rec, &LoadOptions::default()).unwrap();
    model.add_lora(&LoraConfig { target_modules: vec!["all-linear".into()], ..Default::default() }, 0).unwrap();
    let tok = Tokenizer::byte_level().unwrap();
    let (x, y) = batch(&tok);
    let mut opt =
        candle_nn::AdamW::new(model.trainable_vars(), candle_nn::ParamsAdamW { lr: 1e-2, ..Default::default() })
            .unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = model.loss(&x, &y, ForwardMode::Train).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    println!("losses: {losses:?}");
    assert!(losses[7] < losses[0] - 0.1, "{losses:?}");
}
