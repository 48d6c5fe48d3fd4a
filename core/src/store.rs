//! The state every API handle of one home shares: the home's root directory and its
//! catalog. [`crate::Home`] opens it; `DatasetStore`, `ModelRegistry`, `TrainingEngine`
//! and `Generator` each hold an `Arc<Store>` and own their own files under `root`.

use std::path::PathBuf;

use crate::catalog::Catalog;

pub(crate) struct Store {
    /// The home directory (absolute).
    pub(crate) root: PathBuf,
    pub(crate) catalog: Catalog,
    /// The most memory one training run or generation request may plan to use (bytes).
    pub(crate) memory_limit: u64,
}
