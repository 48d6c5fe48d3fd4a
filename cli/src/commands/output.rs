//! Printing results: lines, tables and JSON on stdout, with write errors (a closed
//! pipe) returned as `io` errors instead of panics.

use std::io::Write;

use anneal::Error;
use serde::Serialize;

/// Standard output, locked per write.
pub(crate) struct Out;

fn io(e: std::io::Error) -> Error {
    Error::Io { path: "<stdout>".into(), source: e }
}

impl Out {
    pub fn new() -> Self {
        Out
    }

    /// Writes `s` and a newline.
    pub fn line(&mut self, s: impl AsRef<str>) -> anneal::Result<()> {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{}", s.as_ref()).map_err(io)
    }

    /// Writes `s` as is and flushes (streamed tokens).
    pub fn text(&mut self, s: &str) -> anneal::Result<()> {
        let mut o = std::io::stdout().lock();
        o.write_all(s.as_bytes()).and_then(|_| o.flush()).map_err(io)
    }

    pub fn bytes(&mut self, b: &[u8]) -> anneal::Result<()> {
        let mut o = std::io::stdout().lock();
        o.write_all(b).and_then(|_| o.flush()).map_err(io)
    }

    /// One JSON document, pretty-printed.
    pub fn json<T: Serialize + ?Sized>(&mut self, v: &T) -> anneal::Result<()> {
        let s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
        self.line(s)
    }

    /// One JSON line (a stream item).
    pub fn json_line<T: Serialize + ?Sized>(&mut self, v: &T) -> anneal::Result<()> {
        let s = serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))?;
        let mut o = std::io::stdout().lock();
        writeln!(o, "{s}").and_then(|_| o.flush()).map_err(io)
    }

    /// A table with a header row; columns padded to their widest cell (the last one is not).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> anneal::Result<()> {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let fmt = |cells: Vec<&str>| {
            let n = cells.len();
            let mut line = String::new();
            for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
                if i + 1 == n {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            line.trim_end().to_string()
        };
        self.line(fmt(header.to_vec()))?;
        for row in rows {
            self.line(fmt(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }

    /// `key: value` lines, keys aligned.
    pub fn fields(&mut self, fields: &[(&str, String)]) -> anneal::Result<()> {
        let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        for (k, v) in fields {
            self.line(format!("{:<w$} {v}", format!("{k}:")))?;
        }
        Ok(())
    }
}

/// Bytes for people: `1.5 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A count for people: `1.2M`.
pub(crate) fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}B", n as f64 / 1e9),
    }
}

/// An optional value, `-` when unset.
pub(crate) fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A timestamp shortened to the second (`2025-01-02 03:04:05`).
pub(crate) fn when(at: &str) -> String {
    at.get(..19).unwrap_or(at).replace('T', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(count(123_456), "123.5K");
        assert_eq!(when("2025-01-02T03:04:05.123Z"), "2025-01-02 03:04:05");
        assert_eq!(opt::<u32>(None), "-");
    }
}
