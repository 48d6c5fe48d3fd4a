//! anneal image quickstart: train a text-to-image model from scratch on a CPU and show
//! with a number that it learned. Offline; no downloads.
//!
//! Run:    cargo run --release --example image_quickstart [-- <home dir> [steps]]   (default ./anneal-home, 300 steps)
//! Output: training progress, the shape score before and after, and
//!         `image_quickstart.png` (top row: the untrained model; bottom row: trained).
//! Python: examples/python/image_quickstart.py   Node: examples/node/image_quickstart.mjs
//!
//! 1. Draws a toy dataset itself (`anneal::diffusion::shapes`): 32x32 pictures of a red,
//!    green, blue or yellow circle, square or triangle, captioned "a red circle", ...,
//!    and imports the folder as an image dataset (imagefolder + metadata.jsonl).
//! 2. Creates the `tiny-shapes` preset: a from-scratch pixel-space UNet (~1M
//!    parameters) with a small byte-level CLIP text encoder, random weights from seed 0.
//! 3. Trains it (full fine-tune of the UNet and the text encoder, with the preset's
//!    recommended settings but 300 steps of 8 images by default), rendering validation
//!    prompts along the way. Measured on an idle 2-core machine: 227 s of training,
//!    389 s in all, and the score goes from 0% to 8% (the model has not learned the
//!    shapes yet; the preset's recommended 2,000 steps of 16 take hours today).
//! 4. Scores both models: for every colour x shape prompt it generates images and
//!    classifies each by its dominant colour and its geometry (`shapes::score`): the
//!    share whose colour and shape match the prompt.

use std::time::Instant;

use anneal::diffusion::image::{self, RgbImage};
use anneal::diffusion::{presets, shapes};
use anneal::{
    CancelToken, Home, ImageImportOptions, ImageRequest, ImageTrainOptions, Method, ModelRecord, OnDuplicate,
    PresetOptions, TerminalSink, Throttle, TrainSpec,
};
use anyhow::Result;

/// Training pictures drawn (each of the 12 colour x shape pairs equally often).
const IMAGES: usize = 480;
/// Generated images per prompt when scoring (48 in all).
const PER_PROMPT: usize = 4;
/// Side of the pictures and of the preset's images.
const SIZE: usize = 16;

/// Every colour x shape prompt, in a fixed order.
fn prompts() -> Vec<String> {
    (0..12).map(shapes::pair).map(|(c, s)| shapes::caption(c, s)).collect()
}

/// Images of `model` for every prompt (same seed for both models), and their score.
fn score(home: &Home, model: &ModelRecord) -> Result<(f64, Vec<anneal::GeneratedPng>)> {
    let p = presets::find("tiny-shapes").expect("preset").recommended;
    let generator = home.image_generator(&model.id, &Default::default())?;
    let req = ImageRequest {
        prompts: prompts(),
        num_images: Some(PER_PROMPT),
        steps: Some(p.inference_steps),
        guidance_scale: Some(p.guidance_scale),
        scheduler: Some(p.scheduler.into()),
        seed: Some(1234),
        ..Default::default()
    };
    let out = generator.generate(&req)?;
    let images: Vec<(usize, usize, &[u8])> = out.images.iter().map(|i| (i.width, i.height, i.rgb.as_slice())).collect();
    let wanted: Vec<&str> = req.prompts.iter().flat_map(|p| std::iter::repeat_n(p.as_str(), PER_PROMPT)).collect();
    Ok((shapes::score(&images, &wanted)?, out.images))
}

/// One PNG: the first image of each prompt, `rows` models from top to bottom, each
/// picture enlarged 4 times.
fn grid(rows: &[&[anneal::GeneratedPng]], path: &str) -> Result<()> {
    let big = |i: &anneal::GeneratedPng| -> anneal::Result<RgbImage> {
        let (w, h, rgb) = shapes::enlarge(&i.rgb, i.width, i.height, 4)?;
        RgbImage::new(w as u32, h as u32, rgb)
    };
    let cells: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|r| r.iter().step_by(PER_PROMPT).map(big).collect::<anneal::Result<Vec<_>>>())
        .collect::<anneal::Result<_>>()?;
    let refs: Vec<Vec<&RgbImage>> = cells.iter().map(|r| r.iter().collect()).collect();
    std::fs::write(path, image::encode_png(&image::grid(&refs)?)?)?;
    Ok(())
}

fn main() -> Result<()> {
    let started = Instant::now();
    let dir = std::env::args().nth(1).unwrap_or_else(|| "./anneal-home".into());
    let home = Home::open(&dir)?;

    // 1. The toy dataset, drawn and imported (reused when this runs again).
    let folder = home.root().join("image-quickstart-shapes-16px");
    if !folder.join("metadata.jsonl").is_file() {
        shapes::write_imagefolder(&folder, IMAGES, SIZE, 0)?;
    }
    let opts = ImageImportOptions {
        name: Some("shapes-16px".into()),
        on_duplicate: OnDuplicate::Reuse,
        ..Default::default()
    };
    let data = home.datasets().import_images(&folder, &opts)?;
    println!("dataset shapes-16px: {} images, e.g. {}", data.num_records, home.datasets().preview(&data.id, 1)?[0]);

    // 2. The from-scratch base (a new version of `tiny-shapes` at each run, as in Python and Node).
    let preset = presets::find("tiny-shapes").expect("preset");
    let base = home.models().create_preset("tiny-shapes", &PresetOptions::default())?;
    println!("base {} ({} parameters): {}", base.reference(), base.params, preset.description);
    let (before, before_images) = score(&home, &base)?;
    println!("before training: {:.0}% of generated images match their prompt", before * 100.0);

    // 3. Training with the preset's recommended settings.
    let rec = preset.recommended;
    let steps: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(rec.steps as u64);
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: data.id.clone(),
        method: Method::Full,
        max_steps: Some(steps),
        batch_size: rec.batch_size,
        learning_rate: rec.learning_rate,
        warmup_steps: rec.warmup_steps as u64,
        schedule: rec.schedule,
        output_name: Some("shapes-painter".into()),
        image: Some(ImageTrainOptions {
            snr_gamma: rec.snr_gamma,
            train_text_encoder: rec.train_text_encoder,
            caption_dropout: rec.caption_dropout,
            validation_prompts: vec!["a red circle".into(), "a blue square".into(), "a yellow triangle".into()],
            validation_every: Some((steps / 4).max(1)),
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
    let report = engine.run(&job.id, &mut sink, &CancelToken::new())?;
    let trained = home.models().get(&report.model)?;
    println!(
        "trained {} in {:.0} s ({} steps, final loss {:.4}); latest validation grid: {}",
        trained.reference(),
        report.duration_s,
        report.steps,
        report.final_loss,
        engine.job(&job.id)?.image.unwrap_or_default()
    );

    // 4. The number that shows it learned, and the picture.
    let (after, after_images) = score(&home, &trained)?;
    println!("after training:  {:.0}% of generated images match their prompt", after * 100.0);
    grid(&[&before_images, &after_images], "image_quickstart.png")?;
    println!("wrote image_quickstart.png (top: untrained, bottom: trained; prompts: {})", prompts().join(", "));
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
