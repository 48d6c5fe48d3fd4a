//! The UNet against diffusers (tests/fixtures/make_tiny_sd.py made the fixtures and the
//! reference tensors): the noise prediction, one training step's MSE loss and the
//! gradients of named weights, for an SD 1.x-style and an SD 2.x-style config; every
//! trainable tensor gets a gradient; config, weight and input errors are typed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal::diffusion::{PipelineConfig, UNet2DConditionModel, UNetConfig};
use anneal::{ErrorKind, ForwardMode, LoadOptions};
use candle_core::{Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn fixture(p: &str) -> PathBuf {
    Path::new(FIXTURES).join(p)
}

fn refs(dir: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(dir).join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn trainable() -> LoadOptions {
    LoadOptions { trainable: true, ..Default::default() }
}

fn predict(unet: &UNet2DConditionModel, r: &HashMap<String, Tensor>, mode: ForwardMode) -> Tensor {
    unet.forward(&r["unet.sample"], &r["unet.timesteps"], &r["unet.encoder_hidden_states"], mode).unwrap()
}

/// Forward in both modes, then one training step: loss and the reference gradients.
fn check_against_diffusers(unet_dir: &Path, refs_dir: &str) {
    let r = refs(refs_dir);
    let frozen = UNet2DConditionModel::load(unet_dir, &LoadOptions::default()).unwrap();
    for mode in [ForwardMode::Infer, ForwardMode::Train] {
        let out = predict(&frozen, &r, mode);
        let d = max_abs_diff(&out, &r["unet.out"]);
        eprintln!("{refs_dir} unet.out ({mode:?}): max abs diff {d:.3e} (max |ref| {:.3})", max_abs(&r["unet.out"]));
        assert!(d < 1e-4, "{refs_dir}: noise prediction differs by {d} ({mode:?})");
    }

    let unet = UNet2DConditionModel::load(unet_dir, &trainable()).unwrap();
    let out = predict(&unet, &r, ForwardMode::Train);
    let loss = (out - &r["train.target"]).unwrap().sqr().unwrap().mean_all().unwrap();
    let want = r["train.loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    eprintln!("{refs_dir} train.loss: {got} vs {want}: diff {:.3e}", (got - want).abs());
    assert!((got - want).abs() < 1e-4, "loss {got} vs diffusers {want}");
    let grads = loss.backward().unwrap();
    let vars: HashMap<String, _> = unet.named_trainable_vars().into_iter().collect();
    let mut checked = 0;
    for (key, want) in &r {
        let Some(name) = key.strip_prefix("grad.") else { continue };
        let var = vars.get(name).unwrap_or_else(|| panic!("no trainable weight {name}"));
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        // A 1x1 convolution (proj_in / proj_out in SD 1.x) is held as a linear layer.
        let want = &want.reshape(g.dims()).unwrap();
        let d = max_abs_diff(g, want);
        let scale = max_abs(want);
        eprintln!("{refs_dir} grad {name}: max abs diff {d:.3e} (max |ref| {scale:.3e})");
        assert!(scale > 0.0 && d < 1e-4 * scale, "gradient of {name} differs by {d} (max |ref| {scale})");
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn sd1_style_unet_matches_diffusers() {
    check_against_diffusers(&fixture("tiny-sd/unet"), "tiny-sd");
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    let dir = fixture("tiny-sd2-unet");
    let cfg = UNetConfig::read(&dir).unwrap();
    // The fixture covers the SD 2.x options: heads per block, linear projections,
    // per-block layer counts, two transformer layers, the other timestep embedding.
    assert_eq!(cfg.num_attention_heads, vec![2, 4]);
    assert!(cfg.use_linear_projection);
    assert_eq!(cfg.layers_per_block, vec![1, 2]);
    assert_eq!(cfg.transformer_layers_per_block, vec![2, 1]);
    assert!(!cfg.flip_sin_to_cos);
    assert_eq!(cfg.freq_shift, 1.0);
    check_against_diffusers(&dir, "tiny-sd2-unet");
}

fn assert_all_grads_nonzero(unet: &UNet2DConditionModel, r: &HashMap<String, Tensor>) {
    // A loss that depends on every output element.
    let loss = predict(unet, r, ForwardMode::Train).sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = unet.named_trainable_vars();
    assert_eq!(vars.len(), unet.named_weights().unwrap().len());
    for (key, var) in vars {
        let g = grads.get(&var).unwrap_or_else(|| panic!("no gradient for {key}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "gradient of {key} is {s}");
    }
}

#[test]
fn every_unet_weight_gets_a_gradient() {
    for (unet_dir, refs_dir) in [("tiny-sd/unet", "tiny-sd"), ("tiny-sd2-unet", "tiny-sd2-unet")] {
        let unet = UNet2DConditionModel::load(fixture(unet_dir), &trainable()).unwrap();
        assert_all_grads_nonzero(&unet, &refs(refs_dir));
    }
}

/// The check above can fail: candle's fused LayerNorm (the Infer path) drops gradients.
#[test]
fn fused_infer_path_would_fail_the_gradient_check() {
    let unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &trainable()).unwrap();
    let r = refs("tiny-sd");
    let loss = predict(&unet, &r, ForwardMode::Infer).sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let missing: Vec<String> =
        unet.named_trainable_vars().into_iter().filter(|(_, v)| grads.get(v).is_none()).map(|(k, _)| k).collect();
    assert!(missing.iter().any(|k| k.contains("norm1.weight")), "{missing:?}");
}

#[test]
fn frozen_unet_has_nothing_to_train_and_builds_no_graph() {
    let unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap();
    assert!(unet.trainable_vars().is_empty());
    let r = refs("tiny-sd");
    let out = predict(&unet, &r, ForwardMode::Train);
    assert!(!out.track_op());
}

#[test]
fn timesteps_broadcast_and_integer_timesteps_work() {
    let unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap();
    let r = refs("tiny-sd");
    let (sample, ehs) = (&r["unet.sample"], &r["unet.encoder_hidden_states"]);
    let both =
        unet.forward(sample, &Tensor::new(&[10u32, 10], &Device::Cpu).unwrap(), ehs, ForwardMode::Infer).unwrap();
    let scalar = unet.forward(sample, &Tensor::new(10f32, &Device::Cpu).unwrap(), ehs, ForwardMode::Infer).unwrap();
    assert_eq!(max_abs_diff(&both, &scalar), 0.0);
    // Row 0 of the reference used t = 10.
    let row0 = r["unet.out"].narrow(0, 0, 1).unwrap();
    assert!(max_abs_diff(&both.narrow(0, 0, 1).unwrap(), &row0) < 1e-4);
}

#[test]
fn bad_inputs_are_typed_config_errors() {
    let unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap();
    let r = refs("tiny-sd");
    let (sample, t, ehs) = (&r["unet.sample"], &r["unet.timesteps"], &r["unet.encoder_hidden_states"]);
    let dev = Device::Cpu;
    let odd = Tensor::zeros((2, 4, 7, 8), candle_core::DType::F32, &dev).unwrap();
    let e = unet.forward(&odd, t, ehs, ForwardMode::Infer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("multiple of"), "{e}");
    let three_ch = Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &dev).unwrap();
    assert_eq!(unet.forward(&three_ch, t, ehs, ForwardMode::Infer).unwrap_err().kind(), ErrorKind::InvalidConfig);
    let narrow = ehs.narrow(2, 0, 16).unwrap();
    let e = unet.forward(sample, t, &narrow, ForwardMode::Infer).unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    let three_t = Tensor::new(&[1f32, 2., 3.], &dev).unwrap();
    let e = unet.forward(sample, &three_t, ehs, ForwardMode::Infer).unwrap_err();
    assert!(e.to_string().contains("timesteps"), "{e}");
}

/// Copies the tiny UNet into a temporary directory and edits its config.json.
fn edited_unet(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("unet");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture("tiny-sd/unet").join(f), dst.join(f)).unwrap();
    }
    let p = dst.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    tmp
}

#[test]
fn unsupported_configs_name_the_file_and_the_field() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("class_embed_type", serde_json::json!("timestep"), "unet/config.json:class_embed_type"),
        ("addition_embed_type", serde_json::json!("text_time"), "unet/config.json:addition_embed_type"),
        ("down_block_types", serde_json::json!(["SimpleCrossAttnDownBlock2D", "DownBlock2D"]), "down_block_types[0]"),
        ("attention_head_dim", serde_json::json!([2, 2, 2]), "unet/config.json:attention_head_dim"),
        ("attention_head_dim", serde_json::json!(3), "unet/config.json:attention_head_dim"),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift"), "resnet_time_scale_shift"),
        ("transformer_layers_per_block", serde_json::json!([[1], [1]]), "transformer_layers_per_block"),
        ("norm_num_groups", serde_json::json!(3), "unet/config.json:norm_num_groups"),
        ("dropout", serde_json::json!(0.1), "unet/config.json:dropout"),
        ("layers_per_block", serde_json::json!("two"), "unet/config.json:layers_per_block"),
    ];
    for (key, value, field) in cases {
        let tmp = edited_unet(|v| v[key] = value.clone());
        let e = UNet2DConditionModel::load(tmp.path().join("unet"), &LoadOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{key}: {e}");
        assert!(e.to_string().contains(field), "{key}: {e}");
    }
}

#[test]
fn weights_that_do_not_fit_the_config_are_invalid_data_naming_the_tensor() {
    // A config with wider cross-attention than the weights were made for.
    let tmp = edited_unet(|v| v["cross_attention_dim"] = serde_json::json!(24));
    let e = UNet2DConditionModel::load(tmp.path().join("unet"), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("attn2.to_k.weight") && e.to_string().contains("diffusion_pytorch_model"), "{e}");
    // One layer per block fewer than the weights hold: tensors are left over.
    let tmp = edited_unet(|v| v["mid_block_type"] = serde_json::json!("UNetMidBlock2D"));
    let e = UNet2DConditionModel::load(tmp.path().join("unet"), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("mid_block.attentions.0"), "{e}");
    // A missing tensor.
    let tmp = edited_unet(|_| {});
    let st = tmp.path().join("unet/diffusion_pytorch_model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    t.remove("conv_out.bias");
    candle_core::safetensors::save(&t, &st).unwrap();
    let e = UNet2DConditionModel::load(tmp.path().join("unet"), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("conv_out.bias"), "{e}");
    // No weights at all.
    std::fs::remove_file(&st).unwrap();
    let e = UNet2DConditionModel::load(tmp.path().join("unet"), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
}

#[test]
fn saved_unet_has_diffusers_names_and_reloads_to_the_same_output() {
    let unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &trainable()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    unet.save(tmp.path()).unwrap();
    let orig =
        candle_core::safetensors::load(fixture("tiny-sd/unet/diffusion_pytorch_model.safetensors"), &Device::Cpu)
            .unwrap();
    let saved =
        candle_core::safetensors::load(tmp.path().join("diffusion_pytorch_model.safetensors"), &Device::Cpu).unwrap();
    let mut a: Vec<_> = orig.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    let mut b: Vec<_> = saved.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let again = UNet2DConditionModel::load(tmp.path(), &trainable()).unwrap();
    let r = refs("tiny-sd");
    assert_eq!(max_abs_diff(&predict(&again, &r, ForwardMode::Infer), &predict(&unet, &r, ForwardMode::Infer)), 0.0);
    assert_eq!(again.raw_config(), unet.raw_config());
}

#[test]
fn pipeline_config_reads_the_fixture_and_checks_components_fit() {
    let cfg = PipelineConfig::read(fixture("tiny-sd")).unwrap();
    assert_eq!(cfg.index.class_name, "StableDiffusionPipeline");
    assert_eq!(cfg.index.scheduler_class(), "DDPMScheduler");
    assert_eq!(cfg.text_hidden_size, 32);
    assert_eq!(cfg.vae_scale_factor(), 2);
    assert_eq!(cfg.unet.downsample_factor(), 2);
    assert_eq!(cfg.vae.as_ref().unwrap().scaling_factor, 0.18215);
    assert!(!cfg.index.components.contains_key("safety_checker"));
}

/// Copies the whole tiny pipeline and lets `edit` change it.
fn edited_pipeline(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                copy_dir(&p, &dst.join(e.file_name()));
            } else {
                std::fs::copy(&p, dst.join(e.file_name())).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-sd"), tmp.path());
    edit(tmp.path());
    tmp
}

fn edit_json(p: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn mismatched_pipelines_are_refused() {
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(Edit, ErrorKind, &str)> = vec![
        (
            Box::new(|d| {
                edit_json(&d.join("model_index.json"), |v| v["_class_name"] = "StableDiffusionXLPipeline".into())
            }),
            ErrorKind::InvalidConfig,
            "model_index.json:_class_name",
        ),
        (
            Box::new(|d| {
                edit_json(&d.join("model_index.json"), |v| v["unet"] = serde_json::json!(["diffusers", "UNet2DModel"]))
            }),
            ErrorKind::InvalidConfig,
            "model_index.json:unet",
        ),
        (
            // No VAE is a pixel-space pipeline: the 4-channel UNet does not fit it.
            Box::new(|d| edit_json(&d.join("model_index.json"), |v| v["vae"] = serde_json::json!([null, null]))),
            ErrorKind::InvalidConfig,
            "unet/config.json:in_channels",
        ),
        (
            Box::new(|d| std::fs::remove_dir_all(d.join("text_encoder")).unwrap()),
            ErrorKind::InvalidData,
            "text_encoder",
        ),
        (
            Box::new(|d| edit_json(&d.join("vae/config.json"), |v| v["latent_channels"] = 8.into())),
            ErrorKind::InvalidConfig,
            "unet/config.json:in_channels",
        ),
        (
            Box::new(|d| edit_json(&d.join("text_encoder/config.json"), |v| v["hidden_size"] = 64.into())),
            ErrorKind::InvalidConfig,
            "cross_attention_dim",
        ),
        (
            Box::new(|d| std::fs::write(d.join("model_index.json"), "{not json").unwrap()),
            ErrorKind::InvalidData,
            "model_index.json",
        ),
    ];
    for (i, (edit, kind, needle)) in cases.into_iter().enumerate() {
        let tmp = edited_pipeline(edit);
        let e = PipelineConfig::read(tmp.path()).unwrap_err();
        assert_eq!(e.kind(), kind, "case {i}: {e}");
        assert!(e.to_string().contains(needle), "case {i}: {e}");
    }
}

#[test]
fn diffusion_models_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<UNet2DConditionModel>();
    assert_send_sync::<anneal::diffusion::AutoencoderKL>();
}
