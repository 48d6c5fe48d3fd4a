//! Decoding state for generation: every layer's keys and values in buffers allocated
//! once for the whole request, plus the left padding of each row of a batch.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys and values of every layer for the positions processed so far.
///
/// Buffers are `[batch, kv_heads, capacity, head_dim]`, allocated on first use and
/// written in place, so a decoding step copies only its own new keys and values.
/// Rows of a batch are left-padded to one length: row `i`'s first `pads[i]` positions
/// are padding that no query attends to, and its positions count from its first real
/// token (as transformers does with an attention mask).
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    capacity: usize,
    pads: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` rows without padding, holding up to `capacity` positions.
    pub fn new(batch: usize, capacity: usize) -> Self {
        Self::with_padding(vec![0; batch], capacity)
    }

    /// An empty cache whose row `i` starts with `pads[i]` padding positions.
    pub fn with_padding(pads: Vec<usize>, capacity: usize) -> Self {
        Self { layers: Vec::new(), len: 0, capacity, pads }
    }

    /// Positions processed so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.pads.len()
    }

    /// Padding positions at the start of each row.
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }

    pub(crate) fn has_padding(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }

    /// Checks that `t` more positions for `batch` rows fit.
    pub(crate) fn check(&self, batch: usize, t: usize) -> Result<()> {
        if batch != self.batch() {
            return Err(Error::config("cache", format!("holds {} rows, the input has {batch}", self.batch())));
        }
        if self.len + t > self.capacity {
            return Err(Error::config(
                "cache",
                format!("{} + {t} positions exceed its capacity of {}", self.len, self.capacity),
            ));
        }
        Ok(())
    }

    /// Writes layer `layer`'s new keys and values (`[b, kv, t, d]`) after the cached
    /// ones and returns views of all of them (`[b, kv, len + t, d]`).
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let t = k.dim(2)?;
        let entry = &mut self.layers[layer];
        if entry.is_none() {
            let (b, kv, _, d) = k.dims4()?;
            let kb = Tensor::zeros((b, kv, self.capacity, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, kv, self.capacity, v.dim(3)?), v.dtype(), v.device())?;
            *entry = Some((kb, vb));
        }
        let Some((kb, vb)) = entry.as_ref() else {
            return Err(Error::Internal("kv cache buffer missing".into()));
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((kb.narrow(2, 0, self.len + t)?, vb.narrow(2, 0, self.len + t)?))
    }

    /// Marks `t` positions as processed (after every layer has appended them).
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Position ids `[b * t]` (row-major) of the next `t` positions: counted from each
    /// row's first real token; padding positions get 0.
    pub(crate) fn positions(&self, t: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.pads.len() * t);
        for &pad in &self.pads {
            out.extend((self.len..self.len + t).map(|p| p.saturating_sub(pad)));
        }
        out
    }
}
