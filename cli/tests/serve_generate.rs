//! `anneal serve` generation: `/api/generate` (JSON and SSE), the OpenAI-compatible
//! `/v1` endpoints (streaming and not), adapters per request, the concurrency limit.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};

use crate::serve_support::*;
use anneal::TokenScope;
use serde_json::{json, Value};

#[test]
fn generate_answers_json_or_streams_chunks() {
    let (_d, home) = home();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Write)));
    let g =
        c.post("/api/generate", &json!({"model": "tiny", "prompt": "hello", "max_new_tokens": 6, "ignore_eos": true}));
    assert_eq!(g.status, 200, "{}", g.body);
    let v = g.json();
    assert_eq!(v["model"], "tiny@1");
    assert_eq!(v["generated_tokens"], 6);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["id"].is_string(), "recorded: {v}");
    // Chat messages as the prompt.
    let chat = c.post(
        "/api/generate",
        &json!({"model": "tiny@1", "prompt": [{"role": "user", "content": "hi"}], "max_new_tokens": 3}),
    );
    assert_eq!(chat.status, 200, "{}", chat.body);

    let body = json!({"model": "tiny", "prompt": "hello", "max_new_tokens": 8, "ignore_eos": true, "stream": true});
    let events: Vec<Value> =
        c.sse("/api/generate", Some(&body), |_| false).iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "done", "{events:?}");
    let text: String = events.iter().filter(|e| e["type"] == "chunk").map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(text, last["generation"]["text"].as_str().unwrap());
    assert_eq!(last["generation"]["generated_tokens"], 8);
    // Greedy decoding: the streamed text is the JSON answer's.
    let same =
        c.post("/api/generate", &json!({"model": "tiny", "prompt": "hello", "max_new_tokens": 8, "ignore_eos": true}));
    assert_eq!(same.json()["text"], last["generation"]["text"]);
    // A setting the core refuses is an HTTP error before any stream starts.
    let bad = c.post("/api/generate", &json!({"model": "tiny", "prompt": "x", "stream": true, "top_p": 7.0}));
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_config"), "{}", bad.body);
    let unknown = c.post("/api/generate", &json!({"model": "tiny", "prompt": "x", "temprature": 1.0}));
    assert!(unknown.status == 400 && unknown.body.contains("temprature"), "{}", unknown.body);
    // Recorded calls are listed.
    let rows = c.get("/api/generations?model=tiny&limit=10").json();
    assert!(rows.as_array().unwrap().len() >= 3, "{rows}");
    assert!(c.get("/api/models/tiny/usage").json()["calls"].as_u64().unwrap() >= 3);
}

#[test]
fn openai_endpoints_answer_in_openai_shapes() {
    let (_d, home) = home();
    home.models().set_alias("tiny@1", "production").unwrap();
    let server = start(&home, |_| {});
    let c = Client::new(&server, Some(token(&home, TokenScope::Write)));
    let models = c.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny@1", "tiny@production"]);
    assert_eq!(c.get("/v1/models/tiny@production").json()["id"], "tiny@production");

    let req = json!({"model": "tiny@production", "messages": [{"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 5, "temperature": 0});
    let a = c.post("/v1/chat/completions", &req);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny@production");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(matches!(v["choices"][0]["finish_reason"].as_str(), Some("stop" | "length")));
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = c.sse("/v1/chat/completions", Some(&streamed), |_| false);
    assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"), "{chunks:?}");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|c| serde_json::from_str(c).unwrap()).collect();
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(parsed.iter().all(|p| p["object"] == "chat.completion.chunk"));
    let text: String =
        parsed.iter().filter_map(|p| p["choices"].get(0)?["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap(), "greedy: same text streamed");
    assert_eq!(parsed.last().unwrap()["usage"], v["usage"]);

    let done =
        c.post("/v1/completions", &json!({"model": "tiny", "prompt": "once upon", "max_tokens": 4, "echo": true}));
    assert_eq!(done.status, 200, "{}", done.body);
    let d = done.json();
    assert_eq!(d["object"], "text_completion");
    assert!(d["choices"][0]["text"].as_str().unwrap().starts_with("once upon"));
    let cs = c.sse(
        "/v1/completions",
        Some(&json!({"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": true})),
        |_| false,
    );
    assert_eq!(cs.last().map(String::as_str), Some("[DONE]"));
    // Sampling with a seed repeats.
    let sampled = json!({"model": "tiny", "prompt": "abc", "max_tokens": 8, "temperature": 1.0, "seed": 7});
    let (s1, s2) = (c.post("/v1/completions", &sampled).json(), c.post("/v1/completions", &sampled).json());
    assert_eq!(s1["choices"][0]["text"], s2["choices"][0]["text"]);

    for (bad, field) in [
        (json!({"model": "tiny", "messages": []}), "messages"),
        (json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}), "n"),
        (json!({"messages": [{"role": "user", "content": "x"}]}), "model"),
        (json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}), "temperature"),
    ] {
        let a = c.post("/v1/chat/completions", &bad);
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
        assert!(a.json()["error"]["message"].as_str().unwrap().contains(field), "{}", a.body);
    }
}

#[test]
fn adapters_apply_per_request_on_their_loaded_base() {
    let (_d, home) = home();
    let engine = home.training();
    let mut spec: anneal::TrainSpec = anneal::options_from_json(spec(2)).unwrap();
    spec.method = anneal::options_from_json::<anneal::TrainSpec>(json!({"method": {"lora": {"r": 4}}})).unwrap().method;
    spec.output_name = Some("ada".into());
    let job = engine.create_job(&spec).unwrap();
    let report = engine.spawn(&job.id).unwrap().wait().unwrap();
    let server = start(&home, |c| c.no_auth = true);
    let c = Client::new(&server, None);
    let by_name = c.post("/v1/completions", &json!({"model": "ada@1", "prompt": "hi", "max_tokens": 3}));
    assert_eq!(by_name.status, 200, "{}", by_name.body);
    let by_field =
        c.post("/api/generate", &json!({"model": "tiny", "adapter": "ada", "prompt": "hi", "max_new_tokens": 3}));
    assert_eq!(by_field.json()["model_id"], report.model.0.as_str(), "{}", by_field.body);
    let plain = c.post("/api/generate", &json!({"model": "tiny", "prompt": "hi", "max_new_tokens": 3}));
    assert_eq!(plain.json()["model_id"], home.models().resolve("tiny").unwrap().id.0.as_str());
    let rows = c.get(&format!("/api/generations?model={}", report.model.0)).json();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    let not_adapter = c.post("/api/generate", &json!({"model": "tiny", "adapter": "tiny", "prompt": "hi"}));
    assert_eq!(not_adapter.status, 400, "{}", not_adapter.body);
}

#[test]
fn generations_beyond_the_limit_get_429_with_retry_after() {
    let (_d, home) = home();
    let server = start(&home, |c| {
        c.no_auth = true;
        c.max_generations = 1;
    });
    let c = Client::new(&server, None);
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let answers: Vec<Answer> = (0..n)
        .map(|_| {
            let (c, barrier) = (c.with_token(None), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                c.post(
                    "/api/generate",
                    &json!({"model": "tiny", "prompt": "go", "max_new_tokens": 200, "ignore_eos": true}),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(ok >= 1, "{answers:?}");
    assert!(!busy.is_empty(), "4 at once with a limit of 1: {answers:?}");
    for b in busy {
        assert_eq!(b.header("retry-after"), Some("1"));
        assert_eq!(b.code(), "too_many_requests");
    }
    assert!(c.get("/metrics").body.contains("anneal_generation_rejected_total"));
}

#[test]
fn images_generate_returns_pngs() {
    use base64::Engine;
    let (_d, home) = home();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd");
    home.models()
        .register_dir(&fixture, &anneal::RegisterOptions { name: Some("sd".into()), ..Default::default() })
        .unwrap();
    let server = start(&home, |c| c.no_auth = true);
    let c = Client::new(&server, None);
    let a = c.post("/api/images/generate", &json!({"model": "sd", "prompts": ["a red square"], "steps": 2, "seed": 5}));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["seed"], 5);
    let png = base64::engine::general_purpose::STANDARD.decode(v["images"][0]["png_base64"].as_str().unwrap()).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(v["id"].is_string());
    let text_model = c.post("/api/images/generate", &json!({"model": "tiny", "prompts": ["x"]}));
    assert_eq!(text_model.status, 400, "{}", text_model.body);
    let bad = c.post("/api/images/generate", &json!({"model": "sd", "prompts": ["x"], "stepz": 2}));
    assert!(bad.status == 400 && bad.body.contains("stepz"), "{}", bad.body);
}
