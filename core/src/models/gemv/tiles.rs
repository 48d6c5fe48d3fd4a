//! Register-tiled products for a few input rows (a short prompt, a decoding batch) on
//! AVX2 + FMA. The plain dot product per (input row, weight row) loads two vectors for
//! every multiply-add and is bound by loads from L1/L2; here every weight vector loaded
//! feeds several rows' multiply-adds while it sits in a register, without packing the
//! weight (which a general gemm does, and which costs more than a 16-row product).

use std::arch::x86_64::*;

use super::Ahead;

/// Weight rows per tile of the `[out, in]` layout.
pub(super) const OUT_TILE: usize = 3;
/// Input rows per tile of the `[out, in]` layout: 3 x 4 accumulators, 3 weight vectors
/// and one input vector fill the 16 AVX2 registers.
pub(super) const ROW_TILE: usize = 4;
/// Output columns per tile of the `[in, out]` layout (two vectors; four for two input
/// rows, eight for one).
pub(super) const COLS: usize = 16;
/// Input rows per tile of the `[in, out]` layout: 6 x 2 accumulators, two weight vectors
/// and a broadcast input.
pub(super) const COL_ROWS: usize = 6;

/// The 8 lanes summed pairwise (high half onto low, then within the quad): the order
/// every AVX2 kernel here and in `q8tiles` uses.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// The outputs of an `O x R` tile kept as two AVX2 halves per pair: `hsum(a + b)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn tile_sums<const O: usize, const R: usize>(acc: &[[[__m256; 2]; R]; O]) -> [[f32; R]; O] {
    let mut out = [[0f32; R]; O];
    for (o, row) in out.iter_mut().enumerate() {
        for (r, v) in row.iter_mut().enumerate() {
            *v = hsum(_mm256_add_ps(acc[o][r][0], acc[o][r][1]));
        }
    }
    out
}

/// The outputs of an `O x R` tile kept as one AVX-512 register per pair: the high half
/// added onto the low, then [`hsum`].
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
pub(super) fn tile_sums512<const O: usize, const R: usize>(acc: &[[__m512; R]; O]) -> [[f32; R]; O] {
    let mut out = [[0f32; R]; O];
    for (o, row) in out.iter_mut().enumerate() {
        for (r, v) in row.iter_mut().enumerate() {
            let a = acc[o][r];
            let lo = _mm512_castps512_ps256(a);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
            *v = hsum(_mm256_add_ps(lo, hi));
        }
    }
    out
}

/// `out[o][r] = w[o] . x[r]` over the shortest slice's length, for `O` weight rows and
/// `R` input rows, prefetching `ahead` (the next tile's weight) on the way.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn dots<const O: usize, const R: usize>(w: [&[f32]; O], x: [&[f32]; R], ahead: &[f32]) -> [[f32; R]; O] {
    let k = w.iter().chain(x.iter()).map(|s| s.len()).min().unwrap_or(0);
    let k8 = k - k % 8;
    let mut acc = [[_mm256_setzero_ps(); R]; O];
    let mut j = 0;
    let mut ahead = Ahead::new(ahead, k8 / 8);
    while j < k8 {
        ahead.next();
        let mut wv = [_mm256_setzero_ps(); O];
        for o in 0..O {
            // SAFETY: `j + 8 <= k8 <= w[o].len()`; unaligned load.
            #[allow(unsafe_code)]
            let v = unsafe { _mm256_loadu_ps(w[o].as_ptr().add(j)) };
            wv[o] = v;
        }
        for r in 0..R {
            // SAFETY: `j + 8 <= k8 <= x[r].len()`; unaligned load.
            #[allow(unsafe_code)]
            let xv = unsafe { _mm256_loadu_ps(x[r].as_ptr().add(j)) };
            for o in 0..O {
                acc[o][r] = _mm256_fmadd_ps(wv[o], xv, acc[o][r]);
            }
        }
        j += 8;
    }
    let mut out = [[0f32; R]; O];
    for o in 0..O {
        for r in 0..R {
            let tail: f32 = w[o][k8..k].iter().zip(&x[r][k8..k]).map(|(a, b)| a * b).sum();
            out[o][r] = hsum(acc[o][r]) + tail;
        }
    }
    out
}

/// Weight rows and input rows per tile of [`dots512`] (24 accumulators, 4 weight
/// vectors and one input vector of the 32 AVX-512 registers).
pub(super) const OUT_TILE_512: usize = 4;
pub(super) const ROW_TILE_512: usize = 6;

/// [`dots`] on AVX-512: 16 lanes per pair (input feature `j` in lane `j % 16`, each lane
/// one chain of fused multiply-adds), a short last chunk read with masked loads (the
/// lanes beyond it read as zero and leave their sums unchanged), then the high half
/// added onto the low and [`hsum`]. Every pair is summed that way whatever the tile,
/// so a row's result does not depend on the rows beside it (its sums differ from the
/// AVX2 kernel's in the last bits: one kernel is chosen per process).
#[inline]
#[target_feature(enable = "avx2,fma,avx512f")]
pub(super) fn dots512<const O: usize, const R: usize>(w: [&[f32]; O], x: [&[f32]; R], ahead: &[f32]) -> [[f32; R]; O] {
    let mut k = usize::MAX;
    for s in w.iter() {
        k = k.min(s.len());
    }
    for s in x.iter() {
        k = k.min(s.len());
    }
    let mut acc = [[_mm512_setzero_ps(); R]; O];
    let mut ahead = Ahead::new(ahead, k.div_ceil(16));
    let mut j = 0;
    while j < k {
        let mask = if j + 16 <= k { u16::MAX } else { (1u16 << (k - j)) - 1 };
        ahead.next();
        let mut wv = [_mm512_setzero_ps(); O];
        for o in 0..O {
            // SAFETY: the mask selects elements `j..min(j + 16, k)`, within `w[o]`.
            #[allow(unsafe_code)]
            let v = unsafe { _mm512_maskz_loadu_ps(mask, w[o].as_ptr().add(j)) };
            wv[o] = v;
        }
        for r in 0..R {
            // SAFETY: as above, within `x[r]`.
            #[allow(unsafe_code)]
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, x[r].as_ptr().add(j)) };
            for o in 0..O {
                acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
            }
        }
        j += 16;
    }
    tile_sums512(&acc)
}

/// `out[r * out_rs + c] = sum_i x[r][i] * w[i * stride + c]` for `8 V` columns `c` (`w`
/// and `out` start at the first of them) and `R` input rows, over `k` input features.
/// Every column is one sequential chain of multiply-adds over `i`, whatever `R` and `V`,
/// so a row's result does not depend on the tile it falls in; wider tiles for fewer rows
/// keep enough chains in flight.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // `i` indexes every row's slice
pub(super) fn axpys<const R: usize, const V: usize>(
    x: [&[f32]; R],
    w: &[f32],
    stride: usize,
    k: usize,
    out: &mut [f32],
    out_rs: usize,
) {
    let cols = 8 * V;
    let k_w = if w.len() < cols { 0 } else { (w.len() - cols) / stride.max(1) + 1 };
    let k = x.iter().map(|s| s.len()).fold(k.min(k_w), usize::min);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for i in 0..k {
        let mut wv = [_mm256_setzero_ps(); V];
        for v in 0..V {
            // SAFETY: `i * stride + cols <= w.len()` for `i < k_w`; unaligned load.
            #[allow(unsafe_code)]
            let l = unsafe { _mm256_loadu_ps(w.as_ptr().add(i * stride + 8 * v)) };
            wv[v] = l;
        }
        for r in 0..R {
            let xb = _mm256_set1_ps(x[r][i]);
            for v in 0..V {
                acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
            }
        }
    }
    for r in 0..R {
        let Some(row) = out.get_mut(r * out_rs..r * out_rs + cols) else { continue };
        for v in 0..V {
            // SAFETY: `row` holds `8 V` floats; unaligned store.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr().add(8 * v), acc[r][v]);
            }
        }
    }
}
