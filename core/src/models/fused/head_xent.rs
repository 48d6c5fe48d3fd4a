//! The LM head and the causal-LM cross-entropy as one graph node, for training on the
//! CPU: `loss = mean over counted rows r of (lse(z_r) - z_r[y_r])` with `z = h W^T`.
//!
//! Through [`super::LinearOp`] + [`super::CausalLmXent`] the logits `[b * t, vocab]`
//! are a graph tensor that lives until the backward ends, and the loss's backward
//! allocates a second buffer of the same size for their gradient (2 x 131 MB on a
//! 32k-vocabulary model at batch 4 x 256). Here the logits of the counted rows only (a
//! label, not -100, and not a sequence's last position) go into one buffer that the op
//! keeps; the backward turns it in place into `dz = (softmax(z) - onehot) * g / count`,
//! runs the two gemms `dh = dz W` and `dW = dz^T h`, and drops it. Rows that are not
//! counted cost neither the head's product nor a gradient row.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, exp, last_dim, log_sum_exp, simd_fn};
use crate::models::sgemm::{matmul, Dst, Mat};

/// Vocabulary rows of the head's weight gradient per product (the gemm's packed copy of
/// `dz^T` is this many rows of `dz`'s columns: 8 MiB at 1024 counted rows).
const DW_BLOCK: usize = 2048;

/// What the forward keeps for the backward: the counted rows' logits and their
/// log-sum-exp.
struct Saved {
    logits: Vec<f32>,
    lse: Vec<f32>,
}

/// `hidden` `[b, t, h]` (after the final norm) and the head weight `[vocab, h]` -> the
/// scalar mean next-token loss against `labels` (`[b * t]`, shifted by one inside,
/// negative = ignored).
pub(crate) struct LmHeadXent {
    /// Flattened `(i * t + j)` indices of the counted rows, with their target token.
    rows: Vec<(usize, usize)>,
    saved: Mutex<Option<Saved>>,
}

simd_fn! {
    /// `z = e^(z - lse) * scale` in place over one row of logits.
    fn softmax_scaled_in_place(z: &mut [f32], lse: f32, scale: f32) {
        for z in z.iter_mut() {
            *z = exp(*z - lse) * scale;
        }
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("anneal-lm-head-xent: poisoned".into())
}

impl LmHeadXent {
    /// `labels` of a `[b, t]` batch, flattened; returns `None` when no label is counted.
    pub(crate) fn new(labels: &[i64], t: usize) -> Option<Self> {
        let rows: Vec<(usize, usize)> = (0..labels.len())
            .filter(|r| t > 0 && r % t != t - 1)
            .filter_map(|r| labels.get(r + 1).and_then(|&l| usize::try_from(l).ok()).map(|y| (r, y)))
            .collect();
        if rows.is_empty() {
            return None;
        }
        Some(Self { rows, saved: Mutex::new(None) })
    }

    /// The loss of `hidden` `[b, t, h]` through the head `weight` `[vocab, h]`.
    pub(crate) fn apply(self, hidden: &Tensor, weight: &Tensor) -> Result<Tensor> {
        hidden.contiguous()?.apply_op2(&weight.contiguous()?, self)
    }

    /// (hidden size, vocabulary) of the operands, checked against the counted rows.
    fn dims(&self, lx: &Layout, lw: &Layout) -> Result<(usize, usize)> {
        let (v, h) = lw.shape().dims2()?;
        let n = lx.shape().elem_count() / last_dim(lx);
        if last_dim(lx) != h || lx.dims().len() < 2 {
            bail!("anneal-lm-head-xent: hidden {:?} does not match the head {:?}", lx.dims(), lw.dims());
        }
        if self.rows.iter().any(|&(r, y)| r >= n || y >= v) {
            bail!("anneal-lm-head-xent: labels do not fit {n} rows of a {v}-token vocabulary");
        }
        Ok((h, v))
    }

    /// The counted rows of `x` `[n, h]`, gathered into `[rows, h]`.
    fn gather(&self, x: &[f32], h: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.rows.len() * h];
        out.par_chunks_mut(h).zip(&self.rows).for_each(|(o, &(r, _))| o.copy_from_slice(&x[r * h..(r + 1) * h]));
        out
    }

    /// The counted rows' logits `[rows, v]` = `xs W^T` and their log-sum-exp.
    fn logits(xs: &[f32], w: &[f32], h: usize, v: usize) -> Result<Saved> {
        let m = xs.len() / h.max(1);
        let mut logits = vec![0f32; m * v];
        let dst = Dst { data: &mut logits, offset: 0, rs: v, accumulate: false };
        matmul((m, v, h), dst, Mat::rows(xs, 0, h), Mat::transposed(w, 0, h), true)?;
        let lse = logits.par_chunks(v).map(log_sum_exp).collect();
        Ok(Saved { logits, lse })
    }
}

fn cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        _ => bail!("anneal-lm-head-xent: not on the CPU"),
    }
}

impl CustomOp2 for LmHeadXent {
    fn name(&self) -> &'static str {
        "anneal-lm-head-xent"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, v) = self.dims(l1, l2)?;
        let x = contiguous_f32(s1, l1, self.name(), "hidden")?;
        let w = contiguous_f32(s2, l2, self.name(), "weight")?;
        let saved = Self::logits(&self.gather(x, h), w, h, v)?;
        let total: f64 = saved
            .logits
            .par_chunks(v)
            .zip(&saved.lse)
            .zip(&self.rows)
            .map(|((z, &lse), &(_, y))| f64::from(lse - z[y]))
            .sum();
        *self.saved.lock().map_err(|_| poisoned())? = Some(saved);
        let loss = (total / self.rows.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let w_tracked = w.track_op();
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (h, v) = self.dims(lx, lw)?;
        let xv = contiguous_f32(cpu(&sx)?, lx, self.name(), "hidden")?;
        let wv = contiguous_f32(cpu(&sw)?, lw, self.name(), "weight")?;
        let xs = self.gather(xv, h);
        // A second backward through the same graph finds the buffer gone: recompute it.
        let taken = self.saved.lock().map_err(|_| poisoned())?.take();
        let Saved { logits: mut dz, lse } = match taken {
            Some(s) => s,
            None => Self::logits(&xs, wv, h, v)?,
        };
        if dz.len() != self.rows.len() * v {
            bail!("anneal-lm-head-xent: saved logits do not match the backward's shapes");
        }
        let scale = g / self.rows.len() as f32;
        dz.par_chunks_mut(v).zip(&lse).zip(&self.rows).for_each(|((z, &lse), &(_, y))| {
            softmax_scaled_in_place(z, lse, scale);
            z[y] -= scale;
        });
        let m = self.rows.len();
        // dh of the counted rows, `dz W`, scattered into the (zero) gradient of `hidden`.
        let mut dxs = vec![0f32; m * h];
        let dst = Dst { data: &mut dxs, offset: 0, rs: h, accumulate: false };
        matmul((m, h, v), dst, Mat::rows(&dz, 0, v), Mat::rows(wv, 0, h), true)?;
        let n = lx.shape().elem_count() / h;
        let mut dx = vec![0f32; n * h];
        for (row, &(r, _)) in dxs.chunks(h).zip(&self.rows) {
            dx[r * h..(r + 1) * h].copy_from_slice(row);
        }
        drop(dxs);
        let dw = if w_tracked {
            let mut dw = vec![0f32; v * h];
            // By blocks of vocabulary rows: in one product the gemm packs all of `dz^T`
            // into a buffer as large as the logits (124.5 MiB at 1020 rows x 32000).
            for v0 in (0..v).step_by(DW_BLOCK) {
                let rows = DW_BLOCK.min(v - v0);
                let dst = Dst { data: &mut dw, offset: v0 * h, rs: h, accumulate: false };
                matmul((rows, h, m), dst, Mat::transposed(&dz, v0, v), Mat::rows(&xs, 0, h), true)?;
            }
            drop(dz);
            Some(Tensor::from_vec(dw, (v, h), w.device())?)
        } else {
            None
        };
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), dw))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::models::fused::{CausalLmXent, LinearOp};
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Loss and gradients (hidden, head weight) against the head + cross-entropy pair
    /// it replaces, with ignored labels and the last positions skipped.
    #[test]
    fn matches_linear_then_xent() {
        let dev = Device::Cpu;
        let (b, t, h, v) = (2, 5, 12, 37);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, h), &dev).unwrap()).unwrap();
        let labels: Vec<i64> = vec![3, 36, -100, 0, 7, 1, 2, -100, 30, 11];
        let count = (0..b * t).filter(|r| r % t != t - 1 && labels[r + 1] >= 0).count();

        let logits = LinearOp::apply(x.as_tensor(), w.as_tensor(), None, false, false).unwrap();
        let want = logits.apply_op1(CausalLmXent::new(labels.clone(), t, count)).unwrap();
        let want_g = want.backward().unwrap();

        let got = LmHeadXent::new(&labels, t).unwrap().apply(x.as_tensor(), w.as_tensor()).unwrap();
        let got_g = got.backward().unwrap();

        assert!(max_diff(&want, &got) < 1e-5, "loss {want} vs {got}");
        for var in [&x, &w] {
            let (a, b) = (want_g.get(var).unwrap(), got_g.get(var).unwrap());
            assert!(max_diff(a, b) < 1e-5, "gradient differs by {}", max_diff(a, b));
            assert!(b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
        // Rows that are not counted get a zero gradient (row 2 -> label -100, row 4 last).
        let dx = got_g.get(&x).unwrap().reshape((b * t, h)).unwrap();
        for r in [1, 4, 6, 9] {
            let s = dx.get(r).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(s, 0.0, "row {r}");
        }
        // A second backward (the buffer already consumed) recomputes and agrees.
        let again = got.backward().unwrap();
        assert!(max_diff(again.get(&w).unwrap(), got_g.get(&w).unwrap()) < 1e-6);
        // The gradients scale with the loss's incoming gradient.
        let scaled = LmHeadXent::new(&labels, t).unwrap().apply(x.as_tensor(), w.as_tensor()).unwrap();
        let scaled_g = (scaled * 0.25).unwrap().backward().unwrap();
        for var in [&x, &w] {
            let (a, b) = (want_g.get(var).unwrap(), scaled_g.get(var).unwrap());
            assert!(max_diff(&(a * 0.25).unwrap(), b) < 1e-6, "scaled gradient");
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_all_ignored_is_none() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 4), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        let loss = LmHeadXent::new(&[0, 5, 2], 3).unwrap().apply(x.as_tensor(), &w).unwrap();
        let g = loss.backward().unwrap();
        assert!(g.get(&w).is_none() && g.get(&x).is_some());
        assert!(LmHeadXent::new(&[0, -100, -100], 3).is_none());
        // A label outside the vocabulary is an error, not a panic.
        assert!(LmHeadXent::new(&[0, 6, 2], 3).unwrap().apply(x.as_tensor(), &w).is_err());
    }
}
