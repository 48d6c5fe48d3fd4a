//! Criterion benches for the model layer: one full fine-tuning / LoRA training step
//! (forward + backward + AdamW) and one greedy decode step (full recompute), on the
//! nano and micro presets, batch 8 x seq 128 for training.
//!
//! Run: cargo bench -p anneal-benches --bench models

use anneal::{load_model, ForwardMode, Home, LoadOptions, LoraConfig, Model};
use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCH: usize = 8;
const SEQ: usize = 128;

fn model(home: &Home, preset: &str, lora: bool) -> Model {
    let rec = home
        .models()
        .create_preset(preset, &anneal::PresetOptions { name: Some(format!("{preset}-{lora}")), ..Default::default() })
        .expect("preset");
    let mut m = load_model(&rec, &LoadOptions { trainable: !lora, ..Default::default() }).expect("load");
    if lora {
        let cfg = LoraConfig { target_modules: vec!["all-linear".into()], ..Default::default() };
        m.add_lora(&cfg, 0).expect("lora");
    }
    m
}

fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..BATCH * SEQ).map(|i| (i * 7 % 256) as u32).collect();
    let labels: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    (
        Tensor::from_vec(ids, (BATCH, SEQ), &Device::Cpu).expect("ids"),
        Tensor::from_vec(labels, (BATCH, SEQ), &Device::Cpu).expect("labels"),
    )
}

fn train_step(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = Home::open(tmp.path()).expect("home");
    let (x, y) = batch();
    let mut g = c.benchmark_group("train/step");
    g.sample_size(10);
    g.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    for preset in ["nano", "micro"] {
        for lora in [false, true] {
            let m = model(&home, preset, lora);
            let params = candle_nn::ParamsAdamW { lr: 1e-4, ..Default::default() };
            let mut opt = candle_nn::AdamW::new(m.trainable_vars(), params).expect("adamw");
            let id = BenchmarkId::new(format!("cpu_f32_{}", if lora { "lora" } else { "full" }), preset);
            g.bench_function(id, |b| {
                b.iter(|| {
                    let loss = m.loss(&x, &y, ForwardMode::Train).expect("loss");
                    opt.backward_step(&loss).expect("step");
                })
            });
        }
    }
    g.finish();
}

fn decode_step(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = Home::open(tmp.path()).expect("home");
    let mut g = c.benchmark_group("generate/greedy_token");
    g.throughput(Throughput::Elements(1));
    for preset in ["nano", "micro"] {
        let m = model(&home, preset, false);
        let prompt: Vec<u32> = (0..64).map(|i| (i * 5 % 256) as u32).collect();
        for mode in [ForwardMode::Train, ForwardMode::Infer] {
            let id = BenchmarkId::new(format!("cpu_f32_prompt64_{mode:?}").to_lowercase(), preset);
            g.bench_function(id, |b| b.iter(|| m.greedy(&prompt, 1, &[], mode).expect("greedy")));
        }
    }
    g.finish();
}

criterion_group!(benches, train_step, decode_step);
criterion_main!(benches);
