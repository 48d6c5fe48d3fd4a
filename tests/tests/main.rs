//! Every integration test of this crate in one test binary: one compile and one link
//! instead of one per file, which was most of CI's `cargo test` time. Each file is a
//! module; run one with e.g. `cargo test -p anneal-tests --test integration concurrency::`.

mod common;

mod concurrency;
mod continual;
mod crash;
mod datasets;
mod declarations;
mod durability;
mod export;
mod export_gguf;
mod gguf_import;
mod home;
mod hostile;
mod if_exists;
mod image_crash;
mod image_datasets;
mod image_generation;
mod image_training;
mod learn;
mod limits;
mod monitor;
mod monitor_lm;
mod notify;
mod registry;
mod timeline;
