//! Generator on the public API: parity with transformers' greedy decoding (every
//! family, the adapter merged and unmerged), sampling, stop sequences, streaming,
//! batches, scoring, typed errors, and the catalog's usage records.
//! Run: cargo test -p anneal --test integration generation::
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use anneal::{
    options_from_json, ChatMessage, Error, FinishReason, ForwardMode, GenerationConfig, GenerationFilter, Generator,
    GeneratorOptions, Home, LoadOptions, Model, ModelRecord, Prompt, RegisterOptions,
};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

struct Env {
    _dir: tempfile::TempDir,
    home: Home,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("home")).unwrap();
        Env { _dir: dir, home }
    }

    fn register(&self, name: &str) -> ModelRecord {
        self.home.models().register_dir(fixture(name), &RegisterOptions::default()).unwrap()
    }

    fn register_lora(&self) -> (ModelRecord, ModelRecord) {
        let base = self.register("tiny-llama");
        let opts = RegisterOptions { parent: Some(base.id.clone().into()), ..Default::default() };
        let lora = self.home.models().register_dir(fixture("tiny-llama-lora"), &opts).unwrap();
        (base, lora)
    }

    fn nano(&self) -> Generator {
        let rec = self.home.models().create_preset("nano", &Default::default()).unwrap();
        self.home.generator(&rec.id, &GeneratorOptions::default()).unwrap()
    }
}

/// Exactly `n` greedy tokens, EOS or not (the fixtures' setting).
fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig { max_new_tokens: Some(n), ignore_eos: true, ..Default::default() }
}

fn check_parity(gen: &Generator, fixture_name: &str, adapter: Option<&str>) {
    let r = reference(fixture_name);
    let want = u32s(&r["greedy_new_tokens"]);
    let cfg = GenerationConfig { adapter: adapter.map(str::to_string), ..greedy(want.len()) };
    let out = gen.generate(u32s(&r["input_ids"]), &cfg).unwrap();
    assert_eq!(out.token_ids, want, "{fixture_name}: greedy tokens (adapter {adapter:?})");
    assert_eq!((out.generated_tokens, out.finish_reason), (want.len(), FinishReason::Length));
    assert_eq!(out.prompt_tokens, r["input_ids"].as_array().unwrap().len());
}

#[test]
fn greedy_matches_transformers_for_every_family() {
    let env = Env::new();
    for name in ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] {
        let rec = env.register(name);
        let gen = env.home.generator(&rec.id, &GeneratorOptions::default()).unwrap();
        check_parity(&gen, name, None);
        // The cached decoder and the full-recompute reference agree token for token.
        let r = reference(name);
        let model = Model::load(&rec, &LoadOptions::default()).unwrap();
        let full = model.greedy(&u32s(&r["input_ids"]), 20, &[], ForwardMode::Infer).unwrap();
        assert_eq!(full, u32s(&r["greedy_new_tokens"]), "{name}: full recompute");
    }
}

#[test]
fn adapter_parity_merged_unmerged_and_switched_per_request() {
    let env = Env::new();
    let (base, lora) = env.register_lora();
    let merged = env.home.generator(&lora.id, &GeneratorOptions::default()).unwrap();
    check_parity(&merged, "tiny-llama-lora", None);
    let separate =
        env.home.generator(&lora.id, &GeneratorOptions { merge_adapter: false, ..Default::default() }).unwrap();
    check_parity(&separate, "tiny-llama-lora", None);
    assert_eq!(separate.adapters().unwrap().len(), 1);

    // One base, adapters switched per request (loaded on first use, once the prompt passed).
    let on_base = env.home.generator(&base.id, &GeneratorOptions::default()).unwrap();
    let with_lora = GenerationConfig { adapter: Some(lora.reference()), ..Default::default() };
    let e = on_base.generate(vec![1u32; on_base.context_length() + 1], &with_lora).unwrap_err();
    assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "prompt"), "{e}");
    assert!(on_base.adapters().unwrap().is_empty(), "a refused request loads nothing");
    check_parity(&on_base, "tiny-llama", None);
    check_parity(&on_base, "tiny-llama-lora", Some(&lora.reference()));
    check_parity(&on_base, "tiny-llama", None);
    let ids: Vec<_> = on_base.adapters().unwrap().into_iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![lora.id.clone()]);

    // Interleaved requests from two threads each get their own adapter.
    std::thread::scope(|s| {
        let a = s.spawn(|| (0..3).for_each(|_| check_parity(&on_base, "tiny-llama-lora", Some(&lora.id.0))));
        let b = s.spawn(|| (0..3).for_each(|_| check_parity(&on_base, "tiny-llama", None)));
        a.join().unwrap();
        b.join().unwrap();
    });
    // Requests on the same adapter run their forward passes side by side (shared lock).
    std::thread::scope(|s| {
        let runs: Vec<_> =
            (0..4).map(|_| s.spawn(|| check_parity(&on_base, "tiny-llama-lora", Some(&lora.id.0)))).collect();
        runs.into_iter().for_each(|r| r.join().unwrap());
    });

    // A merged adapter cannot be switched; an adapter of another base is refused.
    let e = merged.add_adapter(&lora.id).unwrap_err();
    assert_eq!(e.code(), "invalid_config", "{e}");
    let gpt2 = env.register("tiny-gpt2");
    let on_gpt2 = env.home.generator(&gpt2.id, &GeneratorOptions::default()).unwrap();
    let e = on_gpt2.add_adapter(&lora.id).unwrap_err();
    assert!(e.to_string().contains("applies to"), "{e}");
    let e = on_base.add_adapter(&gpt2.id).unwrap_err();
    assert!(e.to_string().contains("not an adapter"), "{e}");
}

#[test]
fn stream_pieces_add_up_to_generate() {
    let env = Env::new();
    let gen = env.nano();
    for cfg in [greedy(40), GenerationConfig { temperature: Some(1.0), seed: Some(3), ..greedy(40) }] {
        let whole = gen.generate("hello world", &cfg).unwrap();
        let mut stream = gen.stream("hello world", &cfg).unwrap();
        let mut text = String::new();
        let mut ids = Vec::new();
        for chunk in stream.by_ref() {
            let chunk = chunk.unwrap();
            assert!(!chunk.token_ids.is_empty());
            text.push_str(&chunk.text);
            ids.extend(chunk.token_ids);
        }
        let g = stream.generation().unwrap();
        assert_eq!((text.as_str(), ids.as_slice()), (whole.text.as_str(), whole.token_ids.as_slice()));
        assert_eq!((g.text.as_str(), &g.token_ids), (whole.text.as_str(), &whole.token_ids));
        assert_eq!(whole.token_ids.len(), 40);
    }
}

#[test]
fn seeds_repeat_and_settings_change_the_draw() {
    let env = Env::new();
    let gen = env.nano();
    let sampled = |seed: u64, extra: GenerationConfig| {
        let cfg = GenerationConfig { temperature: Some(1.0), seed: Some(seed), ..extra };
        gen.generate("abc", &GenerationConfig { max_new_tokens: Some(30), ignore_eos: true, ..cfg }).unwrap()
    };
    let a = sampled(1, Default::default());
    assert_eq!(a.token_ids, sampled(1, Default::default()).token_ids);
    assert_eq!(a.seed, Some(1));
    assert_ne!(a.token_ids, sampled(2, Default::default()).token_ids);
    // top_k 1 and a tiny top_p leave only the argmax: sampling equals greedy.
    let g = gen.generate("abc", &greedy(30)).unwrap();
    assert_eq!(g.seed, None);
    assert_eq!(sampled(5, GenerationConfig { top_k: Some(1), ..Default::default() }).token_ids, g.token_ids);
    assert_eq!(sampled(6, GenerationConfig { top_p: Some(1e-9), ..Default::default() }).token_ids, g.token_ids);
    assert_eq!(sampled(7, GenerationConfig { min_p: Some(0.999_999), ..Default::default() }).token_ids, g.token_ids);
    // An unset seed is drawn and reported, and reproduces the output.
    let r = gen
        .generate(
            "abc",
            &GenerationConfig {
                temperature: Some(1.0),
                max_new_tokens: Some(30),
                ignore_eos: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(sampled(r.seed.unwrap(), Default::default()).token_ids, r.token_ids);
    // A strong repetition penalty changes greedy output on a random model that repeats itself.
    let pen = gen.generate("abc", &GenerationConfig { repetition_penalty: Some(50.0), ..greedy(30) }).unwrap();
    assert_ne!(pen.token_ids, g.token_ids);
}

#[test]
fn stop_sequences_and_eos_end_generation() {
    let env = Env::new();
    let gen = env.nano();
    let full = gen.generate("the cat", &greedy(60)).unwrap();
    // A stop string from the middle of the greedy text (spanning several byte tokens).
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "{:?}", full.text);
    let stop: String = chars[8..11].iter().collect();
    let at = full.text.find(&stop).unwrap();
    let out = gen.generate("the cat", &GenerationConfig { stop: vec![stop.clone()], ..greedy(60) }).unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.stop_sequence.as_deref(), Some(stop.as_str()));
    assert_eq!(out.text, full.text[..at]);
    assert!(out.token_ids.len() < full.token_ids.len());
    let streamed: String = gen
        .stream("the cat", &GenerationConfig { stop: vec![stop.clone()], ..greedy(60) })
        .unwrap()
        .map(|c| c.unwrap().text)
        .collect();
    assert_eq!(streamed, out.text);

    // EOS: make the EOS token the one greedy decoding picks first.
    let first = full.token_ids[0];
    let eos = gen.eos_token_ids().to_vec();
    assert!(!eos.is_empty());
    let cfg = GenerationConfig { max_new_tokens: Some(60), ..Default::default() };
    let out = gen.generate("the cat", &cfg).unwrap();
    match full.token_ids.iter().position(|t| eos.contains(t)) {
        Some(i) => {
            assert_eq!(out.finish_reason, FinishReason::Eos);
            assert_eq!(out.token_ids, full.token_ids[..=i]);
        }
        None => assert_eq!(out.finish_reason, FinishReason::Length, "first token {first}"),
    }
}

#[test]
fn batch_rows_equal_single_generations() {
    let env = Env::new();
    let gen = env.nano();
    let prompts = ["a", "the quick brown fox", "hello there, world", "xyz"];
    let cfg = greedy(24);
    let batch = gen.generate_batch(&prompts, &cfg).unwrap();
    assert_eq!(batch.len(), prompts.len());
    for (p, b) in prompts.iter().zip(&batch) {
        let one = gen.generate(*p, &cfg).unwrap();
        assert_eq!((&b.token_ids, &b.text), (&one.token_ids, &one.text), "prompt {p:?}");
        assert_eq!(b.prompt_tokens, one.prompt_tokens);
    }
    // Also on the fixtures with a real vocabulary, across a family with RoPE and GQA.
    let rec = env.register("tiny-qwen2");
    let qwen = env.home.generator(&rec.id, &GeneratorOptions::default()).unwrap();
    let r = reference("tiny-qwen2");
    let ids = u32s(&r["input_ids"]);
    let prompts: Vec<Prompt> = vec![ids[3..].to_vec().into(), ids.clone().into(), ids[ids.len() - 2..].to_vec().into()];
    let batch = qwen.generate_batch(&prompts, &greedy(20)).unwrap();
    assert_eq!(batch[1].token_ids, u32s(&r["greedy_new_tokens"]));
    for (p, b) in prompts.iter().zip(&batch) {
        assert_eq!(b.token_ids, qwen.generate(p, &greedy(20)).unwrap().token_ids);
    }
    // Rows stop independently (a stop sequence in some rows only).
    let stops = gen.generate_batch(&["a", "xyz"], &GenerationConfig { stop: vec![batch_stop(&gen)], ..greedy(24) });
    assert!(stops.unwrap().iter().any(|g| g.finish_reason == FinishReason::Stop));
}

#[test]
fn concurrent_calls_equal_sequential_calls() {
    // Threads share the generator's decoding batch (requests join and leave it as they
    // come); each result is what the call gives alone, for GPT-2 and a Llama-family model.
    let env = Env::new();
    for name in ["tiny-gpt2", "tiny-qwen2"] {
        let rec = env.register(name);
        let gen = env.home.generator(&rec.id, &GeneratorOptions::default()).unwrap();
        let ids = u32s(&reference(name)["input_ids"]);
        let sampled =
            |seed, n| GenerationConfig { temperature: Some(0.8), top_p: Some(0.9), seed: Some(seed), ..greedy(n) };
        let calls: Vec<(Prompt, GenerationConfig)> = vec![
            (ids.clone().into(), greedy(12)),
            (ids[2..].to_vec().into(), sampled(5, 9)),
            (ids[..3].to_vec().into(), greedy(20)),
            (ids[ids.len() - 1..].to_vec().into(), sampled(9, 15)),
            (ids.repeat(3).into(), greedy(4)),
        ];
        let alone: Vec<_> = calls.iter().map(|(p, c)| gen.generate(p.clone(), c).unwrap()).collect();
        let together: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = calls
                .iter()
                .map(|(p, c)| {
                    let gen = gen.clone();
                    s.spawn(move || gen.generate(p.clone(), c).unwrap())
                })
                .collect();
            // A stream dropped early meanwhile leaves the others intact.
            let mut stream = gen.stream(ids.clone(), &greedy(40)).unwrap();
            stream.next().unwrap().unwrap();
            drop(stream);
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!((&a.token_ids, &a.text, a.seed), (&b.token_ids, &b.text, b.seed), "{name} call {i}");
        }
    }
}

/// A stop string that greedy decoding of "a" produces.
fn batch_stop(gen: &Generator) -> String {
    let t = gen.generate("a", &greedy(24)).unwrap().text;
    t.chars().skip(4).take(2).collect()
}

#[test]
fn score_matches_the_model_loss() {
    let env = Env::new();
    let rec = env.register("tiny-llama");
    let gen = env.home.generator(&rec.id, &GeneratorOptions::default()).unwrap();
    let r = reference("tiny-llama");
    let tok = gen.tokenizer().unwrap();
    let text = tok.decode(&u32s(&r["input_ids"]), false).unwrap();
    let scores = gen.score(&[text.as_str(), "hello world, how are you"]).unwrap();
    let ids = tok.encode(&text, true).unwrap();
    let model = Model::load(&rec, &LoadOptions::default()).unwrap();
    let x = candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want = model.loss(&x, &x.to_dtype(candle_core::DType::I64).unwrap(), ForwardMode::Train).unwrap();
    let want = f64::from(want.to_scalar::<f32>().unwrap());
    assert!((scores[0].loss - want).abs() < 1e-5, "{} vs {want}", scores[0].loss);
    assert_eq!(scores[0].tokens, ids.len() - 1);
    for s in &scores {
        assert!(s.loss.is_finite() && (s.perplexity - s.loss.exp()).abs() < 1e-9);
    }
    let e = gen.score(&["ok", ""]).unwrap_err();
    assert!(e.to_string().contains("texts["), "{e}");
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let env = Env::new();
    let gen = env.nano();
    let models = env.home.models();
    let e = env.home.generator("no-such-model", &GeneratorOptions::default()).unwrap_err();
    assert_eq!(e.code(), "not_found", "{e}");
    let e = env.home.generator(&gen.model().id, &GeneratorOptions { dtype: "f64".into(), ..Default::default() });
    assert_eq!(e.unwrap_err().code(), "invalid_config");

    let too_long: Vec<u32> = vec![65; gen.context_length() + 1];
    let e = gen.generate(too_long, &GenerationConfig::default()).unwrap_err();
    assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "prompt"), "{e}");
    assert!(e.to_string().contains("context"), "{e}");
    // A huge text is refused from its length alone, before it is tokenised (the bound
    // of tokens per byte comes from the vocabulary).
    let huge = "ab ".repeat(4 << 20);
    let e = gen.generate(huge.as_str(), &GenerationConfig::default()).unwrap_err();
    assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "prompt"), "{e}");
    assert!(e.to_string().contains("at least"), "{e}");
    // A batch names its prompts by index, even a batch of one.
    let e = gen.generate_batch(&[""], &GenerationConfig::default()).unwrap_err();
    assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "prompts[0]"), "{e}");
    let fits = "ab ".repeat(4);
    assert!(gen.tokenizer().unwrap().min_tokens(&fits) <= gen.tokenizer().unwrap().encode(&fits, false).unwrap().len());
    let bad = [
        ("max_new_tokens", json!({"max_new_tokens": 0})),
        ("temperature", json!({"temperature": -1.0})),
        ("top_p", json!({"top_p": 0.0})),
        ("top_p", json!({"top_p": 1.5})),
        ("min_p", json!({"min_p": 1.0})),
        ("repetition_penalty", json!({"repetition_penalty": 0.0})),
        ("stop[1]", json!({"stop": ["x", ""]})),
        ("adapter", json!({"adapter": "nope"})),
    ];
    for (field, v) in bad {
        let cfg: GenerationConfig = options_from_json(v.clone()).unwrap();
        for e in [
            gen.generate("hi", &cfg).unwrap_err(),
            gen.stream("hi", &cfg).unwrap_err(),
            gen.generate_batch(&["hi"], &cfg).unwrap_err(),
        ] {
            assert!(matches!(&e, Error::InvalidConfig { field: f, .. } if f == field), "{v}: {e}");
        }
    }
    let e = options_from_json::<GenerationConfig>(json!({"temprature": 1.0})).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("temprature"), "{e}");
    let e = gen.generate(vec![999_999u32], &GenerationConfig::default()).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    let e = gen.generate_batch(&["ok", ""], &GenerationConfig::default()).unwrap_err();
    assert!(e.to_string().contains("prompts[1]"), "{e}");
    let e = gen.generate(Vec::<ChatMessage>::new(), &GenerationConfig::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    // Nothing ran, so nothing was recorded.
    assert!(models.generations(&GenerationFilter::default()).unwrap().is_empty());
}

#[test]
fn prompts_near_the_context_end_generate_what_fits() {
    let env = Env::new();
    let gen = env.nano();
    let n = gen.context_length();
    let out = gen.generate(vec![65u32; n - 2], &greedy(50)).unwrap();
    assert_eq!((out.generated_tokens, out.finish_reason), (3, FinishReason::Length));
    let out = gen.generate(vec![65u32; n], &greedy(50)).unwrap();
    assert_eq!(out.generated_tokens, 1);
}

#[test]
fn chat_prompts_use_the_template() {
    let env = Env::new();
    let gen = env.nano();
    let msgs = vec![ChatMessage::new("user", "hi")];
    let rendered = gen.tokenizer().unwrap().apply_chat_template(&msgs, true).unwrap();
    let ids = gen.tokenizer().unwrap().encode(&rendered, false).unwrap();
    let a = gen.generate(msgs, &greedy(10)).unwrap();
    let b = gen.generate(ids.clone(), &greedy(10)).unwrap();
    assert_eq!((a.prompt_tokens, &a.token_ids), (ids.len(), &b.token_ids));
    // Roles are the ones a chat dataset accepts, named at the message.
    let bad = vec![ChatMessage::new("user", "hi"), ChatMessage::new("wizard", "abracadabra")];
    let e = gen.generate(bad, &greedy(2)).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("prompt[1].role") && e.to_string().contains("wizard"), "{e}");
}

#[test]
fn every_call_is_recorded_with_its_settings() {
    let env = Env::new();
    let gen = env.nano();
    let models = env.home.models();
    let g = gen.generate("a", &GenerationConfig { temperature: Some(0.7), seed: Some(9), ..greedy(5) }).unwrap();
    let _ = gen.stream("b", &greedy(4)).unwrap().count();
    gen.generate_batch(&["c", "dd"], &greedy(3)).unwrap();
    gen.score(&["some text"]).unwrap();
    // An abandoned stream is not recorded.
    let mut s = gen.stream("e", &greedy(50)).unwrap();
    s.next();
    drop(s);
    let rows = models.generations(&GenerationFilter::default()).unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["score", "batch", "stream", "generate"]);
    let first = &rows[3];
    assert_eq!(Some(&first.id), g.id.as_ref());
    assert_eq!((first.prompt_tokens, first.generated_tokens), (g.prompt_tokens as u64, 5));
    assert_eq!(first.params["temperature"], json!(0.7));
    assert_eq!(first.params["seed"], json!(9));
    assert_eq!(first.finish_reason, Some(anneal::FinishReason::Length));
    assert!(first.ttft_ms.unwrap() > 0.0 && first.duration_ms >= first.ttft_ms.unwrap());
    assert_eq!(rows[1].params["prompts"], json!(2));
    assert_eq!(rows[1].generated_tokens, 6);
    let u = models.usage(&gen.model().id).unwrap();
    assert_eq!((u.calls, u.generations, u.generated_tokens), (4, 4, 5 + 4 + 6));
    assert!(u.last_used_at.is_some());
    let only = GenerationFilter { kind: Some(anneal::GenerationKind::Batch), limit: Some(5), ..Default::default() };
    assert_eq!(models.generations(&only).unwrap().len(), 1);
    let e = anneal::options_from_json::<GenerationFilter>(json!({"kind": "x"})).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("`batch`") && e.to_string().contains("`score`"), "{e}");
    // record: false leaves the catalog alone.
    let quiet = env.home.generator(&gen.model().id, &GeneratorOptions { record: false, ..Default::default() }).unwrap();
    assert_eq!(quiet.generate("a", &greedy(3)).unwrap().id, None);
    assert_eq!(models.usage(&gen.model().id).unwrap().calls, 4);
}

#[test]
fn generation_config_json_sets_the_defaults() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-llama").join(f), dir.path().join(f)).unwrap();
    }
    let gc = json!({"do_sample": true, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 7});
    std::fs::write(dir.path().join("generation_config.json"), gc.to_string()).unwrap();
    let rec = env.home.models().register_dir(dir.path(), &RegisterOptions::default()).unwrap();
    let gen = env.home.generator(&rec.id, &GeneratorOptions::default()).unwrap();
    let d = gen.defaults();
    assert_eq!((d.temperature, d.top_p, d.top_k, d.max_new_tokens), (Some(0.6), Some(0.9), Some(50), Some(7)));
    let out = gen.generate(vec![5u32, 6, 7], &GenerationConfig { ignore_eos: true, ..Default::default() }).unwrap();
    assert_eq!(out.generated_tokens, 7);
    assert!(out.seed.is_some(), "sampled by default");
    // The request wins over the file.
    let out = gen.generate(vec![5u32, 6, 7], &GenerationConfig { temperature: Some(0.0), ..greedy(3) }).unwrap();
    assert_eq!(out.seed, None);
}

#[test]
fn q8_0_weights_stay_close_to_f32() {
    let env = Env::new();
    let (base, lora) = env.register_lora();
    let q8 = GeneratorOptions { quantize: Some("q8_0".into()), ..Default::default() };
    let texts = ["hello world, how are you today?", "the cat sat on the mat"];
    // GPT-2 too: its Conv1D matrices ([in, out] in the file) are quantized transposed.
    let gpt2 = env.register("tiny-gpt2");
    for model in [&base, &lora, &gpt2] {
        let f = env.home.generator(&model.id, &GeneratorOptions::default()).unwrap();
        let q = env.home.generator(&model.id, &q8).unwrap();
        for (a, b) in f.score(&texts).unwrap().iter().zip(q.score(&texts).unwrap()) {
            assert!((a.loss - b.loss).abs() < 0.02 * a.loss, "{} vs {}", a.loss, b.loss);
        }
        let r = reference(if model.id == gpt2.id { "tiny-gpt2" } else { "tiny-llama" });
        let out = q.generate(u32s(&r["input_ids"]), &greedy(20)).unwrap();
        assert_eq!(out.generated_tokens, 20);
        // A row of a batch gets the tokens it gets alone (the q8_0 kernels too).
        let prompts = ["a", "the quick brown fox", "hello there, world", "xyz"];
        for (p, b) in prompts.iter().zip(q.generate_batch(&prompts, &greedy(16)).unwrap()) {
            assert_eq!(b.token_ids, q.generate(*p, &greedy(16)).unwrap().token_ids, "prompt {p:?}");
        }
    }
    // Adapters kept separate run in f32 on the quantized base.
    let sep = GeneratorOptions { merge_adapter: false, ..q8.clone() };
    let q = env.home.generator(&lora.id, &sep).unwrap();
    assert_eq!(q.generate("hi", &greedy(5)).unwrap().generated_tokens, 5);
    for (opts, field) in [
        (GeneratorOptions { quantize: Some("q4".into()), ..Default::default() }, "quantize"),
        (GeneratorOptions { dtype: "bf16".into(), ..q8.clone() }, "quantize"),
    ] {
        let e = env.home.generator(&base.id, &opts).unwrap_err();
        assert!(matches!(&e, Error::InvalidConfig { field: f, .. } if f == field), "{e}");
    }
}

/// `quantize: "bf16"`: the weights and each layer's inputs rounded to bfloat16, sums in f32.
/// Losses within 0.5% of f32's, the same greedy tokens as f32 on the fixtures' reference
/// prompts (their top-1 margins are far above bf16's rounding), batch rows equal to
/// single calls, adapters merged first or kept separate, and the options it refuses.
#[test]
fn bf16_weights_stay_close_to_f32() {
    let env = Env::new();
    let (base, lora) = env.register_lora();
    let bf = GeneratorOptions { quantize: Some("bf16".into()), ..Default::default() };
    let texts = ["hello world, how are you today?", "the cat sat on the mat"];
    let gpt2 = env.register("tiny-gpt2");
    for model in [&base, &lora, &gpt2] {
        let f = env.home.generator(&model.id, &GeneratorOptions::default()).unwrap();
        let q = env.home.generator(&model.id, &bf).unwrap();
        for (a, b) in f.score(&texts).unwrap().iter().zip(q.score(&texts).unwrap()) {
            assert!((a.loss - b.loss).abs() < 0.005 * a.loss, "{} vs {}", a.loss, b.loss);
            assert_ne!(a.loss, b.loss, "the bf16 weights are in use");
        }
        let r = reference(if model.id == gpt2.id { "tiny-gpt2" } else { "tiny-llama" });
        let prompt = u32s(&r["input_ids"]);
        let want = f.generate(prompt.clone(), &greedy(12)).unwrap();
        assert_eq!(q.generate(prompt, &greedy(12)).unwrap().token_ids, want.token_ids);
        // A row of a batch gets the tokens it gets alone.
        let prompts = ["a", "the quick brown fox", "hello there, world", "xyz"];
        for (p, b) in prompts.iter().zip(q.generate_batch(&prompts, &greedy(16)).unwrap()) {
            assert_eq!(b.token_ids, q.generate(*p, &greedy(16)).unwrap().token_ids, "prompt {p:?}");
        }
    }
    // Adapters kept separate run in f32 on the bf16 base.
    let sep = GeneratorOptions { merge_adapter: false, ..bf.clone() };
    let q = env.home.generator(&lora.id, &sep).unwrap();
    assert_eq!(q.generate("hi", &greedy(5)).unwrap().generated_tokens, 5);
    // bf16 weights with a bf16 or f16 compute dtype: refused (the whole model in bf16
    // is `dtype: "bf16"` alone); an unknown value names both formats.
    for dtype in ["bf16", "f16"] {
        let e = env.home.generator(&base.id, &GeneratorOptions { dtype: dtype.into(), ..bf.clone() }).unwrap_err();
        assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "quantize"), "{e}");
        assert!(e.to_string().contains("f32"), "{e}");
    }
    let e = env.home.generator(&base.id, &GeneratorOptions { quantize: Some("fp8".into()), ..Default::default() });
    let e = e.unwrap_err();
    assert!(e.to_string().contains("q8_0") && e.to_string().contains("bf16"), "{e}");
}

#[test]
fn generate_with_reports_a_task_and_can_be_cancelled() {
    use anneal::{CancelToken, Event, EventSink, FinishStatus, RecordingSink};
    let env = Env::new();
    let gen = env.nano();
    let mut sink = RecordingSink::default();
    let g = gen.generate_with("abc", &greedy(6), &mut sink, &CancelToken::new()).unwrap();
    let ev = sink.events();
    assert!(
        matches!(&ev[0], Event::TaskStarted { task, total: Some(6), unit, .. } if task == "generate" && unit == "tokens")
    );
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::TaskProgress { .. })).count(), 6);
    assert!(
        matches!(ev.last(), Some(Event::TaskFinished { status: FinishStatus::Completed, id, .. }) if id.as_deref() == g.id.as_ref().map(|i| i.as_str()))
    );

    // Cancelled from another event: stops at the next token, nothing recorded.
    struct CancelAt(CancelToken, u64);
    impl EventSink for CancelAt {
        fn on_event(&mut self, e: &Event) -> anneal::Result<()> {
            if matches!(e, Event::TaskProgress { done, .. } if *done == self.1) {
                self.0.cancel();
            }
            Ok(())
        }
    }
    let before = env.home.models().usage(&gen.model().id).unwrap().calls;
    let token = CancelToken::new();
    let e = gen.generate_with("abc", &greedy(50), &mut CancelAt(token.clone(), 3), &token).unwrap_err();
    assert_eq!(e.code(), "cancelled");
    let e = gen.generate_batch_with(&["a", "b"], &greedy(50), &mut CancelAt(token.clone(), 0), &token).unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert_eq!(env.home.models().usage(&gen.model().id).unwrap().calls, before);
    // A sink error (Ctrl-C in Python) stops it too.
    struct Fail;
    impl EventSink for Fail {
        fn on_event(&mut self, e: &Event) -> anneal::Result<()> {
            match e {
                Event::TaskProgress { .. } => Err(anneal::Error::Cancelled),
                _ => Ok(()),
            }
        }
    }
    assert!(gen.generate_with("abc", &greedy(50), &mut Fail, &CancelToken::new()).is_err());
}
