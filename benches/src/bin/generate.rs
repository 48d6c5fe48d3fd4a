//! Decode benchmark: batch 1, a 16-token prompt, 128 new tokens, greedy, through the
//! public `Generator` API (KV cache, no catalog writes).
//!
//! Run:    cargo run --release -p anneal-benches --bin generate -- --model DIR --config tiny|small
//!           [--prompt-tokens 16] [--new-tokens 128] [--runs 3] [--dtype f32|q8_0]
//! Output: one JSON line (same keys as benches/compare/torch_generate.py and
//!         llama_generate.py): time to first token, decode tokens/s (median of runs),
//!         peak RSS. The model dir comes from benches/compare/gen_model.py (run_generate.sh).

use std::time::Instant;

use anneal::{GenerationConfig, GeneratorOptions, Home, RegisterOptions, Storage};
use serde_json::json;

fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0.0)
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("generate --model DIR --config NAME [--prompt-tokens 16] [--new-tokens 128] [--runs 3] [--dtype f32|bf16|q8_0]");
        return Ok(());
    }
    let model_dir = arg(&args, "--model", "");
    anyhow::ensure!(!model_dir.is_empty(), "--model DIR is required (see benches/compare/gen_model.py)");
    let config = arg(&args, "--config", "tiny");
    let prompt_tokens: usize = arg(&args, "--prompt-tokens", "16").parse()?;
    let new_tokens: usize = arg(&args, "--new-tokens", "128").parse()?;
    let runs: usize = arg(&args, "--runs", "3").parse()?;
    let dtype = arg(&args, "--dtype", "f32");

    let home_dir = tempfile::tempdir()?;
    let home = Home::open(home_dir.path())?;
    let opts = RegisterOptions { storage: Storage::Reference, ..Default::default() };
    let rec = home.models().register_dir(&model_dir, &opts)?;
    let rss_loaded_before = status_kib("VmRSS:") / 1024.0;
    // `--dtype q8_0`: f32 compute with q8_0 weights (GeneratorOptions::quantize).
    let opts = match dtype.as_str() {
        "q8_0" => GeneratorOptions { record: false, quantize: Some("q8_0".into()), ..Default::default() },
        other => GeneratorOptions { record: false, dtype: other.into(), ..Default::default() },
    };
    let gen = home.generator(&rec.id, &opts)?;
    let vocab = rec.config["vocab_size"].as_u64().unwrap_or(256) as usize;
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let cfg = GenerationConfig { max_new_tokens: Some(new_tokens), ignore_eos: true, ..Default::default() };
    let first = GenerationConfig { max_new_tokens: Some(1), ..cfg.clone() };

    gen.generate(prompt.clone(), &cfg)?; // warm-up
    let mut ttft = Vec::new();
    let mut decode = Vec::new();
    let mut total = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        gen.generate(prompt.clone(), &first)?;
        ttft.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let out = gen.generate(prompt.clone(), &cfg)?;
        total.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(out.generated_tokens == new_tokens, "generated {} tokens", out.generated_tokens);
        decode.push(out.timings.decode_tokens_per_s);
        tokens = out.token_ids;
    }
    println!(
        "{}",
        json!({
            "impl": "anneal", "config": config, "dtype": dtype, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "ttft_ms": (median(ttft) * 100.0).round() / 100.0,
            "decode_tokens_per_s": (median(decode) * 10.0).round() / 10.0,
            "total_s": (median(total) * 1e4).round() / 1e4,
            "peak_rss_mib": (status_kib("VmHWM:") / 102.4).round() / 10.0,
            "rss_before_load_mib": (rss_loaded_before * 10.0).round() / 10.0,
            "tokens": &tokens[..tokens.len().min(8)],
        })
    );
    Ok(())
}
