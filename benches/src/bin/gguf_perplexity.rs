//! Perplexity of the 4-bit GGUF exports against f32, on held-out text: the files for
//! benches/consumers/llama_cpp_perplexity.mjs (llama.cpp's side) and anneal's own
//! figures. Run through `benches/consumers/run.sh ppl`; not a timing.
//!
//! Trains the `mini` preset (Llama, hidden 256, 6 layers, byte-level tokenizer: its
//! matrices are whole 256-blocks, so q4_K and q6_K are really used) fully on text from a
//! small seeded grammar ("the cat sat on the mat." with learnable preferences: each
//! animal mostly does one thing, each verb mostly goes with two places), then exports
//! it as GGUF f32, q8_0, q4_0 and q4_k_m. The held-out text is more of the same
//! grammar from another seed: no held-out line is a training line.
//!
//! Writes `<out>/ppl.json`: the held-out texts with anneal's token ids (BOS as the
//! tokenizer adds it), the files, and anneal's corpus perplexity on the original f32
//! weights and on each GGUF file registered back (`register_file`; q8_0 runs its blocks
//! as they are, q4_0 / q4_k_m are requantized to q8_0 at load: a second rounding that
//! llama.cpp does not do).
//!
//! Usage: gguf_perplexity <out dir> [training steps (default 100)]

use std::path::PathBuf;

use anneal::{
    CancelToken, ExportFormat, ExportOptions, GeneratorOptions, GgufType, Home, ImportOptions, Method, ModelRecord,
    NoopSink, RegisterOptions, Tokenizer, TrainSpec,
};
use serde_json::json;

const ANIMALS: [&str; 6] = ["cat", "dog", "bird", "fox", "cow", "owl"];
const VERBS: [&str; 4] = ["sat on", "ran to", "looked at", "slept by"];
const PLACES: [&str; 6] = ["mat", "rug", "log", "box", "tree", "door"];

/// `lines` lines of 6 sentences from the grammar, drawn with seed `seed`.
fn grammar(seed: u64, lines: usize) -> Vec<String> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: usize| {
        // xorshift64*
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    };
    (0..lines)
        .map(|_| {
            (0..6)
                .map(|_| {
                    let a = next(ANIMALS.len());
                    // Each animal mostly does one thing; each verb mostly goes with two places.
                    let v = if next(4) < 3 { a % VERBS.len() } else { next(VERBS.len()) };
                    let p = if next(5) < 4 { (2 * v + next(2)) % PLACES.len() } else { next(PLACES.len()) };
                    format!("the {} {} the {}.", ANIMALS[a], VERBS[v], PLACES[p])
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Corpus perplexity of `texts` under `rec`'s generator: exp of the mean next-token
/// loss over every predicted token of every text.
fn perplexity(home: &Home, rec: &ModelRecord, texts: &[String]) -> anyhow::Result<f64> {
    let g = home.generator(rec.id.clone(), &GeneratorOptions { record: false, ..Default::default() })?;
    let scores = g.score(texts)?;
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let loss: f64 = scores.iter().map(|s| s.loss * s.tokens as f64).sum::<f64>() / tokens as f64;
    Ok(loss.exp())
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(matches!(args.len(), 1 | 2), "usage: gguf_perplexity <out dir> [training steps]");
    let out = PathBuf::from(&args[0]);
    let steps: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    std::fs::create_dir_all(&out)?;
    let home = Home::open(out.join("home"))?;

    let train = grammar(1, 256);
    let heldout = grammar(2, 24);
    anyhow::ensure!(heldout.iter().all(|l| !train.contains(l)), "a held-out line is a training line");
    let data = out.join("train.jsonl");
    let body: Vec<String> = train.iter().map(|l| json!({ "text": l }).to_string()).collect();
    std::fs::write(&data, body.join("\n"))?;

    let mini = home.models().create_preset("mini", &Default::default())?;
    let ds =
        home.datasets().import_file(&data, &ImportOptions { name: Some("grammar".into()), ..Default::default() })?;
    let spec = TrainSpec {
        base: mini.id.clone().into(),
        dataset: ds.id,
        method: Method::Full,
        batch_size: 8,
        seq_len: 64,
        max_steps: Some(steps),
        learning_rate: 3e-3,
        output_name: Some("mini-grammar".into()),
        ..Default::default()
    };
    eprintln!("training mini (full, {steps} steps)...");
    let job = home.training().create_job(&spec)?;
    let report = home.training().run(&job.id, &mut NoopSink, &CancelToken::new())?;
    let model = home.models().get(&report.model_id)?;

    let tok = Tokenizer::load(&model)?;
    let texts: Vec<serde_json::Value> =
        heldout.iter().map(|t| Ok(json!({"text": t, "ids": tok.encode(t, true)?}))).collect::<anyhow::Result<_>>()?;
    let mut files = Vec::new();
    let mut anneal =
        vec![json!({"name": "original (safetensors) f32", "perplexity": perplexity(&home, &model, &heldout)?})];
    for q in [GgufType::F32, GgufType::Q8_0, GgufType::Q4_0, GgufType::Q4KM] {
        let path = out.join(format!("mini-{q}.gguf"));
        let opts = ExportOptions { quantization: Some(q), overwrite: true, ..Default::default() };
        home.models().export(&model.id, ExportFormat::Gguf, &path, &opts)?;
        let rec = home
            .models()
            .register_file(&path, &RegisterOptions { name: Some(format!("mini-{q}")), ..Default::default() })?;
        files.push(json!({"type": q.as_str(), "path": path, "bytes": std::fs::metadata(&path)?.len()}));
        anneal.push(json!({"name": format!("GGUF {q}, registered back"), "type": q.as_str(),
                           "perplexity": perplexity(&home, &rec, &heldout)?}));
    }
    let doc = json!({"model": model.reference(), "steps": steps, "texts": texts, "files": files, "anneal": anneal});
    std::fs::write(out.join("ppl.json"), serde_json::to_vec_pretty(&doc)?)?;
    println!("wrote {}", out.join("ppl.json").display());
    Ok(())
}
