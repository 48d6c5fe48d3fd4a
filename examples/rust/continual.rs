//! anneal continual learning, the whole loop: a classifier serves a stream whose
//! distribution shifts; labels arrive later; a monitor notices, retrains, gates and
//! promotes; a webhook receiver is told; a PNG plot and a summary come out of the
//! catalog's rows. Offline (the receiver is a local thread); no downloads.
//!
//! Run:    cargo run -p anneal-examples --example continual [-- <home dir>] [--smoke]
//!         (default home ./anneal-continual, which must not hold a `churn` model yet;
//!         --smoke: no pause between batches, for CI)
//! Output: one line per batch (rows, serving version, realised accuracy of the last
//!         100 labels, what the monitor did), the webhook deliveries as the receiver
//!         gets them (event type, id, signature checked), then a summary: accuracy
//!         before the drift, after it, after the retrain; the promotions; the monitor's
//!         decisions; the deliveries received; and `<home>/continual.png`.
//!
//! 1. A seeded synthetic scenario (`anneal::tabular::synthetic`): 4 numeric and 1
//!    categorical feature, 2 classes; from row 700 on the features move (covariate
//!    shift) and the labelling function changes (concept drift).
//! 2. `churn` v1, a logistic regression on rows 0..300, is promoted to production.
//! 3. A webhook points at a `TcpListener` thread in this program that answers 200,
//!    checks each delivery's Standard Webhooks signature and prints it. Monitor events
//!    go to the webhook's outbox in the same transaction as the decision; a background
//!    deliverer (`webhooks().spawn`) posts them.
//! 4. Rows 300..1500 arrive in batches of 50 through a `Predictor` (every prediction
//!    logged); each batch's true labels arrive one batch later (`continual().label`).
//!    After each batch the monitor ticks: the accuracy floor (0.8 on the last 100
//!    labels) and a drift check of the last 100 predictions are its triggers; a breach
//!    must persist two ticks; a retrain fits on the labelled predictions and must beat
//!    production on the newest of them, held out, to be promoted.
//! 5. `continual().plot_timeline` draws accuracy and drift over time with the events.
//!
//! What happens (seeded, so every run tells it): the drift check flags all 5 columns
//! at the first drifted batch; accuracy falls to ~0.4; the first retrain is kept out
//! by the gate (too few new labels), the next ones are promoted; the version trained
//! on the new concept serves at ~0.96. Ten signed deliveries reach the receiver.
//! The example exits with an error if no retrained version was promoted, if the
//! receiver missed the promotion, or if the retrain did not beat v1 after the drift.
//!
//! Measured on the 2-core CPU (dev profile): ~5 s in all, 3.6 s of it the pauses
//! between batches; ~1.5 s with --smoke.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anneal::tabular::synthetic::generate;
use anneal::{
    AccuracyOptions, CancelToken, ClassifierConfig, DeliveryFilter, GatePolicy, Home, ImportOptions, Method,
    MonitorOptions, PlotOptions, PredictionId, PredictorOptions, PromotionMode, RecordingSink, RetrainAction,
    RetrainGuards, RetrainPolicy, RetrainTriggers, ScenarioDrift, ScenarioDriftKind, ScenarioOptions,
    TimelineEventKind, TimelineOptions, TrainSpec, WebhookOptions,
};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const MODEL: &str = "churn";
const TRAIN_ROWS: usize = 300;
const DRIFT_AT: usize = 700;
const ROWS: usize = 1500;
const BATCH: usize = 50;
/// Pause between batches (a stream arrives over time); none with --smoke.
const PAUSE: Duration = Duration::from_millis(150);

/// One webhook delivery as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    signed: bool,
    summary: String,
}

/// Reads one HTTP/1.1 request from `stream`, answers 200, returns its headers and body.
fn read_request(stream: &mut TcpStream) -> Result<(HashMap<String, String>, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("POST ") {
        bail!("not a POST: {line:?}");
    }
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").context("no content-length")?.parse()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")?;
    Ok((headers, body))
}

/// A webhook receiver on 127.0.0.1: answers 200 to every POST, checks its signature
/// with `secret`, prints it and keeps it.
fn spawn_receiver(listener: TcpListener, secret: String, got: Arc<Mutex<Vec<Received>>>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok((headers, body)) = read_request(&mut stream) else { continue };
            let h = |k: &str| headers.get(k).cloned().unwrap_or_default();
            let signed = anneal::verify_signature(
                &secret,
                &h("webhook-id"),
                &h("webhook-timestamp"),
                &body,
                &h("webhook-signature"),
                anneal::notify::DEFAULT_TOLERANCE,
            )
            .is_ok();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let event = v["type"].as_str().unwrap_or("?").to_string();
            let d = &v["data"];
            let summary = match event.as_str() {
                "drift_detected" => format!("{} drifted on {}", d["model"], d["drifted_columns"]),
                "retrain_started" => format!("{} retrain, trigger {}", d["model"], d["trigger"]),
                "candidate_evaluated" => format!(
                    "{} {} vs production {}: {}",
                    d["candidate"], d["candidate_value"], d["production_value"], d["verdict"]
                ),
                "promoted" => format!("{} promoted ({})", d["model"], d["mode"]),
                _ => d.to_string().chars().take(80).collect(),
            };
            println!(
                "    webhook <- {event} {} ({}): {summary}",
                h("webhook-id"),
                if signed { "signature ok" } else { "BAD SIGNATURE" }
            );
            if let Ok(mut g) = got.lock() {
                g.push(Received { id: h("webhook-id"), event, signed, summary });
            }
        }
    });
}

fn main() -> Result<()> {
    // First thing, before any thread: candle's elementwise ops stay on the calling thread.
    anneal::keep_candle_ops_on_calling_thread();
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let dir = args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "anneal-continual".into());
    let home = Home::open(&dir)?;
    if home.models().resolve(MODEL).is_ok() {
        bail!("{} already has a `{MODEL}` model: run the example on a fresh directory", home.root().display());
    }
    println!("home: {}", home.root().display());

    // 1. The scenario: the features move and the concept changes at row DRIFT_AT.
    let s = generate(&ScenarioOptions {
        rows: ROWS,
        numeric: 4,
        categorical: 1,
        categories: 3,
        classes: 2,
        separation: 3.0,
        seed: 7,
        drift: vec![
            ScenarioDrift { kind: ScenarioDriftKind::Covariate, start: DRIFT_AT, magnitude: 1.0, ..Default::default() },
            ScenarioDrift { kind: ScenarioDriftKind::Concept, start: DRIFT_AT, magnitude: 2.0, ..Default::default() },
        ],
    })?;

    // 2. v1 on the first rows, in production.
    let train: Vec<Value> = s.records().take(TRAIN_ROWS).collect();
    home.datasets().import_records(
        train.into_iter().map(Ok),
        &ImportOptions { name: Some(format!("{MODEL}-train")), ..Default::default() },
    )?;
    let spec = TrainSpec {
        dataset: format!("{MODEL}-train").into(),
        eval_fraction: Some(0.2),
        method: Method::Classifier(ClassifierConfig::default()),
        output_name: Some(MODEL.into()),
        ..Default::default()
    };
    let job = home.training().create_job(&spec)?;
    home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new())?;
    home.models().promote(format!("{MODEL}@1"), &Default::default())?;
    println!("{MODEL}@1 trained on rows 0..{TRAIN_ROWS} and promoted to production");

    // 3. The webhook receiver, the webhook, and a background deliverer of its outbox.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hooks/anneal", listener.local_addr()?);
    let hook = home.webhooks().add(&url, &WebhookOptions::default())?;
    let received = Arc::new(Mutex::new(Vec::new()));
    spawn_receiver(listener, hook.secret.clone(), received.clone());
    let deliverer = home.webhooks().spawn(Duration::from_millis(100))?;
    println!("webhook {} -> {url}", hook.id);

    // 4. The monitor and the stream.
    let policy = RetrainPolicy {
        triggers: RetrainTriggers {
            accuracy_floor: Some(0.8),
            drift_window: Some(100),
            window: 100,
            ..Default::default()
        },
        guards: RetrainGuards { min_samples: 50, consecutive_breaches: 2, ..Default::default() },
        action: RetrainAction { replay_fraction: 0.0, ..Default::default() },
        gate: GatePolicy { mode: PromotionMode::Auto, margin: 0.02, ..Default::default() },
    };
    let monitor = home.monitors().create(MODEL, &policy, &MonitorOptions::default())?;
    let continual = home.continual();
    // Which scenario row each prediction was, and its label, until the label arrives.
    let mut row_of: HashMap<PredictionId, usize> = HashMap::new();
    let mut unlabelled: Vec<(PredictionId, u32)> = Vec::new();
    println!("\nbatch  rows (* drifted)  served by   acc(last 100)  monitor");
    for (b, start) in (TRAIN_ROWS..ROWS).step_by(BATCH).enumerate() {
        let end = (start + BATCH).min(ROWS);
        // The production model may have changed since the last batch: load it anew.
        let predictor = home.predictor(format!("{MODEL}@production"), &PredictorOptions::default())?;
        // The previous batch's labels arrive now.
        for (id, y) in unlabelled.drain(..) {
            continual.label(&id, &json!(y))?;
        }
        for i in start..end {
            let p = predictor.predict(&s.rows[i])?;
            row_of.insert(p.prediction_id.clone(), i);
            unlabelled.push((p.prediction_id, s.labels[i]));
        }
        let served = home.models().resolve(format!("{MODEL}@production"))?;
        let mut sink = RecordingSink::new();
        let r = monitor.tick(&mut sink)?;
        let acc = r.realised_accuracy.map_or_else(|| "-".to_string(), |a| format!("{a:.2}"));
        let drifted = if start >= DRIFT_AT { '*' } else { ' ' };
        println!(
            "{b:>5}  {start:>4}..{end:<4}{drifted}  {:<10}  {acc:<13}  {}: {}",
            served.reference(),
            r.outcome,
            r.reason.chars().take(110).collect::<String>()
        );
        if !smoke {
            std::thread::sleep(PAUSE);
        }
    }
    for (id, y) in unlabelled.drain(..) {
        continual.label(&id, &json!(y))?;
    }
    // Deliver what is left, then stop the deliverer.
    deliverer.stop()?;
    home.webhooks().deliver_due(SystemTime::now())?;

    // 5. The plot and the summary, from the catalog's rows.
    let png = home.root().join("continual.png");
    let t = continual.plot_timeline(
        MODEL,
        &png,
        &TimelineOptions { window: 100, ..Default::default() },
        &PlotOptions::default(),
    )?;
    println!(
        "\nplot: {} ({} labelled predictions, {} drift checks, {} events)",
        png.display(),
        t.labelled,
        t.drift.len(),
        t.events.len()
    );

    let promotions: Vec<_> = t.events.iter().filter(|e| e.kind == TimelineEventKind::Promoted).collect();
    let first_promotion = promotions.iter().find(|e| e.version.unwrap_or(1) > 1).map(|e| e.at.clone());
    // Accuracy of the labelled predictions in three phases, from the timeline's rows.
    let (mut before, mut after, mut retrained) = ((0, 0), (0, 0), (0, 0));
    for p in &t.accuracy {
        let row = row_of.get(&p.prediction_id).copied().unwrap_or(0);
        let phase = if row < DRIFT_AT {
            &mut before
        } else if p.version == 1 {
            &mut after
        } else {
            &mut retrained
        };
        phase.0 += u32::from(p.correct);
        phase.1 += 1;
    }
    let pct = |(c, n): (u32, u32)| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}% of {n}", 100.0 * f64::from(c) / f64::from(n))
        }
    };
    println!("\naccuracy before the drift (v1, rows {TRAIN_ROWS}..{DRIFT_AT}): {}", pct(before));
    println!("accuracy after the drift, before the retrain (v1):   {}", pct(after));
    println!("accuracy after the retrain (promoted versions):       {}", pct(retrained));
    for v in &t.versions {
        let r = continual.realised_accuracy(&v.model_id, &AccuracyOptions::default())?;
        println!(
            "  {MODEL}@{}: {} predictions, {} labelled, realised accuracy {:.3}",
            v.version,
            v.predictions,
            r.labelled,
            r.accuracy.unwrap_or(f64::NAN)
        );
    }
    println!("\npromotions:");
    for e in &promotions {
        let from = e.previous_version.map_or_else(|| "none".to_string(), |v| format!("v{v}"));
        println!(
            "  {}  v{} (was {from}){}",
            e.at,
            e.version.unwrap_or(0),
            e.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    println!("\nmonitor decisions:");
    for d in monitor.decisions()? {
        println!("  {}  {:<19} {}", d.at, d.kind.to_string(), d.reason.chars().take(100).collect::<String>());
    }
    let got = received.lock().map(|g| g.clone()).unwrap_or_default();
    let outbox =
        home.webhooks().deliveries(&DeliveryFilter { webhook_id: Some(hook.id.clone()), ..Default::default() })?;
    println!(
        "\nwebhook deliveries received: {} ({} in the outbox, {} signature failures)",
        got.len(),
        outbox.len(),
        got.iter().filter(|r| !r.signed).count()
    );
    for r in &got {
        println!("  {:<20} {}  {}", r.event, r.id, r.summary);
    }
    println!("\ndone in {:.1}s", started.elapsed().as_secs_f64());

    // The story this example tells must have happened.
    if first_promotion.is_none() {
        bail!("the monitor never promoted a retrained version");
    }
    if !got.iter().any(|r| r.event == "promoted") || got.iter().any(|r| !r.signed) {
        bail!("the receiver did not get a signed `promoted` delivery");
    }
    if retrained.1 == 0
        || f64::from(retrained.0) / f64::from(retrained.1) <= f64::from(after.0) / f64::from(after.1.max(1))
    {
        bail!("the retrained version is no better than v1 after the drift");
    }
    Ok(())
}
