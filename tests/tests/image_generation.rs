#![allow(clippy::unwrap_used)]
//! Stable Diffusion models in the registry (pipeline directories, diffusers LoRA files)
//! and text-to-image through `Home::image_generator`, on the tiny-sd fixtures.

use std::fs;
use std::path::Path;

use crate::common::{fixtures, model_dirs};
use anneal::diffusion::{png, StableDiffusionPipeline, Txt2ImgRequest};
use anneal::{
    CancelToken, Event, Family, GenerationFilter, GenerationKind, Home, HomeOptions, ImageAdapter,
    ImageGeneratorOptions, ImageRequest, LoadOptions, ModelFilter, ModelKind, RegisterOptions,
};

fn home_with(limit: Option<u64>) -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open_with(d.path().join("home"), &HomeOptions { memory_limit: limit }).unwrap();
    (d, h)
}

fn home() -> (tempfile::TempDir, Home) {
    home_with(None)
}

fn named(name: &str) -> RegisterOptions {
    RegisterOptions { name: Some(name.into()), ..Default::default() }
}

fn lora_of(name: &str, parent: &str) -> RegisterOptions {
    RegisterOptions { name: Some(name.into()), parent: Some(parent.into()), ..Default::default() }
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst.join(e.file_name()));
        } else {
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// A safetensors file of F32 tensors (all zeros) with these names and shapes.
fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(vec![0u8; offset]);
    fs::write(path, bytes).unwrap();
}

fn request(prompt: &str) -> ImageRequest {
    ImageRequest { steps: Some(3), seed: Some(11), ..ImageRequest::new(prompt) }
}

#[test]
fn registers_pipeline_directories_and_loras_with_kind_and_lineage() {
    let (_d, h) = home();
    let m = h.models();
    let sd = m.register_dir(fixtures().join("tiny-sd"), &RegisterOptions::default()).unwrap();
    assert_eq!((sd.name.as_str(), sd.kind, sd.family), ("tiny-sd", ModelKind::Base, Family::StableDiffusion));
    assert_eq!((sd.architecture.as_str(), sd.model_type.as_str()), ("StableDiffusionPipeline", "stable-diffusion"));
    assert_eq!((sd.dtype.as_str(), sd.tokenizer.as_deref()), ("f32", Some("tokenizer/vocab.json")));
    assert_eq!(sd.config["_class_name"], "StableDiffusionPipeline");
    let pipe = StableDiffusionPipeline::load(fixtures().join("tiny-sd"), &LoadOptions::default()).unwrap();
    let params = pipe.unet().num_params().unwrap()
        + pipe.vae().unwrap().named_weights().unwrap().iter().map(|(_, t)| t.elem_count()).sum::<usize>()
        + pipe.text_encoder().named_weights().iter().map(|(_, t)| t.elem_count()).sum::<usize>();
    assert_eq!(sd.params, params as u64);
    let names: Vec<&str> = sd.files.iter().map(|f| f.name.as_str()).collect();
    for want in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
        assert!(sd.path.join(want).is_file(), "{want} not copied");
    }
    assert!(!names.contains(&"reference.safetensors"), "test data is not a pipeline file");
    // What registered loads from the home.
    StableDiffusionPipeline::load(&sd.path, &LoadOptions::default()).unwrap();

    let lora = m.register_dir(fixtures().join("tiny-sd-lora/peft"), &lora_of("sd-lora", "tiny-sd")).unwrap();
    assert_eq!((lora.kind, lora.family), (ModelKind::Lora, Family::StableDiffusion));
    assert_eq!(lora.parent_id.as_ref(), Some(&sd.id));
    assert_eq!(lora.files.len(), 1);
    assert!(lora.params > 0);
    // A lone LoRA file (diffusers training scripts' layout) registers too.
    let single = m
        .register_dir(
            fixtures().join("tiny-sd-lora/diffusers/pytorch_lora_weights.safetensors"),
            &lora_of("sd-single", "tiny-sd"),
        )
        .unwrap();
    assert_eq!((single.kind, single.config["layout"].as_str()), (ModelKind::Lora, Some("diffusers")));

    m.register_dir(fixtures().join("tiny-llama"), &RegisterOptions::default()).unwrap();
    let sds = m.list(&ModelFilter { family: Some(Family::StableDiffusion), ..Default::default() }).unwrap();
    let mut listed: Vec<&str> = sds.iter().map(|r| r.name.as_str()).collect();
    listed.sort();
    assert_eq!(listed, ["sd-lora", "sd-single", "tiny-sd"]);
}

#[test]
fn bad_pipelines_and_loras_are_refused_naming_file_and_field_leaving_the_home_unchanged() {
    let (d, h) = home();
    let m = h.models();
    let base = m.register_dir(fixtures().join("tiny-sd"), &named("base")).unwrap();
    m.register_dir(fixtures().join("tiny-llama"), &named("llama")).unwrap();
    let before = model_dirs(&h);

    let refused = |dir: &Path, opts: &RegisterOptions, code: &str, needles: &[&str]| {
        let e = m.register_dir(dir, opts).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        for n in needles {
            assert!(e.to_string().contains(n), "`{n}` not in: {e}");
        }
        assert_eq!(model_dirs(&h), before);
        assert_eq!(m.list(&ModelFilter::default()).unwrap().len(), 2);
    };

    // model_index.json names a component folder that is missing.
    let p = d.path().join("no-vae-dir");
    copy_tree(&fixtures().join("tiny-sd"), &p);
    fs::remove_dir_all(p.join("vae")).unwrap();
    refused(&p, &named("x"), "invalid_data", &["model_index.json", "vae"]);
    // An unknown pipeline class.
    let p = d.path().join("unknown-class");
    copy_tree(&fixtures().join("tiny-sd"), &p);
    let idx = fs::read_to_string(p.join("model_index.json")).unwrap();
    fs::write(p.join("model_index.json"), idx.replace("\"StableDiffusionPipeline\"", "\"FluxPipeline\"")).unwrap();
    refused(&p, &named("x"), "invalid_data", &["model_index.json", "_class_name", "FluxPipeline"]);
    // Weights that do not fit unet/config.json.
    let p = d.path().join("bad-unet");
    copy_tree(&fixtures().join("tiny-sd"), &p);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(p.join("unet/config.json")).unwrap()).unwrap();
    cfg["layers_per_block"] = serde_json::json!(3);
    fs::write(p.join("unet/config.json"), cfg.to_string()).unwrap();
    refused(&p, &named("x"), "invalid_data", &["diffusion_pytorch_model.safetensors"]);
    // A pickle-only component.
    let p = d.path().join("bin-vae");
    copy_tree(&fixtures().join("tiny-sd"), &p);
    fs::rename(p.join("vae/diffusion_pytorch_model.safetensors"), p.join("vae/diffusion_pytorch_model.bin")).unwrap();
    refused(&p, &named("x"), "invalid_data", &["vae", "safetensors"]);

    // A LoRA for another architecture: a module the UNet does not have.
    let p = d.path().join("alien-lora");
    fs::create_dir_all(&p).unwrap();
    let key = "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q";
    write_safetensors(
        &p.join("pytorch_lora_weights.safetensors"),
        &[(&format!("{key}.lora_A.weight"), &[2, 32]), (&format!("{key}.lora_B.weight"), &[32, 2])],
    );
    refused(&p, &lora_of("x", "base"), "invalid_data", &["pytorch_lora_weights.safetensors", key]);
    // A LoRA whose shapes do not fit.
    let key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    write_safetensors(
        &p.join("pytorch_lora_weights.safetensors"),
        &[(&format!("{key}.lora_A.weight"), &[2, 5]), (&format!("{key}.lora_B.weight"), &[16, 2])],
    );
    refused(&p, &lora_of("x", "base"), "invalid_data", &["pytorch_lora_weights.safetensors", key]);
    // A LoRA for SDXL's second text encoder (these pipelines have one).
    let key = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj";
    write_safetensors(
        &p.join("pytorch_lora_weights.safetensors"),
        &[(&format!("{key}.lora_A.weight"), &[2, 32]), (&format!("{key}.lora_B.weight"), &[32, 2])],
    );
    refused(&p, &lora_of("x", "base"), "invalid_data", &["pytorch_lora_weights.safetensors", key, "SDXL"]);
    // A text-encoder part whose shapes do not fit the base's text encoder.
    let key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj";
    write_safetensors(
        &p.join("pytorch_lora_weights.safetensors"),
        &[(&format!("{key}.lora_A.weight"), &[2, 5]), (&format!("{key}.lora_B.weight"), &[32, 2])],
    );
    refused(&p, &lora_of("x", "base"), "invalid_data", &["pytorch_lora_weights.safetensors", key]);
    // A diffusers LoRA on a language model, a PEFT adapter on a pipeline.
    refused(&fixtures().join("tiny-sd-lora/peft"), &lora_of("x", "llama"), "invalid_config", &["parent"]);
    refused(&fixtures().join("tiny-llama-lora"), &lora_of("x", &base.id.0), "invalid_config", &["parent"]);
    // A pipeline given a parent.
    refused(&fixtures().join("tiny-sd"), &lora_of("x", "base"), "invalid_config", &["parent"]);
    // A kohya LoRA with a text-encoder part (lora_te_) registers, both parts checked.
    let kohya = m.register_dir(fixtures().join("tiny-sd-lora/kohya"), &lora_of("kohya", "base")).unwrap();
    assert_eq!(kohya.config["components"], serde_json::json!(["unet", "text_encoder"]));
}

#[test]
fn generation_matches_the_pipeline_and_records_a_row() {
    let (_d, h) = home();
    let sd = h.models().register_dir(fixtures().join("tiny-sd"), &RegisterOptions::default()).unwrap();
    let gen = h.image_generator("tiny-sd", &ImageGeneratorOptions::default()).unwrap();
    let req = ImageRequest {
        negative_prompt: Some("blurry".into()),
        num_images: Some(2),
        scheduler: Some("euler".into()),
        ..request("a red circle")
    };
    let mut events = Vec::new();
    let mut sink = |e: &Event| {
        events.push(e.clone());
        Ok(())
    };
    let out = gen.generate_with(&req, &mut sink, &CancelToken::new()).unwrap();
    let pipe = StableDiffusionPipeline::load(fixtures().join("tiny-sd"), &LoadOptions::default()).unwrap();
    let want = pipe
        .txt2img(
            &Txt2ImgRequest {
                negative_prompts: vec!["blurry".into()],
                num_images_per_prompt: 2,
                num_inference_steps: 3,
                scheduler: Some("euler".into()),
                seed: Some(11),
                ..Txt2ImgRequest::new("a red circle")
            },
            &mut |_, _| Ok(()),
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(out.images.len(), 2);
    for (got, want) in out.images.iter().zip(&want.images) {
        assert_eq!(got.rgb, want.rgb);
        assert_eq!((got.width, got.height), (want.width, want.height));
    }
    assert_eq!(out.model, "tiny-sd@1");
    assert_eq!((out.images[0].seed, out.images[1].seed), (Some(11), Some(12)));
    let decoded = png::decode(&out.images[1].png).unwrap();
    let s = decoded.settings().unwrap().unwrap();
    assert_eq!((s.prompt.as_str(), s.seed, s.model.as_deref()), ("a red circle", Some(12), Some("tiny-sd@1")));
    assert_eq!((s.negative_prompt.as_str(), s.steps, s.scheduler.as_str()), ("blurry", 3, "euler"));

    // task_started, one progress per step, task_finished with the row's id.
    let steps: Vec<u64> = events
        .iter()
        .filter_map(|e| if let Event::TaskProgress { done, .. } = e { Some(*done) } else { None })
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(matches!(&events[0], Event::TaskStarted { task, name, .. } if task == "txt2img" && name == "tiny-sd@1"));
    let id = out.id.clone().unwrap();
    assert!(matches!(events.last(), Some(Event::TaskFinished { id: Some(i), .. }) if *i == id.0));

    let rows = h
        .models()
        .generations(&GenerationFilter { kind: Some(GenerationKind::Txt2Img), ..Default::default() })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id.clone(), rows[0].model_id.clone()), (id, sd.id.clone()));
    assert_eq!(rows[0].params["seed"], 11);
    assert_eq!(rows[0].params["num_images"], 2);
    assert_eq!(rows[0].params["prompts"][0], "a red circle");
    let usage = h.models().usage("tiny-sd").unwrap();
    assert_eq!((usage.calls, usage.generations), (1, 1));
}

#[test]
fn adapters_switch_per_request_with_their_scale() {
    let (_d, h) = home();
    let m = h.models();
    m.register_dir(fixtures().join("tiny-sd"), &named("base")).unwrap();
    let lora = m.register_dir(fixtures().join("tiny-sd-lora/peft"), &lora_of("style", "base")).unwrap();
    let gen = h.image_generator("base", &ImageGeneratorOptions::default()).unwrap();
    let with = |scale: f64| ImageRequest {
        adapters: Some(vec![ImageAdapter { model: "style".into(), scale }]),
        ..request("a blue square")
    };
    let base = gen.generate(&request("a blue square")).unwrap();
    let zero = gen.generate(&with(0.0)).unwrap();
    let one = gen.generate(&with(1.0)).unwrap();
    let again = gen.generate(&ImageRequest { adapters: Some(vec![]), ..request("a blue square") }).unwrap();
    assert_eq!(zero.images[0].rgb, base.images[0].rgb);
    assert_eq!(again.images[0].rgb, base.images[0].rgb, "the adapter of a request does not stay for the next");
    assert_ne!(one.images[0].rgb, base.images[0].rgb, "the LoRA changes the image");
    assert_eq!(one.model, "style@1");
    assert_eq!(zero.model, "style@1 (scale 0)");

    let merged =
        h.image_generator("style", &ImageGeneratorOptions { merge_adapter: true, ..Default::default() }).unwrap();
    let m1 = merged.generate(&request("a blue square")).unwrap();
    let max_diff = m1.images[0].rgb.iter().zip(&one.images[0].rgb).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    assert!(max_diff <= 1, "merged vs per-request adapter: {max_diff}");
    // A LoRA loaded unmerged is every request's default adapter.
    let unmerged = h.image_generator("style", &ImageGeneratorOptions::default()).unwrap();
    assert_eq!(unmerged.generate(&request("a blue square")).unwrap().images[0].rgb, one.images[0].rgb);

    let rows = m.generations(&GenerationFilter::default()).unwrap();
    assert_eq!(rows.iter().filter(|r| r.model_id == lora.id).count(), 4);
    // Concurrent requests with and without the adapter each get their own.
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let (gen, req) = (gen.clone(), if i % 2 == 0 { with(1.0) } else { request("a blue square") });
                s.spawn(move || (i, gen.generate(&req).unwrap().images[0].rgb.clone()))
            })
            .collect();
        for r in runs {
            let (i, rgb) = r.join().unwrap();
            let want = if i % 2 == 0 { &one.images[0].rgb } else { &base.images[0].rgb };
            assert_eq!(&rgb, want, "request {i}");
        }
    });
    // Refusals: an unknown adapter, two adapters, adapters on a merged generator, not a LoRA of the base.
    for (g, r, field) in [
        (
            &gen,
            ImageRequest { adapters: Some(vec![ImageAdapter { model: "nope".into(), scale: 1.0 }]), ..request("x") },
            "adapters[0].model",
        ),
        (
            &gen,
            ImageRequest {
                adapters: Some(vec![ImageAdapter { model: "style".into(), scale: 1.0 }; 2]),
                ..request("x")
            },
            "adapters",
        ),
        (&merged, with(1.0), "adapters"),
        (
            &gen,
            ImageRequest { adapters: Some(vec![ImageAdapter { model: "base".into(), scale: 1.0 }]), ..request("x") },
            "adapters[0].model",
        ),
        (&gen, with(f64::NAN), "adapters[0].scale"),
    ] {
        let e = g.generate(&r).unwrap_err();
        assert_eq!((e.code(), field_of(&e).as_str()), ("invalid_config", field), "{e}");
    }
}

fn field_of(e: &anneal::Error) -> String {
    match e {
        anneal::Error::InvalidConfig { field, .. } => field.clone(),
        other => format!("{other}"),
    }
}

#[test]
fn cancel_bad_sizes_and_memory_limits_are_typed_errors() {
    let (_d, h) = home();
    h.models().register_dir(fixtures().join("tiny-sd"), &RegisterOptions::default()).unwrap();
    let gen = h.image_generator("tiny-sd", &ImageGeneratorOptions::default()).unwrap();
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let mut sink = move |e: &Event| {
        if matches!(e, Event::TaskProgress { .. }) {
            c.cancel();
        }
        Ok(())
    };
    let e = gen.generate_with(&request("x"), &mut sink, &cancel).unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert!(
        h.models().generations(&GenerationFilter::default()).unwrap().is_empty(),
        "a cancelled call is not recorded"
    );

    let multiple = gen.size_multiple().unwrap();
    for (req, field) in [
        (ImageRequest { width: Some(multiple + 1), ..request("x") }, "width"),
        (ImageRequest { height: Some(multiple * 2 + 2), ..request("x") }, "height"),
        (ImageRequest { steps: Some(0), ..request("x") }, "steps"),
        (ImageRequest { num_images: Some(0), ..request("x") }, "num_images"),
        (ImageRequest { scheduler: Some("plms".into()), ..request("x") }, "scheduler"),
        (ImageRequest { prompts: vec![], ..request("x") }, "prompts"),
    ] {
        let e = gen.generate(&req).unwrap_err();
        assert_eq!((e.code(), field_of(&e).as_str()), ("invalid_config", field), "{e}");
    }

    // A small memory limit: the weights fit, a large image does not; a smaller one refuses the model.
    let (_d2, small) = home_with(Some(3 << 20));
    small.models().register_dir(fixtures().join("tiny-sd"), &RegisterOptions::default()).unwrap();
    let g = small.image_generator("tiny-sd", &ImageGeneratorOptions::default()).unwrap();
    g.generate(&request("fits")).unwrap();
    let e = g.generate(&ImageRequest { width: Some(512), height: Some(512), ..request("x") }).unwrap_err();
    assert_eq!((e.code(), field_of(&e).as_str()), ("invalid_config", "height/width"), "{e}");
    let (_d3, tiny) = home_with(Some(1 << 20));
    tiny.models().register_dir(fixtures().join("tiny-sd"), &RegisterOptions::default()).unwrap();
    let e = tiny.image_generator("tiny-sd", &ImageGeneratorOptions::default()).unwrap_err();
    assert_eq!((e.code(), field_of(&e).as_str()), ("invalid_config", "model"), "{e}");
    // Above the load budget a LoRA is checked against the UNet's headers: still refused.
    let p = _d3.path().join("alien");
    fs::create_dir_all(&p).unwrap();
    let key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    write_safetensors(
        &p.join("pytorch_lora_weights.safetensors"),
        &[(&format!("{key}.lora_A.weight"), &[2, 5]), (&format!("{key}.lora_B.weight"), &[16, 2])],
    );
    let e = tiny.models().register_dir(&p, &lora_of("x", "tiny-sd")).unwrap_err();
    assert_eq!(e.code(), "invalid_data", "{e}");
    assert!(e.to_string().contains(key), "{e}");
    tiny.models().register_dir(fixtures().join("tiny-sd-lora/peft"), &lora_of("ok", "tiny-sd")).unwrap();
    // A language model is not for text-to-image.
    h.models().register_dir(fixtures().join("tiny-llama"), &RegisterOptions::default()).unwrap();
    let e = h.image_generator("tiny-llama", &ImageGeneratorOptions::default()).unwrap_err();
    assert_eq!((e.code(), field_of(&e).as_str()), ("invalid_config", "model"), "{e}");
}
