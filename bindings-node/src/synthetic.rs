//! `syntheticScenario` and `writeSyntheticScenario`: the core's seeded tabular
//! scenarios with drift (`anneal::tabular::synthetic`), generated off the event loop.
//! Options are the core's `ScenarioOptions`.

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi_derive::napi;
use serde_json::{json, Value};

use anneal::tabular::synthetic;

use crate::conv::{self, options};
use crate::events::{arg, LongTask};

/// Generates a seeded tabular classification scenario: `{ columns, rows, labels,
/// probabilities }` (features `x0..` / `c0..`, the class of each row, and each row's
/// true class probabilities). Same options, same rows.
#[napi(catch_unwind, ts_return_type = "Promise<SyntheticScenario>")]
pub fn synthetic_scenario(
    #[napi(ts_arg_type = "ScenarioOptions")] options: Option<Unknown<'_>>,
) -> AsyncTask<LongTask> {
    LongTask::spawn(options, false, move |json, _, _| {
        let opts: anneal::ScenarioOptions = options!(json)?;
        let data = synthetic::generate(&opts)?;
        Ok(json!({
            "columns": data.columns,
            "rows": data.rows,
            "labels": data.labels,
            "probabilities": data.probabilities,
        }))
    })
}

/// Generates a scenario and writes it to `path` as JSON lines, each row with its class
/// under `label` (a file `importFile` stores as a `tabular` dataset). Atomic: the file
/// holds every row or is left as it was.
#[napi(catch_unwind, ts_return_type = "Promise<void>")]
pub fn write_synthetic_scenario(
    #[napi(ts_arg_type = "string")] path: Unknown<'_>,
    #[napi(ts_arg_type = "ScenarioOptions")] options: Option<Unknown<'_>>,
) -> AsyncTask<LongTask> {
    let path = arg!(conv::string(path, "path"));
    LongTask::spawn(options, false, move |json, _, _| {
        let opts: anneal::ScenarioOptions = options!(json)?;
        synthetic::generate(&opts)?.write_jsonl(&path)?;
        Ok(Value::Null)
    })
}
