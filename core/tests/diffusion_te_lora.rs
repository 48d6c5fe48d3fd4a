//! LoRA on the text encoder (beside the UNet's) against diffusers + peft. The fixtures in
//! tests/fixtures/tiny-sd-lora/te/ were made by tests/fixtures/make_tiny_sd_te_lora.py
//! on tiny-sd: a file `save_lora_weights` wrote with adapters on both models (transformers
//! 5's module names, rank and alpha patterns on the text encoder) and what a pipeline
//! that loaded it computes: prompt embeddings at two scales and fused, an image, one
//! training step's loss and every adapter gradient. anneal-te/ holds a file anneal's
//! saver wrote and the embeddings diffusers computed with it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal::diffusion::{
    save_lora_weights, ClipTextModel, LoraComponent, LoraFile, StableDiffusionPipeline, Txt2ImgRequest,
    UNet2DConditionModel, LORA_WEIGHTS_FILE,
};
use anneal::{CancelToken, ErrorKind, ForwardMode, LoadOptions, LoraConfig};
use candle_core::{DType, Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn fixture(p: &str) -> PathBuf {
    Path::new(FIXTURES).join(p)
}

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("tiny-sd-lora/te/reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs diff {d:.3e} (max |ref| {:.3})", max_abs(want));
    assert!(d < tol, "{what}: differs from diffusers by {d}");
}

fn pipeline() -> StableDiffusionPipeline {
    StableDiffusionPipeline::load(fixture("tiny-sd"), &LoadOptions::default()).unwrap()
}

fn ids(r: &HashMap<String, Tensor>) -> Tensor {
    r["ids"].to_dtype(DType::U32).unwrap()
}

fn embeds(pipe: &StableDiffusionPipeline, r: &HashMap<String, Tensor>) -> Tensor {
    pipe.text_encoder().prompt_embeds(&ids(r), None, ForwardMode::Infer).unwrap()
}

#[test]
fn pipeline_loads_both_parts_and_matches_diffusers_at_every_scale_and_fused() {
    let r = refs();
    let mut pipe = pipeline();
    assert_close("base embeds", &embeds(&pipe, &r), &r["embeds.base"], 1e-4);
    let file = LoraFile::read(fixture("tiny-sd-lora/te")).unwrap();
    assert_eq!(file.components(), [LoraComponent::Unet, LoraComponent::TextEncoder]);
    pipe.load_lora_file(&file).unwrap();
    // q/k/v/out_proj and fc1 of both layers; layer 0's q_proj at rank 2 (rank_pattern),
    // fc1 at alpha 3 (alpha_pattern).
    let te = pipe.text_encoder();
    assert_eq!(te.lora_modules().len(), 10);
    assert!(te.lora_modules().iter().all(|m| m.starts_with("text_model.encoder.layers.")));
    assert_eq!((te.lora_config().unwrap().r, te.lora_config().unwrap().alpha), (4, 2.0));
    assert_eq!(pipe.unet().lora_modules().len(), 32);
    assert_close("embeds, scale 1", &embeds(&pipe, &r), &r["embeds.scale_1"], 1e-4);
    pipe.set_lora_scale(0.5).unwrap();
    assert_close("embeds, scale 0.5", &embeds(&pipe, &r), &r["embeds.scale_0_5"], 1e-4);
    assert_eq!((pipe.unet().lora_scale(), pipe.text_encoder().lora_scale()), (0.5, 0.5));

    // The image at scale 0.5 (the UNet's and the text encoder's adapters together).
    let req = Txt2ImgRequest {
        num_inference_steps: 3,
        guidance_scale: 7.5,
        scheduler: Some("ddim".into()),
        latents: Some(r["image.latents"].clone()),
        ..Txt2ImgRequest::new("a red circle on a white background")
    };
    let out = pipe.txt2img(&req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap();
    assert_close("image, scale 0.5", &out.pixels, &r["image.scale_0_5"], 1e-3);

    // fuse_lora(lora_scale=0.7).
    pipe.set_lora_scale(0.7).unwrap();
    pipe.merge_lora().unwrap();
    assert!(pipe.text_encoder().is_lora_merged() && pipe.unet().is_lora_merged());
    assert_close("embeds, fused at 0.7", &embeds(&pipe, &r), &r["embeds.fused_0_7"], 1e-4);
    let e = pipe.set_lora_scale(1.0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    // Removing unmerges: the base again.
    pipe.remove_lora().unwrap();
    assert!(pipe.text_encoder().lora_config().is_none() && pipe.unet().lora_config().is_none());
    assert_close("embeds after remove", &embeds(&pipe, &r), &r["embeds.base"], 1e-4);
}

#[test]
fn transformers_4_module_names_and_kohya_text_encoder_keys_read_the_same() {
    let r = refs();
    // The same file with the text encoder's keys under `text_model.` (as files written
    // before transformers 5, and anneal's, have them); the patterns keep 5's names.
    let src = fixture("tiny-sd-lora/te").join(LORA_WEIGHTS_FILE);
    let bytes = std::fs::read(&src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    for (k, v) in st.tensors() {
        let k = match k.strip_prefix("text_encoder.") {
            Some(rest) => format!("text_encoder.text_model.{rest}"),
            None => k,
        };
        tensors.push((k, v));
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(LORA_WEIGHTS_FILE);
    safetensors::serialize_to_file(tensors, header.metadata().clone(), &out).unwrap();
    let mut pipe = pipeline();
    pipe.load_lora(&out).unwrap();
    assert_close("text_model. names, scale 1", &embeds(&pipe, &r), &r["embeds.scale_1"], 1e-4);

    // kohya's `lora_te_` part (layer 0's attention, alpha 2 with r 4, float16).
    let mut pipe = pipeline();
    pipe.load_lora(fixture("tiny-sd-lora/kohya")).unwrap();
    assert_eq!(pipe.text_encoder().lora_modules().len(), 4);
    assert_close("kohya text encoder", &embeds(&pipe, &r), &r["kohya.embeds"], 1e-3);
}

#[test]
fn one_training_step_through_both_adapters_matches_peft() {
    let r = refs();
    let file = LoraFile::read(fixture("tiny-sd-lora/te")).unwrap();
    let mut unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap();
    let mut te = ClipTextModel::load(fixture("tiny-sd/text_encoder"), &LoadOptions::default()).unwrap();
    // The UNet's own loader refuses a file with another component's part...
    let e = unet.load_lora_file(&file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("text encoder") && e.to_string().contains("text_encoder."), "{e}");
    // ... and takes its part alone.
    let mut unet_part = file.clone();
    unet_part.keep_only(LoraComponent::Unet);
    unet.load_lora_file(&unet_part).unwrap();
    let mut te_part = file.clone();
    te_part.keep_only(LoraComponent::TextEncoder);
    te.load_lora_file(&te_part).unwrap();

    let ctx = te.prompt_embeds(&ids(&r), None, ForwardMode::Train).unwrap();
    let out = unet.forward(&r["train.sample"], &r["train.timesteps"], &ctx, ForwardMode::Train).unwrap();
    let loss = (out - &r["train.target"]).unwrap().sqr().unwrap().mean_all().unwrap();
    let (got, want) = (loss.to_scalar::<f32>().unwrap(), r["train.loss"].to_vec1::<f32>().unwrap()[0]);
    eprintln!("train.loss {got} vs peft {want}: diff {:.3e}", (got - want).abs());
    assert!((got - want).abs() < 1e-4);
    let grads = loss.backward().unwrap();
    let mut vars = unet.named_trainable_vars();
    let te_vars = te.named_trainable_vars();
    assert_eq!(te_vars.len(), 20);
    assert!(te_vars.iter().all(|(n, _)| n.starts_with("text_encoder.text_model.encoder.layers.")));
    vars.extend(te_vars);
    assert_eq!(vars.len(), 84);
    let mut worst: f32 = 0.0;
    for (name, var) in &vars {
        // The fixture has transformers 5's names (no `text_model.`).
        let key = format!("grad.{}", name.replace("text_encoder.text_model.", "text_encoder."));
        let want = &r[&key];
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        let want = want.reshape(g.dims()).unwrap();
        let (d, scale) = (max_abs_diff(g, &want), max_abs(&want));
        assert!(scale > 0.0 && d < 1e-4 * scale.max(1.0), "gradient of {name} differs by {d} (max |ref| {scale})");
        worst = worst.max(d);
    }
    eprintln!("84 adapter gradients: worst max abs diff {worst:.3e}");
}

/// B of every adapter of `pipe`, filled with small deterministic values (PEFT starts
/// B at zero, which would make the adapter do nothing).
fn fill_b(vars: &[(String, candle_core::Var)]) {
    for (i, (name, v)) in vars.iter().enumerate() {
        if name.contains("lora_B") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n).map(|j| ((i * 31 + j * 7) % 17) as f32 * 0.02 - 0.16).collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
}

/// The adapters of tiny-sd-lora/anneal-te: the UNet's attention (r 4, alpha 8, seed 5)
/// and the text encoder's default targets (r 4, alpha 4, seed 6), B from [`fill_b`].
fn anneal_te_adapters() -> (UNet2DConditionModel, ClipTextModel) {
    let mut unet = UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap();
    unet.add_lora(&LoraConfig { r: 4, alpha: 8.0, ..Default::default() }, 5).unwrap();
    let mut te = ClipTextModel::load(fixture("tiny-sd/text_encoder"), &LoadOptions::default()).unwrap();
    te.add_lora(&LoraConfig { r: 4, alpha: 4.0, ..Default::default() }, 6).unwrap();
    assert_eq!(te.lora_modules().len(), 8, "q/k/v/out_proj of 2 layers");
    fill_b(&unet.named_trainable_vars());
    fill_b(&te.named_trainable_vars());
    (unet, te)
}

/// Writes tests/fixtures/tiny-sd-lora/anneal-te/pytorch_lora_weights.safetensors; then
/// run `python tests/fixtures/make_tiny_sd_te_lora.py anneal` to record what diffusers
/// computes with it.
#[test]
#[ignore]
fn write_anneal_te_fixture() {
    if std::env::var("ANNEAL_WRITE_FIXTURES").is_err() {
        return;
    }
    let (unet, te) = anneal_te_adapters();
    save_lora_weights(fixture("tiny-sd-lora/anneal-te"), Some(&unet), Some(&te)).unwrap();
}

/// Our saver still writes the bytes diffusers loaded, and diffusers' embeddings with
/// that file are ours.
#[test]
fn anneal_saver_writes_both_parts_as_diffusers_loaded_them() {
    let (unet, te) = anneal_te_adapters();
    let tmp = tempfile::tempdir().unwrap();
    let p = save_lora_weights(tmp.path(), Some(&unet), Some(&te)).unwrap();
    let committed = fixture("tiny-sd-lora/anneal-te").join(LORA_WEIGHTS_FILE);
    let (a, b) = (std::fs::read(&p).unwrap(), std::fs::read(&committed).unwrap());
    // Tensor by tensor (the header's JSON object may list its entries in another order).
    let (sa, sb) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut ka: Vec<String> = sa.names().into_iter().map(str::to_string).collect();
    let mut kb: Vec<String> = sb.names().into_iter().map(str::to_string).collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    assert_eq!(ka.len(), 32 * 2 + 8 * 2);
    for k in &ka {
        let (x, y) = (sa.tensor(k).unwrap(), sb.tensor(k).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{k}");
        assert!(x.data() == y.data(), "{k}: bytes differ from the file diffusers loaded");
    }
    let meta = safetensors::SafeTensors::read_metadata(&a).unwrap().1.metadata().clone().unwrap();
    let committed_meta = safetensors::SafeTensors::read_metadata(&b).unwrap().1.metadata().clone().unwrap();
    assert_eq!(meta.len(), committed_meta.len());
    for (k, v) in &committed_meta {
        let (x, y): (serde_json::Value, serde_json::Value) = match k.as_str() {
            "lora_adapter_metadata" => (serde_json::from_str(&meta[k]).unwrap(), serde_json::from_str(v).unwrap()),
            _ => (meta[k].clone().into(), v.clone().into()),
        };
        assert_eq!(x, y, "metadata {k}");
    }
    let cfg: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
    assert_eq!((cfg["unet.r"].as_u64(), cfg["text_encoder.lora_alpha"].as_u64()), (Some(4), Some(4)));

    let want: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("tiny-sd-lora/anneal-te/reference.safetensors"), &Device::Cpu).unwrap();
    let r = refs();
    let mut pipe = pipeline();
    pipe.load_lora(&committed).unwrap();
    assert_close("anneal file in diffusers, scale 1", &embeds(&pipe, &r), &want["embeds.scale_1"], 1e-4);
    pipe.set_lora_scale(0.5).unwrap();
    assert_close("anneal file in diffusers, scale 0.5", &embeds(&pipe, &r), &want["embeds.scale_0_5"], 1e-4);
    // The adapter changes the embeddings: the comparison is not base against base.
    assert!(max_abs_diff(&want["embeds.scale_1"], &r["embeds.base"]) > 1e-2);
    // The in-memory adapter computes the same.
    let in_memory = te.prompt_embeds(&ids(&r), None, ForwardMode::Infer).unwrap();
    assert_close("anneal adapter in memory", &in_memory, &want["embeds.scale_1"], 1e-4);
}

#[test]
fn parts_that_do_not_fit_are_refused_and_nothing_stays_attached() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: Vec<(String, Tensor)>| -> PathBuf {
        let p = tmp.path().join(name);
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        candle_core::safetensors::save(&map, &p).unwrap();
        p
    };
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
    let unet_key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let te_key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
    // A good UNet part with a text-encoder part of the wrong shape: the UNet's adapter
    // is taken off again.
    let p = write(
        "bad_te.safetensors",
        vec![
            (format!("{unet_key}.lora_A.weight"), z(&[2, 16])),
            (format!("{unet_key}.lora_B.weight"), z(&[16, 2])),
            (format!("{te_key}.lora_A.weight"), z(&[2, 7])),
            (format!("{te_key}.lora_B.weight"), z(&[32, 2])),
        ],
    );
    let mut pipe = pipeline();
    let e = pipe.load_lora(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("bad_te.safetensors") && e.to_string().contains(te_key), "{e}");
    assert!(pipe.unet().lora_config().is_none() && pipe.text_encoder().lora_config().is_none());
    // A module the text encoder does not have.
    let p = write(
        "no_module.safetensors",
        vec![
            ("text_encoder.text_model.encoder.layers.9.self_attn.q_proj.lora_A.weight".into(), z(&[2, 32])),
            ("text_encoder.text_model.encoder.layers.9.self_attn.q_proj.lora_B.weight".into(), z(&[32, 2])),
        ],
    );
    let e = pipeline().load_lora(&p).unwrap_err();
    assert!(e.to_string().contains("layers.9") && e.to_string().contains("text encoder"), "{e}");
    // SDXL's second text encoder.
    let p = write(
        "sdxl.safetensors",
        vec![
            ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight".into(), z(&[2, 32])),
            ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight".into(), z(&[32, 2])),
        ],
    );
    let e = pipeline().load_lora(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("SDXL") && e.to_string().contains("text_encoder_2."), "{e}");
    // Saving with no adapter anywhere.
    let e = pipeline().save_lora(tmp.path().join("none")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(!tmp.path().join("none").join(LORA_WEIGHTS_FILE).exists());
}
