//! Matrix products with bfloat16 multiplies and f32 sums, for training in bf16 (the
//! arithmetic of PyTorch's CPU autocast for linear layers): both operands are rounded to
//! bf16 (nearest, ties to even) while they are packed, every product of two bf16 values
//! is exact in f32, and the sums run in f32. Results are f32.
//!
//! On a CPU with AVX512-BF16 the kernel is `vdpbf16ps`: 16 lanes, each adding two
//! bf16 products (consecutive `k`) to an f32 sum, twice the multiplies of an f32 FMA per
//! instruction and half the bytes packed. Operands are packed in pairs along `k`: the
//! left in panels of [`MR`] rows, the right in panels of [`NR`] columns, padded with
//! zeros. Elsewhere the operands are rounded to bf16 values and multiplied by the f32
//! gemm, which gives the same products (each exact) summed in another order.

use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;

use super::sgemm::{self, Dst, Mat};

/// Rows of the left operand per micro-kernel.
const MR: usize = 8;
/// Columns of the right operand per micro-kernel (two 16-lane registers).
const NR: usize = 32;
/// Pairs of `k` per block (a right panel block of `KC * NR` pairs stays in L1).
const KC: usize = 128;
/// Rows of the left operand per task (`MC * KC` pairs stay in L2).
const MC: usize = 96;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits; NaN stays NaN.
#[inline]
pub(crate) fn to_bf16(x: f32) -> u16 {
    crate::gguf::f32_to_bf16(x)
}

/// `x` rounded to the nearest bf16 value, as an f32.
#[inline]
pub(crate) fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(to_bf16(x)) << 16)
}

/// Whether this CPU runs the bf16 kernel (AVX-512 F/BW/VL/DQ and AVX512-BF16).
pub(crate) fn has_bf16_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| super::gemv::has_avx512() && is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst[m, n] (+)= bf16(lhs[m, k]) x bf16(rhs[k, n])`, sums in f32. `threads`: split the
/// product over rayon's pool.
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
    let b = PackedRhs::new(rhs, (k, n), threads)?;
    matmul_packed(m, dst, lhs, &b, threads)
}

/// A right operand `[k, n]` packed once for several products ([`matmul_packed`]): bf16
/// pairs along `k` in panels of [`NR`] columns, or (without the bf16 kernel) its values
/// rounded to bf16, row-major.
pub(crate) struct PackedRhs {
    k: usize,
    n: usize,
    data: Packed,
}

enum Packed {
    /// Panel `j`, pair `p`: NR lanes of (k = 2p, 2p + 1).
    Pairs(Vec<u32>),
    Rounded(Vec<f32>),
}

impl PackedRhs {
    /// `rhs` `[k, n]` packed (an error if it does not fit its slice).
    pub(crate) fn new(rhs: Mat<'_>, (k, n): (usize, usize), threads: bool) -> Result<Self> {
        if !rhs.fits(k, n) {
            bail!("bf16 gemm operand out of bounds ({k}x{n})");
        }
        if !has_bf16_kernel() {
            let data = (0..k * n).map(|e| round_bf16(rhs.at(e / n, e % n))).collect();
            return Ok(Self { k, n, data: Packed::Rounded(data) });
        }
        let kp = k.div_ceil(2);
        let mut packed = vec![0u32; n.div_ceil(NR) * kp * NR];
        let pack_panel = |(j, panel): (usize, &mut [u32])| {
            let cols = NR.min(n - j * NR);
            pack(rhs.data, rhs.offset + j * NR * rhs.cs, (rhs.cs, rhs.rs), (cols, k), panel, NR);
        };
        if threads && rayon::current_num_threads() > 1 {
            packed.par_chunks_mut((kp * NR).max(1)).enumerate().for_each(pack_panel);
        } else {
            packed.chunks_mut((kp * NR).max(1)).enumerate().for_each(pack_panel);
        }
        Ok(Self { k, n, data: Packed::Pairs(packed) })
    }
}

/// A raw destination shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks that share an `Out` write disjoint elements (see `matmul_packed`).
#[allow(unsafe_code)]
unsafe impl Send for Out {}
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

impl Out {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m, n] (+)= bf16(lhs[m, k]) x b` for a packed right operand `b` `[k, n]`.
pub(crate) fn matmul_packed(m: usize, dst: Dst<'_>, lhs: Mat<'_>, b: &PackedRhs, threads: bool) -> Result<()> {
    let (n, k) = (b.n, b.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !sgemm::dst_fits(&dst, m, n) || !lhs.fits(m, k) {
        bail!("bf16 gemm operands out of bounds ({m}x{k} x {k}x{n})");
    }
    let packed_b = match &b.data {
        Packed::Rounded(r) => {
            let a: Vec<f32> = (0..m * k).map(|e| round_bf16(lhs.at(e / k, e % k))).collect();
            return sgemm::matmul((m, n, k), dst, Mat::rows(&a, 0, k), Mat::rows(r, 0, n), threads);
        }
        Packed::Pairs(p) => p,
    };
    if k == 0 {
        return sgemm::matmul((m, n, 0), dst, lhs, Mat::rows(&[], 0, n), false);
    }
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let workers = if threads { rayon::current_num_threads() } else { 1 };
    // Tiles of `mc` rows by `np` panels, at least two per worker where the shape allows.
    let mc = MC.min(m.div_ceil(workers).next_multiple_of(MR));
    let blocks = m.div_ceil(mc);
    let np = panels.div_ceil((2 * workers).div_ceil(blocks)).max(1);
    let groups = panels.div_ceil(np);
    let (rs, accumulate) = (dst.rs, dst.accumulate);
    let out = Out(dst.data[dst.offset..].as_mut_ptr());
    let tile = |t: usize| {
        let (bi, g) = (t / groups, t % groups);
        let r0 = bi * mc;
        let rows = mc.min(m - r0);
        let strips = rows.div_ceil(MR);
        let mut packed_a = vec![0u32; strips * kp * MR];
        for s in 0..strips {
            let i0 = r0 + s * MR;
            let strip = &mut packed_a[s * kp * MR..][..kp * MR];
            pack(lhs.data, lhs.offset + i0 * lhs.rs, (lhs.rs, lhs.cs), (MR.min(rows - s * MR), k), strip, MR);
        }
        for p0 in (0..kp).step_by(KC) {
            let pk = KC.min(kp - p0);
            let add = accumulate || p0 > 0;
            for j in g * np..panels.min((g + 1) * np) {
                let cols = NR.min(n - j * NR);
                let b = &packed_b[(j * kp + p0) * NR..][..pk * NR];
                for s in 0..strips {
                    let a = &packed_a[(s * kp + p0) * MR..][..pk * MR];
                    let r = MR.min(rows - s * MR);
                    // SAFETY: the CPU has AVX-512 F and BF16 (the right operand was packed
                    // in pairs); `a` holds `pk * MR` and `b` `pk * NR` pairs; the
                    // destination holds rows `r0 + s * MR ..` (`r` of them, `rs` apart) of
                    // columns `j * NR ..` (`cols` of them), checked to fit above, and no
                    // other tile writes them (tiles split the rows by `mc` and the panels
                    // by `np`).
                    #[allow(unsafe_code)]
                    unsafe {
                        let c = out.ptr().add((r0 + s * MR) * rs + j * NR);
                        kernel(pk, a, b, c, rs, r, cols, add)
                    };
                }
            }
        }
    };
    if workers > 1 && blocks * groups > 1 {
        (0..blocks * groups).into_par_iter().for_each(tile);
    } else {
        (0..blocks * groups).for_each(tile);
    }
    Ok(())
}

/// `c[r, cols] (+)= a[MR rows, pk pairs] x b[pk pairs, NR]` for the first `r` rows (`c`:
/// rows `rs` apart). AVX512-BF16 on x86-64; elsewhere the same products in a scalar loop
/// (pairs are only packed where the CPU has the kernel, so that loop keeps other targets
/// building rather than running).
///
/// # Safety
/// On x86-64 the CPU has AVX-512 F/VL/BW/DQ and BF16; `c` holds `r` rows of `cols`.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn kernel(pk: usize, a: &[u32], b: &[u32], c: *mut f32, rs: usize, r: usize, cols: usize, add: bool) {
    #[cfg(target_arch = "x86_64")]
    x86::kernel(pk, a, b, c, rs, r, cols, add);
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..r {
        for j in 0..cols {
            let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
            let mut sum = 0f32;
            for p in 0..pk {
                let (x, y) = (a[p * MR + i], b[p * NR + j]);
                sum += half(x, false) * half(y, false) + half(x, true) * half(y, true);
            }
            let o = c.add(i * rs + j);
            *o = if add { *o + sum } else { sum };
        }
    }
}

/// Packs `lines` lines of an operand, `k` deep (line `l`, depth `d` at
/// `data[offset + l * line_s + d * depth_s]`, all inside `data`), as bf16 pairs along the
/// depth: `out[p * stride + l]` holds depths `2p` (low half) and `2p + 1` (high half, zero
/// past `k`). Lines past `lines` are left as they are (zero).
fn pack(
    data: &[f32],
    offset: usize,
    (line_s, depth_s): (usize, usize),
    (lines, k): (usize, usize),
    out: &mut [u32],
    stride: usize,
) {
    let kp = k.div_ceil(2);
    debug_assert!(lines <= stride && out.len() >= kp * stride);
    debug_assert!(lines == 0 || offset + (lines - 1) * line_s + (k - 1) * depth_s < data.len());
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut p_done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_bf16_kernel() {
        // SAFETY: the CPU has AVX-512 and BF16; the kernels read elements `(l, d)` for
        // `l < lines`, `d < k` only (checked by the caller's `fits`) and write
        // `out[p * stride + l]` for `p < kp`, `l < lines` (checked above).
        #[allow(unsafe_code)]
        unsafe {
            if depth_s == 1 {
                p_done = x86::pack_depth_contiguous(data, offset, line_s, lines, k, out, stride);
            } else if line_s == 1 {
                x86::pack_lines_contiguous(data, offset, depth_s, lines, k, out, stride);
                return;
            }
        }
    }
    let at = |l: usize, d: usize| data[offset + l * line_s + d * depth_s];
    for l in 0..lines {
        for p in p_done..kp {
            let lo = to_bf16(at(l, 2 * p));
            let hi = if 2 * p + 1 < k { to_bf16(at(l, 2 * p + 1)) } else { 0 };
            out[p * stride + l] = u32::from(lo) | (u32::from(hi) << 16);
        }
    }
}

/// `a [.., m, k] x b [.., k, n]` with bf16 multiplies and f32 sums, f32 out: on the CPU
/// through [`matmul`] (as `sgemm::tensor_mm`), elsewhere through candle's bf16 matmul.
pub(crate) fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if let Some(y) = sgemm::tensor_mm_by(a, b, matmul)? {
        return Ok(y);
    }
    a.to_dtype(DType::BF16)?.matmul(&b.to_dtype(DType::BF16)?)?.to_dtype(a.dtype())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// [`super::pack`] for depth-contiguous lines, 8 lines by 8 pairs at a time (each
    /// line's 16 values rounded in one instruction, the 8 x 8 pairs transposed); returns
    /// the pairs packed (whole groups of 8), the rest left to the caller.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")]
    pub(super) unsafe fn pack_depth_contiguous(
        data: &[f32],
        offset: usize,
        line_s: usize,
        lines: usize,
        k: usize,
        out: &mut [u32],
        stride: usize,
    ) -> usize {
        let groups = k / 16;
        let src = data.as_ptr().add(offset);
        let dst = out.as_mut_ptr();
        let mut tile = [0u32; 64];
        for l0 in (0..lines).step_by(8) {
            let n = 8.min(lines - l0);
            for g in 0..groups {
                for l in 0..8 {
                    let v = if l < n {
                        let x = _mm512_loadu_ps(src.add((l0 + l) * line_s + g * 16));
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x))
                    } else {
                        _mm256_setzero_si256()
                    };
                    _mm256_storeu_si256(tile.as_mut_ptr().add(l * 8).cast(), v);
                }
                if n == 8 {
                    crate::models::sgemm::tile8(tile.as_ptr().cast(), 8, dst.add(g * 8 * stride + l0).cast(), stride);
                } else {
                    for q in 0..8 {
                        for l in 0..n {
                            *dst.add((g * 8 + q) * stride + l0 + l) = tile[l * 8 + q];
                        }
                    }
                }
            }
        }
        groups * 8
    }

    /// [`super::pack`] for line-contiguous depths: per pair, 16 lines of depth `2p` and
    /// `2p + 1` rounded and interleaved.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")]
    pub(super) unsafe fn pack_lines_contiguous(
        data: &[f32],
        offset: usize,
        depth_s: usize,
        lines: usize,
        k: usize,
        out: &mut [u32],
        stride: usize,
    ) {
        let src = data.as_ptr().add(offset);
        let dst = out.as_mut_ptr();
        for p in 0..k.div_ceil(2) {
            for l0 in (0..lines).step_by(16) {
                let n = 16.min(lines - l0);
                let mask: __mmask16 = if n == 16 { 0xffff } else { ((1u32 << n) - 1) as u16 };
                let lo = _mm512_maskz_loadu_ps(mask, src.add(2 * p * depth_s + l0));
                let hi = if 2 * p + 1 < k {
                    _mm512_maskz_loadu_ps(mask, src.add((2 * p + 1) * depth_s + l0))
                } else {
                    _mm512_setzero_ps()
                };
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(lo)));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(hi)));
                let v = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
                _mm512_mask_storeu_epi32(dst.add(p * stride + l0).cast(), mask, v);
            }
        }
    }

    /// `c[r, cols] (+)= a[MR rows, pk pairs] x b[pk pairs, NR]` for the first `r` rows.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        pk: usize,
        a: &[u32],
        b: &[u32],
        c: *mut f32,
        rs: usize,
        r: usize,
        cols: usize,
        add: bool,
    ) {
        debug_assert!(a.len() >= pk * MR && b.len() >= pk * NR && r <= MR && cols <= NR);
        let mut lo = [_mm512_setzero_ps(); MR];
        let mut hi = [_mm512_setzero_ps(); MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..pk {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
            for i in 0..MR {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + i) as i32));
                lo[i] = _mm512_dpbf16_ps(lo[i], av, b0);
                hi[i] = _mm512_dpbf16_ps(hi[i], av, b1);
            }
        }
        let m0: __mmask16 = if cols >= 16 { 0xffff } else { (1u32 << cols) as u16 - 1 };
        let m1: __mmask16 = if cols >= NR {
            0xffff
        } else if cols > 16 {
            (1u32 << (cols - 16)) as u16 - 1
        } else {
            0
        };
        for i in 0..r {
            let row = c.add(i * rs);
            let (mut v0, mut v1) = (lo[i], hi[i]);
            if add {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|l| f64::from(round_bf16(a[i * k + l])) * f64::from(round_bf16(b[l * n + j]))).sum();
            }
        }
        out
    }

    #[test]
    fn bf16_products_match_a_bf16_rounded_f64_reference_for_every_layout() {
        let mut seed = 7u64;
        let mut rand = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let shapes = [(1, 1, 1), (8, 32, 2), (9, 33, 3), (100, 70, 301), (200, 40, 17), (37, 50, 70), (96, 64, 256)];
        for &(m, n, k) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|_| rand()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rand()).collect();
            let want = reference(m, n, k, &a, &b);
            // The same values held row-major, transposed, and strided (every other slot).
            let at: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|e| b[(e % k) * n + e / k]).collect();
            let a2: Vec<f32> = a.iter().flat_map(|&v| [v, f32::NAN]).collect();
            let lhs = [Mat::rows(&a, 0, k), Mat::transposed(&at, 0, m), Mat::strided(&a2, 0, 2 * k, 2)];
            let rhs = [Mat::rows(&b, 0, n), Mat::transposed(&bt, 0, k)];
            for (li, l) in lhs.iter().enumerate() {
                for (ri, r) in rhs.iter().enumerate() {
                    for threads in [false, true] {
                        let mut out = vec![1f32; m * n + 3];
                        let dst = Dst { data: &mut out, offset: 3, rs: n, accumulate: true };
                        matmul((m, n, k), dst, *l, *r, threads).unwrap();
                        assert_eq!(out[..3], [1.0; 3]);
                        for (o, w) in out[3..].iter().zip(&want) {
                            let err = (f64::from(*o) - 1.0 - w).abs();
                            assert!(err < 1e-5 * (1.0 + w.abs()), "{m}x{n}x{k} lhs {li} rhs {ri}: {o} vs {w}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_operands_are_errors() {
        let (a, b) = (vec![0f32; 6], vec![0f32; 6]);
        let mut out = vec![0f32; 4];
        let dst = Dst { data: &mut out, offset: 0, rs: 2, accumulate: false };
        assert!(matmul((2, 2, 4), dst, Mat::rows(&a, 0, 4), Mat::rows(&b, 0, 2), false).is_err());
    }
}
