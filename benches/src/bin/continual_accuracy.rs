//! anneal's side of the classifier accuracy comparison with scikit-learn
//! (benches/continual/run.sh accuracy runs both and prints one table).
//!
//! Run:    cargo run --release -p anneal-benches --bin continual_accuracy -- --data DIR [--datasets iris,wine] [--seeds 0,1,2]
//! Input:  DIR/<name>-train.jsonl and DIR/<name>-test.jsonl, the stratified split that
//!         benches/continual/sklearn_accuracy.py writes (both sides train and test on the
//!         same rows).
//! Output: one JSON line per (dataset, model) with the keys of sklearn_accuracy.py.
//!
//! Training goes through the engine (a `classifier` job, like any user's), the metrics
//! through `Continual::evaluate` (accuracy, macro F1, log-loss), with the
//! hyperparameters of the scikit-learn peer:
//!   logistic : lbfgs, c 1, max_iter 1000, tol 1e-4
//!   mlp      : hidden [100], adam, alpha 1e-4, learning rate 1e-3, batch min(200, n),
//!              max_iter 200, tol 1e-4, patience 10, no validation split, seed each of
//!              `--seeds` (default 0; one line per seed)

use anneal::{
    CancelToken, ClassifierConfig, ClassifierModel, ClassifierOptimizer, Home, ImportOptions, Method, NoopSink,
    TrainSpec,
};
use serde_json::json;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("continual_accuracy --data DIR [--datasets iris,wine,breast_cancer,digits] [--max-iter-lr 1000] [--max-iter-mlp 200] [--hidden 100] [--seeds 0,1,2]");
        return Ok(());
    }
    let data = std::path::PathBuf::from(arg(&args, "--data", ""));
    anyhow::ensure!(data.is_dir(), "--data DIR: the directory sklearn_accuracy.py --out wrote");
    let names = arg(&args, "--datasets", "iris,wine,breast_cancer,digits");
    let max_iter_lr: usize = arg(&args, "--max-iter-lr", "1000").parse()?;
    let max_iter_mlp: usize = arg(&args, "--max-iter-mlp", "200").parse()?;
    let hidden: usize = arg(&args, "--hidden", "100").parse()?;
    let seeds: Vec<u64> = arg(&args, "--seeds", "0").split(',').map(str::parse).collect::<Result<_, _>>()?;

    let dir = tempfile::tempdir()?;
    let home = Home::open(dir.path().join("home"))?;
    let continual = home.continual();
    for name in names.split(',') {
        let import = |split: &str| {
            let path = data.join(format!("{name}-{split}.jsonl"));
            home.datasets()
                .import_file(&path, &ImportOptions { name: Some(format!("{name}-{split}")), ..Default::default() })
        };
        let train = import("train")?;
        let test = import("test")?;
        let mut configs = vec![(
            "logistic",
            0,
            ClassifierConfig {
                model: ClassifierModel::Logistic,
                optimizer: Some(ClassifierOptimizer::Lbfgs),
                c: 1.0,
                max_iter: max_iter_lr,
                tol: 1e-4,
                ..Default::default()
            },
        )];
        for &seed in &seeds {
            configs.push((
                "mlp",
                seed,
                ClassifierConfig {
                    model: ClassifierModel::Mlp,
                    optimizer: Some(ClassifierOptimizer::Adam),
                    hidden: vec![hidden],
                    alpha: 1e-4,
                    learning_rate: 1e-3,
                    batch_size: None,
                    max_iter: max_iter_mlp,
                    tol: 1e-4,
                    patience: 10,
                    validation_fraction: 0.0,
                    seed: Some(seed),
                    ..Default::default()
                },
            ));
        }
        for (kind, seed, config) in configs {
            let spec = TrainSpec {
                dataset: train.id.clone(),
                method: Method::Classifier(config),
                output_name: Some(format!("{name}-{kind}-{seed}")),
                ..Default::default()
            };
            let engine = home.training();
            let job = engine.create_job(&spec)?;
            let report = engine.run(&job.id, &mut NoopSink, &CancelToken::new())?;
            let ev = continual.evaluate(report.model.clone(), test.id.clone())?;
            let metric = |k: &str| ev.metrics.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "{}",
                json!({
                    "impl": "anneal",
                    "dataset": name,
                    "model": kind,
                    "seed": seed,
                    "train_rows": train.num_records,
                    "test_rows": ev.rows,
                    "accuracy": metric("accuracy"),
                    "f1_macro": metric("f1_macro"),
                    "log_loss": metric("log_loss"),
                    "ece": metric("ece"),
                    "iterations": report.steps,
                })
            );
        }
    }
    Ok(())
}
