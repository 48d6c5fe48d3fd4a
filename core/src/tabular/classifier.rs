//! Tabular classifiers on candle: multinomial logistic regression and a small MLP
//! (ReLU hidden layers), with the [`Preprocessor`] and [`LabelEncoder`] stored beside
//! the weights.
//!
//! Objective (as scikit-learn's, so that `c` and `alpha` mean what they mean there):
//! - logistic regression: `sum_i w_i ce_i / S + ||W||^2 / (2 c S)` with `w_i` the
//!   sample's class weight and `S = sum_i w_i` (scikit-learn's `LogisticRegression`
//!   objective divided by `c S`); biases are not penalised.
//! - MLP: per batch `sum_i w_i ce_i / S + alpha ||W||^2 / (2 n)` (`MLPClassifier`'s).
//!
//! Optimisers (gradients from candle's backprop, in f64):
//! - `lbfgs` (the default for logistic regression): full-batch L-BFGS (memory 10,
//!   backtracking Armijo line search), stopping when the largest gradient component is
//!   at most `tol`, when the relative decrease falls under 64 machine epsilons (as
//!   scikit-learn's lbfgs call), or after `max_iter` iterations. On the convex logistic
//!   objective this converges to the same optimum as scikit-learn, which the iris
//!   probability parity test checks.
//! - `adam` (the default for the MLP): seeded mini-batches (`batch_size`, default
//!   `min(200, n)`), Adam (0.9, 0.999, 1e-8). Without a validation split it stops when
//!   the epoch loss has not improved by `tol` for `patience` epochs; with
//!   `validation_fraction > 0` a stratified seeded share of the rows is held out, and
//!   training stops when the validation loss has not improved by `tol` for `patience`
//!   epochs, restoring the best epoch's weights.
//!
//! [`Classifier::learn`] applies one SGD step on new rows (River's `learn_one` /
//! `learn_many`), with the L2 strength of the fit spread over its training rows
//! (`1 / (c n)` resp. `alpha / n` per step, times `||W||^2 / 2`).
//!
//! Everything is deterministic for a seed: weight initialisation (Glorot uniform as
//! scikit-learn's MLP, zeros for logistic regression), the validation split and the
//! batch order come from a ChaCha8 generator seeded with `seed`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::preprocess::{LabelEncoder, PreprocessOptions, Preprocessor};
use crate::error::{Error, IoResultExt, Location, Result};

/// The version of the classifier's JSON config.
pub const CLASSIFIER_FORMAT: u32 = 1;
/// File of the weights in a saved classifier's directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File of the config (preprocessing, classes, shapes) in a saved classifier's directory.
pub const CONFIG_FILE: &str = "classifier.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    LogisticRegression,
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Lbfgs,
    Adam,
}

/// Per-class weights of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every sample weighs 1.
    #[default]
    None,
    /// `n / (classes * count(class))`, as scikit-learn's `"balanced"`.
    Balanced,
}

/// How [`Classifier::fit`] trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitOptions {
    pub kind: ClassifierKind,
    /// Hidden layer sizes of the MLP (one or two).
    pub hidden: Vec<usize>,
    /// Inverse L2 strength of logistic regression (scikit-learn's `C`).
    pub c: f64,
    /// L2 strength of the MLP (scikit-learn's `alpha`).
    pub alpha: f64,
    /// Default: `lbfgs` for logistic regression, `adam` for the MLP.
    pub optimizer: Option<Optimizer>,
    /// L-BFGS iterations or Adam epochs at most.
    pub max_iter: usize,
    /// Adam mini-batch size; default `min(200, n)`.
    pub batch_size: Option<usize>,
    /// Adam step size.
    pub learning_rate: f64,
    /// L-BFGS: largest gradient component at convergence; Adam: the improvement of the
    /// (validation) loss that resets the patience.
    pub tol: f64,
    pub class_weight: ClassWeight,
    /// Share of the rows held out (stratified) for early stopping; 0 for none. Adam only.
    pub validation_fraction: f64,
    /// Epochs without improvement before stopping (Adam).
    pub patience: usize,
    pub seed: u64,
    /// Step size of [`Classifier::learn`].
    pub sgd_learning_rate: f64,
    pub preprocess: PreprocessOptions,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            kind: ClassifierKind::LogisticRegression,
            hidden: vec![32],
            c: 1.0,
            alpha: 1e-4,
            optimizer: None,
            max_iter: 1000,
            batch_size: None,
            learning_rate: 1e-3,
            tol: 1e-4,
            class_weight: ClassWeight::None,
            validation_fraction: 0.0,
            patience: 10,
            seed: 0,
            sgd_learning_rate: 0.01,
            preprocess: PreprocessOptions::default(),
        }
    }
}

/// One L-BFGS iteration or Adam epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// The training objective (with the L2 term), averaged over the epoch's batches.
    pub loss: f64,
    /// Validation cross-entropy (class-weighted, without L2), with a validation split.
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

/// What [`Classifier::fit`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitHistory {
    pub optimizer: Optimizer,
    pub epochs: Vec<EpochStats>,
    /// The epoch whose weights were kept (the last one without early stopping).
    pub best_epoch: usize,
    /// Stopped because the validation loss stopped improving.
    pub stopped_early: bool,
    /// Reached the tolerance (rather than `max_iter`).
    pub converged: bool,
    pub train_rows: usize,
    pub validation_rows: usize,
}

/// Everything of a classifier but its weights (saved as [`CONFIG_FILE`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// [`CLASSIFIER_FORMAT`].
    pub format: u32,
    pub kind: ClassifierKind,
    /// Layer widths, input to output (`[features, hidden.., classes]`).
    pub layers: Vec<usize>,
    pub preprocess: Preprocessor,
    pub labels: LabelEncoder,
    /// Loss weight of each class (in class order).
    pub class_weights: Vec<f64>,
    /// L2 coefficient of a [`Classifier::learn`] step (`l2 / 2 * ||W||^2`).
    pub learn_l2: f64,
    pub sgd_learning_rate: f64,
}

/// Class probabilities of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Probabilities {
    /// One row per input row, one column per class (in [`LabelEncoder::classes`] order).
    pub rows: Vec<Vec<f64>>,
    /// Per categorical column, values not seen in training (encoded as all zeros).
    pub unseen: BTreeMap<String, u64>,
}

/// A trained tabular classifier.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    /// `[w0, b0, w1, b1, ..]`, weights `[out, in]`, f64 on the CPU.
    vars: Vec<Var>,
}

/// A feature matrix with its labels, one-hot targets and sample weights.
struct Batch {
    x: Tensor,
    onehot: Tensor,
    weights: Tensor,
    weight_sum: f64,
    labels: Vec<usize>,
}

fn batch(data: &[f64], width: usize, labels: &[usize], idx: &[usize], class_weights: &[f64]) -> Result<Batch> {
    let k = class_weights.len();
    let mut x = Vec::with_capacity(idx.len() * width);
    let mut onehot = vec![0.0; idx.len() * k];
    let mut w = Vec::with_capacity(idx.len());
    let mut ys = Vec::with_capacity(idx.len());
    for (r, &i) in idx.iter().enumerate() {
        x.extend_from_slice(&data[i * width..(i + 1) * width]);
        onehot[r * k + labels[i]] = 1.0;
        w.push(class_weights[labels[i]]);
        ys.push(labels[i]);
    }
    let n = idx.len();
    Ok(Batch {
        x: Tensor::from_vec(x, (n, width), &Device::Cpu)?,
        onehot: Tensor::from_vec(onehot, (n, k), &Device::Cpu)?,
        weight_sum: w.iter().sum(),
        weights: Tensor::from_vec(w, n, &Device::Cpu)?,
        labels: ys,
    })
}

fn check_options(o: &FitOptions) -> Result<Optimizer> {
    let optimizer = o.optimizer.unwrap_or(match o.kind {
        ClassifierKind::LogisticRegression => Optimizer::Lbfgs,
        ClassifierKind::Mlp => Optimizer::Adam,
    });
    let positive = |field: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(Error::config(field, format!("must be a positive number, got {v}")))
        }
    };
    positive("c", o.c)?;
    positive("learning_rate", o.learning_rate)?;
    positive("sgd_learning_rate", o.sgd_learning_rate)?;
    if !(o.alpha.is_finite() && o.alpha >= 0.0) {
        return Err(Error::config("alpha", format!("must be at least 0, got {}", o.alpha)));
    }
    if !(o.tol.is_finite() && o.tol >= 0.0) {
        return Err(Error::config("tol", format!("must be at least 0, got {}", o.tol)));
    }
    if o.max_iter == 0 {
        return Err(Error::config("max_iter", "must be at least 1"));
    }
    if o.batch_size == Some(0) {
        return Err(Error::config("batch_size", "must be at least 1"));
    }
    if o.kind == ClassifierKind::Mlp && (o.hidden.is_empty() || o.hidden.len() > 2 || o.hidden.contains(&0)) {
        return Err(Error::config("hidden", "an MLP has one or two hidden layers of at least 1 unit"));
    }
    if !(0.0..1.0).contains(&o.validation_fraction) {
        return Err(Error::config("validation_fraction", "must be in [0, 1)"));
    }
    if o.validation_fraction > 0.0 && optimizer == Optimizer::Lbfgs {
        return Err(Error::config("validation_fraction", "early stopping needs the adam optimizer"));
    }
    if o.validation_fraction > 0.0 && o.patience == 0 {
        return Err(Error::config("patience", "must be at least 1 with a validation split"));
    }
    Ok(optimizer)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Classifier {
    /// Fits a preprocessor, a label encoder and a model on `rows` / `labels` (one label
    /// per row). Nothing is returned half: an error leaves no model.
    pub fn fit(rows: &[Map<String, Value>], labels: &[Value], opts: &FitOptions) -> Result<(Classifier, FitHistory)> {
        let optimizer = check_options(opts)?;
        if rows.len() != labels.len() {
            return Err(Error::data(
                Location::default().field("label"),
                format!("{} rows but {} labels", rows.len(), labels.len()),
            ));
        }
        let encoder = LabelEncoder::fit(labels)?;
        let y = encoder.encode(labels)?;
        let preprocess = Preprocessor::fit(rows, &opts.preprocess)?;
        let t = preprocess.transform(rows)?;
        let k = encoder.len();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);

        // Stratified validation split.
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, &c) in y.iter().enumerate() {
            by_class[c].push(i);
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for idx in &mut by_class {
            idx.shuffle(&mut rng);
            let take = if opts.validation_fraction > 0.0 {
                ((opts.validation_fraction * idx.len() as f64).round() as usize).min(idx.len().saturating_sub(1))
            } else {
                0
            };
            val.extend_from_slice(&idx[..take]);
            train.extend_from_slice(&idx[take..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        if opts.validation_fraction > 0.0 && val.is_empty() {
            return Err(Error::config("validation_fraction", format!("holds out no row of {}", rows.len())));
        }

        let mut counts = vec![0usize; k];
        for &i in &train {
            counts[y[i]] += 1;
        }
        let class_weights: Vec<f64> = match opts.class_weight {
            ClassWeight::None => vec![1.0; k],
            ClassWeight::Balanced => {
                counts.iter().map(|&n| if n == 0 { 0.0 } else { train.len() as f64 / (k as f64 * n as f64) }).collect()
            }
        };
        let mut layers = vec![t.width];
        if opts.kind == ClassifierKind::Mlp {
            layers.extend_from_slice(&opts.hidden);
        }
        layers.push(k);
        let n_train = train.len() as f64;
        let learn_l2 = match opts.kind {
            ClassifierKind::LogisticRegression => 1.0 / (opts.c * n_train),
            ClassifierKind::Mlp => opts.alpha / n_train,
        };
        let config = ClassifierConfig {
            format: CLASSIFIER_FORMAT,
            kind: opts.kind,
            layers: layers.clone(),
            preprocess,
            labels: encoder,
            class_weights: class_weights.clone(),
            learn_l2,
            sgd_learning_rate: opts.sgd_learning_rate,
        };
        // Initial weights: zeros (logistic), Glorot uniform (MLP).
        let mut vars = Vec::new();
        for l in 0..layers.len() - 1 {
            let (fan_in, fan_out) = (layers[l], layers[l + 1]);
            let w: Vec<f64> = match opts.kind {
                ClassifierKind::LogisticRegression => vec![0.0; fan_in * fan_out],
                ClassifierKind::Mlp => {
                    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    (0..fan_in * fan_out).map(|_| rng.random_range(-bound..bound)).collect()
                }
            };
            let b: Vec<f64> = match opts.kind {
                ClassifierKind::LogisticRegression => vec![0.0; fan_out],
                ClassifierKind::Mlp => {
                    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    (0..fan_out).map(|_| rng.random_range(-bound..bound)).collect()
                }
            };
            vars.push(Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), &Device::Cpu)?)?);
            vars.push(Var::from_tensor(&Tensor::from_vec(b, fan_out, &Device::Cpu)?)?);
        }
        let mut model = Classifier { config, vars };
        let history = match optimizer {
            Optimizer::Lbfgs => model.fit_lbfgs(&t.data, t.width, &y, &train, opts)?,
            Optimizer::Adam => model.fit_adam(&t.data, t.width, &y, &train, &val, opts, &mut rng)?,
        };
        Ok((model, history))
    }

    /// L2 coefficient `lambda` of `lambda / 2 * ||W||^2` for a batch.
    fn l2(&self, opts: &FitOptions, b: &Batch) -> f64 {
        match self.config.kind {
            ClassifierKind::LogisticRegression => 1.0 / (opts.c * b.weight_sum.max(f64::MIN_POSITIVE)),
            ClassifierKind::Mlp => opts.alpha / b.labels.len() as f64,
        }
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let n_layers = self.vars.len() / 2;
        let mut h = x.clone();
        for l in 0..n_layers {
            h = h.matmul(&self.vars[2 * l].as_tensor().t()?)?.broadcast_add(self.vars[2 * l + 1].as_tensor())?;
            if l + 1 < n_layers {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    fn log_probs(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.logits(x)?;
        let m = z.max_keepdim(1)?.detach();
        let shifted = z.broadcast_sub(&m)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        Ok(shifted.broadcast_sub(&lse)?)
    }

    /// Weighted cross-entropy `sum_i w_i ce_i / S` (a scalar tensor).
    fn cross_entropy(&self, b: &Batch) -> Result<Tensor> {
        let ce = (self.log_probs(&b.x)? * &b.onehot)?.sum(1)?.neg()?;
        Ok(((ce * &b.weights)?.sum_all()? / b.weight_sum.max(f64::MIN_POSITIVE))?)
    }

    /// The objective with L2 coefficient `l2` and its gradient, flattened.
    fn value_and_grad(&self, b: &Batch, l2: f64) -> Result<(f64, Vec<f64>)> {
        let mut loss = self.cross_entropy(b)?;
        for l in 0..self.vars.len() / 2 {
            loss = (loss + (self.vars[2 * l].as_tensor().sqr()?.sum_all()? * (l2 / 2.0))?)?;
        }
        let grads = loss.backward()?;
        let mut g = Vec::new();
        for v in &self.vars {
            match grads.get(v.as_tensor()) {
                Some(t) => g.extend(t.flatten_all()?.to_vec1::<f64>()?),
                None => g.extend(std::iter::repeat_n(0.0, v.elem_count())),
            }
        }
        Ok((loss.to_scalar::<f64>()?, g))
    }

    fn flat(&self) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for v in &self.vars {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(out)
    }

    fn set_flat(&self, p: &[f64]) -> Result<()> {
        let mut at = 0;
        for v in &self.vars {
            let n = v.elem_count();
            v.set(&Tensor::from_slice(&p[at..at + n], v.shape(), &Device::Cpu)?)?;
            at += n;
        }
        Ok(())
    }

    fn fit_lbfgs(
        &mut self,
        data: &[f64],
        width: usize,
        y: &[usize],
        train: &[usize],
        opts: &FitOptions,
    ) -> Result<FitHistory> {
        const MEMORY: usize = 10;
        let b = batch(data, width, y, train, &self.config.class_weights)?;
        let l2 = self.l2(opts, &b);
        let mut x = self.flat()?;
        let (mut f, mut g) = self.value_and_grad(&b, l2)?;
        let mut mem: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new(); // (s, y, 1 / s.y)
        let mut epochs = Vec::new();
        let mut converged = false;
        for it in 1..=opts.max_iter {
            if g.iter().all(|v| v.abs() <= opts.tol) {
                converged = true;
                break;
            }
            // Two-loop recursion: d = -H g.
            let mut q = g.clone();
            let mut alphas = Vec::with_capacity(mem.len());
            for (s, yv, rho) in mem.iter().rev() {
                let a = rho * dot(s, &q);
                q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
                alphas.push(a);
            }
            if let Some((s, yv, _)) = mem.last() {
                let gamma = dot(s, yv) / dot(yv, yv);
                q.iter_mut().for_each(|qi| *qi *= gamma);
            }
            for ((s, yv, rho), a) in mem.iter().zip(alphas.iter().rev()) {
                let beta = rho * dot(yv, &q);
                q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - beta) * si);
            }
            let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
            let mut slope = dot(&g, &d);
            if slope >= 0.0 {
                mem.clear();
                d = g.iter().map(|v| -v).collect();
                slope = dot(&g, &d);
            }
            let mut step = if mem.is_empty() { (1.0 / g.iter().map(|v| v.abs()).sum::<f64>()).min(1.0) } else { 1.0 };
            let mut accepted = None;
            for _ in 0..50 {
                let xn: Vec<f64> = x.iter().zip(&d).map(|(xi, di)| xi + step * di).collect();
                self.set_flat(&xn)?;
                let (fn_, gn) = self.value_and_grad(&b, l2)?;
                if fn_.is_finite() && fn_ <= f + 1e-4 * step * slope {
                    accepted = Some((xn, fn_, gn));
                    break;
                }
                step *= 0.5;
            }
            let Some((xn, fn_, gn)) = accepted else {
                // No decrease along the direction: the optimum to machine precision.
                self.set_flat(&x)?;
                converged = true;
                break;
            };
            let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
            let yv: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &yv);
            if sy > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() {
                if mem.len() == MEMORY {
                    mem.remove(0);
                }
                mem.push((s, yv, 1.0 / sy));
            }
            let decrease = (f - fn_) / f.abs().max(fn_.abs()).max(1.0);
            x = xn;
            f = fn_;
            g = gn;
            epochs.push(EpochStats { epoch: it, loss: f, val_loss: None, val_accuracy: None });
            if decrease <= 64.0 * f64::EPSILON {
                converged = true;
                break;
            }
        }
        self.set_flat(&x)?;
        Ok(FitHistory {
            optimizer: Optimizer::Lbfgs,
            best_epoch: epochs.len(),
            epochs,
            stopped_early: false,
            converged,
            train_rows: train.len(),
            validation_rows: 0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fit_adam(
        &mut self,
        data: &[f64],
        width: usize,
        y: &[usize],
        train: &[usize],
        val: &[usize],
        opts: &FitOptions,
        rng: &mut ChaCha8Rng,
    ) -> Result<FitHistory> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let bs = opts.batch_size.unwrap_or(200).min(train.len()).max(1);
        let mut p = self.flat()?;
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        let mut t = 0i32;
        let val_batch =
            if val.is_empty() { None } else { Some(batch(data, width, y, val, &self.config.class_weights)?) };
        let mut order = train.to_vec();
        let mut epochs = Vec::new();
        let mut best = f64::INFINITY;
        let mut best_params = p.clone();
        let mut best_epoch = 0;
        let mut since = 0;
        let (mut stopped_early, mut converged) = (false, false);
        for epoch in 1..=opts.max_iter {
            order.shuffle(rng);
            let mut total = 0.0;
            for chunk in order.chunks(bs) {
                let b = batch(data, width, y, chunk, &self.config.class_weights)?;
                let l2 = self.l2(opts, &b);
                let (loss, g) = self.value_and_grad(&b, l2)?;
                if !loss.is_finite() {
                    return Err(Error::Compute(format!("the training loss became {loss} at epoch {epoch}")));
                }
                total += loss * chunk.len() as f64;
                t += 1;
                let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= opts.learning_rate * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                }
                self.set_flat(&p)?;
            }
            let loss = total / order.len() as f64;
            let (val_loss, val_accuracy) = match &val_batch {
                Some(vb) => {
                    let vl = self.cross_entropy(vb)?.to_scalar::<f64>()?;
                    let pred = self.log_probs(&vb.x)?.argmax(1)?.to_vec1::<u32>()?;
                    let hits = pred.iter().zip(&vb.labels).filter(|(a, b)| **a as usize == **b).count();
                    (Some(vl), Some(hits as f64 / vb.labels.len() as f64))
                }
                None => (None, None),
            };
            epochs.push(EpochStats { epoch, loss, val_loss, val_accuracy });
            let watched = val_loss.unwrap_or(loss);
            if watched < best - opts.tol {
                since = 0;
            } else {
                since += 1;
            }
            if watched < best {
                best = watched;
                best_epoch = epoch;
                if val_batch.is_some() {
                    best_params.clone_from(&p);
                }
            }
            if since >= opts.patience.max(1) {
                if val_batch.is_some() {
                    stopped_early = true;
                } else {
                    converged = true;
                }
                break;
            }
        }
        if val_batch.is_some() {
            self.set_flat(&best_params)?;
        } else {
            best_epoch = epochs.len();
        }
        Ok(FitHistory {
            optimizer: Optimizer::Adam,
            epochs,
            best_epoch,
            stopped_early,
            converged,
            train_rows: train.len(),
            validation_rows: val.len(),
        })
    }

    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// Sets the step size of [`Classifier::learn`] (saved with the config).
    pub fn set_sgd_learning_rate(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::config("learning_rate", format!("must be positive and finite, got {lr}")));
        }
        self.config.sgd_learning_rate = lr;
        Ok(())
    }

    /// The classes, in the order of [`Probabilities::rows`]' columns.
    pub fn classes(&self) -> &[Value] {
        &self.config.labels.classes
    }

    /// Class probabilities of `rows` (`invalid_data` naming the record and column for a
    /// missing, unknown or mistyped column).
    pub fn predict_proba(&self, rows: &[Map<String, Value>]) -> Result<Probabilities> {
        let t = self.config.preprocess.transform(rows)?;
        if t.rows == 0 {
            return Ok(Probabilities { rows: Vec::new(), unseen: t.unseen });
        }
        let x = Tensor::from_vec(t.data, (t.rows, t.width), &Device::Cpu)?;
        let p = self.log_probs(&x)?.exp()?.to_vec2::<f64>()?;
        Ok(Probabilities { rows: p, unseen: t.unseen })
    }

    /// The most probable class of each row (the first in class order on a tie).
    pub fn predict(&self, rows: &[Map<String, Value>]) -> Result<Vec<Value>> {
        let p = self.predict_proba(rows)?;
        Ok(p.rows
            .iter()
            .map(|r| {
                let mut best = 0;
                for (i, v) in r.iter().enumerate() {
                    if *v > r[best] {
                        best = i;
                    }
                }
                self.config.labels.classes[best].clone()
            })
            .collect())
    }

    /// One SGD step on `rows` / `labels` (River's `learn_many`; one row is `learn_one`),
    /// with the fit's class weights and L2 (see the module doc). Returns the objective
    /// before the step. A bad row or a class the model does not have is `invalid_data`
    /// and changes nothing.
    pub fn learn(&mut self, rows: &[Map<String, Value>], labels: &[Value]) -> Result<f64> {
        if rows.len() != labels.len() {
            return Err(Error::data(
                Location::default().field("label"),
                format!("{} rows but {} labels", rows.len(), labels.len()),
            ));
        }
        if rows.is_empty() {
            return Err(Error::data(Location::default(), "no rows to learn from"));
        }
        let y = self.config.labels.encode(labels)?;
        let t = self.config.preprocess.transform(rows)?;
        let idx: Vec<usize> = (0..rows.len()).collect();
        let b = batch(&t.data, t.width, &y, &idx, &self.config.class_weights)?;
        if b.weight_sum <= 0.0 {
            return Ok(0.0); // only classes of weight 0
        }
        let (loss, g) = self.value_and_grad(&b, self.config.learn_l2)?;
        if !loss.is_finite() {
            return Err(Error::Compute(format!("the loss of the new rows is {loss}")));
        }
        let lr = self.config.sgd_learning_rate;
        let p: Vec<f64> = self.flat()?.iter().zip(&g).map(|(p, g)| p - lr * g).collect();
        self.set_flat(&p)?;
        Ok(loss)
    }

    fn tensor_names(l: usize) -> (String, String) {
        (format!("layers.{l}.weight"), format!("layers.{l}.bias"))
    }

    /// Writes [`WEIGHTS_FILE`] (safetensors, f64) and [`CONFIG_FILE`] into `dir`
    /// (created if needed), each crash-safely.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_path(dir)?;
        let mut tensors = HashMap::new();
        for l in 0..self.vars.len() / 2 {
            let (w, b) = Self::tensor_names(l);
            tensors.insert(w, self.vars[2 * l].as_tensor().clone());
            tensors.insert(b, self.vars[2 * l + 1].as_tensor().clone());
        }
        crate::models::write_safetensors(&tensors, &dir.join(WEIGHTS_FILE))?;
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| Error::Internal(e.to_string()))?;
        crate::util::write_atomic(&dir.join(CONFIG_FILE), &json)
    }

    /// Reads what [`Classifier::save`] wrote. A config or weights file that does not
    /// parse, or tensors of other shapes than the config's layers, are `invalid_data`
    /// naming the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Classifier> {
        let dir = dir.as_ref();
        let cpath = dir.join(CONFIG_FILE);
        let text = std::fs::read(&cpath).with_path(&cpath)?;
        let config: ClassifierConfig =
            serde_json::from_slice(&text).map_err(|e| Error::data(Location::file(&cpath), e.to_string()))?;
        if config.format != CLASSIFIER_FORMAT {
            return Err(Error::data(
                Location::file(&cpath).field("format"),
                format!("format {} is not {CLASSIFIER_FORMAT}", config.format),
            ));
        }
        let k = config.labels.len();
        if config.layers.len() < 2
            || config.layers.first() != Some(&config.preprocess.width())
            || config.layers.last() != Some(&k)
            || config.class_weights.len() != k
        {
            return Err(Error::data(
                Location::file(&cpath).field("layers"),
                "the layers do not match the preprocessing, the classes or the class weights",
            ));
        }
        let wpath = dir.join(WEIGHTS_FILE);
        if !wpath.exists() {
            return Err(Error::FileNotFound { path: wpath });
        }
        let mut tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
            .map_err(|e| Error::data(Location::file(&wpath), e.to_string()))?;
        let mut vars = Vec::new();
        for l in 0..config.layers.len() - 1 {
            let (wn, bn) = Self::tensor_names(l);
            for (name, shape) in [(wn, vec![config.layers[l + 1], config.layers[l]]), (bn, vec![config.layers[l + 1]])]
            {
                let t = tensors
                    .remove(&name)
                    .ok_or_else(|| Error::data(Location::file(&wpath).field(name.clone()), "the tensor is missing"))?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::data(
                        Location::file(&wpath).field(name),
                        format!("shape {:?}, the config needs {shape:?}", t.dims()),
                    ));
                }
                vars.push(Var::from_tensor(&t.to_dtype(DType::F64)?)?);
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::data(Location::file(&wpath).field(extra.clone()), "a tensor the config does not have"));
        }
        Ok(Classifier { config, vars })
    }
}
