//! The command line itself: help, completions, exit codes and error messages.
#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::Env;

#[test]
fn help_succeeds_everywhere_with_examples() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    assert!(top.contains("Examples:") && top.contains("anneal train"), "{top}");
    assert!(top.contains("ANNEAL_HOME") && top.contains("./anneal-home"), "{top}");
    assert!(top.contains("130  cancelled") && top.contains("5  not_found"), "exit code table: {top}");
    for cmd in [
        vec!["import"],
        vec!["datasets", "ls"],
        vec!["datasets", "show"],
        vec!["datasets", "preview"],
        vec!["datasets", "rm"],
        vec!["models", "ls"],
        vec!["models", "show"],
        vec!["models", "register"],
        vec!["models", "create"],
        vec!["models", "alias", "set"],
        vec!["models", "rm"],
        vec!["train"],
        vec!["jobs", "ls"],
        vec!["jobs", "logs"],
        vec!["jobs", "cancel"],
        vec!["jobs", "resume"],
        vec!["generate"],
        vec!["export"],
        vec!["stats"],
        vec!["completions"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let h = env.ok(&args);
        assert!(h.contains("Examples:\n  anneal "), "`anneal {}` has no example:\n{h}", cmd.join(" "));
    }
    // Help does not create a home.
    assert!(!env.home().exists());
}

#[test]
fn completions_for_bash() {
    let env = Env::new();
    let s = env.ok(&["completions", "bash"]);
    assert!(s.contains("_anneal()") && s.contains("complete -F _anneal"), "{}", &s[..s.len().min(500)]);
    assert!(s.contains("datasets") && s.contains("--max-new-tokens"), "subcommands and flags are completed");
}

#[test]
fn errors_print_their_code_and_exit_with_its_number() {
    let env = Env::new();
    let out = env.run(&["models", "show", "nope@3"]);
    assert_eq!(out.status.code(), Some(5), "not_found is 5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error[not_found]: ") && err.contains("nope"), "{err}");
    assert!(out.stdout.is_empty());

    let out = env.run(&["import", "missing.jsonl", "--name", "x"]);
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error[file_not_found]: "));

    let out = env.run(&["train", "--base", "b", "--dataset", "d", "--epochs", "0"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error[invalid_config]: ") && err.contains("epochs"), "{err}");

    // A malformed record: invalid_data naming the file and the line.
    let bad = env.path("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": oops}\n").unwrap();
    let out = env.run(&["import", bad.to_str().unwrap(), "--name", "bad"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    // Progress lines come first; the error is the last line.
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error[invalid_data]: ") && last.contains("bad.jsonl") && last.contains("record 2"),
        "{err}"
    );
    // Nothing half-written.
    assert_eq!(env.json(&["datasets", "ls"]), serde_json::json!([]));
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    for args in [&["bogus"][..], &["generate"][..], &["jobs", "ls", "--status", "sleeping"][..], &["--nope"][..]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn home_comes_from_anneal_home_when_no_flag() {
    let env = Env::new();
    let tiny = env.tiny_jsonl("tiny.jsonl", 10);
    let home = env.path("from-env");
    let out = std::process::Command::new(common::BIN)
        .args(["import", tiny.to_str().unwrap(), "--name", "t", "-q"])
        .env("ANNEAL_HOME", &home)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(home.join("anneal.db").is_file());
    assert!(!env.path("anneal-home").exists());
}
