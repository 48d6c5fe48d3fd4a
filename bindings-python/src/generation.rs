//! `Generator`, `TokenStream` and the generation records. The GIL is released for every
//! forward pass (`generate`, each `next()` of a stream, batches, scoring, loading).

use std::sync::Mutex;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;

use anneal::{GenerationConfig, GenerationFilter, GeneratorOptions, Prompt};

use crate::conv::{json_to_py, q, to_json, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::records::record_class;
use crate::registry::{PyModelRecord, PyModelRegistry};

record_class! {
    /// Where the time of one request went.
    PyTimings = "Timings"(anneal::Timings) {
        fields: [ttft_ms, decode_ms, total_ms, prompt_tokens_per_s, decode_tokens_per_s],
        repr: [ttft_ms, decode_tokens_per_s],
        eq: PartialEq,
    }
}

record_class! {
    /// The result of one prompt.
    PyGeneration = "Generation"(anneal::Generation) {
        fields: [
            id,
            model_id,
            text,
            token_ids,
            finish_reason,
            stop_sequence,
            prompt_tokens,
            generated_tokens,
            seed,
            /// Where the time went.
            timings,
        ],
        repr: [text, finish_reason, generated_tokens],
        eq: PartialEq,
    }
}

record_class! {
    /// One piece of a stream: valid UTF-8 text and the tokens it came from.
    PyStreamChunk = "StreamChunk"(anneal::StreamChunk) {
        fields: [text, token_ids],
        repr: [text, token_ids],
        eq: PartialEq,
    }
}

record_class! {
    /// Loss and perplexity of one text under the model.
    PyScore = "Score"(anneal::Score) {
        fields: [loss, perplexity, tokens],
        repr: [loss, perplexity, tokens],
        eq: PartialEq,
    }
}

record_class! {
    /// A recorded generation or scoring call.
    PyGenerationRecord = "GenerationRecord"(anneal::GenerationRecord) {
        fields: [
            id,
            model_id,
            base_model_id,
            kind,
            params,
            prompt_tokens,
            generated_tokens,
            finish_reason,
            ttft_ms,
            duration_ms,
            created_at,
        ],
        repr: [id, model_id, kind, generated_tokens],
        eq: PartialEq,
    }
}

record_class! {
    /// Totals of a model's recorded calls.
    PyModelUsage = "ModelUsage"(anneal::ModelUsage) {
        fields: [model_id, calls, generations, prompt_tokens, generated_tokens, total_duration_ms, last_used_at],
        repr: [model_id, calls, generated_tokens],
        eq: PartialEq,
    }
}

/// A prompt: `str` (text), a list of `{"role", "content"}` dicts (chat), or a list of
/// token ids; the core decides which (`Prompt::from_json`).
fn prompt(py: Python<'_>, obj: &Bound<'_, PyAny>, field: &str) -> PyResult<Prompt> {
    Prompt::from_json(to_json(obj, field)?, field).map_err(|e| to_pyerr(py, e))
}

/// `GenerationConfig` from keyword arguments, given as (name, value) pairs; unset ones
/// stay unset (the core fills them from the model's generation_config.json and its
/// defaults, and takes one `stop` string as a list).
fn config(py: Python<'_>, kwargs: &[(&str, Option<&Bound<'_, PyAny>>)]) -> PyResult<GenerationConfig> {
    let opts = kwargs.iter().try_fold(Options::default(), |opts, &(key, value)| opts.set(key, value))?;
    anneal::options_from_json(opts.into_value()).map_err(|e| to_pyerr(py, e))
}

/// `config(py, &[("name", name.as_ref()), ...])` for the settings keyword arguments.
macro_rules! settings {
    ($py:expr, $($k:ident),* $(,)?) => {
        config($py, &[$((stringify!($k), $k.as_ref())),*])?
    };
}

/// Loads a registered model (`GeneratorOptions`) for `Home.generator` / `Generator.load`.
fn load(
    py: Python<'_>,
    registry: &anneal::ModelRegistry,
    model: String,
    merge_adapter: Option<&Bound<'_, PyAny>>,
    dtype: Option<&Bound<'_, PyAny>>,
    record: Option<&Bound<'_, PyAny>>,
    quantize: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyGenerator> {
    let value = Options::default()
        .set("merge_adapter", merge_adapter)?
        .set("dtype", dtype)?
        .set("record", record)?
        .set("quantize", quantize)?
        .into_value();
    let opts: GeneratorOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
    let registry = registry.clone();
    py.enter_core(move || anneal::Generator::load(&registry, model, &opts)).map(|inner| PyGenerator { inner })
}

/// Generates with one loaded model (base, full fine-tune or adapter). Thread-safe:
/// requests from several threads take turns one forward pass at a time.
#[pyclass(name = "Generator", module = "anneal", frozen)]
pub struct PyGenerator {
    inner: anneal::Generator,
}

impl PyGenerator {
    /// For `Home.generator`.
    pub fn open(
        py: Python<'_>,
        registry: &anneal::ModelRegistry,
        model: String,
        merge_adapter: Option<&Bound<'_, PyAny>>,
        dtype: Option<&Bound<'_, PyAny>>,
        record: Option<&Bound<'_, PyAny>>,
        quantize: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        load(py, registry, model, merge_adapter, dtype, record, quantize)
    }
}

#[pymethods]
impl PyGenerator {
    /// Loads `model` (an id or reference) from `models`. Same as `Home.generator`.
    #[staticmethod]
    #[pyo3(signature = (models, model, *, merge_adapter=None, dtype=None, record=None, quantize=None))]
    fn load(
        py: Python<'_>,
        models: &PyModelRegistry,
        model: String,
        merge_adapter: Option<Bound<'_, PyAny>>,
        dtype: Option<Bound<'_, PyAny>>,
        record: Option<Bound<'_, PyAny>>,
        quantize: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        load(py, &models.inner, model, merge_adapter.as_ref(), dtype.as_ref(), record.as_ref(), quantize.as_ref())
    }

    /// Generates a completion of `prompt`; the GIL is released meanwhile. `on_event`
    /// gets `task_started` / `task_progress` (tokens) / `task_finished`; `cancel` or
    /// Ctrl-C stops at the next token (`CancelledError` / `KeyboardInterrupt`).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, *, max_new_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
                        repetition_penalty=None, seed=None, stop=None, ignore_eos=None, adapter=None, on_event=None,
                        cancel=None))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Bound<'_, PyAny>,
        max_new_tokens: Option<Bound<'_, PyAny>>,
        temperature: Option<Bound<'_, PyAny>>,
        top_k: Option<Bound<'_, PyAny>>,
        top_p: Option<Bound<'_, PyAny>>,
        min_p: Option<Bound<'_, PyAny>>,
        repetition_penalty: Option<Bound<'_, PyAny>>,
        seed: Option<Bound<'_, PyAny>>,
        stop: Option<Bound<'_, PyAny>>,
        ignore_eos: Option<Bound<'_, PyAny>>,
        adapter: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyGeneration> {
        let p = self::prompt(py, &prompt, "prompt")?;
        let cfg = settings!(
            py,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
            ignore_eos,
            adapter
        );
        let (gen, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| gen.generate_with(p, &cfg, sink, &cancel))
            .map(Into::into)
    }

    /// Generates as `generate` does, as an iterator of `StreamChunk`s (valid UTF-8 text
    /// pieces). `stream.generation` holds the full result after the last chunk.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, *, max_new_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
                        repetition_penalty=None, seed=None, stop=None, ignore_eos=None, adapter=None))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: Bound<'_, PyAny>,
        max_new_tokens: Option<Bound<'_, PyAny>>,
        temperature: Option<Bound<'_, PyAny>>,
        top_k: Option<Bound<'_, PyAny>>,
        top_p: Option<Bound<'_, PyAny>>,
        min_p: Option<Bound<'_, PyAny>>,
        repetition_penalty: Option<Bound<'_, PyAny>>,
        seed: Option<Bound<'_, PyAny>>,
        stop: Option<Bound<'_, PyAny>>,
        ignore_eos: Option<Bound<'_, PyAny>>,
        adapter: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyTokenStream> {
        let p = self::prompt(py, &prompt, "prompt")?;
        let cfg = settings!(
            py,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
            ignore_eos,
            adapter
        );
        let s = py.enter_core(|| self.inner.stream(p, &cfg))?;
        Ok(PyTokenStream { inner: Mutex::new(s) })
    }

    /// Generates for several prompts in one batch; results in prompt order.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompts, *, max_new_tokens=None, temperature=None, top_k=None, top_p=None, min_p=None,
                        repetition_penalty=None, seed=None, stop=None, ignore_eos=None, adapter=None, on_event=None,
                        cancel=None))]
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: Vec<Bound<'_, PyAny>>,
        max_new_tokens: Option<Bound<'_, PyAny>>,
        temperature: Option<Bound<'_, PyAny>>,
        top_k: Option<Bound<'_, PyAny>>,
        top_p: Option<Bound<'_, PyAny>>,
        min_p: Option<Bound<'_, PyAny>>,
        repetition_penalty: Option<Bound<'_, PyAny>>,
        seed: Option<Bound<'_, PyAny>>,
        stop: Option<Bound<'_, PyAny>>,
        ignore_eos: Option<Bound<'_, PyAny>>,
        adapter: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<Vec<PyGeneration>> {
        let ps = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| prompt(py, p, &format!("prompts[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let cfg = settings!(
            py,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
            ignore_eos,
            adapter
        );
        let (gen, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        let out = events::run(py, events::callback(on_event)?, move |sink| {
            gen.generate_batch_with(&ps, &cfg, sink, &cancel)
        })?;
        Ok(out.into_iter().map(Into::into).collect())
    }

    /// Mean next-token loss, perplexity and token count of each text.
    #[pyo3(signature = (texts, *, adapter=None))]
    fn score(&self, py: Python<'_>, texts: Vec<String>, adapter: Option<Bound<'_, PyAny>>) -> PyResult<Vec<PyScore>> {
        let value = Options::default().set("adapter", adapter.as_ref())?.into_value();
        let o: anneal::ScoreOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let scores = py.enter_core(|| self.inner.score_with(&texts, o.adapter.as_deref()))?;
        Ok(scores.into_iter().map(Into::into).collect())
    }

    /// Loads an adapter of this generator's base, for requests' `adapter=`.
    fn add_adapter(&self, py: Python<'_>, model: String) -> PyResult<PyModelRecord> {
        py.enter_core(|| self.inner.add_adapter(model)).map(Into::into)
    }

    /// The adapters loaded unmerged on this generator.
    fn adapters(&self, py: Python<'_>) -> PyResult<Vec<PyModelRecord>> {
        Ok(py.enter_core(|| self.inner.adapters())?.into_iter().map(Into::into).collect())
    }

    /// The settings a request gets for what it leaves unset.
    fn defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, serde_json::to_value(self.inner.defaults()))
    }

    /// The model this generator was loaded with.
    #[getter]
    fn model(&self) -> PyModelRecord {
        self.inner.model().clone().into()
    }

    /// The model whose weights are loaded (an adapter's base).
    #[getter]
    fn base_model(&self) -> PyModelRecord {
        self.inner.base_model().clone().into()
    }

    #[getter]
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_token_ids().to_vec()
    }

    fn __repr__(&self) -> String {
        format!("Generator(model={})", q(&self.inner.model().reference()))
    }
}

/// A generation in progress: iterate for `StreamChunk`s; `generation` is the result
/// once the iterator is exhausted. Usable from any thread.
#[pyclass(name = "TokenStream", module = "anneal", frozen)]
pub struct PyTokenStream {
    inner: Mutex<anneal::TokenStream>,
}

#[pymethods]
impl PyTokenStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<PyStreamChunk> {
        let next = py.detach(|| match self.inner.lock() {
            Ok(mut s) => s.next(),
            Err(_) => Some(Err(anneal::Error::Internal("stream poisoned by a panic".into()))),
        });
        match next {
            Some(Ok(chunk)) => Ok(chunk.into()),
            Some(Err(e)) => Err(to_pyerr(py, e)),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// The full result after the last chunk (`None` before).
    #[getter]
    fn generation(&self) -> Option<PyGeneration> {
        self.inner.lock().ok().and_then(|s| s.generation().cloned()).map(Into::into)
    }

    fn __repr__(&self) -> String {
        match self.inner.lock() {
            Ok(s) => format!(
                "TokenStream(prompt_tokens={}, generated_tokens={}, done={})",
                s.prompt_tokens(),
                s.generated_tokens(),
                if s.generation().is_some() { "True" } else { "False" }
            ),
            Err(_) => "TokenStream(<poisoned>)".into(),
        }
    }
}

/// Registry methods on generation history (added to `ModelRegistry`).
pub fn generations(
    py: Python<'_>,
    reg: &anneal::ModelRegistry,
    filter: GenerationFilter,
) -> PyResult<Vec<PyGenerationRecord>> {
    Ok(py.enter_core(|| reg.generations(&filter))?.into_iter().map(Into::into).collect())
}

pub fn usage(py: Python<'_>, reg: &anneal::ModelRegistry, model: String) -> PyResult<PyModelUsage> {
    py.enter_core(|| reg.usage(model)).map(Into::into)
}
