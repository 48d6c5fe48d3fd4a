//! Writes GGUF exports and anneal's greedy tokens for the llama.cpp consumer check
//! (benches/consumers/llama_cpp_check.mjs) and the `gguf` package check
//! (benches/consumers/check_gguf.py).
//!
//! Trains the `mini` preset (Llama, hidden 256: rows of whole 256-blocks, so q4_K and
//! q6_K are really used) fully for a few dozen steps on a repetitive text, so that its
//! next-token choices have clear margins, then a LoRA adapter on top of it on another
//! text; exports the model as f32, f16, bf16, q8_0, q4_0 and q4_k_m, the adapter as a
//! GGUF LoRA adapter, and the tiny GPT-2 and Qwen2 fixtures (random weights) as f32.
//! anneal's greedy continuation (16 tokens, no stop) of a fixed prompt is written with
//! each file to `<out>/anneal.json`. Each `mini` file is also registered back into
//! anneal (`register_file`) and run by anneal's generator from its own quantized
//! weights: those entries ("anneal from this GGUF") compare llama.cpp and anneal on
//! the same file.
//!
//! Usage: gguf_check <out dir> <tests/fixtures dir>

use std::path::{Path, PathBuf};

use anneal::{
    load_model, CancelToken, ExportFormat, ExportOptions, ForwardMode, GenerationConfig, GgufType, Home, ImportOptions,
    LoadOptions, LoraConfig, Method, ModelRecord, NoopSink, RegisterOptions, Tokenizer, TrainSpec,
};
use serde_json::json;

const PROMPT: &str = "the cat sat on";
const NEW_TOKENS: usize = 16;

fn greedy(rec: &ModelRecord, adapter: Option<&Path>, ids: &[u32]) -> anyhow::Result<Vec<u32>> {
    let mut m = load_model(rec, &LoadOptions::default())?;
    if let Some(a) = adapter {
        m.load_adapter(a)?;
    }
    Ok(m.greedy(ids, NEW_TOKENS, &[], ForwardMode::Infer)?)
}

fn train(
    home: &Home,
    base: &ModelRecord,
    data: &str,
    method: Method,
    steps: u64,
    lr: f64,
    name: &str,
) -> anyhow::Result<ModelRecord> {
    let ds = home.datasets().import_file(data, &ImportOptions { name: Some(name.into()), ..Default::default() })?;
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: ds.id,
        method,
        batch_size: 8,
        seq_len: 64,
        max_steps: Some(steps),
        learning_rate: lr,
        output_name: Some(name.into()),
        ..Default::default()
    };
    let job = home.training().create_job(&spec)?;
    let report = home.training().run(&job.id, &mut NoopSink, &CancelToken::new())?;
    Ok(home.models().get(&report.model_id)?)
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: gguf_check <out dir> <tests/fixtures dir>");
    let out = PathBuf::from(&args[0]);
    let fixtures = PathBuf::from(&args[1]);
    std::fs::create_dir_all(&out)?;
    let home = Home::open(out.join("home"))?;
    let write_text = |name: &str, lines: Vec<String>| -> anyhow::Result<String> {
        let p = out.join(name);
        let body: Vec<String> = lines.iter().map(|l| json!({ "text": l }).to_string()).collect();
        std::fs::write(&p, body.join("\n"))?;
        Ok(p.display().to_string())
    };
    let animals = ["cat", "dog", "bird", "fox"];
    let places = ["mat", "rug", "log", "box"];
    let story: Vec<String> = (0..64)
        .map(|i| {
            (0..6)
                .map(|j| format!("the {} sat on the {}.", animals[(i + j) % 4], places[(i + 2 * j) % 4]))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let colors: Vec<String> =
        (0..64).map(|i| format!("the cat sat on red blue green {} red blue green.", i % 7)).collect();
    let (story, colors) = (write_text("story.jsonl", story)?, write_text("colors.jsonl", colors)?);

    let mini = home.models().create_preset("mini", &Default::default())?;
    eprintln!("training mini (full, 60 steps)...");
    let ft = train(&home, &mini, &story, Method::Full, 60, 3e-3, "mini-story")?;
    eprintln!("training a LoRA adapter on it (40 steps)...");
    let lora_cfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "k_proj".into(), "v_proj".into(), "o_proj".into()],
        ..Default::default()
    };
    let lora = train(&home, &ft, &colors, Method::Lora(lora_cfg), 40, 1e-2, "mini-colors")?;

    let tok = Tokenizer::load(&ft)?;
    let ids = tok.encode(PROMPT, false)?;
    let mut entries = Vec::new();
    let export = |rec: &ModelRecord, q: GgufType, merge: Option<bool>, file: &str| -> anyhow::Result<PathBuf> {
        let dest = out.join(file);
        let opts = ExportOptions { overwrite: true, quantization: Some(q), merge, ..Default::default() };
        home.models().export(&rec.id, ExportFormat::Gguf, &dest, &opts)?;
        Ok(dest)
    };
    let want = greedy(&ft, None, &ids)?;
    for q in [GgufType::F32, GgufType::F16, GgufType::Bf16, GgufType::Q8_0, GgufType::Q4_0, GgufType::Q4KM] {
        let f = export(&ft, q, None, &format!("mini-{q}.gguf"))?;
        entries.push(json!({"name": format!("mini {q}"), "type": q.as_str(), "model": f, "prompt": PROMPT,
                            "prompt_ids": ids, "anneal": want}));
        // The same file registered back and run by anneal from its quantized weights.
        let opts = RegisterOptions { name: Some(format!("mini-gguf-{q}")), ..Default::default() };
        let rec = home.models().register_file(&f, &opts)?;
        let gguf_ids = Tokenizer::load(&rec)?.encode(PROMPT, false)?;
        let cfg = GenerationConfig { max_new_tokens: Some(NEW_TOKENS), ignore_eos: true, ..Default::default() };
        let got = home.generator(&rec.id, &Default::default())?.generate(gguf_ids.clone(), &cfg)?.token_ids;
        entries.push(json!({"name": format!("anneal from this GGUF: mini {q}"), "type": q.as_str(), "model": f,
                            "prompt": PROMPT, "prompt_ids": gguf_ids, "anneal": got}));
    }
    let with_lora = greedy(&ft, Some(&lora.path), &ids)?;
    let base_f32 = out.join("mini-f32.gguf");
    let adapter = export(&lora, GgufType::F32, None, "mini-colors-lora.gguf")?;
    entries.push(json!({"name": "mini f32 + LoRA (--lora)", "type": "f32", "model": base_f32, "lora": adapter,
                        "prompt": PROMPT, "prompt_ids": ids, "anneal": with_lora}));
    let merged = export(&lora, GgufType::F16, Some(true), "mini-colors-merged-f16.gguf")?;
    entries.push(json!({"name": "mini + LoRA merged, f16", "type": "f16", "model": merged, "prompt": PROMPT,
                        "prompt_ids": ids, "anneal": with_lora}));
    for fixture in ["tiny-gpt2", "tiny-qwen2", "tiny-llama"] {
        let rec = home.models().register_dir(fixtures.join(fixture), &RegisterOptions::default())?;
        let tok = Tokenizer::load(&rec)?;
        let ids = tok.encode(PROMPT, false)?;
        let f = export(&rec, GgufType::F32, None, &format!("{fixture}-f32.gguf"))?;
        entries.push(json!({"name": format!("{fixture} (random weights) f32"), "type": "f32", "model": f,
                            "prompt": PROMPT, "prompt_ids": ids, "anneal": greedy(&rec, None, &ids)?}));
    }
    std::fs::write(out.join("anneal.json"), serde_json::to_vec_pretty(&entries)?)?;
    println!("wrote {}", out.join("anneal.json").display());
    Ok(())
}
