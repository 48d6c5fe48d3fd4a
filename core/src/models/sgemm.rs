//! Strided f32 matrix products on slices, through the `gemm` crate (the kernels candle
//! itself runs on the CPU), for the fused training ops that multiply views of their
//! buffers (one head of a `[b, t, heads * d]` activation, a transposed block of
//! probabilities) without copying them out first. Every call checks its operands'
//! bounds before the crate, which takes raw pointers, is reached.

use candle_core::{bail, DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// A matrix view inside a slice: element `(i, j)` at `offset + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) offset: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major rows from `offset`, `rs` apart.
    pub(crate) fn rows(data: &'a [f32], offset: usize, rs: usize) -> Self {
        Self { data, offset, rs, cs: 1 }
    }

    /// The transpose of [`Mat::rows`]`(data, offset, rs)`.
    pub(crate) fn transposed(data: &'a [f32], offset: usize, rs: usize) -> Self {
        Self { data, offset, rs: 1, cs: rs }
    }

    /// Element `(i, j)` at `offset + i * rs + j * cs`.
    pub(crate) fn strided(data: &'a [f32], offset: usize, rs: usize, cs: usize) -> Self {
        Self { data, offset, rs, cs }
    }

    /// Element `(i, j)` (the caller checked [`Mat::fits`]).
    #[inline]
    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.rs + j * self.cs]
    }

    /// Whether an `m x n` matrix fits in the slice.
    pub(crate) fn fits(&self, m: usize, n: usize) -> bool {
        m == 0
            || n == 0
            || (m - 1)
                .checked_mul(self.rs)
                .and_then(|a| (n - 1).checked_mul(self.cs).and_then(|b| a.checked_add(b)))
                .and_then(|e| e.checked_add(self.offset))
                .is_some_and(|last| last < self.data.len())
    }
}

/// Where a product goes: a row-major `m x n` block of `data` from `offset`, rows `rs`
/// apart; `accumulate` adds the product to what is there.
pub(crate) struct Dst<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) offset: usize,
    pub(crate) rs: usize,
    pub(crate) accumulate: bool,
}

/// Whether an `m x n` (m > 0) result fits in `dst`.
pub(crate) fn dst_fits(dst: &Dst<'_>, m: usize, n: usize) -> bool {
    dst.rs >= n
        && (m - 1)
            .checked_mul(dst.rs)
            .and_then(|a| a.checked_add(dst.offset + n))
            .is_some_and(|end| end <= dst.data.len())
}

/// `dst[m, n] (+)= lhs[m, k] x rhs[k, n]`. `threads`: split the product over rayon's
/// pool (for callers that are not already one task among many).
pub(crate) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: Dst<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    threads: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !dst_fits(&dst, m, n) || !lhs.fits(m, k) || !rhs.fits(k, n) {
        bail!("gemm operands out of bounds ({m}x{k} x {k}x{n})");
    }
    let out = &mut dst.data[dst.offset..];
    if k == 0 {
        if !dst.accumulate {
            for i in 0..m {
                out[i * dst.rs..][..n].fill(0.0);
            }
        }
        return Ok(());
    }
    let par = match rayon::current_num_threads() {
        t if threads && t > 1 => gemm::Parallelism::Rayon(t),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: every element the gemm reads or writes was checked above to lie inside its
    // slice: `out` (i * rs + j for i < m, j < n), `lhs` (i < m, l < k) and `rhs` (l < k,
    // j < n); `out` is a unique borrow, so it overlaps neither operand.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            dst.rs as isize,
            dst.accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// `a [.., m, k] x b [.., k, n]` (the same leading dims, any strides: a transposed view
/// is read in place) for f32 tensors on the CPU outside autograd, through the gemm
/// directly: one product split over rayon's pool, or one product per task over the
/// leading dims. `None` when an operand is elsewhere, of another dtype, or tracked by
/// autograd; the caller hands those to candle. candle's own CPU matmul asks for the
/// thread count on every call, which on a machine without `RAYON_NUM_THREADS` re-reads
/// and parses `/proc/cpuinfo` (~70 us here on 2 CPUs, more on large machines): hundreds
/// of times per training step, dozens per prompt.
pub(crate) fn tensor_mm(a: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    tensor_mm_by(a, b, matmul)
}

/// A slice product: [`matmul`], or `bgemm::matmul` (bf16 multiplies).
pub(crate) type Gemm = fn((usize, usize, usize), Dst<'_>, Mat<'_>, Mat<'_>, bool) -> Result<()>;

/// [`tensor_mm`] through `gemm`.
pub(crate) fn tensor_mm_by(a: &Tensor, b: &Tensor, gemm: Gemm) -> Result<Option<Tensor>> {
    let plain = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op();
    let (ad, bd) = (a.dims(), b.dims());
    let r = ad.len();
    if !plain(a) || !plain(b) || r < 2 || bd.len() != r || ad[..r - 2] != bd[..r - 2] {
        return Ok(None);
    }
    let (m, k, n) = (ad[r - 2], ad[r - 1], bd[r - 1]);
    if bd[r - 2] != k {
        bail!("matmul: {ad:?} x {bd:?}");
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(ca), Storage::Cpu(cb)) = (&*sa, &*sb) else {
        return Ok(None);
    };
    let (da, db) = (ca.as_slice::<f32>()?, cb.as_slice::<f32>()?);
    let (ra, rb) = (la.stride(), lb.stride());
    // Offset of batch entry `i` (row-major over the leading dims).
    let at = |i: usize, start: usize, stride: &[usize]| -> usize {
        let (mut rest, mut off) = (i, start);
        for d in (0..r - 2).rev() {
            off += (rest % ad[d]) * stride[d];
            rest /= ad[d];
        }
        off
    };
    let batch: usize = ad[..r - 2].iter().product();
    let mut out = vec![0f32; batch * m * n];
    let one = |i: usize, o: &mut [f32], threads: bool| {
        let lhs = Mat::strided(da, at(i, la.start_offset(), ra), ra[r - 2], ra[r - 1]);
        let rhs = Mat::strided(db, at(i, lb.start_offset(), rb), rb[r - 2], rb[r - 1]);
        gemm((m, n, k), Dst { data: o, offset: 0, rs: n, accumulate: false }, lhs, rhs, threads)
    };
    if batch == 1 {
        one(0, &mut out, true)?;
    } else if m * n > 0 {
        out.par_chunks_mut(m * n).enumerate().try_for_each(|(i, o)| one(i, o, false))?;
    }
    let mut dims = ad.to_vec();
    dims[r - 1] = n;
    Ok(Some(Tensor::from_vec(out, dims, a.device())?))
}

/// [`tensor_mm`], or candle's matmul where it does not apply.
pub(crate) fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match tensor_mm(a, b)? {
        Some(y) => Ok(y),
        None => a.matmul(b),
    }
}

/// Below this many elements a transpose runs on the calling thread.
const TRANSPOSE_PARALLEL_FROM: usize = 1 << 15;

/// `[rows, cols]` -> `[cols, rows]`.
pub(crate) fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    transpose_into(a, rows, cols, &mut out);
    out
}

/// `a` `[rows, cols]` transposed into `out[..rows * cols]`, in parallel bands of output
/// rows, 8 x 8 tiles at a time where the CPU has AVX2 (the head's logits, 16 MiB a block,
/// took 5% of a training step through the scalar loop).
pub(crate) fn transpose_into(a: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const TILE: usize = 8;
    if rows == 0 || cols == 0 {
        return;
    }
    let (a, out) = (&a[..rows * cols], &mut out[..rows * cols]);
    let band = if rows * cols < TRANSPOSE_PARALLEL_FROM {
        cols
    } else {
        cols.div_ceil(rayon::current_num_threads().max(1) * 4).next_multiple_of(4 * TILE)
    };
    #[cfg(target_arch = "x86_64")]
    let simd = crate::models::gemv::has_avx2_fma();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    out.par_chunks_mut(band * rows).enumerate().for_each(|(bi, out)| {
        let c0 = bi * band;
        let width = out.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            let mut c = 0;
            #[cfg(target_arch = "x86_64")]
            if simd && r1 - r0 == TILE {
                while c + TILE <= width {
                    // SAFETY: the CPU has AVX2; the tile's 8 rows of 8 values lie inside `a`
                    // (rows r0..r0 + 8 < rows, columns c0 + c..c0 + c + 8 <= cols) and its 8
                    // output rows of 8 inside this band of `out` (c + 8 <= width).
                    #[allow(unsafe_code)]
                    unsafe {
                        tile8(a.as_ptr().add(r0 * cols + c0 + c), cols, out.as_mut_ptr().add(c * rows + r0), rows)
                    };
                    c += TILE;
                }
            }
            let _ = simd;
            for c in c..width {
                for (k, d) in out[c * rows + r0..c * rows + r1].iter_mut().enumerate() {
                    *d = a[(r0 + k) * cols + c0 + c];
                }
            }
        }
    });
}

/// One 8 x 8 tile: `dst[j * dst_rs + i] = src[i * src_rs + j]`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_rs)));
    // Pairs of rows interleaved, then quadruples, then the two 128-bit halves swapped.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (x, y) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(x, y)
        } else {
            _mm256_unpackhi_ps(x, y)
        }
    });
    let q: [__m256; 8] = std::array::from_fn(|i| {
        let (x, y) = (t[4 * (i / 4) + (i % 4) / 2], t[4 * (i / 4) + (i % 4) / 2 + 2]);
        if i % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(x, y)
        } else {
            _mm256_shuffle_ps::<0xEE>(x, y)
        }
    });
    for j in 0..4 {
        _mm256_storeu_ps(dst.add(j * dst_rs), _mm256_permute2f128_ps::<0x20>(q[j], q[j + 4]));
        _mm256_storeu_ps(dst.add((j + 4) * dst_rs), _mm256_permute2f128_ps::<0x31>(q[j], q[j + 4]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The naive triple loop.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a(i, l) * b(l, j)).sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_views_multiply_and_accumulate() {
        let (m, n, k) = (5, 7, 3);
        // A 5x3 block inside a wider buffer (row stride 6, offset 2); B^T stored 7x3.
        let a: Vec<f32> = (0..40).map(|v| v as f32 * 0.5 - 3.0).collect();
        let bt: Vec<f32> = (0..21).map(|v| (v as f32).sin()).collect();
        let want = reference(m, n, k, |i, l| a[2 + i * 6 + l], |l, j| bt[j * 3 + l]);
        let mut out = vec![1f32; 2 + 4 * 9 + n];
        for threads in [false, true] {
            for accumulate in [false, true] {
                out.iter_mut().for_each(|v| *v = 1.0);
                let dst = Dst { data: &mut out, offset: 2, rs: 9, accumulate };
                matmul((m, n, k), dst, Mat::rows(&a, 2, 6), Mat::transposed(&bt, 0, 3), threads).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let expect = want[i * n + j] + if accumulate { 1.0 } else { 0.0 };
                        assert!((out[2 + i * 9 + j] - expect).abs() < 1e-5, "({i},{j}) {threads} {accumulate}");
                    }
                }
                // Outside the block: untouched.
                assert_eq!((out[0], out[1], out[2 + 7]), (1.0, 1.0, 1.0));
            }
        }
    }

    #[test]
    fn out_of_bounds_operands_are_errors() {
        let a = vec![0f32; 6];
        let mut out = vec![0f32; 4];
        fn dst(o: &mut [f32]) -> Dst<'_> {
            Dst { data: o, offset: 0, rs: 2, accumulate: false }
        }
        assert!(matmul((2, 2, 3), dst(&mut out), Mat::rows(&a, 0, 3), Mat::rows(&a, 1, 2), false).is_err());
        assert!(matmul((3, 2, 2), dst(&mut out), Mat::rows(&a, 0, 2), Mat::rows(&a, 0, 2), false).is_err());
        assert!(matmul((2, 2, 3), dst(&mut out), Mat::rows(&a, 0, 3), Mat::rows(&a, 0, 2), false).is_ok());
    }

    #[test]
    fn tensor_products_match_candle_for_views_and_batches() {
        #![allow(clippy::unwrap_used)]
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        // 2-d, with a transposed right operand; 4-d [b, h, t, d] x its transposed view; a
        // batch entry picked by narrowing (an offset start).
        let a = Tensor::randn(0f32, 1.0, (9, 6), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (11, 6), &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 7, 4), &dev).unwrap();
        let kn = k.narrow(1, 1, 2).unwrap();
        let qn = q.narrow(1, 0, 2).unwrap();
        for (x, y) in [(&a, &w.t().unwrap()), (&q, &k.t().unwrap()), (&qn, &kn.t().unwrap())] {
            let got = tensor_mm(x, y).unwrap().unwrap();
            let want = x.contiguous().unwrap().matmul(&y.contiguous().unwrap()).unwrap();
            assert!(max_diff(&got, &want) < 1e-5);
        }
        // Tracked by autograd or another dtype: left to candle.
        let v = Var::from_tensor(&a).unwrap();
        assert!(tensor_mm(v.as_tensor(), &w.t().unwrap()).unwrap().is_none());
        assert!(tensor_mm(&a.to_dtype(DType::F64).unwrap(), &w.t().unwrap().to_dtype(DType::F64).unwrap())
            .unwrap()
            .is_none());
        assert!(tensor_mm(&a, &w).is_err());
    }
}
