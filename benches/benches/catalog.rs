//! Criterion benches for the catalog side: dataset import (bytes/s) and registry
//! register + list.
//!
//! Run: cargo bench -p anneal-benches --bench catalog

use std::io::Write;

use anneal::{Home, ImportOptions, ModelFilter, OnDuplicate, PresetOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn import_jsonl(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = Home::open(tmp.path().join("home")).expect("home");
    let mut g = c.benchmark_group("dataset/import_jsonl");
    for n in [1_000usize, 20_000] {
        let path = tmp.path().join(format!("{n}.jsonl"));
        let mut f = std::fs::File::create(&path).expect("create");
        for i in 0..n {
            writeln!(f, "{{\"prompt\": \"question {i} about something\", \"completion\": \"answer {i}\"}}")
                .expect("write");
        }
        drop(f);
        let bytes = std::fs::metadata(&path).expect("meta").len();
        g.throughput(Throughput::Bytes(bytes));
        let mut k = 0u64;
        g.bench_with_input(BenchmarkId::new("records", n), &path, |b, p| {
            b.iter(|| {
                k += 1;
                let opts = ImportOptions {
                    name: Some(format!("d{n}-{k}")),
                    on_duplicate: OnDuplicate::Reuse,
                    ..Default::default()
                };
                home.datasets().import_file(p, &opts).expect("import")
            })
        });
    }
    g.finish();
}

fn registry_list(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = Home::open(tmp.path().join("home")).expect("home");
    let models = home.models();
    for i in 0..200 {
        models
            .create_preset("nano", &PresetOptions { name: Some(format!("m{}", i % 20)), seed: i, ..Default::default() })
            .expect("preset");
    }
    let mut g = c.benchmark_group("registry");
    g.bench_function("list_200", |b| b.iter(|| models.list(&ModelFilter::default()).expect("list")));
    g.bench_function("resolve_name_at_version", |b| b.iter(|| models.resolve("m7@5").expect("resolve")));
    g.bench_function("create_preset_nano", |b| {
        let mut s = 1000;
        b.iter(|| {
            s += 1;
            models
                .create_preset("nano", &PresetOptions { name: Some("bench".into()), seed: s, ..Default::default() })
                .expect("preset")
        })
    });
    g.finish();
}

criterion_group!(benches, import_jsonl, registry_list);
criterion_main!(benches);
