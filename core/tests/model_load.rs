//! Loading: registry records, sharded files, and typed errors for bad inputs.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anneal::{load_model, ErrorKind, ForwardMode, LoadOptions, Model};
use candle_core::{Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn logits(m: &Model) -> Vec<f32> {
    let x = Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    m.forward_with(&x, 0, ForwardMode::Infer).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let src = Path::new(FIXTURES).join("tiny-llama");
    let d = tempfile::tempdir().unwrap();
    copy_dir(&src, d.path());
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let (mut a, mut b) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (k, t)) in all.into_iter().enumerate() {
        let shard = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(k.clone(), shard.into());
        if i % 2 == 0 {
            a.insert(k, t)
        } else {
            b.insert(k, t)
        };
    }
    candle_core::safetensors::save(&a, d.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(d.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = Model::load(d.path(), &LoadOptions::default()).unwrap();
    let single = Model::load(&src, &LoadOptions::default()).unwrap();
    assert_eq!(logits(&sharded), logits(&single));
}

#[test]
fn registry_record_loads() {
    let td = tempfile::tempdir().unwrap();
    let home = anneal::Home::open(td.path()).unwrap();
    let rec = home.models().register_dir(Path::new(FIXTURES).join("tiny-gpt2"), &Default::default()).unwrap();
    let m = load_model(&rec, &LoadOptions::default()).unwrap();
    assert_eq!(m.config().model_type, "gpt2");
    assert_eq!(logits(&m), logits(&Model::load(Path::new(FIXTURES).join("tiny-gpt2"), &Default::default()).unwrap()));
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn bad_inputs_are_typed_errors_naming_the_culprit() {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(FIXTURES).join("tiny-llama"), d.path());
    // Unsupported model type.
    edit_config(d.path(), |v| v["model_type"] = "bert".into());
    let e = Model::load(d.path(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("bert"), "{e}");
    // Shapes that don't match the weights.
    edit_config(d.path(), |v| {
        v["model_type"] = "llama".into();
        v["intermediate_size"] = 96.into();
    });
    let e = Model::load(d.path(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    // A missing tensor: untied config but no lm_head in the file (Qwen2 layout).
    let q = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(FIXTURES).join("tiny-qwen2"), q.path());
    edit_config(q.path(), |v| v["tie_word_embeddings"] = false.into());
    let e = Model::load(q.path(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("lm_head.weight") && e.to_string().contains("missing"), "{e}");
    // Not a safetensors file.
    std::fs::write(q.path().join("model.safetensors"), b"garbage").unwrap();
    let e = Model::load(q.path(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    // A directory without weights.
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(FIXTURES).join("tiny-llama/config.json"), empty.path().join("config.json")).unwrap();
    assert_eq!(Model::load(empty.path(), &Default::default()).unwrap_err().kind(), ErrorKind::InvalidData);
    // Too long an input.
    let m = Model::load(Path::new(FIXTURES).join("tiny-gpt2"), &Default::default()).unwrap();
    let x = Tensor::zeros((1, 129), candle_core::DType::U32, &Device::Cpu).unwrap();
    assert_eq!(m.forward(&x, 0).unwrap_err().kind(), ErrorKind::InvalidConfig);
    // Token ids outside the vocabulary (u32::MAX would silently embed as zeros in candle).
    for bad in [512u32, u32::MAX] {
        let x = Tensor::new(&[[1u32, bad]], &Device::Cpu).unwrap();
        let e = m.forward(&x, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("input_ids"), "{e}");
    }
    let x = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[[1i64, -100, 3]], &Device::Cpu).unwrap();
    assert!(m.loss(&x, &y, ForwardMode::Train).is_ok(), "-100 is ignored");
    let y = Tensor::new(&[[1i64, -5, 3]], &Device::Cpu).unwrap();
    assert!(m.loss(&x, &y, ForwardMode::Train).unwrap_err().to_string().contains("labels"));
}
