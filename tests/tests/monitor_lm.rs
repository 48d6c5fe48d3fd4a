//! Monitors of language models end to end: a tiny LoRA adapter in production, new data
//! fed to its monitor whose per-sample loss drifts from the reference; ticks that
//! retrain (LoRA with a replay share of the old data, or the adapter continued), gate
//! on the held-out new rows and on the retention sets of earlier versions, promote or
//! refuse; shadow mode; rollback; a process killed mid-retrain; policies that do not
//! fit the model.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use anneal::types::DriftVerdict;
use anneal::{
    AliasAction, CancelToken, ClassifierConfig, DecisionKind, Event, GatePolicy, GateVerdict, Home, ImportOptions,
    JobFilter, JobStatus, LmRetrainMethod, LoraConfig, Method, ModelKind, Monitor, MonitorOptions, PromotionMode,
    RecordingSink, RetrainAction, RetrainPolicy, RetrainTriggers, TickOptions, TickOutcome, TrainSpec,
};
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
    let dir = tempfile::tempdir().unwrap();
    let home = setup(dir.path());
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
    // (Monitors of the same model with the metric triggers, fed the same data, breach
    // on v1's loss over the fed rows: above a limit, and 20 % above its loss on its
    // eval dataset.)
    let submit = TickOptions { run_jobs: false };
    for (name, triggers, fired) in [
        ("by-limit", RetrainTriggers { metric_limit: Some(4.0), ..Default::default() }, "metric_limit"),
        ("by-drop", RetrainTriggers { relative_drop: Some(0.2), ..Default::default() }, "relative_drop"),
    ] {
        let other = RetrainPolicy { triggers, ..policy() };
        let o = home.monitors().create("assistant", &other, &MonitorOptions { name: Some(name.into()) }).unwrap();
        o.feed("sums-1").unwrap();
        o.feed("sums-2").unwrap();
        let r = o.tick_with(&mut RecordingSink::new(), &submit, &CancelToken::new()).unwrap();
        assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::RetrainStarted, Some(fired)), "{r:?}");
        assert_eq!(r.labelled, 50);
        assert!(r.window_metric.unwrap() > 4.0, "{r:?}");
        home.monitors().delete(name).unwrap();
    }
    let r = m.tick(&mut sink).unwrap();
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
        [
            DecisionKind::DriftDetected,
            DecisionKind::RetrainStarted,
            DecisionKind::CandidateEvaluated,
            DecisionKind::Promoted
        ]
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
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::Kept, Some("new_rows")), "{r:?}");
    assert!(r.reason.contains("regresses on the retention set"), "{}", r.reason);
    assert_eq!(production_version(&home), 2);
    let Some(Event::CandidateEvaluated { verdict, candidate_value, production_value, .. }) =
        sink.events().into_iter().find(|e| e.type_name() == "candidate_evaluated")
    else {
        panic!()
    };
    assert_eq!(verdict, GateVerdict::Failed);
    assert!(
        candidate_value < production_value.unwrap(),
        "better on the new data: {candidate_value} {production_value:?}"
    );
    assert!(!sink.types().contains(&"promoted"));
    let gate = &m.decisions().unwrap()[5].details;
    let sets: Vec<&str> =
        gate["retention"].as_array().unwrap().iter().map(|s| s["dataset"].as_str().unwrap()).collect();
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
    assert_eq!(
        (model.as_str(), previous.as_str(), reason.as_str()),
        ("assistant@1", "assistant@2", "back to the animals")
    );
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::RolledBack));
    let hist = home.models().alias_history("assistant", Some("production")).unwrap();
    assert_eq!((hist[0].action, hist[0].version), (AliasAction::Rollback, Some(1)));
}

const CHILD_HOME: &str = "ANNEAL_TEST_LM_MONITOR_HOME";

/// The child half of `a_continued_adapter_killed_mid_retrain_resumes_and_waits_in_shadow`.
#[test]
fn lm_monitor_child_ticker() {
    let Ok(dir) = std::env::var(CHILD_HOME) else { return };
    let home = Home::open(dir).unwrap();
    let m = home.monitors().get("assistant").unwrap();
    // The failpoint aborts the process inside the job's run; returning fails the parent.
    let r = m.tick(&mut RecordingSink::new());
    println!("child was not killed: {r:?}");
}

/// `continue` trains v1's adapter further on the sums alone; the process is killed as
/// the candidate registers; the next tick resumes that job (from v1's adapter again),
/// gates it and leaves it as the candidate, scored in shadow on the fed rows.
#[cfg(unix)]
#[test]
fn a_continued_adapter_killed_mid_retrain_resumes_and_waits_in_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let home = setup(dir.path());
    let policy = RetrainPolicy {
        triggers: RetrainTriggers { new_rows: Some(30), ..Default::default() },
        action: RetrainAction {
            lm_method: Some(LmRetrainMethod::Continue),
            replay_fraction: 0.0,
            max_steps: Some(8),
            learning_rate: Some(2e-3),
            ..Default::default()
        },
        gate: GatePolicy { mode: PromotionMode::Shadow, retention_tolerance: 1.0, ..Default::default() },
        ..Default::default()
    };
    let m = home.monitors().create("assistant", &policy, &MonitorOptions::default()).unwrap();
    import(&home, "sums", sums(50, 3));
    m.feed("sums").unwrap();
    let out = Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "monitor_lm::lm_monitor_child_ticker", "--nocapture", "--test-threads", "1"])
        .env(CHILD_HOME, home.root())
        .env("ANNEAL_FAILPOINTS", "register.before_commit=abort")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && !stdout.contains("child was not killed"), "{}: {stdout}", out.status);
    // The claim, the job and the feeds it took survived the kill.
    let rec = m.record().unwrap();
    let job = rec.current_job_id.clone().expect("the job id was recorded before the run");
    assert_eq!(home.training().job(&job).unwrap().status, JobStatus::Interrupted);
    assert_eq!(kinds(&m), [DecisionKind::RetrainStarted]);
    assert_eq!(m.feeds().unwrap()[0].job_id.as_ref(), Some(&job));
    assert!(home.models().resolve("assistant@2").is_err());

    // The next tick resumes that job (no second one), gates it and scores it in shadow.
    let mut sink = RecordingSink::new();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::AwaitingApproval, "{r:?}");
    assert_eq!(r.job_id.as_ref(), Some(&job));
    assert!(r.reason.contains("shadow:"), "{}", r.reason);
    assert!(!sink.types().contains(&"retrain_started"));
    assert_eq!(home.training().jobs(&JobFilter::default()).unwrap().len(), 3); // base, v1, the retrain
    assert_eq!(
        kinds(&m),
        [
            DecisionKind::RetrainStarted,
            DecisionKind::RetrainResumed,
            DecisionKind::CandidateEvaluated,
            DecisionKind::Shadow
        ]
    );
    let shadow = &m.decisions().unwrap()[3].details;
    assert_eq!(shadow["rows"], 50);
    let (cl, pl) = (shadow["candidate_loss"].as_f64().unwrap(), shadow["production_loss"].as_f64().unwrap());
    assert!(cl < pl, "shadow: candidate {cl} vs production {pl}");
    assert_eq!(production_version(&home), 1);
    // The candidate is v1's adapter continued for a few steps: same base, v1 as its
    // start, and it still knows the animals it was not shown again (a new adapter
    // starts as the base, and does no better than it on them).
    let (v1, v2) =
        (home.models().resolve("assistant@1").unwrap(), home.models().resolve("assistant@candidate").unwrap());
    assert_eq!(v2.version, 2);
    assert_eq!(v2.parent_id, v1.parent_id);
    assert_eq!(v2.lineage.spec.as_ref().unwrap().init_adapter.as_ref().map(|a| a.0.as_str()), Some(v1.id.0.as_str()));
    let on_animals = |m: &str| home.continual().evaluate(m, "animals-val").unwrap().metrics["loss"];
    let (base_loss, v2_loss) = (on_animals("base"), on_animals("assistant@2"));
    assert!(v2_loss < base_loss, "continued adapter {v2_loss} vs base {base_loss} on the animals");

    // Approved: production moves; the feed stays with the promoted retrain.
    let mut sink = RecordingSink::new();
    m.approve(Some("shadow looks fine"), &mut sink).unwrap();
    assert_eq!(production_version(&home), 2);
    assert_eq!(sink.types(), ["promoted"]);
    assert_eq!(m.feeds().unwrap()[0].job_id.as_ref(), Some(&job));
}

/// A policy that does not fit the production model, contradictory guards, data a
/// monitor cannot take: typed errors naming the field, nothing stored.
#[test]
fn policies_and_feeds_that_do_not_fit_the_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    home.models().create_preset("nano", &Default::default()).unwrap();
    home.models().promote("nano@1", &Default::default()).unwrap();
    let lm = RetrainPolicy {
        triggers: RetrainTriggers { metric_limit: Some(3.0), ..Default::default() },
        ..Default::default()
    };
    let create = |p: &RetrainPolicy| home.monitors().create("nano", p, &MonitorOptions::default());
    let refused = |p: RetrainPolicy| create(&p).unwrap_err();
    let mut p = lm.clone();
    p.triggers.accuracy_floor = Some(0.9);
    assert_eq!(field(&refused(p)), "triggers.metric_limit");
    let mut p = lm.clone();
    p.triggers = RetrainTriggers { accuracy_floor: Some(0.9), ..Default::default() };
    assert_eq!(field(&refused(p)), "triggers.accuracy_floor");
    let mut p = lm.clone();
    p.action.config = Some(ClassifierConfig::default());
    assert_eq!(field(&refused(p)), "action.config");
    let mut p = lm.clone();
    p.action.lm_method = Some(LmRetrainMethod::Continue); // nano@1 is a base, not an adapter
    assert_eq!(field(&refused(p)), "action.lm_method");
    let mut p = lm.clone();
    p.gate.metric = Some("accuracy".into());
    assert_eq!(field(&refused(p)), "gate.metric");
    let mut p = lm.clone();
    p.guards.min_samples = 500;
    assert_eq!(field(&refused(p)), "guards.min_samples");
    let mut p = lm.clone();
    p.triggers.schedule_secs = Some(10.0);
    p.guards.cooldown_secs = 60.0;
    assert_eq!(field(&refused(p)), "guards.cooldown_secs");
    let table = home
        .datasets()
        .import_records(
            (0..4).map(|i| Ok(json!({"x": i, "label": i % 2}))),
            &ImportOptions { name: Some("table".into()), ..Default::default() },
        )
        .unwrap();
    let mut p = lm.clone();
    p.gate.dataset = Some("table".into());
    assert_eq!(field(&refused(p)), "gate.dataset");
    let mut p = lm.clone();
    p.gate.retention_datasets = vec!["nothing-here".into()];
    assert_eq!(field(&refused(p)), "gate.retention_datasets[0]");
    assert!(home.monitors().list().unwrap().is_empty());

    // A fitting policy; a schedule with nothing fed does not retrain.
    let mut p = lm.clone();
    p.triggers.schedule_secs = Some(0.001);
    let m = create(&p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = m.tick(&mut RecordingSink::new()).unwrap();
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::Idle, Some("schedule")), "{r:?}");
    assert!(r.reason.contains("nothing new to train on"), "{}", r.reason);
    assert!(home.training().jobs(&JobFilter::default()).unwrap().is_empty());
    // Feeds: a tabular dataset, an unknown one.
    assert_eq!(field(&m.feed(&table.id).unwrap_err()), "dataset");
    assert_eq!(m.feed("nothing-here").unwrap_err().code(), "not_found");
    assert!(m.feeds().unwrap().is_empty());
    // set_policy checks against the model too, and keeps the old policy.
    let mut bad = p.clone();
    bad.action.lora = Some(LoraConfig { r: 0, ..Default::default() });
    assert_eq!(field(&m.set_policy(&bad).unwrap_err()), "action.lora.r");
    bad.action.lora = None;
    bad.triggers.new_labels = Some(5);
    assert_eq!(field(&m.set_policy(&bad).unwrap_err()), "triggers.new_labels");
    assert_eq!(m.record().unwrap().policy, p);

    // The job spec behind `continue`: `init_adapter` must be a LoRA adapter of the base.
    let words = import(&home, "words", animals(8, 1));
    let spec = |init: &str, method: Method| TrainSpec {
        base: "nano".into(),
        dataset: words.id.clone(),
        method,
        init_adapter: Some(init.into()),
        ..Default::default()
    };
    let e = home.training().create_job(&spec("nano@1", Method::Lora(LoraConfig::default()))).unwrap_err();
    assert_eq!(field(&e), "init_adapter", "{e}");
    let e = home.training().create_job(&spec("nobody@1", Method::Lora(LoraConfig::default()))).unwrap_err();
    assert_eq!(field(&e), "init_adapter", "{e}");
    let e = home.training().create_job(&spec("nano@1", Method::Full)).unwrap_err();
    assert_eq!(field(&e), "init_adapter", "{e}");

    // A classifier: LoRA settings and fed rows are a language model's.
    let records = (0..40).map(|i| Ok(json!({"x": i as f64, "y": (i * 7 % 5) as f64, "label": i % 2})));
    home.datasets()
        .import_records(records, &ImportOptions { name: Some("rows".into()), ..Default::default() })
        .unwrap();
    train(
        &home,
        &TrainSpec {
            dataset: "rows".into(),
            method: Method::Classifier(ClassifierConfig::default()),
            output_name: Some("churn".into()),
            ..Default::default()
        },
    );
    home.models().promote("churn@1", &Default::default()).unwrap();
    let classifier = RetrainPolicy {
        triggers: RetrainTriggers { accuracy_floor: Some(0.8), ..Default::default() },
        ..Default::default()
    };
    let opts = MonitorOptions { name: Some("churn".into()) };
    let mut p = classifier.clone();
    p.action.lora = Some(LoraConfig::default());
    assert_eq!(field(&home.monitors().create("churn", &p, &opts).unwrap_err()), "action.lora");
    let mut p = classifier.clone();
    p.triggers.new_rows = Some(10);
    assert_eq!(field(&home.monitors().create("churn", &p, &opts).unwrap_err()), "triggers.new_rows");
    let mut p = classifier.clone();
    p.gate.metric = Some("loss".into());
    assert_eq!(field(&home.monitors().create("churn", &p, &opts).unwrap_err()), "gate.metric");
    let c = home.monitors().create("churn", &classifier, &opts).unwrap();
    assert_eq!(field(&c.feed("words").unwrap_err()), "monitor");
}
