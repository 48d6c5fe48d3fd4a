//! GGUF and Ollama exports, read back with anneal's own GGUF reader: the metadata
//! llama.cpp needs, tensor names, shapes and types, and dequantized values near the
//! originals (q/k rows permuted to GGML's RoPE layout, GPT-2's Conv1D transposed);
//! adapters as GGUF LoRA adapters or merged; the Ollama folder; bad input.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anneal::gguf::{GgmlType, GgufFile, Value};
use anneal::{
    CancelToken, Event, ExportFormat, ExportOptions, GgufType, Home, ImportOptions, LoraConfig, Method, ModelRecord,
    NoopSink, RecordingSink, RegisterOptions, TrainSpec,
};
use candle_core::{DType, Device, Tensor};

use crate::common;

fn opts(q: GgufType) -> ExportOptions {
    ExportOptions { quantization: Some(q), ..Default::default() }
}

fn safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Rows of a `[rows, cols]` matrix moved from rotate-half to interleaved pairs per head.
fn permute(x: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (from, to) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                out[to * cols..(to + 1) * cols].copy_from_slice(&x[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn u64_of(f: &GgufFile, key: &str) -> u64 {
    f.get(key).and_then(Value::as_u64).unwrap_or_else(|| panic!("{key} missing"))
}

fn str_of<'a>(f: &'a GgufFile, key: &str) -> &'a str {
    f.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn nano_exports_in_every_type_and_reads_back() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let st = safetensors(&nano.path.join("model.safetensors"));
    let orig = |name: &str| values(&st[name]);
    let mut sizes = Vec::new();
    for (q, ftype, tol) in [
        (GgufType::F32, 0, 0.0),
        (GgufType::F16, 1, 1e-4),
        (GgufType::Bf16, 32, 1e-3),
        (GgufType::Q8_0, 7, 2e-3),
        (GgufType::Q4_0, 2, 2e-2),
        (GgufType::Q4KM, 15, 2e-2),
    ] {
        let dest = d.path().join(format!("nano-{q}.gguf"));
        let report = h.models().export(&nano.id, ExportFormat::Gguf, &dest, &opts(q)).unwrap();
        assert_eq!(report.files.len(), 1);
        assert_eq!(report.files[0].bytes, fs::metadata(&dest).unwrap().len());
        sizes.push(report.files[0].bytes);
        let f = GgufFile::open(&dest).unwrap();
        assert_eq!(str_of(&f, "general.architecture"), "llama");
        assert_eq!(str_of(&f, "general.name"), nano.name);
        assert_eq!(u64_of(&f, "general.file_type"), ftype, "{q}");
        for (k, v) in [
            ("llama.context_length", 256),
            ("llama.embedding_length", 64),
            ("llama.block_count", 2),
            ("llama.feed_forward_length", 176),
            ("llama.attention.head_count", 4),
            ("llama.attention.head_count_kv", 2),
            ("llama.rope.dimension_count", 16),
            ("tokenizer.ggml.bos_token_id", 256),
            ("tokenizer.ggml.eos_token_id", 256),
            ("tokenizer.ggml.eot_token_id", 258),
            ("tokenizer.ggml.padding_token_id", 259),
        ] {
            assert_eq!(u64_of(&f, k), v, "{k}");
        }
        assert_eq!(f.get("llama.attention.layer_norm_rms_epsilon"), Some(&Value::F32(1e-5)));
        assert_eq!(f.get("llama.rope.freq_base"), Some(&Value::F32(10000.0)));
        assert_eq!(str_of(&f, "tokenizer.ggml.model"), "gpt2");
        let tokens = f.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
        assert_eq!(tokens.len(), 260);
        assert_eq!(tokens[256].as_str(), Some("<|endoftext|>"));
        assert_eq!(tokens[b'a' as usize].as_str(), Some("a"));
        let types = f.get("tokenizer.ggml.token_type").and_then(Value::as_array).unwrap();
        assert_eq!((types[97].as_u64(), types[258].as_u64()), (Some(1), Some(3)));
        assert!(str_of(&f, "tokenizer.chat_template").contains("<|im_start|>"));
        assert_eq!(f.get("tokenizer.ggml.add_bos_token"), Some(&Value::Bool(false)));

        // Tensors: llama.cpp's names, GGML dims (row length first), no output (tied).
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 1 + 2 * 9 + 1, "{names:?}");
        assert!(!names.contains(&"output.weight"));
        let dims = |n: &str| f.tensor(n).unwrap().dims.clone();
        assert_eq!(dims("token_embd.weight"), vec![64, 260]);
        assert_eq!(dims("blk.1.attn_k.weight"), vec![64, 32]);
        assert_eq!(dims("blk.0.ffn_down.weight"), vec![176, 64]);
        assert_eq!(dims("output_norm.weight"), vec![64]);
        let ty = |n: &str| f.tensor(n).unwrap().ty;
        assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32, "{q}");
        let (q_ty, down_ty, embd_ty) = match q {
            GgufType::F32 => (GgmlType::F32, GgmlType::F32, GgmlType::F32),
            GgufType::F16 => (GgmlType::F16, GgmlType::F16, GgmlType::F16),
            GgufType::Bf16 => (GgmlType::Bf16, GgmlType::Bf16, GgmlType::Bf16),
            // Rows of 176 are not whole blocks of 32: f16, as llama.cpp's converter.
            GgufType::Q8_0 => (GgmlType::Q8_0, GgmlType::F16, GgmlType::Q8_0),
            // The tied embedding is the output: q6_K, whose 256-blocks fall back to q8_0.
            GgufType::Q4_0 => (GgmlType::Q4_0, GgmlType::F16, GgmlType::Q8_0),
            // q4_K needs rows of 256: q5_0; ffn_down's 176 fits neither: f16.
            GgufType::Q4KM => (GgmlType::Q5_0, GgmlType::F16, GgmlType::Q8_0),
        };
        assert_eq!(
            (ty("blk.0.attn_q.weight"), ty("blk.1.ffn_down.weight"), ty("token_embd.weight")),
            (q_ty, down_ty, embd_ty),
            "{q}"
        );

        // Values: near the originals, q and k rows permuted (4 and 2 heads of 16).
        let check = |gguf: &str, want: Vec<f32>, tol: f32| {
            let got = f.tensor_f32(gguf).unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff <= tol, "{q} {gguf}: max |diff| {diff} > {tol}");
        };
        check("token_embd.weight", orig("model.embed_tokens.weight"), tol);
        check("blk.0.attn_q.weight", permute(&orig("model.layers.0.self_attn.q_proj.weight"), 64, 64, 4), tol);
        check("blk.1.attn_k.weight", permute(&orig("model.layers.1.self_attn.k_proj.weight"), 32, 64, 2), tol);
        check("blk.1.attn_v.weight", orig("model.layers.1.self_attn.v_proj.weight"), tol);
        check("blk.0.ffn_down.weight", orig("model.layers.0.mlp.down_proj.weight"), tol);
        check("output_norm.weight", orig("model.norm.weight"), 0.0);
        if q == GgufType::F32 {
            // Unpermuted, q would differ: the permutation is real.
            let raw = orig("model.layers.0.self_attn.q_proj.weight");
            assert!(max_diff(&f.tensor_f32("blk.0.attn_q.weight").unwrap(), &raw) > 1e-3);
        }
    }
    // Sizes shrink with the bits: f32 > f16 = bf16 > q8_0 > q4_*.
    assert!(sizes[0] > sizes[1] && sizes[1] == sizes[2] && sizes[2] > sizes[3] && sizes[3] > sizes[4], "{sizes:?}");
}

#[test]
fn gpt2_conv1d_is_transposed_and_qkv_stays_fused() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let gpt2 = h.models().register_dir(common::fixtures().join("tiny-gpt2"), &RegisterOptions::default()).unwrap();
    let dest = d.path().join("gpt2.gguf");
    h.models().export(&gpt2.id, ExportFormat::Gguf, &dest, &opts(GgufType::F32)).unwrap();
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(str_of(&f, "general.architecture"), "gpt2");
    assert_eq!(f.get("gpt2.attention.layer_norm_epsilon"), Some(&Value::F32(1e-5)));
    assert_eq!(u64_of(&f, "gpt2.feed_forward_length"), 256);
    assert_eq!(str_of(&f, "tokenizer.ggml.pre"), "gpt-2");
    let merges = f.get("tokenizer.ggml.merges").and_then(Value::as_array).unwrap();
    assert_eq!(merges[0].as_str(), Some("Ġ 1"));
    // The vocabulary (433 tokens) is padded to vocab_size 512.
    let tokens = f.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
    assert_eq!((tokens.len(), tokens[500].as_str()), (512, Some("[PAD500]")));
    let st = safetensors(&gpt2.path.join("model.safetensors"));
    let key =
        |n: &str| if st.contains_key(n) { n.to_string() } else { n.trim_start_matches("transformer.").to_string() };
    let c_attn = &st[&key("transformer.h.1.attn.c_attn.weight")];
    assert_eq!(c_attn.dims(), [64, 192]);
    assert_eq!(f.tensor("blk.1.attn_qkv.weight").unwrap().dims, vec![64, 192]);
    let want = values(&c_attn.t().unwrap().contiguous().unwrap());
    assert_eq!(f.tensor_f32("blk.1.attn_qkv.weight").unwrap(), want);
    assert_eq!(f.tensor_f32("position_embd.weight").unwrap(), values(&st[&key("transformer.wpe.weight")]));
    for n in ["blk.0.attn_norm.bias", "blk.0.attn_qkv.bias", "blk.1.ffn_down.bias", "output_norm.bias"] {
        assert!(f.tensor(n).is_some(), "{n}");
    }
    // q4_k_m: position embeddings stay f32.
    h.models()
        .export(&gpt2.id, ExportFormat::Gguf, &dest, &ExportOptions { overwrite: true, ..opts(GgufType::Q4KM) })
        .unwrap();
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(f.tensor("position_embd.weight").unwrap().ty, GgmlType::F32);
}

/// A nano base and a LoRA adapter (q, k, v, o) trained on it for a few steps.
fn trained_lora(home: &Home) -> (ModelRecord, ModelRecord) {
    let base = home.models().create_preset("nano", &Default::default()).unwrap();
    let records = (0..16).map(|i| Ok(serde_json::json!({"text": format!("the cat sat on the mat {i}")})));
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
    let lora =
        LoraConfig { target_modules: vec!["q_proj".into(), "k_proj".into(), "v_proj".into()], ..Default::default() };
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method: Method::Lora(lora),
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

#[test]
fn adapters_become_gguf_lora_files_or_merge() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let (base, lora) = trained_lora(&h);
    let ad = safetensors(&lora.path.join("adapter_model.safetensors"));
    let peft =
        |m: &str, w: char| values(&ad[&format!("base_model.model.model.layers.0.self_attn.{m}.lora_{w}.weight")]);

    let dest = d.path().join("cat-lora.gguf");
    let mut sink = RecordingSink::new();
    h.models()
        .export_with(&lora.id, ExportFormat::Gguf, &dest, &opts(GgufType::F32), &mut sink, &CancelToken::new())
        .unwrap();
    let progress = sink.events().iter().filter(|e| matches!(e, Event::TaskProgress { .. })).count();
    assert!(progress >= 12, "{:?}", sink.types());
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(str_of(&f, "general.type"), "adapter");
    assert_eq!(str_of(&f, "adapter.type"), "lora");
    assert_eq!(str_of(&f, "general.architecture"), "llama");
    assert_eq!(f.get("adapter.lora.alpha"), Some(&Value::F32(16.0)));
    assert_eq!(f.tensors.len(), 2 * 3 * 2, "{:?}", f.tensors);
    assert_eq!(f.tensor("blk.0.attn_q.weight.lora_a").unwrap().dims, vec![64, 8]);
    assert_eq!(f.tensor("blk.0.attn_q.weight.lora_b").unwrap().dims, vec![8, 64]);
    assert_eq!(f.tensor("blk.1.attn_k.weight.lora_b").unwrap().dims, vec![8, 32]);
    assert_eq!(f.tensor_f32("blk.0.attn_q.weight.lora_a").unwrap(), peft("q_proj", 'A'));
    // B's rows (q's output rows) are permuted like the base's q rows; v's are not.
    assert_eq!(f.tensor_f32("blk.0.attn_q.weight.lora_b").unwrap(), permute(&peft("q_proj", 'B'), 64, 8, 4));
    assert_eq!(f.tensor_f32("blk.0.attn_k.weight.lora_b").unwrap(), permute(&peft("k_proj", 'B'), 32, 8, 2));
    assert_eq!(f.tensor_f32("blk.0.attn_v.weight.lora_b").unwrap(), peft("v_proj", 'B'));
    assert!(peft("q_proj", 'B').iter().any(|v| *v != 0.0), "training moved B");

    // merge: one model whose q = base q + alpha/r * B A (permuted).
    let merged = d.path().join("cat-merged.gguf");
    let o = ExportOptions { merge: Some(true), ..opts(GgufType::F32) };
    h.models().export(&lora.id, ExportFormat::Gguf, &merged, &o).unwrap();
    let m = GgufFile::open(&merged).unwrap();
    assert_eq!(str_of(&m, "general.type"), "model");
    let bst = safetensors(&base.path.join("model.safetensors"));
    let a = Tensor::from_vec(peft("q_proj", 'A'), (8, 64), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(peft("q_proj", 'B'), (64, 8), &Device::Cpu).unwrap();
    let want = ((b.matmul(&a).unwrap() * 2.0).unwrap() + &bst["model.layers.0.self_attn.q_proj.weight"]).unwrap();
    let diff = max_diff(&m.tensor_f32("blk.0.attn_q.weight").unwrap(), &permute(&values(&want), 64, 64, 4));
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn ollama_folder_has_the_model_a_modelfile_and_a_readme() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let (_, lora) = trained_lora(&h);
    let dest = d.path().join("ollama");
    let o = ExportOptions { name: Some("cat-bot".into()), ..opts(GgufType::Q8_0) };
    let report = h.models().export(&lora.id, ExportFormat::Ollama, &dest, &o).unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["Modelfile", "README.md", "model.gguf"]);
    let mf = fs::read_to_string(dest.join("Modelfile")).unwrap();
    assert!(mf.contains("\nFROM ./model.gguf\n") && !mf.contains("ADAPTER"), "{mf}");
    assert!(mf.contains("TEMPLATE \"\"\"{{- range .Messages }}"), "{mf}");
    assert!(mf.contains("<|im_start|>user\n{{ .Content }}<|im_end|>\n"), "{mf}");
    assert!(mf.contains("PARAMETER stop \"<|endoftext|>\"\nPARAMETER stop \"<|im_end|>\"\n"), "{mf}");
    let readme = fs::read_to_string(dest.join("README.md")).unwrap();
    assert!(readme.contains("ollama create cat-bot -f Modelfile"), "{readme}");
    // Merged by default: one model file, no adapter tensors.
    let f = GgufFile::open(dest.join("model.gguf")).unwrap();
    assert_eq!(str_of(&f, "general.type"), "model");
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q8_0);

    // merge: false -> the base model and the adapter, with an ADAPTER line.
    let dest2 = d.path().join("ollama2");
    let o = ExportOptions { merge: Some(false), ..Default::default() };
    let report = h.models().export(&lora.id, ExportFormat::Ollama, &dest2, &o).unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["Modelfile", "README.md", "adapter.gguf", "model.gguf"]);
    let mf = fs::read_to_string(dest2.join("Modelfile")).unwrap();
    assert!(mf.contains("FROM ./model.gguf\nADAPTER ./adapter.gguf\n"), "{mf}");
    assert_eq!(str_of(&GgufFile::open(dest2.join("adapter.gguf")).unwrap(), "general.type"), "adapter");
    assert!(fs::read_to_string(dest2.join("README.md")).unwrap().contains("ollama create cat -f Modelfile"));
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let dest = d.path().join("out/nano.gguf");
    h.models().export(&nano.id, ExportFormat::Gguf, &dest, &ExportOptions::default()).unwrap();
    let e = h.models().export(&nano.id, ExportFormat::Gguf, &dest, &ExportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "already_exists", "{e}");

    // Cancelled during the export: the existing file is untouched, no temporary left.
    let before = fs::read(&dest).unwrap();
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let mut n = 0;
    let mut sink = move |ev: &Event| {
        if matches!(ev, Event::TaskProgress { .. }) {
            n += 1;
            if n == 5 {
                c.cancel();
            }
        }
        Ok(())
    };
    let o = ExportOptions { overwrite: true, quantization: Some(GgufType::F32), ..Default::default() };
    let e = h.models().export_with(&nano.id, ExportFormat::Gguf, &dest, &o, &mut sink, &cancel).unwrap_err();
    assert_eq!(e.code(), "cancelled", "{e}");
    assert_eq!(fs::read(&dest).unwrap(), before);
    let left: Vec<_> = fs::read_dir(d.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // A GPT-2 that llama.cpp cannot run, a bad Ollama name.
    let gpt2 = d.path().join("gpt2-scaled");
    fs::create_dir_all(&gpt2).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        fs::copy(common::fixtures().join("tiny-gpt2").join(f), gpt2.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(common::fixtures().join("tiny-gpt2/config.json")).unwrap()).unwrap();
    cfg["scale_attn_by_inverse_layer_idx"] = true.into();
    fs::write(gpt2.join("config.json"), cfg.to_string()).unwrap();
    let rec = h.models().register_dir(&gpt2, &RegisterOptions::default()).unwrap();
    let e =
        h.models().export(&rec.id, ExportFormat::Gguf, d.path().join("x.gguf"), &ExportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    assert!(e.to_string().contains("scale_attn_by_inverse_layer_idx"), "{e}");
    assert!(!d.path().join("x.gguf").exists());
    let o = ExportOptions { name: Some("has space".into()), ..Default::default() };
    let e = h.models().export(&nano.id, ExportFormat::Ollama, d.path().join("o"), &o).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
}
