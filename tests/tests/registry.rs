#![allow(clippy::unwrap_used)]
//! ModelRegistry end to end: HF directories (single and sharded), adapters, copy vs
//! reference, versions, aliases, filters, resolve, delete rules, presets, bad models.

mod common;

use std::fs;
use std::path::Path;

use anneal::{Home, ModelFilter, ModelId, ModelKind, PresetOptions, RecordingSink, RegisterOptions, Storage};
use common::{fixtures, model_dirs};

fn home() -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    (d, h)
}

fn named(name: &str) -> RegisterOptions {
    RegisterOptions { name: Some(name.into()), ..Default::default() }
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn registers_hf_directories_with_metadata() {
    let (_d, h) = home();
    let m = h.models();
    let llama = m.register_dir(fixtures().join("tiny-llama"), &RegisterOptions::default()).unwrap();
    assert_eq!((llama.name.as_str(), llama.version, llama.kind), ("tiny-llama", 1, ModelKind::Base));
    assert_eq!((llama.family.as_str(), llama.architecture.as_str()), ("llama", "LlamaForCausalLM"));
    assert_eq!(llama.dtype, "f32");
    assert_eq!(llama.tokenizer.as_deref(), Some("tokenizer.json"));
    assert!(llama.params > 0);
    assert_eq!(llama.storage, Storage::Copy);
    assert!(llama.path.join("model.safetensors").exists() && llama.path.starts_with(h.root()));
    let names: Vec<_> = llama.files.iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"config.json") && names.contains(&"model.safetensors") && names.contains(&"tokenizer.json")
    );
    assert_eq!(llama.bytes, llama.files.iter().map(|f| f.bytes).sum::<u64>());
    assert_eq!(llama.config["model_type"], "llama");
    let gpt2 = m.register_dir(fixtures().join("tiny-gpt2"), &RegisterOptions::default()).unwrap();
    assert_eq!((gpt2.family.as_str(), gpt2.architecture.as_str()), ("gpt2", "GPT2LMHeadModel"));
    let qwen = m.register_dir(fixtures().join("tiny-qwen2"), &RegisterOptions::default()).unwrap();
    assert_eq!(qwen.family, anneal::Family::Llama);
    // Parameter count from the headers equals the sum of tensor sizes.
    let bytes = fs::metadata(fixtures().join("tiny-llama/model.safetensors")).unwrap().len();
    assert!(llama.params * 4 < bytes && llama.params * 4 > bytes - 20_000);
    // The sha256 is stable: the same directory registered again has the same digest.
    let again = m.register_dir(fixtures().join("tiny-llama"), &RegisterOptions::default()).unwrap();
    assert_eq!((again.version, &again.sha256), (2, &llama.sha256));
}

#[test]
fn sharded_checkpoints_are_validated() {
    let (d, h) = home();
    // Split tiny-llama's tensors into two shards with an index.
    let src = fixtures().join("tiny-llama");
    let dir = d.path().join("sharded");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let data = fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors_split(&data);
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in st.iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        fs::write(dir.join(&name), &shard.1).unwrap();
        for t in &shard.0 {
            weight_map.insert(t.clone(), serde_json::Value::String(name.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let rec = h.models().register_dir(&dir, &named("sharded")).unwrap();
    let single = h.models().register_dir(&src, &named("single")).unwrap();
    assert_eq!(rec.params, single.params);
    assert_eq!(rec.files.iter().filter(|f| f.name.ends_with(".safetensors")).count(), 2);
    // A missing shard is named.
    fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = h.models().register_dir(&dir, &named("broken")).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("model-00002-of-00002.safetensors"), "{e}");
}

/// Splits a safetensors file into two (names, bytes) shards.
fn safetensors_split(data: &[u8]) -> Vec<(Vec<String>, Vec<u8>)> {
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let body = &data[8 + n..];
    let mut names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    names.sort();
    let half = names.len() / 2;
    [names[..half].to_vec(), names[half..].to_vec()]
        .into_iter()
        .map(|group| {
            let mut h = serde_json::Map::new();
            let mut out = Vec::new();
            for t in &group {
                let info = &header[t];
                let offs = info["data_offsets"].as_array().unwrap();
                let (s, e) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
                let start = out.len();
                out.extend_from_slice(&body[s..e]);
                h.insert(t.clone(), serde_json::json!({"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [start, out.len()]}));
            }
            let hb = serde_json::to_vec(&serde_json::Value::Object(h)).unwrap();
            let mut file = (hb.len() as u64).to_le_bytes().to_vec();
            file.extend(hb);
            file.extend(out);
            (group, file)
        })
        .collect()
}

#[test]
fn bad_model_directories_are_typed_errors() {
    let (d, h) = home();
    let m = h.models();
    let before = model_dirs(&h);
    let mk = |name: &str| {
        let p = d.path().join(name);
        copy_dir(&fixtures().join("tiny-llama"), &p);
        p
    };
    let p = mk("no-config");
    fs::remove_file(p.join("config.json")).unwrap();
    let e = m.register_dir(&p, &RegisterOptions::default()).unwrap_err();
    assert!(e.code() == "invalid_data" && e.to_string().contains("config.json"), "{e}");

    let p = mk("bad-json");
    fs::write(p.join("config.json"), "{ not json").unwrap();
    let e = m.register_dir(&p, &RegisterOptions::default()).unwrap_err();
    assert!(e.code() == "invalid_data" && e.to_string().contains("config.json"), "{e}");

    let p = mk("bert");
    fs::write(p.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let e = m.register_dir(&p, &RegisterOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unsupported model_type `bert`") && e.to_string().contains("`model_type`"), "{e}");

    let p = mk("no-weights");
    fs::remove_file(p.join("model.safetensors")).unwrap();
    let e = m.register_dir(&p, &RegisterOptions::default()).unwrap_err();
    assert!(e.code() == "invalid_data" && e.to_string().contains("no weights"), "{e}");

    let p = mk("truncated");
    let data = fs::read(p.join("model.safetensors")).unwrap();
    fs::write(p.join("model.safetensors"), &data[..data.len() - 100]).unwrap();
    let e = m.register_dir(&p, &RegisterOptions::default()).unwrap_err();
    assert!(e.code() == "invalid_data" && e.to_string().contains("model.safetensors"), "{e}");

    let e = m.register_dir(d.path().join("does-not-exist"), &RegisterOptions::default()).unwrap_err();
    assert_eq!(e.code(), "file_not_found");
    assert!(m.list(&ModelFilter::default()).unwrap().is_empty());
    assert_eq!(model_dirs(&h), before);
}

#[test]
fn adapters_reference_versions_aliases_and_delete() {
    let (_d, h) = home();
    let m = h.models();
    let base = m.register_dir(fixtures().join("tiny-llama"), &named("llama")).unwrap();
    // An adapter needs a parent (its base_model_name_or_path is not registered here).
    let e = m.register_dir(fixtures().join("tiny-llama-lora"), &RegisterOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    let lora = m
        .register_dir(
            fixtures().join("tiny-llama-lora"),
            &RegisterOptions {
                parent: Some("llama".into()),
                task: Some("qa".into()),
                tags: vec!["demo".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((lora.kind, lora.parent_id.as_ref(), lora.family.as_str()), (ModelKind::Lora, Some(&base.id), "llama"));
    assert!(lora.path.join("adapter_model.safetensors").exists());
    assert_eq!(lora.config["r"], 4);

    // Reference storage leaves files in place.
    let reference = m
        .register_dir(
            fixtures().join("tiny-llama"),
            &RegisterOptions { name: Some("llama".into()), storage: Storage::Reference, ..Default::default() },
        )
        .unwrap();
    assert_eq!((reference.version, reference.storage), (2, Storage::Reference));
    assert_eq!(reference.path, fs::canonicalize(fixtures().join("tiny-llama")).unwrap());
    let v3 = m.register_dir(fixtures().join("tiny-llama"), &named("llama")).unwrap();
    assert_eq!(v3.version, 3);

    // resolve
    assert_eq!(m.resolve("llama").unwrap().id, v3.id);
    assert_eq!(m.resolve("llama@1").unwrap().id, base.id);
    assert_eq!(m.resolve("llama@latest").unwrap().id, v3.id);
    assert_eq!(m.resolve(base.id.0.as_str()).unwrap().id, base.id);
    assert_eq!(m.resolve("llama@9").unwrap_err().code(), "not_found");
    assert_eq!(m.resolve("nope").unwrap_err().code(), "not_found");
    // aliases: set, move, remove
    m.set_alias("llama@1", "production").unwrap();
    assert_eq!(m.resolve("llama@production").unwrap().id, base.id);
    assert_eq!(m.get(&base.id).unwrap().aliases, vec!["production".to_string()]);
    m.set_alias(&v3.id, "production").unwrap();
    assert_eq!(m.resolve("llama@production").unwrap().id, v3.id);
    assert!(m.get(&base.id).unwrap().aliases.is_empty());
    m.set_alias("llama@2", "candidate").unwrap();
    m.remove_alias("llama", "candidate").unwrap();
    assert_eq!(m.resolve("llama@candidate").unwrap_err().code(), "not_found");
    assert_eq!(m.remove_alias("llama", "candidate").unwrap_err().code(), "not_found");
    for bad in ["3", "latest", "a b"] {
        assert_eq!(m.set_alias("llama", bad).unwrap_err().code(), "invalid_config", "{bad}");
    }

    // list with filters
    let all = m.list(&ModelFilter::default()).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(m.list(&ModelFilter { kind: Some(ModelKind::Lora), ..Default::default() }).unwrap().len(), 1);
    assert_eq!(m.list(&ModelFilter { name: Some("llama".into()), ..Default::default() }).unwrap().len(), 3);
    assert_eq!(m.list(&ModelFilter { tag: Some("demo".into()), ..Default::default() }).unwrap()[0].id, lora.id);
    assert_eq!(m.list(&ModelFilter { task: Some("qa".into()), ..Default::default() }).unwrap().len(), 1);
    assert_eq!(m.list(&ModelFilter { family: Some(anneal::Family::Gpt2), ..Default::default() }).unwrap().len(), 0);
    assert_eq!(m.list(&ModelFilter { parent: Some(base.id.clone()), ..Default::default() }).unwrap().len(), 1);

    // delete refuses while the adapter needs the base
    let e = m.delete("llama@1", false).unwrap_err();
    assert_eq!(e.code(), "in_use");
    assert!(e.to_string().contains(&lora.reference()), "{e}");
    // deleting a referenced model leaves the user's files alone
    m.delete("llama@2", false).unwrap();
    assert!(fixtures().join("tiny-llama/model.safetensors").exists());
    // the production alias goes with its model
    m.delete(&v3.id, false).unwrap();
    assert_eq!(m.resolve("llama@production").unwrap_err().code(), "not_found");
    // force deletes the base and its adapter, rows first, files last
    m.delete("llama@1", true).unwrap();
    assert!(m.list(&ModelFilter::default()).unwrap().is_empty());
    assert!(!base.path.exists() && !lora.path.exists());
    assert_eq!(m.get(&ModelId("mdl_missing".into())).unwrap_err().code(), "not_found");
}

#[test]
fn presets_create_loadable_seeded_models() {
    let (_d, h) = home();
    let m = h.models();
    let names: Vec<_> = anneal::ModelRegistry::presets().iter().map(|p| p.name).collect();
    assert!(names.contains(&"nano"));
    let a = m.create_preset("nano", &PresetOptions { seed: 1, ..Default::default() }).unwrap();
    let b =
        m.create_preset("nano", &PresetOptions { seed: 1, name: Some("nano-b".into()), ..Default::default() }).unwrap();
    let c = m.create_preset("nano", &PresetOptions { seed: 2, ..Default::default() }).unwrap();
    assert_eq!((a.name.as_str(), a.version, c.version), ("nano", 1, 2));
    assert_eq!(a.sha256, b.sha256, "same seed, same weights");
    assert_ne!(a.sha256, c.sha256);
    assert_eq!(a.lineage.preset.as_deref(), Some("nano"));
    assert_eq!(a.source, "preset:nano");
    assert_eq!(a.tokenizer.as_deref(), Some("tokenizer.json"));
    assert_eq!(a.config["vocab_size"], 260);
    assert_eq!(m.create_preset("huge", &PresetOptions::default()).unwrap_err().code(), "invalid_config");
    // The preset directory is a valid HF directory that registers like any other.
    let again = m.register_dir(&a.path, &named("copy-of-nano")).unwrap();
    assert_eq!(again.params, a.params);
    assert_eq!(again.sha256, a.sha256);
}

#[test]
fn registration_reports_progress_and_cancels_cleanly() {
    let (_d, h) = home();
    let rec = RecordingSink::new();
    let mut s = rec.clone();
    h.models()
        .register_dir_with(
            fixtures().join("tiny-llama"),
            &RegisterOptions::default(),
            &mut s,
            &anneal::CancelToken::new(),
        )
        .unwrap();
    let t = rec.types();
    assert_eq!((t.first(), t.last()), (Some(&"task_started"), Some(&"task_finished")));
    let cancel = anneal::CancelToken::new();
    cancel.cancel();
    let before = model_dirs(&h);
    let e = h
        .models()
        .register_dir_with(fixtures().join("tiny-gpt2"), &RegisterOptions::default(), &mut anneal::NoopSink, &cancel)
        .unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert_eq!(model_dirs(&h), before);
    assert_eq!(h.models().list(&ModelFilter::default()).unwrap().len(), 1);
}

/// Inserts a training job row the way the (upcoming) TrainingEngine will, using the
/// sqlite3 module of the system Python so the test needs no SQL driver of its own.
fn insert_job(home: &Home, job_id: &str, model_id: &str, dataset_id: &str) {
    let db = home.root().join("anneal.db");
    let py = format!(
        "import sqlite3; c = sqlite3.connect({db:?}); c.execute('PRAGMA foreign_keys=ON'); \
         c.execute(\"INSERT INTO jobs (id, status, base_model_id, dataset_id, spec, created_at, updated_at) \
         VALUES (?, 'pending', ?, ?, '{{}}', 'now', 'now')\", ({job_id:?}, {model_id:?}, {dataset_id:?})); c.commit()",
        db = db.display().to_string()
    );
    let ok = std::process::Command::new("python3").arg("-c").arg(py).status().unwrap().success();
    assert!(ok, "could not insert a job row");
}

#[test]
fn delete_refuses_while_a_job_depends_unless_forced() {
    let (d, h) = home();
    let base = h.models().create_preset("nano", &PresetOptions::default()).unwrap();
    let p = d.path().join("t.jsonl");
    fs::write(&p, "{\"text\": \"x\"}\n").unwrap();
    let ds = h.datasets().import_file(&p, &Default::default()).unwrap();
    insert_job(&h, "job_1", &base.id.0, &ds.id.0);
    let e = h.models().delete(&base.id, false).unwrap_err();
    assert_eq!(e.code(), "in_use");
    assert!(e.to_string().contains("job_1"), "{e}");
    let e = h.datasets().delete(&ds.id, false).unwrap_err();
    assert_eq!(e.code(), "in_use");
    assert!(e.to_string().contains("job_1"), "{e}");
    // Nothing was removed by the refusals.
    assert!(base.path.exists() && ds.path.exists());
    h.models().delete(&base.id, true).unwrap();
    h.datasets().delete(&ds.id, true).unwrap();
    assert!(!base.path.exists() && !ds.path.exists());
    assert!(h.models().list(&ModelFilter::default()).unwrap().is_empty());
}
