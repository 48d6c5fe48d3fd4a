//! Every integration test of this crate in one test binary: one compile and one link
//! instead of one per file, which was most of CI's `cargo test` time. Each file is a
//! module; run one with e.g. `cargo test -p anneal --test integration curves::`.

mod curves;
mod diffusion_clip;
mod diffusion_lora;
mod diffusion_pipeline;
mod diffusion_presets;
mod diffusion_schedulers;
mod diffusion_te_lora;
mod diffusion_unet;
mod diffusion_vae;
mod drift_stats;
mod fuzz_props;
mod generation;
mod grad_flow;
mod layers;
mod lora_peft;
mod model_load;
mod numerics;
mod presets_train;
mod stats;
mod tabular_classifier;
mod tokenizer;
mod training;
mod variants;
