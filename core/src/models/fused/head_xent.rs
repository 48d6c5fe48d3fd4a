//! The LM head and the causal-LM cross-entropy as one graph node, for training on the
//! CPU: `loss = mean over counted rows r of (lse(z_r) - z_r[y_r])` with `z = h W^T`.
//!
//! Through [`super::LinearOp`] + [`super::CausalLmXent`] the logits `[b * t, vocab]`
//! are a graph tensor that lives until the backward ends, and the loss's backward
//! allocates a second buffer of the same size for their gradient (2 x 131 MB on a
//! 32k-vocabulary model at batch 4 x 256). Here the forward goes over the counted rows
//! (a label, not -100, and not a sequence's last position) a block at a time: a block's
//! logits, its loss, its logits' gradient `dz = (softmax(z) - onehot) / count` in place,
//! and the two products `dh = dz W` and `dW += dz^T h`. The node keeps `dh` of the
//! counted rows and `dW` (which the backward would allocate anyway) and no logits, so
//! the training step's peak (the start of the backward, every activation still alive)
//! holds one block of logits instead of all of them. The backward scales what was kept
//! by the incoming gradient. Rows that are not counted cost neither the head's product
//! nor a gradient row.
//!
//! candle's backward adds every gradient an op returns to a zero tensor of the operand's
//! size (`or_insert` then `add`): for the head weight, two more `[vocab, h]` buffers
//! at the step's peak. Given a [`Deferred`], the backward leaves the weight's gradient
//! there instead, and the caller adds it to the gradient store after the backward
//! (`Model::loss_and_backward`).

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, exp, last_dim, log_sum_exp, simd_fn};
use crate::models::bgemm::{self, PackedRhs};
use crate::models::sgemm::{matmul, transpose_into, Dst, Mat};

/// Logits per block of rows (16 MiB): rows per block = this / vocabulary.
const BLOCK_LOGITS: usize = 4 << 20;

/// Rows of the gemm's f32 kernel on AVX-512 (4 vectors of 16): blocks hold whole panels
/// of this many rows, and the logits are computed a panel at a time.
const PANEL: usize = 64;

/// Vocabulary rows of the head's weight gradient per product: the gemm packs this many
/// columns of a block's `dz` (2 MiB at 128 rows) where one product over the whole
/// vocabulary would pack all of it (16 MiB more at the step's peak).
const DW_ROWS: usize = 4096;

/// What the forward keeps for the backward: the gradients of the mean loss for an
/// incoming gradient of 1.
struct Saved {
    /// `[counted rows, h]`.
    dh: Vec<f32>,
    /// `[vocab, h]` when the weight is tracked.
    dw: Option<Vec<f32>>,
}

/// Weight gradients a backward left outside candle's gradient store: (weight, gradient).
#[derive(Default)]
pub(crate) struct Deferred(Mutex<Vec<(Tensor, Tensor)>>);

impl Deferred {
    /// Adds the deferred gradients to `grads` (summed with any the store holds for the
    /// same weight, e.g. a head tied to the embedding).
    pub(crate) fn add_to(&self, grads: &mut candle_core::backprop::GradStore) -> Result<()> {
        let taken = std::mem::take(&mut *self.0.lock().map_err(|_| poisoned())?);
        for (w, g) in taken {
            let sum = match grads.remove(&w) {
                Some(e) => (e + g)?,
                None => g,
            };
            grads.insert(&w, sum);
        }
        Ok(())
    }
}

/// `hidden` `[b, t, h]` (after the final norm) and the head weight `[vocab, h]` -> the
/// scalar mean next-token loss against `labels` (`[b * t]`, shifted by one inside,
/// negative = ignored).
pub(crate) struct LmHeadXent {
    /// Flattened `(i * t + j)` indices of the counted rows, with their target token.
    rows: Vec<(usize, usize)>,
    /// Whether the forward computes the gradients (some operand is tracked), and the
    /// weight's with them.
    grads: bool,
    weight_grad: bool,
    /// Logits per block ([`BLOCK_LOGITS`]; smaller in tests).
    block_logits: usize,
    /// Vocabulary rows per weight-gradient product ([`DW_ROWS`]; smaller in tests).
    dw_rows: usize,
    /// Where the backward leaves the weight's gradient instead of returning it.
    defer: Option<Arc<Deferred>>,
    /// Mixed precision: the three products multiply in bf16 and sum in f32 (`bgemm`).
    bf16: bool,
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

simd_fn! {
    /// `x *= s` in place.
    fn scale_in_place(x: &mut [f32], s: f32) {
        for x in x.iter_mut() {
            *x *= s;
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
        Some(Self {
            rows,
            grads: false,
            weight_grad: false,
            block_logits: BLOCK_LOGITS,
            dw_rows: DW_ROWS,
            defer: None,
            bf16: false,
            saved: Mutex::new(None),
        })
    }

    /// The backward leaves the weight's gradient in `to` instead of returning it.
    pub(crate) fn deferring(mut self, to: Option<Arc<Deferred>>) -> Self {
        self.defer = to;
        self
    }

    /// The products multiply in bf16 and sum in f32 (mixed precision).
    pub(crate) fn bf16(mut self, on: bool) -> Self {
        self.bf16 = on;
        self
    }

    /// The loss of `hidden` `[b, t, h]` through the head `weight` `[vocab, h]`.
    pub(crate) fn apply(mut self, hidden: &Tensor, weight: &Tensor) -> Result<Tensor> {
        self.weight_grad = weight.track_op();
        self.grads = self.weight_grad || hidden.track_op();
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

    /// The summed loss of the counted rows `xs` `[rows, h]` through `w` `[v, h]`, and
    /// with `grads` the mean loss's gradients, block of rows by block of rows.
    fn run(&self, xs: &[f32], w: &[f32], (h, v): (usize, usize), grads: bool) -> Result<(f64, Option<Saved>)> {
        let m = self.rows.len();
        // Whole panels where a block holds more than one.
        let block = match self.block_logits / v.max(1) {
            b if b > PANEL => b / PANEL * PANEL,
            b => b,
        };
        let block = block.clamp(1, m.max(1));
        let scale = 1.0 / m as f32;
        let panel = block.min(PANEL);
        let zt_len = if self.bf16 { 0 } else { panel * v };
        let (mut z, mut zt) = (vec![0f32; block * v], vec![0f32; zt_len]);
        let mut dh = if grads { vec![0f32; m * h] } else { Vec::new() };
        let mut dw = (grads && self.weight_grad).then(|| vec![0f32; v * h]);
        // In bf16, `W` packed once for the logits (`xb W^T`) and once for `dz W`.
        let packed = match self.bf16 {
            true => Some((
                PackedRhs::new(Mat::transposed(w, 0, h), (h, v), true)?,
                grads.then(|| PackedRhs::new(Mat::rows(w, 0, h), (v, h), true)).transpose()?,
            )),
            false => None,
        };
        let mut total = 0f64;
        for r0 in (0..m).step_by(block) {
            let rows = block.min(m - r0);
            let (z, xb) = (&mut z[..rows * v], &xs[r0 * h..(r0 + rows) * h]);
            if let Some((wt, _)) = &packed {
                let dst = Dst { data: z, offset: 0, rs: v, accumulate: false };
                bgemm::matmul_packed(rows, dst, Mat::rows(xb, 0, h), wt, true)?;
            }
            // The logits as `W xb^T` `[v, rows]`, a panel of rows at a time, then
            // transposed: asked for `xb W^T`, the gemm would copy all of `W` into its packed
            // layout for every block (0.37 s against 0.24 s a step at 131 rows); this way
            // it reads `W` where it is.
            for p0 in (0..rows).step_by(panel).filter(|_| packed.is_none()) {
                let p = panel.min(rows - p0);
                let dst = Dst { data: &mut zt, offset: 0, rs: p, accumulate: false };
                matmul((v, p, h), dst, Mat::rows(w, 0, h), Mat::transposed(xb, p0 * h, h), true)?;
                transpose_into(&zt, v, p, &mut z[p0 * v..(p0 + p) * v]);
            }
            let labels = &self.rows[r0..r0 + rows];
            total += z
                .par_chunks_mut(v)
                .zip(labels)
                .map(|(z, &(_, y))| {
                    let lse = log_sum_exp(z);
                    let loss = f64::from(lse - z[y]);
                    if grads {
                        softmax_scaled_in_place(z, lse, scale);
                        z[y] -= scale;
                    }
                    loss
                })
                .sum::<f64>();
            if !grads {
                continue;
            }
            let dst = Dst { data: &mut dh, offset: r0 * h, rs: h, accumulate: false };
            match &packed {
                Some((_, Some(wp))) => bgemm::matmul_packed(rows, dst, Mat::rows(z, 0, v), wp, true)?,
                _ => matmul((rows, h, v), dst, Mat::rows(z, 0, v), Mat::rows(w, 0, h), true)?,
            }
            let gemm = if self.bf16 { bgemm::matmul } else { matmul };
            if let Some(dw) = dw.as_mut() {
                for v0 in (0..v).step_by(self.dw_rows.max(1)) {
                    let n = self.dw_rows.max(1).min(v - v0);
                    let dst = Dst { data: dw, offset: v0 * h, rs: h, accumulate: r0 > 0 };
                    gemm((n, h, rows), dst, Mat::transposed(z, v0, v), Mat::rows(xb, 0, h), true)?;
                }
            }
        }
        Ok((total, grads.then_some(Saved { dh, dw })))
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
        let dims = self.dims(l1, l2)?;
        let x = contiguous_f32(s1, l1, self.name(), "hidden")?;
        let w = contiguous_f32(s2, l2, self.name(), "weight")?;
        let (total, saved) = self.run(&self.gather(x, dims.0), w, dims, self.grads)?;
        *self.saved.lock().map_err(|_| poisoned())? = saved;
        let loss = (total / self.rows.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let taken = self.saved.lock().map_err(|_| poisoned())?.take();
        let (sx, lx) = x.storage_and_layout();
        let (h, v) = {
            let (_, lw) = w.storage_and_layout();
            self.dims(lx, lw)?
        };
        // A second backward through the same graph finds the gradients taken: recompute.
        let saved = match taken {
            Some(s) => s,
            None => {
                let (sw, lw) = w.storage_and_layout();
                let xv = contiguous_f32(cpu(&sx)?, lx, self.name(), "hidden")?;
                let wv = contiguous_f32(cpu(&sw)?, lw, self.name(), "weight")?;
                match self.run(&self.gather(xv, h), wv, (h, v), true)?.1 {
                    Some(s) => s,
                    None => bail!("anneal-lm-head-xent: no gradients computed"),
                }
            }
        };
        drop(sx);
        let Saved { dh, dw } = saved;
        if dh.len() != self.rows.len() * h || dw.as_ref().is_some_and(|d| d.len() != v * h) {
            bail!("anneal-lm-head-xent: saved gradients do not match the backward's shapes");
        }
        // dh of the counted rows, scattered into the (zero) gradient of `hidden`.
        let n = lx.shape().elem_count() / h;
        let mut dx = vec![0f32; n * h];
        for (row, &(r, _)) in dh.chunks(h).zip(&self.rows) {
            let out = &mut dx[r * h..(r + 1) * h];
            out.copy_from_slice(row);
            if g != 1.0 {
                scale_in_place(out, g);
            }
        }
        drop(dh);
        let dw = match dw {
            Some(mut dw) if w.track_op() => {
                if g != 1.0 {
                    dw.par_chunks_mut(h.max(1) * 64).for_each(|c| scale_in_place(c, g));
                }
                let dw = Tensor::from_vec(dw, (v, h), w.device())?;
                match &self.defer {
                    Some(d) => {
                        d.0.lock().map_err(|_| poisoned())?.push((w.clone(), dw));
                        None
                    }
                    None => Some(dw),
                }
            }
            _ => None,
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

    /// Random hidden states `[b, t, h]` and head weight `[v, h]`, as variables.
    fn hidden_and_weight(b: usize, t: usize, h: usize, v: usize) -> (Var, Var) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, h), &dev).unwrap()).unwrap();
        (x, w)
    }

    /// Loss and gradients (hidden, head weight) against the head + cross-entropy pair
    /// it replaces, with ignored labels and the last positions skipped.
    #[test]
    fn matches_linear_then_xent() {
        let (b, t, h, v) = (2, 5, 12, 37);
        let (x, w) = hidden_and_weight(b, t, h, v);
        let labels: Vec<i64> = vec![3, 36, -100, 0, 7, 1, 2, -100, 30, 11];
        let count = (0..b * t).filter(|r| r % t != t - 1 && labels[r + 1] >= 0).count();

        let logits = LinearOp::apply(x.as_tensor(), w.as_tensor(), None, (false, false), false).unwrap();
        let want = logits.apply_op1(CausalLmXent::new(labels.clone(), t, count)).unwrap();
        let want_g = want.backward().unwrap();

        // Blocks of 4 rows (6 counted rows: 4 + 2).
        let op = LmHeadXent { block_logits: 4 * v, ..LmHeadXent::new(&labels, t).unwrap() };
        assert_eq!(op.rows.len(), 6);
        let got = op.apply(x.as_tensor(), w.as_tensor()).unwrap();
        let got_g = got.backward().unwrap();
        let one = LmHeadXent::new(&labels, t).unwrap().apply(x.as_tensor(), w.as_tensor()).unwrap();
        let one_g = one.backward().unwrap();
        assert!(max_diff(one_g.get(&w).unwrap(), got_g.get(&w).unwrap()) < 1e-6, "one block vs two");

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

    /// Blocks of whole 64-row panels (198 counted rows: a block of 128 in two panels,
    /// then 70 in panels of 64 and 6) and the weight gradient by vocabulary rows give
    /// the reference's loss and gradients; in bf16 (mixed precision), the reference's
    /// with bf16 products (the head as a bf16 linear node).
    #[test]
    fn blocks_of_panels_match_linear_then_xent() {
        let (b, t, h, v) = (2, 100, 40, 11);
        let (x, w) = hidden_and_weight(b, t, h, v);
        let labels: Vec<i64> = (0..b * t).map(|i| (i * 7 % v) as i64).collect();
        let mut losses = Vec::new();
        for bf16 in [false, true] {
            let logits = LinearOp::apply(x.as_tensor(), w.as_tensor(), None, (false, false), bf16).unwrap();
            let want = logits.apply_op1(CausalLmXent::new(labels.clone(), t, b * (t - 1))).unwrap();
            let want_g = want.backward().unwrap();
            // Weight-gradient products of 4 vocabulary rows (4 + 4 + 3).
            let op = LmHeadXent { block_logits: 150 * v, dw_rows: 4, ..LmHeadXent::new(&labels, t).unwrap() };
            assert_eq!(op.rows.len(), 198);
            let got = op.bf16(bf16).apply(x.as_tensor(), w.as_tensor()).unwrap();
            let got_g = got.backward().unwrap();
            assert!(max_diff(&want, &got) < 1e-5, "bf16 {bf16}: loss {want} vs {got}");
            for var in [&x, &w] {
                let d = max_diff(want_g.get(var).unwrap(), got_g.get(var).unwrap());
                assert!(d < 1e-5, "bf16 {bf16}: gradient differs by {d}");
            }
            losses.push(got.to_scalar::<f32>().unwrap());
        }
        assert!((losses[0] - losses[1]).abs() > 1e-5, "bf16 is not f32: {losses:?}");
    }

    /// A deferred weight gradient is the one the backward would have returned, added to
    /// the store's after the backward (here on top of a second use of the weight).
    #[test]
    fn a_deferred_weight_gradient_matches_the_returned_one() {
        let (b, t, h, v) = (2, 4, 8, 19);
        let (x, w) = hidden_and_weight(b, t, h, v);
        let labels: Vec<i64> = vec![3, 18, -100, 0, 7, 1, 2, 11];
        let loss = |defer: Option<Arc<Deferred>>| {
            let head = LmHeadXent::new(&labels, t).unwrap().deferring(defer);
            let l = head.apply(x.as_tensor(), w.as_tensor()).unwrap();
            (l * 0.5).unwrap() + w.as_tensor().sqr().unwrap().sum_all().unwrap()
        };
        let want = loss(None).unwrap().backward().unwrap();
        let deferred = Arc::new(Deferred::default());
        let mut got = loss(Some(deferred.clone())).unwrap().backward().unwrap();
        // Before adding: the store holds only the square's gradient.
        let square = (w.as_tensor() * 2.0).unwrap();
        assert!(max_diff(got.get(&w).unwrap(), &square) < 1e-6);
        deferred.add_to(&mut got).unwrap();
        for var in [&x, &w] {
            let d = max_diff(want.get(var).unwrap(), got.get(var).unwrap());
            assert!(d < 1e-6, "gradient differs by {d}");
        }
        assert!(deferred.0.lock().unwrap().is_empty(), "taken once");
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
