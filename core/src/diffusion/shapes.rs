//! Toy text-to-image data that a small model learns in minutes: one coloured shape
//! (red, green, blue or yellow; circle, square or triangle) on a white background,
//! captioned "a red circle"; and a scorer that tells whether generated images show
//! what their prompts ask for, from simple geometry (no model).
//!
//! [`classify`] labels each pixel with the nearest palette colour (or background, or
//! nothing when it is near none), takes the largest 4-connected region of one colour as
//! the object, and reads its shape from its bounding box: how much of the box it fills
//! (a square all of it, a circle pi/4 = 0.785, a triangle half), how much of it lies in
//! the box's upper half (a triangle, apex up, a quarter; a circle or square half), and
//! whether it fills the box's corner pixels (a square does, a circle does not). The
//! corners tell a small circle from a square: at 16x16 a rasterised circle fills about
//! 0.9 of its box, like a square, but leaves its corners empty.
//!
//! ```
//! use anneal::diffusion::shapes::{self, Color, Shape};
//! let img = shapes::draw("red", "circle", 32, 7).unwrap();
//! assert_eq!(shapes::classify(&img.rgb, img.width, img.height), (Some(Color::Red), Some(Shape::Circle)));
//! ```

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, IoResultExt, Result};

/// The colours shapes are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
}

/// The shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Color {
    pub const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The RGB it is drawn with.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 30, 30],
            Color::Green => [30, 170, 40],
            Color::Blue => [30, 50, 220],
            Color::Yellow => [240, 210, 20],
        }
    }
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn parse(s: &str) -> Option<Shape> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// The background colour.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// An RGB image, 8 bits per channel, row-major `height x width x 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// The caption of a shape: "a red circle".
pub fn caption(color: Color, shape: Shape) -> String {
    format!("a {} {}", color.name(), shape.name())
}

/// Every colour x shape caption, in [`pair`]'s order: "a red circle", "a green circle", ...
pub fn prompts() -> Vec<String> {
    (0..Color::ALL.len() * Shape::ALL.len()).map(pair).map(|(c, s)| caption(c, s)).collect()
}

/// The colour and shape a prompt names (the first colour word and the first shape word).
pub fn parse_prompt(prompt: &str) -> (Option<Color>, Option<Shape>) {
    let words: Vec<String> =
        prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    (words.iter().find_map(|w| Color::parse(w)), words.iter().find_map(|w| Shape::parse(w)))
}

/// Draws one `color` `shape` on a white `size x size` image; its size (40-70% of the
/// side) and position are drawn from `seed`. Unknown names are `invalid_config`.
pub fn draw(color: &str, shape: &str, size: usize, seed: u64) -> Result<ShapeImage> {
    let c = Color::parse(color)
        .ok_or_else(|| Error::config("color", format!("unknown colour `{color}` (red, green, blue, yellow)")))?;
    let s = Shape::parse(shape)
        .ok_or_else(|| Error::config("shape", format!("unknown shape `{shape}` (circle, square, triangle)")))?;
    if !(16..=1024).contains(&size) {
        return Err(Error::config("size", format!("{size} pixels: must be between 16 and 1024")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(draw_with(c, s, size, &mut rng))
}

fn draw_with(color: Color, shape: Shape, size: usize, rng: &mut impl Rng) -> ShapeImage {
    let n = size as f64;
    let side = rng.random_range(0.4..0.7) * n;
    let margin = 1.0;
    let x0 = rng.random_range(margin..(n - side - margin).max(margin + 1e-9));
    let y0 = rng.random_range(margin..(n - side - margin).max(margin + 1e-9));
    let mut rgb = Vec::with_capacity(size * size * 3);
    let inside = |px: f64, py: f64| -> bool {
        // Pixel centres, in units of the shape's box.
        let (u, v) = ((px - x0) / side, (py - y0) / side);
        if !(0.0..1.0).contains(&u) || !(0.0..1.0).contains(&v) {
            return false;
        }
        match shape {
            Shape::Square => true,
            Shape::Circle => (u - 0.5).powi(2) + (v - 0.5).powi(2) < 0.25,
            // Apex at the top centre, base along the bottom.
            Shape::Triangle => (u - 0.5).abs() < v / 2.0,
        }
    };
    for y in 0..size {
        for x in 0..size {
            let px = if inside(x as f64 + 0.5, y as f64 + 0.5) { color.rgb() } else { BACKGROUND };
            rgb.extend_from_slice(&px);
        }
    }
    ShapeImage { width: size, height: size, rgb }
}

/// Pixels farther than this (Euclidean, 0-255 units) from every palette colour and
/// the background belong to nothing.
const MAX_DISTANCE: f64 = 110.0;

/// The label of a pixel: 0 background, 1 + colour index, or `NONE`.
const NONE: u8 = u8::MAX;

fn label(p: &[u8]) -> u8 {
    let d = |c: [u8; 3]| -> f64 { (0..3).map(|i| (f64::from(p[i]) - f64::from(c[i])).powi(2)).sum::<f64>().sqrt() };
    let mut best = (d(BACKGROUND), 0u8);
    for (i, c) in Color::ALL.iter().enumerate() {
        let di = d(c.rgb());
        if di < best.0 {
            best = (di, i as u8 + 1);
        }
    }
    if best.0 <= MAX_DISTANCE {
        best.1
    } else {
        NONE
    }
}

/// The dominant colour (the colour of the largest 4-connected single-colour region, if
/// it covers at least 2.5% of the image and 16 pixels) and the shape of that region
/// (None when it looks like none of the three; see the module docs). `rgb` is
/// `height x width x 3`.
pub fn classify(rgb: &[u8], width: usize, height: usize) -> (Option<Color>, Option<Shape>) {
    let n = width * height;
    if width == 0 || height == 0 || rgb.len() != n * 3 {
        return (None, None);
    }
    let labels: Vec<u8> = rgb.chunks_exact(3).map(label).collect();
    // The region each pixel belongs to (0: none yet; regions count from 1).
    let mut region = vec![0u32; n];
    let mut next = 0u32;
    // (pixels, label, region, min x, min y, max x, max y)
    let mut best: Option<(usize, u8, u32, usize, usize, usize, usize)> = None;
    let mut stack = Vec::new();
    for start in 0..n {
        let l = labels[start];
        if region[start] != 0 || l == 0 || l == NONE {
            continue;
        }
        next += 1;
        region[start] = next;
        stack.push(start);
        let (mut count, mut x0, mut y0, mut x1, mut y1) = (0, width, height, 0, 0);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            count += 1;
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            let mut visit = |j: usize| {
                if region[j] == 0 && labels[j] == l {
                    region[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < width {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - width);
            }
            if y + 1 < height {
                visit(i + width);
            }
        }
        if best.is_none_or(|b| count > b.0) {
            best = Some((count, l, next, x0, y0, x1, y1));
        }
    }
    let Some((count, l, r, x0, y0, x1, y1)) = best else { return (None, None) };
    if count < 16 || (count as f64) < 0.025 * n as f64 {
        return (None, None);
    }
    let color = Color::ALL[usize::from(l - 1)];
    let inside: Vec<bool> = region.iter().map(|&i| i == r).collect();
    (Some(color), shape_of(&inside, width, count, (x0, y0, x1, y1)))
}

/// The shape of the region of `count` pixels (`inside`, row-major, `width` wide) whose
/// bounding box is `(x0, y0, x1, y1)` (inclusive), from its fill ratio, the share of it
/// in the box's upper half (a pixel row on the middle line counts half) and its corner
/// pixels.
fn shape_of(inside: &[bool], width: usize, count: usize, (x0, y0, x1, y1): Bbox) -> Option<Shape> {
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let aspect = bw as f64 / bh as f64;
    if !(0.6..=1.67).contains(&aspect) {
        return None;
    }
    let fill = count as f64 / (bw * bh) as f64;
    // Twice the middle row, so a middle row counts exactly half.
    let mid2 = y0 + y1;
    let mut top2 = 0;
    for y in y0..=y1 {
        let n = (x0..=x1).filter(|&x| inside[y * width + x]).count();
        top2 += match (2 * y).cmp(&mid2) {
            std::cmp::Ordering::Less => 2 * n,
            std::cmp::Ordering::Equal => n,
            std::cmp::Ordering::Greater => 0,
        };
    }
    let top = top2 as f64 / (2 * count) as f64;
    let corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)].iter().filter(|&&(x, y)| inside[y * width + x]).count();
    if top < 0.4 {
        (0.35..0.75).contains(&fill).then_some(Shape::Triangle)
    } else if fill >= 0.85 && corners >= 3 {
        Some(Shape::Square)
    } else if (0.6..0.95).contains(&fill) && corners <= 1 {
        Some(Shape::Circle)
    } else {
        None
    }
}

/// A bounding box `(x0, y0, x1, y1)`, inclusive.
type Bbox = (usize, usize, usize, usize);

/// How well images show what their prompts ask for ([`evaluate`]): the shares of the
/// images whose dominant colour, whose shape, and whose colour and shape both are the
/// ones their prompt names, each as measured by [`classify`] on the pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ShapesScore {
    /// Images scored.
    pub images: usize,
    /// Share whose dominant colour is the prompt's (chance: 1 in 4).
    pub color: f64,
    /// Share whose shape is the prompt's (chance: 1 in 3).
    pub shape: f64,
    /// Share whose colour and shape both are the prompt's (chance: 1 in 12); [`score`].
    pub both: f64,
}

impl ShapesScore {
    /// What a painter that ignores the prompt scores on average when each of its
    /// pictures shows some palette colour and some shape: 1/4, 1/3 and 1/12.
    pub fn chance() -> Self {
        let (c, s) = (Color::ALL.len() as f64, Shape::ALL.len() as f64);
        Self { images: 0, color: 1.0 / c, shape: 1.0 / s, both: 1.0 / (c * s) }
    }
}

/// Classifies every image ([`classify`]) and compares its colour and shape with the
/// ones its prompt names (image `i` against `prompts[i]`, see [`parse_prompt`]).
/// `images` are `(width, height, rgb)`. A prompt that names no colour (or no shape)
/// counts as a miss for it. No images: all shares 0.
pub fn evaluate(images: &[(usize, usize, &[u8])], prompts: &[&str]) -> Result<ShapesScore> {
    if images.len() != prompts.len() {
        return Err(Error::config(
            "prompts",
            format!("{} prompts for {} images: give one per image", prompts.len(), images.len()),
        ));
    }
    let (mut color, mut shape, mut both) = (0usize, 0usize, 0usize);
    for ((w, h, rgb), p) in images.iter().zip(prompts) {
        let (want_c, want_s) = parse_prompt(p);
        let (got_c, got_s) = classify(rgb, *w, *h);
        let c = want_c.is_some() && got_c == want_c;
        let s = want_s.is_some() && got_s == want_s;
        color += usize::from(c);
        shape += usize::from(s);
        both += usize::from(c && s);
    }
    let n = images.len().max(1) as f64;
    Ok(ShapesScore { images: images.len(), color: color as f64 / n, shape: shape as f64 / n, both: both as f64 / n })
}

/// The share of images whose dominant colour and shape ([`classify`]) are both the
/// ones their prompt names (image `i` is scored against `prompts[i]`): [`evaluate`]'s
/// `both`. `images` are `(width, height, rgb)`. No images: 0.
pub fn score(images: &[(usize, usize, &[u8])], prompts: &[&str]) -> Result<f64> {
    Ok(evaluate(images, prompts)?.both)
}

/// `rgb` (`height x width x 3`) enlarged `factor` times by repeating pixels (nearest
/// neighbour): small pictures stay sharp in a contact sheet. `(width * factor, height *
/// factor, rgb)`; a size mismatch or a factor of 0 is `invalid_config`.
pub fn enlarge(rgb: &[u8], width: usize, height: usize, factor: usize) -> Result<(usize, usize, Vec<u8>)> {
    if rgb.len() != width * height * 3 {
        return Err(Error::config("rgb", format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
    }
    if !(1..=64).contains(&factor) {
        return Err(Error::config("factor", format!("{factor}: must be between 1 and 64")));
    }
    let (w, h) = (width * factor, height * factor);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &rgb[(y / factor) * width * 3..][..width * 3];
        for px in row.chunks_exact(3) {
            for _ in 0..factor {
                out.extend_from_slice(px);
            }
        }
    }
    Ok((w, h, out))
}

/// One PNG holding `rows[r][c]` row by row on a white canvas, each picture enlarged
/// `factor` times ([`enlarge`]): the quickstarts' before/after grid.
pub fn grid_png(rows: &[Vec<crate::diffusion::image::RgbImage>], factor: usize) -> Result<Vec<u8>> {
    use crate::diffusion::image::{self as img, RgbImage};
    let big = |i: &RgbImage| -> Result<RgbImage> {
        let (w, h, rgb) = enlarge(&i.data, i.width as usize, i.height as usize, factor)?;
        RgbImage::new(w as u32, h as u32, rgb)
    };
    let cells: Vec<Vec<RgbImage>> = rows.iter().map(|r| r.iter().map(big).collect()).collect::<Result<_>>()?;
    let refs: Vec<Vec<&RgbImage>> = cells.iter().map(|r| r.iter().collect()).collect();
    img::encode_png(&img::grid(&refs)?)
}

/// Writes `n` shape images (`size x size` PNGs, `00000.png`...) and `metadata.jsonl`
/// (`{"file_name": "00000.png", "text": "a red circle"}` per line), the Hugging Face
/// imagefolder layout, to `dir`. Colours and shapes cycle through all 12 pairs; sizes
/// and positions come from `seed`. `dir` must not exist or be empty (`already_exists`);
/// it is written next to its place and renamed, so a failure leaves nothing behind.
pub fn write_imagefolder(dir: &Path, n: usize, size: usize, seed: u64) -> Result<()> {
    if !(16..=1024).contains(&size) {
        return Err(Error::config("size", format!("{size} pixels: must be between 16 and 1024")));
    }
    crate::util::write_new_dir(dir, |tmp| write_images(tmp, n, size, seed))
}

/// The colour and shape of image `i` of a dataset: all 12 pairs in turn.
pub fn pair(i: usize) -> (Color, Shape) {
    (Color::ALL[i % 4], Shape::ALL[(i / 4) % 3])
}

fn write_images(dir: &Path, n: usize, size: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_path(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut meta = String::new();
    for i in 0..n {
        let (c, s) = pair(i);
        let img = draw_with(c, s, size, &mut rng);
        let file = format!("{i:05}.png");
        let bytes = super::png::encode_rgb8(size, size, &img.rgb, &[])?;
        let path = dir.join(&file);
        std::fs::write(&path, bytes).with_path(&path)?;
        let line = serde_json::json!({"file_name": file, "text": caption(c, s)});
        meta.push_str(&line.to_string());
        meta.push('\n');
    }
    let path = dir.join("metadata.jsonl");
    std::fs::write(&path, meta).with_path(&path)
}

/// `n` shape images in memory (as [`write_imagefolder`] draws them) with their captions.
pub fn generate(n: usize, size: usize, seed: u64) -> Result<Vec<(ShapeImage, String)>> {
    if !(16..=1024).contains(&size) {
        return Err(Error::config("size", format!("{size} pixels: must be between 16 and 1024")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok((0..n)
        .map(|i| {
            let (c, s) = pair(i);
            (draw_with(c, s, size, &mut rng), caption(c, s))
        })
        .collect())
}
