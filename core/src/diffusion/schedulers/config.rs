//! `scheduler_config.json` as diffusers writes it: the class name and the options each
//! supported class honours, with that class's defaults. Keys that belong to other
//! classes are ignored (as diffusers' `from_config` does, e.g. PNDM's `skip_prk_steps`
//! when an SD 1.5 config drives a DPM-Solver++ scheduler); a value the class would use
//! but anneal does not support is an `invalid_data` error naming the file and the field.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, IoResultExt, Location, Result};

/// A scheduler class of diffusers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDPMScheduler`: the training noise schedule, and ancestral sampling.
    Ddpm,
    /// `DDIMScheduler` (eta 0: deterministic; eta > 0 with given noise).
    Ddim,
    /// `EulerDiscreteScheduler`.
    EulerDiscrete,
    /// `EulerAncestralDiscreteScheduler` (noise passed in at every step).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M, optionally its SDE variant).
    DpmSolverMultistep,
}

impl SchedulerKind {
    /// Every supported kind.
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Ddpm,
        SchedulerKind::Ddim,
        SchedulerKind::EulerDiscrete,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
    ];

    /// diffusers' class name (`_class_name` in scheduler_config.json).
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    /// The kind of a diffusers class name.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }

    /// Short names as users type them: `ddpm`, `ddim`, `euler`, `euler_a`
    /// (`euler-ancestral`), `dpm++` (`dpmpp_2m`, `dpm-solver++`); class names work too.
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Some(match n.as_str() {
            "ddpm" => SchedulerKind::Ddpm,
            "ddim" => SchedulerKind::Ddim,
            "euler" | "euler_discrete" => SchedulerKind::EulerDiscrete,
            "euler_a" | "euler_ancestral" => SchedulerKind::EulerAncestral,
            "dpm++" | "dpmpp" | "dpmpp_2m" | "dpm_solver++" | "dpm_solver" | "dpmsolver++" | "dpm" => {
                SchedulerKind::DpmSolverMultistep
            }
            _ => return Self::from_class_name(name.trim()),
        })
    }
}

/// How the beta (noise variance) schedule is laid over the training timesteps.
#[derive(Debug, Clone, PartialEq)]
pub enum BetaSchedule {
    /// `linear`: evenly from beta_start to beta_end.
    Linear,
    /// `scaled_linear`: evenly in sqrt(beta), squared (Stable Diffusion).
    ScaledLinear,
    /// `squaredcos_cap_v2`: the cosine schedule (betas capped at 0.999).
    SquaredCosCapV2,
    /// `trained_betas`: given explicitly.
    Trained(Vec<f64>),
}

/// What the denoising model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise.
    Epsilon,
    /// The velocity `sqrt(a) * noise - sqrt(1 - a) * x0`.
    VPrediction,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    /// diffusers' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

/// How inference timesteps are picked from the training ones (Table 2 of "Common
/// Diffusion Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// DDPM's variance of the ancestral step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    /// The posterior variance (diffusers' default).
    FixedSmall,
    /// The same, through exp(0.5 * log(.)).
    FixedSmallLog,
    /// beta_t.
    FixedLarge,
}

/// Which sigma the last step lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// 0: the last step returns the model's estimate of x0.
    Zero,
    /// The sigma of training timestep 0.
    SigmaMin,
}

/// DPM-Solver's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// `dpmsolver++` (data prediction).
    DpmSolverPlusPlus,
    /// `sde-dpmsolver++` (noise passed in at every step).
    SdeDpmSolverPlusPlus,
}

/// The second-order update of DPM-Solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

/// A resolved scheduler configuration (defaults of the chosen class filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub rescale_betas_zero_snr: bool,
    /// DDPM, DDIM: clamp the predicted x0 to ±`clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM: the "previous" alpha product of the last step is 1 (else alphas_cumprod[0]).
    pub set_alpha_to_one: bool,
    /// DDPM.
    pub variance_type: VarianceType,
    /// Euler, DPM-Solver.
    pub final_sigmas_type: FinalSigmas,
    /// Euler, DPM-Solver: Karras et al.'s sigma spacing.
    pub use_karras_sigmas: bool,
    /// Euler: bounds of the Karras sigmas (default: the schedule's own).
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// DPM-Solver: 1 or 2.
    pub solver_order: usize,
    pub algorithm_type: DpmAlgorithm,
    pub solver_type: DpmSolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub lambda_min_clipped: f64,
    /// DDIM's eta (not part of diffusers' config, where it is an argument of `step`;
    /// read here when present). 0 = deterministic.
    pub eta: f64,
}

impl SchedulerConfig {
    /// The defaults of diffusers' class for `kind`.
    pub fn new(kind: SchedulerKind) -> Self {
        let sampler_defaults = matches!(
            kind,
            SchedulerKind::EulerDiscrete | SchedulerKind::EulerAncestral | SchedulerKind::DpmSolverMultistep
        );
        Self {
            kind,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: if sampler_defaults { TimestepSpacing::Linspace } else { TimestepSpacing::Leading },
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            variance_type: VarianceType::FixedSmall,
            final_sigmas_type: FinalSigmas::Zero,
            use_karras_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            solver_order: 2,
            algorithm_type: DpmAlgorithm::DpmSolverPlusPlus,
            solver_type: DpmSolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: f64::NEG_INFINITY,
            eta: 0.0,
        }
    }

    /// Reads `scheduler_config.json`. `kind` picks the class (a pipeline choosing
    /// another sampler over the same noise schedule); `None` takes the file's
    /// `_class_name`, which must then be a supported class.
    pub fn from_file(path: impl AsRef<Path>, kind: Option<SchedulerKind>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_path(path)?;
        Self::from_json_text(&text, kind, Some(path))
    }

    /// [`SchedulerConfig::from_file`] on text; `path` only names the source in errors.
    pub fn from_json_text(text: &str, kind: Option<SchedulerKind>, path: Option<&Path>) -> Result<Self> {
        let file = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("scheduler_config.json"));
        let v: Value = serde_json::from_str(&python_json(text))
            .map_err(|e| Error::data(Location::file(&file), format!("not valid JSON: {e}")))?;
        let Value::Object(map) = v else {
            return Err(Error::data(Location::file(&file), "expected a JSON object"));
        };
        Reader { map: &map, file }.read(kind)
    }
}

/// Python's `json.dumps` writes `Infinity`, `-Infinity` and `NaN` (diffusers saves
/// `lambda_min_clipped: -Infinity`); turns them into strings serde_json can read.
fn python_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        let word = ["-Infinity", "Infinity", "NaN"].into_iter().find(|w| rest.starts_with(w));
        if let Some(w) = word {
            out.push('"');
            out.push_str(w);
            out.push('"');
            rest = &rest[w.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

struct Reader<'a> {
    map: &'a Map<String, Value>,
    file: PathBuf,
}

impl Reader<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::data(Location::file(&self.file).field(field), reason)
    }

    /// The value of `key`, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| self.err(key, "not a number")),
            Some(Value::String(s)) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
            Some(Value::String(s)) if s == "Infinity" => Ok(f64::INFINITY),
            Some(v) => Err(self.err(key, format!("expected a number, got {v}"))),
        }
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        let x = self.f64(key, 0.0)?;
        if !x.is_finite() || x <= 0.0 {
            return Err(self.err(key, format!("must be a positive number, got {x}")));
        }
        Ok(Some(x))
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_u64().map(|n| n as usize).ok_or_else(|| self.err(key, format!("expected a whole number, got {v}")))
            }
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(key, format!("expected true or false, got {v}"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, got {v}"))),
        }
    }

    /// `key` must be absent, null or false: anneal does not implement the option.
    fn refuse_true(&self, key: &str) -> Result<()> {
        if self.bool(key, false)? {
            return Err(self.err(key, "this option is not supported by anneal's schedulers"));
        }
        Ok(())
    }

    fn one_of<T: Copy>(&self, key: &str, default: T, options: &[(&str, T)]) -> Result<T> {
        let Some(s) = self.str(key)? else {
            return Ok(default);
        };
        options.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.err(key, format!("unsupported value `{s}` (supported: {})", names.join(", ")))
        })
    }

    fn read(&self, kind: Option<SchedulerKind>) -> Result<SchedulerConfig> {
        let class = self.str("_class_name")?;
        let kind = match (kind, class) {
            (Some(k), _) => k,
            (None, Some(c)) => SchedulerKind::from_class_name(c).ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.class_name()).collect();
                self.err(
                    "_class_name",
                    format!(
                        "scheduler class `{c}` is not supported (supported: {}); choose one of them to sample with",
                        names.join(", ")
                    ),
                )
            })?,
            (None, None) => return Err(self.err("_class_name", "missing: cannot tell which scheduler this is")),
        };
        use SchedulerKind as K;
        let d = SchedulerConfig::new(kind);
        let mut c = d.clone();
        c.num_train_timesteps = self.usize("num_train_timesteps", d.num_train_timesteps)?;
        if c.num_train_timesteps < 2 {
            return Err(self.err("num_train_timesteps", "must be at least 2"));
        }
        c.beta_start = self.f64("beta_start", d.beta_start)?;
        c.beta_end = self.f64("beta_end", d.beta_end)?;
        for (key, b) in [("beta_start", c.beta_start), ("beta_end", c.beta_end)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(self.err(key, format!("must be in (0, 1), got {b}")));
            }
        }
        c.beta_schedule = match self.get("trained_betas") {
            Some(Value::Array(items)) => {
                let betas: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
                let betas = betas.ok_or_else(|| self.err("trained_betas", "expected a list of numbers"))?;
                if betas.len() != c.num_train_timesteps {
                    return Err(self.err(
                        "trained_betas",
                        format!("has {} values, num_train_timesteps is {}", betas.len(), c.num_train_timesteps),
                    ));
                }
                if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
                    return Err(self.err("trained_betas", format!("every beta must be in (0, 1), found {b}")));
                }
                BetaSchedule::Trained(betas)
            }
            Some(v) => return Err(self.err("trained_betas", format!("expected a list of numbers, got {v}"))),
            None => match self.str("beta_schedule")? {
                None | Some("linear") => BetaSchedule::Linear,
                Some("scaled_linear") => BetaSchedule::ScaledLinear,
                Some("squaredcos_cap_v2") => BetaSchedule::SquaredCosCapV2,
                Some(other) => {
                    return Err(self.err(
                        "beta_schedule",
                        format!("unsupported value `{other}` (supported: linear, scaled_linear, squaredcos_cap_v2)"),
                    ))
                }
            },
        };
        c.prediction_type = self.one_of(
            "prediction_type",
            d.prediction_type,
            &[
                ("epsilon", PredictionType::Epsilon),
                ("v_prediction", PredictionType::VPrediction),
                ("sample", PredictionType::Sample),
            ],
        )?;
        if kind == K::EulerAncestral && c.prediction_type == PredictionType::Sample {
            return Err(self.err("prediction_type", "`sample` is not supported by EulerAncestralDiscreteScheduler"));
        }
        c.timestep_spacing = self.one_of(
            "timestep_spacing",
            d.timestep_spacing,
            &[
                ("leading", TimestepSpacing::Leading),
                ("trailing", TimestepSpacing::Trailing),
                ("linspace", TimestepSpacing::Linspace),
            ],
        )?;
        c.steps_offset = self.usize("steps_offset", d.steps_offset)?;
        c.rescale_betas_zero_snr = self.bool("rescale_betas_zero_snr", d.rescale_betas_zero_snr)?;
        match kind {
            K::Ddpm | K::Ddim => {
                c.clip_sample = self.bool("clip_sample", d.clip_sample)?;
                c.clip_sample_range = self.f64("clip_sample_range", d.clip_sample_range)?;
                if c.clip_sample_range.is_nan() || c.clip_sample_range <= 0.0 {
                    return Err(self.err("clip_sample_range", "must be positive"));
                }
                self.refuse_true("thresholding")?;
            }
            _ => {}
        }
        if kind == K::Ddim {
            c.set_alpha_to_one = self.bool("set_alpha_to_one", d.set_alpha_to_one)?;
            c.eta = self.f64("eta", 0.0)?;
            if !(c.eta >= 0.0 && c.eta.is_finite()) {
                return Err(self.err("eta", "must be a number >= 0"));
            }
        }
        if kind == K::Ddpm {
            c.variance_type = self.one_of(
                "variance_type",
                d.variance_type,
                &[
                    ("fixed_small", VarianceType::FixedSmall),
                    ("fixed_small_log", VarianceType::FixedSmallLog),
                    ("fixed_large", VarianceType::FixedLarge),
                ],
            )?;
        }
        if matches!(kind, K::EulerDiscrete | K::DpmSolverMultistep) {
            c.final_sigmas_type = self.one_of(
                "final_sigmas_type",
                d.final_sigmas_type,
                &[("zero", FinalSigmas::Zero), ("sigma_min", FinalSigmas::SigmaMin)],
            )?;
            c.use_karras_sigmas = self.bool("use_karras_sigmas", false)?;
            self.refuse_true("use_exponential_sigmas")?;
            self.refuse_true("use_beta_sigmas")?;
        }
        if kind == K::EulerDiscrete {
            c.sigma_min = self.opt_f64("sigma_min")?;
            c.sigma_max = self.opt_f64("sigma_max")?;
            self.one_of("interpolation_type", (), &[("linear", ())])?;
            self.one_of("timestep_type", (), &[("discrete", ())])?;
        }
        if kind == K::DpmSolverMultistep {
            c.solver_order = self.usize("solver_order", d.solver_order)?;
            if !(1..=2).contains(&c.solver_order) {
                return Err(self.err("solver_order", format!("{} is not supported (1 or 2)", c.solver_order)));
            }
            c.algorithm_type = self.one_of(
                "algorithm_type",
                d.algorithm_type,
                &[
                    ("dpmsolver++", DpmAlgorithm::DpmSolverPlusPlus),
                    ("sde-dpmsolver++", DpmAlgorithm::SdeDpmSolverPlusPlus),
                    // diffusers maps the UniPC / DEIS names onto dpmsolver++ too
                    ("deis", DpmAlgorithm::DpmSolverPlusPlus),
                ],
            )?;
            c.solver_type = self.one_of(
                "solver_type",
                d.solver_type,
                &[
                    ("midpoint", DpmSolverType::Midpoint),
                    ("heun", DpmSolverType::Heun),
                    ("logrho", DpmSolverType::Midpoint),
                    ("bh1", DpmSolverType::Midpoint),
                    ("bh2", DpmSolverType::Midpoint),
                ],
            )?;
            c.lower_order_final = self.bool("lower_order_final", d.lower_order_final)?;
            c.euler_at_final = self.bool("euler_at_final", d.euler_at_final)?;
            c.lambda_min_clipped = self.f64("lambda_min_clipped", d.lambda_min_clipped)?;
            if c.lambda_min_clipped.is_nan() {
                return Err(self.err("lambda_min_clipped", "must be a number"));
            }
            // diffusers' DPM-Solver only acts on the learned variances; any other value
            // (a DDPM config's `fixed_small`, carried over by `from_config`) is ignored.
            if let Some(v) = self.str("variance_type")?.filter(|v| v.starts_with("learned")) {
                return Err(self.err("variance_type", format!("`{v}` (learned variance) is not supported")));
            }
            self.refuse_true("thresholding")?;
            self.refuse_true("use_lu_lambdas")?;
            self.refuse_true("use_flow_sigmas")?;
            self.refuse_true("use_dynamic_shifting")?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn python_infinity_is_read() {
        let t = r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "x": "NaN in a string"}"#;
        let c = SchedulerConfig::from_json_text(t, None, None).unwrap();
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
        let t = r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -5.1}"#;
        assert_eq!(SchedulerConfig::from_json_text(t, None, None).unwrap().lambda_min_clipped, -5.1);
    }

    #[test]
    fn class_defaults_differ() {
        let t = r#"{"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "skip_prk_steps": true}"#;
        let e = SchedulerConfig::from_json_text(t, None, None).unwrap_err();
        assert!(e.to_string().contains("_class_name"), "{e}");
        let euler = SchedulerConfig::from_json_text(t, Some(SchedulerKind::EulerDiscrete), None).unwrap();
        assert_eq!(euler.timestep_spacing, TimestepSpacing::Linspace);
        assert_eq!(euler.beta_schedule, BetaSchedule::ScaledLinear);
        let ddim = SchedulerConfig::from_json_text(t, Some(SchedulerKind::Ddim), None).unwrap();
        assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
        assert!(ddim.clip_sample && ddim.set_alpha_to_one);
        assert_eq!(SchedulerKind::parse("euler-a"), Some(SchedulerKind::EulerAncestral));
        assert_eq!(SchedulerKind::parse("DDIMScheduler"), Some(SchedulerKind::Ddim));
        assert_eq!(SchedulerKind::parse("lms"), None);
    }
}
