#![allow(clippy::unwrap_used)]
//! Webhooks end to end, against a real HTTP receiver on 127.0.0.1 (a `TcpListener` in
//! the test): signing, formats, retries, `Retry-After`, an offline receiver, racing
//! deliverers, giving up, and re-sends under the same `webhook-id`.

use crate::common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anneal::notify::{sign, verify_signature};
use anneal::{
    DeliveryFilter, DeliveryStatus, ErrorInfo, Event, EventSink, FinishStatus, GateVerdict, Home, WebhookFormat,
    WebhookOptions,
};
use serde_json::Value;

// ---------------------------------------------------------------- the receiver

/// What the receiver answers to one request.
#[derive(Clone)]
enum Reply {
    /// This status, with these extra header lines.
    Status(u16, &'static str),
    /// Read the request, then hold the connection without answering for this long.
    Hang(Duration),
}

#[derive(Debug, Clone)]
struct Request {
    headers: HashMap<String, String>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// An HTTP/1.1 receiver: one thread per connection, scripted replies (then 200).
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let r =
            Receiver { addr, requests: Arc::default(), script: Arc::default(), stop: Arc::new(AtomicBool::new(false)) };
        let (requests, script, stop) = (r.requests.clone(), r.script.clone(), r.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (requests, script) = (requests.clone(), script.clone());
                        std::thread::spawn(move || serve(stream, &requests, &script));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn then(&self, reply: Reply) -> &Self {
        self.script.lock().unwrap().push_back(reply);
        self
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, requests: &Mutex<Vec<Request>>, script: &Mutex<VecDeque<Reply>>) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /hook HTTP/1.1"), "{line}");
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Status(200, ""));
    requests.lock().unwrap().push(Request { headers, body: String::from_utf8(body).unwrap() });
    let mut stream = stream;
    match reply {
        Reply::Status(code, extra) => {
            let text = if code == 200 { "ok" } else { "nope" };
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{text}",
                text.len()
            );
        }
        Reply::Hang(d) => std::thread::sleep(d),
    }
}

// ---------------------------------------------------------------- helpers

fn promoted(n: u32) -> Event {
    Event::Promoted {
        model: format!("churn@{n}"),
        model_id: format!("mdl_{n}"),
        alias: "production".into(),
        previous: (n > 1).then(|| format!("churn@{}", n - 1)),
        mode: "auto".into(),
        monitor: Some("mon_1".into()),
        reason: format!("accuracy 0.9{n} beat production"),
    }
}

fn drift() -> Event {
    Event::DriftDetected {
        monitor: "mon_1".into(),
        model: "churn@2".into(),
        model_id: "mdl_2".into(),
        signal: "features".into(),
        window_rows: 500,
        drifted_columns: vec!["age".into(), "plan".into()],
        score: 0.6,
        threshold: 0.5,
        expected_accuracy: Some(0.71),
    }
}

fn home() -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    (d, h)
}

fn fast(format: WebhookFormat) -> WebhookOptions {
    WebhookOptions { format, timeout_ms: 2_000, retry_base_ms: 1_000, retry_max_ms: 60_000, ..Default::default() }
}

fn later(t: SystemTime, secs: u64) -> SystemTime {
    t + Duration::from_secs(secs)
}

fn delivered(home: &Home) -> usize {
    let f = DeliveryFilter { status: Some(DeliveryStatus::Delivered), ..Default::default() };
    home.webhooks().deliveries(&f).unwrap().len()
}

// ---------------------------------------------------------------- tests

#[test]
fn signing_matches_python_hmac() {
    let text = std::fs::read_to_string(common::fixtures().join("webhook_signatures.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    for c in v["cases"].as_array().unwrap() {
        let s = |k: &str| c[k].as_str().unwrap();
        let ts: i64 = s("timestamp").parse().unwrap();
        assert_eq!(sign(s("secret"), s("id"), ts, s("body").as_bytes()).unwrap(), s("signature"), "{c}");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(ts as u64);
        anneal::notify::verify_signature_at(
            s("secret"),
            s("id"),
            s("timestamp"),
            s("body").as_bytes(),
            s("signature"),
            Duration::from_secs(1),
            at,
        )
        .unwrap();
    }
}

#[test]
fn a_signed_json_delivery_verifies_and_carries_the_event() {
    let rx = Receiver::start();
    let (_d, home) = home();
    let wh = home.webhooks();
    let hook = wh.add(&rx.url(), &fast(WebhookFormat::Json)).unwrap();
    assert!(hook.secret.starts_with("whsec_"));
    let ids = wh.enqueue(&promoted(3)).unwrap();
    assert_eq!(ids.len(), 1);
    let report = wh.deliver_due(SystemTime::now()).unwrap();
    assert_eq!((report.attempted, report.delivered, report.retried, report.failed), (1, 1, 0, 0));

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("webhook-id"), ids[0]);
    verify_signature(
        &hook.secret,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.body.as_bytes(),
        r.header("webhook-signature"),
        Duration::from_secs(60),
    )
    .unwrap();
    // A byte changed in transit fails verification.
    let tampered = r.body.replace("churn@3", "churn@4");
    let e = verify_signature(
        &hook.secret,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        tampered.as_bytes(),
        r.header("webhook-signature"),
        Duration::from_secs(60),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_data");

    let body = r.json();
    assert_eq!(body["id"], ids[0].as_str());
    assert_eq!(body["type"], "promoted");
    let event: Event = serde_json::from_value(body["data"].clone()).unwrap();
    assert_eq!(event, promoted(3));

    let d = wh.delivery(&ids[0]).unwrap();
    assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Delivered, 1, Some(200)));
    assert!(d.delivered_at.is_some());
    assert_eq!(d.body, r.body);
    // Delivered rows are never sent again.
    assert_eq!(wh.deliver_due(later(SystemTime::now(), 86_400)).unwrap().attempted, 0);
    assert_eq!(rx.requests().len(), 1);
}

#[test]
fn discord_and_slack_get_their_own_shapes() {
    let rx = Receiver::start();
    let (_d, home) = home();
    let wh = home.webhooks();
    let discord = wh.add(&rx.url(), &fast(WebhookFormat::Discord)).unwrap();
    let slack = wh.add(&rx.url(), &fast(WebhookFormat::Slack)).unwrap();
    let ids = wh.enqueue(&drift()).unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(wh.deliver_due(SystemTime::now()).unwrap().delivered, 2);
    let reqs = rx.requests();
    let by_id: BTreeMap<&str, &Request> = reqs.iter().map(|r| (r.header("webhook-id"), r)).collect();
    let d = wh.delivery(&ids[0]).unwrap();
    let (discord_req, slack_req) = if d.webhook_id == discord.id {
        (by_id[ids[0].as_str()], by_id[ids[1].as_str()])
    } else {
        (by_id[ids[1].as_str()], by_id[ids[0].as_str()])
    };

    let v = discord_req.json();
    let embed = &v["embeds"][0];
    assert_eq!(embed["title"], "Drift detected on churn@2");
    assert_eq!(embed["color"], 0xE67E22);
    assert!(embed["description"].as_str().unwrap().contains("0.6"));
    let fields: BTreeMap<&str, &str> = embed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["value"].as_str().unwrap()))
        .collect();
    assert_eq!(fields["Drifted columns"], "age, plan");
    assert_eq!(fields["Window rows"], "500");
    assert_eq!(fields["Expected accuracy"], "0.71");
    assert_eq!(embed["footer"]["text"], "anneal · drift_detected");

    let v = slack_req.json();
    assert!(v["text"].as_str().unwrap().starts_with("Drift detected on churn@2"));
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    let field_texts: Vec<&str> =
        blocks.iter().filter_map(|b| b["fields"].as_array()).flatten().map(|f| f["text"].as_str().unwrap()).collect();
    assert!(field_texts.contains(&"*Drifted columns*\nage, plan"), "{field_texts:?}");
    // Both are signed with their own secret.
    for (req, secret) in [(discord_req, &discord.secret), (slack_req, &slack.secret)] {
        verify_signature(
            secret,
            req.header("webhook-id"),
            req.header("webhook-timestamp"),
            req.body.as_bytes(),
            req.header("webhook-signature"),
            Duration::from_secs(60),
        )
        .unwrap();
    }
}

#[test]
fn a_500_is_retried_after_the_backoff_under_the_same_id() {
    let rx = Receiver::start();
    rx.then(Reply::Status(500, ""));
    let (_d, home) = home();
    let wh = home.webhooks();
    wh.add(&rx.url(), &fast(WebhookFormat::Json)).unwrap();
    let id = wh.enqueue(&promoted(1)).unwrap().remove(0);
    let t0 = SystemTime::now();
    let r = wh.deliver_due(t0).unwrap();
    assert_eq!((r.attempted, r.retried), (1, 1));
    let d = wh.delivery(&id).unwrap();
    assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Pending, 1, Some(500)));
    assert!(d.last_error.as_deref().unwrap().contains("HTTP 500"), "{d:?}");
    // First retry after 0.5 to 1 s (base 1 s, jitter in its upper half): not due yet.
    assert_eq!(wh.deliver_due(t0 + Duration::from_millis(499)).unwrap().attempted, 0);
    let r = wh.deliver_due(later(t0, 1)).unwrap();
    assert_eq!((r.attempted, r.delivered), (1, 1));
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("webhook-id"), id);
    assert_eq!(reqs[1].header("webhook-id"), id);
    assert_eq!(reqs[0].body, reqs[1].body);
    let d = wh.delivery(&id).unwrap();
    assert_eq!((d.status, d.attempts, d.last_status, d.last_error), (DeliveryStatus::Delivered, 2, Some(200), None));
}

#[test]
fn retry_after_is_honoured_over_the_backoff() {
    let rx = Receiver::start();
    rx.then(Reply::Status(429, "Retry-After: 3\r\n")).then(Reply::Status(503, "Retry-After: 0\r\n"));
    let (_d, home) = home();
    let wh = home.webhooks();
    // A backoff of ten minutes: only Retry-After can make the retry come sooner.
    let opts = WebhookOptions { retry_base_ms: 600_000, retry_max_ms: 3_600_000, ..fast(WebhookFormat::Json) };
    wh.add(&rx.url(), &opts).unwrap();
    let id = wh.enqueue(&promoted(1)).unwrap().remove(0);
    let t0 = SystemTime::now();
    assert_eq!(wh.deliver_due(t0).unwrap().retried, 1);
    assert_eq!(wh.delivery(&id).unwrap().last_status, Some(429));
    assert_eq!(wh.deliver_due(t0 + Duration::from_millis(2_999)).unwrap().attempted, 0);
    // 503 with Retry-After: 0 is due again at once (but not twice in one pass).
    let t1 = later(t0, 3);
    let r = wh.deliver_due(t1).unwrap();
    assert_eq!((r.attempted, r.retried), (1, 1));
    let r = wh.deliver_due(t1).unwrap();
    assert_eq!((r.attempted, r.delivered), (1, 1));
    assert_eq!(rx.requests().len(), 3);
}

#[test]
fn an_offline_receiver_loses_nothing_and_gets_each_event_once() {
    // A port with nobody listening: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_d, home) = home();
    let wh = home.webhooks();
    wh.add(&format!("http://127.0.0.1:{port}/hook"), &fast(WebhookFormat::Json)).unwrap();
    let ids: Vec<String> = (1..=3).flat_map(|n| wh.enqueue(&promoted(n)).unwrap()).collect();
    let t0 = SystemTime::now();
    let r = wh.deliver_due(t0).unwrap();
    assert_eq!((r.attempted, r.retried, r.delivered), (3, 3, 0));
    for id in &ids {
        let d = wh.delivery(id).unwrap();
        assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Pending, 1, None));
        assert!(d.last_error.is_some());
    }
    // Still down at the second attempt: backoff grows (1-2 s after the 2nd failure).
    let r = wh.deliver_due(later(t0, 1)).unwrap();
    assert_eq!(r.retried, 3);
    assert_eq!(wh.deliver_due(later(t0, 1) + Duration::from_millis(999)).unwrap().attempted, 0);
    // The receiver comes up on that port.
    let rx = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let r = wh.deliver_due(later(t0, 3)).unwrap();
    assert_eq!((r.attempted, r.delivered), (3, 3));
    assert_eq!(wh.deliver_due(later(t0, 3600)).unwrap().attempted, 0);
    let mut got: Vec<String> = rx.requests().iter().map(|r| r.header("webhook-id").to_string()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    // Each with its own event (retries are due in jittered order, not enqueue order).
    let mut models: Vec<String> =
        rx.requests().iter().map(|r| r.json()["data"]["model"].as_str().unwrap().into()).collect();
    models.sort();
    assert_eq!(models, ["churn@1", "churn@2", "churn@3"]);
}

#[test]
fn racing_deliverers_send_each_id_once() {
    let rx = Receiver::start();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("home");
    let a = Home::open(&dir).unwrap();
    a.webhooks().add(&rx.url(), &fast(WebhookFormat::Json)).unwrap();
    let n = 24;
    for i in 0..n {
        a.webhooks().enqueue(&promoted(i)).unwrap();
    }
    // Two handles on one home, as two processes would have, plus two threads on one.
    let b = Home::open(&dir).unwrap();
    let now = SystemTime::now();
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = [a.clone(), a.clone(), b.clone(), b]
            .into_iter()
            .map(|h| s.spawn(move || h.webhooks().deliver_due(now).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(reports.iter().map(|r| r.delivered).sum::<u32>(), n);
    assert_eq!(reports.iter().map(|r| r.attempted).sum::<u32>(), n);
    let mut ids: Vec<String> = rx.requests().iter().map(|r| r.header("webhook-id").to_string()).collect();
    assert_eq!(ids.len(), n as usize);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n as usize, "an id was sent twice");
    assert_eq!(delivered(&a), n as usize);
}

#[test]
fn max_attempts_marks_the_delivery_failed() {
    let rx = Receiver::start();
    for _ in 0..5 {
        rx.then(Reply::Status(503, ""));
    }
    let (_d, home) = home();
    let wh = home.webhooks();
    let hook = wh.add(&rx.url(), &WebhookOptions { max_attempts: 3, ..fast(WebhookFormat::Json) }).unwrap();
    let id = wh.enqueue(&promoted(1)).unwrap().remove(0);
    let t0 = SystemTime::now();
    let mut failed = 0;
    for h in 0..5 {
        failed += wh.deliver_due(later(t0, h * 3600)).unwrap().failed;
    }
    assert_eq!(failed, 1);
    assert_eq!(rx.requests().len(), 3);
    let d = wh.delivery(&id).unwrap();
    assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Failed, 3, Some(503)));
    assert!(d.last_error.as_deref().unwrap().contains("HTTP 503: nope"), "{d:?}");

    // 410 Gone gives up at once.
    rx.script.lock().unwrap().clear();
    rx.then(Reply::Status(410, ""));
    let id2 = wh.enqueue(&promoted(2)).unwrap().remove(0);
    assert_eq!(wh.deliver_due(later(t0, 86_400)).unwrap().failed, 1);
    assert_eq!(wh.delivery(&id2).unwrap().status, DeliveryStatus::Failed);

    // Failed rows can be put back; they keep their id.
    assert_eq!(wh.retry_failed(Some(&hook.id)).unwrap(), 2);
    assert_eq!(wh.deliver_due(later(SystemTime::now(), 1)).unwrap().delivered, 2);
    let last: Vec<String> = rx.requests()[4..].iter().map(|r| r.header("webhook-id").to_string()).collect();
    assert_eq!(last, [id, id2]);
}

#[test]
fn an_answer_lost_in_transit_is_resent_under_the_same_id() {
    // The receiver gets the request but its answer never arrives (the client times
    // out): as after a crash between sending and bookkeeping, the row is sent again
    // with the same webhook-id, which is what receivers deduplicate on.
    let rx = Receiver::start();
    rx.then(Reply::Hang(Duration::from_millis(1500)));
    let (_d, home) = home();
    let wh = home.webhooks();
    wh.add(&rx.url(), &WebhookOptions { timeout_ms: 300, ..fast(WebhookFormat::Json) }).unwrap();
    let id = wh.enqueue(&promoted(1)).unwrap().remove(0);
    let t0 = SystemTime::now();
    assert_eq!(wh.deliver_due(t0).unwrap().retried, 1);
    let d = wh.delivery(&id).unwrap();
    assert_eq!((d.status, d.last_status), (DeliveryStatus::Pending, None));
    assert_eq!(wh.deliver_due(later(t0, 60)).unwrap().delivered, 1);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("webhook-id"), reqs[1].header("webhook-id"));
    assert_eq!(reqs[0].body, reqs[1].body);
}

#[test]
fn filters_choose_the_events_each_webhook_gets() {
    let rx = Receiver::start();
    let (_d, home) = home();
    let wh = home.webhooks();
    let only = WebhookOptions { events: vec!["promoted".into(), "rolled_back".into()], ..fast(WebhookFormat::Json) };
    let narrow = wh.add(&rx.url(), &only).unwrap();
    let all = wh.add(&rx.url(), &fast(WebhookFormat::Json)).unwrap();
    assert_eq!(wh.enqueue(&drift()).unwrap().len(), 1);
    assert_eq!(wh.enqueue(&promoted(1)).unwrap().len(), 2);
    let rows = |w: &str| {
        wh.deliveries(&DeliveryFilter { webhook_id: Some(w.into()), ..Default::default() })
            .unwrap()
            .iter()
            .map(|d| d.event_type.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&narrow.id), ["promoted"]);
    assert_eq!(rows(&all.id), ["drift_detected", "promoted"]);

    // A run's sink: only the types it names go to the outbox; progress never by default.
    let mut sink = wh.sink(&["monitor_error", "job_finished"]).unwrap();
    let err = Event::MonitorError {
        monitor: "mon_1".into(),
        model: None,
        job_id: Some("job_1".into()),
        error: ErrorInfo { code: "io".into(), message: "disk full".into() },
    };
    let step = Event::Step {
        job_id: "job_1".into(),
        epoch: 0,
        step: 1,
        total_steps: 2,
        loss: 1.0,
        lr: 1e-3,
        tokens_per_sec: 1.0,
        progress: 0.5,
        sample: None,
        image: None,
    };
    let fin =
        Event::JobFinished { job_id: "job_1".into(), status: FinishStatus::Completed, model_id: None, error: None };
    for e in [&step, &err, &promoted(2), &fin] {
        sink.on_event(e).unwrap();
    }
    assert_eq!(rows(&all.id), ["drift_detected", "promoted", "monitor_error", "job_finished"]);
    let mut every = wh.sink(&[]).unwrap();
    every.on_event(&step).unwrap();
    every.on_event(&fin).unwrap();
    assert_eq!(rows(&all.id).len(), 5);
    assert_eq!(wh.sink(&["stepz"]).unwrap_err().code(), "invalid_config");

    // narrow: promoted; all: drift, promoted, monitor_error, job_finished twice.
    assert_eq!(wh.deliver_due(SystemTime::now()).unwrap().delivered, 6);
    assert_eq!(rx.requests().len(), 6);
}

#[test]
fn bad_webhooks_are_refused_naming_the_field_and_nothing_is_stored() {
    let (_d, home) = home();
    let wh = home.webhooks();
    let o = WebhookOptions::default();
    let cases: Vec<(&str, WebhookOptions, &str)> = vec![
        ("ftp://example.com/hook", o.clone(), "url"),
        ("file:///etc/passwd", o.clone(), "url"),
        ("example.com/hook", o.clone(), "url"),
        ("http://", o.clone(), "url"),
        ("", o.clone(), "url"),
        ("https://example.com/hook", WebhookOptions { secret: Some("hunter2".into()), ..o.clone() }, "secret"),
        ("https://example.com/hook", WebhookOptions { secret: Some("whsec_AAAA".into()), ..o.clone() }, "secret"),
        ("https://example.com/hook", WebhookOptions { events: vec!["promotion".into()], ..o.clone() }, "events"),
        ("https://example.com/hook", WebhookOptions { max_attempts: 0, ..o.clone() }, "max_attempts"),
        ("https://example.com/hook", WebhookOptions { timeout_ms: 0, ..o.clone() }, "timeout_ms"),
    ];
    for (url, opts, field) in cases {
        let e = wh.add(url, &opts).unwrap_err();
        assert_eq!(e.code(), "invalid_config", "{url}: {e}");
        assert!(e.to_string().contains(&format!("`{field}`")), "{url}: {e}");
    }
    assert!(wh.list().unwrap().is_empty());
    assert_eq!(wh.get("wh_nope").unwrap_err().code(), "not_found");
    assert_eq!(wh.remove("wh_nope").unwrap_err().code(), "not_found");
    // Options from JSON (what the bindings pass) refuse unknown keys.
    let e = serde_json::from_value::<WebhookOptions>(serde_json::json!({"formatt": "discord"})).unwrap_err();
    assert!(e.to_string().contains("formatt"), "{e}");
}

#[test]
fn webhooks_persist_and_removing_one_drops_its_pending_rows() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("home");
    let secret = anneal::notify::generate_secret();
    let id = {
        let home = Home::open(&dir).unwrap();
        let opts = WebhookOptions {
            secret: Some(secret.clone()),
            events: vec!["promoted".into()],
            ..fast(WebhookFormat::Slack)
        };
        let w = home.webhooks().add("https://hooks.slack.com/services/T/B/x", &opts).unwrap();
        home.webhooks().enqueue(&promoted(1)).unwrap();
        w.id
    };
    let home = Home::open(&dir).unwrap();
    let wh = home.webhooks();
    let w = wh.get(&id).unwrap();
    assert_eq!(
        (w.format, w.secret.as_str(), w.events.as_slice()),
        (WebhookFormat::Slack, secret.as_str(), &["promoted".to_string()][..])
    );
    assert_eq!(wh.list().unwrap().len(), 1);
    assert_eq!(wh.deliveries(&DeliveryFilter::default()).unwrap().len(), 1);
    wh.remove(&id).unwrap();
    assert!(wh.list().unwrap().is_empty());
    assert!(wh.deliveries(&DeliveryFilter::default()).unwrap().is_empty());
}

#[test]
fn a_spawned_deliverer_sends_in_the_background_until_stopped() {
    let rx = Receiver::start();
    let (_d, home) = home();
    let wh = home.webhooks();
    wh.add(&rx.url(), &fast(WebhookFormat::Json)).unwrap();
    let deliverer = wh.spawn(Duration::from_millis(20)).unwrap();
    wh.enqueue(&promoted(1)).unwrap();
    let verdict = Event::CandidateEvaluated {
        monitor: Some("mon_1".into()),
        candidate: "churn@2".into(),
        candidate_id: "mdl_2".into(),
        production: Some("churn@1".into()),
        dataset_id: "ds_1".into(),
        metric: "accuracy".into(),
        candidate_value: 0.93,
        production_value: Some(0.88),
        metrics: BTreeMap::from([("accuracy".to_string(), 0.93), ("f1_macro".to_string(), 0.91)]),
        verdict: GateVerdict::Passed,
        reason: "0.93 >= floor 0.8 and beats 0.88 by 0.05 > margin 0.01".into(),
    };
    wh.enqueue(&verdict).unwrap();
    let start = std::time::Instant::now();
    while delivered(&home) < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "not delivered in 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    deliverer.stop().unwrap();
    // Stopped: a new event stays pending.
    wh.enqueue(&promoted(3)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(delivered(&home), 2);
    assert_eq!(rx.requests().len(), 2);
    assert_eq!(wh.spawn(Duration::ZERO).unwrap_err().code(), "invalid_config");
}

#[test]
fn the_new_events_round_trip_through_json() {
    let events = [
        drift(),
        Event::RetrainStarted {
            monitor: "mon_1".into(),
            model: "churn@2".into(),
            model_id: "mdl_2".into(),
            job_id: "job_9".into(),
            trigger: "drift".into(),
            reason: "0.6 of the columns drifted".into(),
        },
        promoted(1),
        Event::RolledBack {
            model: "churn@1".into(),
            model_id: "mdl_1".into(),
            alias: "production".into(),
            previous: "churn@2".into(),
            monitor: None,
            reason: "manual".into(),
        },
    ];
    let tags = ["drift_detected", "retrain_started", "promoted", "rolled_back"];
    for (e, tag) in events.iter().zip(tags) {
        let v = e.to_json();
        assert_eq!(v["type"], tag);
        assert_eq!(e.type_name(), tag);
        assert!(Event::TYPE_NAMES.contains(&tag));
        assert_eq!(&serde_json::from_value::<Event>(v).unwrap(), e);
    }
    // Absent options are omitted, not null.
    let v = promoted(1).to_json();
    assert!(v.get("previous").is_none());
}
