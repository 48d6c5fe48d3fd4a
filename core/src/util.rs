//! Small shared helpers: ids, timestamps, names, hashing, crash-safe files.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoResultExt, Result};

/// A new random id with a type prefix, e.g. `ds_3f2a9c0d1b7e4a56`.
pub(crate) fn new_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}_{n:016x}")
}

/// Now, as RFC 3339 UTC with milliseconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Checks a user-chosen name (datasets, models, aliases).
pub(crate) fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        return Err(Error::config(field, "must be 1 to 128 characters"));
    }
    let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok || name.starts_with(['.', '/']) {
        return Err(Error::config(
            field,
            format!(
                "`{name}` may use only letters, digits, `-`, `_`, `.` and `/`, and must start with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// A name derived from a file or directory: its stem with unsupported characters replaced.
/// Refuses a path the operating system cannot take (a NUL byte) as `invalid_config`
/// naming `field`, instead of an `io` error from the first call that uses it.
pub(crate) fn check_path(field: &str, path: &Path) -> Result<()> {
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(Error::config(field, format!("{path:?} contains a NUL byte, which no path can hold")));
    }
    Ok(())
}

pub(crate) fn name_from_path(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("dataset");
    let cleaned: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    let trimmed = cleaned.trim_start_matches(['.', '-', '_']);
    if trimmed.is_empty() {
        "unnamed".into()
    } else {
        trimmed.to_string()
    }
}

/// A writer that hashes (sha256) and counts what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Returns the inner writer and the hex digest.
    pub(crate) fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// sha256 of a file, streamed. `on_chunk(bytes)` is called after each chunk and may
/// stop the work (cancellation) by returning an error.
pub(crate) fn sha256_file(path: &Path, mut on_chunk: impl FnMut(u64) -> Result<()>) -> Result<String> {
    let mut f = fs::File::open(path).with_path(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_chunk(n as u64)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies `src` to `dst` while hashing; returns the hex sha256.
pub(crate) fn copy_hashing(src: &Path, dst: &Path, mut on_chunk: impl FnMut(u64) -> Result<()>) -> Result<String> {
    let mut input = fs::File::open(src).with_path(src)?;
    let out = fs::File::create(dst).with_path(dst)?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).with_path(src)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).with_path(dst)?;
        on_chunk(n as u64)?;
    }
    let (out, digest) = w.finish();
    let file = out.into_inner().map_err(|e| Error::io(dst, e.into_error()))?;
    file.sync_all().with_path(dst)?;
    Ok(digest)
}

/// Creates the directory `dir` (which must not exist or be empty: `already_exists`
/// otherwise) with the contents `fill` writes into a temporary sibling that is then
/// renamed into place, so a failure leaves nothing behind.
pub(crate) fn write_new_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).with_path(dir)?;
        if entries.next().is_some() {
            return Err(Error::AlreadyExists {
                what: "directory",
                id: dir.display().to_string(),
                detail: " and is not empty".into(),
            });
        }
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_path(parent)?;
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_path(&tmp)?;
    }
    let result = fs::create_dir_all(&tmp).with_path(&tmp).and_then(|()| fill(&tmp)).and_then(|()| {
        if dir.exists() {
            fs::remove_dir(dir).with_path(dir)?;
        }
        fs::rename(&tmp, dir).with_path(dir)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes `bytes` to `path` crash-safely: a temp file in the same directory, fsync, rename.
/// Failpoint `write:<file name>`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] for content streamed by `write` (through a buffer). Errors name
/// `path` (the file the caller asked for), not the temp file, which is removed.
pub(crate) fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".tmp-{name}-{}", new_id("w")));
    let res = (|| {
        let f = fs::File::create(&tmp)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        write_failpoint(path)?;
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.with_path(path)
}

/// A staging directory that is removed on drop unless [`StagingDir::persist`] moved it.
pub(crate) struct StagingDir {
    path: Option<PathBuf>,
}

impl StagingDir {
    /// Creates `<parent>/.tmp-<random>`.
    pub(crate) fn new(parent: &Path) -> Result<Self> {
        fs::create_dir_all(parent).with_path(parent)?;
        let path = parent.join(format!(".tmp-{}", new_id("s")));
        fs::create_dir(&path).with_path(&path)?;
        Ok(Self { path: Some(path) })
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the directory to `dest` (which must not exist). Returns false, and leaves
    /// the staging directory to be dropped, when `dest` already exists.
    pub(crate) fn persist(&mut self, dest: &Path) -> Result<bool> {
        let Some(src) = self.path.as_ref() else {
            return Err(Error::Internal("staging dir already persisted".into()));
        };
        if dest.exists() {
            return Ok(false);
        }
        // fsync the directory contents' metadata by syncing the dir itself where supported.
        if let Ok(d) = fs::File::open(src) {
            let _ = d.sync_all();
        }
        fs::rename(src, dest).with_path(dest)?;
        if let Some(parent) = dest.parent().and_then(|p| fs::File::open(p).ok()) {
            let _ = parent.sync_all();
        }
        self.path = None;
        Ok(true)
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Removes, under `dir`, leftovers older than `min_age` (younger ones may belong to
/// another process still working): interrupted writes (`.tmp-*`) and the entries for
/// which `orphan(name)` holds (directories no catalog row refers to).
pub(crate) fn sweep(dir: &Path, min_age: std::time::Duration, orphan: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(".tmp-") && !orphan(&name) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if old {
            let p = e.path();
            let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        }
    }
}

/// The environment variable that arms failpoints (tests only; see [`failpoint`]).
pub(crate) const FAILPOINTS_ENV: &str = "ANNEAL_FAILPOINTS";

/// What an armed failpoint does when it fires.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FailAction {
    /// Ends the process at once (no unwinding, no destructors), like a kill.
    Abort,
    /// The operation fails as on a full disk (`ENOSPC`).
    Enospc,
    /// The operation fails with an I/O error (`EIO`).
    Eio,
}

/// Which hits of a failpoint fire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FailWhen {
    Always,
    /// Only the n-th hit (1-based): `name=action@n`.
    Nth(u64),
    /// The first n hits: `name=action*n`.
    First(u64),
}

#[derive(Debug)]
struct Failpoint {
    name: String,
    action: FailAction,
    when: FailWhen,
    hits: AtomicU64,
}

/// Parses `name=action[@n|*n]` entries separated by `;`. Malformed entries are reported
/// on stderr and skipped (the variable is set only by tests).
fn parse_failpoints(spec: &str) -> Vec<Failpoint> {
    let mut out = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(name, rest)| {
            let (action, when) = match (rest.split_once('@'), rest.split_once('*')) {
                (Some((a, n)), _) => (a, FailWhen::Nth(n.parse().ok().filter(|&n| n > 0)?)),
                (None, Some((a, n))) => (a, FailWhen::First(n.parse().ok()?)),
                (None, None) => (rest, FailWhen::Always),
            };
            let action = match action {
                "abort" => FailAction::Abort,
                "enospc" => FailAction::Enospc,
                "eio" => FailAction::Eio,
                _ => return None,
            };
            Some(Failpoint { name: name.trim().to_string(), action, when, hits: AtomicU64::new(0) })
        });
        match parsed {
            Some(fp) => out.push(fp),
            None => eprintln!("anneal: ignoring malformed {FAILPOINTS_ENV} entry `{entry}`"),
        }
    }
    out
}

/// Test-only fault injection, always compiled and inert unless [`FAILPOINTS_ENV`] is set
/// (read once per process), e.g. `ANNEAL_FAILPOINTS="write:optimizer.safetensors=enospc@2;
/// register.after_commit=abort"`. Actions: `abort` (the process ends on the spot),
/// `enospc` and `eio` (this call returns that OS error, which the caller maps as it would
/// the real one). `@n` fires on the n-th hit only, `*n` on the first n hits.
///
/// Failpoints: `write:<file name>` (every file write of checkpoints, model saves and
/// [`write_atomic`]), `checkpoint.before_rename` (a checkpoint written in full to its
/// staging directory, not yet renamed into place), `catalog.job_end` (the catalog write
/// that records how a run ended), `register.before_commit` and `register.after_commit`
/// (around the transaction that registers a trained model and completes its job).
pub(crate) fn failpoint(name: &str) -> io::Result<()> {
    static ARMED: OnceLock<Vec<Failpoint>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(FAILPOINTS_ENV).map(|s| parse_failpoints(&s)).unwrap_or_default());
    if armed.is_empty() {
        return Ok(());
    }
    for fp in armed.iter().filter(|f| f.name == name) {
        let hit = fp.hits.fetch_add(1, Ordering::SeqCst) + 1;
        let fires = match fp.when {
            FailWhen::Always => true,
            FailWhen::Nth(n) => hit == n,
            FailWhen::First(n) => hit <= n,
        };
        if fires {
            return Err(match fp.action {
                FailAction::Abort => std::process::abort(),
                FailAction::Enospc => enospc(),
                FailAction::Eio => eio(),
            });
        }
    }
    Ok(())
}

/// The failpoint of a file write: `write:<file name of path>`.
pub(crate) fn write_failpoint(path: &Path) -> io::Result<()> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(n) => failpoint(&format!("write:{n}")),
        None => Ok(()),
    }
}

/// The OS error of a full disk.
fn enospc() -> io::Error {
    if cfg!(unix) {
        io::Error::from_raw_os_error(28)
    } else {
        io::Error::new(io::ErrorKind::StorageFull, "no space left on device")
    }
}

fn eio() -> io::Error {
    if cfg!(unix) {
        io::Error::from_raw_os_error(5)
    } else {
        io::Error::other("input/output error")
    }
}

// ---------------------------------------------------------------- compute pool

/// Runs `f` on a thread of rayon's global pool, the pool candle's kernels and ours split
/// their loops over, with the pool's other threads kept awake meanwhile
/// ([`with_pool_spinning`]). Called from outside the pool, every parallel op would hand
/// its work to the pool, wake it and put the caller to sleep until it is done (a futex
/// round trip per op, hundreds per training step); from inside, the op forks and joins
/// within the pool. A training step (forward, backward, optimiser) and a denoising step
/// run this way. Runs `f` where it is when already on a pool thread.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    with_pool_spinning(f)
}

/// How long a pool thread kept busy by [`with_pool_spinning`] waits for work before it
/// goes back to sleep.
const SPIN_IDLE: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs `f` (on a pool thread, as [`on_compute_pool`]) while the pool's other threads
/// stay awake: each runs a job that looks for work in a loop (`rayon::yield_now`)
/// instead of parking between `f`'s parallel ops. A decoding step runs dozens of small
/// parallel products, each a few microseconds of work per thread; waking a parked
/// thread for each costs a futex call and, on a virtual machine, an interrupt between
/// cores that can take longer than the work. The spinning threads stop when `f` returns
/// or after [`SPIN_IDLE`] without work.
pub fn with_pool_spinning<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return rayon::scope(|_| f());
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for _ in 1..threads {
            let done = &done;
            s.spawn(move |_| {
                // Picked up by `f`'s own thread (waiting on a join, or at the scope's
                // end): spinning there would hold `f` up.
                if rayon::current_thread_index() == owner {
                    return;
                }
                let mut last_work = std::time::Instant::now();
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => last_work = std::time::Instant::now(),
                        Some(rayon::Yield::Idle) if last_work.elapsed() < SPIN_IDLE => std::hint::spin_loop(),
                        _ => return,
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// The variable that sizes candle's second thread pool (`candle_core::utils::barrier_pool`).
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Keeps candle's large elementwise ops (its binary and unary maps of 64K+ elements, among
/// them the `zeros + add` of every gradient edge in its backward) on the thread that calls
/// them, by setting [`CANDLE_THREADS_VAR`] to 1 when the user has not set it.
///
/// candle 0.11 runs those ops on a pool of its own beside rayon's, whose workers spin
/// (25,000 pauses, about a millisecond here) after every op before they sleep. Called from
/// a compute-pool thread ([`on_compute_pool`]), each such op then keeps one more thread
/// busy than there are cores, and the caller spins at the op's end waiting for a worker
/// that the scheduler has put behind rayon's: 16% of a tiny training step's samples were
/// that wait and that spin (`perf`, with other work on the machine). With the pool off,
/// steps take the same time on an idle machine (within 3%) and far less on a busy one
/// (17-65% less with two builds running; benches/RESULTS.md). Those ops read and write
/// memory once, so one thread does them at nearly the same speed.
///
/// It must run before candle's first large elementwise op (the pool reads the variable
/// once) and, as any change to the environment, while no other thread may be reading the
/// environment outside Rust's lock (C code calling `getenv`). anneal's front-ends call it
/// first thing: the CLI's `main`, the Python module's import, the Node module's load, the
/// examples and benches. A program that embeds the crate does the same at the start of
/// its `main`. Returns whether it set the variable.
pub fn keep_candle_ops_on_calling_thread() -> bool {
    if std::env::var_os(CANDLE_THREADS_VAR).is_some() {
        return false;
    }
    std::env::set_var(CANDLE_THREADS_VAR, "1");
    true
}

// ---------------------------------------------------------------- allocator

/// While held (by a training run or an image generation), glibc's malloc keeps freed
/// memory for reuse instead of returning it to the kernel: blocks under 32 MiB come
/// from the heap, not from a fresh `mmap` each (`M_MMAP_THRESHOLD`), the heap top is not
/// trimmed (`M_TRIM_THRESHOLD` at its maximum), and threads that allocate for the first time
/// share the main arena (`M_ARENA_MAX` 1: a step runs on the compute pool's threads,
/// [`on_compute_pool`], and a buffer freed in one thread's arena could not be reused by
/// another's; with one arena per thread, a small LoRA step's peak grew from 1.6 to 2.8
/// GiB). candle allocates a new buffer for every op's
/// result; with glibc's defaults every large one is mapped, page-faulted and zeroed by
/// the kernel, and unmapped when dropped, which took about a third of a diffusion
/// training step (benches/RESULTS.md). The last guard dropped restores the trim threshold
/// and the per-thread arenas, leaves the mmap threshold at 32 MiB (see `Drop`) and hands
/// the free memory back (`malloc_trim`). Process-wide; `ANNEAL_MALLOC_TUNING=0`
/// turns it off. A no-op on other C libraries. Code that drives the models directly
/// (not through the engine) can hold one around its loop.
pub struct AllocatorTuning {
    active: bool,
}

/// Blocks of this many bytes and more are mapped for themselves while the tuning is held
/// (a language model's embedding and head gradients, 62.5 MiB each on a 32k x 512
/// model): in the heap they left holes that the next, differently sized buffers could
/// not fill, and a small full step's peak RSS sat 150-250 MiB above its live peak
/// (1226-1288 MiB; mapped: 1179-1187, and no slower: 1.91-2.26 s against 1.99-2.26 s a
/// step, three rounds back to back): their page faults cost little against the step.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_FROM: i32 = 32 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
static TUNING_HOLDERS: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

impl AllocatorTuning {
    /// Turns the tuning on (if it is not already) until the guard is dropped.
    pub fn acquire() -> AllocatorTuning {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if std::env::var("ANNEAL_MALLOC_TUNING").map(|v| v != "0").unwrap_or(true) {
            let mut holders = TUNING_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
            if *holders == 0 {
                // SAFETY: mallopt only changes allocator parameters; any value is valid.
                #[allow(unsafe_code)]
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                    libc::mallopt(libc::M_ARENA_MAX, 1);
                }
            }
            *holders += 1;
            return AllocatorTuning { active: true };
        }
        AllocatorTuning { active: false }
    }
}

impl Drop for AllocatorTuning {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if self.active {
            let mut holders = TUNING_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                // Setting either threshold turns glibc's own adjustment of the mmap
                // threshold off for the rest of the process, so its 128 KiB default
                // would stay fixed and map every larger block from then on; the
                // threshold is left at the ceiling that adjustment grows it to
                // (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB on 64-bit), where a process
                // that loaded a model has usually put it already.
                // SAFETY: as above.
                #[allow(unsafe_code)]
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
                    libc::mallopt(libc::M_ARENA_MAX, 0);
                    libc::malloc_trim(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoint_specs_parse() {
        let fps = parse_failpoints(" a=abort; write:x.json=enospc@2 ;b=eio*3;bad;c=nope;d=enospc@0");
        let got: Vec<(&str, FailAction, FailWhen)> = fps.iter().map(|f| (f.name.as_str(), f.action, f.when)).collect();
        assert_eq!(
            got,
            [
                ("a", FailAction::Abort, FailWhen::Always),
                ("write:x.json", FailAction::Enospc, FailWhen::Nth(2)),
                ("b", FailAction::Eio, FailWhen::First(3)),
            ]
        );
        // Unarmed in the test process: a no-op.
        assert!(failpoint("write:x.json").is_ok());
        assert_eq!(enospc().kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("name", "support-v2_x.1").is_ok());
        assert!(validate_name("name", "org/model").is_ok());
        for bad in ["", "a b", "x@1", ".hidden", "/abs", "ü"] {
            let e = validate_name("name", bad).unwrap_err();
            assert_eq!(e.code(), "invalid_config", "{bad}");
        }
        assert_eq!(name_from_path(Path::new("/x/My Data.jsonl")), "My-Data");
    }

    #[test]
    fn staging_dir_is_removed_unless_persisted() {
        let d = tempfile::tempdir().unwrap();
        let p = {
            let s = StagingDir::new(d.path()).unwrap();
            s.path().to_path_buf()
        };
        assert!(!p.exists());
        let mut s = StagingDir::new(d.path()).unwrap();
        fs::write(s.path().join("f"), b"x").unwrap();
        assert!(s.persist(&d.path().join("final")).unwrap());
        assert!(d.path().join("final/f").exists());
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"1").unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
