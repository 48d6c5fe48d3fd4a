//! Monitors end to end: a production classifier, a stream of labelled predictions from
//! a seeded concept-drift scenario, ticks that retrain, gate, promote (or keep, or wait
//! for approval), with decisions, events, outbox rows and alias history; guards;
//! two instances ticking at once; a process killed mid-retrain.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use anneal::tabular::synthetic::{generate, SyntheticRows};
use anneal::{
    AliasAction, CancelToken, DecisionKind, DeliveryFilter, Event, GatePolicy, Home, JobFilter, JobStatus, Monitor,
    MonitorOptions, PromotionMode, RecordingSink, RetrainAction, RetrainGuards, RetrainPolicy, RetrainTriggers,
    ScenarioDrift, ScenarioDriftKind, ScenarioOptions, StatsOptions, TickOptions, TickOutcome, WebhookOptions,
};
use serde_json::json;

/// Rows 0..300 follow one concept, rows 300.. another.
fn scenario() -> SyntheticRows {
    generate(&ScenarioOptions {
        rows: 700,
        numeric: 3,
        categorical: 1,
        categories: 3,
        classes: 2,
        separation: 3.0,
        seed: 11,
        drift: vec![ScenarioDrift {
            kind: ScenarioDriftKind::Concept,
            start: 300,
            magnitude: 2.0,
            ..Default::default()
        }],
    })
    .unwrap()
}

/// A home whose `churn` v1 (logistic regression on rows 0..200) is in production.
fn setup(dir: &std::path::Path) -> (Home, SyntheticRows) {
    let s = scenario();
    (common::churn_in_production(dir, &s), s)
}

fn stream(home: &Home, s: &SyntheticRows, range: std::ops::Range<usize>) {
    common::stream_labelled(home, s, range)
}

fn policy(mode: PromotionMode) -> RetrainPolicy {
    RetrainPolicy {
        triggers: RetrainTriggers { accuracy_floor: Some(0.75), window: 100, ..Default::default() },
        guards: RetrainGuards { min_samples: 30, ..Default::default() },
        action: RetrainAction { replay_fraction: 0.0, ..Default::default() },
        gate: GatePolicy { mode, margin: 0.05, ..Default::default() },
    }
}

fn kinds(m: &Monitor) -> Vec<DecisionKind> {
    m.decisions().unwrap().iter().map(|d| d.kind).collect()
}

fn production_version(home: &Home) -> u32 {
    home.models().resolve("churn@production").unwrap().version
}

#[test]
fn drift_triggers_retrain_gate_promote_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    let hook = home.webhooks().add("http://127.0.0.1:9/hook", &WebhookOptions::default()).unwrap();
    let m = home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap();
    // A taken name and a contradictory policy are refused, naming the field.
    let e = home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap_err();
    assert_eq!(e.code(), "already_exists");
    let mut bad = policy(PromotionMode::Auto);
    bad.guards.min_samples = 1000;
    let e = home.monitors().create("churn", &bad, &MonitorOptions { name: Some("other".into()) }).unwrap_err();
    assert!(matches!(&e, anneal::Error::InvalidConfig { field, .. } if field == "guards.min_samples"), "{e}");

    // Before the drift: accurate, nothing happens.
    stream(&home, &s, 200..260);
    let mut sink = RecordingSink::new();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Idle, "{r:?}");
    assert!(r.realised_accuracy.unwrap() > 0.75, "{r:?}");
    assert!(sink.events().is_empty());

    // After it: realised accuracy falls; one tick retrains, gates and promotes.
    stream(&home, &s, 300..460);
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Promoted, "{r:?}");
    assert_eq!(r.trigger.as_deref(), Some("accuracy_floor"));
    assert_eq!(production_version(&home), 2);
    let types = sink.types();
    for t in ["retrain_started", "job_started", "job_finished", "candidate_evaluated", "promoted"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let evaluated = sink.events().into_iter().find(|e| e.type_name() == "candidate_evaluated").unwrap();
    let Event::CandidateEvaluated { candidate_value, production_value, candidate, .. } = evaluated else { panic!() };
    assert_eq!(candidate, "churn@2");
    assert!(candidate_value >= production_value.unwrap() + 0.05, "{candidate_value} vs {production_value:?}");
    assert_eq!(
        kinds(&m),
        [DecisionKind::RetrainStarted, DecisionKind::CandidateEvaluated, DecisionKind::Promoted],
        "{:?}",
        m.decisions().unwrap()
    );
    let rec = m.record().unwrap();
    assert!(rec.current_job_id.is_none() && rec.last_retrain_at.is_some());
    assert_eq!((rec.retrains_today, rec.consecutive_breaches), (1, 0));
    assert_eq!(rec.last_tick.unwrap().outcome, TickOutcome::Promoted);
    // The retrain's data: the labelled predictions only (replay 0), the newest held out.
    let started = &m.decisions().unwrap()[0];
    assert_eq!(started.details["replayed_rows"], 0);
    assert_eq!(started.details["labelled_prediction_rows"], 220 - 66);
    let v2 = home.models().resolve("churn@2").unwrap();
    assert_eq!(v2.lineage.dataset.as_ref().unwrap().0, started.details["dataset_id"].as_str().unwrap());
    // Outbox rows for each monitor event, in the same transactions.
    let mut queued: Vec<String> = home
        .webhooks()
        .deliveries(&DeliveryFilter { webhook_id: Some(hook.id.clone()), ..Default::default() })
        .unwrap()
        .into_iter()
        .map(|d| d.event_type)
        .collect();
    queued.sort();
    assert_eq!(queued, ["candidate_evaluated", "promoted", "retrain_started"]);
    // Alias history: promoted by the monitor, with the gate's reason.
    let hist = home.models().alias_history("churn", Some("production")).unwrap();
    assert_eq!(hist[0].action, AliasAction::Promote);
    assert_eq!(hist[0].version, Some(2));
    assert!(hist[0].reason.as_deref().unwrap().contains("beats"), "{:?}", hist[0].reason);
    // Statistics from the rows.
    let stats = home.stats(&StatsOptions::default()).unwrap();
    assert_eq!(stats.monitoring.retrains, 1);
    let v1 = home.models().resolve("churn@1").unwrap();
    let per = stats.monitoring.predictions.iter().find(|c| c.model_id == v1.id).unwrap();
    assert_eq!(per.count, 220);
    let prod = stats.monitoring.production.iter().find(|p| p.name == "churn").unwrap();
    assert_eq!(prod.version, 2);
    assert_eq!(prod.latest_evaluation.as_ref().unwrap()["model_id"], json!(v2.id.0));
    let acc = prod.latest_evaluation.as_ref().unwrap()["metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(acc, candidate_value, "the gate's evaluation of the candidate");

    // The new production model has no labels yet: idle.
    assert_eq!(m.tick(&mut sink).unwrap().outcome, TickOutcome::Idle);

    // Roll back: production is v1 again, with the decision and a rolled_back event.
    let mut sink = RecordingSink::new();
    let moved = m.rollback(Some("operator says so"), &mut sink).unwrap();
    assert_eq!(moved.production, v1.id);
    assert_eq!(production_version(&home), 1);
    assert_eq!(sink.types(), ["rolled_back"]);
    let Event::RolledBack { model, previous, .. } = &sink.events()[0] else { panic!() };
    assert_eq!((model.as_str(), previous.as_str()), ("churn@1", "churn@2"));
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::RolledBack));
    let queued = home.webhooks().deliveries(&DeliveryFilter::default()).unwrap();
    assert!(queued.iter().any(|d| d.event_type == "rolled_back"));
}

#[test]
fn manual_mode_waits_for_approval_and_shadow_scores_logged_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    let m = home.monitors().create("churn", &policy(PromotionMode::Manual), &MonitorOptions::default()).unwrap();
    let mut sink = RecordingSink::new();
    let e = m.approve(None, &mut sink).unwrap_err();
    assert_eq!(e.code(), "not_found");
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::AwaitingApproval, "{r:?}");
    assert_eq!(production_version(&home), 1);
    assert_eq!(home.models().resolve("churn@candidate").unwrap().version, 2);
    assert!(!sink.types().contains(&"promoted"));
    assert_eq!(m.record().unwrap().candidate_id, Some(home.models().resolve("churn@2").unwrap().id));
    // v1 still breaches, but the waiting candidate holds further retrains.
    let r = m.tick(&mut sink).unwrap();
    assert_eq!((r.outcome, r.candidate.as_deref()), (TickOutcome::AwaitingApproval, Some("churn@2")), "{r:?}");
    assert!(home.models().resolve("churn@3").is_err());
    let mut sink = RecordingSink::new();
    let moved = m.approve(Some("looks good"), &mut sink).unwrap();
    assert_eq!(production_version(&home), 2);
    assert!(home.models().resolve("churn@candidate").is_err());
    assert_eq!(moved.previous.unwrap(), home.models().resolve("churn@1").unwrap().id);
    let Event::Promoted { mode, reason, .. } = &sink.events()[0] else { panic!("{:?}", sink.events()) };
    assert_eq!((mode.as_str(), reason.as_str()), ("manual", "looks good"));
    assert!(m.record().unwrap().candidate_id.is_none());

    // Shadow mode: back to v1, which still breaches; the next candidate is scored on
    // v1's logged traffic.
    let mut p = policy(PromotionMode::Shadow);
    p.guards.cooldown_secs = 0.0;
    m.rollback(None, &mut RecordingSink::new()).unwrap();
    m.set_policy(&p).unwrap();
    let r = m.tick(&mut RecordingSink::new()).unwrap();
    assert_eq!(r.outcome, TickOutcome::AwaitingApproval, "{r:?}");
    assert!(r.reason.contains("shadow:"), "{}", r.reason);
    let shadow = m.decisions().unwrap().into_iter().find(|d| d.kind == DecisionKind::Shadow).unwrap();
    assert_eq!(shadow.details["rows"], 100);
    let (ca, pa) = (
        shadow.details["candidate_accuracy"].as_f64().unwrap(),
        shadow.details["production_accuracy"].as_f64().unwrap(),
    );
    assert!(ca > pa, "shadow: candidate {ca} vs production {pa}");
    assert_eq!(production_version(&home), 1);
    assert_eq!(home.models().resolve("churn@candidate").unwrap().version, 3);
}

#[test]
fn gate_failure_keeps_production_and_guards_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    let mut p = policy(PromotionMode::Auto);
    p.gate.floor = Some(0.999);
    p.guards.consecutive_breaches = 2;
    p.guards.cooldown_secs = 3600.0;
    let m = home.monitors().create("churn", &p, &MonitorOptions::default()).unwrap();
    let mut sink = RecordingSink::new();
    // First breach: held (1 of 2 consecutive).
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Held, "{r:?}");
    assert!(r.reason.contains("breach 1 of 2"), "{}", r.reason);
    assert_eq!(m.record().unwrap().consecutive_breaches, 1);
    // Second: retrain; the candidate misses the floor, production stays.
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Kept, "{r:?}");
    assert!(r.reason.contains("under the floor 0.999"), "{}", r.reason);
    assert_eq!(production_version(&home), 1);
    assert!(home.models().resolve("churn@candidate").is_err());
    let Some(Event::CandidateEvaluated { verdict, .. }) =
        sink.events().into_iter().find(|e| e.type_name() == "candidate_evaluated")
    else {
        panic!()
    };
    assert_eq!(verdict, anneal::GateVerdict::Failed);
    assert!(!sink.types().contains(&"promoted"));
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::Kept));
    // Still breaching: held by the cooldown (even after two breaches).
    m.tick(&mut sink).unwrap();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Held);
    assert!(r.reason.contains("cooldown"), "{}", r.reason);
    // No cooldown, a daily cap of 1: held by the cap.
    p.guards.cooldown_secs = 0.0;
    p.guards.consecutive_breaches = 1;
    p.guards.daily_cap = Some(1);
    m.set_policy(&p).unwrap();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Held);
    assert!(r.reason.contains("daily cap"), "{}", r.reason);
    assert_eq!(home.training().jobs(&JobFilter::default()).unwrap().len(), 2); // v1's and one retrain
                                                                               // A cap of 2 lets one more through.
    p.guards.daily_cap = Some(2);
    m.set_policy(&p).unwrap();
    assert_eq!(m.tick(&mut sink).unwrap().outcome, TickOutcome::Kept);
    assert_eq!(m.record().unwrap().retrains_today, 2);
    assert_eq!(home.stats(&StatsOptions::default()).unwrap().monitoring.retrains, 2);
    // A failing pass is recorded (decision, monitor_error event) and returned.
    home.models().remove_alias("churn", "production").unwrap();
    let mut sink = RecordingSink::new();
    let e = m.tick(&mut sink).unwrap_err();
    assert_eq!(e.code(), "not_found");
    assert_eq!(sink.types(), ["monitor_error"]);
    assert_eq!(kinds(&m).last(), Some(&DecisionKind::Error));
    assert_eq!(m.record().unwrap().last_tick.unwrap().outcome, TickOutcome::Error);
}

#[test]
fn two_instances_ticking_at_once_start_one_retrain() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap();
    let root = home.root().to_path_buf();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (root, barrier) = (root.clone(), barrier.clone());
            std::thread::spawn(move || {
                let h = Home::open(&root).unwrap();
                let m = h.monitors().get("churn").unwrap();
                barrier.wait();
                let a = m.tick_with(&mut RecordingSink::new(), &TickOptions { run_jobs: false }, &CancelToken::new());
                barrier.wait();
                let b = m.tick(&mut RecordingSink::new());
                (a.unwrap().outcome, b.unwrap().outcome)
            })
        })
        .collect();
    let outcomes: Vec<(TickOutcome, TickOutcome)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let started = outcomes.iter().filter(|o| o.0 == TickOutcome::RetrainStarted).count();
    assert_eq!(started, 1, "{outcomes:?}");
    let promoted = outcomes.iter().filter(|o| o.1 == TickOutcome::Promoted).count();
    assert_eq!(promoted, 1, "{outcomes:?}");
    // One retraining job, one new version, one promotion.
    assert_eq!(home.training().jobs(&JobFilter::default()).unwrap().len(), 2);
    assert_eq!(production_version(&home), 2);
    assert!(home.models().resolve("churn@3").is_err());
    let m = home.monitors().get("churn").unwrap();
    let k = kinds(&m);
    assert_eq!(k.iter().filter(|k| **k == DecisionKind::RetrainStarted).count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|k| **k == DecisionKind::Promoted).count(), 1, "{k:?}");
}

const CHILD_HOME: &str = "ANNEAL_TEST_MONITOR_HOME";

/// The child half of `killed_mid_retrain_the_next_tick_resumes_that_job`.
#[test]
fn monitor_child_ticker() {
    let Ok(dir) = std::env::var(CHILD_HOME) else { return };
    let home = Home::open(dir).unwrap();
    let m = home.monitors().get("churn").unwrap();
    // The failpoint aborts the process inside the job's run; returning fails the parent.
    let r = m.tick(&mut RecordingSink::new());
    println!("child was not killed: {r:?}");
}

#[cfg(unix)]
#[test]
fn killed_mid_retrain_the_next_tick_resumes_that_job() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    let m = home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap();
    let out = Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "monitor::monitor_child_ticker", "--nocapture", "--test-threads", "1"])
        .env(CHILD_HOME, home.root())
        .env("ANNEAL_FAILPOINTS", "register.before_commit=abort")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && !stdout.contains("child was not killed"), "{}: {stdout}", out.status);
    // The claim and the job survived the kill; the job reads as interrupted.
    let rec = m.record().unwrap();
    let job = rec.current_job_id.clone().expect("the job id was recorded before the run");
    assert_eq!(home.training().job(&job).unwrap().status, JobStatus::Interrupted);
    assert_eq!(kinds(&m), [DecisionKind::RetrainStarted]);
    // The next tick resumes that job (no second one) and finishes the pass.
    let mut sink = RecordingSink::new();
    let r = m.tick(&mut sink).unwrap();
    assert_eq!(r.outcome, TickOutcome::Promoted, "{r:?}");
    assert_eq!(r.job_id.as_ref(), Some(&job));
    assert!(!sink.types().contains(&"retrain_started"));
    assert_eq!(home.training().jobs(&JobFilter::default()).unwrap().len(), 2);
    assert_eq!(home.training().job(&job).unwrap().status, JobStatus::Completed);
    assert_eq!(production_version(&home), 2);
    assert!(home.models().resolve("churn@3").is_err());
    assert_eq!(
        kinds(&m),
        [
            DecisionKind::RetrainStarted,
            DecisionKind::RetrainResumed,
            DecisionKind::CandidateEvaluated,
            DecisionKind::Promoted
        ]
    );
}

#[test]
fn a_submitted_job_left_pending_is_run_by_the_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    let m = home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap();
    let mut sink = RecordingSink::new();
    let r = m.tick_with(&mut sink, &TickOptions { run_jobs: false }, &CancelToken::new()).unwrap();
    assert_eq!(r.outcome, TickOutcome::RetrainStarted);
    let job = r.job_id.unwrap();
    assert_eq!(home.training().job(&job).unwrap().status, JobStatus::Pending);
    // "The process died" here. A tick that does not run jobs waits; one that does runs it.
    let r = m.tick_with(&mut sink, &TickOptions { run_jobs: false }, &CancelToken::new()).unwrap();
    assert_eq!(r.outcome, TickOutcome::Waiting);
    let r = m.tick(&mut sink).unwrap();
    assert_eq!((r.outcome, r.job_id.as_ref()), (TickOutcome::Promoted, Some(&job)));
    assert_eq!(home.training().jobs(&JobFilter::default()).unwrap().len(), 2);
    assert_eq!(sink.types().iter().filter(|t| **t == "retrain_started").count(), 1);
}

#[test]
fn spawn_ticks_in_the_background_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    stream(&home, &s, 300..400);
    let m = home.monitors().create("churn", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let handle = m
        .spawn(std::time::Duration::from_millis(20), move |e: &Event| {
            seen.lock().unwrap().push(e.type_name());
            Ok(())
        })
        .unwrap();
    let t0 = std::time::Instant::now();
    while production_version(&home) != 2 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    while handle.ticks() < 3 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(handle.last_error().is_none(), "{:?}", handle.last_error());
    handle.stop().unwrap();
    assert_eq!(production_version(&home), 2);
    assert!(events.lock().unwrap().contains(&"promoted"));
    let e = m.spawn(std::time::Duration::ZERO, |_: &Event| Ok(())).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
}

#[test]
fn a_monitor_needs_a_production_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path()).unwrap();
    let e = home.monitors().create("nothing", &policy(PromotionMode::Auto), &MonitorOptions::default()).unwrap_err();
    assert!(matches!(&e, anneal::Error::InvalidConfig { field, .. } if field == "model"), "{e}");
    assert_eq!(home.monitors().list().unwrap().len(), 0);
}

#[test]
fn drift_new_labels_and_schedule_triggers_start_retrains() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = setup(dir.path());
    // The same rows before 300 (same seed), then the features move.
    let shifted = generate(&ScenarioOptions {
        rows: 400,
        numeric: 3,
        categorical: 1,
        categories: 3,
        classes: 2,
        separation: 3.0,
        seed: 11,
        drift: vec![ScenarioDrift {
            kind: ScenarioDriftKind::Covariate,
            start: 300,
            magnitude: 3.0,
            ..Default::default()
        }],
    })
    .unwrap();
    let hook = home.webhooks().add("http://127.0.0.1:9/hook", &WebhookOptions::default()).unwrap();
    let only = |triggers: RetrainTriggers| RetrainPolicy { triggers, ..policy(PromotionMode::Auto) };
    let create = |name: &str, p: RetrainPolicy| {
        home.monitors().create("churn", &p, &MonitorOptions { name: Some(name.into()) }).unwrap()
    };
    let by_labels = create("by-labels", only(RetrainTriggers { new_labels: Some(50), ..Default::default() }));
    let by_drift = create("by-drift", only(RetrainTriggers { drift_window: Some(100), ..Default::default() }));
    let submit = |m: &Monitor, sink: &mut RecordingSink| {
        m.tick_with(sink, &TickOptions { run_jobs: false }, &CancelToken::new()).unwrap()
    };
    stream(&home, &shifted, 200..230);
    let mut sink = RecordingSink::new();
    assert_eq!(submit(&by_labels, &mut sink).outcome, TickOutcome::Idle);
    assert_eq!(submit(&by_drift, &mut sink).outcome, TickOutcome::Idle);
    assert!(sink.events().is_empty(), "{:?}", sink.types());

    stream(&home, &shifted, 300..400);
    let r = submit(&by_drift, &mut sink);
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::RetrainStarted, Some("drift")), "{r:?}");
    assert_eq!(sink.types(), ["drift_detected", "retrain_started"]);
    let Event::DriftDetected { drifted_columns, window_rows, .. } = &sink.events()[0] else { panic!() };
    assert_eq!(*window_rows, 100);
    assert!(!drifted_columns.is_empty());
    assert_eq!(kinds(&by_drift), [DecisionKind::DriftDetected, DecisionKind::RetrainStarted]);
    assert_eq!(home.continual().drift_checks("churn@1").unwrap().len(), 2);
    let queued = home
        .webhooks()
        .deliveries(&DeliveryFilter { webhook_id: Some(hook.id), ..Default::default() })
        .unwrap()
        .into_iter()
        .filter(|d| d.event_type == "drift_detected")
        .count();
    assert_eq!(queued, 1);

    let mut sink = RecordingSink::new();
    let r = submit(&by_labels, &mut sink);
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::RetrainStarted, Some("new_labels")), "{r:?}");
    assert!(r.reason.contains("130 predictions labelled"), "{}", r.reason);

    let by_schedule = create("by-schedule", only(RetrainTriggers { schedule_secs: Some(0.05), ..Default::default() }));
    std::thread::sleep(std::time::Duration::from_millis(80));
    let r = submit(&by_schedule, &mut sink);
    assert_eq!((r.outcome, r.trigger.as_deref()), (TickOutcome::RetrainStarted, Some("schedule")), "{r:?}");
    // Each monitor follows its own job: three pending retrains besides v1's job.
    let jobs = home.training().jobs(&JobFilter::default()).unwrap();
    assert_eq!(jobs.iter().filter(|j| j.status == JobStatus::Pending).count(), 3);
    assert_eq!(home.monitors().list().unwrap().len(), 3);
    assert!(home.monitors().list().unwrap().iter().all(|m| m.current_job_id.is_some()));
}
