//! `ImageGenerator`: text-to-image with a registered stable-diffusion model. The GIL is
//! released while the model loads and while images are generated.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use anneal::{ImageGeneratorOptions, ImageRequest};

use crate::conv::{q, to_json, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::registry::PyModelRecord;

/// Generates images with one loaded Stable Diffusion model (base, full fine-tune or
/// LoRA). Thread-safe; requests with different adapters take turns.
#[pyclass(name = "ImageGenerator", module = "anneal", frozen)]
pub struct PyImageGenerator {
    inner: anneal::ImageGenerator,
}

impl PyImageGenerator {
    /// For `Home.image_generator`.
    pub fn open(
        py: Python<'_>,
        registry: &anneal::ModelRegistry,
        model: String,
        merge_adapter: Option<&Bound<'_, PyAny>>,
        record: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let value = Options::default().set("merge_adapter", merge_adapter)?.set("record", record)?.into_value();
        let opts: ImageGeneratorOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let registry = registry.clone();
        py.enter_core(move || anneal::ImageGenerator::load(&registry, model, &opts)).map(|inner| Self { inner })
    }
}

/// A `PIL.Image.Image` of the PNG (its `.info` holds the settings: `parameters`, `anneal`)
/// when Pillow is importable, else the PNG bytes.
fn image<'py>(py: Python<'py>, png: &[u8], pil: Option<&Bound<'py, PyModule>>) -> PyResult<Bound<'py, PyAny>> {
    let bytes = PyBytes::new(py, png);
    let Some(pil) = pil else { return Ok(bytes.into_any()) };
    let buf = py.import("io")?.getattr("BytesIO")?.call1((bytes,))?;
    let img = pil.getattr("open")?.call1((buf,))?;
    img.call_method0("load")?;
    Ok(img)
}

#[pymethods]
impl PyImageGenerator {
    /// Generates images for `prompt` (a str or a list of str); returns a list of
    /// `PIL.Image.Image` (settings in `.info`) when Pillow is installed, else of PNG
    /// bytes. `on_event` gets `task_started` / `task_progress` (denoising steps) /
    /// `task_finished`; `cancel` or Ctrl-C stops at the next step.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, *, negative_prompt=None, guidance_scale=None, steps=None, scheduler=None, seed=None,
                        width=None, height=None, num_images=None, clip_skip=None, adapters=None, on_event=None,
                        cancel=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: Bound<'py, PyAny>,
        negative_prompt: Option<Bound<'py, PyAny>>,
        guidance_scale: Option<Bound<'py, PyAny>>,
        steps: Option<Bound<'py, PyAny>>,
        scheduler: Option<Bound<'py, PyAny>>,
        seed: Option<Bound<'py, PyAny>>,
        width: Option<Bound<'py, PyAny>>,
        height: Option<Bound<'py, PyAny>>,
        num_images: Option<Bound<'py, PyAny>>,
        clip_skip: Option<Bound<'py, PyAny>>,
        adapters: Option<Bound<'py, PyAny>>,
        on_event: Option<Bound<'py, PyAny>>,
        cancel: Option<Bound<'py, PyCancelToken>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let prompts = match to_json(&prompt, "prompt")? {
            serde_json::Value::String(s) => serde_json::Value::Array(vec![serde_json::Value::String(s)]),
            other => other,
        };
        let mut opts = Options::default();
        for (k, v) in [
            ("negative_prompt", &negative_prompt),
            ("guidance_scale", &guidance_scale),
            ("steps", &steps),
            ("scheduler", &scheduler),
            ("seed", &seed),
            ("width", &width),
            ("height", &height),
            ("num_images", &num_images),
            ("clip_skip", &clip_skip),
            ("adapters", &adapters),
        ] {
            opts = opts.set(k, v.as_ref())?;
        }
        let mut value = opts.into_value();
        if let serde_json::Value::Object(m) = &mut value {
            m.insert("prompts".into(), prompts);
        }
        let req: ImageRequest = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (gen, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        let out = events::run(py, events::callback(on_event)?, move |sink| gen.generate_with(&req, sink, &cancel))?;
        let pil = py.import("PIL.Image").ok();
        let list = PyList::empty(py);
        for img in &out.images {
            list.append(image(py, &img.png, pil.as_ref())?)?;
        }
        Ok(list)
    }

    /// The model this generator was loaded with.
    #[getter]
    fn model(&self) -> PyModelRecord {
        self.inner.model().clone().into()
    }

    fn __repr__(&self) -> String {
        format!("ImageGenerator({})", q(&self.inner.model().reference()))
    }
}
