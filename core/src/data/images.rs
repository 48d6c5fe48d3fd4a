//! Image datasets: importing a folder of images with their captions, resolving a
//! record's image, thumbnails, and the images of split halves.
//!
//! A stored image dataset is `datasets/<sha256>/records.jsonl` with the images beside it
//! in `images/`: the original bytes of each file (decoded fully at import to check them),
//! named by their 1-based position and real format, `images/000001.jpg`. A record is
//! `{"image": "images/000001.jpg", "text": caption, "width", "height", "mode",
//! "sha256": <sha256 of the image file>, "file_name": <its path in the imported folder>}`,
//! so the dataset's content address covers the images' bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::read::{self, ByteCounter, ReadCtx};
use super::{DatasetStore, Ingest};
use crate::diffusion::image::{self as img, ImageLimits};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::types::{
    DatasetFormat, DatasetId, DatasetRecord, ImageImportOptions, ImageLayout, ImportOptions, SourceFormat, TxtMode,
};
use crate::util;

/// Extensions of the files taken as images (lower case). The last four are refused as
/// unsupported when met, rather than silently skipped.
const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// The largest caption file read, in bytes.
const MAX_CAPTION_BYTES: u64 = 1 << 20;
/// The largest metadata row read, in bytes.
const MAX_METADATA_ROW: u64 = 16 << 20;
/// The metadata files of the `imagefolder` layout.
const METADATA_FILES: [&str; 2] = ["metadata.jsonl", "metadata.csv"];

/// A file found in the folder: its path relative to the folder (`/`-separated) and on disk.
#[derive(Debug, Clone)]
struct Found {
    rel: String,
    path: PathBuf,
}

/// One image to import with its caption.
struct Item {
    rel: String,
    path: PathBuf,
    text: String,
}

fn lower_ext(p: &Path) -> Option<String> {
    p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
}

fn is_image(p: &Path) -> bool {
    lower_ext(p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Every non-hidden file under `root` (symlinks to files followed, symlinked folders
/// not entered), sorted by relative path.
fn walk(root: &Path, cancel: &CancelToken) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        cancel.check()?;
        for entry in fs::read_dir(&dir).with_path(&dir)? {
            let entry = entry.with_path(&dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            let ft = entry.file_type().with_path(&path)?;
            if ft.is_dir() {
                stack.push((path, format!("{rel}/")));
            } else if ft.is_symlink() && fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            } else {
                // Regular files, symlinks to files, and special files (refused when read).
                out.push(Found { rel, path });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The dataset name derived from a folder's name.
fn name_from_dir(dir: &Path) -> String {
    let base = dir.file_name().and_then(|s| s.to_str()).unwrap_or("images");
    let cleaned: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    let trimmed = cleaned.trim_start_matches(['.', '-', '_']);
    if trimmed.is_empty() {
        "images".into()
    } else {
        trimmed.to_string()
    }
}

/// Reads at most `max` bytes of a regular file; more is `invalid_data` naming it.
fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    // A file inside the folder that is not a regular one is bad data (the folder is the
    // argument); checked before opening, as opening a FIFO would block.
    if !fs::metadata(path).with_path(path)?.is_file() {
        return Err(Error::data(
            Location::file(path),
            "not a regular file (a FIFO, socket or device cannot be imported)",
        ));
    }
    let file = read::open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).with_path(path)?;
    if bytes.len() as u64 > max {
        return Err(Error::data(Location::file(path), format!("{what} is larger than {max} bytes")));
    }
    Ok(bytes)
}

fn read_caption(path: &Path) -> Result<String> {
    let bytes = read_limited(path, MAX_CAPTION_BYTES, "the caption file")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            Location::file(path),
            format!("the caption is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(text.trim_start_matches('\u{feff}').trim().to_string())
}

/// `file_name` of a metadata row as a clean relative path (`./a/b.png` -> `a/b.png`), or
/// why it cannot be one.
fn clean_rel(s: &str) -> std::result::Result<String, &'static str> {
    let s = s.replace('\\', "/");
    if s.starts_with('/') || Path::new(&s).is_absolute() {
        return Err("is an absolute path; give the path relative to the folder");
    }
    let mut parts = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("leaves the folder (`..`)"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("is empty");
    }
    Ok(parts.join("/"))
}

fn check_options(opts: &ImageImportOptions) -> Result<()> {
    if opts.max_pixels == 0 {
        return Err(Error::config("max_pixels", "must be at least 1 (the default is 64 megapixels)"));
    }
    if opts.max_image_bytes == 0 {
        return Err(Error::config("max_image_bytes", "must be at least 1 (the default is 256 MiB)"));
    }
    if opts.caption_column.is_empty() {
        return Err(Error::config("caption_column", "must not be empty"));
    }
    if opts.image_column.is_empty() {
        return Err(Error::config("image_column", "must not be empty"));
    }
    let ext = &opts.caption_extension;
    if !ext.starts_with('.') || ext.len() < 2 || ext[1..].contains(['.', '/', '\\']) {
        return Err(Error::config("caption_extension", format!("`{ext}` is not an extension like `.txt`")));
    }
    if IMAGE_EXTENSIONS.contains(&ext[1..].to_ascii_lowercase().as_str()) {
        return Err(Error::config("caption_extension", format!("`{ext}` is an image extension")));
    }
    Ok(())
}

/// The layout of `root` given its files.
fn detect_layout(files: &[Found], opts: &ImageImportOptions) -> ImageLayout {
    if files.iter().any(|f| METADATA_FILES.contains(&f.rel.as_str())) {
        ImageLayout::ImageFolder
    } else if files.iter().any(|f| f.rel.ends_with(opts.caption_extension.as_str())) {
        ImageLayout::Captions
    } else {
        ImageLayout::Instance
    }
}

/// The images of an `imagefolder`, captioned by its metadata file.
fn imagefolder_items(
    root: &Path,
    files: &[Found],
    opts: &ImageImportOptions,
    cancel: &CancelToken,
) -> Result<(Vec<Item>, BTreeMap<String, String>)> {
    let metas: Vec<&Found> = files.iter().filter(|f| METADATA_FILES.contains(&f.rel.as_str())).collect();
    let meta = match metas.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::data(
                Location::file(root),
                "no metadata.jsonl or metadata.csv at the top of the folder (layout `imagefolder`)",
            ))
        }
        _ => {
            return Err(Error::data(Location::file(root), "both metadata.jsonl and metadata.csv are present; keep one"))
        }
    };
    let images: BTreeMap<&str, &Found> =
        files.iter().filter(|f| is_image(&f.path)).map(|f| (f.rel.as_str(), f)).collect();
    let format = if meta.rel.ends_with(".csv") { SourceFormat::Csv } else { SourceFormat::Jsonl };
    let file = read::open_regular(&meta.path)?;
    let ctx =
        ReadCtx { txt_mode: TxtMode::Lines, max_record: MAX_METADATA_ROW, cancel, counter: ByteCounter::default() };
    let mut items = Vec::new();
    let mut listed = BTreeSet::new();
    let (img_col, cap_col) = (opts.image_column.as_str(), opts.caption_column.as_str());
    read::read_file(&meta.path, file, format, &ctx, &mut |raw| {
        let loc = Location::file(&meta.path).at(raw.index);
        let string = |col: &str| -> Result<String> {
            match raw.fields.get(col) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::data(
                    loc.clone().field(col),
                    format!("must be a string, not {}", read::json_type(other)),
                )),
                None => {
                    let have: Vec<&str> = raw.fields.keys().map(String::as_str).collect();
                    Err(Error::data(
                        loc.clone().field(col),
                        format!("missing column `{col}` (the row has: {})", have.join(", ")),
                    ))
                }
            }
        };
        let name = string(img_col)?;
        let rel = clean_rel(&name).map_err(|why| Error::data(loc.clone().field(img_col), format!("`{name}` {why}")))?;
        let Some(found) = images.get(rel.as_str()) else {
            let why = if root.join(&rel).exists() {
                "is not a .png, .jpg, .jpeg or .webp image"
            } else {
                "does not exist in the folder"
            };
            return Err(Error::data(loc.field(img_col), format!("`{rel}` {why}")));
        };
        let text = string(cap_col)?.trim().to_string();
        listed.insert(rel.clone());
        items.push(Item { rel, path: found.path.clone(), text });
        Ok(())
    })?;
    if let Some(orphan) = images.values().find(|f| !listed.contains(&f.rel)) {
        return Err(Error::data(
            Location::file(&orphan.path),
            format!("the image has no row in {} (every image of an imagefolder needs one)", meta.rel),
        ));
    }
    // Sorted by path; rows naming the same image keep their order.
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    let columns = [("image".to_string(), img_col.to_string()), ("text".to_string(), cap_col.to_string())].into();
    Ok((items, columns))
}

/// The images of a kohya-style folder, captioned by their sidecar files.
fn caption_items(files: &[Found], opts: &ImageImportOptions) -> Result<Vec<Item>> {
    let ext = opts.caption_extension.as_str();
    let stems: BTreeSet<String> = files
        .iter()
        .filter(|f| is_image(&f.path))
        .map(|f| f.rel.rsplit_once('.').map_or(f.rel.clone(), |(s, _)| s.to_string()))
        .collect();
    for f in files.iter().filter(|f| f.rel.ends_with(ext)) {
        let stem = &f.rel[..f.rel.len() - ext.len()];
        if !stems.contains(stem) {
            return Err(Error::data(
                Location::file(&f.path),
                "a caption file without its image (no .png, .jpg, .jpeg or .webp of the same name beside it)",
            ));
        }
    }
    let by_rel: BTreeMap<&str, &Found> = files.iter().map(|f| (f.rel.as_str(), f)).collect();
    let mut items = Vec::new();
    for f in files.iter().filter(|f| is_image(&f.path)) {
        let stem = f.rel.rsplit_once('.').map_or(f.rel.as_str(), |(s, _)| s);
        let text = match by_rel.get(format!("{stem}{ext}").as_str()) {
            Some(c) => read_caption(&c.path)?,
            None => match &opts.instance_prompt {
                Some(p) => p.clone(),
                None => {
                    return Err(Error::data(
                        Location::file(&f.path),
                        format!(
                            "the image has no caption file `{stem}{ext}` (give instance_prompt to caption such images)"
                        ),
                    ))
                }
            },
        };
        items.push(Item { rel: f.rel.clone(), path: f.path.clone(), text });
    }
    Ok(items)
}

impl DatasetStore {
    /// Imports a folder of images with captions as an image dataset (see
    /// [`ImageImportOptions`] for the layouts and rules). Nothing is stored unless every
    /// image decodes.
    pub fn import_images(&self, path: impl AsRef<Path>, opts: &ImageImportOptions) -> Result<DatasetRecord> {
        self.import_images_with(path, opts, &mut NoopSink, &CancelToken::new())
    }

    /// [`DatasetStore::import_images`] with progress events (`task_*` of task
    /// `import_dataset`, in images) and cancellation (checked per image).
    pub fn import_images_with(
        &self,
        path: impl AsRef<Path>,
        opts: &ImageImportOptions,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<DatasetRecord> {
        let path = path.as_ref();
        util::check_path("path", path)?;
        check_options(opts)?;
        let meta = fs::metadata(path).with_path(path)?;
        if !meta.is_dir() {
            return Err(Error::config(
                "path",
                format!("{} is not a folder (import_images takes a folder of images)", path.display()),
            ));
        }
        let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => name_from_dir(&abs),
        };
        util::validate_name("name", &name)?;
        let files = walk(path, cancel)?;
        let layout = opts.layout.unwrap_or_else(|| detect_layout(&files, opts));
        let mut columns = BTreeMap::new();
        let items = match layout {
            ImageLayout::ImageFolder => {
                if opts.instance_prompt.is_some() {
                    return Err(Error::config(
                        "instance_prompt",
                        "an imagefolder takes its captions from its metadata file; instance_prompt is for the `instance` and `captions` layouts",
                    ));
                }
                let (items, cols) = imagefolder_items(path, &files, opts, cancel)?;
                columns = cols;
                items
            }
            ImageLayout::Captions => caption_items(&files, opts)?,
            ImageLayout::Instance => {
                let Some(prompt) = &opts.instance_prompt else {
                    return Err(Error::config(
                        "instance_prompt",
                        format!(
                            "{} has no metadata.jsonl/metadata.csv and no `{}` caption files: give instance_prompt (every image's caption; \"\" for none)",
                            path.display(),
                            opts.caption_extension
                        ),
                    ));
                };
                files
                    .iter()
                    .filter(|f| is_image(&f.path))
                    .map(|f| Item { rel: f.rel.clone(), path: f.path.clone(), text: prompt.clone() })
                    .collect()
            }
        };
        if items.is_empty() {
            return Err(Error::data(Location::file(path), "no images (.png, .jpg, .jpeg, .webp) found in the folder"));
        }
        let limits = ImageLimits { max_pixels: opts.max_pixels, max_bytes: opts.max_image_bytes };
        let total = items.len() as u64;
        run_task(sink, "import_dataset", &name, Some(total), "images", |rep| {
            let iopts = ImportOptions { format: Some(DatasetFormat::Image), ..Default::default() };
            let mut ingest = Ingest::new(&self.dir(), &iopts, Location::file(path), None)?;
            let images_dir = ingest.staging.path().join("images");
            fs::create_dir(&images_dir).with_path(&images_dir)?;
            for (i, item) in items.iter().enumerate() {
                cancel.check()?;
                let bytes = read_limited(&item.path, limits.max_bytes, "the image file")?;
                let (_, info) = img::decode_bytes(&bytes, &item.path, &limits)?;
                let file = format!("{:06}.{}", i + 1, info.extension());
                let dest = images_dir.join(&file);
                write_synced(&dest, &bytes)?;
                let sha = hex::encode(Sha256::digest(&bytes));
                ingest.push_normalized(&json!({
                    "image": format!("images/{file}"),
                    "text": item.text,
                    "width": info.width,
                    "height": info.height,
                    "mode": info.mode,
                    "sha256": sha,
                    "file_name": item.rel,
                }))?;
                rep.progress(i as u64 + 1)?;
            }
            cancel.check()?;
            let mut staged = ingest.finish(&name, abs.display().to_string(), SourceFormat::Images, None)?;
            staged.rec.columns = columns;
            let rec = self.store_one(staged, opts.on_duplicate)?;
            let id = rec.id.0.clone();
            Ok((rec, Some(id)))
        })
    }

    /// The file of an image dataset's record (`record["image"]`, relative to the
    /// dataset's folder). A path that is absolute or leaves the folder is `invalid_data`.
    pub fn image_path(&self, dataset: &DatasetRecord, record: &Value) -> Result<PathBuf> {
        image_path(dataset, record)
    }

    /// The first `n` records of an image dataset, each with a PNG thumbnail of its image
    /// no larger than `size x size` (aspect ratio kept, never enlarged).
    pub fn thumbnails(&self, id_or_name: impl Into<DatasetId>, n: usize, size: u32) -> Result<Vec<(Value, Vec<u8>)>> {
        if size == 0 {
            return Err(Error::config("size", "must be at least 1 pixel"));
        }
        let rec = self.get(id_or_name)?;
        if rec.format != DatasetFormat::Image {
            return Err(Error::config(
                "dataset",
                format!("`{}` is a {} dataset; thumbnails are for image datasets", rec.name, rec.format),
            ));
        }
        let records = self.preview(rec.id.clone(), n)?;
        let limits = ImageLimits { max_pixels: u64::MAX, max_bytes: u64::MAX };
        let mut out = Vec::with_capacity(records.len());
        for v in records {
            let p = image_path(&rec, &v)?;
            let (full, _) = img::decode(&p, &limits)?;
            let png = img::encode_png(&img::thumbnail(&full, size)?)?;
            out.push((v, png));
        }
        Ok(out)
    }
}

/// See [`DatasetStore::image_path`].
pub(crate) fn image_path(dataset: &DatasetRecord, record: &Value) -> Result<PathBuf> {
    let loc = || Location::file(&dataset.path).field("image");
    let rel = match record.get("image") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(Error::data(loc(), format!("must be a string, not {}", read::json_type(other)))),
        None => return Err(Error::data(loc(), "the record has no `image`")),
    };
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::data(loc(), format!("`{rel}` is not a path inside the dataset's folder")));
    }
    let dir = dataset.path.parent().ok_or_else(|| Error::Internal("dataset path has no folder".into()))?;
    Ok(dir.join(p))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_path(path)?;
    f.write_all(bytes).with_path(path)?;
    f.sync_all().with_path(path)
}

/// Puts the image of `record` (from the dataset whose records are `src_records`) into
/// the staging folder `dest_dir`, under the same relative path: a hard link, or a copy
/// where links are not possible.
pub(super) fn link_image(src: &DatasetRecord, record: &Value, dest_dir: &Path) -> Result<()> {
    let from = image_path(src, record)?;
    let rel = from.strip_prefix(src.path.parent().unwrap_or(Path::new(""))).unwrap_or(&from).to_path_buf();
    let to = dest_dir.join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_path(parent)?;
    }
    if fs::hard_link(&from, &to).is_err() {
        fs::copy(&from, &to).with_path(&from)?;
    }
    Ok(())
}
