//! Any bytes as config.json: parsed and resolved, or refused naming the field.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Err(e) = anneal::ModelConfig::from_json(&v) {
        common::typed(&e, &["invalid_config", "invalid_data"]);
    }
});
