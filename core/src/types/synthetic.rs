//! Synthetic data: options of the seeded tabular scenario generator
//! (`anneal::tabular::synthetic`) and of [`crate::DatasetStore::generate`] (a model's
//! generations as a dataset), and the lineage such a dataset keeps.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::dataset::OnDuplicate;
use super::generation::GenerationConfig;
use super::ids::ModelId;
use super::names::named_enum;
use crate::error::{Error, Result};

/// Most rows one scenario generates.
pub const MAX_SCENARIO_ROWS: usize = 10_000_000;
/// Most classes, categories per column, and columns of each kind.
pub const MAX_SCENARIO_CLASSES: usize = 100;
pub const MAX_SCENARIO_CATEGORIES: usize = 100;
pub const MAX_SCENARIO_COLUMNS: usize = 1000;
/// Largest drift magnitude.
pub const MAX_DRIFT_MAGNITUDE: f64 = 10.0;

named_enum! {
    /// A kind of drift of a synthetic scenario.
    pub enum ScenarioDriftKind("drift kind") {
        /// The features' distribution moves, the labelling function stays: numeric
        /// columns' means move by `magnitude` pre-drift standard deviations and their
        /// spread is multiplied by `scale`; categorical columns' level probabilities are
        /// tilted towards the later levels (`p_l * exp(magnitude * t_l)`, `t_l` from -1
        /// for the first level to 1 for the last).
        Covariate = "covariate",
        /// The class priors move, the features given the class stay (rows are drawn
        /// as before and kept with probability proportional to `exp(magnitude * t_y)`,
        /// `t_y` from -1 for the first class to 1 for the last).
        Label = "label",
        /// The labelling function changes, the features stay: its weights, biases and
        /// category effects each get `magnitude` x a fresh standard normal draw (times
        /// the scenario's `separation`).
        Concept = "concept",
    }
}

/// One drift of a scenario, applied to the rows from index `start` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioDrift {
    pub kind: ScenarioDriftKind,
    /// The first drifted row (0-based). Default 0.
    pub start: usize,
    /// Strength, >= 0 (0: no change). Default 1.
    pub magnitude: f64,
    /// Covariate drift: factor on the numeric columns' standard deviations (> 0).
    /// Default 1.
    pub scale: f64,
    /// Covariate drift: the columns that move. Default: every feature column.
    pub columns: Vec<String>,
}

impl Default for ScenarioDrift {
    fn default() -> Self {
        Self { kind: ScenarioDriftKind::Covariate, start: 0, magnitude: 1.0, scale: 1.0, columns: Vec::new() }
    }
}

/// A seeded tabular classification scenario (`anneal::tabular::synthetic::generate`).
///
/// Numeric columns `x0, x1, ...` are normal with a mean in [-2, 2] and a standard
/// deviation in [0.5, 2] (per column, from the seed); categorical columns `c0, c1, ...`
/// take the values `v0, v1, ...` with probabilities drawn from the seed. The label is
/// drawn from the softmax of `b_k + sum_j w_kj z_j + e_k[c]` over the classes `0..n`
/// (`z`: the standardised numeric values; `w`, `b`, `e`: standard normal x
/// `separation`), so `separation` sets how learnable it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ScenarioOptions {
    /// Rows to generate. Default 1000.
    pub rows: usize,
    /// Numeric feature columns. Default 4.
    pub numeric: usize,
    /// Categorical feature columns. Default 1.
    pub categorical: usize,
    /// Levels of each categorical column (>= 2). Default 3.
    pub categories: usize,
    /// Classes (>= 2). Default 2.
    pub classes: usize,
    /// Scale of the labelling function's coefficients (> 0). Default 2.
    pub separation: f64,
    /// Default 0. The same options give the same rows; rows before a drift's `start`
    /// are the same with or without it.
    pub seed: u64,
    pub drift: Vec<ScenarioDrift>,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        Self {
            rows: 1000,
            numeric: 4,
            categorical: 1,
            categories: 3,
            classes: 2,
            separation: 2.0,
            seed: 0,
            drift: Vec::new(),
        }
    }
}

impl ScenarioOptions {
    /// The feature column names: `x0..` then `c0..`.
    pub fn columns(&self) -> Vec<String> {
        (0..self.numeric).map(|i| format!("x{i}")).chain((0..self.categorical).map(|i| format!("c{i}"))).collect()
    }

    /// Checks every field; `invalid_config` names the first bad one (`drift[1].start`).
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_SCENARIO_ROWS).contains(&self.rows) {
            return Err(Error::config("rows", format!("must be between 1 and {MAX_SCENARIO_ROWS}, got {}", self.rows)));
        }
        for (field, n) in [("numeric", self.numeric), ("categorical", self.categorical)] {
            if n > MAX_SCENARIO_COLUMNS {
                return Err(Error::config(field, format!("must be at most {MAX_SCENARIO_COLUMNS}, got {n}")));
            }
        }
        if self.numeric + self.categorical == 0 {
            return Err(Error::config("numeric", "a scenario needs at least one numeric or categorical column"));
        }
        if !(2..=MAX_SCENARIO_CATEGORIES).contains(&self.categories) {
            return Err(Error::config(
                "categories",
                format!("must be between 2 and {MAX_SCENARIO_CATEGORIES}, got {}", self.categories),
            ));
        }
        if !(2..=MAX_SCENARIO_CLASSES).contains(&self.classes) {
            return Err(Error::config(
                "classes",
                format!("must be between 2 and {MAX_SCENARIO_CLASSES}, got {}", self.classes),
            ));
        }
        if !(self.separation.is_finite() && self.separation > 0.0 && self.separation <= 100.0) {
            return Err(Error::config("separation", format!("must be in (0, 100], got {}", self.separation)));
        }
        let columns: BTreeSet<String> = self.columns().into_iter().collect();
        for (i, d) in self.drift.iter().enumerate() {
            let f = |name: &str| format!("drift[{i}].{name}");
            if d.start >= self.rows {
                return Err(Error::config(
                    f("start"),
                    format!("must be below rows ({}), got {}: no row would drift", self.rows, d.start),
                ));
            }
            if !(d.magnitude.is_finite() && (0.0..=MAX_DRIFT_MAGNITUDE).contains(&d.magnitude)) {
                return Err(Error::config(
                    f("magnitude"),
                    format!("must be between 0 and {MAX_DRIFT_MAGNITUDE}, got {}", d.magnitude),
                ));
            }
            if !(d.scale.is_finite() && d.scale > 0.0 && d.scale <= 100.0) {
                return Err(Error::config(f("scale"), format!("must be in (0, 100], got {}", d.scale)));
            }
            if d.kind != ScenarioDriftKind::Covariate {
                if d.scale != 1.0 {
                    return Err(Error::config(f("scale"), "applies to covariate drift only"));
                }
                if !d.columns.is_empty() {
                    return Err(Error::config(f("columns"), "apply to covariate drift only"));
                }
            }
            if let Some(c) = d.columns.iter().find(|c| !columns.contains(*c)) {
                return Err(Error::config(
                    f("columns"),
                    format!("`{c}` is not a column of the scenario ({})", self.columns().join(", ")),
                ));
            }
        }
        Ok(())
    }
}

/// Most prompts one [`crate::DatasetStore::generate`] call takes.
pub const MAX_GENERATE_PROMPTS: usize = 1_000_000;

/// Options of [`crate::DatasetStore::generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateDatasetOptions {
    /// The new dataset's name. Default `<model name>-generated-<id>`.
    pub name: Option<String>,
    /// Settings of every generation. An unset `seed` is drawn once and recorded, so
    /// the lineage holds what reproduces the dataset.
    pub generation: GenerationConfig,
    /// Prompts per batch (one forward pass per step for the batch). Default 8.
    pub batch_size: usize,
    /// Same content already stored: error (default) or return the existing dataset.
    pub on_duplicate: OnDuplicate,
}

impl Default for GenerateDatasetOptions {
    fn default() -> Self {
        Self { name: None, generation: GenerationConfig::default(), batch_size: 8, on_duplicate: OnDuplicate::Error }
    }
}

/// Where a dataset written by [`crate::DatasetStore::generate`] came from
/// ([`crate::DatasetStore::lineage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatasetLineage {
    /// The model whose generations the records are.
    pub model: ModelId,
    /// That model as `name@version`.
    pub model_ref: String,
    /// The settings of every generation (the seed included).
    pub generation: GenerationConfig,
    /// The model's defaults for what `generation` leaves unset.
    pub model_defaults: GenerationConfig,
    /// Prompts generated for (one record each).
    pub prompts: u64,
}
