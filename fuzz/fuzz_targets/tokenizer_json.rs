//! Any bytes as tokenizer.json: loaded (then encode and decode work) or refused.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = common::env();
    let dir = env.work.join("tokenizer");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("tokenizer.json"), data).expect("write");
    match anneal::Tokenizer::from_dir(&dir) {
        Ok(t) => {
            if let Ok(ids) = t.encode("hello wörld 😀 <|im_start|>", true) {
                let _ = t.decode(&ids, false);
            }
        }
        Err(e) => common::typed(&e, &["invalid_data", "invalid_config", "compute"]),
    }
});
