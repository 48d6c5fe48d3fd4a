//! Benchmarks: see benches/*.rs and RESULTS.md.
