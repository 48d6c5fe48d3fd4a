//! GGML's block quantizers, written from the block layouts of `ggml-common.h` and the
//! reference (no importance matrix) quantizers of `ggml-quants.c`, which is what
//! `llama-quantize` runs without `--imatrix`:
//!
//! - q8_0: `d = max|x| / 127`, `q = round(x / d)` (half away from zero).
//! - q4_0 / q5_0: `d = m / -8` (`/ -16`) where `m` is the value of largest magnitude
//!   (sign kept), `q = min(15, trunc(x / d + 8.5))` (`min(31, trunc(x / d + 16.5))`),
//!   the two halves of a block in the low and high nibbles; q5_0's fifth bits in a u32.
//! - q4_K: per sub-block of 32, a scale and a min fitted by weighted least squares over
//!   a sweep of 21 candidate scales (`make_qkx2_quants`, weights `rms(x) + |x|`); the
//!   8 scales and 8 mins quantized to 6 bits against the block's largest, packed in
//!   12 bytes; the values then re-quantized against the 6-bit scales.
//! - q6_K: per sub-block of 16, a signed scale from an rms-weighted search over 19
//!   candidates (`make_qx_quants`); scales to i8 against the largest (`d = max / -128`);
//!   values in -32..31, low nibbles and high 2 bits packed by 128-value halves.
//!
//! Rounding follows GGML (`nearest_int` is round-half-to-even), so q8_0, q4_0 and q5_0
//! are bit for bit what llama.cpp writes; the k-quants' float sums run in the same
//! order, without the compiler's fused multiply-adds, so they may differ in a last bit.

use rayon::prelude::*;

use super::half::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
use super::types::GgmlType;
use crate::error::{Error, Result};

const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// GGML's `nearest_int`: round half to even.
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Quantizes `x` (a whole number of blocks; rows of a tensor one after the other) to
/// `ty`'s bytes.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let block = ty.block_size() as usize;
    if !x.len().is_multiple_of(block) {
        return Err(Error::Internal(format!("{} values are not whole {ty} blocks of {block}", x.len())));
    }
    let bytes = ty.block_bytes() as usize;
    let mut out = vec![0u8; x.len() / block * bytes];
    // Blocks are independent: a chunk of blocks per task.
    let per_task = (16384 / block).max(1);
    let mut run = |f: fn(&[f32], &mut [u8])| {
        out.par_chunks_mut(bytes * per_task).zip(x.par_chunks(block * per_task)).for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(bytes).zip(x.chunks_exact(block)) {
                f(x, o);
            }
        })
    };
    match ty {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        GgmlType::Bf16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => run(q8_0),
        GgmlType::Q4_0 => run(q4_0),
        GgmlType::Q5_0 => run(q5_0),
        GgmlType::Q4K => run(q4_k),
        GgmlType::Q6K => run(q6_k),
        other => return Err(Error::Internal(format!("quantizing to {other} is not implemented"))),
    }
    Ok(out)
}

/// The `n` values that `bytes` of type `ty` hold.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let want = ty.bytes_for(n as u64);
    if want != Some(bytes.len() as u64) {
        return Err(Error::Internal(format!("{} bytes do not hold {n} {ty} values", bytes.len())));
    }
    let block = ty.block_size() as usize;
    let bb = ty.block_bytes() as usize;
    let mut out = vec![0f32; n];
    let each = |f: fn(&[u8], &mut [f32]), out: &mut Vec<f32>| {
        for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(block)) {
            f(b, y);
        }
    };
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    match ty {
        GgmlType::F32 => {
            for (y, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (i, y) in out.iter_mut().enumerate() {
                *y = f16_to_f32(u16_at(bytes, 2 * i));
            }
        }
        GgmlType::Bf16 => {
            for (i, y) in out.iter_mut().enumerate() {
                *y = bf16_to_f32(u16_at(bytes, 2 * i));
            }
        }
        GgmlType::Q8_0 => each(dq8_0, &mut out),
        GgmlType::Q4_0 => each(dq4_0, &mut out),
        GgmlType::Q5_0 => each(dq5_0, &mut out),
        GgmlType::Q4K => each(dq4_k, &mut out),
        GgmlType::Q6K => each(dq6_k, &mut out),
        other => return Err(Error::Internal(format!("dequantizing {other} is not implemented"))),
    }
    Ok(out)
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn put_half(b: &mut [u8], i: usize, x: f32) {
    b[i..i + 2].copy_from_slice(&f32_to_f16(x).to_le_bytes());
}

// ---- q8_0: d (f16), qs[32] (i8)

fn q8_0(x: &[f32], o: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(o, 0, d);
    for (q, v) in o[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

fn dq8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (y, q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(*q as i8) * d;
    }
}

/// The value of largest magnitude (its sign kept), first one on ties.
fn signed_max(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

// ---- q4_0: d (f16), qs[16]: x[j] in the low nibble of qs[j], x[j + 16] in the high one

fn q4_0(x: &[f32], o: &mut [u8]) {
    let d = signed_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(o, 0, d);
    for j in 0..16 {
        let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let hi = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        o[2 + j] = lo | (hi << 4);
    }
}

fn dq4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = (i32::from(q & 0xf) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

// ---- q5_0: d (f16), qh (u32 of fifth bits: bit j for x[j], bit j + 16 for x[j + 16]), qs[16]

fn q5_0(x: &[f32], o: &mut [u8]) {
    let d = signed_max(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_half(o, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let lo = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let hi = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        o[6 + j] = (lo & 0xf) | ((hi & 0xf) << 4);
        qh |= u32::from((lo & 0x10) >> 4) << j;
        qh |= u32::from((hi & 0x10) >> 4) << (j + 16);
    }
    o[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn dq5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((u32::from(q & 0xf)) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((u32::from(q >> 4)) | h1) as i32 - 16) as f32 * d;
    }
}

// ---- q4_K: d (f16), dmin (f16), scales[12], qs[128]

/// Scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Fits `x ≈ scale * L + min` (min <= 0, L in 0..=nmax) by weighted least squares,
/// trying `nstep + 1` candidate scales; returns (scale, -min) and fills `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn q4_k(x: &[f32], o: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(15, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, -1.0, 0.1, 20);
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut o[4..16];
    sc.iter_mut().for_each(|v| *v = 0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_half(o, 0, max_scale / 63.0);
    put_half(o, 2, max_min / 63.0);
    let (d_all, dmin_all) = (half_at(o, 0), half_at(o, 2));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &o[4..16]);
        let d = d_all * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15) as u8;
        }
    }
    let q = &mut o[16..144];
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            q[32 * c + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

fn dq4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let sc = &b[4..16];
    let q = &b[16..144];
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
        for k in 0..32 {
            let v = q[32 * c + k];
            y[64 * c + k] = d1 * f32::from(v & 0xf) - m1;
            y[64 * c + 32 + k] = d2 * f32::from(v >> 4) - m2;
        }
    }
}

// ---- q6_K: ql[128], qh[64], scales[16] (i8), d (f16)

/// A signed scale for `x` with levels in -nmax..nmax-1, weighted by x² (GGML's
/// `make_qx_quants` with `rmse_type` 1); fills `l` with the levels + nmax.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l: &mut [u8]| {
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    fill(iscale, l);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn q6_k(x: &[f32], o: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    o.iter_mut().for_each(|v| *v = 0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_half(o, 208, 1.0 / iscale);
    for ib in 0..16 {
        o[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = half_at(o, 208);
    for j in 0..16 {
        let d = d_all * f32::from(o[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (64 * h, 128 + 32 * h);
        for k in 0..32 {
            let (a, b, c, e) = (l[j + k], l[j + k + 32], l[j + k + 64], l[j + k + 96]);
            o[ql + k] = (a & 0xf) | ((c & 0xf) << 4);
            o[ql + k + 32] = (b & 0xf) | ((e & 0xf) << 4);
            o[qh + k] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

fn dq6_k(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 208);
    for h in 0..2 {
        let (ql, qh, sc) = (&b[64 * h..], &b[128 + 32 * h..], &b[192 + 8 * h..]);
        let y = &mut y[128 * h..];
        for k in 0..32 {
            let is = k / 16;
            let q1 = i32::from((ql[k] & 0xf) | ((qh[k] & 3) << 4)) - 32;
            let q2 = i32::from((ql[k + 32] & 0xf) | (((qh[k] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[k + 32] >> 4) | (((qh[k] >> 6) & 3) << 4)) - 32;
            let s = |i: usize| f32::from(sc[i] as i8);
            y[k] = d * s(is) * q1 as f32;
            y[k + 32] = d * s(is + 2) * q2 as f32;
            y[k + 64] = d * s(is + 4) * q3 as f32;
            y[k + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic values like a weight matrix: normal-ish around 0 with a few outliers.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                let mut u = 0f32;
                for _ in 0..4 {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    u += (s >> 40) as f32 / (1u64 << 24) as f32;
                }
                let v = (u - 2.0) * 0.035;
                if i % 97 == 0 {
                    v * 6.0
                } else {
                    v
                }
            })
            .collect()
    }

    fn rms(a: &[f32]) -> f32 {
        (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt()
    }

    /// Relative rms error of a round trip through `ty`.
    fn round_trip_error(ty: GgmlType, x: &[f32]) -> f32 {
        let q = quantize(ty, x).unwrap();
        assert_eq!(q.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
        let y = dequantize(ty, &q, x.len()).unwrap();
        let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        rms(&diff) / rms(x)
    }

    /// Each type's round trip error is within what its bits allow, and more bits are
    /// better. On these weights (Gaussian, every 97th value 6x: outliers widen the
    /// blocks they fall in) the relative rms errors are f16 2e-4, bf16 1.7e-3, q8_0
    /// 0.77%, q6_K 2.4%, q5_0 6.1%, q4_K 8.6%, q4_0 12.6%; for Gaussian values a
    /// uniform quantizer with `2^b` levels over a block's range of ~±2.1σ gives about
    /// `4.2 / 2^b / sqrt(12)`: 0.5% (8 bits), 7.6% (4 bits).
    #[test]
    fn round_trips_are_within_the_expected_error() {
        let x = weights(256 * 64, 1);
        let e = |ty| round_trip_error(ty, &x);
        let (f16, bf16, q8, q6k, q5, q4k, q4) = (
            e(GgmlType::F16),
            e(GgmlType::Bf16),
            e(GgmlType::Q8_0),
            e(GgmlType::Q6K),
            e(GgmlType::Q5_0),
            e(GgmlType::Q4K),
            e(GgmlType::Q4_0),
        );
        assert_eq!(e(GgmlType::F32), 0.0);
        assert!(f16 < 4e-4, "f16 {f16}");
        assert!(bf16 < 3e-3, "bf16 {bf16}");
        assert!(q8 < 1e-2, "q8_0 {q8}");
        assert!(q6k < 3e-2, "q6_K {q6k}");
        assert!(q5 < 7.5e-2, "q5_0 {q5}");
        assert!(q4k < 0.1, "q4_K {q4k}");
        assert!(q4 < 0.15, "q4_0 {q4}");
        assert!(f16 < q8 && q8 < q6k && q6k < q5 && q5 < q4k && q4k < q4, "{f16} {q8} {q6k} {q5} {q4k} {q4}");
    }

    /// Hand-checked blocks: the layouts and llama.cpp's rounding, byte for byte.
    #[test]
    fn block_layouts_match_ggml() {
        // q8_0: d = 127/127 = 1, values rounded half away from zero.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[3] = 0.49;
        let q = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(q.len(), 34);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x3c00); // f16 1.0
        assert_eq!(&q[2..6], &[127u8, (-3i8) as u8, 3, 0]);

        // q4_0: the largest magnitude is -8 -> d = 1; x = q - 8; x[j] low nibble, x[j+16] high.
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 7.0;
        x[16] = 3.0;
        x[17] = -0.5; // -0.5 + 8.5 = 8 -> q 8 -> 0.0 (truncation, not rounding)
        let q = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(q.len(), 18);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x3c00);
        assert_eq!(q[2], 11 << 4);
        assert_eq!(q[3], 15 | (8 << 4));
        assert_eq!(q[4], 8 | (8 << 4));
        let y = dequantize(GgmlType::Q4_0, &q, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (-8.0, 7.0, 3.0, 0.0));

        // q5_0: -16 -> d = 1; 15 -> q 31 (fifth bit set), -3 -> q 13 (clear).
        let mut x = [0f32; 32];
        x[0] = -16.0;
        x[5] = 15.0;
        x[21] = -3.0;
        let q = quantize(GgmlType::Q5_0, &x).unwrap();
        assert_eq!(q.len(), 22);
        let qh = u32::from_le_bytes([q[2], q[3], q[4], q[5]]);
        assert_eq!(qh & 1, 0, "q 0 has no fifth bit");
        assert_eq!((qh >> 5) & 1, 1);
        assert_eq!((qh >> 21) & 1, 0);
        assert_eq!(q[6 + 5] & 0xf, 15);
        assert_eq!(q[6 + 5] >> 4, 13);
        let y = dequantize(GgmlType::Q5_0, &q, 32).unwrap();
        assert_eq!((y[0], y[5], y[21], y[1]), (-16.0, 15.0, -3.0, 0.0));

        // Zero blocks stay zero in every type.
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K] {
            let z = vec![0f32; 256];
            let y = dequantize(ty, &quantize(ty, &z).unwrap(), 256).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "{ty}");
        }
    }

    /// k-quants: values on an exact grid come back exactly (a block whose sub-blocks
    /// use levels 0..15 times one scale and min for q4_K, -32..31 for q6_K), so the
    /// packing of scales, mins and quants is the one the dequantizer reads.
    #[test]
    fn k_quants_reproduce_values_on_their_grid() {
        // q4_K: sub-block j holds k * s_j - m_j (k in 0..16) with s_j = ks[j] / 16 and
        // m_j = ms[j] / 32: the block's d = 1/16 and dmin = 1/32 are exact in f16 and
        // every 6-bit scale and min is an integer, so the values come back exactly.
        let (ks, ms) = ([8, 15, 22, 29, 36, 43, 50, 63], [0, 9, 18, 27, 36, 45, 54, 63]);
        let x: Vec<f32> =
            (0..256).map(|i| (i % 16) as f32 * ks[i / 32] as f32 / 16.0 - ms[i / 32] as f32 / 32.0).collect();
        let q = quantize(GgmlType::Q4K, &x).unwrap();
        assert_eq!(q.len(), 144);
        assert_eq!((u16::from_le_bytes([q[0], q[1]]), u16::from_le_bytes([q[2], q[3]])), (0x2c00, 0x2800));
        assert_eq!(dequantize(GgmlType::Q4K, &q, 256).unwrap(), x);
        // q6_K: every sub-block of 16 holds (k - 8) / 2: levels -32..28 in steps of 4
        // (high bits used), scale 1/8 = -128 x d with d = -1/1024.
        let x: Vec<f32> = (0..256).map(|i| ((i % 16) as f32 - 8.0) * 0.5).collect();
        let q = quantize(GgmlType::Q6K, &x).unwrap();
        assert_eq!(q.len(), 210);
        assert!(q[192..208].iter().all(|s| *s as i8 == -128), "{:?}", &q[192..208]);
        assert_eq!(dequantize(GgmlType::Q6K, &q, 256).unwrap(), x);
        // Each sub-block scale is honoured: a block with one large sub-block keeps the small ones.
        let mut x = weights(256, 3);
        for v in &mut x[..16] {
            *v *= 4.0;
        }
        for ty in [GgmlType::Q6K, GgmlType::Q4K] {
            let y = dequantize(ty, &quantize(ty, &x).unwrap(), 256).unwrap();
            let tail: Vec<f32> = x[32..].iter().zip(&y[32..]).map(|(a, b)| a - b).collect();
            assert!(rms(&tail) / rms(&x[32..]) < 0.15, "{ty}: {}", rms(&tail) / rms(&x[32..]));
        }
    }

    #[test]
    fn partial_blocks_are_refused() {
        assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
    }
}
