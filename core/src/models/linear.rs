//! A linear layer that can carry a LoRA adapter: `y = x W^T + b + scale * (drop(x) A^T) B^T`.
//!
//! The base weight is a plain `Tensor` (frozen, no gradient) unless the model was
//! loaded for full fine-tuning, in which case it is a `Var`'s tensor; or, for
//! inference, q8_0 blocks or bf16 values only ([`Weight::Quant`]: quantized at load
//! time, or read from a GGUF file), with no dense copy beside them. A and B are `Var`s.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use super::{bgemm, fused, gemv, sgemm};
use crate::error::{Error, Result};

/// A LoRA adapter on one linear layer, in PEFT's layout: A is `[r, in]`, B `[out, r]`.
#[derive(Debug, Clone)]
pub(crate) struct LoraAdapter {
    pub(crate) a: Var,
    pub(crate) b: Var,
    pub(crate) scale: f64,
    pub(crate) dropout: f32,
    /// The delta is folded into the base weight; the forward skips the adapter.
    pub(crate) merged: bool,
}

/// The weight of a linear layer.
#[derive(Debug, Clone)]
pub(crate) enum Weight {
    /// `[out, in]`, or `[in, out]` for a Conv1D layer (see [`Linear::conv1d`]).
    Dense(Tensor),
    /// `[out, in]` as q8_0 blocks or bf16 values (inference only).
    Quant(Arc<gemv::QuantWeight>),
}

/// A linear layer. `conv1d` marks GPT-2's Conv1D layout (weight stored `[in, out]`).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Weight,
    pub(crate) bias: Option<Tensor>,
    pub(crate) conv1d: bool,
    pub(crate) lora: Option<LoraAdapter>,
    /// A Conv1D weight held transposed (`[out, in]`) for inference; saved back as `[in, out]`.
    pub(crate) transposed: bool,
    /// Mixed precision: the training forward's products (and their backward) multiply
    /// in bf16 and sum in f32; the weights stay f32.
    pub(crate) bf16: bool,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, conv1d: bool) -> Self {
        Self { weight: Weight::Dense(weight), bias, conv1d, lora: None, transposed: false, bf16: false }
    }

    /// A quantized layer (inference only); `transposed`: a Conv1D module held `[out, in]`.
    pub(crate) fn quant(weight: Arc<gemv::QuantWeight>, bias: Option<Tensor>, transposed: bool) -> Self {
        Self { weight: Weight::Quant(weight), bias, conv1d: false, lora: None, transposed, bf16: false }
    }

    /// The dense weight (an internal error for a quantized layer).
    pub(crate) fn dense(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Dense(t) => Ok(t),
            Weight::Quant(q) => {
                Err(Error::Internal(format!("a {} linear layer has no dense weight", q.format().name())))
            }
        }
    }

    /// The quantized weight, if the layer holds one.
    pub(crate) fn quantized(&self) -> Option<&Arc<gemv::QuantWeight>> {
        match &self.weight {
            Weight::Quant(q) => Some(q),
            Weight::Dense(_) => None,
        }
    }

    /// Holds a Conv1D weight as `[out, in]` (each output a contiguous row: the layout
    /// the decoding kernel streams fastest). Inference only: the weight stops being a
    /// trainable variable.
    pub(crate) fn hold_row_major(&mut self) -> Result<()> {
        if let (true, Weight::Dense(w)) = (self.conv1d, &self.weight) {
            self.weight = Weight::Dense(w.detach().t()?.contiguous()?);
            self.conv1d = false;
            self.transposed = true;
        }
        Ok(())
    }

    /// Replaces a dense weight by its quantization to `q` (inference only; after
    /// [`Linear::hold_row_major`]). For q8_0, layers whose input size is not a multiple
    /// of 32 stay dense; a layer already quantized stays as it is.
    pub(crate) fn quantize(&mut self, q: gemv::Quant) -> Result<()> {
        let (in_f, _) = self.features()?;
        let Weight::Dense(w) = &self.weight else { return Ok(()) };
        if self.conv1d || !q.fits(in_f) {
            return Ok(());
        }
        let w = gemv::QuantWeight::quantize(w, q)?;
        self.weight = Weight::Quant(Arc::new(w));
        Ok(())
    }

    /// The weight in its file layout (Conv1D `[in, out]` again if held transposed); a
    /// quantized weight dequantized to f32.
    pub(crate) fn stored_weight(&self) -> Result<Tensor> {
        let w = match &self.weight {
            Weight::Dense(w) => w.clone(),
            Weight::Quant(q) => {
                let (in_f, out_f) = q.features();
                Tensor::from_vec(q.to_f32(), (out_f, in_f), &candle_core::Device::Cpu)?
            }
        };
        Ok(if self.transposed { w.t()?.contiguous()? } else { w })
    }

    /// (in_features, out_features).
    pub(crate) fn features(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Quant(q) => Ok(q.features()),
            Weight::Dense(w) => {
                let (d0, d1) = w.dims2()?;
                Ok(if self.conv1d { (d0, d1) } else { (d1, d0) })
            }
        }
    }

    /// `x`: `[..., in]` -> `[..., out]`. `train` turns LoRA dropout on.
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, false)
    }

    /// [`Linear::forward`] for an activation inside a model's training forward that no
    /// caller sees: on the fused path its buffer is released by the backward once every
    /// reader's backward has run (`fused::release`), not kept until the backward ends.
    pub(crate) fn forward_internal(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, true)
    }

    fn forward_with(&self, x: &Tensor, train: bool, release: bool) -> Result<Tensor> {
        let (in_f, out_f) = self.features()?;
        let dims = x.dims().to_vec();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::Internal("linear layer input is a scalar".into()));
        };
        if last != in_f {
            return Err(Error::Internal(format!("linear layer expects {in_f} input features, got {last}")));
        }
        let n: usize = lead.iter().product();
        let x2 = x.reshape((n, in_f))?;
        let fused = match &self.weight {
            Weight::Dense(w) => {
                train && fused::usable(x) && fused::usable(w) && self.bias.as_ref().is_none_or(fused::usable)
            }
            Weight::Quant(_) => false,
        };
        // The first three paths add the bias themselves: training on the CPU (one node
        // with its own backward) and the products for a few rows at inference.
        let bias = self.bias.as_ref();
        let (mut y, biased) = match &self.weight {
            Weight::Dense(w) if fused => (fused::LinearOp::apply(x, w, bias, (self.conv1d, release), self.bf16)?, true),
            Weight::Quant(q) => (q.matmul(&x2, bias)?, true),
            Weight::Dense(w) if !train && !w.is_variable() && gemv::usable(&x2, w) => {
                (gemv::matmul(&x2, w, self.conv1d, bias)?, true)
            }
            // Mixed precision off the CPU: candle's bf16 matmul.
            Weight::Dense(w) if train && self.bf16 => {
                (bgemm::mm(&x2, &if self.conv1d { w.clone() } else { w.t()? })?, false)
            }
            // Outside autograd, the gemm directly (`sgemm::mm`).
            Weight::Dense(w) if self.conv1d => (sgemm::mm(&x2, w)?, false),
            Weight::Dense(w) => (sgemm::mm(&x2, &w.t()?)?, false),
        };
        if let (Some(b), false) = (bias, biased) {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = self.lora.as_ref().filter(|l| !l.merged) {
            let xd = if train && l.dropout > 0.0 { candle_nn::ops::dropout(&x2, l.dropout)? } else { x2 };
            let (a, b) = (l.a.as_tensor(), l.b.as_tensor());
            // The scale is applied to the rank-r middle (`scale * (x A^T) B^T`), an
            // n x r product instead of n x out.
            let delta = if [&xd, a, b].iter().all(|t| fused::usable(t)) {
                // f32 on the CPU: the two products as linear nodes (their own backward,
                // the gemm directly), in training as in inference.
                let bf16 = train && self.bf16;
                let h = (fused::LinearOp::apply(&xd, a, None, (false, false), bf16)? * l.scale)?;
                fused::LinearOp::apply(&h, b, None, (false, false), bf16)?
            } else if train && self.bf16 {
                bgemm::mm(&(bgemm::mm(&xd, &a.t()?)? * l.scale)?, &b.t()?)?
            } else {
                (xd.matmul(&a.t()?)? * l.scale)?.matmul(&b.t()?)?
            };
            let delta = delta.reshape(y.shape())?;
            y = (y + delta)?;
        }
        let mut out_dims = lead.to_vec();
        out_dims.push(out_f);
        if y.dims() == out_dims.as_slice() {
            return Ok(y);
        }
        Ok(y.reshape(out_dims)?)
    }

    /// `scale * B A` in the weight's own layout.
    fn delta(&self, l: &LoraAdapter) -> Result<Tensor> {
        let d = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
        let d = if self.conv1d { d.t()?.contiguous()? } else { d };
        Ok(d.to_dtype(self.dense().map_or(DType::F32, Tensor::dtype))?)
    }

    /// Folds the adapter into the weight (W + scale * B A). No-op without an adapter.
    pub(crate) fn merge(&mut self) -> Result<()> {
        if let Some(l) = self.lora.as_ref().filter(|l| !l.merged) {
            let Weight::Dense(w) = &self.weight else {
                return Err(Error::config(
                    "adapter",
                    "cannot merge an adapter into quantized (q8_0 / bf16) weights; merge before quantizing",
                ));
            };
            self.weight = Weight::Dense((w.detach() + self.delta(l)?)?);
            if let Some(l) = self.lora.as_mut() {
                l.merged = true;
            }
        }
        Ok(())
    }

    /// Undoes [`Linear::merge`].
    pub(crate) fn unmerge(&mut self) -> Result<()> {
        if let Some(l) = self.lora.as_ref().filter(|l| l.merged) {
            let Weight::Dense(w) = &self.weight else {
                return Err(Error::config("adapter", "cannot unmerge an adapter from quantized (q8_0 / bf16) weights"));
            };
            self.weight = Weight::Dense((w.detach() - self.delta(l)?)?);
            if let Some(l) = self.lora.as_mut() {
                l.merged = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::Device;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn lora_math_on_2x3_and_merge_round_trip() {
        let dev = Device::Cpu;
        // W: [out 2, in 3]
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let a = Var::new(&[[0.5f32, -1., 2.]], &dev).unwrap(); // [r 1, in 3]
        let b = Var::new(&[[2f32], [-1.]], &dev).unwrap(); // [out 2, r 1]
        let x = Tensor::new(&[[1f32, 0., 1.]], &dev).unwrap();
        for conv1d in [false, true] {
            let weight = if conv1d { w.t().unwrap().contiguous().unwrap() } else { w.clone() };
            let mut lin = Linear::new(weight, None, conv1d);
            lin.lora = Some(LoraAdapter { a: a.clone(), b: b.clone(), scale: 2.0, dropout: 0.0, merged: false });
            // x W^T = [4, 10]; x A^T = 2.5; (.) B^T = [5, -2.5]; * 2 = [10, -5].
            let want = Tensor::new(&[[14f32, 5.]], &dev).unwrap();
            let y = lin.forward(&x, true).unwrap();
            assert!(close(&y, &want) < 1e-6);
            lin.merge().unwrap();
            assert!(close(&lin.forward(&x, false).unwrap(), &want) < 1e-6);
            lin.unmerge().unwrap();
            let base = if conv1d { w.t().unwrap() } else { w.clone() };
            assert!(close(lin.dense().unwrap(), &base) < 1e-6);
        }
    }

    /// `t` with every value rounded to the nearest bf16.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
    }

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Mixed precision: every product of the training forward and its backward takes
    /// bf16-rounded operands and sums in f32 (the base layer with its bias, and both
    /// LoRA products), checked against the same products on rounded f32 tensors.
    #[test]
    fn bf16_training_products_round_their_operands_forward_and_backward() {
        let mm = |a: &Tensor, b: &Tensor| rounded(a).matmul(&rounded(b)).unwrap();
        let (n, i, o, r, scale) = (37, 40, 24, 4, 2.0);
        let x = Var::from_tensor(&seeded(&[n, i], 1)).unwrap();
        let w = Var::from_tensor(&seeded(&[o, i], 2)).unwrap();
        let bias = Var::from_tensor(&seeded(&[o], 3)).unwrap();
        let a = Var::from_tensor(&seeded(&[r, i], 4)).unwrap();
        let b = Var::from_tensor(&seeded(&[o, r], 5)).unwrap();
        let c = seeded(&[n, o], 6);
        let mut lin = Linear::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()), false);
        lin.lora = Some(LoraAdapter { a: a.clone(), b: b.clone(), scale, dropout: 0.0, merged: false });
        lin.bf16 = true;
        let y = lin.forward(x.as_tensor(), true).unwrap();
        let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();

        let (xt, wt, at, bt) = (x.as_tensor(), w.as_tensor(), a.as_tensor(), b.as_tensor());
        let h = (mm(xt, &at.t().unwrap()) * scale).unwrap();
        let want =
            ((mm(xt, &wt.t().unwrap()).broadcast_add(bias.as_tensor()).unwrap()) + mm(&h, &bt.t().unwrap())).unwrap();
        assert!(close(&y, &want) < 2e-6, "forward {}", close(&y, &want));
        // The same layer in f32 differs by the rounding: the check above can tell them apart.
        lin.bf16 = false;
        assert!(close(&lin.forward(xt, true).unwrap(), &want) > 1e-4);

        let dh = (mm(&c, bt) * scale).unwrap();
        let want_dx = (mm(&c, wt) + mm(&dh, at)).unwrap();
        let checks = [
            ("x", grads.get(xt).unwrap().clone(), want_dx),
            ("weight", grads.get(wt).unwrap().clone(), mm(&c.t().unwrap(), xt)),
            ("bias", grads.get(bias.as_tensor()).unwrap().clone(), c.sum(0).unwrap()),
            ("lora_B", grads.get(bt).unwrap().clone(), mm(&c.t().unwrap(), &h)),
            ("lora_A", grads.get(at).unwrap().clone(), mm(&dh.t().unwrap(), xt)),
        ];
        for (name, got, want) in checks {
            assert!(close(&got, &want) < 2e-6, "d{name}: {}", close(&got, &want));
        }
    }
}
