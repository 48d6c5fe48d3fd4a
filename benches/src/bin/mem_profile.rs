//! Where a training step's memory goes: live heap bytes (a counting global allocator)
//! after each phase of a step and the peak within it, for a model directory written
//! by `train_step --config C --write-model DIR`.
//!
//! Run: cargo run --release -p anneal-benches --bin mem_profile -- DIR [--lora] [--trace] [--loss-backward] [--batch 4 --seq 256]
//!
//! Live bytes are what the program holds; the process's RSS adds the allocator's free
//! lists (see `anneal::AllocatorTuning`) and the binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use anneal::{load_model, ForwardMode, LoadOptions, LoraConfig};
use candle_core::{Device, Tensor};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// With `--trace`: every allocation or free of 1 MiB or more during step 1's forward and backward,
/// as (signed size in KiB, live KiB after it).
static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const TRACE_LEN: usize = 1 << 14;
static TRACE: [[AtomicUsize; 2]; TRACE_LEN] = [const { [const { AtomicUsize::new(0) }; 2] }; TRACE_LEN];
static TRACE_AT: AtomicUsize = AtomicUsize::new(0);

fn trace(size: usize, free: bool, live: usize) {
    if size >= 1 << 20 && TRACING.load(Relaxed) {
        let i = TRACE_AT.fetch_add(1, Relaxed);
        if let Some(e) = TRACE.get(i) {
            e[0].store((size >> 10) | (usize::from(free) << 63), Relaxed);
            e[1].store(live >> 10, Relaxed);
        }
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
            trace(l.size(), false, now);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        let now = LIVE.fetch_sub(l.size(), Relaxed) - l.size();
        trace(l.size(), true, now);
    }
}

#[global_allocator]
static A: Counting = Counting;

fn mib(b: usize) -> f64 {
    (b as f64 / 1048576.0 * 10.0).round() / 10.0
}

/// Prints the live bytes now and the peak since the last mark.
fn mark(what: &str) {
    let live = LIVE.load(Relaxed);
    let peak = PEAK.swap(live, Relaxed);
    println!("{what:<28} live {:>8} MiB   peak in phase {:>8} MiB", mib(live), mib(peak));
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: mem_profile DIR [--lora]"))?;
    let lora = args.iter().any(|a| a == "--lora");
    let tracing = args.iter().any(|a| a == "--trace");
    // `--loss-backward`: `Model::loss` then candle's backward, instead of the engine's
    // `Model::loss_and_backward`.
    let legacy = args.iter().any(|a| a == "--loss-backward");
    let arg = |k: &str, d: usize| -> usize {
        args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(d)
    };
    let (batch, seq) = (arg("--batch", 4), arg("--seq", 256));
    let _malloc = anneal::AllocatorTuning::acquire();
    let mut model = load_model(dir, &LoadOptions { trainable: !lora, ..Default::default() })?;
    if lora {
        let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj"].map(String::from).to_vec();
        model.add_lora(&LoraConfig { r: 8, alpha: 16.0, target_modules: targets, ..Default::default() }, 0)?;
    }
    mark("loaded");
    let mut opt = anneal::AdamW::new(model.named_trainable_vars(), 0.9, 0.999, 1e-8, 0.01)?;
    mark("optimiser state");
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = (0..batch * seq).map(|i| ((i * 7919 + 13) % vocab) as u32).collect();
    let labels: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let x = Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?;
    let y = Tensor::from_vec(labels, (batch, seq), &Device::Cpu)?;
    for step in 0..3 {
        anneal::on_compute_pool(|| -> anyhow::Result<()> {
            TRACING.store(tracing && step == 1, Relaxed);
            let grads = if legacy {
                let loss = model.loss(&x, &y, ForwardMode::Train)?;
                mark(&format!("step {step}: forward"));
                loss.backward()?
            } else {
                model.loss_and_backward(&x, &y, 1.0)?.1
            };
            TRACING.store(false, Relaxed);
            mark(&format!("step {step}: forward + backward"));
            let grads: Vec<Option<Tensor>> = opt.params().iter().map(|(_, v)| grads.get(v).cloned()).collect();
            opt.step(&grads, 1e-4)?;
            mark(&format!("step {step}: optimiser step"));
            drop(grads);
            mark(&format!("step {step}: grads dropped"));
            Ok(())
        })?;
    }
    if tracing {
        println!(
            "step 1's forward and backward, allocations (+) and frees (-) of 1 MiB or more: size MiB, live MiB after"
        );
        for e in TRACE.iter().take(TRACE_AT.load(Relaxed).min(TRACE_LEN)) {
            let (v, live) = (e[0].load(Relaxed), e[1].load(Relaxed));
            let sign = if v >> 63 == 1 { '-' } else { '+' };
            println!("{sign}{:.1} {:.1}", (v & !(1 << 63)) as f64 / 1024.0, live as f64 / 1024.0);
        }
    }
    Ok(())
}
