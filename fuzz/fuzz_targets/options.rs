//! Any bytes as the JSON options of every call, in both spellings: parsed (and then a
//! round trip gives the same value) or refused with invalid_config.
#![no_main]

#[path = "common.rs"]
mod common;

use anneal::{
    options_from_json_spelled, to_json_spelled, DeleteOptions, GenerationConfig, GenerationFilter, GeneratorOptions,
    ImportOptions, JobFilter, ModelFilter, PresetOptions, Prompt, RegisterOptions, ScoreOptions, Spelling,
    SplitOptions, TrainSpec,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn round_trip<T>(v: &Value)
where
    T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + PartialEq + std::fmt::Debug,
{
    for spelling in [Spelling::Snake, Spelling::Camel] {
        match options_from_json_spelled::<T>(v.clone(), spelling) {
            Ok(opts) => {
                let back: T = options_from_json_spelled(to_json_spelled(&opts, spelling).expect("to json"), spelling)
                    .expect("a value anneal wrote reads back");
                assert_eq!(back, opts);
            }
            Err(e) => common::typed(&e, &["invalid_config"]),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    round_trip::<ImportOptions>(&v);
    round_trip::<RegisterOptions>(&v);
    round_trip::<PresetOptions>(&v);
    round_trip::<ModelFilter>(&v);
    round_trip::<JobFilter>(&v);
    round_trip::<GenerationFilter>(&v);
    round_trip::<SplitOptions>(&v);
    round_trip::<DeleteOptions>(&v);
    round_trip::<ScoreOptions>(&v);
    round_trip::<GeneratorOptions>(&v);
    round_trip::<GenerationConfig>(&v);
    round_trip::<TrainSpec>(&v);
    if let Err(e) = TrainSpec::from_json(v.clone()) {
        common::typed(&e, &["invalid_config"]);
    }
    if let Err(e) = Prompt::from_json(v, "prompt") {
        common::typed(&e, &["invalid_config"]);
    }
});
