//! `anneal serve`: REST + SSE + OpenAI-compatible API + the dashboard, and
//! `anneal tokens` (bearer tokens for the server).
//!
//! The CLI (`commands`) only wires [`run_serve`] and [`run_tokens`] into its subcommand
//! enum; everything else about the server lives under this module:
//!
//! ```text
//! server.rs    accept loop (hyper, header read timeout), signals, graceful shutdown
//! state.rs     what handlers share: the home, loaded generators, limits, jobs started here
//! error.rs     anneal error codes -> HTTP statuses, `{"error": {"code", "message"}}`
//! http.rs      request ids, structured logs, CORS, bearer tokens and scopes, JSON bodies
//! api.rs       /health, /metrics, /api/stats, datasets, models, monitoring, tokens
//! jobs.rs      /api/jobs: create, list, progress, metrics, logs, cancel, resume, SSE
//! generate.rs  /api/generate (JSON or SSE), /api/images/generate
//! openai.rs    /v1/models, /v1/chat/completions, /v1/completions
//! dashboard.rs the web page at / and its files under /assets (embedded)
//! metrics.rs   Prometheus text
//! ```
//!
//! The core is synchronous: every core call runs on tokio's blocking pool
//! ([`state::blocking`]) or on its own thread (training, token streams), never on the
//! runtime's workers.

mod api;
pub mod dashboard;
mod error;
mod generate;
mod http;
mod jobs;
mod metrics;
mod openai;
mod server;
mod state;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anneal::{Error, Home, TokenOptions, TokenScope};

pub use server::{Server, ServerConfig};

/// Arguments of `anneal serve`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    anneal tokens create --scope write --name ci\n  \
    anneal serve --port 8420\n  \
    curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8420/api/jobs\n  \
    anneal serve --no-auth            # loopback only: no token needed")]
pub struct ServeArgs {
    /// Address to bind. Anything but a loopback address needs tokens (no `--no-auth`).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port; the address is printed on start).
    #[arg(long, default_value_t = 8420)]
    pub port: u16,
    /// Accept requests without a bearer token. Refused unless bound to loopback.
    #[arg(long)]
    pub no_auth: bool,
    /// Allow browser requests from this origin (repeatable; `*` for any). CORS is off
    /// without it.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Largest request body (uploads included), e.g. `100MiB`, `512KiB`, `1000000`.
    #[arg(long, default_value = "100MiB", value_parser = parse_bytes)]
    pub max_body: u64,
    /// Generations running at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 2)]
    pub max_generations: usize,
    /// Models kept loaded for generation (least recently used is dropped).
    #[arg(long, default_value_t = 2)]
    pub loaded_models: usize,
    /// Seconds a client has to send its request headers (slow clients are dropped).
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a client has to send a request body (or each piece of an upload).
    #[arg(long, default_value_t = 30)]
    pub body_timeout: u64,
    /// Seconds to wait, on shutdown, for jobs started by this server to checkpoint.
    #[arg(long, default_value_t = 120)]
    pub shutdown_grace: u64,
    /// No request log lines on stderr.
    #[arg(long)]
    pub no_request_log: bool,
}

impl ServeArgs {
    /// The server settings these arguments ask for.
    pub fn config(&self) -> anneal::Result<ServerConfig> {
        let addr = SocketAddr::new(self.host, self.port);
        let max_body = usize::try_from(self.max_body).map_err(|_| Error::config("max_body", "too large"))?;
        Ok(ServerConfig {
            addr,
            no_auth: self.no_auth,
            cors_origins: self.cors_origins.clone(),
            max_body,
            max_generations: self.max_generations,
            loaded_models: self.loaded_models,
            header_timeout: Duration::from_secs(self.header_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            log: !self.no_request_log,
            signals: true,
        })
    }
}

/// `100MiB`, `512KiB`, `2GB`, `1000`: bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (e.g. 100MiB, 512KiB, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` (B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    n.checked_mul(mult).filter(|&b| b > 0).ok_or_else(|| format!("`{s}` is out of range"))
}

/// Arguments of `anneal tokens` (`create`, `ls`, `revoke`).
#[derive(Debug, Clone, clap::Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: TokensCommand,
}

/// `anneal tokens` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokensCommand {
    /// Create a token; it is printed once (only its hash is stored).
    #[command(after_help = "Example:\n  anneal tokens create --scope write --name ci")]
    Create {
        /// read: every GET; write: also jobs, imports, generation; admin: also tokens
        /// and deletions.
        #[arg(long, default_value = "read", value_parser = parse_scope)]
        scope: TokenScope,
        /// A label to recognise the token by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id (`tok_...`); it stops working at once.
    Revoke {
        /// The token's id (the part before the dot).
        id: String,
    },
}

fn parse_scope(s: &str) -> Result<TokenScope, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// Runs `anneal serve` on the home at `home` until SIGINT / SIGTERM, then shuts down
/// gracefully (jobs started by the server are cancelled at a checkpoint, resumable).
pub fn run_serve(home: &Path, args: &ServeArgs) -> anneal::Result<()> {
    let home = Home::open(home)?;
    let server = Server::start(home, args.config()?)?;
    let auth = if args.no_auth { "off (loopback, --no-auth)" } else { "bearer tokens" };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "anneal serve listening on {} (auth: {auth})", server.url());
    let _ = out.flush();
    drop(out);
    server.wait()
}

/// Runs `anneal tokens ...` on the home at `home`; `json` asks for machine-readable output.
pub fn run_tokens(home: &Path, args: &TokensArgs, json: bool) -> anneal::Result<()> {
    let home = Home::open(home)?;
    let tokens = home.tokens();
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io("<stdout>", e);
    match &args.command {
        TokensCommand::Create { scope, name } => {
            let new = tokens.create(&TokenOptions { name: name.clone(), scope: *scope })?;
            if json {
                writeln!(out, "{}", json_text(&new)?).map_err(w)?;
            } else {
                writeln!(out, "{}", new.token).map_err(w)?;
                eprintln!(
                    "token {} ({}, scope {}): shown once, store it now; send it as `Authorization: Bearer <token>`",
                    new.record.id, new.record.name, new.record.scope
                );
            }
        }
        TokensCommand::Ls => {
            let list = tokens.list()?;
            if json {
                writeln!(out, "{}", json_text(&list)?).map_err(w)?;
            } else {
                writeln!(out, "{:<21} {:<6} {:<10} {:<25} {:<25} NAME", "ID", "SCOPE", "STATE", "CREATED", "LAST USED")
                    .map_err(w)?;
                for t in list {
                    let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                    writeln!(
                        out,
                        "{:<21} {:<6} {:<10} {:<25} {:<25} {}",
                        t.id,
                        t.scope,
                        state,
                        t.created_at,
                        t.last_used_at.as_deref().unwrap_or("-"),
                        t.name
                    )
                    .map_err(w)?;
                }
            }
        }
        TokensCommand::Revoke { id } => {
            let rec = tokens.revoke(id)?;
            if json {
                writeln!(out, "{}", json_text(&rec)?).map_err(w)?;
            } else {
                writeln!(out, "revoked {} ({})", rec.id, rec.name).map_err(w)?;
            }
        }
    }
    Ok(())
}

fn json_text(v: &impl serde::Serialize) -> anneal::Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_bytes("512kib").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
