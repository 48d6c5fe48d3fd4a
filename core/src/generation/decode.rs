//! Continuous batching: the one decoding loop behind `generate`, `stream` and
//! `generate_batch`. Every request on one adapter of a [`Generator`] shares one
//! decoding batch (a lane): requests arriving while others decode are prefilled at the
//! next step, together in one left-padded pass (one by one when they do not fit in
//! memory together), and their keys and values join the batch's cache; every step then
//! runs one forward pass for all rows (the weights are read once per step, not once per
//! request); a finished, cancelled or dropped request leaves at the next step. Each row
//! keeps its own settings and sampler, so it produces exactly what it would alone.
//!
//! There is no background thread: whoever waits drives. The lanes sit behind one
//! mutex; a caller whose request has nothing new and whose lane is idle takes the lane
//! out, runs one step without the lock and puts it back, while the others wait, each
//! on its own condition variable. After a step the driver wakes the callers with news
//! they look at (a result; each step's tokens for a stream or a caller reporting
//! progress) and, when it goes back to its own caller while the lane has work left,
//! one other caller of the lane to drive the next step; it keeps driving itself while
//! its own request has nothing to hand back. So 32 concurrent `generate` calls do not
//! wake 31 threads after every step of their shared batch. A step that fails or
//! panics hands an error to every request it held (waking everyone), never a hang.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::sampling::Sampler;
use super::text::TextTracker;
use super::{Generator, Resolved};
use crate::error::{Error, Result};
use crate::events::CancelToken;
use crate::models::{memory, KvCache};
use crate::tokenizer::Tokenizer;
use crate::types::{FinishReason, StreamChunk};

/// How often a caller waiting on another's step looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Decoding state of one request's row.
struct RowState {
    sampler: Sampler,
    tracker: TextTracker,
    prompt_len: usize,
    seen: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
}

impl RowState {
    fn new(ids: Vec<u32>, r: &Resolved, tokenizer: Option<Tokenizer>) -> Self {
        Self {
            sampler: Sampler::new(r),
            tracker: TextTracker::new(tokenizer, r.stop.clone()),
            prompt_len: ids.len(),
            seen: ids,
            generated: Vec::new(),
            text: String::new(),
            finish: None,
        }
    }

    /// Samples a token from `logits` and takes it; returns the text it released.
    fn sample(&mut self, logits: &mut [f32], eos: &[u32], r: &Resolved, max_new: usize) -> Result<Option<StreamChunk>> {
        let tok = self.sampler.next(logits, &self.seen);
        self.generated.push(tok);
        self.seen.push(tok);
        let eos = !r.ignore_eos && eos.contains(&tok);
        let mut chunk = None;
        if !eos {
            if let Some(p) = self.tracker.push(tok)? {
                self.text.push_str(&p.text);
                chunk = Some(StreamChunk { text: p.text, token_ids: p.token_ids });
            }
        }
        if eos {
            self.finish = Some(FinishReason::Eos);
        } else if self.tracker.stopped.is_some() {
            self.finish = Some(FinishReason::Stop);
        } else if self.generated.len() >= max_new {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() && self.finish != Some(FinishReason::Stop) {
            if let Some(p) = self.tracker.finish()? {
                self.text.push_str(&p.text);
                let merged = match chunk.take() {
                    Some(mut c) => {
                        c.text.push_str(&p.text);
                        c.token_ids.extend(p.token_ids);
                        c
                    }
                    None => StreamChunk { text: p.text, token_ids: p.token_ids },
                };
                chunk = Some(merged);
            }
        }
        Ok(chunk)
    }
}

/// What a finished row produced; times count from its request's start.
#[derive(Debug, Clone)]
pub(super) struct Finished {
    pub(super) prompt_len: usize,
    pub(super) generated: Vec<u32>,
    pub(super) text: String,
    pub(super) finish: FinishReason,
    pub(super) stop_sequence: Option<String>,
    pub(super) ttft: Duration,
    pub(super) end: Duration,
}

/// A request waiting to join its lane's batch.
struct Join {
    id: u64,
    ids: Vec<u32>,
    cfg: Arc<Resolved>,
    max_new: usize,
    t0: Instant,
}

/// A row of a running batch.
struct Row {
    id: u64,
    state: RowState,
    cfg: Arc<Resolved>,
    max_new: usize,
    t0: Instant,
    ttft: Duration,
    /// The token the next pass feeds.
    last: u32,
}

impl Row {
    /// Positions it may still feed after the ones cached.
    fn need(&self) -> usize {
        self.max_new - self.state.generated.len()
    }

    fn finished(self, end: Duration) -> Finished {
        let s = self.state;
        Finished {
            prompt_len: s.prompt_len,
            generated: s.generated,
            text: s.text,
            finish: s.finish.unwrap_or(FinishReason::Length),
            stop_sequence: s.tracker.stopped,
            ttft: self.ttft,
            end,
        }
    }
}

/// The rows decoding together and their cache.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
}

impl Batch {
    fn remove(&mut self, i: usize) -> Result<Row> {
        self.cache.remove_row(i)?;
        Ok(self.rows.swap_remove(i))
    }
}

/// Requests on one adapter.
#[derive(Default)]
struct Lane {
    pending: Vec<Join>,
    batch: Batch,
    /// A caller is running a step on `batch` (taken out of the lane meanwhile).
    driving: bool,
}

impl Lane {
    fn idle(&self) -> bool {
        !self.driving && self.pending.is_empty() && self.batch.rows.is_empty()
    }
}

/// What a request got since its owner last looked.
#[derive(Default)]
struct Slot {
    /// The [`Request`] (its [`Waiter`]) that owns it.
    owner: u64,
    chunks: Vec<StreamChunk>,
    generated: usize,
    /// Whether `generated` or `chunks` changed since the owner last looked.
    fresh: bool,
    done: Option<Result<Finished>>,
}

/// A [`Request`]'s caller, as the drivers see it.
struct Waiter {
    /// Where its thread waits (with the lanes' mutex).
    cv: Arc<Condvar>,
    adapter: Option<String>,
    /// It looks at every step's news, not only at results.
    watch: bool,
}

#[derive(Default)]
struct Lanes {
    lanes: HashMap<Option<String>, Lane>,
    slots: HashMap<u64, Slot>,
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
}

impl Lanes {
    /// Wakes every waiting caller (a lane failed, a step panicked, the test hold).
    fn wake_all(&self) {
        for w in self.waiters.values() {
            w.cv.notify_all();
        }
    }

    /// Wakes the owners of `updated` that look at what they got and, if `successor`
    /// (the driver goes back to its caller), a caller to drive the lane's next step
    /// ([`Lanes::wake_driver`]). Returns how many it woke.
    fn wake_after_step(
        &self,
        updated: &[(u64, bool)],
        adapter: &Option<String>,
        driver: u64,
        successor: bool,
    ) -> usize {
        let mut woken = Vec::new();
        for &(id, done) in updated {
            let Some(owner) = self.slots.get(&id).map(|s| s.owner) else {
                continue;
            };
            if owner == driver || woken.contains(&owner) {
                continue;
            }
            if let Some(w) = self.waiters.get(&owner).filter(|w| w.watch || done) {
                w.cv.notify_all();
                woken.push(owner);
            }
        }
        match successor.then(|| self.wake_driver(adapter, Some(driver))).flatten() {
            Some(k) if !woken.contains(&k) => woken.len() + 1,
            _ => woken.len(),
        }
    }

    /// If `adapter`'s lane has work and nobody drives it, wakes one of its callers
    /// (other than `except`) to drive the next step, one that does not look at every
    /// step's news first (it drives at once) if there is one. Returns whom it woke.
    fn wake_driver(&self, adapter: &Option<String>, except: Option<u64>) -> Option<u64> {
        if self.lanes.get(adapter).is_none_or(|l| l.driving || l.idle()) {
            return None;
        }
        let others = self.waiters.iter().filter(|(k, w)| Some(**k) != except && w.adapter == *adapter);
        let (k, w) = others.clone().find(|(_, w)| !w.watch).or_else(|| others.clone().next())?;
        w.cv.notify_all();
        Some(*k)
    }

    /// Drops the rows and joins of requests that left (their slot is gone).
    fn prune(&mut self, adapter: &Option<String>) -> Result<()> {
        let Some(lane) = self.lanes.get_mut(adapter) else {
            return Ok(());
        };
        lane.pending.retain(|j| self.slots.contains_key(&j.id));
        if !lane.driving {
            for i in (0..lane.batch.rows.len()).rev() {
                if !self.slots.contains_key(&lane.batch.rows[i].id) {
                    lane.batch.remove(i)?;
                }
            }
        }
        if lane.idle() {
            self.lanes.remove(adapter);
        }
        Ok(())
    }
}

/// One request's news after a step.
struct Update {
    id: u64,
    chunk: Option<StreamChunk>,
    generated: usize,
    done: Option<Result<Finished>>,
}

/// The shared decoding state of a [`Generator`].
#[derive(Default)]
pub(super) struct Batcher {
    state: Mutex<Lanes>,
    /// Forward passes run (prefills and batch steps).
    passes: AtomicUsize,
    /// Test hook: while set, nobody drives (requests queue up).
    #[cfg(test)]
    held: std::sync::atomic::AtomicBool,
    /// Test hook: the next batch pass fails (1) or panics (2).
    #[cfg(test)]
    fault: std::sync::atomic::AtomicU8,
    /// Test count: callers woken after steps (news or a successor).
    #[cfg(test)]
    woken: AtomicUsize,
}

impl Batcher {
    fn lock(&self) -> Result<MutexGuard<'_, Lanes>> {
        self.state.lock().map_err(|_| Error::Internal("generator batch state poisoned by a panic".into()))
    }

    #[cfg(test)]
    fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn held(&self) -> bool {
        false
    }

    /// Test hook: holds (or releases) every lane before its next step.
    #[cfg(test)]
    pub(super) fn hold(&self, on: bool) {
        self.held.store(on, Ordering::SeqCst);
        if let Ok(st) = self.lock() {
            st.wake_all();
        }
    }

    /// Requests waiting to join a batch, in every lane.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.lock().map_or(0, |st| st.lanes.values().map(|l| l.pending.len()).sum())
    }

    /// Forward passes run so far.
    #[cfg(test)]
    pub(super) fn passes(&self) -> usize {
        self.passes.load(Ordering::SeqCst)
    }
}

/// One call's requests (one row each) in their lane. Dropping it takes the rows it has
/// not collected out of the batch.
pub(super) struct Request {
    gen: Generator,
    adapter: Option<String>,
    /// Its [`Waiter`]'s key.
    key: u64,
    /// Its [`Waiter`]'s condition variable.
    cv: Arc<Condvar>,
    /// It looks at every step's news (see [`Waiter::watch`]).
    watch: bool,
    /// Each prompt's request id, until its result is collected.
    ids: Vec<Option<u64>>,
}

/// What one prompt of a [`Request`] got since the last look.
pub(super) struct News {
    pub(super) index: usize,
    pub(super) chunks: Vec<StreamChunk>,
    pub(super) generated: usize,
    pub(super) done: Option<Result<Finished>>,
}

impl Request {
    /// Queues `prompts` (checked already) to join `adapter`'s batch at its next step.
    /// `watch`: the caller looks at every step's news (tokens, progress), not only at
    /// the results.
    pub(super) fn submit(
        gen: &Generator,
        adapter: Option<String>,
        prompts: Vec<Vec<u32>>,
        cfg: Resolved,
        t0: Instant,
        watch: bool,
    ) -> Result<Self> {
        let cfg = Arc::new(cfg);
        let b = &gen.inner.batcher;
        let mut st = b.lock()?;
        let key = st.next_id;
        st.next_id += 1;
        let cv = Arc::new(Condvar::new());
        st.waiters.insert(key, Waiter { cv: cv.clone(), adapter: adapter.clone(), watch });
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let id = st.next_id;
            st.next_id += 1;
            st.slots.insert(id, Slot { owner: key, ..Slot::default() });
            let max_new = gen.max_new(&cfg, p.len());
            st.lanes.entry(adapter.clone()).or_default().pending.push(Join {
                id,
                ids: p,
                cfg: cfg.clone(),
                max_new,
                t0,
            });
            ids.push(Some(id));
        }
        // Nobody to wake: a driver takes the new rows at its next step, and with none
        // the caller drives when it waits.
        drop(st);
        Ok(Request { gen: gen.clone(), adapter, key, cv, watch, ids })
    }

    /// Waits until one of its prompts has news (running a step when nobody else is);
    /// a prompt whose news holds its result is closed. Stops with `cancelled` when
    /// `cancel` is. For a caller that does not watch every step (it may drive many
    /// steps, or sleep through them, within one wait) `idle` runs while there is no
    /// news, at once and then at most every `CANCEL_POLL`, without the lock; its error
    /// stops the wait. A watching caller returns after every step instead.
    pub(super) fn wait(
        &mut self,
        cancel: Option<&CancelToken>,
        idle: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<News>> {
        let b = &self.gen.inner.batcher;
        let mut st = b.lock()?;
        let mut idled: Option<Instant> = None;
        loop {
            let mut news = Vec::new();
            for (index, id) in self.ids.iter_mut().enumerate() {
                let Some(slot) = id.and_then(|i| st.slots.get_mut(&i)) else {
                    continue;
                };
                if (slot.fresh && self.watch) || slot.done.is_some() {
                    slot.fresh = false;
                    let done = slot.done.take();
                    news.push(News {
                        index,
                        chunks: std::mem::take(&mut slot.chunks),
                        generated: slot.generated,
                        done,
                    });
                    if news.last().is_some_and(|n| n.done.is_some()) {
                        if let Some(i) = id.take() {
                            st.slots.remove(&i);
                        }
                    }
                }
            }
            if !news.is_empty() {
                return Ok(news);
            }
            if self.ids.iter().all(Option::is_none) {
                return Err(Error::Internal("waiting on a request that has ended".into()));
            }
            // A caller that watches hears of every step (its sink checks then); one that
            // does not is polled, at once and then every CANCEL_POLL.
            if !self.watch && idled.is_none_or(|t| t.elapsed() >= CANCEL_POLL) {
                drop(st);
                idle()?;
                idled = Some(Instant::now());
                st = b.lock()?;
                continue;
            }
            if let Some(c) = cancel {
                c.check()?;
            }
            let lane =
                st.lanes.get_mut(&self.adapter).ok_or_else(|| Error::Internal("request lost its batch".into()))?;
            if lane.driving || b.held() {
                // With a cancel token, wake at least every CANCEL_POLL to look at it: a
                // step (a long prompt's prefill) can take longer than a caller should
                // wait to stop.
                let woke = match cancel {
                    Some(_) => self.cv.wait_timeout(st, CANCEL_POLL).map(|(st, _)| st).ok(),
                    None => self.cv.wait(st).ok(),
                };
                st = woke.ok_or_else(|| Error::Internal("generator batch state poisoned by a panic".into()))?;
                continue;
            }
            // Drive: one step on the lane, without the lock.
            if let Err(e) = st.prune(&self.adapter) {
                fail_lane(&mut st, &self.adapter, &e);
                st.wake_all();
                continue;
            }
            let Some(lane) = st.lanes.get_mut(&self.adapter) else {
                return Err(Error::Internal("request lost its batch".into()));
            };
            lane.driving = true;
            let mut batch = std::mem::take(&mut lane.batch);
            let joins = std::mem::take(&mut lane.pending);
            let mut guard = Driving {
                batcher: b,
                adapter: &self.adapter,
                ids: batch.rows.iter().map(|r| r.id).chain(joins.iter().map(|j| j.id)).collect(),
                armed: true,
            };
            drop(st);
            // On the calling thread, not the compute pool: the step takes the model's
            // lock (`with_adapter`), and a pool thread waiting inside it can pick up
            // another lane's step, whose write lock would then wait forever on the read
            // lock below it on the same thread.
            let (updates, deferred) = step(&self.gen, self.adapter.as_deref(), &mut batch, joins);
            st = b.lock()?;
            guard.armed = false;
            let lane = st.lanes.entry(self.adapter.clone()).or_default();
            lane.driving = false;
            lane.batch = batch;
            let later = std::mem::replace(&mut lane.pending, deferred);
            lane.pending.extend(later);
            let updated: Vec<(u64, bool)> = updates.iter().map(|u| (u.id, u.done.is_some())).collect();
            for u in updates {
                if let Some(slot) = st.slots.get_mut(&u.id) {
                    slot.generated = u.generated;
                    slot.chunks.extend(u.chunk);
                    slot.fresh = true;
                    if u.done.is_some() {
                        slot.done = u.done;
                    }
                }
            }
            if let Err(e) = st.prune(&self.adapter) {
                fail_lane(&mut st, &self.adapter, &e);
                st.wake_all();
                continue;
            }
            // Whether this caller goes back with news (then another drives next).
            let mine = updated
                .iter()
                .any(|&(id, done)| (done || self.watch) && st.slots.get(&id).is_some_and(|s| s.owner == self.key));
            let _woken = st.wake_after_step(&updated, &self.adapter, self.key, mine);
            #[cfg(test)]
            b.woken.fetch_add(_woken, Ordering::SeqCst);
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let b = &self.gen.inner.batcher;
        let mut st = match b.state.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        st.waiters.remove(&self.key);
        let mut left = false;
        for id in self.ids.iter_mut().filter_map(Option::take) {
            left |= st.slots.remove(&id).is_some();
        }
        if left {
            if let Err(e) = st.prune(&self.adapter) {
                fail_lane(&mut st, &self.adapter, &e);
            }
        }
        // It may have been woken to drive: someone else does, if the lane has work.
        st.wake_driver(&self.adapter, None);
    }
}

/// Ends every request of a lane whose batch is broken with `e`.
fn fail_lane(st: &mut Lanes, adapter: &Option<String>, e: &Error) {
    if let Some(lane) = st.lanes.remove(adapter) {
        for id in lane.batch.rows.iter().map(|r| r.id).chain(lane.pending.iter().map(|j| j.id)) {
            if let Some(slot) = st.slots.get_mut(&id) {
                slot.done = Some(Err(e.clone()));
            }
        }
    }
}

/// A step in progress: if it unwinds (a panic in a forward pass), its requests end
/// with an error and the lane is free again.
struct Driving<'a> {
    batcher: &'a Batcher,
    adapter: &'a Option<String>,
    ids: Vec<u64>,
    armed: bool,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = match self.batcher.state.lock() {
            Ok(st) => st,
            Err(poisoned) => poisoned.into_inner(),
        };
        let e = Error::Internal("a decoding step panicked; the requests in its batch were stopped".into());
        for id in &self.ids {
            if let Some(slot) = st.slots.get_mut(id) {
                slot.done = Some(Err(e.clone()));
            }
        }
        if let Some(lane) = st.lanes.get_mut(self.adapter) {
            lane.driving = false;
        }
        let _ = st.prune(self.adapter);
        st.wake_all();
    }
}

/// One step of a lane: a forward pass for the rows in the batch (one token each;
/// finished rows leave), then the joining requests, prefilled together (their first
/// token) and added to the batch. Returns the requests' news and the joins put off
/// until memory frees up.
fn step(gen: &Generator, adapter: Option<&str>, batch: &mut Batch, joins: Vec<Join>) -> (Vec<Update>, Vec<Join>) {
    let mut out = Vec::with_capacity(batch.rows.len() + joins.len());
    if !batch.rows.is_empty() {
        if let Err(e) = decode(gen, adapter, batch, &mut out) {
            for row in std::mem::take(&mut batch.rows) {
                out.push(Update {
                    id: row.id,
                    chunk: None,
                    generated: row.state.generated.len(),
                    done: Some(Err(e.clone())),
                });
            }
            batch.cache = KvCache::default();
        }
    }
    let mut deferred = Vec::new();
    let joins = if joins.len() > 1 { admit_together(gen, adapter, batch, joins, &mut out) } else { joins };
    for j in joins {
        let need = batch.rows.iter().map(Row::need).max().unwrap_or(0).max(j.max_new - 1);
        if fits(gen, batch, 1, j.ids.len(), need).is_err() && !batch.rows.is_empty() {
            deferred.push(j);
            continue;
        }
        admit(gen, adapter, batch, vec![j], need, &mut out);
    }
    (out, deferred)
}

/// One forward pass for every row of `batch`, one token each; finished rows leave.
fn decode(gen: &Generator, adapter: Option<&str>, batch: &mut Batch, out: &mut Vec<Update>) -> Result<()> {
    let input: Vec<u32> = batch.rows.iter().map(|r| r.last).collect();
    let input = Tensor::from_vec(input, (batch.rows.len(), 1), &Device::Cpu)?;
    let cache = &mut batch.cache;
    #[cfg(test)]
    match gen.inner.batcher.fault.swap(0, Ordering::SeqCst) {
        1 => return Err(Error::Compute("injected failure".into())),
        2 => panic!("injected panic"),
        _ => {}
    }
    let logits = gen.with_adapter(adapter, |st| st.model.forward_cached(&input, cache, true))?;
    gen.inner.batcher.passes.fetch_add(1, Ordering::SeqCst);
    let mut logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let mut done = Vec::new();
    for (i, (row, logits)) in batch.rows.iter_mut().zip(logits.iter_mut()).enumerate() {
        let chunk = row.state.sample(logits, &gen.inner.eos, &row.cfg, row.max_new);
        let generated = row.state.generated.len();
        row.last = row.state.generated.last().copied().unwrap_or(row.last);
        match chunk {
            Ok(chunk) => {
                out.push(Update { id: row.id, chunk, generated, done: None });
                if row.state.finish.is_some() {
                    done.push(i);
                }
            }
            Err(e) => {
                out.push(Update { id: row.id, chunk: None, generated, done: Some(Err(e)) });
                done.push(i);
            }
        }
    }
    // Highest first: the row moved into a removed one's place is never one to remove.
    for &i in done.iter().rev() {
        let row = batch.remove(i)?;
        if row.state.finish.is_some() {
            let end = row.t0.elapsed();
            if let Some(u) = out.iter_mut().rev().find(|u| u.id == row.id && u.done.is_none()) {
                u.done = Some(Ok(row.finished(end)));
            }
        }
    }
    Ok(())
}

/// Whether `rows` requests of up to `width` prompt positions, needing `need` more
/// positions, can be prefilled together and join `batch` within the memory limit.
fn fits(gen: &Generator, batch: &Batch, rows: usize, width: usize, need: usize) -> Result<()> {
    let inner = &gen.inner;
    let (held, positions) = batch.cache.joined_shape(rows, width, need);
    // A batch that was empty takes the prefill's own cache (sized for the whole
    // request); otherwise the prefill's cache is copied into the batch's.
    let (prefill, kv) = match batch.rows.is_empty() {
        true => (memory::decoding(&inner.config, inner.dtype_bytes, rows, width, width + need), 0),
        false => (
            memory::decoding(&inner.config, inner.dtype_bytes, rows, width, width),
            memory::decoding(&inner.config, inner.dtype_bytes, held, 1, positions).total(),
        ),
    };
    prefill
        .add("KV cache", "concurrent requests", kv)
        .add("weights", "model", inner.weights)
        .check(inner.store.memory_limit)
}

/// Admits several joining requests together ([`admit`]); returns them untouched when
/// they do not fit in memory together.
fn admit_together(
    gen: &Generator,
    adapter: Option<&str>,
    batch: &mut Batch,
    joins: Vec<Join>,
    out: &mut Vec<Update>,
) -> Vec<Join> {
    let width = joins.iter().map(|j| j.ids.len()).max().unwrap_or(0);
    let need = batch.rows.iter().map(Row::need).chain(joins.iter().map(|j| j.max_new - 1)).max().unwrap_or(0);
    if fits(gen, batch, joins.len(), width, need).is_err() {
        return joins;
    }
    admit(gen, adapter, batch, joins, need, out);
    Vec::new()
}

/// Prefills `joins` in one left-padded pass and adds their rows to the batch
/// ([`prefill`]); a failed pass ends each of them with its error.
fn admit(
    gen: &Generator,
    adapter: Option<&str>,
    batch: &mut Batch,
    joins: Vec<Join>,
    need: usize,
    out: &mut Vec<Update>,
) {
    let ids: Vec<u64> = joins.iter().map(|j| j.id).collect();
    if let Err(e) = prefill(gen, adapter, batch, joins, need, out) {
        for id in ids {
            out.push(Update { id, chunk: None, generated: 0, done: Some(Err(e.clone())) });
        }
    }
}

/// One left-padded pass over the joins' prompts (each row masked as it would be alone,
/// so it produces what it would alone; a single join has no padding) and each one's
/// first token; the rows that go on join the batch (a batch that was empty takes the
/// prefill's cache, sized for the whole request, as it is).
fn prefill(
    gen: &Generator,
    adapter: Option<&str>,
    batch: &mut Batch,
    joins: Vec<Join>,
    need: usize,
    out: &mut Vec<Update>,
) -> Result<()> {
    let inner = &gen.inner;
    let width = joins.iter().map(|j| j.ids.len()).max().unwrap_or(0);
    let pads: Vec<usize> = joins.iter().map(|j| width - j.ids.len()).collect();
    let mut flat = Vec::with_capacity(joins.len() * width);
    for (j, &pad) in joins.iter().zip(&pads) {
        // Padding is masked out: any valid id does.
        flat.extend(std::iter::repeat_n(0, pad));
        flat.extend_from_slice(&j.ids);
    }
    let alone = batch.rows.is_empty();
    let mut cache = KvCache::with_padding(pads, if alone { width + need } else { width });
    let input = Tensor::from_vec(flat, (joins.len(), width), &Device::Cpu)?;
    let logits = gen.with_adapter(adapter, |st| st.model.forward_cached(&input, &mut cache, true))?;
    inner.batcher.passes.fetch_add(1, Ordering::SeqCst);
    let mut logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let mut rows = Vec::with_capacity(joins.len());
    for (j, logits) in joins.into_iter().zip(logits.iter_mut()) {
        let mut state = RowState::new(j.ids, &j.cfg, inner.tokenizer.clone());
        let chunk = match state.sample(logits, &inner.eos, &j.cfg, j.max_new) {
            Ok(chunk) => chunk,
            Err(e) => {
                out.push(Update { id: j.id, chunk: None, generated: 0, done: Some(Err(e)) });
                rows.push(None);
                continue;
            }
        };
        let ttft = j.t0.elapsed();
        let last = state.generated.last().copied().unwrap_or(0);
        let row = Row { id: j.id, state, cfg: j.cfg, max_new: j.max_new, t0: j.t0, ttft, last };
        let generated = row.state.generated.len();
        if row.state.finish.is_some() {
            out.push(Update { id: row.id, chunk, generated, done: Some(Ok(row.finished(ttft))) });
            rows.push(None);
        } else {
            out.push(Update { id: row.id, chunk, generated, done: None });
            rows.push(Some(row));
        }
    }
    let which: Vec<usize> = rows.iter().enumerate().filter_map(|(i, r)| r.as_ref().map(|_| i)).collect();
    if which.is_empty() {
        return Ok(());
    }
    if alone {
        // Rows that ended at their first token leave (highest first, as in `decode`).
        batch.cache = cache;
        let ended: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_none()).collect();
        for &i in ended.iter().rev() {
            batch.cache.remove_row(i)?;
            rows.swap_remove(i);
        }
    } else if let Err(e) = batch.cache.join(&cache, &which, need) {
        for row in rows.iter().flatten() {
            if let Some(u) = out.iter_mut().rev().find(|u| u.id == row.id) {
                u.done = Some(Err(e.clone()));
            }
        }
        return Ok(());
    }
    batch.rows.extend(rows.into_iter().flatten());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::time::Duration;

    use crate::events::{CancelToken, EventSink, NoopSink};
    use crate::types::{Event, Generation, GenerationConfig, GeneratorOptions, RegisterOptions};
    use crate::{Generator, Home};

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("home")).unwrap();
        (dir, home)
    }

    /// The nano preset (Llama: RoPE, GQA) and the GPT-2 fixture.
    fn generators(home: &Home) -> Vec<Generator> {
        let nano = home.models().create_preset("nano", &Default::default()).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gpt2");
        let gpt2 = home.models().register_dir(fixture, &RegisterOptions::default()).unwrap();
        [nano, gpt2].iter().map(|m| home.generator(&m.id, &GeneratorOptions::default()).unwrap()).collect()
    }

    fn greedy(n: usize) -> GenerationConfig {
        GenerationConfig { max_new_tokens: Some(n), ignore_eos: true, ..Default::default() }
    }

    /// Six requests of different prompt lengths and settings: greedy, seeded sampling
    /// (top-k, top-p, min-p, repetition penalty), a stop string, different lengths.
    fn requests(gen: &Generator) -> Vec<(String, GenerationConfig)> {
        let stop = gen.generate("a", &greedy(12)).unwrap().text.chars().skip(5).take(2).collect::<String>();
        vec![
            ("the quick brown fox jumps".into(), greedy(14)),
            ("a".into(), GenerationConfig { stop: vec![stop], ..greedy(20) }),
            (
                "hello there".into(),
                GenerationConfig { temperature: Some(0.9), top_k: Some(20), seed: Some(7), ..greedy(9) },
            ),
            (
                "xyz".into(),
                GenerationConfig {
                    temperature: Some(1.3),
                    top_p: Some(0.9),
                    repetition_penalty: Some(1.3),
                    seed: Some(3),
                    ..greedy(17)
                },
            ),
            ("some longer prompt, to pad the others well".into(), greedy(5)),
            ("q".into(), GenerationConfig { temperature: Some(0.7), min_p: Some(0.05), seed: Some(11), ..greedy(11) }),
        ]
    }

    fn same(a: &Generation, b: &Generation, what: &str) {
        assert_eq!(
            (&a.token_ids, &a.text, a.finish_reason, &a.stop_sequence, a.seed, a.prompt_tokens),
            (&b.token_ids, &b.text, b.finish_reason, &b.stop_sequence, b.seed, b.prompt_tokens),
            "{what}"
        );
    }

    /// Waits (without timing assumptions on the result) until `n` requests are queued.
    fn until_queued(gen: &Generator, n: usize) {
        let t = std::time::Instant::now();
        while gen.inner.batcher.queued() < n {
            assert!(t.elapsed() < Duration::from_secs(60), "requests never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs `call(i)` for `n` requests, each on its own thread, all queued before the
    /// first step (the batcher held until they are; `before_release` runs then).
    fn queued_together<T: Send>(
        gen: &Generator,
        n: usize,
        call: impl Fn(usize) -> T + Sync,
        before_release: impl FnOnce(),
    ) -> Vec<std::thread::Result<T>> {
        gen.inner.batcher.hold(true);
        std::thread::scope(|s| {
            let call = &call;
            let handles: Vec<_> = (0..n).map(|i| s.spawn(move || call(i))).collect();
            until_queued(gen, n);
            before_release();
            gen.inner.batcher.hold(false);
            handles.into_iter().map(|h| h.join()).collect()
        })
    }
    #[test]
    fn concurrent_calls_share_steps_and_equal_sequential_calls() {
        let (_d, home) = home();
        for gen in generators(&home) {
            let reqs = requests(&gen);
            let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(p.as_str(), c).unwrap()).collect();
            assert!(alone.iter().any(|g| g.stop_sequence.is_some()), "the stop string ends one request");
            let before = gen.inner.batcher.passes();
            let woken = gen.inner.batcher.woken.load(std::sync::atomic::Ordering::SeqCst);
            let together: Vec<Generation> =
                queued_together(&gen, reqs.len(), |i| gen.generate(reqs[i].0.as_str(), &reqs[i].1), || {})
                    .into_iter()
                    .map(|r| r.unwrap().unwrap())
                    .collect();
            // Calls that look only at their result are woken for it (and to drive when
            // the driver leaves with its own), not after every step: at most two wakes
            // per call, where waking everyone would be 5 per step.
            let woken = gen.inner.batcher.woken.load(std::sync::atomic::Ordering::SeqCst) - woken;
            assert!(woken <= 2 * reqs.len(), "{woken} wakes for {} calls", reqs.len());
            for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
                same(a, b, &format!("{} request {i}", gen.model().name));
                assert!(b.id.is_some() && b.id != a.id, "each call has its own catalog row");
            }
            // All six were prefilled together in the first step (one left-padded pass),
            // then decoded together: one pass per step for all rows, not one per row.
            let passes = gen.inner.batcher.passes() - before;
            let longest = together.iter().map(|g| g.generated_tokens).max().unwrap();
            let tokens: usize = together.iter().map(|g| g.generated_tokens).sum();
            assert_eq!(passes, longest, "{} passes for {tokens} tokens", passes);
            assert!(passes < tokens);
            assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
            // Half the calls report progress (woken every step), half do not: the same
            // results, every token's progress event for the ones that report.
            let mixed = queued_together(
                &gen,
                reqs.len(),
                |i| {
                    let mut progress = 0u64;
                    let mut sink = |e: &crate::Event| {
                        if let crate::Event::TaskProgress { done, .. } = e {
                            progress = *done;
                        }
                        Ok(())
                    };
                    let cancel = crate::events::CancelToken::new();
                    let (p, c) = (reqs[i].0.as_str(), &reqs[i].1);
                    if i % 2 == 0 {
                        (gen.generate_with(p, c, &mut sink, &cancel), Some(progress))
                    } else {
                        (gen.generate_with(p, c, &mut crate::events::NoopSink, &cancel), None)
                    }
                },
                || {},
            );
            for (i, (a, r)) in alone.iter().zip(mixed).enumerate() {
                let (g, progress) = r.unwrap();
                let g = g.unwrap();
                same(a, &g, &format!("{} mixed request {i}", gen.model().name));
                if let Some(p) = progress {
                    assert_eq!(p, g.generated_tokens as u64, "request {i}'s last progress");
                }
            }
            assert!(gen.inner.batcher.lock().unwrap().waiters.is_empty(), "no caller left behind");
        }
    }

    #[test]
    fn streams_joining_and_leaving_mid_way_equal_sequential_calls() {
        let (_d, home) = home();
        for gen in generators(&home) {
            let reqs = requests(&gen);
            let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(p.as_str(), c).unwrap()).collect();
            let before = gen.inner.batcher.passes();
            // One thread drives every stream, in a fixed interleaving: each request joins
            // a batch that already runs (shorter and longer prompts than its length, so
            // rows are padded, and re-padded), and one stream is dropped half-way.
            let mut streams: Vec<Option<super::super::TokenStream>> = Vec::new();
            let mut dropped = None;
            for (i, (p, c)) in reqs.iter().enumerate() {
                streams.push(Some(gen.stream(p.as_str(), c).unwrap()));
                for s in streams.iter_mut().flatten().take(i + 1) {
                    s.next();
                }
                if i == 3 {
                    streams[1] = None; // dropped early: its row leaves the batch
                    dropped = Some(1);
                }
            }
            let mut texts = vec![String::new(); reqs.len()];
            for (i, s) in streams.iter_mut().enumerate() {
                if let Some(s) = s {
                    for piece in s.by_ref() {
                        texts[i].push_str(&piece.unwrap().text);
                    }
                }
            }
            for (i, s) in streams.iter().enumerate() {
                let Some(s) = s else { continue };
                let g = s.generation().unwrap();
                same(&alone[i], g, &format!("{} stream {i}", gen.model().name));
                assert!(alone[i].text.ends_with(&texts[i]), "stream {i}: the pieces are the text after the first");
            }
            assert_eq!(dropped, Some(1));
            let passes = gen.inner.batcher.passes() - before;
            let tokens: usize = alone.iter().map(|g| g.generated_tokens).sum();
            assert!(passes < tokens, "{passes} passes for {tokens} tokens");
            assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
        }
    }

    #[test]
    fn requests_arriving_together_join_a_running_batch_in_one_prefill() {
        let (_d, home) = home();
        for gen in generators(&home) {
            let reqs = requests(&gen);
            let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(p.as_str(), c).unwrap()).collect();
            let mut first = gen.stream(reqs[0].0.as_str(), &reqs[0].1).unwrap();
            first.next();
            first.next();
            // Five requests (shorter and longer prompts than the running row's length)
            // queue while one row decodes; the next step decodes it and prefills the
            // five in one padded pass, and their rows join its batch.
            let mut rest: Vec<_> = reqs[1..].iter().map(|(p, c)| gen.stream(p.as_str(), c).unwrap()).collect();
            let before = gen.inner.batcher.passes();
            first.next();
            assert_eq!(gen.inner.batcher.passes() - before, 2, "{}: one decode and one prefill", gen.model().name);
            for s in std::iter::once(&mut first).chain(rest.iter_mut()) {
                for piece in s.by_ref() {
                    piece.unwrap();
                }
            }
            for (i, s) in std::iter::once(&first).chain(rest.iter()).enumerate() {
                same(&alone[i], s.generation().unwrap(), &format!("{} request {i}", gen.model().name));
            }
            assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
        }
    }

    #[test]
    fn a_caller_waiting_on_a_step_sees_its_cancel() {
        let (_d, home) = home();
        let gen = generators(&home).remove(0);
        let token = CancelToken::new();
        // Held: nobody drives, as if another caller's step took forever.
        gen.inner.batcher.hold(true);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let (gen, mine) = (&gen, token.clone());
            s.spawn(move || tx.send(gen.generate_with("a", &greedy(4), &mut NoopSink, &mine)).unwrap());
            until_queued(gen, 1);
            token.cancel();
            let got = rx.recv_timeout(Duration::from_secs(30));
            gen.inner.batcher.hold(false);
            assert_eq!(
                got.expect("the cancelled call returned while the batch was held").unwrap_err().code(),
                "cancelled"
            );
        });
        assert_eq!(gen.generate("a", &greedy(2)).unwrap().generated_tokens, 2, "the generator still works");
    }

    #[test]
    fn a_cancelled_call_leaves_the_others_intact() {
        struct CancelAt(CancelToken, u64);
        impl EventSink for CancelAt {
            fn on_event(&mut self, e: &Event) -> crate::Result<()> {
                // `>=`: a caller that wakes late sees several tokens at once.
                if matches!(e, Event::TaskProgress { done, .. } if *done >= self.1) {
                    self.0.cancel();
                }
                Ok(())
            }
        }
        let (_d, home) = home();
        let gen = generators(&home).remove(0);
        let reqs = requests(&gen);
        let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(p.as_str(), c).unwrap()).collect();
        let calls = home.models().usage(&gen.model().id).unwrap().calls;
        // The cancelled call asks for 200 tokens: it cannot run to its end before its
        // caller (woken late on a loaded host) sees the third one and cancels.
        let long = GenerationConfig { max_new_tokens: Some(200), ..reqs[0].1.clone() };
        let call = |i: usize| {
            let ((p, c), token) = (&reqs[i], CancelToken::new());
            if i == 0 {
                gen.generate_with(p.as_str(), &long, &mut CancelAt(token.clone(), 3), &token)
            } else {
                gen.generate_with(p.as_str(), c, &mut NoopSink, &token)
            }
        };
        let together: Vec<crate::Result<Generation>> =
            queued_together(&gen, reqs.len(), call, || {}).into_iter().map(Result::unwrap).collect();
        assert_eq!(together[0].as_ref().unwrap_err().code(), "cancelled");
        for i in 1..reqs.len() {
            same(&alone[i], together[i].as_ref().unwrap(), &format!("request {i}"));
        }
        let after = home.models().usage(&gen.model().id).unwrap().calls;
        assert_eq!(after, calls + reqs.len() as u64 - 1, "the cancelled call is not recorded");
        assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
    }

    #[test]
    fn a_caller_that_skips_progress_is_polled_and_stops_on_its_error() {
        struct Quiet {
            polls: usize,
            fail_at: usize,
        }
        impl EventSink for Quiet {
            fn on_event(&mut self, _: &Event) -> crate::Result<()> {
                Ok(())
            }
            fn wants_progress(&self) -> bool {
                false
            }
            fn poll(&mut self) -> crate::Result<()> {
                self.polls += 1;
                if self.polls >= self.fail_at {
                    return Err(crate::Error::Cancelled);
                }
                Ok(())
            }
        }
        let (_d, home) = home();
        let gen = generators(&home).remove(0);
        let reqs = requests(&gen);
        let (p, c) = &reqs[0];
        let long = GenerationConfig { max_new_tokens: Some(200), ignore_eos: true, ..c.clone() };
        let calls = home.models().usage(&gen.model().id).unwrap().calls;
        // Alone it drives every step itself, and is polled before the first.
        let mut quiet = Quiet { polls: 0, fail_at: 1 };
        let err = gen.generate_with(p.as_str(), &long, &mut quiet, &CancelToken::new()).unwrap_err();
        assert_eq!((err.code(), quiet.polls), ("cancelled", 1));
        assert_eq!(home.models().usage(&gen.model().id).unwrap().calls, calls, "not recorded");
        assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
        // Polled and never failing: the tokens `generate` gives.
        let mut quiet = Quiet { polls: 0, fail_at: usize::MAX };
        let got = gen.generate_with(p.as_str(), c, &mut quiet, &CancelToken::new()).unwrap();
        same(&gen.generate(p.as_str(), c).unwrap(), &got, "polled");
        assert!(quiet.polls >= 1);
    }

    #[test]
    fn a_failing_or_panicking_step_ends_its_requests_with_an_error_not_a_hang() {
        let (_d, home) = home();
        let gen = generators(&home).remove(0);
        let reqs = requests(&gen);
        for (fault, code) in [(1u8, "compute"), (2, "internal")] {
            // The first step prefills them; the second (a batch pass) fails.
            let results: Vec<std::thread::Result<crate::Result<Generation>>> = queued_together(
                &gen,
                reqs.len(),
                |i| gen.generate(reqs[i].0.as_str(), &reqs[i].1),
                || gen.inner.batcher.fault.store(fault, std::sync::atomic::Ordering::SeqCst),
            );
            let panicked = results.iter().filter(|r| r.is_err()).count();
            assert_eq!(panicked, usize::from(fault == 2), "only the driver of the step panics");
            for r in results.into_iter().flatten() {
                assert_eq!(r.unwrap_err().code(), code);
            }
            assert!(gen.inner.batcher.lock().unwrap().lanes.is_empty(), "nothing left behind");
            // The generator still works.
            let again = gen.generate(reqs[0].0.as_str(), &reqs[0].1).unwrap();
            assert_eq!(again.generated_tokens, 14);
        }
    }

    #[test]
    fn requests_on_different_adapters_decode_in_their_own_batches() {
        let (_d, home) = home();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let base = home.models().register_dir(fixtures.join("tiny-llama"), &RegisterOptions::default()).unwrap();
        let opts = RegisterOptions { parent: Some(base.id.clone().into()), ..Default::default() };
        let lora = home.models().register_dir(fixtures.join("tiny-llama-lora"), &opts).unwrap();
        let gen = home.generator(&base.id, &GeneratorOptions { merge_adapter: false, ..Default::default() }).unwrap();
        gen.add_adapter(&lora.id).unwrap();
        let with = |n: usize, a: bool| GenerationConfig { adapter: a.then(|| lora.id.0.clone()), ..greedy(n) };
        let reqs: Vec<(&str, GenerationConfig)> =
            vec![("hello", with(8, false)), ("hello", with(8, true)), ("a b c", with(5, true)), ("xy", with(6, false))];
        let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(*p, c).unwrap()).collect();
        assert_ne!(alone[0].token_ids, alone[1].token_ids, "the adapter changes the output");
        let before = gen.inner.batcher.passes();
        let together: Vec<Generation> = queued_together(
            &gen,
            reqs.len(),
            |i| gen.generate(reqs[i].0, &reqs[i].1),
            || assert_eq!(gen.inner.batcher.lock().unwrap().lanes.len(), 2, "one lane per adapter"),
        )
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            same(a, b, &format!("request {i}"));
            assert_eq!(a.model_id, b.model_id);
        }
        // Each lane: one prefill of its two rows, then one pass per step for both.
        let passes = gen.inner.batcher.passes() - before;
        assert_eq!(passes, (1 + 7) + (1 + 7));
    }

    #[test]
    fn a_request_that_does_not_fit_next_to_the_others_waits_for_them() {
        use crate::models::memory;
        use crate::types::{HomeOptions, Prompt};
        // The memory limit holds either request alone, not both in one batch.
        let (p1, n1, p2, n2) = (3usize, 250usize, 2usize, 200usize);
        let (_d, home) = home();
        let nano = home.models().create_preset("nano", &Default::default()).unwrap();
        let probe = home.generator(&nano.id, &GeneratorOptions::default()).unwrap();
        let i = &probe.inner;
        let alone = |p: usize, n: usize| memory::decoding(&i.config, i.dtype_bytes, 1, p, p + n - 1).total();
        let limit = i.weights + alone(p1, n1).max(alone(p2, n2));
        let both = i.weights + memory::decoding(&i.config, i.dtype_bytes, 2, 1, p1.max(p2) + n2 - 1).total();
        assert!(both > limit, "the test needs a batch of both above the limit");
        let opts = HomeOptions { memory_limit: Some(u64::try_from(limit).unwrap()) };
        let home = Home::open_with(_d.path().join("home"), &opts).unwrap();
        let gen = home.generator(&nano.id, &GeneratorOptions::default()).unwrap();
        let reqs: Vec<(Prompt, GenerationConfig)> = vec![
            (Prompt::Tokens((0..p1 as u32).map(|t| 40 + t % 50).collect()), greedy(n1)),
            (Prompt::Tokens((0..p2 as u32).map(|t| 60 + t % 30).collect()), greedy(n2)),
        ];
        let alone: Vec<Generation> = reqs.iter().map(|(p, c)| gen.generate(p.clone(), c).unwrap()).collect();
        let before = gen.inner.batcher.passes();
        let together: Vec<Generation> =
            queued_together(&gen, reqs.len(), |i| gen.generate(reqs[i].0.clone(), &reqs[i].1), || {})
                .into_iter()
                .map(|r| r.unwrap().unwrap())
                .collect();
        for (k, (a, b)) in alone.iter().zip(&together).enumerate() {
            same(a, b, &format!("request {k}"));
        }
        // One after the other: no pass served both.
        assert_eq!(gen.inner.batcher.passes() - before, n1 + n2);
    }
}
