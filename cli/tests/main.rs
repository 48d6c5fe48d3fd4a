//! Every integration test of this crate in one test binary: one compile and one link
//! instead of one per file, which was most of CI's `cargo test` time. Each file is a
//! module; run one with e.g. `cargo test -p anneal-cli --test integration cli_basics::`.

mod common;
mod serve_support;

mod cli_basics;
mod cli_cancel;
mod cli_workflow;
mod serve_api;
mod serve_generate;
mod serve_jobs;
