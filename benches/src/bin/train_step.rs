//! anneal's side of the training-step comparison with PyTorch + PEFT
//! (benches/compare/run.sh runs both in one go and prints the ratios).
//!
//! Run:    cargo run --release -p anneal-benches --bin train_step -- --config tiny|small --method full|lora [--steps 10]
//!         [--mixed-precision bf16]
//! Output: one JSON line with the same keys as benches/compare/torch_train_step.py.
//!
//! The model is written to a temp dir as an ordinary HF directory (config.json +
//! random-normal weights, fixed seed) and loaded with `anneal::load_model`, so the
//! benchmark exercises the real loading and training code: forward (differentiable
//! path), backward, and the trainer's AdamW (`anneal::AdamW`).

use std::collections::HashMap;
use std::time::Instant;

use anneal::{load_model, LoadOptions, LoraConfig};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

struct Bench {
    family: &'static str,
    layers: usize,
    heads: usize,
    hidden: usize,
    intermediate: usize,
    vocab: usize,
    seq: usize,
    batch: usize,
}

const TINY: Bench =
    Bench { family: "gpt2", layers: 4, heads: 4, hidden: 256, intermediate: 1024, vocab: 8192, seq: 128, batch: 8 };
const SMALL: Bench =
    Bench { family: "llama", layers: 8, heads: 8, hidden: 512, intermediate: 1376, vocab: 32000, seq: 256, batch: 4 };

/// Peak fp32 matmul throughput of this CPU with two threads (CANDLE-NOTES.md).
const PEAK_FLOPS: f64 = 185e9;

fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0.0)
}

/// (name, shape) of every tensor, HF naming; and the config.json.
fn layout(b: &Bench) -> (Vec<(String, Vec<usize>)>, serde_json::Value) {
    let (h, i) = (b.hidden, b.intermediate);
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    if b.family == "gpt2" {
        t.push(("transformer.wte.weight".into(), vec![b.vocab, h]));
        t.push(("transformer.wpe.weight".into(), vec![b.seq, h]));
        for l in 0..b.layers {
            let p = format!("transformer.h.{l}");
            for (n, s) in [
                ("ln_1.weight", vec![h]),
                ("ln_1.bias", vec![h]),
                ("attn.c_attn.weight", vec![h, 3 * h]),
                ("attn.c_attn.bias", vec![3 * h]),
                ("attn.c_proj.weight", vec![h, h]),
                ("attn.c_proj.bias", vec![h]),
                ("ln_2.weight", vec![h]),
                ("ln_2.bias", vec![h]),
                ("mlp.c_fc.weight", vec![h, i]),
                ("mlp.c_fc.bias", vec![i]),
                ("mlp.c_proj.weight", vec![i, h]),
                ("mlp.c_proj.bias", vec![h]),
            ] {
                t.push((format!("{p}.{n}"), s));
            }
        }
        t.push(("transformer.ln_f.weight".into(), vec![h]));
        t.push(("transformer.ln_f.bias".into(), vec![h]));
        let cfg = json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": b.layers,
            "n_head": b.heads, "n_embd": h, "n_inner": i, "vocab_size": b.vocab, "n_positions": b.seq,
            "n_ctx": b.seq, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": true});
        (t, cfg)
    } else {
        t.push(("model.embed_tokens.weight".into(), vec![b.vocab, h]));
        for l in 0..b.layers {
            let p = format!("model.layers.{l}");
            for (n, s) in [
                ("input_layernorm.weight", vec![h]),
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.k_proj.weight", vec![h, h]),
                ("self_attn.v_proj.weight", vec![h, h]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("post_attention_layernorm.weight", vec![h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
            ] {
                t.push((format!("{p}.{n}"), s));
            }
        }
        t.push(("model.norm.weight".into(), vec![h]));
        t.push(("lm_head.weight".into(), vec![b.vocab, h]));
        let cfg = json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h,
            "intermediate_size": i, "num_hidden_layers": b.layers, "num_attention_heads": b.heads,
            "num_key_value_heads": b.heads, "vocab_size": b.vocab, "max_position_embeddings": b.seq,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu"});
        (t, cfg)
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!(
            "train_step --config tiny|small --method full|lora [--steps N] [--warmup N] [--mixed-precision no|bf16]"
        );
        return Ok(());
    }
    let config = arg(&args, "--config", "tiny");
    let method = arg(&args, "--method", "lora");
    let steps: usize = arg(&args, "--steps", "10").parse()?;
    let warmup: usize = arg(&args, "--warmup", "2").parse()?;
    let precision = arg(&args, "--mixed-precision", "no");
    let mixed = match precision.as_str() {
        "no" => anneal::MixedPrecision::No,
        "bf16" => anneal::MixedPrecision::Bf16,
        other => anyhow::bail!("unknown mixed precision {other}"),
    };
    let b = match config.as_str() {
        "tiny" => TINY,
        "small" => SMALL,
        other => anyhow::bail!("unknown config {other}"),
    };
    let lora = match method.as_str() {
        "full" => false,
        "lora" => true,
        other => anyhow::bail!("unknown method {other}"),
    };
    let rss_before = status_kib("VmRSS:") / 1024.0;

    let dir = tempfile::tempdir()?;
    let write_model = args.iter().position(|a| a == "--write-model").and_then(|i| args.get(i + 1)).cloned();
    let model_path = match &write_model {
        Some(p) => std::path::PathBuf::from(p),
        None => dir.path().to_path_buf(),
    };
    let (tensors, cfg) = layout(&b);
    let dev = Device::Cpu;
    // Uniform(-a, a) with a = 0.02 * sqrt(3) (std 0.02), from a fixed-seed xorshift:
    // the values do not matter for speed, only that they are the same every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.0346
    };
    let mut map = HashMap::new();
    let mut mm_params = 0usize;
    for (name, shape) in &tensors {
        let t = if shape.len() == 1 {
            if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, &dev)?
            } else {
                Tensor::ones(shape.as_slice(), DType::F32, &dev)?
            }
        } else {
            let n: usize = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| uniform()).collect::<Vec<f32>>(), shape.as_slice(), &dev)?
        };
        if shape.len() == 2 && !name.contains("wpe") && !name.contains("embed_tokens") && !name.contains("wte") {
            mm_params += shape.iter().product::<usize>();
        }
        map.insert(name.clone(), t);
    }
    if b.family == "gpt2" {
        mm_params += b.vocab * b.hidden; // the tied head is a matmul with wte
    }
    candle_core::safetensors::save(&map, model_path.join("model.safetensors"))?;
    std::fs::write(model_path.join("config.json"), cfg.to_string())?;
    drop(map);
    if write_model.is_some() {
        // For train_job: a tokenizer so the engine can tokenise text (ids < 260 < vocab).
        std::fs::write(model_path.join("tokenizer.json"), anneal::tokenizer::byte_level::tokenizer_json().to_string())?;
        return Ok(());
    }

    // As the training engine does (util::AllocatorTuning: freed buffers are reused, not
    // unmapped and page-faulted again by the next op).
    let _malloc = anneal::AllocatorTuning::acquire();
    let mut model = load_model(model_path.as_path(), &LoadOptions { trainable: !lora, ..Default::default() })?;
    if lora {
        let targets: Vec<String> = if b.family == "gpt2" {
            vec!["c_attn".into(), "c_proj".into()]
        } else {
            ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec()
        };
        let lc = LoraConfig { r: 8, alpha: 16.0, target_modules: targets, ..Default::default() };
        model.add_lora(&lc, 0)?;
    }
    model.set_mixed_precision(mixed);
    // anneal's trainer optimiser (torch.optim.AdamW defaults: betas 0.9/0.999, eps 1e-8, wd 0.01).
    let mut opt = anneal::AdamW::new(model.named_trainable_vars(), 0.9, 0.999, 1e-8, 0.01)?;
    let ids: Vec<u32> = (0..b.batch * b.seq).map(|i| ((i * 7919 + 13) % b.vocab) as u32).collect();
    let labels: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let x = Tensor::from_vec(ids, (b.batch, b.seq), &dev)?;
    let y = Tensor::from_vec(labels, (b.batch, b.seq), &dev)?;
    let mut loss_v = 0f32;
    // On the compute pool, as the engine's optimiser step (anneal::on_compute_pool).
    let pool = std::env::var("ANNEAL_BENCH_NO_POOL").is_err();
    let mut step = || -> anyhow::Result<f32> {
        let mut one = || -> anyhow::Result<f32> {
            // The engine's micro-batch (forward and backward in one call).
            let (loss, grads) = model.loss_and_backward(&x, &y, 1.0)?;
            let grads: Vec<Option<Tensor>> = opt.params().iter().map(|(_, v)| grads.get(v).cloned()).collect();
            opt.step(&grads, 1e-4)?;
            Ok(loss)
        };
        if pool {
            anneal::on_compute_pool(one)
        } else {
            one()
        }
    };
    for _ in 0..warmup {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        loss_v = step()?;
    }
    let dt = t.elapsed().as_secs_f64() / steps as f64;
    let tokens = b.batch * b.seq;
    let tps = tokens as f64 / dt;
    let flops_per_token = if lora { 4.0 } else { 6.0 } * mm_params as f64;
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(num_cpus);
    println!(
        "{}",
        json!({
            "impl": "anneal", "config": config, "method": method, "mixed_precision": precision, "threads": threads, "tokens_per_step": tokens,
            "step_s": (dt * 1e4).round() / 1e4, "tokens_per_s": (tps * 10.0).round() / 10.0,
            "peak_rss_mib": (status_kib("VmHWM:") / 102.4).round() / 10.0, "rss_after_import_mib": (rss_before * 10.0).round() / 10.0,
            "trainable_params": model.num_trainable_params(), "matmul_params": mm_params,
            "mfu": (flops_per_token * tps / PEAK_FLOPS * 1e4).round() / 1e4, "loss": (loss_v * 1e4).round() / 1e4,
        })
    );
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
