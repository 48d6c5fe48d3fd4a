//! Fused CPU kernels for the training path, each a candle `CustomOp` with its own
//! backward (candle's fused ops have none: see CANDLE-NOTES.md). Every kernel works on
//! contiguous f32 rows in one pass, split over rows with rayon, instead of the 5-15
//! elementwise candle ops (each allocating a full-size tensor, forward and backward) of
//! the composite form. [`usable`] says when they apply (f32 on the CPU); the callers
//! keep the composite form for every other dtype and device.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The fused kernels apply: an f32 tensor on the CPU.
pub(crate) fn usable(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// Rows handed to one rayon task at least (keeps tasks above ~16k elements).
fn min_rows(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

fn rows<'a>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// ---------------------------------------------------------------- causal softmax

/// `softmax(x * scale + causal_mask)` over the last dim of `[.., t, kv]` scores; query i
/// sits at position `past + i` and sees keys `j <= past + i` (within `window` if set).
/// The mask is never materialised.
pub(crate) struct CausalSoftmax {
    pub(crate) scale: f32,
    pub(crate) past: usize,
    pub(crate) window: Option<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "anneal-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let dims = l.dims();
        if dims.len() < 2 {
            bail!("causal softmax needs [.., t, kv] scores");
        }
        let (t, kv) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out = vec![0f32; x.len()];
        let scale = self.scale;
        out.par_chunks_mut(kv).zip(x.par_chunks(kv)).with_min_len(min_rows(kv)).enumerate().for_each(|(r, (o, xr))| {
            let q = self.past + r % t;
            let hi = (q + 1).min(kv);
            let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w)).min(hi);
            let (xs, os) = (&xr[lo..hi], &mut o[lo..hi]);
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in os.iter_mut().zip(xs) {
                let e = ((v - max) * scale).exp();
                *o = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            os.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?))
    }
}

/// `scale * y * (g - sum(g * y))` row by row, with `y` the softmax output.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "anneal-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        let n = last_dim(l1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n).zip(y.par_chunks(n).zip(g.par_chunks(n))).with_min_len(min_rows(n)).for_each(
            |(o, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = self.scale * y * (g - dot);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- norms

/// The normalisation of LayerNorm (`center`) or RMSNorm, without the affine part:
/// `(x - mean) / sqrt(var + eps)` resp. `x / sqrt(mean(x^2) + eps)` over the last dim.
pub(crate) struct Norm {
    pub(crate) eps: f32,
    pub(crate) center: bool,
}

impl Norm {
    /// (mean, 1 / sqrt(var + eps)) of one row.
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = if self.center { x.iter().sum::<f32>() / n } else { 0.0 };
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "anneal-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let n = last_dim(l);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n).zip(x.par_chunks(n)).with_min_len(min_rows(n)).for_each(|(o, x)| {
            let (mean, inv) = self.stats(x);
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - mean) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &NormBwd(Norm { eps: self.eps, center: self.center }))?))
    }
}

/// `inv * (g - mean(g) - xhat * mean(g * xhat))` (no `mean(g)` term for RMSNorm).
struct NormBwd(Norm);

impl CustomOp2 for NormBwd {
    fn name(&self) -> &'static str {
        "anneal-norm-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        let n = last_dim(l1);
        let nf = n as f32;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n).zip(x.par_chunks(n).zip(g.par_chunks(n))).with_min_len(min_rows(n)).for_each(
            |(o, (x, g))| {
                let (mean, inv) = self.0.stats(x);
                let mg = if self.0.center { g.iter().sum::<f32>() / nf } else { 0.0 };
                let mgx = x.iter().zip(g).map(|(&v, &g)| g * (v - mean) * inv).sum::<f32>() / nf;
                for ((o, &v), &g) in o.iter_mut().zip(x).zip(g) {
                    *o = inv * (g - mg - (v - mean) * inv * mgx);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- activations

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// GELU, tanh approximation (`gelu_new`), as candle's `Tensor::gelu`.
pub(crate) struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "anneal-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = 0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * (1.0 + GELU_C * v * v)).tanh());
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeluTanhBwd)?))
    }
}

struct GeluTanhBwd;

impl CustomOp2 for GeluTanhBwd {
    fn name(&self) -> &'static str {
        "anneal-gelu-tanh-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096).zip(x.par_chunks(4096).zip(g.par_chunks(4096))).for_each(|(o, (x, g))| {
            for ((o, &v), &g) in o.iter_mut().zip(x).zip(g) {
                let th = (SQRT_2_OVER_PI * v * (1.0 + GELU_C * v * v)).tanh();
                let d = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
                *o = g * d;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// SwiGLU: `silu(gate) * up`, one pass, gradients for both inputs.
pub(crate) struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "anneal-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        if l1.shape() != l2.shape() {
            bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(4096).zip(a.par_chunks(4096).zip(b.par_chunks(4096))).for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a * sigmoid(a) * b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &g, &SwiGluBwdGate)?;
        let d_up = gate.apply_op2_no_bwd(&g, &SwiGluBwdUp)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `g * up * sigmoid(a) * (1 + a * (1 - sigmoid(a)))`.
struct SwiGluBwdGate;

impl CustomOp3 for SwiGluBwdGate {
    fn name(&self) -> &'static str {
        "anneal-swiglu-bwd-gate"
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
        let (a, b, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?, rows(s3, l3, self.name())?);
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(4096).zip(a.par_chunks(4096).zip(b.par_chunks(4096).zip(g.par_chunks(4096)))).for_each(
            |(o, (a, (b, g)))| {
                for (((o, &a), &b), &g) in o.iter_mut().zip(a).zip(b).zip(g) {
                    let s = sigmoid(a);
                    *o = g * b * s * (1.0 + a * (1.0 - s));
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `g * silu(a)`.
struct SwiGluBwdUp;

impl CustomOp2 for SwiGluBwdUp {
    fn name(&self) -> &'static str {
        "anneal-swiglu-bwd-up"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(4096).zip(a.par_chunks(4096).zip(g.par_chunks(4096))).for_each(|(o, (a, g))| {
            for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                *o = g * a * sigmoid(a);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- cross-entropy

/// Mean next-token cross-entropy straight from logits `[b, t, v]`: row `(i, j < t - 1)` is
/// scored against `labels[i * t + j + 1]` (negative = ignored), the last position of each
/// sequence is skipped; nothing is copied, and neither log-probabilities nor a one-hot
/// are materialised. The backward writes `(softmax - onehot) * g / count` in one pass,
/// reusing the per-row log-sum-exp of the forward.
pub(crate) struct CausalLmXent {
    pub(crate) labels: Vec<i64>,
    pub(crate) t: usize,
    pub(crate) count: usize,
    lse: Mutex<Vec<f32>>,
}

impl CausalLmXent {
    pub(crate) fn new(labels: Vec<i64>, t: usize, count: usize) -> Self {
        Self { labels, t, count, lse: Mutex::new(Vec::new()) }
    }

    /// The label that row `r` of the flattened logits is scored against.
    fn target(labels: &[i64], t: usize, r: usize) -> Option<usize> {
        if r % t == t - 1 {
            return None;
        }
        usize::try_from(labels[r + 1]).ok()
    }
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    max + sum.ln()
}

impl CustomOp1 for CausalLmXent {
    fn name(&self) -> &'static str {
        "anneal-causal-lm-xent"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let v = last_dim(l);
        let (labels, t) = (&self.labels, self.t);
        let per_row: Vec<(f32, f64)> = x
            .par_chunks(v)
            .enumerate()
            .map(|(r, row)| match Self::target(labels, t, r) {
                None => (0.0, 0.0),
                Some(y) => {
                    let lse = log_sum_exp(row);
                    (lse, f64::from(lse - row[y]))
                }
            })
            .collect();
        let total: f64 = per_row.iter().map(|p| p.1).sum();
        let lse: Vec<f32> = per_row.into_iter().map(|p| p.0).collect();
        if let Ok(mut slot) = self.lse.lock() {
            *slot = lse;
        }
        let loss = (total / self.count as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let lse = self.lse.lock().map(|l| l.clone()).unwrap_or_default();
        let op = XentBwd { labels: &self.labels, t: self.t, lse, scale: g / self.count as f32 };
        Ok(Some(arg.apply_op1_no_bwd(&op)?))
    }
}

struct XentBwd<'a> {
    labels: &'a [i64],
    t: usize,
    lse: Vec<f32>,
    scale: f32,
}

impl CustomOp1 for XentBwd<'_> {
    fn name(&self) -> &'static str {
        "anneal-causal-lm-xent-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let v = last_dim(l);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(|(r, (o, row))| {
            if let Some(y) = CausalLmXent::target(self.labels, self.t, r) {
                let lse = self.lse.get(r).copied().unwrap_or_else(|| log_sum_exp(row));
                for (o, &z) in o.iter_mut().zip(row) {
                    *o = (z - lse).exp() * self.scale;
                }
                o[y] -= self.scale;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

// ---------------------------------------------------------------- frozen linear

/// `x W^T` (`x W` for Conv1D weights) against a frozen weight, as a node whose backward
/// returns `dx` only. candle's `Matmul` backward always computes both operands'
/// gradients, so a plain matmul would also compute (and keep) `x^T g` for a weight that
/// nothing trains: a third of a LoRA step's matmul FLOPs. The product is computed outside
/// the graph and handed over once (the op does not keep it alive).
pub(crate) struct FrozenMatmul {
    w: Tensor,
    conv1d: bool,
    y: Mutex<Option<Tensor>>,
}

impl FrozenMatmul {
    /// `x2`: `[n, in]`; returns `[n, out]` with a gradient path to `x2` only.
    pub(crate) fn apply(x2: &Tensor, w: &Tensor, conv1d: bool) -> Result<Tensor> {
        let wt = if conv1d { w.clone() } else { w.t()? };
        let y = x2.detach().matmul(&wt)?;
        x2.apply_op1(FrozenMatmul { w: w.clone(), conv1d, y: Mutex::new(Some(y)) })
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "anneal-frozen-matmul"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(y) = self.y.lock().ok().and_then(|mut y| y.take()) else { bail!("frozen matmul: forward ran twice") };
        let (st, l) = y.storage_and_layout();
        let Storage::Cpu(c) = &*st else { bail!("frozen matmul: not on the CPU") };
        Ok((CpuStorage::F32(rows(c, l, "anneal-frozen-matmul")?.to_vec()), y.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = if self.conv1d { self.w.t()? } else { self.w.clone() };
        Ok(Some(grad.matmul(&w)?))
    }
}
