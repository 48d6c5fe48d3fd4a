//! Reading images for training and previews: decoding PNG, JPEG and WebP files into 8-bit
//! RGB with size limits checked before any pixel buffer is allocated, and the few
//! transforms a diffusion training loop needs (resize, crops, horizontal flip, the
//! `[3, h, w]` tensor in `[-1, 1]`).
//!
//! Decoding rules:
//! - the format is recognised from the bytes, not the file name; anything that is not PNG,
//!   JPEG or WebP (a GIF or BMP named `.png`, a text file) is `invalid_data` naming the file;
//! - a file larger than [`ImageLimits::max_bytes`] or an image with more pixels than
//!   [`ImageLimits::max_pixels`] is refused (never downscaled): the dimensions are read from
//!   the header first, so a tiny file claiming 100 megapixels allocates nothing;
//! - a corrupt or truncated file is `invalid_data` naming the file;
//! - the EXIF orientation (JPEG, WebP) is applied, as PIL's `exif_transpose` in diffusers'
//!   DreamBooth scripts: the width and height reported are those of the upright image;
//! - an alpha channel is composited on white (a transparent pixel becomes white), gray is
//!   spread to three channels and 16-bit or float samples are reduced to 8 bits.
//!
//! Resizing uses a triangle (bilinear) filter whose support widens with the scale factor
//! when shrinking, i.e. bilinear with antialiasing like torchvision's `Resize` in
//! diffusers' training scripts.

use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageFormat};

use crate::error::{Error, IoResultExt, Location, Result};

/// Limits on the images [`decode`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest number of pixels (width x height); larger images are refused, not
    /// downscaled. Default 64 megapixels.
    pub max_pixels: u64,
    /// Largest file, in bytes. Default 256 MiB.
    pub max_bytes: u64,
}

impl ImageLimits {
    /// The default largest number of pixels (64 megapixels).
    pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;
    /// The default largest file (256 MiB).
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_pixels: Self::DEFAULT_MAX_PIXELS, max_bytes: Self::DEFAULT_MAX_BYTES }
    }
}

/// An 8-bit RGB image, row-major (`height x width x 3` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image from its pixels; `data` must hold `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let img = Self { width, height, data };
        img.check()?;
        Ok(img)
    }

    /// An image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self { width, height, data }
    }

    /// The pixel at (`x`, `y`); panics out of bounds (for tests and small tools).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    fn check(&self) -> Result<()> {
        let expected = self.width as u64 * self.height as u64 * 3;
        if self.width == 0 || self.height == 0 || self.data.len() as u64 != expected {
            return Err(Error::config(
                "image",
                format!(
                    "{} bytes for a {}x{} RGB image (expected {expected}, and both sides at least 1)",
                    self.data.len(),
                    self.width,
                    self.height
                ),
            ));
        }
        Ok(())
    }

    fn to_buffer(&self) -> Result<image::RgbImage> {
        self.check()?;
        image::RgbImage::from_raw(self.width, self.height, self.data.clone())
            .ok_or_else(|| Error::Internal("RGB buffer of the wrong size".into()))
    }

    fn from_buffer(b: image::RgbImage) -> Self {
        Self { width: b.width(), height: b.height(), data: b.into_raw() }
    }
}

/// What the file held before conversion to 8-bit RGB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedInfo {
    /// Width of the (upright) image.
    pub width: u32,
    /// Height of the (upright) image.
    pub height: u32,
    /// `png`, `jpeg` or `webp`.
    pub format: &'static str,
    /// The pixel layout, named like PIL's modes: `L`, `LA`, `RGB`, `RGBA`, and for 16-bit
    /// or float samples `I;16`, `LA;16`, `RGB;16`, `RGBA;16`, `RGB;F`, `RGBA;F`.
    pub mode: String,
}

impl DecodedInfo {
    /// The usual file extension of the format (`png`, `jpg`, `webp`).
    pub fn extension(&self) -> &'static str {
        match self.format {
            "jpeg" => "jpg",
            other => other,
        }
    }
}

fn mode_name(c: image::ColorType) -> &'static str {
    use image::ColorType as C;
    match c {
        C::L8 => "L",
        C::La8 => "LA",
        C::Rgb8 => "RGB",
        C::Rgba8 => "RGBA",
        C::L16 => "I;16",
        C::La16 => "LA;16",
        C::Rgb16 => "RGB;16",
        C::Rgba16 => "RGBA;16",
        C::Rgb32F => "RGB;F",
        C::Rgba32F => "RGBA;F",
        _ => "RGB",
    }
}

/// Reads and decodes the image file at `path` (see the module docs for the rules). Errors
/// name the file: a special file (FIFO, device, directory) is `invalid_data`, a missing one
/// `file_not_found`.
pub fn decode(path: &Path, limits: &ImageLimits) -> Result<(RgbImage, DecodedInfo)> {
    let meta = std::fs::metadata(path).with_path(path)?;
    if !meta.is_file() {
        return Err(Error::data(Location::file(path), "not a regular file (a directory, FIFO, socket or device)"));
    }
    if meta.len() > limits.max_bytes {
        return Err(too_big_file(path, meta.len(), limits));
    }
    let file = std::fs::File::open(path).with_path(path)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Read at most one byte more than allowed: a file that grew after `metadata` is caught.
    file.take(limits.max_bytes.saturating_add(1)).read_to_end(&mut bytes).with_path(path)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_big_file(path, bytes.len() as u64, limits));
    }
    decode_at(&bytes, Location::file(path), limits)
}

fn too_big_file(path: &Path, len: u64, limits: &ImageLimits) -> Error {
    Error::data(
        Location::file(path),
        format!("file of {len} bytes is over the limit of {} bytes (max_bytes)", limits.max_bytes),
    )
}

/// Decodes image bytes; `label` names them in errors (as the file).
pub fn decode_bytes(bytes: &[u8], label: impl AsRef<Path>, limits: &ImageLimits) -> Result<(RgbImage, DecodedInfo)> {
    let label = label.as_ref();
    if bytes.len() as u64 > limits.max_bytes {
        return Err(Error::data(
            Location::file(label),
            format!("{} bytes is over the limit of {} bytes (max_bytes)", bytes.len(), limits.max_bytes),
        ));
    }
    decode_at(bytes, Location::file(label), limits)
}

/// Names of formats people may try, recognised from their first bytes.
fn sniff_other(bytes: &[u8]) -> Option<&'static str> {
    const SIGS: [(&[u8], &str); 7] = [
        (b"GIF8", "a GIF"),
        (b"BM", "a BMP"),
        (b"II*\0", "a TIFF"),
        (b"MM\0*", "a TIFF"),
        (b"\0\0\x01\0", "an ICO"),
        (b"8BPS", "a PSD"),
        (b"qoif", "a QOI"),
    ];
    SIGS.iter().find(|(sig, _)| bytes.starts_with(sig)).map(|(_, name)| *name)
}

fn decode_at(bytes: &[u8], at: Location, limits: &ImageLimits) -> Result<(RgbImage, DecodedInfo)> {
    let bad = |reason: String| Error::data(at.clone(), reason);
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read the image: {e}")))?;
    let format = match reader.format() {
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::Jpeg) => "jpeg",
        Some(ImageFormat::WebP) => "webp",
        Some(other) => {
            return Err(bad(format!(
                "a {} image; only PNG, JPEG and WebP are supported",
                other.extensions_str().first().copied().unwrap_or("unknown").to_uppercase()
            )))
        }
        None => {
            let what = sniff_other(bytes).unwrap_or(if bytes.is_empty() { "an empty file" } else { "not an image" });
            return Err(bad(format!("{what}; only PNG, JPEG and WebP images are supported")));
        }
    };
    // The JPEG decoder fills a truncated scan with gray instead of failing; PIL refuses
    // such a file ("image file is truncated"), and so does this.
    if format == "jpeg" && !jpeg_is_complete(bytes) {
        return Err(bad("truncated JPEG image: no end-of-image marker after its last scan".into()));
    }
    let mut reader = reader;
    let mut lim = image::Limits::default();
    // The pixel count is checked below, from the header; this bounds what the decoder may
    // allocate on top of that (16 bytes a pixel covers RGBA float).
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(64 << 20));
    reader.limits(lim);
    let what = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => bad(format!("image over the decoder's memory limit: {l}")),
        other => bad(format!("corrupt or truncated {} image: {other}", format.to_uppercase())),
    };
    let mut decoder = reader.into_decoder().map_err(what)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(bad(format!(
            "image of {w}x{h} = {pixels} pixels is over the limit of {} pixels (max_pixels); it is refused, not downscaled",
            limits.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(bad(format!("image of {w}x{h} pixels is empty")));
    }
    let mode = mode_name(decoder.color_type()).to_string();
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(what)?;
    img.apply_orientation(orientation);
    let rgb = flatten_on_white(img);
    let info = DecodedInfo { width: rgb.width, height: rgb.height, format, mode };
    Ok((rgb, info))
}

/// Whether JPEG `bytes` hold an end-of-image marker (`FF D9`) after the start of their
/// last scan (`FF DA`). Neither marker can occur inside entropy-coded data (an `FF` there
/// is followed by `00`), so a file cut anywhere in or before its last scan fails this.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// 8-bit RGB of `img`, alpha composited on white.
fn flatten_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return RgbImage::from_buffer(img.into_rgb8());
    }
    let rgba = img.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = px[3] as u32;
        for &c in &px[..3] {
            data.push(((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage { width, height, data }
}

fn check_size(field: &str, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::config(field, format!("size {w}x{h}: both sides must be at least 1")));
    }
    Ok(())
}

/// `img` resized to exactly `width x height` with a bilinear filter, antialiased when
/// shrinking (torchvision's `Resize(interpolation=BILINEAR, antialias=True)`).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    check_size("size", width, height)?;
    if (img.width, img.height) == (width, height) {
        img.check()?;
        return Ok(img.clone());
    }
    let buf = img.to_buffer()?;
    Ok(RgbImage::from_buffer(image::imageops::resize(&buf, width, height, image::imageops::FilterType::Triangle)))
}

/// `img` resized so that its shorter side is `size`, keeping the aspect ratio (the longer
/// side is rounded to the nearest pixel), as torchvision's `Resize(size)` with an int.
pub fn resize_shorter_side(img: &RgbImage, size: u32) -> Result<RgbImage> {
    check_size("resolution", size, size)?;
    img.check()?;
    let (w, h) = (img.width as u64, img.height as u64);
    let (nw, nh) = if w <= h {
        (size as u64, ((h * size as u64) as f64 / w as f64).round().max(1.0) as u64)
    } else {
        (((w * size as u64) as f64 / h as f64).round().max(1.0) as u64, size as u64)
    };
    let (nw, nh) = (u32::try_from(nw), u32::try_from(nh));
    match (nw, nh) {
        (Ok(nw), Ok(nh)) => resize(img, nw, nh),
        _ => Err(Error::config("resolution", format!("{size} gives a side over 2^32 pixels"))),
    }
}

/// `img` shrunk (never enlarged) to fit inside `max_side x max_side`, keeping the aspect
/// ratio: a preview thumbnail.
pub fn thumbnail(img: &RgbImage, max_side: u32) -> Result<RgbImage> {
    check_size("size", max_side, max_side)?;
    img.check()?;
    let longer = img.width.max(img.height);
    if longer <= max_side {
        return Ok(img.clone());
    }
    let scale = max_side as f64 / longer as f64;
    let w = ((img.width as f64 * scale).round() as u32).clamp(1, max_side);
    let h = ((img.height as f64 * scale).round() as u32).clamp(1, max_side);
    resize(img, w, h)
}

/// The `width x height` region of `img` whose top-left corner is (`x`, `y`); the region
/// must lie inside the image.
pub fn crop(img: &RgbImage, x: u32, y: u32, width: u32, height: u32) -> Result<RgbImage> {
    img.check()?;
    check_size("crop", width, height)?;
    if x as u64 + width as u64 > img.width as u64 || y as u64 + height as u64 > img.height as u64 {
        return Err(Error::config(
            "crop",
            format!("{width}x{height} at ({x}, {y}) is outside the {}x{} image", img.width, img.height),
        ));
    }
    let (iw, w) = (img.width as usize, width as usize);
    let mut data = Vec::with_capacity(w * height as usize * 3);
    for row in y as usize..(y + height) as usize {
        let start = (row * iw + x as usize) * 3;
        data.extend_from_slice(&img.data[start..start + w * 3]);
    }
    Ok(RgbImage { width, height, data })
}

/// The centred `width x height` region of `img` (torchvision's `CenterCrop`: the offset is
/// rounded, `round((W - w) / 2)`); the image must be at least that large.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    img.check()?;
    if width > img.width || height > img.height {
        return Err(Error::config(
            "crop",
            format!("center crop of {width}x{height} is larger than the {}x{} image", img.width, img.height),
        ));
    }
    let x = ((img.width - width) as f64 / 2.0).round() as u32;
    let y = ((img.height - height) as f64 / 2.0).round() as u32;
    crop(img, x, y, width, height)
}

/// `img` mirrored left to right.
pub fn flip_horizontal(img: &RgbImage) -> RgbImage {
    let w = img.width as usize;
    let mut data = Vec::with_capacity(img.data.len());
    for row in img.data.chunks_exact((w * 3).max(1)) {
        for px in row.chunks_exact(3).rev() {
            data.extend_from_slice(px);
        }
    }
    RgbImage { width: img.width, height: img.height, data }
}

/// The images laid out row by row (`rows[r][c]`) on a white canvas, each in a cell as
/// large as the largest image (contact sheets: validation grids, before/after).
pub fn grid(rows: &[Vec<&RgbImage>]) -> Result<RgbImage> {
    let cell_w = rows.iter().flatten().map(|i| i.width).max().unwrap_or(0);
    let cell_h = rows.iter().flatten().map(|i| i.height).max().unwrap_or(0);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let (w, h) = (cell_w.saturating_mul(cols), cell_h.saturating_mul(rows.len() as u32));
    if w == 0 || h == 0 {
        return Err(Error::config("images", "no image to lay out"));
    }
    if u64::from(w) * u64::from(h) > ImageLimits::DEFAULT_MAX_PIXELS {
        return Err(Error::config("images", format!("a {w}x{h} grid is above 64 megapixels")));
    }
    let mut out = RgbImage::filled(w, h, [255, 255, 255]);
    let row_bytes = w as usize * 3;
    for (r, row) in rows.iter().enumerate() {
        for (c, im) in row.iter().enumerate() {
            let (ox, oy) = (c * cell_w as usize, r * cell_h as usize);
            let iw = im.width as usize * 3;
            for y in 0..im.height as usize {
                let at = (oy + y) * row_bytes + ox * 3;
                out.data[at..at + iw].copy_from_slice(&im.data[y * iw..(y + 1) * iw]);
            }
        }
    }
    Ok(out)
}

/// `img` as an `f32` tensor of shape `[3, height, width]` with values in `[-1, 1]`
/// (`x / 127.5 - 1`, torchvision's `ToTensor` then `Normalize([0.5], [0.5])`).
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    img.check()?;
    let v: Vec<f32> = img.data.iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
    let t = Tensor::from_vec(v, (img.height as usize, img.width as usize, 3), device)?;
    Ok(t.permute((2, 0, 1))?.contiguous()?)
}

/// `img` as a PNG file (no text chunks).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    img.check()?;
    super::png::encode_rgb8(img.width as usize, img.height as usize, &img.data, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 255 / w.max(2).saturating_sub(1).max(1)) as u8, (y * 10) as u8, 7]);
            }
        }
        RgbImage::new(w, h, data).unwrap()
    }

    fn encode(img: DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, fmt).unwrap();
        out.into_inner()
    }

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    #[test]
    fn png_round_trip_and_modes() {
        let img = gradient(5, 3);
        let bytes = encode_png(&img).unwrap();
        let (back, info) = decode_bytes(&bytes, "a.png", &limits()).unwrap();
        assert_eq!(back, img);
        assert_eq!((info.width, info.height, info.format, info.mode.as_str()), (5, 3, "png", "RGB"));
        assert_eq!(info.extension(), "png");

        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_raw(2, 1, vec![10, 200]).unwrap());
        let (g, info) = decode_bytes(&encode(gray, ImageFormat::Png), "g.png", &limits()).unwrap();
        assert_eq!(info.mode, "L");
        assert_eq!(g.data, vec![10, 10, 10, 200, 200, 200]);

        let g16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(1, 1, vec![65535u16]).unwrap());
        let (g, info) = decode_bytes(&encode(g16, ImageFormat::Png), "g16.png", &limits()).unwrap();
        assert_eq!(info.mode, "I;16");
        assert_eq!(g.data, vec![255, 255, 255]);
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let rgba = image::RgbaImage::from_raw(3, 1, vec![0, 0, 0, 0, 0, 0, 0, 255, 100, 50, 0, 128]).unwrap();
        let bytes = encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let (img, info) = decode_bytes(&bytes, "a.png", &limits()).unwrap();
        assert_eq!(info.mode, "RGBA");
        assert_eq!(img.pixel(0, 0), [255, 255, 255], "transparent becomes white");
        assert_eq!(img.pixel(1, 0), [0, 0, 0], "opaque unchanged");
        // 100 * 128/255 + 255 * 127/255 = 50.2 + 127 = 177.2
        assert_eq!(img.pixel(2, 0), [177, 152, 127]);
    }

    #[test]
    fn jpeg_and_webp_decode() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 8, image::Rgb([200, 30, 30])));
        let (d, info) = decode_bytes(&encode(img.clone(), ImageFormat::Jpeg), "a.jpg", &limits()).unwrap();
        assert_eq!((info.format, info.extension(), info.width, info.height), ("jpeg", "jpg", 16, 8));
        let p = d.pixel(8, 4);
        assert!(p[0].abs_diff(200) < 8 && p[1].abs_diff(30) < 8, "{p:?}");
        let (d, info) = decode_bytes(&encode(img, ImageFormat::WebP), "a.webp", &limits()).unwrap();
        assert_eq!((info.format, info.mode.as_str()), ("webp", "RGB"));
        assert_eq!(d.pixel(3, 3), [200, 30, 30], "the encoder writes lossless WebP");
    }

    #[test]
    fn other_formats_and_garbage_are_invalid_data_naming_the_file() {
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
        let e = decode_bytes(&gif, "x.png", &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        let s = e.to_string();
        assert!(s.contains("x.png") && s.contains("GIF"), "{s}");
        let bmp = b"BM\x1e\x00\x00\x00\x00\x00\x00\x00\x1a\x00\x00\x00".to_vec();
        let s = decode_bytes(&bmp, "y.png", &limits()).unwrap_err().to_string();
        assert!(s.contains("y.png") && s.contains("BMP"), "{s}");
        let e = decode_bytes(b"hello", "z.png", &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("not an image"), "{e}");
        assert!(decode_bytes(b"", "e.png", &limits()).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn corrupt_and_truncated_files_are_invalid_data() {
        let png = encode_png(&gradient(32, 32)).unwrap();
        let e = decode_bytes(&png[..png.len() / 2], "t.png", &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_data", "{e}");
        assert!(e.to_string().contains("t.png"), "{e}");
        let mut corrupt = png.clone();
        let n = corrupt.len();
        for b in &mut corrupt[60..n - 20] {
            *b ^= 0x5a;
        }
        assert_eq!(decode_bytes(&corrupt, "c.png", &limits()).unwrap_err().code(), "invalid_data");
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 9])));
        let jpg = encode(img, ImageFormat::Jpeg);
        // Cut anywhere, even just before the end marker, a JPEG is refused.
        for keep in [jpg.len() / 2, jpg.len() * 9 / 10, jpg.len() - 2] {
            let e = decode_bytes(&jpg[..keep], "t.jpg", &limits()).unwrap_err();
            assert_eq!(e.code(), "invalid_data", "{e}");
            assert!(e.to_string().contains("t.jpg") && e.to_string().contains("truncated"), "{e}");
        }
        assert!(decode_bytes(&jpg, "t.jpg", &limits()).is_ok());
        let webp = encode(
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(32, 32, image::Rgb([1, 2, 3]))),
            ImageFormat::WebP,
        );
        for keep in [webp.len() / 2, webp.len() - 2] {
            assert_eq!(decode_bytes(&webp[..keep], "t.webp", &limits()).unwrap_err().code(), "invalid_data");
        }
    }

    /// A PNG whose header claims `w x h` followed by one tiny IDAT: no decoder ever gets
    /// to the pixels.
    pub(crate) fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        fn crc32(bytes: &[u8]) -> u32 {
            let mut c = 0xffff_ffffu32;
            for &b in bytes {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn over_max_pixels_is_refused_from_the_header() {
        let bytes = huge_png_header(10_000, 10_000);
        assert!(bytes.len() < 100);
        let e = decode_bytes(&bytes, "big.png", &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        let s = e.to_string();
        assert!(s.contains("big.png") && s.contains("10000x10000") && s.contains("max_pixels"), "{s}");
        let small = ImageLimits { max_pixels: 10, ..limits() };
        let s = decode_bytes(&encode_png(&gradient(4, 3)).unwrap(), "s.png", &small).unwrap_err().to_string();
        assert!(s.contains("12 pixels"), "{s}");
        let tiny = ImageLimits { max_bytes: 10, ..limits() };
        let s = decode_bytes(&encode_png(&gradient(4, 3)).unwrap(), "s.png", &tiny).unwrap_err().to_string();
        assert!(s.contains("max_bytes"), "{s}");
    }

    #[test]
    fn decode_reads_files_and_refuses_special_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        std::fs::write(&p, encode_png(&gradient(3, 2)).unwrap()).unwrap();
        let (img, info) = decode(&p, &limits()).unwrap();
        assert_eq!((img.width, info.height), (3, 2));
        let e = decode(dir.path(), &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert_eq!(decode(&dir.path().join("missing.png"), &limits()).unwrap_err().code(), "file_not_found");
        let s = decode(&p, &ImageLimits { max_bytes: 5, ..limits() }).unwrap_err().to_string();
        assert!(s.contains("a.png") && s.contains("max_bytes"), "{s}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("x.png");
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            let e = decode(&fifo, &limits()).unwrap_err();
            assert_eq!(e.code(), "invalid_data");
            assert!(e.to_string().contains("x.png") && e.to_string().contains("regular file"), "{e}");
        }
    }

    #[test]
    fn resize_crop_flip() {
        let img = gradient(8, 4);
        let r = resize(&img, 4, 2).unwrap();
        assert_eq!((r.width, r.height, r.data.len()), (4, 2, 24));
        // A flat image stays flat under the filter.
        let flat = RgbImage::filled(9, 7, [10, 20, 30]);
        assert!(resize(&flat, 4, 3).unwrap().data.chunks(3).all(|p| p == [10, 20, 30]));
        assert!(resize(&flat, 20, 11).unwrap().data.chunks(3).all(|p| p == [10, 20, 30]));
        assert_eq!(resize(&img, 0, 2).unwrap_err().code(), "invalid_config");

        let s = resize_shorter_side(&gradient(30, 20), 10).unwrap();
        assert_eq!((s.width, s.height), (15, 10));
        let s = resize_shorter_side(&gradient(20, 30), 10).unwrap();
        assert_eq!((s.width, s.height), (10, 15));
        let t = thumbnail(&gradient(40, 10), 8).unwrap();
        assert_eq!((t.width, t.height), (8, 2));
        assert_eq!(thumbnail(&gradient(4, 4), 8).unwrap(), gradient(4, 4));

        let c = crop(&img, 2, 1, 3, 2).unwrap();
        assert_eq!((c.width, c.height), (3, 2));
        assert_eq!(c.pixel(0, 0), img.pixel(2, 1));
        assert_eq!(c.pixel(2, 1), img.pixel(4, 2));
        assert_eq!(crop(&img, 6, 0, 3, 1).unwrap_err().code(), "invalid_config");
        let cc = center_crop(&img, 4, 2).unwrap();
        assert_eq!(cc.pixel(0, 0), img.pixel(2, 1));
        assert_eq!(center_crop(&img, 9, 1).unwrap_err().code(), "invalid_config");

        let f = flip_horizontal(&img);
        assert_eq!(f.pixel(0, 0), img.pixel(7, 0));
        assert_eq!(f.pixel(7, 3), img.pixel(0, 3));
        assert_eq!(flip_horizontal(&f), img);

        let bad = RgbImage { width: 2, height: 2, data: vec![0; 5] };
        assert_eq!(resize(&bad, 1, 1).unwrap_err().code(), "invalid_config");
        assert_eq!(RgbImage::new(2, 2, vec![0; 5]).unwrap_err().code(), "invalid_config");
    }

    #[test]
    fn tensor_is_chw_in_minus_one_one() {
        let img = RgbImage::new(2, 1, vec![0, 255, 51, 255, 0, 102]).unwrap();
        let t = to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 1, 2]);
        let v = t.to_vec3::<f32>().unwrap();
        assert_eq!(v[0][0], vec![-1.0, 1.0]);
        assert_eq!(v[1][0], vec![1.0, -1.0]);
        assert!((v[2][0][0] - (51.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn png_encoding_round_trips() {
        let img = gradient(6, 5);
        let png = encode_png(&img).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert_eq!(super::super::png::decode(&png).unwrap().rgb, img.data);
    }
}
