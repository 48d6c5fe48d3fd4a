//! Argument parsing and one module per subcommand.
//!
//! [`run`] is the one entry point: the `anneal` binary, the Python console script
//! (`_anneal.cli_main`) and the npm bin (`cliMain`) all call it with the arguments
//! after the program name and exit with the code it returns (see [`exit_code`]).
//! Every command is a thin layer over the core's public API: it parses flags into
//! the core's option types, calls the core, and prints the result (a table or lines
//! for people, one JSON document or JSON lines with `--json`).

mod cancel;
mod datasets;
mod generate;
mod models;
mod output;
mod train;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anneal::{Error, ErrorKind, Home, StatsOptions};
use clap::{CommandFactory, Parser, Subcommand};

use crate::serve::{ServeArgs, TokensArgs};
use output::Out;

/// The home directory used when neither `--home` nor `ANNEAL_HOME` is given (the
/// same directory the quickstarts in Rust, Python and Node use).
pub const DEFAULT_HOME: &str = "./anneal-home";

const EXAMPLES: &str = "\
Examples:
  anneal import examples/data/uppercase.jsonl --name upper
  anneal models create nano --name base
  anneal train --base base --dataset upper --method full --epochs 10 --batch-size 32 --seq-len 16 \\
               --lr 2e-3 --output-name upper
  anneal jobs ls
  anneal generate upper 'kxqe>' --max-new-tokens 8
  anneal export upper hf ./upper-hf";

const EXIT_CODES: &str = "\
Exit codes (errors print `error[<code>]: <message>` on stderr):
   0  success
   1  internal            a bug; please report it
   2  usage               bad command line (unknown flag, missing argument)
   3  invalid_config      an option or argument is invalid
   4  invalid_data        malformed user data (file, record and field named)
   5  not_found           no such dataset, model, alias or job
   6  already_exists      the name is taken
   7  duplicate_content   the same content is already stored
   8  in_use              needed by an adapter or a job (pass --force)
   9  file_not_found      a path you gave does not exist
  10  io                  another I/O failure, with the path
  11  incompatible_home   the home was written by a newer anneal
  12  storage             the SQLite catalog failed
  13  compute             a tensor computation failed
  14  callback_failed     an event sink failed
 130  cancelled           interrupted (Ctrl-C); a training job stays resumable";

/// `anneal`: datasets, models, training, generation and export in one home directory.
#[derive(Debug, Parser)]
#[command(
    name = "anneal",
    version,
    about = "Import datasets, register and fine-tune models, generate and export, in one home directory",
    after_help = EXAMPLES,
    after_long_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"),
    max_term_width = 100
)]
pub struct Cli {
    /// The home directory (created if missing): its catalog and files.
    #[arg(long, global = true, env = "ANNEAL_HOME", default_value = DEFAULT_HOME, value_name = "DIR")]
    pub home: PathBuf,
    /// Machine output: one JSON document, or JSON lines for streams (training events, tokens).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output; results and errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a dataset: a CSV, TSV, JSON, JSONL or TXT file, or a folder of images.
    #[command(after_help = datasets::IMPORT_EXAMPLES)]
    Import(datasets::ImportArgs),
    /// List, show, preview, split and delete datasets.
    #[command(subcommand)]
    Datasets(datasets::DatasetsCommand),
    /// List, show, register, create, alias and delete models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Create a training job and run it (full fine-tune or LoRA) with live progress.
    #[command(after_help = train::TRAIN_EXAMPLES)]
    Train(train::TrainArgs),
    /// List, inspect, follow, cancel and resume training jobs.
    #[command(subcommand)]
    Jobs(train::JobsCommand),
    /// Generate text with a registered model, streamed to the terminal (or chat with it).
    #[command(after_help = generate::GENERATE_EXAMPLES)]
    Generate(generate::GenerateArgs),
    /// Export a model out of the home: hf, peft, gguf, ollama or bundle.
    #[command(after_help = models::EXPORT_EXAMPLES)]
    Export(models::ExportArgs),
    /// Statistics of the home, computed from its catalog.
    #[command(after_help = "Examples:\n  anneal stats\n  anneal stats --since 2025-01-01T00:00:00Z --json")]
    Stats(StatsArgs),
    /// Serve the REST, SSE and OpenAI-compatible API and the dashboard.
    #[command(after_help = "Examples:\n  anneal serve")]
    Serve(ServeArgs),
    /// Bearer tokens for `anneal serve`.
    #[command(after_help = "Examples:\n  anneal tokens create --scope read")]
    Tokens(TokensArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  anneal completions bash > ~/.local/share/bash-completion/completions/anneal\n  \
                            anneal completions zsh > ~/.zfunc/_anneal"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `anneal stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Only what happened at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// How many recent activities to list.
    #[arg(long, default_value_t = 10)]
    pub recent: usize,
}

/// What every command gets: where the home is and how to print.
pub(crate) struct Ctx {
    pub home_dir: PathBuf,
    pub json: bool,
    pub quiet: bool,
}

impl Ctx {
    pub fn home(&self) -> anneal::Result<Home> {
        Home::open(&self.home_dir)
    }
}

/// The exit code for an error code (the table in `anneal --help`).
pub fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidConfig => 3,
        ErrorKind::InvalidData => 4,
        ErrorKind::NotFound => 5,
        ErrorKind::AlreadyExists => 6,
        ErrorKind::DuplicateContent => 7,
        ErrorKind::InUse => 8,
        ErrorKind::FileNotFound => 9,
        ErrorKind::Io => 10,
        ErrorKind::IncompatibleHome => 11,
        ErrorKind::Storage => 12,
        ErrorKind::Compute => 13,
        ErrorKind::Callback => 14,
        ErrorKind::Cancelled => 130,
        _ => 1,
    }
}

/// Runs the command line given by `args` (the arguments after the program name) and
/// returns the process exit code. Results go to stdout, progress and errors to stderr.
pub fn run(args: Vec<String>) -> i32 {
    run_os(args.into_iter().map(OsString::from))
}

/// [`run`] with arguments that may not be UTF-8 (paths).
pub fn run_os(args: impl IntoIterator<Item = OsString>) -> i32 {
    let argv = std::iter::once(OsString::from("anneal")).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let ctx = Ctx { home_dir: cli.home.clone(), json: cli.json, quiet: cli.quiet };
    match dispatch(&ctx, cli.command) {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Prints `error[<code>]: <message>` on stderr and returns the exit code. A closed
/// stdout (`anneal datasets ls | head -1`) is not an error.
fn report(e: &Error) -> i32 {
    if let Error::Io { source, .. } = e {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return 0;
        }
    }
    let _ = writeln!(std::io::stderr(), "error[{}]: {e}", e.code());
    exit_code(e.kind())
}

/// Entry point of the `anneal` binary.
pub fn main() -> ExitCode {
    let code = run_os(std::env::args_os().skip(1));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn dispatch(ctx: &Ctx, command: Command) -> anneal::Result<i32> {
    match command {
        Command::Import(args) => datasets::import(ctx, &args),
        Command::Datasets(cmd) => datasets::run(ctx, cmd),
        Command::Models(cmd) => models::run(ctx, cmd),
        Command::Train(args) => train::train(ctx, &args),
        Command::Jobs(cmd) => train::jobs(ctx, cmd),
        Command::Generate(args) => generate::run(ctx, &args),
        Command::Export(args) => models::export(ctx, &args),
        Command::Stats(args) => stats(ctx, &args),
        Command::Serve(args) => crate::serve::run_serve(&ctx.home_dir, &args).map(|()| 0),
        Command::Tokens(args) => crate::serve::run_tokens(&ctx.home_dir, &args, ctx.json).map(|()| 0),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "anneal", &mut buf);
            Out::new().bytes(&buf)?;
            Ok(0)
        }
    }
}

fn stats(ctx: &Ctx, args: &StatsArgs) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let s = home.stats(&StatsOptions { since: args.since.clone(), recent: args.recent })?;
    let mut out = Out::new();
    if ctx.json {
        out.json(&s)?;
        return Ok(0);
    }
    let j = &s.jobs;
    out.line(format!(
        "jobs: {} total, {} completed, {} running, {} pending, {} failed, {} cancelled, {} interrupted",
        j.total, j.completed, j.running, j.pending, j.failed, j.cancelled, j.interrupted
    ))?;
    if let (Some(mean), Some(p50), Some(p95)) = (j.duration.mean_s, j.duration.p50_s, j.duration.p95_s) {
        out.line(format!("job durations: mean {mean:.1}s, p50 {p50:.1}s, p95 {p95:.1}s ({} jobs)", j.duration.count))?;
    }
    let kv = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
        }
    };
    out.line(format!("models: {}", kv(&s.models_by_kind)))?;
    out.line(format!("datasets: {}", kv(&s.datasets_by_format)))?;
    if !s.generations.is_empty() {
        out.line("generations:")?;
        for g in &s.generations {
            let name = match (&g.name, g.version) {
                (Some(n), Some(v)) => format!("{n}@{v}"),
                _ => g.model_id.to_string(),
            };
            out.line(format!("  {name}: {} calls, {} tokens generated", g.calls, g.generated_tokens))?;
        }
    }
    if !s.recent.is_empty() {
        out.line("recent:")?;
        for a in &s.recent {
            let detail = a.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
            out.line(format!("  {}  {:<16} {}{detail}", output::when(&a.at), a.kind.as_str(), a.name))?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_error_kind_has_its_own_exit_code() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            let code = exit_code(k);
            assert!(code != 0 && code != 2, "{k:?} -> {code}");
            assert!(seen.insert(code), "{k:?} shares exit code {code}");
            assert!(EXIT_CODES.contains(&format!(" {code}  {}", k.code())), "{k:?} missing from the table");
        }
    }
}
