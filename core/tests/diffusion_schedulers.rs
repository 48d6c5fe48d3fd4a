//! Parity of the schedulers with diffusers 0.42.1: for 19 configurations (every
//! supported class; beta schedules linear / scaled_linear / squaredcos_cap_v2 /
//! zero-SNR rescaled; epsilon / v_prediction / sample; leading / trailing / linspace
//! spacing; Karras sigmas; final sigma zero / sigma_min; DDIM eta 0 / 0.5 / 1; DPM-Solver++
//! order 1 / 2, midpoint / heun, SDE) the timesteps, sigmas and alphas_cumprod after
//! `set_timesteps(n)`, every step of a 5-20 step chain driven by a fixed "model"
//! (`eps_i + 0.1 * scaled_input`) and given noise, `add_noise`, the v-prediction target
//! and the min-SNR weights, against references made by
//! `tests/fixtures/make_sd_refs.py` (committed; not run in CI).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use anneal::diffusion::{PredictionType, Scheduler, SchedulerConfig, SchedulerKind};
use anneal::ErrorKind;
use candle_core::{Device, Tensor};
use serde_json::Value;

const REFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd-refs");

fn refs() -> (Value, HashMap<String, Tensor>) {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{REFS}/schedulers.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(format!("{REFS}/schedulers.safetensors"), &Device::Cpu).unwrap();
    (meta, t)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// The largest magnitude in `t`, at least 1: f32 results are compared to 1e-5 of it
/// (Euler's samples reach |x| ~ 400 with the linear schedule, where one float32 ulp
/// is 3e-5).
fn scale(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0)
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
}

/// Writes the scheduler_config.json diffusers wrote and loads it from the file.
fn load(dir: &std::path::Path, name: &str, m: &Value) -> Scheduler {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, m["config_json"].as_str().unwrap()).unwrap();
    let mut s = Scheduler::from_file(&path, None).unwrap();
    s.set_eta(m["eta"].as_f64().unwrap()).unwrap();
    s
}

#[test]
fn every_scheduler_matches_diffusers_step_by_step() {
    let (meta, t) = refs();
    let dir = tempfile::tempdir().unwrap();
    // alphas_cumprod, sigmas (relative), scaled input, step output, the same two relative
    // to the sample's largest magnitude, add_noise, v target
    let mut worst = [0f32; 8];
    let schedulers = meta["schedulers"].as_object().unwrap();
    assert_eq!(schedulers.len(), 22);
    for (name, m) in schedulers {
        let r = |k: &str| t.get(&format!("{name}.{k}")).unwrap_or_else(|| panic!("{name}.{k}")).clone();
        let mut s = load(dir.path(), name, m);
        let steps = m["steps"].as_u64().unwrap() as usize;

        let ac = Tensor::new(s.alphas_cumprod(), &Device::Cpu).unwrap();
        let d = max_abs(&ac, &r("alphas_cumprod"));
        assert!(d < 1e-6, "{name}: alphas_cumprod differ by {d}");
        worst[0] = worst[0].max(d);

        s.set_timesteps(steps).unwrap();
        let want_t = vec_f64(&r("timesteps"));
        assert_eq!(s.timesteps().len(), want_t.len(), "{name}: number of timesteps");
        for (a, b) in s.timesteps().iter().zip(&want_t) {
            // whole numbers and Euler's float32 grid match exactly; Karras' interpolated
            // (fractional) timesteps to float32 precision
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{name}: timesteps {:?} vs {want_t:?}", s.timesteps());
        }
        if let Some(sig) = t.get(&format!("{name}.sigmas")) {
            let ours = Tensor::new(s.sigmas(), &Device::Cpu).unwrap();
            let rel = ((&ours - sig).unwrap().abs().unwrap() / (sig.abs().unwrap() + 1.0).unwrap()).unwrap();
            let d = rel.max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-6, "{name}: sigmas differ by {d} (relative): {:?} vs {sig}", s.sigmas());
            worst[1] = worst[1].max(d);
        } else {
            assert!(s.sigmas().is_empty());
        }
        let init = m["init_noise_sigma"].as_f64().unwrap();
        assert!((s.init_noise_sigma() - init).abs() < 1e-5 * init, "{name}: init_noise_sigma {}", s.init_noise_sigma());

        let mut this = 0f32; // this configuration's largest step difference
        let mut x = r("initial_sample");
        let (eps, noise, scaled, prev) = (r("eps"), r("noise"), r("scaled"), r("prev"));
        for (i, &ts) in s.timesteps().to_vec().iter().enumerate() {
            let xin = s.scale_model_input(&x, ts).unwrap();
            let want = scaled.get(i).unwrap();
            let d = max_abs(&xin, &want);
            assert!(d < 1e-5 * scale(&want), "{name}: step {i} scaled input differs by {d}");
            worst[2] = worst[2].max(d);
            worst[4] = worst[4].max(d / scale(&want));
            let model_output = (eps.get(i).unwrap() + (&xin * 0.1).unwrap()).unwrap();
            x = s.step(&model_output, ts, &x, Some(&noise.get(i).unwrap())).unwrap();
            let want = prev.get(i).unwrap();
            let d = max_abs(&x, &want);
            assert!(d < 1e-5 * scale(&want), "{name}: step {i} (t = {ts}) output differs by {d}");
            worst[3] = worst[3].max(d);
            worst[5] = worst[5].max(d / scale(&want));
            this = this.max(d);
        }

        let (x0, n) = (r("add_noise.x0"), r("add_noise.noise"));
        let tn = vec_f64(&r("add_noise.t"));
        let noisy = s.add_noise(&x0, &n, &tn).unwrap();
        let d = max_abs(&noisy, &r("add_noise.noisy"));
        assert!(d < 1e-5 * scale(&noisy), "{name}: add_noise differs by {d}");
        worst[6] = worst[6].max(d);
        if let Some(v) = t.get(&format!("{name}.velocity")) {
            let mut cfg = s.config().clone();
            cfg.prediction_type = PredictionType::VPrediction;
            let target = Scheduler::new(cfg).unwrap().target(&x0, &n, &tn).unwrap();
            let d = max_abs(&target, v);
            assert!(d < 1e-5, "{name}: v-prediction target differs by {d}");
            worst[7] = worst[7].max(d);
        }
        eprintln!("{name}: ok ({steps} steps, |x| up to {:.1}, step outputs within {this:.1e})", scale(&prev));
    }
    eprintln!(
        "max abs diff: alphas_cumprod {:.2e}, sigmas (relative) {:.2e}, scaled input {:.2e} ({:.2e} of |x|), \
         step output {:.2e} ({:.2e} of |x|), add_noise {:.2e}, v target {:.2e}",
        worst[0], worst[1], worst[2], worst[4], worst[3], worst[5], worst[6], worst[7]
    );
}

#[test]
fn training_targets_and_min_snr_weights() {
    let (_, t) = refs();
    let text = r#"{"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#;
    let cfg = SchedulerConfig::from_json_text(text, None, None).unwrap();
    let s = Scheduler::new(cfg.clone()).unwrap();
    let ts = vec_f64(&t["min_snr.t"]);
    let snr = Tensor::new(s.snr(&ts).unwrap(), &Device::Cpu).unwrap();
    let want = &t["min_snr.snr"];
    let rel = ((&snr - want).unwrap().abs().unwrap() / want).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(rel < 1e-5, "snr differs by {rel} (relative)");
    for (pred, key) in [(PredictionType::Epsilon, "epsilon"), (PredictionType::VPrediction, "v_prediction")] {
        let s = Scheduler::new(SchedulerConfig { prediction_type: pred, ..cfg.clone() }).unwrap();
        let w = Tensor::new(s.min_snr_weights(&ts, 5.0).unwrap(), &Device::Cpu).unwrap();
        let d = max_abs(&w, &t[&format!("min_snr.{key}")]);
        assert!(d < 1e-6, "min-SNR weights ({key}) differ by {d}");
    }
    // weights fall from 1 as the SNR passes gamma (low timesteps have a high SNR)
    let w = s.min_snr_weights(&[0.0, 999.0], 5.0).unwrap();
    assert!(w[0] < 0.01 && (w[1] - 1.0).abs() < 1e-6, "{w:?}");

    // targets: epsilon -> noise, sample -> x0
    let x0 = Tensor::randn(0f32, 1.0, (2, 3, 2, 2), &Device::Cpu).unwrap();
    let n = Tensor::randn(0f32, 1.0, (2, 3, 2, 2), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&s.target(&x0, &n, &[10.0, 20.0]).unwrap(), &n), 0.0);
    let sample = Scheduler::new(SchedulerConfig { prediction_type: PredictionType::Sample, ..cfg.clone() }).unwrap();
    assert_eq!(max_abs(&sample.target(&x0, &n, &[10.0]).unwrap(), &x0), 0.0);
    // one timestep for the whole batch or one per row; not a fractional or out-of-range one
    assert!(s.add_noise(&x0, &n, &[500.0]).is_ok());
    for bad in [&[1.5][..], &[1000.0], &[-1.0], &[1.0, 2.0, 3.0]] {
        let e = s.add_noise(&x0, &n, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad:?}: {e}");
    }
    // add_noise is differentiable in x0 (training through an encoder)
    let v = candle_core::Var::from_tensor(&x0).unwrap();
    let g = s.add_noise(v.as_tensor(), &n, &[100.0, 900.0]).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&v).is_some());
}

#[test]
fn bad_configs_are_typed_errors_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"_class_name": "PNDMScheduler"}"#, "_class_name"),
        (r#"{"beta_schedule": "linear"}"#, "_class_name"),
        (r#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#, "beta_schedule"),
        (r#"{"_class_name": "DDIMScheduler", "prediction_type": "flow"}"#, "prediction_type"),
        (r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}"#, "timestep_spacing"),
        (r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#, "thresholding"),
        (r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": "1000"}"#, "num_train_timesteps"),
        (r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range"}"#, "variance_type"),
        (r#"{"_class_name": "DDPMScheduler", "trained_betas": [0.1, 0.2]}"#, "trained_betas"),
        (r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}"#, "solver_order"),
        (r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}"#, "algorithm_type"),
        (r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true}"#, "use_lu_lambdas"),
        (r#"{"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "max"}"#, "final_sigmas_type"),
        (r#"{"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}"#, "timestep_type"),
        (r#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}"#, "prediction_type"),
        (r#"{"_class_name": "DDIMScheduler", "beta_end": 1.5}"#, "beta_end"),
        (r#"[1, 2]"#, ""),
        (r#"{"_class_name": "DDIMScheduler", "#, ""),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("case{i}.json"));
        std::fs::write(&p, text).unwrap();
        let e = Scheduler::from_file(&p, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{text}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()) && msg.contains(field), "{text}: {msg}");
    }
    // keys of other classes are ignored, as diffusers' from_config does
    let p = dir.path().join("pndm.json");
    std::fs::write(
        &p,
        r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "set_alpha_to_one": false, "steps_offset": 1}"#,
    )
    .unwrap();
    for kind in SchedulerKind::ALL {
        let s = Scheduler::from_file(&p, Some(kind)).unwrap();
        assert_eq!(s.kind(), kind);
        assert_eq!(s.config().steps_offset, 1);
    }
    let e = Scheduler::from_file(dir.path().join("missing.json"), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FileNotFound, "{e}");
}

#[test]
fn sampling_misuse_is_a_typed_error() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 2, 2), candle_core::DType::F32, &dev).unwrap();
    for kind in SchedulerKind::ALL {
        let mut s = Scheduler::new(SchedulerConfig::new(kind)).unwrap();
        for n in [0, 1001] {
            let e = s.set_timesteps(n).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{kind:?}: {e}");
        }
        if kind != SchedulerKind::Ddpm {
            let e = s.step(&x, 999.0, &x, None).unwrap_err();
            assert!(e.to_string().contains("set_timesteps"), "{kind:?}: {e}");
        }
        s.set_timesteps(4).unwrap();
        let t0 = s.timesteps()[0];
        let e = s.step(&x.narrow(3, 0, 1).unwrap(), t0, &x, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{kind:?}: {e}");
        let r = s.step(&x, t0, &x, None);
        assert_eq!(r.is_err(), s.is_stochastic(), "{kind:?}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("noise"), "{e}");
        }
    }
    // a timestep outside the schedule
    let mut s = Scheduler::new(SchedulerConfig::new(SchedulerKind::EulerDiscrete)).unwrap();
    s.set_timesteps(4).unwrap();
    assert_eq!(s.scale_model_input(&x, 123.5).unwrap_err().kind(), ErrorKind::InvalidConfig);
    // steps_offset pushing a timestep past the training range
    let mut s =
        Scheduler::new(SchedulerConfig { steps_offset: 5, ..SchedulerConfig::new(SchedulerKind::Ddim) }).unwrap();
    assert!(s.set_timesteps(1000).is_err());
    // DDIM's eta must be >= 0
    assert!(s.set_eta(-0.1).is_err());
}

/// A whole deterministic run denoises: with the exact noise prediction (the sample is
/// x0 + noise at every step), every sampler returns x0 at the end.
#[test]
fn exact_noise_prediction_recovers_x0() {
    let dev = Device::Cpu;
    let x0 = (Tensor::randn(0f32, 1.0, (1, 2, 3, 3), &dev).unwrap() * 0.5).unwrap();
    let noise = Tensor::randn(0f32, 1.0, (1, 2, 3, 3), &dev).unwrap();
    for kind in [SchedulerKind::Ddim, SchedulerKind::EulerDiscrete, SchedulerKind::DpmSolverMultistep] {
        let text = r#"{"_class_name": "X", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": true, "clip_sample": false}"#;
        let mut s = Scheduler::new(SchedulerConfig::from_json_text(text, Some(kind), None).unwrap()).unwrap();
        s.set_timesteps(12).unwrap();
        // the sample in each scheduler's own scaling: sqrt(a) x0 + sqrt(1-a) n, or x0 + sigma n
        let mut x = match kind {
            SchedulerKind::EulerDiscrete => (&x0 + (&noise * s.sigmas()[0] as f64).unwrap()).unwrap(),
            _ => {
                let mut ddpm = SchedulerConfig::new(SchedulerKind::Ddpm);
                ddpm.beta_schedule = s.config().beta_schedule.clone();
                ddpm.beta_start = 0.00085;
                ddpm.beta_end = 0.012;
                Scheduler::new(ddpm).unwrap().add_noise(&x0, &noise, &[s.timesteps()[0]]).unwrap()
            }
        };
        for ts in s.timesteps().to_vec() {
            let _ = s.scale_model_input(&x, ts).unwrap();
            x = s.step(&noise, ts, &x, None).unwrap();
        }
        let d = max_abs(&x, &x0);
        assert!(d < 1e-3, "{kind:?}: ends {d} away from x0");
    }
}
