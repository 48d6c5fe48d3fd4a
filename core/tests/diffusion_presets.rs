//! Pipelines with swapped components (`with_unet` / `with_text_encoder`, as a training
//! run renders validation images), pixel-space pipelines (no VAE), the from-scratch
//! presets and the toy shapes data.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use anneal::diffusion::{
    ClipTextModel, PipelineConfig, StableDiffusionPipeline, Txt2ImgOutput, Txt2ImgRequest, UNet2DConditionModel,
};
use anneal::{CancelToken, ErrorKind, LoadOptions};
use candle_core::DType;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn tiny_sd() -> PathBuf {
    Path::new(FIXTURES).join("tiny-sd")
}

fn run(sd: &StableDiffusionPipeline, req: &Txt2ImgRequest) -> Txt2ImgOutput {
    sd.txt2img(req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap()
}

fn small(prompt: &str) -> Txt2ImgRequest {
    Txt2ImgRequest {
        num_inference_steps: 2,
        seed: Some(3),
        scheduler: Some("ddim".into()),
        ..Txt2ImgRequest::new(prompt)
    }
}

fn trainable() -> LoadOptions {
    LoadOptions { trainable: true, ..LoadOptions::default() }
}

/// Adds `delta` to every element of the first trainable weight named `name`.
fn bump(vars: &[(String, candle_core::Var)], name: &str, delta: f64) {
    let (_, v) = vars.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no var {name}"));
    v.set(&(v.as_tensor() + delta).unwrap()).unwrap();
}

#[test]
fn with_unet_renders_with_the_weights_being_trained() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    let unet = UNet2DConditionModel::load(tiny_sd().join("unet"), &trainable()).unwrap();
    let swapped = sd.with_unet(unet.clone()).unwrap();
    let req = small("a red circle");
    let before = run(&sd, &req);
    // Same weights as loaded: the same image.
    assert_eq!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    // Training changes the original's Vars: the swapped pipeline sees it, the loaded one does not.
    bump(&unet.named_trainable_vars(), "conv_out.bias", 0.5);
    let after = run(&swapped, &req);
    assert_ne!(after.images[0].rgb, before.images[0].rgb);
    assert_eq!(run(&sd, &req).images[0].rgb, before.images[0].rgb);
    assert!(swapped.vae().is_some());
    assert_eq!(swapped.dir(), sd.dir());
}

#[test]
fn with_text_encoder_renders_with_the_weights_being_trained() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    let te = ClipTextModel::load(tiny_sd().join("text_encoder"), &trainable()).unwrap();
    let swapped = sd.with_text_encoder(te.clone()).unwrap();
    let req = small("a blue square");
    let before = run(&sd, &req);
    assert_eq!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    bump(&te.named_trainable_vars(), "text_model.final_layer_norm.bias", 1.0);
    assert_ne!(run(&swapped, &req).images[0].rgb, before.images[0].rgb);
    assert_eq!(run(&sd, &req).images[0].rgb, before.images[0].rgb);
}

#[test]
fn with_unet_and_text_encoder_refuse_what_does_not_fit() {
    let sd = StableDiffusionPipeline::load(tiny_sd(), &LoadOptions::default()).unwrap();
    // An SD 2-style UNet attending to 12-wide states, not the text encoder's 32.
    let other = UNet2DConditionModel::load(Path::new(FIXTURES).join("tiny-sd2-unet"), &LoadOptions::default()).unwrap();
    let e = sd.with_unet(other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("cross_attention_dim"), "{e}");
    // Another dtype than the pipeline's.
    let f16 = LoadOptions { dtype: DType::F16, ..LoadOptions::default() };
    let e = sd.with_unet(UNet2DConditionModel::load(tiny_sd().join("unet"), &f16).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("unet") && e.to_string().contains("F16"), "{e}");
    let e = sd.with_text_encoder(ClipTextModel::load(tiny_sd().join("text_encoder"), &f16).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("text_encoder"), "{e}");
}

/// Copies the tiny SD pipeline without its VAE, `vae` in model_index.json set to `vae`
/// (None: no key).
fn without_vae(tmp: &Path, vae: Option<serde_json::Value>) -> PathBuf {
    let dir = tmp.join("pipe");
    for sub in ["unet", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for f in std::fs::read_dir(tiny_sd().join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(tiny_sd().join("model_index.json")).unwrap();
    let mut idx: serde_json::Value = serde_json::from_str(&text).unwrap();
    match vae {
        Some(v) => idx["vae"] = v,
        None => {
            idx.as_object_mut().unwrap().remove("vae");
        }
    }
    std::fs::write(dir.join("model_index.json"), idx.to_string()).unwrap();
    dir
}

#[test]
fn a_pipeline_without_vae_needs_an_rgb_unet() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny SD UNet works on 4 latent channels: not pixels.
    let dir = without_vae(tmp.path(), Some(serde_json::json!([null, null])));
    let e = PipelineConfig::read(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("unet/config.json:in_channels"), "{e}");
    assert!(e.to_string().contains("pixel-space"), "{e}");
}
