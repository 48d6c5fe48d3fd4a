//! Register-tiled q8_0 products for a few input rows (a short prompt, a decoding batch),
//! as `tiles::dots` is for f32: every weight block loaded feeds several input rows while
//! it sits in a register, and each (weight row, input row) pair is summed horizontally
//! once, at the end.
//!
//! Every kernel here does the arithmetic of `dot_q8_avx2`, bit for bit, whatever the
//! tile: the integer products of a block are summed exactly into 8 i32 lanes (lane `i`:
//! values `4i..4i + 4`), converted to f32 and multiply-added with `dx * dw` into one of
//! two 8-lane accumulators (even blocks, odd blocks); at the end the two are added and
//! the 8 lanes summed (`hsum`). So a row's result does not depend on the rows beside it,
//! on the tile shape, or on which of these kernels the CPU runs.
//!
//! Two or more rows on AVX-512 VNNI go through a [`Panel`]: the inputs arranged once per
//! product, for a kernel whose tiles fit the registers ([`dots_panel`]).

use std::arch::x86_64::*;

use super::tiles::{tile_sums, tile_sums512};
use super::{Ahead, Q8_BLOCK};

// Tile shapes of both kernels: 4 x 4 was the fastest of 1..=6 x 1..=4 on a Sapphire
// Rapids (a 512 x 1536 weight by 12 rows; AVX2 spills some of its 32 accumulators and
// still beats the smaller tiles), 8 x 1 of 8, 4 and 2 for one row.
/// Weight rows per tile for two or more input rows.
pub(super) const OUT_TILE: usize = 4;
/// Input rows per tile.
pub(super) const ROW_TILE: usize = 4;
/// Weight rows per tile for a single input row (decoding: the weight streams from memory).
pub(super) const ONE_ROW_TILE: usize = 8;

/// Which instruction set the tiles use (detected once; the only way to build one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Kernel(Isa);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// AVX2 + FMA: `sign_epi8`, `maddubs`, `madd` per block, 256-bit.
    Avx2,
    /// AVX-512 VNNI: `dpbusd` on two blocks at once (512-bit: even blocks in the low
    /// eight lanes, odd blocks in the high eight, i.e. the two accumulators side by side).
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or `None` without AVX2 + FMA.
    pub(super) fn detect() -> Option<Self> {
        static K: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *K.get_or_init(|| Self::available().last().copied())
    }

    /// Every kernel this CPU runs, slowest first.
    pub(super) fn available() -> Vec<Self> {
        let mut ks = Vec::new();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            ks.push(Kernel(Isa::Avx2));
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                ks.push(Kernel(Isa::Avx512));
            }
        }
        ks
    }
}

/// `out[o][r]` = the q8_0 dot product of weight row `o` (values `w[o]`, block scales
/// `wd[o]`) with input row `r` (`x[r]`, `xd[r]`), over the blocks all of them hold.
/// Weight values must lie in -127..=127 (`Q8Weight` clamps them).
#[inline]
pub(super) fn dots<const O: usize, const R: usize>(
    k: Kernel,
    w: [&[i8]; O],
    wd: [&[f32]; O],
    x: [&[i8]; R],
    xd: [&[f32]; R],
    ahead: &[i8],
) -> [[f32; R]; O] {
    let blocks = blocks_held(blocks_held(usize::MAX, &w, &wd), &x, &xd);
    match k.0 {
        // SAFETY: a `Kernel` is only built by `available`, after checking that the CPU
        // has the features each of these functions enables.
        #[allow(unsafe_code)]
        Isa::Avx2 => unsafe { dots_avx2::<O, R>(blocks, w, wd, x, xd, Ahead::new(ahead, blocks)) },
        #[allow(unsafe_code)]
        Isa::Avx512 => unsafe { dots_avx512::<O, R>(blocks, w, wd, x, xd, Ahead::new(ahead, blocks.div_ceil(2))) },
    }
}

/// The whole blocks every row holds (values `q`, one scale per block in `d`), at most
/// `limit`. Plain loops: an iterator chain here was not folded away and showed in
/// profiles of short prompts.
#[inline(always)]
fn blocks_held<const N: usize>(limit: usize, q: &[&[i8]; N], d: &[&[f32]; N]) -> usize {
    let mut blocks = limit;
    for s in q.iter() {
        blocks = blocks.min(s.len() / Q8_BLOCK);
    }
    for s in d.iter() {
        blocks = blocks.min(s.len());
    }
    blocks
}

/// AVX2: per block, |x| times w with x's sign (`maddubs`, no saturation since values
/// are within +-127), pairs of i16 summed to i32 (`madd`), converted, scaled.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const O: usize, const R: usize>(
    blocks: usize,
    w: [&[i8]; O],
    wd: [&[f32]; O],
    x: [&[i8]; R],
    xd: [&[f32]; R],
    mut ahead: Ahead,
) -> [[f32; R]; O] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; O];
    for b in 0..blocks {
        ahead.next();
        let half = b % 2;
        let mut xv = [_mm256_setzero_si256(); R];
        let mut xa = [_mm256_setzero_si256(); R];
        let mut dx = [_mm256_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: `(b + 1) * 32 <= x[r].len()` (`blocks`); unaligned load.
            #[allow(unsafe_code)]
            let v = unsafe { _mm256_loadu_si256(x[r].as_ptr().add(b * Q8_BLOCK).cast::<__m256i>()) };
            xv[r] = v;
            xa[r] = _mm256_sign_epi8(v, v);
            dx[r] = _mm256_set1_ps(xd[r][b]);
        }
        for o in 0..O {
            // SAFETY: `(b + 1) * 32 <= w[o].len()` (`blocks`); unaligned load.
            #[allow(unsafe_code)]
            let wv = unsafe { _mm256_loadu_si256(w[o].as_ptr().add(b * Q8_BLOCK).cast::<__m256i>()) };
            let dw = _mm256_set1_ps(wd[o][b]);
            for r in 0..R {
                let products = _mm256_maddubs_epi16(xa[r], _mm256_sign_epi8(wv, xv[r]));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
                acc[o][r][half] = _mm256_fmadd_ps(sums, _mm256_mul_ps(dx[r], dw), acc[o][r][half]);
            }
        }
    }
    tile_sums(&acc)
}

/// AVX-512 VNNI, two blocks per 512-bit register: `dpbusd` multiplies unsigned by signed
/// bytes, so x is offset to `x + 128` (`xor 0x80`) and each sum starts from
/// `-128 * (sum of the four w)` (once per weight block, for every input row). An odd
/// last block runs in the low half, the high lanes kept by a masked multiply-add.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
fn dots_avx512<const O: usize, const R: usize>(
    blocks: usize,
    w: [&[i8]; O],
    wd: [&[f32]; O],
    x: [&[i8]; R],
    xd: [&[f32]; R],
    mut ahead: Ahead,
) -> [[f32; R]; O] {
    let bias = _mm512_set1_epi8(-128);
    // Scale lanes: the first block's for lanes 0..8, the second's for 8..16.
    let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); R]; O];
    let zero = _mm512_setzero_si512();
    // One loop body for every pair of blocks (written once and not in a closure: a
    // closure called from two places was not inlined, and kept `acc` in memory). Blocks
    // `b` and `b + 1` (masks all ones), or a last odd `b` alone in the low half (high
    // bytes and scales read as zero, high lanes kept).
    let mut b = 0;
    while b < blocks {
        let (bytes, floats, lanes): (u64, u16, u16) =
            if b + 1 < blocks { (u64::MAX, 0b11, 0xFFFF) } else { (u32::MAX.into(), 0b1, 0x00FF) };
        ahead.next();
        let mut xu = [zero; R];
        let mut negative = [0u64; R];
        let mut dx = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: the masks read only blocks below `blocks`, which `x[r]` and `xd[r]`
            // hold; masked unaligned loads.
            #[allow(unsafe_code)]
            let (v, d) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(bytes, x[r].as_ptr().add(b * Q8_BLOCK)),
                    _mm512_maskz_loadu_ps(floats, xd[r].as_ptr().add(b)),
                )
            };
            // One input row (decoding): |x| times w with x's sign instead, one masked
            // negation per weight block rather than the offset's extra `dpbusd`.
            xu[r] = if R == 1 { _mm512_abs_epi8(v) } else { _mm512_xor_si512(v, bias) };
            if R == 1 {
                negative[r] = _mm512_movepi8_mask(v);
            }
            dx[r] = _mm512_permutexvar_ps(spread, d);
        }
        for o in 0..O {
            // SAFETY: as for `x` above, within `w[o]` and `wd[o]`.
            #[allow(unsafe_code)]
            let (wv, d) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(bytes, w[o].as_ptr().add(b * Q8_BLOCK)),
                    _mm512_maskz_loadu_ps(floats, wd[o].as_ptr().add(b)),
                )
            };
            let dw = _mm512_permutexvar_ps(spread, d);
            if R == 1 {
                let signed = _mm512_mask_sub_epi8(wv, negative[0], zero, wv);
                let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, xu[0], signed));
                acc[o][0] = _mm512_mask3_fmadd_ps(sums, _mm512_mul_ps(dx[0], dw), acc[o][0], lanes);
                continue;
            }
            let corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, wv));
            for r in 0..R {
                let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu[r], wv));
                acc[o][r] = _mm512_mask3_fmadd_ps(sums, _mm512_mul_ps(dx[r], dw), acc[o][r], lanes);
            }
        }
        b += 2;
    }
    tile_sums512(&acc)
}

/// Input rows per tile of the panel kernel ([`dots_panel`]; a last tile may hold fewer).
/// With four, the 16 accumulators, the inputs and the weight's registers outgrew the 32
/// of AVX-512 and spilled; three by four was the fastest of 3 x 4..=6, 2 x 6 and 4 x 4
/// (`q8_gemm`, one thread, small's shapes at 8 to 32 rows: 5-45% faster than the
/// pair-wise 4 x 4 tiles).
pub(super) const PANEL_ROWS: usize = 3;
/// Weight rows per tile of the panel kernel.
pub(super) const PANEL_OUTS: usize = 4;

/// 64 bytes on a 64-byte boundary: one AVX-512 register's load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Two or more input rows arranged once per product for [`dots_panel`] (AVX-512 VNNI):
/// per tile of [`PANEL_ROWS`] rows and per pair of blocks, each row's 64 values offset to
/// `x + 128`, then each row's two block scales spread over 16 lanes (the first block's
/// in lanes 0..8, the second's in 8..16). A missing second block (an odd count) reads as
/// values 128 and scale 0. So a tile's inputs come through one pointer, already offset,
/// and the kernel multiplies the scales straight from memory: the pair-wise kernel
/// offset and spread every tile's inputs again, and at four rows it spilled.
pub(super) struct Panel {
    lines: Vec<Line>,
    rows: usize,
    blocks: usize,
}

impl Panel {
    /// The panel of `n` rows of `in_f` values (`xq`, one scale per block in `xd`), if
    /// `k` has a panel kernel (AVX-512 VNNI) and there are two rows or more.
    pub(super) fn new(k: Kernel, xq: &[i8], xd: &[f32], n: usize, in_f: usize) -> Option<Self> {
        if k.0 != Isa::Avx512 || n < 2 {
            return None;
        }
        let blocks = in_f / Q8_BLOCK;
        let pairs = blocks.div_ceil(2);
        let per_tile = pairs * 2 * PANEL_ROWS;
        let mut lines = vec![Line([0; 64]); n.div_ceil(PANEL_ROWS) * per_tile];
        let fill = |t: usize, tile: &mut [Line]| {
            for (p, group) in tile.chunks_exact_mut(2 * PANEL_ROWS).enumerate() {
                let (values, scales) = group.split_at_mut(PANEL_ROWS);
                for (i, (v, s)) in values.iter_mut().zip(scales.iter_mut()).enumerate() {
                    v.0 = [0x80; 64];
                    let r = t * PANEL_ROWS + i;
                    if r >= n {
                        continue;
                    }
                    let (first, last) = (2 * p, (2 * p + 2).min(blocks));
                    let x = &xq[r * in_f + first * Q8_BLOCK..r * in_f + last * Q8_BLOCK];
                    for (d, &x) in v.0.iter_mut().zip(x) {
                        *d = (x as u8) ^ 0x80;
                    }
                    for (b, lanes) in (first..last).zip(s.0.chunks_exact_mut(32)) {
                        let d = xd[r * blocks + b].to_ne_bytes();
                        for lane in lanes.chunks_exact_mut(4) {
                            lane.copy_from_slice(&d);
                        }
                    }
                }
            }
        };
        if per_tile > 0 {
            // A prompt's rows in parallel (the product that follows is ~in_f times more
            // work, but would wait for a single thread here).
            if n * in_f >= super::PARALLEL_FROM {
                use rayon::prelude::*;
                lines.par_chunks_mut(per_tile).enumerate().for_each(|(t, tile)| fill(t, tile));
            } else {
                lines.chunks_mut(per_tile).enumerate().for_each(|(t, tile)| fill(t, tile));
            }
        }
        Some(Self { lines, rows: n, blocks })
    }

    /// Tiles of [`PANEL_ROWS`] rows (the last one may hold fewer).
    pub(super) fn tiles(&self) -> usize {
        self.rows.div_ceil(PANEL_ROWS)
    }
}

/// `out[o][i]` = the q8_0 dot product of weight row `o` (values `w[o]`, block scales
/// `wd[o]`) with row `i` of the panel's tile `t`, bit for bit what [`dots`] gives for
/// that pair. Weight values must lie in -127..=127.
#[inline]
pub(super) fn dots_panel<const O: usize, const R: usize>(
    panel: &Panel,
    t: usize,
    w: [&[i8]; O],
    wd: [&[f32]; O],
    ahead: &[i8],
) -> [[f32; R]; O] {
    const { assert!(R <= PANEL_ROWS) };
    let blocks = blocks_held(panel.blocks, &w, &wd);
    let per_tile = panel.blocks.div_ceil(2) * 2 * PANEL_ROWS;
    let lines = &panel.lines[t * per_tile..(t + 1) * per_tile];
    // SAFETY: a `Panel` is only built for an AVX-512 VNNI `Kernel`, which `available`
    // lists only after checking the CPU's features; `lines` holds every pair below
    // `blocks` (at most the panel's).
    #[allow(unsafe_code)]
    unsafe {
        panel_avx512::<O, R>(blocks, w, wd, lines, Ahead::new(ahead, blocks.div_ceil(2)))
    }
}

/// [`dots_avx512`]'s arithmetic for `PANEL_ROWS` rows, its inputs read from a panel:
/// whole pairs of blocks unmasked, an odd last block in the low half.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
fn panel_avx512<const O: usize, const R: usize>(
    blocks: usize,
    w: [&[i8]; O],
    wd: [&[f32]; O],
    lines: &[Line],
    mut ahead: Ahead,
) -> [[f32; R]; O] {
    const P: usize = PANEL_ROWS;
    let bias = _mm512_set1_epi8(-128);
    let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); R]; O];
    let zero = _mm512_setzero_si512();
    // The pair of blocks from `b` on: `whole`, or the `tail` (an odd last block in the
    // low half, the high lanes kept). A macro rather than a function, so that the
    // intrinsics inline into this function's features and `acc` stays in registers.
    macro_rules! pair {
        ($b:expr, $mode:ident) => {{
            let b = $b;
            let pair = &lines[b / 2 * 2 * P..(b / 2 + 1) * 2 * P];
            // SAFETY: aligned 64-byte loads of whole `Line`s.
            #[allow(unsafe_code)]
            let xu: [__m512i; R] = std::array::from_fn(|r| unsafe { _mm512_load_si512(pair[r].0.as_ptr().cast()) });
            for o in 0..O {
                // SAFETY: a whole pair reads blocks `b` and `b + 1`, the tail block `b`
                // alone, all below `blocks`, which `w[o]` and `wd[o]` hold; unaligned
                // loads.
                #[allow(unsafe_code)]
                let (wv, d) = unsafe { pair!(@load $mode, w[o].as_ptr().add(b * Q8_BLOCK), wd[o].as_ptr().add(b)) };
                let dw = _mm512_permutexvar_ps(spread, d);
                let corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, wv));
                for r in 0..R {
                    let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, xu[r], wv));
                    // SAFETY: an aligned 64-byte load of a whole `Line`.
                    #[allow(unsafe_code)]
                    let dx = unsafe { _mm512_load_ps(pair[P + r].0.as_ptr().cast()) };
                    acc[o][r] = pair!(@fma $mode, sums, _mm512_mul_ps(dx, dw), acc[o][r]);
                }
            }
        }};
        // Scales: lanes 0 and 1 (the tail's lane 1 zero), spread by `spread`.
        (@load whole, $wp:expr, $dp:expr) => {
            (_mm512_loadu_si512($wp.cast()), _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd($dp.cast()))))
        };
        (@load tail, $wp:expr, $dp:expr) => {
            (_mm512_maskz_loadu_epi8(u64::from(u32::MAX), $wp), _mm512_castps128_ps512(_mm_load_ss($dp)))
        };
        (@fma whole, $sums:expr, $scale:expr, $acc:expr) => {
            _mm512_fmadd_ps($sums, $scale, $acc)
        };
        (@fma tail, $sums:expr, $scale:expr, $acc:expr) => {
            _mm512_mask3_fmadd_ps($sums, $scale, $acc, 0x00FF)
        };
    }
    let whole = blocks / 2 * 2;
    let mut b = 0;
    while b < whole {
        ahead.next();
        pair!(b, whole);
        b += 2;
    }
    if b < blocks {
        ahead.next();
        pair!(b, tail);
    }
    tile_sums512(&acc)
}
