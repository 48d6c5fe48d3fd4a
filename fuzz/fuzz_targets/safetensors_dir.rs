//! Any bytes as the model.safetensors of tiny-llama's directory, registered and loaded.
#![no_main]

#[path = "common.rs"]
mod common;

use anneal::{load_model, LoadOptions, RegisterOptions, Storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = common::env();
    let dir = env.work.join("model");
    if !dir.join("config.json").exists() {
        std::fs::create_dir_all(&dir).expect("model dir");
        for f in ["config.json", "tokenizer.json", "generation_config.json"] {
            std::fs::copy(common::fixtures().join("tiny-llama").join(f), dir.join(f)).expect("copy fixture");
        }
    }
    std::fs::write(dir.join("model.safetensors"), data).expect("write weights");
    let storage = if data.len() % 2 == 0 { Storage::Reference } else { Storage::Copy };
    let opts = RegisterOptions { name: Some(common::unique("m")), storage, ..Default::default() };
    let before = common::rows(&env.home);
    match env.home.models().register_dir(&dir, &opts) {
        Ok(rec) => {
            if let Err(e) = load_model(&rec, &LoadOptions::default()) {
                common::typed(&e, &["invalid_data", "invalid_config", "compute"]);
            }
            env.home.models().delete(rec.id, true).expect("delete");
        }
        Err(e) => {
            common::typed(&e, &["invalid_data", "invalid_config"]);
            assert_eq!(common::rows(&env.home), before, "a refused registration changed the catalog");
        }
    }
});
