//! DatasetStore: import, formats, preview, stats, splits; image datasets in [`images`];
//! a model's generations as a dataset in [`generate`].
//!
//! Imports stream: records are read, checked, normalised and written one at a time
//! into a staging directory while their sha256 is computed (no record is read past
//! `max_record_bytes`, and every read checks the cancel token). The winner is then
//! decided in one catalog transaction, which every process takes in turn: content
//! already stored is `duplicate_content` (or reused), a taken name `already_exists`;
//! otherwise the directory is renamed to `datasets/<sha256>/` (replacing an orphan no
//! row refers to) and the row inserted, both under the transaction's lock. So
//! concurrent imports of one file, from threads or processes, end as sequential ones
//! would. A failed, cancelled or killed import leaves nothing behind in the catalog,
//! and nothing under `datasets/` but a `.tmp-*` directory that the next open sweeps.

mod format;
mod generate;
mod images;
mod read;
mod stats;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

use crate::catalog::datasets as sql;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::store::Store;
use crate::types::{
    DatasetFormat, DatasetId, DatasetRecord, DatasetSplit, DatasetStats, ImportOptions, OnDuplicate, SourceFormat,
};
use crate::util::{self, HashingWriter, StagingDir};
use format::Shape;
use read::{ByteCounter, RawRecord, ReadCtx};
use stats::StatsBuilder;

/// Imports, stores and serves datasets. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct DatasetStore {
    store: Arc<Store>,
}

/// Progress is reported at most every this many input bytes (or records in memory).
const PROGRESS_BYTES: u64 = 1 << 20;
const PROGRESS_RECORDS: u64 = 1000;

impl DatasetStore {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn dir(&self) -> PathBuf {
        self.store.root.join("datasets")
    }

    /// Imports a CSV, TSV, JSON array, JSONL or TXT file.
    pub fn import_file(&self, path: impl AsRef<Path>, opts: &ImportOptions) -> Result<DatasetRecord> {
        self.import_file_with(path, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`DatasetStore::import_file`] with progress events (`task_*`, in bytes) and cancellation.
    pub fn import_file_with(
        &self,
        path: impl AsRef<Path>,
        opts: &ImportOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<DatasetRecord> {
        let path = path.as_ref();
        util::check_path("path", path)?;
        check_max_record(opts)?;
        // Only a regular file is opened: a FIFO or a device would block or never end.
        let mut file = read::open_regular(path)?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::name_from_path(path),
        };
        // Whether the name is free is decided when the import is stored: a taken name
        // holding this very content is `duplicate_content` (or reused), not a clash.
        util::validate_name("name", &name)?;
        let source_format = match opts.source_format {
            Some(SourceFormat::Records) => {
                return Err(Error::config("source_format", "`records` is only for in-memory imports"))
            }
            Some(f) => f,
            None => read::detect_source_format(path, &mut file, cancel)?,
        };
        let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let total = file.metadata().with_path(path)?.len();
        run_task(sink, "import_dataset", &name, Some(total), "bytes", |rep| {
            let counter = ByteCounter::default();
            let ctx = ReadCtx { txt_mode: opts.txt_mode, max_record: opts.max_record_bytes, cancel, counter };
            let counter = ctx.counter.clone();
            let mut ingest = Ingest::new(&self.dir(), opts, Location::file(path), None)?;
            let mut next_report = PROGRESS_BYTES;
            read::read_file(path, file, source_format, &ctx, &mut |raw| {
                ingest.push(raw)?;
                if ingest.count.is_multiple_of(256) {
                    cancel.check()?;
                }
                if counter.get() >= next_report {
                    next_report = counter.get() + PROGRESS_BYTES;
                    cancel.check()?;
                    rep.progress(counter.get())?;
                }
                Ok(())
            })?;
            cancel.check()?;
            rep.progress(total)?;
            let staged = ingest.finish(&name, abs.display().to_string(), source_format, None)?;
            let rec = self.store_one(staged, opts.on_duplicate)?;
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    /// Imports records given in memory (JSON objects in any of the five shapes).
    pub fn import_records<I>(&self, records: I, opts: &ImportOptions) -> Result<DatasetRecord>
    where
        I: IntoIterator<Item = Result<Value>>,
    {
        self.import_records_with(records, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`DatasetStore::import_records`] with progress events (`task_*`, in records).
    pub fn import_records_with<I>(
        &self,
        records: I,
        opts: &ImportOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<DatasetRecord>
    where
        I: IntoIterator<Item = Result<Value>>,
    {
        check_max_record(opts)?;
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => util::new_id("records"),
        };
        util::validate_name("name", &name)?;
        if matches!(opts.source_format, Some(f) if f != SourceFormat::Records) {
            return Err(Error::config("source_format", "in-memory imports are always `records`"));
        }
        let iter = records.into_iter();
        let total = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo as u64),
            _ => None,
        };
        run_task(sink, "import_dataset", &name, total, "records", |rep| {
            let mut ingest = Ingest::new(&self.dir(), opts, Location::default(), Some(opts.max_record_bytes))?;
            for (i, item) in iter.enumerate() {
                let index = i as u64 + 1;
                let value = item?;
                let fields = read::into_object(value, Location::default().at(index))?;
                ingest.push(RawRecord { index, fields })?;
                if index.is_multiple_of(PROGRESS_RECORDS) {
                    cancel.check()?;
                    rep.progress(index)?;
                }
            }
            cancel.check()?;
            rep.progress(ingest.count)?;
            let staged = ingest.finish(&name, "memory".into(), SourceFormat::Records, None)?;
            let rec = self.store_one(staged, opts.on_duplicate)?;
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    fn store_one(&self, staged: Staged, on_duplicate: OnDuplicate) -> Result<DatasetRecord> {
        let mut out = self.store_all(vec![staged], on_duplicate)?;
        out.pop().ok_or_else(|| Error::Internal("nothing stored".into()))
    }

    /// Stores finished ingests, all or none, in one catalog transaction (so one
    /// process at a time decides): per ingest, content already stored is
    /// `duplicate_content` or, with `Reuse`, the stored dataset; a taken name is
    /// `already_exists`; otherwise its directory is moved to `datasets/<sha256>` and its
    /// row inserted. A directory already there has no row (the transaction would have
    /// found it): an orphan of an interrupted import or delete, replaced.
    fn store_all(&self, mut staged: Vec<Staged>, on_duplicate: OnDuplicate) -> Result<Vec<DatasetRecord>> {
        let home = &self.store.root;
        let dir = self.dir();
        let mut replaced = Vec::new();
        let res = self.store.catalog.write(|tx| {
            let mut placed: Vec<PathBuf> = Vec::new();
            let mut place = || -> Result<Vec<DatasetRecord>> {
                let mut out = Vec::with_capacity(staged.len());
                for s in &mut staged {
                    if let Some(existing) = sql::by_sha(tx, home, &s.rec.sha256)? {
                        match on_duplicate {
                            OnDuplicate::Reuse => {
                                out.push(existing);
                                continue;
                            }
                            OnDuplicate::Error => {
                                return Err(Error::DuplicateContent {
                                    what: "dataset",
                                    sha256: s.rec.sha256.clone(),
                                    existing_id: existing.id.0,
                                    existing_name: existing.name,
                                })
                            }
                        }
                    }
                    if let Some(d) = sql::by_name(tx, home, &s.rec.name)? {
                        return Err(Error::AlreadyExists {
                            what: "dataset",
                            id: s.rec.name.clone(),
                            detail: format!(" (id {}); choose another name or delete it first", d.id),
                        });
                    }
                    let dest = dir.join(&s.rec.sha256);
                    if fs::symlink_metadata(&dest).is_ok() {
                        let aside = dir.join(format!(".tmp-{}", util::new_id("orphan")));
                        fs::rename(&dest, &aside).with_path(&dest)?;
                        replaced.push(aside);
                    }
                    if !s.staging.persist(&dest)? {
                        return Err(Error::io(&dest, std::io::ErrorKind::AlreadyExists.into()));
                    }
                    placed.push(dest);
                    sql::insert(tx, &s.rec, &s.stats)?;
                    if let Some(l) = &s.lineage {
                        sql::set_lineage(tx, &s.rec.id.0, l)?;
                    }
                    out.push(s.rec.clone());
                }
                Ok(out)
            };
            let out = place();
            if out.is_err() {
                // Still under the lock: no row refers to what this call moved in.
                for d in &placed {
                    let _ = fs::remove_dir_all(d);
                }
            }
            out
        });
        // (Should the commit itself fail, a moved-in directory stays as an orphan, for
        // the next import of the same content or the sweep.)
        for d in replaced {
            let _ = fs::remove_dir_all(d);
        }
        res
    }

    /// A dataset by id or name.
    pub fn get(&self, id_or_name: impl Into<DatasetId>) -> Result<DatasetRecord> {
        let key: DatasetId = id_or_name.into();
        let home = &self.store.root;
        self.store
            .catalog
            .read(|c| match sql::by_id(c, home, &key.0)? {
                Some(r) => Ok(Some(r)),
                None => sql::by_name(c, home, &key.0),
            })?
            .ok_or_else(|| Error::not_found("dataset", key.0))
    }

    /// All datasets, oldest first.
    pub fn list(&self) -> Result<Vec<DatasetRecord>> {
        self.store.catalog.read(|c| sql::list(c, &self.store.root))
    }

    /// The first `n` stored (normalised) records.
    pub fn preview(&self, id_or_name: impl Into<DatasetId>, n: usize) -> Result<Vec<Value>> {
        let rec = self.get(id_or_name)?;
        let mut out = Vec::with_capacity(n.min(1024));
        if n == 0 {
            return Ok(out);
        }
        for_each_record(&rec.path, |v| {
            out.push(v);
            Ok(out.len() < n)
        })?;
        Ok(out)
    }

    /// Statistics computed at import.
    pub fn stats(&self, id_or_name: impl Into<DatasetId>) -> Result<DatasetStats> {
        let rec = self.get(id_or_name)?;
        self.store.catalog.read(|c| sql::stats(c, &rec.id.0))?.ok_or_else(|| Error::not_found("dataset", rec.id.0))
    }

    /// Splits a dataset into train and validation datasets, deterministically: the same
    /// `seed` and `val_fraction` always give the same records (each half keeps the
    /// original order). Named `<name>-train` / `<name>-val` unless `names` is given.
    /// Splitting again with the same arguments returns the existing halves.
    pub fn split(
        &self,
        id_or_name: impl Into<DatasetId>,
        val_fraction: f64,
        seed: u64,
        names: Option<(String, String)>,
    ) -> Result<DatasetSplit> {
        let src = self.get(id_or_name)?;
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::config(
                "val_fraction",
                format!("must be between 0 and 1 (exclusive), got {val_fraction}"),
            ));
        }
        let n = usize::try_from(src.num_records)
            .map_err(|_| Error::config("dataset", format!("{} records are too many to split here", src.num_records)))?;
        let n_val = ((n as f64) * val_fraction).round() as usize;
        if n_val == 0 || n_val >= n {
            return Err(Error::config(
                "val_fraction",
                format!("{val_fraction} of {n} records leaves an empty half; use a larger dataset or another fraction"),
            ));
        }
        let (train_name, val_name) =
            names.unwrap_or_else(|| (format!("{}-train", src.name), format!("{}-val", src.name)));
        util::validate_name("names[0]", &train_name)?;
        util::validate_name("names[1]", &val_name)?;
        if train_name == val_name {
            return Err(Error::config("names", format!("both halves are named `{train_name}`; give two names")));
        }
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let mut is_val = vec![false; n];
        for &i in &order[..n_val] {
            is_val[i] = true;
        }
        let opts = ImportOptions { format: Some(src.format), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
        let mut train = Ingest::new(&self.dir(), &opts, Location::file(&src.path), None)?;
        let mut val = Ingest::new(&self.dir(), &opts, Location::file(&src.path), None)?;
        let mut i = 0usize;
        let image_src = (src.format == DatasetFormat::Image).then_some(&src);
        for_each_record(&src.path, |v| {
            let half = if is_val.get(i).copied().unwrap_or(false) { &mut val } else { &mut train };
            // An image dataset's halves hold their images (hard links where possible).
            if let Some(s) = image_src {
                images::link_image(s, &v, half.staging.path())?;
            }
            half.push_normalized(&v)?;
            i += 1;
            Ok(true)
        })?;
        let source = format!("split:{}", src.id);
        let parent = Some(src.id.clone());
        // Both halves in one transaction: all or nothing, whoever else splits at once.
        // Content already stored (the same split done before) is reused.
        let staged = vec![
            train.finish(&train_name, source.clone(), SourceFormat::Records, parent.clone())?,
            val.finish(&val_name, source, SourceFormat::Records, parent)?,
        ];
        let mut halves = self.store_all(staged, OnDuplicate::Reuse)?.into_iter();
        match (halves.next(), halves.next()) {
            (Some(train), Some(val)) => Ok(DatasetSplit { train, val }),
            _ => Err(Error::Internal("split stored fewer than two halves".into())),
        }
    }

    /// Deletes a dataset: the catalog row and, in the same transaction, its directory
    /// is moved aside (so an import of the same content that comes next cannot lose its
    /// files to this delete); the files are removed after. Refuses while a training job
    /// refers to it, unless `force` (the jobs then lose the link).
    pub fn delete(&self, id_or_name: impl Into<DatasetId>, force: bool) -> Result<()> {
        let rec = self.get(id_or_name)?;
        let dir = self.dir().join(&rec.sha256);
        let aside = self.dir().join(format!(".tmp-{}", util::new_id("deleted")));
        let moved = Cell::new(false);
        let res = self.store.catalog.write(|tx| {
            // Deleted by someone else since `get`: the directory may be another row's now.
            if sql::by_id(tx, &self.store.root, &rec.id.0)?.is_none() {
                return Err(Error::not_found("dataset", rec.id.0.clone()));
            }
            let jobs = sql::jobs_using(tx, &rec.id.0)?;
            if !jobs.is_empty() && !force {
                return Err(Error::InUse {
                    what: "dataset",
                    id: rec.name.clone(),
                    reason: format!("used by job(s) {}; pass force to delete anyway", jobs.join(", ")),
                });
            }
            sql::delete(tx, &rec.id.0)?;
            match fs::rename(&dir, &aside) {
                Ok(()) => moved.set(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
            Ok(())
        });
        if let Err(e) = res {
            // The commit failed after the move: the row stands, so its files go back.
            if moved.get() {
                let _ = fs::rename(&aside, &dir);
            }
            return Err(e);
        }
        if moved.get() {
            // Deleted already; should this fail, the next open sweeps the `.tmp-*` left.
            let _ = fs::remove_dir_all(&aside);
        }
        Ok(())
    }

    /// Removes interrupted imports and content directories no row refers to.
    pub(crate) fn sweep(&self, min_age: std::time::Duration) -> Result<()> {
        let known: std::collections::HashSet<String> = self.store.catalog.read(sql::all_shas)?.into_iter().collect();
        util::sweep(&self.dir(), min_age, |name| {
            let is_content = name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit());
            is_content && !known.contains(name)
        });
        Ok(())
    }
}

/// Reads a stored records file, calling `f` per record until it returns `Ok(false)`.
pub(crate) fn for_each_record(path: &Path, mut f: impl FnMut(Value) -> Result<bool>) -> Result<()> {
    let file = File::open(path).with_path(path)?;
    for (i, line) in BufReader::with_capacity(1 << 16, file).lines().enumerate() {
        let line = line.with_path(path)?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Error::data(Location::file(path).at(i as u64 + 1), format!("corrupt stored record: {e}")))?;
        if !f(v)? {
            break;
        }
    }
    Ok(())
}

/// One import in progress: the staging directory, the hashing writer, the shape.
struct Ingest {
    staging: StagingDir,
    writer: HashingWriter<BufWriter<File>>,
    shape: Option<Shape>,
    stats: Option<StatsBuilder>,
    count: u64,
    location: Location,
    forced: Option<DatasetFormat>,
    mapping: BTreeMap<String, String>,
    /// In-memory imports: the largest record as stored, in bytes.
    max_stored: Option<u64>,
}

/// A finished ingest, its row ready, waiting to be stored.
struct Staged {
    staging: StagingDir,
    rec: DatasetRecord,
    stats: DatasetStats,
    /// JSON [`crate::types::DatasetLineage`], stored with the row.
    lineage: Option<String>,
}

/// Levels of arrays and objects a record's field values may nest: the record and its
/// fields read back under serde_json's recursion limit (128 levels, counting the record
/// and a tabular record's `features`).
const MAX_NESTING: usize = 125;

/// The first field of a record whose value nests deeper than [`MAX_NESTING`] (checked
/// without recursion, so no depth can overflow the stack here).
fn too_deep(fields: &serde_json::Map<String, Value>) -> Option<&str> {
    for (name, v) in fields {
        let mut stack = vec![(v, 0usize)];
        while let Some((v, depth)) = stack.pop() {
            let children: Box<dyn Iterator<Item = &Value>> = match v {
                Value::Array(a) => Box::new(a.iter()),
                Value::Object(m) => Box::new(m.values()),
                _ => continue,
            };
            if depth + 1 > MAX_NESTING {
                return Some(name);
            }
            stack.extend(children.map(|c| (c, depth + 1)));
        }
    }
    None
}

fn check_max_record(opts: &ImportOptions) -> Result<()> {
    if opts.max_record_bytes == 0 {
        return Err(Error::config("max_record_bytes", "must be at least 1 (the default is 16 MiB)"));
    }
    Ok(())
}

impl Ingest {
    fn new(dir: &Path, opts: &ImportOptions, location: Location, max_stored: Option<u64>) -> Result<Self> {
        let staging = StagingDir::new(dir)?;
        let path = staging.path().join("records.jsonl");
        let file = File::create(&path).with_path(&path)?;
        Ok(Self {
            staging,
            writer: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
            shape: None,
            stats: None,
            count: 0,
            location,
            forced: opts.format,
            mapping: opts.columns.clone(),
            max_stored,
        })
    }

    /// Flushes and syncs the records, writes `meta.json` and builds the row.
    fn finish(
        self,
        name: &str,
        source: String,
        source_format: SourceFormat,
        parent: Option<DatasetId>,
    ) -> Result<Staged> {
        let Ingest { staging, writer, shape, stats, count, location, .. } = self;
        let (Some(shape), Some(stats)) = (shape, stats) else {
            return Err(match &location.file {
                Some(p) => Error::data(location.clone(), format!("{} contains no records", p.display())),
                None => Error::data(location, "no records were given"),
            });
        };
        let bytes = writer.bytes();
        let (buf, sha) = writer.finish();
        let file = buf.into_inner().map_err(|e| Error::io(staging.path(), e.into_error()))?;
        file.sync_all().with_path(staging.path())?;
        drop(file);
        let stats = stats.finish(bytes);
        let meta = serde_json::json!({ "format": shape.format, "num_records": count, "sha256": sha });
        util::write_atomic(&staging.path().join("meta.json"), meta.to_string().as_bytes())?;
        let path = staging.path().parent().unwrap_or(Path::new("")).join(&sha).join("records.jsonl");
        let rec = DatasetRecord {
            id: DatasetId(util::new_id("ds")),
            name: name.to_string(),
            format: shape.format,
            sha256: sha,
            num_records: count,
            bytes,
            source,
            source_format,
            columns: shape.columns,
            parent_id: parent,
            created_at: util::now(),
            path,
        };
        Ok(Staged { staging, rec, stats, lineage: None })
    }

    fn push(&mut self, raw: RawRecord) -> Result<()> {
        let loc = Location { record: Some(raw.index), ..self.location.clone() };
        if let Some(field) = too_deep(&raw.fields) {
            return Err(Error::data(
                loc.field(field),
                format!("is nested deeper than {MAX_NESTING} levels (a stored record could not be read back)"),
            ));
        }
        if self.shape.is_none() {
            let shape = Shape::detect(&raw.fields, self.forced, &self.mapping, &loc)?;
            self.stats = Some(StatsBuilder::new(shape.format));
            self.shape = Some(shape);
        }
        let shape = self.shape.as_ref().ok_or_else(|| Error::Internal("no shape".into()))?;
        let value = shape.normalize(raw.fields, &loc)?;
        let before = self.writer.bytes();
        self.write(&value)?;
        if let Some(max) = self.max_stored {
            let n = self.writer.bytes() - before - 1;
            if n > max {
                return Err(Error::data(
                    loc,
                    format!("the record is {n} bytes as stored, more than max_record_bytes ({max} bytes)"),
                ));
            }
        }
        Ok(())
    }

    /// Adds a record that is already in the stored form (splits).
    fn push_normalized(&mut self, value: &Value) -> Result<()> {
        if self.shape.is_none() {
            let format = self.forced.ok_or_else(|| Error::Internal("split without format".into()))?;
            let columns = format.fields().iter().map(|f| (f.to_string(), f.to_string())).collect();
            self.stats = Some(StatsBuilder::new(format));
            self.shape = Some(Shape { format, columns });
        }
        self.write(value)
    }

    fn write(&mut self, value: &Value) -> Result<()> {
        let path = self.staging.path().join("records.jsonl");
        serde_json::to_writer(&mut self.writer, value).map_err(|e| Error::io(&path, e.into()))?;
        self.writer.write_all(b"\n").with_path(&path)?;
        if let Some(s) = self.stats.as_mut() {
            s.add(value);
        }
        self.count += 1;
        Ok(())
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<DatasetStore>();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::{json, Value};

    #[test]
    fn nesting_up_to_the_limit_reads_back_and_beyond_it_is_refused() {
        let nest = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!([v]);
            }
            json!({"x": v})
        };
        let ok = nest(super::MAX_NESTING);
        let Value::Object(m) = &ok else { unreachable!() };
        assert_eq!(super::too_deep(m), None);
        // Stored as a tabular record, the fields sit one level deeper.
        let text = serde_json::to_string(&json!({"features": ok, "label": "a"})).unwrap();
        serde_json::from_str::<Value>(&text).unwrap();
        let bad = nest(super::MAX_NESTING + 1);
        let Value::Object(m) = &bad else { unreachable!() };
        assert_eq!(super::too_deep(m), Some("x"));
    }
}
