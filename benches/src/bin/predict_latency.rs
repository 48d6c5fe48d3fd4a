//! anneal's Rust side of the single-row predict latency comparison with a FastAPI +
//! scikit-learn service (benches/continual/run.sh latency runs every side).
//!
//! Run:    cargo run --release -p anneal-benches --bin predict_latency -- --data DIR --home HOME --model logistic|mlp [--requests 2000] [--warmup 200] [--prepare]
//! Input:  DIR/train.jsonl and DIR/queries.jsonl from benches/continual/latency_data.py.
//! Output: one JSON line (the keys of benches/continual/latency_stats.py).
//!
//! When HOME has no model `bench-<model>`, it is trained first, through the engine, on
//! DIR/train.jsonl with the peer's hyperparameters (logistic: lbfgs, c 1; mlp: hidden
//! [100], adam, alpha 1e-4, 200 epochs at most, seed 0); `--prepare` stops there (the
//! Python and Node clients then serve the same model from HOME). Each request is one
//! `Predictor::predict` of one query row, which also logs the prediction in the catalog
//! (one transaction per call), as a served prediction is.

use std::time::Instant;

use anneal::{
    CancelToken, ClassifierConfig, ClassifierModel, ClassifierOptimizer, ErrorKind, Home, ImportOptions, Method,
    NoopSink, PredictorOptions, TrainSpec,
};
use serde_json::{json, Map, Value};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("predict_latency --data DIR --home HOME --model logistic|mlp [--hidden 100] [--requests N] [--warmup N] [--prepare]");
        return Ok(());
    }
    let data = std::path::PathBuf::from(arg(&args, "--data", ""));
    anyhow::ensure!(data.join("train.jsonl").is_file(), "--data DIR: the directory latency_data.py --out wrote");
    let home_dir = arg(&args, "--home", "");
    anyhow::ensure!(!home_dir.is_empty(), "--home HOME is required");
    let kind = arg(&args, "--model", "logistic");
    let hidden: usize = arg(&args, "--hidden", "100").parse()?;
    let requests: usize = arg(&args, "--requests", "2000").parse()?;
    let warmup: usize = arg(&args, "--warmup", "200").parse()?;
    let name = format!("bench-{kind}");

    let home = Home::open(&home_dir)?;
    match home.models().resolve(name.as_str()) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let ds = match home.datasets().get("bench-latency") {
                Ok(ds) => ds,
                Err(_) => home.datasets().import_file(
                    data.join("train.jsonl"),
                    &ImportOptions { name: Some("bench-latency".into()), ..Default::default() },
                )?,
            };
            let config = match kind.as_str() {
                "logistic" => ClassifierConfig {
                    model: ClassifierModel::Logistic,
                    optimizer: Some(ClassifierOptimizer::Lbfgs),
                    c: 1.0,
                    max_iter: 1000,
                    ..Default::default()
                },
                "mlp" => ClassifierConfig {
                    model: ClassifierModel::Mlp,
                    optimizer: Some(ClassifierOptimizer::Adam),
                    hidden: vec![hidden],
                    alpha: 1e-4,
                    max_iter: 200,
                    seed: Some(0),
                    ..Default::default()
                },
                other => anyhow::bail!("--model {other}: logistic or mlp"),
            };
            let spec = TrainSpec {
                dataset: ds.id,
                method: Method::Classifier(config),
                output_name: Some(name.clone()),
                ..Default::default()
            };
            let engine = home.training();
            let job = engine.create_job(&spec)?;
            engine.run(&job.id, &mut NoopSink, &CancelToken::new())?;
        }
        Err(e) => return Err(e.into()),
    }
    if args.iter().any(|a| a == "--prepare") {
        return Ok(());
    }

    let queries: Vec<Map<String, Value>> = std::fs::read_to_string(data.join("queries.jsonl"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!queries.is_empty(), "queries.jsonl is empty");
    let predictor = home.predictor(name.as_str(), &PredictorOptions::default())?;
    let mut times = Vec::with_capacity(requests);
    for i in 0..warmup + requests {
        let row = &queries[i % queries.len()];
        let t0 = Instant::now();
        let p = predictor.predict(row)?;
        let dt = t0.elapsed().as_secs_f64() * 1000.0;
        std::hint::black_box(p);
        if i >= warmup {
            times.push(dt);
        }
    }
    anyhow::ensure!(!times.is_empty(), "--requests must be at least 1");
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "impl": "anneal-rust",
            "model": kind,
            "requests": times.len(),
            "median_ms": quantile(&times, 0.5),
            "p95_ms": quantile(&times, 0.95),
            "mean_ms": times.iter().sum::<f64>() / times.len() as f64,
        })
    );
    Ok(())
}
