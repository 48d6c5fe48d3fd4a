#![allow(clippy::unwrap_used)]
//! ModelRegistry end to end: HF directories (single and sharded), adapters, copy vs
//! reference, versions, aliases, filters, resolve, delete rules, presets, bad models.

use std::fs;
use std::path::Path;

use crate::common::{fixtures, model_dirs};
use anneal::{Home, ModelFilter, ModelId, ModelKind, PresetOptions, RecordingSink, RegisterOptions, Storage};

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

// ---- Door checks: whatever register_dir accepts can be loaded; a refusal leaves the
// ---- catalog and models/ as they were.

/// One tensor of a safetensors file: name, dtype, shape, bytes.
type StTensor = (String, String, Vec<u64>, Vec<u8>);

fn read_st(path: &Path) -> Vec<StTensor> {
    let data = fs::read(path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let body = &data[8 + n..];
    header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let offs: Vec<usize> =
                v["data_offsets"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let shape = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
            (k.clone(), v["dtype"].as_str().unwrap().to_string(), shape, body[offs[0]..offs[1]].to_vec())
        })
        .collect()
}

fn write_st(path: &Path, tensors: &[StTensor]) {
    let mut h = serde_json::Map::new();
    let mut body = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = body.len();
        body.extend_from_slice(bytes);
        h.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, body.len()]}),
        );
    }
    let hb = serde_json::to_vec(&serde_json::Value::Object(h)).unwrap();
    let mut file = (hb.len() as u64).to_le_bytes().to_vec();
    file.extend(hb);
    file.extend(body);
    fs::write(path, file).unwrap();
}

/// Rewrites the safetensors file `path` through `edit`.
fn edit_st(path: &Path, edit: impl FnOnce(&mut Vec<StTensor>)) {
    let mut t = read_st(path);
    edit(&mut t);
    write_st(path, &t);
}

/// Gives tensor `name` shape `shape` (its bytes cut or zero-padded to fit, same dtype).
fn reshape(t: &mut [StTensor], name: &str, shape: &[u64]) {
    let e = t.iter_mut().find(|e| e.0 == name).unwrap_or_else(|| panic!("no tensor {name}"));
    let width = e.3.len() as u64 / e.2.iter().product::<u64>();
    e.3.resize((shape.iter().product::<u64>() * width) as usize, 0);
    e.2 = shape.to_vec();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A copy of fixture `fixture` under `root/name`.
fn copy_fixture(root: &Path, fixture: &str, name: &str) -> std::path::PathBuf {
    let p = root.join(name);
    copy_dir(&fixtures().join(fixture), &p);
    p
}

/// Registers `dir` expecting invalid_data about `file` (a file name) and `field`, and
/// checks the refusal left the catalog and models/ as they were. Returns the reason.
fn refused(h: &Home, dir: &Path, opts: &RegisterOptions, file: &str, field: Option<&str>) -> String {
    let rows = h.models().list(&ModelFilter::default()).unwrap();
    let dirs = model_dirs(h);
    let e = h.models().register_dir(dir, opts).unwrap_err();
    let anneal::Error::InvalidData { location, reason } = &e else { panic!("expected invalid_data, got {e:?}") };
    let got = location.file.as_ref().and_then(|f| f.file_name()).map(|f| f.to_string_lossy().to_string());
    assert_eq!(got.as_deref(), Some(file), "{e}");
    assert_eq!(location.field.as_deref(), field, "{e}");
    assert_eq!(h.models().list(&ModelFilter::default()).unwrap(), rows, "the catalog changed: {e}");
    assert_eq!(model_dirs(h), dirs, "models/ changed: {e}");
    reason.clone()
}

#[test]
fn configs_that_cannot_be_loaded_are_refused_naming_the_field() {
    let (d, h) = home();
    let m = h.models();
    m.register_dir(fixtures().join("tiny-gpt2"), &named("kept")).unwrap();
    let opts = RegisterOptions::default();
    let cases: [(&str, &str, serde_json::Value, &str, &str); 8] = [
        ("tiny-llama", "hidden_size", serde_json::json!(-64), "hidden_size", "-64"),
        ("tiny-llama", "num_hidden_layers", serde_json::json!(0), "num_hidden_layers", "> 0"),
        ("tiny-llama", "max_position_embeddings", serde_json::json!(1u64 << 40), "max_position_embeddings", "larger"),
        ("tiny-llama", "intermediate_size", serde_json::json!(1u64 << 40), "intermediate_size", "larger"),
        ("tiny-qwen2", "rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps", "positive"),
        ("tiny-llama", "num_key_value_heads", serde_json::json!(3), "num_key_value_heads", "multiple"),
        ("tiny-gpt2", "n_head", serde_json::json!(3), "n_head", "multiple"),
        ("tiny-gpt2", "vocab_size", serde_json::json!(1u64 << 30), "vocab_size", "larger"),
    ];
    for (i, (fixture, key, value, field, says)) in cases.into_iter().enumerate() {
        let p = copy_fixture(d.path(), fixture, &format!("c{i}"));
        edit_json(&p.join("config.json"), |v| v[key] = value);
        let reason = refused(&h, &p, &opts, "config.json", Some(field));
        assert!(reason.contains(says), "{key}: {reason}");
    }
    // Heads that do not divide the width, without head_dim to say otherwise.
    let p = copy_fixture(d.path(), "tiny-llama", "heads");
    edit_json(&p.join("config.json"), |v| {
        v.as_object_mut().unwrap().remove("head_dim");
        v["num_attention_heads"] = serde_json::json!(6);
    });
    assert!(refused(&h, &p, &opts, "config.json", Some("head_dim")).contains("multiple of num_attention_heads"));
    // A config that parses but disagrees with the weights: vocab_size against the
    // embedding rows, read from the header.
    let p = copy_fixture(d.path(), "tiny-llama", "vocab");
    edit_json(&p.join("config.json"), |v| v["vocab_size"] = serde_json::json!(500));
    let reason = refused(&h, &p, &opts, "model.safetensors", Some("model.embed_tokens.weight"));
    assert!(reason.contains("[512, 64]") && reason.contains("[500, 64]") && reason.contains("vocab_size"), "{reason}");
    // Explicit head_dim: heads x head_dim need not be hidden_size, but q_proj must agree.
    let p = copy_fixture(d.path(), "tiny-llama", "heads-dim");
    edit_json(&p.join("config.json"), |v| v["num_attention_heads"] = serde_json::json!(2));
    let reason = refused(&h, &p, &opts, "model.safetensors", Some("model.layers.0.self_attn.q_proj.weight"));
    assert!(reason.contains("num_attention_heads * head_dim"), "{reason}");
    assert_eq!(m.list(&ModelFilter::default()).unwrap().len(), 1);
}

#[test]
fn tensors_are_checked_against_the_config_from_the_headers() {
    let (d, h) = home();
    let opts = RegisterOptions::default();
    // A wrong shape, named with its file and tensor.
    let p = copy_fixture(d.path(), "tiny-llama", "shape");
    edit_st(&p.join("model.safetensors"), |t| reshape(t, "model.layers.1.mlp.down_proj.weight", &[64, 100]));
    let reason = refused(&h, &p, &opts, "model.safetensors", Some("model.layers.1.mlp.down_proj.weight"));
    assert!(
        reason.contains("[64, 100]") && reason.contains("[64, 128]") && reason.contains("intermediate_size"),
        "{reason}"
    );
    // A missing tensor; the untied head when tie_word_embeddings is false.
    let p = copy_fixture(d.path(), "tiny-llama", "missing");
    edit_st(&p.join("model.safetensors"), |t| t.retain(|e| e.0 != "lm_head.weight"));
    assert!(refused(&h, &p, &opts, "model.safetensors", Some("lm_head.weight")).contains("missing tensor"));
    // A weight that is not floating point.
    let p = copy_fixture(d.path(), "tiny-qwen2", "dtype");
    edit_st(&p.join("model.safetensors"), |t| {
        t.iter_mut().find(|e| e.0 == "model.norm.weight").unwrap().1 = "U32".into();
    });
    assert!(refused(&h, &p, &opts, "model.safetensors", Some("model.norm.weight")).contains("dtype U32"));
    // Qwen2's q/k/v biases are required.
    let p = copy_fixture(d.path(), "tiny-qwen2", "bias");
    edit_st(&p.join("model.safetensors"), |t| t.retain(|e| e.0 != "model.layers.0.self_attn.k_proj.bias"));
    refused(&h, &p, &opts, "model.safetensors", Some("model.layers.0.self_attn.k_proj.bias"));
    // GPT-2: learned positions against n_positions.
    let p = copy_fixture(d.path(), "tiny-gpt2", "wpe");
    edit_json(&p.join("config.json"), |v| v["n_positions"] = serde_json::json!(256));
    let reason = refused(&h, &p, &opts, "model.safetensors", Some("transformer.wpe.weight"));
    assert!(reason.contains("n_positions"), "{reason}");
    // An extra tensor of a dtype the loader cannot read would fail the load: refused.
    let p = copy_fixture(d.path(), "tiny-llama", "extra-i32");
    edit_st(&p.join("model.safetensors"), |t| t.push(("extra.mask".into(), "I32".into(), vec![2], vec![0; 8])));
    assert!(refused(&h, &p, &opts, "model.safetensors", Some("extra.mask")).contains("I32"));
    assert!(h.models().list(&ModelFilter::default()).unwrap().is_empty());

    // Accepted: extra tensors the loader ignores (buffers of Hub checkpoints), and
    // Hub GPT-2 names without the `transformer.` prefix. Both load.
    let p = copy_fixture(d.path(), "tiny-llama", "extra");
    edit_st(&p.join("model.safetensors"), |t| {
        t.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), "F32".into(), vec![8], vec![0; 32]));
    });
    let rec = h.models().register_dir(&p, &named("extra")).unwrap();
    anneal::Model::load(&rec, &Default::default()).unwrap();
    let p = copy_fixture(d.path(), "tiny-gpt2", "bare-gpt2");
    edit_st(&p.join("model.safetensors"), |t| {
        for e in t.iter_mut() {
            e.0 = e.0.trim_start_matches("transformer.").to_string();
        }
        t.push(("h.0.attn.bias".into(), "U8".into(), vec![4], vec![1; 4]));
    });
    let rec = h.models().register_dir(&p, &named("bare")).unwrap();
    anneal::Model::load(&rec, &Default::default()).unwrap();
    // ... but a bare name with a wrong shape is named as the file names it.
    let p = copy_fixture(d.path(), "tiny-gpt2", "bare-bad");
    edit_st(&p.join("model.safetensors"), |t| {
        for e in t.iter_mut() {
            e.0 = e.0.trim_start_matches("transformer.").to_string();
        }
        reshape(t, "h.1.mlp.c_fc.weight", &[64, 200]);
    });
    refused(&h, &p, &opts, "model.safetensors", Some("h.1.mlp.c_fc.weight"));
}

#[test]
fn shards_are_checked_like_a_single_file() {
    let (d, h) = home();
    let src = fixtures().join("tiny-llama");
    let dir = d.path().join("sharded");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let tensors = read_st(&src.join("model.safetensors"));
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (name, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        write_st(&dir.join(name), part);
        for t in part {
            weight_map.insert(t.0.clone(), name.into());
        }
    }
    fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": weight_map}).to_string())
        .unwrap();
    let opts = RegisterOptions::default();
    // A wrong shape in the second shard is named with that shard.
    let second = dir.join("model-00002-of-00002.safetensors");
    let last = b.last().unwrap().0.clone();
    edit_st(&second, |t| reshape(t, &last, &[3]));
    refused(&h, &dir, &opts, "model-00002-of-00002.safetensors", Some(&last));
    write_st(&second, b);
    // A tensor in two shards is ambiguous.
    let first = dir.join("model-00001-of-00002.safetensors");
    edit_st(&first, |t| t.push(b[0].clone()));
    let reason = refused(&h, &dir, &opts, "model-00002-of-00002.safetensors", Some(&b[0].0));
    assert!(reason.contains("one shard only"), "{reason}");
    write_st(&first, a);
    // A tensor needed but in no shard is reported at the index.
    let dropped = a[0].0.clone();
    edit_st(&first, |t| t.retain(|e| e.0 != dropped));
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"].as_object_mut().unwrap().remove(&dropped);
    });
    refused(&h, &dir, &opts, "model.safetensors.index.json", Some(&dropped));
}

#[test]
fn tokenizers_must_load_and_fit_the_vocabulary() {
    let (d, h) = home();
    let opts = RegisterOptions::default();
    let p = copy_fixture(d.path(), "tiny-llama", "corrupt");
    fs::write(p.join("tokenizer.json"), r#"{"model": {"type": "BPE", "vocab": 3}}"#).unwrap();
    assert!(refused(&h, &p, &opts, "tokenizer.json", None).contains("cannot load tokenizer"));
    let p = copy_fixture(d.path(), "tiny-llama", "truncated");
    let text = fs::read(fixtures().join("tiny-llama/tokenizer.json")).unwrap();
    fs::write(p.join("tokenizer.json"), &text[..text.len() / 2]).unwrap();
    refused(&h, &p, &opts, "tokenizer.json", None);
    // A model whose embedding has fewer rows (400) than its tokenizer has ids (432).
    let p = copy_fixture(d.path(), "tiny-gpt2", "big-vocab");
    edit_json(&p.join("config.json"), |v| v["vocab_size"] = serde_json::json!(400));
    edit_st(&p.join("model.safetensors"), |t| reshape(t, "transformer.wte.weight", &[400, 64]));
    let reason = refused(&h, &p, &opts, "tokenizer.json", None);
    assert!(reason.contains("id 431") && reason.contains("vocab_size 400"), "{reason}");
    fs::remove_file(p.join("tokenizer.json")).unwrap();
    h.models().register_dir(&p, &named("small-vocab")).unwrap();
    // A tokenizer_config.json generation would fail to read.
    let p = copy_fixture(d.path(), "tiny-llama", "bad-tc");
    fs::write(p.join("tokenizer_config.json"), "{ nope").unwrap();
    refused(&h, &p, &opts, "tokenizer_config.json", None);
    // No tokenizer at all stays allowed (prompts are token ids then).
    let p = copy_fixture(d.path(), "tiny-llama", "no-tokenizer");
    fs::remove_file(p.join("tokenizer.json")).unwrap();
    let rec = h.models().register_dir(&p, &named("ids-only")).unwrap();
    assert_eq!(rec.tokenizer, None);
}

#[test]
fn adapters_must_agree_with_their_tensors_and_their_base() {
    let (d, h) = home();
    let m = h.models();
    let llama = m.register_dir(fixtures().join("tiny-llama"), &named("llama")).unwrap();
    let gpt2 = m.register_dir(fixtures().join("tiny-gpt2"), &named("gpt2")).unwrap();
    let nano = m.create_preset("nano", &PresetOptions::default()).unwrap();
    let on = |parent: &anneal::ModelRecord| RegisterOptions {
        parent: Some(parent.id.0.as_str().into()),
        ..Default::default()
    };
    let lora = |name: &str| copy_fixture(d.path(), "tiny-llama-lora", name);
    let cfg = "adapter_config.json";
    let st = "adapter_model.safetensors";
    let key = |module: &str, which: char| format!("base_model.model.model.layers.0.{module}.lora_{which}.weight");

    // r against the tensors.
    let p = lora("r");
    edit_json(&p.join(cfg), |v| v["r"] = serde_json::json!(8));
    let reason = refused(&h, &p, &on(&llama), st, Some(&key("mlp.down_proj", 'A')));
    assert!(reason.contains("r = 8"), "{reason}");
    // A tensor of a module target_modules leaves out.
    let p = lora("untargeted");
    edit_json(&p.join(cfg), |v| v["target_modules"] = serde_json::json!(["q_proj", "o_proj", "v_proj"]));
    let reason = refused(&h, &p, &on(&llama), st, Some(&key("mlp.down_proj", 'A')));
    assert!(reason.contains("not targeted"), "{reason}");
    // A targeted module of the base without tensors.
    let p = lora("untrained");
    edit_json(&p.join(cfg), |v| v["target_modules"].as_array_mut().unwrap().push("k_proj".into()));
    let reason = refused(&h, &p, &on(&llama), st, Some(&key("self_attn.k_proj", 'A')));
    assert!(reason.contains("k_proj"), "{reason}");
    // lora_A without lora_B, and a tensor that is no LoRA matrix.
    let p = lora("half");
    edit_st(&p.join(st), |t| t.retain(|e| e.0 != key("self_attn.q_proj", 'B')));
    refused(&h, &p, &on(&llama), st, Some(&key("self_attn.q_proj", 'B')));
    let p = lora("stranger");
    edit_st(&p.join(st), |t| {
        t.push(("base_model.model.lm_head.modules_to_save.weight".into(), "F32".into(), vec![2], vec![0; 8]));
    });
    refused(&h, &p, &on(&llama), st, Some("base_model.model.lm_head.modules_to_save.weight"));
    // A rank-inconsistent B.
    let p = lora("rank-b");
    edit_st(&p.join(st), |t| reshape(t, &key("self_attn.v_proj", 'B'), &[32, 2]));
    refused(&h, &p, &on(&llama), st, Some(&key("self_attn.v_proj", 'B')));
    // Unsupported PEFT features are refused at the door as the loader refuses them.
    let p = lora("dora");
    edit_json(&p.join(cfg), |v| v["use_dora"] = serde_json::json!(true));
    refused(&h, &p, &on(&llama), cfg, Some("use_dora"));

    // Against the base: the features of a base with another width...
    let reason = refused(&h, &lora("nano"), &on(&nano), st, Some(&key("mlp.down_proj", 'A')));
    assert!(
        reason.contains("[4, 128]") && reason.contains("[4, 176]") && reason.contains("intermediate_size"),
        "{reason}"
    );
    // ... the modules of another family ...
    let reason = refused(&h, &lora("gpt2"), &on(&gpt2), st, Some(&key("mlp.down_proj", 'A')));
    assert!(reason.contains("not a linear module") && reason.contains("c_attn"), "{reason}");
    let gpt2_lora = fixtures().join("variants/tiny-gpt2-lora");
    let reason =
        refused(&h, &gpt2_lora, &on(&llama), st, Some("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"));
    assert!(reason.contains("llama@1"), "{reason}");
    // ... and layers the base does not have.
    let p = lora("layers");
    edit_st(&p.join(st), |t| {
        for e in t.iter_mut() {
            e.0 = e.0.replace("layers.1.", "layers.7.");
        }
    });
    refused(&h, &p, &on(&llama), st, Some("base_model.model.model.layers.7.mlp.down_proj.lora_A.weight"));
    // A tokenizer shipped with the adapter must fit the base.
    let p = lora("tokenizer");
    fs::write(p.join("tokenizer.json"), "not json").unwrap();
    refused(&h, &p, &on(&llama), "tokenizer.json", None);
    assert_eq!(m.list(&ModelFilter::default()).unwrap().len(), 3);

    // The fixtures register and load onto their bases (GPT-2's Conv1D layout included).
    for (dir, base) in [(fixtures().join("tiny-llama-lora"), &llama), (gpt2_lora, &gpt2)] {
        let rec = m.register_dir(&dir, &on(base)).unwrap();
        let mut model = anneal::Model::load(base, &Default::default()).unwrap();
        model.load_adapter(&rec.path).unwrap();
    }
    // A regex target_modules selects the same modules.
    let p = lora("regex");
    edit_json(&p.join(cfg), |v| {
        v["target_modules"] = serde_json::json!(r"model\.layers\.\d+\.(self_attn\.(q|o|v)_proj|mlp\.down_proj)");
    });
    m.register_dir(&p, &on(&llama)).unwrap();
    edit_json(&p.join(cfg), |v| v["target_modules"] = serde_json::json!(r".*\.(q|o)_proj"));
    refused(&h, &p, &on(&llama), st, Some(&key("mlp.down_proj", 'A')));
}

/// An adapter that a job continues (`TrainSpec::init_adapter`, what a monitor's
/// `continue` retrain creates) cannot be deleted while that job may still run: the
/// refusal names the job, by whichever reference the spec used; once the job can no
/// longer run, the adapter goes.
#[test]
fn delete_refuses_an_adapter_a_pending_job_continues() {
    let (d, h) = home();
    let m = h.models();
    m.register_dir(fixtures().join("tiny-llama"), &named("llama")).unwrap();
    let lora = m
        .register_dir(
            fixtures().join("tiny-llama-lora"),
            &RegisterOptions { name: Some("assistant".into()), parent: Some("llama".into()), ..Default::default() },
        )
        .unwrap();
    m.set_alias(&lora.id, "production").unwrap();
    let p = d.path().join("t.jsonl");
    fs::write(&p, "{\"text\": \"the cat sat\"}\n{\"text\": \"the dog ran\"}\n").unwrap();
    h.datasets().import_file(&p, &Default::default()).unwrap();
    let spec = |init: &str| anneal::TrainSpec {
        base: "llama".into(),
        dataset: "t".into(),
        method: anneal::Method::Lora(anneal::LoraConfig::default()),
        init_adapter: Some(init.into()),
        max_steps: Some(1),
        seq_len: 32,
        ..Default::default()
    };
    let engine = h.training();
    for init in ["assistant@production", lora.id.0.as_str()] {
        let job = engine.create_job(&spec(init)).unwrap();
        let e = m.delete("assistant@1", false).unwrap_err();
        assert_eq!(e.code(), "in_use", "{init}: {e}");
        assert!(e.to_string().contains(&job.id.0), "{init}: {e}");
        assert!(lora.path.exists());
        assert_eq!(m.resolve("assistant@production").unwrap().id, lora.id);
        // Cancelled before it started: it will not run, and no longer holds the adapter.
        engine.cancel(&job.id).unwrap();
    }
    m.delete("assistant@1", false).unwrap();
    assert!(!lora.path.exists());
    assert_eq!(m.resolve("assistant@1").unwrap_err().code(), "not_found");
}
