//! Noise schedulers of diffusers, configured from `scheduler/scheduler_config.json`:
//! DDPM (the training noise schedule, and ancestral sampling), DDIM, Euler, Euler
//! ancestral and DPM-Solver++ (2M, and its SDE variant).
//!
//! Sampling loop, as diffusers' pipelines run it:
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::diffusion::{Scheduler, SchedulerKind};
//! use candle_core::{Device, Tensor};
//! let mut s = Scheduler::from_file("sd/scheduler/scheduler_config.json", Some(SchedulerKind::EulerDiscrete))?;
//! s.set_timesteps(20)?;
//! let mut x = (Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &Device::Cpu)? * s.init_noise_sigma())?;
//! for t in s.timesteps().to_vec() {
//!     let input = s.scale_model_input(&x, t)?;
//!     let eps = input.zeros_like()?; // the UNet's prediction at (input, t) goes here
//!     x = s.step(&eps, t, &x, None)?;
//! }
//! # Ok(()) }
//! ```
//!
//! Training uses [`Scheduler::add_noise`], [`Scheduler::target`] and
//! [`Scheduler::min_snr_weights`] over integer training timesteps.
//!
//! Timesteps are `f64` throughout: DDPM, DDIM and DPM-Solver use whole numbers, Euler's
//! `linspace` grid has fractional ones (as in diffusers, where they are float32).
//! The numbers follow diffusers' own arithmetic (float32 betas and cumulative
//! products, numpy's grids), so sigmas and steps agree with it to float32 precision.

mod config;
mod schedule;

use std::path::Path;

use candle_core::{DType, Tensor};

pub use config::{
    BetaSchedule, DpmAlgorithm, DpmSolverType, FinalSigmas, PredictionType, SchedulerConfig, SchedulerKind,
    TimestepSpacing, VarianceType,
};

use crate::error::{Error, Result};

/// A scheduler of one of the supported kinds, with its sampling state (the step
/// index, DPM-Solver's previous model outputs).
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// DDIM: alpha product "before" the first training timestep.
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// Euler, DPM-Solver: one sigma per timestep plus the final one.
    sigmas: Vec<f32>,
    num_inference_steps: Option<usize>,
    step_index: Option<usize>,
    /// DPM-Solver: the converted outputs (x0 estimates) of the last `solver_order` steps.
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
}

fn sigma_of(ac: f32) -> f32 {
    ((1.0 - ac) / ac).sqrt()
}

/// `x * c` with the factor rounded to the tensor's precision first.
fn mul(x: &Tensor, c: f64) -> Result<Tensor> {
    Ok(x.affine(c, 0.0)?)
}

/// `x / c` as a true division in the tensor's dtype (not a multiplication by 1/c).
fn div(x: &Tensor, c: f64) -> Result<Tensor> {
    let c = Tensor::new(c as f32, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&c)?)
}

impl Scheduler {
    /// A scheduler from a resolved config. Sampling needs [`Scheduler::set_timesteps`]
    /// first (DDPM can also step through all training timesteps without it).
    pub fn new(cfg: SchedulerConfig) -> Result<Self> {
        if cfg.num_train_timesteps < 2 {
            return Err(Error::config("num_train_timesteps", "must be at least 2"));
        }
        let mut alphas_cumprod = schedule::alphas_cumprod(&cfg);
        let zero_snr_fix = cfg.rescale_betas_zero_snr
            && matches!(
                cfg.kind,
                SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral | SchedulerKind::DpmSolverMultistep
            );
        if zero_snr_fix {
            // diffusers: keeps the last sigma finite
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        let t = cfg.num_train_timesteps;
        let mut s = Self {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: (0..t).rev().map(|i| i as f64).collect(),
            sigmas: Vec::new(),
            num_inference_steps: None,
            step_index: None,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            cfg,
        };
        if matches!(s.cfg.kind, SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral) {
            s.sigmas = s.alphas_cumprod.iter().rev().map(|&a| sigma_of(a)).chain([0.0]).collect();
        }
        Ok(s)
    }

    /// Reads `scheduler_config.json`; `kind` overrides its `_class_name` (see
    /// [`SchedulerConfig::from_file`]).
    pub fn from_file(path: impl AsRef<Path>, kind: Option<SchedulerKind>) -> Result<Self> {
        Self::new(SchedulerConfig::from_file(path, kind)?)
    }

    /// The scheduler of a diffusers pipeline directory (`<dir>/scheduler/scheduler_config.json`).
    pub fn from_pipeline_dir(dir: impl AsRef<Path>, kind: Option<SchedulerKind>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("scheduler").join("scheduler_config.json"), kind)
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn kind(&self) -> SchedulerKind {
        self.cfg.kind
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.cfg.prediction_type
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.cfg.num_train_timesteps
    }

    /// DDIM's eta (0: deterministic). Values > 0 need noise at every step.
    pub fn set_eta(&mut self, eta: f64) -> Result<()> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(Error::config("eta", format!("must be a number >= 0, got {eta}")));
        }
        self.cfg.eta = eta;
        Ok(())
    }

    /// The cumulative products of (1 - beta) over the training timesteps.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The sampling timesteps, in the order to run them.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Euler and DPM-Solver: the sigma of each timestep followed by the final sigma
    /// (empty for DDPM and DDIM).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Whether [`Scheduler::step`] needs `noise` at this configuration (DDPM, Euler
    /// ancestral, SDE-DPM-Solver++, DDIM with eta > 0).
    pub fn is_stochastic(&self) -> bool {
        match self.cfg.kind {
            SchedulerKind::Ddpm | SchedulerKind::EulerAncestral => true,
            SchedulerKind::Ddim => self.cfg.eta > 0.0,
            SchedulerKind::EulerDiscrete => false,
            SchedulerKind::DpmSolverMultistep => self.cfg.algorithm_type == DpmAlgorithm::SdeDpmSolverPlusPlus,
        }
    }

    /// Whether diffusers' `step` at timestep `t` draws noise from the generator: DDPM when
    /// `t > 0`, Euler ancestral, SDE-DPM-Solver++ and DDIM with eta > 0 at every step
    /// (Euler ancestral even where its noise scale is 0). [`Scheduler::step`] needs
    /// `noise` then and ignores it otherwise; a sampler that draws noise exactly then
    /// consumes its generator as diffusers does.
    pub fn draws_noise(&self, t: f64) -> bool {
        match self.cfg.kind {
            SchedulerKind::Ddpm => t > 0.0,
            _ => self.is_stochastic(),
        }
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        match self.cfg.kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                let max = self.sigmas.iter().copied().fold(0f32, f32::max);
                match self.cfg.timestep_spacing {
                    TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
                    TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
                }
            }
            _ => 1.0,
        }
    }

    /// Picks `n` sampling timesteps (and sigmas) and resets the sampling state.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let t_train = self.cfg.num_train_timesteps;
        if n == 0 || n > t_train {
            return Err(Error::config(
                "num_inference_steps",
                format!("must be between 1 and num_train_timesteps ({t_train}), got {n}"),
            ));
        }
        let cfg = &self.cfg;
        let full: Vec<f64> = self.alphas_cumprod.iter().map(|&a| sigma_of(a) as f64).collect();
        let final_sigma = |c: &SchedulerConfig| match c.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => full[0],
        };
        match cfg.kind {
            SchedulerKind::Ddpm | SchedulerKind::Ddim => {
                self.timesteps = schedule::timesteps(cfg, n, true);
            }
            SchedulerKind::EulerAncestral => {
                let ts = schedule::timesteps(cfg, n, false);
                self.sigmas = ts.iter().map(|&t| schedule::interp_index(t, &full) as f32).chain([0.0]).collect();
                self.timesteps = ts;
            }
            SchedulerKind::EulerDiscrete => {
                let mut ts = schedule::timesteps(cfg, n, false);
                let mut sig: Vec<f64> = ts.iter().map(|&t| schedule::interp_index(t, &full)).collect();
                if cfg.use_karras_sigmas {
                    let min = cfg.sigma_min.unwrap_or(sig[sig.len() - 1]);
                    let max = cfg.sigma_max.unwrap_or(sig[0]);
                    sig = schedule::karras(min, max, n);
                    let log_sigmas = log_f32(&full);
                    ts = sig.iter().map(|&s| schedule::sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
                }
                self.sigmas = sig.iter().map(|&s| s as f32).chain([final_sigma(cfg) as f32]).collect();
                self.timesteps = ts;
            }
            SchedulerKind::DpmSolverMultistep => {
                // lambda_t = log(alpha_t) - log(sigma_t) in f32, ascending once flipped
                let mut lambdas: Vec<f32> =
                    self.alphas_cumprod.iter().map(|&a| a.sqrt().ln() - (1.0 - a).sqrt().ln()).collect();
                lambdas.reverse();
                let clipped = lambdas.iter().take_while(|&&l| (l as f64) < cfg.lambda_min_clipped).count();
                let last = t_train - clipped;
                if last == 0 {
                    return Err(Error::config("lambda_min_clipped", "clips every training timestep"));
                }
                let mut ts = schedule::dpm_timesteps(cfg, n, last);
                let sig: Vec<f64> = if cfg.use_karras_sigmas {
                    let log_sigmas = log_f32(&full);
                    let k = schedule::karras(full[0], full[full.len() - 1], n);
                    let squaredcos = cfg.beta_schedule == BetaSchedule::SquaredCosCapV2;
                    ts = k
                        .iter()
                        .map(|&s| {
                            let t = schedule::sigma_to_t(s, &log_sigmas);
                            if squaredcos {
                                t
                            } else {
                                t.round_ties_even()
                            }
                        })
                        .collect();
                    k
                } else {
                    ts.iter().map(|&t| schedule::interp_index(t, &full)).collect()
                };
                // diffusers stores the timesteps as int64
                ts = ts.into_iter().map(f64::trunc).collect();
                if let Some(bad) = ts.iter().find(|t| **t < 0.0) {
                    return Err(Error::config(
                        "num_inference_steps",
                        format!("{n} steps give a negative timestep ({bad}) with this timestep_spacing"),
                    ));
                }
                self.sigmas = sig.iter().map(|&s| s as f32).chain([final_sigma(cfg) as f32]).collect();
                self.timesteps = ts;
            }
        }
        if let Some(bad) = self.timesteps.iter().find(|&&t| t < 0.0 || t > (t_train - 1) as f64) {
            return Err(Error::config(
                "num_inference_steps",
                format!(
                    "{n} steps with steps_offset {} give timestep {bad}, outside the {t_train} training timesteps",
                    self.cfg.steps_offset
                ),
            ));
        }
        self.num_inference_steps = Some(self.timesteps.len());
        self.step_index = None;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        Ok(())
    }

    /// diffusers' `index_for_timestep`: the position of `t` in the schedule (the second
    /// one when it occurs twice, as after an img2img start).
    fn index_for_timestep(&self, t: f64) -> Option<usize> {
        let hits: Vec<usize> = self.timesteps.iter().enumerate().filter(|(_, &x)| x == t).map(|(i, _)| i).collect();
        match hits.len() {
            0 => None,
            1 => Some(hits[0]),
            _ => Some(hits[1]),
        }
    }

    fn need_timesteps(&self) -> Result<()> {
        if self.num_inference_steps.is_none() {
            return Err(Error::config("num_inference_steps", "call set_timesteps before sampling"));
        }
        Ok(())
    }

    /// The step index, found from `t` on the first call after `set_timesteps`.
    fn init_step_index(&mut self, t: f64) -> Result<usize> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        self.need_timesteps()?;
        let i = match self.index_for_timestep(t) {
            Some(i) => i,
            // DPM-Solver falls back to the last step, as diffusers does
            None if self.cfg.kind == SchedulerKind::DpmSolverMultistep => self.timesteps.len() - 1,
            None => return Err(not_in_schedule(t)),
        };
        self.step_index = Some(i);
        Ok(i)
    }

    /// The model's input at timestep `t`: `sample / sqrt(sigma^2 + 1)` for the Euler
    /// schedulers, `sample` itself for the others.
    pub fn scale_model_input(&mut self, sample: &Tensor, t: f64) -> Result<Tensor> {
        match self.cfg.kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                let i = self.init_step_index(t)?;
                let sigma = self.sigmas[i];
                div(sample, (sigma * sigma + 1.0).sqrt() as f64)
            }
            _ => Ok(sample.clone()),
        }
    }

    /// One denoising step from timestep `t`: returns the sample at the next timestep.
    /// `noise` (standard normal, `sample`'s shape) is needed when
    /// [`Scheduler::draws_noise`] at `t` and is ignored otherwise.
    pub fn step(&mut self, model_output: &Tensor, t: f64, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        if model_output.dims() != sample.dims() {
            return Err(Error::config(
                "model_output",
                format!("shape {:?} differs from the sample's {:?}", model_output.dims(), sample.dims()),
            ));
        }
        if let Some(n) = noise {
            if n.dims() != sample.dims() {
                return Err(Error::config(
                    "noise",
                    format!("shape {:?} differs from the sample's {:?}", n.dims(), sample.dims()),
                ));
            }
        }
        match self.cfg.kind {
            SchedulerKind::Ddpm => self.step_ddpm(model_output, t, sample, noise),
            SchedulerKind::Ddim => self.step_ddim(model_output, t, sample, noise),
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                self.step_euler(model_output, t, sample, noise)
            }
            SchedulerKind::DpmSolverMultistep => self.step_dpm(model_output, t, sample, noise),
        }
    }

    /// A whole training timestep in `[0, num_train_timesteps)`.
    fn train_t(&self, t: f64) -> Result<usize> {
        let n = self.cfg.num_train_timesteps;
        if t.fract() != 0.0 || t < 0.0 || t >= n as f64 {
            return Err(Error::config("timestep", format!("{t} is not a whole number in [0, {n})")));
        }
        Ok(t as usize)
    }

    fn clip(&self, x0: Tensor) -> Result<Tensor> {
        if self.cfg.clip_sample {
            let r = self.cfg.clip_sample_range;
            return Ok(x0.clamp(-r, r)?);
        }
        Ok(x0)
    }

    fn step_ddpm(&mut self, mo: &Tensor, t: f64, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let ti = self.train_t(t)?;
        let prev: Option<usize> = if self.num_inference_steps.is_some() {
            let i = self.timesteps.iter().position(|&x| x == t).ok_or_else(|| not_in_schedule(t))?;
            self.timesteps.get(i + 1).map(|&p| p as usize)
        } else {
            ti.checked_sub(1)
        };
        let a_t = self.alphas_cumprod[ti];
        let a_prev = prev.map_or(1.0, |p| self.alphas_cumprod[p]);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let x0 = match self.cfg.prediction_type {
            PredictionType::Epsilon => div(&(sample - mul(mo, b_t.sqrt() as f64)?)?, a_t.sqrt() as f64)?,
            PredictionType::Sample => mo.clone(),
            PredictionType::VPrediction => (mul(sample, a_t.sqrt() as f64)? - mul(mo, b_t.sqrt() as f64)?)?,
        };
        let x0 = self.clip(x0)?;
        let c_x0 = a_prev.sqrt() * cur_beta / b_t;
        let c_x = cur_alpha.sqrt() * b_prev / b_t;
        let mut prev_sample = (mul(&x0, c_x0 as f64)? + mul(sample, c_x as f64)?)?;
        if ti > 0 {
            let noise = noise.ok_or_else(|| Error::config("noise", "DDPM needs noise at every step but the last"))?;
            let var = (b_prev / b_t * cur_beta).max(1e-20);
            let std = match self.cfg.variance_type {
                VarianceType::FixedSmall => var.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * var.ln()).exp(),
                VarianceType::FixedLarge => cur_beta.sqrt(),
            };
            prev_sample = (prev_sample + mul(noise, std as f64)?)?;
        }
        Ok(prev_sample)
    }

    fn step_ddim(&mut self, mo: &Tensor, t: f64, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        self.need_timesteps()?;
        let n = self.num_inference_steps.unwrap_or(1);
        let ti = self.train_t(t)?;
        // diffusers: the previous timestep is t - T / n whatever the spacing
        let prev = ti as i64 - (self.cfg.num_train_timesteps / n) as i64;
        let a_t = self.alphas_cumprod[ti];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let (x0, eps) = match self.cfg.prediction_type {
            PredictionType::Epsilon => (div(&(sample - mul(mo, b_t.sqrt() as f64)?)?, a_t.sqrt() as f64)?, mo.clone()),
            PredictionType::Sample => {
                let eps = div(&(sample - mul(mo, a_t.sqrt() as f64)?)?, b_t.sqrt() as f64)?;
                (mo.clone(), eps)
            }
            PredictionType::VPrediction => (
                (mul(sample, a_t.sqrt() as f64)? - mul(mo, b_t.sqrt() as f64)?)?,
                (mul(mo, a_t.sqrt() as f64)? + mul(sample, b_t.sqrt() as f64)?)?,
            ),
        };
        let x0 = self.clip(x0)?;
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std = self.cfg.eta as f32 * variance.sqrt();
        let dir = mul(&eps, (1.0 - a_prev - std * std).sqrt() as f64)?;
        let mut prev_sample = (mul(&x0, a_prev.sqrt() as f64)? + dir)?;
        if self.cfg.eta > 0.0 {
            let noise = noise.ok_or_else(|| Error::config("noise", "DDIM with eta > 0 needs noise at every step"))?;
            prev_sample = (prev_sample + mul(noise, std as f64)?)?;
        }
        Ok(prev_sample)
    }

    fn step_euler(&mut self, mo: &Tensor, t: f64, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let i = self.init_step_index(t)?;
        if i + 1 >= self.sigmas.len() {
            return Err(Error::config("timestep", "the schedule is finished; call set_timesteps again"));
        }
        let dtype = mo.dtype();
        let x = sample.to_dtype(DType::F32)?;
        let mo32 = mo.to_dtype(DType::F32)?;
        let sigma = self.sigmas[i];
        let x0 = match self.cfg.prediction_type {
            PredictionType::Epsilon => (&x - mul(&mo32, sigma as f64)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                (mul(&mo32, c_out as f64)? + div(&x, (sigma * sigma + 1.0) as f64)?)?
            }
            PredictionType::Sample => mo32.clone(),
        };
        let derivative = div(&(&x - x0)?, sigma as f64)?;
        let prev = if self.cfg.kind == SchedulerKind::EulerAncestral {
            let (from, to) = (sigma, self.sigmas[i + 1]);
            let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
            let down = (to * to - up * up).sqrt();
            let mut prev = (&x + mul(&derivative, (down - sigma) as f64)?)?;
            if up > 0.0 {
                let noise = noise.ok_or_else(|| Error::config("noise", "Euler ancestral needs noise at every step"))?;
                prev = (prev + mul(&noise.to_dtype(DType::F32)?, up as f64)?)?;
            }
            prev
        } else {
            let dt = self.sigmas[i + 1] - sigma;
            (&x + mul(&derivative, dt as f64)?)?
        };
        self.step_index = Some(i + 1);
        Ok(prev.to_dtype(dtype)?)
    }

    /// (alpha_t, sigma_t) of a sigma, in f64 from the stored f32 value.
    fn alpha_sigma(sigma: f32) -> (f64, f64) {
        let s = sigma as f64;
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        (alpha, s * alpha)
    }

    fn step_dpm(&mut self, mo: &Tensor, t: f64, sample: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let i = self.init_step_index(t)?;
        let n = self.timesteps.len();
        if i >= n {
            return Err(Error::config("timestep", "the schedule is finished; call set_timesteps again"));
        }
        let c = &self.cfg;
        let lower_order_final = i == n - 1
            && (c.euler_at_final || (c.lower_order_final && n < 15) || c.final_sigmas_type == FinalSigmas::Zero);
        let dtype = mo.dtype();
        let x = sample.to_dtype(DType::F32)?;
        let mo32 = mo.to_dtype(DType::F32)?;
        // the model output as an estimate of x0 (dpmsolver++ works in data prediction)
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[i]);
        let x0 = match c.prediction_type {
            PredictionType::Epsilon => div(&(&x - mul(&mo32, sigma_s0)?)?, alpha_s0)?,
            PredictionType::VPrediction => (mul(&x, alpha_s0)? - mul(&mo32, sigma_s0)?)?,
            PredictionType::Sample => mo32,
        };
        self.model_outputs.push(x0);
        if self.model_outputs.len() > c.solver_order {
            self.model_outputs.remove(0);
        }
        let sde = c.algorithm_type == DpmAlgorithm::SdeDpmSolverPlusPlus;
        let noise = if sde {
            Some(
                noise
                    .ok_or_else(|| Error::config("noise", "SDE-DPM-Solver++ needs noise at every step"))?
                    .to_dtype(DType::F32)?,
            )
        } else {
            None
        };
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[i + 1]);
        let lambda = |a: f64, s: f64| a.ln() - s.ln();
        let (lambda_t, lambda_s0) = (lambda(alpha_t, sigma_t), lambda(alpha_s0, sigma_s0));
        let h = lambda_t - lambda_s0;
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let first_order = c.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        // (diffusers' `lower_order_second` only matters for third order, which is not supported)
        let mut prev = if first_order {
            if sde {
                let e = (-h).exp();
                mul(&x, sigma_t / sigma_s0 * e)? + mul(m0, alpha_t * (1.0 - (-2.0 * h).exp()))?
            } else {
                mul(&x, sigma_t / sigma_s0)? - mul(m0, alpha_t * ((-h).exp() - 1.0))?
            }?
        } else {
            let m1 = &self.model_outputs[self.model_outputs.len() - 2];
            let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[i - 1]);
            let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
            let em1 = (-h).exp() - 1.0;
            match (sde, c.solver_type) {
                (false, DpmSolverType::Midpoint) => {
                    ((mul(&x, sigma_t / sigma_s0)? - mul(m0, alpha_t * em1)?)? - mul(&d1, 0.5 * (alpha_t * em1))?)?
                }
                (false, DpmSolverType::Heun) => {
                    ((mul(&x, sigma_t / sigma_s0)? - mul(m0, alpha_t * em1)?)? + mul(&d1, alpha_t * (em1 / h + 1.0))?)?
                }
                (true, solver) => {
                    let e2 = 1.0 - (-2.0 * h).exp();
                    let base = (mul(&x, sigma_t / sigma_s0 * (-h).exp())? + mul(m0, alpha_t * e2)?)?;
                    let d1c = match solver {
                        DpmSolverType::Midpoint => 0.5 * (alpha_t * e2),
                        DpmSolverType::Heun => alpha_t * (e2 / (-2.0 * h) + 1.0),
                    };
                    (base + mul(&d1, d1c)?)?
                }
            }
        };
        if let Some(noise) = &noise {
            let c_noise = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
            if c_noise != 0.0 {
                prev = (prev + mul(noise, c_noise)?)?;
            }
        }
        if self.lower_order_nums < c.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(prev.to_dtype(dtype)?)
    }

    // ------------------------------------------------------------------ training

    /// Per-row coefficients `[b, 1, ..]` of `x` (rank >= 1) from one value per row (or
    /// one for all rows).
    fn per_row(x: &Tensor, values: &[f64], what: &str) -> Result<Tensor> {
        let b = x.dim(0).map_err(|_| Error::config(what, "the sample must have a batch dimension"))?;
        if values.len() != b && values.len() != 1 {
            return Err(Error::config(what, format!("{} timesteps for a batch of {b}", values.len())));
        }
        let mut shape = vec![values.len()];
        shape.extend(std::iter::repeat_n(1, x.rank() - 1));
        let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Ok(Tensor::from_vec(v, shape, x.device())?.to_dtype(x.dtype())?)
    }

    fn sqrt_alphas(&self, t: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let mut a = Vec::with_capacity(t.len());
        let mut s = Vec::with_capacity(t.len());
        for &ti in t {
            let ac = self.alphas_cumprod[self.train_t(ti)?];
            a.push(ac.sqrt() as f64);
            s.push((1.0 - ac).sqrt() as f64);
        }
        Ok((a, s))
    }

    /// The forward process: `x0` noised to timestep `t` (one per batch row, or one for
    /// all). DDPM, DDIM and DPM-Solver: `sqrt(a_t) x0 + sqrt(1 - a_t) noise` at training
    /// timesteps (DPM-Solver uses the schedule's sigma when `t` is one of its
    /// timesteps, as diffusers does). Euler: `x0 + sigma_t noise`, with `t` one of the
    /// sampling timesteps (img2img's start).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: &[f64]) -> Result<Tensor> {
        if x0.dims() != noise.dims() {
            return Err(Error::config(
                "noise",
                format!("shape {:?} differs from the sample's {:?}", noise.dims(), x0.dims()),
            ));
        }
        match self.cfg.kind {
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral => {
                self.need_timesteps()?;
                let sig = t
                    .iter()
                    .map(|&ti| {
                        self.index_for_timestep(ti).map(|i| self.sigmas[i] as f64).ok_or_else(|| not_in_schedule(ti))
                    })
                    .collect::<Result<Vec<f64>>>()?;
                Ok((x0 + noise.broadcast_mul(&Self::per_row(x0, &sig, "timestep")?)?)?)
            }
            SchedulerKind::DpmSolverMultistep if self.num_inference_steps.is_some() => {
                let mut a = Vec::with_capacity(t.len());
                let mut s = Vec::with_capacity(t.len());
                for &ti in t {
                    let (alpha, sigma) = match self.index_for_timestep(ti) {
                        Some(i) => Self::alpha_sigma(self.sigmas[i]),
                        None => {
                            let ac = self.alphas_cumprod[self.train_t(ti)?];
                            (ac.sqrt() as f64, (1.0 - ac).sqrt() as f64)
                        }
                    };
                    a.push(alpha);
                    s.push(sigma);
                }
                self.combine(x0, noise, &a, &s)
            }
            _ => {
                let (a, s) = self.sqrt_alphas(t)?;
                self.combine(x0, noise, &a, &s)
            }
        }
    }

    /// `a * x + s * y` with per-row `a` and `s`.
    fn combine(&self, x: &Tensor, y: &Tensor, a: &[f64], s: &[f64]) -> Result<Tensor> {
        let a = Self::per_row(x, a, "timestep")?;
        let s = Self::per_row(x, s, "timestep")?;
        Ok((x.broadcast_mul(&a)? + y.broadcast_mul(&s)?)?)
    }

    /// The training target at training timesteps `t` for the configured prediction
    /// type: the noise (epsilon), the velocity `sqrt(a_t) noise - sqrt(1 - a_t) x0`
    /// (v_prediction) or `x0` (sample).
    pub fn target(&self, x0: &Tensor, noise: &Tensor, t: &[f64]) -> Result<Tensor> {
        if x0.dims() != noise.dims() {
            return Err(Error::config(
                "noise",
                format!("shape {:?} differs from the sample's {:?}", noise.dims(), x0.dims()),
            ));
        }
        match self.cfg.prediction_type {
            PredictionType::Epsilon => {
                self.sqrt_alphas(t)?;
                Ok(noise.clone())
            }
            PredictionType::Sample => {
                self.sqrt_alphas(t)?;
                Ok(x0.clone())
            }
            PredictionType::VPrediction => {
                let (a, s) = self.sqrt_alphas(t)?;
                let neg: Vec<f64> = s.iter().map(|v| -v).collect();
                self.combine(noise, x0, &a, &neg)
            }
        }
    }

    /// The signal-to-noise ratio `a_t / (1 - a_t)` at training timesteps (f32, as
    /// diffusers' `compute_snr`).
    pub fn snr(&self, t: &[f64]) -> Result<Vec<f32>> {
        let (a, s) = self.sqrt_alphas(t)?;
        Ok(a.iter()
            .zip(&s)
            .map(|(&a, &s)| {
                let r = a as f32 / s as f32;
                r * r
            })
            .collect())
    }

    /// Min-SNR-gamma loss weights per timestep (Hang et al. 2023), as diffusers' training
    /// scripts compute them: `min(snr, gamma) / snr` for epsilon, `/ (snr + 1)` for
    /// v_prediction, `min(snr, gamma)` for sample. Multiply each row's mean squared
    /// error by its weight, then average.
    pub fn min_snr_weights(&self, t: &[f64], gamma: f64) -> Result<Vec<f32>> {
        if !(gamma > 0.0 && gamma.is_finite()) {
            return Err(Error::config("snr_gamma", format!("must be a positive number, got {gamma}")));
        }
        let g = gamma as f32;
        Ok(self
            .snr(t)?
            .into_iter()
            .map(|snr| {
                let w = snr.min(g);
                match self.cfg.prediction_type {
                    PredictionType::Epsilon => w / snr,
                    PredictionType::VPrediction => w / (snr + 1.0),
                    PredictionType::Sample => w,
                }
            })
            .collect())
    }
}

/// `np.log` of the float32 sigmas (numpy keeps float32).
fn log_f32(sigmas: &[f64]) -> Vec<f64> {
    sigmas.iter().map(|&s| (s as f32).ln() as f64).collect()
}

fn not_in_schedule(t: f64) -> Error {
    Error::config("timestep", format!("{t} is not one of the schedule's timesteps (see set_timesteps / timesteps())"))
}
