//! Running the built `anneal` binary on a temporary home.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_anneal");

/// A temporary home and a place for input files.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `anneal --home <home> args...`, with no ANNEAL_HOME from the caller's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home").arg(self.home()).args(args).env_remove("ANNEAL_HOME").current_dir(self.dir.path());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "anneal {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` and parses stdout as one JSON document.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("anneal {args:?}: not one JSON document ({e}): {s}"))
    }

    /// A small completion dataset (uppercase made-up words), `n` records.
    pub fn tiny_jsonl(&self, name: &str, n: usize) -> PathBuf {
        let p = self.path(name);
        write_tiny(&p, n);
        p
    }
}

pub fn write_tiny(p: &Path, n: usize) {
    let mut s = String::new();
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    for i in 0..n {
        let w: String = (0..3 + i % 3).map(|k| letters[(i * 7 + k * 11) % 26] as char).collect();
        s.push_str(&format!("{{\"prompt\": \"{w}>\", \"completion\": \"{}\"}}\n", w.to_uppercase()));
    }
    std::fs::write(p, s).unwrap();
}

/// JSON lines of stdout.
pub fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}
