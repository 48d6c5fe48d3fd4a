//! Options of a home as a whole.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options for [`crate::Home::open_with`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HomeOptions {
    /// The most memory, in bytes, one training run or generation request may plan to
    /// use (weights, optimiser state, activations, KV cache). A request whose estimate
    /// is above it is refused with `invalid_config` before anything is allocated.
    /// Default: 80% of the machine's memory (or of the cgroup's limit, if lower).
    pub memory_limit: Option<u64>,
}
