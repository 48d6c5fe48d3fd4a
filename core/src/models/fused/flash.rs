//! Full (non-causal) attention as one memory-efficient node: `softmax(q k^T * scale) v`
//! for every head, on q `[b, n, heads * d]` and k, v `[b, m, heads * d]` in the layout
//! the projections make (column views allowed), written straight into
//! `[b, n, heads * d]` for the output projection. The diffusion UNet's self- and
//! cross-attention run on it: the composite form kept `[b, heads, n, m]` scores and
//! probabilities (and as much again in the backward) per attention layer, with copies to
//! split and merge the heads.
//!
//! Forward, one rayon task per (batch row, block of query rows), each head in turn:
//! `S = Q K^T` for the block against every key (a `rows x m` scratch), `P = e^(S * scale
//! - max)`, `Y = P V / rowsum(P)`. Only each row's log-sum-exp `L = max + ln rowsum(P)`
//! (`[b, n, heads]`) is kept for the backward.
//!
//! Backward, one task per (batch row, head), by the same blocks: `P = e^(S * scale - L)`
//! recomputed from `S = Q K^T`, `dP = dY V^T`, `dS = scale * P (dP - D)` with
//! `D_i = dY_i . Y_i` (the softmax backward's `rowsum(P dP)`), `dQ = dS K`,
//! `dK += dS^T Q`, `dV += P^T dY`. The gradients are gathered per head and laid out as
//! `[b, len, heads * d]` at the end; an operand that tracks no gradient gets none.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{cpu, View};
use super::{dot_lanes, exp, row_max, simd_fn, LANES};
use crate::models::sgemm::{matmul, Dst, Mat};

/// Scratch floats for one block's scores (256 KiB: they stay in the core's L2 cache).
const BLOCK_FLOATS: usize = 64 * 1024;
/// Query rows per block, at most and at least (few rows make thin products).
const MAX_ROWS: usize = 64;
const MIN_ROWS: usize = 8;

/// One attention node; see the module docs.
pub(crate) struct FlashAttention {
    heads: usize,
    head_dim: usize,
    scale: f32,
    max_rows: usize,
    /// The forward's log-sum-exp per (batch row, query, head), for the backward.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
}

simd_fn! {
    /// `x = e^(x * scale - shift)` over one row; returns the sum of the new `x`.
    fn exp_in_place(x: &mut [f32], shift: f32, scale: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let lane = |v: &mut f32, a: &mut f32| {
            let e = exp(*v * scale - shift);
            *v = e;
            *a += e;
        };
        // Whole chunks first, so that the partial sums stay in registers.
        let mut xi = x.chunks_exact_mut(LANES);
        for xc in &mut xi {
            for (v, a) in xc.iter_mut().zip(acc.iter_mut()) {
                lane(v, a);
            }
        }
        for (v, a) in xi.into_remainder().iter_mut().zip(acc.iter_mut()) {
            lane(v, a);
        }
        acc.iter().sum()
    }
}

simd_fn! {
    /// `dp = scale * p * (dp - di)` over one row: the scores' gradient.
    fn scores_grad(dp: &mut [f32], p: &[f32], di: f32, scale: f32) {
        for (g, &p) in dp.iter_mut().zip(p) {
            *g = scale * p * (*g - di);
        }
    }
}

/// The operands as views, checked against `(b, n, m, heads * d)`.
struct Operands<'a> {
    q: View<'a>,
    k: View<'a>,
    v: View<'a>,
}

impl FlashAttention {
    /// `heads` heads of `head_dim`; the scores are multiplied by `scale` before the softmax.
    pub(crate) fn new(heads: usize, head_dim: usize, scale: f32) -> Self {
        Self { heads, head_dim, scale, max_rows: MAX_ROWS, lse: Mutex::new(None) }
    }

    /// Query rows per block for `m` keys.
    fn rows(&self, m: usize) -> usize {
        (BLOCK_FLOATS / m.max(1)).clamp(MIN_ROWS, MAX_ROWS).min(self.max_rows).max(1)
    }

    /// `(b, n, m)` of the operands, checked against the heads.
    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<(usize, usize, usize)> {
        let (h, d) = (self.heads, self.head_dim);
        if h == 0 || d == 0 || !(self.scale.is_finite() && self.scale > 0.0) {
            bail!("anneal-flash-attention: {h} heads of {d} with scale {}", self.scale);
        }
        let &[b, n, w] = lq.dims() else {
            bail!("anneal-flash-attention: q must be [b, n, heads * d], got {:?}", lq.dims())
        };
        let &[bk, m, _] = lk.dims() else {
            bail!("anneal-flash-attention: k must be [b, m, heads * d], got {:?}", lk.dims())
        };
        if w != h * d || bk != b || lk.dims()[2] != w || lv.dims() != lk.dims() || m == 0 {
            bail!(
                "anneal-flash-attention: q {:?}, k {:?}, v {:?} do not fit {h} heads of {d}",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        Ok((b, n, m))
    }

    fn views<'a>(
        &self,
        (sq, lq): (&'a CpuStorage, &Layout),
        (sk, lk): (&'a CpuStorage, &Layout),
        (sv, lv): (&'a CpuStorage, &Layout),
        (b, n, m): (usize, usize, usize),
    ) -> Result<Operands<'a>> {
        let w = self.heads * self.head_dim;
        Ok(Operands {
            q: View::new(sq, lq, (b, n, w), "q")?,
            k: View::new(sk, lk, (b, m, w), "k")?,
            v: View::new(sv, lv, (b, m, w), "v")?,
        })
    }
}

/// Whether heads of `d` are too narrow for gemm's register tiles (64 rows by 6 columns
/// with AVX-512): then the key and value gradients are computed transposed, so that
/// the keys run along the tiles' rows.
fn narrow(d: usize) -> bool {
    d < 64
}

/// `x` in `count` parts of `size`, or `count` Nones when `x` is empty.
fn parts(x: &mut [f32], size: usize, count: usize) -> Vec<Option<&mut [f32]>> {
    if x.is_empty() {
        (0..count).map(|_| None).collect()
    } else {
        x.chunks_mut(size.max(1)).map(Some).collect()
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("anneal-flash-attention: poisoned lock".into())
}

/// Whether the products of one task should use every thread: fewer tasks than threads.
fn threads_inside(tasks: usize) -> bool {
    tasks < rayon::current_num_threads()
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "anneal-flash-attention"
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
        let (b, n, m) = self.dims(l1, l2, l3)?;
        let Operands { q, k, v } = self.views((s1, l1), (s2, l2), (s3, l3), (b, n, m))?;
        let (h, d, scale) = (self.heads, self.head_dim, self.scale);
        let w = h * d;
        let rows = self.rows(m);
        let mut y = vec![0f32; b * n * w];
        let mut lse = vec![0f32; b * n * h];
        if y.is_empty() {
            *self.lse.lock().map_err(poisoned)? = Some(Arc::new(lse));
            return Ok((CpuStorage::F32(y), Shape::from((b, n, w))));
        }
        let inside = threads_inside(b * n.div_ceil(rows));
        y.par_chunks_mut(n * w)
            .zip(lse.par_chunks_mut(n * h))
            .enumerate()
            .flat_map(|(bi, (yb, lb))| {
                yb.par_chunks_mut(rows * w)
                    .zip(lb.par_chunks_mut(rows * h))
                    .enumerate()
                    .map(move |(blk, (yc, lc))| (bi, blk * rows, yc, lc))
            })
            .try_for_each(|(bi, r0, yc, lc)| -> Result<()> {
                let mq = yc.len() / w;
                let (mut s, mut inv) = (vec![0f32; mq * m], vec![0f32; mq]);
                for hh in 0..h {
                    let dst = Dst { data: &mut s, offset: 0, rs: m, accumulate: false };
                    matmul((mq, m, d), dst, q.head(bi, hh, d, r0), k.head_t(bi, hh, d), inside)?;
                    for (i, row) in s.chunks_mut(m).enumerate() {
                        let shift = row_max(row) * scale;
                        let sum = exp_in_place(row, shift, scale);
                        inv[i] = 1.0 / sum;
                        lc[i * h + hh] = shift + sum.ln();
                    }
                    let dst = Dst { data: &mut *yc, offset: hh * d, rs: w, accumulate: false };
                    matmul((mq, d, m), dst, Mat::rows(&s, 0, m), v.head(bi, hh, d, 0), inside)?;
                    for (i, &f) in inv.iter().enumerate() {
                        yc[i * w + hh * d..][..d].iter_mut().for_each(|x| *x *= f);
                    }
                }
                Ok(())
            })?;
        *self.lse.lock().map_err(poisoned)? = Some(Arc::new(lse));
        Ok((CpuStorage::F32(y), Shape::from((b, n, w))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self
            .lse
            .lock()
            .map_err(poisoned)?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("anneal-flash-attention: backward without forward".into()))?;
        let (need_q, need_k, need_v) = (q.track_op(), k.track_op(), v.track_op());
        if !(need_q || need_k || need_v) {
            return Ok((None, None, None));
        }
        let grad = grad.contiguous()?;
        let ((sq, lq), (sk, lk), (sv, lv)) = (q.storage_and_layout(), k.storage_and_layout(), v.storage_and_layout());
        let ((so, lo), (sg, lg)) = (res.storage_and_layout(), grad.storage_and_layout());
        let (b, n, m) = self.dims(lq, lk, lv)?;
        let ops = self.views((cpu(&sq)?, lq), (cpu(&sk)?, lk), (cpu(&sv)?, lv), (b, n, m))?;
        let (h, d, scale) = (self.heads, self.head_dim, self.scale);
        let w = h * d;
        let o = View::new(cpu(&so)?, lo, (b, n, w), "the output")?;
        let g = View::new(cpu(&sg)?, lg, (b, n, w), "the gradient")?;
        if lse.len() != b * n * h {
            bail!("anneal-flash-attention: the saved log-sum-exp does not match the backward's shapes");
        }
        let dev = q.device();
        if b * n == 0 {
            let zeros = |need: bool, t: &Tensor| if need { t.zeros_like().map(Some) } else { Ok(None) };
            return Ok((zeros(need_q, q)?, zeros(need_k, k)?, zeros(need_v, v)?));
        }
        let rows = self.rows(m);
        // Per head (`[b, heads, len, d]`; dK and dV `[b, heads, d, len]` for narrow heads),
        // laid out as the operands at the end; one part per (batch row, head) task, none
        // for a gradient nobody needs.
        let buf = |need: bool, len: usize| if need { vec![0f32; b * h * len * d] } else { Vec::new() };
        let (mut dq, mut dk, mut dv) = (buf(need_q, n), buf(need_k, m), buf(need_v, m));
        let (pq, pk, pv) = (parts(&mut dq, n * d, b * h), parts(&mut dk, m * d, b * h), parts(&mut dv, m * d, b * h));
        let inside = threads_inside(b * h);
        pq.into_par_iter().zip(pk).zip(pv).enumerate().try_for_each(
            |(task, ((mut dqc, mut dkc), mut dvc))| -> Result<()> {
                let (bi, hh) = (task / h, task % h);
                let (mut s, mut dp, mut di) = (vec![0f32; rows * m], vec![0f32; rows * m], vec![0f32; rows]);
                for r0 in (0..n).step_by(rows) {
                    let mq = rows.min(n - r0);
                    let (s, dp) = (&mut s[..mq * m], &mut dp[..mq * m]);
                    // P, recomputed from the scores and the saved log-sum-exp; D = rowsum(dY Y).
                    let dst = Dst { data: &mut *s, offset: 0, rs: m, accumulate: false };
                    matmul((mq, m, d), dst, ops.q.head(bi, hh, d, r0), ops.k.head_t(bi, hh, d), inside)?;
                    for (i, row) in s.chunks_mut(m).enumerate() {
                        exp_in_place(row, lse[(bi * n + r0 + i) * h + hh], scale);
                        di[i] = dot_lanes(g.row(bi, r0 + i, hh * d, d)?, o.row(bi, r0 + i, hh * d, d)?);
                    }
                    // dS, in place of dP = dY V^T.
                    let dst = Dst { data: &mut *dp, offset: 0, rs: m, accumulate: false };
                    matmul((mq, m, d), dst, g.head(bi, hh, d, r0), ops.v.head_t(bi, hh, d), inside)?;
                    for ((dprow, prow), &dii) in dp.chunks_mut(m).zip(s.chunks(m)).zip(&di[..mq]) {
                        scores_grad(dprow, prow, dii, scale);
                    }
                    if let Some(dqc) = dqc.as_deref_mut() {
                        let dst = Dst { data: dqc, offset: r0 * d, rs: d, accumulate: false };
                        matmul((mq, d, m), dst, Mat::rows(dp, 0, m), ops.k.head(bi, hh, d, 0), inside)?;
                    }
                    if narrow(d) {
                        // dK^T = Q^T dS and dV^T = dY^T P (`[d, m]` per head): gemm then
                        // runs the keys along its register tiles and reads dS and P in
                        // place, where dK = dS^T Q would run the head's few columns there.
                        if let Some(dkc) = dkc.as_deref_mut() {
                            let dst = Dst { data: dkc, offset: 0, rs: m, accumulate: true };
                            matmul((d, m, mq), dst, ops.q.head_t_at(bi, hh, d, r0), Mat::rows(dp, 0, m), inside)?;
                        }
                        if let Some(dvc) = dvc.as_deref_mut() {
                            let dst = Dst { data: dvc, offset: 0, rs: m, accumulate: true };
                            matmul((d, m, mq), dst, g.head_t_at(bi, hh, d, r0), Mat::rows(s, 0, m), inside)?;
                        }
                        continue;
                    }
                    if let Some(dkc) = dkc.as_deref_mut() {
                        let dst = Dst { data: dkc, offset: 0, rs: d, accumulate: true };
                        matmul((m, d, mq), dst, Mat::transposed(dp, 0, m), ops.q.head(bi, hh, d, r0), inside)?;
                    }
                    if let Some(dvc) = dvc.as_deref_mut() {
                        let dst = Dst { data: dvc, offset: 0, rs: d, accumulate: true };
                        matmul((m, d, mq), dst, Mat::transposed(s, 0, m), g.head(bi, hh, d, r0), inside)?;
                    }
                }
                Ok(())
            },
        )?;
        let merge = |need: bool, per_head: Vec<f32>, len: usize, t: bool| -> Result<Option<Tensor>> {
            if !need {
                return Ok(None);
            }
            let mut out = vec![0f32; b * len * w];
            out.par_chunks_mut(len * w).enumerate().for_each(|(bi, ob)| {
                for hh in 0..h {
                    let src = &per_head[(bi * h + hh) * len * d..][..len * d];
                    if t {
                        for (j, col) in src.chunks(len).enumerate() {
                            for (i, &x) in col.iter().enumerate() {
                                ob[i * w + hh * d + j] = x;
                            }
                        }
                    } else {
                        for (i, r) in src.chunks(d).enumerate() {
                            ob[i * w + hh * d..][..d].copy_from_slice(r);
                        }
                    }
                }
            });
            Ok(Some(Tensor::from_vec(out, (b, len, w), dev)?))
        };
        let t = narrow(d);
        Ok((merge(need_q, dq, n, false)?, merge(need_k, dk, m, t)?, merge(need_v, dv, m, t)?))
    }
}

/// `softmax(q k^T * scale) v` over `heads` heads of `head_dim`, by [`FlashAttention`]:
/// q `[b, n, heads * head_dim]`, k and v `[b, m, heads * head_dim]`, all f32 on the CPU
/// (see [`super::usable`]); operands whose rows are strided are copied first.
pub(crate) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
    scale: f32,
) -> Result<Tensor> {
    let rows = |x: &Tensor| -> Result<Tensor> {
        Ok(if x.rank() == 3 && x.stride()[2] == 1 { x.clone() } else { x.contiguous()? })
    };
    rows(q)?.apply_op3(&rows(k)?, &rows(v)?, FlashAttention::new(heads, head_dim, scale))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{DType, Device, Var, D};

    use super::*;

    /// The composite form: heads split, scaled scores, softmax, weighted sum, heads merged.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, h: usize, d: usize, scale: f64) -> Tensor {
        let (b, n, _) = q.dims3().unwrap();
        let m = k.dim(1).unwrap();
        let split =
            |x: &Tensor, len: usize| x.reshape((b, len, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let (qh, kh, vh) = (split(q, n), split(k, m), split(v, m));
        let s = (qh.matmul(&kh.t().unwrap()).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(&vh).unwrap().transpose(1, 2).unwrap().reshape((b, n, h * d)).unwrap()
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// `max |a - b| / max |b|`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        max_abs(&(a - b).unwrap()) / max_abs(b).max(f32::MIN_POSITIVE)
    }

    /// Forward and the gradients of `x` (q from its first columns, k and v from the
    /// context's, when given, or x's) against the composite form.
    fn check(b: usize, n: usize, m: Option<usize>, h: usize, d: usize, max_rows: usize) {
        let dev = Device::Cpu;
        let w = h * d;
        // q, k, v as column views of fused projections, as a model may pass them.
        let x = Var::randn(0f32, 1.0, (b, n, 3 * w), &dev).unwrap();
        let ctx = m.map(|m| Var::randn(0f32, 1.0, (b, m, 2 * w), &dev).unwrap());
        let q = x.narrow(D::Minus1, 0, w).unwrap();
        let (k, v) = match &ctx {
            Some(c) => (c.narrow(D::Minus1, 0, w).unwrap(), c.narrow(D::Minus1, w, w).unwrap()),
            None => (x.narrow(D::Minus1, w, w).unwrap(), x.narrow(D::Minus1, 2 * w, w).unwrap()),
        };
        let scale = 1.0 / (d as f64).sqrt();
        let mut op = FlashAttention::new(h, d, scale as f32);
        op.max_rows = max_rows;
        let what = format!("b {b} n {n} m {m:?} heads {h} d {d} rows {max_rows}");
        let fused = q.apply_op3(&k, &v, op).unwrap();
        let want = reference(&q, &k, &v, h, d, scale);
        assert_eq!(fused.dtype(), DType::F32);
        assert!(rel_diff(&fused, &want) < 1e-5, "forward {what}: {}", rel_diff(&fused, &want));
        let dy = Tensor::randn(0f32, 1.0, (b, n, w), &dev).unwrap();
        let g_fused = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let g_want = (want * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("x", x.as_tensor())];
        vars.extend(ctx.as_ref().map(|c| ("context", c.as_tensor())));
        for (name, var) in vars {
            let (a, e) = (g_fused.get(var).unwrap(), g_want.get(var).unwrap());
            assert!(max_abs(e) > 0.0, "{what}: no reference gradient for {name}");
            assert!(rel_diff(a, e) < 1e-5, "gradient of {name}, {what}: {}", rel_diff(a, e));
        }
    }

    #[test]
    fn forward_and_gradients_match_the_composite_form() {
        // (b, n, m (None: self-attention), heads, d, rows per block): block remainders,
        // cross-attention with fewer and more keys than queries, head dims 8 and 40 (the
        // transposed products of narrow heads) and 64.
        for (b, n, m, h, d, rows) in [
            (2, 33, Some(17), 2, 64, 16),
            (1, 45, None, 4, 8, 16),
            (3, 70, Some(13), 2, 8, 64),
            (3, 37, Some(77), 3, 40, 8),
            (1, 9, Some(120), 1, 40, 4),
            (2, 64, None, 8, 8, 64),
            (3, 1, Some(5), 2, 8, 64),
        ] {
            check(b, n, m, h, d, rows);
        }
        // The default block size for many keys (8 rows per block at 8192 keys), with a remainder.
        assert_eq!(FlashAttention::new(1, 8, 1.0).rows(8192), 8);
        check(1, 21, Some(8192), 1, 8, MAX_ROWS);
    }

    #[test]
    fn a_detached_context_gets_no_gradient_and_the_query_still_does() {
        let dev = Device::Cpu;
        let (h, d) = (2, 8);
        let q = Var::randn(0f32, 1.0, (2, 11, h * d), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 6, h * d), &dev).unwrap();
        let y = q.apply_op3(&ctx, &ctx, FlashAttention::new(h, d, 0.3)).unwrap();
        let want = reference(q.as_tensor(), &ctx, &ctx, h, d, 0.3);
        let dy = Tensor::randn(0f32, 1.0, (2, 11, h * d), &dev).unwrap();
        let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &dy).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&ctx).is_none());
        let (a, e) = (g.get(q.as_tensor()).unwrap(), gw.get(q.as_tensor()).unwrap());
        assert!(rel_diff(a, e) < 1e-5, "{}", rel_diff(a, e));
    }

    #[test]
    fn repeated_backward_agrees_and_bad_operands_are_errors_not_panics() {
        let dev = Device::Cpu;
        let q = Var::randn(0f32, 1.0, (1, 4, 8), &dev).unwrap();
        let loss = q.apply_op3(&q, &q, FlashAttention::new(2, 4, 0.5)).unwrap().sqr().unwrap().sum_all().unwrap();
        let (g1, g2) = (loss.backward().unwrap(), loss.backward().unwrap());
        assert_eq!(rel_diff(g1.get(q.as_tensor()).unwrap(), g2.get(q.as_tensor()).unwrap()), 0.0);
        let k = Tensor::zeros((1, 5, 6), DType::F32, &dev).unwrap();
        let wide = Tensor::zeros((1, 5, 8), DType::F32, &dev).unwrap();
        let other_batch = Tensor::zeros((2, 5, 8), DType::F32, &dev).unwrap();
        let no_keys = Tensor::zeros((1, 0, 8), DType::F32, &dev).unwrap();
        assert!(q.apply_op3(&k, &k, FlashAttention::new(2, 4, 0.5)).is_err());
        assert!(q.apply_op3(&wide, &k, FlashAttention::new(2, 4, 0.5)).is_err());
        assert!(q.apply_op3(&other_batch, &other_batch, FlashAttention::new(2, 4, 0.5)).is_err());
        assert!(q.apply_op3(&no_keys, &no_keys, FlashAttention::new(2, 4, 0.5)).is_err());
        assert!(q.apply_op3(&q, &q, FlashAttention::new(3, 4, 0.5)).is_err());
        assert!(q.apply_op3(&q, &q, FlashAttention::new(2, 4, f32::NAN)).is_err());
        // A strided last dim goes through a copy in `flash_attention`, not an error.
        let t = Tensor::randn(0f32, 1.0, (1, 8, 4), &dev).unwrap().transpose(1, 2).unwrap();
        let y = flash_attention(&t, &t, &t, 2, 4, 0.5).unwrap();
        assert!(rel_diff(&y, &reference(&t, &t, &t, 2, 4, 0.5)) < 1e-5);
        // No queries: an empty output, and empty gradients.
        let none = Var::zeros((2, 0, 8), DType::F32, &dev).unwrap();
        let y = none
            .apply_op3(
                &wide.repeat((2, 1, 1)).unwrap(),
                &wide.repeat((2, 1, 1)).unwrap(),
                FlashAttention::new(2, 4, 0.5),
            )
            .unwrap();
        assert_eq!(y.dims(), &[2, 0, 8]);
        assert_eq!(y.sum_all().unwrap().backward().unwrap().get(none.as_tensor()).unwrap().dims(), &[2, 0, 8]);
    }
}
