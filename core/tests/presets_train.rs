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

/// Throughput of full fine-tuning steps on the micro preset (hidden 128, 4 layers),
/// batch 8 x seq 128, the configuration CANDLE-NOTES.md measured (~4k tokens/s in
/// release). Run: cargo test -p anneal --test integration presets_train:: -- --ignored --nocapture
#[test]
#[ignore]
fn micro_preset_training_throughput() {
    let d = tempfile::tempdir().unwrap();
    let home = anneal::Home::open(d.path()).unwrap();
    let rec = home.models().create_preset("micro", &Default::default()).unwrap();
    for lora in [false, true] {
        let mut model = load_model(&rec, &LoadOptions { trainable: !lora, ..Default::default() }).unwrap();
        if lora {
            model.add_lora(&LoraConfig::default(), 0).unwrap();
        }
        let ids: Vec<u32> = (0..8 * 128).map(|i| (i * 7 % 256) as u32).collect();
        let x = Tensor::from_vec(ids.clone(), (8, 128), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), (8, 128), &Device::Cpu).unwrap();
        let mut opt =
            candle_nn::AdamW::new(model.trainable_vars(), candle_nn::ParamsAdamW { lr: 1e-3, ..Default::default() })
                .unwrap();
        let steps = 5;
        let start = std::time::Instant::now();
        for _ in 0..steps {
            let loss = model.loss(&x, &y, ForwardMode::Train).unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "micro {}: {:.0} tokens/s ({:.0} ms/step)",
            if lora { "lora" } else { "full" },
            (steps * 8 * 128) as f64 / secs,
            secs * 1000.0 / steps as f64
        );
    }
}
