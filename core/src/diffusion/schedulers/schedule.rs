//! The numbers behind the schedulers, computed the way diffusers computes them so the
//! results agree to f32 precision: betas and their cumulative product in f32 (torch
//! keeps them in float32 and accumulates `cumprod` in double), timestep grids with
//! numpy's `linspace` / `arange` / `round` (half to even) / `interp` semantics in f64.

use super::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};

/// `torch.cumprod` of a float32 vector: accumulated in f64, each prefix rounded to f32.
fn cumprod_f32(alphas: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    alphas
        .iter()
        .map(|&a| {
            acc *= a as f64;
            acc as f32
        })
        .collect()
}

/// `np.linspace(start, stop, n)` in f64 (the last value is `stop` exactly).
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for floats (length `ceil((stop - start) / step)`,
/// values `start + i * delta` with numpy's `delta = (start + step) - start`).
pub(crate) fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let delta = (start + step) - start;
    (0..len as usize).map(|i| start + i as f64 * delta).collect()
}

/// `np.interp(x, arange(len(fp)), fp)`.
pub(crate) fn interp_index(x: f64, fp: &[f64]) -> f64 {
    let n = fp.len();
    if x <= 0.0 {
        return fp[0];
    }
    if x >= (n - 1) as f64 {
        return fp[n - 1];
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

/// The betas of `cfg` in f32, as diffusers' constructors compute them.
pub(crate) fn betas(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    match &cfg.beta_schedule {
        BetaSchedule::Linear => linspace(cfg.beta_start, cfg.beta_end, n).into_iter().map(|b| b as f32).collect(),
        BetaSchedule::ScaledLinear => linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
            .into_iter()
            .map(|b| {
                let b = b as f32;
                b * b
            })
            .collect(),
        BetaSchedule::SquaredCosCapV2 => {
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
        BetaSchedule::Trained(b) => b.iter().map(|&x| x as f32).collect(),
    }
}

/// Rescales betas to a zero terminal SNR (Lin et al. 2023, Algorithm 1), in f32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ac: Vec<f32> = cumprod_f32(&alphas).into_iter().map(f32::sqrt).collect();
    let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
    let scale = first / (first - last);
    for s in &mut sqrt_ac {
        *s = (*s - last) * scale;
    }
    let ac: Vec<f32> = sqrt_ac.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ac.len());
    out.push(1.0 - ac[0]);
    for i in 1..ac.len() {
        out.push(1.0 - ac[i] / ac[i - 1]);
    }
    out
}

/// alphas_cumprod (f32) of `cfg`.
pub(crate) fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
    let mut b = betas(cfg);
    if cfg.rescale_betas_zero_snr {
        b = rescale_zero_terminal_snr(&b);
    }
    let alphas: Vec<f32> = b.iter().map(|b| 1.0 - b).collect();
    cumprod_f32(&alphas)
}

/// The inference timesteps of DDPM, DDIM (integers) and Euler (f32 values, not rounded
/// for `linspace`), descending.
pub(crate) fn timesteps(cfg: &SchedulerConfig, n: usize, integer: bool) -> Vec<f64> {
    let t = cfg.num_train_timesteps;
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => {
            let v = linspace(0.0, (t - 1) as f64, n);
            v.into_iter().rev().map(|x| if integer { x.round_ties_even() } else { x as f32 as f64 }).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n).rev().map(|i| (i * ratio + cfg.steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            arange(t as f64, 0.0, -ratio).into_iter().map(|x| x.round_ties_even() - 1.0).collect()
        }
    }
}

/// DPM-Solver's timesteps: `n + 1` points with the last dropped, up to `last` (the
/// clipped end of the training range).
pub(crate) fn dpm_timesteps(cfg: &SchedulerConfig, n: usize, last: usize) -> Vec<f64> {
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => {
            let v = linspace(0.0, last as f64 - 1.0, n + 1);
            v.into_iter().rev().take(n).map(f64::round_ties_even).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n).rev().map(|i| (i * ratio + cfg.steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = cfg.num_train_timesteps as f64 / n as f64;
            arange(last as f64, 0.0, -ratio).into_iter().map(|x| x.round_ties_even() - 1.0).collect()
        }
    }
}

/// Karras et al.'s sigmas (rho = 7) from `max` down to `min`, `n` of them.
pub(crate) fn karras(min: f64, max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// The (fractional) training timestep of `sigma`: interpolates in log-sigma between
/// the two neighbouring training sigmas (`log_sigmas` ascending with the timestep).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // numpy: cumsum(dists >= 0).argmax(), i.e. the first index where the running count
    // of `log_sigma >= log_sigmas[i]` reaches its maximum; clipped to len - 2.
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_grids() {
        assert_eq!(linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(arange(1000.0, 0.0, -250.0), vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(arange(10.0, 0.0, -4.0).len(), 3);
        assert!((interp_index(1.5, &[0.0, 2.0, 6.0]) - 4.0).abs() < 1e-12);
        assert_eq!(interp_index(7.0, &[0.0, 2.0, 6.0]), 6.0);
        // 0.5 and 2.5 round to even, as numpy does
        assert_eq!(0.5f64.round_ties_even(), 0.0);
        assert_eq!(2.5f64.round_ties_even(), 2.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_grid() {
        let log_sigmas: Vec<f64> = (0..10).map(|i| (i as f64 * 0.5).ln_1p()).collect();
        let s = (3.0f64 * 0.5).ln_1p().exp();
        assert!((sigma_to_t(s, &log_sigmas) - 3.0).abs() < 1e-9);
        assert_eq!(sigma_to_t(1e-20, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(1e9, &log_sigmas), 9.0);
    }
}
