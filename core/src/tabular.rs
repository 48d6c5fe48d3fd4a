//! Layer 1: tabular data. Column profiles stored with a model version at training
//! time, the two-sample statistics that compare a window of rows with them (in
//! agreement with scipy), and stream detectors on per-prediction signals (with River's
//! semantics). Pure Rust: no tensors, no SQL.

pub mod detectors;
pub mod drift;
pub mod profile;
