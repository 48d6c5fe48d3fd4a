//! `shapes`: the toy coloured-shapes data of the image quickstart (drawn by the core),
//! its score (the share of images whose dominant colour and shape match their prompt)
//! and a PNG contact sheet, for Node where no image library is at hand. Small and
//! synchronous: pictures of a few dozen pixels a side.

use napi::bindgen_prelude::Buffer;
use napi::Env;
use napi_derive::napi;

use anneal::diffusion::{image as img, shapes};

use crate::errors::sync;

/// Every colour x shape caption, e.g. "a red circle", in the order the datasets cycle
/// through them.
#[napi(namespace = "shapes")]
pub fn prompts() -> Vec<String> {
    shapes::prompts()
}

/// The `tiny-shapes` preset's recommended training and sampling settings, and its
/// resolution.
#[napi(object, namespace = "shapes")]
pub struct ShapesRecommended {
    pub resolution: u32,
    pub steps: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub warmup_steps: u32,
    /// `constant`, `linear` or `cosine`.
    pub schedule: String,
    /// Min-SNR-gamma loss weighting, if any.
    pub snr_gamma: Option<f64>,
    pub train_text_encoder: bool,
    pub caption_dropout: f64,
    /// The sampler (`ddpm`, `ddim`, ...), its steps and the guidance scale.
    pub scheduler: String,
    pub inference_steps: u32,
    pub guidance_scale: f64,
}

/// The `tiny-shapes` preset's recommended training and sampling settings.
#[napi(namespace = "shapes")]
pub fn recommended() -> napi::Result<ShapesRecommended> {
    let p = anneal::diffusion::presets::find("tiny-shapes")
        .ok_or_else(|| napi::Error::from_reason("no tiny-shapes preset"))?;
    let r = p.recommended;
    Ok(ShapesRecommended {
        resolution: p.resolution as u32,
        steps: r.steps as u32,
        batch_size: r.batch_size as u32,
        learning_rate: r.learning_rate,
        warmup_steps: r.warmup_steps as u32,
        schedule: r.schedule.to_string(),
        snr_gamma: r.snr_gamma,
        train_text_encoder: r.train_text_encoder,
        caption_dropout: r.caption_dropout,
        scheduler: r.scheduler.to_string(),
        inference_steps: r.inference_steps as u32,
        guidance_scale: r.guidance_scale,
    })
}

/// Writes `n` captioned `size` x `size` PNG pictures and `metadata.jsonl` into `dir`,
/// deterministic from `seed`.
#[napi(namespace = "shapes")]
pub fn write_imagefolder(env: Env, dir: String, n: u32, size: u32, seed: u32) -> napi::Result<()> {
    sync(&env, || shapes::write_imagefolder(std::path::Path::new(&dir), n as usize, size as usize, u64::from(seed)))
}

fn decode(pngs: &[Buffer], what: &str) -> anneal::Result<Vec<img::RgbImage>> {
    let limits = img::ImageLimits::default();
    pngs.iter().enumerate().map(|(i, b)| img::decode_bytes(b, format!("{what}[{i}]"), &limits).map(|d| d.0)).collect()
}

/// The share of `images` (PNG Buffers) whose colour and shape match the prompt at the
/// same index.
#[napi(namespace = "shapes")]
pub fn score(env: Env, images: Vec<Buffer>, prompts: Vec<String>) -> napi::Result<f64> {
    sync(&env, || {
        let decoded = decode(&images, "images")?;
        let views: Vec<(usize, usize, &[u8])> =
            decoded.iter().map(|r| (r.width as usize, r.height as usize, r.data.as_slice())).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        shapes::score(&views, &prompts)
    })
}

/// Shares of images whose dominant colour, shape, and both match their prompt.
#[napi(object, namespace = "shapes")]
pub struct ShapesScore {
    pub images: u32,
    pub color: f64,
    pub shape: f64,
    pub both: f64,
}

impl From<shapes::ShapesScore> for ShapesScore {
    fn from(s: shapes::ShapesScore) -> Self {
        Self { images: s.images as u32, color: s.color, shape: s.shape, both: s.both }
    }
}

/// The shares of `images` (PNG Buffers) whose dominant colour, whose shape, and whose
/// colour and shape both match the prompt at the same index (measured on the pixels).
#[napi(namespace = "shapes")]
pub fn evaluate(env: Env, images: Vec<Buffer>, prompts: Vec<String>) -> napi::Result<ShapesScore> {
    sync(&env, || {
        let decoded = decode(&images, "images")?;
        let views: Vec<(usize, usize, &[u8])> =
            decoded.iter().map(|r| (r.width as usize, r.height as usize, r.data.as_slice())).collect();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        shapes::evaluate(&views, &prompts).map(ShapesScore::from)
    })
}

/// What a painter that ignores its prompt scores on average (`images` 0).
#[napi(namespace = "shapes")]
pub fn chance() -> ShapesScore {
    shapes::ShapesScore::chance().into()
}

/// One PNG holding `rows[r][c]` (PNG Buffers) row by row on a white canvas, each
/// picture enlarged `scale` times (nearest neighbour; default 1).
#[napi(namespace = "shapes")]
pub fn grid(env: Env, rows: Vec<Vec<Buffer>>, scale: Option<u32>) -> napi::Result<Buffer> {
    sync(&env, || {
        let decoded: Vec<Vec<img::RgbImage>> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| decode(row, &format!("rows[{r}]")))
            .collect::<anneal::Result<_>>()?;
        Ok(Buffer::from(shapes::grid_png(&decoded, scale.unwrap_or(1) as usize)?))
    })
}
