//! The `anneal` command line and `anneal serve`.
//!
//! A binary outside the core (DESIGN.md §1): it parses arguments, calls the
//! synchronous core on its own threads, and maps `anneal::Error` codes to exit codes
//! and HTTP statuses. No training, SQL or tensor code lives here.

pub mod commands;
pub mod serve;
