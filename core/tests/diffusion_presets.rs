//! Pipelines with swapped components (`with_unet` / `with_text_encoder`, as a training
//! run renders validation images), pixel-space pipelines (no VAE), the from-scratch
//! presets and the toy shapes data.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use anneal::diffusion::{
    ClipTextModel, PipelineConfig, StableDiffusionPipeline, Txt2ImgOutput, Txt2ImgRequest, UNet2DConditionModel,
};
use anneal::{CancelToken, ErrorKind, LoadOptions};
use candle_core::DType;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn tiny_sd() -> PathBuf {
    Path::new(FIXTURES).join("tiny-sd")
}

fn run(sd: &StableDiffusionPipeline, req: &Txt2ImgRequest) -> Txt2ImgOutput {
    sd.txt2img(req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap()
}

fn small(prompt: &str) -> Txt2ImgRequest {
    Txt2ImgRequest {
        num_inference_steps: 2,
        seed: Some(3),
        scheduler: Some("ddim".into()),
        ..Txt2ImgRequest::new(prompt)
    }
}

fn trainable() -> LoadOptions {
    LoadOptions { trainable: true, ..LoadOptions::default() }
}

/// Adds `delta` to every element of the first trainable weight named `name`.
fn bump(vars: &[(String, candle_core::Var)], name: &str, delta: f64) {
    let (_, v) = vars.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no var {name}"));
    v.set(&(v.as_tensor() + delta).unwrap()).unwrap();
}

#[test]
fn with_unet_renders_with_the_weights_being_trained() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    let unet = UNet2DConditionModel::load(tiny_sd().join("unet"), &trainable()).unwrap();
    let swapped = sd.with_unet(unet.clone()).unwrap();
    let req = small("a red circle");
    let before = run(&sd, &req);
    // Same weights as loaded: the same image.
    assert_eq!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    // Training changes the original's Vars: the swapped pipeline sees it, the loaded one does not.
    bump(&unet.named_trainable_vars(), "conv_out.bias", 0.5);
    let after = run(&swapped, &req);
    assert_ne!(after.images[0].rgb, before.images[0].rgb);
    assert_eq!(run(&sd, &req).images[0].rgb, before.images[0].rgb);
    assert!(swapped.vae().is_some());
    assert_eq!(swapped.dir(), sd.dir());
}

#[test]
fn with_unet_renders_with_a_lora_being_trained() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    let mut unet = UNet2DConditionModel::load(tiny_sd().join("unet"), &LoadOptions::default()).unwrap();
    unet.add_lora(&anneal::LoraConfig::default(), 0).unwrap();
    let swapped = sd.with_unet(unet.clone()).unwrap();
    let req = small("a red circle");
    let before = run(&sd, &req);
    // B starts at zero: the adapter changes nothing yet.
    assert_eq!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    let vars = unet.named_trainable_vars();
    let b = vars.iter().find(|(n, _)| n.contains("lora_B")).unwrap().0.clone();
    bump(&vars, &b, 0.5);
    assert_ne!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
}

#[test]
fn with_text_encoder_renders_with_the_weights_being_trained() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    let te = ClipTextModel::load(tiny_sd().join("text_encoder"), &trainable()).unwrap();
    let swapped = sd.with_text_encoder(te.clone()).unwrap();
    let req = small("a blue square");
    let before = run(&sd, &req);
    assert_eq!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    bump(&te.named_trainable_vars(), "text_model.final_layer_norm.bias", 1.0);
    assert_ne!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    assert_eq!(run(&sd, &req).images[0].rgb, before.images[0].rgb);
}

#[test]
fn with_unet_and_text_encoder_refuse_what_does_not_fit() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    // An SD 2-style UNet attending to 12-wide states, not the text encoder's 32.
    let other = UNet2DConditionModel::load(Path::new(FIXTURES).join("tiny-sd2-unet"), &LoadOptions::default()).unwrap();
    let e = sd.with_unet(other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("cross_attention_dim"), "{e}");
    // Another dtype than the pipeline's.
    let f16 = LoadOptions { dtype: DType::F16, ..LoadOptions::default() };
    let e = sd.with_unet(UNet2DConditionModel::load(tiny_sd().join("unet"), &f16).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("unet") && e.to_string().contains("F16"), "{e}");
    let e = sd.with_text_encoder(ClipTextModel::load(tiny_sd().join("text_encoder"), &f16).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("text_encoder"), "{e}");
}

/// Copies the tiny SD pipeline without its VAE, `vae` in model_index.json set to `vae`
/// (None: no key).
fn without_vae(tmp: &Path, vae: Option<serde_json::Value>) -> PathBuf {
    let dir = tmp.join("pipe");
    for sub in ["unet", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for f in std::fs::read_dir(tiny_sd().join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(tiny_sd().join("model_index.json")).unwrap();
    let mut idx: serde_json::Value = serde_json::from_str(&text).unwrap();
    match vae {
        Some(v) => idx["vae"] = v,
        None => {
            idx.as_object_mut().unwrap().remove("vae");
        }
    }
    std::fs::write(dir.join("model_index.json"), idx.to_string()).unwrap();
    dir
}

#[test]
fn a_pipeline_without_vae_needs_an_rgb_unet() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny SD UNet works on 4 latent channels: not pixels.
    let dir = without_vae(tmp.path(), Some(serde_json::json!([null, null])));
    let e = PipelineConfig::read(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("unet/config.json:in_channels"), "{e}");
    assert!(e.to_string().contains("pixel-space"), "{e}");
}

// ---------------------------------------------------------------- shapes

use anneal::diffusion::shapes::{self, Color, Shape};

#[test]
fn classify_recovers_every_drawn_colour_and_shape() {
    for size in [32, 64] {
        for seed in 0..8u64 {
            for c in Color::ALL {
                for s in Shape::ALL {
                    let img = shapes::draw(c.name(), s.name(), size, seed * 31 + size as u64).unwrap();
                    assert_eq!(img.rgb.len(), size * size * 3);
                    let got = shapes::classify(&img.rgb, img.width, img.height);
                    assert_eq!(got, (Some(c), Some(s)), "{} {} size {size} seed {seed}", c.name(), s.name());
                }
            }
        }
    }
}

#[test]
fn drawing_is_deterministic_and_jittered() {
    let a = shapes::draw("blue", "triangle", 32, 1).unwrap();
    assert_eq!(a, shapes::draw("blue", "triangle", 32, 1).unwrap());
    assert_ne!(a, shapes::draw("blue", "triangle", 32, 2).unwrap());
    let e = shapes::draw("purple", "circle", 32, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("color"), "{e}");
    assert_eq!(shapes::draw("red", "hexagon", 32, 1).unwrap_err().kind(), ErrorKind::InvalidConfig);
}

#[test]
fn score_matches_prompts_and_random_noise_scores_zero() {
    use rand::{Rng, SeedableRng};
    let data = shapes::generate(24, 32, 5).unwrap();
    let views: Vec<(usize, usize, &[u8])> = data.iter().map(|(i, _)| (i.width, i.height, i.rgb.as_slice())).collect();
    let right: Vec<&str> = data.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(shapes::score(&views, &right).unwrap(), 1.0);
    // Every prompt shifted by one: the colour (or the shape) is wrong.
    let wrong: Vec<&str> = (0..right.len()).map(|i| right[(i + 1) % right.len()]).collect();
    assert_eq!(shapes::score(&views, &wrong).unwrap(), 0.0);
    // Uniform noise and smooth random colour fields.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let noise: Vec<Vec<u8>> = (0..48).map(|_| (0..32 * 32 * 3).map(|_| rng.random::<u8>()).collect()).collect();
    let views: Vec<(usize, usize, &[u8])> = noise.iter().map(|n| (32, 32, n.as_slice())).collect();
    let prompts: Vec<&str> = (0..48).map(|i| right[i % right.len()]).collect();
    assert!(shapes::score(&views, &prompts).unwrap() < 0.05);
    assert_eq!(shapes::score(&views[..1], &prompts).unwrap_err().kind(), ErrorKind::InvalidConfig);
    assert_eq!(shapes::parse_prompt("A Yellow square!"), (Some(Color::Yellow), Some(Shape::Square)));
}

#[test]
fn write_imagefolder_writes_pngs_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shapes");
    shapes::write_imagefolder(&dir, 13, 32, 4).unwrap();
    let meta = std::fs::read_to_string(dir.join("metadata.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = meta.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13);
    assert_eq!(lines[0]["file_name"], "00000.png");
    assert_eq!(lines[0]["text"], "a red circle");
    assert_eq!(lines[12]["text"], "a red circle");
    assert_eq!(lines[5]["text"], "a green square");
    for l in &lines {
        let bytes = std::fs::read(dir.join(l["file_name"].as_str().unwrap())).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        let (c, s) = shapes::parse_prompt(l["text"].as_str().unwrap());
        assert_eq!(shapes::classify(img.as_raw(), 32, 32), (c, s));
    }
    // Not over an existing dataset; nothing left behind.
    let e = shapes::write_imagefolder(&dir, 2, 32, 4).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

// ---------------------------------------------------------------- presets

use anneal::diffusion::presets;

fn preset_dir(tmp: &Path, seed: u64) -> PathBuf {
    let dir = tmp.join(format!("tiny-shapes-{seed}"));
    presets::write_dir(presets::find("tiny-shapes").unwrap(), seed, &dir).unwrap();
    dir
}

#[test]
fn the_tiny_shapes_preset_is_a_pixel_space_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = preset_dir(tmp.path(), 1);
    let sd = StableDiffusionPipeline::load(&dir, &LoadOptions::default()).unwrap();
    assert!(sd.vae().is_none());
    assert!(sd.config().is_pixel_space());
    assert_eq!(sd.vae_scale_factor(), 1);
    assert_eq!(sd.default_size(), (32, 32));
    assert_eq!(sd.tokenizer().model_max_length(), 32);
    // Byte-level: "a red circle" is BOS, a</w>, r, e, d</w>, c, i, r, c, l, e</w>, EOS, then padding.
    let ids = sd.tokenizer().encode("a red circle").unwrap();
    assert_eq!(ids.len(), 32);
    assert_eq!(&ids[..2], &[512, 256 + u32::from(b'a' - b'!')]);
    // What transformers' CLIPTokenizer (slow and fast) gives for the same directory.
    assert_eq!(&ids[..12], &[512, 320, 81, 68, 323, 66, 72, 81, 66, 75, 324, 513]);
    assert!(ids[12..].iter().all(|&i| i == 513));
    let req = Txt2ImgRequest {
        num_inference_steps: 3,
        seed: Some(1),
        scheduler: Some("ddim".into()),
        guidance_scale: 2.0,
        ..Txt2ImgRequest::new("a red circle")
    };
    let out = run(&sd, &req);
    assert_eq!(out.images[0].width, 32);
    assert_eq!(out.images[0].rgb.len(), 32 * 32 * 3);
    assert_eq!(out.latents.dims(), &[1, 3, 32, 32]);
    // The pixels are the final latents mapped from [-1, 1] to [0, 1].
    let mapped = ((out.latents.clone() / 2.0).unwrap() + 0.5).unwrap().clamp(0f32, 1f32).unwrap();
    let mapped = mapped.permute((0, 2, 3, 1)).unwrap();
    let diff = (mapped - &out.pixels).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    // Sizes: multiples of the UNet's downsampling (4) only.
    let e = sd.txt2img(&Txt2ImgRequest { height: Some(30), ..req.clone() }, &mut |_, _| Ok(()), &CancelToken::new());
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidConfig);
    let out = run(&sd, &Txt2ImgRequest { height: Some(16), width: Some(24), ..req });
    assert_eq!((out.images[0].height, out.images[0].width), (16, 24));
}

#[test]
fn preset_weights_are_seeded_and_trainable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = preset_dir(tmp.path(), 3);
    let b = tmp.path().join("again");
    presets::write_dir(presets::find("tiny-shapes").unwrap(), 3, &b).unwrap();
    let c = preset_dir(tmp.path(), 4);
    for f in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
        let bytes = std::fs::read(a.join(f)).unwrap();
        assert_eq!(bytes, std::fs::read(b.join(f)).unwrap(), "{f}");
        assert_ne!(bytes, std::fs::read(c.join(f)).unwrap(), "{f}");
    }
    let unet = UNet2DConditionModel::load(a.join("unet"), &trainable()).unwrap();
    let n = unet.num_params().unwrap();
    assert!((500_000..3_000_000).contains(&n), "{n} parameters");
    assert!(!unet.trainable_vars().is_empty());
    let te = ClipTextModel::load(a.join("text_encoder"), &trainable()).unwrap();
    assert!(!te.trainable_vars().is_empty());
    // Training can render with them.
    let sd = StableDiffusionPipeline::load(&a, &LoadOptions::default()).unwrap();
    sd.with_unet(unet).unwrap().with_text_encoder(te).unwrap();
    // Not over an existing directory.
    let e = presets::write_dir(presets::find("tiny-shapes").unwrap(), 3, &a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(presets::find("nope").is_none());
    assert!(presets::presets().iter().any(|p| p.name == "tiny-shapes"));
}

// ---------------------------------------------------------------- learning

struct Hyper {
    steps: usize,
    lr: f64,
    batch: usize,
    warmup: usize,
    caption_dropout: f64,
    train_text_encoder: bool,
}

/// Shapes score of 24 images (each of the 12 prompts twice) sampled with the
/// preset's recommended sampler.
fn shapes_score(sd: &StableDiffusionPipeline, rec: &presets::Recommended) -> f64 {
    let prompts: Vec<String> = (0..12)
        .map(|i| {
            let (c, s) = shapes::pair(i);
            shapes::caption(c, s)
        })
        .collect();
    let req = Txt2ImgRequest {
        prompts: prompts.clone(),
        num_images_per_prompt: 2,
        num_inference_steps: rec.inference_steps,
        guidance_scale: rec.guidance_scale,
        scheduler: Some(rec.scheduler.into()),
        seed: Some(1234),
        ..Txt2ImgRequest::default()
    };
    let out = run(sd, &req);
    if let Ok(dir) = std::env::var("ANNEAL_SHAPES_SAMPLES") {
        for (i, img) in out.images.iter().enumerate() {
            img.save_png(Path::new(&dir).join(format!("{i:02}.png"))).unwrap();
        }
    }
    let views: Vec<(usize, usize, &[u8])> = out.images.iter().map(|i| (i.width, i.height, i.rgb.as_slice())).collect();
    let ps: Vec<&str> = out.images.iter().map(|i| i.settings.prompt.as_str()).collect();
    shapes::score(&views, &ps).unwrap()
}

/// Trains the tiny-shapes preset from scratch on 256 shapes images; returns the shapes
/// score before and after, and the seconds per step.
fn train_shapes(h: &Hyper) -> (f64, f64, f64) {
    use anneal::diffusion::Scheduler;
    use anneal::ForwardMode;
    use candle_core::{Device, Tensor};
    use candle_nn::Optimizer;
    use rand::{Rng, SeedableRng};

    let tmp = tempfile::tempdir().unwrap();
    let dir = preset_dir(tmp.path(), 0);
    let preset = presets::find("tiny-shapes").unwrap();
    let rec = preset.recommended;
    let sd = StableDiffusionPipeline::load(&dir, &LoadOptions::default()).unwrap();
    let unet = UNet2DConditionModel::load(dir.join("unet"), &trainable()).unwrap();
    let te = ClipTextModel::load(dir.join("text_encoder"), &trainable()).unwrap();
    let live = sd.with_unet(unet.clone()).unwrap().with_text_encoder(te.clone()).unwrap();
    let before = shapes_score(&live, &rec);

    let data = shapes::generate(256, preset.resolution, 11).unwrap();
    let n = data.len();
    let px: Vec<f32> = data
        .iter()
        .flat_map(|(img, _)| {
            // HWC u8 -> CHW in [-1, 1]
            let (w, hgt) = (img.width, img.height);
            (0..3).flat_map(move |c| (0..hgt * w).map(move |i| img.rgb[i * 3 + c] as f32 / 127.5 - 1.0))
        })
        .collect();
    let images = Tensor::from_vec(px, (n, 3, preset.resolution, preset.resolution), &Device::Cpu).unwrap();
    let captions: Vec<&str> = data.iter().map(|(_, c)| c.as_str()).collect();
    let sched = Scheduler::from_pipeline_dir(&dir, None).unwrap();
    let mut vars = unet.trainable_vars();
    if h.train_text_encoder {
        vars.extend(te.trainable_vars());
    }
    let params = candle_nn::ParamsAdamW { lr: h.lr, weight_decay: 1e-2, ..Default::default() };
    let mut opt = candle_nn::AdamW::new(vars, params).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let start = std::time::Instant::now();
    for step in 0..h.steps {
        let lr = h.lr * ((step + 1) as f64 / h.warmup.max(1) as f64).min(1.0);
        opt.set_learning_rate(lr);
        let idx: Vec<u32> = (0..h.batch).map(|_| rng.random_range(0..n as u32)).collect();
        let x0 = images.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
        let caps: Vec<&str> = idx
            .iter()
            .map(|&i| if rng.random::<f64>() < h.caption_dropout { "" } else { captions[i as usize] })
            .collect();
        let ids = sd.tokenizer().to_tensor(&caps, &Device::Cpu).unwrap();
        let ctx = te.prompt_embeds(&ids, None, ForwardMode::Train).unwrap();
        let ctx = if h.train_text_encoder { ctx } else { ctx.detach() };
        let t: Vec<f64> = (0..h.batch).map(|_| rng.random_range(0..1000) as f64).collect();
        let noise = x0.randn_like(0.0, 1.0).unwrap();
        let xt = sched.add_noise(&x0, &noise, &t).unwrap();
        let ts = Tensor::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(), &Device::Cpu).unwrap();
        let eps = unet.forward(&xt, &ts, &ctx, ForwardMode::Train).unwrap();
        let loss = (eps - &noise).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
        if step % 50 == 0 || step + 1 == h.steps {
            eprintln!(
                "step {step} loss {:.4} ({:.2}s)",
                loss.to_scalar::<f32>().unwrap(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    let per_step = start.elapsed().as_secs_f64() / h.steps as f64;
    let after = shapes_score(&live, &rec);
    eprintln!("shapes score {before:.3} -> {after:.3}, {per_step:.3} s/step");
    (before, after, per_step)
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// Trains tiny-shapes from scratch with its recommended settings and checks that the
/// shapes score of its samples goes from ~0 to at least 0.5. Minutes on a CPU, so not
/// in the default run:
///
/// ```text
/// cargo test -p anneal --test integration diffusion_presets::tiny_shapes_learns -- --ignored --nocapture
/// ```
///
/// `ANNEAL_SHAPES_STEPS`, `_LR`, `_BATCH`, `_DROPOUT`, `_TRAIN_TE` override the
/// recommended settings; `ANNEAL_SHAPES_SAMPLES=<dir>` saves the scored samples as PNGs.
#[test]
#[ignore]
fn tiny_shapes_learns_the_shapes() {
    let rec = presets::find("tiny-shapes").unwrap().recommended;
    let h = Hyper {
        steps: env_or("ANNEAL_SHAPES_STEPS", rec.steps),
        lr: env_or("ANNEAL_SHAPES_LR", rec.learning_rate),
        batch: env_or("ANNEAL_SHAPES_BATCH", rec.batch_size),
        warmup: rec.warmup_steps,
        caption_dropout: env_or("ANNEAL_SHAPES_DROPOUT", rec.caption_dropout),
        train_text_encoder: env_or("ANNEAL_SHAPES_TRAIN_TE", rec.train_text_encoder),
    };
    let (before, after, _) = train_shapes(&h);
    assert!(before < 0.15, "{before}");
    assert!(after >= 0.5, "{after}");
}
