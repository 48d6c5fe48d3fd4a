//! bf16 products for decoding: a linear layer's weight held as bfloat16 (the high 16
//! bits of each f32, rounded to nearest even: half the bytes to stream per token), each
//! input row rounded to bfloat16 too (as GGML does for its bf16 type and PyTorch's
//! autocast for linear layers), every product of two bf16 values exact in f32 and every
//! sum in f32. A result differs from f32's by the rounding of the weights and of the
//! inputs (relative 2^-9 at most each).
//!
//! The arithmetic is that of AVX512-BF16's `vdpbf16ps`, which runs it where the CPU has
//! it; the other builds (AVX-512 F, AVX2 + FMA, portable) reproduce its bits. Input
//! features go in pairs `(2p, 2p + 1)`, pair `p` to lane `p % 16` of 16 lanes (a chunk
//! of 32 features per step, the last one padded with zeros); each lane adds the odd
//! feature's product, then the even one's, each addition rounded to f32 (the order
//! `vdpbf16ps` adds them in), then the 16 lanes are summed in one fixed tree (`i + 8`,
//! then `i + 4`, `i + 2`, `i + 1`: the order of `tiles::hsum`). `vdpbf16ps` treats
//! subnormal inputs as zero: the weights and the rounded inputs hold none (flushed to
//! a signed zero when rounded or loaded). It also flushes a subnormal sum to zero, which
//! the portable build does too and the FMA builds do not: their bits differ from the
//! others' only where a partial sum falls below 2^-126 (unseen with real activations).
//! Several weight rows by several input rows run in register tiles, every weight chunk
//! loaded once for all the rows of its tile; every pair is summed the same way whatever
//! its tile, so a row's result does not depend on the rows beside it or on the tile
//! shape.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::{by_shape, chunk, for_each_tile, next_rows, transpose, Ahead};
use crate::error::{Error, Result};

/// Lanes of partial sums (pair `p` of input features goes to lane `p % LANES`).
const LANES: usize = 16;
/// Input features per step: two per lane.
const CHUNK: usize = 2 * LANES;

/// `x` rounded to the nearest bf16 (ties to even), a subnormal result flushed to a zero
/// of its sign (`vdpbf16ps` reads subnormals as zero).
#[inline]
pub(crate) fn round_flushed(x: f32) -> u16 {
    flushed(crate::gguf::f32_to_bf16(x))
}

/// bf16 bits with a subnormal value replaced by a zero of its sign.
#[inline]
fn flushed(h: u16) -> u16 {
    if h & 0x7f80 == 0 {
        h & 0x8000
    } else {
        h
    }
}

/// A weight `[out, in]` as bfloat16 bits, row-major (2 bytes per value; any `in`;
/// subnormals flushed to zero).
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
        Ok(Self { out_f, in_f, w: data.iter().map(|&v| round_flushed(v)).collect() })
    }

    /// A weight `[out, in]` from bf16 bit patterns (row-major), taken as they are but
    /// for subnormals (zero).
    pub(crate) fn from_bits(out_f: usize, in_f: usize, mut w: Vec<u16>) -> Result<Self> {
        if w.len() != out_f * in_f {
            return Err(Error::Internal(format!("bf16: {} values are not {out_f} rows of {in_f}", w.len())));
        }
        w.iter_mut().for_each(|h| *h = flushed(*h));
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

    /// `x W^T` for `x` `[n, in]` (any n; f32 in and out, each input rounded to bf16),
    /// plus `bias` if given, with the fastest kernel this CPU runs.
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
    /// The rows are rounded to bf16 first (each padded with zeros to whole chunks);
    /// every weight row is read once for all rows, in register tiles; a task per block
    /// of output features.
    fn rows(&self, k: Kernel, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (out_f, in_f) = (self.out_f, self.in_f);
        if x.len() != n * in_f {
            return Err(Error::Internal(format!("bf16 linear: {} inputs are not {n} rows of {in_f}", x.len())));
        }
        if n == 0 || out_f == 0 {
            return Ok(Vec::new());
        }
        let stride = in_f.next_multiple_of(CHUNK);
        let mut xb = vec![0u16; n * stride];
        if in_f > 0 {
            for (row, xr) in xb.chunks_exact_mut(stride).zip(x.chunks_exact(in_f)) {
                row.iter_mut().zip(xr).for_each(|(h, &v)| *h = round_flushed(v));
            }
        }
        let mut yt = vec![0f32; out_f * n];
        // Half the bytes of f32 per multiply-add.
        let c = chunk(out_f, (in_f * n).div_ceil(2));
        yt.par_chunks_mut(c * n).enumerate().for_each(|(ci, ys)| {
            tiles(k, &xb, stride, &self.w[ci * c * in_f..], n, in_f, ys);
        });
        Ok(if n == 1 { yt } else { transpose(&yt, out_f, n) })
    }
}

/// One task's block: `ys` (`[outputs, n]`) from the weight rows from `w`'s start on, in
/// the kernel's tiles (weight rows by input rows; more weight rows for a single row).
/// `x`: the rounded input rows, `stride` apart (zero-padded to whole chunks).
fn tiles(k: Kernel, x: &[u16], stride: usize, w: &[u16], n: usize, in_f: usize, ys: &mut [f32]) {
    let outs = ys.len() / n;
    macro_rules! tile {
        ($o:expr, $r:expr, $nw:literal, $nr:literal) => {{
            let ws: [&[u16]; $nw] = std::array::from_fn(|a| &w[($o + a) * in_f..($o + a + 1) * in_f]);
            let xs: [&[u16]; $nr] = std::array::from_fn(|b| &x[($r + b) * stride..($r + b + 1) * stride]);
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
    /// The arithmetic in scalar code (any CPU).
    Portable,
    /// AVX2 + FMA: two 8-lane halves per pair of rows, each pair of features split
    /// into its odd and even values.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 (F, VL, BW): one 16-lane register per pair of rows, features split as
    /// for AVX2; masked loads for a short tail.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX512-BF16: `vdpbf16ps`, 32 features per instruction.
    #[cfg(target_arch = "x86_64")]
    Bf16,
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
            if crate::models::bgemm::has_bf16_kernel() {
                ks.push(Kernel::Bf16);
            }
        }
        ks
    }

    /// Whether this kernel flushes a subnormal partial sum to zero (the FMA builds do not).
    #[cfg(test)]
    fn flushes(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16 => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }

    /// (weight rows, input rows) per tile for two or more input rows, and weight rows
    /// for a single one (a power of two), as `for_each_tile` takes them, so that the
    /// accumulators and a chunk's operands stay in registers. AVX512-BF16: 4 x 6
    /// accumulators, 4 weight chunks and an input one (29 of 32 registers); the FMA
    /// builds hold each chunk as two (odd and even values): AVX-512 4 x 4 (16 + 8 + 2),
    /// AVX2 2 x 2 pairs of halves (8 + 4 + 2 of 16).
    fn tiles(self) -> (usize, usize, usize) {
        match self {
            Kernel::Portable => (1, 1, 1),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => (2, 2, 4),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => (4, 4, 8),
            #[cfg(target_arch = "x86_64")]
            Kernel::Bf16 => (4, 6, 8),
        }
    }
}

/// `out[o][r] = w[o] . x[r]` over the weight rows' length (the input rows hold at least
/// that many values, rounded up to whole chunks), for `O` weight rows and `R` input
/// rows (both bf16 bits), in the arithmetic of the module doc.
#[inline]
fn dots<const O: usize, const R: usize>(k: Kernel, w: [&[u16]; O], x: [&[u16]; R], ahead: &[u16]) -> [[f32; R]; O] {
    let len = w.iter().map(|s| s.len()).min().unwrap_or(0);
    debug_assert!(x.iter().all(|s| s.len() >= len.next_multiple_of(CHUNK)));
    let ahead = Ahead::new(ahead, len.div_ceil(CHUNK));
    match k {
        Kernel::Portable => dots_portable(len, w, x),
        // SAFETY: a `Kernel` other than `Portable` is only listed by `available` after
        // checking that the CPU has the features its function enables; every input row
        // holds whole chunks up to `len` (`rows` pads them).
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx2 => unsafe { x86::dots_avx2(len, w, x, ahead) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Avx512 => unsafe { x86::dots_avx512(len, w, x, ahead) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        Kernel::Bf16 => unsafe { x86::dots_bf16(len, w, x, ahead) },
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

/// `x` or, if subnormal, a zero of its sign.
#[inline]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0f32.copysign(x)
    } else {
        x
    }
}

/// The reference build: `vdpbf16ps` step by step (odd product added, then the even
/// one, each sum rounded and flushed), the last chunk padded with zeros.
fn dots_portable<const O: usize, const R: usize>(len: usize, w: [&[u16]; O], x: [&[u16]; R]) -> [[f32; R]; O] {
    let bf = crate::gguf::bf16_to_f32;
    let mut out = [[0f32; R]; O];
    for o in 0..O {
        for r in 0..R {
            let mut acc = [0f32; LANES];
            for j0 in (0..len).step_by(CHUNK) {
                for (i, a) in acc.iter_mut().enumerate() {
                    let pair = |j: usize| if j < len { bf(w[o][j]) * bf(x[r][j]) } else { 0.0 };
                    let j = j0 + 2 * i;
                    *a = ftz(ftz(*a + pair(j + 1)) + pair(j));
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
    use super::{CHUNK, LANES};
    use crate::models::gemv::Ahead;

    /// The odd and even values of 8 pairs of bf16 (16 values) at `p`, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn split8(p: *const u16) -> (__m256, __m256) {
        // SAFETY: the callers pass a pointer to 16 readable u16 (checked there); unaligned load.
        #[allow(unsafe_code)]
        let v = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000_u32 as i32));
        (_mm256_castsi256_ps(odd), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)))
    }

    /// The odd and even values of 16 pairs of bf16 (in a register), widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    fn split16(v: __m512i) -> (__m512, __m512) {
        let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xffff_0000_u32 as i32));
        (_mm512_castsi512_ps(odd), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)))
    }

    /// The mask of a chunk's values from `j` on, of `len` (all 32 when whole).
    #[inline]
    fn chunk_mask(j: usize, len: usize) -> u32 {
        if j + CHUNK <= len {
            u32::MAX
        } else {
            (1u32 << (len - j)) - 1
        }
    }

    /// AVX2 + FMA: lanes 0..8 of each pair of rows in one register (features 0..16 of
    /// the chunk), 8..16 in another; a short last chunk of weights copied into
    /// zero-padded buffers (the input rows are padded already).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // `half`, `o`, `r` index several arrays
    pub(super) fn dots_avx2<const O: usize, const R: usize>(
        len: usize,
        w: [&[u16]; O],
        x: [&[u16]; R],
        mut ahead: Ahead,
    ) -> [[f32; R]; O] {
        let mut acc = [[[_mm256_setzero_ps(); 2]; R]; O];
        // One chunk of 32 from `wp[o]` and `xp[r]` (each 32 readable values).
        let mut chunk = |wp: [*const u16; O], xp: [*const u16; R]| {
            ahead.next();
            for half in 0..2 {
                let mut wv = [(_mm256_setzero_ps(), _mm256_setzero_ps()); O];
                for o in 0..O {
                    // SAFETY: `wp[o]` points to 32 readable values (see the callers).
                    #[allow(unsafe_code)]
                    let v = unsafe { split8(wp[o].add(LANES * half)) };
                    wv[o] = v;
                }
                for r in 0..R {
                    // SAFETY: as for the weights.
                    #[allow(unsafe_code)]
                    let (xo, xe) = unsafe { split8(xp[r].add(LANES * half)) };
                    for o in 0..O {
                        let a = _mm256_fmadd_ps(wv[o].0, xo, acc[o][r][half]);
                        acc[o][r][half] = _mm256_fmadd_ps(wv[o].1, xe, a);
                    }
                }
            }
        };
        let full = len - len % CHUNK;
        let mut j = 0;
        while j < full {
            // `j + 32 <= len`: within every weight row and (padded) input row.
            chunk(std::array::from_fn(|o| w[o][j..].as_ptr()), std::array::from_fn(|r| x[r][j..].as_ptr()));
            j += CHUNK;
        }
        if full < len {
            let mut wt = [[0u16; CHUNK]; O];
            for o in 0..O {
                wt[o][..len - full].copy_from_slice(&w[o][full..len]);
            }
            // The input rows hold whole chunks (zeros beyond `len`).
            chunk(std::array::from_fn(|o| wt[o].as_ptr()), std::array::from_fn(|r| x[r][full..].as_ptr()));
        }
        tile_sums(&acc)
    }

    /// AVX-512 (F, BW): one 16-lane register per pair of rows; a short last chunk of
    /// weights read with a masked load (the values beyond it read as zero, nothing
    /// beyond the slices touched).
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw")]
    pub(super) fn dots_avx512<const O: usize, const R: usize>(
        len: usize,
        w: [&[u16]; O],
        x: [&[u16]; R],
        mut ahead: Ahead,
    ) -> [[f32; R]; O] {
        let mut acc = [[_mm512_setzero_ps(); R]; O];
        let mut j = 0;
        while j < len {
            let mask = chunk_mask(j, len);
            ahead.next();
            let mut wv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); O];
            for o in 0..O {
                // SAFETY: the mask selects values `j..min(j + 32, len)`, within `w[o]`.
                #[allow(unsafe_code)]
                let v = unsafe { _mm512_maskz_loadu_epi16(mask, w[o].as_ptr().add(j).cast::<i16>()) };
                wv[o] = split16(v);
            }
            for r in 0..R {
                // SAFETY: the input rows hold whole chunks up to `len`.
                #[allow(unsafe_code)]
                let (xo, xe) = split16(unsafe { _mm512_loadu_si512(x[r].as_ptr().add(j).cast()) });
                for o in 0..O {
                    let a = _mm512_fmadd_ps(wv[o].0, xo, acc[o][r]);
                    acc[o][r] = _mm512_fmadd_ps(wv[o].1, xe, a);
                }
            }
            j += CHUNK;
        }
        tile_sums512(&acc)
    }

    /// AVX512-BF16: `vdpbf16ps` per chunk of 32 features and pair of rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")]
    pub(super) fn dots_bf16<const O: usize, const R: usize>(
        len: usize,
        w: [&[u16]; O],
        x: [&[u16]; R],
        mut ahead: Ahead,
    ) -> [[f32; R]; O] {
        let mut acc = [[_mm512_setzero_ps(); R]; O];
        let mut j = 0;
        while j < len {
            let mask = chunk_mask(j, len);
            ahead.next();
            let mut wv = [_mm512_setzero_si512(); O];
            for o in 0..O {
                // SAFETY: the mask selects values `j..min(j + 32, len)`, within `w[o]`.
                #[allow(unsafe_code)]
                let v = unsafe { _mm512_maskz_loadu_epi16(mask, w[o].as_ptr().add(j).cast::<i16>()) };
                wv[o] = v;
            }
            for r in 0..R {
                // SAFETY: the input rows hold whole chunks up to `len`.
                #[allow(unsafe_code)]
                let xv = unsafe { _mm512_loadu_si512(x[r].as_ptr().add(j).cast()) };
                // SAFETY: a 512-bit register read as 32 bf16 (same size, any bits).
                #[allow(unsafe_code)]
                let xb = unsafe { std::mem::transmute::<__m512i, __m512bh>(xv) };
                for o in 0..O {
                    #[allow(unsafe_code)]
                    // SAFETY: as above.
                    let wb = unsafe { std::mem::transmute::<__m512i, __m512bh>(wv[o]) };
                    acc[o][r] = _mm512_dpbf16_ps(acc[o][r], wb, xb);
                }
            }
            j += CHUNK;
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

    /// `x W^T` in f64 from the bf16-rounded weights and inputs (the exact sum of the
    /// products the kernels add).
    fn reference(w: &Bf16Weight, x: &[f32], n: usize) -> Vec<f64> {
        let wf = w.to_f32();
        let xf: Vec<f32> = x.iter().map(|&v| crate::gguf::bf16_to_f32(round_flushed(v))).collect();
        let (in_f, out_f) = w.features();
        let mut y = vec![0f64; n * out_f];
        for r in 0..n {
            for o in 0..out_f {
                y[r * out_f + o] = (0..in_f).map(|j| f64::from(wf[o * in_f + j]) * f64::from(xf[r * in_f + j])).sum();
            }
        }
        y
    }

    #[test]
    fn bf16_products_match_an_f64_reference_and_every_kernel_gives_the_same_bits() {
        let kernels = Kernel::available();
        let mut next = rng(0x9e37_79b9);
        for in_f in [1usize, 2, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257] {
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
                    // Every kernel (`vdpbf16ps` too, where the CPU has it) gives these bits.
                    let r = i / out_f;
                    let o = i % out_f;
                    let wf = w.to_f32();
                    let xr = |j: usize| crate::gguf::bf16_to_f32(round_flushed(x[r * in_f + j]));
                    let mag: f64 = (0..in_f).map(|j| (f64::from(wf[o * in_f + j]) * f64::from(xr(j))).abs()).sum();
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
            // Each weight and input within 2^-9 of its value: well under 1% of the
            // output's range.
            assert!(err < 0.01 * scale, "{n}x{in_f}x{out_f}: {err} vs {scale}");
        }
        // The inputs are rounded too: 1 + 2^-8 times 1 is 1, not 1 + 2^-8.
        let one = Bf16Weight::from_f32(1, 1, &[1.0]).unwrap();
        assert_eq!(one.rows(Kernel::Portable, &[1.0 + 1.0 / 256.0], 1).unwrap(), vec![1.0]);
        let x = Tensor::new(&[[1.0f32 + 1.0 / 256.0, 3.0, 0.5]], &dev).unwrap();
        assert_eq!(
            w.matmul(&x, None).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1.0 + 3.0 * (1.0 + 4.0 / 256.0) - 1.25]]
        );
    }

    /// Subnormal weights and inputs count as zero, as `vdpbf16ps` reads them; a
    /// subnormal sum is flushed to zero by the kernels that flush (the portable one
    /// and `vdpbf16ps`) and kept by the FMA ones, the only place their bits differ.
    #[test]
    fn subnormals_read_as_zero_and_flushing_kernels_agree() {
        let tiny = f32::MIN_POSITIVE / 4.0; // subnormal in f32, and as bf16
        assert_eq!(round_flushed(tiny), 0);
        assert_eq!(round_flushed(-tiny), 0x8000);
        assert_eq!(round_flushed(f32::MIN_POSITIVE), crate::gguf::f32_to_bf16(f32::MIN_POSITIVE));
        let w = Bf16Weight::from_f32(2, 3, &[tiny, 1.0, 2.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(w.to_f32(), vec![0.0, 1.0, 2.0, 1.0, 1.0, 1.0]);
        let bits = Bf16Weight::from_bits(1, 2, vec![0x0001, 0x8001]).unwrap();
        assert_eq!(bits.w, vec![0, 0x8000]);
        // A subnormal input multiplies as zero: 1e30 x tiny would be ~3e-9, not 0.
        let big = Bf16Weight::from_f32(1, 1, &[1e30]).unwrap();
        for k in Kernel::available() {
            assert_eq!(big.rows(k, &[tiny], 1).unwrap(), vec![0.0], "{k:?}");
        }
        // 2^-64 x 2^-64 = 2^-128: a subnormal product, flushed by the flushing kernels.
        let small = Bf16Weight::from_f32(1, 2, &[2f32.powi(-64), 2f32.powi(-64)]).unwrap();
        let x = [2f32.powi(-64), 2f32.powi(-64)];
        for k in Kernel::available() {
            let got = small.rows(k, &x, 1).unwrap()[0];
            if k.flushes() {
                assert_eq!(got, 0.0, "{k:?}");
            } else {
                assert_eq!(got, 2f32.powi(-127), "{k:?}");
            }
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
