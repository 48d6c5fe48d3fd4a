//! GGUF import (`register_file`): files written by anneal's own GGUF export from tiny
//! models, registered back and run. f32 gives exactly the original's greedy tokens,
//! q8_0 the tokens of the original run with the generator's own q8_0 option; the
//! derived tokenizer gives the same ids (byte-level BPE and SentencePiece-style); bad
//! files are typed errors that leave the home unchanged; a GGUF model is a LoRA base.
//! A GGUF model exports again: to GGUF (its own type copied block for block, other
//! types from the dequantized values), to a Hugging Face directory (dequantized
//! safetensors), as a bundle and for Ollama; a GGUF file without a tokenizer is refused
//! where llama.cpp needs one.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use anneal::gguf::{GgmlType, GgufFile, GgufWriter};
use anneal::{
    CancelToken, ExportFormat, ExportOptions, GenerationConfig, GeneratorOptions, GgufType, Home, ImportBundleOptions,
    ImportOptions, LoraConfig, Method, ModelKind, ModelRecord, NoopSink, RecordingSink, RegisterOptions, Storage,
    TrainSpec,
};
use anneal::{Event, Tokenizer};
use serde_json::json;

use crate::common;

fn export(h: &Home, model: &ModelRecord, q: GgufType, dest: &Path) -> PathBuf {
    let o = ExportOptions { quantization: Some(q), ..Default::default() };
    h.models().export(&model.id, ExportFormat::Gguf, dest, &o).unwrap();
    dest.to_path_buf()
}

fn named(name: &str) -> RegisterOptions {
    RegisterOptions { name: Some(name.into()), ..Default::default() }
}

/// 16 greedy tokens after a fixed prompt.
fn greedy(h: &Home, model: &str, quantize: Option<&str>) -> Vec<u32> {
    let opts = GeneratorOptions { quantize: quantize.map(str::to_string), ..Default::default() };
    let g = h.generator(model, &opts).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(16), ignore_eos: true, ..Default::default() };
    let out = g.generate(vec![3u32, 17, 42, 7, 99], &cfg).unwrap();
    assert_eq!(out.token_ids.len(), 16);
    out.token_ids
}

const TEXTS: [&str; 8] = [
    "the cat sat on the mat",
    "in the mat!",
    "é and ü",
    "  two  spaces\n",
    "",
    "\n\n",
    "xyz 123",
    "<|im_start|>user hi<|im_end|>",
];

fn same_token_ids(a: &ModelRecord, b: &ModelRecord) {
    let (ta, tb) = (Tokenizer::load(a).unwrap(), Tokenizer::load(b).unwrap());
    for t in TEXTS {
        for special in [false, true] {
            assert_eq!(ta.encode(t, special).unwrap(), tb.encode(t, special).unwrap(), "{t:?} special={special}");
        }
        let ids = ta.encode(t, true).unwrap();
        assert_eq!(ta.decode(&ids, true).unwrap(), tb.decode(&ids, true).unwrap(), "{t:?}");
    }
    assert_eq!(ta.chat_template(), tb.chat_template());
    let sorted = |t: &Tokenizer| {
        let mut v = t.eos_token_ids().to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(&ta), sorted(&tb), "end-of-generation ids");
    assert_eq!(ta.bos_prefix(), tb.bos_prefix());
}

#[test]
fn llama_f32_is_exact_and_q8_0_matches_the_generators_own_q8_0() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let want_f32 = greedy(&h, "nano", None);
    let want_q8 = greedy(&h, "nano", Some("q8_0"));

    let f32_file = export(&h, &nano, GgufType::F32, &d.path().join("nano-f32.gguf"));
    let mut sink = RecordingSink::new();
    let rec = h.models().register_file_with(&f32_file, &named("nano-f32"), &mut sink, &CancelToken::new()).unwrap();
    assert!(matches!(sink.events().last(), Some(Event::TaskFinished { .. })), "{:?}", sink.types());
    assert_eq!(
        (rec.kind, rec.architecture.as_str(), rec.model_type.as_str()),
        (ModelKind::Base, "LlamaForCausalLM", "llama")
    );
    assert_eq!(rec.dtype, "f32");
    assert_eq!(rec.params, nano.params);
    let files: Vec<&str> = rec.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(files, ["config.json", "model.gguf", "tokenizer.json", "tokenizer_config.json"]);
    assert_eq!(rec.files[1].bytes, fs::metadata(&f32_file).unwrap().len());
    assert_eq!(rec.config["num_key_value_heads"], json!(2));
    assert_eq!(rec.config["rms_norm_eps"], json!(1e-5));
    assert_eq!(rec.config["tie_word_embeddings"], json!(true));
    assert_eq!(greedy(&h, "nano-f32", None), want_f32, "f32 GGUF decodes exactly as the safetensors original");
    same_token_ids(&nano, &rec);

    let q8_file = export(&h, &nano, GgufType::Q8_0, &d.path().join("nano-q8.gguf"));
    let q8 = h.models().register_file(&q8_file, &named("nano-q8")).unwrap();
    assert_eq!(q8.dtype, "q8_0");
    // Run from the q8_0 blocks as they are; asking for q8_0 again changes nothing.
    assert_eq!(greedy(&h, "nano-q8", None), want_q8);
    assert_eq!(greedy(&h, "nano-q8", Some("q8_0")), want_q8);
    // Explicit bf16: dequantized, dense.
    let g = h.generator("nano-q8", &GeneratorOptions { dtype: "bf16".into(), ..Default::default() }).unwrap();
    g.generate(vec![1u32, 2], &GenerationConfig { max_new_tokens: Some(2), ..Default::default() }).unwrap();

    // 4-bit files register (their type in the record) and generate (requantized to q8_0).
    for (q, name) in [(GgufType::Q4_0, "q4_0"), (GgufType::Q4KM, "q4_k_m")] {
        let f = export(&h, &nano, q, &d.path().join(format!("nano-{name}.gguf")));
        let r = h.models().register_file(&f, &named(&format!("nano-{name}"))).unwrap();
        assert_eq!(r.dtype, name);
        assert_eq!(greedy(&h, &r.reference(), None).len(), 16);
    }
}

#[test]
fn gpt2_and_qwen2_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    for fixture in ["tiny-gpt2", "tiny-qwen2", "tiny-llama"] {
        let orig = h.models().register_dir(common::fixtures().join(fixture), &named(fixture)).unwrap();
        let want_f32 = greedy(&h, fixture, None);
        let want_q8 = greedy(&h, fixture, Some("q8_0"));
        let f = export(&h, &orig, GgufType::F32, &d.path().join(format!("{fixture}-f32.gguf")));
        let rec = h.models().register_file(&f, &named(&format!("{fixture}-f32"))).unwrap();
        assert_eq!((rec.family, rec.model_type.as_str()), (orig.family, orig.model_type.as_str()));
        assert_eq!(greedy(&h, &rec.reference(), None), want_f32, "{fixture} f32");
        same_token_ids(&orig, &rec);
        // `quantize: "bf16"` on an f32 or bf16 file: its matrices rounded to (or taken
        // as) bf16, as the safetensors original's are.
        let want_bf16 = greedy(&h, fixture, Some("bf16"));
        assert_eq!(greedy(&h, &rec.reference(), Some("bf16")), want_bf16, "{fixture} f32 file as bf16");
        let f = export(&h, &orig, GgufType::Bf16, &d.path().join(format!("{fixture}-bf16.gguf")));
        let bf = h.models().register_file(&f, &named(&format!("{fixture}-bf16"))).unwrap();
        assert_eq!(greedy(&h, &bf.reference(), Some("bf16")), want_bf16, "{fixture} bf16 file");
        let f = export(&h, &orig, GgufType::Q8_0, &d.path().join(format!("{fixture}-q8.gguf")));
        let rec = h.models().register_file(&f, &named(&format!("{fixture}-q8"))).unwrap();
        assert_eq!(greedy(&h, &rec.reference(), None), want_q8, "{fixture} q8_0");
    }
}

/// A SentencePiece-style BPE tokenizer.json (Llama 2's layout: byte fallback, `▁`,
/// Prepend + Replace normalizer), its merges derived from the pieces as transformers
/// converts a SentencePiece model: every split of a piece into two pieces, in the
/// pieces' order.
fn spm_tokenizer() -> serde_json::Value {
    let mut vocab: Vec<String> = ["<unk>", "<s>", "</s>", "<0x0A>", "<0x21>", "<0xC3>", "<0xA9>", "\u{2581}"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(('a'..='z').map(|c| c.to_string()));
    let pieces = ["▁t", "he", "▁the", "▁c", "at", "▁cat", "▁s", "▁sat", "in", "▁in", "on", "▁on", "▁m", "▁mat"];
    vocab.extend(pieces.iter().map(|s| s.to_string()));
    let id = |t: &str| vocab.iter().position(|v| v == t);
    let mut merges = Vec::new();
    for p in pieces {
        let mut splits: Vec<(usize, usize)> =
            p.char_indices().skip(1).filter_map(|(k, _)| Some((id(&p[..k])?, id(&p[k..])?))).collect();
        splits.sort();
        merges.extend(splits.into_iter().map(|(l, r)| json!([vocab[l], vocab[r]])));
    }
    let vocab_map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let special = |i: usize, t: &str| {
        json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_map, "merges": merges},
    })
}

#[test]
fn sentencepiece_style_tokenizer_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let dir = d.path().join("spm-model");
    fs::create_dir(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::copy(nano.path.join(f), dir.join(f)).unwrap();
    }
    fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&spm_tokenizer()).unwrap()).unwrap();
    let tc = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true,
                    "chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"});
    fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let orig = h.models().register_dir(&dir, &named("spm")).unwrap();
    let tok = Tokenizer::load(&orig).unwrap();
    // The tokenizer really merges and falls back to bytes.
    let ids = tok.encode("the cat!é", true).unwrap();
    assert_eq!(ids, vec![1, 36, 39, 4, 5, 6], "{ids:?}");

    let f = export(&h, &orig, GgufType::F16, &d.path().join("spm.gguf"));
    let g = GgufFile::open(&f).unwrap();
    assert_eq!(g.get("tokenizer.ggml.model").and_then(|v| v.as_str()), Some("llama"));
    let rec = h.models().register_file(&f, &named("spm-gguf")).unwrap();
    assert_eq!(rec.dtype, "f16");
    same_token_ids(&orig, &rec);
    let back = Tokenizer::load(&rec).unwrap();
    assert_eq!(back.encode("the cat!é", true).unwrap(), ids);
    assert_eq!(back.decode(&ids, true).unwrap(), "the cat!é");
}

/// `src` rewritten with `edit` applied to its metadata and tensor types (raw bytes kept).
fn rewrite(
    src: &Path,
    dest: &Path,
    edit_meta: impl Fn(&mut Vec<(String, anneal::gguf::Value)>),
    edit_type: impl Fn(&str, GgmlType) -> GgmlType,
) {
    let f = GgufFile::open(src).unwrap();
    let mut meta = f.metadata.clone();
    edit_meta(&mut meta);
    let infos: Vec<(String, Vec<u64>, GgmlType)> =
        f.tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), edit_type(&t.name, t.ty))).collect();
    let out = fs::File::create(dest).unwrap();
    let mut w = GgufWriter::new(std::io::BufWriter::new(out), dest, &meta, &infos).unwrap();
    for t in &f.tensors {
        w.write_tensor(&t.name, &f.tensor_bytes(&t.name).unwrap()).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
}

#[test]
fn bad_files_are_typed_errors_and_store_nothing() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let good = export(&h, &nano, GgufType::Q8_0, &d.path().join("good.gguf"));
    let before = common::model_dirs(&h);
    let refused = |path: &Path, code: &str, needle: &str| {
        let e = h.models().register_file(path, &named("bad")).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
        assert_eq!(common::model_dirs(&h), before, "nothing left behind");
        assert!(h.models().resolve("bad").is_err());
    };
    let arch = d.path().join("arch.gguf");
    rewrite(
        &good,
        &arch,
        |m| {
            for (k, v) in m.iter_mut() {
                if k == "general.architecture" {
                    *v = anneal::gguf::Value::String("mamba".into());
                }
            }
        },
        |_, t| t,
    );
    refused(&arch, "invalid_data", "unsupported architecture `mamba`");
    let ty = d.path().join("type.gguf");
    rewrite(&good, &ty, |_| {}, |n, t| if n == "blk.0.ffn_norm.weight" { GgmlType::I32 } else { t });
    refused(&ty, "invalid_data", "blk.0.ffn_norm.weight");
    let bytes = fs::read(&good).unwrap();
    let cut = d.path().join("cut.gguf");
    for n in [10, 4000, bytes.len() - 100] {
        fs::write(&cut, &bytes[..n]).unwrap();
        refused(&cut, "invalid_data", "cut.gguf");
    }
    let missing = d.path().join("missing.gguf");
    rewrite(&good, &missing, |m| m.retain(|(k, _)| k != "llama.block_count"), |_, t| t);
    refused(&missing, "invalid_data", "llama.block_count");
    // Not a file; reference storage; a parent.
    let e = h.models().register_file(d.path(), &named("bad")).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    let o = RegisterOptions { storage: Storage::Reference, ..named("bad") };
    assert_eq!(h.models().register_file(&good, &o).unwrap_err().code(), "invalid_config");
    let o = RegisterOptions { parent: Some(nano.id.clone().into()), ..named("bad") };
    assert_eq!(h.models().register_file(&good, &o).unwrap_err().code(), "invalid_config");
    assert_eq!(common::model_dirs(&h), before);
}

/// The tensors of GGUF files `a` and `b`: same names, dims, types and bytes; and the
/// same metadata but `general.name`.
fn same_gguf(a: &Path, b: &Path) {
    let (fa, fb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    let meta = |f: &GgufFile| -> Vec<(String, anneal::gguf::Value)> {
        f.metadata.iter().filter(|(k, _)| k != "general.name").cloned().collect()
    };
    assert_eq!(meta(&fa), meta(&fb), "{} vs {}", a.display(), b.display());
    assert_eq!(fa.tensors.len(), fb.tensors.len());
    for (ta, tb) in fa.tensors.iter().zip(&fb.tensors) {
        assert_eq!((&ta.name, &ta.dims, ta.ty), (&tb.name, &tb.dims, tb.ty), "{}", b.display());
        assert!(
            fa.tensor_bytes(&ta.name).unwrap() == fb.tensor_bytes(&tb.name).unwrap(),
            "{} in {}",
            ta.name,
            b.display()
        );
    }
}

fn export_as(h: &Home, model: &ModelRecord, format: ExportFormat, dest: &Path) -> PathBuf {
    h.models().export(&model.id, format, dest, &ExportOptions::default()).unwrap();
    dest.to_path_buf()
}

#[test]
fn a_gguf_model_exports_to_gguf_again() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let f32_rec = h
        .models()
        .register_file(export(&h, &nano, GgufType::F32, &d.path().join("nano-f32.gguf")), &named("g-f32"))
        .unwrap();
    // From the f32 file, every type is what exporting the original gives, tensor for
    // tensor and key for key (the tokenizer keys are the file's own).
    for q in [GgufType::F32, GgufType::F16, GgufType::Bf16, GgufType::Q8_0, GgufType::Q4_0, GgufType::Q4KM] {
        let want = export(&h, &nano, q, &d.path().join(format!("orig-{q}.gguf")));
        let got = export(&h, &f32_rec, q, &d.path().join(format!("again-{q}.gguf")));
        same_gguf(&want, &got);
    }
    // At its own type a quantized file is copied block for block, and runs the same.
    for (q, name) in [(GgufType::Q8_0, "q8_0"), (GgufType::Q4KM, "q4_k_m")] {
        let src = d.path().join(format!("orig-{q}.gguf"));
        let rec = h.models().register_file(&src, &named(&format!("g-{name}"))).unwrap();
        let again = export(&h, &rec, q, &d.path().join(format!("same-{name}.gguf")));
        same_gguf(&src, &again);
        let back = h.models().register_file(&again, &named(&format!("g-{name}-again"))).unwrap();
        assert_eq!(greedy(&h, &back.reference(), None), greedy(&h, &rec.reference(), None), "{name}");
    }
    // Blocks that anneal's quantizer would not write (every int8 value halved: no block
    // reaches 127 any more) are still copied as they are, not requantized.
    let src = GgufFile::open(d.path().join("orig-q8_0.gguf")).unwrap();
    let odd = d.path().join("odd-q8_0.gguf");
    let infos: Vec<(String, Vec<u64>, GgmlType)> =
        src.tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.ty)).collect();
    let mut w =
        GgufWriter::new(std::io::BufWriter::new(fs::File::create(&odd).unwrap()), &odd, &src.metadata, &infos).unwrap();
    for t in &src.tensors {
        let mut b = src.tensor_bytes(&t.name).unwrap();
        if t.ty == GgmlType::Q8_0 {
            for block in b.chunks_exact_mut(34) {
                for v in &mut block[2..] {
                    *v = ((*v as i8) / 2) as u8;
                }
            }
        }
        w.write_tensor(&t.name, &b).unwrap();
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();
    let rec = h.models().register_file(&odd, &named("odd")).unwrap();
    same_gguf(&odd, &export(&h, &rec, GgufType::Q8_0, &d.path().join("odd-again.gguf")));
    // To another type: quantized from the dequantized values (q8_0 -> f16 rounds the
    // 8-bit values; q8_0 -> q4_0 requantizes them).
    let q8 = GgufFile::open(d.path().join("orig-q8_0.gguf")).unwrap();
    let q8_rec = h.models().resolve("g-q8_0").unwrap();
    for q in [GgufType::F16, GgufType::Q4_0] {
        let f = GgufFile::open(export(&h, &q8_rec, q, &d.path().join(format!("from-q8-{q}.gguf")))).unwrap();
        assert_eq!(f.tensors.len(), q8.tensors.len());
        for t in &f.tensors {
            let want = anneal::gguf::quantize(t.ty, &q8.tensor_f32(&t.name).unwrap()).unwrap();
            assert!(f.tensor_bytes(&t.name).unwrap() == want, "{} ({})", t.name, t.ty);
        }
        assert!(f.tensors.iter().any(|t| t.ty != GgmlType::F32 && t.ty != GgmlType::Q8_0), "{q}");
    }
    // Ollama: the model file is the same re-export.
    let dir = export_as(&h, &q8_rec, ExportFormat::Ollama, &d.path().join("ollama"));
    let o = ExportOptions { quantization: Some(GgufType::F16), ..Default::default() };
    h.models().export(&q8_rec.id, ExportFormat::Gguf, d.path().join("q8-f16.gguf"), &o).unwrap();
    same_gguf(&d.path().join("q8-f16.gguf"), &dir.join("model.gguf"));
    assert!(fs::read_to_string(dir.join("Modelfile")).unwrap().contains("FROM ./model.gguf"));
}

#[test]
fn a_gguf_model_exports_to_hf_and_as_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    for fixture in ["tiny-gpt2", "tiny-qwen2", "tiny-llama"] {
        // f32: the safetensors hold the original's values; transformers' names and layout.
        let orig = h.models().register_dir(common::fixtures().join(fixture), &named(fixture)).unwrap();
        let f = export(&h, &orig, GgufType::F32, &d.path().join(format!("{fixture}.gguf")));
        let rec = h.models().register_file(&f, &named(&format!("{fixture}-gguf"))).unwrap();
        let dir = export_as(&h, &rec, ExportFormat::Hf, &d.path().join(format!("{fixture}-hf")));
        let mut names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let want = [
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ];
        assert_eq!(names, want, "{fixture}");
        let card = fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(card.contains("GGUF weights") && card.contains("dequantized"), "{card}");
        let back = h.models().register_dir(&dir, &named(&format!("{fixture}-hf"))).unwrap();
        assert_eq!((back.dtype.as_str(), back.params), ("f32", orig.params));
        let load = |r: &ModelRecord| {
            let st = r.files.iter().find(|f| f.name.ends_with(".safetensors")).unwrap();
            let mut t: Vec<(String, Vec<f32>)> =
                candle_core::safetensors::load(r.path.join(&st.name), &candle_core::Device::Cpu)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.strip_prefix("transformer.").unwrap_or(&k).to_string(),
                            v.flatten_all().unwrap().to_vec1().unwrap(),
                        )
                    })
                    .collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let (a, b) = (load(&orig), load(&back));
        // The original may hold buffers or a tied head that the loader does not take.
        for (name, x) in &b {
            let y = &a.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{fixture}: {name}")).1;
            assert!(x == y, "{fixture}: {name}");
        }
        assert_eq!(greedy(&h, &back.reference(), None), greedy(&h, fixture, None), "{fixture}");
        same_token_ids(&orig, &back);
    }

    // q8_0: f32 safetensors of the dequantized values; quantized again they are the same
    // blocks, and run as the GGUF file does.
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let q8_file = export(&h, &nano, GgufType::Q8_0, &d.path().join("nano-q8.gguf"));
    let q8 = h.models().register_file(&q8_file, &named("nano-q8")).unwrap();
    let dir = export_as(&h, &q8, ExportFormat::Hf, &d.path().join("nano-q8-hf"));
    let back = h.models().register_dir(&dir, &named("nano-q8-hf")).unwrap();
    assert_eq!(back.dtype, "f32");
    let again = export(&h, &back, GgufType::Q8_0, &d.path().join("nano-q8-again.gguf"));
    same_gguf(&q8_file, &again);
    assert_eq!(greedy(&h, "nano-q8-hf", Some("q8_0")), greedy(&h, "nano-q8", None));
    // Sharded like any merged export.
    let o = ExportOptions { max_shard_bytes: Some(64 << 10), ..Default::default() };
    h.models().export(&q8.id, ExportFormat::Hf, d.path().join("sharded"), &o).unwrap();
    assert!(d.path().join("sharded/model.safetensors.index.json").is_file());
    let sharded = h.models().register_dir(d.path().join("sharded"), &named("nano-q8-sharded")).unwrap();
    assert_eq!(greedy(&h, &sharded.reference(), Some("q8_0")), greedy(&h, "nano-q8", None));

    // A bundle carries the GGUF file and its derived files; another home restores it
    // under the same id and content, runs it, and exports it again.
    let q4 =
        h.models().register_file(export(&h, &nano, GgufType::Q4KM, &d.path().join("q4.gguf")), &named("q4")).unwrap();
    let zip = export_as(&h, &q4, ExportFormat::Bundle, &d.path().join("q4.zip"));
    let other = Home::open(d.path().join("other")).unwrap();
    let got = other.models().import_bundle(&zip, &ImportBundleOptions::default()).unwrap();
    assert_eq!((&got.id, &got.sha256, got.dtype.as_str()), (&q4.id, &q4.sha256, "q4_k_m"));
    assert_eq!(greedy(&other, "q4", None), greedy(&h, "q4", None));
    let o = ExportOptions { quantization: Some(GgufType::Q4KM), ..Default::default() };
    other.models().export(&got.id, ExportFormat::Gguf, d.path().join("q4-again.gguf"), &o).unwrap();
    same_gguf(&d.path().join("q4.gguf"), &d.path().join("q4-again.gguf"));
}

#[test]
fn a_gguf_file_without_a_tokenizer_exports_where_it_can() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let good = export(&h, &nano, GgufType::Q8_0, &d.path().join("good.gguf"));
    let bare = d.path().join("bare.gguf");
    rewrite(&good, &bare, |m| m.retain(|(k, _)| !k.starts_with("tokenizer.")), |_, t| t);
    let rec = h.models().register_file(&bare, &named("bare")).unwrap();
    assert_eq!(rec.tokenizer, None);
    for (format, dest) in [(ExportFormat::Gguf, "x.gguf"), (ExportFormat::Ollama, "ollama")] {
        let e = h.models().export(&rec.id, format, d.path().join(dest), &ExportOptions::default()).unwrap_err();
        assert_eq!(e.code(), "invalid_config", "{e}");
        assert!(e.to_string().contains("without a tokenizer"), "{e}");
        assert!(!d.path().join(dest).exists(), "nothing left behind");
    }
    let e =
        h.models().export(&rec.id, ExportFormat::Peft, d.path().join("peft"), &ExportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    // The weights still leave as safetensors, and whole as a bundle.
    let dir = export_as(&h, &rec, ExportFormat::Hf, &d.path().join("hf"));
    assert!(dir.join("model.safetensors").is_file() && !dir.join("tokenizer.json").exists());
    let zip = export_as(&h, &rec, ExportFormat::Bundle, &d.path().join("bare.zip"));
    let other = Home::open(d.path().join("other")).unwrap();
    assert_eq!(other.models().import_bundle(&zip, &ImportBundleOptions::default()).unwrap().sha256, rec.sha256);
    let g = other.generator("bare", &GeneratorOptions::default()).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(16), ignore_eos: true, ..Default::default() };
    assert_eq!(g.generate(vec![3u32, 17, 42, 7, 99], &cfg).unwrap().token_ids, greedy(&h, "bare", None));
}

#[test]
fn a_gguf_model_is_a_lora_base() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    let nano = h.models().create_preset("nano", &Default::default()).unwrap();
    let f = export(&h, &nano, GgufType::Q8_0, &d.path().join("base.gguf"));
    let base = h.models().register_file(&f, &named("gguf-base")).unwrap();
    let records = (0..16).map(|i| Ok(json!({"text": format!("the cat sat on the mat {i}")})));
    h.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method: Method::Lora(LoraConfig::default()),
        batch_size: 4,
        seq_len: 32,
        max_steps: Some(3),
        learning_rate: 1e-2,
        output_name: Some("cat".into()),
        ..Default::default()
    };
    let job = h.training().create_job(&spec).unwrap();
    let report = h.training().run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
    let adapter = h.models().get(&report.model_id).unwrap();
    assert_eq!((adapter.kind, adapter.parent_id.as_ref()), (ModelKind::Lora, Some(&base.id)));
    // Merged (dense, then q8_0) and unmerged (on the q8_0 base) give the same tokens.
    let merged = greedy(&h, "cat", None);
    let g = h.generator("cat", &GeneratorOptions { merge_adapter: false, ..Default::default() }).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(16), ignore_eos: true, ..Default::default() };
    let unmerged = g.generate(vec![3u32, 17, 42, 7, 99], &cfg).unwrap().token_ids;
    assert_eq!(unmerged.len(), merged.len());

    // Exported merged: as HF (the base's derived files, no GGUF file) and as GGUF; both
    // run as the generator runs the adapter merged (dense, then q8_0).
    let dir = export_as(&h, &adapter, ExportFormat::Hf, &d.path().join("merged"));
    assert!(!dir.join("model.gguf").exists() && dir.join("tokenizer.json").is_file());
    h.models().register_dir(&dir, &named("merged-hf")).unwrap();
    assert_eq!(greedy(&h, "merged-hf", Some("q8_0")), merged);
    let o = ExportOptions { quantization: Some(GgufType::Q8_0), merge: Some(true), ..Default::default() };
    h.models().export(&adapter.id, ExportFormat::Gguf, d.path().join("merged.gguf"), &o).unwrap();
    h.models().register_file(d.path().join("merged.gguf"), &named("merged-gguf")).unwrap();
    assert_eq!(greedy(&h, "merged-gguf", None), merged);
    // Unmerged: a GGUF LoRA adapter for the GGUF base file.
    let o = ExportOptions { quantization: Some(GgufType::F32), ..Default::default() };
    h.models().export(&adapter.id, ExportFormat::Gguf, d.path().join("adapter.gguf"), &o).unwrap();
    let a = GgufFile::open(d.path().join("adapter.gguf")).unwrap();
    assert_eq!(a.get("general.type").and_then(|v| v.as_str()), Some("adapter"));
}

/// Peak-memory probe, not a CI test. `ANNEAL_RSS_DIR=<dir> ANNEAL_RSS_PHASE=write` writes
/// a random q8_0 Llama GGUF (hidden 1024, 8 layers, vocab 32000: ~135M parameters,
/// ~143 MB) and registers it in `<dir>/home`; `ANNEAL_RSS_PHASE=load` (run under
/// `/usr/bin/time -v`) loads a generator on it and decodes 4 tokens.
#[test]
#[ignore]
fn rss_probe() {
    use anneal::gguf::{quantize, Value};
    let dir = PathBuf::from(std::env::var("ANNEAL_RSS_DIR").unwrap());
    let h = Home::open(dir.join("home")).unwrap();
    if std::env::var("ANNEAL_RSS_PHASE").as_deref() == Ok("load") {
        let dtype = std::env::var("ANNEAL_RSS_DTYPE").unwrap_or_else(|_| "f32".into());
        let g = h.generator("big", &GeneratorOptions { dtype, record: false, ..Default::default() }).unwrap();
        let cfg = GenerationConfig { max_new_tokens: Some(4), ignore_eos: true, ..Default::default() };
        let out = g.generate(vec![1u32, 2, 3], &cfg).unwrap();
        println!("tokens {:?}", out.token_ids);
        return;
    }
    let (h_, layers, ffn, heads, vocab) = (1024u64, 8usize, 2816u64, 16u64, 32000u64);
    let u = |x: u64| Value::U32(x as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.context_length".into(), u(2048)),
        ("llama.embedding_length".into(), u(h_)),
        ("llama.block_count".into(), u(layers as u64)),
        ("llama.feed_forward_length".into(), u(ffn)),
        ("llama.attention.head_count".into(), u(heads)),
        ("llama.attention.head_count_kv".into(), u(heads)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("general.file_type".into(), u(7)),
    ];
    let mut infos: Vec<(String, Vec<u64>, GgmlType)> =
        vec![("token_embd.weight".into(), vec![h_, vocab], GgmlType::Q8_0)];
    for i in 0..layers {
        infos.push((format!("blk.{i}.attn_norm.weight"), vec![h_], GgmlType::F32));
        for n in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            infos.push((format!("blk.{i}.{n}.weight"), vec![h_, h_], GgmlType::Q8_0));
        }
        infos.push((format!("blk.{i}.ffn_norm.weight"), vec![h_], GgmlType::F32));
        infos.push((format!("blk.{i}.ffn_gate.weight"), vec![h_, ffn], GgmlType::Q8_0));
        infos.push((format!("blk.{i}.ffn_up.weight"), vec![h_, ffn], GgmlType::Q8_0));
        infos.push((format!("blk.{i}.ffn_down.weight"), vec![ffn, h_], GgmlType::Q8_0));
    }
    infos.push(("output_norm.weight".into(), vec![h_], GgmlType::F32));
    let path = dir.join("big.gguf");
    let out = fs::File::create(&path).unwrap();
    let mut w = GgufWriter::new(std::io::BufWriter::new(out), &path, &meta, &infos).unwrap();
    let mut s = 1u32;
    for (name, dims, ty) in &infos {
        let n: u64 = dims.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                if *ty == GgmlType::F32 {
                    1.0
                } else {
                    (s as f32 / u32::MAX as f32 - 0.5) * 0.05
                }
            })
            .collect();
        w.write_tensor(name, &quantize(*ty, &x).unwrap()).unwrap();
    }
    use std::io::Write;
    w.finish().unwrap().flush().unwrap();
    let rec = h.models().register_file(&path, &named("big")).unwrap();
    println!("registered {} ({} bytes, {} params)", rec.reference(), rec.bytes, rec.params);
}
