//! `anneal serve`: REST + SSE + OpenAI-compatible API + the dashboard, and
//! `anneal tokens` (bearer tokens for the server).
//!
//! The CLI (`commands`) only wires these two entry points into its subcommand enum;
//! everything else about the server lives under this module.

pub mod dashboard;

use std::path::Path;

/// Arguments of `anneal serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {}

/// Arguments of `anneal tokens` (`create`, `ls`, `revoke`).
#[derive(Debug, Clone, clap::Args)]
pub struct TokensArgs {}

/// Runs `anneal serve` on the home at `home` until it is shut down.
pub fn run_serve(home: &Path, args: &ServeArgs) -> anneal::Result<()> {
    let _ = (home, args);
    Err(anneal::Error::config("serve", "not built yet"))
}

/// Runs `anneal tokens ...` on the home at `home`; `json` asks for machine-readable output.
pub fn run_tokens(home: &Path, args: &TokensArgs, json: bool) -> anneal::Result<()> {
    let _ = (home, args, json);
    Err(anneal::Error::config("tokens", "not built yet"))
}
