//! Checkpoints: `jobs/<id>/checkpoints/step-N/` holding the weights (language models:
//! an HF directory for full fine-tunes, a PEFT adapter directory for LoRA; diffusion:
//! the UNet or its diffusers LoRA file), `optimizer.safetensors`
//! (AdamW m and v) and `trainer_state.json` (counters, data position, seed, metrics).
//! Written into a `.tmp-*` staging directory and renamed, so a kill at any moment
//! leaves the previous checkpoint intact; only the last K are kept.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::util::StagingDir;

pub(crate) const STATE_FILE: &str = "trainer_state.json";
pub(crate) const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors that `resume` needs to continue the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    /// Optimiser steps done.
    pub(crate) step: u64,
    /// The epoch in progress (0-based).
    pub(crate) epoch: u32,
    /// Micro-batches of `epoch` already consumed (the data position). The order of an
    /// epoch is a pure function of seed + epoch, so this is the whole RNG state.
    pub(crate) batch_in_epoch: u64,
    pub(crate) seed: u64,
    pub(crate) tokens: u64,
    pub(crate) optimizer_step: u64,
    pub(crate) loss: Option<f64>,
    pub(crate) eval_loss: Option<f64>,
    pub(crate) best_eval_loss: Option<f64>,
    pub(crate) evals_without_improvement: u32,
    pub(crate) elapsed_s: f64,
    pub(crate) method: String,
}

impl TrainerState {
    /// The state before the first step of a run.
    pub(crate) fn start(spec: &crate::types::TrainSpec) -> Self {
        TrainerState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: spec.seed,
            tokens: 0,
            optimizer_step: 0,
            loss: None,
            eval_loss: None,
            best_eval_loss: None,
            evals_without_improvement: 0,
            elapsed_s: 0.0,
            method: spec.method.as_str().into(),
        }
    }
}

pub(crate) fn dir(job_dir: &Path) -> PathBuf {
    job_dir.join("checkpoints")
}

/// Writes a checkpoint for `state.step` (the weights by `save`) and prunes to `keep`.
/// Returns its path. Failpoint `checkpoint.before_rename` (everything written, the
/// staging directory not yet renamed), besides the `write:<file name>` of each file.
pub(crate) fn write(
    job_dir: &Path,
    save: &dyn Fn(&Path) -> Result<()>,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let root = dir(job_dir);
    let dest = root.join(format!("step-{}", state.step));
    if dest.join(STATE_FILE).exists() {
        return Ok(dest);
    }
    let staging = StagingDir::new(&root)?;
    let p = staging.path();
    save(p)?;
    crate::models::write_safetensors(&opt.state_tensors(), &p.join(OPTIMIZER_FILE))?;
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
    crate::util::write_atomic(&p.join(STATE_FILE), text.as_bytes())?;
    // Every file is complete in the staging directory, none is visible yet.
    crate::util::failpoint("checkpoint.before_rename").with_path(&dest)?;
    let mut staging = staging;
    if dest.exists() {
        // A partial directory of that name cannot exist (we only rename complete ones),
        // but be safe: replace it.
        fs::remove_dir_all(&dest).with_path(&dest)?;
    }
    staging.persist(&dest)?;
    prune(&root, keep)?;
    Ok(dest)
}

/// Complete checkpoints (`step-N` with a state file), oldest first.
pub(crate) fn list(job_dir: &Path) -> Vec<(u64, PathBuf)> {
    let root = dir(job_dir);
    let Ok(entries) = fs::read_dir(&root) else { return Vec::new() };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(STATE_FILE).is_file().then(|| (n, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root.parent().unwrap_or(root));
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            fs::remove_dir_all(p).with_path(p)?;
        }
    }
    Ok(())
}

/// Reads the state file of a checkpoint.
pub(crate) fn read_state(ckpt: &Path) -> Result<TrainerState> {
    let p = ckpt.join(STATE_FILE);
    let text = fs::read_to_string(&p).with_path(&p)?;
    serde_json::from_str(&text).map_err(|e| Error::data(Location::file(&p), e.to_string()))
}

/// Restores the optimiser's moments from a checkpoint.
pub(crate) fn load_optimizer(ckpt: &Path, opt: &mut AdamW, t: u64) -> Result<()> {
    let p = ckpt.join(OPTIMIZER_FILE);
    let bytes = fs::read(&p).with_path(&p)?;
    let device = opt.params().first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
        .map_err(|e| Error::data(Location::file(&p), format!("not a valid safetensors file: {e}")))?;
    opt.load_state(tensors, t)
}
