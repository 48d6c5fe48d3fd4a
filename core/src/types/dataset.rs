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
    /// | `tabular` | `{"features": {column: value, ...}, "label": value}` |
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
    /// Token counts, filled once the dataset has been tokenised for a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<BTreeMap<String, u64>>,
}
