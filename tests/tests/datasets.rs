#![allow(clippy::unwrap_used)]
//! DatasetStore end to end: every source format, detection, mapping, duplicates,
//! preview/stats/split, and every bad-input case leaving nothing behind.

use std::collections::BTreeMap;

use crate::common::{dataset_dirs, write};
use anneal::{
    CancelToken, DatasetFormat, Event, EventSink, FinishStatus, Home, ImportOptions, OnDuplicate, RecordingSink,
    SourceFormat, TxtMode,
};
use serde_json::json;

fn home() -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    (d, h)
}

fn named(name: &str) -> ImportOptions {
    ImportOptions { name: Some(name.into()), ..Default::default() }
}

#[test]
fn imports_every_source_format_and_detects_shapes() {
    let (d, h) = home();
    let ds = h.datasets();
    let cases: Vec<(&str, &[u8], DatasetFormat, u64)> = vec![
        ("text.jsonl", b"{\"text\": \"hello\"}\n\n{\"text\": \"world\"}\n", DatasetFormat::Text, 2),
        (
            "comp.json",
            br#"[{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]"#,
            DatasetFormat::Completion,
            2,
        ),
        ("inst.jsonl", br#"{"instruction": "add", "input": "1 1", "output": "2"}"#, DatasetFormat::Instruction, 1),
        (
            "chat.jsonl",
            br#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
            DatasetFormat::Chat,
            1,
        ),
        ("tab.csv", b"review,label\ngreat film,pos\n\"bad, very bad\",neg\n", DatasetFormat::Tabular, 2),
        ("lines.txt", b"first line\n\nsecond line\r\nthird\n", DatasetFormat::Text, 3),
        ("pc.tsv", b"prompt\tcompletion\nq\ta\n", DatasetFormat::Completion, 1),
    ];
    for (name, content, format, n) in cases {
        let p = write(d.path(), name, content);
        let rec = ds.import_file(&p, &ImportOptions::default()).unwrap();
        assert_eq!((rec.format, rec.num_records), (format, n), "{name}");
        assert_eq!(rec.name, name.split('.').next().unwrap());
        assert!(rec.path.starts_with(h.root().join("datasets").join(&rec.sha256)));
        assert_eq!(rec.source, std::fs::canonicalize(&p).unwrap().display().to_string());
    }
    let tab = ds.preview("tab", 10).unwrap();
    assert_eq!(tab[1], json!({"features": {"review": "bad, very bad"}, "label": "neg"}));
    let lines = ds.preview("lines", 10).unwrap();
    assert_eq!(lines[1], json!({"text": "second line"}));
    assert_eq!(ds.list().unwrap().len(), 7);
    // Whole-file TXT.
    let p = write(d.path(), "doc.txt", b"a\nb\n");
    let rec = ds.import_file(&p, &ImportOptions { txt_mode: TxtMode::Document, ..Default::default() }).unwrap();
    assert_eq!(rec.num_records, 1);
    assert_eq!(ds.preview(&rec.id, 1).unwrap()[0], json!({"text": "a\nb\n"}));
}

#[test]
fn forced_format_and_column_mapping() {
    let (d, h) = home();
    let p = write(d.path(), "qa.csv", b"question,answer,extra\nWhat is 2+2?,4,x\n");
    let columns: BTreeMap<String, String> =
        [("prompt".into(), "question".into()), ("completion".into(), "answer".into())].into();
    let rec = h.datasets().import_file(&p, &ImportOptions { columns: columns.clone(), ..Default::default() }).unwrap();
    assert_eq!(rec.format, DatasetFormat::Completion);
    assert_eq!(rec.columns, columns);
    assert_eq!(h.datasets().preview(&rec.id, 1).unwrap()[0], json!({"prompt": "What is 2+2?", "completion": "4"}));
    // A JSONL with a text field forced to text while it also has a label.
    let p = write(d.path(), "t.jsonl", b"{\"text\": \"x\", \"label\": 1}\n");
    let rec = h
        .datasets()
        .import_file(&p, &ImportOptions { format: Some(DatasetFormat::Tabular), ..Default::default() })
        .unwrap();
    assert_eq!(rec.format, DatasetFormat::Tabular);
}

#[test]
fn in_memory_records() {
    let (_d, h) = home();
    let recs = (0..2500).map(|i| Ok(json!({"prompt": format!("p{i}"), "completion": format!("c{i}")})));
    let mut sink = RecordingSink::new();
    let rec = h.datasets().import_records_with(recs, &named("mem"), &mut sink, &CancelToken::new()).unwrap();
    assert_eq!(
        (rec.num_records, rec.format, rec.source_format),
        (2500, DatasetFormat::Completion, SourceFormat::Records)
    );
    let types = sink.types();
    assert_eq!(types.first(), Some(&"task_started"));
    assert_eq!(types.last(), Some(&"task_finished"));
    assert!(types.iter().filter(|t| **t == "task_progress").count() >= 2);
    // A bad record names its index and field.
    let bad = vec![Ok(json!({"text": "a"})), Ok(json!({"text": 5}))];
    let e = h.datasets().import_records(bad, &named("bad")).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("record 2") && e.to_string().contains("`text`"), "{e}");
}

#[test]
fn duplicates_are_detected_by_content() {
    let (d, h) = home();
    let a = write(d.path(), "a.jsonl", b"{\"text\": \"same\"}\n");
    // Same records, other file format: same normalised content.
    let b = write(d.path(), "b.csv", b"text\nsame\n");
    let first = h.datasets().import_file(&a, &ImportOptions::default()).unwrap();
    let e = h.datasets().import_file(&b, &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "duplicate_content");
    assert!(e.to_string().contains(&first.id.0) && e.to_string().contains("`a`"), "{e}");
    let again = h
        .datasets()
        .import_file(&b, &ImportOptions { on_duplicate: OnDuplicate::Reuse, ..Default::default() })
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(h.datasets().list().unwrap().len(), 1);
    assert_eq!(dataset_dirs(&h), vec![first.sha256.clone()]);
}

#[test]
fn preview_stats_split_get_delete() {
    let (d, h) = home();
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!("{{\"prompt\": \"question {i}\", \"completion\": \"{}\"}}\n", "x".repeat(i % 7)));
    }
    let p = write(d.path(), "qa.jsonl", body.as_bytes());
    let ds = h.datasets();
    let rec = ds.import_file(&p, &ImportOptions::default()).unwrap();
    assert_eq!(ds.preview("qa", 3).unwrap().len(), 3);
    assert!(ds.preview("qa", 0).unwrap().is_empty());
    assert_eq!(ds.preview("qa", 1000).unwrap().len(), 100);
    let st = ds.stats(&rec.id).unwrap();
    assert_eq!(st.num_records, 100);
    assert_eq!(st.bytes, rec.bytes);
    assert_eq!(st.fields["completion"].max_chars, 6);
    assert_eq!(st.length_histogram.iter().map(|b| b.count).sum::<u64>(), 100);

    let s1 = ds.split("qa", 0.2, 7, None).unwrap();
    assert_eq!((s1.train.num_records, s1.val.num_records), (80, 20));
    assert_eq!((s1.train.name.as_str(), s1.val.name.as_str()), ("qa-train", "qa-val"));
    assert_eq!(s1.val.parent_id.as_ref(), Some(&rec.id));
    // Same arguments, same split (returns the existing halves).
    let s2 = ds.split("qa", 0.2, 7, None).unwrap();
    assert_eq!((s2.train.id.clone(), s2.val.id.clone()), (s1.train.id.clone(), s1.val.id.clone()));
    // Another seed, other records, same sizes.
    let s3 = ds.split("qa", 0.2, 8, Some(("qa-t8".into(), "qa-v8".into()))).unwrap();
    assert_eq!(s3.val.num_records, 20);
    assert_ne!(s3.val.sha256, s1.val.sha256);
    // Halves partition the original.
    let mut all: Vec<_> = ds.preview(&s1.train.id, 1000).unwrap();
    all.extend(ds.preview(&s1.val.id, 1000).unwrap());
    all.sort_by_key(|v| v.to_string());
    let mut orig = ds.preview(&rec.id, 1000).unwrap();
    orig.sort_by_key(|v| v.to_string());
    assert_eq!(all, orig);
    assert_eq!(ds.split("qa", 1.5, 0, None).unwrap_err().code(), "invalid_config");
    // All or nothing: one name for both halves, or a val half that cannot be stored,
    // leaves no half behind.
    let before = ds.list().unwrap().len();
    let e = ds.split("qa", 0.5, 1, Some(("x".into(), "x".into()))).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    let e = ds.split("qa", 0.5, 1, Some(("fresh-half".into(), "qa-val".into()))).unwrap_err();
    assert_eq!(e.code(), "already_exists");
    assert_eq!(ds.list().unwrap().len(), before);
    assert_eq!(ds.get("fresh-half").unwrap_err().code(), "not_found");
    // Only regular files are read: a FIFO would block forever.
    let fifo = h.root().join("pipe.jsonl");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let e = ds.import_file(&fifo, &Default::default()).unwrap_err();
    assert!(e.code() == "invalid_config" && e.to_string().contains("not a regular file"), "{e}");

    assert_eq!(ds.get("qa").unwrap().id, rec.id);
    assert_eq!(ds.get(&rec.id).unwrap().name, "qa");
    ds.delete("qa-t8", false).unwrap();
    assert_eq!(ds.get("qa-t8").unwrap_err().code(), "not_found");
    assert!(!h.root().join("datasets").join(&s3.train.sha256).exists());
    assert_eq!(ds.delete("nope", false).unwrap_err().code(), "not_found");
}

#[test]
fn import_is_cancellable_and_reports_progress() {
    let (d, h) = home();
    let mut body = String::new();
    for i in 0..60_000 {
        body.push_str(&format!("{{\"text\": \"record number {i} with some padding text\"}}\n"));
    }
    let p = write(d.path(), "big.jsonl", body.as_bytes());
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let rec = RecordingSink::new();
    let mut rec2 = rec.clone();
    let mut sink = move |e: &Event| {
        if matches!(e, Event::TaskProgress { .. }) {
            c2.cancel();
        }
        rec2.on_event(e)
    };
    let err = h.datasets().import_file_with(&p, &ImportOptions::default(), &mut sink, &cancel).unwrap_err();
    assert_eq!(err.code(), "cancelled");
    let ev = rec.events();
    assert!(matches!(ev.last(), Some(Event::TaskFinished { status: FinishStatus::Cancelled, .. })));
    assert!(h.datasets().list().unwrap().is_empty());
    assert!(dataset_dirs(&h).is_empty(), "{:?}", dataset_dirs(&h));
    // Uncancelled: progress in bytes up to the file size.
    let rec = RecordingSink::new();
    let mut s = rec.clone();
    h.datasets().import_file_with(&p, &ImportOptions::default(), &mut s, &CancelToken::new()).unwrap();
    let size = std::fs::metadata(&p).unwrap().len();
    let last_progress = rec.events().iter().rev().find_map(|e| match e {
        Event::TaskProgress { done, total, .. } => Some((*done, *total)),
        _ => None,
    });
    assert_eq!(last_progress, Some((size, Some(size))));
}

/// Each bad input: a typed error naming file, record and field; nothing left behind.
#[test]
fn bad_inputs_are_typed_and_leave_nothing() {
    let (d, h) = home();
    let ds = h.datasets();
    let taken = write(d.path(), "taken.jsonl", b"{\"text\": \"t\"}\n");
    ds.import_file(&taken, &ImportOptions::default()).unwrap();
    let before_list = ds.list().unwrap();
    let before_dirs = dataset_dirs(&h);

    let mut invalid_utf8 = b"{\"text\": \"ok\"}\n{\"text\": \"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(b"\"}\n");
    let mut invalid_utf8_csv = b"text,label\nok,1\n".to_vec();
    invalid_utf8_csv.extend_from_slice(&[0xc3, 0x28]);
    invalid_utf8_csv.extend_from_slice(b",2\n");
    let cols = |p: &str, c: &str| -> BTreeMap<String, String> {
        [("prompt".to_string(), p.to_string()), ("completion".to_string(), c.to_string())].into()
    };
    struct Case {
        what: &'static str,
        file: &'static str,
        content: Vec<u8>,
        opts: ImportOptions,
        code: &'static str,
        must_contain: Vec<&'static str>,
    }
    let cases = vec![
        Case { what: "malformed JSON at line 3", file: "bad.jsonl", content: b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\",}\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["bad.jsonl", "record 3", "malformed JSON"] },
        Case { what: "malformed JSON array", file: "bad.json", content: b"[{\"text\": \"a\"},\n {\"text\" \"b\"}]".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["bad.json", "record 2", "line 2"] },
        Case { what: "missing column in record 2", file: "missing.jsonl", content: b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\"}\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["missing.jsonl", "record 2", "`completion`"] },
        Case { what: "misnamed mapped column", file: "mapped.csv", content: b"question,answer\nq,a\n".to_vec(), opts: ImportOptions { columns: cols("question", "answr"), ..Default::default() }, code: "invalid_data", must_contain: vec!["mapped.csv", "record 2", "`answr`", "mapped to `completion`"] },
        Case { what: "undetectable columns", file: "odd.jsonl", content: b"{\"foo\": \"a\"}\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["odd.jsonl", "record 1", "foo"] },
        Case { what: "empty file", file: "empty.jsonl", content: b"".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["empty.jsonl", "empty"] },
        Case { what: "blank file", file: "blank.jsonl", content: b"\n\n  \n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["blank.jsonl", "no records"] },
        Case { what: "empty CSV", file: "empty.csv", content: b"".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["empty.csv", "empty"] },
        Case { what: "header-only CSV", file: "header.csv", content: b"text\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["header.csv", "no records"] },
        Case { what: "empty JSON array", file: "none.json", content: b"[]".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["none.json", "no records"] },
        Case { what: "invalid UTF-8 (JSONL)", file: "latin.jsonl", content: invalid_utf8, opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["latin.jsonl", "record 2", "UTF-8"] },
        Case { what: "invalid UTF-8 (CSV)", file: "latin.csv", content: invalid_utf8_csv, opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["latin.csv", "record 3", "UTF-8", "column 1"] },
        Case { what: "ragged CSV", file: "ragged.csv", content: b"text,label\na,1\nb,2,3\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["ragged.csv", "record 3", "3 fields", "header has 2"] },
        Case { what: "format override that does not fit", file: "fit.jsonl", content: b"{\"text\": \"a\"}\n".to_vec(), opts: ImportOptions { format: Some(DatasetFormat::Chat), ..Default::default() }, code: "invalid_data", must_contain: vec!["fit.jsonl", "record 1", "`messages`"] },
        Case { what: "mapping a field the format lacks", file: "fit2.jsonl", content: b"{\"text\": \"a\"}\n".to_vec(), opts: ImportOptions { format: Some(DatasetFormat::Text), columns: cols("a", "b"), ..Default::default() }, code: "invalid_config", must_contain: vec!["columns.completion"] },
        Case { what: "bad chat role", file: "chat.jsonl", content: b"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["chat.jsonl", "record 2", "messages[0].role", "robot"] },
        Case { what: "not an object", file: "arr.jsonl", content: b"[1, 2]\n".to_vec(), opts: ImportOptions::default(), code: "invalid_data", must_contain: vec!["arr.jsonl", "record 1", "an array"] },
        Case { what: "name taken", file: "x.jsonl", content: b"{\"text\": \"new\"}\n".to_vec(), opts: named("taken"), code: "already_exists", must_contain: vec!["taken"] },
        Case { what: "invalid name", file: "y.jsonl", content: b"{\"text\": \"new\"}\n".to_vec(), opts: named("bad name"), code: "invalid_config", must_contain: vec!["`name`"] },
    ];
    for c in cases {
        let p = write(d.path(), c.file, &c.content);
        let e = ds.import_file(&p, &c.opts).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), c.code, "{}: {msg}", c.what);
        for s in &c.must_contain {
            assert!(msg.contains(s), "{}: `{s}` not in: {msg}", c.what);
        }
        assert_eq!(ds.list().unwrap(), before_list, "{}", c.what);
        assert_eq!(dataset_dirs(&h), before_dirs, "{}", c.what);
    }
    // A path that doesn't exist.
    let e = ds.import_file(d.path().join("nope.jsonl"), &ImportOptions::default()).unwrap_err();
    assert_eq!(e.code(), "file_not_found");
    assert!(e.to_string().contains("nope.jsonl"));
    // A directory.
    assert_eq!(ds.import_file(d.path(), &ImportOptions::default()).unwrap_err().code(), "invalid_config");
    assert_eq!(ds.list().unwrap(), before_list);
    assert_eq!(dataset_dirs(&h), before_dirs);
}

// ---------------------------------------------------------------- record size cap

#[test]
fn records_over_max_record_bytes_are_refused_while_reading() {
    let (d, h) = home();
    let ds = h.datasets();
    assert_eq!(ImportOptions::default().max_record_bytes, 16 << 20);
    let capped = |n: u64| ImportOptions { max_record_bytes: n, ..Default::default() };
    // A 3 MB line under a 1 MiB cap, in every line- and row-based format, and a JSON
    // array element: invalid_data naming the file, the line (or record) and the limit.
    let long = "x".repeat(3 << 20);
    let cases: Vec<(&str, String, &str)> = vec![
        ("long.jsonl", format!("{{\"text\": \"ok\"}}\n{{\"text\": \"{long}\"}}\n"), "line 2"),
        ("long.txt", format!("ok\n\n{long}\n"), "line 3"),
        ("long.csv", format!("text,label\nok,1\n\"{long}\",2\n"), "line 3"),
        ("long.json", format!("[{{\"text\": \"ok\"}}, {{\"text\": \"{long}\"}}]"), "record 2"),
    ];
    for (file, content, what) in cases {
        let p = write(d.path(), file, content.as_bytes());
        let e = ds.import_file(&p, &capped(1 << 20)).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), "invalid_data", "{file}: {msg}");
        assert!(
            msg.contains(file) && msg.contains(&format!("{what} is longer than max_record_bytes (1048576 bytes)")),
            "{msg}"
        );
        // A cap above the record: imported (the same text records from every file).
        let opts = ImportOptions {
            name: Some(format!("ok-{}", &file[5..])),
            on_duplicate: OnDuplicate::Reuse,
            ..capped(4 << 20)
        };
        assert_eq!(ds.import_file(&p, &opts).unwrap().num_records, 2);
    }
    // Whole-file TXT is one record.
    let p = write(d.path(), "doc.txt", long.as_bytes());
    let e = ds.import_file(&p, &ImportOptions { txt_mode: TxtMode::Document, ..capped(1 << 20) }).unwrap_err();
    assert!(
        e.code() == "invalid_data" && e.to_string().contains("the file (one record in txt_mode `document`)"),
        "{e}"
    );
    // The default (16 MiB) holds too.
    let p = write(d.path(), "huge.txt", "y".repeat((16 << 20) + 1).as_bytes());
    let e = ds.import_file(&p, &ImportOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("huge.txt, record 1: line 1 is longer than max_record_bytes (16777216 bytes)"),
        "{e}"
    );
    // In memory: the record as stored.
    let recs = vec![Ok(json!({"text": "a"})), Ok(json!({"text": "b".repeat(100)}))];
    let e = ds.import_records(recs, &ImportOptions { name: Some("mem".into()), ..capped(50) }).unwrap_err();
    assert!(
        e.code() == "invalid_data" && e.to_string().contains("record 2") && e.to_string().contains("(50 bytes)"),
        "{e}"
    );
    // Zero is not a limit.
    let p = write(d.path(), "small.jsonl", b"{\"text\": \"s\"}\n");
    for e in [ds.import_file(&p, &capped(0)).unwrap_err(), ds.import_records(vec![], &capped(0)).unwrap_err()] {
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("max_record_bytes"), "{e}");
    }
    // Nothing of the refused imports was kept: the accepted ones are one text dataset.
    assert_eq!(ds.list().unwrap().len(), 1);
    assert_eq!(dataset_dirs(&h).len(), 1);
}

#[test]
fn a_cancelled_import_stops_at_the_first_read() {
    let (d, h) = home();
    let p = write(d.path(), "one.jsonl", format!("{{\"text\": \"{}\"}}\n", "z".repeat(4 << 20)).as_bytes());
    // Cancelled as the task starts: the reader refuses its first read (the unit tests
    // in data/read.rs cancel in the middle of a record).
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let mut sink = move |e: &Event| {
        if matches!(e, Event::TaskStarted { .. }) {
            c2.cancel();
        }
        Ok(())
    };
    let e = h.datasets().import_file_with(&p, &ImportOptions::default(), &mut sink, &cancel).unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert!(h.datasets().list().unwrap().is_empty());
    assert!(dataset_dirs(&h).is_empty(), "{:?}", dataset_dirs(&h));
}

// ---------------------------------------------------------------- non-regular files

/// Runs `f` on another thread; fails if it has not returned within 10 s (a blocked open).
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what}: import did not return"))
}

#[cfg(unix)]
#[test]
fn fifos_devices_sockets_and_directories_are_refused_before_opening() {
    let (d, h) = home();
    let fifo = d.path().join("pipe.jsonl");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sock = d.path().join("sock.jsonl");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fifo_link = d.path().join("fifo-link.jsonl");
    std::os::unix::fs::symlink(&fifo, &fifo_link).unwrap();
    let dir_link = d.path().join("dir-link.jsonl");
    std::os::unix::fs::symlink(d.path(), &dir_link).unwrap();
    let mut paths = vec![fifo, sock, fifo_link, dir_link, d.path().to_path_buf()];
    if std::path::Path::new("/dev/zero").exists() {
        paths.push("/dev/zero".into());
    }
    for p in paths {
        let ds = h.datasets();
        let p2 = p.clone();
        let e = promptly(&p.display().to_string(), move || ds.import_file(&p2, &ImportOptions::default()).unwrap_err());
        let msg = e.to_string();
        assert_eq!(e.code(), "invalid_config", "{msg}");
        assert!(msg.contains("path") && msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("not a regular file") || msg.contains("is a directory"), "{msg}");
    }
    assert!(h.datasets().list().unwrap().is_empty());
    assert!(dataset_dirs(&h).is_empty());
}

// ---------------------------------------------------------------- races

/// Runs `f(i, home)` on `n` threads at once, each with its own `Home::open` of `root`.
fn race<T: Send + 'static>(
    root: &std::path::Path,
    n: usize,
    f: impl Fn(usize, Home) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (root, barrier, f) = (root.to_path_buf(), barrier.clone(), f.clone());
            std::thread::spawn(move || {
                let h = Home::open(&root).unwrap();
                barrier.wait();
                f(i, h)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn concurrent_imports_of_one_file_end_as_sequential_ones() {
    let (d, h) = home();
    let root = h.root().to_path_buf();
    // Sequentially first: the same file again (same default name) is duplicate content,
    // not a name clash; with reuse, the stored dataset.
    let p = write(d.path(), "seq.jsonl", b"{\"text\": \"seq\"}\n");
    let first = h.datasets().import_file(&p, &ImportOptions::default()).unwrap();
    assert_eq!(h.datasets().import_file(&p, &ImportOptions::default()).unwrap_err().code(), "duplicate_content");
    let reuse = ImportOptions { on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    assert_eq!(h.datasets().import_file(&p, &reuse).unwrap().id, first.id);
    for round in 0..4 {
        let mut body = String::new();
        for i in 0..2000 {
            body.push_str(&format!("{{\"text\": \"round {round} record {i}\"}}\n"));
        }
        let p = write(d.path(), &format!("race{round}.jsonl"), body.as_bytes());
        let on_duplicate = if round % 2 == 0 { OnDuplicate::Error } else { OnDuplicate::Reuse };
        let results = race(&root, 4, move |_, h| {
            h.datasets().import_file(&p, &ImportOptions { on_duplicate, ..Default::default() })
        });
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let codes: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
        match on_duplicate {
            OnDuplicate::Error => {
                assert_eq!(ok.len(), 1, "round {round}: {codes:?}");
                for r in &results {
                    if let Err(e) = r {
                        assert_eq!(e.code(), "duplicate_content", "round {round}: {e}");
                    }
                }
            }
            OnDuplicate::Reuse => {
                assert_eq!(ok.len(), 4, "round {round}: {codes:?}");
                assert!(ok.iter().all(|r| r.id == ok[0].id));
            }
        }
        let stored = h.datasets().get(format!("race{round}")).unwrap();
        assert_eq!((stored.id.clone(), stored.num_records), (ok[0].id.clone(), 2000));
        assert_eq!(h.datasets().preview(&stored.id, 1).unwrap()[0], json!({"text": format!("round {round} record 0")}));
    }
    // One row and one directory per content, nothing staged left over.
    let list = h.datasets().list().unwrap();
    assert_eq!(list.len(), 5);
    let mut shas: Vec<_> = list.iter().map(|r| r.sha256.clone()).collect();
    shas.sort();
    assert_eq!(dataset_dirs(&h), shas);
}

#[test]
fn concurrent_splits_leave_one_result() {
    let (d, h) = home();
    let root = h.root().to_path_buf();
    let mut body = String::new();
    for i in 0..200 {
        body.push_str(&format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n"));
    }
    let src = h.datasets().import_file(write(d.path(), "qa.jsonl", body.as_bytes()), &Default::default()).unwrap();
    // The same split at once: every caller gets the same two halves.
    let results = race(&root, 4, |_, h| h.datasets().split("qa", 0.25, 3, Some(("tr".into(), "va".into()))));
    let ids: Vec<_> = results.into_iter().map(|r| r.unwrap()).map(|s| (s.train.id, s.val.id)).collect();
    assert!(ids.iter().all(|x| *x == ids[0]), "{ids:?}");
    assert_eq!(h.datasets().list().unwrap().len(), 3);
    // Other seeds under the same new names at once: one wins both names, the others
    // are already_exists and store no half.
    let results =
        race(&root, 3, |i, h| h.datasets().split("qa", 0.25, 10 + i as u64, Some(("tr2".into(), "va2".into()))));
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), "already_exists", "{e}");
        }
    }
    let (tr2, va2) = (h.datasets().get("tr2").unwrap(), h.datasets().get("va2").unwrap());
    assert_eq!((tr2.id.clone(), va2.id.clone()), (ok[0].train.id.clone(), ok[0].val.id.clone()));
    let list = h.datasets().list().unwrap();
    assert_eq!(list.len(), 5);
    assert!(list.iter().all(|r| r.parent_id.is_none() || r.parent_id == Some(src.id.clone())));
    let mut shas: Vec<_> = list.iter().map(|r| r.sha256.clone()).collect();
    shas.sort();
    assert_eq!(dataset_dirs(&h), shas);
}

#[test]
fn an_orphaned_content_directory_is_replaced_not_trusted() {
    let (d, h) = home();
    let p = write(d.path(), "o.jsonl", b"{\"text\": \"real\"}\n");
    let first = h.datasets().import_file(&p, &ImportOptions::default()).unwrap();
    h.datasets().delete(&first.id, false).unwrap();
    // What an import killed between its rename and its row could leave (here spoiled).
    let dir = h.root().join("datasets").join(&first.sha256);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("records.jsonl"), b"{\"text\": \"stale\"}\n").unwrap();
    let again = h.datasets().import_file(&p, &ImportOptions::default()).unwrap();
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(h.datasets().preview(&again.id, 5).unwrap(), vec![json!({"text": "real"})]);
    assert_eq!(dataset_dirs(&h), vec![first.sha256]);
}

/// Not run by default: imports the file named by `ANNEAL_IMPORT_PROBE` (with the
/// options in `ANNEAL_IMPORT_OPTIONS`, JSON, if set) into a fresh home and prints the
/// outcome, so that `/usr/bin/time -v` can measure the import's peak RSS (README,
/// "Performance").
#[test]
#[ignore]
fn import_probe() {
    let path = std::env::var("ANNEAL_IMPORT_PROBE").expect("set ANNEAL_IMPORT_PROBE to a file to import");
    let opts: ImportOptions = match std::env::var("ANNEAL_IMPORT_OPTIONS") {
        Ok(j) => anneal::options_from_json(serde_json::from_str(&j).unwrap()).unwrap(),
        Err(_) => ImportOptions::default(),
    };
    let (_d, h) = home();
    match h.datasets().import_file(&path, &opts) {
        Ok(rec) => println!("imported {} records, {} bytes stored", rec.num_records, rec.bytes),
        Err(e) => println!("refused: {} ({e})", e.code()),
    }
}
