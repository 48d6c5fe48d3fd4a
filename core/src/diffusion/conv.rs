//! A 2D convolution with its bias, forward and backward, as im2col + gemm on the CPU.
//!
//! candle's own `conv2d` builds its im2col tiles element by element through a
//! channels-last copy of the input, adds the bias as a separate broadcast (whose
//! backward is a strided reduction over the batch and the pixels), and computes the
//! input gradient with `conv_transpose2d` (a dot product per output pixel, no gemm) and
//! the kernel gradient even for a frozen kernel. On the tiny-shapes UNet these took most
//! of a training step. [`conv2d`] is one op (`CustomOp3` of input, kernel and bias):
//!
//! - forward, per image: the im2col matrix `[c_in k k, pixels]` (row by row, a shifted
//!   copy of one input row per kernel offset, zeros in the padding; at stride 1 with
//!   the output as wide as the input, one copy of a shifted block per kernel offset,
//!   its wrapped edge columns zeroed), then one gemm
//!   `kernel [c_out, c_in k k] x cols` onto the bias; a 1x1 stride-1 convolution uses
//!   the image itself as the matrix;
//! - input gradient (only when the input needs one): at stride 1, the convolution of
//!   the output gradient with the kernel flipped and its channels swapped, padded by
//!   `k - 1 - p` (the forward's code, `c_out k k` terms per gemm, nothing to scatter);
//!   at other strides `kernel^T x grad` per image, then col2im (the adjoint of im2col:
//!   each column added back where it was read from);
//! - kernel gradient (only when the kernel needs one, i.e. it is a `Var` or computed
//!   from one): `cols x grad^T` (the gradient transposed, `[kk, c_out]`) summed over the
//!   images, then transposed once; bias gradient: the sum of the
//!   output gradient over images and pixels.
//!
//! Images are split over rayon's threads (each gemm single-threaded); with fewer images
//! than threads (generation at batch 1 or 2) the gemms run multi-threaded instead. The
//! im2col matrix is cut into tiles of whole output rows, about [`TILE_FLOATS`] floats,
//! so a large image never needs its whole matrix at once; it is recomputed in the
//! backward rather than kept, in a buffer each thread keeps. It applies to f32 tensors on the CPU with a square kernel and
//! `padding < kernel` (every convolution of the UNet and the VAE); anything else goes
//! through candle's `conv2d` and a broadcast bias.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::models::fused;
use crate::models::sgemm::{matmul, Dst, Mat};

/// Floats of one im2col tile (1 MiB), so that a tile and its gemm stay in cache.
const TILE_FLOATS: usize = 1 << 18;

/// `conv2d(x, w) + bias` (bias `[c_out]`), with the backward described in the module
/// docs where it applies, else candle's.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, padding: usize, stride: usize) -> Result<Tensor> {
    let (c_out, _, kh, kw) = w.dims4()?;
    let usable = fused::usable(x)
        && fused::usable(w)
        && bias.is_none_or(fused::usable)
        && x.rank() == 4
        && kh == kw
        && padding < kh
        && stride >= 1;
    if !usable {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
            None => Ok(y),
        };
    }
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(c_out, w.dtype(), w.device())?,
    };
    let op = Conv { padding, stride, kernel: kh };
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias, op)
}

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    b: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], k: usize, s: usize, p: usize) -> Result<Self> {
        let (&[b, c_in, h, wd], &[c_out, wc, _, _]) = (x, w) else { bail!("anneal-conv2d: 4-D operands expected") };
        if wc != c_in {
            bail!("anneal-conv2d: input has {c_in} channels, kernel expects {wc}");
        }
        if h + 2 * p < k || wd + 2 * p < k {
            bail!("anneal-conv2d: input {h}x{wd} smaller than the kernel {k} with padding {p}");
        }
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
        Ok(Self { b, c_in, h, w: wd, c_out, k, s, p, oh, ow })
    }

    /// Rows of the im2col matrix.
    fn kk(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn pixels(&self) -> usize {
        self.oh * self.ow
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.c_out * self.pixels()
    }

    /// The im2col matrix is the image itself.
    fn direct(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }

    /// Output rows per tile: as many as fit in [`TILE_FLOATS`], at least one.
    fn tile_rows(&self) -> usize {
        (TILE_FLOATS / (self.kk() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }

    /// Output pixels per tile (whole output rows).
    fn tile(&self) -> usize {
        self.tile_rows() * self.ow
    }

    /// The tiles of one image: output rows `[y0, y1)`.
    fn tiles(&self) -> impl Iterator<Item = (usize, usize)> {
        let (oh, t) = (self.oh, self.tile_rows());
        (0..oh.div_ceil(t)).map(move |i| (i * t, ((i + 1) * t).min(oh)))
    }

    /// Split the images over threads (gemms single-threaded), or run the gemms
    /// multi-threaded one image at a time.
    fn by_image(&self) -> bool {
        self.b >= rayon::current_num_threads()
    }

    /// Whether each gemm splits over the threads (one image at a time).
    fn gemm_threads(&self) -> bool {
        !self.by_image()
    }

    /// The output columns `ox` whose input column `ox * s + kx - p` lies in the image:
    /// `lo..hi`.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        // ox * s + kx >= p and ox * s + kx - p <= w - 1.
        let lo = if kx >= self.p { 0 } else { (self.p - kx).div_ceil(self.s) };
        let hi = if self.w + self.p > kx { (self.w - 1 + self.p - kx) / self.s + 1 } else { 0 };
        let lo = lo.min(self.ow);
        (lo, hi.clamp(lo, self.ow))
    }

    /// The input row `oy * s + ky - p`, if inside the image.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s + ky).checked_sub(self.p).filter(|&iy| iy < self.h)
    }

    /// Runs `f` on each image's (input, output) pair, of `in_len` and `out_len` floats:
    /// the images split over rayon's threads ([`Self::by_image`]), else one after
    /// another (each gemm then multi-threaded).
    fn per_image(
        &self,
        input: &[f32],
        in_len: usize,
        out: &mut [f32],
        out_len: usize,
        f: impl Fn((&[f32], &mut [f32])) -> Result<()> + Sync + Send,
    ) -> Result<()> {
        let mut pairs = input.chunks_exact(in_len.max(1)).zip(out.chunks_exact_mut(out_len.max(1)));
        if self.by_image() {
            pairs.collect::<Vec<_>>().into_par_iter().try_for_each(&f)
        } else {
            pairs.try_for_each(&f)
        }
    }

    /// `conv(x, w) (+ bias)` for the whole batch `x` (`[b, c_in, h, w]`, kernel
    /// `[c_out, c_in, k, k]`): per image, the bias (or zeros) then one gemm per im2col
    /// tile accumulated onto it.
    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
        let g = *self;
        let mut out = vec![0f32; g.b * g.out_len()];
        let image = |(xb, ob): (&[f32], &mut [f32])| -> Result<()> {
            let n = g.pixels();
            if let Some(bias) = bias {
                for (c, row) in ob.chunks_exact_mut(n).enumerate() {
                    row.fill(bias[c]);
                }
            }
            let lhs = Mat::rows(w, 0, g.kk());
            if g.direct() {
                return matmul(
                    (g.c_out, n, g.kk()),
                    Dst { data: ob, offset: 0, rs: n, accumulate: true },
                    lhs,
                    Mat::rows(xb, 0, n),
                    g.gemm_threads(),
                );
            }
            with_cols(g.kk() * g.tile(), |cols| {
                for (y0, y1) in g.tiles() {
                    let (n0, t) = (y0 * g.ow, (y1 - y0) * g.ow);
                    let cols = &mut cols[..g.kk() * t];
                    g.im2col(xb, y0, y1, cols);
                    matmul(
                        (g.c_out, t, g.kk()),
                        Dst { data: ob, offset: n0, rs: n, accumulate: true },
                        lhs,
                        Mat::rows(cols, 0, t),
                        g.gemm_threads(),
                    )?;
                }
                Ok(())
            })
        };
        g.per_image(x, g.in_len(), &mut out, g.out_len(), image)?;
        Ok(out)
    }

    /// The input gradient of a stride-1 convolution as a convolution itself: the
    /// output gradient (`[b, c_out, oh, ow]`) convolved with the kernel flipped in both
    /// spatial dims and with its channel dims swapped (`[c_in, c_out, k, k]`), padded by
    /// `k - 1 - p`, gives `[b, c_in, h, w]` directly: one gemm per tile with
    /// `c_out k k` terms each and no col2im, where the transposed product has only
    /// `c_out` terms and writes `k k` times the input's size first.
    fn input_grad_as_conv(&self, grad: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let (k, kk) = (self.k, self.k * self.k);
        let mut flipped = vec![0f32; w.len()];
        for co in 0..self.c_out {
            for ci in 0..self.c_in {
                let src = &w[(co * self.c_in + ci) * kk..][..kk];
                let dst = &mut flipped[(ci * self.c_out + co) * kk..][..kk];
                for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                    *d = *s;
                }
            }
        }
        let g = Geom {
            b: self.b,
            c_in: self.c_out,
            h: self.oh,
            w: self.ow,
            c_out: self.c_in,
            k,
            s: 1,
            p: k - 1 - self.p,
            oh: self.h,
            ow: self.w,
        };
        g.forward(grad, &flipped, None)
    }

    /// Writes the im2col columns of output rows `y0..y1` of image `x` (`[c_in, h, w]`)
    /// into `cols` (`[kk, (y1 - y0) ow]`).
    fn im2col(&self, x: &[f32], y0: usize, y1: usize, cols: &mut [f32]) {
        let (k, s, p, ow) = (self.k, self.s, self.p, self.ow);
        let t = (y1 - y0) * ow;
        for (r, row) in cols.chunks_exact_mut(t).enumerate().take(self.kk()) {
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let plane = &x[ci * self.h * self.w..][..self.h * self.w];
            let (lo, hi) = self.valid_cols(kx);
            if s == 1 && self.w == ow {
                self.im2col_rows(plane, (y0, y1), (ky, kx), (lo, hi), row);
                continue;
            }
            let first = (lo * s + kx).saturating_sub(p);
            for (oy, seg) in (y0..y1).zip(row.chunks_exact_mut(ow)) {
                let Some(iy) = self.in_row(oy, ky) else {
                    seg.fill(0.0);
                    continue;
                };
                seg[..lo].fill(0.0);
                seg[hi..].fill(0.0);
                let src = &plane[iy * self.w + first..];
                let dst = &mut seg[lo..hi];
                if s == 1 {
                    dst.copy_from_slice(&src[..dst.len()]);
                } else {
                    for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// One im2col row (kernel offset `(ky, kx)` of one input plane) for output rows
    /// `y0..y1` when the stride is 1 and the output as wide as the input: the rows
    /// inside the image are one shifted block of the plane, copied at once, and the
    /// columns outside `lo..hi` (which read a neighbouring row) zeroed after.
    fn im2col_rows(
        &self,
        plane: &[f32],
        (y0, y1): (usize, usize),
        (ky, kx): (usize, usize),
        (lo, hi): (usize, usize),
        row: &mut [f32],
    ) {
        let (p, ow) = (self.p, self.ow);
        // Output rows whose input row `oy + ky - p` lies in 0..h.
        let a = p.saturating_sub(ky).clamp(y0, y1);
        let b = (self.h + p).saturating_sub(ky).clamp(a, y1);
        row[..(a - y0) * ow].fill(0.0);
        row[(b - y0) * ow..].fill(0.0);
        if a == b {
            return;
        }
        let dst = &mut row[(a - y0) * ow..(b - y0) * ow];
        // dst[j] = plane[start + j]: every j of a column in lo..hi lies in the plane.
        let start = ((a + ky - p) * self.w + kx) as isize - p as isize;
        let len = dst.len() as isize;
        let j0 = (-start).clamp(0, len);
        let j1 = (plane.len() as isize - start).clamp(j0, len);
        let (j0, j1) = (j0 as usize, j1 as usize);
        dst[..j0].fill(0.0);
        dst[j1..].fill(0.0);
        let from = (start + j0 as isize) as usize;
        dst[j0..j1].copy_from_slice(&plane[from..from + (j1 - j0)]);
        if lo > 0 || hi < ow {
            for seg in dst.chunks_exact_mut(ow) {
                seg[..lo].fill(0.0);
                seg[hi..].fill(0.0);
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: adds the columns `cols` (`[kk, (y1 - y0) ow]`)
    /// of output rows `y0..y1` back onto image `gx` (`[c_in, h, w]`).
    fn col2im(&self, cols: &[f32], y0: usize, y1: usize, gx: &mut [f32]) {
        let (k, s, p, ow) = (self.k, self.s, self.p, self.ow);
        let t = (y1 - y0) * ow;
        for (r, row) in cols.chunks_exact(t).enumerate().take(self.kk()) {
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let plane = &mut gx[ci * self.h * self.w..][..self.h * self.w];
            let (lo, hi) = self.valid_cols(kx);
            if lo >= hi {
                continue;
            }
            let first = lo * s + kx - p;
            for (oy, seg) in (y0..y1).zip(row.chunks_exact(ow)) {
                let Some(iy) = self.in_row(oy, ky) else { continue };
                let dst = &mut plane[iy * self.w + first..];
                if s == 1 {
                    for (d, v) in dst.iter_mut().zip(&seg[lo..hi]) {
                        *d += v;
                    }
                } else {
                    for (d, v) in dst.iter_mut().step_by(s).zip(&seg[lo..hi]) {
                        *d += v;
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The im2col tile of this thread, kept between calls (a fresh buffer per call is
    /// page-faulted in again each time).
    static COLS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's im2col buffer, at least `len` floats long.
///
/// The buffer is taken out for the call, not borrowed: while `f`'s gemm waits for its
/// rayon tasks, this thread may run another convolution (work stolen from another
/// computation in the process), whose nested call then gets a buffer of its own.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut cols = COLS.take();
    if cols.len() < len {
        cols.resize(len, 0.0);
    }
    let r = f(&mut cols[..len]);
    // Keep the larger of this buffer and one a nested call put back.
    let nested = COLS.take();
    COLS.set(if nested.len() > cols.len() { nested } else { cols });
    r
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    fused::contiguous_f32(s, l, "anneal-conv2d", what)
}

/// `conv2d(x, w) + bias`: see the module docs.
#[derive(Debug, Clone, Copy)]
struct Conv {
    padding: usize,
    stride: usize,
    kernel: usize,
}

impl Conv {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        Geom::new(x, w, self.kernel, self.stride, self.padding)
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "anneal-conv2d"
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
        let g = self.geom(l1.dims(), l2.dims())?;
        let (x, w, bias) = (contiguous(s1, l1, "input")?, contiguous(s2, l2, "kernel")?, contiguous(s3, l3, "bias")?);
        if bias.len() != g.c_out {
            bail!("anneal-conv2d: bias of {} for {} output channels", bias.len(), g.c_out);
        }
        let out = g.forward(x, w, Some(bias))?;
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.c_out, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &InputGrad { conv: *self, x: x.dims4()? })?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &KernelGrad { conv: *self, w: w.dims4()? })?)
        } else {
            None
        };
        let gb = if bias.track_op() { Some(grad.apply_op1_no_bwd(&BiasGrad)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// The input gradient of [`Conv`]: `(grad [b, c_out, oh, ow], w)` -> `[b, c_in, h, w]`.
struct InputGrad {
    conv: Conv,
    x: (usize, usize, usize, usize),
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "anneal-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, wd) = self.x;
        let g = self.conv.geom(&[b, c, h, wd], l2.dims())?;
        let (grad, w) = (contiguous(s1, l1, "gradient")?, contiguous(s2, l2, "kernel")?);
        if grad.len() != g.b * g.out_len() {
            bail!("anneal-conv2d: gradient of {:?} for an output of {}x{}", l1.dims(), g.oh, g.ow);
        }
        if g.s == 1 && !g.direct() {
            return Ok((CpuStorage::F32(g.input_grad_as_conv(grad, w)?), Shape::from((b, c, h, wd))));
        }
        let mut gx = vec![0f32; g.b * g.in_len()];
        // kernel^T: [kk, c_out] read from w [c_out, kk].
        let lhs = Mat::transposed(w, 0, g.kk());
        let image = |(gb, xb): (&[f32], &mut [f32])| -> Result<()> {
            let n = g.pixels();
            if g.direct() {
                return matmul(
                    (g.kk(), n, g.c_out),
                    Dst { data: xb, offset: 0, rs: n, accumulate: false },
                    lhs,
                    Mat::rows(gb, 0, n),
                    g.gemm_threads(),
                );
            }
            with_cols(g.kk() * g.tile(), |cols| {
                for (y0, y1) in g.tiles() {
                    let (n0, t) = (y0 * g.ow, (y1 - y0) * g.ow);
                    let tile = &mut cols[..g.kk() * t];
                    matmul(
                        (g.kk(), t, g.c_out),
                        Dst { data: tile, offset: 0, rs: t, accumulate: false },
                        lhs,
                        Mat::rows(gb, n0, n),
                        g.gemm_threads(),
                    )?;
                    g.col2im(tile, y0, y1, xb);
                }
                Ok(())
            })
        };
        g.per_image(grad, g.out_len(), &mut gx, g.in_len(), image)?;
        Ok((CpuStorage::F32(gx), Shape::from((b, c, h, wd))))
    }
}

/// The kernel gradient of [`Conv`]: `(x, grad)` -> `[c_out, c_in, k, k]`, summed over
/// the images.
struct KernelGrad {
    conv: Conv,
    w: (usize, usize, usize, usize),
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "anneal-conv2d-kernel-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (co, ci, kh, kw) = self.w;
        let g = self.conv.geom(l1.dims(), &[co, ci, kh, kw])?;
        let (x, grad) = (contiguous(s1, l1, "input")?, contiguous(s2, l2, "gradient")?);
        if grad.len() != g.b * g.out_len() {
            bail!("anneal-conv2d: gradient of {:?} for an output of {}x{}", l2.dims(), g.oh, g.ow);
        }
        let len = g.c_out * g.kk();
        let n = g.pixels();
        // Adds image (xb, gb)'s `cols x grad^T` to `acc`, the kernel gradient transposed
        // (`[kk, c_out]`): gemm then reads the columns in place along its inner
        // dimension, where `grad x cols^T` made it copy each tile into panels first.
        let add = |acc: &mut Vec<f32>, xb: &[f32], gb: &[f32]| -> Result<()> {
            if g.direct() {
                return matmul(
                    (g.kk(), g.c_out, n),
                    Dst { data: acc, offset: 0, rs: g.c_out, accumulate: true },
                    Mat::rows(xb, 0, n),
                    Mat::transposed(gb, 0, n),
                    g.gemm_threads(),
                );
            }
            with_cols(g.kk() * g.tile(), |cols| {
                for (y0, y1) in g.tiles() {
                    let (n0, t) = (y0 * g.ow, (y1 - y0) * g.ow);
                    let cols = &mut cols[..g.kk() * t];
                    g.im2col(xb, y0, y1, cols);
                    matmul(
                        (g.kk(), g.c_out, t),
                        Dst { data: acc, offset: 0, rs: g.c_out, accumulate: true },
                        Mat::rows(cols, 0, t),
                        Mat::transposed(gb, n0, n),
                        g.gemm_threads(),
                    )?;
                }
                Ok(())
            })
        };
        let pairs: Vec<(&[f32], &[f32])> =
            x.chunks_exact(g.in_len().max(1)).zip(grad.chunks_exact(g.out_len().max(1))).collect();
        let gw = if g.by_image() {
            pairs
                .into_par_iter()
                .try_fold(
                    || vec![0f32; len],
                    |mut acc, (xb, gb)| {
                        add(&mut acc, xb, gb)?;
                        Ok::<_, candle_core::Error>(acc)
                    },
                )
                .try_reduce(
                    || vec![0f32; len],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        Ok(a)
                    },
                )?
        } else {
            let mut acc = vec![0f32; len];
            for (xb, gb) in pairs {
                add(&mut acc, xb, gb)?;
            }
            acc
        };
        let mut out = vec![0f32; len];
        for (r, row) in gw.chunks_exact(g.c_out.max(1)).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                out[o * g.kk() + r] = v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((co, ci, kh, kw))))
    }
}

/// The bias gradient: `grad [b, c, ...]` summed over everything but the channels.
struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "anneal-conv2d-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous(s, l, "gradient")?;
        let dims = l.dims();
        let (b, c) = match dims {
            [b, c, ..] => (*b, *c),
            _ => bail!("anneal-conv2d: gradient {dims:?} has no channel dim"),
        };
        let per: usize = dims[2..].iter().product();
        let mut out = vec![0f64; c];
        for image in grad.chunks_exact((c * per).max(1)).take(b) {
            for (o, row) in out.iter_mut().zip(image.chunks_exact(per.max(1))) {
                *o += row.iter().map(|&v| f64::from(v)).sum::<f64>();
            }
        }
        Ok((CpuStorage::F32(out.into_iter().map(|v| v as f32).collect()), Shape::from(c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn dot(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a * b)?.sum_all()?.to_scalar::<f32>()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// A thread waiting inside `with_cols` (its gemm split over rayon) may run another
    /// convolution stolen from the pool: the nested call gets its own buffer.
    #[test]
    fn the_im2col_buffer_can_be_used_again_inside_its_own_call() {
        let inner = with_cols(8, |outer| {
            outer.fill(1.0);
            let inner = with_cols(16, |inner| {
                inner.fill(2.0);
                inner.iter().sum::<f32>()
            });
            assert!(outer.iter().all(|&v| v == 1.0), "the nested call wrote into the outer buffer");
            inner
        });
        assert_eq!(inner, 32.0);
        // The larger buffer is kept for the next call.
        assert!(COLS.take().len() >= 16);
    }

    /// The forward equals candle's `conv2d` plus the bias; the gradients of
    /// `sum(conv(x, w, b) * r)` are the adjoints of the convolution (it is linear in
    /// each operand): `<conv(x', w), r> = <x', gx>`, `<conv(x, w'), r> = <w', gw>`, and
    /// the bias gradient is `r` summed over images and pixels; for every stride and
    /// padding the UNet and the VAE use, sizes the stride does not divide, and tiles
    /// smaller than an image. On square inputs they also equal candle's own backward.
    #[test]
    fn forward_and_backward_match_candle_and_the_adjoint() -> Result<()> {
        let dev = Device::Cpu;
        for &(k, s, p, h, w_, c_in, c_out, b) in &[
            (3, 1, 1, 8, 9, 3, 4, 2),
            (3, 2, 1, 8, 9, 3, 4, 2),
            (3, 2, 0, 9, 8, 3, 4, 1),
            (1, 1, 0, 6, 7, 5, 4, 3),
            (3, 2, 1, 7, 7, 2, 3, 2),
            (3, 1, 0, 5, 6, 3, 2, 2),
            (3, 2, 1, 8, 8, 4, 4, 3),
            // Wider kernels: two columns (or one) outside the image on each side.
            (5, 1, 2, 7, 9, 2, 3, 2),
            (5, 1, 1, 7, 8, 2, 3, 1),
            (5, 1, 4, 6, 6, 2, 3, 1),
            // More than one tile per image: kk = 64 * 9 = 576 rows, tiles of 18 output rows.
            (3, 1, 1, 24, 25, 64, 3, 1),
            (3, 1, 1, 24, 25, 64, 3, 4),
            // Stride 2 over two tiles: kk = 1152, tiles of 10 of the 20 output rows.
            (3, 2, 1, 40, 41, 128, 2, 1),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c_in, h, w_), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev)?)?;
            let bias = Var::from_tensor(&Tensor::randn(0f32, 1., c_out, &dev)?)?;
            let ours = conv2d(&x, &w, Some(&bias), p, s)?;
            let theirs = x.conv2d(&w, p, s, 1, 1)?.broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
            assert_eq!(ours.dims(), theirs.dims());
            let diff = max_diff(&ours, &theirs)?;
            assert!(diff < 1e-4, "forward k{k} s{s} p{p} {h}x{w_}: {diff}");
            let r = Tensor::randn(0f32, 1., ours.dims(), &dev)?;
            let grads = (&ours * &r)?.sum_all()?.backward()?;
            let (gx, gw, gb) =
                (grads.get(&x).expect("grad x"), grads.get(&w).expect("grad w"), grads.get(&bias).expect("grad b"));
            let x2 = Tensor::randn(0f32, 1., x.dims(), &dev)?;
            let w2 = Tensor::randn(0f32, 1., w.dims(), &dev)?;
            let (a, b_) = (dot(&x2.conv2d(&w, p, s, 1, 1)?, &r)?, dot(&x2, gx)?);
            assert!((a - b_).abs() < 1e-3 * a.abs().max(1.), "grad x k{k} s{s} p{p} {h}x{w_}: {a} vs {b_}");
            let (a, b_) = (dot(&x.conv2d(&w2, p, s, 1, 1)?, &r)?, dot(&w2, gw)?);
            assert!((a - b_).abs() < 1e-3 * a.abs().max(1.), "grad w k{k} s{s} p{p} {h}x{w_}: {a} vs {b_}");
            let want_b = r.sum((0, 2, 3))?;
            assert!(max_diff(gb, &want_b)? < 1e-3, "grad bias k{k} s{s} p{p}");
            if h == w_ {
                let theirs = (x.conv2d(&w, p, s, 1, 1)? * &r)?.sum_all()?.backward()?;
                for (name, v, ours) in [("x", &x, gx), ("w", &w, gw)] {
                    let diff = max_diff(ours, theirs.get(v).expect("grad"))?;
                    assert!(diff < 1e-3, "grad {name} vs candle k{k} s{s} p{p} {h}x{w_}: {diff}");
                }
            }
        }
        Ok(())
    }

    /// A frozen kernel gets no gradient and costs none; a frozen input neither; no
    /// bias is a zero bias.
    #[test]
    fn frozen_operands_get_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 5, 5), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (3, 2, 3, 3), &dev)?;
        let y = conv2d(&x, &w, None, 1, 1)?;
        assert!(max_diff(&y, &x.conv2d(&w, 1, 1, 1, 1)?)? < 1e-5);
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&x).is_some());
        assert!(g.get(&w).is_none());
        let x = Tensor::randn(0f32, 1., (1, 2, 5, 5), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 2, 3, 3), &dev)?)?;
        let g = conv2d(&x, &w, None, 1, 2)?.sum_all()?.backward()?;
        assert!(g.get(&w).is_some());
        assert!(g.get(&x).is_none());
        Ok(())
    }

    /// A non-contiguous input (a transposed view) is made contiguous first.
    #[test]
    fn strided_input_is_accepted() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 6, 5), &dev)?.transpose(2, 3)?;
        let w = Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?;
        let diff = max_diff(&conv2d(&x, &w, None, 1, 1)?, &x.conv2d(&w, 1, 1, 1, 1)?)?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}
