//! anneal's side of the diffusion step comparison with diffusers + PEFT on PyTorch
//! (benches/diffusion/run.sh runs both and prints the medians and ratios).
//!
//! Run:    cargo run --release -p anneal-benches --bin diffusion_step -- --config tiny|small --mode train-full|train-lora|denoise [--steps 10]
//! Output: one JSON line with the same keys as benches/diffusion/torch_diffusion_step.py.
//!
//! The UNet of benches/diffusion/configs.json is written with random default-init
//! weights (`anneal::diffusion::presets::write_unet`, seed 0) and loaded with
//! `UNet2DConditionModel::load`, so the bench runs the real loading and training code:
//!   train-full : forward (Train) + epsilon MSE + backward + anneal's AdamW over every weight
//!   train-lora : the same with a LoRA (r 8, alpha 16) on to_q, to_k, to_v, to_out.0
//!   denoise    : one UNet forward (Infer) on a classifier-free-guidance batch of 2

use std::time::Instant;

use anneal::diffusion::{presets, UNet2DConditionModel};
use anneal::{ForwardMode, LoadOptions, LoraConfig};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

const CONFIGS: &str = include_str!("../../diffusion/configs.json");

fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0.0)
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn num(v: &Value, k: &str) -> anyhow::Result<usize> {
    v[k].as_u64().map(|n| n as usize).ok_or_else(|| anyhow::anyhow!("configs.json: `{k}` missing"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("diffusion_step --config tiny|small --mode train-full|train-lora|denoise [--steps N] [--warmup N]");
        return Ok(());
    }
    let config = arg(&args, "--config", "tiny");
    let mode = arg(&args, "--mode", "train-full");
    let steps: usize = arg(&args, "--steps", "10").parse()?;
    let warmup: usize = arg(&args, "--warmup", "2").parse()?;
    let all: Value = serde_json::from_str(CONFIGS)?;
    let cfg = all.get(&config).ok_or_else(|| anyhow::anyhow!("unknown config {config}"))?;
    let unet_cfg = &cfg["unet"];
    let (c, s) = (num(unet_cfg, "in_channels")?, num(unet_cfg, "sample_size")?);
    let (cross, tokens, batch) = (num(unet_cfg, "cross_attention_dim")?, num(cfg, "tokens")?, num(cfg, "batch")?);

    let dir = tempfile::tempdir()?;
    presets::write_unet(unet_cfg, 0, dir.path())?;
    let dev = Device::Cpu;
    let trainable = mode == "train-full";
    let mut unet = UNet2DConditionModel::load(dir.path(), &LoadOptions { trainable, ..Default::default() })?;
    // As the engine and the image generator do (util::AllocatorTuning).
    let _malloc = anneal::AllocatorTuning::acquire();
    let mut times = Vec::with_capacity(steps);
    // On the compute pool, as the engine's training step and the image generator's
    // denoising steps run (anneal::on_compute_pool); ANNEAL_BENCH_NO_POOL=1 calls from main.
    let pool = std::env::var("ANNEAL_BENCH_NO_POOL").is_err();
    match mode.as_str() {
        "denoise" => {
            let x = Tensor::randn(0f32, 1., (2, c, s, s), &dev)?;
            let ctx = Tensor::randn(0f32, 1., (2, tokens, cross), &dev)?;
            let t = Tensor::new(&[500f32], &dev)?;
            for i in 0..warmup + steps {
                let t0 = Instant::now();
                let y = on_pool(pool, || unet.forward(&x, &t, &ctx, ForwardMode::Infer))?;
                drop(y);
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        "train-full" | "train-lora" => {
            if mode == "train-lora" {
                let targets = ["to_q", "to_k", "to_v", "to_out.0"].map(String::from).to_vec();
                unet.add_lora(&LoraConfig { r: 8, alpha: 16.0, target_modules: targets, ..Default::default() }, 0)?;
            }
            // anneal's trainer optimiser (torch.optim.AdamW defaults: betas 0.9/0.999, eps 1e-8, wd 0.01).
            let mut opt = anneal::AdamW::new(unet.named_trainable_vars(), 0.9, 0.999, 1e-8, 0.01)?;
            let x = Tensor::randn(0f32, 1., (batch, c, s, s), &dev)?;
            let noise = Tensor::randn(0f32, 1., (batch, c, s, s), &dev)?;
            let ctx = Tensor::randn(0f32, 1., (batch, tokens, cross), &dev)?;
            let ts: Vec<f32> = (0..batch).map(|i| ((i * 397 + 11) % 1000) as f32).collect();
            let t = Tensor::from_vec(ts, batch, &dev)?;
            for i in 0..warmup + steps {
                let t0 = Instant::now();
                on_pool(pool, || -> anyhow::Result<()> {
                    let eps = unet.forward(&x, &t, &ctx, ForwardMode::Train)?;
                    let loss = (eps - &noise)?.sqr()?.mean_all()?;
                    let grads = loss.backward()?;
                    let grads: Vec<Option<Tensor>> = opt.params().iter().map(|(_, v)| grads.get(v).cloned()).collect();
                    opt.step(&grads, 1e-4)?;
                    Ok(())
                })?;
                if i >= warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!(
        "{}",
        json!({
            "impl": "anneal", "config": config, "mode": mode, "threads": threads,
            "step_s": (median(times) * 1e5).round() / 1e5,
            "peak_rss_mib": (status_kib("VmHWM:") / 102.4).round() / 10.0,
        })
    );
    Ok(())
}

fn on_pool<R: Send>(pool: bool, f: impl FnOnce() -> R + Send) -> R {
    if pool {
        anneal::on_compute_pool(f)
    } else {
        f()
    }
}
