//! Id and reference newtypes: never a bare `String`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(s.clone())
            }
        }
        impl From<&$name> for $name {
            fn from(s: &$name) -> Self {
                s.clone()
            }
        }
    };
}

string_id! {
    /// A dataset id, e.g. `ds_3f2a9c0d1b7e4a56` (dataset APIs also accept a name here).
    DatasetId
}
string_id! {
    /// A model id, e.g. `mdl_3f2a9c0d1b7e4a56`.
    ModelId
}
string_id! {
    /// A reference to a model: an id, `name` (latest version), `name@3`, or `name@alias`.
    ModelRef
}
string_id! {
    /// A job id, e.g. `job_3f2a9c0d1b7e4a56`.
    JobId
}
string_id! {
    /// A recorded generation call, e.g. `gen_3f2a9c0d1b7e4a56`.
    GenerationId
}
string_id! {
    /// A logged prediction, e.g. `pred_3f2a9c0d1b7e4a56`.
    PredictionId
}
string_id! {
    /// A stored evaluation, e.g. `eval_3f2a9c0d1b7e4a56`.
    EvaluationId
}
string_id! {
    /// A stored drift check, e.g. `drift_3f2a9c0d1b7e4a56`.
    DriftCheckId
}

impl From<ModelId> for ModelRef {
    fn from(id: ModelId) -> Self {
        ModelRef(id.0)
    }
}
impl From<&ModelId> for ModelRef {
    fn from(id: &ModelId) -> Self {
        ModelRef(id.0.clone())
    }
}
