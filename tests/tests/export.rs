//! Export and bundles: an adapter merged into an HF directory scores like the adapter
//! on its base; a PEFT export re-registers; a bundle restores the same ids and
//! content in another home, and a tampered, truncated or unsafe bundle is refused
//! with nothing registered.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::path::Path;

use anneal::{
    CancelToken, ExportFormat, ExportOptions, Home, ImportBundleOptions, ImportOptions, LoraConfig, Method,
    ModelFilter, ModelRecord, NoopSink, RegisterOptions, TrainSpec,
};

use crate::common;

const TEXTS: [&str; 3] = ["the cat sat on the mat 3", "a dog ran to the park", "hello world"];

fn home(dir: &Path, name: &str) -> Home {
    Home::open(dir.join(name)).unwrap()
}

/// A nano base and a LoRA adapter trained on it for a few steps (B != 0).
fn trained_lora(home: &Home) -> (ModelRecord, ModelRecord) {
    trained(home, Method::Lora(LoraConfig::default()))
}

/// A nano base and a model trained on it with `method` for a few steps.
fn trained(home: &Home, method: Method) -> (ModelRecord, ModelRecord) {
    let base = home.models().create_preset("nano", &Default::default()).unwrap();
    let records = (0..16).map(|i| Ok(serde_json::json!({"text": format!("the cat sat on the mat {i}")})));
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method,
        batch_size: 4,
        seq_len: 32,
        max_steps: Some(3),
        learning_rate: 1e-2,
        output_name: Some("cat".into()),
        ..Default::default()
    };
    let job = home.training().create_job(&spec).unwrap();
    let report = home.training().run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
    (base, home.models().get(&report.model_id).unwrap())
}

fn losses(home: &Home, model: &str) -> Vec<f64> {
    let g = home.generator(model, &Default::default()).unwrap();
    g.score(&TEXTS).unwrap().iter().map(|s| s.loss).collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn hf_export_merges_the_adapter_and_shards() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (base, lora) = trained_lora(&h);
    let with_adapter = losses(&h, &lora.id.0);
    assert!((with_adapter[0] - losses(&h, &base.id.0)[0]).abs() > 1e-4, "the adapter changes nothing");

    let dest = d.path().join("out/merged");
    let report = h.models().export(&lora.id, ExportFormat::Hf, &dest, &ExportOptions::default()).unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    for want in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for f in &report.files {
        let bytes = fs::read(dest.join(&f.path)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.path);
    }
    let card = fs::read_to_string(dest.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlibrary_name: transformers\n"), "{card}");
    assert!(card.contains(&base.reference()) && card.contains("LoRA r=8"), "{card}");
    // No temporary directory is left beside the destination.
    let left: Vec<_> = fs::read_dir(d.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // The merged directory registers as a full model that scores like base + adapter.
    let merged =
        h.models().register_dir(&dest, &RegisterOptions { name: Some("merged".into()), ..Default::default() }).unwrap();
    assert_close(&losses(&h, &merged.id.0), &with_adapter, 1e-4);

    // Sharded: shards of a third of the weights, an index, and the same scores.
    let sharded = d.path().join("out/sharded");
    let total = report.files.iter().find(|f| f.path == "model.safetensors").unwrap().bytes;
    let opts = ExportOptions { max_shard_bytes: Some(total / 3), ..Default::default() };
    let report = h.models().export(&lora.id, ExportFormat::Hf, &sharded, &opts).unwrap();
    let shards = report.files.iter().filter(|f| f.path.starts_with("model-0")).count();
    assert!(shards >= 2, "{:?}", report.files);
    assert!(sharded.join("model.safetensors.index.json").is_file());
    assert!(!sharded.join("model.safetensors").exists());
    let again = h
        .models()
        .register_dir(&sharded, &RegisterOptions { name: Some("sharded".into()), ..Default::default() })
        .unwrap();
    assert_close(&losses(&h, &again.id.0), &with_adapter, 1e-4);

    // An existing destination is refused, then replaced with overwrite.
    let e = h.models().export(&base.id, ExportFormat::Hf, &dest, &ExportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "already_exists", "{e}");
    let opts = ExportOptions { overwrite: true, ..Default::default() };
    h.models().export(&base.id, ExportFormat::Hf, &dest, &opts).unwrap();
    let card = fs::read_to_string(dest.join("README.md")).unwrap();
    assert!(card.contains(&format!("# {}", base.reference())), "{card}");
    let left: Vec<_> = fs::read_dir(d.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn peft_export_points_at_the_base_and_reregisters() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (base, lora) = trained_lora(&h);
    let dest = d.path().join("adapter");
    let opts = ExportOptions { base_model: Some("org/nano-base".into()), ..Default::default() };
    h.models().export(&lora.id, ExportFormat::Peft, &dest, &opts).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dest.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "org/nano-base");
    let card = fs::read_to_string(dest.join("README.md")).unwrap();
    assert!(card.contains("library_name: peft") && card.contains("base_model: \"org/nano-base\""), "{card}");
    let weights = |dir: &Path| fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&dest), weights(&lora.path));
    let opts =
        RegisterOptions { parent: Some(base.id.clone().into()), name: Some("again".into()), ..Default::default() };
    let again = h.models().register_dir(&dest, &opts).unwrap();
    assert_close(&losses(&h, &again.id.0), &losses(&h, &lora.id.0), 1e-9);

    // A base model is not an adapter.
    let e = h.models().export(&base.id, ExportFormat::Peft, d.path().join("x"), &ExportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    assert!(!d.path().join("x").exists());
}

#[test]
fn bundle_restores_the_same_ids_and_content_in_another_home() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (base, lora) = trained_lora(&h);
    let zip = d.path().join("cat.zip");
    let report = h.models().export(&lora.id, ExportFormat::Bundle, &zip, &ExportOptions::default()).unwrap();
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.files[0].bytes, fs::metadata(&zip).unwrap().len());

    let other = home(d.path(), "other");
    let got = other.models().import_bundle(&zip, &ImportBundleOptions::default()).unwrap();
    assert_eq!(got.id, lora.id);
    assert_eq!(got.sha256, lora.sha256);
    assert_eq!(got.parent_id.as_ref(), Some(&base.id));
    assert_eq!(got.lineage.base, lora.lineage.base);
    let got_base = other.models().get(&base.id).unwrap();
    assert_eq!(got_base.sha256, base.sha256);
    assert_eq!(losses(&other, &got.id.0), losses(&h, &lora.id.0));

    // Importing again reuses what is there (same ids, same content): nothing new.
    let e = other.models().import_bundle(&zip, &ImportBundleOptions::default());
    assert!(e.is_ok(), "{e:?}");
    assert_eq!(other.models().list(&ModelFilter::default()).unwrap().len(), 2);
}

#[test]
fn a_full_fine_tune_bundle_restores_without_its_base() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (base, full) = trained(&h, Method::Full);
    assert_eq!(full.parent_id.as_ref(), Some(&base.id));
    let zip = d.path().join("full.zip");
    h.models().export(&full.id, ExportFormat::Bundle, &zip, &ExportOptions::default()).unwrap();

    // The other home has never seen the base: the model comes alone, with its lineage.
    let other = home(d.path(), "other");
    let got = other.models().import_bundle(&zip, &ImportBundleOptions::default()).unwrap();
    assert_eq!(got.id, full.id);
    assert_eq!(got.sha256, full.sha256);
    assert_eq!(got.parent_id, None);
    assert_eq!(got.lineage.base, full.lineage.base);
    assert!(other.models().get(&base.id).is_err());
    assert_eq!(losses(&other, &got.id.0), losses(&h, &full.id.0));

    // A home that has the base keeps the link.
    let third = home(d.path(), "third");
    let base_zip = d.path().join("base.zip");
    h.models().export(&base.id, ExportFormat::Bundle, &base_zip, &ExportOptions::default()).unwrap();
    third.models().import_bundle(&base_zip, &ImportBundleOptions::default()).unwrap();
    let got = third.models().import_bundle(&zip, &ImportBundleOptions::default()).unwrap();
    assert_eq!(got.parent_id.as_ref(), Some(&base.id));
}

/// The bytes of `zip` with the entry `name`'s stored data changed at `at`.
fn tamper(zip: &[u8], name: &str, at: usize) -> Vec<u8> {
    // A stored entry's local header: signature, ..., name, extra, then the raw bytes.
    let needle = name.as_bytes();
    let pos = zip.windows(needle.len()).position(|w| w == needle).unwrap();
    let header = pos - 30;
    assert_eq!(&zip[header..header + 4], b"PK\x03\x04");
    let extra = u16::from_le_bytes([zip[header + 28], zip[header + 29]]) as usize;
    let data = pos + needle.len() + extra;
    let mut out = zip.to_vec();
    out[data + at] ^= 0x5a;
    out
}

#[test]
fn tampered_truncated_or_unsafe_bundles_are_refused_and_leave_nothing() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (_, lora) = trained_lora(&h);
    let zip = d.path().join("cat.zip");
    h.models().export(&lora.id, ExportFormat::Bundle, &zip, &ExportOptions::default()).unwrap();
    let bytes = fs::read(&zip).unwrap();
    let other = home(d.path(), "other");
    let nothing_left = |what: &str| {
        assert!(other.models().list(&ModelFilter::default()).unwrap().is_empty(), "{what}: a model was registered");
        assert!(common::model_dirs(&other).is_empty(), "{what}: {:?}", common::model_dirs(&other));
    };

    let entry = format!("models/{}/adapter_model.safetensors", lora.id.0);
    let bad = d.path().join("bad.zip");
    fs::write(&bad, tamper(&bytes, &entry, 200)).unwrap();
    let e = other.models().import_bundle(&bad, &ImportBundleOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    assert!(e.to_string().contains(&entry), "{e}");
    nothing_left("tampered");

    fs::write(&bad, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = other.models().import_bundle(&bad, &ImportBundleOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    assert!(e.to_string().contains("bad.zip"), "{e}");
    nothing_left("truncated");

    // An entry that climbs out of the home.
    let mut w = zip::ZipWriter::new(fs::File::create(&bad).unwrap());
    let mut src = zip::ZipArchive::new(fs::File::open(&zip).unwrap()).unwrap();
    for i in 0..src.len() {
        w.raw_copy_file(src.by_index(i).unwrap()).unwrap();
    }
    w.start_file("../escape.txt", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(b"x").unwrap();
    w.finish().unwrap();
    let e = other.models().import_bundle(&bad, &ImportBundleOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    assert!(e.to_string().contains("escape.txt"), "{e}");
    assert!(!d.path().join("escape.txt").exists());
    nothing_left("unsafe name");

    // Not a file at all.
    let e = other.models().import_bundle(d.path(), &ImportBundleOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
}

#[test]
fn a_classifier_travels_as_a_bundle_only() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let mut text = String::new();
    for i in 0..60 {
        let c = i % 3;
        let plan = ["a", "b", "c"][c];
        let row =
            serde_json::json!({"x": c as f64 + (i as f64 * 0.37).sin() * 0.3, "plan": plan, "label": format!("k{c}")});
        text.push_str(&format!("{row}\n"));
    }
    let p = common::write(d.path(), "rows.jsonl", text.as_bytes());
    let ds = h.datasets().import_file(&p, &ImportOptions { name: Some("rows".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        dataset: ds.id.clone(),
        method: Method::Classifier(Default::default()),
        output_name: Some("clf".into()),
        ..Default::default()
    };
    let job = h.training().create_job(&spec).unwrap();
    let report = h.training().run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
    let e = h
        .models()
        .export(&report.model_id, ExportFormat::Hf, d.path().join("x"), &ExportOptions::default())
        .unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    assert!(e.to_string().contains("bundle"), "{e}");

    let zip = d.path().join("clf.zip");
    h.models().export(&report.model_id, ExportFormat::Bundle, &zip, &ExportOptions::default()).unwrap();
    let other = home(d.path(), "other");
    let opts = ImportBundleOptions { name: Some("churn".into()) };
    let got = other.models().import_bundle(&zip, &opts).unwrap();
    assert_eq!(
        (got.id.clone(), got.name.as_str(), got.kind),
        (report.model_id.clone(), "churn", anneal::ModelKind::Classifier)
    );
    let row = serde_json::json!({"x": 1.2, "plan": "b"}).as_object().unwrap().clone();
    let ours = h.predictor(&report.model_id, &Default::default()).unwrap().predict(&row).unwrap();
    let theirs = other.predictor(&got.id, &Default::default()).unwrap().predict(&row).unwrap();
    assert_eq!(ours.label, theirs.label);
    assert_eq!(ours.probabilities, theirs.probabilities);
}

#[test]
fn a_cancelled_export_leaves_the_destination_as_it_was() {
    let d = tempfile::tempdir().unwrap();
    let h = home(d.path(), "h");
    let (_, lora) = trained_lora(&h);
    let cancel = CancelToken::new();
    cancel.cancel();
    for (format, dest) in [(ExportFormat::Hf, "merged"), (ExportFormat::Peft, "peft"), (ExportFormat::Bundle, "b.zip")]
    {
        let dest = d.path().join("out").join(dest);
        let e = h
            .models()
            .export_with(&lora.id, format, &dest, &ExportOptions::default(), &mut NoopSink, &cancel)
            .unwrap_err();
        assert_eq!(e.code(), "cancelled", "{format}: {e}");
        assert!(!dest.exists(), "{format}");
    }
    let left: Vec<_> = fs::read_dir(d.path().join("out")).map(|r| r.count()).into_iter().collect();
    assert!(left.iter().all(|n| *n == 0), "{left:?}");
}
