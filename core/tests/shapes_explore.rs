//! SCRATCH (not committed): explores preset / training settings for the shapes data.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anneal::diffusion::{
    presets, shapes, ClipTextModel, Scheduler, StableDiffusionPipeline, Txt2ImgRequest, UNet2DConditionModel,
};
use anneal::{CancelToken, ForwardMode, LoadOptions};
use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}
fn envs(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}
/// CPU seconds of this process (user + system) / 2 cores: the wall time an idle 2-core machine would take.
fn cpu_s() -> f64 {
    let st = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &st[st.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let (u, s): (f64, f64) = (f[11].parse().unwrap(), f[12].parse().unwrap());
    (u + s) / 100.0
}
fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

fn preset() -> presets::DiffusionPreset {
    let base = presets::find("tiny-shapes").unwrap().clone();
    let ch: Vec<usize> = envs("X_CH", "16,32,64").split(',').map(|s| s.parse().unwrap()).collect();
    // A = cross attn, D = plain
    let kinds: Vec<char> = envs("X_DOWN", "DAA").chars().collect();
    assert_eq!(kinds.len(), ch.len());
    let down: Vec<&'static str> =
        kinds.iter().map(|k| if *k == 'A' { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let up: Vec<&'static str> =
        kinds.iter().rev().map(|k| if *k == 'A' { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect();
    let mid = match envs("X_MID", "A").as_str() {
        "A" => Some("UNetMidBlock2DCrossAttn"),
        _ => Some("UNetMidBlock2D"),
    };
    presets::DiffusionPreset {
        resolution: env("X_RES", 32),
        block_out_channels: leak(ch),
        down_block_types: leak(down),
        up_block_types: leak(up),
        mid_block_type: mid,
        layers_per_block: env("X_LPB", 1),
        attention_heads: env("X_HEADS", 4),
        norm_num_groups: env("X_GROUPS", 8),
        text_hidden_size: env("X_TH", 64),
        text_layers: env("X_TL", 2),
        text_heads: env("X_THEADS", 4),
        text_intermediate_size: env("X_TFF", 256),
        max_length: env("X_MAXLEN", 32),
        beta_schedule: Box::leak(envs("X_BETA", "squaredcos_cap_v2").into_boxed_str()),
        ..base
    }
}

fn prompts() -> Vec<String> {
    (0..12).map(shapes::pair).map(|(c, s)| shapes::caption(c, s)).collect()
}

/// (score, colour acc, shape acc)
fn score(sd: &StableDiffusionPipeline, per: usize, save: Option<&Path>) -> (f64, f64, f64, f64) {
    score_with(sd, per, save, &envs("X_SAMPLER", "ddim"), env("X_ISTEPS", 25), env("X_GUIDE", 3.0))
}

fn score_with(
    sd: &StableDiffusionPipeline,
    per: usize,
    save: Option<&Path>,
    sampler: &str,
    steps: usize,
    guide: f64,
) -> (f64, f64, f64, f64) {
    let req = Txt2ImgRequest {
        prompts: prompts(),
        num_images_per_prompt: per,
        num_inference_steps: steps,
        guidance_scale: guide,
        scheduler: Some(sampler.into()),
        seed: Some(1234),
        ..Txt2ImgRequest::default()
    };
    let t = cpu_s();
    let out = sd.txt2img(&req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap();
    let gen_s = cpu_s() - t;
    let (mut both, mut col, mut shp) = (0, 0, 0);
    for img in &out.images {
        let (c, s) = shapes::parse_prompt(&img.settings.prompt);
        let (gc, gs) = shapes::classify(&img.rgb, img.width, img.height);
        col += usize::from(gc == c);
        shp += usize::from(gs == s);
        both += usize::from(gc == c && gs == s);
    }
    if let Some(dir) = save {
        use anneal::diffusion::image::{self, RgbImage};
        let cells: Vec<RgbImage> = out
            .images
            .iter()
            .map(|i| {
                let k = 4;
                let mut big = Vec::with_capacity(i.rgb.len() * k * k);
                for y in 0..i.height * k {
                    for x in 0..i.width * k {
                        let at = ((y / k) * i.width + x / k) * 3;
                        big.extend_from_slice(&i.rgb[at..at + 3]);
                    }
                }
                RgbImage::new((i.width * k) as u32, (i.height * k) as u32, big).unwrap()
            })
            .collect();
        // one column per prompt, `per` rows
        let rows: Vec<Vec<&RgbImage>> = (0..per).map(|r| (0..12).map(|p| &cells[p * per + r]).collect()).collect();
        std::fs::write(dir, image::encode_png(&image::grid(&rows).unwrap()).unwrap()).unwrap();
    }
    let n = out.images.len() as f64;
    (both as f64 / n, col as f64 / n, shp as f64 / n, gen_s)
}

#[test]
#[ignore]
fn explore() {
    let p = preset();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    presets::write_dir(&p, env("X_SEED", 0), &dir).unwrap();
    let pred = envs("X_PRED", "epsilon");
    if pred != "epsilon" {
        let f = dir.join("scheduler/scheduler_config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        v["prediction_type"] = pred.clone().into();
        std::fs::write(&f, v.to_string()).unwrap();
    }
    let lo = LoadOptions { trainable: true, ..LoadOptions::default() };
    let sd = StableDiffusionPipeline::load(&dir, &LoadOptions::default()).unwrap();
    let unet = UNet2DConditionModel::load(dir.join("unet"), &lo).unwrap();
    let te = ClipTextModel::load(dir.join("text_encoder"), &lo).unwrap();
    let live = sd.with_unet(unet.clone()).unwrap().with_text_encoder(te.clone()).unwrap();
    eprintln!(
        "unet params {} te params {}",
        unet.num_params().unwrap(),
        te.trainable_vars().iter().map(|v| v.elem_count()).sum::<usize>()
    );
    let per: usize = env("X_PER", 4);
    let res = p.resolution;
    // ground-truth classify accuracy at this size
    let gt = shapes::generate(480, res, 99).unwrap();
    let ok = gt.iter().filter(|(i, c)| shapes::score(&[(i.width, i.height, &i.rgb)], &[c]).unwrap() == 1.0).count();
    eprintln!("classify on drawn images at {res}: {ok}/480");

    let data = shapes::generate(env("X_N", 480), res, 0).unwrap();
    let n = data.len();
    let px: Vec<f32> = data
        .iter()
        .flat_map(|(img, _)| {
            let (w, h) = (img.width, img.height);
            (0..3).flat_map(move |c| (0..h * w).map(move |i| img.rgb[i * 3 + c] as f32 / 127.5 - 1.0))
        })
        .collect();
    let images = Tensor::from_vec(px, (n, 3, res, res), &Device::Cpu).unwrap();
    let captions: Vec<&str> = data.iter().map(|(_, c)| c.as_str()).collect();
    let sched = Scheduler::from_pipeline_dir(&dir, Some(anneal::diffusion::SchedulerKind::Ddpm)).unwrap();
    let acp: Vec<f64> = sched.alphas_cumprod().iter().map(|&a| f64::from(a)).collect();
    let train_te: bool = env("X_TRAIN_TE", true);
    let mut vars = unet.trainable_vars();
    if train_te {
        vars.extend(te.trainable_vars());
    }
    let lr: f64 = env("X_LR", 1e-3);
    let steps: usize = env("X_STEPS", 100_000);
    let budget: f64 = env("X_SECONDS", 300.0);
    let warmup: usize = env("X_WARMUP", 20);
    let batch: usize = env("X_BATCH", 16);
    let dropout: f64 = env("X_DROPOUT", 0.1);
    let gamma: f64 = env("X_SNR", 0.0);
    let cosine: bool = env("X_COSINE", false);
    let eval_every: f64 = env("X_EVAL_EVERY", 60.0);
    let params = candle_nn::ParamsAdamW { lr, weight_decay: env("X_WD", 0.0), ..Default::default() };
    let all_vars = vars.clone();
    let mut opt = candle_nn::AdamW::new(vars, params).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env("X_SEED", 0u64) + 5);
    let before = score(&live, per, None);
    eprintln!("before: {before:?}");
    let mut train_s = 0.0;
    let mut next_eval = eval_every;
    let out_dir = envs("X_OUT", "/tmp/imgq-explore");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut step = 0;
    let mut prof = [0f64; 4];
    let mut loss_avg = 0.0;
    while step < steps && train_s < budget {
        let t0 = cpu_s();
        let frac = (train_s / budget).max(step as f64 / steps as f64);
        let mut cur = lr * ((step + 1) as f64 / warmup.max(1) as f64).min(1.0);
        if cosine {
            cur *= 0.5 * (1.0 + (std::f64::consts::PI * frac).cos());
        }
        opt.set_learning_rate(cur);
        let idx: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
        let x0 = images.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
        let caps: Vec<&str> =
            idx.iter().map(|&i| if rng.random::<f64>() < dropout { "" } else { captions[i as usize] }).collect();
        let ids = sd.tokenizer().to_tensor(&caps, &Device::Cpu).unwrap();
        let tp = std::time::Instant::now();
        let ctx = te.prompt_embeds(&ids, None, ForwardMode::Train).unwrap();
        prof[0] += tp.elapsed().as_secs_f64();
        let ctx = if train_te { ctx } else { ctx.detach() };
        let t: Vec<usize> = (0..batch).map(|_| rng.random_range(0..1000)).collect();
        let noise = x0.randn_like(0.0, 1.0).unwrap();
        let a: Vec<f32> = t.iter().map(|&i| acp[i].sqrt() as f32).collect();
        let s: Vec<f32> = t.iter().map(|&i| (1.0 - acp[i]).sqrt() as f32).collect();
        let sa = Tensor::from_vec(a, (batch, 1, 1, 1), &Device::Cpu).unwrap();
        let s1a = Tensor::from_vec(s, (batch, 1, 1, 1), &Device::Cpu).unwrap();
        let xt = (x0.broadcast_mul(&sa).unwrap() + noise.broadcast_mul(&s1a).unwrap()).unwrap();
        let target = if pred == "v_prediction" {
            (noise.broadcast_mul(&sa).unwrap() - x0.broadcast_mul(&s1a).unwrap()).unwrap()
        } else if pred == "sample" {
            x0.clone()
        } else {
            noise.clone()
        };
        let ts = Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &Device::Cpu).unwrap();
        let tp = std::time::Instant::now();
        let out = unet.forward(&xt, &ts, &ctx, ForwardMode::Train).unwrap();
        prof[1] += tp.elapsed().as_secs_f64();
        let mse = (out - target).unwrap().sqr().unwrap().flatten_from(1).unwrap().mean(1).unwrap();
        let mse = if gamma > 0.0 {
            let w: Vec<f32> = t
                .iter()
                .map(|&i| {
                    let snr = acp[i] / (1.0 - acp[i]);
                    let m = snr.min(gamma);
                    (if pred == "v_prediction" {
                        m / (snr + 1.0)
                    } else if pred == "sample" {
                        m
                    } else {
                        m / snr
                    }) as f32
                })
                .collect();
            mse.mul(&Tensor::from_vec(w, batch, &Device::Cpu).unwrap()).unwrap()
        } else {
            mse
        };
        let loss = mse.mean_all().unwrap();
        let tp = std::time::Instant::now();
        let mut grads = loss.backward().unwrap();
        // The engine's default: the global gradient norm clipped to X_CLIP (1.0).
        let clip: f64 = env("X_CLIP", 1.0);
        if clip > 0.0 {
            let mut sq = 0f64;
            for v in &all_vars {
                if let Some(g) = grads.get(v) {
                    sq += f64::from(g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap());
                }
            }
            let norm = sq.sqrt();
            if norm > clip {
                for v in &all_vars {
                    if let Some(g) = grads.remove(v) {
                        grads.insert(v, (g * (clip / norm)).unwrap());
                    }
                }
            }
        }
        prof[2] += tp.elapsed().as_secs_f64();
        let tp = std::time::Instant::now();
        opt.step(&grads).unwrap();
        prof[3] += tp.elapsed().as_secs_f64();
        loss_avg = 0.98 * loss_avg + 0.02 * f64::from(loss.to_scalar::<f32>().unwrap());
        step += 1;
        train_s += cpu_s() - t0;
        if train_s >= next_eval || step >= steps || train_s >= budget {
            next_eval += eval_every;
            eprintln!(
                "wall per step: text encoder {:.4}s, unet forward {:.4}s, backward {:.4}s, optimiser {:.4}s",
                prof[0] / step as f64,
                prof[1] / step as f64,
                prof[2] / step as f64,
                prof[3] / step as f64
            );
            let f = format!("{out_dir}/t{:04}.png", train_s as usize);
            let sc = score(&live, per, Some(Path::new(&f)));
            eprintln!(
                "step {step} train {train_s:.0}s ({:.3}s/step) loss~{loss_avg:.4} score {:.3} colour {:.3} shape {:.3} (gen {:.1}s)",
                train_s / step as f64,
                sc.0,
                sc.1,
                sc.2,
                sc.3
            );
        }
    }
    for combo in envs("X_FINAL", "").split(';').filter(|c| !c.is_empty()) {
        let f: Vec<&str> = combo.split(':').collect();
        let (st, g): (usize, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let file = format!("{out_dir}/final-{}-{st}-{g}.png", f[0]);
        let sc = score_with(&live, 4, Some(Path::new(&file)), f[0], st, g);
        eprintln!(
            "final {combo}: score {:.3} colour {:.3} shape {:.3} (gen {:.1}s, 48 images)",
            sc.0, sc.1, sc.2, sc.3
        );
    }
}
