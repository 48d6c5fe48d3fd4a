//! Stream detectors on a per-prediction signal: Page-Hinkley (a change of the mean),
//! DDM (a rise of an error rate), ADWIN (a change of the mean within an adaptive
//! window). Each has `update(x) -> bool` (true: a drift is detected at this value) and
//! a state that serialises with serde, so a monitor can persist it between ticks and
//! restarts and go on exactly where it was.
//!
//! The semantics are River's (0.26): the same parameters and defaults, the same
//! arithmetic, and a detector starts afresh on the value after a detection.
//! `core/tests/drift_stats.rs` checks the detection indices against River's on the
//! streams in `tests/fixtures/drift-refs/detectors.json`. Non-finite values are
//! ignored (the state does not change and `update` returns false).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::types::{AdwinConfig, ChangeDirection, DdmConfig, DetectorConfig, PageHinkleyConfig};

/// A running mean as River's `stats.Mean` updates it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Mean {
    n: u64,
    mean: f64,
}

impl Mean {
    fn update(&mut self, x: f64) {
        self.n += 1;
        self.mean += (1.0 / self.n as f64) * (x - self.mean);
    }
}

/// Page-Hinkley test: cumulative deviations of the values from their running mean
/// (minus / plus `delta`, faded by `alpha`); a change when one has moved more than
/// `threshold` from its extreme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    mean: Mean,
    sum_increase: f64,
    sum_decrease: f64,
    /// Lowest `sum_increase` so far (none before the first value).
    min_increase: Option<f64>,
    /// Highest `sum_decrease` so far; starts at -1 as in River.
    max_decrease: f64,
    drift: bool,
}

impl PageHinkley {
    pub fn new(config: PageHinkleyConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            mean: Mean::default(),
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: None,
            max_decrease: -1.0,
            drift: false,
        })
    }

    pub fn config(&self) -> &PageHinkleyConfig {
        &self.config
    }

    /// Values seen since the last reset.
    pub fn n(&self) -> u64 {
        self.mean.n
    }

    fn reset(&mut self) {
        *self = Self {
            config: self.config.clone(),
            mean: Mean::default(),
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: None,
            max_decrease: -1.0,
            drift: false,
        };
    }

    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        if self.drift {
            self.reset();
        }
        self.mean.update(x);
        let dev = x - self.mean.mean;
        let c = &self.config;
        self.sum_increase = c.alpha * self.sum_increase + dev - c.delta;
        self.sum_decrease = c.alpha * self.sum_decrease + dev + c.delta;
        let min_inc = self.min_increase.map_or(self.sum_increase, |m| m.min(self.sum_increase));
        self.min_increase = Some(min_inc);
        if self.sum_decrease > self.max_decrease {
            self.max_decrease = self.sum_decrease;
        }
        if self.mean.n >= c.min_instances {
            let up = self.sum_increase - min_inc > c.threshold;
            let down = self.max_decrease - self.sum_decrease > c.threshold;
            self.drift = match c.direction {
                ChangeDirection::Up => up,
                ChangeDirection::Down => down,
                ChangeDirection::Both => up || down,
            };
        }
        self.drift
    }

    pub fn drift_detected(&self) -> bool {
        self.drift
    }
}

/// Drift Detection Method (Gama et al. 2004) on a stream of errors (1.0 wrong, 0.0
/// right): with p the running error rate and s = sqrt(p (1 - p) / n), remembers where
/// p + s was lowest (p_min, s_min); a warning when p + s > p_min + 2 s_min, a drift
/// when p + s > p_min + 3 s_min (defaults), only after `warm_start` values.
///
/// As in River, an error-free warm start leaves p_min = s_min = 0, so the first error
/// after it is a drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ddm {
    config: DdmConfig,
    p: Mean,
    p_min: Option<f64>,
    s_min: Option<f64>,
    warning: bool,
    drift: bool,
}

impl Ddm {
    pub fn new(config: DdmConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, p: Mean::default(), p_min: None, s_min: None, warning: false, drift: false })
    }

    pub fn config(&self) -> &DdmConfig {
        &self.config
    }

    /// The running error rate since the last reset.
    pub fn error_rate(&self) -> f64 {
        self.p.mean
    }

    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        if self.drift {
            *self = Self {
                config: self.config.clone(),
                p: Mean::default(),
                p_min: None,
                s_min: None,
                warning: false,
                drift: false,
            };
        }
        self.p.update(x);
        let (p, n) = (self.p.mean, self.p.n as f64);
        let s = (p * (1.0 - p) / n).sqrt();
        if self.p.n > self.config.warm_start {
            let ps_min = match (self.p_min, self.s_min) {
                (Some(pm), Some(sm)) => pm + sm,
                _ => f64::INFINITY,
            };
            if p + s <= ps_min {
                self.p_min = Some(p);
                self.s_min = Some(s);
            }
            let (pm, sm) = (self.p_min.unwrap_or(p), self.s_min.unwrap_or(s));
            self.warning = p + s > pm + self.config.warning_threshold * sm;
            if p + s > pm + self.config.drift_threshold * sm {
                self.drift = true;
                self.warning = false;
            }
        }
        self.drift
    }

    pub fn drift_detected(&self) -> bool {
        self.drift
    }

    pub fn warning_detected(&self) -> bool {
        self.warning
    }
}

/// One ADWIN bucket: the sum of 2^level values and their sum of squared deviations
/// from their own mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    total: f64,
    variance: f64,
}

/// ADaptive WINdowing (Bifet and Gavaldà 2007). The window is kept as an exponential
/// histogram: level i holds up to `max_buckets` buckets of 2^i values each (oldest
/// first); when a level overflows, its two oldest buckets merge into one of the next
/// level. Every `clock` values, each boundary between buckets splits the window into
/// an older W0 and a newer W1; when |mean(W0) - mean(W1)| exceeds
/// sqrt(2 m var d') + (2/3) d' m, with d' = ln(2 ln(width) / delta) and
/// m = 1/(n0 - min + 1) + 1/(n1 - min + 1), the oldest bucket is dropped, the check
/// starts again, and a drift is reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    config: AdwinConfig,
    levels: Vec<VecDeque<Bucket>>,
    width: u64,
    total: f64,
    /// Sum of squared deviations from the mean over the window.
    variance: f64,
    tick: u64,
    drift: bool,
}

impl Adwin {
    pub fn new(config: AdwinConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, levels: vec![VecDeque::new()], width: 0, total: 0.0, variance: 0.0, tick: 0, drift: false })
    }

    pub fn config(&self) -> &AdwinConfig {
        &self.config
    }

    /// Values in the current window.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Mean of the current window (0 when it is empty).
    pub fn estimation(&self) -> f64 {
        if self.width == 0 {
            0.0
        } else {
            self.total / self.width as f64
        }
    }

    /// Sample variance of the current window.
    pub fn variance(&self) -> f64 {
        if self.width == 0 {
            0.0
        } else {
            self.variance / self.width as f64
        }
    }

    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        if self.drift {
            // River starts a new window after a detection.
            *self = Self {
                config: self.config.clone(),
                levels: vec![VecDeque::new()],
                width: 0,
                total: 0.0,
                variance: 0.0,
                tick: 0,
                drift: false,
            };
        }
        self.insert(x);
        self.drift = self.check();
        self.drift
    }

    pub fn drift_detected(&self) -> bool {
        self.drift
    }

    fn insert(&mut self, x: f64) {
        self.levels[0].push_back(Bucket { total: x, variance: 0.0 });
        self.width += 1;
        let w = self.width as f64;
        if self.width > 1 {
            let d = x - self.total / (w - 1.0);
            self.variance += (w - 1.0) * d * d / w;
        }
        self.total += x;
        // Merge overflowing levels upwards.
        let cap = self.config.max_buckets as usize;
        let mut level = 0;
        while self.levels[level].len() > cap {
            let size = (1u64 << level) as f64;
            let (Some(a), Some(b)) = (self.levels[level].pop_front(), self.levels[level].pop_front()) else {
                break;
            };
            let (mu_a, mu_b) = (a.total / size, b.total / size);
            let merged = Bucket {
                total: a.total + b.total,
                variance: a.variance + b.variance + size * 0.5 * (mu_a - mu_b) * (mu_a - mu_b),
            };
            if level + 1 == self.levels.len() {
                self.levels.push(VecDeque::new());
            }
            self.levels[level + 1].push_back(merged);
            level += 1;
        }
    }

    /// Drops the oldest bucket.
    fn drop_oldest(&mut self) {
        let top = self.levels.len() - 1;
        let Some(b) = self.levels[top].pop_front() else { return };
        let n = (1u64 << top) as f64;
        self.width -= 1u64 << top;
        let w = self.width as f64;
        self.total -= b.total;
        let (mu, mu_window) = (b.total / n, self.total / w);
        self.variance -= b.variance + n * w * (mu - mu_window) * (mu - mu_window) / (n + w);
        if self.levels[top].is_empty() && top > 0 {
            self.levels.pop();
        }
    }

    fn cut(&self, n0: f64, n1: f64, diff: f64) -> bool {
        let min = self.config.min_window_length as f64;
        let w = self.width as f64;
        let d = (2.0 * w.ln() / self.config.delta).ln();
        let m = 1.0 / (n0 - min + 1.0) + 1.0 / (n1 - min + 1.0);
        let eps = (2.0 * m * (self.variance / w) * d).sqrt() + 2.0 / 3.0 * d * m;
        diff.abs() > eps
    }

    fn check(&mut self) -> bool {
        self.tick += 1;
        if !self.tick.is_multiple_of(self.config.clock) || self.width <= self.config.grace_period {
            return false;
        }
        let min = self.config.min_window_length as f64;
        let mut detected = false;
        'scan: loop {
            let (mut n0, mut n1, mut u0, mut u1) = (0.0f64, self.width as f64, 0.0f64, self.total);
            for level in (0..self.levels.len()).rev() {
                let size = (1u64 << level) as f64;
                let count = self.levels[level].len();
                for k in 0..count {
                    let t = self.levels[level][k].total;
                    n0 += size;
                    n1 -= size;
                    u0 += t;
                    u1 -= t;
                    if level == 0 && k + 1 == count {
                        // W1 would be empty.
                        break 'scan;
                    }
                    if n1 >= min && n0 >= min && self.cut(n0, n1, u0 / n0 - u1 / n1) {
                        detected = true;
                        self.drop_oldest();
                        continue 'scan;
                    }
                }
            }
            break;
        }
        detected
    }
}

/// Any of the three detectors, as a [`DetectorConfig`] names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Detector {
    PageHinkley(PageHinkley),
    Ddm(Ddm),
    Adwin(Adwin),
}

impl Detector {
    /// A fresh detector; `invalid_config` naming the field when a setting is out of range.
    pub fn new(config: &DetectorConfig) -> Result<Self> {
        Ok(match config {
            DetectorConfig::PageHinkley(c) => Detector::PageHinkley(PageHinkley::new(c.clone())?),
            DetectorConfig::Ddm(c) => Detector::Ddm(Ddm::new(c.clone())?),
            DetectorConfig::Adwin(c) => Detector::Adwin(Adwin::new(c.clone())?),
        })
    }

    /// Feeds one value; true when a drift is detected at it.
    pub fn update(&mut self, x: f64) -> bool {
        match self {
            Detector::PageHinkley(d) => d.update(x),
            Detector::Ddm(d) => d.update(x),
            Detector::Adwin(d) => d.update(x),
        }
    }

    pub fn drift_detected(&self) -> bool {
        match self {
            Detector::PageHinkley(d) => d.drift_detected(),
            Detector::Ddm(d) => d.drift_detected(),
            Detector::Adwin(d) => d.drift_detected(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn adwin_keeps_window_statistics_exact_on_a_constant_stream() {
        let mut a = Adwin::new(AdwinConfig::default()).unwrap();
        for i in 1..=1000u64 {
            assert!(!a.update(2.5));
            assert_eq!(a.width(), i);
        }
        assert_eq!(a.estimation(), 2.5);
        assert_eq!(a.variance(), 0.0);
        // Buckets hold 1, 2, 4, ... values, at most max_buckets of each size.
        let held: u64 = a.levels.iter().enumerate().map(|(l, q)| q.len() as u64 * (1 << l)).sum();
        assert_eq!(held, 1000);
        assert!(a.levels.iter().all(|q| q.len() <= 5));
    }

    #[test]
    fn non_finite_values_change_nothing() {
        let mut d = Detector::new(&DetectorConfig::PageHinkley(Default::default())).unwrap();
        d.update(1.0);
        let before = d.clone();
        assert!(!d.update(f64::NAN));
        assert!(!d.update(f64::INFINITY));
        assert_eq!(d, before);
    }
}
