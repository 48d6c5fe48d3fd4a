//! Import throughput and peak memory for a generated JSONL file.
//!
//! Run:    cargo run --release -p anneal-benches --bin import_throughput -- [MB ...]   (default: 50 200)
//! Output: one line per size: MB, seconds, MB/s, records/s, peak RSS of the import.
//!
//! The file is generated first (streamed to disk); the peak RSS counter (VmHWM) is then
//! reset through /proc/self/clear_refs so the figure covers the import alone.

use std::io::{BufWriter, Write};
use std::time::Instant;

use anneal::{Home, ImportOptions};

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn vm_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn generate(path: &std::path::Path, target_bytes: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut bytes, mut i) = (0u64, 0u64);
    while bytes < target_bytes {
        let line = format!(
            "{{\"prompt\": \"Question {i}: what is {} plus {}? Explain step by step.\", \"completion\": \"The answer is {}. First we add the ones, then the tens, and we carry where needed.\"}}\n",
            i % 997,
            i % 313,
            i % 997 + i % 313
        );
        w.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
        i += 1;
    }
    w.flush()?;
    Ok(i)
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let sizes: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![50, 200] } else { sizes };
    let tmp = tempfile::tempdir()?;
    let home = Home::open(tmp.path().join("home"))?;
    println!("| file MB | records | seconds | MB/s | records/s | peak RSS during import (MiB) | RSS before (MiB) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for mb in sizes {
        let path = tmp.path().join(format!("gen-{mb}.jsonl"));
        let n = generate(&path, mb * 1_000_000)?;
        let size = std::fs::metadata(&path)?.len();
        let _ = std::fs::write("/proc/self/clear_refs", "5"); // reset VmHWM to the current RSS
        let before = vm_rss_kib().unwrap_or(0);
        let t = Instant::now();
        let rec = home
            .datasets()
            .import_file(&path, &ImportOptions { name: Some(format!("gen-{mb}")), ..Default::default() })?;
        let secs = t.elapsed().as_secs_f64();
        let peak = vm_hwm_kib().unwrap_or(0);
        assert_eq!(rec.num_records, n);
        println!(
            "| {:.1} | {} | {:.2} | {:.1} | {:.0} | {:.1} | {:.1} |",
            size as f64 / 1e6,
            n,
            secs,
            size as f64 / 1e6 / secs,
            n as f64 / secs,
            peak as f64 / 1024.0,
            before as f64 / 1024.0
        );
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
