//! `anneal import` and `anneal datasets ...`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anneal::{
    DatasetFormat, DatasetRecord, Error, EventSink, ImageImportOptions, ImageLayout, ImportOptions, JsonLinesSink,
    NoopSink, OnDuplicate, SourceFormat, TerminalSink, TxtMode,
};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use super::cancel::Cancellable;
use super::output::{count, size, when, Out};
use super::Ctx;

pub(crate) const IMPORT_EXAMPLES: &str = "\
Examples:
  anneal import train.jsonl --name support
  anneal import faq.csv --name faq --format completion --column prompt=question --column completion=answer
  anneal import notes.txt --name notes --txt-mode document
  anneal import ./pictures --name shapes --layout imagefolder
  anneal import train.jsonl --name support --on-duplicate reuse --json";

/// `anneal import FILE|DIR`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A CSV, TSV, JSON (array), JSONL or TXT file; or a folder of images with captions.
    pub path: PathBuf,
    /// The dataset's name (default: the file name without its extension).
    #[arg(long)]
    pub name: Option<String>,
    /// The record format (default: detected from the columns).
    #[arg(long, value_parser = PossibleValuesParser::new(DatasetFormat::NAMES))]
    pub format: Option<String>,
    /// The file format (default: from the extension).
    #[arg(long, value_parser = PossibleValuesParser::new(SourceFormat::NAMES))]
    pub source_format: Option<String>,
    /// Map a column of the file to a field: `--column prompt=question` (repeatable).
    #[arg(long = "column", value_name = "FIELD=COLUMN")]
    pub columns: Vec<String>,
    /// TXT files: one record per line, or the whole file as one record.
    #[arg(long, value_parser = PossibleValuesParser::new(TxtMode::NAMES))]
    pub txt_mode: Option<String>,
    /// When the same content is already stored: fail (`error`) or return the stored dataset (`reuse`).
    #[arg(long, value_parser = PossibleValuesParser::new(OnDuplicate::NAMES))]
    pub on_duplicate: Option<String>,
    /// Largest record accepted, in bytes (default 16 MiB).
    #[arg(long)]
    pub max_record_bytes: Option<u64>,
    /// Image folders: the layout (default: detected).
    #[arg(long, value_parser = PossibleValuesParser::new(ImageLayout::NAMES), help_heading = "Image folders")]
    pub layout: Option<String>,
    /// Image folders: the caption column of metadata.jsonl/csv.
    #[arg(long, help_heading = "Image folders")]
    pub caption_column: Option<String>,
    /// Image folders: the image column of metadata.jsonl/csv.
    #[arg(long, help_heading = "Image folders")]
    pub image_column: Option<String>,
    /// Image folders: the extension of caption files (kohya layout).
    #[arg(long, help_heading = "Image folders")]
    pub caption_extension: Option<String>,
    /// Image folders: the prompt of every image (DreamBooth instance set).
    #[arg(long, help_heading = "Image folders")]
    pub instance_prompt: Option<String>,
}

/// `anneal datasets ...`.
#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// List the datasets.
    #[command(visible_alias = "list", after_help = "Examples:\n  anneal datasets ls\n  anneal datasets ls --json")]
    Ls,
    /// Show a dataset and its statistics.
    #[command(after_help = "Examples:\n  anneal datasets show support\n  anneal datasets show ds_0123abcd --json")]
    Show {
        /// Dataset id or name.
        dataset: String,
    },
    /// Print the first stored (normalised) records, one JSON object per line.
    #[command(after_help = "Examples:\n  anneal datasets preview support -n 3")]
    Preview {
        /// Dataset id or name.
        dataset: String,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 5)]
        n: usize,
    },
    /// Split a dataset into `<name>-train` and `<name>-val`, deterministically.
    #[command(after_help = "Examples:\n  anneal datasets split support --val 0.1 --seed 42")]
    Split {
        /// Dataset id or name.
        dataset: String,
        /// Share of records in the validation half.
        #[arg(long, default_value_t = 0.1)]
        val: f64,
        /// Seed of the shuffle.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Delete a dataset.
    #[command(
        visible_alias = "delete",
        after_help = "Examples:\n  anneal datasets rm support\n  anneal datasets rm support --force"
    )]
    Rm {
        /// Dataset id or name.
        dataset: String,
        /// Delete even if training jobs refer to it (they lose the link).
        #[arg(long)]
        force: bool,
    },
}

/// The sink for a long task: JSON lines are not mixed into `--json` output (which is
/// the result document), so only people get progress, on stderr.
pub(crate) fn task_sink(ctx: &Ctx) -> Box<dyn EventSink> {
    if ctx.json || ctx.quiet {
        Box::new(NoopSink)
    } else {
        Box::new(TerminalSink::new())
    }
}

/// The sink for a training run: JSON lines on stdout with `--json`.
pub(crate) fn event_sink(ctx: &Ctx) -> Box<dyn EventSink> {
    if ctx.json {
        Box::new(JsonLinesSink::new(std::io::stdout()))
    } else {
        task_sink(ctx)
    }
}

fn parse<T: std::str::FromStr<Err = Error>>(v: &Option<String>) -> anneal::Result<Option<T>> {
    v.as_deref().map(str::parse).transpose()
}

fn columns(pairs: &[String]) -> anneal::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for p in pairs {
        let Some((field, column)) = p.split_once('=') else {
            return Err(Error::config("column", format!("`{p}` is not FIELD=COLUMN (e.g. prompt=question)")));
        };
        map.insert(field.trim().to_string(), column.trim().to_string());
    }
    Ok(map)
}

pub(crate) fn import(ctx: &Ctx, a: &ImportArgs) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let on_duplicate = parse::<OnDuplicate>(&a.on_duplicate)?.unwrap_or_default();
    let cancel = Cancellable::new();
    let mut sink = task_sink(ctx);
    let rec = if a.path.is_dir() {
        for (flag, set) in [
            ("format", a.format.is_some()),
            ("source-format", a.source_format.is_some()),
            ("column", !a.columns.is_empty()),
            ("txt-mode", a.txt_mode.is_some()),
            ("max-record-bytes", a.max_record_bytes.is_some()),
        ] {
            if set {
                return Err(Error::config(flag, "applies to files, not to a folder of images"));
            }
        }
        let d = ImageImportOptions::default();
        let opts = ImageImportOptions {
            name: a.name.clone(),
            layout: parse(&a.layout)?,
            caption_column: a.caption_column.clone().unwrap_or(d.caption_column),
            image_column: a.image_column.clone().unwrap_or(d.image_column),
            caption_extension: a.caption_extension.clone().unwrap_or(d.caption_extension),
            instance_prompt: a.instance_prompt.clone(),
            on_duplicate,
            ..d
        };
        home.datasets().import_images_with(&a.path, &opts, sink.as_mut(), cancel.token())?
    } else {
        for (flag, set) in [
            ("layout", a.layout.is_some()),
            ("caption-column", a.caption_column.is_some()),
            ("image-column", a.image_column.is_some()),
            ("caption-extension", a.caption_extension.is_some()),
            ("instance-prompt", a.instance_prompt.is_some()),
        ] {
            if set {
                return Err(Error::config(flag, "applies to a folder of images, not to a file"));
            }
        }
        let d = ImportOptions::default();
        let opts = ImportOptions {
            name: a.name.clone(),
            format: parse(&a.format)?,
            columns: columns(&a.columns)?,
            source_format: parse(&a.source_format)?,
            txt_mode: parse(&a.txt_mode)?.unwrap_or_default(),
            on_duplicate,
            max_record_bytes: a.max_record_bytes.unwrap_or(d.max_record_bytes),
        };
        home.datasets().import_file_with(&a.path, &opts, sink.as_mut(), cancel.token())?
    };
    drop(sink);
    let mut out = Out::new();
    if ctx.json {
        out.json(&rec)?;
    } else {
        out.line(format!(
            "dataset {} ({}): {} {} records, {}",
            rec.name,
            rec.id,
            rec.num_records,
            rec.format,
            size(rec.bytes)
        ))?;
    }
    Ok(0)
}

fn row(d: &DatasetRecord) -> Vec<String> {
    vec![
        d.name.clone(),
        d.id.to_string(),
        d.format.to_string(),
        count(d.num_records),
        size(d.bytes),
        when(&d.created_at),
    ]
}

pub(crate) fn run(ctx: &Ctx, cmd: DatasetsCommand) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let store = home.datasets();
    let mut out = Out::new();
    match cmd {
        DatasetsCommand::Ls => {
            let all = store.list()?;
            if ctx.json {
                out.json(&all)?;
            } else if all.is_empty() {
                if !ctx.quiet {
                    eprintln!("no datasets yet: anneal import FILE --name NAME");
                }
            } else {
                let rows: Vec<_> = all.iter().map(row).collect();
                out.table(&["NAME", "ID", "FORMAT", "RECORDS", "SIZE", "CREATED"], &rows)?;
            }
        }
        DatasetsCommand::Show { dataset } => {
            let d = store.get(dataset.as_str())?;
            let stats = store.stats(&d.id)?;
            if ctx.json {
                out.json(&serde_json::json!({ "dataset": d, "stats": stats }))?;
                return Ok(0);
            }
            let mut fields = vec![
                ("name", d.name.clone()),
                ("id", d.id.to_string()),
                ("format", d.format.to_string()),
                ("records", d.num_records.to_string()),
                ("size", size(d.bytes)),
                ("sha256", d.sha256.clone()),
                ("source", format!("{} ({})", d.source, d.source_format)),
                ("created", when(&d.created_at)),
            ];
            if !d.columns.is_empty() {
                let c: Vec<String> = d.columns.iter().map(|(k, v)| format!("{k}={v}")).collect();
                fields.push(("columns", c.join(", ")));
            }
            if let Some(p) = &d.parent_id {
                fields.push(("parent", p.to_string()));
            }
            for (name, f) in &stats.fields {
                fields.push((
                    "field",
                    format!(
                        "{name}: {:.0} chars on average ({}..{}), {} empty",
                        f.mean_chars, f.min_chars, f.max_chars, f.empty
                    ),
                ));
            }
            if let Some(labels) = &stats.label_counts {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k} {v}")).collect();
                fields.push(("labels", l.join(", ")));
            }
            if let Some(roles) = &stats.role_counts {
                let r: Vec<String> = roles.iter().map(|(k, v)| format!("{k} {v}")).collect();
                fields.push(("roles", r.join(", ")));
            }
            if let Some(img) = &stats.images {
                fields.push((
                    "images",
                    format!("{}, {:.0}x{:.0} on average", img.count, img.width.mean, img.height.mean),
                ));
            }
            out.fields(&fields)?;
        }
        DatasetsCommand::Preview { dataset, n } => {
            for r in store.preview(dataset.as_str(), n)? {
                out.json_line(&r)?;
            }
        }
        DatasetsCommand::Split { dataset, val, seed } => {
            let split = store.split(dataset.as_str(), val, seed, None)?;
            if ctx.json {
                out.json(&split)?;
            } else {
                for d in [&split.train, &split.val] {
                    out.line(format!("dataset {} ({}): {} records", d.name, d.id, d.num_records))?;
                }
            }
        }
        DatasetsCommand::Rm { dataset, force } => {
            let d = store.get(dataset.as_str())?;
            store.delete(&d.id, force)?;
            if ctx.json {
                out.json(&serde_json::json!({ "deleted": d.id }))?;
            } else if !ctx.quiet {
                out.line(format!("deleted dataset {} ({})", d.name, d.id))?;
            }
        }
    }
    Ok(0)
}
