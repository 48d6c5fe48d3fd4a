//! Decoding state for generation: every layer's keys and values in buffers allocated
//! once for the whole request, plus the left padding of each row of a batch. A batch
//! shared by concurrent requests changes its rows as it runs: a prefilled request joins
//! it ([`KvCache::join`]) and a finished one leaves it ([`KvCache::remove_row`]).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Keys and values of every layer for the positions processed so far.
///
/// Buffers are `[batch, kv_heads, capacity, head_dim]`, allocated on first use and
/// written in place, so a decoding step copies only its own new keys and values.
/// Rows of a batch are left-padded to one length: row `i`'s first `pads[i]` positions
/// are padding that no query attends to, and its positions count from its first real
/// token (as transformers does with an attention mask).
///
/// The buffers may hold more rows than the batch (room for requests joining it) and
/// the batch's positions start at `start` in them (padding that every row shared was
/// trimmed); `len`, `pads` and positions all count from `start`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    capacity: usize,
    pads: Vec<usize>,
    start: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows without padding, holding up to `capacity` positions.
    pub fn new(batch: usize, capacity: usize) -> Self {
        Self::with_padding(vec![0; batch], capacity)
    }

    /// An empty cache whose row `i` starts with `pads[i]` padding positions.
    pub fn with_padding(pads: Vec<usize>, capacity: usize) -> Self {
        Self { layers: Vec::new(), len: 0, capacity, pads, start: 0 }
    }

    /// Positions processed so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold (padding included) before its buffers must grow.
    pub fn capacity(&self) -> usize {
        self.capacity - self.start
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
        if self.len + t > self.capacity() {
            return Err(Error::config(
                "cache",
                format!("{} + {t} positions exceed its capacity of {}", self.len, self.capacity()),
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
        // The batch's rows (the buffers may have room for more): a contiguous view.
        let b = self.pads.len();
        let (kb, vb) =
            if kb.dim(0)? == b { (kb.clone(), vb.clone()) } else { (kb.narrow(0, 0, b)?, vb.narrow(0, 0, b)?) };
        kb.slice_set(&k.contiguous()?, 2, self.start + self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.start + self.len)?;
        Ok((kb.narrow(2, self.start, self.len + t)?, vb.narrow(2, self.start, self.len + t)?))
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

    /// The buffers' shape (rows, positions) once `rows` requests join whose prefilled
    /// positions are at most `prompt` and that need up to `need` more positions (as do
    /// the rows already in; `need` is the largest): the current buffers when they fit
    /// in them, else new ones: exactly that for a batch that was empty or that a larger
    /// group joins (a burst of callers arriving one step after the first: they set the
    /// batch's size), with room for half as many rows and positions again otherwise (so
    /// that a stream of joining requests reallocates now and then, not at every join).
    pub(crate) fn joined_shape(&self, rows: usize, prompt: usize, need: usize) -> (usize, usize) {
        let have = self.pads.len();
        let len = self.len.max(prompt);
        match self.held_rows() {
            Some(held) if self.fits(rows, prompt, need) => (held, self.capacity),
            _ if have == 0 || rows > have => (have + rows, len + need),
            _ => (have + rows + have / 2, len + need + (len + need) / 2),
        }
    }

    /// Rows the buffers hold (`None` before the first pass).
    fn held_rows(&self) -> Option<usize> {
        self.layers.first().and_then(|l| l.as_ref()).and_then(|(k, _)| k.dim(0).ok())
    }

    /// Whether `rows` requests of at most `prompt` positions needing `need` more join
    /// without new buffers.
    fn fits(&self, rows: usize, prompt: usize, need: usize) -> bool {
        let len = self.len.max(prompt);
        let shift = len - self.len;
        self.held_rows().is_some_and(|held| self.pads.len() + rows <= held)
            && self.start >= shift
            && self.start - shift + len + need <= self.capacity
    }

    /// Adds rows `which` of `other` (requests prefilled together, left-padded, in a
    /// cache of their own) after this batch's rows, each left-padded to the batch's
    /// length (or the batch's rows padded further when a prompt is longer); `need`: as
    /// in [`KvCache::joined_shape`].
    pub(crate) fn join(&mut self, other: &KvCache, which: &[usize], need: usize) -> Result<()> {
        let live = |r: &usize| other.pads.get(*r).map(|pad| other.len - pad).filter(|&p| p > 0);
        let lens = which.iter().map(live).collect::<Option<Vec<usize>>>();
        let Some(lens) = lens.filter(|_| !other.is_empty()) else {
            return Err(Error::Internal("only prefilled rows of a cache can join a batch".into()));
        };
        if !self.layers.is_empty() && self.layers.len() != other.layers.len() {
            return Err(Error::Internal("joining caches of different models".into()));
        }
        let (p, rows) = (lens.iter().copied().max().unwrap_or(0), self.pads.len());
        let len = self.len.max(p);
        let shift = len - self.len;
        if self.fits(which.len(), p, need) {
            self.start -= shift;
        } else {
            let (want_rows, want_positions) = self.joined_shape(which.len(), p, need);
            self.reallocate(other, want_rows, want_positions, shift)?;
        }
        for pad in &mut self.pads {
            *pad += shift;
        }
        self.len = len;
        for (n, (&r, &p)) in which.iter().zip(&lens).enumerate() {
            let at = self.start + len - p;
            let from = other.start + other.pads[r];
            for (mine, theirs) in self.layers.iter().zip(&other.layers) {
                let (Some((kb, vb)), Some((ok, ov))) = (mine, theirs) else {
                    return Err(Error::Internal("kv cache buffer missing".into()));
                };
                let src = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, r, 1)?.narrow(2, from, p)?.contiguous()?) };
                kb.narrow(0, rows + n, 1)?.slice_set(&src(ok)?, 2, at)?;
                vb.narrow(0, rows + n, 1)?.slice_set(&src(ov)?, 2, at)?;
            }
            self.pads.push(len - p);
        }
        Ok(())
    }

    /// New buffers of `rows` x `positions` (layer shapes from `like`) holding the batch's
    /// rows, their positions moved to start at `shift`.
    fn reallocate(&mut self, like: &KvCache, rows: usize, positions: usize, shift: usize) -> Result<()> {
        let mut layers = Vec::with_capacity(like.layers.len());
        for (i, theirs) in like.layers.iter().enumerate() {
            let Some((ok, ov)) = theirs else {
                return Err(Error::Internal("kv cache buffer missing".into()));
            };
            let grow = |t: &Tensor| -> Result<Tensor> {
                let (_, kv, _, d) = t.dims4()?;
                Ok(Tensor::zeros((rows, kv, positions, d), t.dtype(), t.device())?)
            };
            let (kb, vb) = (grow(ok)?, grow(ov)?);
            if let Some(Some((old_k, old_v))) = self.layers.get(i).filter(|_| self.len > 0 && !self.pads.is_empty()) {
                let b = self.pads.len();
                let live = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, 0, b)?.narrow(2, self.start, self.len)?.contiguous()?)
                };
                kb.narrow(0, 0, b)?.slice_set(&live(old_k)?, 2, shift)?;
                vb.narrow(0, 0, b)?.slice_set(&live(old_v)?, 2, shift)?;
            }
            layers.push(Some((kb, vb)));
        }
        self.layers = layers;
        self.capacity = positions;
        self.start = 0;
        Ok(())
    }

    /// Drops row `i` (the last row takes its place) and the padding every remaining row
    /// shares, so attention no longer scans positions no row needs.
    pub(crate) fn remove_row(&mut self, i: usize) -> Result<()> {
        let last =
            self.pads.len().checked_sub(1).filter(|&l| i <= l).ok_or_else(|| {
                Error::Internal(format!("kv cache has {} rows, cannot remove row {i}", self.pads.len()))
            })?;
        if i != last {
            for (kb, vb) in self.layers.iter().flatten() {
                kb.slice_set(&kb.narrow(0, last, 1)?.copy()?, 0, i)?;
                vb.slice_set(&vb.narrow(0, last, 1)?.copy()?, 0, i)?;
            }
        }
        self.pads.swap_remove(i);
        let shared = self.pads.iter().copied().min().unwrap_or(0);
        if self.pads.is_empty() {
            *self = KvCache::default();
        } else if shared > 0 {
            for pad in &mut self.pads {
                *pad -= shared;
            }
            self.start += shared;
            self.len -= shared;
        }
        Ok(())
    }
}
