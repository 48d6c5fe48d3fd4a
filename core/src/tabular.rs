//! Layer 1: tabular data. Column profiles stored with a model version at training
//! time, the two-sample statistics that compare a window of rows with them (in
//! agreement with scipy), and stream detectors on per-prediction signals (with River's
//! semantics); and the classifiers trained on tabular rows (preprocessing stored with
//! the model, logistic regression and a small MLP on candle); and seeded synthetic
//! scenarios with controllable drift ([`synthetic`]). No SQL.

pub mod classifier;
pub mod detectors;
pub mod drift;
pub mod preprocess;
pub mod profile;
pub mod synthetic;
