//! Streaming readers for JSONL, JSON arrays, CSV/TSV and TXT. Each yields one record
//! at a time as a JSON object, with its 1-based line or record number, so memory stays
//! flat whatever the file size.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::types::{SourceFormat, TxtMode};

/// One raw record: its 1-based position and its fields.
pub(crate) struct RawRecord {
    pub(crate) index: u64,
    pub(crate) fields: Map<String, Value>,
}

/// Counts bytes consumed from the file, for progress.
#[derive(Clone, Default)]
pub(crate) struct ByteCounter(Rc<Cell<u64>>);

impl ByteCounter {
    pub(crate) fn get(&self) -> u64 {
        self.0.get()
    }
}

struct CountingReader<R> {
    inner: R,
    counter: ByteCounter,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.0.set(self.counter.0.get() + n as u64);
        Ok(n)
    }
}

/// Picks the source format from the extension, or sniffs the first byte.
pub(crate) fn detect_source_format(path: &Path) -> Result<SourceFormat> {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let by_ext = match ext.as_deref() {
        Some("jsonl") | Some("ndjson") => Some(SourceFormat::Jsonl),
        Some("csv") => Some(SourceFormat::Csv),
        Some("tsv") => Some(SourceFormat::Tsv),
        Some("txt") | Some("md") | Some("text") => Some(SourceFormat::Txt),
        _ => None,
    };
    if let Some(f) = by_ext {
        return Ok(f);
    }
    // `.json` and unknown extensions: `[` is an array, `{` is JSON lines.
    match first_non_ws_byte(path)? {
        Some(b'[') => Ok(SourceFormat::Json),
        Some(b'{') => Ok(SourceFormat::Jsonl),
        Some(_) if ext.as_deref() == Some("json") => Err(Error::data(
            Location::file(path).at(1),
            "expected a JSON array of records (`[...]`) or one JSON object per line",
        )),
        Some(_) => Err(Error::config(
            "source_format",
            format!("cannot tell the format of {}; pass source_format (jsonl, json, csv, tsv, txt)", path.display()),
        )),
        None => Err(empty_file(path)),
    }
}

fn first_non_ws_byte(path: &Path) -> Result<Option<u8>> {
    let f = File::open(path).with_path(path)?;
    for b in BufReader::new(f).bytes() {
        let b = b.with_path(path)?;
        if !b.is_ascii_whitespace() && b != 0xEF && b != 0xBB && b != 0xBF {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

pub(crate) fn empty_file(path: &Path) -> Error {
    Error::data(Location::file(path), "the file is empty")
}

/// Streams the records of `path` into `visit`.
pub(crate) fn read_file(
    path: &Path,
    format: SourceFormat,
    txt_mode: TxtMode,
    counter: &ByteCounter,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).with_path(path)?;
    if file.metadata().with_path(path)?.len() == 0 {
        return Err(empty_file(path));
    }
    let reader = CountingReader { inner: file, counter: counter.clone() };
    match format {
        SourceFormat::Jsonl => read_jsonl(path, reader, visit),
        SourceFormat::Json => read_json_array(path, reader, visit),
        SourceFormat::Csv => read_csv(path, reader, b',', visit),
        SourceFormat::Tsv => read_csv(path, reader, b'\t', visit),
        SourceFormat::Txt => read_txt(path, reader, txt_mode, visit),
        SourceFormat::Records => Err(Error::config("source_format", "`records` is only for in-memory imports")),
    }
}

fn utf8_line(path: &Path, line_no: u64, buf: Vec<u8>) -> Result<String> {
    String::from_utf8(buf).map_err(|e| {
        Error::data(
            Location::file(path).at(line_no),
            format!("invalid UTF-8 at byte {} of the line", e.utf8_error().valid_up_to() + 1),
        )
    })
}

fn strip_eol(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

/// Calls `f` with each non-blank line (1-based number, text without the line end and
/// a leading BOM), reading one line at a time.
fn for_each_line(path: &Path, reader: impl Read, mut f: impl FnMut(u64, String) -> Result<()>) -> Result<()> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf).with_path(path)? == 0 {
            return Ok(());
        }
        line_no += 1;
        strip_eol(&mut buf);
        if line_no == 1 && buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            buf.drain(..3);
        }
        let line = utf8_line(path, line_no, std::mem::take(&mut buf))?;
        if !line.trim().is_empty() {
            f(line_no, line)?;
        }
    }
}

fn read_jsonl(path: &Path, reader: impl Read, visit: &mut dyn FnMut(RawRecord) -> Result<()>) -> Result<()> {
    for_each_line(path, reader, |line_no, line| {
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            Error::data(Location::file(path).at(line_no), format!("malformed JSON at column {}: {e}", e.column()))
        })?;
        let fields = into_object(value, Location::file(path).at(line_no))?;
        visit(RawRecord { index: line_no, fields })
    })
}

pub(crate) fn into_object(value: Value, loc: Location) -> Result<Map<String, Value>> {
    match value {
        Value::Object(m) => Ok(m),
        other => Err(Error::data(loc, format!("expected a JSON object, found {}", json_type(&other)))),
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Streams the elements of a top-level JSON array without holding the array.
fn read_json_array(path: &Path, reader: impl Read, visit: &mut dyn FnMut(RawRecord) -> Result<()>) -> Result<()> {
    struct Seed<'a, 'b> {
        path: &'a Path,
        visit: &'a mut dyn FnMut(RawRecord) -> Result<()>,
        failure: &'b mut Option<Error>,
        count: &'b mut u64,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            while let Some(v) = seq.next_element::<Value>()? {
                *self.count += 1;
                let n = *self.count;
                let res = into_object(v, Location::file(self.path).at(n))
                    .and_then(|fields| (self.visit)(RawRecord { index: n, fields }));
                if let Err(e) = res {
                    *self.failure = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut failure = None;
    let mut count = 0u64;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, reader));
    let res = Seed { path, visit, failure: &mut failure, count: &mut count }.deserialize(&mut de);
    if let Some(e) = failure {
        return Err(e);
    }
    res.and_then(|_| de.end()).map_err(|e| {
        let what = if e.is_eof() && e.line() <= 1 && e.column() == 0 {
            return empty_file(path);
        } else if e.is_eof() {
            "unexpected end of file"
        } else {
            "malformed JSON"
        };
        Error::data(
            Location::file(path).at(count + 1),
            format!("{what} at line {} column {}: {e}", e.line(), e.column()),
        )
    })
}

fn read_csv(
    path: &Path,
    reader: impl Read,
    delimiter: u8,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let mut r = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(false).from_reader(reader);
    let headers = r.headers().map_err(|e| csv_error(path, e))?.clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
        return Err(empty_file(path));
    }
    let names: Vec<String> = headers.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_string()).collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(Error::data(Location::file(path).at(1), format!("column {} has an empty header", i + 1)));
        }
        if names[..i].contains(n) {
            return Err(Error::data(Location::file(path).at(1).field(n.clone()), "duplicate column name"));
        }
    }
    let mut rec = csv::StringRecord::new();
    loop {
        match r.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = rec.position().map_or(0, |p| p.line());
                let fields =
                    names.iter().zip(rec.iter()).map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect();
                visit(RawRecord { index: line, fields })?;
            }
            Err(e) => return Err(csv_error(path, e)),
        }
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line());
    let mut loc = Location::file(path);
    loc.record = line;
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            Error::data(loc, format!("ragged row: {len} fields where the header has {expected_len}"))
        }
        csv::ErrorKind::Utf8 { err, .. } => {
            Error::data(loc.field(format!("column {}", err.field() + 1)), "invalid UTF-8")
        }
        csv::ErrorKind::Io(_) => Error::Io { path: PathBuf::from(path), source: std::io::Error::other(e.to_string()) },
        _ => Error::data(loc, format!("malformed CSV: {e}")),
    }
}

fn read_txt(
    path: &Path,
    reader: impl Read,
    mode: TxtMode,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let mut r = BufReader::with_capacity(1 << 16, reader);
    match mode {
        TxtMode::Document => {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).with_path(path)?;
            if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
                buf.drain(..3);
            }
            let text = String::from_utf8(buf).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() as u64 + 1;
                Error::data(Location::file(path).at(line), "invalid UTF-8")
            })?;
            if text.trim().is_empty() {
                return Err(empty_file(path));
            }
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(text));
            visit(RawRecord { index: 1, fields })
        }
        TxtMode::Lines => for_each_line(path, r, |line_no, line| {
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(line));
            visit(RawRecord { index: line_no, fields })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path, fmt: SourceFormat) -> Result<Vec<(u64, Map<String, Value>)>> {
        let mut out = Vec::new();
        read_file(path, fmt, TxtMode::Lines, &ByteCounter::default(), &mut |r| {
            out.push((r.index, r.fields));
            Ok(())
        })?;
        Ok(out)
    }

    fn file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(content).unwrap();
        (d, p)
    }

    #[test]
    fn json_array_streams_and_reports_record() {
        let (_d, p) = file("a.json", br#"[{"text":"a"}, {"text":"b"}]"#);
        let r = collect(&p, SourceFormat::Json).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, 2);
        let (_d, p) = file("b.json", b"[{\"text\":\"a\"},\n {\"text\": }]");
        let e = collect(&p, SourceFormat::Json).unwrap_err();
        assert!(e.to_string().contains("record 2") && e.to_string().contains("line 2"), "{e}");
        let (_d, p) = file("c.json", b"[{\"text\":\"a\"}, 3]");
        let e = collect(&p, SourceFormat::Json).unwrap_err();
        assert!(e.to_string().contains("record 2") && e.to_string().contains("a number"), "{e}");
    }

    #[test]
    fn csv_positions_are_lines() {
        let (_d, p) = file("a.csv", b"text,label\n\"multi\nline\",1\nb,2\n");
        let r = collect(&p, SourceFormat::Csv).unwrap();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn detects_by_extension_and_content() {
        let (_d, p) = file("x.json", b"  {\"text\":1}\n{\"text\":2}");
        assert_eq!(detect_source_format(&p).unwrap(), SourceFormat::Jsonl);
        let (_d, p) = file("x.data", b"\n[ ]");
        assert_eq!(detect_source_format(&p).unwrap(), SourceFormat::Json);
    }
}
