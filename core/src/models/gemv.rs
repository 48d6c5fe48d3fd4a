//! Matrix-vector products for decoding (a few input rows against a large weight), where
//! time goes into streaming the weight from memory: each weight element is read once,
//! by one of the threads, for every input row at the same time.
//!
//! candle's general matmul is tuned for large products; for one row it reads the
//! weight at a fraction of memory bandwidth (`benches/RESULTS.md`, "Generation").

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::sgemm::transpose;

mod bf16;
#[cfg(target_arch = "x86_64")]
mod q8tiles;
#[cfg(target_arch = "x86_64")]
mod tiles;

/// Whether the register-tiled kernels (AVX2 + FMA) can run here.
fn tiles_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    return has_avx2_fma();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Input rows up to which this path is used (decoding: one row per sequence; a short
/// prompt, where a general gemm spends more time packing the weight than multiplying).
pub(crate) const MAX_ROWS: usize = 32;

/// Whether `x` (`[n, in]`) times `w` can take this path.
pub(crate) fn usable(x: &Tensor, w: &Tensor) -> bool {
    x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dims().first().is_some_and(|&n| n <= MAX_ROWS)
        && w.is_contiguous()
}

/// `x W^T` for `w` `[out, in]`, or `x W` for a Conv1D `w` `[in, out]` (`conv1d`), plus
/// `bias` (`[out]`) if given.
pub(crate) fn matmul(x: &Tensor, w: &Tensor, conv1d: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, in_f) = x.dims2()?;
    let (d0, d1) = w.dims2()?;
    let out_f = if conv1d { d1 } else { d0 };
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*xs, &*ws) else {
        return Err(Error::Internal("gemv: tensors must be on the CPU".into()));
    };
    let slice = |s: &candle_core::CpuStorage, l: &candle_core::Layout| -> Result<Vec<f32>> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| Error::Internal("gemv: input not contiguous".into()))?;
        Ok(s.as_slice::<f32>()?[a..b].to_vec())
    };
    let xv = slice(xs, xl)?;
    let (wa, wb) = wl.contiguous_offsets().ok_or_else(|| Error::Internal("gemv: weight not contiguous".into()))?;
    let wv = &ws.as_slice::<f32>()?[wa..wb];
    let out = if conv1d { conv1d_rows(&xv, wv, n, in_f, out_f) } else { linear_rows(&xv, wv, n, in_f, out_f) };
    with_bias(out, (n, out_f), bias, x.device())
}

/// `y` (`[n, out]`, row-major) with `bias` (`[out]`) added to every row, as a tensor:
/// the same additions as candle's `broadcast_add`, without a second pass through a
/// new tensor.
pub(crate) fn with_bias(
    mut y: Vec<f32>,
    (n, out_f): (usize, usize),
    bias: Option<&Tensor>,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    if let Some(b) = bias {
        let b = b.to_dtype(DType::F32)?;
        let (bs, bl) = b.storage_and_layout();
        let Storage::Cpu(bs) = &*bs else {
            return Err(Error::Internal("gemv: the bias must be on the CPU".into()));
        };
        let bv = match bl.contiguous_offsets() {
            Some((a, e)) => &bs.as_slice::<f32>()?[a..e],
            None => return Err(Error::Internal("gemv: bias not contiguous".into())),
        };
        if bv.len() != out_f {
            return Err(Error::Internal(format!("gemv: a bias of {} for {out_f} outputs", bv.len())));
        }
        for row in y.chunks_exact_mut(out_f) {
            for (v, b) in row.iter_mut().zip(bv) {
                *v += b;
            }
        }
    }
    Ok(Tensor::from_vec(y, (n, out_f), dev)?)
}

/// Products smaller than this (multiply-adds) are done on the calling thread: waking the
/// pool costs more than it saves.
const PARALLEL_FROM: usize = 1 << 15;

/// Output features per task: enough work to beat the scheduling cost, enough tasks to
/// balance the threads; everything in one task for a small product. `per_out`: the
/// work of one output feature (input features times rows, in f32 multiply-adds).
fn chunk(out_f: usize, per_out: usize) -> usize {
    if out_f * per_out < PARALLEL_FROM {
        return out_f.max(1);
    }
    let tasks = rayon::current_num_threads().max(1) * 4;
    out_f.div_ceil(tasks).next_multiple_of(16).max(16)
}

/// `w` `[out, in]` row-major: each output is a dot product with one contiguous row.
fn linear_rows(x: &[f32], w: &[f32], n: usize, in_f: usize, out_f: usize) -> Vec<f32> {
    // Transposed result `[out, n]`: each task owns a block of output features.
    let mut yt = vec![0f32; out_f * n];
    let c = chunk(out_f, in_f * n);
    let tiled = tiles_usable();
    yt.par_chunks_mut(c * n).enumerate().for_each(|(ci, ys)| {
        let o0 = ci * c;
        if tiled {
            #[cfg(target_arch = "x86_64")]
            linear_tiles(x, &w[o0 * in_f..], n, in_f, ys);
            return;
        }
        for (k, yo) in ys.chunks_exact_mut(n).enumerate() {
            let row = &w[(o0 + k) * in_f..(o0 + k + 1) * in_f];
            for (r, y) in yo.iter_mut().enumerate() {
                *y = dot(&x[r * in_f..(r + 1) * in_f], row);
            }
        }
    });
    if n == 1 {
        return yt;
    }
    transpose(&yt, out_f, n)
}

/// Calls the caller's `$tile!(o, r, weight rows, input rows)` macro with the tile shape
/// as literals (one monomorphised kernel per shape; [`for_each_tile`] makes shapes up to
/// 4 x 4, and 8 x 1).
macro_rules! by_shape {
    ($tile:ident, $o:expr, $r:expr, $nw:expr, $nr:expr) => {{
        let (o, r) = ($o, $r);
        match ($nw, $nr) {
            (8, _) => $tile!(o, r, 8, 1),
            (4, 6) => $tile!(o, r, 4, 6),
            (4, 5) => $tile!(o, r, 4, 5),
            (4, 4) => $tile!(o, r, 4, 4),
            (4, 3) => $tile!(o, r, 4, 3),
            (4, 2) => $tile!(o, r, 4, 2),
            (4, _) => $tile!(o, r, 4, 1),
            (3, 6) => $tile!(o, r, 3, 6),
            (3, 5) => $tile!(o, r, 3, 5),
            (3, 4) => $tile!(o, r, 3, 4),
            (3, 3) => $tile!(o, r, 3, 3),
            (3, 2) => $tile!(o, r, 3, 2),
            (3, _) => $tile!(o, r, 3, 1),
            (2, 6) => $tile!(o, r, 2, 6),
            (2, 5) => $tile!(o, r, 2, 5),
            (2, 4) => $tile!(o, r, 2, 4),
            (2, 3) => $tile!(o, r, 2, 3),
            (2, 2) => $tile!(o, r, 2, 2),
            (2, _) => $tile!(o, r, 2, 1),
            (_, 6) => $tile!(o, r, 1, 6),
            (_, 5) => $tile!(o, r, 1, 5),
            (_, 4) => $tile!(o, r, 1, 4),
            (_, 3) => $tile!(o, r, 1, 3),
            (_, 2) => $tile!(o, r, 1, 2),
            _ => $tile!(o, r, 1, 1),
        }
    }};
}
use by_shape;

/// The tiles of a block of `outs` weight rows by `n` input rows, as `(first weight row,
/// first input row, weight rows, input rows)`: `out_tile` x `row_tile` tiles and smaller
/// ones at the edges, or for a single input row up to `one_row` (a power of two) weight
/// rows at a time (decoding streams the weight: that many accumulators in flight). The
/// kernels sum every (row, output) pair the same way whatever its tile, so the schedule
/// changes speed only.
fn for_each_tile(
    outs: usize,
    n: usize,
    (out_tile, row_tile, one_row): (usize, usize, usize),
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let mut o = 0;
    if n == 1 {
        while o < outs {
            // The largest power of two up to both (8, 4, 2 or 1 for `one_row` 8).
            let step = 1 << one_row.min(outs - o).max(1).ilog2();
            f(o, 0, step, 1);
            o += step;
        }
        return;
    }
    while o < outs {
        let nw = (outs - o).min(out_tile);
        let mut r = 0;
        while r < n {
            let nr = (n - r).min(row_tile);
            f(o, r, nw, nr);
            r += nr;
        }
        o += nw;
    }
}

/// Rows `from..from + rows` of `w` (rows of `len` elements), clipped to `w`: the
/// next tile's weight, for [`Ahead`].
fn next_rows<T>(w: &[T], from: usize, rows: usize, len: usize) -> &[T] {
    &w[(from * len).min(w.len())..((from + rows) * len).min(w.len())]
}

/// Prefetches of the next tile's weight into L2, issued a few cache lines at a time
/// from inside a kernel's loop so that they cover the region by the loop's end. A tile
/// reads its weight rows as that many interleaved streams, and with rows of 1-2 KiB
/// (256-512 f32 features) the hardware prefetcher did not keep up with them: on a
/// Zen 4 (2 vCPUs, alternating runs of `generate`), tiny f32 decoding went from ~1250
/// to ~1800 tokens/s, small f32 from ~120 to ~148, small bf16 from ~144 to ~257 and
/// small q8_0 from ~237 to ~362 (prefetching into L1 instead made small f32 slower
/// than none: a tile of 8 rows of 512 features is half of L1).
pub(super) struct Ahead {
    at: *const u8,
    end: *const u8,
    /// Lines per [`Ahead::next`].
    per: usize,
}

impl Ahead {
    /// `region` spread over `iterations` calls of [`Ahead::next`].
    pub(super) fn new<T>(region: &[T], iterations: usize) -> Self {
        let bytes = std::mem::size_of_val(region);
        let at = region.as_ptr().cast::<u8>();
        Self { at, end: at.wrapping_add(bytes), per: bytes.div_ceil(64).div_ceil(iterations.max(1)) }
    }

    /// Prefetches the next lines of the region, if any are left.
    #[inline(always)]
    pub(super) fn next(&mut self) {
        for _ in 0..self.per {
            if self.at >= self.end {
                return;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `at` lies inside the region (`at < end`); a prefetch reads
            // nothing the program sees and never faults.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch(self.at.cast::<i8>(), std::arch::x86_64::_MM_HINT_T1)
            };
            self.at = self.at.wrapping_add(64);
        }
    }
}

/// One task's block of `linear_rows`: `ys` (`[outputs, n]`) from the weight rows from
/// `w`'s start on, in tiles of `OUT_TILE` weight rows by `ROW_TILE` input rows (eight
/// weight rows for a single input row). Every (row, output) pair is summed the same way
/// whatever the tile, so a row's result does not depend on how many rows come with it
/// (`generate_batch` gives each sequence the tokens `generate` gives it alone).
#[cfg(target_arch = "x86_64")]
fn linear_tiles(x: &[f32], w: &[f32], n: usize, in_f: usize, ys: &mut [f32]) {
    use tiles::{dots, dots512, OUT_TILE, OUT_TILE_512, ROW_TILE, ROW_TILE_512};
    let outs = ys.len() / n;
    let xrow = |r: usize| &x[r * in_f..(r + 1) * in_f];
    let wrow = |o: usize| &w[o * in_f..(o + 1) * in_f];
    let wide = has_avx512();
    // One monomorphised kernel per tile shape (the edges are smaller tiles).
    macro_rules! tile {
        ($o:expr, $r:expr, $nw:literal, $nr:literal) => {{
            let ws: [&[f32]; $nw] = std::array::from_fn(|a| wrow($o + a));
            let xs: [&[f32]; $nr] = std::array::from_fn(|b| xrow($r + b));
            let ahead: &[f32] = if $r == 0 { next_rows(w, $o + $nw, $nw, in_f) } else { &[] };
            // SAFETY: `linear_rows` takes this path only when the CPU has AVX2 and FMA,
            // and `dots512` only runs when it has AVX-512 F too.
            #[allow(unsafe_code)]
            let t = unsafe {
                if wide {
                    dots512::<$nw, $nr>(ws, xs, ahead)
                } else {
                    dots::<$nw, $nr>(ws, xs, ahead)
                }
            };
            for (a, row) in t.iter().enumerate() {
                ys[($o + a) * n + $r..($o + a) * n + $r + $nr].copy_from_slice(row);
            }
        }};
    }
    let shape = if wide { (OUT_TILE_512, ROW_TILE_512, 8) } else { (OUT_TILE, ROW_TILE, 8) };
    for_each_tile(outs, n, shape, |o, r, nw, nr| by_shape!(tile, o, r, nw, nr));
}

/// `w` `[in, out]` row-major (GPT-2's Conv1D): each task accumulates a block of output
/// columns over every input row of `w`.
fn conv1d_rows(x: &[f32], w: &[f32], n: usize, in_f: usize, out_f: usize) -> Vec<f32> {
    let c = chunk(out_f, in_f * n).min(out_f);
    let tiled = tiles_usable();
    let blocks: Vec<Vec<f32>> = (0..out_f.div_ceil(c))
        .into_par_iter()
        .map(|b| {
            let (c0, c1) = (b * c, ((b + 1) * c).min(out_f));
            let width = c1 - c0;
            let mut acc = vec![0f32; n * width];
            // Whole 16-column tiles first, then the rest column by column below.
            #[cfg(target_arch = "x86_64")]
            let done = if tiled { conv1d_tiles(x, &w[c0..], n, in_f, out_f, width, &mut acc) } else { 0 };
            #[cfg(not(target_arch = "x86_64"))]
            let done = {
                let _ = tiled;
                0
            };
            if done == width {
                return acc;
            }
            let (c0, width_all) = (c0 + done, width);
            let width = width_all - done;
            let mut rest = vec![0f32; n * width];
            for i in 0..in_f {
                let wrow = &w[i * out_f + c0..i * out_f + c0 + width];
                for r in 0..n {
                    axpy(x[r * in_f + i], wrow, &mut rest[r * width..(r + 1) * width]);
                }
            }
            for r in 0..n {
                acc[r * width_all + done..(r + 1) * width_all].copy_from_slice(&rest[r * width..(r + 1) * width]);
            }
            acc
        })
        .collect();
    let mut y = vec![0f32; n * out_f];
    for (b, acc) in blocks.iter().enumerate() {
        let c0 = b * c;
        let width = acc.len() / n;
        for r in 0..n {
            y[r * out_f + c0..r * out_f + c0 + width].copy_from_slice(&acc[r * width..(r + 1) * width]);
        }
    }
    y
}

/// The whole `COLS`-wide column tiles of one `conv1d_rows` block (`w` from its first
/// column on, `acc` `[n, width]`), `COL_ROWS` input rows at a time (one or two rows take
/// 64 or 32 columns at a time); returns the columns done.
#[cfg(target_arch = "x86_64")]
fn conv1d_tiles(x: &[f32], w: &[f32], n: usize, in_f: usize, out_f: usize, width: usize, acc: &mut [f32]) -> usize {
    use tiles::{axpys, COLS, COL_ROWS};
    let xrow = |r: usize| &x[r * in_f..(r + 1) * in_f];
    macro_rules! tile {
        ($c:expr, $r:expr, $nr:literal, $v:literal) => {{
            let xs: [&[f32]; $nr] = std::array::from_fn(|b| xrow($r + b));
            // SAFETY: `conv1d_rows` takes this path only when the CPU has AVX2 and FMA.
            #[allow(unsafe_code)]
            unsafe {
                axpys::<$nr, $v>(xs, &w[$c..], out_f, in_f, &mut acc[$r * width + $c..], width)
            };
        }};
    }
    let mut c = 0;
    while c + COLS <= width {
        if n == 1 && c + 64 <= width {
            tile!(c, 0, 1, 8);
            c += 64;
            continue;
        }
        if n == 2 && c + 32 <= width {
            tile!(c, 0, 2, 4);
            c += 32;
            continue;
        }
        let mut r = 0;
        while r < n {
            match (n - r).min(COL_ROWS) {
                6 => tile!(c, r, 6, 2),
                5 => tile!(c, r, 5, 2),
                4 => tile!(c, r, 4, 2),
                3 => tile!(c, r, 3, 2),
                2 => tile!(c, r, 2, 2),
                _ => tile!(c, r, 1, 2),
            }
            r += (n - r).min(COL_ROWS);
        }
        c += COLS;
    }
    c
}

/// Partial sums of the AVX2 dot product (two registers' worth; wider spills).
const W: usize = 16;

/// Elements per q8_0 block (one scale per block), as in GGML's `Q8_0`.
pub(crate) const Q8_BLOCK: usize = 32;

/// A weight `[out, in]` quantized to 8-bit integers in blocks of 32 along `in`, one f32
/// scale per block (GGML's q8_0 with an f32 scale): 36 bytes per 32 weights instead of 128.
#[derive(Debug)]
pub(crate) struct Q8Weight {
    out_f: usize,
    in_f: usize,
    q: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Weight {
    /// Quantizes `w` (`[out, in]`, f32, `in` a multiple of 32): scale = max|w| / 127
    /// per block, values rounded to nearest.
    pub(crate) fn quantize(w: &Tensor) -> Result<Self> {
        let (out_f, in_f) = w.dims2()?;
        if in_f % Q8_BLOCK != 0 {
            return Err(Error::Internal(format!("q8_0 needs input features divisible by 32, got {in_f}")));
        }
        let data: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (q, scales) = quantize_blocks(&data);
        Ok(Self { out_f, in_f, q, scales })
    }

    /// A weight `[out, in]` from its rows' f32 values (row-major), quantized as
    /// [`Q8Weight::quantize`] does.
    pub(crate) fn from_f32(out_f: usize, in_f: usize, data: &[f32]) -> Result<Self> {
        if !in_f.is_multiple_of(Q8_BLOCK) || data.len() != out_f * in_f {
            return Err(Error::Internal(format!(
                "q8_0: {} values are not {out_f} rows of {in_f} (a multiple of 32)",
                data.len()
            )));
        }
        let (q, scales) = quantize_blocks(data);
        Ok(Self { out_f, in_f, q, scales })
    }

    /// A weight `[out, in]` from quantized values (row-major) and one scale per block
    /// of 32 (e.g. a GGUF q8_0 tensor, its f16 scales widened to f32).
    pub(crate) fn from_parts(out_f: usize, in_f: usize, q: Vec<i8>, scales: Vec<f32>) -> Result<Self> {
        if !in_f.is_multiple_of(Q8_BLOCK) || q.len() != out_f * in_f || scales.len() != q.len() / Q8_BLOCK {
            return Err(Error::Internal(format!(
                "q8_0: {} values and {} scales are not {out_f} rows of {in_f} (a multiple of 32)",
                q.len(),
                scales.len()
            )));
        }
        // The integer kernel negates weights by the input's sign: -128 has no i8
        // negation, so it is read as -127 (GGML's quantizer never writes it).
        let q = q.into_iter().map(|v| v.max(-127)).collect();
        Ok(Self { out_f, in_f, q, scales })
    }

    /// (in_features, out_features).
    pub(crate) fn features(&self) -> (usize, usize) {
        (self.in_f, self.out_f)
    }

    /// Rows `ids` dequantized, one after the other (an embedding lookup): `ids.len() * in` values.
    pub(crate) fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let blocks = self.in_f / Q8_BLOCK;
        let mut out = Vec::with_capacity(ids.len() * self.in_f);
        for &id in ids {
            let r = id as usize;
            if r >= self.out_f {
                return Err(Error::Internal(format!("q8_0 row {r} of {}", self.out_f)));
            }
            let q = &self.q[r * self.in_f..(r + 1) * self.in_f];
            for (qb, d) in q.chunks_exact(Q8_BLOCK).zip(&self.scales[r * blocks..(r + 1) * blocks]) {
                out.extend(qb.iter().map(|&v| f32::from(v) * d));
            }
        }
        Ok(out)
    }

    /// Every value dequantized, `[out, in]` row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        self.q
            .chunks_exact(Q8_BLOCK)
            .zip(&self.scales)
            .flat_map(|(qb, d)| qb.iter().map(move |&v| f32::from(v) * d))
            .collect()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.q.len() + 4 * self.scales.len()
    }

    /// `x W^T` for `x` `[n, in]` (any n: every weight row is read once for all rows).
    /// Each row of `x` is quantized to 8 bits per block too (as GGML does for q8_0), so
    /// the inner products are integer multiply-adds; on x86-64 in register tiles
    /// (`q8tiles`: AVX-512 VNNI or AVX2), each pair summed the same way in any tile.
    pub(crate) fn matmul(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (n, in_f) = x.dims2()?;
        if in_f != self.in_f {
            return Err(Error::Internal(format!("q8_0 linear expects {} input features, got {in_f}", self.in_f)));
        }
        let xv: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (xq, xd) = quantize_blocks(&xv);
        let (out_f, blocks) = (self.out_f, in_f / Q8_BLOCK);
        let mut yt = vec![0f32; out_f * n];
        let c = chunk(out_f, in_f * n / 4);
        #[cfg(target_arch = "x86_64")]
        let kernel = q8tiles::Kernel::detect();
        #[cfg(target_arch = "x86_64")]
        let panel = kernel.and_then(|k| q8tiles::Panel::new(k, &xq, &xd, n, in_f));
        yt.par_chunks_mut(c * n).enumerate().for_each(|(ci, ys)| {
            let o0 = ci * c;
            #[cfg(target_arch = "x86_64")]
            if let Some(k) = kernel {
                let (w, d) = (&self.q[o0 * in_f..], &self.scales[o0 * blocks..]);
                q8_tiles(k, panel.as_ref(), &xq, &xd, w, d, n, in_f, ys);
                return;
            }
            for (k, yo) in ys.chunks_exact_mut(n).enumerate() {
                let o = o0 + k;
                let q = &self.q[o * in_f..(o + 1) * in_f];
                let d = &self.scales[o * blocks..(o + 1) * blocks];
                for (r, y) in yo.iter_mut().enumerate() {
                    let (rq, rd) = (&xq[r * in_f..(r + 1) * in_f], &xd[r * blocks..(r + 1) * blocks]);
                    *y = dot_q8(rq, rd, q, d);
                }
            }
        });
        let y = if n == 1 { yt } else { transpose(&yt, out_f, n) };
        with_bias(y, (n, out_f), bias, x.device())
    }
}

/// A compact format for a linear layer's weight at inference (`GeneratorOptions::quantize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quant {
    /// GGML's q8_0: 8-bit values in blocks of 32, one scale each ([`Q8Weight`]).
    Q8_0,
    /// bfloat16 values, multiplied by the inputs rounded to bfloat16, sums in f32
    /// ([`Bf16Weight`]).
    Bf16,
}

impl Quant {
    /// The option's spelling (`q8_0`, `bf16`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Bf16 => "bf16",
        }
    }

    /// Whether a matrix of `in_f` input features can be held in this format (q8_0:
    /// whole blocks of 32; bf16: any).
    pub(crate) fn fits(self, in_f: usize) -> bool {
        match self {
            Quant::Q8_0 => in_f.is_multiple_of(Q8_BLOCK),
            Quant::Bf16 => true,
        }
    }

    /// Bytes of a `[out, in]` matrix in this format (`fits` assumed).
    pub(crate) fn bytes(self, elements: u128) -> u128 {
        match self {
            Quant::Q8_0 => elements / Q8_BLOCK as u128 * (Q8_BLOCK as u128 + 4),
            Quant::Bf16 => 2 * elements,
        }
    }
}

pub(crate) use bf16::Bf16Weight;

/// A linear layer's weight `[out, in]` held for inference only, in one of the [`Quant`]
/// formats, with no dense copy beside it.
#[derive(Debug)]
pub(crate) enum QuantWeight {
    Q8(Q8Weight),
    Bf16(Bf16Weight),
}

impl QuantWeight {
    /// `w` (`[out, in]`) in format `q` (q8_0: `in` a multiple of 32).
    pub(crate) fn quantize(w: &Tensor, q: Quant) -> Result<Self> {
        Ok(match q {
            Quant::Q8_0 => Self::Q8(Q8Weight::quantize(w)?),
            Quant::Bf16 => Self::Bf16(Bf16Weight::quantize(w)?),
        })
    }

    /// `[out, in]` from its rows' f32 values (row-major) in format `q`.
    pub(crate) fn from_f32(out_f: usize, in_f: usize, data: &[f32], q: Quant) -> Result<Self> {
        Ok(match q {
            Quant::Q8_0 => Self::Q8(Q8Weight::from_f32(out_f, in_f, data)?),
            Quant::Bf16 => Self::Bf16(Bf16Weight::from_f32(out_f, in_f, data)?),
        })
    }

    pub(crate) fn format(&self) -> Quant {
        match self {
            Self::Q8(_) => Quant::Q8_0,
            Self::Bf16(_) => Quant::Bf16,
        }
    }

    /// (in_features, out_features).
    pub(crate) fn features(&self) -> (usize, usize) {
        match self {
            Self::Q8(q) => q.features(),
            Self::Bf16(b) => b.features(),
        }
    }

    /// Rows `ids` as f32, one after the other (an embedding lookup).
    pub(crate) fn rows_f32(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Self::Q8(q) => q.rows_f32(ids),
            Self::Bf16(b) => b.rows_f32(ids),
        }
    }

    /// Every value as f32, `[out, in]` row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::Q8(q) => q.to_f32(),
            Self::Bf16(b) => b.to_f32(),
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Q8(q) => q.bytes(),
            Self::Bf16(b) => b.bytes(),
        }
    }

    /// `x W^T` for `x` `[n, in]` (f32 out), plus `bias` if given.
    pub(crate) fn matmul(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Q8(q) => q.matmul(x, bias),
            Self::Bf16(b) => b.matmul(x, bias),
        }
    }
}

/// One task's block of `Q8Weight::matmul`: `ys` (`[outputs, n]`) from the weight rows
/// from `wq`'s (and `wd`'s) start on, in the kernel's tiles (weight rows by input rows;
/// more weight rows for a single input row). Every (row, output) pair is summed the same
/// way whatever the tile (see `q8tiles`), so a row's result does not depend on how many
/// rows come with it. Two or more rows on AVX-512 VNNI come as a `panel` too (built once
/// per product, before the tasks split the weight).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn q8_tiles(
    k: q8tiles::Kernel,
    panel: Option<&q8tiles::Panel>,
    xq: &[i8],
    xd: &[f32],
    wq: &[i8],
    wd: &[f32],
    n: usize,
    in_f: usize,
    ys: &mut [f32],
) {
    let blocks = in_f / Q8_BLOCK;
    let outs = ys.len() / n;
    use q8tiles::{ONE_ROW_TILE, OUT_TILE, PANEL_ROWS, ROW_TILE};
    if let Some(panel) = panel {
        macro_rules! tile {
            ($o:expr, $nw:literal) => {{
                let ws: [&[i8]; $nw] = std::array::from_fn(|a| &wq[($o + a) * in_f..($o + a + 1) * in_f]);
                let wds: [&[f32]; $nw] = std::array::from_fn(|a| &wd[($o + a) * blocks..($o + a + 1) * blocks]);
                for t in 0..panel.tiles() {
                    let ahead: &[i8] = if t == 0 { next_rows(wq, $o + $nw, $nw, in_f) } else { &[] };
                    let r = t * PANEL_ROWS;
                    macro_rules! rows {
                        ($nr:literal) => {{
                            let tile = q8tiles::dots_panel::<$nw, $nr>(panel, t, ws, wds, ahead);
                            for (a, row) in tile.iter().enumerate() {
                                ys[($o + a) * n + r..($o + a) * n + r + $nr].copy_from_slice(row);
                            }
                        }};
                    }
                    // The arms cover 1..=PANEL_ROWS (3).
                    match n - r {
                        1 => rows!(1),
                        2 => rows!(2),
                        _ => rows!(3),
                    }
                }
            }};
        }
        let mut o = 0;
        while o < outs {
            // The arms cover 1..=PANEL_OUTS (4).
            let nw = (outs - o).min(q8tiles::PANEL_OUTS);
            match nw {
                4 => tile!(o, 4),
                3 => tile!(o, 3),
                2 => tile!(o, 2),
                _ => tile!(o, 1),
            }
            o += nw;
        }
        return;
    }
    macro_rules! tile {
        ($o:expr, $r:expr, $nw:literal, $nr:literal) => {{
            let ws: [&[i8]; $nw] = std::array::from_fn(|a| &wq[($o + a) * in_f..($o + a + 1) * in_f]);
            let wds: [&[f32]; $nw] = std::array::from_fn(|a| &wd[($o + a) * blocks..($o + a + 1) * blocks]);
            let xs: [&[i8]; $nr] = std::array::from_fn(|b| &xq[($r + b) * in_f..($r + b + 1) * in_f]);
            let xds: [&[f32]; $nr] = std::array::from_fn(|b| &xd[($r + b) * blocks..($r + b + 1) * blocks]);
            // The next tile's values (its scales are an eighth of that: left to the
            // hardware).
            let ahead: &[i8] = if $r == 0 { next_rows(wq, $o + $nw, $nw, in_f) } else { &[] };
            let t = q8tiles::dots::<$nw, $nr>(k, ws, wds, xs, xds, ahead);
            for (a, row) in t.iter().enumerate() {
                ys[($o + a) * n + $r..($o + a) * n + $r + $nr].copy_from_slice(row);
            }
        }};
    }
    for_each_tile(outs, n, (OUT_TILE, ROW_TILE, ONE_ROW_TILE), |o, r, nw, nr| by_shape!(tile, o, r, nw, nr));
}

/// Blockwise 8-bit quantization: values and one scale (max |x| / 127) per 32 (a long
/// input, a prompt's rows, in parallel blocks).
fn quantize_blocks(data: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let blocks = data.len() / Q8_BLOCK;
    let mut q = vec![0i8; blocks * Q8_BLOCK];
    let mut scales = vec![0f32; blocks];
    let data = &data[..blocks * Q8_BLOCK];
    if data.len() < PARALLEL_FROM {
        quantize_to(data, &mut q, &mut scales);
        return (q, scales);
    }
    let per_task = blocks.div_ceil(rayon::current_num_threads().max(1) * 4).max(8);
    q.par_chunks_mut(per_task * Q8_BLOCK)
        .zip(scales.par_chunks_mut(per_task))
        .zip(data.par_chunks(per_task * Q8_BLOCK))
        .for_each(|((q, scales), data)| quantize_to(data, q, scales));
    (q, scales)
}

/// Appends the q8_0 blocks of `data` (whole blocks of 32) to `q` and `scales`.
pub(crate) fn quantize_into(data: &[f32], q: &mut Vec<i8>, scales: &mut Vec<f32>) {
    let blocks = data.len() / Q8_BLOCK;
    let (q0, s0) = (q.len(), scales.len());
    q.resize(q0 + blocks * Q8_BLOCK, 0);
    scales.resize(s0 + blocks, 0.0);
    quantize_to(&data[..blocks * Q8_BLOCK], &mut q[q0..], &mut scales[s0..]);
}

/// The q8_0 blocks of `data` into `q` and `scales`: per block of 32, the scale is max |x|
/// / 127 and each value `round(x / scale)` (halves away from zero), clamped to +-127.
/// Activations are quantized on every step; with AVX-512 a block takes a few vector
/// instructions (the plain loop's float-to-i8 casts were compiled one lane at a time).
fn quantize_to(data: &[f32], q: &mut [i8], scales: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512 F/VL/BW/DQ (checked at run time).
        #[allow(unsafe_code)]
        return unsafe { quantize_avx512(data, q, scales) };
    }
    quantize_portable(data, q, scales)
}

fn quantize_portable(data: &[f32], q: &mut [i8], scales: &mut [f32]) {
    let blocks = data.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK));
    for ((block, qb), scale) in blocks.zip(scales.iter_mut()) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let (d, inv) = q8_scale(amax);
        *scale = d;
        for (o, x) in qb.iter_mut().zip(block) {
            *o = (x * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// A block's scale from its largest magnitude, and the factor that maps values onto
/// -127..=127.
#[inline(always)]
fn q8_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// [`quantize_portable`] on AVX-512, value for value: the same scale, the same product
/// `x * inv`, rounded half away from zero (truncate, then step away from zero where the
/// dropped fraction is at least a half: `x - trunc(x)` is exact), clamped, narrowed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
fn quantize_avx512(data: &[f32], q: &mut [i8], scales: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = data.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK));
    let half = _mm512_set1_ps(0.5);
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for ((block, qb), scale) in blocks.zip(scales.iter_mut()) {
        // SAFETY: `block` holds 32 floats and `qb` 32 bytes (`chunks_exact`); unaligned
        // loads and stores.
        #[allow(unsafe_code)]
        let v = unsafe { [_mm512_loadu_ps(block.as_ptr()), _mm512_loadu_ps(block.as_ptr().add(16))] };
        // max |x| over the block (NaN-free blocks give the fold's value).
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        let (d, inv) = q8_scale(amax);
        *scale = d;
        let inv = _mm512_set1_ps(inv);
        for (j, v) in v.into_iter().enumerate() {
            let x = _mm512_mul_ps(v, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(x, t)), half);
            // t + sign(x) where the fraction dropped was at least a half.
            let step = _mm512_or_ps(_mm512_set1_ps(1.0), _mm512_and_ps(x, _mm512_set1_ps(-0.0)));
            let r = _mm512_mask_add_ps(t, away, t, step);
            // Operands in this order pass a NaN through both (as `clamp` does); it then
            // converts to 0x80000000, narrowed to 0 as the cast gives.
            let r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
            let bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));
            // SAFETY: bytes `16 j .. 16 j + 16` of the 32-byte `qb`.
            #[allow(unsafe_code)]
            unsafe {
                _mm_storeu_si128(qb.as_mut_ptr().add(16 * j).cast::<__m128i>(), bytes)
            };
        }
    }
}

/// Dot product of two q8_0 rows (values and per-block scales).
fn dot_q8(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`: the CPU has AVX2 and FMA; the function only indexes slices.
        #[allow(unsafe_code)]
        return unsafe { dot_q8_avx2(xq, xd, wq, wd) };
    }
    dot_q8_portable(xq, xd, wq, wd)
}

/// Per block of 32: |x| (unsigned) times w with x's sign (`sign_epi8`), pairs summed to
/// 16 i16 (`maddubs`: at most 2 * 127 * 127, no saturation since values are clamped to
/// +-127), then to 8 i32 (`madd` by ones), converted and scaled by `dx * dw` into f32
/// lanes; two blocks per step into two accumulators. `q8tiles` does this arithmetic
/// bit for bit in its tiles (the test below holds them to it); `matmul` runs the tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_q8_avx2(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let blocks = (xq.len() / Q8_BLOCK).min(wq.len() / Q8_BLOCK).min(xd.len()).min(wd.len());
    let ones = _mm256_set1_epi16(1);
    let block = |b: usize| -> __m256 {
        let (xb, wb) = (&xq[b * Q8_BLOCK..(b + 1) * Q8_BLOCK], &wq[b * Q8_BLOCK..(b + 1) * Q8_BLOCK]);
        // SAFETY: `xb` and `wb` are 32-byte slices (indexed above); unaligned loads.
        #[allow(unsafe_code)]
        let (x, w) = unsafe {
            (_mm256_loadu_si256(xb.as_ptr().cast::<__m256i>()), _mm256_loadu_si256(wb.as_ptr().cast::<__m256i>()))
        };
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones))
    };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(xd[b] * wd[b]), acc0);
        acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(xd[b + 1] * wd[b + 1]), acc1);
        b += 2;
    }
    if b < blocks {
        acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(xd[b] * wd[b]), acc0);
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// Integer multiply-adds within a block (exact in i32), one float multiply per block.
#[inline(always)]
fn dot_q8_portable(xq: &[i8], xd: &[f32], wq: &[i8], wd: &[f32]) -> f32 {
    let mut total = 0f32;
    for (((xb, wb), &dx), &dw) in xq.chunks_exact(Q8_BLOCK).zip(wq.chunks_exact(Q8_BLOCK)).zip(xd).zip(wd) {
        let mut s = 0i32;
        for i in 0..Q8_BLOCK {
            s += i32::from(xb[i]) * i32::from(wb[i]);
        }
        total += (dx * dw) * s as f32;
    }
    total
}

/// Elements of a 4-d tensor as (data, start, strides) for strided reads.
fn strided<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> Result<(&'a [f32], usize, [usize; 4])> {
    let st = l.stride();
    if st.len() != 4 || st[3] != 1 {
        return Err(Error::Internal(format!("decode attention: unexpected strides {st:?}")));
    }
    Ok((s.as_slice::<f32>()?, l.start_offset(), [st[0], st[1], st[2], st[3]]))
}

/// Attention of one new query per row (decoding): `q` `[b, h, 1, d]` against the
/// cached `k`, `v` `[b, kv, T, d]` (any strides with a contiguous last dim, e.g. views
/// of the cache), each kv head serving `h / kv` query heads. Row `r` skips its first
/// `pads[r]` keys (left padding) and, with a sliding `window`, keys that fell out of it.
/// Returns `[b, h, 1, d]`.
pub(crate) fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    pads: &[usize],
    window: Option<usize>,
) -> Result<Tensor> {
    let (b, h, one, d) = q.dims4()?;
    let (_, kvh, t, _) = k.dims4()?;
    if one != 1 || h % kvh != 0 {
        return Err(Error::Internal("decode attention: one query per row, whole kv groups".into()));
    }
    let group = h / kvh;
    let q = q.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else {
        return Err(Error::Internal("decode attention: tensors must be on the CPU".into()));
    };
    let (qa, qb) = ql.contiguous_offsets().ok_or_else(|| Error::Internal("decode attention: q".into()))?;
    let qv = &qs.as_slice::<f32>()?[qa..qb];
    let (kd, k0, kst) = strided(ks, kl)?;
    let (vd, v0, vst) = strided(vs, vl)?;
    let mut out = vec![0f32; b * h * d];
    let first_visible = window.map_or(0, |w| t.saturating_sub(w));
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (bh, o)| {
        let (row, head) = (bh / h, bh % h);
        let kvh_i = head / group;
        let start = pads.get(row).copied().unwrap_or(0).max(first_visible).min(t - 1);
        let head = HeadView {
            q: &qv[bh * d..(bh + 1) * d],
            k: &kd[k0 + row * kst[0] + kvh_i * kst[1]..],
            k_stride: kst[2],
            v: &vd[v0 + row * vst[0] + kvh_i * vst[1]..],
            v_stride: vst[2],
            keys: start..t,
            scale,
        };
        attend_head(&head, scores, o);
    });
    Ok(Tensor::from_vec(out, (b, h, 1, d), q.device())?)
}

/// One query head against its cached keys and values (`k`, `v` start at the head's
/// first position; position `j` at `j * stride`).
struct HeadView<'a> {
    q: &'a [f32],
    k: &'a [f32],
    k_stride: usize,
    v: &'a [f32],
    v_stride: usize,
    keys: std::ops::Range<usize>,
    scale: f32,
}

super::fused::simd_fn! {
    /// `o = softmax(q k_j * scale) v_j` over `head.keys` (`scores`: scratch), built once
    /// per instruction set so that the dot products and the weighted sum of the values
    /// inline into one vectorised loop nest (called one key at a time, with the weighted
    /// sum compiled for 128-bit SSE, they took 13% of small q8_0's decoding at 32 rows;
    /// the reads of the cache bound this loop, so the gain is small: tiny f32 at 32 rows
    /// went from 4837 to 5006 tokens/s, medians of five alternating runs). The dot
    /// products are `dot`'s: fused multiply-adds where the CPU has them, in the same
    /// order in every build, so every build with FMA gives the same bits.
    fn attend_head(head: &HeadView, scores: &mut Vec<f32>, o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        let fma = has_avx2_fma();
        #[cfg(not(target_arch = "x86_64"))]
        let fma = false;
        let d = o.len();
        scores.clear();
        for j in head.keys.clone() {
            let k = &head.k[j * head.k_stride..j * head.k_stride + d];
            scores.push(if fma { dot_fma(head.q, k) } else { dot_portable(head.q, k) } * head.scale);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (j, p) in head.keys.clone().zip(scores.iter()) {
            axpy(p / sum, &head.v[j * head.v_stride..j * head.v_stride + d], o);
        }
    }
}

/// Dot product: AVX2 + FMA when the CPU has them, else portable code.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above), which is
        // all `dot_avx2` requires; it reads the slices through safe indexing only.
        #[allow(unsafe_code)]
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// AVX-512 F, VL, BW and DQ with AVX2 and FMA: what the `simd_fn!` kernels' widest
/// build needs.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2_fma()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
    })
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The portable loop compiled for AVX2 + FMA: `W` partial sums, fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_fma(a, b)
}

/// `W` partial sums of fused multiply-adds (fast where the target has FMA, e.g. inlined
/// into a function built for it).
#[inline(always)]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; W];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with 16 independent partial sums (vectorised by the compiler).
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a * x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn transpose_and_blockwise_quantization_are_the_same_in_parallel_bands() {
        for (rows, cols) in [(3, 5), (37, 1), (1, 41), (8, 8), (1536, 37), (33, 2000), (2000, 131), (64, 1024)] {
            let a: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&a, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], a[r * cols + c], "{rows}x{cols} at ({r}, {c})");
                }
            }
        }
        // A prompt's rows (quantized in parallel) give what one row at a time gives.
        let x: Vec<f32> = (0..Q8_BLOCK * 4096).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        assert!(x.len() >= PARALLEL_FROM);
        let (q, d) = quantize_blocks(&x);
        let (mut q1, mut d1) = (Vec::new(), Vec::new());
        for row in x.chunks(Q8_BLOCK * 16) {
            quantize_into(row, &mut q1, &mut d1);
        }
        assert_eq!((q, d), (q1, d1));
    }

    #[test]
    fn vector_quantization_matches_the_plain_loop_value_for_value() {
        // Blocks whose products land on exact halves (the rounding direction shows),
        // a zero block, a block with one huge value, NaN and infinities, and
        // pseudo-random ones.
        let mut x: Vec<f32> = Vec::new();
        x.extend((0..32).map(|i| (i as f32 - 16.0) * 0.37));
        x.extend((0..32).map(|i| if i == 31 { 127.0 } else { i as f32 - 15.5 }));
        x.extend([0.0f32; 32]);
        x.extend((0..32).map(|i| if i == 3 { 1e30 } else { i as f32 * 1e-3 }));
        x.extend((0..32).map(|i| match i {
            1 => f32::NAN,
            2 => f32::INFINITY,
            5 => -f32::INFINITY,
            _ => i as f32,
        }));
        x.extend((0..32 * 200).map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 13.0));
        let blocks = x.len() / Q8_BLOCK;
        let (mut q, mut d) = (vec![0i8; x.len()], vec![0f32; blocks]);
        quantize_to(&x, &mut q, &mut d);
        let (mut qp, mut dp) = (vec![0i8; x.len()], vec![0f32; blocks]);
        quantize_portable(&x, &mut qp, &mut dp);
        for b in 0..blocks {
            assert_eq!(d[b].to_bits(), dp[b].to_bits(), "scale of block {b}");
            assert_eq!(q[b * 32..(b + 1) * 32], qp[b * 32..(b + 1) * 32], "values of block {b}");
        }
        // The halves round away from zero: block 1's scale is 1, its values +-0.5 apart.
        assert_eq!(&qp[32..36], &[-16, -15, -14, -13]);
    }

    #[test]
    fn decode_attention_matches_the_reference_with_groups_pads_and_windows() {
        let dev = Device::Cpu;
        let (b, h, kvh, t, d, cap) = (2, 4, 2, 7, 16, 10);
        let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &dev).unwrap();
        // Views of a larger cache buffer, as the KV cache hands them out.
        let kbuf = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let vbuf = Tensor::randn(0f32, 1.0, (b, kvh, cap, d), &dev).unwrap();
        let (k, v) = (kbuf.narrow(2, 0, t).unwrap(), vbuf.narrow(2, 0, t).unwrap());
        for (pads, window) in [(vec![0, 0], None), (vec![0, 3], None), (vec![2, 0], Some(3))] {
            let got = decode_attention(&q, &k, &v, 0.25, &pads, window).unwrap();
            for row in 0..b {
                let start = pads[row].max(window.map_or(0, |w| t - w));
                let kr = k.get(row).unwrap().narrow(1, start, t - start).unwrap();
                let vr = v.get(row).unwrap().narrow(1, start, t - start).unwrap();
                let rep = |x: Tensor| {
                    let (kv, n, dd) = x.dims3().unwrap();
                    x.unsqueeze(1).unwrap().broadcast_as((kv, h / kv, n, dd)).unwrap().reshape((h, n, dd)).unwrap()
                };
                let (kr, vr) = (rep(kr), rep(vr));
                let qr = q.get(row).unwrap();
                let s = (qr.matmul(&kr.t().unwrap()).unwrap() * 0.25).unwrap();
                let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
                let want = p.matmul(&vr.contiguous().unwrap()).unwrap();
                let diff = (got.get(row).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "pads {pads:?} window {window:?}");
            }
        }
    }

    #[test]
    fn q8_0_dot_kernels_agree_with_exact_integer_sums() {
        // Extreme values (+-127 everywhere), zeros, random blocks, odd block counts.
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for blocks in [1usize, 2, 3, 8, 17] {
            for case in 0..4 {
                let n = blocks * Q8_BLOCK;
                let pick = |r: u32| -> i8 {
                    match case {
                        0 => 127,
                        1 => {
                            if r.is_multiple_of(2) {
                                127
                            } else {
                                -127
                            }
                        }
                        2 => 0,
                        _ => ((r % 255) as i32 - 127) as i8,
                    }
                };
                let xq: Vec<i8> = (0..n).map(|_| pick(next())).collect();
                let wq: Vec<i8> = (0..n).map(|i| if case == 1 && i % 3 == 0 { -127 } else { pick(next()) }).collect();
                let xd: Vec<f32> = (0..blocks).map(|_| (next() % 1000) as f32 / 997.0).collect();
                let wd: Vec<f32> = (0..blocks).map(|_| (next() % 1000) as f32 / 991.0).collect();
                let exact: f64 = (0..blocks)
                    .map(|b| {
                        let s: i64 = (0..Q8_BLOCK)
                            .map(|i| i64::from(xq[b * Q8_BLOCK + i]) * i64::from(wq[b * Q8_BLOCK + i]))
                            .sum();
                        f64::from(xd[b]) * f64::from(wd[b]) * s as f64
                    })
                    .sum();
                let scale: f64 =
                    (0..blocks).map(|b| f64::from(xd[b] * wd[b]) * 127.0 * 127.0 * 32.0).sum::<f64>().max(1.0);
                for (name, got) in
                    [("dispatch", dot_q8(&xq, &xd, &wq, &wd)), ("portable", dot_q8_portable(&xq, &xd, &wq, &wd))]
                {
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-6 * scale,
                        "{name} blocks {blocks} case {case}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    /// Every tiled q8_0 kernel this CPU runs gives each (output, row) pair the bits of
    /// the per-pair `dot_q8_avx2`, for every row count up to 33 and odd shapes (tile
    /// edges in both directions), with random and extreme (+-127) values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn q8_0_tiles_equal_the_per_pair_kernel_bit_for_bit() {
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let kernels = q8tiles::Kernel::available();
        for &k in &kernels {
            for in_f in [32usize, 64, 96, 288] {
                for (case, out_f) in [(0, 13usize), (1, 9), (2, 18)] {
                    let blocks = in_f / Q8_BLOCK;
                    let value = |r: u32| -> i8 {
                        match case {
                            1 if r.is_multiple_of(3) => -127,
                            1 => 127,
                            _ => ((r % 255) as i32 - 127) as i8,
                        }
                    };
                    let wq: Vec<i8> = (0..out_f * in_f).map(|_| value(next())).collect();
                    let wd: Vec<f32> = (0..out_f * blocks).map(|_| (next() % 1000) as f32 / 991.0).collect();
                    let xq: Vec<i8> = (0..33 * in_f).map(|_| value(next())).collect();
                    let xd: Vec<f32> = (0..33 * blocks).map(|_| (next() % 1000) as f32 / 997.0 - 0.3).collect();
                    for n in 1..=33 {
                        let mut ys = vec![0f32; out_f * n];
                        let panel = q8tiles::Panel::new(k, &xq[..n * in_f], &xd[..n * blocks], n, in_f);
                        q8_tiles(k, panel.as_ref(), &xq, &xd, &wq, &wd, n, in_f, &mut ys);
                        for o in 0..out_f {
                            for r in 0..n {
                                let (wo, wdo) = (&wq[o * in_f..(o + 1) * in_f], &wd[o * blocks..(o + 1) * blocks]);
                                let (xr, xdr) = (&xq[r * in_f..(r + 1) * in_f], &xd[r * blocks..(r + 1) * blocks]);
                                // SAFETY: a kernel is available, so the CPU has AVX2 and FMA.
                                #[allow(unsafe_code)]
                                let want = unsafe { dot_q8_avx2(xr, xdr, wo, wdo) };
                                let got = ys[o * n + r];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{k:?} n {n} in {in_f} out {out_f} case {case}: ({o}, {r}) {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_q8_0_row_gets_the_same_bits_alone_or_with_others() {
        let dev = Device::Cpu;
        for (n, in_f, out_f) in [(16, 64, 50), (7, 96, 35), (32, 256, 48), (16, 64, 201), (2, 32, 100), (3, 160, 9)] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let w = Q8Weight::quantize(&Tensor::randn(0f32, 1.0, (out_f, in_f), &dev).unwrap()).unwrap();
            let all = w.matmul(&x, None).unwrap().to_vec2::<f32>().unwrap();
            for (r, want) in all.iter().enumerate() {
                let one = w.matmul(&x.narrow(0, r, 1).unwrap(), None).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(&one[0], want, "row {r} of {n} ({in_f}x{out_f})");
            }
        }
    }

    #[test]
    fn q8_0_is_close_to_f32_for_any_row_count() {
        let dev = Device::Cpu;
        for (n, in_f, out_f) in [(1, 64, 50), (3, 256, 33), (12, 96, 7)] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.05, (out_f, in_f), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let q = Q8Weight::quantize(&w).unwrap();
            assert_eq!(q.bytes(), out_f * in_f + 4 * out_f * in_f / 32);
            let got = q.matmul(&x, None).unwrap();
            let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // Rounding to 1/254 of each block's range: well under 2% of the output's range.
            assert!(err < 0.02 * scale, "{n}x{in_f}x{out_f}: {err} vs {scale}");
        }
        assert!(Q8Weight::quantize(&Tensor::zeros((2, 33), DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_or_with_others() {
        let dev = Device::Cpu;
        for (n, in_f, out_f) in [(16, 64, 50), (7, 37, 35), (32, 256, 48), (16, 64, 200), (2, 48, 100), (3, 48, 100)] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_f, in_f), &dev).unwrap();
            let wc = w.t().unwrap().contiguous().unwrap();
            for (w, conv1d) in [(&w, false), (&wc, true)] {
                let all = matmul(&x, w, conv1d, None).unwrap().to_vec2::<f32>().unwrap();
                for (r, want) in all.iter().enumerate() {
                    let one = matmul(&x.narrow(0, r, 1).unwrap(), w, conv1d, None).unwrap().to_vec2::<f32>().unwrap();
                    assert_eq!(&one[0], want, "row {r} of {n} ({in_f}x{out_f}, conv1d {conv1d})");
                }
            }
        }
    }

    #[test]
    fn matches_candle_matmul_in_both_layouts() {
        let dev = Device::Cpu;
        for (n, in_f, out_f) in [
            (1, 37, 53),
            (3, 64, 1000),
            (8, 512, 129),
            (1, 16, 16),
            (1, 64, 200),
            (2, 48, 100),
            (5, 37, 50),
            (17, 100, 35),
            (32, 256, 48),
            (2, 7, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_f, in_f), &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = matmul(&x, &w, false, None).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "linear {n}x{in_f}x{out_f}: {diff}");
            let wc = w.t().unwrap().contiguous().unwrap();
            let got = matmul(&x, &wc, true, None).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "conv1d {n}x{in_f}x{out_f}: {diff}");
        }
    }

    /// The products add the bias themselves: the same bits as adding it afterwards, in
    /// every weight format, and a bias of the wrong size is an error.
    #[test]
    fn a_bias_is_added_as_broadcast_add_does() {
        let dev = Device::Cpu;
        let bits = |t: &Tensor| t.to_vec2::<f32>().unwrap().concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (n, in_f, out_f) in [(1, 64, 96), (5, 128, 33)] {
            let x = Tensor::randn(0f32, 1.0, (n, in_f), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out_f, in_f), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out_f, &dev).unwrap();
            let plain = matmul(&x, &w, false, None).unwrap();
            let with = matmul(&x, &w, false, Some(&b)).unwrap();
            assert_eq!(bits(&with), bits(&plain.broadcast_add(&b).unwrap()), "f32 {n}x{in_f}x{out_f}");
            assert_ne!(bits(&with), bits(&plain));
            for q in [Quant::Q8_0, Quant::Bf16] {
                let qw = QuantWeight::quantize(&w, q).unwrap();
                let plain = qw.matmul(&x, None).unwrap();
                let with = qw.matmul(&x, Some(&b)).unwrap();
                assert_eq!(bits(&with), bits(&plain.broadcast_add(&b).unwrap()), "{q:?} {n}x{in_f}x{out_f}");
            }
            let short = Tensor::zeros(out_f - 1, DType::F32, &dev).unwrap();
            assert!(matmul(&x, &w, false, Some(&short)).is_err());
        }
    }
}
