//! Preprocessing of tabular rows for a classifier, fitted on the training rows and
//! stored with the model (JSON).
//!
//! Rows are JSON objects (column -> value). Column kinds are declared in
//! [`PreprocessOptions::kinds`] or inferred as [`super::profile`] infers them (the
//! first non-null value: a number makes a column numeric, a string or a boolean
//! categorical); the fit reuses [`Profile`] for the statistics.
//!
//! - Numeric columns are standardised with the training mean and population standard
//!   deviation (ddof 0, as scikit-learn's `StandardScaler`; a constant column is
//!   divided by 1). A null value becomes the mean (0 after scaling) and, with
//!   [`PreprocessOptions::missing_indicator`], sets a 0/1 indicator feature added for
//!   each column that had a null in training (as `SimpleImputer(add_indicator=True)`).
//! - Categorical columns are one-hot encoded over the categories seen in training
//!   (sorted). A null value is all zeros; a category not seen in training is all zeros
//!   too and counted per column in [`Transformed::unseen`] (never an error).
//! - A column of the model absent from a row, a column the model does not know, a
//!   value of the wrong type or a non-finite number is `invalid_data` naming the
//!   record (1-based) and the column.
//!
//! Labels (strings, integers or booleans, one type per dataset) are encoded by
//! [`LabelEncoder`] with the classes sorted, as scikit-learn's `LabelEncoder`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::profile::{ColumnProfile, Profile, ProfileOptions};
use crate::error::{Error, Location, Result};
use crate::types::ColumnKind;

/// The version of the preprocessor's JSON layout.
pub const PREPROCESS_FORMAT: u32 = 1;

/// How a [`Preprocessor`] is fitted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessOptions {
    /// Kinds of columns, overriding what their first value says.
    pub kinds: BTreeMap<String, ColumnKind>,
    /// Columns left out of the features (e.g. an id).
    pub exclude: Vec<String>,
    /// Adds a 0/1 "was missing" feature for each numeric column with a null in training.
    pub missing_indicator: bool,
}

/// One input column of a fitted [`Preprocessor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnEncoding {
    Numeric {
        name: String,
        mean: f64,
        /// Divisor (the population standard deviation, or 1 for a constant column).
        scale: f64,
        /// Whether a missing-indicator feature follows the standardised value.
        indicator: bool,
    },
    Categorical {
        name: String,
        /// Sorted; one feature each.
        categories: Vec<String>,
    },
}

impl ColumnEncoding {
    pub fn name(&self) -> &str {
        match self {
            ColumnEncoding::Numeric { name, .. } | ColumnEncoding::Categorical { name, .. } => name,
        }
    }

    /// Features this column produces.
    pub fn width(&self) -> usize {
        match self {
            ColumnEncoding::Numeric { indicator, .. } => 1 + usize::from(*indicator),
            ColumnEncoding::Categorical { categories, .. } => categories.len(),
        }
    }
}

/// Standardisation and one-hot encoding fitted on training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// [`PREPROCESS_FORMAT`].
    pub format: u32,
    pub columns: Vec<ColumnEncoding>,
    /// Columns ignored in rows (the `exclude` of the options).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Rows turned into a feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Transformed {
    /// Row-major, `rows x width`.
    pub data: Vec<f64>,
    pub rows: usize,
    pub width: usize,
    /// Per categorical column, values not seen in training (encoded as all zeros).
    pub unseen: BTreeMap<String, u64>,
}

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

/// A categorical value's text, as [`super::profile`] counts it.
fn category_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

impl Preprocessor {
    /// Fits on `rows` (all or nothing). `invalid_data` for no row, a row without any
    /// feature column, or a value [`super::profile`] refuses.
    pub fn fit(rows: &[Map<String, Value>], opts: &PreprocessOptions) -> Result<Preprocessor> {
        if rows.is_empty() {
            return Err(Error::data(Location::default(), "no training rows"));
        }
        let profile = Profile::from_rows(
            rows,
            &ProfileOptions {
                sample_size: 1,
                seed: 0,
                kinds: opts.kinds.clone(),
                exclude: opts.exclude.clone(),
                max_categories: usize::MAX,
            },
        )?;
        let columns: Vec<ColumnEncoding> = profile
            .columns
            .iter()
            .map(|c| match c {
                ColumnProfile::Numeric(n) => {
                    let std = n.std.unwrap_or(0.0);
                    ColumnEncoding::Numeric {
                        name: n.name.clone(),
                        mean: n.mean.unwrap_or(0.0),
                        scale: if std < 10.0 * f64::EPSILON { 1.0 } else { std },
                        indicator: opts.missing_indicator && n.missing > 0,
                    }
                }
                ColumnProfile::Categorical(k) => {
                    ColumnEncoding::Categorical { name: k.name.clone(), categories: k.counts.keys().cloned().collect() }
                }
            })
            .collect();
        let p = Preprocessor { format: PREPROCESS_FORMAT, columns, exclude: opts.exclude.clone() };
        if p.width() == 0 {
            return Err(Error::data(Location::default(), "the training rows have no feature column with a value"));
        }
        Ok(p)
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.columns.iter().map(ColumnEncoding::width).sum()
    }

    /// Names of the features, in order (`col`, `col__missing`, `col=category`).
    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.width());
        for c in &self.columns {
            match c {
                ColumnEncoding::Numeric { name, indicator, .. } => {
                    out.push(name.clone());
                    if *indicator {
                        out.push(format!("{name}__missing"));
                    }
                }
                ColumnEncoding::Categorical { name, categories } => {
                    out.extend(categories.iter().map(|k| format!("{name}={k}")));
                }
            }
        }
        out
    }

    /// Encodes `rows` (all or nothing). Record numbers in errors are 1-based.
    pub fn transform(&self, rows: &[Map<String, Value>]) -> Result<Transformed> {
        let width = self.width();
        let mut data = vec![0.0; rows.len() * width];
        let mut unseen = BTreeMap::new();
        for (r, row) in rows.iter().enumerate() {
            let record = r as u64 + 1;
            let loc = |f: &str| Location::default().at(record).field(f);
            for name in row.keys() {
                if !self.exclude.contains(name) && !self.columns.iter().any(|c| c.name() == name) {
                    return Err(Error::data(loc(name), "the model has no such column"));
                }
            }
            let out = &mut data[r * width..(r + 1) * width];
            let mut at = 0;
            for c in &self.columns {
                let value = row.get(c.name()).ok_or_else(|| Error::data(loc(c.name()), "the column is missing"))?;
                match c {
                    ColumnEncoding::Numeric { name, mean, scale, indicator } => match value {
                        Value::Null => {
                            out[at] = 0.0;
                            if *indicator {
                                out[at + 1] = 1.0;
                            }
                        }
                        Value::Number(n) => {
                            let x = n.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                                Error::data(loc(name), "the number is not finite in 64-bit floating point")
                            })?;
                            out[at] = (x - mean) / scale;
                        }
                        other => {
                            return Err(Error::data(
                                loc(name),
                                format!("the column is numeric but this value is {}", type_name(other)),
                            ))
                        }
                    },
                    ColumnEncoding::Categorical { name, categories } => {
                        if !value.is_null() {
                            let text = category_text(value).ok_or_else(|| {
                                Error::data(
                                    loc(name),
                                    format!("the column is categorical but this value is {}", type_name(value)),
                                )
                            })?;
                            match categories.binary_search_by(|k| k.as_str().cmp(text.as_ref())) {
                                Ok(i) => out[at + i] = 1.0,
                                Err(_) => *unseen.entry(name.clone()).or_insert(0) += 1,
                            }
                        }
                    }
                }
                at += c.width();
            }
        }
        Ok(Transformed { data, rows: rows.len(), width, unseen })
    }
}

/// Classes of a label, sorted (strings by bytes, integers by value, `false` < `true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelEncoder {
    pub classes: Vec<Value>,
}

/// A label's sort key; one variant per label type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Bool(bool),
    Int(i128),
    Str(&'a str),
}

fn label_key(v: &Value) -> Option<Key<'_>> {
    match v {
        Value::Bool(b) => Some(Key::Bool(*b)),
        Value::String(s) => Some(Key::Str(s)),
        Value::Number(n) => n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)).map(Key::Int),
        _ => None,
    }
}

fn same_type(a: &Key<'_>, b: &Key<'_>) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl LabelEncoder {
    /// The classes of `labels`. `invalid_data` (field `label`) for a null, a float, an
    /// array or object, a label of another type than the first, or fewer than 2 classes.
    pub fn fit(labels: &[Value]) -> Result<LabelEncoder> {
        let mut keys: Vec<Key<'_>> = Vec::with_capacity(labels.len());
        for (i, v) in labels.iter().enumerate() {
            let k = Self::check(i, v)?;
            if let Some(first) = keys.first() {
                if !same_type(first, &k) {
                    return Err(Error::data(
                        Location::default().at(i as u64 + 1).field("label"),
                        format!("labels must all have one type; this one is {} unlike the first", type_name(v)),
                    ));
                }
            }
            keys.push(k);
        }
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        order.dedup_by(|a, b| keys[*a] == keys[*b]);
        if order.len() < 2 {
            return Err(Error::data(
                Location::default().field("label"),
                format!("a classifier needs at least 2 classes, the labels have {}", order.len()),
            ));
        }
        Ok(LabelEncoder { classes: order.into_iter().map(|i| labels[i].clone()).collect() })
    }

    fn check(i: usize, v: &Value) -> Result<Key<'_>> {
        label_key(v).ok_or_else(|| {
            Error::data(
                Location::default().at(i as u64 + 1).field("label"),
                format!("a label must be a string, an integer or a boolean, got {}", type_name(v)),
            )
        })
    }

    /// Class indices of `labels`; `invalid_data` naming the record for a class not seen
    /// in training.
    pub fn encode(&self, labels: &[Value]) -> Result<Vec<usize>> {
        labels
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let k = Self::check(i, v)?;
                self.classes.iter().position(|c| label_key(c).as_ref() == Some(&k)).ok_or_else(|| {
                    Error::data(
                        Location::default().at(i as u64 + 1).field("label"),
                        format!("unknown class {v}; the model's classes are {}", Value::from(self.classes.clone())),
                    )
                })
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}
