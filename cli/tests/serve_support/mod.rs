//! What the server tests share: a home with a tiny model and a text dataset, a server
//! on an ephemeral loopback port, tokens, and a plain HTTP client.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anneal::{Home, ImportOptions, PresetOptions, TokenOptions, TokenScope};
use anneal_cli::serve::{Server, ServerConfig};
use serde_json::Value;

/// A home with `tiny` (the nano preset, random weights) and `corpus` (60 text records).
pub fn home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    home.models().create_preset("nano", &PresetOptions { name: Some("tiny".into()), ..Default::default() }).unwrap();
    let lines: String = (0..60)
        .map(|i| format!("{{\"text\": \"record {i}: the quick brown fox jumps over the lazy dog {}\"}}\n", i * 7))
        .collect();
    let p = dir.path().join("corpus.jsonl");
    std::fs::write(&p, lines).unwrap();
    home.datasets().import_file(&p, &ImportOptions::default()).unwrap();
    (dir, home)
}

/// A server on 127.0.0.1:<free port>, quiet, with `f`'s changes to the defaults.
pub fn start(home: &Home, f: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig { addr: "127.0.0.1:0".parse().unwrap(), log: false, ..Default::default() };
    f(&mut cfg);
    Server::start(home.clone(), cfg).unwrap()
}

pub fn token(home: &Home, scope: TokenScope) -> String {
    home.tokens().create(&TokenOptions { name: Some(format!("test-{scope}")), scope }).unwrap().token
}

/// A JSON training spec for `tiny` on `corpus` (full fine-tune, tiny batches).
pub fn spec(max_steps: u64) -> Value {
    serde_json::json!({
        "base": "tiny", "dataset": "corpus", "method": "full", "max_steps": max_steps,
        "batch_size": 2, "seq_len": 32, "learning_rate": 0.001,
    })
}

/// An HTTP client that returns 4xx/5xx answers instead of failing on them.
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    agent: ureq::Agent,
}

/// An answer: status, headers we look at, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

fn answer(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut res = res.unwrap();
    let headers =
        res.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let status = res.status().as_u16();
    let body = res.body_mut().read_to_string().unwrap_or_default();
    Answer { status, headers, body }
}

impl Client {
    pub fn new(server: &Server, token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client { base: server.url(), token, agent }
    }

    pub fn with_token(&self, token: Option<&str>) -> Self {
        Client { base: self.base.clone(), token: token.map(str::to_string), agent: self.agent.clone() }
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.get(format!("{}{path}", self.base))).call())
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut r = self.auth(self.agent.get(format!("{}{path}", self.base)));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        answer(r.call())
    }

    pub fn delete(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.delete(format!("{}{path}", self.base))).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, "application/json", body.to_string().as_bytes())
    }

    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        let r = self.auth(self.agent.post(format!("{}{path}", self.base))).header("content-type", content_type);
        answer(r.send(body))
    }

    pub fn options(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut r = self.agent.options(format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        answer(r.call())
    }

    /// Reads an SSE stream (`GET`, or `POST` with `body`): each `data:` payload, until
    /// the stream ends or `until` says stop.
    pub fn sse(&self, path: &str, body: Option<&Value>, until: impl FnMut(&str) -> bool) -> Vec<String> {
        self.sse_full(path, body, &[], until)
    }

    /// [`Client::sse`] of a `GET` with extra headers.
    pub fn sse_with(&self, path: &str, headers: &[(&str, &str)], until: impl FnMut(&str) -> bool) -> Vec<String> {
        self.sse_full(path, None, headers, until)
    }

    fn sse_full(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        mut until: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let url = format!("{}{path}", self.base);
        let res = match body {
            Some(b) => self
                .auth(self.agent.post(url))
                .header("content-type", "application/json")
                .header("accept", "text/event-stream")
                .send(b.to_string().as_bytes()),
            None => {
                let mut r = self.auth(self.agent.get(url)).header("accept", "text/event-stream");
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
        }
        .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let ct = res.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let reader = BufReader::new(res.into_body().into_reader());
        let mut out = Vec::new();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                out.push(data.to_string());
                if until(data) {
                    break;
                }
            }
        }
        out
    }
}

/// A multipart/form-data body with one file field and text fields.
pub fn multipart(file_name: &str, content: &[u8], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "anneal-test-boundary-7d1f";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").bytes());
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .bytes(),
    );
    body.extend_from_slice(content);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Polls `f` every 50 ms until it is true (at most `secs`).
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
