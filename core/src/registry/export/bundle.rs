//! Bundles: one ZIP with a model's files (and, for an adapter, its base's), a
//! `manifest.json` (every file with its size and sha256, the models' records and
//! lineage, anneal's version and catalog schema) and a model card; importing one
//! restores the models in another home under the same ids with the same content.
//!
//! Layout: `manifest.json`, `README.md`, `models/<id>/<file>` (stored, not compressed:
//! weights do not compress). Import checks everything before it registers anything:
//! entry names (no absolute paths, no `..`, nothing the manifest does not list), sizes
//! (read no more than the manifest says), every sha256, and the records' content
//! hashes; a mismatch is `invalid_data` naming the bundle and the entry.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{card, Chain};
use crate::catalog::SCHEMA_VERSION;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::events::{run_task, CancelToken, EventSink};
use crate::registry::inspect::{self, Inspected};
use crate::registry::{ModelRegistry, NewModel};
use crate::types::{ExportFormat, ExportOptions, ImportBundleOptions, ModelFile, ModelKind, ModelRecord};
use crate::util::{self, StagingDir};

const MANIFEST: &str = "manifest.json";
const FORMAT: &str = "anneal-bundle";
const BUNDLE_VERSION: u32 = 1;
/// The manifest is read into memory: refuse anything larger than this.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    bundle_version: u32,
    anneal_version: String,
    schema_version: i64,
    created_at: String,
    /// The id of the exported model (the last of `models`).
    model: String,
    /// Base first, then the adapter.
    models: Vec<ModelRecord>,
    files: Vec<BundleFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    path: String,
    bytes: u64,
    sha256: String,
}

fn entry_name(rec: &ModelRecord, file: &str) -> String {
    format!("models/{}/{file}", rec.id.0)
}

pub(super) fn write(
    chain: &Chain,
    path: &Path,
    cancel: &CancelToken,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let models: Vec<&ModelRecord> = chain.base.iter().chain(std::iter::once(&chain.model)).collect();
    let mut files = Vec::new();
    let out = fs::File::create(path).with_path(path)?;
    let mut zip = zip::ZipWriter::new(io::BufWriter::with_capacity(1 << 20, out));
    let zerr = |e: zip::result::ZipError| Error::io(path, io::Error::other(e));
    for rec in &models {
        for f in &rec.files {
            let name = entry_name(rec, &f.name);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(f.bytes >= u32::MAX as u64);
            zip.start_file(name.as_str(), opts).map_err(zerr)?;
            let src = rec.path.join(&f.name);
            let mut input = fs::File::open(&src).with_path(&src)?;
            let mut w = util::HashingWriter::new(&mut zip);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                cancel.check()?;
                let n = input.read(&mut buf).with_path(&src)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).with_path(path)?;
            }
            let bytes = w.bytes();
            let (_, sha256) = w.finish();
            if sha256 != f.sha256 {
                return Err(Error::data(
                    Location::file(&src),
                    format!(
                        "changed since {} was registered (sha256 {sha256}, registered {})",
                        rec.reference(),
                        f.sha256
                    ),
                ));
            }
            files.push(BundleFile { path: name, bytes, sha256 });
            step()?;
        }
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        bundle_version: BUNDLE_VERSION,
        anneal_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: SCHEMA_VERSION,
        created_at: util::now(),
        model: chain.model.id.0.clone(),
        models: models
            .iter()
            .map(|r| ModelRecord { path: PathBuf::new(), aliases: Vec::new(), ..(*r).clone() })
            .collect(),
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(MANIFEST, opts).map_err(zerr)?;
    zip.write_all(&text).with_path(path)?;
    let base_name = card::base_name(chain, &ExportOptions::default());
    zip.start_file("README.md", opts).map_err(zerr)?;
    zip.write_all(card::render(chain, ExportFormat::Bundle, &base_name).as_bytes()).with_path(path)?;
    let w = zip.finish().map_err(zerr)?;
    w.into_inner().map_err(|e| Error::io(path, e.into_error()))?.sync_all().with_path(path)?;
    Ok(())
}

/// A model of the bundle staged and checked, ready to be inserted.
struct Staged {
    rec: ModelRecord,
    staging: StagingDir,
    inspected: Inspected,
    files: Vec<ModelFile>,
}

pub(crate) fn import_bundle(
    registry: &ModelRegistry,
    path: &Path,
    opts: &ImportBundleOptions,
    sink: &mut dyn EventSink,
    cancel: &CancelToken,
) -> Result<ModelRecord> {
    util::check_path("path", path)?;
    if let Some(n) = &opts.name {
        util::validate_name("name", n)?;
    }
    let meta = fs::metadata(path).with_path(path)?;
    if !meta.is_file() {
        return Err(Error::config("path", format!("{} is not a regular file", path.display())));
    }
    let bad = |entry: &str, why: String| Error::data(Location::file(path).field(entry.to_string()), why);
    let file = fs::File::open(path).with_path(path)?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| bad("", format!("not a readable ZIP bundle (truncated or corrupt?): {e}")))?;
    let manifest: Manifest = {
        let entry = zip.by_name(MANIFEST).map_err(|_| bad(MANIFEST, "the bundle has no manifest.json".into()))?;
        if entry.size() > MAX_MANIFEST_BYTES {
            return Err(bad(MANIFEST, format!("{} bytes is too large for a manifest", entry.size())));
        }
        let mut text = Vec::new();
        entry.take(MAX_MANIFEST_BYTES).read_to_end(&mut text).map_err(|e| bad(MANIFEST, e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| bad(MANIFEST, e.to_string()))?
    };
    if manifest.format != FORMAT || manifest.bundle_version != BUNDLE_VERSION {
        return Err(bad(
            MANIFEST,
            format!(
                "format {} version {} is not {FORMAT} version {BUNDLE_VERSION}",
                manifest.format, manifest.bundle_version
            ),
        ));
    }
    if manifest.schema_version > SCHEMA_VERSION {
        return Err(bad(
            MANIFEST,
            format!(
                "written by anneal {} (catalog schema {}); this anneal reads bundles up to schema {SCHEMA_VERSION}",
                manifest.anneal_version, manifest.schema_version
            ),
        ));
    }
    let Some(main) = manifest.models.last().filter(|m| m.id.0 == manifest.model) else {
        return Err(bad(MANIFEST, "`model` is not the last of `models`".into()));
    };
    // Entries: exactly the manifest's files, plus manifest.json and README.md.
    let listed: BTreeMap<&str, &BundleFile> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut seen = HashSet::new();
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| bad("", e.to_string()))?;
        let name = entry.name().map_err(|e| bad("", e.to_string()))?.to_string();
        if entry.enclosed_name().is_none() || name.contains('\\') || name.split('/').any(|c| c == "..") {
            return Err(bad(&name, "unsafe entry name (absolute, or with `..`)".into()));
        }
        if entry.is_dir() {
            continue;
        }
        if name != MANIFEST && name != "README.md" && !listed.contains_key(name.as_str()) {
            return Err(bad(&name, "entry not listed in manifest.json".into()));
        }
        if !seen.insert(name.clone()) {
            return Err(bad(&name, "entry appears twice".into()));
        }
    }
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let reference = format!("{}@{}", opts.name.as_deref().unwrap_or(&main.name), main.version);
    run_task(sink, "import_bundle", &reference, Some(total), "bytes", |rep| {
        let mut done = 0u64;
        let mut staged: Vec<Staged> = Vec::new();
        let mut existing: Vec<ModelRecord> = Vec::new();
        for rec in &manifest.models {
            // Already here (imported before, or the same base): reuse it when the content matches.
            if let Ok(have) = registry.get(&rec.id) {
                if have.sha256 != rec.sha256 {
                    return Err(Error::AlreadyExists {
                        what: "model",
                        id: rec.id.0.clone(),
                        detail: format!(
                            " with other content (sha256 {} here, {} in the bundle)",
                            have.sha256, rec.sha256
                        ),
                    });
                }
                existing.push(have);
                continue;
            }
            let staging = StagingDir::new(&registry.staging_root())?;
            let mut files = Vec::new();
            for f in &rec.files {
                let name = entry_name(rec, &f.name);
                let Some(listed) = listed.get(name.as_str()) else {
                    return Err(bad(&name, "listed in the record but not in the manifest's files".into()));
                };
                if listed.sha256 != f.sha256 || listed.bytes != f.bytes {
                    return Err(bad(&name, "the record and the manifest disagree on this file".into()));
                }
                let rel = Path::new(&f.name);
                if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(bad(&name, "unsafe file name in the record".into()));
                }
                let dst = staging.path().join(rel);
                if let Some(d) = dst.parent() {
                    fs::create_dir_all(d).with_path(d)?;
                }
                let entry = zip.by_name(&name).map_err(|_| bad(&name, "missing from the bundle".into()))?;
                let mut input = entry.take(f.bytes + 1);
                let mut out = util::HashingWriter::new(io::BufWriter::new(fs::File::create(&dst).with_path(&dst)?));
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    cancel.check()?;
                    let n = input.read(&mut buf).map_err(|e| bad(&name, format!("cannot read: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n]).with_path(&dst)?;
                    done += n as u64;
                    rep.progress(done)?;
                }
                let bytes = out.bytes();
                let (w, sha256) = out.finish();
                w.into_inner().map_err(|e| Error::io(&dst, e.into_error()))?.sync_all().with_path(&dst)?;
                if bytes != f.bytes || sha256 != f.sha256 {
                    return Err(bad(
                        &name,
                        format!(
                            "content does not match the manifest ({bytes} bytes, sha256 {sha256}; expected {} bytes, \
                             {}): the bundle was changed or truncated",
                            f.bytes, f.sha256
                        ),
                    ));
                }
                files.push(ModelFile { name: f.name.clone(), bytes, sha256 });
            }
            let inspected = inspect_staged(registry, rec, staging.path(), &staged, &existing)?;
            if super::super::content_sha(&files) != rec.sha256 {
                return Err(bad(MANIFEST, format!("model {}: the record's sha256 does not match its files", rec.id.0)));
            }
            staged.push(Staged { rec: rec.clone(), staging, inspected, files });
        }
        // Everything is checked: register, base first.
        let mut last = existing.last().cloned();
        let n = staged.len();
        let mut here: HashSet<String> = existing.iter().map(|r| r.id.0.clone()).collect();
        for (i, mut s) in staged.into_iter().enumerate() {
            // A full fine-tune carries all its weights: its base need not be in this home.
            // Its lineage (job, dataset, base) stays in the record; the link to a parent
            // that is not here is dropped. An adapter's base is always in the bundle.
            let parent = s
                .rec
                .parent_id
                .clone()
                .filter(|p| here.contains(&p.0) || registry.get(p).is_ok() || s.rec.kind == ModelKind::Lora);
            let name = match (&opts.name, i + 1 == n) {
                (Some(name), true) => name.clone(),
                _ => s.rec.name.clone(),
            };
            let new = NewModel {
                name: &name,
                kind: s.rec.kind,
                family: s.rec.family,
                parent,
                source: format!("bundle:{}", path.display()),
                task: s.rec.task.clone(),
                tags: s.rec.tags.clone(),
                lineage: s.rec.lineage.clone(),
            };
            let rec =
                registry.insert_staged(s.rec.id.clone(), &mut s.staging, s.files, &s.inspected, new, &|_, _| Ok(()))?;
            here.insert(rec.id.0.clone());
            last = Some(rec);
        }
        let rec = last.ok_or_else(|| Error::Internal("bundle without models".into()))?;
        let id = rec.id.0.clone();
        Ok((rec, Some(id)))
    })
}

/// Checks a staged model the way registering it would, and describes it.
fn inspect_staged(
    registry: &ModelRegistry,
    rec: &ModelRecord,
    dir: &Path,
    staged: &[Staged],
    existing: &[ModelRecord],
) -> Result<Inspected> {
    let budget = registry.store().memory_limit;
    if rec.kind == ModelKind::Classifier {
        crate::tabular::classifier::Classifier::load(dir)?;
        return Ok(Inspected::classifier(
            rec.architecture.clone(),
            rec.params,
            rec.config.clone(),
            rec.files.iter().map(|f| f.name.clone()).collect(),
        ));
    }
    let inspected = if crate::models::gguf::is_gguf_model(dir) {
        crate::registry::gguf_in::inspect_dir(dir)?
    } else {
        inspect::inspect_dir(dir, budget)?
    };
    if inspected.kind != rec.kind && !(rec.kind == ModelKind::Full && inspected.kind == ModelKind::Base) {
        return Err(Error::data(
            Location::file(dir),
            format!(
                "model {} is recorded as {} but holds a {} model",
                rec.id.0,
                rec.kind.as_str(),
                inspected.kind.as_str()
            ),
        ));
    }
    // An adapter is checked against its base; a full model carries its own weights.
    if let Some(parent) = rec.parent_id.as_ref().filter(|_| rec.kind == ModelKind::Lora) {
        let base = staged
            .iter()
            .map(|s| &s.rec)
            .chain(existing)
            .find(|r| &r.id == parent)
            .cloned()
            .map(Ok)
            .unwrap_or_else(|| registry.get(parent))?;
        let base = ModelRecord {
            path: staged
                .iter()
                .find(|s| &s.rec.id == parent)
                .map_or(base.path.clone(), |s| s.staging.path().to_path_buf()),
            ..base
        };
        inspect::check_adapter(&inspected, &base, budget)?;
    }
    Ok(inspected)
}
