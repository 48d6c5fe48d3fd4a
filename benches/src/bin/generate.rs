//! Decode benchmark through the public `Generator` API (KV cache, no catalog writes):
//! a 16-token prompt, 128 new tokens, greedy, EOS ignored.
//!
//! Run:    cargo run --release -p anneal-benches --bin generate -- --model DIR --config tiny|small
//!           [--prompt-tokens 16] [--new-tokens 128] [--runs 3] [--dtype f32|bf16|q8_0]
//!           [--batch N | --concurrent N]
//! Output: one JSON line (same keys as benches/compare/torch_generate.py and
//!         llama_generate.py): time to first token, decode tokens/s (median of runs),
//!         peak RSS. The model dir comes from benches/compare/gen_model.py (run_generate.sh).
//!
//! Modes (row r's prompt is `(i * 7919 + 13 + r) % vocab` for i in 0..prompt_tokens, so
//! row 0 is the batch-1 prompt; llama_generate.py --batch uses the same rows):
//! - default: batch 1, one `generate` call.
//! - `--batch N`: one `generate_batch` of N rows (one forward pass per step for all of
//!   them). `ttft_ms`: a call with one new token; `decode_tokens_per_s`: the aggregate,
//!   N * (new_tokens - 1) / decode time; `tokens_per_s`: N * new_tokens / the call's time.
//! - `--concurrent N`: N threads, released together, each calling `generate` (batch 1)
//!   on one shared `Generator`. `ttft_ms`: until every call had its first token;
//!   `decode_tokens_per_s`: N * (new_tokens - 1) / (last call's end - first call's first
//!   token), a window that never flatters (calls run one after another score as one
//!   call); `tokens_per_s`: N * new_tokens / time until the last call returned.
//!
//! Both N-modes then generate row 0 alone with `generate` and compare its tokens with
//! row 0's of the last timed run (`generate_batch` and concurrent calls promise the same
//! tokens): `row0_matches_batch1` in the JSON, and an error line on stderr when not.
//! `peak_rss_mib` is read before that check.

use std::sync::Barrier;
use std::time::Instant;

use anneal::{GenerationConfig, Generator, GeneratorOptions, Home, RegisterOptions, Storage};
use anyhow::Context;
use serde_json::{json, Value};

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

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Row `row`'s prompt (row 0: the batch-1 prompt).
fn row_prompt(row: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 7919 + 13 + row) % vocab) as u32).collect()
}

/// Medians of the timed runs of an N-row mode, and row 0's tokens of the last run.
#[derive(Default)]
struct Runs {
    ttft_ms: Vec<f64>,
    decode: Vec<f64>,
    e2e: Vec<f64>,
    total_s: Vec<f64>,
    row0: Vec<u32>,
}

fn batch_runs(gen: &Generator, prompts: &[Vec<u32>], cfg: &GenerationConfig, runs: usize) -> anyhow::Result<Runs> {
    let n = prompts.len() as f64;
    let new = cfg.max_new_tokens.unwrap_or(0);
    let first = GenerationConfig { max_new_tokens: Some(1), ..cfg.clone() };
    gen.generate_batch(prompts, cfg)?; // warm-up
    let mut r = Runs::default();
    for _ in 0..runs {
        let t = Instant::now();
        gen.generate_batch(prompts, &first)?;
        r.ttft_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let out = gen.generate_batch(prompts, cfg)?;
        let whole = t.elapsed().as_secs_f64();
        if let Some((i, g)) = out.iter().enumerate().find(|(_, g)| g.generated_tokens != new) {
            anyhow::bail!("batch row {i} generated {} tokens, not {new}", g.generated_tokens);
        }
        // Every row ends at the same step (EOS ignored); the longest, to be safe.
        let decode_ms = out.iter().map(|g| g.timings.decode_ms).fold(0.0, f64::max);
        r.decode.push(n * (new as f64 - 1.0) / (decode_ms / 1e3).max(1e-9));
        r.e2e.push(n * new as f64 / whole);
        r.total_s.push(whole);
        r.row0 = out.into_iter().next().map(|g| g.token_ids).unwrap_or_default();
    }
    Ok(r)
}

/// One call of a concurrent round: times in seconds from the round's earliest start.
struct Call {
    first_token: f64,
    end: f64,
    tokens: Vec<u32>,
}

/// One round of concurrent `generate` calls, in prompt order.
fn concurrent_round(gen: &Generator, prompts: &[Vec<u32>], cfg: &GenerationConfig) -> anyhow::Result<Vec<Call>> {
    let barrier = Barrier::new(prompts.len());
    let calls: Vec<anyhow::Result<(Instant, Instant, anneal::Generation)>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let g = gen.generate(p.clone(), cfg)?;
                    Ok((t, Instant::now(), g))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().map_err(|_| anyhow::anyhow!("the thread of concurrent call {i} panicked"))?)
            .collect()
    });
    let mut done = Vec::with_capacity(calls.len());
    for (i, c) in calls.into_iter().enumerate() {
        done.push(c.with_context(|| format!("concurrent call {i}"))?);
    }
    let origin = done.iter().map(|(t, _, _)| *t).min().context("no concurrent calls")?;
    let new = cfg.max_new_tokens.unwrap_or(0);
    let mut calls = Vec::with_capacity(done.len());
    for (i, (start, end, g)) in done.into_iter().enumerate() {
        anyhow::ensure!(
            g.generated_tokens == new,
            "concurrent call {i} generated {} tokens, not {new}",
            g.generated_tokens
        );
        calls.push(Call {
            first_token: start.duration_since(origin).as_secs_f64() + g.timings.ttft_ms / 1e3,
            end: end.duration_since(origin).as_secs_f64(),
            tokens: g.token_ids,
        });
    }
    Ok(calls)
}

fn concurrent_runs(gen: &Generator, prompts: &[Vec<u32>], cfg: &GenerationConfig, runs: usize) -> anyhow::Result<Runs> {
    let n = prompts.len() as f64;
    let new = cfg.max_new_tokens.unwrap_or(0) as f64;
    concurrent_round(gen, prompts, cfg)?; // warm-up
    let mut r = Runs::default();
    for _ in 0..runs {
        let calls = concurrent_round(gen, prompts, cfg)?;
        let all_first = calls.iter().map(|c| c.first_token).fold(0.0, f64::max);
        let earliest_first = calls.iter().map(|c| c.first_token).fold(f64::INFINITY, f64::min);
        let end = calls.iter().map(|c| c.end).fold(0.0, f64::max);
        r.ttft_ms.push(all_first * 1e3);
        r.decode.push(n * (new - 1.0) / (end - earliest_first).max(1e-9));
        r.e2e.push(n * new / end.max(1e-9));
        r.total_s.push(end);
        r.row0 = calls.into_iter().next().map(|c| c.tokens).unwrap_or_default();
    }
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!(
            "generate --model DIR --config NAME [--prompt-tokens 16] [--new-tokens 128] [--runs 3] \
             [--dtype f32|bf16|q8_0|f16|bf16-compute] [--batch N | --concurrent N]"
        );
        return Ok(());
    }
    let model_dir = arg(&args, "--model", "");
    anyhow::ensure!(!model_dir.is_empty(), "--model DIR is required (see benches/compare/gen_model.py)");
    let config = arg(&args, "--config", "tiny");
    let prompt_tokens: usize = arg(&args, "--prompt-tokens", "16").parse().context("--prompt-tokens")?;
    let new_tokens: usize = arg(&args, "--new-tokens", "128").parse().context("--new-tokens")?;
    let runs: usize = arg(&args, "--runs", "3").parse().context("--runs")?;
    let dtype = arg(&args, "--dtype", "f32");
    let batch: usize = arg(&args, "--batch", "1").parse().context("--batch")?;
    let concurrent: usize = arg(&args, "--concurrent", "1").parse().context("--concurrent")?;
    anyhow::ensure!(
        prompt_tokens >= 1 && new_tokens >= 1 && runs >= 1 && batch >= 1 && concurrent >= 1,
        "--prompt-tokens, --new-tokens, --runs, --batch and --concurrent must be at least 1"
    );
    anyhow::ensure!(batch == 1 || concurrent == 1, "--batch and --concurrent are separate modes: pass one");

    let home_dir = tempfile::tempdir()?;
    let home = Home::open(home_dir.path())?;
    let opts = RegisterOptions { storage: Storage::Reference, ..Default::default() };
    let rec = home.models().register_dir(&model_dir, &opts)?;
    let rss_loaded_before = status_kib("VmRSS:") / 1024.0;
    // `--dtype q8_0` / `bf16`: f32 compute with q8_0 or bf16 weights
    // (GeneratorOptions::quantize); `bf16-compute`: the whole model in candle's bf16
    // (`dtype: "bf16"`), `f16` likewise.
    let opts = match dtype.as_str() {
        q @ ("q8_0" | "bf16") => GeneratorOptions { record: false, quantize: Some(q.into()), ..Default::default() },
        "bf16-compute" => GeneratorOptions { record: false, dtype: "bf16".into(), ..Default::default() },
        other => GeneratorOptions { record: false, dtype: other.into(), ..Default::default() },
    };
    let gen = home.generator(&rec.id, &opts)?;
    let vocab = rec.config["vocab_size"].as_u64().unwrap_or(256) as usize;
    let prompt = row_prompt(0, prompt_tokens, vocab);
    let cfg = GenerationConfig { max_new_tokens: Some(new_tokens), ignore_eos: true, ..Default::default() };
    let mut row = json!({
        "impl": "anneal", "config": config, "dtype": dtype, "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
    });

    if batch > 1 || concurrent > 1 {
        let (mode, n) = if batch > 1 { ("batch", batch) } else { ("concurrent", concurrent) };
        let prompts: Vec<Vec<u32>> = (0..n).map(|r| row_prompt(r, prompt_tokens, vocab)).collect();
        let r = if batch > 1 {
            batch_runs(&gen, &prompts, &cfg, runs)?
        } else {
            concurrent_runs(&gen, &prompts, &cfg, runs)?
        };
        let peak = status_kib("VmHWM:") / 1024.0;
        let alone = gen.generate(prompt, &cfg)?.token_ids;
        let same = alone == r.row0;
        if let Some(at) = alone.iter().zip(&r.row0).position(|(a, b)| a != b) {
            eprintln!(
                "error: anneal {mode} {n} row 0 differs from its batch-1 tokens at new token {at}: {:?} vs {:?}",
                &r.row0[at..r.row0.len().min(at + 4)],
                &alone[at..alone.len().min(at + 4)]
            );
        } else if !same {
            eprintln!("error: anneal {mode} {n} row 0 has {} tokens, batch 1 {}", r.row0.len(), alone.len());
        }
        extend(
            &mut row,
            json!({
                "batch": n, "mode": mode, "ttft_ms": round(median(r.ttft_ms), 2),
                "decode_tokens_per_s": round(median(r.decode), 1), "tokens_per_s": round(median(r.e2e), 1),
                "total_s": round(median(r.total_s), 4), "peak_rss_mib": round(peak, 1),
                "rss_before_load_mib": round(rss_loaded_before, 1), "tokens": &r.row0[..r.row0.len().min(8)],
                "row0_matches_batch1": same,
            }),
        );
        println!("{row}");
        return Ok(());
    }

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
    extend(
        &mut row,
        json!({
            "ttft_ms": round(median(ttft), 2), "decode_tokens_per_s": round(median(decode), 1),
            "total_s": round(median(total), 4), "peak_rss_mib": round(status_kib("VmHWM:") / 1024.0, 1),
            "rss_before_load_mib": round(rss_loaded_before, 1), "tokens": &tokens[..tokens.len().min(8)],
        }),
    );
    println!("{row}");
    Ok(())
}

/// Adds `more`'s keys after `row`'s (the workspace's serde_json keeps insertion order).
fn extend(row: &mut Value, more: Value) {
    if let (Value::Object(row), Value::Object(more)) = (row, more) {
        row.extend(more);
    }
}
