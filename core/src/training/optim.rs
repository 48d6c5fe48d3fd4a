//! AdamW with torch semantics, global-norm gradient clipping, and the LR schedule.
//!
//! Our own AdamW (rather than `candle_nn::AdamW`) because a checkpoint must hold the
//! optimiser state (m, v, step) and `resume` must restore it exactly. The update is
//! `torch.optim.AdamW`'s:
//! `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;`
//! `p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.

use std::collections::HashMap;

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::types::Schedule;

/// AdamW with `torch.optim.AdamW`'s update; the optimiser of anneal's trainer.
///
/// On the CPU with f32 parameters, one step updates m, v and p in place (three rayon-split
/// passes, no allocation) instead of ~12 full-size tensor ops that each allocate and
/// fault in a new buffer.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimiser steps taken (torch's `state['step']`).
    pub(crate) t: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// Zero moments for `params` (name, variable).
    pub fn new(params: Vec<(String, Var)>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Result<Self> {
        let m = params.iter().map(|(_, p)| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        // Separate buffers: the fused step updates m and v in place.
        let v = params.iter().map(|(_, p)| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { params, m, v, t: 0, beta1, beta2, eps, weight_decay })
    }

    /// The parameters, in the order `step` expects their gradients.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with gradients aligned with `params()` (`None`: no gradient, skipped).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.t += 1;
        // beta^t underflows to 0 long before t leaves i32.
        let pow = |beta: f64| i32::try_from(self.t).map_or(0.0, |t| beta.powi(t));
        let (bc1, bc2) = (1.0 - pow(self.beta1), 1.0 - pow(self.beta2));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(i).and_then(Option::as_ref) else { continue };
            if self.fused(p.as_tensor(), g, i, lr, bc1, bc2)? {
                continue;
            }
            let m = ((&self.m[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let decayed = (p.as_tensor() * (1.0 - lr * self.weight_decay))?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The fused update of parameter `i`, in place on p, m and v (no allocation), when
    /// p, g, m and v are contiguous f32 on the CPU. Returns false to send the caller to
    /// the tensor-op form.
    fn fused(&self, p: &Tensor, g: &Tensor, i: usize, lr: f64, bc1: f64, bc2: f64) -> Result<bool> {
        let (m, v) = (&self.m[i], &self.v[i]);
        let all = [p, g, m, v];
        if all.iter().any(|t| t.dtype() != DType::F32 || !t.device().is_cpu() || t.dims() != p.dims()) {
            return Ok(false);
        }
        if [p, m, v].iter().any(|t| !t.is_contiguous()) {
            return Ok(false);
        }
        let g = g.contiguous()?;
        // The same f32 constants and operation order as the tensor-op form (candle casts
        // each f64 scalar to f32 and divides by multiplying with the reciprocal).
        m.inplace_op2(&g, &Moment { keep: self.beta1 as f32, take: (1.0 - self.beta1) as f32, square: false })?;
        v.inplace_op2(&g, &Moment { keep: self.beta2 as f32, take: (1.0 - self.beta2) as f32, square: true })?;
        let step = ParamStep {
            decay: (1.0 - lr * self.weight_decay) as f32,
            lr: lr as f32,
            eps: self.eps as f32,
            ibc1: (1.0 / bc1) as f32,
            ibc2: (1.0 / bc2) as f32,
        };
        p.inplace_op3(m, v, &step)?;
        Ok(true)
    }

    /// The moments, as `m.<name>` / `v.<name>` tensors.
    pub(crate) fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub(crate) fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (which, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let k = format!("{which}.{name}");
                let s = tensors
                    .remove(&k)
                    .ok_or_else(|| Error::Internal(format!("checkpoint optimiser state lacks `{k}`")))?;
                if s.dims() != p.dims() {
                    return Err(Error::Internal(format!("checkpoint optimiser state `{k}` has the wrong shape")));
                }
                *slot = s.to_dtype(p.dtype())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

const CHUNK: usize = 16 * 1024;

fn f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&mut d[a..b]),
        _ => bail!("adamw: expected a contiguous f32 tensor"),
    }
}

fn f32_ref<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => bail!("adamw: expected a contiguous f32 tensor"),
    }
}

/// `m = keep * m + take * g` (or `g * g` for the second moment), in place.
struct Moment {
    keep: f32,
    take: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "anneal-adamw-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let m = f32_mut(s1, l1)?;
        let g = f32_ref(s2, l2)?;
        m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
            for (m, &g) in m.iter_mut().zip(g) {
                let x = if self.square { g * g } else { g };
                *m = *m * self.keep + x * self.take;
            }
        });
        Ok(())
    }
}

/// `p = p * decay - lr * (m * ibc1) / (sqrt(v * ibc2) + eps)`, in place.
struct ParamStep {
    decay: f32,
    lr: f32,
    eps: f32,
    ibc1: f32,
    ibc2: f32,
}

impl InplaceOp3 for ParamStep {
    fn name(&self) -> &'static str {
        "anneal-adamw-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let p = f32_mut(s1, l1)?;
        let m = f32_ref(s2, l2)?;
        let v = f32_ref(s3, l3)?;
        p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let update = (m * self.ibc1) / ((v * self.ibc2).sqrt() + self.eps);
                *p = *p * self.decay - update * self.lr;
            }
        });
        Ok(())
    }
}

/// torch's `clip_grad_norm_`: scales every gradient by `max / (norm + 1e-6)` when the
/// global L2 norm exceeds `max`. Returns the norm before clipping.
pub(crate) fn clip_grad_norm(grads: &mut [Option<Tensor>], max: Option<f64>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if let Some(max) = max {
        if norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            for g in grads.iter_mut().flatten() {
                *g = (&*g * scale)?;
            }
        }
    }
    Ok(norm)
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warmup from 0,
/// then the schedule (transformers' `get_*_schedule_with_warmup`).
pub(crate) fn lr_at(schedule: Schedule, peak: f64, warmup: u64, total: u64, step: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress).max(0.0),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_step_counter_beyond_i32_does_not_wrap() {
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], 0.9, 0.999, 1e-8, 0.0).unwrap();
        opt.t = u64::from(u32::MAX) + 7;
        let g = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
        opt.step(&[Some(g)], 0.1).unwrap();
        let after = w.as_tensor().to_vec1::<f32>().unwrap();
        // Bias corrections are 1 (beta^t is 0): a plain Adam step of about lr * 0.1 / sqrt(0.001).
        assert!(after.iter().all(|x| x.is_finite()), "{after:?}");
        assert!(after[0] < 1.0 && after[1] > -1.0, "{after:?}");
    }

    #[test]
    fn adamw_matches_candle_adamw() {
        // candle_nn::AdamW matches torch to 1e-8 (tests/numerics.rs); ours must match it.
        use candle_nn::Optimizer;
        let init = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap();
        let a = Var::from_tensor(&init).unwrap();
        let b = Var::from_tensor(&init).unwrap();
        let mut ours = AdamW::new(vec![("w".into(), a.clone())], 0.9, 0.999, 1e-8, 0.01).unwrap();
        let p = candle_nn::ParamsAdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut theirs = candle_nn::AdamW::new(vec![b.clone()], p).unwrap();
        for _ in 0..5 {
            let la = a.as_tensor().sqr().unwrap().sum_all().unwrap();
            let ga = la.backward().unwrap().get(&a).unwrap().clone();
            ours.step(&[Some(ga)], 1e-2).unwrap();
            let lb = b.as_tensor().sqr().unwrap().sum_all().unwrap();
            theirs.backward_step(&lb).unwrap();
        }
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-7, "{d}");
    }

    #[test]
    fn schedules_and_clipping() {
        assert_eq!(lr_at(Schedule::Linear, 1.0, 2, 10, 0), 0.0);
        assert_eq!(lr_at(Schedule::Linear, 1.0, 2, 10, 1), 0.5);
        assert_eq!(lr_at(Schedule::Linear, 1.0, 2, 10, 2), 1.0);
        assert!((lr_at(Schedule::Linear, 1.0, 2, 10, 6) - 0.5).abs() < 1e-12);
        assert!((lr_at(Schedule::Cosine, 1.0, 0, 10, 5) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 1.0, 0, 10, 9), 1.0);
        let mut g = vec![Some(Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()), None];
        let n = clip_grad_norm(&mut g, Some(1.0)).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let v = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    }
}
