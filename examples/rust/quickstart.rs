//! anneal quickstart: a home directory, a bundled dataset, a from-scratch model.
//!
//! Run:    cargo run --release --example quickstart [-- <home dir>]   (default ./anneal-home)
//! Output: import progress, dataset stats and split, the created preset model, and the
//!         model registry as a table. Runs offline in a few seconds.
//! Python: examples/python/quickstart.py   Node: examples/node/quickstart.mjs
//!
//! This is the foundation release: training (TrainingEngine) and generation (Generator)
//! are not built yet, so the quickstart stops at the registry. It will train this model
//! and a LoRA adapter once they land.

use anneal::{CancelToken, Home, ImportOptions, ModelFilter, OnDuplicate, PresetOptions, TerminalSink, Throttle};
use anyhow::Result;
use std::time::Duration;

/// 2,000 addition problems (`{"prompt": "12+7=", "completion": "19"}`), bundled.
const ADDITION: &str = include_str!("../data/addition.jsonl");

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "anneal-home".into());
    let home = Home::open(&dir)?;
    println!("home: {} (catalog schema v{})", home.root().display(), home.schema_version()?);

    // 1. Import the bundled dataset (records from memory; files work the same way).
    let records = ADDITION.lines().map(|l| serde_json::from_str(l).map_err(|e| anneal::Error::Internal(e.to_string())));
    let opts = ImportOptions { name: Some("addition".into()), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    let datasets = home.datasets();
    let ds = match datasets.get("addition") {
        Ok(existing) => existing,
        Err(_) => datasets.import_records_with(
            records,
            &opts,
            &mut Throttle::new(TerminalSink::new(), Duration::from_millis(100)),
            &CancelToken::new(),
        )?,
    };
    let stats = datasets.stats(&ds.id)?;
    println!(
        "dataset {} ({}): {} {} records, {} bytes, sha256 {}..",
        ds.name,
        ds.id,
        ds.num_records,
        ds.format.as_str(),
        stats.bytes,
        &ds.sha256[..12]
    );
    for (field, f) in &stats.fields {
        println!("  {field:<10} chars min {} max {} mean {:.1}", f.min_chars, f.max_chars, f.mean_chars);
    }
    let split = datasets.split(&ds.id, 0.1, 42, None)?;
    println!("split (seed 42): {} train / {} val", split.train.num_records, split.val.num_records);
    for r in datasets.preview(&split.val.id, 3)? {
        println!("  val example: {r}");
    }

    // 2. A from-scratch base model: a built-in preset, random weights from a seed.
    let models = home.models();
    let base = match models.resolve("quickstart-base") {
        Ok(m) => m,
        Err(_) => models.create_preset(
            "micro",
            &PresetOptions { name: Some("quickstart-base".into()), seed: 42, ..Default::default() },
        )?,
    };
    models.set_alias(&base.id, "production")?;
    println!("model {} = {} ({} parameters, {} bytes)", base.reference(), base.id, base.params, base.bytes);

    // 3. The registry.
    println!("\n{:<22} {:>3} {:<5} {:<7} {:>9} {:<12} aliases", "name", "ver", "kind", "family", "params", "source");
    for m in models.list(&ModelFilter::default())? {
        println!(
            "{:<22} {:>3} {:<5} {:<7} {:>9} {:<12} {}",
            m.name,
            m.version,
            m.kind.as_str(),
            m.family,
            m.params,
            m.source,
            m.aliases.join(",")
        );
    }
    println!("\n`quickstart-base@production` resolves to {}", models.resolve("quickstart-base@production")?.id);
    println!("Training and generation are not built yet; this run stops at the registry.");
    Ok(())
}
