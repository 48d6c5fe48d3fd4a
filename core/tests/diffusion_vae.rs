//! The AutoencoderKL against diffusers (tests/fixtures/make_tiny_sd.py): encode (mean,
//! log-variance, a sample with given noise) and decode; older attention weight names;
//! gradients reach every weight; bad input is typed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal::diffusion::{AutoencoderKL, DiagonalGaussian};
use anneal::{ErrorKind, ForwardMode, LoadOptions};
use candle_core::{DType, Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn vae_dir() -> PathBuf {
    Path::new(FIXTURES).join("tiny-sd/vae")
}

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(Path::new(FIXTURES).join("tiny-sd/reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check(vae: &AutoencoderKL, r: &HashMap<String, Tensor>, what: &str) {
    for mode in [ForwardMode::Infer, ForwardMode::Train] {
        let post = vae.encode(&r["vae.image"], mode).unwrap();
        let sample = post.sample(&r["vae.noise"]).unwrap();
        let decoded = vae.decode(&r["vae.latents"], mode).unwrap();
        for (name, got) in
            [("vae.mean", &post.mean), ("vae.logvar", &post.logvar), ("vae.sample", &sample), ("vae.decoded", &decoded)]
        {
            let d = max_abs_diff(got, &r[name]);
            eprintln!("{what} {name} ({mode:?}): max abs diff {d:.3e}");
            assert!(d < 1e-4, "{what}: {name} differs by {d} ({mode:?})");
        }
    }
}

#[test]
fn vae_matches_diffusers() {
    let vae = AutoencoderKL::load(vae_dir(), &LoadOptions::default()).unwrap();
    check(&vae, &refs(), "tiny-sd");
    assert_eq!(vae.config().downsample_factor(), 2);
}

#[test]
fn unet_latent_scaling_round_trips() {
    let vae = AutoencoderKL::load(vae_dir(), &LoadOptions::default()).unwrap();
    let z = refs()["vae.latents"].clone();
    let scaled = vae.to_unet_latents(&z).unwrap();
    let want = (&z * 0.18215).unwrap();
    assert!(max_abs_diff(&scaled, &want) < 1e-7);
    assert!(max_abs_diff(&vae.from_unet_latents(&scaled).unwrap(), &z) < 1e-6);
}

/// Older diffusers files name the mid-block attention `query`/`key`/`value`/`proj_attn`.
#[test]
fn older_attention_names_load_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(vae_dir().join("config.json"), tmp.path().join("config.json")).unwrap();
    let st = vae_dir().join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    let mut renamed = 0;
    let old: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let mut k2 = k.clone();
            for (new, old) in
                [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]
            {
                k2 = k2.replace(new, old);
            }
            if k2 != k {
                renamed += 1;
            }
            (k2, t)
        })
        .collect();
    assert_eq!(renamed, 16); // q, k, v, out (weight and bias) in the encoder's and the decoder's mid block
    candle_core::safetensors::save(&old, tmp.path().join("diffusion_pytorch_model.safetensors")).unwrap();
    let vae = AutoencoderKL::load(tmp.path(), &LoadOptions::default()).unwrap();
    check(&vae, &refs(), "old names");
    // Saved back under the current names.
    let out = tempfile::tempdir().unwrap();
    vae.save(out.path()).unwrap();
    let saved =
        candle_core::safetensors::load(out.path().join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.contains_key("encoder.mid_block.attentions.0.to_q.weight"));
    assert!(!saved.keys().any(|k| k.contains("query")));
}

#[test]
fn every_vae_weight_gets_a_gradient() {
    let vae = AutoencoderKL::load(vae_dir(), &LoadOptions { trainable: true, ..Default::default() }).unwrap();
    let r = refs();
    let post = vae.encode(&r["vae.image"], ForwardMode::Train).unwrap();
    let z = post.sample(&r["vae.noise"]).unwrap();
    let recon = vae.decode(&z, ForwardMode::Train).unwrap();
    let loss = (recon - &r["vae.image"]).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = vae.named_trainable_vars();
    assert_eq!(vars.len(), vae.named_weights().unwrap().len());
    for (key, var) in vars {
        let g = grads.get(&var).unwrap_or_else(|| panic!("no gradient for {key}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "gradient of {key} is {s}");
    }
}

#[test]
fn diagonal_gaussian_splits_and_clamps() {
    let dev = Device::Cpu;
    // 2 latent channels: mean [1, 2], logvar [-100, 0] (clamped to -30).
    let moments = Tensor::new(&[1f32, 2., -100., 0.], &dev).unwrap().reshape((1, 4, 1, 1)).unwrap();
    let g = DiagonalGaussian::from_moments(&moments).unwrap();
    assert_eq!(g.mean.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 2.]);
    assert_eq!(g.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-30., 0.]);
    let noise = Tensor::new(&[1f32, 1.], &dev).unwrap().reshape((1, 2, 1, 1)).unwrap();
    let s = g.sample(&noise).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((s[0] - (1.0 + (-15f32).exp())).abs() < 1e-7 && (s[1] - 3.0).abs() < 1e-7, "{s:?}");
    let wrong = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev).unwrap();
    assert_eq!(g.sample(&wrong).unwrap_err().kind(), ErrorKind::InvalidConfig);
}

#[test]
fn bad_vae_inputs_are_typed() {
    let vae = AutoencoderKL::load(vae_dir(), &LoadOptions::default()).unwrap();
    let dev = Device::Cpu;
    let odd = Tensor::zeros((1, 3, 15, 16), DType::F32, &dev).unwrap();
    let e = vae.encode(&odd, ForwardMode::Infer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("multiple of"), "{e}");
    let gray = Tensor::zeros((1, 1, 16, 16), DType::F32, &dev).unwrap();
    assert_eq!(vae.encode(&gray, ForwardMode::Infer).unwrap_err().kind(), ErrorKind::InvalidConfig);
    let z8 = Tensor::zeros((1, 8, 4, 4), DType::F32, &dev).unwrap();
    assert_eq!(vae.decode(&z8, ForwardMode::Infer).unwrap_err().kind(), ErrorKind::InvalidConfig);

    // Config errors name vae/config.json and the field.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        vae_dir().join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vae_dir().join("config.json")).unwrap()).unwrap();
    cfg["up_block_types"] = serde_json::json!(["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = AutoencoderKL::load(&dir, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("vae/config.json:up_block_types[1]"), "{e}");
    // Without the mid-block attention the attention tensors are left over.
    cfg["up_block_types"] = serde_json::json!(["UpDecoderBlock2D", "UpDecoderBlock2D"]);
    cfg["mid_block_add_attention"] = false.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = AutoencoderKL::load(&dir, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("attentions.0"), "{e}");
}
