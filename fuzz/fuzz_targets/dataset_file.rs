//! Any bytes as a dataset file: the first byte picks the extension and the TXT mode.
#![no_main]

#[path = "common.rs"]
mod common;

use anneal::{ImportOptions, TxtMode};
use libfuzzer_sys::fuzz_target;

const EXTENSIONS: [&str; 7] = ["jsonl", "json", "csv", "tsv", "txt", "ndjson", "dat"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let env = common::env();
    let path = env.work.join(format!("input.{}", EXTENSIONS[first as usize % EXTENSIONS.len()]));
    std::fs::write(&path, bytes).expect("write input");
    let txt_mode = if first & 0x80 != 0 { TxtMode::Document } else { TxtMode::Lines };
    let opts = ImportOptions { name: Some(common::unique("ds")), txt_mode, ..Default::default() };
    let before = common::rows(&env.home);
    match env.home.datasets().import_file(&path, &opts) {
        Ok(rec) => {
            let stored = env.home.datasets().preview(rec.id.clone(), usize::MAX).expect("stored records read back");
            assert_eq!(stored.len() as u64, rec.num_records);
            env.home.datasets().delete(rec.id, true).expect("delete");
        }
        Err(e) => {
            common::typed(&e, &["invalid_data", "invalid_config", "duplicate_content"]);
            assert_eq!(common::rows(&env.home), before, "a refused import changed the catalog");
        }
    }
});
