//! [`TensorBoardSink`]: a training run's curves as TensorBoard event files.
//!
//! A file is a sequence of TFRecords (`u64` length, masked CRC-32C of the length, the
//! bytes, masked CRC-32C of the bytes), each an `Event` protocol buffer: the first
//! carries `file_version = "brain.Event:2"`, the others a step and a `Summary` of
//! scalar values. The few protobuf fields needed are encoded here by hand.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::EventSink;
use crate::error::{Error, IoResultExt, Result};
use crate::types::Event;

/// Writes `train/loss`, `train/learning_rate`, `train/tokens_per_s`, `train/epoch`
/// (every step) and `eval/loss`, `eval/perplexity` ... (every evaluation) of training jobs as TensorBoard
/// scalars, in `<log_dir>/<job_id>/events.out.tfevents.<secs>.<host>.<pid>.<n>` (one
/// TensorBoard run per job; a resumed job adds a file to its run). Each event is
/// flushed to the file as it comes, so `tensorboard --logdir <log_dir>` shows a job
/// while it runs. Other events are ignored; an I/O failure stops the run with an `io`
/// error naming the file.
pub struct TensorBoardSink {
    log_dir: PathBuf,
    file: Option<(PathBuf, File)>,
}

impl TensorBoardSink {
    /// A sink writing under `log_dir` (created when the first job starts).
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        Self { log_dir: log_dir.into(), file: None }
    }

    /// The directory given to [`TensorBoardSink::new`].
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The event file being written (after `job_started`, until `job_finished`).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(p, _)| p.as_path())
    }

    fn open(&mut self, job_id: &str) -> Result<()> {
        let dir = self.log_dir.join(sanitize(job_id));
        fs::create_dir_all(&dir).with_path(&dir)?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let host = sanitize(&hostname());
        let pid = std::process::id();
        // A counter keeps two files opened within the same second apart.
        let mut n = 0u32;
        let (path, file) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        };
        self.file = Some((path, file));
        let mut first = Vec::new();
        put_double(&mut first, 1, wall_time());
        put_bytes(&mut first, 3, b"brain.Event:2");
        self.write(&first)
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        let Some((path, file)) = &mut self.file else { return Ok(()) };
        file.write_all(&record(event)).and_then(|_| file.flush()).with_path(path.as_path())
    }

    fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_float(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.write(&event)
    }
}

impl EventSink for TensorBoardSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::JobStarted { job_id, .. } => self.open(job_id),
            Event::Step { step, loss, lr, tokens_per_sec, epoch, .. } => self.scalars(
                *step,
                &[
                    ("train/loss".into(), *loss),
                    ("train/learning_rate".into(), *lr),
                    ("train/tokens_per_s".into(), *tokens_per_sec),
                    ("train/epoch".into(), f64::from(*epoch)),
                ],
            ),
            Event::Eval { step, metrics, .. } => {
                let values: Vec<(String, f64)> = metrics.iter().map(|(k, v)| (eval_tag(k), *v)).collect();
                self.scalars(*step, &values)
            }
            Event::JobFinished { .. } => {
                if let Some((path, file)) = self.file.take() {
                    file.sync_all().with_path(&path)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The tag of an evaluation metric: `eval_loss` -> `eval/loss`, `accuracy` -> `eval/accuracy`.
pub(super) fn eval_tag(metric: &str) -> String {
    format!("eval/{}", metric.strip_prefix("eval_").unwrap_or(metric))
}

/// A file or directory name part: anything but `[A-Za-z0-9._-]` becomes `_`.
fn sanitize(s: &str) -> String {
    let out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        "_".into()
    } else {
        out
    }
}

/// The machine's name (Linux: the kernel's; else `$HOSTNAME`; else `localhost`).
pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------- protobuf, TFRecord

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, 0);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::FinishStatus;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 and the usual "123456789" check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        put_varint_field(&mut v, 2, 1);
        assert_eq!(v, [0x10, 0x01]);
    }

    /// Reads TFRecords back, checking both CRCs.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len_bytes = &bytes[i..i + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap()), masked_crc(len_bytes));
            let data = &bytes[i + 12..i + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap()), masked_crc(data));
            out.push(data.to_vec());
            i += 16 + len;
        }
        out
    }

    #[test]
    fn a_job_becomes_one_event_file_flushed_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::new(dir.path().join("runs"));
        sink.on_event(&Event::JobStarted { job_id: "job_1".into(), total_steps: 2, epochs: 1 }).unwrap();
        let path = sink.path().unwrap().to_path_buf();
        assert_eq!(path.parent().unwrap(), dir.path().join("runs/job_1"));
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
        let step = Event::Step {
            job_id: "job_1".into(),
            epoch: 0,
            step: 1,
            total_steps: 2,
            loss: 2.5,
            lr: 1e-3,
            tokens_per_sec: 100.0,
            progress: 0.5,
            sample: None,
            image: None,
        };
        sink.on_event(&step).unwrap();
        // Readable before the job ends.
        let recs = records(&fs::read(&path).unwrap());
        assert_eq!(recs.len(), 2);
        assert_eq!(&recs[0][9..], [&[0x1a, 13][..], b"brain.Event:2"].concat());
        let text = String::from_utf8_lossy(&recs[1]);
        assert!(text.contains("train/loss") && text.contains("train/learning_rate"), "{text}");
        assert!(recs[1].windows(5).any(|w| w == [0x15, 0, 0, 0x20, 0x40]), "2.5f32 after its key");
        let metrics = BTreeMap::from([("eval_loss".to_string(), 1.25)]);
        sink.on_event(&Event::Eval { job_id: "job_1".into(), step: 2, metrics }).unwrap();
        let fin =
            Event::JobFinished { job_id: "job_1".into(), status: FinishStatus::Completed, model_id: None, error: None };
        sink.on_event(&fin).unwrap();
        assert!(sink.path().is_none());
        let recs = records(&fs::read(&path).unwrap());
        assert_eq!(recs.len(), 3);
        assert!(String::from_utf8_lossy(&recs[2]).contains("eval/loss"));
    }

    #[test]
    fn an_unwritable_log_dir_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let mut sink = TensorBoardSink::new(&blocker);
        let e = sink.on_event(&Event::JobStarted { job_id: "j".into(), total_steps: 1, epochs: 1 }).unwrap_err();
        assert_eq!(e.code(), "io");
        assert!(e.to_string().contains("file"), "{e}");
    }

    #[test]
    fn names_are_made_safe_for_paths() {
        assert_eq!(sanitize("job_1"), "job_1");
        assert_eq!(sanitize("../x y"), ".._x_y");
        assert_eq!(sanitize(".."), "_");
        assert_eq!(sanitize(""), "_");
    }
}
