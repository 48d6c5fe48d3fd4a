//! `anneal models ...` and `anneal export`.

use std::path::PathBuf;

use anneal::{
    ExportFormat, ExportOptions, Family, GgufType, IfExists, ImportBundleOptions, ModelFilter, ModelKind, ModelRecord,
    ModelRegistry, PresetOptions, RegisterOptions, Storage,
};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use super::cancel::Cancellable;
use super::datasets::task_sink;
use super::output::{count, opt, size, when, Out};
use super::Ctx;

pub(crate) const EXPORT_EXAMPLES: &str = "\
Examples:
  anneal export support-lora@latest hf ./support-merged          # adapter merged into its base
  anneal export support-lora@latest peft ./support-adapter --base-model HuggingFaceTB/SmolLM-135M
  anneal export base@2 gguf ./base.gguf --quantization q8_0
  anneal export base@2 ollama ./base-ollama --name base            # then: ollama create base -f ./base-ollama/Modelfile
  anneal export base@2 bundle ./base.zip                           # restore with: anneal models register ./base.zip";

/// `anneal models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the models.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  anneal models ls\n  anneal models ls --kind lora --json\n  anneal models ls --name support"
    )]
    Ls {
        /// Only models of this kind.
        #[arg(long, value_parser = PossibleValuesParser::new(ModelKind::NAMES))]
        kind: Option<String>,
        /// Only models of this family.
        #[arg(long, value_parser = PossibleValuesParser::new(Family::NAMES))]
        family: Option<String>,
        /// Only versions of this name.
        #[arg(long)]
        name: Option<String>,
        /// Only models with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show a model: files, lineage, aliases and usage.
    #[command(after_help = "Examples:\n  anneal models show base\n  anneal models show support@production --json")]
    Show {
        /// Model id, `name` (latest version), `name@3` or `name@alias`.
        model: String,
    },
    /// Register a Hugging Face model or PEFT adapter directory (or restore an exported bundle .zip).
    #[command(after_help = "Examples:\n  anneal models register ./SmolLM-135M --name smol\n  \
                            anneal models register ./my-adapter --name support-lora --parent smol\n  \
                            anneal models register ./big-model --name big --reference\n  \
                            anneal models register ./base.zip")]
    Register {
        /// The directory (config.json + safetensors, or adapter_config.json), or a bundle `.zip`.
        path: PathBuf,
        /// The model name (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// Leave the files where they are instead of copying them into the home.
        #[arg(long)]
        reference: bool,
        /// For an adapter: its base model.
        #[arg(long)]
        parent: Option<String>,
        /// A free-form task label.
        #[arg(long)]
        task: Option<String>,
        /// Tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// When the name exists: `new_version` (default), `reuse` (the version with the
        /// same files), `error`.
        #[arg(long, value_parser = PossibleValuesParser::new(IfExists::NAMES))]
        if_exists: Option<String>,
    },
    /// Create a model from a built-in preset (random weights from a seed, byte tokenizer).
    #[command(after_help = PRESETS_HELP)]
    Create {
        /// The preset.
        preset: String,
        /// The model name (default: the preset's name).
        #[arg(long)]
        name: Option<String>,
        /// Seed of the random initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// When the name exists: `new_version` (default), `reuse` (the version made from
        /// the same preset and seed), `error`.
        #[arg(long, value_parser = PossibleValuesParser::new(IfExists::NAMES))]
        if_exists: Option<String>,
    },
    /// Set, remove or list aliases (`name@production`).
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Delete a model.
    #[command(
        visible_alias = "delete",
        after_help = "Examples:\n  anneal models rm support@1\n  anneal models rm base --force   # also its adapters"
    )]
    Rm {
        /// Model id, `name@version` or `name@alias` (a bare name is its latest version).
        model: String,
        /// Also delete its adapters and detach its jobs.
        #[arg(long)]
        force: bool,
    },
}

const PRESETS_HELP: &str = "\
Presets: nano (~0.1M parameters, trains in seconds), micro (~0.8M), mini (~4M); Llama
architecture with a byte-level tokenizer and a ChatML template.

Examples:
  anneal models create nano --name base
  anneal models create micro --name base --seed 42";

/// `anneal models alias ...`.
#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Point `name@ALIAS` at a model (moving it if it exists).
    #[command(after_help = "Examples:\n  anneal models alias set support@3 production")]
    Set {
        /// The model (`name@version` or id).
        model: String,
        /// The alias.
        alias: String,
    },
    /// Remove `name@alias`.
    #[command(visible_alias = "remove", after_help = "Examples:\n  anneal models alias rm support production")]
    Rm {
        /// The model name.
        name: String,
        /// The alias.
        alias: String,
    },
    /// List the aliases of a model name (with `--history`, every change).
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  anneal models alias ls support\n  anneal models alias ls support --history"
    )]
    Ls {
        /// The model name.
        name: String,
        /// Every change, newest first.
        #[arg(long)]
        history: bool,
    },
}

/// `anneal export MODEL FORMAT DEST`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model: id, `name`, `name@3` or `name@alias`.
    pub model: String,
    /// The format.
    #[arg(value_parser = PossibleValuesParser::new(ExportFormat::NAMES))]
    pub format: String,
    /// Where to write: a directory (hf, peft, ollama) or a file (gguf, bundle).
    pub dest: PathBuf,
    /// Replace an existing destination.
    #[arg(long)]
    pub overwrite: bool,
    /// hf: shard the weights into files of at most this many bytes.
    #[arg(long)]
    pub max_shard_bytes: Option<u64>,
    /// peft: the `base_model_name_or_path` to write (default: where the base came from).
    #[arg(long)]
    pub base_model: Option<String>,
    /// gguf, ollama: the tensor type.
    #[arg(long, value_parser = PossibleValuesParser::new(GgufType::NAMES))]
    pub quantization: Option<String>,
    /// gguf, ollama: merge an adapter into its base (default: a GGUF LoRA file for gguf).
    #[arg(long, conflicts_with = "no_merge")]
    pub merge: bool,
    /// gguf, ollama: keep an adapter separate.
    #[arg(long)]
    pub no_merge: bool,
    /// ollama: the model name written in the Modelfile.
    #[arg(long)]
    pub name: Option<String>,
}

fn row(m: &ModelRecord) -> Vec<String> {
    vec![
        m.reference(),
        m.id.to_string(),
        m.kind.to_string(),
        m.family.to_string(),
        count(m.params),
        size(m.bytes),
        m.aliases.join(","),
        when(&m.created_at),
    ]
}

fn parse<T: std::str::FromStr<Err = anneal::Error>>(v: &Option<String>) -> anneal::Result<Option<T>> {
    v.as_deref().map(str::parse).transpose()
}

pub(crate) fn run(ctx: &Ctx, cmd: ModelsCommand) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let reg = home.models();
    let mut out = Out::new();
    match cmd {
        ModelsCommand::Ls { kind, family, name, tag } => {
            let filter = ModelFilter { kind: parse(&kind)?, family: parse(&family)?, name, tag, ..Default::default() };
            let all = reg.list(&filter)?;
            if ctx.json {
                out.json(&all)?;
            } else if all.is_empty() {
                if !ctx.quiet {
                    eprintln!("no models: anneal models create nano --name base, or anneal models register DIR");
                }
            } else {
                let rows: Vec<_> = all.iter().map(row).collect();
                out.table(&["MODEL", "ID", "KIND", "FAMILY", "PARAMS", "SIZE", "ALIASES", "CREATED"], &rows)?;
            }
        }
        ModelsCommand::Show { model } => show(ctx, &reg, &model, &mut out)?,
        ModelsCommand::Register { path, name, reference, parent, task, tags, if_exists } => {
            let if_exists: Option<IfExists> = if_exists.as_deref().map(str::parse).transpose()?;
            let cancel = Cancellable::new();
            let mut sink = task_sink(ctx);
            let is_bundle = path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip"));
            let rec = if is_bundle {
                if reference || parent.is_some() || task.is_some() || !tags.is_empty() || if_exists.is_some() {
                    return Err(anneal::Error::config("path", "a bundle is restored as exported: only --name applies"));
                }
                reg.import_bundle_with(&path, &ImportBundleOptions { name }, sink.as_mut(), cancel.token())?
            } else {
                let opts = RegisterOptions {
                    name,
                    storage: if reference { Storage::Reference } else { Storage::Copy },
                    parent: parent.map(Into::into),
                    task,
                    tags,
                    if_exists: if_exists.unwrap_or_default(),
                };
                reg.register_dir_with(&path, &opts, sink.as_mut(), cancel.token())?
            };
            drop(sink);
            created(ctx, &rec, &mut out)?;
        }
        ModelsCommand::Create { preset, name, seed, if_exists } => {
            let if_exists = if_exists.as_deref().map(str::parse).transpose()?.unwrap_or_default();
            let rec = reg.create_preset(&preset, &PresetOptions { name, seed, if_exists, ..Default::default() })?;
            created(ctx, &rec, &mut out)?;
        }
        ModelsCommand::Alias(cmd) => alias(ctx, &reg, cmd, &mut out)?,
        ModelsCommand::Rm { model, force } => {
            let m = reg.resolve(model.as_str())?;
            reg.delete(&m.id, force)?;
            if ctx.json {
                out.json(&serde_json::json!({ "deleted": m.id, "model": m.reference() }))?;
            } else if !ctx.quiet {
                out.line(format!("deleted model {} ({})", m.reference(), m.id))?;
            }
        }
    }
    Ok(0)
}

fn created(ctx: &Ctx, rec: &ModelRecord, out: &mut Out) -> anneal::Result<()> {
    if ctx.json {
        out.json(rec)
    } else {
        out.line(format!(
            "model {} ({}): {} {}, {} parameters, {}",
            rec.reference(),
            rec.id,
            rec.kind,
            rec.family,
            count(rec.params),
            size(rec.bytes)
        ))
    }
}

fn show(ctx: &Ctx, reg: &ModelRegistry, model: &str, out: &mut Out) -> anneal::Result<()> {
    let m = reg.resolve(model)?;
    let usage = reg.usage(&m.id)?;
    if ctx.json {
        return out.json(&serde_json::json!({ "model": m, "usage": usage }));
    }
    let mut fields = vec![
        ("model", m.reference()),
        ("id", m.id.to_string()),
        ("kind", m.kind.to_string()),
        ("family", format!("{} ({}, {})", m.family, m.architecture, m.model_type)),
        ("parameters", format!("{} ({})", count(m.params), m.params)),
        ("dtype", m.dtype.clone()),
        ("size", format!("{} in {} files ({})", size(m.bytes), m.files.len(), m.storage)),
        ("path", m.path.display().to_string()),
        ("source", m.source.clone()),
        ("aliases", if m.aliases.is_empty() { "-".into() } else { m.aliases.join(", ") }),
        ("created", when(&m.created_at)),
    ];
    if let Some(p) = &m.parent_id {
        let parent = reg.get(p).map(|r| r.reference()).unwrap_or_else(|_| p.to_string());
        fields.push(("parent", parent));
    }
    if let Some(t) = &m.task {
        fields.push(("task", t.clone()));
    }
    if !m.tags.is_empty() {
        fields.push(("tags", m.tags.join(", ")));
    }
    let l = &m.lineage;
    if let Some(p) = &l.preset {
        fields.push(("preset", format!("{p} (seed {})", opt(l.seed))));
    }
    if let Some(b) = &l.base_ref {
        fields.push(("base", b.clone()));
    }
    if let Some(d) = &l.dataset {
        fields.push(("dataset", d.to_string()));
    }
    if let Some(j) = &l.job {
        fields.push(("job", j.to_string()));
    }
    if let Some(s) = &l.spec {
        fields.push((
            "training",
            format!(
                "{}, {} epoch(s), lr {}, batch {}, seq_len {}",
                s.method.as_str(),
                s.epochs,
                s.learning_rate,
                s.batch_size,
                s.seq_len
            ),
        ));
    }
    if let Some(mt) = &l.metrics {
        fields.push((
            "metrics",
            format!(
                "final loss {}, eval loss {}, {} steps, {} tokens, {:.1}s",
                opt(mt.final_loss.map(|v| format!("{v:.4}"))),
                opt(mt.eval_loss.map(|v| format!("{v:.4}"))),
                mt.steps,
                mt.tokens,
                mt.duration_s
            ),
        ));
    }
    fields.push((
        "usage",
        format!(
            "{} calls, {} tokens generated, last {}",
            usage.calls,
            usage.generated_tokens,
            opt(usage.last_used_at.as_deref().map(when))
        ),
    ));
    out.fields(&fields)
}

fn alias(ctx: &Ctx, reg: &ModelRegistry, cmd: AliasCommand, out: &mut Out) -> anneal::Result<()> {
    match cmd {
        AliasCommand::Set { model, alias } => {
            let m = reg.set_alias(model.as_str(), &alias)?;
            if ctx.json {
                out.json(&m)?;
            } else if !ctx.quiet {
                out.line(format!("{}@{alias} -> {}", m.name, m.reference()))?;
            }
        }
        AliasCommand::Rm { name, alias } => {
            reg.remove_alias(&name, &alias)?;
            if ctx.json {
                out.json(&serde_json::json!({ "removed": format!("{name}@{alias}") }))?;
            } else if !ctx.quiet {
                out.line(format!("removed {name}@{alias}"))?;
            }
        }
        AliasCommand::Ls { name, history: true } => {
            let h = reg.alias_history(&name, None)?;
            if ctx.json {
                out.json(&h)?;
            } else {
                let rows: Vec<Vec<String>> = h
                    .iter()
                    .map(|c| {
                        vec![
                            when(&c.at),
                            format!("{}@{}", c.name, c.alias),
                            c.action.to_string(),
                            opt(c.previous_version.map(|v| format!("{name}@{v}"))),
                            opt(c.version.map(|v| format!("{name}@{v}"))),
                            c.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                out.table(&["AT", "ALIAS", "ACTION", "FROM", "TO", "REASON"], &rows)?;
            }
        }
        AliasCommand::Ls { name, history: false } => {
            let models = reg.list(&ModelFilter { name: Some(name.clone()), ..Default::default() })?;
            let mut aliases: Vec<(String, &ModelRecord)> =
                models.iter().flat_map(|m| m.aliases.iter().map(move |a| (a.clone(), m))).collect();
            aliases.sort_by(|a, b| a.0.cmp(&b.0));
            if ctx.json {
                let map: serde_json::Map<String, serde_json::Value> =
                    aliases.iter().map(|(a, m)| (a.clone(), serde_json::Value::String(m.reference()))).collect();
                out.json(&map)?;
            } else {
                let rows: Vec<Vec<String>> =
                    aliases.iter().map(|(a, m)| vec![format!("{name}@{a}"), m.reference(), m.id.to_string()]).collect();
                out.table(&["ALIAS", "MODEL", "ID"], &rows)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn export(ctx: &Ctx, a: &ExportArgs) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let format: ExportFormat = a.format.parse()?;
    let opts = ExportOptions {
        overwrite: a.overwrite,
        max_shard_bytes: a.max_shard_bytes,
        base_model: a.base_model.clone(),
        quantization: parse(&a.quantization)?,
        merge: if a.merge {
            Some(true)
        } else if a.no_merge {
            Some(false)
        } else {
            None
        },
        name: a.name.clone(),
    };
    let cancel = Cancellable::new();
    let mut sink = task_sink(ctx);
    let report = home.models().export_with(a.model.as_str(), format, &a.dest, &opts, sink.as_mut(), cancel.token())?;
    drop(sink);
    let mut out = Out::new();
    if ctx.json {
        out.json(&report)?;
    } else {
        let bytes: u64 = report.files.iter().map(|f| f.bytes).sum();
        out.line(format!(
            "exported {} as {} to {} ({} files, {})",
            report.model,
            report.format,
            report.path,
            report.files.len(),
            size(bytes)
        ))?;
    }
    Ok(0)
}
