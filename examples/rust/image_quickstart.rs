//! anneal image quickstart: train a text-to-image model from scratch on a CPU and show
//! with a number that it learned. Offline; no downloads.
//!
//! Run:    cargo run --release -p anneal-examples --example image_quickstart [-- <home dir>] [--smoke]
//!         (default home ./anneal-home; `--smoke` trains 20 steps and scores 12 images, for CI)
//! Output: training progress; before and after training, the share of generated images
//!         whose dominant colour, shape, and both match their prompt; and
//!         `<home>/image_quickstart.png` (top row: the untrained model; bottom row: trained).
//! Python: examples/python/image_quickstart.py   Node: examples/node/image_quickstart.mjs
//!         (twins: same settings and seeds, so the same numbers)
//!
//! 1. Draws a toy dataset itself (`anneal::diffusion::shapes`): 480 pictures of a red,
//!    green, blue or yellow circle, square or triangle on white, captioned "a red
//!    circle", ..., and imports the folder as an image dataset (imagefolder layout).
//! 2. Creates the `tiny-shapes` preset: a from-scratch 16x16 pixel-space UNet with a
//!    small CLIP text encoder on a byte-level tokenizer, random weights from seed 0.
//! 3. Trains the UNet with the preset's recommended settings (the text encoder keeps its
//!    random weights: its features already tell the 12 captions apart).
//! 4. Scores both models: it generates 4 images for each of the 12 prompts and
//!    classifies each from its pixels alone (`shapes::evaluate`: nearest palette colour
//!    per pixel, the largest one-colour region, and that region's geometry), then
//!    compares the colour and shape found with the ones the prompt names. A painter
//!    that ignores the prompt matches 1 in 4 colours, 1 in 3 shapes, 1 in 12 both.

use anneal::diffusion::image::{self, RgbImage};
use anneal::diffusion::presets;
use anneal::diffusion::shapes::{self, ShapesScore};
use anneal::{
    CancelToken, GeneratedPng, Home, ImageImportOptions, ImageRequest, ImageTrainOptions, Method, ModelRecord,
    OnDuplicate, PresetOptions, TerminalSink, Throttle, TrainSpec,
};
use anyhow::{Context, Result};

/// Training pictures drawn (each of the 12 colour x shape pairs equally often).
const IMAGES: usize = 480;
/// Seed of the generated images that are scored (the same for both models).
const SCORE_SEED: u64 = 1234;

/// Every colour x shape prompt, in a fixed order.
fn prompts() -> Vec<String> {
    (0..12).map(shapes::pair).map(|(c, s)| shapes::caption(c, s)).collect()
}

/// `per_prompt` images of `model` for every prompt, and how well they match.
fn score(home: &Home, model: &ModelRecord, per_prompt: usize) -> Result<(ShapesScore, Vec<GeneratedPng>)> {
    let rec = presets::find("tiny-shapes").context("the tiny-shapes preset")?.recommended;
    let generator = home.image_generator(&model.id, &Default::default())?;
    let req = ImageRequest {
        prompts: prompts(),
        num_images: Some(per_prompt),
        steps: Some(rec.inference_steps),
        guidance_scale: Some(rec.guidance_scale),
        scheduler: Some(rec.scheduler.into()),
        seed: Some(SCORE_SEED),
        ..Default::default()
    };
    let out = generator.generate(&req)?;
    let images: Vec<(usize, usize, &[u8])> = out.images.iter().map(|i| (i.width, i.height, i.rgb.as_slice())).collect();
    let wanted: Vec<&str> = req.prompts.iter().flat_map(|p| std::iter::repeat_n(p.as_str(), per_prompt)).collect();
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
    let big = |i: &GeneratedPng| -> anneal::Result<RgbImage> {
        let (w, h, rgb) = shapes::enlarge(&i.rgb, i.width, i.height, 4)?;
        RgbImage::new(w as u32, h as u32, rgb)
    };
    let cells: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|r| r.iter().step_by(per_prompt).map(big).collect::<anneal::Result<Vec<_>>>())
        .collect::<anneal::Result<_>>()?;
    let refs: Vec<Vec<&RgbImage>> = cells.iter().map(|r| r.iter().collect()).collect();
    std::fs::write(path, image::encode_png(&image::grid(&refs)?)?)?;
    Ok(())
}

fn main() -> Result<()> {
    let started = std::time::Instant::now();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let dir = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "./anneal-home".into());
    let home = Home::open(&dir)?;
    let preset = presets::find("tiny-shapes").context("the tiny-shapes preset")?;
    let rec = preset.recommended;
    let (steps, per_prompt) = if smoke { (20, 1) } else { (rec.steps, 4) };

    // 1. The toy dataset, drawn at the preset's size and imported (reused when this runs again).
    let size = preset.resolution;
    let name = format!("shapes-{size}px");
    let folder = home.root().join(format!("image-quickstart-{name}"));
    if !folder.join("metadata.jsonl").is_file() {
        shapes::write_imagefolder(&folder, IMAGES, size, 0)?;
    }
    let opts = ImageImportOptions { name: Some(name.clone()), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    let data = home.datasets().import_images(&folder, &opts)?;
    println!("dataset {name}: {} images, e.g. {}", data.num_records, home.datasets().preview(&data.id, 1)?[0]);

    // 2. The from-scratch base (a new version of `tiny-shapes` at each run).
    let base = home.models().create_preset("tiny-shapes", &PresetOptions { seed: 0, ..Default::default() })?;
    println!("base {} ({} parameters): {}", base.reference(), base.params, preset.description);
    let (before, before_images) = score(&home, &base, per_prompt)?;
    report("before training", &before);

    // 3. Training with the preset's recommended settings.
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: data.id.clone(),
        method: Method::Full,
        max_steps: Some(steps as u64),
        batch_size: rec.batch_size,
        learning_rate: rec.learning_rate,
        warmup_steps: rec.warmup_steps as u64,
        schedule: rec.schedule,
        seed: 0,
        output_name: Some("shapes-painter".into()),
        image: Some(ImageTrainOptions {
            snr_gamma: rec.snr_gamma,
            train_text_encoder: rec.train_text_encoder,
            caption_dropout: rec.caption_dropout,
            validation_prompts: vec!["a red circle".into(), "a blue square".into(), "a yellow triangle".into()],
            validation_every: Some((steps as u64 / 2).max(1)),
            validation_steps: rec.inference_steps,
            validation_guidance_scale: rec.guidance_scale,
            validation_scheduler: Some(rec.scheduler.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let engine = home.training();
    let job = engine.create_job(&spec)?;
    let mut sink = Throttle::new(TerminalSink::new(), std::time::Duration::from_millis(500));
    let trained = engine.run(&job.id, &mut sink, &CancelToken::new())?;
    let model = home.models().get(&trained.model)?;
    println!(
        "trained {} in {:.0} s ({} steps, final loss {:.4}); latest validation grid: {}",
        model.reference(),
        trained.duration_s,
        trained.steps,
        trained.final_loss,
        engine.job(&job.id)?.image.unwrap_or_default()
    );

    // 4. The numbers that show it learned, and the picture.
    let (after, after_images) = score(&home, &model, per_prompt)?;
    report("before training", &before);
    report("after training ", &after);
    let chance = ShapesScore::chance();
    println!(
        "chance (a painter that ignores the prompt): {} (colour {}, shape {})",
        pct(chance.both),
        pct(chance.color),
        pct(chance.shape)
    );
    let path = home.root().join("image_quickstart.png");
    grid(&[&before_images, &after_images], per_prompt, &path)?;
    println!("wrote {} (top: untrained, bottom: trained; prompts: {})", path.display(), prompts().join(", "));
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
