//! Tokens/s of a whole training job (TrainingEngine::run), and the engine's overhead.
//!
//! Run:    cargo run --release -p anneal-benches --bin train_job -- --config tiny|small --method full|lora [--steps 12]
//! Output: one JSON line: job wall time, tokens/s of the whole job, the time spent inside
//!         optimiser steps (from the step events), and the engine's share: model loading,
//!         tokenisation and packing, catalog writes, events, checkpoint, registration.
//!
//! The model is the bench config (see train_step.rs) with the byte-level tokenizer, and
//! the dataset random letters imported as `text` (packed into full sequences).

use std::time::Instant;

use anneal::{
    CancelToken, Event, EventSink, Home, ImportOptions, LoraConfig, Method, RecordingSink, RegisterOptions, TrainSpec,
};
use serde_json::json;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    let config = arg(&args, "--config", "tiny");
    let method = arg(&args, "--method", "lora");
    let steps: u64 = arg(&args, "--steps", "12").parse()?;
    let dir = tempfile::tempdir()?;
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir)?;
    let status = std::process::Command::new(std::env::current_exe()?.with_file_name("train_step"))
        .args(["--config", &config, "--write-model", model_dir.to_str().unwrap_or_default()])
        .status()?;
    anyhow::ensure!(
        status.success(),
        "train_step --write-model failed (build it: cargo build --release -p anneal-benches)"
    );
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    let (batch, seq) = if config == "tiny" { (8usize, 128usize) } else { (4, 256) };

    let home = Home::open(dir.path().join("home"))?;
    let base = home
        .models()
        .register_dir(&model_dir, &RegisterOptions { name: Some(config.clone()), ..Default::default() })?;
    // Random letters, enough for `steps` full batches once packed (1 byte = 1 token).
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let needed = steps as usize * batch * seq * 11 / 10 + seq;
    let records = (0..needed / 200 + 1).map(move |_| {
        let text: String = (0..199)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (b'a' + (state % 26) as u8) as char
            })
            .collect();
        Ok(json!({ "text": text }))
    });
    let ds = home
        .datasets()
        .import_records(records, &ImportOptions { name: Some("letters".into()), ..Default::default() })?;
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: ds.id,
        method: if method == "full" {
            Method::Full
        } else {
            let targets: Vec<String> = if cfg["model_type"] == "gpt2" {
                vec!["c_attn".into(), "c_proj".into()]
            } else {
                ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec()
            };
            Method::Lora(LoraConfig { r: 8, alpha: 16.0, target_modules: targets, ..Default::default() })
        },
        max_steps: Some(steps),
        batch_size: batch,
        seq_len: seq,
        learning_rate: 1e-4,
        ..Default::default()
    };
    let engine = home.training();
    let job = engine.create_job(&spec)?;
    let rec = RecordingSink::new();
    let mut sink = rec.clone();
    let t = Instant::now();
    let report = engine.run(&job.id, &mut sink as &mut dyn EventSink, &CancelToken::new())?;
    let wall = t.elapsed().as_secs_f64();
    // Each step event carries that step's tokens/s; with packed text every step is a full batch.
    let step_secs: f64 = rec
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Step { tokens_per_sec, .. } if *tokens_per_sec > 0.0 => Some((batch * seq) as f64 / tokens_per_sec),
            _ => None,
        })
        .sum();
    println!(
        "{}",
        json!({
            "impl": "anneal-job", "config": config, "method": method, "steps": report.steps, "tokens": report.tokens,
            "job_wall_s": (wall * 1000.0).round() / 1000.0,
            "job_tokens_per_s": (report.tokens as f64 / wall * 10.0).round() / 10.0,
            "inside_steps_s": (step_secs * 1000.0).round() / 1000.0,
            "step_tokens_per_s": (report.tokens as f64 / step_secs * 10.0).round() / 10.0,
            "engine_overhead_share": ((1.0 - step_secs / wall) * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
