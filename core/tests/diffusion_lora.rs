//! LoRA on the diffusion UNet against diffusers + peft. The fixtures in
//! tests/fixtures/tiny-sd-lora/ were made by tests/fixtures/make_tiny_sd_lora.py on
//! tiny-sd/unet: one adapter file per layout (diffusers' PEFT keys with metadata, the
//! training scripts' lora.down/up keys, kohya, diffusers < 0.21) and what diffusers
//! computes after `pipe.load_lora_weights`; anneal/ holds a file written by anneal's saver
//! and what diffusers computed with it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal::diffusion::{LoraComponent, LoraFile, LoraLayout, UNet2DConditionModel, LORA_WEIGHTS_FILE};
use anneal::{ErrorKind, ForwardMode, LoadOptions, LoraConfig};
use candle_core::{DType, Device, Tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn fixture(p: &str) -> PathBuf {
    Path::new(FIXTURES).join(p)
}

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("tiny-sd-lora/reference.safetensors"), &Device::Cpu).unwrap()
}

fn base_unet() -> UNet2DConditionModel {
    UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions::default()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn predict(unet: &UNet2DConditionModel, r: &HashMap<String, Tensor>, mode: ForwardMode) -> Tensor {
    unet.forward(&r["unet.sample"], &r["unet.timesteps"], &r["unet.encoder_hidden_states"], mode).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs diff {d:.3e} (max |ref| {:.3})", max_abs(want));
    assert!(d < tol, "{what}: differs from diffusers by {d}");
}

/// Output at scales 1 and 0.5 in both modes against what diffusers computed.
fn check_layout(unet: &mut UNet2DConditionModel, prefix: &str, r: &HashMap<String, Tensor>) {
    for mode in [ForwardMode::Infer, ForwardMode::Train] {
        unet.set_lora_scale(1.0).unwrap();
        assert_close(
            &format!("{prefix} scale 1 {mode:?}"),
            &predict(unet, r, mode),
            &r[&format!("{prefix}.out.scale_1")],
            1e-4,
        );
        unet.set_lora_scale(0.5).unwrap();
        let got = predict(unet, r, mode);
        assert_close(&format!("{prefix} scale 0.5 {mode:?}"), &got, &r[&format!("{prefix}.out.scale_0_5")], 1e-4);
    }
    unet.set_lora_scale(1.0).unwrap();
    // The adapter matters: the base output is far from the adapted one.
    assert!(max_abs_diff(&r["base.out"], &r[&format!("{prefix}.out.scale_1")]) > 1e-2);
}

#[test]
fn base_fixture_output_matches() {
    let r = refs();
    assert_close("base", &predict(&base_unet(), &r, ForwardMode::Infer), &r["base.out"], 1e-4);
}

#[test]
fn peft_layout_with_metadata_matches_diffusers() {
    let r = refs();
    let mut unet = base_unet();
    let file = LoraFile::read(fixture("tiny-sd-lora/peft")).unwrap();
    assert_eq!(file.layout, LoraLayout::Peft);
    unet.load_lora_file(&file).unwrap();
    // r 4 / alpha 8 from the metadata; the rank_pattern module has rank 2.
    let cfg = unet.lora_config().unwrap();
    assert_eq!((cfg.r, cfg.alpha), (4, 8.0));
    assert_eq!(unet.lora_modules().len(), 40);
    assert!(unet.lora_modules().contains(&"down_blocks.0.attentions.0.proj_in".to_string()));
    check_layout(&mut unet, "peft", &r);
}

#[test]
fn training_script_layout_matches_diffusers() {
    let r = refs();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/diffusers")).unwrap();
    assert_eq!(LoraFile::read(fixture("tiny-sd-lora/diffusers")).unwrap().layout, LoraLayout::Diffusers);
    assert_eq!(unet.lora_modules().len(), 32);
    check_layout(&mut unet, "diffusers", &r);
}

#[test]
fn old_attention_processor_layout_matches_diffusers_with_or_without_the_unet_prefix() {
    let r = refs();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/old/pytorch_lora_weights.safetensors")).unwrap();
    check_layout(&mut unet, "old", &r);
    // `unet.save_attn_procs` wrote the same keys without `unet.`.
    let t = candle_core::safetensors::load(fixture("tiny-sd-lora/old").join(LORA_WEIGHTS_FILE), &Device::Cpu).unwrap();
    let bare: HashMap<String, Tensor> =
        t.into_iter().map(|(k, v)| (k.strip_prefix("unet.").unwrap().to_string(), v)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("pytorch_lora_weights.bin.safetensors");
    candle_core::safetensors::save(&bare, &p).unwrap();
    let file = LoraFile::read(tmp.path()).unwrap();
    assert_eq!(file.layout, LoraLayout::DiffusersOld);
    let mut unet = base_unet();
    unet.load_lora_file(&file).unwrap();
    check_layout(&mut unet, "old", &r);
}

#[test]
fn kohya_layout_matches_diffusers_and_its_text_encoder_part_is_refused_unless_dropped() {
    let r = refs();
    let mut unet = base_unet();
    let dir = fixture("tiny-sd-lora/kohya");
    let e = unet.load_lora(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pytorch_lora_weights.safetensors") && msg.contains("lora_te_text_model_encoder_layers_0"),
        "{msg}"
    );
    assert!(msg.contains("text encoder"), "{msg}");
    assert!(unet.lora_config().is_none());

    let mut file = LoraFile::read(&dir).unwrap();
    assert_eq!(file.layout, LoraLayout::Kohya);
    assert!(file.has_text_encoder());
    assert_eq!(file.modules.iter().filter(|m| m.component == LoraComponent::TextEncoder).count(), 4);
    file.drop_text_encoder();
    unet.load_lora_file(&file).unwrap();
    // to_q/k/v/out.0 of 2 attentions, ff.net.0.proj, ff.net.2, proj_in, proj_out in 4
    // transformers; f16 in the file, alpha 2 with r 4.
    assert_eq!(unet.lora_modules().len(), 48);
    let cfg = unet.lora_config().unwrap();
    assert_eq!((cfg.r, cfg.alpha), (4, 2.0));
    check_layout(&mut unet, "kohya", &r);
}

#[test]
fn merge_matches_diffusers_fuse_lora_and_unmerge_and_remove_restore_the_base() {
    let r = refs();
    let base = base_unet();
    let base_weights: HashMap<String, Tensor> = base.named_weights().unwrap().into_iter().collect();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/peft")).unwrap();
    unet.set_lora_scale(0.7).unwrap();
    unet.merge_lora().unwrap();
    assert!(unet.is_lora_merged());
    assert!(unet.set_lora_scale(1.0).is_err());
    assert_close("fused 0.7", &predict(&unet, &r, ForwardMode::Infer), &r["peft.fused_0_7.out"], 1e-4);
    // A merged UNet saves the adapted weights (what fuse_lora + save_pretrained gives).
    let merged: HashMap<String, Tensor> = unet.named_weights().unwrap().into_iter().collect();
    let q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    assert!(max_abs_diff(&merged[q], &base_weights[q]) > 1e-3);
    unet.unmerge_lora().unwrap();
    for (k, w) in unet.named_weights().unwrap() {
        assert!(max_abs_diff(&w, &base_weights[&k]) < 1e-6, "{k}");
    }
    unet.set_lora_scale(0.5).unwrap();
    assert_close("after unmerge", &predict(&unet, &r, ForwardMode::Infer), &r["peft.out.scale_0_5"], 1e-4);
    unet.merge_lora().unwrap();
    unet.remove_lora().unwrap();
    assert!(unet.lora_config().is_none() && unet.trainable_vars().is_empty());
    // Merging and unmerging round the weights (as in PEFT): equal to float precision.
    assert!(max_abs_diff(&predict(&unet, &r, ForwardMode::Infer), &predict(&base, &r, ForwardMode::Infer)) < 1e-5);
}

#[test]
fn train_step_loss_and_adapter_gradients_match_peft() {
    let r = refs();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/peft")).unwrap();
    let out = predict(&unet, &r, ForwardMode::Train);
    let loss = (out - &r["train.target"]).unwrap().sqr().unwrap().mean_all().unwrap();
    let want = r["train.loss"].to_vec1::<f32>().unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    eprintln!("train.loss {got} vs peft {want}: diff {:.3e}", (got - want).abs());
    assert!((got - want).abs() < 1e-4);
    let grads = loss.backward().unwrap();
    let vars = unet.named_trainable_vars();
    assert_eq!(vars.len(), 80);
    let (mut worst, mut largest): (f32, f32) = (0.0, 0.0);
    for (name, var) in &vars {
        let want = &r[&format!("grad.{name}")];
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        let want = want.reshape(g.dims()).unwrap();
        let (d, scale) = (max_abs_diff(g, &want), max_abs(&want));
        assert!(scale > 0.0 && d < 1e-4 * scale.max(1.0), "gradient of {name} differs by {d} (max |ref| {scale})");
        worst = worst.max(d);
        largest = largest.max(scale);
    }
    eprintln!("80 adapter gradients: worst max abs diff {worst:.3e} (largest |ref| {largest:.3e})");
}

fn cfg(r: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig { r, alpha, target_modules: targets.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

#[test]
fn add_lora_defaults_to_diffusers_targets_with_peft_init_and_leaves_the_output_unchanged() {
    let r = refs();
    let mut unet = base_unet();
    unet.add_lora(&LoraConfig::default(), 3).unwrap();
    let modules = unet.lora_modules();
    assert_eq!(modules.len(), 32);
    assert!(modules.iter().all(|m| ["to_q", "to_k", "to_v", "to_out.0"].iter().any(|t| m.ends_with(&format!(".{t}")))));
    for (name, v) in unet.named_trainable_vars() {
        let t = v.as_tensor();
        if name.ends_with("lora_B.weight") {
            assert_eq!(max_abs(t), 0.0, "{name}");
        } else {
            let bound = 1.0 / (t.dim(1).unwrap() as f32).sqrt();
            let m = max_abs(t);
            assert!(m > 0.5 * bound && m <= bound, "{name}: {m} vs {bound}");
        }
    }
    assert_close("fresh adapter", &predict(&unet, &r, ForwardMode::Infer), &r["base.out"], 1e-4);
    let mut again = base_unet();
    again.add_lora(&LoraConfig::default(), 3).unwrap();
    let mut other = base_unet();
    other.add_lora(&LoraConfig::default(), 4).unwrap();
    let a0 = unet.named_trainable_vars()[0].1.as_tensor().clone();
    assert_eq!(max_abs_diff(&a0, again.named_trainable_vars()[0].1.as_tensor()), 0.0);
    assert!(max_abs_diff(&a0, other.named_trainable_vars()[0].1.as_tensor()) > 0.0);
    // B = 0: the output is the base's, exactly.
    let base = base_unet();
    assert_eq!(max_abs_diff(&predict(&unet, &r, ForwardMode::Train), &predict(&base, &r, ForwardMode::Train)), 0.0);
}

/// Fills every B with values that depend only on their position (exact in f32).
fn fill_b(unet: &UNet2DConditionModel) {
    let mut x: u64 = 12345;
    for (name, v) in unet.named_trainable_vars() {
        if name.ends_with("lora_B.weight") {
            let n = v.elem_count();
            let vals: Vec<f32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 33) % 2001) as f32 / 4000.0 - 0.25
                })
                .collect();
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
}

/// Every A and B gets a non-zero gradient; the optimiser sees nothing else; no linear
/// layer's weight gets a gradient (the frozen matmul skips it). candle's backward does
/// fill gradients for the other arguments of differentiated ops (convolution kernels,
/// biases, norm scales), but none of them is a variable: an optimiser step over
/// `trainable_vars` changes the adapter only.
#[test]
fn gradients_reach_every_adapter_matrix_and_no_base_weight() {
    let r = refs();
    let mut unet = base_unet();
    let targets =
        ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "time_emb_proj"];
    unet.add_lora(&cfg(4, 8.0, &targets), 1).unwrap();
    fill_b(&unet);
    let modules = unet.lora_modules();
    let base_weights = unet.named_weights().unwrap();
    let loss = predict(&unet, &r, ForwardMode::Train).sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = unet.named_trainable_vars();
    assert_eq!(vars.len(), 2 * modules.len());
    assert!(modules.len() > 50 && modules.iter().any(|m| m.ends_with("time_emb_proj")));
    for (name, var) in &vars {
        assert!(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"), "{name}");
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        let s = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(s > 0.0 && s.is_finite(), "gradient of {name} is {s}");
    }
    let mut linear_weights = 0;
    for (name, w) in &base_weights {
        assert!(!w.is_variable(), "{name} is a variable");
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if modules.iter().any(|m| m == module) && w.rank() == 2 {
            assert!(grads.get(w).is_none(), "linear weight {name} got a gradient");
            linear_weights += 1;
        }
    }
    assert!(linear_weights > 40);
    // One SGD step over the trainable variables: the base weights stay, the output moves.
    let before = predict(&unet, &r, ForwardMode::Infer);
    let mut sgd = <candle_nn::SGD as candle_nn::Optimizer>::new(unet.trainable_vars(), 0.1).unwrap();
    candle_nn::Optimizer::step(&mut sgd, &grads).unwrap();
    for ((name, w), (_, w2)) in base_weights.iter().zip(unet.named_weights().unwrap()) {
        assert_eq!(max_abs_diff(w, &w2), 0.0, "{name} changed");
    }
    assert!(max_abs_diff(&before, &predict(&unet, &r, ForwardMode::Infer)) > 1e-4);
}

#[test]
fn saved_adapter_reloads_to_the_same_output_with_patterns_and_conv_shapes() {
    let r = refs();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/peft")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = unet.save_lora(tmp.path()).unwrap();
    assert_eq!(p, tmp.path().join(LORA_WEIGHTS_FILE));
    // Keys and shapes are those of diffusers' file (4-D on the 1x1 convolutions).
    let ours = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let theirs =
        candle_core::safetensors::load(fixture("tiny-sd-lora/peft").join(LORA_WEIGHTS_FILE), &Device::Cpu).unwrap();
    let shapes = |m: &HashMap<String, Tensor>| {
        let mut v: Vec<_> = m.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&ours), shapes(&theirs));
    for (k, t) in &theirs {
        assert_eq!(max_abs_diff(&ours[k], t), 0.0, "{k}");
    }
    let meta = metadata(&p);
    assert_eq!(meta["unet.r"], 4);
    assert_eq!(meta["unet.lora_alpha"], 8);
    assert_eq!(meta["unet.rank_pattern"]["^down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"], 2);
    assert_eq!(meta["unet.alpha_pattern"]["^mid_block.attentions.0.transformer_blocks.0.attn2.to_k"], 3);
    let mut again = base_unet();
    again.load_lora(tmp.path()).unwrap();
    check_layout(&mut again, "peft", &r);
}

/// The UNet part of `lora_adapter_metadata` in a safetensors header.
fn metadata(p: &Path) -> serde_json::Value {
    let bytes = std::fs::read(p).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = m.metadata().clone().unwrap();
    assert_eq!(m["format"], "pt");
    serde_json::from_str(&m["lora_adapter_metadata"]).unwrap()
}

/// The adapter of tiny-sd-lora/anneal: r 4, alpha 8 (scale 2) on the attention
/// projections and the 1x1-convolution proj_in / proj_out, A from PEFT's init with seed
/// 5, B from [`fill_b`].
fn anneal_fixture_adapter() -> UNet2DConditionModel {
    let mut unet = base_unet();
    unet.add_lora(&cfg(4, 8.0, &["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]), 5).unwrap();
    fill_b(&unet);
    unet
}

/// Writes tests/fixtures/tiny-sd-lora/anneal/pytorch_lora_weights.safetensors; then run
/// `python tests/fixtures/make_tiny_sd_lora.py anneal` to record what diffusers does with it.
#[test]
#[ignore]
fn write_anneal_fixture() {
    if std::env::var("ANNEAL_WRITE_FIXTURES").is_err() {
        return;
    }
    anneal_fixture_adapter().save_lora(fixture("tiny-sd-lora/anneal")).unwrap();
}

/// Our saver still writes the bytes diffusers loaded (keys, dtypes, shapes, values and
/// the metadata), and reading that file back gives what diffusers computed with it.
#[test]
fn anneal_saver_output_is_what_diffusers_loaded() {
    let unet = anneal_fixture_adapter();
    let tmp = tempfile::tempdir().unwrap();
    let p = unet.save_lora(tmp.path()).unwrap();
    let committed = fixture("tiny-sd-lora/anneal").join(LORA_WEIGHTS_FILE);
    let (a, b) = (std::fs::read(&p).unwrap(), std::fs::read(&committed).unwrap());
    let (sa, sb) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut ka: Vec<_> = sa.names().into_iter().map(str::to_string).collect();
    let mut kb: Vec<_> = sb.names().into_iter().map(str::to_string).collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb);
    assert_eq!(ka.len(), 80);
    for k in &ka {
        let (x, y) = (sa.tensor(k).unwrap(), sb.tensor(k).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{k}");
        assert!(x.data() == y.data(), "{k}: bytes differ from the file diffusers loaded");
    }
    assert_eq!(metadata(&p), metadata(&committed));

    let r = refs();
    let want: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("tiny-sd-lora/anneal/reference.safetensors"), &Device::Cpu).unwrap();
    let mut unet = base_unet();
    unet.load_lora(fixture("tiny-sd-lora/anneal")).unwrap();
    assert_close(
        "anneal file in diffusers, scale 1",
        &predict(&unet, &r, ForwardMode::Infer),
        &want["out.scale_1"],
        1e-4,
    );
    unet.set_lora_scale(0.5).unwrap();
    assert_close(
        "anneal file in diffusers, scale 0.5",
        &predict(&unet, &r, ForwardMode::Infer),
        &want["out.scale_0_5"],
        1e-4,
    );
    // The in-memory adapter that was saved computes the same.
    let orig = anneal_fixture_adapter();
    assert_close("anneal adapter in memory", &predict(&orig, &r, ForwardMode::Infer), &want["out.scale_1"], 1e-4);
}

// ---------------------------------------------------------------- bad input

fn write(dir: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> PathBuf {
    let p = dir.join(LORA_WEIGHTS_FILE);
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), metadata).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

fn kv(k: impl Into<String>, t: Tensor) -> (String, Tensor) {
    (k.into(), t)
}

fn load_err(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> anneal::Error {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), tensors, metadata);
    let mut unet = base_unet();
    let e = unet.load_lora(tmp.path()).unwrap_err();
    // Nothing half-attached.
    assert!(unet.lora_config().is_none() && unet.trainable_vars().is_empty(), "{e}");
    e
}

const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

#[test]
fn a_lora_for_another_architecture_is_invalid_data_naming_file_and_key() {
    // The tiny SD 2.x UNet has the same module names but other widths.
    let mut sd2 = UNet2DConditionModel::load(fixture("tiny-sd2-unet"), &LoadOptions::default()).unwrap();
    let e = sd2.load_lora(fixture("tiny-sd-lora/peft")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("tiny-sd-lora/peft/pytorch_lora_weights.safetensors") && msg.contains("lora_"), "{msg}");
    assert!(sd2.lora_config().is_none());

    type Case = (Vec<(String, Tensor)>, &'static str, &'static str);
    let cases: Vec<Case> = vec![
        // A module this UNet does not have (SDXL's kohya naming).
        (
            vec![
                kv("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", zeros(&[4, 16])),
                kv("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight", zeros(&[16, 4])),
            ],
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
            "another model",
        ),
        // Wrong width.
        (
            vec![
                kv(format!("unet.{Q}.lora_A.weight"), zeros(&[4, 24])),
                kv(format!("unet.{Q}.lora_B.weight"), zeros(&[16, 4])),
            ],
            "attn1.to_q.lora_A.weight",
            "does not fit",
        ),
        // Ranks of A and B disagree.
        (
            vec![
                kv(format!("unet.{Q}.lora_A.weight"), zeros(&[4, 16])),
                kv(format!("unet.{Q}.lora_B.weight"), zeros(&[16, 2])),
            ],
            "attn1.to_q.lora_B.weight",
            "expected [out, 4]",
        ),
        // A without B.
        (vec![kv(format!("unet.{Q}.lora_A.weight"), zeros(&[4, 16]))], "attn1.to_q.lora_A.weight", "pair"),
        // LoCon on a 3x3 convolution.
        (
            vec![
                kv("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", zeros(&[4, 16, 3, 3])),
                kv("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", zeros(&[16, 4, 1, 1])),
            ],
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
            "LoCon",
        ),
        // A base weight, not a LoRA tensor.
        (vec![kv(format!("unet.{Q}.weight"), zeros(&[16, 16]))], "attn1.to_q.weight", "not a LoRA tensor"),
        (vec![kv(format!("unet.{Q}.lora_magnitude_vector"), zeros(&[16]))], "lora_magnitude_vector", "DoRA"),
        // Integer weights.
        (
            vec![
                kv(format!("unet.{Q}.lora_A.weight"), Tensor::zeros((4, 16), DType::I64, &Device::Cpu).unwrap()),
                kv(format!("unet.{Q}.lora_B.weight"), zeros(&[16, 4])),
            ],
            "attn1.to_q.lora_A.weight",
            "floating point",
        ),
    ];
    for (i, (tensors, key, needle)) in cases.into_iter().enumerate() {
        let e = load_err(&tensors, None);
        assert_eq!(e.kind(), ErrorKind::InvalidData, "case {i}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(LORA_WEIGHTS_FILE) && msg.contains(key) && msg.contains(needle), "case {i}: {msg}");
    }
}

#[test]
fn metadata_that_contradicts_the_tensors_is_refused() {
    let t = vec![
        kv(format!("unet.{Q}.lora_A.weight"), zeros(&[4, 16])),
        kv(format!("unet.{Q}.lora_B.weight"), zeros(&[16, 4])),
    ];
    let meta = |json: &str| Some(HashMap::from([("lora_adapter_metadata".to_string(), json.to_string())]));
    for (json, needle) in [
        (r#"{"unet.r": 8, "unet.lora_alpha": 8}"#, "metadata says r = 8"),
        (r#"{"unet.r": 4, "unet.use_dora": true}"#, "unet.use_dora"),
        (r#"{"unet.r": 4, "unet.lora_alpha": -1}"#, "unet.lora_alpha"),
        (r#"{"unet.r": 4, "unet.rank_pattern": {"(": 2}}"#, "unet.rank_pattern"),
        ("not json", "lora_adapter_metadata"),
    ] {
        let e = load_err(&t, meta(json));
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{json}: {e}");
        assert!(e.to_string().contains(needle) && e.to_string().contains(LORA_WEIGHTS_FILE), "{json}: {e}");
    }
    // r 4, alpha 2 in the metadata: scale 0.5, as diffusers would apply it.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), &t, meta(r#"{"unet.r": 4, "unet.lora_alpha": 2}"#));
    let mut unet = base_unet();
    unet.load_lora(tmp.path()).unwrap();
    assert_eq!(unet.lora_config().unwrap().alpha, 2.0);
}

#[test]
fn unreadable_files_and_bad_configs_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(LORA_WEIGHTS_FILE), b"not safetensors").unwrap();
    let e = base_unet().load_lora(tmp.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains(LORA_WEIGHTS_FILE), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = base_unet().load_lora(empty.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert_eq!(base_unet().load_lora(empty.path().join("nope.safetensors")).unwrap_err().kind(), ErrorKind::NotFound);

    let mut trainable =
        UNet2DConditionModel::load(fixture("tiny-sd/unet"), &LoadOptions { trainable: true, ..Default::default() })
            .unwrap();
    let e = trainable.add_lora(&LoraConfig::default(), 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("trainable"), "{e}");
    let mut unet = base_unet();
    let e = unet.add_lora(&cfg(4, 8.0, &["q_proj"]), 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("to_out.0") && e.to_string().contains("proj_in"), "{e}");
    let e = unet.add_lora(&LoraConfig { fan_in_fan_out: Some(true), ..Default::default() }, 0).unwrap_err();
    assert!(e.to_string().contains("fan_in_fan_out"), "{e}");
    assert!(unet.set_lora_scale(0.5).is_err());
    unet.add_lora(&LoraConfig::default(), 0).unwrap();
    let e = unet.add_lora(&LoraConfig::default(), 0).unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
    assert!(unet.load_lora(fixture("tiny-sd-lora/peft")).is_err());
    assert!(unet.set_lora_scale(f64::NAN).is_err());
    assert_eq!(base_unet().save_lora(tmp.path()).unwrap_err().kind(), ErrorKind::InvalidConfig);
}
