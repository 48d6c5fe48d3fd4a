//! `anneal serve` jobs: create and run over HTTP, live events (SSE) of jobs started
//! here and elsewhere, cancel and resume, graceful shutdown leaving jobs resumable,
//! and `/health` answering under load.

#![allow(clippy::unwrap_used)]

use crate::serve_support;

use std::time::{Duration, Instant};

use crate::serve_support::*;
use anneal::{JobStatus, TokenScope};
use serde_json::{json, Value};

fn types(events: &[String]) -> Vec<String> {
    events.iter().map(|e| serde_json::from_str::<Value>(e).unwrap()["type"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_job_started_over_http_streams_events_cancels_and_resumes() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Write)));
    let created = c.post("/api/jobs", &spec(1_000_000));
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();

    // Live events until a few steps have been seen, then cancel from another client.
    let mut steps = 0;
    let events = c.sse(&format!("/api/jobs/{id}/events"), None, |data| {
        let v: Value = serde_json::from_str(data).unwrap();
        if v["type"] == "step" {
            steps += 1;
            if steps == 3 {
                let r = c.post(&format!("/api/jobs/{id}/cancel"), &json!({}));
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }
        v["type"] == "job_finished"
    });
    let t = types(&events);
    assert_eq!(t.first().map(String::as_str), Some("job_started"), "{t:?}");
    assert_eq!(t.last().map(String::as_str), Some("job_finished"), "{t:?}");
    assert!(t.contains(&"checkpoint".to_string()), "cancel writes a checkpoint: {t:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["status"], "cancelled");
    let step: Value = serde_json::from_str(&events[t.iter().position(|x| x == "step").unwrap()]).unwrap();
    assert_eq!(step["job_id"], id.as_str());
    assert!(step["loss"].as_f64().unwrap() > 0.0 && step["total_steps"] == 1_000_000);

    let job = c.get(&format!("/api/jobs/{id}")).json();
    assert_eq!(job["status"], "cancelled");
    assert!(job["checkpoint"].is_string());
    let cancelled_at = job["step"].as_u64().unwrap();
    let metrics = c.get(&format!("/api/jobs/{id}/metrics")).json();
    assert!(metrics.as_array().unwrap().len() as u64 >= 3);
    let progress = c.get(&format!("/api/jobs/{id}/progress")).json();
    assert_eq!(progress["status"], "cancelled");
    assert!(c.get(&format!("/api/jobs/{id}/logs")).json().is_array());
    assert_eq!(c.get(&format!("/api/jobs/{id}/image")).status, 404);

    // Resume: it continues from the checkpoint (its step only grows).
    let resumed = c.post(&format!("/api/jobs/{id}/resume"), &json!({}));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(wait_until(60, || {
        let j = c.get(&format!("/api/jobs/{id}")).json();
        j["status"] == "running" && j["step"].as_u64().unwrap() > cancelled_at
    }));
    // A running job does not resume twice.
    let twice = c.post(&format!("/api/jobs/{id}/resume"), &json!({}));
    assert_eq!(twice.status, 409, "{}", twice.body);
    // Reconnecting with Last-Event-ID replays nothing already seen.
    let seen = format!("{}.0", metrics.as_array().unwrap().len());
    let mut first = None;
    c.sse_with(&format!("/api/jobs/{id}/events"), &[("last-event-id", &seen)], |data| {
        first = Some(data.to_string());
        true
    });
    let first: Value = serde_json::from_str(&first.unwrap()).unwrap();
    assert_ne!(first["type"], "job_started", "{first}");
    if first["type"] == "step" {
        assert!(first["step"].as_u64().unwrap() > cancelled_at, "{first}");
    }

    // Graceful shutdown: the job this server runs stops at a checkpoint, resumable.
    server.shutdown().unwrap();
    let j = home.training().job(id.as_str()).unwrap();
    assert_eq!(j.status, JobStatus::Cancelled, "{j:?}");
    assert!(j.checkpoint.is_some() && j.status.is_resumable());
    assert!(j.step > cancelled_at);
}

#[test]
fn a_job_run_by_another_process_streams_from_the_catalog() {
    let (_d, home) = home();
    let server = start(&home, |c| c.no_auth = true);
    let c = Client::new(&server, None);
    // Started outside the server (as Python or the CLI would), created but not run yet.
    let engine = home.training();
    let spec: anneal::TrainSpec = anneal::options_from_json(spec(12)).unwrap();
    let job = engine.create_job(&spec).unwrap();
    let id = job.id.0.clone();
    let path = format!("/api/jobs/{id}/events");
    let reader = std::thread::spawn({
        let c = c.with_token(None);
        move || c.sse(&path, None, |d| d.contains("\"job_finished\""))
    });
    std::thread::sleep(Duration::from_millis(300));
    let handle = engine.spawn(&job.id).unwrap();
    handle.wait().unwrap();
    let events = reader.join().unwrap();
    let t = types(&events);
    assert_eq!(t.first().map(String::as_str), Some("job_started"), "{t:?}");
    assert_eq!(t.iter().filter(|x| *x == "step").count(), 12, "{t:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("job_finished"), Some("completed")));
    let model_id = last["model_id"].as_str().unwrap();
    // The model it made, with its lineage back to the base and the job.
    let lineage = c.get(&format!("/api/models/{model_id}/lineage")).json();
    assert_eq!(lineage["ancestors"][0]["name"], "tiny");
    assert_eq!(lineage["job"]["id"], id.as_str());
    assert_eq!(lineage["dataset"]["name"], "corpus");
    // A finished job's stream replays its history and ends.
    let again = c.sse(&format!("/api/jobs/{id}/events"), None, |_| false);
    assert_eq!(types(&again), t);
    // Pending, created over HTTP without starting: `?start=false`.
    let pending = c.post("/api/jobs?start=false", &serve_support::spec(1));
    assert_eq!(pending.json()["status"], "pending");
    assert_eq!(c.get("/api/jobs?status=pending").json().as_array().unwrap().len(), 1);
}

#[test]
fn health_keeps_answering_while_a_job_trains_and_generations_run() {
    let (_d, home) = home();
    let server = start(&home, |c| {
        c.no_auth = true;
        c.max_generations = 2;
    });
    let c = Client::new(&server, None);
    let job = c.post("/api/jobs", &spec(1_000_000));
    assert_eq!(job.status, 201);
    let id = job.json()["id"].as_str().unwrap().to_string();
    assert!(wait_until(60, || c.get(&format!("/api/jobs/{id}")).json()["status"] == "running"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients generating without pause (some answered 429: that is the limit working).
    let load: Vec<_> = (0..3)
        .map(|i| {
            let c = c.with_token(None);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut busy) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"model": "tiny", "prompt": format!("load {i}"), "max_new_tokens": 24});
                    match c.post("/api/generate", &body).status {
                        200 => ok += 1,
                        429 => busy += 1,
                        s => panic!("generation answered {s}"),
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..40 {
        let t0 = Instant::now();
        assert_eq!(c.get("/health").status, 200);
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: Vec<(u32, u32)> = load.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(served.iter().map(|s| s.0).sum::<u32>() > 0, "{served:?}");
    assert!(worst < Duration::from_secs(2), "/health took {worst:?} under load");
    assert_eq!(c.get(&format!("/api/jobs/{id}")).json()["status"], "running");
    assert_eq!(c.post(&format!("/api/jobs/{id}/cancel"), &json!({})).status, 200);
    assert!(wait_until(60, || c.get(&format!("/api/jobs/{id}")).json()["status"] == "cancelled"));
}

#[test]
fn posting_the_same_job_with_if_exists_reuse_returns_the_existing_one() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Write)));
    let mut body = spec(3);
    body["if_exists"] = json!("reuse");
    let created = c.post("/api/jobs", &body);
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert!(wait_until(120, || c.get(&format!("/api/jobs/{id}")).json()["status"] == "completed"));

    // The same spec again: the completed job, not a new run (200, not 201).
    let again = c.post("/api/jobs", &body);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["status"], "completed");
    assert_eq!(home.training().jobs(&Default::default()).unwrap().len(), 1);

    // Without reuse, the same spec is a new job.
    let fresh = c.post("/api/jobs?start=false", &spec(3));
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    assert_ne!(fresh.json()["id"], id.as_str());
    server.shutdown().unwrap();
}
