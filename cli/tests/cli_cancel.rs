//! Ctrl-C during `anneal train` cancels through the CancelToken: the job checkpoints,
//! ends `cancelled`, the command says how to resume and exits 130; `jobs resume`
//! continues it and `jobs cancel` stops it from another process.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};

use crate::common::{lines, Env};
use serde_json::Value;

/// Reads JSON event lines from the child until one of type `ty`; returns them.
fn until(child: &mut Child, reader: &mut impl BufRead, ty: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the run ended before a `{ty}` event: {seen:?}\n{err}");
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        let done = v["type"] == ty;
        seen.push(v);
        if done {
            return seen;
        }
    }
}

#[test]
fn ctrl_c_cancels_training_and_resume_continues() {
    let env = Env::new();
    let tiny = env.tiny_jsonl("tiny.jsonl", 40);
    env.ok(&["import", tiny.to_str().unwrap(), "--name", "upper", "-q"]);
    env.ok(&["models", "create", "nano", "--name", "base", "-q"]);

    // Long enough never to finish on its own in this test.
    let args = [
        "train",
        "--base",
        "base",
        "--dataset",
        "upper",
        "--method",
        "full",
        "--epochs",
        "20000",
        "--seq-len",
        "16",
        "--json",
    ];
    let mut child = env.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let started = until(&mut child, &mut reader, "step");
    let job = started[0]["job_id"].as_str().unwrap().to_string();
    let st = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let events = lines(&rest);
    let last = events.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["status"].as_str()),
        (Some("job_finished"), Some("cancelled")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["type"] == "checkpoint"), "a checkpoint is written on cancel: {events:?}");
    assert!(err.contains(&format!("anneal jobs resume {job}")), "{err}");
    let rec = env.json(&["jobs", "show", &job]);
    assert_eq!(rec["job"]["status"].as_str(), Some("cancelled"));
    let stopped_at = rec["job"]["step"].as_u64().unwrap();
    assert!(stopped_at >= 1);

    // Resume in one process, cancel from another.
    let mut child =
        env.cmd(&["jobs", "resume", &job, "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let resumed = until(&mut child, &mut reader, "step");
    let first = resumed.iter().find(|e| e["type"] == "step").unwrap();
    assert_eq!(first["step"].as_u64(), Some(stopped_at + 1), "resumed from the checkpoint");
    // Another process follows the log until the job ends.
    let follow = env.cmd(&["jobs", "logs", &job, "-f"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let c = env.json(&["jobs", "cancel", &job]);
    assert!(c["cancel_requested"].as_bool().unwrap() || c["status"] == "cancelled", "{c}");
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let last = lines(&rest).pop().unwrap();
    assert_eq!(last["status"].as_str(), Some("cancelled"));
    let rec = env.json(&["jobs", "show", &job]);
    assert!(rec["job"]["step"].as_u64().unwrap() > stopped_at);
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success());
    let log = String::from_utf8(followed.stdout).unwrap();
    assert!(log.contains("[info] resuming at step") && log.contains("cancelled at step"), "{log}");
    assert!(String::from_utf8_lossy(&followed.stderr).contains(&format!("job {job} cancelled")));
}
