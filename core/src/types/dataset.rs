//! Datasets: formats, records, options, statistics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::DatasetId;
use super::names::named_enum;

named_enum! {
    /// The shape of a dataset's records, as stored.
    ///
    /// | format | stored record |
    /// |---|---|
    /// | `text` | `{"text"}` |
    /// | `completion` | `{"prompt", "completion"}` |
    /// | `instruction` | `{"instruction", "input", "output"}` (alpaca; `input` may be empty) |
    /// | `chat` | `{"messages": [{"role", "content"}, ...]}` |
    /// | `tabular` | `{column: value, ..., "label": value}` (flat: every key but `label` is a feature column) |
    /// | `image` | `{"image": "images/<file>", "text": caption, "width", "height", "mode"}` (the image file is stored beside the records) |
    pub enum DatasetFormat("format") {
        Text = "text",
        Completion = "completion",
        Instruction = "instruction",
        Chat = "chat",
        Tabular = "tabular",
        Image = "image",
    }
}

/// Roles accepted in chat messages.
pub const CHAT_ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl DatasetFormat {
    /// The canonical fields of the format; the ones a column mapping may name.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            DatasetFormat::Text => &["text"],
            DatasetFormat::Completion => &["prompt", "completion"],
            DatasetFormat::Instruction => &["instruction", "input", "output"],
            DatasetFormat::Chat => &["messages"],
            DatasetFormat::Tabular => &["label"],
            DatasetFormat::Image => &["image", "text"],
        }
    }

    /// The string fields whose lengths make up a record's length.
    pub(crate) fn text_fields(self) -> &'static [&'static str] {
        match self {
            DatasetFormat::Tabular => &[],
            DatasetFormat::Image => &["text"],
            other => other.fields(),
        }
    }
}

named_enum! {
    /// The file format of an import source.
    pub enum SourceFormat("source_format") {
        /// One JSON object per line (`.jsonl`, `.ndjson`).
        Jsonl = "jsonl",
        /// A JSON array of objects (`.json`).
        Json = "json",
        /// Comma-separated with a header row (`.csv`).
        Csv = "csv",
        /// Tab-separated with a header row (`.tsv`).
        Tsv = "tsv",
        /// Plain text (`.txt`, `.md`): one record per line, or the whole file.
        Txt = "txt",
        /// Records given in memory (Python lists, JS arrays).
        Records = "records",
        /// A folder of images with captions (`import_images`).
        Images = "images",
    }
}

named_enum! {
    /// How a TXT file becomes records.
    #[derive(Default)]
    pub enum TxtMode("txt_mode") {
        /// One record per non-empty line.
        #[default]
        Lines = "lines",
        /// The whole file is one record.
        Document = "document",
    }
}

named_enum! {
    /// What to do when the same content (same sha256) is already stored.
    #[derive(Default)]
    pub enum OnDuplicate("on_duplicate") {
        /// Fail with `duplicate_content`, naming the existing dataset.
        #[default]
        Error = "error",
        /// Return the existing dataset.
        Reuse = "reuse",
    }
}

/// A stored dataset (a catalog row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatasetRecord {
    pub id: DatasetId,
    pub name: String,
    pub format: DatasetFormat,
    /// sha256 of the normalised records: the content address.
    pub sha256: String,
    pub num_records: u64,
    /// Bytes of the normalised records file.
    pub bytes: u64,
    /// Where it came from: the imported path, `memory`, or `split:<parent id>`.
    pub source: String,
    pub source_format: SourceFormat,
    /// Canonical field -> source column used at import.
    pub columns: BTreeMap<String, String>,
    /// For splits: the dataset it was split from.
    pub parent_id: Option<DatasetId>,
    pub created_at: String,
    /// The normalised records (JSONL) inside the home. Read-only.
    pub path: PathBuf,
}

/// Default of [`ImportOptions::max_record_bytes`]: 16 MiB.
pub(crate) const DEFAULT_MAX_RECORD_BYTES: u64 = 16 << 20;

/// Options for [`DatasetStore::import_file`] and [`DatasetStore::import_records`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImportOptions {
    /// The dataset's name (unique). Default: the file's stem, or `records-<id>` in memory.
    pub name: Option<String>,
    /// Force a record format instead of detecting it from the first record.
    pub format: Option<DatasetFormat>,
    /// Map canonical fields to your columns: `{"prompt": "question", "completion": "answer"}`.
    pub columns: BTreeMap<String, String>,
    /// Force the file format instead of using the extension.
    pub source_format: Option<SourceFormat>,
    /// TXT files: one record per line (default) or one per file.
    pub txt_mode: TxtMode,
    /// Same content already stored: error (default) or return the existing dataset.
    pub on_duplicate: OnDuplicate,
    /// The largest record accepted, in bytes (default 16 MiB; at least 1). Files: the
    /// bytes of one line (JSONL, TXT), of one row (CSV, TSV), of one array element with
    /// the separator before it (JSON), of the whole file (TXT `document`); the import
    /// stops reading at the limit, so memory stays bounded whatever the file holds.
    /// In-memory records: the record as stored (normalised JSON). A larger record is
    /// `invalid_data` naming the file and the line or record.
    pub max_record_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            name: None,
            format: None,
            columns: BTreeMap::new(),
            source_format: None,
            txt_mode: TxtMode::default(),
            on_duplicate: OnDuplicate::default(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// Options of [`crate::DatasetStore::split`] as the bindings take them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SplitOptions {
    /// Seed of the shuffle: the same seed gives the same halves. Default 0.
    pub seed: u64,
    /// Names of the halves. Default: `<name>-train`, `<name>-val`.
    pub names: Option<(String, String)>,
}

/// Options of the `delete` calls (datasets and models) as the bindings take them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteOptions {
    /// Delete even while others depend on it: jobs lose the link, a model's adapters
    /// are deleted with it.
    pub force: bool,
}

/// The two halves of [`DatasetStore::split`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatasetSplit {
    pub train: DatasetRecord,
    pub val: DatasetRecord,
}

/// Lengths (in characters) of one field across the dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FieldStats {
    pub min_chars: u64,
    pub max_chars: u64,
    pub mean_chars: f64,
    /// Records where the field is empty.
    pub empty: u64,
}

/// One bucket of the record length histogram: records whose total length in characters
/// lies in `[min_chars, max_chars]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LengthBucket {
    pub min_chars: u64,
    pub max_chars: u64,
    pub count: u64,
}

/// What `DatasetStore::stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatasetStats {
    pub num_records: u64,
    /// Bytes of the stored (normalised JSONL) records.
    pub bytes: u64,
    /// Per text field (`text`, `prompt`, `messages` = all message contents, ...).
    pub fields: BTreeMap<String, FieldStats>,
    /// Power-of-two buckets of record length in characters (empty buckets omitted).
    pub length_histogram: Vec<LengthBucket>,
    /// Chat datasets: messages per role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_counts: Option<BTreeMap<String, u64>>,
    /// Tabular datasets: records per label (at most 1000 distinct labels are counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_counts: Option<BTreeMap<String, u64>>,
    /// Image datasets: sizes, aspect ratios, modes and formats of the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageStats>,
    /// Token counts, filled once the dataset has been tokenised for a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<BTreeMap<String, u64>>,
}

named_enum! {
    /// How a folder of images carries its captions ([`ImageImportOptions::layout`]).
    pub enum ImageLayout("layout") {
        /// Hugging Face `imagefolder`: a `metadata.jsonl` or `metadata.csv` at the top of
        /// the folder, one row per image with its path relative to the folder
        /// (`file_name`, images may be in subfolders) and its caption (`text`).
        ImageFolder = "imagefolder",
        /// kohya-style sidecar captions: `foo.png` captioned by `foo.txt` beside it.
        Captions = "captions",
        /// A DreamBooth instance set: images only, every caption is the `instance_prompt`.
        Instance = "instance",
    }
}

/// Options for [`crate::DatasetStore::import_images`].
///
/// The layout is detected when not given: a `metadata.jsonl` / `metadata.csv` at the top
/// makes it `imagefolder`; otherwise any caption file (`caption_extension`) makes it
/// `captions`; otherwise it is `instance`, which needs `instance_prompt`.
///
/// Images are the files named `.png`, `.jpg`, `.jpeg`, `.webp` (any case; and `.gif`,
/// `.bmp`, `.tif`, `.tiff`, which are refused as unsupported) in the folder and its
/// subfolders, hidden ones (`.name`) skipped, in sorted path order. Every image is
/// decoded fully at import: a corrupt, truncated or unsupported one is `invalid_data`
/// naming it, and nothing is stored.
///
/// Captions: in `imagefolder` every image must have a metadata row (an image without one,
/// or a row whose file is missing, is `invalid_data`); in `captions` an image without a
/// caption file takes the `instance_prompt` when one is given (kohya's class-token
/// fallback) and is `invalid_data` otherwise, while a caption file without its image is
/// `invalid_data`. A caption's surrounding whitespace is trimmed. Captionless training
/// (unconditional) is asked for explicitly with `instance_prompt: ""`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImageImportOptions {
    /// The dataset's name (unique). Default: the folder's name.
    pub name: Option<String>,
    /// Force a layout instead of detecting it.
    pub layout: Option<ImageLayout>,
    /// `imagefolder`: the metadata column holding the caption (diffusers'
    /// `--caption_column`). Default `text`.
    pub caption_column: String,
    /// `imagefolder`: the metadata column holding the image's relative path (diffusers'
    /// `--image_column` is the loaded image; the file is `file_name`). Default `file_name`.
    pub image_column: String,
    /// `captions`: the caption files' extension. Default `.txt`.
    pub caption_extension: String,
    /// `instance`: every image's caption (e.g. "a photo of sks dog"). `captions`: the
    /// caption of images without a caption file.
    pub instance_prompt: Option<String>,
    /// Same content already stored: error (default) or return the existing dataset.
    pub on_duplicate: OnDuplicate,
    /// The largest image accepted, in pixels (width x height; default 64 megapixels).
    /// A larger image is refused (`invalid_data` naming it and the limit), not
    /// downscaled; its size is read from the file's header, before any pixel is decoded.
    pub max_pixels: u64,
    /// The largest image file accepted, in bytes (default 256 MiB).
    pub max_image_bytes: u64,
}

impl Default for ImageImportOptions {
    fn default() -> Self {
        Self {
            name: None,
            layout: None,
            caption_column: "text".into(),
            image_column: "file_name".into(),
            caption_extension: ".txt".into(),
            instance_prompt: None,
            on_duplicate: OnDuplicate::default(),
            max_pixels: 64 * 1024 * 1024,
            max_image_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Smallest, largest and mean of a dimension, in pixels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SizeStats {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
}

/// What [`DatasetStats::images`] reports for an image dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImageStats {
    /// Number of images (records).
    pub count: u64,
    pub width: SizeStats,
    pub height: SizeStats,
    /// Images per aspect ratio (width:height), each counted under the nearest of
    /// `1:3`, `9:16`, `2:3`, `3:4`, `4:5`, `1:1`, `5:4`, `4:3`, `3:2`, `16:9`, `3:1`
    /// (nearest on a log scale; empty buckets omitted).
    pub aspect_ratios: BTreeMap<String, u64>,
    /// Images per pixel layout before conversion (`RGB`, `RGBA`, `L`, `LA`, `I;16`, ...).
    pub modes: BTreeMap<String, u64>,
    /// Images per file format (`png`, `jpeg`, `webp`).
    pub formats: BTreeMap<String, u64>,
}
