//! Text-to-image with the tiny Stable Diffusion pipeline: parity with diffusers'
//! StableDiffusionPipeline given the same initial latents and from the same seed
//! (tests/fixtures/make_tiny_sd_pipeline_refs.py), seeded reproducibility, progress and
//! cancel, threads, PNG text chunks, and bad requests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anneal::diffusion::png;
use anneal::diffusion::{ImageSettings, StableDiffusionPipeline, Txt2ImgOutput, Txt2ImgRequest};
use anneal::{CancelToken, ErrorKind, LoadOptions, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn pipe_dir() -> PathBuf {
    Path::new(FIXTURES).join("tiny-sd")
}

fn load() -> StableDiffusionPipeline {
    StableDiffusionPipeline::load(pipe_dir(), &LoadOptions::default()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn run(sd: &StableDiffusionPipeline, req: &Txt2ImgRequest) -> Result<Txt2ImgOutput> {
    sd.txt2img(req, &mut |_, _| Ok(()), &CancelToken::new())
}

fn small(prompt: &str) -> Txt2ImgRequest {
    Txt2ImgRequest { num_inference_steps: 3, seed: Some(7), ..Txt2ImgRequest::new(prompt) }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn pipeline_refs() -> (HashMap<String, Tensor>, Value) {
    let refs =
        candle_core::safetensors::load(Path::new(FIXTURES).join("sd-refs/pipeline.safetensors"), &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("sd-refs/pipeline.json")).unwrap();
    (refs, serde_json::from_str(&text).unwrap())
}

/// The request of a case of sd-refs/pipeline.json (no latents, no seed).
fn case_request(case: &Value) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompts: strings(&case["prompts"]),
        negative_prompts: strings(&case["negative_prompts"]),
        guidance_scale: case["guidance_scale"].as_f64().unwrap(),
        num_inference_steps: case["steps"].as_u64().unwrap() as usize,
        scheduler: Some(case["scheduler"].as_str().unwrap().to_string()),
        height: case["height"].as_u64().map(|v| v as usize),
        width: case["width"].as_u64().map(|v| v as usize),
        num_images_per_prompt: case["num_images_per_prompt"].as_u64().unwrap() as usize,
        clip_skip: case["clip_skip"].as_u64().map(|v| v as usize),
        ..Txt2ImgRequest::default()
    }
}

/// Checks `out` against diffusers' images and final latents of the case (<= 1e-3) and
/// the 8-bit images and their settings.
fn check_case(name: &str, case: &Value, req: &Txt2ImgRequest, out: &Txt2ImgOutput, refs: &HashMap<String, Tensor>) {
    let want = &refs[&format!("{name}.images")];
    let d_img = max_abs_diff(&out.pixels, want);
    let d_lat = max_abs_diff(&out.latents, &refs[&format!("{name}.final_latents")]);
    eprintln!("{name}: images max abs diff {d_img:.3e} (pixels in [0, 1]), final latents {d_lat:.3e}");
    assert!(d_img <= 1e-3, "{name}: images differ from diffusers by {d_img}");
    assert!(d_lat <= 1e-3, "{name}: final latents differ from diffusers by {d_lat}");
    let (b, h, w, _) = want.dims4().unwrap();
    assert_eq!(out.images.len(), b);
    assert_eq!(
        (h, w),
        (case["resolved_height"].as_u64().unwrap() as usize, case["resolved_width"].as_u64().unwrap() as usize)
    );
    // RGB8 is diffusers' numpy_to_pil: round(x * 255).
    let flat: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let rgb: Vec<u8> = out.images.iter().flat_map(|i| i.rgb.iter().copied()).collect();
    let off = flat.iter().zip(&rgb).map(|(&x, &p)| ((x * 255.0).round() - p as f32).abs()).fold(0f32, f32::max);
    assert!(off <= 1.0, "{name}: 8-bit pixels off by {off}");
    for (i, img) in out.images.iter().enumerate() {
        let s = &img.settings;
        assert_eq!((img.height, img.width, img.rgb.len()), (h, w, h * w * 3));
        assert_eq!(s.prompt, req.prompts[i / req.num_images_per_prompt]);
        assert_eq!(s.scheduler, case["scheduler"].as_str().unwrap());
        assert_eq!(s.steps, req.num_inference_steps);
    }
}

#[test]
fn txt2img_matches_diffusers_with_equal_initial_latents() {
    let sd = load();
    let (refs, cases) = pipeline_refs();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let req = Txt2ImgRequest { latents: Some(refs[&format!("{name}.latents")].clone()), ..case_request(case) };
        let out = run(&sd, &req).unwrap();
        check_case(name, case, &req, &out, &refs);
        for img in &out.images {
            assert_eq!(img.settings.seed, None, "given latents: no seed reproduces the image");
        }
    }
}

/// diffusers with `generator=[torch.Generator().manual_seed(seed + i) for i in
/// range(images)]` against anneal with `seed`: the initial latents and every step's
/// noise come from the same torch-compatible generators (see the pipeline's module docs).
#[test]
fn txt2img_matches_diffusers_from_the_same_seed() {
    let (refs, cases) = pipeline_refs();
    let cases = cases["seeded_cases"].as_array().unwrap();
    let schedulers: Vec<&str> = cases.iter().map(|c| c["scheduler"].as_str().unwrap()).collect();
    for kind in ["ddim", "ddpm", "euler_ancestral", "dpmpp_2m"] {
        assert!(schedulers.contains(&kind), "no seeded {kind} case");
    }
    let base = load();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // A case's scheduler config overrides go into a copy of the pipeline, as diffusers'
        // `<Class>.from_config(config, **overrides)`.
        let overrides = case["scheduler_config"].as_object().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sd = if overrides.is_empty() {
            base.clone()
        } else {
            copy_dir(&pipe_dir(), dir.path());
            let path = dir.path().join("scheduler/scheduler_config.json");
            let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for (k, v) in overrides {
                cfg[k] = v.clone();
            }
            std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
            StableDiffusionPipeline::load(dir.path(), &LoadOptions::default()).unwrap()
        };
        let seed = case["seed"].as_u64().unwrap();
        let req = Txt2ImgRequest { seed: Some(seed), ..case_request(case) };
        let out = run(&sd, &req).unwrap();
        check_case(name, case, &req, &out, &refs);
        assert_eq!(out.seed, seed);
        for (i, img) in out.images.iter().enumerate() {
            assert_eq!(img.settings.seed, Some(seed + i as u64));
        }
    }
}

#[test]
fn a_seed_reproduces_the_same_images_bit_for_bit() {
    let sd = load();
    // Euler ancestral draws noise at every step too.
    let req = Txt2ImgRequest {
        scheduler: Some("euler_a".into()),
        num_images_per_prompt: 2,
        negative_prompts: vec!["blurry".into()],
        ..small("a red circle")
    };
    let a = run(&sd, &req).unwrap();
    let b = run(&sd, &req).unwrap();
    assert_eq!(a.images, b.images);
    assert_eq!(max_abs_diff(&a.pixels, &b.pixels), 0.0);
    assert_eq!(a.seed, 7);
    assert_eq!(a.images[0].settings.seed, Some(7));
    assert_eq!(a.images[1].settings.seed, Some(8));
    assert_eq!(a.images[0].settings.scheduler, "euler_ancestral");
    assert_ne!(a.images[0].rgb, a.images[1].rgb, "each image of a batch has its own noise");
    let other = run(&sd, &Txt2ImgRequest { seed: Some(8), ..req.clone() }).unwrap();
    assert_ne!(other.images[0].rgb, a.images[0].rgb);
    // An image's own seed regenerates it alone (same prompt and settings, batch of one).
    let alone = run(&sd, &Txt2ImgRequest { seed: Some(8), num_images_per_prompt: 1, ..req.clone() }).unwrap();
    let d = max_abs_diff(&alone.pixels.get(0).unwrap(), &a.pixels.get(1).unwrap());
    assert!(d < 1e-5, "image 1 of the batch vs seed 8 alone: {d}");
    // No seed: a random one is drawn and reported.
    let random = run(&sd, &Txt2ImgRequest { seed: None, ..req }).unwrap();
    assert!(random.seed < 1 << 32);
    assert_eq!(random.images[0].settings.seed, Some(random.seed));
}

#[test]
fn progress_reports_every_step_and_cancel_stops_with_cancelled() {
    let sd = load();
    let req = Txt2ImgRequest { num_inference_steps: 5, scheduler: Some("ddim".into()), ..small("a blue square") };
    let mut seen = Vec::new();
    sd.txt2img(
        &req,
        &mut |s, t| {
            seen.push((s, t));
            Ok(())
        },
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(seen, (1..=5).map(|s| (s, 5)).collect::<Vec<_>>());

    let cancel = CancelToken::new();
    let mut steps = 0;
    let err = sd
        .txt2img(
            &req,
            &mut |s, _| {
                steps = s;
                if s == 2 {
                    cancel.cancel();
                }
                Ok(())
            },
            &cancel,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(err.code(), "cancelled");
    assert_eq!(steps, 2, "the step after the cancel did not run");

    // Cancelled before it starts; an error from the progress callback stops the call.
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let mut called = false;
    let err = sd
        .txt2img(
            &req,
            &mut |_, _| {
                called = true;
                Ok(())
            },
            &cancelled,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(!called);
    let err = sd.txt2img(&req, &mut |_, _| Err(anneal::Error::Callback("stop".into())), &CancelToken::new());
    assert_eq!(err.unwrap_err().code(), "callback_failed");
}

#[test]
fn defaults_come_from_the_pipeline() {
    let sd = load();
    assert_eq!(sd.vae_scale_factor(), 2);
    assert_eq!(sd.size_multiple(), 4);
    assert_eq!(sd.default_size(), (16, 16));
    assert_eq!(anneal::diffusion::scheduler_name(sd.default_scheduler()), "ddpm");
    let out = run(&sd, &small("a green star")).unwrap();
    let s = &out.images[0].settings;
    assert_eq!((s.width, s.height, s.scheduler.as_str()), (16, 16, "ddpm"));
    assert_eq!(s.guidance_scale, 7.5);
    assert_eq!(out.pixels.dims(), &[1, 16, 16, 3]);
    assert_eq!(out.latents.dims(), &[1, 4, 8, 8]);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    // Non-square, every scheduler by its short name, clip_skip.
    for name in ["ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "DPMSolverMultistepScheduler"] {
        let req = Txt2ImgRequest {
            scheduler: Some(name.into()),
            height: Some(8),
            width: Some(20),
            clip_skip: Some(1),
            ..small("a green star")
        };
        let out = run(&sd, &req).unwrap();
        assert_eq!(out.pixels.dims(), &[1, 8, 20, 3], "{name}");
        let v: Vec<f32> = out.pixels.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{name}");
    }
}

#[test]
fn warnings_name_truncated_prompts_and_ignored_negatives() {
    let sd = load();
    let long = "a red circle on a white background next to a wooden house at sunset highly detailed";
    let req = Txt2ImgRequest { guidance_scale: 1.0, negative_prompts: vec!["blurry".into()], ..small(long) };
    let out = run(&sd, &req).unwrap();
    assert!(out.warnings.iter().any(|w| w.contains("prompt 0 has") && w.contains("first 16")), "{:?}", out.warnings);
    assert!(out.warnings.iter().any(|w| w.contains("negative prompts are ignored")), "{:?}", out.warnings);
    assert_eq!(out.images[0].settings.negative_prompt, "");
}

#[test]
fn bad_requests_are_typed_errors_naming_the_field() {
    let sd = load();
    let cfg = |req: Txt2ImgRequest, field: &str| {
        let e = run(&sd, &req).unwrap_err();
        assert_eq!(e.code(), "invalid_config", "{e}");
        assert!(e.to_string().contains(&format!("`{field}`")), "{field}: {e}");
        e
    };
    let e = cfg(Txt2ImgRequest { height: Some(18), ..small("x") }, "height");
    assert!(e.to_string().contains("multiple of 4"), "{e}");
    cfg(Txt2ImgRequest { width: Some(0), ..small("x") }, "width");
    cfg(Txt2ImgRequest { prompts: vec![], ..small("x") }, "prompts");
    cfg(
        Txt2ImgRequest {
            prompts: vec!["a".into(), "b".into(), "c".into()],
            negative_prompts: vec!["x".into(), "y".into()],
            ..small("x")
        },
        "negative_prompts",
    );
    cfg(Txt2ImgRequest { scheduler: Some("pndm".into()), ..small("x") }, "scheduler");
    cfg(Txt2ImgRequest { num_inference_steps: 0, ..small("x") }, "num_inference_steps");
    cfg(Txt2ImgRequest { num_inference_steps: 5000, ..small("x") }, "num_inference_steps");
    cfg(Txt2ImgRequest { num_images_per_prompt: 0, ..small("x") }, "num_images_per_prompt");
    cfg(Txt2ImgRequest { guidance_scale: f64::NAN, ..small("x") }, "guidance_scale");
    cfg(Txt2ImgRequest { clip_skip: Some(2), ..small("x") }, "clip_skip");
    let wrong = Tensor::zeros((1, 4, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    cfg(Txt2ImgRequest { latents: Some(wrong), ..small("x") }, "latents");

    // A 100-megapixel image is refused before anything is allocated.
    let huge = Txt2ImgRequest { height: Some(10_240), width: Some(10_240), ..small("x") };
    let e = cfg(huge.clone(), "height/width");
    assert!(e.to_string().contains("memory limit"), "{e}");
    assert!(sd.estimate_memory(&huge).unwrap() > 100 << 30);
    // The same limit names the batch when one image fits but not the whole batch.
    let one = sd.estimate_memory(&small("x")).unwrap();
    let limited = sd.clone().with_memory_limit(one * 3);
    assert_eq!(limited.memory_limit(), one * 3);
    run(&limited, &small("x")).unwrap();
    let e = run(&limited, &Txt2ImgRequest { num_images_per_prompt: 8, ..small("x") }).unwrap_err();
    assert!(e.to_string().contains("`num_images_per_prompt`"), "{e}");
}

#[test]
fn one_pipeline_serves_several_threads() {
    let sd = load();
    let req = Txt2ImgRequest { scheduler: Some("dpmpp_2m".into()), ..small("a purple hexagon") };
    let alone = run(&sd, &req).unwrap();
    let steps = AtomicUsize::new(0);
    let outs: Vec<Txt2ImgOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (sd, req, steps) = (sd.clone(), req.clone(), &steps);
                s.spawn(move || {
                    sd.txt2img(
                        &req,
                        &mut |_, _| {
                            steps.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        },
                        &CancelToken::new(),
                    )
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(steps.load(Ordering::Relaxed), 9);
    for out in outs {
        assert_eq!(out.images, alone.images);
    }
}

fn settings() -> ImageSettings {
    ImageSettings {
        prompt: "a red circle, on white".into(),
        negative_prompt: "blurry".into(),
        seed: Some(42),
        steps: 20,
        guidance_scale: 7.5,
        scheduler: "dpmpp_2m".into(),
        karras_sigmas: false,
        width: 16,
        height: 8,
        clip_skip: Some(1),
        model: Some("tiny-sd@2".into()),
    }
}

#[test]
fn png_carries_the_settings_in_text_chunks() {
    let sd = load();
    let req = Txt2ImgRequest {
        model: Some("tiny-sd@2".into()),
        negative_prompts: vec!["blurry".into()],
        ..small("a red circle")
    };
    let out = run(&sd, &req).unwrap();
    let img = &out.images[0];
    let bytes = img.to_png().unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let back = png::decode(&bytes).unwrap();
    assert_eq!((back.width, back.height), (16, 16));
    assert_eq!(back.rgb, img.rgb);
    assert_eq!(back.settings().unwrap().unwrap(), img.settings);
    let params = back.text(png::PARAMETERS_KEY).unwrap();
    assert_eq!(
        params,
        format!(
            "a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: DDPM, CFG scale: 7.5, Seed: 7, Size: 16x16, \
             Model: tiny-sd@2, Version: anneal {}",
            env!("CARGO_PKG_VERSION")
        )
    );

    // Written atomically to a path; nothing else is left in the directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    img.save_png(&path).unwrap();
    assert_eq!(png::read(&path).unwrap(), back);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let e = img.save_png(dir.path().join("missing-dir/out.png")).unwrap_err();
    assert_eq!(e.code(), "file_not_found", "{e}");
    assert!(e.to_string().contains("missing-dir"), "{e}");
}

#[test]
fn png_text_follows_a1111_and_keeps_unicode() {
    let mut s = settings();
    let text = png::parameters_text(&s);
    assert_eq!(
        text.lines().last().unwrap(),
        format!(
            "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 16x8, Model: tiny-sd@2, Clip skip: 2, \
             Version: anneal {}",
            env!("CARGO_PKG_VERSION")
        )
    );
    // Values with a comma or colon are JSON-quoted; Karras sigmas are a schedule type.
    s.model = Some("hub:org/model, v2".into());
    s.karras_sigmas = true;
    s.negative_prompt.clear();
    let text = png::parameters_text(&s);
    assert!(text.contains("Schedule type: Karras"), "{text}");
    assert!(text.contains(r#"Model: "hub:org/model, v2""#), "{text}");
    assert!(!text.contains("Negative prompt"), "{text}");

    // Not Latin-1: iTXt; Latin-1 with accents: tEXt; both read back the same.
    for prompt in ["un café crème", "日本の猫 🐈"] {
        s.prompt = prompt.into();
        let rgb: Vec<u8> = (0..16 * 8 * 3).map(|i| (i % 251) as u8).collect();
        let bytes = png::encode_rgb8(16, 8, &rgb, &png::settings_chunks(&s).unwrap()).unwrap();
        let back = png::decode(&bytes).unwrap();
        assert_eq!(back.rgb, rgb);
        assert_eq!(back.settings().unwrap().unwrap(), s);
        assert!(back.text(png::PARAMETERS_KEY).unwrap().starts_with(prompt));
        let itxt = bytes.windows(4).any(|w| w == b"iTXt");
        assert_eq!(itxt, !prompt.is_ascii() && prompt.chars().any(|c| c as u32 > 255), "{prompt}");
    }

    // Bad input is typed.
    assert_eq!(png::encode_rgb8(4, 4, &[0; 5], &[]).unwrap_err().code(), "invalid_config");
    assert_eq!(png::encode_rgb8(0, 4, &[], &[]).unwrap_err().code(), "invalid_config");
    let e = png::decode(b"\x89PNG\r\n\x1a\nnot really").unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    let bytes = png::encode_rgb8(2, 2, &[9; 12], &[]).unwrap();
    let e = png::decode(&bytes[..bytes.len() - 20]).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "truncated: {e}");
    assert_eq!(png::decode(&bytes).unwrap().settings().unwrap(), None);
}

#[test]
fn half_precision_weights_give_nearly_the_same_image() {
    let req = Txt2ImgRequest { scheduler: Some("ddim".into()), ..small("a red circle") };
    let full = run(&load(), &req).unwrap();
    let dtype = candle_core::DType::F16;
    let sd = StableDiffusionPipeline::load(pipe_dir(), &LoadOptions { dtype, ..LoadOptions::default() }).unwrap();
    assert_eq!(sd.dtype(), dtype);
    let half = run(&sd, &req).unwrap();
    let d = max_abs_diff(&half.pixels, &full.pixels);
    eprintln!("f16: max abs diff to f32 {d:.3e}");
    assert!(d > 0.0 && d < 0.05, "f16: {d}");
    let bf16 = LoadOptions { dtype: candle_core::DType::BF16, ..LoadOptions::default() };
    let e = StableDiffusionPipeline::load(pipe_dir(), &bf16).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("`dtype`"), "{e}");
}

#[test]
fn an_unimplemented_pipeline_scheduler_falls_back_and_says_so() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<StableDiffusionPipeline>();
    // SD 1.5 ships a PNDMScheduler: its noise schedule drives the fallback sampler.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&pipe_dir(), dir.path());
    let index = dir.path().join("model_index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace("DDPMScheduler", "PNDMScheduler");
    std::fs::write(&index, text).unwrap();
    let sched = dir.path().join("scheduler/scheduler_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&sched).unwrap()).unwrap();
    cfg["_class_name"] = "PNDMScheduler".into();
    cfg["skip_prk_steps"] = true.into();
    std::fs::write(&sched, serde_json::to_string(&cfg).unwrap()).unwrap();
    let sd = StableDiffusionPipeline::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(sd.default_scheduler(), anneal::diffusion::FALLBACK_SCHEDULER);
    let out = run(&sd, &small("a red circle")).unwrap();
    assert_eq!(out.images[0].settings.scheduler, "dpmpp_2m");
    assert!(out.warnings.iter().any(|w| w.contains("PNDMScheduler") && w.contains("dpmpp_2m")), "{:?}", out.warnings);
    // Naming a scheduler gives no warning, and the result matches the original pipeline's.
    let req = Txt2ImgRequest { scheduler: Some("ddim".into()), ..small("a red circle") };
    let here = run(&sd, &req).unwrap();
    assert!(here.warnings.is_empty(), "{:?}", here.warnings);
    assert_eq!(here.images, run(&load(), &req).unwrap().images);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
