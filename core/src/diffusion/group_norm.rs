//! GroupNorm with its affine part, and optionally the SiLU that follows it in every
//! resnet, as one CPU op with an analytic backward.
//!
//! The composite form (normalise, then a broadcast multiply and add by the per-channel
//! weight and bias, then SiLU) makes five full-size tensors forward and as many
//! backward, and the weight and bias gradients are candle reductions over the batch and
//! pixel dims, which walk the tensor element by element. [`group_norm`] computes each
//! `(image, group)` slice in one pass forward and two backward, and the weight and bias
//! gradients on the way. Statistics are accumulated in f64.
//!
//! With `x̂ = (x - mean) * rstd`, `z = x̂ * gamma + beta` and `y = silu(z)` (or `z`):
//! `dz = dy * silu'(z)`, `dgamma = Σ dz x̂`, `dbeta = Σ dz`, and with `d = dz * gamma`,
//! `dx = rstd * (d - mean(d) - x̂ * mean(d x̂))` over the group.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::models::fused;

/// Elements one rayon task handles at least.
const MIN_TASK: usize = 16 * 1024;

/// Whether the fused op applies to `x`, `weight` and `bias`.
pub(crate) fn usable(x: &Tensor, weight: &Tensor, bias: &Tensor) -> bool {
    fused::usable(x) && fused::usable(weight) && fused::usable(bias) && x.rank() >= 3
}

/// `GroupNorm(x) * weight + bias` over `groups` groups of `x` `[b, c, ...]`, then SiLU
/// when `silu`. The caller checks [`usable`].
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let op = GroupNormOp { groups, eps, silu };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// The sizes: images, channels, channels per group, elements per channel.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    c: usize,
    per_group: usize,
    spatial: usize,
}

impl Sizes {
    fn new(dims: &[usize], groups: usize) -> Result<Self> {
        let (c, spatial) = match dims {
            [_, c, rest @ ..] if !rest.is_empty() => (*c, rest.iter().product::<usize>()),
            _ => bail!("anneal-group-norm: expects [b, c, ...], got {dims:?}"),
        };
        if groups == 0 || !c.is_multiple_of(groups) {
            bail!("anneal-group-norm: {groups} groups do not divide {c} channels");
        }
        Ok(Self { c, per_group: c / groups, spatial })
    }

    /// Elements of one `(image, group)` slice.
    fn slice(&self) -> usize {
        self.per_group * self.spatial
    }

    fn tasks_min(&self) -> usize {
        (MIN_TASK / self.slice().max(1)).max(1)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    fused::contiguous_f32(s, l, "anneal-group-norm", what)
}

/// (mean, 1 / sqrt(var + eps)) of a slice, accumulated in f64.
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

fused::simd_fn! {
    /// `o = x * a + b`, then SiLU when `silu`.
    fn affine_row(o: &mut [f32], x: &[f32], a: f32, b: f32, silu: bool) {
        if silu {
            for (o, &v) in o.iter_mut().zip(x) {
                let z = v * a + b;
                *o = z * fused::sigmoid(z);
            }
        } else {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v * a + b;
            }
        }
    }
}

fused::simd_fn! {
    /// One channel's backward up to the group reduction: `d = dz * gamma` into `dx`, and
    /// `[Σ dz x̂, Σ dz, Σ d, Σ d x̂]` (eight partial sums each, over fixed 8-wide chunks
    /// so that LLVM vectorises the loop; the SiLU branch is the same for the whole loop).
    #[allow(clippy::too_many_arguments)]
    fn channel_bwd(dx: &mut [f32], x: &[f32], gy: &[f32], mean: f32, rstd: f32, g: f32, b: f32, silu: bool) -> [f32; 4] {
        #[inline(always)]
        fn lane(v: f32, gy: f32, mean: f32, rstd: f32, g: f32, b: f32, silu: bool) -> [f32; 5] {
            let xh = (v - mean) * rstd;
            let dz = if silu {
                let z = xh * g + b;
                let s = fused::sigmoid(z);
                gy * s * (1.0 + z * (1.0 - s))
            } else {
                gy
            };
            let dd = dz * g;
            [dz * xh, dz, dd, dd * xh, dd]
        }
        let mut acc = [[0f32; fused::LANES]; 4];
        let n = x.len().min(gy.len()).min(dx.len());
        let split = n - n % fused::LANES;
        let (head, tail) = dx[..n].split_at_mut(split);
        for ((dc, xc), gc) in head.chunks_exact_mut(fused::LANES).zip(x[..split].chunks_exact(fused::LANES)).zip(gy[..split].chunks_exact(fused::LANES)) {
            for k in 0..fused::LANES {
                let [a, b2, c, d, dd] = lane(xc[k], gc[k], mean, rstd, g, b, silu);
                acc[0][k] += a;
                acc[1][k] += b2;
                acc[2][k] += c;
                acc[3][k] += d;
                dc[k] = dd;
            }
        }
        for (k, ((d, &v), &gv)) in tail.iter_mut().zip(&x[split..n]).zip(&gy[split..n]).enumerate() {
            let [a, b2, c, e, dd] = lane(v, gv, mean, rstd, g, b, silu);
            acc[0][k] += a;
            acc[1][k] += b2;
            acc[2][k] += c;
            acc[3][k] += e;
            *d = dd;
        }
        acc.map(|a| a.iter().sum())
    }
}

fused::simd_fn! {
    /// `dx = rstd * (d - mean(d) - x̂ * mean(d x̂))` over one group, `d` already in `dx`.
    fn group_bwd(dx: &mut [f32], x: &[f32], mean: f32, rstd: f32, mean_d: f32, mean_dx: f32) {
        for (d, &v) in dx.iter_mut().zip(x) {
            let xh = (v - mean) * rstd;
            *d = rstd * (*d - mean_d - xh * mean_dx);
        }
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "anneal-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let sz = Sizes::new(l1.dims(), self.groups)?;
        let (x, gamma, beta) =
            (contiguous(s1, l1, "input")?, contiguous(s2, l2, "weight")?, contiguous(s3, l3, "bias")?);
        if gamma.len() != sz.c || beta.len() != sz.c {
            bail!("anneal-group-norm: weight/bias of {}/{} for {} channels", gamma.len(), beta.len(), sz.c);
        }
        let mut out = vec![0f32; x.len()];
        let slice = sz.slice().max(1);
        out.par_chunks_mut(slice).zip(x.par_chunks(slice)).enumerate().with_min_len(sz.tasks_min()).for_each(
            |(i, (o, xs))| {
                let (mean, rstd) = stats(xs, self.eps);
                let c0 = (i % self.groups) * sz.per_group;
                let rows = o.chunks_exact_mut(sz.spatial.max(1)).zip(xs.chunks_exact(sz.spatial.max(1)));
                for (j, (o, xs)) in rows.enumerate() {
                    let a = rstd * gamma[c0 + j];
                    let b = beta[c0 + j] - mean * a;
                    affine_row(o, xs, a, b, self.silu);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = Tensor::cat(&[weight, bias], 0)?;
        let packed = x.apply_op3_no_bwd(&grad.contiguous()?, &params, &GroupNormBwd(*self))?;
        let (n, c) = (x.elem_count(), weight.elem_count());
        let gx = if x.track_op() { Some(packed.narrow(0, 0, n)?.reshape(x.shape())?) } else { None };
        let gw = if weight.track_op() { Some(packed.narrow(0, n, c)?) } else { None };
        let gb = if bias.track_op() { Some(packed.narrow(0, n + c, c)?) } else { None };
        Ok((gx, gw, gb))
    }
}

impl GroupNormOp {
    /// `[dx (flat), dweight, dbias]` from `x`, the output gradient and `[weight; bias]`.
    fn backward(&self, x: &[f32], dims: &[usize], grad: &[f32], params: &[f32]) -> Result<Vec<f32>> {
        let sz = Sizes::new(dims, self.groups)?;
        if grad.len() != x.len() || params.len() != 2 * sz.c {
            bail!("anneal-group-norm: backward operands of {}, {} and {} values", x.len(), grad.len(), params.len());
        }
        let (gamma, beta) = params.split_at(sz.c);
        let slice = sz.slice().max(1);
        let spatial = sz.spatial.max(1);
        let mut out = vec![0f32; x.len() + 2 * sz.c];
        let (dx, dparams) = out.split_at_mut(x.len());
        // Per (image, group): the per-channel (dgamma, dbeta) partial sums.
        let partial: Vec<Vec<(f64, f64)>> = dx
            .par_chunks_mut(slice)
            .zip(x.par_chunks(slice).zip(grad.par_chunks(slice)))
            .enumerate()
            .with_min_len(sz.tasks_min())
            .map(|(i, (dx, (xs, gs)))| {
                let (mean, rstd) = stats(xs, self.eps);
                let c0 = (i % self.groups) * sz.per_group;
                let mut sums = Vec::with_capacity(sz.per_group);
                let (mut sum_d, mut sum_dx) = (0f64, 0f64);
                let rows = dx.chunks_exact_mut(spatial).zip(xs.chunks_exact(spatial).zip(gs.chunks_exact(spatial)));
                for (j, (dx, (xs, gs))) in rows.enumerate() {
                    let (g, b) = (gamma[c0 + j], beta[c0 + j]);
                    let [dg, db, sd, sdx] = channel_bwd(dx, xs, gs, mean, rstd, g, b, self.silu);
                    sums.push((f64::from(dg), f64::from(db)));
                    sum_d += f64::from(sd);
                    sum_dx += f64::from(sdx);
                }
                let m = xs.len().max(1) as f64;
                let (mean_d, mean_dx) = ((sum_d / m) as f32, (sum_dx / m) as f32);
                group_bwd(dx, xs, mean, rstd, mean_d, mean_dx);
                sums
            })
            .collect();
        let (dgamma, dbeta) = dparams.split_at_mut(sz.c);
        let mut acc = vec![(0f64, 0f64); sz.c];
        for (i, sums) in partial.iter().enumerate() {
            let c0 = (i % self.groups) * sz.per_group;
            for (j, (g, b)) in sums.iter().enumerate() {
                acc[c0 + j].0 += g;
                acc[c0 + j].1 += b;
            }
        }
        for ((dg, db), (g, b)) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(acc) {
            *dg = g as f32;
            *db = b as f32;
        }
        Ok(out)
    }
}

/// The backward as an op on `(x, grad, [weight; bias])`: `[dx (flat), dweight, dbias]`
/// in one flat tensor.
struct GroupNormBwd(GroupNormOp);

impl CustomOp3 for GroupNormBwd {
    fn name(&self) -> &'static str {
        "anneal-group-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, grad, params) =
            (contiguous(s1, l1, "input")?, contiguous(s2, l2, "gradient")?, contiguous(s3, l3, "params")?);
        let out = self.0.backward(x, l1.dims(), grad, params)?;
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;

    /// The composite form: normalise each group, affine, SiLU.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (n, c) = (dims[0], dims[1]);
        let g = x.reshape((n, groups, ()))?;
        let centered = g.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims.as_slice())?;
        let mut affine = vec![1usize; dims.len()];
        affine[1] = c;
        let y = normed.broadcast_mul(&w.reshape(affine.as_slice())?)?.broadcast_add(&b.reshape(affine)?)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Forward and all three gradients equal candle's composite form's.
    #[test]
    fn matches_the_composite_form_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for &(dims, groups, silu) in &[
            (&[2usize, 8, 4, 5][..], 4usize, true),
            (&[3, 6, 3, 3][..], 2, false),
            (&[1, 4, 7][..], 4, true),
            (&[2, 32, 16, 16][..], 8, true),
        ] {
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2., dims, &dev)? + 0.5)?)?;
            let c = dims[1];
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, c, &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, c, &dev)?)?;
            let ours = group_norm(&x, &w, &b, groups, 1e-5, silu)?;
            let theirs = reference(&x, &w, &b, groups, 1e-5, silu)?;
            assert!(max_diff(&ours, &theirs)? < 1e-4, "forward {dims:?}");
            let r = Tensor::randn(0f32, 1., dims, &dev)?;
            let g1 = (&ours * &r)?.sum_all()?.backward()?;
            let g2 = (&theirs * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", x.as_tensor()), ("weight", w.as_tensor()), ("bias", b.as_tensor())] {
                let (a, e) = (g1.get(v).expect("ours"), g2.get(v).expect("theirs"));
                let scale = e.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
                let d = max_diff(a, e)?;
                assert!(d < 1e-4 * scale, "grad {name} {dims:?} silu {silu}: {d}");
            }
        }
        Ok(())
    }

    /// Frozen weight and bias (a LoRA run) get no gradient; the input still does.
    #[test]
    fn frozen_affine_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 3, 3), &dev)?)?;
        let (w, b) =
            (Tensor::ones(4, candle_core::DType::F32, &dev)?, Tensor::zeros(4, candle_core::DType::F32, &dev)?);
        let g = group_norm(&x, &w, &b, 2, 1e-6, false)?.sqr()?.sum_all()?.backward()?;
        assert!(g.get(&x).is_some());
        assert!(g.get(&w).is_none() && g.get(&b).is_none());
        Ok(())
    }
}
