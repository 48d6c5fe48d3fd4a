//! The whole loop through the binary: import, create, train, jobs, generate, export, stats.
#![allow(clippy::unwrap_used)]

use crate::common::{lines, Env};
use serde_json::Value;

#[test]
fn import_train_generate_export() {
    let env = Env::new();
    let tiny = env.tiny_jsonl("tiny.jsonl", 40);
    let tiny = tiny.to_str().unwrap();

    // Datasets.
    let ds = env.json(&["import", tiny, "--name", "upper"]);
    assert_eq!(
        (ds["name"].as_str(), ds["num_records"].as_u64(), ds["format"].as_str()),
        (Some("upper"), Some(40), Some("completion"))
    );
    let ds_id = ds["id"].as_str().unwrap().to_string();
    let dup = env.run(&["import", tiny, "--name", "again"]);
    assert_eq!(dup.status.code(), Some(7), "duplicate_content");
    assert!(String::from_utf8_lossy(&dup.stderr).contains("error[duplicate_content]"));
    let reused = env.json(&["import", tiny, "--name", "again", "--on-duplicate", "reuse"]);
    assert_eq!(reused["id"].as_str(), Some(ds_id.as_str()));
    let all = env.json(&["datasets", "ls"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    let shown = env.json(&["datasets", "show", "upper"]);
    assert_eq!(shown["dataset"]["id"].as_str(), Some(ds_id.as_str()));
    assert_eq!(shown["stats"]["num_records"].as_u64(), Some(40));
    let preview = lines(&env.ok(&["datasets", "preview", "upper", "-n", "2"]));
    assert_eq!(preview.len(), 2);
    assert!(preview[0]["prompt"].as_str().unwrap().ends_with('>'));
    let split = env.json(&["datasets", "split", "upper", "--val", "0.25", "--seed", "1"]);
    assert_eq!((split["train"]["num_records"].as_u64(), split["val"]["num_records"].as_u64()), (Some(30), Some(10)));
    assert_eq!(split["val"]["name"].as_str(), Some("upper-val"));
    let table = env.ok(&["datasets", "ls"]);
    assert!(table.starts_with("NAME") && table.contains("upper") && table.contains(&ds_id), "{table}");

    // Models.
    let base = env.json(&["models", "create", "nano", "--name", "base", "--seed", "1"]);
    assert_eq!(
        (base["name"].as_str(), base["version"].as_u64(), base["kind"].as_str()),
        (Some("base"), Some(1), Some("base"))
    );
    let m = env.json(&["models", "alias", "set", "base@1", "stable"]);
    assert_eq!(m["aliases"], serde_json::json!(["stable"]));
    assert_eq!(env.json(&["models", "alias", "ls", "base"]), serde_json::json!({"stable": "base@1"}));

    // Training: events as JSON lines, the last one job_finished.
    let out = env.ok(&[
        "train",
        "--base",
        "base@stable",
        "--dataset",
        "upper",
        "--method",
        "full",
        "--max-steps",
        "4",
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--lr",
        "2e-3",
        "--output-name",
        "upper-full",
        "--json",
    ]);
    let events = lines(&out);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"job_started"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "step").count(), 4, "{types:?}");
    let last = events.last().unwrap();
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("job_finished"), Some("completed")));
    let job_id = last["job_id"].as_str().unwrap().to_string();
    let model_id = last["model_id"].as_str().unwrap().to_string();

    // A LoRA job from flags and a spec file (flags override it).
    let spec = env.path("spec.json");
    std::fs::write(
        &spec,
        r#"{"base": "base", "dataset": "upper", "method": {"lora": {"r": 2}}, "seq_len": 16, "max_steps": 50}"#,
    )
    .unwrap();
    let human = env.ok(&["train", "--spec", spec.to_str().unwrap(), "--max-steps", "2", "--lora-alpha", "4"]);
    assert!(human.contains("trained: final loss"), "{human}");
    let lora_jobs = env.json(&["jobs", "ls", "--status", "completed"]);
    let lora_job = lora_jobs.as_array().unwrap().iter().find(|j| j["spec"]["method"].get("lora").is_some()).unwrap();
    assert_eq!(lora_job["spec"]["method"]["lora"]["r"].as_u64(), Some(2));
    assert_eq!(lora_job["spec"]["method"]["lora"]["alpha"].as_f64(), Some(4.0));
    assert_eq!(lora_job["step"].as_u64(), Some(2));

    // Re-running with --if-exists reuse: the completed job's report, no new job; the
    // same preset and seed: the same model.
    let again = env.ok(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--max-steps",
        "2",
        "--lora-alpha",
        "4",
        "--if-exists",
        "reuse",
    ]);
    assert!(again.contains("trained: final loss") && again.contains(lora_job["id"].as_str().unwrap()), "{again}");
    let same = env.json(&["models", "create", "nano", "--name", "base", "--seed", "1", "--if-exists", "reuse"]);
    assert_eq!((same["id"].as_str(), same["version"].as_u64()), (base["id"].as_str(), Some(1)));
    let bad = env.run(&["models", "create", "nano", "--name", "base", "--if-exists", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2), "a value clap refuses");

    // Jobs.
    let jobs = env.json(&["jobs", "ls"]);
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    let job = env.json(&["jobs", "show", &job_id]);
    assert_eq!(job["job"]["status"].as_str(), Some("completed"));
    assert_eq!(job["job"]["output_model_id"].as_str(), Some(model_id.as_str()));
    assert_eq!(job["metrics"].as_array().unwrap().len(), 4, "one train point per step");
    let logs = lines(&env.ok(&["jobs", "logs", &job_id, "--json"]));
    assert!(logs.iter().any(|l| l["message"].as_str().unwrap().starts_with("starting: full base@1")), "{logs:?}");
    let followed = env.ok(&["jobs", "logs", &job_id, "-f"]);
    assert!(followed.contains("[info] starting"), "a finished job's log is printed and -f returns: {followed}");
    let cancel = env.json(&["jobs", "cancel", &job_id]);
    assert_eq!(cancel["status"].as_str(), Some("completed"), "nothing to cancel");

    // Generation: streamed text, then JSON lines ending with the generation.
    let text = env.ok(&["generate", "upper-full", "abc>", "--max-new-tokens", "4", "--ignore-eos"]);
    assert!(text.ends_with('\n'), "{text:?}");
    let out = lines(&env.ok(&["generate", "upper-full", "abc>", "-n", "4", "--ignore-eos", "--json"]));
    let g = out.last().unwrap();
    assert_eq!(g["type"].as_str(), Some("generation"));
    assert_eq!(g["generated_tokens"].as_u64(), Some(4));
    assert_eq!(g["finish_reason"].as_str(), Some("length"));
    let chunks: String = out[..out.len() - 1].iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(chunks, g["text"].as_str().unwrap(), "the chunks add up to the text");
    assert_eq!(text.strip_suffix('\n'), g["text"].as_str(), "greedy: the streamed text is the same");
    // The prompt from stdin.
    let mut child = env.cmd(&["generate", "upper-full", "-n", "2", "--ignore-eos", "--json"]);
    child.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = child.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"xyz>\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let g = lines(&String::from_utf8(out.stdout).unwrap()).pop().unwrap();
    assert_eq!(g["prompt_tokens"], out_prompt_tokens(&env, "xyz>"));
    // Chat: two lines, two replies.
    let mut child = env.cmd(&["generate", "upper-full", "--chat", "-n", "3", "--ignore-eos", "--json"]);
    child.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = child.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n\nabc>\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replies = lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(replies.iter().filter(|l| l["type"] == "generation").count(), 2, "blank lines are skipped");

    // Export.
    let dest = env.path("exported");
    let report = env.json(&["export", "upper-full", "hf", dest.to_str().unwrap()]);
    assert_eq!(report["format"].as_str(), Some("hf"));
    assert!(dest.join("config.json").is_file() && dest.join("model.safetensors").is_file());
    let again = env.run(&["export", "upper-full", "hf", dest.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(6), "already_exists without --overwrite");
    env.ok(&["export", "upper-full", "hf", dest.to_str().unwrap(), "--overwrite", "-q"]);
    // The export registers back as a base model; a bundle restores the same id.
    let back = env.json(&["models", "register", dest.to_str().unwrap(), "--name", "reimported", "--tag", "roundtrip"]);
    assert_eq!(
        (back["name"].as_str(), back["kind"].as_str(), back["tags"][0].as_str()),
        (Some("reimported"), Some("base"), Some("roundtrip"))
    );
    let zip = env.path("base.zip");
    env.ok(&["export", "base@1", "bundle", zip.to_str().unwrap(), "-q"]);
    let other = Env::new();
    let restored = other.json(&["models", "register", zip.to_str().unwrap()]);
    assert_eq!(restored["id"], base["id"]);

    // Stats and usage from the catalog.
    let stats = env.json(&["stats"]);
    assert_eq!(stats["jobs"]["completed"].as_u64(), Some(2));
    let gens = stats["generations"].as_array().unwrap();
    let calls: u64 = gens.iter().map(|g| g["calls"].as_u64().unwrap()).sum();
    assert_eq!(calls, 5, "{gens:?}");
    let shown = env.json(&["models", "show", "upper-full"]);
    assert_eq!(shown["usage"]["calls"].as_u64(), Some(5));
    assert_eq!(shown["model"]["lineage"]["job"].as_str(), Some(job_id.as_str()));
    let human = env.ok(&["stats"]);
    assert!(human.contains("jobs: 2 total, 2 completed"), "{human}");

    // Deleting: the base is in use.
    let out = env.run(&["models", "rm", "base"]);
    assert_eq!(out.status.code(), Some(8), "in_use: {}", String::from_utf8_lossy(&out.stderr));
    let out = env.run(&["datasets", "rm", "upper"]);
    assert_eq!(out.status.code(), Some(8), "in_use: {}", String::from_utf8_lossy(&out.stderr));
    env.ok(&["models", "alias", "rm", "base", "stable"]);
    assert_eq!(env.json(&["models", "alias", "ls", "base"]), serde_json::json!({}));
    env.ok(&["models", "rm", "upper-full"]);
    let left: Vec<Value> = env.json(&["models", "ls", "--kind", "full"]).as_array().unwrap().clone();
    assert!(left.is_empty());
    let names: Vec<String> = env
        .json(&["models", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "base, the LoRA adapter and reimported: {names:?}");
}

/// The prompt length of `p` as the model counts it (a generation without stdin).
fn out_prompt_tokens(env: &Env, p: &str) -> Value {
    let out = lines(&env.ok(&["generate", "upper-full", p, "-n", "1", "--json", "--no-record"]));
    out.last().unwrap()["prompt_tokens"].clone()
}
