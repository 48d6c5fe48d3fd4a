//! bf16 weights for decoding: a linear layer's weight held as bfloat16 (the high 16
//! bits of each f32, rounded to nearest even: half the bytes to stream per token), the
//! activations and every sum in f32. Each weight is widened exactly (shifted left by 16
//! bits) and multiply-added with the f32 input by FMA, so a product differs from f32's
//! only by the weights' rounding to bf16 (relative 2^-9 at most per weight).
//!
//! One arithmetic, three builds (AVX-512: one 16-lane register per pair; AVX2 + FMA:
//! two 8-lane halves; portable: 16 `mul_add` lanes), bit for bit the same: input feature
//! `j` goes to lane `j % 16`, each lane one chain of fused multiply-adds in order of
//! `j` (a short last chunk padded with zeros, which leave a lane unchanged), then the
//! 16 lanes summed in one fixed tree (`i + 8`, then `i + 4`, `i + 2`, `i + 1`: the
//! order of `tiles::hsum`). Several weight rows by several input rows run in register
//! tiles, every weight chunk loaded once for all the rows of its tile; every pair is
//! summed the same way whatever its tile, so a row's result does not depend on the rows
//! beside it, on the tile shape or on the kernel the CPU runs.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::{by_shape, chunk, for_each_tile, next_rows, transpose, Ahead};
use crate::error::{Error, Result};

/// Lanes of partial sums (input feature `j` goes to lane `j % LANES`).
const LANES: usize = 16;

/// A weight `[out, in]` as bfloat16 bits, row-major (2 bytes per value; any `in`).
#[derive(Debug)]
pub(crate) struct Bf16Weight {
    out_f: usize,
    in_f: usize,
    w: Vec<u16>,
}

impl Bf16Weight {
    /// A weight `[out, in]` from its rows' f32 values (row-major), each rounded to the
    /// nearest bf16 (ties to even; a bf16 value converts back to itself).
    pub(crate) fn from_f32(out_f: usize, in_f: usize, data: &[f32]) -> Result<Self> {
        if data.len() != out_f * in_f {
            return Err(Error::Internal(format!("bf16: {} values are not {out_f} rows of {in_f}", data.len())));
        }
        Ok(Self { out_f, in_f, w: data.iter().map(|&v| crate::gguf::f32_to_bf16(v)).collect() })
    }

    /// A weight `[out, in]` from bf16 bit patterns (row-major), taken as they are.
    pub(crate) fn from_bits(out_f: usize, in_f: usize, w: Vec<u16>) -> Result<Self> {
        if w.len() != out_f * in_f {
            return Err(Error::Internal(format!("bf16: {} values are not {out_f} rows of {in_f}", w.len())));
        }
        Ok(Self { out_f, in_f, w })
    }

    /// `w` (`[out, in]`, any float dtype) rounded to bf16 (a bf16 tensor keeps its bits).
    pub(crate) fn quantize(w: &Tensor) -> Result<Self> {
        let (out_f, in_f) = w.dims2()?;
        let data: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Self::from_f32(out_f, in_f, &data)
    }

    /// (in_features, out_features).
    pub(crate) fn features(&self) -> (usize, usize) {
        (self.in_f, self.out_f)
    }

    /// Rows `ids` widened to f32, one after the other (an embedding lookup).
    pub(crate) fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(ids.len() * self.in_f);
        for &id in ids {
            let r = id as usize;
            if r >= self.out_f {
                return Err(Error::Internal(format!("bf16 row {r} of {}", self.out_f)));
            }
            out.extend(self.w[r * self.in_f..(r + 1) * self.in_f].iter().map(|&h| crate::gguf::bf16_to_f32(h)));
        }
        Ok(out)
    }

    /// Every value widened to f32, `[out, in]` row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        self.w.iter().map(|&h| crate::gguf::bf16_to_f32(h)).collect()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        2 * self.w.len()
    }

    /// `x W^T` for `x` `[n, in]` (any n; f32 in and out), plus `bias` if given, with the
    /// fastest kernel this CPU runs.
    pub(crate) fn matmul(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (n, in_f) = x.dims2()?;
        if in_f != self.in_f {
            return Err(Error::Internal(format!("bf16 linear expects {} input features, got {in_f}", self.in_f)));
        }
        let xv: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let y = self.rows(Kernel::detect(), &xv, n)?;
        super::with_bias(y, (n, self.out_f), bias, x.device())
    }

    /// `x W^T` for `x` (`n` rows of `in` values, row-major) with kernel `k`: `[n, out]`.
    /// Every weight row is read once for all rows, in register tiles; a task per block
    /// of output features.
    fn rows(&self, k: Kernel, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (out_f, in_f) = (self.out_f, self.in_f);
        if x.len() != n * in_f {
            return Err(Error::Internal(format!("bf16 linear: {} inputs are not {n} rows of {in_f}", x.len())));
        }
        if n == 0 || out_f == 0 {
            return Ok(Vec::new());
        }
        let mut yt = vec![0f32; out_f * n];
        // Half the bytes of f32 per multiply-add.
        let c = chunk(out_f, (in_f * n).div_ceil(2));
        yt.par_chunks_mut(c * n).enumerate().for_each(|(ci, ys)| {
            tiles(k, x, &self.w[ci * c * in_f..], n, in_f, ys);
        });
        Ok(if n == 1 { yt } else { transpose(&yt, out_f, n) })
    }
}

/// One task's block: `ys` (`[outputs, n]`) from the weight rows from `w`'s start on, in
/// the kernel's tiles (weight rows by input rows; more weight rows for a single row).
fn tiles(k: Kernel, x: &[f32], w: &[u16], n: usize, in_f: usize, ys: &mut [f32]) {
    let outs = ys.len() / n;
    macro_rules! tile {
        ($o:expr, $r:expr, $nw:literal, $nr:literal) => {{
            let ws: [&[u16]; $nw] = std::array::from_fn(|a| &w[($o + a) * in_f..($o + a + 1) * in_f]);
            let xs: [&[f32]; $nr] = std::array::from_fn(|b| &x[($r + b) * in_f..($r + b + 1) * in_f]);
            let ahead: &[u16] = if $r == 0 { next_rows(w, $o + $nw, $nw, in_f) } else { &[] };
            let t = dots::<$nw, $nr>(k, ws, xs, ahead);
            for (a, row) in t.iter().enumerate() {
                ys[($o + a) * n + $r..($o + a) * n + $r + $nr].copy_from_slice(row);
            }
        }};
    }
    for_each_tile(outs, n, k.tiles(), |o, r, nw, nr| by_shape!(tile, o, r, nw, nr));
}

/// Which build of the kernel runs (detected once; tests run every one available).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    /// 16 `f32::mul_add` lanes (any CPU).
    Portable,
    /// AVX2 + FMA: two 8-lane halves per pair.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 (F, VL, BW): one 16-lane register per pair, masked loads for a short tail.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn detect() -> Self {
        static K: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| Self::available().last().copied().unwrap_or(Kernel::Portable))
    }

    /// Every kernel this CPU runs, slowest first.
    pub(super) fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx2_fma() {
                ks.push(Kernel::Avx2);
            }
            if super::has_avx512() {
                ks.push(Kernel::Avx512);
            }
        }
        ks
    }

    /// (weight rows, input rows) per tile for two or more input rows, and weight rows
    /// for a single one (a power of two), as `for_each_tile` takes them. AVX-512: 4 x 4
    /// accumulators of its 32 registers; AVX2: 2 x 3 pairs of halves in 12 of its 16.
    fn tiles(self) -> (usize, usize, usize) {
        match self {
            Kernel::Portable => (1, 1, 1),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => (2, 3, 4),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => (4, 6, 8),
        }
    }
}

/// `out[o][r] = w[o] . x[r]` over the shortest slice's length, for `O` weight rows
/// (bf16 bits) and `R` input rows (f32), in the arithmetic of the module doc.
#[inline]
fn dots<const O: usize, const R: usize>(k: Kernel, w: [&[u16]; O], x: [&[f32]; R], ahead: &[u16]) -> [[f32; R]; O] {
    let len = w.iter().map(|s| s.len()).chain(x.iter().map(|s| s.len())).min().unwrap_or(0);
    let ahead = Ahead::new(ahead, len.div_ceil(LANES));
    match k {
        Kernel::Portable => dots_portable(len, w, x),
        // SAFETY: a `Kernel` other than `Portable` is only listed by `available` after
        // checking that the CPU has the features its function enables.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx2 => unsafe { x86::dots_avx2(len, w, x, ahead) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx512 => unsafe { x86::dots_avx512(len, w, x, ahead) },
    }
}

/// The 16 lanes summed in the fixed tree (`i + 8`, `i + 4`, `i + 2`, `i + 1`).
#[inline]
fn reduce(a: [f32; LANES]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|i| a[i] + a[i + 8]);
    let s4: [f32; 4] = std::array::from_fn(|i| s8[i] + s8[i + 4]);
    let s2: [f32; 2] = std::array::from_fn(|i| s4[i] + s4[i + 2]);
    s2[0] + s2[1]
}

/// The reference build: 16 lanes of `mul_add` (fused, as the SIMD builds), the last
/// chunk padded with zeros as theirs is.
fn dots_portable<const O: usize, const R: usize>(len: usize, w: [&[u16]; O], x: [&[f32]; R]) -> [[f32; R]; O] {
    let mut out = [[0f32; R]; O];
    for o in 0..O {
        for r in 0..R {
            let mut acc = [0f32; LANES];
            for j0 in (0..len).step_by(LANES) {
                for (i, a) in acc.iter_mut().enumerate() {
                    let j = j0 + i;
                    let (wv, xv) = if j < len { (crate::gguf::bf16_to_f32(w[o][j]), x[r][j]) } else { (0.0, 0.0) };
                    *a = wv.mul_add(xv, *a);
                }
            }
            out[o][r] = reduce(acc);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::tiles::{tile_sums, tile_sums512};
    use super::LANES;
    use crate::models::gemv::Ahead;

    /// 8 bf16 values at `p` widened to f32 (shifted into the high half of each lane).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn widen8(p: *const u16) -> __m256 {
        // SAFETY: the callers pass a pointer to 8 readable u16 (checked there); unaligned load.
        #[allow(unsafe_code)]
        let h = unsafe { _mm_loadu_si128(p.cast::<__m128i>()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// AVX2 + FMA: lanes 0..8 of each pair in one register, 8..16 in another; a short
    /// last chunk copied into zero-padded buffers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // `half`, `o`, `r` index several arrays
    pub(super) fn dots_avx2<const O: usize, const R: usize>(
        len: usize,
        w: [&[u16]; O],
        x: [&[f32]; R],
        mut ahead: Ahead,
    ) -> [[f32; R]; O] {
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; O];
        // One chunk of 16 from `wp[o]` and `xp[r]` (each 16 readable values).
        let mut chunk = |wp: [*const u16; O], xp: [*const f32; R]| {
            ahead.next();
            for half in 0..2 {
                let mut wv = [_mm256_setzero_ps(); O];
                for o in 0..O {
                    // SAFETY: `wp[o]` points to 16 readable values (see the callers).
                    #[allow(unsafe_code)]
                    let v = unsafe { widen8(wp[o].add(8 * half)) };
                    wv[o] = v;
                }
                for r in 0..R {
                    // SAFETY: `xp[r]` points to 16 readable values; unaligned load.
                    #[allow(unsafe_code)]
                    let xv = unsafe { _mm256_loadu_ps(xp[r].add(8 * half)) };
                    for o in 0..O {
                        acc[o][r][half] = _mm256_fmadd_ps(wv[o], xv, acc[o][r][half]);
                    }
                }
            }
        };
        let full = len - len % LANES;
        let mut j = 0;
        while j < full {
            // `j + 16 <= len <= every slice's length`.
            chunk(std::array::from_fn(|o| w[o][j..].as_ptr()), std::array::from_fn(|r| x[r][j..].as_ptr()));
            j += LANES;
        }
        if full < len {
            let mut wt = [[0u16; LANES]; O];
            let mut xt = [[0f32; LANES]; R];
            for o in 0..O {
                wt[o][..len - full].copy_from_slice(&w[o][full..len]);
            }
            for r in 0..R {
                xt[r][..len - full].copy_from_slice(&x[r][full..len]);
            }
            chunk(std::array::from_fn(|o| wt[o].as_ptr()), std::array::from_fn(|r| xt[r].as_ptr()));
        }
        tile_sums(&acc)
    }

    /// AVX-512: one 16-lane register per pair; a short last chunk read with masked
    /// loads (the lanes beyond it read as zero, nothing beyond the slices touched).
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw")]
    pub(super) fn dots_avx512<const O: usize, const R: usize>(
        len: usize,
        w: [&[u16]; O],
        x: [&[f32]; R],
        mut ahead: Ahead,
    ) -> [[f32; R]; O] {
        let mut acc = [[_mm512_setzero_ps(); R]; O];
        // One loop body for the whole chunks and a short last one (not a closure called
        // twice, which was not inlined and kept `acc` in memory).
        let mut j = 0;
        while j < len {
            let mask = if j + LANES <= len { u16::MAX } else { (1u16 << (len - j)) - 1 };
            ahead.next();
            let mut wv = [_mm512_setzero_ps(); O];
            for o in 0..O {
                // SAFETY: the mask selects values `j..min(j + 16, len)`, within `w[o]`.
                #[allow(unsafe_code)]
                let h = unsafe { _mm256_maskz_loadu_epi16(mask, w[o].as_ptr().add(j).cast::<i16>()) };
                wv[o] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
            }
            for r in 0..R {
                // SAFETY: as above, within `x[r]`.
                #[allow(unsafe_code)]
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, x[r].as_ptr().add(j)) };
                for o in 0..O {
                    acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
                }
            }
            j += LANES;
        }
        tile_sums512(&acc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    fn rng(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 20_000) as f32 / 10_000.0 - 1.0
        }
    }

    /// `x W^T` in f64 from the bf16-rounded weights (the exact product of what the
    /// kernel multiplies).
    fn reference(w: &Bf16Weight, x: &[f32], n: usize) -> Vec<f64> {
        let wf = w.to_f32();
        let (in_f, out_f) = w.features();
        let mut y = vec![0f64; n * out_f];
        for r in 0..n {
            for o in 0..out_f {
                y[r * out_f + o] = (0..in_f).map(|j| f64::from(wf[o * in_f + j]) * f64::from(x[r * in_f + j])).sum();
            }
        }
        y
    }

    #[test]
    fn bf16_products_match_an_f64_reference_and_every_kernel_gives_the_same_bits() {
        let kernels = Kernel::available();
        let mut next = rng(0x9e37_79b9);
        for in_f in [1usize, 5, 15, 16, 17, 31, 33, 64, 100, 257] {
            for out_f in [1usize, 2, 3, 7, 9, 13, 18] {
                let wv: Vec<f32> = (0..out_f * in_f).map(|_| next()).collect();
                let w = Bf16Weight::from_f32(out_f, in_f, &wv).unwrap();
                let n = 5;
                let x: Vec<f32> = (0..n * in_f).map(|_| next()).collect();
                let want = reference(&w, &x, n);
                let first = w.rows(Kernel::Portable, &x, n).unwrap();
                for (i, (&got, &exact)) in first.iter().zip(&want).enumerate() {
                    // f32 rounding: each lane's chain of in/16 sums and the 4-level
                    // tree, one rounding of at most 2^-24 of the sum of |products| each.
                    let r = i / out_f;
                    let o = i % out_f;
                    let wf = w.to_f32();
                    let mag: f64 =
                        (0..in_f).map(|j| (f64::from(wf[o * in_f + j]) * f64::from(x[r * in_f + j])).abs()).sum();
                    assert!(
                        (f64::from(got) - exact).abs() <= (in_f / LANES + 5) as f64 * 6e-8 * mag,
                        "in {in_f} out {out_f} ({r}, {o}): {got} vs {exact}"
                    );
                }
                for &k in &kernels {
                    let got = w.rows(k, &x, n).unwrap();
                    let same = got.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{k:?} in {in_f} out {out_f}: {got:?} vs {first:?}");
                }
            }
        }
    }

    #[test]
    fn a_bf16_row_gets_the_same_bits_alone_or_with_others_in_every_kernel() {
        let mut next = rng(0x2545_f491);
        for (in_f, out_f) in [(64usize, 50usize), (37, 35), (256, 48), (16, 201), (100, 9), (3, 17)] {
            let wv: Vec<f32> = (0..out_f * in_f).map(|_| next()).collect();
            let w = Bf16Weight::from_f32(out_f, in_f, &wv).unwrap();
            let x: Vec<f32> = (0..40 * in_f).map(|_| next()).collect();
            for &k in &Kernel::available() {
                for n in [1usize, 2, 3, 4, 5, 8, 13, 32, 33, 40] {
                    let all = w.rows(k, &x[..n * in_f], n).unwrap();
                    for r in 0..n {
                        let one = w.rows(k, &x[r * in_f..(r + 1) * in_f], 1).unwrap();
                        let row = &all[r * out_f..(r + 1) * out_f];
                        assert!(
                            one.iter().zip(row).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{k:?} row {r} of {n} ({in_f}x{out_f})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_matmul_is_close_to_f32() {
        let dev = Device::Cpu;
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: it goes to the even one, 1.
        let w = Bf16Weight::from_f32(1, 3, &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5]).unwrap();
        assert_eq!(w.to_f32(), vec![1.0, 1.0 + 4.0 / 256.0, -2.5]);
        assert_eq!(w.bytes(), 6);
        for (n, in_f, out_f) in [(1, 64, 50), (3, 250, 33), (12, 96, 7), (40, 19, 5)] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.05, (out_f, in_f), &dev).unwrap();
            let want = x.matmul(&wt.t().unwrap()).unwrap();
            let q = Bf16Weight::quantize(&wt).unwrap();
            let got = q.matmul(&x, None).unwrap();
            assert_eq!(got.dims(), &[n, out_f]);
            let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // Each weight within 2^-9 of its value: well under 1% of the output's range.
            assert!(err < 0.01 * scale, "{n}x{in_f}x{out_f}: {err} vs {scale}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        assert!(Bf16Weight::from_f32(2, 3, &[0.0; 5]).is_err());
        assert!(Bf16Weight::from_bits(2, 3, vec![0; 7]).is_err());
        let w = Bf16Weight::from_f32(2, 3, &[0.0; 6]).unwrap();
        assert!(w.matmul(&Tensor::zeros((1, 4), DType::F32, &dev).unwrap(), None).is_err());
        assert!(w.matmul(&Tensor::zeros(3, DType::F32, &dev).unwrap(), None).is_err());
        assert!(w.rows(Kernel::Portable, &[0.0; 5], 2).is_err());
        assert!(w.rows_f32(&[2]).is_err());
        assert_eq!(w.rows_f32(&[1, 0]).unwrap().len(), 6);
        let empty = w.matmul(&Tensor::zeros((0, 3), DType::F32, &dev).unwrap(), None).unwrap();
        assert_eq!(empty.dims(), &[0, 2]);
    }
}
