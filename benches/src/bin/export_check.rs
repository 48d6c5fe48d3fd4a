//! Writes exports for the consumer check (benches/consumers/check.py): registers each
//! model directory given, trains a LoRA adapter on it for a few steps, exports it as a
//! merged HF directory and as a PEFT adapter, and writes anneal's logits for fixed
//! token ids (merged export loaded by anneal; base + adapter) to `<out>/anneal.json`.
//!
//! Usage: export_check <out dir> <dataset.jsonl> <model dir>...

use std::path::PathBuf;

use anneal::{
    load_model, CancelToken, ExportFormat, ExportOptions, Home, ImportOptions, LoadOptions, LoraConfig, Method,
    NoopSink, RegisterOptions, TrainSpec,
};
use candle_core::Tensor;

fn logits(model: &anneal::Model, ids: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
    let x = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let out = model.forward(&x, 0)?.squeeze(0)?;
    Ok(out.to_vec2::<f32>()?)
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 3, "usage: export_check <out dir> <dataset.jsonl> <model dir>...");
    let out = PathBuf::from(&args[0]);
    let home = Home::open(out.join("home"))?;
    let ds = home.datasets().import_file(&args[1], &ImportOptions::default())?;
    let ids: Vec<u32> = vec![1, 5, 9, 14, 3, 7, 2, 11, 4, 8];
    let mut results = serde_json::Map::new();
    for dir in &args[2..] {
        let name = PathBuf::from(dir).file_name().unwrap_or_default().to_string_lossy().to_string();
        let base =
            home.models().register_dir(dir, &RegisterOptions { name: Some(name.clone()), ..Default::default() })?;
        let spec = TrainSpec {
            base: base.id.clone().into(),
            dataset: ds.id.clone(),
            method: Method::Lora(LoraConfig::default()),
            batch_size: 4,
            seq_len: 32,
            max_steps: Some(4),
            learning_rate: 2e-2,
            ..Default::default()
        };
        let job = home.training().create_job(&spec)?;
        let report = home.training().run(&job.id, &mut NoopSink, &CancelToken::new())?;
        let merged_dir = out.join(format!("{name}-merged"));
        let peft_dir = out.join(format!("{name}-peft"));
        let overwrite = ExportOptions { overwrite: true, base_model: Some(dir.clone()), ..Default::default() };
        home.models().export(&report.model_id, ExportFormat::Hf, &merged_dir, &overwrite)?;
        home.models().export(&report.model_id, ExportFormat::Peft, &peft_dir, &overwrite)?;
        let merged = load_model(merged_dir.as_path(), &LoadOptions::default())?;
        let mut adapted = load_model(&base, &LoadOptions::default())?;
        adapted.load_adapter(&peft_dir)?;
        let plain = load_model(&base, &LoadOptions::default())?;
        results.insert(
            name,
            serde_json::json!({
                "base_dir": dir,
                "merged_dir": merged_dir,
                "peft_dir": peft_dir,
                "ids": ids,
                "merged": logits(&merged, &ids)?,
                "adapter": logits(&adapted, &ids)?,
                "base": logits(&plain, &ids)?,
            }),
        );
    }
    std::fs::write(out.join("anneal.json"), serde_json::to_vec(&results)?)?;
    println!("wrote {}", out.join("anneal.json").display());
    Ok(())
}
