//! anneal image quickstart: train a text-to-image model from scratch on a CPU and show
//! with a number that it learned. Offline; no downloads.
//!
//! Run:    cargo run --release -p anneal-examples --example image_quickstart [-- <home dir>] [--smoke]
//!         (default home ./anneal-home; `--smoke` runs the same loop in a few seconds:
//!         48 pictures, 4 training steps, 12 images of 4 denoising steps; it shows that
//!         everything runs, not that anything is learned: CI checks that the engine's
//!         training lowers the loss in core/tests/diffusion_presets.rs,
//!         `tiny_shapes_training_through_the_engine_lowers_the_loss`)
//! Output: training progress; before and after training, the share of generated images
//!         whose dominant colour, shape, and both match their prompt; and
//!         `<home>/image_quickstart.png` (top row: the untrained model; bottom row: trained).
//! Python: examples/python/image_quickstart.py   Node: examples/node/image_quickstart.mjs
//!         (twins: same settings and seeds, the same lines)
//!
//! 1. Draws a toy dataset itself (`anneal::diffusion::shapes`): 480 pictures of a red,
//!    green, blue or yellow circle, square or triangle on white, captioned "a red
//!    circle", ..., and imports the folder as an image dataset (imagefolder layout).
//! 2. Creates the `tiny-shapes` preset: a from-scratch pixel-space UNet with a small
//!    CLIP text encoder on a byte-level tokenizer, random weights from seed 0.
//! 3. Trains it with the preset's recommended settings (`presets::Recommended`).
//! 4. Scores both models: it generates 4 images for each of the 12 prompts and
//!    classifies each from its pixels alone (`shapes::evaluate`: nearest palette colour
//!    per pixel, the largest one-colour region, and that region's geometry), then
//!    compares the colour and shape found with the ones the prompt names. A painter
//!    that ignores the prompt matches 1 in 4 colours, 1 in 3 shapes, 1 in 12 both.

use anneal::diffusion::image::RgbImage;
use anneal::diffusion::presets;
use anneal::diffusion::shapes::{self, ShapesScore};
use anneal::{
    CancelToken, Event, GeneratedPng, Home, ImageImportOptions, ImageRequest, ImageTrainOptions, Method, ModelRecord,
    OnDuplicate, PresetOptions, TrainSpec,
};
use anyhow::{Context, Result};

/// Seed of the generated images that are scored (the same for both models).
const SCORE_SEED: u64 = 1234;

/// What one run does: the full quickstart, or its `--smoke` form.
struct Plan {
    images: usize,
    steps: usize,
    per_prompt: usize,
    sampling_steps: usize,
}

/// `plan.per_prompt` images of `model` for every prompt, and how well they match.
fn score(
    home: &Home,
    model: &ModelRecord,
    rec: &presets::Recommended,
    plan: &Plan,
) -> Result<(ShapesScore, Vec<GeneratedPng>)> {
    let generator = home.image_generator(&model.id, &Default::default())?;
    let req = ImageRequest {
        prompts: shapes::prompts(),
        num_images: Some(plan.per_prompt),
        steps: Some(plan.sampling_steps),
        guidance_scale: Some(rec.guidance_scale),
        scheduler: Some(rec.scheduler.into()),
        seed: Some(SCORE_SEED),
        ..Default::default()
    };
    let out = generator.generate(&req)?;
    let images: Vec<(usize, usize, &[u8])> = out.images.iter().map(|i| (i.width, i.height, i.rgb.as_slice())).collect();
    let wanted: Vec<&str> = req.prompts.iter().flat_map(|p| std::iter::repeat_n(p.as_str(), plan.per_prompt)).collect();
    Ok((shapes::evaluate(&images, &wanted)?, out.images))
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn report(when: &str, s: &ShapesScore) {
    println!(
        "{when}: {} of {} generated images match their prompt (colour {}, shape {})",
        pct(s.both),
        s.images,
        pct(s.color),
        pct(s.shape)
    );
}

/// One PNG: the first image of each prompt, one row per model, each picture enlarged
/// 4 times (nearest neighbour: the pixels stay sharp).
fn grid(rows: &[&[GeneratedPng]], per_prompt: usize, path: &std::path::Path) -> Result<()> {
    let cells: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .step_by(per_prompt)
                .map(|i| RgbImage::new(i.width as u32, i.height as u32, i.rgb.clone()))
                .collect()
        })
        .collect::<anneal::Result<_>>()?;
    std::fs::write(path, shapes::grid_png(&cells, 4)?)?;
    Ok(())
}

/// Prints a line every 100 steps and at the last one.
fn progress(event: &Event) -> anneal::Result<()> {
    if let Event::Step { step, total_steps, loss, .. } = event {
        if step % 100 == 0 || step == total_steps {
            println!("  step {step}/{total_steps} loss {loss:.4}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    // First thing, before any thread: candle's elementwise ops stay on the calling thread.
    anneal::keep_candle_ops_on_calling_thread();
    let started = std::time::Instant::now();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "./anneal-home".into());
    let home = Home::open(&dir)?;
    let preset = presets::find("tiny-shapes").context("the tiny-shapes preset")?;
    let rec = preset.recommended;
    let plan = if smoke {
        Plan { images: 48, steps: 4, per_prompt: 1, sampling_steps: 4 }
    } else {
        Plan { images: 480, steps: rec.steps, per_prompt: 4, sampling_steps: rec.inference_steps }
    };

    // 1. The toy dataset, drawn at the preset's size and imported (reused when this runs again).
    let size = preset.resolution;
    let name = format!("shapes-{size}px-{}", plan.images);
    let folder = home.root().join(format!("image-quickstart-{name}"));
    if !folder.join("metadata.jsonl").is_file() {
        shapes::write_imagefolder(&folder, plan.images, size, 0)?;
    }
    let opts = ImageImportOptions { name: Some(name.clone()), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    let data = home.datasets().import_images(&folder, &opts)?;
    println!("dataset {name}: {} images", data.num_records);

    // 2. The from-scratch base (a new version of `tiny-shapes` at each run).
    let base = home.models().create_preset("tiny-shapes", &PresetOptions { seed: 0, ..Default::default() })?;
    println!("base {} ({} parameters)", base.reference(), base.params);
    let (before, before_images) = score(&home, &base, &rec, &plan)?;
    report("before training", &before);

    // 3. Training with the preset's recommended settings.
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: data.id.clone(),
        method: Method::Full,
        max_steps: Some(plan.steps as u64),
        batch_size: rec.batch_size,
        learning_rate: rec.learning_rate,
        warmup_steps: rec.warmup_steps.min(plan.steps) as u64,
        schedule: rec.schedule,
        seed: 0,
        output_name: Some("shapes-painter".into()),
        image: Some(ImageTrainOptions {
            snr_gamma: rec.snr_gamma,
            train_text_encoder: rec.train_text_encoder,
            caption_dropout: rec.caption_dropout,
            validation_prompts: vec!["a red circle".into(), "a blue square".into(), "a yellow triangle".into()],
            validation_every: Some((plan.steps as u64 / 2).max(1)),
            validation_steps: plan.sampling_steps,
            validation_guidance_scale: rec.guidance_scale,
            validation_scheduler: Some(rec.scheduler.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let engine = home.training();
    let job = engine.create_job(&spec)?;
    let trained = engine.run(&job.id, &mut progress, &CancelToken::new())?;
    let model = home.models().get(&trained.model)?;
    println!(
        "trained {} in {:.0} s ({} steps, final loss {:.4})",
        model.reference(),
        trained.duration_s,
        trained.steps,
        trained.final_loss
    );

    // 4. The numbers that show it learned, and the picture.
    let (after, after_images) = score(&home, &model, &rec, &plan)?;
    report("before training", &before);
    report("after training ", &after);
    let chance = ShapesScore::chance();
    println!(
        "chance (a painter that ignores the prompt): {} (colour {}, shape {})",
        pct(chance.both),
        pct(chance.color),
        pct(chance.shape)
    );
    if smoke {
        println!("smoke run: {} steps, too few to learn anything; the numbers above are not a result", plan.steps);
    }
    let path = home.root().join("image_quickstart.png");
    grid(&[&before_images, &after_images], plan.per_prompt, &path)?;
    println!("wrote {} (top: untrained, bottom: trained)", path.display());
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
