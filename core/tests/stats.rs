//! Alias history (promote, rollback, "what was production at t"), `Home::stats` from
//! real rows, and `DatasetStore::generate`, on the public API with tiny `nano` models.
//! Run: cargo test -p anneal --test integration stats::
#![allow(clippy::unwrap_used)]

use anneal::tabular::synthetic;
use anneal::types::{ScenarioDrift, ScenarioDriftKind};
use anneal::{
    ActivityKind, AliasAction, CancelToken, DatasetFormat, GenerateDatasetOptions, GenerationConfig, GeneratorOptions,
    Home, ImportOptions, JobRecord, JobStatus, LoraConfig, Method, ModelRecord, NoopSink, PresetOptions,
    PromoteOptions, RollbackOptions, ScenarioOptions, StatsOptions, TrainSpec,
};
use serde_json::json;

fn home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    (dir, home)
}

fn import_toy(home: &Home) {
    let records = (0..16).map(|i| Ok(json!({"text": format!("the cat sat on the mat {i}")})));
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
}

/// Three versions of `m` (presets under one name).
fn three_versions(home: &Home) -> Vec<ModelRecord> {
    (0..3)
        .map(|seed| {
            let opts = PresetOptions { name: Some("m".into()), seed, ..Default::default() };
            home.models().create_preset("nano", &opts).unwrap()
        })
        .collect()
}

fn production(home: &Home) -> Option<u32> {
    home.models().resolve("m@production").ok().map(|r| r.version)
}

fn previous(home: &Home) -> Option<u32> {
    home.models().resolve("m@previous").ok().map(|r| r.version)
}

#[test]
fn promote_moves_production_previous_and_candidate_in_one_change_set() {
    let (_d, home) = home();
    let reg = home.models();
    let v = three_versions(&home);
    let why = |r: &str| PromoteOptions { reason: Some(r.into()) };
    let first = reg.promote("m@1", &why("first")).unwrap();
    assert_eq!((first.production.clone(), first.previous.clone()), (v[0].id.clone(), None));
    assert_eq!(first.changes.len(), 1);
    reg.set_alias("m@2", "candidate").unwrap();
    let second = reg.promote("m@2", &why("beats v1")).unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(2), Some(1)));
    assert!(reg.resolve("m@candidate").is_err(), "candidate cleared when it pointed at the promoted model");
    // previous <- v1, production <- v2, candidate removed: three rows, one reason.
    let what: Vec<(&str, Option<u32>, Option<u32>)> =
        second.changes.iter().map(|c| (c.alias.as_str(), c.version, c.previous_version)).collect();
    assert_eq!(what, [("previous", Some(1), None), ("production", Some(2), Some(1)), ("candidate", None, Some(2))]);
    assert!(second.changes.iter().all(|c| c.action == AliasAction::Promote && c.reason.as_deref() == Some("beats v1")));
    // Promoting production again changes nothing.
    assert!(reg.promote("m@2", &PromoteOptions::default()).unwrap().changes.is_empty());
    // A candidate that points elsewhere stays.
    reg.set_alias("m@1", "candidate").unwrap();
    reg.promote("m@3", &PromoteOptions::default()).unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(3), Some(2)));
    assert_eq!(reg.resolve("m@candidate").unwrap().version, 1);
    // History: newest first, every change there, per alias on request.
    let h = reg.alias_history("m", None).unwrap();
    assert!(h.windows(2).all(|w| w[0].id > w[1].id));
    let prod: Vec<Option<u32>> =
        reg.alias_history("m", Some("production")).unwrap().iter().map(|c| c.version).collect();
    assert_eq!(prod, [Some(3), Some(2), Some(1)]);
    assert_eq!(h.len(), 1 + 1 + 3 + 1 + 2);
    let e = reg.promote("m@9", &PromoteOptions::default()).unwrap_err();
    assert_eq!(e.code(), "not_found");
    let long = PromoteOptions { reason: Some("x".repeat(anneal::types::MAX_REASON_BYTES + 1)) };
    assert_eq!(reg.promote("m@1", &long).unwrap_err().code(), "invalid_config");
    // A refused promotion wrote nothing.
    assert_eq!(reg.alias_history("m", None).unwrap().len(), h.len());
}

#[test]
fn rollback_walks_back_through_promotions_then_refuses() {
    let (_d, home) = home();
    let reg = home.models();
    three_versions(&home);
    let back = |r: &str| reg.rollback("m", &RollbackOptions { reason: Some(r.into()) });
    // Nothing to roll back to: a typed error, nothing written.
    assert_eq!(back("none").unwrap_err().code(), "not_found");
    for v in 1..=3 {
        reg.promote(format!("m@{v}").as_str(), &PromoteOptions::default()).unwrap();
    }
    assert_eq!((production(&home), previous(&home)), (Some(3), Some(2)));
    let m = back("v3 is worse").unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(2), Some(1)));
    assert_eq!(m.changes.len(), 2);
    assert!(m.changes.iter().all(|c| c.action == AliasAction::Rollback && c.reason.as_deref() == Some("v3 is worse")));
    back("again").unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(1), None), "v1 replaced nothing: previous removed");
    assert_eq!(back("no more").unwrap_err().code(), "not_found");
    assert_eq!(production(&home), Some(1));
    // Promote v3 over v1, then v2 over v3: a rollback returns to v3, whose previous is
    // what v3 replaced when it was last promoted (v1), not the v2 rolled back from.
    reg.promote("m@3", &PromoteOptions::default()).unwrap();
    reg.promote("m@2", &PromoteOptions::default()).unwrap();
    back("").unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(3), Some(1)));
    // A deleted model in the chain is skipped: delete v1, roll back to... v3's
    // predecessor chain ends, so previous is removed.
    reg.promote("m@2", &PromoteOptions::default()).unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(2), Some(3)));
    reg.delete("m@1", false).unwrap();
    back("").unwrap();
    assert_eq!((production(&home), previous(&home)), (Some(3), None));
    // The delete is in the history: v1 lost no alias (it had none), v2 lost none either.
    let deletes = reg.alias_history("m", None).unwrap().into_iter().filter(|c| c.action == AliasAction::Delete);
    assert_eq!(deletes.count(), 0);
}

#[test]
fn alias_at_answers_what_pointed_where_at_a_time_and_deletes_are_recorded() {
    let (_d, home) = home();
    let reg = home.models();
    let v = three_versions(&home);
    let at = |c: &anneal::AliasChange| c.at.clone();
    assert!(reg.alias_at("m", "production", "2000-01-01T00:00:00Z").unwrap().is_none());
    let p1 = reg.promote("m@1", &PromoteOptions::default()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let p2 = reg.promote("m@2", &PromoteOptions::default()).unwrap();
    let t1 = at(&p1.changes[0]);
    let t2 = at(p2.changes.last().unwrap());
    assert!(t1 < t2);
    let was = |t: &str| reg.alias_at("m", "production", t).unwrap().map(|c| c.model_id.unwrap());
    assert_eq!(was(&t1), Some(v[0].id.clone()));
    assert_eq!(was(&t2), Some(v[1].id.clone()));
    assert_eq!(was("2999-01-01T00:00:00Z"), Some(v[1].id.clone()));
    // Another spelling of the same instant.
    let local = t1.replace('Z', "+00:00");
    assert_eq!(was(&local), Some(v[0].id.clone()));
    assert_eq!(reg.alias_at("m", "production", "noon").unwrap_err().code(), "invalid_config");
    // set_alias and remove_alias are recorded too; a removed alias was not set then.
    reg.set_alias("m@3", "canary").unwrap();
    reg.set_alias("m@3", "canary").unwrap(); // unchanged: no row
    reg.remove_alias("m", "canary").unwrap();
    let h = reg.alias_history("m", Some("canary")).unwrap();
    let actions: Vec<AliasAction> = h.iter().map(|c| c.action).collect();
    assert_eq!(actions, [AliasAction::Remove, AliasAction::Set]);
    assert_eq!((h[0].model_id.clone(), h[0].previous_id.clone()), (None, Some(v[2].id.clone())));
    assert!(reg.alias_at("m", "canary", "2999-01-01T00:00:00Z").unwrap().is_none());
    // Deleting production (forced past nothing: no dependants) records the alias going,
    // and the history keeps the version of the deleted model. (Times are to the
    // millisecond: the delete must come after t2 for `alias_at(t2)` to tell them apart.)
    std::thread::sleep(std::time::Duration::from_millis(5));
    reg.delete("m@2", false).unwrap();
    let last = &reg.alias_history("m", Some("production")).unwrap()[0];
    assert_eq!((last.action, last.model_id.clone(), last.previous_version), (AliasAction::Delete, None, Some(2)));
    assert!(reg.alias_at("m", "production", "2999-01-01T00:00:00Z").unwrap().is_none());
    assert_eq!(was(&t2), Some(v[1].id.clone()), "history outlives the model");
    assert_eq!(reg.alias_at("m", "production", &t2).unwrap().unwrap().version, Some(2));
}

/// Sets a job's row as a runner would have left it (heartbeat, pid).
fn fake_runner(home: &Home, job: &JobRecord, heartbeat_ms: i64, pid: u32) {
    let db = rusqlite::Connection::open(home.root().join("anneal.db")).unwrap();
    db.execute(
        "UPDATE jobs SET status = 'running', heartbeat_at = ?2, runner_pid = ?3, started_at = created_at WHERE id = ?1",
        rusqlite::params![job.id.0, heartbeat_ms, pid],
    )
    .unwrap();
}

fn secs(job: &JobRecord) -> f64 {
    let t = |s: &Option<String>| humantime_secs(s.as_deref().unwrap());
    ((t(&job.finished_at) - t(&job.started_at)) * 1000.0).round() / 1000.0
}

/// Seconds since the epoch of an RFC 3339 UTC time with milliseconds.
fn humantime_secs(s: &str) -> f64 {
    // 2026-12-01T04:00:54.123Z
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + ms.parse::<f64>().unwrap() / 1000.0
}

#[test]
fn stats_are_queries_on_real_rows() {
    let (_d, home) = home();
    let (ds, reg, engine) = (home.datasets(), home.models(), home.training());
    let empty = home.stats(&StatsOptions::default()).unwrap();
    assert_eq!((empty.jobs.total, empty.recent.len(), empty.aliases.changes), (0, 0, 0));
    assert_eq!(empty.jobs.duration.count, 0);
    assert!(empty.jobs.duration.mean_s.is_none());

    // Datasets: text, completion, tabular (a synthetic scenario).
    import_toy(&home);
    let qa = (0..4).map(|i| Ok(json!({"prompt": format!("{i} plus one is"), "completion": format!(" {}", i + 1)})));
    ds.import_records(qa, &ImportOptions { name: Some("qa".into()), ..Default::default() }).unwrap();
    let scenario = synthetic::generate(&ScenarioOptions { rows: 50, ..Default::default() }).unwrap();
    let tab = ds
        .import_records(scenario.records().map(Ok), &ImportOptions { name: Some("tab".into()), ..Default::default() })
        .unwrap();
    assert_eq!((tab.format, tab.num_records), (DatasetFormat::Tabular, 50));

    // Models: two from the nano preset, one from tiny (under another name).
    let nano = reg.create_preset("nano", &PresetOptions::default()).unwrap();
    reg.create_preset("nano", &PresetOptions { name: Some("nano-b".into()), seed: 1, ..Default::default() }).unwrap();

    // Jobs: a full and a LoRA run that complete (output `tuned` v1 and v2), one
    // cancelled while pending, one whose runner died, one running in a live process.
    let spec = |method: Method| TrainSpec {
        base: nano.id.clone().into(),
        dataset: "toy".into(),
        method,
        batch_size: 4,
        seq_len: 16,
        max_steps: Some(2),
        output_name: Some("tuned".into()),
        ..Default::default()
    };
    let lora = || Method::Lora(LoraConfig { r: 2, ..Default::default() });
    let mut done = Vec::new();
    for m in [Method::Full, lora()] {
        let job = engine.create_job(&spec(m)).unwrap();
        engine.run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
        done.push(engine.job(&job.id).unwrap());
    }
    let cancelled = engine.create_job(&spec(lora())).unwrap();
    engine.cancel(&cancelled.id).unwrap();
    let dead = engine.create_job(&spec(lora())).unwrap();
    fake_runner(&home, &dead, 1_000, std::process::id());
    let live = engine.create_job(&spec(Method::Full)).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    fake_runner(&home, &live, now_ms + 600_000, std::process::id());
    assert_eq!(engine.job(&dead.id).unwrap().status, JobStatus::Interrupted);
    assert_eq!(engine.job(&live.id).unwrap().status, JobStatus::Running);

    // Generations: 1 generate + a batch of 3 + 1 score on tuned@1; generate() of 3
    // prompts in batches of 2 on nano (2 batch calls, a completion dataset).
    let tuned1 = reg.resolve("tuned@1").unwrap();
    let gen = home.generator(&tuned1.id, &GeneratorOptions::default()).unwrap();
    let cfg = GenerationConfig { max_new_tokens: Some(3), ..Default::default() };
    gen.generate("hello", &cfg).unwrap();
    gen.generate_batch(&["a", "b", "c"], &cfg).unwrap();
    gen.score(&["the cat"]).unwrap();
    let made = ds
        .generate(
            &nano.id,
            &["one", "two", "three"],
            &GenerateDatasetOptions { generation: cfg.clone(), batch_size: 2, ..Default::default() },
        )
        .unwrap();
    assert_eq!(made.format, DatasetFormat::Completion);

    // Aliases: promote tuned@1, then tuned@2, roll back.
    reg.promote("tuned@1", &PromoteOptions::default()).unwrap();
    reg.promote("tuned@2", &PromoteOptions::default()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5)); // `since` below splits here
    let rolled = reg.rollback("tuned", &RollbackOptions::default()).unwrap();

    let s = home.stats(&StatsOptions { recent: 10_000, ..Default::default() }).unwrap();
    let j = &s.jobs;
    assert_eq!(
        (j.total, j.completed, j.cancelled, j.interrupted, j.running, j.pending, j.failed),
        (5, 2, 1, 1, 1, 0, 0)
    );
    let mut d: Vec<f64> = done.iter().map(secs).collect();
    d.sort_by(f64::total_cmp);
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 2e-3;
    assert_eq!(j.duration.count, 2);
    assert!(close(j.duration.mean_s, (d[0] + d[1]) / 2.0), "{:?} vs {d:?}", j.duration);
    // Nearest rank: p50 of two is the first, p95 the second.
    assert!(close(j.duration.p50_s, d[0]) && close(j.duration.p95_s, d[1]), "{:?} vs {d:?}", j.duration);
    assert!(close(j.duration.min_s, d[0]) && close(j.duration.max_s, d[1]));

    // Presets: nano made 2 models; all 5 jobs train on a nano model.
    let presets: Vec<(&str, u64, u64)> = s.presets.iter().map(|p| (p.preset.as_str(), p.models, p.jobs)).collect();
    assert_eq!(presets, [("nano", 2, 5)]);
    let methods: Vec<(&str, u64, u64)> = s.methods.iter().map(|m| (m.method.as_str(), m.jobs, m.completed)).collect();
    assert_eq!(methods, [("lora", 3, 1), ("full", 2, 1)]);

    type Row = (Option<String>, Option<u32>, u64, u64, u64, u64);
    let g: Vec<Row> =
        s.generations.iter().map(|g| (g.name.clone(), g.version, g.calls, g.texts, g.images, g.scores)).collect();
    assert_eq!(
        g,
        [(Some("tuned".into()), Some(1), 3, 4, 0, 1), (Some("nano".into()), Some(1), 2, 3, 0, 0)],
        "{:?}",
        s.generations
    );

    let kinds: Vec<(&str, u64)> = s.models_by_kind.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(kinds, [("base", 2), ("full", 1), ("lora", 1)]);
    let formats: Vec<(&str, u64)> = s.datasets_by_format.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(formats, [("completion", 2), ("tabular", 1), ("text", 1)]);

    // promote 1 (1 row), promote 2 (previous + production), rollback (production +
    // previous removed): 5 rows, 2 promotions, 1 rollback.
    assert_eq!((s.aliases.promotions, s.aliases.rollbacks, s.aliases.changes), (2, 1, 5));
    let prod = &s.monitoring.production;
    assert_eq!(prod.len(), 1);
    assert_eq!((prod[0].name.as_str(), prod[0].version), ("tuned", 1));
    assert_eq!(prod[0].since.as_deref(), Some(rolled.changes[0].at.as_str()));
    assert!(s.monitoring.predictions.is_empty() && s.monitoring.retrains == 0);

    // Activity: 4 datasets + 4 models + 5 jobs created + 3 jobs ended + 5 generation
    // calls + 5 alias changes, newest first; the rollback is the newest.
    assert_eq!(s.recent.len(), 4 + 4 + 5 + 3 + 5 + 5);
    assert!(s.recent.windows(2).all(|w| w[0].at >= w[1].at));
    let count = |k: ActivityKind| s.recent.iter().filter(|a| a.kind == k).count();
    assert_eq!(
        [
            count(ActivityKind::DatasetCreated),
            count(ActivityKind::ModelRegistered),
            count(ActivityKind::JobCreated),
            count(ActivityKind::JobFinished),
            count(ActivityKind::Generation),
            count(ActivityKind::AliasChanged)
        ],
        [4, 4, 5, 3, 5, 5]
    );
    let created = s.recent.iter().filter(|a| a.kind == ActivityKind::JobCreated);
    assert!(created.clone().all(|a| a.name == "nano@1"), "{:?}", created.collect::<Vec<_>>());
    let newest = &s.recent[0];
    assert_eq!(
        (newest.kind, newest.name.as_str(), newest.detail.as_deref()),
        (ActivityKind::AliasChanged, "tuned@previous", Some("rollback"))
    );
    let finished: Vec<&str> =
        s.recent.iter().filter(|a| a.kind == ActivityKind::JobFinished).filter_map(|a| a.detail.as_deref()).collect();
    assert_eq!(finished.iter().filter(|d| **d == "completed").count(), 2);
    let top3 = home.stats(&StatsOptions { recent: 3, ..Default::default() }).unwrap();
    assert_eq!(top3.recent, s.recent[..3]);

    // since: only what happened from the rollback on.
    let since = rolled.changes[0].at.clone();
    let later = home.stats(&StatsOptions { since: Some(since.clone()), recent: 100 }).unwrap();
    assert_eq!(later.since.as_deref(), Some(since.as_str()));
    assert_eq!((later.jobs.total, later.jobs.duration.count), (0, 0));
    assert_eq!((later.aliases.promotions, later.aliases.rollbacks, later.aliases.changes), (0, 1, 2));
    assert!(later.generations.is_empty() && later.methods.is_empty());
    assert_eq!(later.presets[0].jobs, 0, "jobs are counted since; models are inventory");
    assert_eq!(later.recent.len(), 2);
    assert_eq!(later.models_by_kind, s.models_by_kind);

    // Bad options name the field.
    let bad = home.stats(&StatsOptions { since: Some("last week".into()), ..Default::default() }).unwrap_err();
    assert!(matches!(&bad, anneal::Error::InvalidConfig { field, .. } if field == "since"), "{bad}");
    let bad = home.stats(&StatsOptions { recent: 10_001, ..Default::default() }).unwrap_err();
    assert!(matches!(&bad, anneal::Error::InvalidConfig { field, .. } if field == "recent"), "{bad}");
    let e = anneal::options_from_json::<StatsOptions>(json!({"limit": 3})).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
}

#[test]
fn generate_writes_a_completion_dataset_with_lineage() {
    let (_d, home) = home();
    let nano = home.models().create_preset("nano", &PresetOptions::default()).unwrap();
    let ds = home.datasets();
    let prompts = ["The cat", "A dog", "Once upon", "Hello"];
    let cfg = GenerationConfig { max_new_tokens: Some(4), temperature: Some(0.8), ..Default::default() };
    let opts = GenerateDatasetOptions {
        name: Some("gen".into()),
        generation: cfg.clone(),
        batch_size: 3,
        ..Default::default()
    };
    let rec = ds.generate("nano", &prompts, &opts).unwrap();
    assert_eq!((rec.name.as_str(), rec.format, rec.num_records), ("gen", DatasetFormat::Completion, 4));
    assert_eq!(rec.source, format!("generate:{}", nano.id));
    let rows = ds.preview("gen", 10).unwrap();
    let got: Vec<&str> = rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert_eq!(got, prompts);
    let lineage = ds.lineage("gen").unwrap().unwrap();
    assert_eq!((lineage.model.clone(), lineage.model_ref.as_str(), lineage.prompts), (nano.id.clone(), "nano@1", 4));
    let seed = lineage.generation.seed.expect("the drawn seed is recorded");
    assert_eq!(lineage.generation, GenerationConfig { seed: Some(seed), ..cfg });
    // The lineage reproduces the records: the generator with the recorded settings
    // gives the same completions.
    let gen = home.generator(&nano.id, &GeneratorOptions::default()).unwrap();
    let again = gen.generate_batch(&prompts, &lineage.generation).unwrap();
    let completions: Vec<&str> = rows.iter().map(|r| r["completion"].as_str().unwrap()).collect();
    let regenerated: Vec<&str> = again.iter().map(|g| g.text.as_str()).collect();
    assert_eq!(completions, regenerated);
    // Imported datasets have no lineage.
    import_toy(&home);
    assert!(ds.lineage("toy").unwrap().is_none());
    // Bad input names the field and stores nothing.
    let n = ds.list().unwrap().len();
    let none: [&str; 0] = [];
    for (prompts, opts, field) in [
        (&none[..], GenerateDatasetOptions::default(), "prompts"),
        (&["ok", " "][..], GenerateDatasetOptions::default(), "prompts[1]"),
        (&["ok"][..], GenerateDatasetOptions { batch_size: 0, ..Default::default() }, "batch_size"),
        (&["ok"][..], GenerateDatasetOptions { name: Some("/x".into()), ..Default::default() }, "name"),
    ] {
        match ds.generate("nano", prompts, &opts).unwrap_err() {
            anneal::Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            e => panic!("{field}: {e}"),
        }
    }
    assert_eq!(ds.generate("nope", &["x"], &GenerateDatasetOptions::default()).unwrap_err().code(), "not_found");
    // A taken name is refused after generating, and nothing is stored.
    let taken = GenerateDatasetOptions { name: Some("toy".into()), ..Default::default() };
    assert_eq!(ds.generate("nano", &["x"], &taken).unwrap_err().code(), "already_exists");
    assert_eq!(ds.list().unwrap().len(), n);
}

#[test]
fn scenario_rows_import_as_a_tabular_dataset_and_keep_their_drift() {
    let (_d, home) = home();
    let opts = ScenarioOptions {
        rows: 400,
        classes: 3,
        drift: vec![ScenarioDrift {
            kind: ScenarioDriftKind::Covariate,
            start: 200,
            magnitude: 3.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    let data = synthetic::generate(&opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.jsonl");
    data.write_jsonl(&path).unwrap();
    let rec = home.datasets().import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!((rec.format, rec.num_records), (DatasetFormat::Tabular, 400));
    let rows = home.datasets().preview(&rec.id, 400).unwrap();
    let x0 = |r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        rows[r].iter().map(|v| v["features"]["x0"].as_f64().unwrap()).sum::<f64>() / n
    };
    let sd = synthetic::Scenario::new(&opts).unwrap().sds[0];
    assert!(x0(200..400) - x0(0..200) > 2.0 * sd, "the stored rows keep the shift");
    let labels: Vec<u64> = rows.iter().map(|v| v["label"].as_u64().unwrap()).collect();
    assert_eq!(labels, data.labels.iter().map(|&y| u64::from(y)).collect::<Vec<_>>());
}
