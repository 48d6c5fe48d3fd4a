//! Drift: what a drift check takes (options), what it returns (a report with one row
//! per column and a verdict), and the settings of the stream detectors.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::named_enum;
use crate::error::{Error, Result};

named_enum! {
    /// How a tabular column is compared: numbers or categories.
    pub enum ColumnKind("column kind") {
        Numeric = "numeric",
        Categorical = "categorical",
    }
}

named_enum! {
    /// The statistic a column's drift was judged on.
    pub enum DriftTest("drift test") {
        /// Two-sample Kolmogorov-Smirnov (numbers): drift when p < the p-value threshold.
        Ks = "ks",
        /// Wasserstein-1 distance divided by the reference's standard deviation
        /// (numbers): drift when it reaches the threshold.
        Wasserstein = "wasserstein",
        /// Chi-square test of homogeneity (categories): drift when p < the threshold.
        ChiSquare = "chi_square",
        /// Jensen-Shannon distance, base 2 (categories): drift when it reaches the threshold.
        JensenShannon = "jensen_shannon",
    }
}

named_enum! {
    /// A drift check's conclusion on the whole window.
    pub enum DriftVerdict("drift verdict") {
        /// Fewer columns drifted than [`DriftOptions::drift_share`] asks for.
        NoDrift = "no_drift",
        /// At least [`DriftOptions::drift_share`] of the columns drifted.
        Drift = "drift",
        /// The window has fewer rows than [`DriftOptions::min_rows`]: no conclusion
        /// (and no column is flagged), rather than a false alarm.
        InsufficientData = "insufficient_data",
    }
}

named_enum! {
    /// Which changes of the mean a Page-Hinkley detector reports.
    pub enum ChangeDirection("change direction") {
        Up = "up",
        Down = "down",
        Both = "both",
    }
}

/// How a window is compared with a reference profile.
///
/// With the tests unset, a reference of at most 1000 rows is compared with
/// Kolmogorov-Smirnov (numbers) and chi-square (categories), a larger one with the
/// normalised Wasserstein distance and Jensen-Shannon (whose thresholds do not shrink
/// with the sample size the way p-values do), as Evidently does. KS always uses the
/// reference's stored subsample of at most 1000 values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DriftOptions {
    /// `ks` or `wasserstein`; unset: chosen by the reference's size (see above).
    pub numeric_test: Option<DriftTest>,
    /// `chi_square` or `jensen_shannon`; unset: chosen by the reference's size.
    pub categorical_test: Option<DriftTest>,
    /// KS and chi-square: a column drifts when its p-value is below this.
    pub p_value: f64,
    /// Wasserstein: a column drifts when W1 / reference std reaches this.
    pub wasserstein_threshold: f64,
    /// Jensen-Shannon: a column drifts when the distance (base 2) reaches this.
    pub jensen_shannon_threshold: f64,
    /// Fewer window rows than this: verdict `insufficient_data`, and no column is
    /// flagged (the statistics are still reported).
    pub min_rows: u64,
    /// The verdict is `drift` when at least this share of the columns drifted.
    pub drift_share: f64,
}

impl Default for DriftOptions {
    fn default() -> Self {
        Self {
            numeric_test: None,
            categorical_test: None,
            p_value: 0.05,
            wasserstein_threshold: 0.1,
            jensen_shannon_threshold: 0.1,
            min_rows: 30,
            drift_share: 0.5,
        }
    }
}

impl DriftOptions {
    /// `invalid_config` naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        if let Some(t) = self.numeric_test {
            if !matches!(t, DriftTest::Ks | DriftTest::Wasserstein) {
                return Err(Error::config(
                    "numeric_test",
                    format!("`{t}` is not a test for numbers (ks, wasserstein)"),
                ));
            }
        }
        if let Some(t) = self.categorical_test {
            if !matches!(t, DriftTest::ChiSquare | DriftTest::JensenShannon) {
                return Err(Error::config(
                    "categorical_test",
                    format!("`{t}` is not a test for categories (chi_square, jensen_shannon)"),
                ));
            }
        }
        let open_unit = |name: &str, v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err(Error::config(name, format!("must lie strictly between 0 and 1, got {v}")))
            }
        };
        open_unit("p_value", self.p_value)?;
        if !(self.wasserstein_threshold > 0.0 && self.wasserstein_threshold.is_finite()) {
            return Err(Error::config(
                "wasserstein_threshold",
                format!("must be a positive number, got {}", self.wasserstein_threshold),
            ));
        }
        if !(self.jensen_shannon_threshold > 0.0 && self.jensen_shannon_threshold <= 1.0) {
            return Err(Error::config(
                "jensen_shannon_threshold",
                format!("must lie in (0, 1], got {}", self.jensen_shannon_threshold),
            ));
        }
        if self.min_rows == 0 {
            return Err(Error::config("min_rows", "must be at least 1"));
        }
        if !(self.drift_share > 0.0 && self.drift_share <= 1.0) {
            return Err(Error::config("drift_share", format!("must lie in (0, 1], got {}", self.drift_share)));
        }
        Ok(())
    }
}

/// One column's comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ColumnDrift {
    pub column: String,
    pub kind: ColumnKind,
    pub test: DriftTest,
    /// KS D, normalised Wasserstein distance, chi-square statistic or Jensen-Shannon
    /// distance; null when either side has no value to compare.
    pub statistic: Option<f64>,
    /// KS and chi-square only.
    pub p_value: Option<f64>,
    /// The p-value below which (KS, chi-square) or the distance from which
    /// (Wasserstein, Jensen-Shannon) the column drifts.
    pub threshold: f64,
    pub drifted: bool,
    /// Population stability index over the reference's decile bins (numbers) or
    /// categories (plus one bin for unseen ones); reported, not judged on.
    pub psi: Option<f64>,
    /// Non-missing values compared on each side (the reference's subsample for KS and
    /// Wasserstein, its full counts for categories).
    pub reference_count: u64,
    pub window_count: u64,
    /// Share of the window's rows where the column is null or absent.
    pub window_missing_share: f64,
    /// The same share in the reference.
    pub reference_missing_share: f64,
    /// Categories only: share of the window's values that are not among the
    /// reference's categories.
    pub unseen_share: Option<f64>,
}

/// What a drift check returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftReport {
    pub verdict: DriftVerdict,
    /// Rows in the window and in the reference (at profiling time).
    pub window_rows: u64,
    pub reference_rows: u64,
    pub drifted_columns: u64,
    /// drifted_columns / columns (0 with no column).
    pub drift_share: f64,
    pub columns: Vec<ColumnDrift>,
}

/// Page-Hinkley: a change of the mean of a stream (e.g. per-prediction loss or
/// confidence). River's parameters and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PageHinkleyConfig {
    /// Values seen (since the last detection) before a change can be reported.
    pub min_instances: u64,
    /// Magnitude of change tolerated.
    pub delta: f64,
    /// Detection threshold (lambda) on the cumulative deviation.
    pub threshold: f64,
    /// Forgetting factor of the cumulative sums.
    pub alpha: f64,
    pub direction: ChangeDirection,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        Self { min_instances: 30, delta: 0.005, threshold: 50.0, alpha: 1.0 - 0.0001, direction: ChangeDirection::Both }
    }
}

/// DDM (Gama et al. 2004): a rise of the error rate of a stream of 0 (right) / 1
/// (wrong). River's parameters and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DdmConfig {
    /// Values seen (since the last detection) before anything is reported.
    pub warm_start: u64,
    /// Warning when p + s exceeds p_min + warning_threshold * s_min.
    pub warning_threshold: f64,
    /// Drift when p + s exceeds p_min + drift_threshold * s_min.
    pub drift_threshold: f64,
}

impl Default for DdmConfig {
    fn default() -> Self {
        Self { warm_start: 30, warning_threshold: 2.0, drift_threshold: 3.0 }
    }
}

/// ADWIN (Bifet and Gavaldà 2007): an adaptive window cut where two sub-windows'
/// means differ. River's parameters and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdwinConfig {
    /// Confidence: a smaller delta makes detections rarer and surer.
    pub delta: f64,
    /// Check for a cut every `clock` values.
    pub clock: u64,
    /// Buckets of each size kept before two are merged.
    pub max_buckets: u64,
    /// Fewest values on each side of a cut.
    pub min_window_length: u64,
    /// Values seen before the first check.
    pub grace_period: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self { delta: 0.002, clock: 32, max_buckets: 5, min_window_length: 5, grace_period: 10 }
    }
}

/// A stream detector and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DetectorConfig {
    PageHinkley(PageHinkleyConfig),
    Ddm(DdmConfig),
    Adwin(AdwinConfig),
}

impl PageHinkleyConfig {
    /// `invalid_config` naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.delta >= 0.0 && self.delta.is_finite()) {
            return Err(Error::config("delta", format!("must be a non-negative number, got {}", self.delta)));
        }
        if !(self.threshold > 0.0 && self.threshold.is_finite()) {
            return Err(Error::config("threshold", format!("must be a positive number, got {}", self.threshold)));
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::config("alpha", format!("must lie in (0, 1], got {}", self.alpha)));
        }
        Ok(())
    }
}

impl DdmConfig {
    /// `invalid_config` naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.warning_threshold > 0.0 && self.warning_threshold.is_finite()) {
            return Err(Error::config(
                "warning_threshold",
                format!("must be a positive number, got {}", self.warning_threshold),
            ));
        }
        if !(self.drift_threshold.is_finite() && self.drift_threshold >= self.warning_threshold) {
            return Err(Error::config(
                "drift_threshold",
                format!(
                    "must be a number at least warning_threshold ({}), got {}",
                    self.warning_threshold, self.drift_threshold
                ),
            ));
        }
        Ok(())
    }
}

impl AdwinConfig {
    /// `invalid_config` naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::config("delta", format!("must lie strictly between 0 and 1, got {}", self.delta)));
        }
        if self.clock == 0 {
            return Err(Error::config("clock", "must be at least 1"));
        }
        if self.max_buckets == 0 {
            return Err(Error::config("max_buckets", "must be at least 1"));
        }
        if self.min_window_length == 0 {
            return Err(Error::config("min_window_length", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn options_name_the_field_out_of_range() {
        assert!(DriftOptions::default().validate().is_ok());
        let cases = [
            (DriftOptions { numeric_test: Some(DriftTest::ChiSquare), ..Default::default() }, "numeric_test"),
            (DriftOptions { categorical_test: Some(DriftTest::Ks), ..Default::default() }, "categorical_test"),
            (DriftOptions { p_value: 1.0, ..Default::default() }, "p_value"),
            (DriftOptions { wasserstein_threshold: f64::NAN, ..Default::default() }, "wasserstein_threshold"),
            (DriftOptions { jensen_shannon_threshold: 0.0, ..Default::default() }, "jensen_shannon_threshold"),
            (DriftOptions { min_rows: 0, ..Default::default() }, "min_rows"),
            (DriftOptions { drift_share: 1.5, ..Default::default() }, "drift_share"),
        ];
        for (opts, field) in cases {
            let e = opts.validate().unwrap_err();
            assert_eq!(e.code(), "invalid_config");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let e = DdmConfig { drift_threshold: 1.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("drift_threshold"), "{e}");
        let e = AdwinConfig { clock: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("clock"), "{e}");
        let e = PageHinkleyConfig { alpha: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
    }

    #[test]
    fn options_and_configs_read_from_json() {
        let o: DriftOptions = serde_json::from_str(r#"{"numeric_test": "wasserstein", "min_rows": 50}"#).unwrap();
        assert_eq!((o.numeric_test, o.min_rows, o.p_value), (Some(DriftTest::Wasserstein), 50, 0.05));
        let e = serde_json::from_str::<DriftOptions>(r#"{"min_row": 50}"#).unwrap_err().to_string();
        assert!(e.contains("min_row"), "{e}");
        let d: DetectorConfig = serde_json::from_str(r#"{"type": "adwin", "delta": 0.01}"#).unwrap();
        assert_eq!(d, DetectorConfig::Adwin(AdwinConfig { delta: 0.01, ..Default::default() }));
        let v = serde_json::to_value(DriftVerdict::InsufficientData).unwrap();
        assert_eq!(v, "insufficient_data");
    }
}
