//! `anneal.shapes`: the toy coloured-shapes data of the image quickstart (drawn by the
//! core) and its score (the share of images whose dominant colour and shape match
//! their prompt).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use anneal::diffusion::{image as img, shapes};

use crate::errors::{to_pyerr, EnterCore};

/// Writes `n` captioned pictures (`size` x `size` PNG files and `metadata.jsonl`) into
/// the folder `dir`, deterministic from `seed`.
#[pyfunction(name = "shapes_write_imagefolder")]
#[pyo3(signature = (dir, n=480, size=32, seed=0))]
pub fn write_imagefolder(py: Python<'_>, dir: std::path::PathBuf, n: usize, size: usize, seed: u64) -> PyResult<()> {
    py.enter_core(move || shapes::write_imagefolder(&dir, n, size, seed))
}

/// PNG bytes of `images` (bytes, or anything with a `save(fp, format="PNG")` such as a
/// `PIL.Image.Image`), decoded.
fn decode(py: Python<'_>, images: &[Bound<'_, PyAny>]) -> PyResult<Vec<img::RgbImage>> {
    let mut decoded = Vec::with_capacity(images.len());
    for (i, im) in images.iter().enumerate() {
        let png: Vec<u8> = match im.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().to_vec(),
            Err(_) => {
                let buf = py.import("io")?.getattr("BytesIO")?.call0()?;
                im.call_method1("save", (&buf, "PNG"))?;
                buf.call_method0("getvalue")?.cast::<PyBytes>()?.as_bytes().to_vec()
            }
        };
        let limits = img::ImageLimits::default();
        let (rgb, _) = img::decode_bytes(&png, format!("images[{i}]"), &limits).map_err(|e| to_pyerr(py, e))?;
        decoded.push(rgb);
    }
    Ok(decoded)
}

fn score_dict(py: Python<'_>, s: &shapes::ShapesScore) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("images", s.images)?;
    d.set_item("color", s.color)?;
    d.set_item("shape", s.shape)?;
    d.set_item("both", s.both)?;
    Ok(d.unbind())
}

/// `{"images", "color", "shape", "both"}`: the shares of `images` whose dominant colour,
/// shape, and both match the prompt at the same index (measured on the pixels).
#[pyfunction(name = "shapes_evaluate")]
pub fn evaluate(py: Python<'_>, images: Vec<Bound<'_, PyAny>>, prompts: Vec<String>) -> PyResult<Py<PyDict>> {
    let decoded = decode(py, &images)?;
    let views: Vec<(usize, usize, &[u8])> =
        decoded.iter().map(|r| (r.width as usize, r.height as usize, r.data.as_slice())).collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let s = shapes::evaluate(&views, &prompts).map_err(|e| to_pyerr(py, e))?;
    score_dict(py, &s)
}

/// The shares a painter that ignores its prompt scores on average (`images` 0).
#[pyfunction(name = "shapes_chance")]
pub fn chance(py: Python<'_>) -> PyResult<Py<PyDict>> {
    score_dict(py, &shapes::ShapesScore::chance())
}

/// The share of `images` (PNG bytes, or anything with a `save(fp, format="PNG")` such
/// as a `PIL.Image.Image`) whose colour and shape match the prompt at the same index.
#[pyfunction(name = "shapes_score")]
pub fn score(py: Python<'_>, images: Vec<Bound<'_, PyAny>>, prompts: Vec<String>) -> PyResult<f64> {
    let decoded = decode(py, &images)?;
    let views: Vec<(usize, usize, &[u8])> =
        decoded.iter().map(|r| (r.width as usize, r.height as usize, r.data.as_slice())).collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    shapes::score(&views, &prompts).map_err(|e| to_pyerr(py, e))
}

/// The `tiny-shapes` preset's recommended training and sampling settings, with its
/// `resolution` (anneal::diffusion::presets::Recommended, as a dict).
#[pyfunction(name = "shapes_recommended")]
pub fn recommended(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let p = anneal::diffusion::presets::find("tiny-shapes")
        .ok_or_else(|| to_pyerr(py, anneal::Error::Internal("no tiny-shapes preset".into())))?;
    let mut v = serde_json::to_value(p.recommended);
    if let Ok(serde_json::Value::Object(m)) = &mut v {
        m.insert("resolution".into(), p.resolution.into());
    }
    crate::conv::json_to_py(py, v)
}

/// One PNG (bytes) holding `rows[r][c]` (PNG bytes or PIL images) row by row on a
/// white canvas, each picture enlarged `scale` times (nearest neighbour).
#[pyfunction(name = "shapes_grid")]
#[pyo3(signature = (rows, scale=1))]
pub fn grid<'py>(py: Python<'py>, rows: Vec<Vec<Bound<'py, PyAny>>>, scale: usize) -> PyResult<Bound<'py, PyBytes>> {
    let mut decoded = Vec::with_capacity(rows.len());
    for row in &rows {
        decoded.push(decode(py, row)?);
    }
    let png = py.enter_core(move || shapes::grid_png(&decoded, scale))?;
    Ok(PyBytes::new(py, &png))
}

/// Every colour x shape caption, e.g. "a red circle".
#[pyfunction(name = "shapes_prompts")]
pub fn prompts() -> Vec<String> {
    shapes::prompts()
}

/// `shapes_write_imagefolder`, `shapes_evaluate`, `shapes_chance`, `shapes_score`,
/// `shapes_recommended`, `shapes_prompts` and `shapes_grid` (wrapped by `anneal.shapes`).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(recommended, m)?)?;
    m.add_function(wrap_pyfunction!(prompts, m)?)?;
    m.add_function(wrap_pyfunction!(grid, m)?)?;
    m.add_function(wrap_pyfunction!(write_imagefolder, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(chance, m)?)?;
    m.add_function(wrap_pyfunction!(score, m)?)
}
