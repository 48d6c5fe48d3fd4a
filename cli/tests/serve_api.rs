//! `anneal serve`: tokens and scopes, bad input, datasets, CORS, slow clients, health
//! and metrics, over plain HTTP on a loopback port.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::serve_support::*;
use anneal::TokenScope;
use anneal_cli::serve::{Server, ServerConfig};
use serde_json::json;

#[test]
fn health_is_public_and_the_api_needs_a_token_of_the_right_scope() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let anon = Client::new(&server, None);
    let h = anon.get("/health");
    assert_eq!(h.status, 200, "{}", h.body);
    let v = h.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["catalog"]["schema_version"], anneal::Home::supported_schema_version());

    // No token, a wrong one, a revoked one: the same 401, naming none of them.
    let none = anon.get("/api/jobs");
    assert_eq!((none.status, none.code().as_str()), (401, "unauthorized"));
    assert!(none.header("www-authenticate").unwrap().starts_with("Bearer"));
    let read = token(&home, TokenScope::Read);
    let revoked = token(&home, TokenScope::Admin);
    home.tokens().revoke(revoked.split_once('.').unwrap().0).unwrap();
    let mut wrong_secret = read.clone();
    wrong_secret.replace_range(read.len() - 4.., "0000");
    let bad: Vec<_> = [wrong_secret.as_str(), revoked.as_str(), "tok_0123456789abcdef.00", "garbage"]
        .iter()
        .map(|t| anon.with_token(Some(t)).get("/api/jobs"))
        .collect();
    for a in &bad {
        assert_eq!((a.status, a.code().as_str()), (401, "unauthorized"), "{}", a.body);
        assert_eq!(a.json()["error"]["message"], bad[0].json()["error"]["message"]);
    }

    // read: GET only; write: no deletes, no tokens; admin: everything.
    let reader = anon.with_token(Some(&read));
    assert_eq!(reader.get("/api/jobs").status, 200);
    assert_eq!(reader.get("/api/datasets").json().as_array().unwrap().len(), 1);
    let denied = reader.post("/api/jobs", &spec(1));
    assert_eq!((denied.status, denied.code().as_str()), (403, "forbidden"), "{}", denied.body);
    let writer = anon.with_token(Some(&token(&home, TokenScope::Write)));
    assert_eq!(writer.delete("/api/datasets/corpus").status, 403);
    assert_eq!(writer.get("/api/tokens").status, 403);
    assert_eq!(home.datasets().list().unwrap().len(), 1, "a refused delete deleted");
    let admin = anon.with_token(Some(&token(&home, TokenScope::Admin)));
    let listed = admin.get("/api/tokens").json();
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert!(!listed.to_string().contains(read.split_once('.').unwrap().1), "a secret was listed");
    // A token made over the API works at once and stops at once when revoked.
    let made = admin.post("/api/tokens", &json!({"scope": "read", "name": "api"}));
    assert_eq!(made.status, 201, "{}", made.body);
    let t = made.json()["token"].as_str().unwrap().to_string();
    assert_eq!(anon.with_token(Some(&t)).get("/api/models").status, 200);
    let id = made.json()["record"]["id"].as_str().unwrap().to_string();
    assert_eq!(admin.delete(&format!("/api/tokens/{id}")).status, 200);
    assert_eq!(anon.with_token(Some(&t)).get("/api/models").status, 401);
    // EventSource-style `access_token` works for GET only.
    assert_eq!(anon.get(&format!("/api/jobs?access_token={read}")).status, 200);

    // Request ids: echoed when sent, made up otherwise.
    let echoed = reader.get_with("/api/models", &[("x-request-id", "my-id-42")]);
    assert_eq!(echoed.header("x-request-id"), Some("my-id-42"));
    let made_up = reader.get("/api/models");
    assert!(made_up.header("x-request-id").unwrap().starts_with("req_"));
    server.shutdown().unwrap();
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let (_d, home) = home();
    let cfg = ServerConfig { addr: "0.0.0.0:0".parse().unwrap(), no_auth: true, log: false, ..Default::default() };
    let e = Server::start(home.clone(), cfg).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("no_auth"), "{e}");
    // On loopback it runs, and needs no token.
    let server = start(&home, |c| c.no_auth = true);
    assert_eq!(Client::new(&server, None).get("/api/models").status, 200);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (_d, home) = home();
    let server = start(&home, |c| c.max_body = 4096);
    let c = Client::new(&server, Some(token(&home, TokenScope::Admin)));
    let jobs_before = home.training().jobs(&Default::default()).unwrap().len();

    let malformed = c.post_raw("/api/jobs", "application/json", b"{\"base\": \"tiny\",");
    assert_eq!((malformed.status, malformed.code().as_str()), (400, "invalid_config"), "{}", malformed.body);
    assert!(malformed.json()["error"]["message"].as_str().unwrap().contains("body"));

    let misspelt = c.post("/api/jobs", &json!({"base": "tiny", "dataset": "corpus", "max_stepz": 3}));
    assert_eq!((misspelt.status, misspelt.code().as_str()), (400, "invalid_config"));
    assert!(misspelt.body.contains("max_stepz"), "{}", misspelt.body);

    let unknown_base = c.post("/api/jobs", &json!({"base": "nope", "dataset": "corpus"}));
    assert_eq!(unknown_base.status, 400, "{}", unknown_base.body);

    let big = vec![b' '; 10_000];
    let too_large = c.post_raw("/api/jobs", "application/json", &big);
    assert_eq!((too_large.status, too_large.code().as_str()), (413, "payload_too_large"), "{}", too_large.body);
    let (ct, body) = multipart("big.jsonl", &vec![b'x'; 10_000], &[]);
    let upload = c.post_raw("/api/datasets", &ct, &body);
    assert_eq!((upload.status, upload.code().as_str()), (413, "payload_too_large"), "{}", upload.body);

    let unknown_model = c.post("/api/generate", &json!({"model": "no-such-model@3", "prompt": "hi"}));
    assert_eq!((unknown_model.status, unknown_model.code().as_str()), (404, "not_found"), "{}", unknown_model.body);
    let openai_unknown =
        c.post("/v1/chat/completions", &json!({"model": "ghost", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(openai_unknown.status, 404);

    // A model's id where a job's is expected.
    let model_id = home.models().resolve("tiny").unwrap().id.0;
    let other_kind = c.get(&format!("/api/jobs/{model_id}"));
    assert_eq!((other_kind.status, other_kind.code().as_str()), (404, "not_found"), "{}", other_kind.body);
    assert_eq!(c.post(&format!("/api/jobs/{model_id}/cancel"), &json!({})).status, 404);

    for path in [
        "/api/datasets/..%2F..%2Fetc%2Fpasswd",
        "/api/datasets/%2E%2E",
        "/api/models/..%2Fanneal.db",
        "/api/jobs/..%5C..%5Cx/logs",
        "/api/datasets/a%00b/preview",
    ] {
        let a = c.get(path);
        assert_eq!((a.status, a.code().as_str()), (400, "invalid_config"), "{path}: {}", a.body);
    }
    let nowhere = c.get("/api/nowhere");
    assert_eq!((nowhere.status, nowhere.code().as_str()), (404, "not_found"));
    let wrong_method = c.post("/api/stats", &json!({}));
    assert_eq!((wrong_method.status, wrong_method.code().as_str()), (405, "method_not_allowed"));
    let bad_query = c.get("/api/jobs?status=sleeping");
    assert_eq!((bad_query.status, bad_query.code().as_str()), (400, "invalid_config"), "{}", bad_query.body);
    let bad_prompt = c.post("/api/generate", &json!({"model": "tiny", "prompt": {"no": 1}}));
    assert_eq!(bad_prompt.status, 400, "{}", bad_prompt.body);

    assert_eq!(home.training().jobs(&Default::default()).unwrap().len(), jobs_before);
    assert_eq!(home.datasets().list().unwrap().len(), 1);
    // Still serving.
    assert_eq!(c.get("/health").status, 200);
}

#[test]
fn datasets_upload_with_a_preview_and_read_back() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Admin)));
    let rows: String = (0..8).map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n")).collect();
    let (ct, body) = multipart("../../evil/qa.jsonl", rows.as_bytes(), &[("name", "qa")]);
    let up = c.post_raw("/api/datasets", &ct, &body);
    assert_eq!(up.status, 201, "{}", up.body);
    let v = up.json();
    assert_eq!(v["dataset"]["name"], "qa");
    assert_eq!(v["dataset"]["format"], "completion");
    assert_eq!(v["dataset"]["num_records"], 8);
    assert_eq!(v["preview"].as_array().unwrap().len(), 5);
    assert_eq!(v["preview"][0]["prompt"], "q0");
    let id = v["dataset"]["id"].as_str().unwrap();
    assert_eq!(c.get(&format!("/api/datasets/{id}")).json()["name"], "qa");
    assert_eq!(c.get("/api/datasets/qa/preview?n=2").json().as_array().unwrap().len(), 2);
    assert_eq!(c.get("/api/datasets/qa/preview?n=0").status, 400);
    let stats = c.get("/api/datasets/qa/stats");
    assert_eq!(stats.status, 200, "{}", stats.body);
    // The same content again: a conflict naming the existing dataset; nothing added.
    let (ct, body) = multipart("again.jsonl", rows.as_bytes(), &[]);
    let dup = c.post_raw("/api/datasets", &ct, &body);
    assert_eq!((dup.status, dup.code().as_str()), (409, "duplicate_content"), "{}", dup.body);
    // A broken file: invalid_data, nothing stored.
    let (ct, body) = multipart("broken.jsonl", b"{\"text\": \"ok\"}\n{not json\n", &[]);
    let broken = c.post_raw("/api/datasets", &ct, &body);
    assert_eq!((broken.status, broken.code().as_str()), (422, "invalid_data"), "{}", broken.body);
    let (ct, body) = multipart("x.jsonl", b"{}", &[("colour", "red")]);
    assert_eq!(c.post_raw("/api/datasets", &ct, &body).status, 400);
    assert_eq!(c.get("/api/datasets").json().as_array().unwrap().len(), 2);
    assert_eq!(c.delete("/api/datasets/qa").status, 204);
    assert_eq!(c.get("/api/datasets/qa").status, 404);
}

#[test]
fn models_lineage_aliases_and_stats() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Admin)));
    let models = c.get("/api/models").json();
    assert_eq!(models[0]["name"], "tiny");
    assert_eq!(c.post("/api/models/tiny@1/aliases", &json!({"alias": "production"})).status, 200);
    let m = c.get("/api/models/tiny@production");
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.json()["aliases"], json!(["production"]));
    let aliases = c.get("/api/models/tiny/aliases").json();
    assert_eq!(aliases["history"].as_array().unwrap().len(), 1);
    let lineage = c.get("/api/models/tiny/lineage").json();
    assert_eq!(lineage["model"]["lineage"]["preset"], "nano");
    assert_eq!(lineage["ancestors"], json!([]));
    let stats = c.get("/api/stats?recent=3");
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert!(stats.json()["jobs"].is_object());
    assert_eq!(c.get("/api/stats?recent=lots").status, 400);
    assert_eq!(c.get("/api/monitors").json(), json!([]));
    assert_eq!(c.get("/api/monitors/none").status, 404);
    assert_eq!(c.delete("/api/models/tiny@production/aliases/production").status, 204);
    assert_eq!(c.get("/api/models/tiny@production").status, 404);
}

#[test]
fn cors_is_off_unless_an_origin_is_configured() {
    let (_d, home) = home();
    let off = start(&home, |c| c.no_auth = true);
    let a = Client::new(&off, None).get_with("/api/models", &[("origin", "https://app.example")]);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);

    let on = start(&home, |c| c.cors_origins = vec!["https://app.example".into()]);
    let c = Client::new(&on, None);
    let pre = c.options("/api/jobs", &[("origin", "https://app.example"), ("access-control-request-method", "POST")]);
    assert_eq!(pre.status, 204, "{}", pre.body);
    assert_eq!(pre.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(pre.header("access-control-allow-headers").unwrap().contains("authorization"));
    // The 401 of a browser request carries the header, so the page can read it.
    let denied = c.get_with("/api/jobs", &[("origin", "https://app.example")]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("access-control-allow-origin"), Some("https://app.example"));
    let other =
        c.options("/api/jobs", &[("origin", "https://evil.example"), ("access-control-request-method", "POST")]);
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_ne!(other.status, 204);
}

#[test]
fn a_slow_client_is_dropped_and_others_are_served() {
    let (_d, home) = home();
    let server = start(&home, |c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
        c.no_auth = true;
    });
    // Headers sent, the body never comes: 408.
    let mut slow_body = std::net::TcpStream::connect(server.addr()).unwrap();
    slow_body
        .write_all(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
    slow_body.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 512];
    let n = slow_body.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let mut slow = std::net::TcpStream::connect(server.addr()).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    // Meanwhile others are answered.
    assert_eq!(Client::new(&server, None).get("/health").status, 200);
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(5), "the slow connection was kept {waited:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
}

#[test]
fn metrics_are_prometheus_text() {
    let (_d, home) = home();
    let server = start(&home, |c| c.no_auth = true);
    let c = Client::new(&server, None);
    let g = c.post("/api/generate", &json!({"model": "tiny", "prompt": "hello", "max_new_tokens": 4}));
    assert_eq!(g.status, 200, "{}", g.body);
    let m = c.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for needle in [
        "# TYPE anneal_jobs gauge",
        "anneal_jobs{status=\"running\"} 0",
        "anneal_generation_duration_seconds_count 1",
        "anneal_generations_total{endpoint=\"generate\"} 1",
        "anneal_http_requests_total{code=\"200\"}",
        "anneal_generated_tokens_total 4",
    ] {
        assert!(m.body.contains(needle), "{needle} missing:\n{}", m.body);
    }
}

#[test]
fn predictions_labels_and_monitoring_reads() {
    use anneal::{CancelToken, ClassifierConfig, ImportOptions, Method, NoopSink, TrainSpec};
    let (_d, home) = home();
    let rows = (0..80).map(|i| {
        let x = (i as f64 - 40.0) / 10.0;
        Ok(json!({"x": x, "z": (i % 7) as f64, "label": if x > 0.0 { "yes" } else { "no" }}))
    });
    home.datasets().import_records(rows, &ImportOptions { name: Some("tab".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        dataset: "tab".into(),
        method: Method::Classifier(ClassifierConfig::default()),
        output_name: Some("clf".into()),
        ..Default::default()
    };
    let job = home.training().create_job(&spec).unwrap();
    home.training().run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Write)));
    let p = c.post("/api/models/clf/predict", &json!({"rows": [{"x": 3.0, "z": 1.0}, {"x": -3.0, "z": 2.0}]}));
    assert_eq!(p.status, 200, "{}", p.body);
    let preds = p.json();
    assert_eq!(preds.as_array().unwrap().len(), 2);
    let id = preds[0]["prediction_id"].as_str().unwrap();
    let l = c.post(&format!("/api/predictions/{id}/label"), &json!({"label": "yes"}));
    assert_eq!(l.status, 200, "{}", l.body);
    let bad_label = c.post(&format!("/api/predictions/{id}/label"), &json!({"label": "maybe"}));
    assert_eq!((bad_label.status, bad_label.code().as_str()), (422, "invalid_data"), "{}", bad_label.body);
    assert_eq!(c.post("/api/predictions/pred_0000/label", &json!({"label": "yes"})).status, 404);
    assert_eq!(c.get("/api/models/clf/predictions?limit=10").json().as_array().unwrap().len(), 2);
    assert_eq!(c.get("/api/models/clf/predictions?labelled=true").json().as_array().unwrap().len(), 1);
    let acc = c.get("/api/models/clf/accuracy");
    assert_eq!(acc.status, 200, "{}", acc.body);
    assert_eq!(acc.json()["labelled"], 1);
    assert_eq!(c.get("/api/models/clf/evaluations").json(), json!([]));
    assert_eq!(c.get("/api/models/clf/drift-checks").json(), json!([]));
    let t = c.get("/api/models/clf/timeline?window=5");
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(c.get("/api/models/clf/timeline?window=0").status, 400);
    let missing = c.post("/api/models/clf/predict", &json!({"rows": [1, 2]}));
    assert_eq!((missing.status, missing.code().as_str()), (400, "invalid_config"));
    assert!(missing.body.contains("rows[0]"), "{}", missing.body);
}
