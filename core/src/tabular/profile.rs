//! The reference profile of a tabular dataset, stored with a model version at training
//! time (as JSON in the catalog), and the comparison of a later window of rows with it.
//!
//! Per numeric column: count, missing, mean, standard deviation (ddof 0), min, max,
//! quantiles, the PSI bins (the deciles of all the values and each bin's share), and a
//! uniform subsample of at most [`ProfileOptions::sample_size`] values (reservoir
//! sampling with a seeded ChaCha8 generator: the same rows and seed give the same
//! sample), which KS and Wasserstein compare windows with. Per categorical column:
//! count, missing and the count of each category (the most frequent
//! [`ProfileOptions::max_categories`]; the rest are summed in `other`).
//!
//! Rows are JSON objects. A value is missing when it is null or its key is absent.
//! A column's kind is given in [`ProfileOptions::kinds`] or taken from its first
//! non-null value: a number makes it numeric, a string or a boolean categorical. A
//! later value of the other kind is `invalid_data` naming the record and the column,
//! unless the column was declared categorical, where numbers count as their JSON text
//! (so `1` and `"1"` are one category) and booleans as `true` / `false`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::drift::{
    bin_shares, chi2_contingency, jensen_shannon, ks_2samp_sorted, psi, psi_edges, quantile_sorted, wasserstein_sorted,
    PSI_BINS, WASSERSTEIN_MIN_STD,
};
use crate::error::{Error, Location, Result};
use crate::types::{ColumnDrift, ColumnKind, DriftOptions, DriftReport, DriftTest, DriftVerdict};

/// The version of the profile's JSON layout.
pub const PROFILE_FORMAT: u32 = 1;

/// At most this many reference rows: KS and chi-square by default; more: Wasserstein
/// and Jensen-Shannon (see [`DriftOptions`]).
pub const SMALL_REFERENCE_ROWS: u64 = 1000;

/// How a profile is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileOptions {
    /// Values kept per numeric column for KS and Wasserstein.
    pub sample_size: usize,
    /// Seed of the subsample.
    pub seed: u64,
    /// Kinds of columns, overriding what their first value says.
    pub kinds: BTreeMap<String, ColumnKind>,
    /// Columns left out (e.g. the label).
    pub exclude: Vec<String>,
    /// Categories counted one by one per column; the rarer ones are summed in `other`.
    pub max_categories: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        Self { sample_size: 1000, seed: 0, kinds: BTreeMap::new(), exclude: Vec::new(), max_categories: 1000 }
    }
}

/// Quantiles of a numeric column (linear interpolation, as numpy's default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub p01: f64,
    pub p05: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub p99: f64,
}

/// A numeric column of the reference. The summary statistics are null when the column
/// had no value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    pub name: String,
    /// Non-missing values.
    pub count: u64,
    /// Rows where the column was null or absent.
    pub missing: u64,
    pub mean: Option<f64>,
    /// Population standard deviation (ddof 0).
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub quantiles: Option<Quantiles>,
    /// Inner edges of the PSI bins (see [`super::drift::psi_edges`]).
    pub psi_edges: Vec<f64>,
    /// Share of the values in each PSI bin (`psi_edges.len() + 1` bins).
    pub psi_shares: Vec<f64>,
    /// At most `sample_size` of the values, sorted.
    pub sample: Vec<f64>,
}

/// A categorical column of the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    pub name: String,
    pub count: u64,
    pub missing: u64,
    /// Values per category (the most frequent `max_categories`).
    pub counts: BTreeMap<String, u64>,
    /// Values of the categories beyond `max_categories`.
    pub other: u64,
}

/// One column of a [`Profile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnProfile {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

impl ColumnProfile {
    pub fn name(&self) -> &str {
        match self {
            ColumnProfile::Numeric(c) => &c.name,
            ColumnProfile::Categorical(c) => &c.name,
        }
    }

    pub fn kind(&self) -> ColumnKind {
        match self {
            ColumnProfile::Numeric(_) => ColumnKind::Numeric,
            ColumnProfile::Categorical(_) => ColumnKind::Categorical,
        }
    }
}

/// What a window is compared with: one entry per column, in the order the columns
/// were first seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// [`PROFILE_FORMAT`].
    pub format: u32,
    /// Rows profiled.
    pub rows: u64,
    /// Seed of the numeric subsamples.
    pub seed: u64,
    pub columns: Vec<ColumnProfile>,
}

/// A JSON value's type, for error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A categorical value's text: strings as they are, booleans `true` / `false`,
/// numbers as their JSON text.
fn category_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

struct ColumnBuild {
    name: String,
    kind: Option<ColumnKind>,
    /// Given in the options (numbers are then accepted in a categorical column).
    declared: bool,
    /// Where the kind was taken from (1-based record), when it was inferred.
    decided_at: u64,
    values: Vec<f64>,
    sample: Vec<f64>,
    counts: HashMap<String, u64>,
    count: u64,
}

/// Builds a [`Profile`] one row at a time.
pub struct ProfileBuilder {
    opts: ProfileOptions,
    rng: ChaCha8Rng,
    rows: u64,
    columns: Vec<ColumnBuild>,
    index: HashMap<String, usize>,
}

impl ProfileBuilder {
    /// `invalid_config` for a sample size or category cap of 0.
    pub fn new(opts: &ProfileOptions) -> Result<Self> {
        if opts.sample_size == 0 {
            return Err(Error::config("sample_size", "must be at least 1"));
        }
        if opts.max_categories == 0 {
            return Err(Error::config("max_categories", "must be at least 1"));
        }
        let mut b = Self {
            opts: opts.clone(),
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            rows: 0,
            columns: Vec::new(),
            index: HashMap::new(),
        };
        // Declared columns exist even if no row has them.
        for (name, kind) in &opts.kinds {
            if !opts.exclude.contains(name) {
                b.column(name, Some(*kind));
            }
        }
        Ok(b)
    }

    fn column(&mut self, name: &str, declared: Option<ColumnKind>) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.columns.push(ColumnBuild {
            name: name.to_string(),
            kind: declared,
            declared: declared.is_some(),
            decided_at: 0,
            values: Vec::new(),
            sample: Vec::new(),
            counts: HashMap::new(),
            count: 0,
        });
        self.index.insert(name.to_string(), self.columns.len() - 1);
        self.columns.len() - 1
    }

    /// The kind `value` gives column `name` (or an error naming `record` and the column).
    fn check(&self, record: u64, name: &str, value: &Value) -> Result<ColumnKind> {
        let loc = || Location::default().at(record).field(name);
        let existing = self.index.get(name).map(|&i| &self.columns[i]);
        let declared = self.opts.kinds.get(name).copied();
        let this = match value {
            Value::Number(_) if number(value).is_none() => {
                return Err(Error::data(loc(), "the number is not finite in 64-bit floating point"));
            }
            Value::Number(_) => ColumnKind::Numeric,
            Value::String(_) | Value::Bool(_) => ColumnKind::Categorical,
            other => {
                return Err(Error::data(loc(), format!("expected a number or a string, got {}", type_name(other))));
            }
        };
        let kind = existing.and_then(|c| c.kind).or(declared);
        match (kind, this) {
            (None, k) => Ok(k),
            (Some(k), t) if k == t => Ok(k),
            (Some(ColumnKind::Categorical), ColumnKind::Numeric) if declared.is_some() => Ok(ColumnKind::Categorical),
            (Some(k), _) => {
                let since = match existing {
                    Some(c) if !c.declared => format!(" (from its first value, at record {})", c.decided_at),
                    _ => " (declared)".to_string(),
                };
                Err(Error::data(
                    loc(),
                    format!(
                        "the column is {k}{since} but this value is {}; declare its kind in the profile options",
                        type_name(value)
                    ),
                ))
            }
        }
    }

    /// Adds one row. On an error nothing of the row is added.
    pub fn add(&mut self, row: &Map<String, Value>) -> Result<()> {
        let record = self.rows + 1;
        let mut kinds = Vec::with_capacity(row.len());
        for (name, value) in row {
            if value.is_null() || self.opts.exclude.iter().any(|e| e == name) {
                continue;
            }
            kinds.push((name, value, self.check(record, name, value)?));
        }
        self.rows += 1;
        let cap = self.opts.sample_size;
        for (name, value, kind) in kinds {
            let i = self.column(name, None);
            let rng = &mut self.rng;
            let c = &mut self.columns[i];
            if c.kind.is_none() {
                c.kind = Some(kind);
                c.decided_at = record;
            }
            c.count += 1;
            match kind {
                ColumnKind::Numeric => {
                    let x = number(value).unwrap_or(f64::NAN) + 0.0;
                    c.values.push(x);
                    // Reservoir sampling (algorithm R).
                    if c.sample.len() < cap {
                        c.sample.push(x);
                    } else {
                        let j = rng.random_range(0..c.count);
                        if (j as usize) < cap {
                            c.sample[j as usize] = x;
                        }
                    }
                }
                ColumnKind::Categorical => {
                    let text = category_text(value).unwrap_or_default();
                    match c.counts.get_mut(text.as_ref()) {
                        Some(n) => *n += 1,
                        None => {
                            c.counts.insert(text.into_owned(), 1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Profile {
        let rows = self.rows;
        let max_categories = self.opts.max_categories;
        let columns = self
            .columns
            .into_iter()
            .map(|c| {
                let missing = rows - c.count;
                match c.kind.unwrap_or(ColumnKind::Categorical) {
                    ColumnKind::Numeric => {
                        let mut sorted = c.values;
                        sorted.sort_unstable_by(f64::total_cmp);
                        let mut sample = c.sample;
                        sample.sort_unstable_by(f64::total_cmp);
                        let q = |p: f64| quantile_sorted(&sorted, p);
                        let nonempty = !sorted.is_empty();
                        let edges = if nonempty { psi_edges(&sorted, PSI_BINS) } else { Vec::new() };
                        let shares = if nonempty { bin_shares(&sorted, &edges) } else { Vec::new() };
                        ColumnProfile::Numeric(NumericProfile {
                            name: c.name,
                            count: c.count,
                            missing,
                            mean: nonempty.then(|| sorted.iter().sum::<f64>() / sorted.len() as f64),
                            std: nonempty.then(|| super::drift::std_dev(&sorted)),
                            min: sorted.first().copied(),
                            max: sorted.last().copied(),
                            quantiles: nonempty.then(|| Quantiles {
                                p01: q(0.01),
                                p05: q(0.05),
                                p25: q(0.25),
                                p50: q(0.5),
                                p75: q(0.75),
                                p95: q(0.95),
                                p99: q(0.99),
                            }),
                            psi_edges: edges,
                            psi_shares: shares,
                            sample,
                        })
                    }
                    ColumnKind::Categorical => {
                        let mut by_count: Vec<(String, u64)> = c.counts.into_iter().collect();
                        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                        let other = by_count.iter().skip(max_categories).map(|(_, n)| n).sum();
                        by_count.truncate(max_categories);
                        ColumnProfile::Categorical(CategoricalProfile {
                            name: c.name,
                            count: c.count,
                            missing,
                            counts: by_count.into_iter().collect(),
                            other,
                        })
                    }
                }
            })
            .collect();
        Profile { format: PROFILE_FORMAT, rows, seed: self.opts.seed, columns }
    }
}

impl Profile {
    /// Profiles `rows` (all or nothing).
    pub fn from_rows(rows: &[Map<String, Value>], opts: &ProfileOptions) -> Result<Profile> {
        let mut b = ProfileBuilder::new(opts)?;
        for row in rows {
            b.add(row)?;
        }
        Ok(b.finish())
    }

    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|c| c.name() == name)
    }

    /// Compares `window` with this reference, column by column (see [`DriftOptions`]).
    /// Columns of the window that the profile does not have are ignored; a value of the
    /// wrong type (a string in a numeric column, an array anywhere) is `invalid_data`
    /// naming its record (1-based) and column.
    pub fn compare(&self, window: &[Map<String, Value>], opts: &DriftOptions) -> Result<DriftReport> {
        opts.validate()?;
        let small = self.rows <= SMALL_REFERENCE_ROWS;
        let numeric_test = opts.numeric_test.unwrap_or(if small { DriftTest::Ks } else { DriftTest::Wasserstein });
        let categorical_test =
            opts.categorical_test.unwrap_or(if small { DriftTest::ChiSquare } else { DriftTest::JensenShannon });
        let enough_rows = window.len() as u64 >= opts.min_rows;
        let mut columns = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let mut d = match col {
                ColumnProfile::Numeric(c) => compare_numeric(c, window, numeric_test, opts)?,
                ColumnProfile::Categorical(c) => compare_categorical(c, window, categorical_test, opts)?,
            };
            let missing = match col {
                ColumnProfile::Numeric(c) => c.missing,
                ColumnProfile::Categorical(c) => c.missing,
            };
            d.reference_missing_share = if self.rows == 0 { 0.0 } else { missing as f64 / self.rows as f64 };
            d.window_missing_share = if window.is_empty() {
                0.0
            } else {
                (window.len() as u64 - d.window_count) as f64 / window.len() as f64
            };
            d.drifted &= enough_rows;
            columns.push(d);
        }
        let drifted_columns = columns.iter().filter(|c| c.drifted).count() as u64;
        let drift_share = if columns.is_empty() { 0.0 } else { drifted_columns as f64 / columns.len() as f64 };
        let verdict = if !enough_rows {
            DriftVerdict::InsufficientData
        } else if !columns.is_empty() && drift_share >= opts.drift_share {
            DriftVerdict::Drift
        } else {
            DriftVerdict::NoDrift
        };
        Ok(DriftReport {
            verdict,
            window_rows: window.len() as u64,
            reference_rows: self.rows,
            drifted_columns,
            drift_share,
            columns,
        })
    }
}

fn compare_numeric(
    c: &NumericProfile,
    window: &[Map<String, Value>],
    test: DriftTest,
    opts: &DriftOptions,
) -> Result<ColumnDrift> {
    let mut values = Vec::with_capacity(window.len());
    for (i, row) in window.iter().enumerate() {
        match row.get(&c.name) {
            None | Some(Value::Null) => {}
            Some(v) => match number(v) {
                Some(x) => values.push(x + 0.0),
                None => {
                    return Err(Error::data(
                        Location::default().at(i as u64 + 1).field(&c.name),
                        format!("expected a number (the column is numeric in the reference), got {}", type_name(v)),
                    ))
                }
            },
        }
    }
    values.sort_unstable_by(f64::total_cmp);
    let comparable = !values.is_empty() && !c.sample.is_empty();
    let (statistic, p_value, threshold, drifted) = match test {
        DriftTest::Wasserstein => {
            let threshold = opts.wasserstein_threshold;
            let norm = c.std.unwrap_or(0.0).max(WASSERSTEIN_MIN_STD);
            let s = comparable.then(|| wasserstein_sorted(&c.sample, &values) / norm);
            (s, None, threshold, s.is_some_and(|s| s >= threshold))
        }
        _ => {
            let r = comparable.then(|| ks_2samp_sorted(&c.sample, &values));
            let p = r.map(|r| r.p_value);
            (r.map(|r| r.statistic), p, opts.p_value, p.is_some_and(|p| p < opts.p_value))
        }
    };
    let psi_value = if values.is_empty() || c.psi_shares.is_empty() {
        None
    } else {
        Some(psi(&c.psi_shares, &bin_shares(&values, &c.psi_edges))?)
    };
    Ok(ColumnDrift {
        column: c.name.clone(),
        kind: ColumnKind::Numeric,
        test: if test == DriftTest::Wasserstein { DriftTest::Wasserstein } else { DriftTest::Ks },
        statistic,
        p_value,
        threshold,
        drifted,
        psi: psi_value,
        reference_count: c.sample.len() as u64,
        window_count: values.len() as u64,
        window_missing_share: 0.0,
        reference_missing_share: 0.0,
        unseen_share: None,
    })
}

fn compare_categorical(
    c: &CategoricalProfile,
    window: &[Map<String, Value>],
    test: DriftTest,
    opts: &DriftOptions,
) -> Result<ColumnDrift> {
    // Window counts aligned with the reference's categories, plus one for the rest.
    let position: HashMap<&str, usize> = c.counts.keys().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut win = vec![0.0f64; c.counts.len() + 1];
    let mut count = 0u64;
    for (i, row) in window.iter().enumerate() {
        let Some(v) = row.get(&c.name).filter(|v| !v.is_null()) else { continue };
        let Some(text) = category_text(v) else {
            return Err(Error::data(
                Location::default().at(i as u64 + 1).field(&c.name),
                format!("expected a category (a string, number or boolean), got {}", type_name(v)),
            ));
        };
        count += 1;
        let slot = position.get(text.as_ref()).copied().unwrap_or(c.counts.len());
        win[slot] += 1.0;
    }
    let unseen = win[c.counts.len()];
    let mut reference: Vec<f64> = c.counts.values().map(|&n| n as f64).collect();
    reference.push(c.other as f64);
    let comparable = count > 0 && c.count > 0;
    let (statistic, p_value, threshold, drifted) = match test {
        DriftTest::JensenShannon => {
            let threshold = opts.jensen_shannon_threshold;
            let s = if comparable { Some(jensen_shannon(&reference, &win)?) } else { None };
            (s, None, threshold, s.is_some_and(|s| s >= threshold))
        }
        _ => {
            let r = if comparable { Some(chi2_contingency(&reference, &win)?) } else { None };
            let p = r.map(|r| r.p_value);
            (r.map(|r| r.statistic), p, opts.p_value, p.is_some_and(|p| p < opts.p_value))
        }
    };
    let psi_value = if comparable {
        let (rs, ws) = (c.count as f64, count as f64);
        let e: Vec<f64> = reference.iter().map(|x| x / rs).collect();
        let a: Vec<f64> = win.iter().map(|x| x / ws).collect();
        Some(psi(&e, &a)?)
    } else {
        None
    };
    Ok(ColumnDrift {
        column: c.name.clone(),
        kind: ColumnKind::Categorical,
        test: if test == DriftTest::JensenShannon { DriftTest::JensenShannon } else { DriftTest::ChiSquare },
        statistic,
        p_value,
        threshold,
        drifted,
        psi: psi_value,
        reference_count: c.count,
        window_count: count,
        window_missing_share: 0.0,
        reference_missing_share: 0.0,
        unseen_share: (count > 0).then(|| unseen / count as f64),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn rows(v: Value) -> Vec<Map<String, Value>> {
        v.as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect()
    }

    #[test]
    fn kinds_come_from_first_values_and_conflicts_name_record_and_column() {
        let r = rows(json!([{"x": 1, "c": "a"}, {"x": null, "c": true}, {"c": "b"}]));
        let p = Profile::from_rows(&r, &ProfileOptions::default()).unwrap();
        assert_eq!(p.rows, 3);
        let ColumnProfile::Numeric(x) = p.column("x").unwrap() else { panic!() };
        assert_eq!((x.count, x.missing, x.mean), (1, 2, Some(1.0)));
        let ColumnProfile::Categorical(c) = p.column("c").unwrap() else { panic!() };
        assert_eq!(c.counts, BTreeMap::from([("a".into(), 1), ("true".into(), 1), ("b".into(), 1)]));

        let bad = rows(json!([{"x": 1}, {"x": 2}, {"x": "3"}]));
        let e = Profile::from_rows(&bad, &ProfileOptions::default()).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        let msg = e.to_string();
        assert!(msg.contains("record 3") && msg.contains("`x`") && msg.contains("record 1"), "{msg}");
        // Declared categorical: numbers are categories.
        let opts =
            ProfileOptions { kinds: BTreeMap::from([("x".into(), ColumnKind::Categorical)]), ..Default::default() };
        let p = Profile::from_rows(&bad, &opts).unwrap();
        let ColumnProfile::Categorical(c) = p.column("x").unwrap() else { panic!() };
        assert_eq!(c.counts.len(), 3);
        let e = Profile::from_rows(&rows(json!([{"x": [1]}])), &ProfileOptions::default()).unwrap_err();
        assert!(e.to_string().contains("an array"), "{e}");
    }

    #[test]
    fn a_failed_row_adds_nothing() {
        let mut b = ProfileBuilder::new(&ProfileOptions::default()).unwrap();
        b.add(&rows(json!([{"x": 1, "y": "a"}]))[0]).unwrap();
        assert!(b.add(&rows(json!([{"y": "b", "x": "oops"}]))[0]).is_err());
        let p = b.finish();
        assert_eq!(p.rows, 1);
        let ColumnProfile::Categorical(y) = p.column("y").unwrap() else { panic!() };
        assert_eq!(y.count, 1);
    }

    #[test]
    fn the_subsample_is_seeded_and_uniform_enough() {
        let r: Vec<Map<String, Value>> = (0..5000).map(|i| json!({"x": i}).as_object().unwrap().clone()).collect();
        let p1 = Profile::from_rows(&r, &ProfileOptions::default()).unwrap();
        let p2 = Profile::from_rows(&r, &ProfileOptions::default()).unwrap();
        let p3 = Profile::from_rows(&r, &ProfileOptions { seed: 7, ..Default::default() }).unwrap();
        let s = |p: &Profile| match p.column("x").unwrap() {
            ColumnProfile::Numeric(c) => c.sample.clone(),
            _ => panic!(),
        };
        assert_eq!(s(&p1), s(&p2));
        assert_ne!(s(&p1), s(&p3));
        let sample = s(&p1);
        assert_eq!(sample.len(), 1000);
        let mut dedup = sample.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 1000, "drawn without replacement");
        // Uniform over 0..5000: each fifth of the range holds about 200 of them.
        for k in 0..5 {
            let n = sample.iter().filter(|&&x| x >= k as f64 * 1000.0 && x < (k + 1) as f64 * 1000.0).count();
            assert!((150..=250).contains(&n), "fifth {k}: {n}");
        }
        // The profile round-trips through JSON (to the last bit but for serde_json's
        // float parsing, which without its `float_roundtrip` feature may move a value by
        // one ulp: the workspace does not enable it).
        let back: Profile = serde_json::from_str(&serde_json::to_string(&p1).unwrap()).unwrap();
        assert_eq!((back.rows, back.seed, back.format), (p1.rows, p1.seed, p1.format));
        let (ColumnProfile::Numeric(a), ColumnProfile::Numeric(b)) = (&back.columns[0], &p1.columns[0]) else {
            panic!()
        };
        assert_eq!((&a.sample, &a.psi_shares, a.count), (&b.sample, &b.psi_shares, b.count));
        for (x, y) in a.psi_edges.iter().zip(&b.psi_edges).chain([(&a.std.unwrap(), &b.std.unwrap())]) {
            assert!((x - y).abs() <= 2.0 * f64::EPSILON * y.abs(), "{x} vs {y}");
        }
    }
}
