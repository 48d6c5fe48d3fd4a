//! Text-to-image diffusion in the diffusers layout: the noise schedulers
//! (`scheduler/scheduler_config.json`) and the CLIP text encoder with its tokenizer
//! (`text_encoder/`, `tokenizer/`), written for training like the language models.

pub mod clip;
pub mod schedulers;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextModel, ClipTextOutput, ClipTokenizer};
pub use schedulers::{
    BetaSchedule, DpmAlgorithm, DpmSolverType, FinalSigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerKind,
    TimestepSpacing, VarianceType,
};
