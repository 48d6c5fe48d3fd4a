//! Node binding of anneal (napi 3). Thin: argument conversion, `AsyncTask` plumbing,
//! error mapping and the event sink adapter. Defaults, validation, SQL and file formats
//! stay in the core crate.
//!
//! Every call that reads or writes more than a catalog row returns a Promise and runs on
//! the libuv thread pool; fast catalog reads are synchronous. Errors carry `err.code`,
//! the core's `Error::code()`.
//!
//! The wrapper structs carry the JavaScript names (`Home`, `DatasetStore`, ...) rather
//! than `JsHome`: @napi-rs/cli 3 exports a renamed struct under its Rust name too.

mod continual;
mod conv;
mod dataset;
mod errors;
mod events;
mod generation;
mod home;
mod images;
mod monitor;
mod notify;
mod registry;
pub mod shapes;
mod stats;
mod synthetic;
mod training;

pub use continual::{Continual, Predictor};
pub use dataset::DatasetStore;
pub use events::CancelToken;
pub use generation::{Generator, TokenStream};
pub use home::Home;
pub use images::ImageGenerator;
pub use monitor::{Monitor, MonitorHandle, Monitors};
pub use notify::{verify_signature, Deliverer, Webhooks};
pub use registry::ModelRegistry;
pub use synthetic::{synthetic_scenario, write_synthetic_scenario};
pub use training::TrainingEngine;

/// Runs the `anneal` command line with `argv` (the arguments after the program name)
/// and returns its exit code. Synchronous: it is the whole of the `anneal` bin
/// (`bin/anneal.js`), which has no event loop work to keep free.
#[napi_derive::napi(catch_unwind)]
pub fn cli_main(argv: Vec<String>) -> i32 {
    anneal_cli::commands::run(argv)
}

/// At load time (the library's constructor, before Node registers the exports), keeps
/// candle's large elementwise ops on the calling thread (see the function's docs).
#[napi_derive::module_init]
fn init() {
    anneal::keep_candle_ops_on_calling_thread();
}
