#![allow(clippy::unwrap_used)]
//! The shared bad-input corpus (`tests/fixtures/hostile/cases.json`), run on the Rust API.
//!
//! Each case makes a fresh home, runs its setup, then one call with hostile input, and
//! checks what the README promises: the exact error code, the field / file / record
//! the error names (in its fields and in its message), and that a refused call left
//! the home as it was (catalog rows and the files under `datasets/` and `models/`).
//! Options go through `options_from_json`, as the bindings pass them. The Python
//! (`bindings-python/tests/test_hostile.py`) and Node (`bindings-node/__test__/
//! hostile.test.mjs`) runners read the same manifest; the format is in the corpus's
//! README.md. `ANNEAL_HOSTILE=<id>` runs one case; `ANNEAL_HOSTILE_PENDING=1` runs the
//! cases marked `pending` too (they are reported, not failed).

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anneal::{
    options_from_json, Error, GenerationConfig, GenerationFilter, GeneratorOptions, Home, ImportOptions, JobFilter,
    PresetOptions, Prompt, RegisterOptions, TrainSpec,
};
use serde_json::{json, Map, Value};

const LANG: &str = "rust";

fn corpus() -> PathBuf {
    common::fixtures().join("hostile")
}

fn manifest() -> Vec<Value> {
    let text = fs::read_to_string(corpus().join("cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Why a case does not run here, if it does not.
fn skip_reason(case: &Value) -> Option<String> {
    if let Some(only) = case.get("only").and_then(Value::as_array) {
        if !only.iter().any(|l| l == LANG) {
            return Some(format!("only for {only:?}"));
        }
    }
    let pending = match case.get("pending") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(m)) => m.get(LANG).and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    pending.map(|p| format!("pending: {p}"))
}

/// Values the Rust API can take as JSON; `$special` values the other languages build
/// (NaN, lone surrogates, big integers) are in cases marked `only`.
fn native(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.contains_key("$special") => match m["$special"].as_str().unwrap() {
            "repeat" => {
                let text = m["text"].as_str().unwrap();
                let n = m["bytes"].as_u64().unwrap() as usize / text.len();
                Value::String(text.repeat(n))
            }
            // Deep values are built (and dropped) recursively by serde_json: the cases
            // nested far deeper than this are for Python and JavaScript only.
            "nested" if m["depth"].as_u64().unwrap() <= 1000 => {
                let mut x = Value::Array(Vec::new());
                for _ in 1..m["depth"].as_u64().unwrap() {
                    x = Value::Array(vec![x]);
                }
                x
            }
            other => panic!("`$special: {other}` has no Rust value; mark the case `only`"),
        },
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), native(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(native).collect()),
        other => other.clone(),
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    home: Home,
    /// Where generated inputs go (next to the home, never inside it).
    work: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::open(tmp.path().join("home")).unwrap();
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    Env { _tmp: tmp, home, work }
}

fn setup(env: &Env, steps: &[Value]) {
    for step in steps {
        let name = step.get("name").and_then(Value::as_str).map(str::to_string);
        if let Some(p) = step.get("preset") {
            let opts = PresetOptions { name, seed: 0, ..Default::default() };
            env.home.models().create_preset(p.as_str().unwrap(), &opts).unwrap();
        } else if let Some(r) = step.get("register") {
            let parent = step.get("parent").and_then(Value::as_str).map(Into::into);
            let opts = RegisterOptions { name, parent, ..Default::default() };
            env.home.models().register_dir(common::fixtures().join(r.as_str().unwrap()), &opts).unwrap();
        } else if let Some(records) = step.get("records") {
            let records = records.as_array().unwrap().iter().cloned().map(Ok);
            env.home.datasets().import_records(records, &ImportOptions { name, ..Default::default() }).unwrap();
        } else if let Some(file) = step.get("import") {
            let opts = ImportOptions { name, ..Default::default() };
            env.home.datasets().import_file(corpus().join(file.as_str().unwrap()), &opts).unwrap();
        } else {
            panic!("unknown setup step {step}");
        }
    }
}

/// The input file of an `import_file` case: a corpus file or one made here.
fn input_path(env: &Env, spec: &Value) -> PathBuf {
    if let Some(rel) = spec.as_str() {
        return corpus().join(rel);
    }
    let name = spec["name"].as_str().unwrap();
    let kind = spec["generate"].as_str().unwrap();
    let p = env.work.join(name);
    match kind {
        "fifo" => {
            let ok = std::process::Command::new("mkfifo").arg(&p).status().unwrap().success();
            assert!(ok, "mkfifo failed");
        }
        "directory" => fs::create_dir_all(&p).unwrap(),
        "missing" | "nul_path" => {}
        "nested" => {
            let depth = spec["depth"].as_u64().unwrap() as usize;
            let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let text = if name.ends_with(".json") {
                format!("[{nest}]")
            } else {
                format!("{{\"text\": \"a\", \"x\": {nest}}}\n")
            };
            fs::write(&p, text).unwrap();
        }
        "big_line" => {
            let n = spec["bytes"].as_u64().unwrap() as usize;
            let text = if name.ends_with(".txt") {
                format!("{}\n", "a".repeat(n))
            } else {
                format!("{{\"text\": \"{}\"}}\n", "a".repeat(n))
            };
            fs::write(&p, text).unwrap();
        }
        other => panic!("unknown input kind {other}"),
    }
    p
}

/// Rewrites a safetensors file's header (`truncate`, `header_len`, `header_text`,
/// `edit`); the data section is kept.
fn mutate_safetensors(path: &Path, op: &Value) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let (header, data) = (&bytes[8..8 + n], &bytes[8 + n..]);
    let with_header = |h: &[u8]| -> Vec<u8> {
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h);
        out.extend_from_slice(data);
        out
    };
    let out = if let Some(k) = op.get("truncate") {
        bytes[..k.as_u64().unwrap() as usize].to_vec()
    } else if let Some(len) = op.get("header_len") {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&len.as_u64().unwrap().to_le_bytes());
        b
    } else if let Some(text) = op.get("header_text") {
        with_header(text.as_str().unwrap().as_bytes())
    } else if let Some(edit) = op.get("edit") {
        let mut h: Map<String, Value> = serde_json::from_slice(header).unwrap();
        let entry = h.get_mut(edit["tensor"].as_str().unwrap()).unwrap().as_object_mut().unwrap();
        for (k, v) in edit.as_object().unwrap() {
            if k != "tensor" {
                entry.insert(k.clone(), v.clone());
            }
        }
        with_header(serde_json::to_string(&h).unwrap().as_bytes())
    } else {
        panic!("unknown safetensors op {op}")
    };
    fs::write(path, out).unwrap();
}

/// The directory of a `register_dir` case: a copy of a fixture, changed as the case says.
fn input_dir(env: &Env, spec: &Value) -> PathBuf {
    if let Some(kind) = spec.get("generate").and_then(Value::as_str) {
        let p = env.work.join("model");
        match kind {
            "file" => fs::write(&p, "not a directory").unwrap(),
            "empty_dir" => fs::create_dir_all(&p).unwrap(),
            "missing" => {}
            "nul_path" => return env.work.join("mo\0del"),
            other => panic!("unknown dir kind {other}"),
        }
        return p;
    }
    let from = spec["from"].as_str().unwrap();
    let dir = env.work.join(from);
    fs::create_dir_all(&dir).unwrap();
    for e in fs::read_dir(common::fixtures().join(from)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let each = |key: &str| spec.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    for (file, fields) in each("set") {
        let p = dir.join(&file);
        let mut v: Map<String, Value> = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        v.extend(fields.as_object().unwrap().clone());
        fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    for (file, text) in each("write") {
        fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
    }
    for (file, op) in each("safetensors") {
        mutate_safetensors(&dir.join(file), &op);
    }
    for (file, src) in each("copy") {
        fs::copy(corpus().join(src.as_str().unwrap()), dir.join(file)).unwrap();
    }
    for file in spec.get("delete").and_then(Value::as_array).into_iter().flatten() {
        fs::remove_file(dir.join(file.as_str().unwrap())).unwrap();
    }
    dir
}

/// The case's options object as the core's options struct (the type is inferred).
macro_rules! options {
    ($case:expr, $key:expr) => {
        options_from_json(native($case.get($key).unwrap_or(&Value::Null)))
    };
}

/// Runs the case's call; `Ok` carries what the expectations of a success look at.
fn call(env: &Env, case: &Value) -> anneal::Result<Value> {
    let h = &env.home;
    match case["call"].as_str().unwrap() {
        "import_file" => {
            let path = input_path(env, &case["path"]);
            let rec = h.datasets().import_file(&path, &{
                let o: ImportOptions = options!(case, "options")?;
                o
            })?;
            Ok(json!({"num_records": rec.num_records, "format": rec.format}))
        }
        "import_records" => {
            let records = native(&case["records"]).as_array().unwrap().iter().cloned().map(Ok).collect::<Vec<_>>();
            let rec = h.datasets().import_records(records, &{
                let o: ImportOptions = options!(case, "options")?;
                o
            })?;
            Ok(json!({"num_records": rec.num_records, "format": rec.format}))
        }
        "register_dir" => {
            let dir = input_dir(env, &case["dir"]);
            let rec = h.models().register_dir(&dir, &{
                let o: RegisterOptions = options!(case, "options")?;
                o
            })?;
            Ok(json!({"kind": rec.kind}))
        }
        "create_job" => {
            let spec: TrainSpec = options!(case, "spec")?;
            let job = h.training().create_job(&spec)?;
            Ok(json!({"status": job.status}))
        }
        "generator" | "generate" => {
            let opts: GeneratorOptions = options!(case, "options")?;
            let gen = h.generator(case["model"].as_str().unwrap(), &opts)?;
            if case["call"] == "generator" {
                return Ok(json!({}));
            }
            let cfg: GenerationConfig = options!(case, "config")?;
            let prompt = Prompt::from_json(native(&case["prompt"]), "prompt")?;
            let out = gen.generate(prompt, &cfg)?;
            Ok(json!({"generated_tokens": out.generated_tokens, "finish_reason": out.finish_reason}))
        }
        other => panic!("unknown call {other}"),
    }
}

/// What a refused call must not have changed.
#[derive(Debug, PartialEq)]
struct Snapshot {
    datasets: Vec<String>,
    models: Vec<String>,
    jobs: Vec<String>,
    generations: usize,
    dataset_dirs: Vec<String>,
    model_dirs: Vec<String>,
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn snapshot(h: &Home) -> Snapshot {
    Snapshot {
        datasets: h.datasets().list().unwrap().into_iter().map(|d| d.id.0).collect(),
        models: h.models().list(&Default::default()).unwrap().into_iter().map(|m| m.id.0).collect(),
        jobs: h.training().jobs(&JobFilter::default()).unwrap().into_iter().map(|j| j.id.0).collect(),
        generations: h.models().generations(&GenerationFilter::default()).unwrap().len(),
        dataset_dirs: entries(&h.root().join("datasets")),
        model_dirs: entries(&h.root().join("models")),
    }
}

/// Checks one outcome against `expect`; returns what is wrong.
fn check(expect: &Value, outcome: &anneal::Result<Value>) -> Result<(), String> {
    if let Some(ok) = expect.get("ok") {
        let v = match outcome {
            Ok(v) => v,
            Err(e) => return Err(format!("expected success, got {} error: {e}", e.code())),
        };
        for (k, want) in ok.as_object().unwrap() {
            let fine = match k.as_str() {
                "max_generated_tokens" => v["generated_tokens"].as_u64() <= want.as_u64(),
                _ => &v[k] == want,
            };
            if !fine {
                return Err(format!("{k}: expected {want}, got {v}"));
            }
        }
        return Ok(());
    }
    let e = match outcome {
        Ok(v) => return Err(format!("expected a {} error, but the call succeeded: {v}", expect["code"])),
        Err(e) => e,
    };
    let msg = e.to_string();
    if e.code() != expect["code"] {
        return Err(format!("expected code {}, got {}: {msg}", expect["code"], e.code()));
    }
    let (field, file, record) = match e {
        Error::InvalidConfig { field, .. } => (Some(field.clone()), None, None),
        Error::InvalidData { location, .. } => (location.field.clone(), location.file.clone(), location.record),
        Error::FileNotFound { path } | Error::Io { path, .. } => (None, Some(path.clone()), None),
        _ => (None, None, None),
    };
    if let Some(want) = expect.get("field").and_then(Value::as_str) {
        if field.as_deref() != Some(want) {
            return Err(format!("expected field `{want}`, got {field:?}: {msg}"));
        }
        if !msg.contains(&format!("`{want}`")) {
            return Err(format!("the message does not name `{want}`: {msg}"));
        }
    }
    if let Some(want) = expect.get("file").and_then(Value::as_str) {
        let named = file.as_ref().and_then(|f| f.file_name()).map(|n| n.to_string_lossy().to_string());
        if named.as_deref() != Some(want) {
            return Err(format!("expected file {want}, got {file:?}: {msg}"));
        }
        if !msg.contains(want) {
            return Err(format!("the message does not name {want}: {msg}"));
        }
    }
    if let Some(want) = expect.get("record").and_then(Value::as_u64) {
        if record != Some(want) {
            return Err(format!("expected record {want}, got {record:?}: {msg}"));
        }
        if !msg.contains(&format!("record {want}")) {
            return Err(format!("the message does not name record {want}: {msg}"));
        }
    }
    for part in expect.get("message").and_then(Value::as_array).into_iter().flatten() {
        let part = part.as_str().unwrap();
        if !msg.contains(part) {
            return Err(format!("the message does not contain {part:?}: {msg}"));
        }
    }
    Ok(())
}

fn run(case: &Value) -> Result<(), String> {
    let env = env();
    setup(&env, case.get("setup").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]));
    let before = snapshot(&env.home);
    let outcome = call(&env, case);
    check(&case["expect"], &outcome)?;
    if outcome.is_err() {
        let after = snapshot(&env.home);
        if after != before {
            return Err(format!("a refused call changed the home:\nbefore {before:?}\nafter  {after:?}"));
        }
    }
    Ok(())
}

#[test]
fn manifest_is_well_formed() {
    let cases = manifest();
    let mut ids = std::collections::HashSet::new();
    let calls = ["import_file", "import_records", "register_dir", "create_job", "generator", "generate"];
    for c in &cases {
        let id = c["id"].as_str().expect("every case has an id");
        assert!(ids.insert(id), "duplicate id {id}");
        assert!(calls.contains(&c["call"].as_str().unwrap_or("")), "{id}: unknown call {}", c["call"]);
        let expect = c.get("expect").and_then(Value::as_object).unwrap_or_else(|| panic!("{id}: no expect"));
        assert!(expect.contains_key("ok") ^ expect.contains_key("code"), "{id}: expect needs `ok` or `code`");
        if let Some(code) = expect.get("code").and_then(Value::as_str) {
            assert!(anneal::ErrorKind::ALL.iter().any(|k| k.code() == code), "{id}: unknown code {code}");
        }
        if let Some(p) = c.get("path").and_then(Value::as_str) {
            assert!(corpus().join(p).is_file(), "{id}: no corpus file {p}");
        }
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());
}

/// Runs the cases of `calls`; pending ones only with `ANNEAL_HOSTILE_PENDING=1`, and then
/// they are reported (with the ones that pass now), never failed.
fn run_cases(calls: &[&str]) {
    let only = std::env::var("ANNEAL_HOSTILE").ok();
    let with_pending = std::env::var("ANNEAL_HOSTILE_PENDING").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let (mut passed, mut skipped, mut pending_now_pass) = (0, 0, Vec::new());
    for case in manifest() {
        let id = case["id"].as_str().unwrap().to_string();
        if !calls.contains(&case["call"].as_str().unwrap()) || only.as_ref().is_some_and(|o| *o != id) {
            continue;
        }
        let skip = skip_reason(&case);
        let is_pending = skip.as_ref().is_some_and(|s| s.starts_with("pending"));
        if skip.is_some() && !(is_pending && with_pending) {
            skipped += 1;
            continue;
        }
        let t = Instant::now();
        let res = run(&case);
        eprintln!("{id}: {} ({:.2?})", if res.is_ok() { "ok" } else { "FAILED" }, t.elapsed());
        match (res, is_pending) {
            (Ok(()), true) => pending_now_pass.push(id),
            (Err(e), true) => eprintln!("  (pending) {e}"),
            (Ok(()), false) => passed += 1,
            (Err(e), false) => failures.push(format!("{id}: {e}")),
        }
    }
    eprintln!("{calls:?}: {passed} passed, {skipped} skipped; pending cases that pass now: {pending_now_pass:?}");
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// One test per call, so that the harness runs them side by side.
#[test]
fn hostile_import_file() {
    run_cases(&["import_file"]);
}

#[test]
fn hostile_import_records() {
    run_cases(&["import_records"]);
}

#[test]
fn hostile_register_dir() {
    run_cases(&["register_dir"]);
}

#[test]
fn hostile_create_job() {
    run_cases(&["create_job"]);
}

#[test]
fn hostile_generate() {
    run_cases(&["generator", "generate"]);
}
