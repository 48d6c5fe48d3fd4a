//! Webhook bodies: plain JSON (Standard Webhooks' envelope), Discord and Slack.

use serde_json::{json, Value};

use crate::types::{Event, FinishStatus, GateVerdict, WebhookFormat};

/// A human summary of an event: what Discord embeds, Slack blocks and the terminal show.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub title: String,
    pub description: String,
    /// RGB, e.g. `0x2ECC71`.
    pub colour: u32,
    /// (name, value) pairs, in display order.
    pub fields: Vec<(String, String)>,
}

const GREEN: u32 = 0x2ECC71;
const RED: u32 = 0xE74C3C;
const ORANGE: u32 = 0xE67E22;
const BLUE: u32 = 0x3498DB;
const AMBER: u32 = 0xF1C40F;
const GREY: u32 = 0x95A5A6;

fn f(name: &str, value: impl ToString) -> (String, String) {
    (name.to_string(), value.to_string())
}

fn num(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e-3 && x.abs() < 1e6 {
        format!("{x:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.4e}")
    }
}

fn status_colour(s: FinishStatus) -> u32 {
    match s {
        FinishStatus::Completed => GREEN,
        FinishStatus::Failed => RED,
        FinishStatus::Cancelled => GREY,
    }
}

/// The summary of `event`.
pub fn summarize(event: &Event) -> Summary {
    let (title, description, colour, fields): (String, String, u32, Vec<(String, String)>) = match event {
        Event::DriftDetected {
            monitor,
            model,
            model_id,
            signal,
            window_rows,
            drifted_columns,
            score,
            threshold,
            expected_accuracy,
        } => {
            let mut fields = vec![
                f("Model", model),
                f("Signal", signal),
                f("Score", format!("{} (threshold {})", num(*score), num(*threshold))),
                f("Window rows", window_rows),
            ];
            if !drifted_columns.is_empty() {
                fields.push(f("Drifted columns", drifted_columns.join(", ")));
            }
            if let Some(a) = expected_accuracy {
                fields.push(f("Expected accuracy", num(*a)));
            }
            fields.push(f("Model id", model_id));
            fields.push(f("Monitor", monitor));
            (
                format!("Drift detected on {model}"),
                format!("{signal} drift score {} reached the threshold {}", num(*score), num(*threshold)),
                ORANGE,
                fields,
            )
        }
        Event::RetrainStarted { monitor, model, model_id, job_id, trigger, reason } => (
            format!("Retraining {model}"),
            reason.clone(),
            BLUE,
            vec![
                f("Model", model),
                f("Trigger", trigger),
                f("Job", job_id),
                f("Model id", model_id),
                f("Monitor", monitor),
            ],
        ),
        Event::CandidateEvaluated {
            monitor,
            candidate,
            candidate_id,
            production,
            dataset_id,
            metric,
            candidate_value,
            production_value,
            metrics,
            verdict,
            reason,
        } => {
            let mut fields = vec![f("Candidate", candidate), f(metric, num(*candidate_value))];
            if let Some(p) = production {
                fields.push(f("Production", p));
            }
            if let Some(v) = production_value {
                fields.push(f(&format!("Production {metric}"), num(*v)));
            }
            fields.push(f("Verdict", verdict));
            for (k, v) in metrics.iter().filter(|(k, _)| *k != metric) {
                fields.push(f(k, num(*v)));
            }
            fields.push(f("Dataset", dataset_id));
            fields.push(f("Candidate id", candidate_id));
            if let Some(m) = monitor {
                fields.push(f("Monitor", m));
            }
            let colour = if *verdict == GateVerdict::Passed { GREEN } else { RED };
            (format!("Candidate {candidate} {verdict} the gate"), reason.clone(), colour, fields)
        }
        Event::Promoted { model, model_id, alias, previous, mode, monitor, reason } => {
            let mut fields = vec![f("Model", model), f("Alias", alias), f("Mode", mode)];
            if let Some(p) = previous {
                fields.push(f("Previous", p));
            }
            fields.push(f("Model id", model_id));
            if let Some(m) = monitor {
                fields.push(f("Monitor", m));
            }
            (format!("{model} promoted to {alias}"), reason.clone(), GREEN, fields)
        }
        Event::RolledBack { model, model_id, alias, previous, monitor, reason } => {
            let mut fields =
                vec![f("Model", model), f("Alias", alias), f("Taken out", previous), f("Model id", model_id)];
            if let Some(m) = monitor {
                fields.push(f("Monitor", m));
            }
            (format!("{alias} rolled back to {model}"), reason.clone(), AMBER, fields)
        }
        Event::MonitorError { monitor, model, job_id, error } => {
            let mut fields = vec![f("Monitor", monitor), f("Code", &error.code)];
            if let Some(m) = model {
                fields.push(f("Model", m));
            }
            if let Some(j) = job_id {
                fields.push(f("Job", j));
            }
            (format!("Monitor {monitor} failed"), error.message.clone(), RED, fields)
        }
        Event::JobStarted { job_id, total_steps, epochs } => (
            format!("Job {job_id} started"),
            format!("{total_steps} steps, {epochs} epoch(s)"),
            BLUE,
            vec![f("Job", job_id), f("Steps", total_steps), f("Epochs", epochs)],
        ),
        Event::Step { job_id, step, total_steps, loss, lr, .. } => (
            format!("Job {job_id}: step {step}/{total_steps}"),
            format!("loss {}", num(*loss)),
            GREY,
            vec![f("Loss", num(*loss)), f("Learning rate", num(*lr))],
        ),
        Event::Eval { job_id, step, metrics } => (
            format!("Job {job_id}: evaluation at step {step}"),
            metrics.iter().map(|(k, v)| format!("{k} {}", num(*v))).collect::<Vec<_>>().join(", "),
            BLUE,
            metrics.iter().map(|(k, v)| f(k, num(*v))).collect(),
        ),
        Event::Checkpoint { job_id, step, path } => (
            format!("Job {job_id}: checkpoint at step {step}"),
            path.clone(),
            GREY,
            vec![f("Job", job_id), f("Step", step)],
        ),
        Event::Log { job_id, level, message } => {
            (format!("Job {job_id}: {level}"), message.clone(), GREY, vec![f("Job", job_id), f("Level", level)])
        }
        Event::JobFinished { job_id, status, model_id, error } => {
            let mut fields = vec![f("Job", job_id), f("Status", status)];
            if let Some(m) = model_id {
                fields.push(f("Model id", m));
            }
            if let Some(e) = error {
                fields.push(f("Error", &e.code));
            }
            let description = error.as_ref().map_or_else(|| format!("job {status}"), |e| e.message.clone());
            (format!("Job {job_id} {status}"), description, status_colour(*status), fields)
        }
        Event::TaskStarted { task, name, total, unit } => (
            format!("{task} {name} started"),
            total.map_or_else(String::new, |t| format!("{t} {unit}")),
            BLUE,
            vec![f("Task", task), f("Name", name)],
        ),
        Event::TaskProgress { task, done, total } => (
            format!("{task}: {done}{}", total.map_or_else(String::new, |t| format!("/{t}"))),
            String::new(),
            GREY,
            Vec::new(),
        ),
        Event::TaskFinished { task, status, id, error } => {
            let mut fields = vec![f("Task", task), f("Status", status)];
            if let Some(i) = id {
                fields.push(f("Id", i));
            }
            let description = error.as_ref().map_or_else(|| format!("{task} {status}"), |e| e.message.clone());
            (format!("{task} {status}"), description, status_colour(*status), fields)
        }
    };
    Summary { title, description, colour, fields }
}

/// Cuts `s` to at most `max` characters (an ellipsis marks the cut).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The body sent for `event` as message `id`, enqueued at `timestamp` (RFC 3339).
/// Discord's and Slack's length limits are respected (texts are cut, not refused).
pub fn render(format: WebhookFormat, id: &str, timestamp: &str, event: &Event) -> String {
    let value = match format {
        WebhookFormat::Json => json!({
            "id": id,
            "type": event.type_name(),
            "timestamp": timestamp,
            "data": event.to_json(),
        }),
        WebhookFormat::Discord => discord(timestamp, event),
        WebhookFormat::Slack => slack(event),
    };
    value.to_string()
}

fn discord(timestamp: &str, event: &Event) -> Value {
    let s = summarize(event);
    // Discord: title 256, description 4096, 25 fields of name 256 / value 1024.
    let fields: Vec<Value> = s
        .fields
        .iter()
        .take(25)
        .map(|(n, v)| json!({"name": cut(n, 256), "value": cut(if v.is_empty() { "-" } else { v }, 1024), "inline": v.len() <= 40}))
        .collect();
    let mut embed = json!({
        "title": cut(&s.title, 256),
        "color": s.colour,
        "fields": fields,
        "timestamp": timestamp,
        "footer": {"text": format!("anneal · {}", event.type_name())},
    });
    if !s.description.is_empty() {
        embed["description"] = json!(cut(&s.description, 4096));
    }
    json!({"username": "anneal", "embeds": [embed]})
}

fn slack(event: &Event) -> Value {
    let s = summarize(event);
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text", "text": cut(&s.title, 150)}})];
    if !s.description.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&s.description, 3000)}}));
    }
    // Slack: at most 10 fields per section, 2000 characters each.
    for chunk in s.fields.chunks(10) {
        let fields: Vec<Value> =
            chunk.iter().map(|(n, v)| json!({"type": "mrkdwn", "text": cut(&format!("*{n}*\n{v}"), 2000)})).collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("anneal · {}", event.type_name())}]}),
    );
    let text = if s.description.is_empty() { s.title.clone() } else { format!("{}: {}", s.title, s.description) };
    json!({"text": cut(&text, 3000), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::ErrorInfo;

    pub(crate) fn promoted() -> Event {
        Event::Promoted {
            model: "churn@3".into(),
            model_id: "mdl_1".into(),
            alias: "production".into(),
            previous: Some("churn@2".into()),
            mode: "auto".into(),
            monitor: Some("mon_1".into()),
            reason: "accuracy 0.91 beat 0.86 by more than 0.01".into(),
        }
    }

    #[test]
    fn json_body_wraps_the_event_in_an_envelope() {
        let body = render(WebhookFormat::Json, "msg_1", "2026-01-01T00:00:00.000Z", &promoted());
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["type"], "promoted");
        assert_eq!(v["timestamp"], "2026-01-01T00:00:00.000Z");
        let back: Event = serde_json::from_value(v["data"].clone()).unwrap();
        assert_eq!(back, promoted());
    }

    #[test]
    fn discord_embed_has_title_colour_and_fields() {
        let v: Value = serde_json::from_str(&render(WebhookFormat::Discord, "m", "t", &promoted())).unwrap();
        let e = &v["embeds"][0];
        assert_eq!(e["title"], "churn@3 promoted to production");
        assert_eq!(e["color"], GREEN);
        assert_eq!(e["description"], "accuracy 0.91 beat 0.86 by more than 0.01");
        let names: Vec<&str> = e["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Model", "Alias", "Mode", "Previous", "Model id", "Monitor"]);
        let err = Event::MonitorError {
            monitor: "mon_1".into(),
            model: None,
            job_id: None,
            error: ErrorInfo { code: "io".into(), message: "x".repeat(5000) },
        };
        let v: Value = serde_json::from_str(&render(WebhookFormat::Discord, "m", "t", &err)).unwrap();
        assert_eq!(v["embeds"][0]["color"], RED);
        assert_eq!(v["embeds"][0]["description"].as_str().unwrap().chars().count(), 4096);
    }

    #[test]
    fn slack_message_has_text_and_blocks() {
        let mut metrics = BTreeMap::new();
        for i in 0..15 {
            metrics.insert(format!("m{i:02}"), i as f64 / 10.0);
        }
        let ev = Event::CandidateEvaluated {
            monitor: None,
            candidate: "churn@4".into(),
            candidate_id: "mdl_4".into(),
            production: Some("churn@3".into()),
            dataset_id: "ds_1".into(),
            metric: "accuracy".into(),
            candidate_value: 0.8,
            production_value: Some(0.9),
            metrics,
            verdict: GateVerdict::Failed,
            reason: "below production".into(),
        };
        let v: Value = serde_json::from_str(&render(WebhookFormat::Slack, "m", "t", &ev)).unwrap();
        assert_eq!(v["text"], "Candidate churn@4 failed the gate: below production");
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], "Candidate churn@4 failed the gate");
        let sections: Vec<&Value> = blocks.iter().filter(|b| b.get("fields").is_some()).collect();
        // 5 + 15 metrics + dataset + candidate id = 22 fields -> 3 sections of <= 10.
        assert_eq!(sections.len(), 3);
        assert!(sections.iter().all(|s| s["fields"].as_array().unwrap().len() <= 10));
        assert_eq!(blocks.last().unwrap()["type"], "context");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(0.91), "0.91");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(1e-7), "1.0000e-7");
    }
}
