//! Seeded synthetic tabular scenarios with controllable drift, for examples, tests and
//! demos: numeric and categorical features, a known labelling function (the softmax of
//! a linear function of the standardised numbers plus category effects), `n` classes,
//! and covariate, label or concept drift from a given row on (see
//! [`ScenarioOptions`] and [`crate::types::ScenarioDriftKind`] for the definitions).
//!
//! Deterministic: the scenario's parameters, its rows and each drift's changes come
//! from separate streams of one ChaCha8 generator seeded with `seed`, so the same
//! options give the same rows, and the rows before a drift's `start` are the same with
//! or without that drift.
//!
//! ```
//! use anneal::tabular::synthetic;
//! use anneal::types::{ScenarioDrift, ScenarioDriftKind, ScenarioOptions};
//! let opts = ScenarioOptions {
//!     rows: 200,
//!     drift: vec![ScenarioDrift { kind: ScenarioDriftKind::Covariate, start: 100, magnitude: 2.0, ..Default::default() }],
//!     ..Default::default()
//! };
//! let data = synthetic::generate(&opts).unwrap();
//! assert_eq!((data.rows.len(), data.labels.len()), (200, 200));
//! assert!(data.rows[0].contains_key("x0") && data.rows[0].contains_key("c0"));
//! ```

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::types::{ScenarioDriftKind, ScenarioOptions};

/// Most draws for one row under label shift before the options are refused.
const MAX_TRIES_PER_ROW: usize = 1_000_000;

/// A labelling function: class scores `b_k + sum_j w_kj z_j + e_k[col][level]`, where
/// `z_j = (x_j - mean_j) / sd_j` with the scenario's pre-drift means and deviations.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFunction {
    /// `[class][numeric column]`.
    pub weights: Vec<Vec<f64>>,
    /// `[class]`.
    pub bias: Vec<f64>,
    /// `[class][categorical column][level]`.
    pub effects: Vec<Vec<Vec<f64>>>,
}

impl LabelFunction {
    fn random(opts: &ScenarioOptions, rng: &mut ChaCha8Rng, scale: f64) -> Self {
        let mut normal = || scale * rng.sample::<f64, _>(StandardNormal);
        let weights = (0..opts.classes).map(|_| (0..opts.numeric).map(|_| normal()).collect()).collect();
        let bias = (0..opts.classes).map(|_| normal()).collect();
        let effects = (0..opts.classes)
            .map(|_| (0..opts.categorical).map(|_| (0..opts.categories).map(|_| normal()).collect()).collect())
            .collect();
        Self { weights, bias, effects }
    }

    /// `self + magnitude * delta`, coefficient by coefficient.
    fn shifted(&self, delta: &LabelFunction, magnitude: f64) -> Self {
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + magnitude * y).collect::<Vec<_>>();
        Self {
            weights: self.weights.iter().zip(&delta.weights).map(|(a, b)| add(a, b)).collect(),
            bias: add(&self.bias, &delta.bias),
            effects: self
                .effects
                .iter()
                .zip(&delta.effects)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| add(x, y)).collect())
                .collect(),
        }
    }

    /// Class probabilities of standardised numbers `z` and category levels `levels`.
    pub fn probabilities(&self, z: &[f64], levels: &[usize]) -> Vec<f64> {
        let scores: Vec<f64> = (0..self.bias.len())
            .map(|k| {
                let lin: f64 = self.weights[k].iter().zip(z).map(|(w, x)| w * x).sum();
                let cat: f64 = self.effects[k].iter().zip(levels).map(|(e, &l)| e[l]).sum();
                self.bias[k] + lin + cat
            })
            .collect();
        softmax(&scores)
    }
}

fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The index of the largest value (the first on ties).
pub fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// `t` from -1 (first) to 1 (last) of `n` items.
fn tilt(i: usize, n: usize) -> f64 {
    if n < 2 {
        0.0
    } else {
        2.0 * i as f64 / (n - 1) as f64 - 1.0
    }
}

/// A scenario's parameters, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub options: ScenarioOptions,
    /// Pre-drift mean and standard deviation of each numeric column.
    pub means: Vec<f64>,
    pub sds: Vec<f64>,
    /// Pre-drift level probabilities of each categorical column.
    pub category_probs: Vec<Vec<f64>>,
    /// The labelling function before any concept drift.
    pub concept: LabelFunction,
    /// Per drift (in `options.drift` order): the change a concept drift adds.
    deltas: Vec<Option<LabelFunction>>,
}

/// Generated rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticRows {
    /// Feature columns: `x0..` then `c0..`.
    pub columns: Vec<String>,
    /// Features only: numbers for `x*`, strings `v0, v1, ...` for `c*`.
    pub rows: Vec<Map<String, Value>>,
    /// Class of each row, `0..classes`.
    pub labels: Vec<u32>,
    /// The true `P(class | features)` of each row under the scenario in effect at that
    /// row (the labelling function, reweighted by a label shift's class weights).
    pub probabilities: Vec<Vec<f64>>,
}

impl SyntheticRows {
    /// Each row with its label under `label`: the records of a tabular dataset.
    pub fn records(&self) -> impl Iterator<Item = Value> + '_ {
        self.rows.iter().zip(&self.labels).map(|(r, &y)| {
            let mut m = r.clone();
            m.insert("label".into(), Value::from(y));
            Value::Object(m)
        })
    }

    /// Writes [`SyntheticRows::records`] as JSON lines (importable as a `tabular`
    /// dataset), atomically: the file holds all rows or is not replaced.
    pub fn write_jsonl(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        crate::util::write_atomic_with(path, |w| {
            for r in self.records() {
                serde_json::to_writer(&mut *w, &r)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })
    }
}

impl Scenario {
    /// Validates `options` and draws the scenario's parameters from its seed.
    pub fn new(options: &ScenarioOptions) -> Result<Self> {
        options.validate()?;
        let o = options;
        let mut rng = stream(o.seed, 0);
        let means: Vec<f64> = (0..o.numeric).map(|_| rng.random_range(-2.0..2.0)).collect();
        let sds: Vec<f64> = (0..o.numeric).map(|_| rng.random_range(0.5..2.0)).collect();
        let category_probs = (0..o.categorical)
            .map(|_| {
                let w: Vec<f64> = (0..o.categories).map(|_| rng.random_range(0.5..1.5)).collect();
                let s: f64 = w.iter().sum();
                w.into_iter().map(|x| x / s).collect()
            })
            .collect();
        let concept = LabelFunction::random(o, &mut rng, o.separation);
        let deltas = o
            .drift
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (d.kind == ScenarioDriftKind::Concept)
                    .then(|| LabelFunction::random(o, &mut stream(o.seed, 2 + i as u64), o.separation))
            })
            .collect();
        Ok(Self { options: options.clone(), means, sds, category_probs, concept, deltas })
    }

    /// The labelling function in effect at row `index` (after the concept drifts that
    /// started at or before it).
    pub fn label_function(&self, index: usize) -> LabelFunction {
        let mut f = self.concept.clone();
        for (d, delta) in self.options.drift.iter().zip(&self.deltas) {
            if let Some(delta) = delta.as_ref().filter(|_| d.start <= index) {
                f = f.shifted(delta, d.magnitude);
            }
        }
        f
    }

    /// Standardised numbers and category levels of a generated row (as
    /// [`LabelFunction::probabilities`] takes them); `None` for a row it did not make.
    pub fn encode(&self, row: &Map<String, Value>) -> Option<(Vec<f64>, Vec<usize>)> {
        let z = (0..self.options.numeric)
            .map(|j| Some((row.get(&format!("x{j}"))?.as_f64()? - self.means[j]) / self.sds[j]))
            .collect::<Option<Vec<_>>>()?;
        let levels = (0..self.options.categorical)
            .map(|j| row.get(&format!("c{j}"))?.as_str()?.strip_prefix('v')?.parse().ok())
            .collect::<Option<Vec<usize>>>()?;
        Some((z, levels))
    }

    /// Generates the rows.
    pub fn generate(&self) -> Result<SyntheticRows> {
        let o = &self.options;
        let columns = o.columns();
        let mut rng = stream(o.seed, 1);
        let mut rows = Vec::with_capacity(o.rows);
        let mut labels = Vec::with_capacity(o.rows);
        let mut probabilities = Vec::with_capacity(o.rows);
        // What is in effect changes only at a drift's start.
        let mut starts: Vec<usize> = o.drift.iter().map(|d| d.start).collect();
        starts.sort_unstable();
        let mut state = self.state(0);
        for i in 0..o.rows {
            if starts.binary_search(&i).is_ok() {
                state = self.state(i);
            }
            let mut tries = 0usize;
            let (row, y, p) = loop {
                let (row, z, levels) = self.features(&state, &columns, &mut rng);
                let mut p = state.concept.probabilities(&z, &levels);
                let y = sample(&p, rng.random::<f64>());
                let Some(w) = &state.class_weights else { break (row, y, p) };
                // Label shift: keep the row with probability w_y / max w.
                let keep = rng.random::<f64>() < w[y];
                if keep {
                    let s: f64 = p.iter().zip(w).map(|(a, b)| a * b).sum();
                    p = p.iter().zip(w).map(|(a, b)| a * b / s).collect();
                    break (row, y, p);
                }
                tries += 1;
                if tries >= MAX_TRIES_PER_ROW {
                    let at = o.drift.iter().position(|d| d.kind == ScenarioDriftKind::Label).unwrap_or(0);
                    return Err(Error::config(
                        format!("drift[{at}].magnitude"),
                        format!("the label shift keeps almost no rows (none in {MAX_TRIES_PER_ROW} draws); lower it"),
                    ));
                }
            };
            rows.push(row);
            labels.push(y as u32);
            probabilities.push(p);
        }
        Ok(SyntheticRows { columns, rows, labels, probabilities })
    }

    /// What is in effect at row `index`.
    fn state(&self, index: usize) -> State {
        let o = &self.options;
        let mut shift = vec![0.0; o.numeric];
        let mut scale = vec![1.0; o.numeric];
        let mut cat_tilt = vec![0.0; o.categorical];
        let mut weights = vec![1.0; o.classes];
        let mut label_shift = false;
        for d in o.drift.iter().filter(|d| d.start <= index) {
            match d.kind {
                ScenarioDriftKind::Covariate => {
                    let all = d.columns.is_empty();
                    for j in 0..o.numeric {
                        if all || d.columns.contains(&format!("x{j}")) {
                            shift[j] += d.magnitude;
                            scale[j] *= d.scale;
                        }
                    }
                    for (j, t) in cat_tilt.iter_mut().enumerate() {
                        if all || d.columns.contains(&format!("c{j}")) {
                            *t += d.magnitude;
                        }
                    }
                }
                ScenarioDriftKind::Label => {
                    label_shift = true;
                    for (k, w) in weights.iter_mut().enumerate() {
                        *w *= (d.magnitude * tilt(k, o.classes)).exp();
                    }
                }
                ScenarioDriftKind::Concept => {}
            }
        }
        let category_probs = self
            .category_probs
            .iter()
            .zip(&cat_tilt)
            .map(|(p, &m)| {
                let w: Vec<f64> = p.iter().enumerate().map(|(l, q)| q * (m * tilt(l, p.len())).exp()).collect();
                let s: f64 = w.iter().sum();
                w.into_iter().map(|x| x / s).collect()
            })
            .collect();
        let max = weights.iter().copied().fold(0.0, f64::max);
        State {
            means: (0..o.numeric).map(|j| self.means[j] + shift[j] * self.sds[j]).collect(),
            sds: (0..o.numeric).map(|j| self.sds[j] * scale[j]).collect(),
            category_probs,
            concept: self.label_function(index),
            class_weights: label_shift.then(|| weights.iter().map(|w| w / max).collect()),
        }
    }

    /// One row's features: the row, its standardised numbers and its levels.
    fn features(
        &self,
        s: &State,
        columns: &[String],
        rng: &mut ChaCha8Rng,
    ) -> (Map<String, Value>, Vec<f64>, Vec<usize>) {
        let o = &self.options;
        let mut row = Map::new();
        let mut z = Vec::with_capacity(o.numeric);
        for (j, name) in columns.iter().enumerate().take(o.numeric) {
            let x = s.means[j] + s.sds[j] * rng.sample::<f64, _>(StandardNormal);
            z.push((x - self.means[j]) / self.sds[j]);
            row.insert(name.clone(), Value::from(x));
        }
        let mut levels = Vec::with_capacity(o.categorical);
        for (j, p) in s.category_probs.iter().enumerate() {
            let l = sample(p, rng.random::<f64>());
            levels.push(l);
            row.insert(columns[o.numeric + j].clone(), Value::from(format!("v{l}")));
        }
        (row, z, levels)
    }
}

/// What is in effect at a row.
struct State {
    means: Vec<f64>,
    sds: Vec<f64>,
    category_probs: Vec<Vec<f64>>,
    concept: LabelFunction,
    /// Label shift: each class's keep probability (the largest is 1).
    class_weights: Option<Vec<f64>>,
}

/// The index whose cumulative probability first exceeds `u`.
fn sample(p: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, q) in p.iter().enumerate() {
        acc += q;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}

fn stream(seed: u64, n: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(n);
    rng
}

/// Validates `options` and generates the scenario's rows.
pub fn generate(options: &ScenarioOptions) -> Result<SyntheticRows> {
    Scenario::new(options)?.generate()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::ScenarioDrift;

    fn mean(v: impl Iterator<Item = f64>) -> f64 {
        let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        s / n as f64
    }

    fn std(v: &[f64]) -> f64 {
        let m = mean(v.iter().copied());
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    fn column(d: &SyntheticRows, c: &str, range: std::ops::Range<usize>) -> Vec<f64> {
        d.rows[range].iter().map(|r| r[c].as_f64().unwrap()).collect()
    }

    fn drift(kind: ScenarioDriftKind, start: usize, magnitude: f64) -> ScenarioDrift {
        ScenarioDrift { kind, start, magnitude, ..Default::default() }
    }

    #[test]
    fn same_seed_same_rows_and_drift_leaves_earlier_rows_alone() {
        let base = ScenarioOptions { rows: 300, numeric: 3, categorical: 2, classes: 3, seed: 7, ..Default::default() };
        let a = generate(&base).unwrap();
        assert_eq!(a, generate(&base).unwrap());
        assert_eq!(a.columns, ["x0", "x1", "x2", "c0", "c1"]);
        assert!(a.labels.iter().all(|&y| y < 3));
        assert!(a.probabilities.iter().all(|p| (p.iter().sum::<f64>() - 1.0).abs() < 1e-9));
        let other = generate(&ScenarioOptions { seed: 8, ..base.clone() }).unwrap();
        assert!(a.rows != other.rows);
        for kind in [ScenarioDriftKind::Covariate, ScenarioDriftKind::Label, ScenarioDriftKind::Concept] {
            let d = generate(&ScenarioOptions { drift: vec![drift(kind, 150, 2.0)], ..base.clone() }).unwrap();
            assert!(d.rows[..150] == a.rows[..150] && d.labels[..150] == a.labels[..150], "{kind}");
            // After the start: concept drift changes labels only, the others the rows.
            if kind == ScenarioDriftKind::Concept {
                assert!(d.rows[150..] == a.rows[150..] && d.labels[150..] != a.labels[150..], "{kind}");
            } else {
                assert!(d.rows[150..] != a.rows[150..], "{kind}");
            }
        }
    }

    #[test]
    fn covariate_shift_moves_means_and_scales_but_not_the_labelling_function() {
        let n = 8000;
        let opts = ScenarioOptions {
            rows: n,
            numeric: 2,
            categorical: 1,
            categories: 3,
            seed: 3,
            drift: vec![ScenarioDrift {
                kind: ScenarioDriftKind::Covariate,
                start: n / 2,
                magnitude: 1.5,
                scale: 2.0,
                columns: vec!["x0".into(), "c0".into()],
            }],
            ..Default::default()
        };
        let s = Scenario::new(&opts).unwrap();
        let d = s.generate().unwrap();
        let (before, after) = (column(&d, "x0", 0..n / 2), column(&d, "x0", n / 2..n));
        let (m0, sd0) = (s.means[0], s.sds[0]);
        assert!((mean(before.iter().copied()) - m0).abs() < 0.1 * sd0);
        assert!((mean(after.iter().copied()) - (m0 + 1.5 * sd0)).abs() < 0.1 * sd0, "mean moved by 1.5 sd");
        assert!((std(&before) / sd0 - 1.0).abs() < 0.06 && (std(&after) / sd0 - 2.0).abs() < 0.12, "sd doubled");
        // x1 was not named: it stays.
        let x1 = (column(&d, "x1", 0..n / 2), column(&d, "x1", n / 2..n));
        assert!((mean(x1.0.iter().copied()) - mean(x1.1.iter().copied())).abs() < 0.1 * s.sds[1]);
        // c0 tilts towards its last level.
        let share = |r: std::ops::Range<usize>| {
            let k = r.len() as f64;
            d.rows[r].iter().filter(|row| row["c0"] == "v2").count() as f64 / k
        };
        assert!(share(n / 2..n) > share(0..n / 2) + 0.2, "{} vs {}", share(n / 2..n), share(0..n / 2));
        // The same labelling function everywhere.
        assert_eq!(s.label_function(n - 1), s.concept);
        for (row, p) in d.rows.iter().zip(&d.probabilities) {
            let (z, l) = s.encode(row).unwrap();
            let q = s.concept.probabilities(&z, &l);
            assert!(q.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    #[test]
    fn label_shift_moves_the_priors_by_the_class_weights_and_keeps_features_given_the_class() {
        let n = 20_000;
        let m = 1.0;
        let opts = ScenarioOptions {
            rows: n,
            numeric: 2,
            categorical: 0,
            seed: 11,
            separation: 1.0,
            drift: vec![drift(ScenarioDriftKind::Label, n / 2, m)],
            ..Default::default()
        };
        let d = generate(&opts).unwrap();
        let prior1 = |r: std::ops::Range<usize>| {
            let k = r.len() as f64;
            d.labels[r].iter().filter(|&&y| y == 1).count() as f64 / k
        };
        let (p, q) = (prior1(0..n / 2), prior1(n / 2..n));
        // Weights e^-m (class 0) and e^m (class 1): odds multiplied by e^(2m).
        let expected = p * (2.0 * m).exp() / (1.0 - p + p * (2.0 * m).exp());
        assert!((q - expected).abs() < 0.03, "prior of class 1: {p} -> {q}, expected {expected}");
        assert!(q > p + 0.15);
        // P(x | y) unchanged: the class-conditional means of x0 stay.
        let cond = |r: std::ops::Range<usize>, y: u32| {
            mean(
                d.rows[r.clone()]
                    .iter()
                    .zip(&d.labels[r])
                    .filter(|(_, &l)| l == y)
                    .map(|(row, _)| row["x0"].as_f64().unwrap()),
            )
        };
        let sd = std(&column(&d, "x0", 0..n));
        for y in 0..2 {
            assert!((cond(0..n / 2, y) - cond(n / 2..n, y)).abs() < 0.08 * sd, "class {y}");
        }
    }

    #[test]
    fn concept_drift_changes_the_labelling_function_only() {
        let n = 6000;
        let opts = |m: f64| ScenarioOptions {
            rows: n,
            numeric: 3,
            categorical: 1,
            classes: 3,
            seed: 5,
            drift: vec![drift(ScenarioDriftKind::Concept, n / 2, m)],
            ..Default::default()
        };
        let s = Scenario::new(&opts(2.0)).unwrap();
        let d = s.generate().unwrap();
        let old = &s.concept;
        let new = s.label_function(n / 2);
        assert_ne!(&new, old);
        assert_eq!(&s.label_function(n / 2 - 1), old);
        // Agreement of the two functions' decisions on the drifted rows.
        let agree = |f: &LabelFunction, r: std::ops::Range<usize>| {
            let k = r.len() as f64;
            d.rows[r.clone()]
                .iter()
                .zip(&d.labels[r])
                .filter(|(row, &y)| {
                    let (z, l) = s.encode(row).unwrap();
                    argmax(&f.probabilities(&z, &l)) == y as usize
                })
                .count() as f64
                / k
        };
        let (before, after) = (agree(old, 0..n / 2), agree(old, n / 2..n));
        assert!(before > 0.7, "labels follow the function: {before}");
        // (Sampling noise on 3000 rows is about 0.01.)
        assert!(after < before - 0.1, "the old function explains the new labels worse: {before} -> {after}");
        assert!(agree(&new, n / 2..n) > 0.7, "the new function explains them");
        // The features do not move.
        let (a, b) = (column(&d, "x0", 0..n / 2), column(&d, "x0", n / 2..n));
        assert!((mean(a.iter().copied()) - mean(b.iter().copied())).abs() < 0.1 * s.sds[0]);
        // Magnitude 0 is no drift.
        let zero = Scenario::new(&opts(0.0)).unwrap();
        assert_eq!(zero.label_function(n - 1), zero.concept);
        assert_eq!(zero.generate().unwrap(), generate(&ScenarioOptions { drift: vec![], ..opts(0.0) }).unwrap());
    }

    #[test]
    fn bad_options_name_the_field() {
        let ok = ScenarioOptions::default();
        let cases: Vec<(ScenarioOptions, &str)> = vec![
            (ScenarioOptions { rows: 0, ..ok.clone() }, "rows"),
            (ScenarioOptions { numeric: 0, categorical: 0, ..ok.clone() }, "numeric"),
            (ScenarioOptions { classes: 1, ..ok.clone() }, "classes"),
            (ScenarioOptions { categories: 1, ..ok.clone() }, "categories"),
            (ScenarioOptions { separation: f64::NAN, ..ok.clone() }, "separation"),
            (
                ScenarioOptions { drift: vec![drift(ScenarioDriftKind::Label, 1000, 1.0)], ..ok.clone() },
                "drift[0].start",
            ),
            (
                ScenarioOptions {
                    drift: vec![drift(ScenarioDriftKind::Label, 0, 1.0), drift(ScenarioDriftKind::Concept, 0, -1.0)],
                    ..ok.clone()
                },
                "drift[1].magnitude",
            ),
            (
                ScenarioOptions {
                    drift: vec![ScenarioDrift { columns: vec!["x9".into()], ..Default::default() }],
                    ..ok.clone()
                },
                "drift[0].columns",
            ),
            (
                ScenarioOptions {
                    drift: vec![ScenarioDrift { kind: ScenarioDriftKind::Concept, scale: 2.0, ..Default::default() }],
                    ..ok.clone()
                },
                "drift[0].scale",
            ),
        ];
        for (o, field) in cases {
            match generate(&o).unwrap_err() {
                Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
                e => panic!("{field}: {e}"),
            }
        }
        let e = crate::types::options_from_json::<ScenarioOptions>(serde_json::json!({"rowz": 3})).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
    }

    #[test]
    fn records_are_a_tabular_jsonl_file() {
        let d = generate(&ScenarioOptions { rows: 5, ..Default::default() }).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        d.write_jsonl(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 5);
        for (l, (row, y)) in lines.iter().zip(d.rows.iter().zip(&d.labels)) {
            assert_eq!(l["label"], *y);
            assert!((l["x0"].as_f64().unwrap() - row["x0"].as_f64().unwrap()).abs() < 1e-12);
            assert_eq!(l["c0"], row["c0"]);
            assert_eq!(l.as_object().unwrap().len(), d.columns.len() + 1);
        }
    }
}
