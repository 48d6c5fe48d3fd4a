//! Fused CPU kernels for the training path, each a candle `CustomOp` with its own
//! backward (candle's fused ops have none: see CANDLE-NOTES.md). Every kernel works on
//! contiguous f32 rows in one pass, split over rows with rayon, instead of the 5-15
//! elementwise candle ops (each allocating a full-size tensor, forward and backward) of
//! the composite form. [`usable`] says when they apply (f32 on the CPU); the callers
//! keep the composite form for every other dtype and device.

use std::sync::Mutex;

use crate::models::sgemm::{self, Dst, Mat};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp1, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

mod attention;
mod flash;
mod head_xent;
pub(crate) use attention::{CausalAttention, PackedCausalAttention};
pub(crate) use flash::flash_attention;
pub(crate) use head_xent::{Deferred, LmHeadXent};

/// The fused kernels apply: an f32 tensor on the CPU.
pub(crate) fn usable(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// Frees the buffer of `res`, a node's own output, at the end of the node's backward.
///
/// candle's backward keeps every node of the graph (so every forward activation) alive
/// until it returns. By the time a node's backward runs, every node that read its output
/// has had its own backward (reverse topological order), so an output that only the
/// graph holds is dead: the ops that are told so (`release`: an internal activation of a
/// model's training forward, which no caller can reach) drop its buffer here, and the
/// activations go as the backward passes them instead of all at its end. The tensor
/// stays in the graph with an empty buffer: reading it afterwards (a second backward
/// through the same graph) is an error, not stale data.
fn release(res: &Tensor) -> Result<()> {
    if res.device().is_cpu() {
        res.inplace_op1(&Release)?;
    }
    Ok(())
}

struct Release;

impl InplaceOp1 for Release {
    fn name(&self) -> &'static str {
        "anneal-release"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, _l: &Layout) -> Result<()> {
        if let CpuStorage::F32(v) = s {
            *v = Vec::new();
        }
        Ok(())
    }
}

/// Rows handed to one rayon task at least (keeps tasks above ~16k elements).
fn min_rows(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

fn rows<'a>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> Result<&'a [f32]> {
    contiguous_f32(s, l, op, "input")
}

/// The f32 elements of a contiguous operand `what` of the CPU op `op`.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => match data.get(a..b) {
            Some(x) => Ok(x),
            None => bail!("{op}: {what} lies outside its buffer (released by an earlier backward?)"),
        },
        None => bail!("{op}: {what} must be contiguous"),
    }
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

// ---------------------------------------------------------------- vector math

/// `e^x` in f32 without a libm call, so that the loops around it vectorise (libm's
/// `expf`/`tanhf` took ~18% of a tiny GPT-2 training step, one element at a time).
/// Range reduction `x = n ln2 + r` (|r| <= ln2 / 2, n rounded with the 1.5 * 2^23
/// trick), then a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients) and the
/// exponent bits for `2^n`. Within 2 ulp of `f32::exp` on [-87, 88]; inputs outside are
/// clamped (`e^-100` gives ~1e-38 instead of 0, which no sum or product here can see).
/// Fused multiply-adds throughout: one instruction each in the `simd_fn!` builds (and
/// on aarch64); only an x86 CPU without FMA takes libm's exact `fmaf`, slowly, with the
/// same bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 0.166_666_65);
    let p = p.mul_add(r, 0.5);
    let er = (p * r).mul_add(r, r) + 1.0;
    // t's low mantissa bits hold n (two's complement around ROUND's bits).
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    er * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// `tanh(x) = sign(x) (1 - e) / (1 + e)` with `e = e^(-2|x|)`: absolute error ~1e-7.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let e = exp(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7 in exact arithmetic;
/// below 1e-6 with f32 rounding, 7e-7 measured), branch-free so that loops around it vectorise (libm's `erff` is one
/// element at a time: 3% of a tiny UNet training step).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - p * exp(-a * a)).copysign(x)
}

/// Defines `fn $name(args)` from a loop body: compiled for AVX-512 (F, VL, BW, DQ),
/// for AVX2 + FMA and portably; the widest the CPU has is picked at run time (checked
/// once). The elementwise kernels below are plain loops over slices; this is what lets
/// LLVM vectorise them 16 or 8 lanes wide (the crate itself is built for the x86-64
/// baseline). Reductions keep [`LANES`] partial sums in the same order on every path,
/// so each path returns the same bits.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn portable($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            fn avx512($($a: $t),*) $(-> $r)? {
                portable($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($a: $t),*) $(-> $r)? {
                portable($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::models::gemv::has_avx512() {
                // SAFETY: the CPU has AVX-512 F/VL/BW/DQ, AVX2 and FMA (checked at run
                // time), all `avx512` needs; the body is safe code.
                #[allow(unsafe_code)]
                return unsafe { avx512($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::models::gemv::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time), all `avx2` needs;
                // the body is safe code.
                #[allow(unsafe_code)]
                return unsafe { avx2($($a),*) };
            }
            portable($($a),*)
        }
    };
}
pub(crate) use simd_fn;

/// Partial sums a reduction keeps: one AVX-512 register, two AVX2 ones.
pub(crate) const LANES: usize = 16;

simd_fn! {
    /// `o = e^((x - max) * scale)` over one row; returns the sum of `o`.
    fn exp_shifted(o: &mut [f32], x: &[f32], max: f32, scale: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let n = o.len().min(x.len());
        let (o, x) = (&mut o[..n], &x[..n]);
        let lane = |o: &mut f32, v: f32, a: &mut f32| {
            let e = exp((v - max) * scale);
            *o = e;
            *a += e;
        };
        // Whole chunks first: the partial sums stay in registers (a short last chunk
        // in the loop would keep them in memory, a store and a reload per chunk).
        let mut oi = o.chunks_exact_mut(LANES);
        let mut xi = x.chunks_exact(LANES);
        for (oc, xc) in (&mut oi).zip(&mut xi) {
            for ((o, &v), a) in oc.iter_mut().zip(xc).zip(acc.iter_mut()) {
                lane(o, v, a);
            }
        }
        for ((o, &v), a) in oi.into_remainder().iter_mut().zip(xi.remainder()).zip(acc.iter_mut()) {
            lane(o, v, a);
        }
        acc.iter().sum()
    }
}

simd_fn! {
    /// The largest element of a row (`-inf` for an empty one).
    fn row_max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        // A compare and select (one `max` instruction); `f32::max`'s NaN rule costs
        // three. A NaN score stays NaN through the exponential anyway.
        let lane = |a: &mut f32, v: f32| *a = if v > *a { v } else { *a };
        let mut xi = x.chunks_exact(LANES);
        for xc in &mut xi {
            for (&v, a) in xc.iter().zip(acc.iter_mut()) {
                lane(a, v);
            }
        }
        for (&v, a) in xi.remainder().iter().zip(acc.iter_mut()) {
            lane(a, v);
        }
        acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
}

simd_fn! {
    /// `sum(a * b)` with [`LANES`] partial sums.
    fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let n = a.len().min(b.len());
        let (mut ai, mut bi) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
        for (ac, bc) in (&mut ai).zip(&mut bi) {
            for ((&x, &y), s) in ac.iter().zip(bc).zip(acc.iter_mut()) {
                *s += x * y;
            }
        }
        for ((&x, &y), s) in ai.remainder().iter().zip(bi.remainder()).zip(acc.iter_mut()) {
            *s += x * y;
        }
        acc.iter().sum()
    }
}

simd_fn! {
    /// `sum(e^(x - max))` over one row.
    fn sum_exp_shifted(x: &[f32], max: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut xi = x.chunks_exact(LANES);
        for xc in &mut xi {
            for (&v, a) in xc.iter().zip(acc.iter_mut()) {
                *a += exp(v - max);
            }
        }
        for (&v, a) in xi.remainder().iter().zip(acc.iter_mut()) {
            *a += exp(v - max);
        }
        acc.iter().sum()
    }
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
            let max = row_max(xs);
            let inv = 1.0 / exp_shifted(os, xs, max, scale);
            os.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?))
    }
}

simd_fn! {
    /// `o = scale * y * (g - sum(g * y))` over one row.
    fn softmax_bwd_row(o: &mut [f32], y: &[f32], g: &[f32], scale: f32) {
        let dot = dot_lanes(y, g);
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
            *o = scale * y * (g - dot);
        }
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
                softmax_bwd_row(o, y, g, self.scale);
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

/// LayerNorm (`center`, with a bias) or RMSNorm with its elementwise affine part,
/// `xhat * w (+ b)`, as one node: the backward gives `dx`, `dw = sum(g * xhat)` and
/// `db = sum(g)` in one pass over the rows (per-task partial sums), instead of a
/// broadcast multiply and add whose backward reduces over rows with candle's strided
/// sums. `w`/`b` that no variable flows into get no gradient.
pub(crate) struct AffineNorm {
    pub(crate) eps: f32,
    pub(crate) center: bool,
    /// The output is an internal activation: released by the backward ([`release`]).
    pub(crate) release: bool,
}

impl AffineNorm {
    /// `x` `[.., n]`, `w` `[n]`, `b` `[n]` (LayerNorm) or none (RMSNorm).
    pub(crate) fn apply(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32, release: bool) -> Result<Tensor> {
        let x = x.contiguous()?;
        match b {
            Some(b) => x.apply_op3(&w.contiguous()?, &b.contiguous()?, AffineNorm { eps, center: true, release }),
            None => x.apply_op2(&w.contiguous()?, AffineNorm { eps, center: false, release }),
        }
    }

    fn norm(&self) -> Norm {
        Norm { eps: self.eps, center: self.center }
    }

    fn forward(&self, x: &[f32], l: &Layout, w: &[f32], b: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l);
        if w.len() != n || b.is_some_and(|b| b.len() != n) {
            bail!("norm: weight of {} for rows of {n}", w.len());
        }
        let norm = self.norm();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n).zip(x.par_chunks(n)).with_min_len(min_rows(n)).for_each(|(o, x)| {
            let (mean, inv) = norm.stats(x);
            affine_row(o, x, w, b.unwrap_or(&[]), mean, inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    /// `(dx, dw, db)`.
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let n = x.dim(candle_core::D::Minus1)?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            bail!("norm backward: not on the CPU")
        };
        let (xv, wv, gv) = (rows(xs, xl, "norm")?, rows(ws, wl, "norm")?, rows(gs, gl, "norm")?);
        let norm = self.norm();
        let nf = n as f32;
        let mut dx = vec![0f32; xv.len()];
        let per_task = (xv.len() / n).div_ceil(rayon::current_num_threads().max(1)).max(min_rows(n));
        let (dw, db) = dx
            .par_chunks_mut(per_task * n)
            .zip(xv.par_chunks(per_task * n).zip(gv.par_chunks(per_task * n)))
            .map(|(dx, (x, g))| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                let mut dxhat = vec![0f32; n];
                for ((o, x), g) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                    let (mean, inv) = norm.stats(x);
                    norm_bwd_row(o, x, g, wv, &mut dxhat, &mut dw, &mut db, mean, inv, nf, self.center);
                }
                (dw, db)
            })
            .reduce(
                || (vec![0f32; n], vec![0f32; n]),
                |(mut aw, mut ab), (bw, bb)| {
                    add_row(&mut aw, &bw);
                    add_row(&mut ab, &bb);
                    (aw, ab)
                },
            );
        let dev = x.device();
        Ok((Tensor::from_vec(dx, x.shape(), dev)?, Tensor::from_vec(dw, n, dev)?, Tensor::from_vec(db, n, dev)?))
    }
}

simd_fn! {
    /// `o = (x - mean) * inv * w (+ b)` (`b` empty: no bias).
    fn affine_row(o: &mut [f32], x: &[f32], w: &[f32], b: &[f32], mean: f32, inv: f32) {
        if b.is_empty() {
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = (x - mean) * inv * w;
            }
        } else {
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * inv * w + b;
            }
        }
    }
}

simd_fn! {
    /// One row of the affine norm's backward: `dx` into `o`, `g * xhat` into `dw` and
    /// `g` into `db` (accumulated); `dxhat` is scratch.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd_row(
        o: &mut [f32],
        x: &[f32],
        g: &[f32],
        w: &[f32],
        dxhat: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
        mean: f32,
        inv: f32,
        nf: f32,
        center: bool,
    ) {
        let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
        // Fixed LANES-wide chunks (and a tail) so that LLVM vectorises the loop.
        let n = x.len().min(g.len()).min(w.len()).min(dxhat.len()).min(dw.len()).min(db.len());
        let split = n - n % LANES;
        {
            let chunks = dxhat[..split]
                .chunks_exact_mut(LANES)
                .zip(x[..split].chunks_exact(LANES))
                .zip(g[..split].chunks_exact(LANES).zip(w[..split].chunks_exact(LANES)))
                .zip(dw[..split].chunks_exact_mut(LANES).zip(db[..split].chunks_exact_mut(LANES)));
            for (((d, x), (g, w)), (dw, db)) in chunks {
                for k in 0..LANES {
                    let xhat = (x[k] - mean) * inv;
                    let dh = g[k] * w[k];
                    d[k] = dh;
                    sg[k] += dh;
                    sgx[k] += dh * xhat;
                    dw[k] += g[k] * xhat;
                    db[k] += g[k];
                }
            }
        }
        for i in split..n {
            let xhat = (x[i] - mean) * inv;
            let dh = g[i] * w[i];
            dxhat[i] = dh;
            sg[i - split] += dh;
            sgx[i - split] += dh * xhat;
            dw[i] += g[i] * xhat;
            db[i] += g[i];
        }
        let mg = if center { sg.iter().sum::<f32>() / nf } else { 0.0 };
        let mgx = sgx.iter().sum::<f32>() / nf;
        for ((o, &x), &d) in o.iter_mut().zip(x).zip(dxhat.iter()) {
            *o = inv * (d - mg - (x - mean) * inv * mgx);
        }
    }
}

impl CustomOp2 for AffineNorm {
    fn name(&self) -> &'static str {
        "anneal-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(rows(s1, l1, "anneal-rms-norm")?, l1, rows(s2, l2, "anneal-rms-norm")?, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        if self.release {
            release(res)?;
        }
        Ok((Some(dx), w.track_op().then_some(dw)))
    }
}

impl CustomOp3 for AffineNorm {
    fn name(&self) -> &'static str {
        "anneal-layer-norm"
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
        let name = "anneal-layer-norm";
        self.forward(rows(s1, l1, name)?, l1, rows(s2, l2, name)?, Some(rows(s3, l3, name)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, grad)?;
        if self.release {
            release(res)?;
        }
        Ok((Some(dx), w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}

// ---------------------------------------------------------------- rotary embedding

/// Rotate-half RoPE of a training pass as one node: row `x = [x1, x2]` of `head_dim`
/// becomes `[x1 c - x2 s, x2 c + x1 s]` with the `[t, d/2]` (or `[b, t, d/2]`) cos and
/// sin tables of its position. The composite form (two table concatenations, a negated
/// half, a concatenated rotation, two broadcast products and a sum) kept ~4.5 times
/// the output alive until the backward ended, and its backward left a gradient (with
/// the product that made it) for each broadcast table in the gradient store: 8 MiB a
/// projection at 1024 tokens x 512. This node keeps its output only; the backward is
/// the inverse rotation (`s -> -s`) and needs nothing saved.
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// `x` is `[b, heads, t, d]` (else `[b, t, heads, d]`).
    heads_first: bool,
    /// The backward: rotate by `-angle`.
    inverse: bool,
    /// The output is an internal activation: released by the backward ([`release`]).
    release: bool,
}

impl Rope {
    /// RoPE on `x` `[b, t, heads, d]` (`heads_first`: `[b, heads, t, d]`), or `None` when
    /// the fused form does not apply (not f32 on the CPU, odd `d`, tables that do not
    /// fit): the caller then uses the composite form.
    pub(crate) fn apply(
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        heads_first: bool,
        release: bool,
    ) -> Result<Option<Tensor>> {
        if !(usable(x) && usable(cos) && usable(sin)) || x.rank() != 4 || cos.dims() != sin.dims() {
            return Ok(None);
        }
        let dims = x.dims();
        let (b, t, d) = (dims[0], if heads_first { dims[2] } else { dims[1] }, dims[3]);
        let fits = match *cos.dims() {
            [tt, half] => tt == t && 2 * half == d,
            [bb, tt, half] => bb == b && tt == t && 2 * half == d,
            _ => false,
        };
        if !fits || d % 2 != 0 {
            return Ok(None);
        }
        let op = Rope { cos: cos.contiguous()?, sin: sin.contiguous()?, heads_first, inverse: false, release };
        Ok(Some(x.contiguous()?.apply_op1(op)?))
    }

    fn rotate(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, "anneal-rope")?;
        let &[_, d1, d2, d] = l.dims() else { bail!("anneal-rope: expected a rank-4 input, got {:?}", l.dims()) };
        let half = d / 2;
        let (n, t) = if self.heads_first { (d1, d2) } else { (d2, d1) };
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (Storage::Cpu(cs), Storage::Cpu(ss)) = (&*cs, &*ss) else { bail!("anneal-rope: tables not on the CPU") };
        let (cos, sin) = (rows(cs, cl, "anneal-rope")?, rows(ss, sl, "anneal-rope")?);
        let per_batch = cl.dims().len() == 3;
        if cos.len() != sin.len() || cos.len() < t * half {
            bail!("anneal-rope: tables do not fit {t} positions of {d}");
        }
        let inverse = self.inverse;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(min_rows(d)).enumerate().for_each(|(r, (o, x))| {
            let (bi, ti) = if self.heads_first { (r / (n * t), r % t) } else { (r / (n * t), (r / n) % t) };
            let at = if per_batch { (bi * t + ti) * half } else { ti * half };
            rope_row(o, x, &cos[at..at + half], &sin[at..at + half], inverse);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

simd_fn! {
    /// `o = [x1 c - x2 s, x2 c + x1 s]` (`inverse`: `s -> -s`) over one row. The
    /// products are rounded before the sum, as the composite form's.
    fn rope_row(o: &mut [f32], x: &[f32], c: &[f32], s: &[f32], inverse: bool) {
        let half = c.len();
        let (x1, x2) = x.split_at(half);
        let (o1, o2) = o.split_at_mut(half);
        if inverse {
            for i in 0..half {
                o1[i] = x1[i] * c[i] + x2[i] * s[i];
                o2[i] = x2[i] * c[i] - x1[i] * s[i];
            }
        } else {
            for i in 0..half {
                o1[i] = x1[i] * c[i] - x2[i] * s[i];
                o2[i] = x2[i] * c[i] + x1[i] * s[i];
            }
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "anneal-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.rotate(s, l)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (cos, sin) = (self.cos.clone(), self.sin.clone());
        let inv = Rope { cos, sin, heads_first: self.heads_first, inverse: true, release: false };
        let dx = grad.contiguous()?.apply_op1_no_bwd(&inv)?;
        if self.release {
            release(res)?;
        }
        Ok(Some(dx))
    }
}

// ---------------------------------------------------------------- activations

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

simd_fn! {
    /// `o = gelu_tanh(x)`.
    fn gelu_rows(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + tanh(SQRT_2_OVER_PI * v * (1.0 + GELU_C * v * v)));
        }
    }
}

simd_fn! {
    /// `o = g * gelu_tanh'(x)`.
    fn gelu_bwd_rows(o: &mut [f32], x: &[f32], g: &[f32]) {
        for ((o, &v), &g) in o.iter_mut().zip(x).zip(g) {
            let th = tanh(SQRT_2_OVER_PI * v * (1.0 + GELU_C * v * v));
            let d = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
            *o = g * d;
        }
    }
}

/// GELU, tanh approximation (`gelu_new`), as candle's `Tensor::gelu`.
pub(crate) struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "anneal-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = rows(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(o, x)| gelu_rows(o, x));
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
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(o, (x, g))| gelu_bwd_rows(o, x, g));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

simd_fn! {
    /// `o = a * gelu(b)` (erf form) for one row's halves.
    fn geglu_row(o: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a * (0.5 * b * (1.0 + erf(b * FRAC_1_SQRT_2)));
        }
    }
}

simd_fn! {
    /// `da = g * gelu(b)`, `db = g * a * gelu'(b)` for one row's halves.
    fn geglu_bwd_row(da: &mut [f32], db: &mut [f32], a: &[f32], b: &[f32], g: &[f32]) {
        for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db.iter_mut()).zip(a).zip(b).zip(g) {
            let cdf = 0.5 * (1.0 + erf(b * FRAC_1_SQRT_2));
            *da = g * b * cdf;
            *db = g * a * (cdf + b * FRAC_1_SQRT_2PI * exp(-0.5 * b * b));
        }
    }
}

/// GEGLU (diffusers' feed-forward): `[.., 2n]` -> `[.., n]`, the first half times the
/// exact (erf) GELU of the second, read in place (no chunk copies), one node with its
/// own backward.
pub(crate) struct GeGlu;

impl GeGlu {
    fn half(l: &Layout) -> Result<usize> {
        let w = last_dim(l);
        if !w.is_multiple_of(2) {
            bail!("geglu: odd last dim {w}");
        }
        Ok(w / 2)
    }
}

impl CustomOp1 for GeGlu {
    fn name(&self) -> &'static str {
        "anneal-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = rows(s, l, self.name())?;
        let n = Self::half(l)?;
        let mut out = vec![0f32; h.len() / 2];
        if n > 0 {
            out.par_chunks_mut(n).zip(h.par_chunks(2 * n)).with_min_len(min_rows(2 * n)).for_each(|(o, h)| {
                let (a, b) = h.split_at(n);
                geglu_row(o, a, b);
            });
        }
        let mut dims = l.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeGluBwd)?))
    }
}

/// `(h, g)` -> `dh`, both halves.
struct GeGluBwd;

impl CustomOp2 for GeGluBwd {
    fn name(&self) -> &'static str {
        "anneal-geglu-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (h, g) = (rows(s1, l1, self.name())?, rows(s2, l2, self.name())?);
        let n = GeGlu::half(l1)?;
        if g.len() * 2 != h.len() {
            bail!("geglu backward: gradient of {} for input of {}", g.len(), h.len());
        }
        let mut out = vec![0f32; h.len()];
        if n > 0 {
            out.par_chunks_mut(2 * n)
                .zip(h.par_chunks(2 * n).zip(g.par_chunks(n)))
                .with_min_len(min_rows(2 * n))
                .for_each(|(o, (h, g))| {
                    let (da, db) = o.split_at_mut(n);
                    let (a, b) = h.split_at(n);
                    geglu_bwd_row(da, db, a, b, g);
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

simd_fn! {
    /// `o = silu(a) * b`.
    fn swiglu_rows(o: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a * sigmoid(a) * b;
        }
    }
}

simd_fn! {
    /// `o = g * b * silu'(a)`.
    fn swiglu_bwd_gate_rows(o: &mut [f32], a: &[f32], b: &[f32], g: &[f32]) {
        for (((o, &a), &b), &g) in o.iter_mut().zip(a).zip(b).zip(g) {
            let s = sigmoid(a);
            *o = g * b * s * (1.0 + a * (1.0 - s));
        }
    }
}

simd_fn! {
    /// `o = g * silu(a)`.
    fn swiglu_bwd_up_rows(o: &mut [f32], a: &[f32], g: &[f32]) {
        for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
            *o = g * a * sigmoid(a);
        }
    }
}

/// SwiGLU: `silu(gate) * up`, one pass, gradients for both inputs.
pub(crate) struct SwiGlu {
    /// The output is an internal activation: released by the backward ([`release`]).
    pub(crate) release: bool,
}

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
        out.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
            .for_each(|(o, (a, b))| swiglu_rows(o, a, b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &g, &SwiGluBwdGate)?;
        let d_up = gate.apply_op2_no_bwd(&g, &SwiGluBwdUp)?;
        if self.release {
            release(res)?;
        }
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
        out.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096).zip(g.par_chunks(4096))))
            .for_each(|(o, (a, (b, g)))| swiglu_bwd_gate_rows(o, a, b, g));
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
        out.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(o, (a, g))| swiglu_bwd_up_rows(o, a, g));
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
    let max = row_max(x);
    max + sum_exp_shifted(x, max).ln()
}

simd_fn! {
    /// `o = e^(z - lse) * scale` over one row of logits.
    fn softmax_scaled_row(o: &mut [f32], z: &[f32], lse: f32, scale: f32) {
        for (o, &z) in o.iter_mut().zip(z) {
            *o = exp(z - lse) * scale;
        }
    }
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
                softmax_scaled_row(o, row, lse, self.scale);
                o[y] -= self.scale;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

// ---------------------------------------------------------------- linear

/// `x W^T + b` (`x W + b` for GPT-2's Conv1D weights, stored `[in, out]`) over the last
/// dim of `x` `[.., in]`, as one graph node with its own backward:
/// - the forward is candle's CPU gemm on the weight as it is stored (a transposed view,
///   no copy) with the bias added in place;
/// - `dx = g W` and `dW = g^T x` are each one gemm written in the weight's own layout
///   (candle's `x.matmul(&w.t())` gives `dW` as `[in, out]`, then accumulates it into a
///   zeroed `[out, in]` buffer through a strided add), `db` a column sum;
/// - a weight or bias that is not a variable (LoRA's frozen base, inference weights)
///   gets no gradient at all (`track_op`: neither a variable nor computed from one): no
///   `x^T g`, a third of a LoRA step's matmul FLOPs;
/// - no reshape or broadcast nodes around it.
pub(crate) struct LinearOp {
    conv1d: bool,
    /// The output is an internal activation: released by the backward ([`release`]).
    release: bool,
    /// Products with bf16 multiplies and f32 sums (mixed precision), forward and backward.
    bf16: bool,
}

impl LinearOp {
    /// `x` `[.., in]` -> `[.., out]`; `w` `[out, in]` (`[in, out]` if `conv1d`), `b` `[out]`.
    /// `release`: the output is an internal activation of a training forward ([`release`]).
    /// `bf16`: every product (forward and backward) multiplies in bf16 and sums in f32
    /// (`bgemm`).
    pub(crate) fn apply(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        (conv1d, release): (bool, bool),
        bf16: bool,
    ) -> Result<Tensor> {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let op = LinearOp { conv1d, release, bf16 };
        match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
            None => x.apply_op2(&w, op),
        }
    }

    fn gemm(&self) -> sgemm::Gemm {
        if self.bf16 {
            super::bgemm::matmul
        } else {
            sgemm::matmul
        }
    }

    fn mm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.bf16 {
            super::bgemm::mm(a, b)
        } else {
            sgemm::mm(a, b)
        }
    }

    /// (rows, in, out) of a product, checked.
    fn dims(&self, lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
        let (d0, d1) = lw.shape().dims2()?;
        let (in_f, out_f) = if self.conv1d { (d0, d1) } else { (d1, d0) };
        let k = last_dim(lx);
        if k != in_f || lx.dims().is_empty() {
            bail!("linear: input {:?} does not match weight {:?}", lx.dims(), lw.dims());
        }
        Ok((lx.shape().elem_count() / in_f.max(1), in_f, out_f))
    }

    fn forward(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, in_f, out_f) = self.dims(lx, lw)?;
        let (xs, ws) = (rows(x, lx, "linear")?, rows(w, lw, "linear")?);
        // The weight as stored: `[in, out]` rows, or `[out, in]` read transposed.
        let wm = if self.conv1d { Mat::rows(ws, 0, out_f) } else { Mat::transposed(ws, 0, in_f) };
        let mut v = vec![0f32; n * out_f];
        self.gemm()(
            (n, out_f, in_f),
            Dst { data: &mut v, offset: 0, rs: out_f, accumulate: false },
            Mat::rows(xs, 0, in_f),
            wm,
            true,
        )?;
        let mut dims = lx.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_f;
        }
        if let Some(b) = bias {
            if b.len() != out_f {
                bail!("linear: bias of {} for {out_f} outputs", b.len());
            }
            v.par_chunks_mut(out_f).with_min_len(min_rows(out_f)).for_each(|row| add_row(row, b));
        }
        Ok((CpuStorage::F32(v), Shape::from(dims)))
    }

    /// `(dx, dW)`; `dW` only for a variable weight.
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let w_tracked = w.track_op();
        let (x, w, g) = (x.detach(), w.detach(), grad.contiguous()?.detach());
        let in_f = x.dim(candle_core::D::Minus1)?;
        let out_f = g.dim(candle_core::D::Minus1)?;
        let n = x.elem_count() / in_f.max(1);
        let (x2, g2) = (x.reshape((n, in_f))?, g.reshape((n, out_f))?);
        let dx = if self.conv1d { self.mm(&g2, &w.t()?)? } else { self.mm(&g2, &w)? };
        let dw = match (w_tracked, self.conv1d) {
            (false, _) => None,
            (true, true) => Some(self.mm(&x2.t()?, &g2)?),
            (true, false) => Some(self.mm(&g2.t()?, &x2)?),
        };
        Ok((dx.reshape(x.shape())?, dw))
    }
}

simd_fn! {
    /// `row += b`.
    fn add_row(row: &mut [f32], b: &[f32]) {
        for (o, &b) in row.iter_mut().zip(b) {
            *o += b;
        }
    }
}

/// Column sums of a contiguous `[n, cols]` tensor (a bias gradient), `[cols]`.
fn col_sums(g: &Tensor, cols: usize) -> Result<Tensor> {
    let g = g.contiguous()?;
    let (st, l) = g.storage_and_layout();
    let Storage::Cpu(c) = &*st else { bail!("column sums: not on the CPU") };
    let data = rows(c, l, "column sums")?;
    let n = data.len() / cols.max(1);
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(min_rows(cols));
    let sums = data
        .par_chunks(chunk * cols)
        .map(|block| {
            let mut acc = vec![0f32; cols];
            for row in block.chunks(cols) {
                add_row(&mut acc, row);
            }
            acc
        })
        .reduce(
            || vec![0f32; cols],
            |mut a, b| {
                add_row(&mut a, &b);
                a
            },
        );
    Tensor::from_vec(sums, cols, g.device())
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "anneal-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, grad)?;
        if self.release {
            release(res)?;
        }
        Ok((Some(dx), dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "anneal-linear-bias"
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
        let b = rows(s3, l3, "anneal-linear-bias")?;
        self.forward(s1, l1, s2, l2, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, grad)?;
        let db = if b.track_op() { Some(col_sums(grad, b.elem_count())?) } else { None };
        if self.release {
            release(res)?;
        }
        Ok((Some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 97th f32 bit pattern in a range (about 10^5-10^6 values).
    fn sweep(lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        let step = ((hi - lo) / 200_000.0).max(f32::EPSILON);
        (0..=200_000).map(move |i| lo + step * i as f32).chain([lo, hi, 0.0, -0.0])
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for x in sweep(-87.0, 88.0) {
            let (want, got) = (x.exp(), exp(x));
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        // Clamped outside the range, never NaN or inf.
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn tanh_and_sigmoid_match_libm() {
        let mut worst = (0f32, 0f32);
        for x in sweep(-20.0, 20.0) {
            worst.0 = worst.0.max((tanh(x) - x.tanh()).abs());
            worst.1 = worst.1.max((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs());
        }
        assert!(worst.0 < 3e-7 && worst.1 < 3e-7, "worst absolute errors {worst:?}");
        assert_eq!(tanh(0.0), 0.0);
        assert!(tanh(-30.0) == -1.0 && tanh(30.0) == 1.0);
    }

    #[test]
    fn erf_matches_the_series_and_geglu_its_composite_form() {
        // erf against libm-free references: erf(x) = 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1)) (|x| <= 3, f64).
        let series = |x: f64| -> f64 {
            let (mut term, mut sum) = (x, x);
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let worst = sweep(-3.0, 3.0).map(|x| (f64::from(erf(x)) - series(f64::from(x))).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-6, "erf worst absolute error {worst}");
        assert!(
            erf(10.0) == 1.0 && erf(-10.0) == -1.0 && erf(0.0).abs() < 1e-6,
            "{} {} {}",
            erf(10.0),
            erf(-10.0),
            erf(0.0)
        );

        let dev = candle_core::Device::Cpu;
        let h = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 14), &dev).unwrap())).unwrap();
        let gy = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev).unwrap();
        let want = (h.narrow(2, 0, 7).unwrap() * h.narrow(2, 7, 7).unwrap().gelu_erf().unwrap()).unwrap();
        let got = h.as_tensor().apply_op1(GeGlu).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(&got, &want) < 1e-5);
        let gw = (want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(gw.get(&h).unwrap(), gg.get(&h).unwrap()) < 1e-5);
    }

    #[test]
    fn rope_matches_its_composite_form_in_both_layouts() {
        use candle_core::D;
        let dev = candle_core::Device::Cpu;
        let (b, t, n, d) = (2, 5, 3, 8);
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        for (heads_first, per_batch) in [(false, false), (false, true), (true, false), (true, true)] {
            let shape = if heads_first { (b, n, t, d) } else { (b, t, n, d) };
            let x = candle_core::Var::randn(0f32, 1.0, shape, &dev).unwrap();
            let table = if per_batch { vec![b, t, d / 2] } else { vec![t, d / 2] };
            let cos = Tensor::randn(0f32, 1.0, table.as_slice(), &dev).unwrap();
            let sin = Tensor::randn(0f32, 1.0, table.as_slice(), &dev).unwrap();
            // The composite form (models::ops): concatenated tables, rotated halves.
            let lift = |c: &Tensor| {
                let c = Tensor::cat(&[c, c], D::Minus1).unwrap();
                match (heads_first, per_batch) {
                    (true, false) => c.unsqueeze(0).unwrap().unsqueeze(0).unwrap(),
                    (true, true) => c.unsqueeze(1).unwrap(),
                    (false, false) => c.unsqueeze(0).unwrap().unsqueeze(2).unwrap(),
                    (false, true) => c.unsqueeze(2).unwrap(),
                }
            };
            let (x1, x2) = (x.narrow(D::Minus1, 0, d / 2).unwrap(), x.narrow(D::Minus1, d / 2, d / 2).unwrap());
            let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            let want = (x.broadcast_mul(&lift(&cos)).unwrap() + rotated.broadcast_mul(&lift(&sin)).unwrap()).unwrap();
            let got = Rope::apply(x.as_tensor(), &cos, &sin, heads_first, false).unwrap().unwrap();
            assert_eq!(diff(&got, &want), 0.0, "forward {heads_first} {per_batch}");
            let gy = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
            let gw = (want * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = (got * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(diff(gw.get(&x).unwrap(), gg.get(&x).unwrap()) < 1e-6, "backward {heads_first} {per_batch}");
        }
        // Tables that do not fit, or an odd head size: the caller's composite form.
        let x = Tensor::zeros((1, 4, 2, 6), DType::F32, &dev).unwrap();
        let c = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
        assert!(Rope::apply(&x, &c, &c, false, false).unwrap().is_none());
        assert!(Rope::apply(&x.to_dtype(DType::F64).unwrap(), &c, &c, false, false).unwrap().is_none());
    }

    #[test]
    fn row_kernels_match_their_scalar_definitions() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0).collect();
        let g: Vec<f32> = (0..37).map(|i| ((i * 31) % 11) as f32 / 7.0 - 0.7).collect();
        assert_eq!(row_max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let want: f32 = x.iter().zip(&g).map(|(a, b)| a * b).sum();
        assert!((dot_lanes(&x, &g) - want).abs() < 1e-4);
        let mut o = vec![0f32; x.len()];
        let max = row_max(&x);
        let sum = exp_shifted(&mut o, &x, max, 0.5);
        let want: f32 = x.iter().map(|v| ((v - max) * 0.5).exp()).sum();
        assert!((sum - want).abs() < 1e-5 * want);
        assert!((sum_exp_shifted(&x, max) - x.iter().map(|v| (v - max).exp()).sum::<f32>()).abs() < 1e-5 * 37.0);
    }
}
