#![allow(clippy::unwrap_used)]
//! Sizes that reach an allocation are checked against the model and the home's memory
//! limit first: absurd ranks, caches and batches are typed errors, never an abort.

use crate::common;

use std::path::Path;

use anneal::{
    Error, GenerationConfig, GeneratorOptions, Home, HomeOptions, ImportOptions, LoadOptions, LoraConfig, Method,
    Model, Prompt, RegisterOptions, TrainSpec,
};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn home_with_limit(dir: &Path, limit: u64) -> Home {
    Home::open_with(dir.join("home"), &HomeOptions { memory_limit: Some(limit) }).unwrap()
}

fn config_field(e: &Error) -> &str {
    match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected invalid_config, got {other:?}"),
    }
}

/// A copy of the tiny Llama fixture with `edit` applied to its config.json.
fn edited_llama(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let src = common::fixtures().join("tiny-llama");
    let dst = dir.join("edited-llama");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

/// The nano preset and a small text dataset named `t`.
fn nano_and_text(h: &Home) -> anneal::ModelRecord {
    let base = h.models().create_preset("nano", &Default::default()).unwrap();
    let recs = (0..8).map(|i| Ok(json!({"text": format!("record {i}")})));
    h.datasets().import_records(recs, &ImportOptions { name: Some("t".into()), ..Default::default() }).unwrap();
    base
}

#[test]
fn the_memory_limit_is_an_option_with_a_default_from_the_machine() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("a")).unwrap();
    assert_eq!(h.memory_limit(), anneal::default_memory_limit());
    assert!(h.memory_limit() > 0 && h.memory_limit() < anneal::machine_memory());
    assert_eq!(home_with_limit(d.path(), 123 * MIB).memory_limit(), 123 * MIB);
    let e = Home::open_with(d.path().join("b"), &HomeOptions { memory_limit: Some(0) }).unwrap_err();
    assert_eq!(config_field(&e), "memory_limit");
}

#[test]
fn a_training_job_that_cannot_fit_in_memory_is_refused_at_creation() {
    let d = tempfile::tempdir().unwrap();
    let h = home_with_limit(d.path(), 48 * MIB);
    let base = nano_and_text(&h);
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: "t".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 32,
        ..Default::default()
    };
    h.training().create_job(&spec).unwrap();
    let e = h.training().create_job(&TrainSpec { batch_size: 1 << 20, ..spec.clone() }).unwrap_err();
    assert_eq!(config_field(&e), "batch_size");
    assert!(e.to_string().contains("memory limit of 48.0 MiB"), "{e}");
    // Nothing was stored for the refused job.
    assert_eq!(h.training().jobs(&Default::default()).unwrap().len(), 1);
}

#[test]
fn a_run_checks_the_memory_limit_of_its_own_process() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    let base = nano_and_text(&h);
    let spec = TrainSpec {
        base: base.id.into(),
        dataset: "t".into(),
        method: Method::Full,
        batch_size: 64,
        seq_len: 64,
        max_steps: Some(1),
        ..Default::default()
    };
    let job = h.training().create_job(&spec).unwrap();
    // Another process with a lower limit picks the job up: refused before loading anything.
    let small = Home::open_with(h.root(), &HomeOptions { memory_limit: Some(8 * MIB) }).unwrap();
    let e = small.training().run(&job.id, &mut anneal::NoopSink, &Default::default()).unwrap_err();
    assert_eq!(config_field(&e), "batch_size");
    assert_eq!(small.training().job(&job.id).unwrap().status, anneal::JobStatus::Failed);
}

#[test]
fn a_huge_lora_rank_is_an_error_not_an_abort() {
    let d = tempfile::tempdir().unwrap();
    let mut model = Model::load(common::fixtures().join("tiny-llama"), &LoadOptions::default()).unwrap();
    let cfg = LoraConfig { r: 1 << 40, ..Default::default() };
    let e = model.add_lora(&cfg, 0).unwrap_err();
    assert_eq!(config_field(&e), "r");
    assert!(model.lora_config().is_none());
    // Through a job: refused at creation (wider than any layer).
    let h = Home::open(d.path().join("home")).unwrap();
    let base = nano_and_text(&h);
    let spec = TrainSpec {
        base: base.id.into(),
        dataset: "t".into(),
        method: Method::Lora(cfg),
        seq_len: 32,
        ..Default::default()
    };
    assert_eq!(config_field(&h.training().create_job(&spec).unwrap_err()), "method.lora.r");
}

#[test]
fn a_kv_cache_beyond_the_memory_limit_is_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let h = home_with_limit(d.path(), 1 << 30);
    // 2^22 positions x 2 layers x 2 (k, v) x 2 kv heads x 16 dims x 4 bytes = 2 GiB.
    let dir = edited_llama(d.path(), |c| c["max_position_embeddings"] = json!(1u64 << 22));
    let m = h.models().register_dir(&dir, &RegisterOptions::default()).unwrap();
    let g = h.generator(m.id, &GeneratorOptions::default()).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(1_000_000_000_000), ..Default::default() };
    let e = g.generate(Prompt::Tokens(vec![1, 2, 3]), &cfg).unwrap_err();
    assert_eq!(config_field(&e), "max_new_tokens");
    assert!(e.to_string().contains("KV cache 2.0 GiB"), "{e}");
    // A request that fits still works on the same generator.
    let ok = GenerationConfig { max_new_tokens: Some(4), ..Default::default() };
    assert!(!g.generate(Prompt::Tokens(vec![1, 2, 3]), &ok).unwrap().token_ids.is_empty());
}

#[test]
fn a_generator_stops_serving_a_model_deleted_under_it() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    let m = h.models().create_preset("nano", &Default::default()).unwrap();
    let g = h.generator(m.id.clone(), &GeneratorOptions::default()).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(2), ..Default::default() };
    g.generate("abc", &cfg).unwrap();
    h.models().delete(m.id.clone(), false).unwrap();
    let e = g.generate("abc", &cfg).unwrap_err();
    assert_eq!(e.code(), "not_found", "{e}");
    assert!(e.to_string().contains(&m.id.0), "{e}");
    assert_eq!(g.score(&["abc def"]).unwrap_err().code(), "not_found");
}

/// Overwrites the f32 data of tensor `name` in a safetensors file with NaN.
fn poison(file: &Path, name: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let offs = &header[name]["data_offsets"];
    let (a, b) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
    for chunk in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn scoring_with_broken_weights_says_why() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    let dir = edited_llama(d.path(), |_| {});
    poison(&dir.join("model.safetensors"), "model.norm.weight");
    let m = h.models().register_dir(&dir, &RegisterOptions::default()).unwrap();
    let g = h.generator(m.id, &GeneratorOptions::default()).unwrap();
    let e = g.score(&["hello world"]).unwrap_err();
    assert_eq!(e.code(), "compute");
    assert!(e.to_string().contains("texts[0] is NaN") && e.to_string().contains("not finite"), "{e}");
}

#[test]
fn register_dir_follows_symlinks_and_refuses_special_files_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    // A Hugging Face cache snapshot: every file a symlink to a blob.
    let snap = d.path().join("snapshot");
    std::fs::create_dir_all(&snap).unwrap();
    for e in std::fs::read_dir(common::fixtures().join("tiny-llama")).unwrap() {
        let e = e.unwrap();
        std::os::unix::fs::symlink(e.path(), snap.join(e.file_name())).unwrap();
    }
    h.models().register_dir(&snap, &RegisterOptions::default()).unwrap();
    // A FIFO in place of a weights file: refused at once, nothing stored.
    let fifo_dir = edited_llama(d.path(), |_| {});
    let weights = fifo_dir.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&weights).status().unwrap();
    assert!(status.success());
    let before = common::model_dirs(&h);
    let e = h.models().register_dir(&fifo_dir, &RegisterOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    assert!(e.to_string().contains("model.safetensors") && e.to_string().contains("FIFO"), "{e}");
    assert_eq!(common::model_dirs(&h), before);
}
