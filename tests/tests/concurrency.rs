#![allow(clippy::unwrap_used)]
//! Several processes' worth of handles writing one home at once get what sequential
//! callers would: multi-step writes are all or nothing.

use crate::common;

use anneal::{Home, RegisterOptions};

#[test]
fn concurrent_registrations_of_one_name_get_distinct_versions() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("home");
    Home::open(&dir).unwrap();
    let src = common::fixtures().join("tiny-llama");
    let versions: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (dir, src) = (dir.clone(), src.clone());
                s.spawn(move || {
                    // Each thread opens the home itself, as another process would.
                    let h = Home::open(&dir).unwrap();
                    let opts = RegisterOptions { name: Some("same".into()), ..Default::default() };
                    h.models().register_dir(&src, &opts).unwrap().version
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = versions.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3, 4], "{versions:?}");
    let h = Home::open(&dir).unwrap();
    let listed = h.models().list(&Default::default()).unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(common::model_dirs(&h).len(), 4, "one directory per registered model, no leftovers");
}
