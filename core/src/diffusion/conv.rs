//! A 2D convolution for the training path with a backward made of fast ops.
//!
//! candle's own `conv2d` backward computes the input gradient with `conv_transpose2d`,
//! whose CPU kernel is a dot product per output pixel (no im2col, no gemm), and always
//! computes the kernel gradient, even for a frozen kernel (a LoRA run's convolutions).
//! On the tiny-shapes UNet these two took most of a training step. [`Conv2dOp`] keeps
//! candle's forward kernel (tiled im2col + gemm) and has its own backward:
//!
//! - input gradient (only when the input needs one): the correlation of the output
//!   gradient, dilated by the stride (zeros in between) and padded by `k - 1 - p`, with
//!   the kernel flipped in both spatial dims and its in/out channels swapped. That is a
//!   stride-1 `conv2d`, so it runs on the same im2col + gemm kernel as the forward;
//! - kernel gradient (only when the kernel needs one, i.e. it is a `Var` or computed
//!   from one): per kernel offset, the strided window of the padded input; the `k * k`
//!   windows stacked are the im2col matrix, and the gradient is one batched matmul of
//!   the output gradient with it, summed over the batch.
//!
//! It applies to f32 tensors on the CPU with `padding < kernel` (every convolution of the
//! UNet and the VAE); anything else goes through candle's `conv2d` unchanged.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::models::fused;

/// `conv2d(x, w)` with [`Conv2dOp`]'s backward where it applies, else candle's.
pub(crate) fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let usable = fused::usable(x) && fused::usable(w) && kh == kw && padding < kh && stride >= 1;
    if !usable || !(x.track_op() || w.track_op()) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    // candle's forward kernel (its parameters cannot be built outside candle), on
    // detached operands; the op below hands its result to the graph.
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    x.apply_op2(w, Conv2dOp { padding, stride, out: Mutex::new(Some(y)) })
}

/// See the module docs. `out` holds the forward's result until the graph takes it.
pub(crate) struct Conv2dOp {
    padding: usize,
    stride: usize,
    out: Mutex<Option<Tensor>>,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "anneal-conv2d"
    }

    fn cpu_fwd(&self, _s1: &CpuStorage, _l1: &Layout, _s2: &CpuStorage, _l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match self.out.lock() {
            Ok(mut out) => out.take(),
            Err(_) => None,
        };
        let Some(y) = y else { bail!("anneal-conv2d: the forward result was already taken") };
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = if x.track_op() { Some(self.input_grad(x, w, grad)?) } else { None };
        let grad_w = if w.track_op() { Some(self.kernel_grad(x, w, grad)?) } else { None };
        Ok((grad_x, grad_w))
    }
}

impl Conv2dOp {
    fn input_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, k, _) = w.dims4()?;
        let (s, p) = (self.stride, self.padding);
        let g = if s > 1 { dilate(grad, s)? } else { grad.clone() };
        let (_, _, gh, gw) = g.dims4()?;
        // Left pad k - 1 - p; right pad so that the result is h x w (p < k, and the
        // forward's size rule makes the right pad at least k - 1 - p).
        let g = g.pad_with_zeros(2, k - 1 - p, h + p - gh)?.pad_with_zeros(3, k - 1 - p, wd + p - gw)?;
        let w_t = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        g.conv2d(&w_t, 0, 1, 1, 1)
    }

    fn kernel_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (b, c_in, _, _) = x.dims4()?;
        let (c_out, _, k, _) = w.dims4()?;
        let (_, _, oh, ow) = grad.dims4()?;
        let (s, p) = (self.stride, self.padding);
        let cols = if k == 1 && s == 1 && p == 0 {
            x.reshape((b, c_in, oh * ow))?
        } else {
            let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            let mut windows = Vec::with_capacity(k * k);
            for ky in 0..k {
                let rows = window(&xp, 2, ky, oh, s)?;
                for kx in 0..k {
                    windows.push(window(&rows, 3, kx, ow, s)?);
                }
            }
            Tensor::stack(&windows, 2)?.reshape((b, c_in * k * k, oh * ow))?
        };
        let g = grad.contiguous()?.reshape((b, c_out, oh * ow))?;
        g.matmul(&cols.transpose(1, 2)?)?.sum(0)?.reshape((c_out, c_in, k, k))
    }
}

/// Positions `start, start + s, ..` (`n` of them) of `x` along `dim`.
fn window(x: &Tensor, dim: usize, start: usize, n: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return x.narrow(dim, start, n);
    }
    let ids: Vec<u32> = (0..n).map(|i| (start + i * s) as u32).collect();
    x.index_select(&Tensor::new(ids, x.device())?, dim)
}

/// Inserts `s - 1` zeros between neighbouring pixels: `[b, c, h, w]` ->
/// `[b, c, (h - 1) s + 1, (w - 1) s + 1]`.
fn dilate(g: &Tensor, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = g.dims4()?;
    let zeros = g.zeros_like()?;
    let mut parts = vec![g.clone()];
    parts.extend(std::iter::repeat_n(zeros, s - 1));
    // Along w: [b, c, h, w, s] -> [b, c, h, w s].
    let gw = Tensor::stack(&parts, 4)?.reshape((b, c, h, w * s))?.narrow(3, 0, (w - 1) * s + 1)?;
    let wd = (w - 1) * s + 1;
    let zeros = gw.zeros_like()?;
    let mut parts = vec![gw];
    parts.extend(std::iter::repeat_n(zeros, s - 1));
    // Along h: [b, c, h, s, wd] -> [b, c, h s, wd].
    Tensor::stack(&parts, 3)?.reshape((b, c, h * s, wd))?.narrow(2, 0, (h - 1) * s + 1)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn dot(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a * b)?.sum_all()?.to_scalar::<f32>()
    }

    /// The gradients of `sum(conv(x, w) * r)` through [`Conv2dOp`] are the adjoints of
    /// the convolution (it is linear in each operand): `<conv(x', w), r> = <x', gx>` and
    /// `<conv(x, w'), r> = <w', gw>` for any `x'`, `w'`; for every stride and padding
    /// the UNet and the VAE use, and sizes the stride does not divide. On square
    /// inputs they also equal candle's own backward (which is exact there, only slow; on
    /// non-square inputs with stride 2 its input gradient has the wrong width).
    #[test]
    fn backward_is_the_adjoint_and_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for &(k, s, p, h, w_) in &[
            (3, 1, 1, 8, 9),
            (3, 2, 1, 8, 9),
            (3, 2, 0, 9, 8),
            (1, 1, 0, 6, 7),
            (3, 2, 1, 7, 7),
            (3, 1, 0, 5, 6),
            (3, 2, 1, 8, 8),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, h, w_), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3, k, k), &dev)?)?;
            let ours = conv2d(&x, &w, p, s)?;
            let theirs = x.conv2d(&w, p, s, 1, 1)?;
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "forward k{k} s{s} p{p}: {diff}");
            let r = Tensor::randn(0f32, 1., ours.dims(), &dev)?;
            let grads = (ours * &r)?.sum_all()?.backward()?;
            let (gx, gw) = (grads.get(&x).expect("grad x"), grads.get(&w).expect("grad w"));
            let x2 = Tensor::randn(0f32, 1., x.dims(), &dev)?;
            let w2 = Tensor::randn(0f32, 1., w.dims(), &dev)?;
            let (a, b) = (dot(&x2.conv2d(&w, p, s, 1, 1)?, &r)?, dot(&x2, gx)?);
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.), "grad x k{k} s{s} p{p} {h}x{w_}: {a} vs {b}");
            let (a, b) = (dot(&x.conv2d(&w2, p, s, 1, 1)?, &r)?, dot(&w2, gw)?);
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.), "grad w k{k} s{s} p{p} {h}x{w_}: {a} vs {b}");
            if h == w_ {
                let theirs = (x.conv2d(&w, p, s, 1, 1)? * &r)?.sum_all()?.backward()?;
                for (name, v, ours) in [("x", &x, gx), ("w", &w, gw)] {
                    let diff = (ours - theirs.get(v).expect("grad"))?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(diff < 1e-4, "grad {name} vs candle k{k} s{s} p{p} {h}x{w_}: {diff}");
                }
            }
        }
        Ok(())
    }

    /// A frozen kernel gets no gradient and costs none; a frozen input neither.
    #[test]
    fn frozen_operands_get_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 5, 5), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (3, 2, 3, 3), &dev)?;
        let g = conv2d(&x, &w, 1, 1)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_some());
        assert!(g.get(&w).is_none());
        let x = Tensor::randn(0f32, 1., (1, 2, 5, 5), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 2, 3, 3), &dev)?)?;
        let g = conv2d(&x, &w, 1, 2)?.sum_all()?.backward()?;
        assert!(g.get(&w).is_some());
        assert!(g.get(&x).is_none());
        Ok(())
    }
}
