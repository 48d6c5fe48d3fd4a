//! Python binding of anneal (`anneal._anneal`). Thin: argument conversion, GIL
//! release, error mapping, event callbacks. Everything else lives in the core.

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
mod records;
mod registry;
mod shapes;
mod stats;
mod synthetic;
mod training;

use pyo3::prelude::*;

/// Runs the `anneal` command line with `argv` (the arguments after the program name)
/// and returns its exit code; the `anneal` console script calls it. The GIL is
/// released while the command runs.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| anneal_cli::commands::run(argv))
}

#[pymodule]
fn _anneal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // At import, before anneal starts a thread or candle a pool (see the function's docs).
    anneal::keep_candle_ops_on_calling_thread();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_class::<home::PyHome>()?;
    m.add_class::<dataset::PyDatasetStore>()?;
    m.add_class::<dataset::PyDatasetRecord>()?;
    m.add_class::<dataset::PyDatasetStats>()?;
    m.add_class::<dataset::PyDatasetSplit>()?;
    m.add_class::<registry::PyModelRegistry>()?;
    m.add_class::<registry::PyModelRecord>()?;
    m.add_class::<registry::PyModelFile>()?;
    m.add_class::<registry::PyPreset>()?;
    m.add_class::<training::PyTrainingEngine>()?;
    m.add_class::<training::PyJobRecord>()?;
    m.add_class::<training::PyTrainReport>()?;
    m.add_class::<training::PyMetricPoint>()?;
    m.add_class::<training::PyJobLog>()?;
    m.add_class::<training::PyJobHandle>()?;
    m.add_class::<events::PyCancelToken>()?;
    m.add_class::<generation::PyGenerator>()?;
    m.add_class::<generation::PyTokenStream>()?;
    m.add_class::<generation::PyGeneration>()?;
    m.add_class::<generation::PyTimings>()?;
    m.add_class::<generation::PyStreamChunk>()?;
    m.add_class::<generation::PyScore>()?;
    m.add_class::<generation::PyGenerationRecord>()?;
    m.add_class::<generation::PyModelUsage>()?;
    m.add_class::<images::PyImageGenerator>()?;
    m.add_class::<continual::PyPredictor>()?;
    m.add_class::<continual::PyContinual>()?;
    shapes::register(m)?;
    notify::register(m)?;
    monitor::register(m)?;
    synthetic::register(m)?;
    errors::register(m)?;
    Ok(())
}
