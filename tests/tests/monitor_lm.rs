//! Monitors of language models end to end: a tiny LoRA adapter in production, new data
//! fed to its monitor whose per-sample loss drifts from the reference; ticks that
//! retrain (LoRA with a replay share of the old data, or the adapter continued), gate
//! on the held-out new rows and on the retention sets of earlier versions, promote or
//! refuse; shadow mode; rollback; a process killed mid-retrain; policies that do not
//! fit the model.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use anneal::{
    AliasAction, CancelToken, ClassifierConfig, DecisionKind, Event, GatePolicy, GateVerdict, Home,
    ImportOptions, JobFilter, JobStatus, LmRetrainMethod, LoraConfig, Method, ModelKind, Monitor, MonitorOptions,
    PromotionMode, RecordingSink, RetrainAction, RetrainPolicy, RetrainTriggers, TickOutcome, TrainSpec,
};
use anneal::types::DriftVerdict;
use serde_json::{json, Value};

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

fn pick<'a>(r: &mut Rng, words: &[&'a str]) -> &'a str {
    words[r.below(words.len() as u64) as usize]
}

/// Words of letters and digits, to give the base some text before the adapters (a
/// random preset's frozen head keeps a LoRA adapter's outputs near uniform).
fn babble(n: usize, seed: u64) -> Vec<Value> {
    let mut r = Rng(seed);
    let chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789 .+=!".chars().collect();
    (0..n)
        .map(|_| json!({"text": (0..24).map(|_| chars[r.below(chars.len() as u64) as usize]).collect::<String>()}))
        .collect()
}

/// The old data: sentences about animals.
fn animals(n: usize, seed: u64) -> Vec<Value> {
    let mut r = Rng(seed);
    let (a, p, m) = (
        ["cat", "dog", "owl", "fox", "hen", "cow", "pig", "bee"],
        ["mat", "rug", "log", "bed", "box", "hat", "car", "bin"],
        ["calmly", "lazily", "softly", "slowly"],
    );
    (0..n)
        .map(|_| {
            let (a, m, p) = (pick(&mut r, &a), pick(&mut r, &m), pick(&mut r, &p));
            json!({"text": format!("the {a} sat {m} on the {p}.")})
        })
        .collect()
}

/// New data of another kind: sums.
fn sums(n: usize, seed: u64) -> Vec<Value> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let (a, b) = (r.below(10), r.below(10));
            json!({"text": format!("{a}+{b}={}", a + b)})
        })
        .collect()
}

/// Newer data of a third kind: shouting.
fn shouts(n: usize, seed: u64) -> Vec<Value> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let w = pick(&mut r, &["STOP", "GO", "NOW", "WAIT", "RUN"]);
            json!({"text": format!("{w}! {w}! {w}!")})
        })
        .collect()
}

fn import(home: &Home, name: &str, records: Vec<Value>) -> anneal::DatasetRecord {
    home.datasets()
        .import_records(records.into_iter().map(Ok), &ImportOptions { name: Some(name.into()), ..Default::default() })
        .unwrap()
}

/// Optimiser steps of the base, of v1 and of each retrain; their learning rate.
const BASE_STEPS: u64 = 60;
const STEPS: u64 = 60;
const LR: f64 = 2e-2;

fn train(home: &Home, spec: &TrainSpec) {
    let job = home.training().create_job(spec).unwrap();
    home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
}

/// A home whose `assistant` v1, a LoRA adapter of `base` (the `nano` preset after a
/// few steps on letters and digits) trained on sentences about animals, with the
/// held-out `animals-val` as its eval dataset, is in production.
fn setup(dir: &std::path::Path) -> Home {
    let home = Home::open(dir).unwrap();
    home.models().create_preset("nano", &Default::default()).unwrap();
    import(&home, "babble", babble(64, 5));
    let common = TrainSpec { batch_size: 8, seq_len: 32, learning_rate: LR, ..Default::default() };
    train(
        &home,
        &TrainSpec {
            base: "nano".into(),
            dataset: "babble".into(),
            method: Method::Full,
            max_steps: Some(BASE_STEPS),
            output_name: Some("base".into()),
            ..common.clone()
        },
    );
    import(&home, "animals", animals(48, 1));
    import(&home, "animals-val", animals(40, 9));
    train(
        &home,
        &TrainSpec {
            base: "base".into(),
            dataset: "animals".into(),
            eval_dataset: Some("animals-val".into()),
            method: Method::Lora(LoraConfig {
                r: 8,
                alpha: 16.0,
                target_modules: vec!["all-linear".into()],
                ..Default::default()
            }),
            max_steps: Some(STEPS),
            output_name: Some("assistant".into()),
            ..common
        },
    );
    home.models().promote("assistant@1", &Default::default()).unwrap();
    home
}

/// Drift on the newest 45 fed rows; a LoRA retrain on the new rows and all the old
/// ones; a 10 % retention tolerance.
fn policy() -> RetrainPolicy {
    RetrainPolicy {
        triggers: RetrainTriggers { drift_window: Some(45), ..Default::default() },
        action: RetrainAction { replay_fraction: 1.0, max_steps: Some(STEPS), ..Default::default() },
        gate: GatePolicy { retention_tolerance: 0.1, ..Default::default() },
        ..Default::default()
    }
}

fn kinds(m: &Monitor) -> Vec<DecisionKind> {
    m.decisions().unwrap().iter().map(|d| d.kind).collect()
}

fn production_version(home: &Home) -> u32 {
    home.models().resolve("assistant@production").unwrap().version
}

fn field(e: &anneal::Error) -> &str {
    match e {
        anneal::Error::InvalidConfig { field, .. } => field,
        o => panic!("not invalid_config: {o}"),
    }
}

#[test]
fn drifting_new_data_retrains_gates_on_retention_promotes_refuses_and_rolls_back() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let home = setup(dir.path());
    eprintln!("setup {:?}", t0.elapsed());
    let m = home.monitors().create("assistant", &policy(), &MonitorOptions::default()).unwrap();
    let mut sink = RecordingSink::new();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Idle, "{r:?}");

    // A few sums: too few rows for a verdict (insufficient data, not a false alarm).
    import(&home, "sums-1", sums(10, 3));
    m.feed("sums-1").unwrap();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Idle, "{r:?}");
    let checks = home.continual().drift_checks("assistant@1").unwrap();
    assert_eq!(checks[0].verdict, DriftVerdict::InsufficientData);
    assert!(sink.events().is_empty(), "{:?}", sink.types());
    assert_eq!(m.feed("sums-1").unwrap_err().code(), "already_exists");

    // More: the per-sample loss of the newest 45 rows (of two feeds) drifts from v1's
    // eval dataset; one tick retrains, gates and promotes.
    import(&home, "sums-2", sums(40, 4));
    m.feed("sums-2").unwrap();
    let r = m.tick(&mut sink).unwrap();
    eprintln!("retrain 1 {:?}", t0.elapsed());
    for d in m.decisions().unwrap() {
        eprintln!("{:?} {} {}", d.kind, d.reason, d.details);
    }
    assert_eq!(r.outcome, TickOutcome::Promoted, "{r:?}");
    assert_eq!(r.trigger.as_deref(), Some("drift"));
    assert_eq!(production_version(&home), 2);
    let types = sink.types();
    for t in ["drift_detected", "retrain_started", "job_started", "job_finished", "candidate_evaluated", "promoted"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let Some(Event::DriftDetected { signal, window_rows, score, threshold, .. }) =
        sink.events().into_iter().find(|e| e.type_name() == "drift_detected")
    else {
        panic!()
    };
    assert_eq!((signal.as_str(), window_rows), ("loss", 45));
    assert!(score >= threshold, "KS {score} vs critical {threshold}");
    let d = m.decisions().unwrap();
    assert_eq!(
        kinds(&m),
        [DecisionKind::DriftDetected, DecisionKind::RetrainStarted, DecisionKind::CandidateEvaluated, DecisionKind::Promoted]
    );
    // The window spans both feeds, so it was written as a dataset of its own.
    let window = home.datasets().get(d[0].details["window_dataset_id"].as_str().unwrap()).unwrap();
    assert_eq!(window.num_records, 45);
    // The retrain: every fed row but the 15 held out, plus all 48 old rows; LoRA on
    // the adapter's base.
    let started = &d[1].details;
    assert_eq!(
        (&started["fed_rows"], &started["held_out_rows"], &started["new_rows"], &started["replayed_rows"]),
        (&json!(50), &json!(15), &json!(35), &json!(48))
    );
    assert_eq!((started["lm_method"].as_str(), started["base"].as_str()), (Some("lora"), Some("base@1")));
    let v2 = home.models().resolve("assistant@2").unwrap();
    let base = home.models().resolve("base").unwrap();
    assert_eq!((v2.kind, v2.parent_id.as_ref()), (ModelKind::Lora, Some(&base.id)));
    assert_eq!(v2.lineage.dataset.as_ref().unwrap().0, started["dataset_id"].as_str().unwrap());
    assert_eq!(v2.lineage.eval_dataset.as_ref().unwrap().0, started["eval_dataset_id"].as_str().unwrap());
    assert_eq!(v2.lineage.dataset.as_ref().map(|d| home.datasets().get(d).unwrap().num_records), Some(83));
    // The gate: better on the held-out sums, within the tolerance on v1's eval set.
    let gate = &d[2].details;
    assert_eq!((gate["metric"].as_str(), gate["lower_is_better"].as_bool()), (Some("loss"), Some(true)));
    let (cv, pv) = (gate["candidate_value"].as_f64().unwrap(), gate["production_value"].as_f64().unwrap());
    assert!(cv < pv, "candidate loss {cv} vs production {pv}");
    let retention = gate["retention"].as_array().unwrap();
    assert_eq!(retention.len(), 1, "{retention:?}");
    assert_eq!((retention[0]["dataset"].as_str(), retention[0]["passed"].as_bool()), (Some("animals-val"), Some(true)));
    let hist = home.models().alias_history("assistant", Some("production")).unwrap();
    assert_eq!((hist[0].action, hist[0].version), (AliasAction::Promote, Some(2)));
    assert!(m.feeds().unwrap().iter().all(|f| f.job_id.as_ref() == r.job_id.as_ref()));

    // Nothing new for v2: idle.
    assert_eq!(m.tick(&mut sink).unwrap().outcome, TickOutcome::Idle);

    // Shouts, retrained on alone (no replay): better on the held-out shouts, but it
    // forgets the sums and the animals: refused on the retention sets.
    let mut p = policy();
    p.triggers = RetrainTriggers { new_rows: Some(40), ..Default::default() };
    p.action.replay_fraction = 0.0;
    m.set_policy(&p).unwrap();
    import(&home, "shouts", shouts(40, 6));
    m.feed("shouts").unwrap();
    let mut sink = RecordingSink::new();
    let r = m.tick(&mut sink).unwrap();
    eprintln!("retrain 2 {:?}", t0.elapsed());
    for d in m.decisions().unwrap() {
        eprintln!("{:?} {} {}", d.kind, d.reason, d.details);
    }
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::Kept, Some("new_rows")), "{r:?}");
    assert!(r.reason.contains("regresses on the retention set"), "{}", r.reason);
    assert_eq!(production_version(&home), 2);
    let Some(Event::CandidateEvaluated { verdict, candidate_value, production_value, .. }) =
        sink.events().into_iter().find(|e| e.type_name() == "candidate_evaluated")
    else {
        panic!()
    };
    assert_eq!(verdict, GateVerdict::Failed);
    assert!(candidate_value < production_value.unwrap(), "better on the new data: {candidate_value} {production_value:?}");
    assert!(!sink.types().contains(&"promoted"));
    let gate = &m.decisions().unwrap()[5].details;
    let sets: Vec<&str> = gate["retention"].as_array().unwrap().iter().map(|s| s["dataset"].as_str().unwrap()).collect();
    assert_eq!(sets.len(), 2, "v2's and v1's eval datasets: {sets:?}");
    assert!(sets.contains(&"animals-val"));
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::Kept));
    // The refused retrain gave its feed back for the next one.
    let shouts_feed = m.feeds().unwrap().into_iter().find(|f| f.dataset == "shouts").unwrap();
    assert!(shouts_feed.job_id.is_none());

    // Roll back: production is v1 again, atomically with the decision and the event.
    let mut sink = RecordingSink::new();
    let moved = m.rollback(Some("back to the animals"), &mut sink).unwrap();
    assert_eq!(moved.production, home.models().resolve("assistant@1").unwrap().id);
    assert_eq!(production_version(&home), 1);
    assert_eq!(sink.types(), ["rolled_back"]);
    let Event::RolledBack { model, previous, reason, .. } = &sink.events()[0] else { panic!() };
    assert_eq!((model.as_str(), previous.as_str(), reason.as_str()), ("assistant@1", "assistant@2", "back to the animals"));
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::RolledBack));
    let hist = home.models().alias_history("assistant", Some("production")).unwrap();
    assert_eq!((hist[0].action, hist[0].version), (AliasAction::Rollback, Some(1)));
    eprintln!("total {:?}", t0.elapsed());
}
