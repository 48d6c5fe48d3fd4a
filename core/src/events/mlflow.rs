//! [`MlflowSink`]: a training run as an MLflow run, in a local file store (the
//! `mlruns/` layout MLflow's own `FileStore` reads) or on a tracking server (the REST
//! API: `runs/create`, `runs/log-batch`, `runs/update`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};

use super::EventSink;
use crate::error::{Error, IoResultExt, Result};
use crate::types::{Event, FinishStatus, TrainSpec};
use crate::util;

/// The experiment runs go to unless [`MlflowSink::experiment`] names another.
pub const DEFAULT_EXPERIMENT: &str = "Default";

/// Metrics sent to a tracking server at most this often (and at the end).
const SEND_EVERY: Duration = Duration::from_secs(2);
/// Consecutive failed sends of metrics before the run is stopped with the error.
const MAX_SEND_FAILURES: u32 = 3;
/// MLflow's limits per `log-batch` request.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
/// MLflow's longest parameter value.
const MAX_PARAM_VALUE: usize = 6000;

/// Logs training jobs as MLflow runs: the parameters (the job's [`TrainSpec`], given
/// with [`MlflowSink::spec`]), the metrics `train/loss`, `train/learning_rate`,
/// `train/tokens_per_s`, `train/epoch` (every step) and `eval/loss`,
/// `eval/perplexity` ... (every evaluation), the tags `mlflow.runName` (the job id unless
/// [`MlflowSink::run_name`] says otherwise), `mlflow.source.name` (`anneal`),
/// `anneal.job_id` and `anneal.model_id`, and the status at the end: `FINISHED`,
/// `FAILED` or `KILLED` (a cancelled job). Each `job_started` opens a new run (a
/// resumed job is a second run with the same `anneal.job_id`).
///
/// The tracking URI is a directory (or `file://` URI) for the local file store, read
/// by `mlflow ui --backend-store-uri <dir>` and `MlflowClient(tracking_uri=...)`
/// (MLflow 3 wants `MLFLOW_ALLOW_FILE_STORE=true` for it), or an `http(s)://` tracking
/// server. The file store is written as events come; a server gets the metrics in
/// batches every 2 seconds and at the end. A failure to create the run stops the job
/// (`io` naming the file or URL); a server that fails three sends in a row stops it too.
pub struct MlflowSink {
    target: Target,
    experiment: String,
    run_name: Option<String>,
    params: Vec<(String, String)>,
    run: Option<Run>,
    pending: Vec<Value>,
    last_send: Option<Instant>,
    failures: u32,
}

enum Target {
    Files(PathBuf),
    Server(String),
}

struct Run {
    id: String,
    experiment_id: String,
    name: String,
    start_ms: i64,
    /// File store: `<root>/<experiment_id>/<run_id>`.
    dir: Option<PathBuf>,
}

impl MlflowSink {
    /// A sink for `tracking_uri`: `http://` or `https://` (a tracking server), else a
    /// directory (`mlruns`, `file:///abs/mlruns`) for the file store, created when the
    /// first job starts. An empty or malformed URI is `invalid_config` naming `mlflow`.
    pub fn new(tracking_uri: &str) -> Result<Self> {
        let uri = tracking_uri.trim();
        if uri.is_empty() {
            return Err(Error::config("mlflow", "is empty: give a directory (mlruns) or an http(s):// tracking URI"));
        }
        let lower = uri.to_ascii_lowercase();
        let target = if lower.starts_with("http://") || lower.starts_with("https://") {
            let bad = |why: String| Error::config("mlflow", format!("`{uri}` {why}"));
            if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("contains whitespace or control characters".into()));
            }
            let parsed: ureq::http::Uri = uri.parse().map_err(|e| bad(format!("is not a URL ({e})")))?;
            if parsed.host().is_none_or(str::is_empty) {
                return Err(bad("has no host".into()));
            }
            Target::Server(uri.trim_end_matches('/').to_string())
        } else if let Some(path) = uri.strip_prefix("file://") {
            Target::Files(PathBuf::from(path))
        } else if lower.contains("://") {
            return Err(Error::config(
                "mlflow",
                format!("`{uri}`: give a directory for the file store or an http(s):// tracking server"),
            ));
        } else {
            Target::Files(PathBuf::from(uri))
        };
        Ok(Self {
            target,
            experiment: DEFAULT_EXPERIMENT.into(),
            run_name: None,
            params: Vec::new(),
            run: None,
            pending: Vec::new(),
            last_send: None,
            failures: 0,
        })
    }

    /// The experiment (by name) runs are logged to, created when missing. Default
    /// `Default` (id `0`).
    pub fn experiment(mut self, name: impl Into<String>) -> Self {
        self.experiment = name.into();
        self
    }

    /// The run's name. Default: the job id.
    pub fn run_name(mut self, name: impl Into<String>) -> Self {
        self.run_name = Some(name.into());
        self
    }

    /// Logs every field of `spec` as a parameter (nested fields as `method.lora.r`,
    /// lists as JSON; unset fields are left out), plus `method` (`full`, `lora`, ...).
    pub fn spec(mut self, spec: &TrainSpec) -> Self {
        let mut flat = Vec::new();
        flatten("", &serde_json::to_value(spec).unwrap_or(Value::Null), &mut flat);
        flat.push(("method".into(), spec.method.as_str().into()));
        for (k, v) in flat {
            self = self.param(k, v);
        }
        self
    }

    /// Logs one more parameter (a later value for the same key replaces the earlier one).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = metric_key(&key.into());
        let mut value: String = value.into();
        if value.len() > MAX_PARAM_VALUE {
            let mut end = MAX_PARAM_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        self.params.retain(|(k, _)| *k != key);
        self.params.push((key, value));
        self
    }

    /// The id of the run being logged (after `job_started`).
    pub fn run_id(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.id.as_str())
    }

    /// The id of the run's experiment (after `job_started`).
    pub fn experiment_id(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.experiment_id.as_str())
    }

    fn start(&mut self, job_id: &str) -> Result<()> {
        let name = self.run_name.clone().unwrap_or_else(|| job_id.to_string());
        let start_ms = now_ms();
        let tags = vec![
            ("mlflow.runName".to_string(), name.clone()),
            ("mlflow.source.name".to_string(), "anneal".to_string()),
            ("mlflow.source.type".to_string(), "LOCAL".to_string()),
            ("mlflow.user".to_string(), user()),
            ("anneal.job_id".to_string(), job_id.to_string()),
        ];
        self.pending.clear();
        self.failures = 0;
        self.last_send = None;
        let run = match &self.target {
            Target::Files(root) => files::create_run(root, &self.experiment, &name, start_ms, &tags, &self.params)?,
            Target::Server(base) => server::create_run(base, &self.experiment, &name, start_ms, &tags, &self.params)?,
        };
        self.run = Some(run);
        Ok(())
    }

    fn metrics(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let Some(run) = &self.run else { return Ok(()) };
        let ts = now_ms();
        match &self.target {
            Target::Files(_) => {
                let dir = run.dir.as_deref().unwrap_or(Path::new("."));
                for (k, v) in values {
                    files::append_metric(dir, k, *v, ts, step)?;
                }
                Ok(())
            }
            Target::Server(_) => {
                for (k, v) in values {
                    // JSON has no NaN or infinity; MLflow's REST API takes them as strings.
                    let value = if v.is_finite() { json!(v) } else { json!(v.to_string()) };
                    self.pending.push(json!({"key": k, "value": value, "timestamp": ts, "step": step}));
                }
                if self.last_send.is_none_or(|t| t.elapsed() >= SEND_EVERY) {
                    self.send_pending()?;
                }
                Ok(())
            }
        }
    }

    /// Sends the buffered metrics; a failure keeps them for the next send, and the
    /// third failure in a row is returned.
    fn send_pending(&mut self) -> Result<()> {
        let (Target::Server(base), Some(run)) = (&self.target, &self.run) else { return Ok(()) };
        self.last_send = Some(Instant::now());
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH_METRICS);
            let body = json!({"run_id": run.id, "metrics": &self.pending[..n]});
            match server::call(base, "runs/log-batch", &body) {
                Ok(_) => {
                    self.pending.drain(..n);
                    self.failures = 0;
                }
                Err(e) => {
                    self.failures += 1;
                    return if self.failures >= MAX_SEND_FAILURES { Err(e) } else { Ok(()) };
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, status: &FinishStatus, model_id: Option<&str>) -> Result<()> {
        let status = match status {
            FinishStatus::Completed => "FINISHED",
            FinishStatus::Failed => "FAILED",
            FinishStatus::Cancelled => "KILLED",
        };
        let end_ms = now_ms();
        let flushed = self.send_pending();
        let Some(run) = self.run.take() else { return flushed };
        let ended = match &self.target {
            Target::Files(_) => files::end_run(&run, status, end_ms, model_id),
            Target::Server(base) => server::end_run(base, &run, status, end_ms, model_id),
        };
        flushed.and(ended)
    }
}

impl EventSink for MlflowSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::JobStarted { job_id, .. } => self.start(job_id),
            Event::Step { step, loss, lr, tokens_per_sec, epoch, .. } => self.metrics(
                *step,
                &[
                    ("train/loss".into(), *loss),
                    ("train/learning_rate".into(), *lr),
                    ("train/tokens_per_s".into(), *tokens_per_sec),
                    ("train/epoch".into(), f64::from(*epoch)),
                ],
            ),
            Event::Eval { step, metrics, .. } => {
                let values: Vec<(String, f64)> =
                    metrics.iter().map(|(k, v)| (metric_key(&super::tensorboard::eval_tag(k)), *v)).collect();
                self.metrics(*step, &values)
            }
            Event::JobFinished { status, model_id, .. } => self.finish(status, model_id.as_deref()),
            _ => Ok(()),
        }
    }
}

/// A key MLflow accepts: alphanumerics, `_ - . / space`; anything else becomes `_`.
/// (`..` and a leading `/` are not allowed either.)
fn metric_key(key: &str) -> String {
    let mut k: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ') { c } else { '_' })
        .collect();
    while k.contains("..") {
        k = k.replace("..", "_.");
    }
    let k = k.trim_start_matches('/').to_string();
    if k.is_empty() {
        "_".into()
    } else {
        k.chars().take(250).collect()
    }
}

/// `value` as `key = text` pairs: objects joined with `.`, lists as JSON, nulls left out.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.into(), s.clone())),
        other => out.push((prefix.into(), other.to_string())),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into())
}

/// 32 lowercase hex digits, as MLflow's run ids.
fn new_run_id() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

/// The local file store, in the layout of MLflow's `FileStore`.
mod files {
    use super::*;

    /// A YAML single-quoted scalar.
    fn quoted(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''").replace('\n', " "))
    }

    /// The `name:` of an experiment's `meta.yaml`, unquoted.
    fn experiment_name(meta: &str) -> Option<String> {
        let line = meta.lines().find_map(|l| l.strip_prefix("name: "))?.trim();
        Some(match line.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
            Some(inner) => inner.replace("''", "'"),
            None => line.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(line).to_string(),
        })
    }

    fn file_uri(path: &Path) -> String {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        format!("file://{}", abs.display())
    }

    /// The id of experiment `name` under `root`, created when missing (`Default` is `0`).
    fn experiment_id(root: &Path, name: &str) -> Result<String> {
        if let Ok(entries) = fs::read_dir(root) {
            for e in entries.flatten() {
                let meta = e.path().join("meta.yaml");
                if let Ok(text) = fs::read_to_string(&meta) {
                    if experiment_name(&text).as_deref() == Some(name) && !text.contains("lifecycle_stage: deleted") {
                        return Ok(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        let id = if name == DEFAULT_EXPERIMENT && !root.join("0").exists() {
            "0".to_string()
        } else {
            // MLflow's own ids: 18 random digits, the first not 0.
            let mut rng = rand::rng();
            let first: u8 = rng.random_range(1..10);
            let rest: String = (0..17).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect();
            format!("{first}{rest}")
        };
        let dir = root.join(&id);
        fs::create_dir_all(&dir).with_path(&dir)?;
        let now = now_ms();
        let meta = format!(
            "artifact_location: {}\ncreation_time: {now}\nexperiment_id: '{id}'\nlast_update_time: {now}\n\
             lifecycle_stage: active\nname: {}\n",
            file_uri(&dir),
            quoted(name)
        );
        util::write_atomic(&dir.join("meta.yaml"), meta.as_bytes())?;
        Ok(id)
    }

    fn run_meta(run: &Run, status: u8, end_ms: Option<i64>) -> String {
        let dir = run.dir.as_deref().unwrap_or(Path::new("."));
        format!(
            "artifact_uri: {}\nend_time: {}\nentry_point_name: ''\nexperiment_id: '{}'\nlifecycle_stage: active\n\
             run_id: {id}\nrun_name: {}\nrun_uuid: {id}\nsource_name: ''\nsource_type: 4\nsource_version: ''\n\
             start_time: {}\nstatus: {status}\ntags: []\nuser_id: {}\n",
            file_uri(&dir.join("artifacts")),
            end_ms.map_or("null".to_string(), |t| t.to_string()),
            run.experiment_id,
            quoted(&run.name),
            run.start_ms,
            quoted(&user()),
            id = run.id,
        )
    }

    /// `<dir>/<key>` holding `value` (keys with `/` are nested directories, as MLflow
    /// writes them).
    fn write_value(dir: &Path, key: &str, value: &str) -> Result<()> {
        let path = dir.join(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_path(parent)?;
        }
        fs::write(&path, value).with_path(&path)
    }

    pub(super) fn create_run(
        root: &Path,
        experiment: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
        params: &[(String, String)],
    ) -> Result<Run> {
        fs::create_dir_all(root).with_path(root)?;
        let trash = root.join(".trash");
        fs::create_dir_all(&trash).with_path(&trash)?;
        let experiment_id = experiment_id(root, experiment)?;
        let id = new_run_id();
        let dir = root.join(&experiment_id).join(&id);
        for sub in ["artifacts", "metrics", "params", "tags"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_path(&d)?;
        }
        for (k, v) in params {
            write_value(&dir.join("params"), k, v)?;
        }
        for (k, v) in tags {
            write_value(&dir.join("tags"), k, v)?;
        }
        let run = Run { id, experiment_id, name: name.into(), start_ms, dir: Some(dir.clone()) };
        // meta.yaml last: readers skip a run without one.
        util::write_atomic(&dir.join("meta.yaml"), run_meta(&run, 1, None).as_bytes())?;
        Ok(run)
    }

    pub(super) fn append_metric(dir: &Path, key: &str, value: f64, ts: i64, step: u64) -> Result<()> {
        let path = dir.join("metrics").join(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_path(parent)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&path).with_path(&path)?;
        f.write_all(format!("{ts} {value} {step}\n").as_bytes()).with_path(&path)
    }

    pub(super) fn end_run(run: &Run, status: &str, end_ms: i64, model_id: Option<&str>) -> Result<()> {
        let code = match status {
            "FINISHED" => 3,
            "FAILED" => 4,
            _ => 5,
        };
        let dir = run.dir.as_deref().unwrap_or(Path::new("."));
        if let Some(m) = model_id {
            write_value(&dir.join("tags"), "anneal.model_id", m)?;
        }
        util::write_atomic(&dir.join("meta.yaml"), run_meta(run, code, Some(end_ms)).as_bytes())
    }

    #[cfg(test)]
    pub(super) fn name_of(meta: &str) -> Option<String> {
        experiment_name(meta)
    }
}

/// A tracking server, through MLflow's REST API (`/api/2.0/mlflow/...`).
mod server {
    use super::*;

    fn fail(url: &str, reason: String) -> Error {
        Error::Io { path: PathBuf::from(url), source: std::io::Error::other(reason) }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .user_agent(concat!("anneal/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// The JSON answer of a 2xx; an `io` error naming the URL otherwise.
    fn answer(url: &str, result: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut resp = result.map_err(|e| fail(url, e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            let snippet: String = text.chars().take(300).collect();
            return Err(fail(url, format!("HTTP {status}: {}", snippet.trim())));
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).map_err(|e| fail(url, format!("the answer is not JSON ({e})")))
    }

    /// POSTs `body` to `<base>/api/2.0/mlflow/<endpoint>`.
    pub(super) fn call(base: &str, endpoint: &str, body: &Value) -> Result<Value> {
        let url = format!("{base}/api/2.0/mlflow/{endpoint}");
        let result = agent().post(&url).header("content-type", "application/json").send(body.to_string());
        answer(&url, result)
    }

    fn experiment_id(base: &str, name: &str) -> Result<String> {
        let url = format!("{base}/api/2.0/mlflow/experiments/get-by-name");
        let result = agent().get(&url).query("experiment_name", name).call();
        match answer(&url, result) {
            Ok(v) => v["experiment"]["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| fail(&url, "the answer has no experiment.experiment_id".into())),
            Err(e) if e.to_string().contains("RESOURCE_DOES_NOT_EXIST") || e.to_string().contains("HTTP 404") => {
                let v = call(base, "experiments/create", &json!({ "name": name }))?;
                v["experiment_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| fail(base, "experiments/create answered without experiment_id".into()))
            }
            Err(e) => Err(e),
        }
    }

    fn pairs(kv: &[(String, String)]) -> Vec<Value> {
        kv.iter().map(|(k, v)| json!({"key": k, "value": v})).collect()
    }

    pub(super) fn create_run(
        base: &str,
        experiment: &str,
        name: &str,
        start_ms: i64,
        tags: &[(String, String)],
        params: &[(String, String)],
    ) -> Result<Run> {
        let experiment_id = experiment_id(base, experiment)?;
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_ms,
            "tags": pairs(tags),
        });
        let v = call(base, "runs/create", &body)?;
        let id = v["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| fail(base, "runs/create answered without run.info.run_id".into()))?
            .to_string();
        for chunk in params.chunks(BATCH_PARAMS) {
            call(base, "runs/log-batch", &json!({"run_id": id, "params": pairs(chunk)}))?;
        }
        Ok(Run { id, experiment_id, name: name.into(), start_ms, dir: None })
    }

    pub(super) fn end_run(base: &str, run: &Run, status: &str, end_ms: i64, model_id: Option<&str>) -> Result<()> {
        if let Some(m) = model_id {
            call(base, "runs/set-tag", &json!({"run_id": run.id, "key": "anneal.model_id", "value": m}))?;
        }
        call(base, "runs/update", &json!({"run_id": run.id, "status": status, "end_time": end_ms}))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn step(n: u64, loss: f64) -> Event {
        Event::Step {
            job_id: "job_1".into(),
            epoch: 0,
            step: n,
            total_steps: 3,
            loss,
            lr: 1e-3,
            tokens_per_sec: 10.0,
            progress: n as f64 / 3.0,
            sample: None,
            image: None,
        }
    }

    fn run_job(sink: &mut MlflowSink, status: FinishStatus) {
        sink.on_event(&Event::JobStarted { job_id: "job_1".into(), total_steps: 3, epochs: 1 }).unwrap();
        sink.on_event(&step(1, 3.0)).unwrap();
        sink.on_event(&step(2, 2.0)).unwrap();
        let metrics = BTreeMap::from([("eval_loss".to_string(), 2.5)]);
        sink.on_event(&Event::Eval { job_id: "job_1".into(), step: 2, metrics }).unwrap();
        sink.on_event(&step(3, 1.5)).unwrap();
        let model_id = (status == FinishStatus::Completed).then(|| "mdl_1".to_string());
        sink.on_event(&Event::JobFinished { job_id: "job_1".into(), status, model_id, error: None }).unwrap();
    }

    #[test]
    fn the_file_store_has_mlflows_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mlruns");
        let spec = TrainSpec { base: "nano".into(), dataset: "d".into(), ..Default::default() };
        let mut sink = MlflowSink::new(root.to_str().unwrap()).unwrap().spec(&spec);
        run_job(&mut sink, FinishStatus::Completed);
        let exp = fs::read_to_string(root.join("0/meta.yaml")).unwrap();
        assert_eq!(files::name_of(&exp).as_deref(), Some("Default"));
        let runs: Vec<_> = fs::read_dir(root.join("0")).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
        assert_eq!(runs.len(), 1);
        let run = runs[0].path();
        let meta = fs::read_to_string(run.join("meta.yaml")).unwrap();
        assert!(meta.contains("status: 3\n") && meta.contains("run_name: 'job_1'"), "{meta}");
        assert!(!meta.contains("end_time: null"), "{meta}");
        let loss = fs::read_to_string(run.join("metrics/train/loss")).unwrap();
        let steps: Vec<(f64, u64)> = loss
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[1].parse().unwrap(), f[2].parse().unwrap())
            })
            .collect();
        assert_eq!(steps, [(3.0, 1), (2.0, 2), (1.5, 3)]);
        assert_eq!(fs::read_to_string(run.join("metrics/eval/loss")).unwrap().split(' ').nth(1), Some("2.5"));
        assert_eq!(fs::read_to_string(run.join("params/learning_rate")).unwrap(), "0.0002");
        assert_eq!(fs::read_to_string(run.join("params/method")).unwrap(), "lora");
        assert_eq!(fs::read_to_string(run.join("params/method.lora.r")).unwrap(), "8");
        assert!(!run.join("params/eval_dataset").exists());
        assert_eq!(fs::read_to_string(run.join("tags/mlflow.runName")).unwrap(), "job_1");
        assert_eq!(fs::read_to_string(run.join("tags/anneal.model_id")).unwrap(), "mdl_1");
    }

    #[test]
    fn a_named_experiment_is_created_once_and_cancelled_runs_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("mlruns").display());
        let mut a = MlflowSink::new(&uri).unwrap().experiment("it's mine");
        run_job(&mut a, FinishStatus::Cancelled);
        let mut b = MlflowSink::new(&uri).unwrap().experiment("it's mine").run_name("second");
        run_job(&mut b, FinishStatus::Failed);
        let exps: Vec<_> = fs::read_dir(dir.path().join("mlruns"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("meta.yaml").exists())
            .collect();
        assert_eq!(exps.len(), 1, "one experiment, no Default");
        let exp = exps[0].path();
        assert_eq!(exp.file_name().unwrap().len(), 18);
        assert_eq!(files::name_of(&fs::read_to_string(exp.join("meta.yaml")).unwrap()).as_deref(), Some("it's mine"));
        let statuses: Vec<String> = fs::read_dir(&exp)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let m = fs::read_to_string(e.path().join("meta.yaml")).unwrap();
                m.lines().find(|l| l.starts_with("status: ")).unwrap().to_string()
            })
            .collect();
        let mut statuses = statuses;
        statuses.sort();
        assert_eq!(statuses, ["status: 4", "status: 5"]);
    }

    #[test]
    fn bad_uris_are_invalid_config_naming_mlflow() {
        for bad in ["", "  ", "s3://bucket/x", "http://", "http://a b"] {
            let e = MlflowSink::new(bad).err().unwrap();
            assert_eq!(e.code(), "invalid_config", "{bad}");
            assert!(e.to_string().contains("`mlflow`"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_made_acceptable_to_mlflow() {
        assert_eq!(metric_key("eval/loss"), "eval/loss");
        assert_eq!(metric_key("eval/acc@1"), "eval/acc_1");
        assert_eq!(metric_key("/x/../y"), "x/_./y");
        assert_eq!(metric_key(""), "_");
    }

    /// The requests a fake server saw: (path with query, JSON body).
    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    /// A fake tracking server: answers MLflow's endpoints, records (path, body).
    fn server() -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, answer) = if path.contains("get-by-name") {
                    (404, json!({"error_code": "RESOURCE_DOES_NOT_EXIST"}))
                } else if path.ends_with("experiments/create") {
                    (200, json!({"experiment_id": "7"}))
                } else if path.ends_with("runs/create") {
                    (200, json!({"run": {"info": {"run_id": "r1"}}}))
                } else {
                    (200, json!({}))
                };
                log.lock().unwrap().push((path, body));
                let text = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (base, seen)
    }

    #[test]
    fn a_tracking_server_gets_the_run_through_the_rest_api() {
        let (base, seen) = server();
        let spec = TrainSpec { base: "nano".into(), dataset: "d".into(), ..Default::default() };
        let mut sink = MlflowSink::new(&format!("{base}/")).unwrap().experiment("exp").spec(&spec);
        run_job(&mut sink, FinishStatus::Completed);
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.split('?').next().unwrap()).collect();
        assert_eq!(
            paths[..4],
            [
                "/api/2.0/mlflow/experiments/get-by-name",
                "/api/2.0/mlflow/experiments/create",
                "/api/2.0/mlflow/runs/create",
                "/api/2.0/mlflow/runs/log-batch",
            ]
        );
        assert!(seen[0].0.contains("experiment_name=exp"), "{}", seen[0].0);
        assert_eq!(seen[2].1["experiment_id"], "7");
        assert_eq!(seen[2].1["run_name"], "job_1");
        assert!(seen[3].1["params"].as_array().unwrap().iter().any(|p| p["key"] == "learning_rate"));
        // Every metric arrives (batched), then the tag and the end.
        let metrics: Vec<&Value> = seen
            .iter()
            .filter(|(p, b)| p.ends_with("log-batch") && b.get("metrics").is_some())
            .flat_map(|(_, b)| b["metrics"].as_array().unwrap())
            .collect();
        let losses: Vec<(f64, u64)> = metrics
            .iter()
            .filter(|m| m["key"] == "train/loss")
            .map(|m| (m["value"].as_f64().unwrap(), m["step"].as_u64().unwrap()))
            .collect();
        assert_eq!(losses, [(3.0, 1), (2.0, 2), (1.5, 3)]);
        assert!(metrics.iter().any(|m| m["key"] == "eval/loss" && m["value"] == 2.5));
        let (last_path, last) = seen.last().unwrap();
        assert!(last_path.ends_with("runs/update"));
        assert_eq!((last["run_id"].as_str(), last["status"].as_str()), (Some("r1"), Some("FINISHED")));
    }

    #[test]
    fn an_unreachable_server_stops_the_run_at_the_start() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut sink = MlflowSink::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = sink.on_event(&Event::JobStarted { job_id: "j".into(), total_steps: 1, epochs: 1 }).unwrap_err();
        assert_eq!(e.code(), "io");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
