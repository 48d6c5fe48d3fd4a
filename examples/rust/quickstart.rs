//! anneal quickstart: train a model from scratch, then a LoRA adapter on a second task,
//! and measure both on held-out examples before and after. Offline; no downloads.
//!
//! Run:    cargo run --release --example quickstart [-- <home dir>] [--smoke]   (default ./anneal-home)
//!         (`--smoke`: 10 steps per job, 16 held-out words; what CI runs)
//! Output: progress bars (plain lines without a TTY), then for each task the accuracy
//!         on 100 held-out problems before and after training, sample generations, and
//!         the registry with the trained models and their lineage.
//! Python: examples/python/quickstart.py   Node: examples/node/quickstart.mjs
//!
//! 1. Imports the bundled `uppercase` (2,000 made-up words: `emubc>` -> `EMUBC`) and
//!    `double` (1,200 other words: `lmeg*` -> `LLMMEEGG`) datasets and holds out 10% of
//!    each (deterministic split); held-out words never appear in training.
//! 2. Creates a base model from the `nano` preset (Llama family, ~0.1M parameters,
//!    byte-level tokenizer, random weights from seed 0) and fully trains it on uppercase.
//! 3. Trains a LoRA adapter (r 16, all linear layers) on `double` on top of it.
//! 4. Greedy-decodes 100 held-out words with each model (one batch through a
//!    `Generator`) and counts exact answers; then streams an answer from the adapter,
//!    switches it on and off per request on one loaded base, and reads the usage
//!    statistics the catalog recorded.
//!
//! Measured on the 2-core CPU (release): ~25 s in all; uppercase 0% -> 100%, double
//! 0% -> ~80%.
//!
//! Re-run: safe on the same home. The datasets are reused (`OnDuplicate::Reuse`), the
//! preset and both trainings too (`IfExists::Reuse`): a second run trains nothing. The
//! default home, ./anneal-home, is git-ignored.

use std::time::{Duration, Instant};

use std::io::Write;

use anneal::{
    CancelToken, DatasetRecord, GenerationConfig, GeneratorOptions, Home, IfExists, ImportOptions, LoraConfig, Method,
    ModelFilter, ModelRecord, OnDuplicate, PresetOptions, Schedule, TerminalSink, Throttle, TrainSpec,
};
use anyhow::Result;

const UPPERCASE: &str = include_str!("../data/uppercase.jsonl");
const DOUBLE: &str = include_str!("../data/double.jsonl");
/// Held-out problems scored per task.
/// `--smoke` (CI): 10 optimiser steps per job and 16 held-out problems, the whole flow
/// in seconds; it shows that everything runs, not that the model learns.
fn smoke() -> bool {
    std::env::args().any(|a| a == "--smoke")
}

/// Held-out problems scored per model.
fn eval_n() -> usize {
    if smoke() {
        16
    } else {
        100
    }
}

fn import(home: &Home, name: &str, jsonl: &str) -> Result<(DatasetRecord, DatasetRecord)> {
    let datasets = home.datasets();
    let opts = ImportOptions { name: Some(name.into()), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    // The same content under the same name: the stored dataset is returned.
    let ds = datasets.import_records(
        jsonl.lines().map(|l| serde_json::from_str(l).map_err(|e| anneal::Error::Internal(e.to_string()))),
        &opts,
    )?;
    let split = datasets.split(&ds.id, 0.1, 0, None)?;
    println!(
        "dataset {name}: {} records -> {} train / {} held out",
        ds.num_records, split.train.num_records, split.val.num_records
    );
    Ok((split.train, split.val))
}

/// Exact-match accuracy of greedy answers on the first `eval_n()` held-out problems,
/// generated in one batch by a `Generator` (an adapter is merged into its base at load).
fn accuracy(home: &Home, model: &ModelRecord, val: &DatasetRecord) -> Result<(f64, Vec<String>)> {
    let gen = home.generator(&model.id, &GeneratorOptions::default())?;
    let records = home.datasets().preview(&val.id, eval_n())?;
    let prompts: Vec<&str> = records.iter().map(|r| r["prompt"].as_str().unwrap_or_default()).collect();
    let cfg = GenerationConfig { max_new_tokens: Some(16), ..Default::default() }; // greedy, stops at EOS
    let outs = gen.generate_batch(&prompts, &cfg)?;
    let (mut right, mut samples) = (0, Vec::new());
    for ((r, prompt), out) in records.iter().zip(&prompts).zip(&outs) {
        let want = r["completion"].as_str().unwrap_or_default();
        if out.text.trim() == want {
            right += 1;
        }
        if samples.len() < 4 {
            samples.push(format!("{prompt} {:<12} (want {want})", out.text.trim()));
        }
    }
    Ok((right as f64 / records.len() as f64, samples))
}

/// The prompt of the first held-out `double` problem.
fn sub_val_word(home: &Home, val: &DatasetRecord) -> Result<String> {
    let r = home.datasets().preview(&val.id, 1)?;
    Ok(r.first().and_then(|r| r["prompt"].as_str()).unwrap_or("abc*").to_string())
}

fn train(home: &Home, spec: TrainSpec) -> Result<ModelRecord> {
    let engine = home.training();
    let mut sink = Throttle::new(TerminalSink::new(), Duration::from_millis(200));
    // `if_exists: Reuse`: a job with this spec that ran before gives its report at once.
    let spec = TrainSpec { if_exists: IfExists::Reuse, ..spec };
    let report = engine.train(&spec, &mut sink, &CancelToken::new())?;
    println!(
        "job {}: {} steps, {} tokens in {:.1}s, final loss {:.3}{}",
        report.job_id,
        report.steps,
        report.tokens,
        report.duration_s,
        report.final_loss,
        report.eval_loss.map(|l| format!(", eval loss {l:.3}")).unwrap_or_default()
    );
    Ok(home.models().get(&report.model)?)
}

fn main() -> Result<()> {
    // First thing, before any thread: candle's elementwise ops stay on the calling thread.
    anneal::keep_candle_ops_on_calling_thread();
    let started = Instant::now();
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "anneal-home".into());
    let max_steps = smoke().then_some(10);
    let home = Home::open(&dir)?;
    let models = home.models();
    println!("home: {}", home.root().display());

    let (add_train, add_val) = import(&home, "uppercase", UPPERCASE)?;
    let (sub_train, sub_val) = import(&home, "double", DOUBLE)?;

    // A from-scratch base model: the nano preset, random weights from seed 0.
    let base = models.create_preset(
        "nano",
        &PresetOptions {
            name: Some("quickstart-nano".into()),
            seed: 0,
            if_exists: IfExists::Reuse, // the same preset and seed: the same model on a re-run
            ..Default::default()
        },
    )?;
    let (before, _) = accuracy(&home, &base, &add_val)?;
    println!(
        "base {} ({} parameters): uppercase accuracy {:.0}% before training",
        base.reference(),
        base.params,
        before * 100.0
    );

    // Task 1: full training on uppercase.
    let upper = train(
        &home,
        TrainSpec {
            base: base.id.clone().into(),
            dataset: add_train.id.clone(),
            eval_dataset: Some(add_val.id.clone()),
            method: Method::Full,
            epochs: 10,
            batch_size: 32,
            seq_len: 16,
            learning_rate: 2e-3,
            warmup_steps: 20,
            schedule: Schedule::Cosine,
            weight_decay: 0.01,
            output_name: Some("quickstart-upper".into()),
            max_steps,
            ..Default::default()
        },
    )?;
    let (after, samples) = accuracy(&home, &upper, &add_val)?;
    println!("uppercase accuracy on {} held-out words: {:.0}% -> {:.0}%", eval_n(), before * 100.0, after * 100.0);
    for s in samples {
        println!("  {s}");
    }

    // Task 2: a LoRA adapter on the trained model teaches it to double each letter.
    let (sub_before, _) = accuracy(&home, &upper, &sub_val)?;
    let adapter = train(
        &home,
        TrainSpec {
            base: upper.id.clone().into(),
            dataset: sub_train.id.clone(),
            method: Method::Lora(LoraConfig {
                r: 16,
                alpha: 32.0,
                target_modules: vec!["all-linear".into()],
                ..Default::default()
            }),
            epochs: 8,
            batch_size: 32,
            seq_len: 24,
            learning_rate: 5e-3,
            warmup_steps: 10,
            schedule: Schedule::Cosine,
            output_name: Some("quickstart-double-lora".into()),
            max_steps,
            ..Default::default()
        },
    )?;
    let (sub_after, samples) = accuracy(&home, &adapter, &sub_val)?;
    println!(
        "double-letter accuracy on {} held-out words: {:.0}% (trained base) -> {:.0}% (with LoRA adapter, {} trainable parameters)",
        eval_n(),
        sub_before * 100.0,
        sub_after * 100.0,
        adapter.params
    );
    for s in samples {
        println!("  {s}");
    }

    // Stream from the adapter, kept unmerged so the same loaded base can also answer
    // without it: one base in memory, adapters switched per request.
    let gen = home.generator(&adapter.id, &GeneratorOptions { merge_adapter: false, ..Default::default() })?;
    let word = sub_val_word(&home, &sub_val)?;
    print!("\nstreaming `{word}` with the adapter: ");
    let cfg = GenerationConfig { max_new_tokens: Some(16), ..Default::default() };
    let mut stream = gen.stream(word.as_str(), &cfg)?;
    for piece in stream.by_ref() {
        print!("{}", piece?.text);
        std::io::stdout().flush()?;
    }
    let g = stream.generation().ok_or_else(|| anyhow::anyhow!("stream ended without a result"))?;
    println!(
        "  ({} tokens, {:?}, first token after {:.1} ms, {:.0} tokens/s)",
        g.generated_tokens, g.finish_reason, g.timings.ttft_ms, g.timings.decode_tokens_per_s
    );
    let base_cfg = GenerationConfig { adapter: None, ..cfg };
    let upper_gen = home.generator(&upper.id, &GeneratorOptions { merge_adapter: false, ..Default::default() })?;
    upper_gen.add_adapter(&adapter.id)?;
    let plain = upper_gen.generate(word.as_str(), &base_cfg)?;
    let with =
        upper_gen.generate(word.as_str(), &GenerationConfig { adapter: Some(adapter.reference()), ..base_cfg })?;
    println!("same base, per request: without adapter `{}`, with `{}`", plain.text.trim(), with.text.trim());
    let u = models.usage(&adapter.id)?;
    println!(
        "usage of {} (from the catalog): {} calls, {} prompts, {} tokens generated",
        adapter.reference(),
        u.calls,
        u.generations,
        u.generated_tokens
    );

    println!("\n{:<24} {:>3} {:<5} {:>8}  lineage", "model", "ver", "kind", "params");
    for m in models.list(&ModelFilter::default())? {
        let lineage = match (&m.lineage.job, &m.lineage.preset) {
            (Some(job), _) => {
                format!("job {job} on dataset {}", m.lineage.dataset.as_ref().map_or("?", |d| d.as_str()))
            }
            (_, Some(p)) => format!("preset {p}"),
            _ => m.source.clone(),
        };
        println!("{:<24} {:>3} {:<5} {:>8}  {lineage}", m.name, m.version, m.kind.as_str(), m.params);
    }
    println!("done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
