//! Streaming readers for JSONL, JSON arrays, CSV/TSV and TXT. Each yields one record
//! at a time as a JSON object, with its 1-based line or record number, so memory stays
//! flat whatever the file size: no record is read past `max_record_bytes`, and every
//! read of the file checks the cancel token, so a cancel ends a read within one buffer
//! (64 KiB) however long the record.

use std::cell::{Cell, RefCell};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::events::CancelToken;
use crate::types::{SourceFormat, TxtMode};

/// Size of the read buffers: a cancel is seen, and a JSON array element's size is
/// checked, within this many bytes.
const BUF: usize = 1 << 16;

/// One raw record: its 1-based position and its fields.
pub(crate) struct RawRecord {
    pub(crate) index: u64,
    pub(crate) fields: Map<String, Value>,
}

/// Why the guarded reader refused to read on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Cancelled,
    TooLong,
}

#[derive(Default)]
struct Shared {
    /// Bytes read from the file so far.
    read: Cell<u64>,
    /// Offset past which the record being read may not extend (`u64::MAX`: no limit).
    limit: Cell<u64>,
    stop: Cell<Option<Stop>>,
    /// CSV only: where rows really start (see [`LeadWatch`]).
    lead: RefCell<Option<LeadWatch>>,
}

/// The csv reader says where a row starts as the offset (and line) where the previous
/// one ended, so blank lines and the `\n` of a `\r\n` that come first are not in its
/// line count. This counts the newlines of that lead, from the last chunk read (which
/// is what the csv reader's buffer holds) and the chunks read after it.
#[derive(Default)]
struct LeadWatch {
    last: Vec<u8>,
    last_start: u64,
    /// Newlines of the lead so far, while its end has not been read.
    pending: Option<u64>,
    /// Newlines of the whole lead.
    done: Option<u64>,
}

impl LeadWatch {
    /// Counts `\r`/`\n` from the start of `bytes` on, adding to `n`; true at the first
    /// other byte.
    fn scan(bytes: &[u8], n: &mut u64) -> bool {
        for b in bytes {
            match b {
                b'\n' => *n += 1,
                b'\r' => {}
                _ => return true,
            }
        }
        false
    }

    fn feed(&mut self, start: u64, bytes: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(bytes);
        self.last_start = start;
        if let Some(mut n) = self.pending {
            if Self::scan(bytes, &mut n) {
                (self.pending, self.done) = (None, Some(n));
            } else {
                self.pending = Some(n);
            }
        }
    }

    fn begin(&mut self, offset: u64) {
        let from = usize::try_from(offset.saturating_sub(self.last_start)).unwrap_or(usize::MAX);
        let mut n = 0;
        let found = offset >= self.last_start && from < self.last.len() && Self::scan(&self.last[from..], &mut n);
        (self.pending, self.done) = if found { (None, Some(n)) } else { (Some(n), None) };
    }
}

/// Counts bytes consumed from the file (for progress) and carries the record limit and
/// the reason a read was refused, shared between a reader and the guarded file.
#[derive(Clone)]
pub(crate) struct ByteCounter(Rc<Shared>);

impl Default for ByteCounter {
    fn default() -> Self {
        let s = Shared::default();
        s.limit.set(u64::MAX);
        Self(Rc::new(s))
    }
}

impl ByteCounter {
    pub(crate) fn get(&self) -> u64 {
        self.0.read.get()
    }

    /// The record that starts now may extend `max` bytes past what has been read.
    fn limit_from_here(&self, max: u64) {
        self.0.limit.set(self.get().saturating_add(max));
    }

    /// The record that starts at `offset` may extend `max` bytes past it.
    fn limit_from(&self, offset: u64, max: u64) {
        self.0.limit.set(offset.saturating_add(max));
    }

    /// Starts watching for the newlines before the first byte of a CSV row that begins
    /// (by the csv reader's count) at `offset`.
    fn watch_lead(&self, offset: u64) {
        self.0.lead.borrow_mut().get_or_insert_with(LeadWatch::default).begin(offset);
    }

    /// The newlines before the row's first byte (as far as read: all of them once the
    /// row has been read).
    fn lead_newlines(&self) -> u64 {
        self.0.lead.borrow().as_ref().map_or(0, |w| w.done.or(w.pending).unwrap_or(0))
    }
}

/// The file as the readers see it: every read checks the cancel token and the record
/// limit, and counts.
struct Guarded<'a, R> {
    inner: R,
    shared: ByteCounter,
    cancel: &'a CancelToken,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let s = &self.shared.0;
        if self.cancel.is_cancelled() {
            s.stop.set(Some(Stop::Cancelled));
            return Err(std::io::Error::other("import cancelled"));
        }
        let room = s.limit.get().saturating_sub(s.read.get());
        if room == 0 {
            // At the limit: the end of the file is fine, one more byte is not (and is
            // not needed again: reading stops for good).
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            s.stop.set(Some(Stop::TooLong));
            return Err(std::io::Error::other("record longer than max_record_bytes"));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..take])?;
        if let Some(w) = s.lead.borrow_mut().as_mut() {
            w.feed(s.read.get(), &buf[..n]);
        }
        s.read.set(s.read.get() + n as u64);
        Ok(n)
    }
}

/// What every reader needs besides the bytes.
pub(crate) struct ReadCtx<'a> {
    pub(crate) txt_mode: TxtMode,
    /// The largest record, in bytes (at least 1).
    pub(crate) max_record: u64,
    pub(crate) cancel: &'a CancelToken,
    pub(crate) counter: ByteCounter,
}

impl ReadCtx<'_> {
    /// The error for a failed read at `record`: the cancel, the limit, or the I/O error.
    fn read_error(&self, path: &Path, record: u64, what: &str, e: std::io::Error) -> Error {
        match self.counter.0.stop.take() {
            Some(Stop::Cancelled) => Error::Cancelled,
            Some(Stop::TooLong) => self.too_long(path, record, what),
            None => Error::io(path, e),
        }
    }

    /// `what` names the record: "line 3", "record 2", "the file".
    fn too_long(&self, path: &Path, record: u64, what: &str) -> Error {
        Error::data(
            Location::file(path).at(record),
            format!(
                "{what} is longer than max_record_bytes ({} bytes); reading stopped there \
                 (raise max_record_bytes to import longer records)",
                self.max_record
            ),
        )
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed). Checked before
/// opening, since opening a FIFO blocks until a writer comes, and again on the opened
/// handle, in case the path was replaced in between (the open does not block: it is
/// non-blocking where the platform allows).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let meta = fs::metadata(path).with_path(path)?;
    check_regular(path, &meta)?;
    let mut opts = fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(O_NONBLOCK);
    }
    let file = opts.open(path).with_path(path)?;
    check_regular(path, &file.metadata().with_path(path)?)?;
    Ok(file)
}

// O_NONBLOCK, where its value is known (std does not export it); elsewhere the check
// before opening stands alone.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "powerpc64"
    )
))]
const O_NONBLOCK: i32 = 0o4000;
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
const O_NONBLOCK: i32 = 0x4;
#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")),
    not(all(
        target_os = "linux",
        any(
            target_arch = "x86",
            target_arch = "x86_64",
            target_arch = "arm",
            target_arch = "aarch64",
            target_arch = "riscv64",
            target_arch = "s390x",
            target_arch = "powerpc64"
        )
    ))
))]
const O_NONBLOCK: i32 = 0;

fn check_regular(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if meta.is_dir() {
        return Err(Error::config("path", format!("{} is a directory, not a file", path.display())));
    }
    if !meta.is_file() {
        // A FIFO, socket or device could block forever or never end.
        return Err(Error::config(
            "path",
            format!("{} is not a regular file (a FIFO, socket or device cannot be imported)", path.display()),
        ));
    }
    Ok(())
}

/// Picks the source format from the extension, or sniffs the first byte (then rewinds).
pub(crate) fn detect_source_format(path: &Path, file: &mut File, cancel: &CancelToken) -> Result<SourceFormat> {
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
    let first = first_non_ws_byte(path, file, cancel)?;
    file.seek(SeekFrom::Start(0)).with_path(path)?;
    match first {
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

fn first_non_ws_byte(path: &Path, file: &mut File, cancel: &CancelToken) -> Result<Option<u8>> {
    let mut buf = vec![0u8; BUF];
    loop {
        cancel.check()?;
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        if n == 0 {
            return Ok(None);
        }
        if let Some(b) = buf[..n].iter().find(|b| !b.is_ascii_whitespace() && ![0xEF, 0xBB, 0xBF].contains(*b)) {
            return Ok(Some(*b));
        }
    }
}

pub(crate) fn empty_file(path: &Path) -> Error {
    Error::data(Location::file(path), "the file is empty")
}

/// Streams the records of `file` (opened from `path`) into `visit`.
pub(crate) fn read_file(
    path: &Path,
    file: File,
    format: SourceFormat,
    ctx: &ReadCtx<'_>,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    if file.metadata().with_path(path)?.len() == 0 {
        return Err(empty_file(path));
    }
    let reader = Guarded { inner: file, shared: ctx.counter.clone(), cancel: ctx.cancel };
    match format {
        SourceFormat::Jsonl => read_jsonl(path, reader, ctx, visit),
        SourceFormat::Json => read_json_array(path, reader, ctx, visit),
        SourceFormat::Csv => read_csv(path, reader, b',', ctx, visit),
        SourceFormat::Tsv => read_csv(path, reader, b'\t', ctx, visit),
        SourceFormat::Txt => read_txt(path, reader, ctx, visit),
        SourceFormat::Records => Err(Error::config("source_format", "`records` is only for in-memory imports")),
        SourceFormat::Images => {
            Err(Error::config("source_format", "a folder of images is imported with `import_images`"))
        }
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
/// a leading BOM), reading one line at a time in chunks: a line longer than
/// `ctx.max_record` bytes (its line end not counted) is refused as soon as the limit is
/// passed, without reading the rest of it.
fn for_each_line(
    path: &Path,
    reader: impl Read,
    ctx: &ReadCtx<'_>,
    mut f: impl FnMut(u64, String) -> Result<()>,
) -> Result<()> {
    let max = ctx.max_record;
    let mut r = BufReader::with_capacity(BUF, reader);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        line_no += 1;
        let what = || format!("line {line_no}");
        loop {
            let chunk = match r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ctx.read_error(path, line_no, &what(), e)),
            };
            if chunk.is_empty() {
                break;
            }
            let (take, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            // Without its end (`\n`, or `\r\n`, whose `\r` may be the last byte read so
            // far) the line may hold `max` bytes.
            let allowed = if ended { max.saturating_add(2) } else { max.saturating_add(1) };
            if (buf.len() + take) as u64 > allowed {
                return Err(ctx.too_long(path, line_no, &what()));
            }
            buf.extend_from_slice(&chunk[..take]);
            r.consume(take);
            if ended {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        strip_eol(&mut buf);
        if buf.len() as u64 > max {
            return Err(ctx.too_long(path, line_no, &what()));
        }
        if line_no == 1 && buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            buf.drain(..3);
        }
        let line = utf8_line(path, line_no, std::mem::take(&mut buf))?;
        if !line.trim().is_empty() {
            f(line_no, line)?;
        }
    }
}

fn read_jsonl(
    path: &Path,
    reader: impl Read,
    ctx: &ReadCtx<'_>,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    for_each_line(path, reader, ctx, |line_no, line| {
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            Error::data(Location::file(path).at(line_no), format!("malformed JSON at column {}: {e}", e.column()))
        })?;
        drop(line); // parsed: one copy of a long record at a time
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

/// Streams the elements of a top-level JSON array without holding the array. Each
/// element, with the separator before it, may span `ctx.max_record` bytes counted from
/// the end of the previous one (checked to within the 64 KiB read buffer, which may
/// already hold the start of the element).
fn read_json_array(
    path: &Path,
    reader: impl Read,
    ctx: &ReadCtx<'_>,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    struct Seed<'a, 'b> {
        path: &'a Path,
        visit: &'a mut dyn FnMut(RawRecord) -> Result<()>,
        failure: &'b mut Option<Error>,
        count: &'b mut u64,
        counter: &'b ByteCounter,
        max: u64,
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
            self.counter.limit_from_here(self.max);
            while let Some(v) = seq.next_element::<Value>()? {
                *self.count += 1;
                let n = *self.count;
                let res = into_object(v, Location::file(self.path).at(n))
                    .and_then(|fields| (self.visit)(RawRecord { index: n, fields }));
                if let Err(e) = res {
                    *self.failure = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
                }
                self.counter.limit_from_here(self.max);
            }
            Ok(())
        }
    }
    let mut failure = None;
    let mut count = 0u64;
    // Before the array starts (leading whitespace) the same limit holds.
    ctx.counter.limit_from_here(ctx.max_record);
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(BUF, reader));
    let seed =
        Seed { path, visit, failure: &mut failure, count: &mut count, counter: &ctx.counter, max: ctx.max_record };
    let res = seed.deserialize(&mut de);
    if let Some(e) = failure {
        return Err(e);
    }
    let res = res.and_then(|_| {
        // After the array: only whitespace may follow, read to the end without a limit.
        ctx.counter.limit_from(0, u64::MAX);
        de.end()
    });
    res.map_err(|e| {
        if e.is_io() {
            let n = count + 1;
            return ctx.read_error(path, n, &format!("record {n}"), e.into());
        }
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

/// Streams the rows of a CSV/TSV file. Each row may span `ctx.max_record` bytes and
/// its line end (`\r\n` counted as 2 bytes, so a row ending in `\n` may be 1 byte over)
/// from the end of the previous row.
fn read_csv(
    path: &Path,
    reader: impl Read,
    delimiter: u8,
    ctx: &ReadCtx<'_>,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let limit = ctx.max_record.saturating_add(2);
    ctx.counter.limit_from(0, limit);
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(BUF)
        .from_reader(reader);
    ctx.counter.watch_lead(0);
    let err = |e: csv::Error, line: u64| -> Error {
        if !e.is_io_error() {
            return csv_error(path, e, line);
        }
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ctx.read_error(path, line, &format!("line {line}"), io),
            other => Error::Internal(format!("csv: {other:?}")),
        }
    };
    let headers = r.headers().map_err(|e| err(e, 1 + ctx.counter.lead_newlines()))?.clone();
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
        // The next row starts where the reader stands, or a few line ends later.
        let next = r.position().clone();
        ctx.counter.limit_from(next.byte(), limit);
        ctx.counter.watch_lead(next.byte());
        let line = || next.line() + ctx.counter.lead_newlines();
        match r.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = line();
                let fields =
                    names.iter().zip(rec.iter()).map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect();
                visit(RawRecord { index: line, fields })?;
            }
            Err(e) => return Err(err(e, line())),
        }
    }
}

/// A csv error in the row on `line`.
fn csv_error(path: &Path, e: csv::Error, line: u64) -> Error {
    let loc = Location::file(path).at(line);
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
    ctx: &ReadCtx<'_>,
    visit: &mut dyn FnMut(RawRecord) -> Result<()>,
) -> Result<()> {
    let mut r = BufReader::with_capacity(BUF, reader);
    match ctx.txt_mode {
        TxtMode::Document => {
            // The whole file is the record: `max_record` bytes, and a BOM.
            let what = "the file (one record in txt_mode `document`)";
            ctx.counter.limit_from(0, ctx.max_record.saturating_add(3));
            let mut buf = Vec::new();
            if let Err(e) = r.read_to_end(&mut buf) {
                return Err(ctx.read_error(path, 1, what, e));
            }
            if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
                buf.drain(..3);
            }
            if buf.len() as u64 > ctx.max_record {
                return Err(ctx.too_long(path, 1, what));
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
        TxtMode::Lines => for_each_line(path, r, ctx, |line_no, line| {
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
        collect_with(path, fmt, TxtMode::Lines, 1 << 20).map(|(r, _)| r)
    }

    /// The records, and the bytes read from the file.
    fn collect_with(path: &Path, fmt: SourceFormat, txt_mode: TxtMode, max: u64) -> Result<Recs> {
        let cancel = CancelToken::new();
        let ctx = ReadCtx { txt_mode, max_record: max, cancel: &cancel, counter: ByteCounter::default() };
        let mut out = Vec::new();
        let res = read_file(path, open_regular(path)?, fmt, &ctx, &mut |r| {
            out.push((r.index, r.fields));
            Ok(())
        });
        res.map(|()| (out, ctx.counter.get())).inspect_err(|_| {
            // Reading stopped within a buffer or two past the limit.
            assert!(ctx.counter.get() <= max + 2 * BUF as u64, "read {} bytes", ctx.counter.get());
        })
    }

    type Recs = (Vec<(u64, Map<String, Value>)>, u64);

    /// Hands out `data` and cancels `token` once `after` bytes have been read.
    struct CancelAfter {
        data: std::io::Cursor<Vec<u8>>,
        token: CancelToken,
        after: u64,
    }

    impl Read for CancelAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.data.read(buf)?;
            if self.data.position() >= self.after {
                self.token.cancel();
            }
            Ok(n)
        }
    }

    #[test]
    fn lines_longer_than_the_limit_are_refused_at_the_limit() {
        // Exactly the limit passes, with either line end; one more byte does not.
        let (_d, p) = file("a.jsonl", b"{\"text\":\"abc\"}\r\n{\"text\":\"abcd\"}\n");
        // (14 and 15 bytes)
        let (r, _) = collect_with(&p, SourceFormat::Jsonl, TxtMode::Lines, 15).unwrap();
        assert_eq!(r.len(), 2);
        let e = collect_with(&p, SourceFormat::Jsonl, TxtMode::Lines, 14).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        let msg = e.to_string();
        assert!(msg.contains("a.jsonl") && msg.contains("line 2 is longer than max_record_bytes (14 bytes)"), "{msg}");
        // A 3 MB line with a 1000-byte limit: refused after reading one buffer.
        let mut big = b"{\"text\":\"ok\"}\n{\"text\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 3 << 20));
        big.extend_from_slice(b"\"}\n");
        let (_d, p) = file("big.txt", &big);
        for fmt in [SourceFormat::Jsonl, SourceFormat::Txt] {
            let e = collect_with(&p, fmt, TxtMode::Lines, 1000).unwrap_err();
            assert!(e.to_string().contains("big.txt, record 2: line 2 is longer"), "{e}");
        }
        // The whole file as one record.
        let e = collect_with(&p, SourceFormat::Txt, TxtMode::Document, 1000).unwrap_err();
        assert!(e.to_string().contains("record 1: the file (one record in txt_mode `document`) is longer"), "{e}");
        let (_d, p) = file("doc.txt", b"\xEF\xBB\xBF12345");
        let (r, _) = collect_with(&p, SourceFormat::Txt, TxtMode::Document, 5).unwrap();
        assert_eq!(r[0].1["text"], "12345");
        assert!(collect_with(&p, SourceFormat::Txt, TxtMode::Document, 4).is_err());
    }

    #[test]
    fn csv_rows_and_json_elements_longer_than_the_limit_are_refused() {
        let long = "y".repeat(3 << 20);
        let (_d, p) = file("a.csv", format!("text,label\nshort,1\n\"{long}\",2\nz,3\n").as_bytes());
        let e = collect_with(&p, SourceFormat::Csv, TxtMode::Lines, 1000).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("a.csv, record 3: line 3 is longer than max_record_bytes (1000"), "{e}");
        // A row of exactly the limit (its line end not counted) passes.
        let (_d, p) = file("b.csv", b"text,l\r\nabcdefgh,1\r\nab,2");
        let (r, _) = collect_with(&p, SourceFormat::Csv, TxtMode::Lines, 10).unwrap();
        assert_eq!(r.len(), 2);
        let e = collect_with(&p, SourceFormat::Csv, TxtMode::Lines, 8).unwrap_err();
        assert!(e.to_string().contains("line 2 is longer"), "{e}");
        // The header counts too.
        let (_d, p) = file("h.tsv", format!("{long}\tlabel\nx\t1\n").as_bytes());
        let e = collect_with(&p, SourceFormat::Tsv, TxtMode::Lines, 1000).unwrap_err();
        assert!(e.to_string().contains("line 1 is longer"), "{e}");

        let (_d, p) = file("a.json", format!("[{{\"text\":\"a\"}}, {{\"text\":\"{long}\"}}]").as_bytes());
        let e = collect_with(&p, SourceFormat::Json, TxtMode::Lines, 1000).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("a.json, record 2: record 2 is longer than max_record_bytes"), "{e}");
        let (r, _) = collect_with(&p, SourceFormat::Json, TxtMode::Lines, 4 << 20).unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_cancel_ends_a_read_within_a_buffer_even_mid_record() {
        let mut big = b"{\"text\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 4 << 20));
        big.extend_from_slice(b"\"}\n");
        type Reader = fn(&Path, CancelAfter, &ReadCtx<'_>) -> Result<()>;
        let readers: [(&str, Reader); 3] = [
            ("lines", |p, r, ctx| read_jsonl(p, guard(r, ctx), ctx, &mut |_| Ok(()))),
            ("json", |p, r, ctx| read_json_array(p, guard(r, ctx), ctx, &mut |_| Ok(()))),
            ("csv", |p, r, ctx| read_csv(p, guard(r, ctx), b',', ctx, &mut |_| Ok(()))),
        ];
        fn guard<'a>(r: CancelAfter, ctx: &ReadCtx<'a>) -> Guarded<'a, CancelAfter> {
            Guarded { inner: r, shared: ctx.counter.clone(), cancel: ctx.cancel }
        }
        for (what, read) in readers {
            let data = match what {
                "json" => [b"[".as_slice(), &big, b"]"].concat(),
                "csv" => [b"text\n".as_slice(), &vec![b'x'; 4 << 20], b"\n"].concat(),
                _ => big.clone(),
            };
            let token = CancelToken::new();
            let ctx =
                ReadCtx { txt_mode: TxtMode::Lines, max_record: 64 << 20, cancel: &token, counter: Default::default() };
            let r = CancelAfter { data: std::io::Cursor::new(data), token: token.clone(), after: 1 << 20 };
            let e = read(Path::new("x"), r, &ctx).unwrap_err();
            assert!(matches!(e, Error::Cancelled), "{what}: {e}");
            assert!(ctx.counter.get() <= (1 << 20) + 2 * BUF as u64, "{what}: read {}", ctx.counter.get());
        }
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
        // The same with `\r\n` line ends.
        let (_d, p) = file("b.csv", b"text,label\r\n\"multi\r\nline\",1\r\nb,2\r\n\r\nc,3");
        let r = collect(&p, SourceFormat::Csv).unwrap();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 4, 6]);
        let (_d, p) = file("c.csv", b"text,label\r\na,1\r\nb,2,3\r\n");
        let e = collect(&p, SourceFormat::Csv).unwrap_err();
        assert!(e.to_string().contains("record 3"), "{e}");
    }

    #[test]
    fn detects_by_extension_and_content() {
        let (_d, p) = file("x.json", b"  {\"text\":1}\n{\"text\":2}");
        let c = CancelToken::new();
        let mut f = open_regular(&p).unwrap();
        assert_eq!(detect_source_format(&p, &mut f, &c).unwrap(), SourceFormat::Jsonl);
        // Rewound for the reader.
        assert_eq!(f.stream_position().unwrap(), 0);
        let (_d, p) = file("x.data", b"\n[ ]");
        assert_eq!(detect_source_format(&p, &mut open_regular(&p).unwrap(), &c).unwrap(), SourceFormat::Json);
    }
}
