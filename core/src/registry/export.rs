//! Export: a registered model out of the home, in the layouts other tools load (a
//! Hugging Face directory with an adapter merged in, a PEFT adapter directory, a
//! bundle ZIP that another home imports, each with a model card; a GGUF file for
//! llama.cpp, an Ollama folder).
//!
//! Everything is written under a temporary name beside the destination and renamed
//! into place at the end; an existing destination is refused unless `overwrite`, and
//! then replaced only once the new export is complete. A failure or a cancel leaves
//! the destination as it was.

mod bundle;
mod card;
mod gguf;
mod hf;
mod ollama;

use std::fs;
use std::path::{Path, PathBuf};

use super::ModelRegistry;
use crate::error::{Error, IoResultExt, Result};
use crate::events::{run_task, CancelToken, EventSink};
use crate::types::{ExportFormat, ExportOptions, ExportReport, ExportedFile, ModelKind, ModelRecord, ModelRef};
use crate::util;

pub(crate) use bundle::import_bundle;

/// A model and, for an adapter, the base it applies to.
pub(crate) struct Chain {
    pub(crate) model: ModelRecord,
    pub(crate) base: Option<ModelRecord>,
}

impl Chain {
    pub(crate) fn resolve(registry: &ModelRegistry, model: ModelRef) -> Result<Self> {
        let model = registry.resolve(model)?;
        let base = match (&model.kind, &model.parent_id) {
            (ModelKind::Lora, Some(p)) => Some(registry.get(p)?),
            (ModelKind::Lora, None) => {
                return Err(Error::data(
                    crate::error::Location::file(&model.path).field("parent_id"),
                    format!("adapter {} has no base model", model.reference()),
                ))
            }
            _ => None,
        };
        Ok(Self { model, base })
    }
}

pub(crate) fn export(
    registry: &ModelRegistry,
    model: ModelRef,
    format: ExportFormat,
    dest: &Path,
    opts: &ExportOptions,
    sink: &mut dyn EventSink,
    cancel: &CancelToken,
) -> Result<ExportReport> {
    opts.validate()?;
    util::check_path("dest", dest)?;
    let chain = Chain::resolve(registry, model)?;
    if fs::symlink_metadata(dest).is_ok() && !opts.overwrite {
        return Err(Error::AlreadyExists {
            what: "export destination",
            id: dest.display().to_string(),
            detail: " (pass overwrite to replace it)".into(),
        });
    }
    let reference = chain.model.reference();
    run_task(sink, "export", &reference, None, "files", |rep| {
        let mut done = 0u64;
        let mut step = || -> Result<()> {
            cancel.check()?;
            done += 1;
            rep.progress(done)
        };
        let files = match format {
            ExportFormat::Hf => {
                write_dir(dest, |tmp| hf::write_merged(registry, &chain, tmp, opts, cancel, &mut step))?
            }
            ExportFormat::Peft => write_dir(dest, |tmp| hf::write_adapter(&chain, tmp, opts, cancel, &mut step))?,
            ExportFormat::Bundle => write_file(dest, |tmp| bundle::write(&chain, tmp, cancel, &mut step))?,
            ExportFormat::Gguf => write_file(dest, |tmp| gguf::write(registry, &chain, tmp, opts, &mut step))?,
            ExportFormat::Ollama => write_dir(dest, |tmp| ollama::write(registry, &chain, tmp, opts, &mut step))?,
        };
        let report = ExportReport { model: reference.clone(), format, path: dest.display().to_string(), files };
        Ok((report, Some(chain.model.id.0.clone())))
    })
}

/// A sibling of `dest` that no other writer uses.
fn sibling(dest: &Path, what: &str) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("export");
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{what}-{}", util::new_id("x")))
}

/// Fills a temporary directory beside `dest` with `fill`, then puts it in `dest`'s place
/// (moving an existing `dest` aside first and removing it last). Returns the files
/// written, with their sizes and sha256.
fn write_dir(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<Vec<ExportedFile>> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_path(parent)?;
    let tmp = sibling(dest, "tmp");
    let result = (|| {
        fs::create_dir(&tmp).with_path(&tmp)?;
        fill(&tmp)?;
        let files = list_files(&tmp)?;
        replace(&tmp, dest)?;
        Ok(files)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// [`write_dir`] for a single file: `write` gets the temporary path to create.
fn write_file(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<Vec<ExportedFile>> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_path(parent)?;
    let tmp = sibling(dest, "tmp");
    let result = (|| {
        write(&tmp)?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).with_path(&tmp)?;
        let file = exported(&tmp, dest.file_name().and_then(|n| n.to_str()).unwrap_or("export"))?;
        replace(&tmp, dest)?;
        Ok(vec![file])
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `tmp` to `dest`; an existing `dest` is moved aside first and removed after.
fn replace(tmp: &Path, dest: &Path) -> Result<()> {
    let old = match fs::symlink_metadata(dest) {
        Ok(_) => {
            let old = sibling(dest, "old");
            fs::rename(dest, &old).with_path(dest)?;
            Some(old)
        }
        Err(_) => None,
    };
    if let Err(e) = fs::rename(tmp, dest).with_path(dest) {
        if let Some(old) = &old {
            let _ = fs::rename(old, dest);
        }
        return Err(e);
    }
    if let Some(old) = old {
        let removed = if old.is_dir() { fs::remove_dir_all(&old) } else { fs::remove_file(&old) };
        removed.with_path(&old)?;
    }
    Ok(())
}

fn exported(path: &Path, name: &str) -> Result<ExportedFile> {
    Ok(ExportedFile {
        path: name.to_string(),
        bytes: fs::metadata(path).with_path(path)?.len(),
        sha256: util::sha256_file(path, |_| Ok(()))?,
    })
}

/// Every file under `dir`, relative and '/'-separated, sorted.
fn list_files(dir: &Path) -> Result<Vec<ExportedFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<ExportedFile>) -> Result<()> {
        for e in fs::read_dir(dir).with_path(dir)? {
            let p = e.with_path(dir)?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push(exported(&p, &name)?);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Copies the model file `name` from `rec`'s directory to `to`, checking it against
/// the sha256 the registry recorded (a changed file in the home is `invalid_data`).
/// `cancel` is checked after every chunk.
pub(crate) fn copy_checked(rec: &ModelRecord, name: &str, to: &Path, cancel: &CancelToken) -> Result<()> {
    let src = rec.path.join(name);
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_path(dir)?;
    }
    let sha = util::copy_hashing(&src, to, |_| cancel.check())?;
    match rec.files.iter().find(|f| f.name == name) {
        Some(f) if f.sha256 != sha => Err(Error::data(
            crate::error::Location::file(&src),
            format!("changed since {} was registered (sha256 {sha}, registered {})", rec.reference(), f.sha256),
        )),
        _ => Ok(()),
    }
}
