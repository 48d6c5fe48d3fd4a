//! Options and requests of text-to-image generation ([`crate::ImageGenerator`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to load a Stable Diffusion model for text-to-image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImageGeneratorOptions {
    /// For a LoRA model: fold it into the base UNet at load (scale 1). With `false`
    /// (default) it stays a separate adapter, the default of every request, and requests
    /// may pick another adapter of the same base or none ([`ImageRequest::adapters`]).
    pub merge_adapter: bool,
    /// Record every call in the catalog's `generations` table (kind `txt2img`).
    pub record: bool,
}

impl Default for ImageGeneratorOptions {
    fn default() -> Self {
        Self { merge_adapter: false, record: true }
    }
}

/// A LoRA applied to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageAdapter {
    /// A registered LoRA whose parent is the generator's base model (id, name or name@version).
    pub model: String,
    /// Multiplier of the adapter's delta: 1 as trained, 0 the base. Default 1.
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// What to generate. Unset fields take diffusers' defaults: 50 steps, guidance 7.5,
/// the model's trained size, the pipeline's own scheduler, a random seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImageRequest {
    /// One or more prompts; each gives `num_images` images.
    pub prompts: Vec<String>,
    /// One negative prompt for every prompt (ignored, with a warning, at guidance <= 1).
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance weight; at most 1 turns guidance off.
    pub guidance_scale: Option<f64>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// `ddim`, `euler`, `euler_ancestral`, `dpmpp_2m`, `ddpm` (or a diffusers class name).
    pub scheduler: Option<String>,
    /// Image `i` of the call uses `seed + i`.
    pub seed: Option<u64>,
    /// Pixels; multiples of the VAE's factor times the UNet's downsampling.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Images per prompt. Default 1.
    pub num_images: Option<usize>,
    /// Condition on the text encoder's hidden state this many layers before the last.
    pub clip_skip: Option<usize>,
    /// The adapters of this request (at most one): unset, the generator's own adapter
    /// (a LoRA model loaded unmerged) or none; `[]`, none.
    pub adapters: Option<Vec<ImageAdapter>>,
}

impl ImageRequest {
    /// One prompt with the default settings.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self { prompts: vec![prompt.into()], ..Self::default() }
    }
}
