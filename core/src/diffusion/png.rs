//! PNG files of generated images, with the settings that made them in text chunks:
//!
//! - `parameters`: the text AUTOMATIC1111's web UI writes and most image tools read
//!   (the prompt, `Negative prompt: ...`, then `Steps: 20, Sampler: DPM++ 2M, CFG scale:
//!   7.5, Seed: 42, Size: 512x512, Model: name@3, ...`);
//! - `anneal`: the full [`ImageSettings`] as JSON.
//!
//! A chunk is `tEXt` when its text is Latin-1 and `iTXt` (UTF-8) otherwise, as Pillow
//! writes them; readers (Pillow's `Image.info`, exiftool) show both the same way.

use std::io::Cursor;
use std::path::Path;

use super::pipeline::ImageSettings;
use crate::error::{Error, IoResultExt, Location, Result};

/// Keyword of the A1111-style text chunk.
pub const PARAMETERS_KEY: &str = "parameters";
/// Keyword of the JSON chunk with the full settings.
pub const SETTINGS_KEY: &str = "anneal";

/// Largest image [`decode`] accepts (bytes of decoded pixels).
const DECODE_LIMIT: usize = 1 << 30;

/// A1111's sampler name for a scheduler's short name.
fn sampler_label(name: &str) -> &str {
    match name {
        "ddpm" => "DDPM",
        "ddim" => "DDIM",
        "euler" => "Euler",
        "euler_ancestral" => "Euler a",
        "dpmpp_2m" => "DPM++ 2M",
        other => other,
    }
}

/// A1111's quoting of a value in the `key: value, ...` line: JSON-quoted when it holds a
/// comma, a colon or a newline.
fn quote(v: &str) -> String {
    if v.contains([',', ':', '\n']) {
        serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
    } else {
        v.to_string()
    }
}

/// The `parameters` text of `s`, in AUTOMATIC1111's layout. `Clip skip` follows A1111's
/// count (1 = the last layer), that is diffusers' `clip_skip + 1`.
pub fn parameters_text(s: &ImageSettings) -> String {
    let mut out = s.prompt.clone();
    if !s.negative_prompt.is_empty() {
        out.push_str("\nNegative prompt: ");
        out.push_str(&s.negative_prompt);
    }
    let mut kv: Vec<(&str, String)> =
        vec![("Steps", s.steps.to_string()), ("Sampler", sampler_label(&s.scheduler).to_string())];
    if s.karras_sigmas {
        kv.push(("Schedule type", "Karras".into()));
    }
    kv.push(("CFG scale", s.guidance_scale.to_string()));
    if let Some(seed) = s.seed {
        kv.push(("Seed", seed.to_string()));
    }
    kv.push(("Size", format!("{}x{}", s.width, s.height)));
    if let Some(m) = &s.model {
        kv.push(("Model", m.clone()));
    }
    if let Some(k) = s.clip_skip.filter(|k| *k > 0) {
        kv.push(("Clip skip", (k + 1).to_string()));
    }
    kv.push(("Version", format!("anneal {}", env!("CARGO_PKG_VERSION"))));
    let line: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {}", quote(&v))).collect();
    out.push('\n');
    out.push_str(&line.join(", "));
    // A NUL would end a tEXt chunk's text early for many readers.
    out.replace('\0', "")
}

/// The text chunks of an image made with `s`: `parameters` and `anneal` (JSON).
pub fn settings_chunks(s: &ImageSettings) -> Result<Vec<(String, String)>> {
    let json = serde_json::to_string(s).map_err(|e| Error::Internal(format!("image settings to JSON: {e}")))?;
    Ok(vec![(PARAMETERS_KEY.into(), parameters_text(s)), (SETTINGS_KEY.into(), json)])
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

/// Encodes an 8-bit RGB image (`rgb`: row-major `height x width x 3`) as PNG, with
/// `text` as (keyword, text) chunks before the image data.
pub fn encode_rgb8(width: usize, height: usize, rgb: &[u8], text: &[(String, String)]) -> Result<Vec<u8>> {
    let (w, h) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(Error::config("width/height", format!("{width}x{height} cannot be a PNG image"))),
    };
    if rgb.len() != width * height * 3 {
        return Err(Error::config(
            "rgb",
            format!("{} bytes for a {width}x{height} RGB image (expected {})", rgb.len(), width * height * 3),
        ));
    }
    let mut buf = Vec::new();
    let mut enc = png::Encoder::new(&mut buf, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (key, value) in text {
        if key.is_empty() || key.len() > 79 || !key.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(Error::config(
                "png text keyword",
                format!("`{key}` is not 1 to 79 printable ASCII characters"),
            ));
        }
        let r = if is_latin1(value) {
            enc.add_text_chunk(key.clone(), value.clone())
        } else {
            enc.add_itxt_chunk(key.clone(), value.clone())
        };
        r.map_err(|e| Error::Internal(format!("PNG text chunk `{key}`: {e}")))?;
    }
    let internal = |e: png::EncodingError| Error::Internal(format!("PNG encoding: {e}"));
    let mut writer = enc.write_header().map_err(internal)?;
    writer.write_image_data(rgb).map_err(internal)?;
    writer.finish().map_err(internal)?;
    Ok(buf)
}

/// A decoded PNG: its pixels as 8-bit RGB and its text chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedPng {
    pub width: usize,
    pub height: usize,
    /// Row-major `height x width x 3` (gray is spread to three channels, alpha dropped).
    pub rgb: Vec<u8>,
    /// (keyword, text) of every tEXt, zTXt and iTXt chunk, in that order of kinds.
    pub text: Vec<(String, String)>,
}

impl DecodedPng {
    /// The text of the first chunk with this keyword.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.text.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The settings of the `anneal` chunk, when the image has one.
    pub fn settings(&self) -> Result<Option<ImageSettings>> {
        match self.text(SETTINGS_KEY) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| Error::data(Location::default().field(SETTINGS_KEY), format!("not image settings: {e}"))),
        }
    }
}

/// Decodes PNG bytes; `path` (when they came from a file) names it in errors.
fn decode_at(bytes: &[u8], path: Option<&Path>) -> Result<DecodedPng> {
    let at = || match path {
        Some(p) => Location::file(p),
        None => Location::default().field("png"),
    };
    let bad = |e: png::DecodingError| Error::data(at(), format!("not a readable PNG: {e}"));
    let mut dec = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: DECODE_LIMIT });
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(bad)?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::data(at(), "image too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    reader.finish().map_err(bad)?;
    buf.truncate(frame.buffer_size());
    let (width, height) = (frame.width as usize, frame.height as usize);
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(Error::data(at(), "indexed colours were not expanded")),
    };
    if frame.bit_depth != png::BitDepth::Eight || buf.len() < width * height * channels {
        return Err(Error::data(
            at(),
            format!("unexpected decoded layout ({:?}, {:?})", frame.color_type, frame.bit_depth),
        ));
    }
    let line = frame.line_size;
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let row = &buf[y * line..y * line + width * channels];
        for px in row.chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    let info = reader.info();
    let mut text: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for c in &info.compressed_latin1_text {
        let mut c = c.clone();
        c.decompress_text_with_limit(DECODE_LIMIT).map_err(bad)?;
        text.push((c.keyword.clone(), c.get_text().map_err(bad)?));
    }
    for c in &info.utf8_text {
        let mut c = c.clone();
        c.decompress_text_with_limit(DECODE_LIMIT).map_err(bad)?;
        text.push((c.keyword.clone(), c.get_text().map_err(bad)?));
    }
    Ok(DecodedPng { width, height, rgb, text })
}

/// Decodes PNG bytes (any colour type and depth, as 8-bit RGB) with their text chunks.
pub fn decode(bytes: &[u8]) -> Result<DecodedPng> {
    decode_at(bytes, None)
}

/// Reads and decodes a PNG file; errors name it.
pub fn read(path: impl AsRef<Path>) -> Result<DecodedPng> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).with_path(path)?;
    decode_at(&bytes, Some(path))
}
