//! Image (Stable Diffusion) training through the TrainingEngine on the tiny random
//! diffusers pipeline of tests/fixtures/tiny-sd: LoRA and full fine-tunes, validation
//! images in events and the job row, DreamBooth prior preservation, buckets, resume
//! after cancel to the same loss, and the typed refusals.
//! Run: cargo test -p anneal-tests --test integration image_training::
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};

use anneal::diffusion::StableDiffusionPipeline;
use anneal::{
    CancelToken, Error, Event, EventSink, FinishStatus, Home, ImageCrop, ImageImportOptions, ImageTrainOptions,
    ImportOptions, JobStatus, LoadOptions, LoraConfig, Method, ModelKind, ModelRecord, RecordingSink, TrainSpec,
};
use serde_json::json;

/// A `w` x `h` image: a filled rectangle of `rgb` on white.
fn picture(w: usize, h: usize, rgb: [u8; 3]) -> Vec<u8> {
    let mut px = vec![255u8; w * h * 3];
    for y in h / 4..3 * h / 4 {
        for x in w / 4..3 * w / 4 {
            px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&rgb);
        }
    }
    anneal::diffusion::png::encode_rgb8(w, h, &px, &[]).unwrap()
}

/// One picture of a test folder: file, (width, height), colour, caption.
type Item<'a> = (&'a str, (usize, usize), [u8; 3], &'a str);

/// An imagefolder with `metadata.jsonl`.
fn folder(dir: &Path, items: &[Item<'_>]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut meta = String::new();
    for (file, (w, h), rgb, caption) in items {
        std::fs::write(dir.join(file), picture(*w, *h, *rgb)).unwrap();
        meta.push_str(&format!("{}\n", json!({"file_name": file, "text": caption})));
    }
    std::fs::write(dir.join("metadata.jsonl"), meta).unwrap();
    dir.to_path_buf()
}

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) home: Home,
    pub(crate) base: ModelRecord,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("home")).unwrap();
        let base = home.models().register_dir(common::fixtures().join("tiny-sd"), &Default::default()).unwrap();
        let src = folder(
            &dir.path().join("shapes"),
            &[
                ("a.png", (16, 16), [220, 20, 20], "a red square"),
                ("b.png", (16, 16), [20, 20, 220], "a blue square"),
                ("c.png", (24, 16), [220, 20, 20], "a red square"),
                ("d.png", (16, 24), [20, 20, 220], "a blue square"),
            ],
        );
        home.datasets()
            .import_images(&src, &ImageImportOptions { name: Some("shapes".into()), ..Default::default() })
            .unwrap();
        Env { dir, home, base }
    }

    pub(crate) fn spec(&self, method: Method) -> TrainSpec {
        TrainSpec {
            base: self.base.id.clone().into(),
            dataset: "shapes".into(),
            method,
            batch_size: 2,
            learning_rate: 1e-3,
            max_steps: Some(4),
            image: Some(ImageTrainOptions {
                resolution: Some(16),
                validation_prompts: vec!["a red square".into(), "a blue square".into()],
                validation_every: Some(2),
                validation_steps: 2,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

pub(crate) fn lora() -> Method {
    Method::Lora(LoraConfig { r: 4, alpha: 4.0, ..Default::default() })
}

fn status(events: &[Event]) -> FinishStatus {
    match events.last() {
        Some(Event::JobFinished { status, .. }) => *status,
        other => panic!("last event is not job_finished: {other:?}"),
    }
}

#[test]
fn lora_training_registers_an_adapter_and_renders_validation_images() {
    let env = Env::new();
    let engine = env.home.training();
    let job = engine.create_job(&env.spec(lora())).unwrap();
    let mut sink = RecordingSink::new();
    let report = engine.run(&job.id, &mut sink, &CancelToken::new()).unwrap();
    let events = sink.events();
    assert_eq!(status(&events), FinishStatus::Completed);
    // Steps 1 has no image yet; steps 2.. point to the latest grid.
    let images: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step { image, .. } => Some(image.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(images.len(), 4);
    assert!(images[0].is_none(), "{images:?}");
    assert!(images[1].as_deref().unwrap().ends_with("step-000002.png"), "{images:?}");
    assert!(images[3].as_deref().unwrap().ends_with("step-000004.png"), "{images:?}");
    let grid = anneal::diffusion::png::read(images[3].as_deref().unwrap()).unwrap();
    assert_eq!((grid.width, grid.height), (32, 16), "two 16x16 validation images side by side");
    assert_eq!(grid.text("prompts"), Some("a red square\na blue square"));
    let row = engine.job(&job.id).unwrap();
    assert_eq!(row.status, JobStatus::Completed);
    assert!(row.image.as_deref().unwrap().ends_with("samples/step-000004.png"), "{:?}", row.image);
    assert!(env.home.root().join(row.image.unwrap()).is_file());

    let model = env.home.models().get(&report.model).unwrap();
    assert_eq!(model.kind, ModelKind::Lora);
    assert_eq!(model.family, anneal::Family::StableDiffusion);
    assert_eq!(model.parent_id.as_ref(), Some(&env.base.id));
    assert_eq!(model.lineage.dataset.as_ref(), row.dataset_id.as_ref());
    assert!(model.path.join("pytorch_lora_weights.safetensors").is_file());
    assert!(report.final_loss.is_finite());
    // The adapter moved: the UNet with it predicts differently from the base.
    let mut unet =
        anneal::diffusion::UNet2DConditionModel::load(env.base.path.join("unet"), &LoadOptions::default()).unwrap();
    let x = candle_core::Tensor::ones((1, 4, 8, 8), candle_core::DType::F32, unet.device()).unwrap();
    let t = candle_core::Tensor::new(&[500f32], unet.device()).unwrap();
    let ctx = candle_core::Tensor::ones((1, 77, 32), candle_core::DType::F32, unet.device()).unwrap();
    let before = unet.forward(&x, &t, &ctx, anneal::ForwardMode::Infer).unwrap();
    unet.load_lora(&model.path).unwrap();
    let after = unet.forward(&x, &t, &ctx, anneal::ForwardMode::Infer).unwrap();
    let diff = (before - after).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 1e-6, "the trained adapter changes nothing ({diff})");
    // The registered adapter generates through the image generator like any model.
    let generator = env.home.image_generator(model.reference(), &Default::default()).unwrap();
    let req = anneal::ImageRequest { steps: Some(2), seed: Some(3), ..anneal::ImageRequest::new("a red square") };
    let out = generator.generate(&req).unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!((out.images[0].width, out.images[0].height), (16, 16));
}

#[test]
fn full_fine_tune_registers_a_pipeline_that_generates() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec { max_steps: Some(2), image: None, ..env.spec(Method::Full) };
    let job = engine.create_job(&spec).unwrap();
    let report = engine.run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    let model = env.home.models().get(&report.model).unwrap();
    assert_eq!((model.kind, model.family), (ModelKind::Full, anneal::Family::StableDiffusion));
    let pipe = StableDiffusionPipeline::load(&model.path, &LoadOptions::default()).unwrap();
    let req = anneal::diffusion::Txt2ImgRequest {
        num_inference_steps: 2,
        seed: Some(1),
        ..anneal::diffusion::Txt2ImgRequest::new("a red square")
    };
    let trained = pipe.txt2img(&req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap();
    let base = StableDiffusionPipeline::load(&env.base.path, &LoadOptions::default()).unwrap();
    let before = base.txt2img(&req, &mut |_, _| Ok(()), &CancelToken::new()).unwrap();
    assert_eq!(trained.images[0].rgb.len(), before.images[0].rgb.len());
    assert_ne!(trained.images[0].rgb, before.images[0].rgb, "the fine-tuned UNet renders the same image");
}

/// Cancels the run through its token once `at` steps are done.
struct CancelAt {
    at: u64,
    token: CancelToken,
    inner: RecordingSink,
}

impl EventSink for CancelAt {
    fn on_event(&mut self, e: &Event) -> anneal::Result<()> {
        if let Event::Step { step, .. } = e {
            if *step == self.at {
                self.token.cancel();
            }
        }
        self.inner.on_event(e)
    }
}

#[test]
fn a_cancelled_lora_run_resumes_to_the_loss_of_an_uninterrupted_one() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec {
        max_steps: Some(6),
        checkpoint_every: Some(2),
        image: Some(ImageTrainOptions {
            resolution: Some(16),
            random_flip: true,
            noise_offset: 0.1,
            ..Default::default()
        }),
        ..env.spec(lora())
    };
    let whole = engine.run(&engine.create_job(&spec).unwrap().id, &mut RecordingSink::new(), &CancelToken::new());
    let whole = whole.unwrap();

    let job = engine.create_job(&spec).unwrap();
    let token = CancelToken::new();
    let mut sink = CancelAt { at: 3, token: token.clone(), inner: RecordingSink::new() };
    let err = engine.run(&job.id, &mut sink, &token).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(engine.job(&job.id).unwrap().status, JobStatus::Cancelled);
    let resumed = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(resumed.final_loss, whole.final_loss, "resume must repeat the same draws");
}

#[test]
fn lora_on_the_text_encoder_trains_beside_the_unets_and_resumes_to_the_same_loss() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec {
        max_steps: Some(6),
        checkpoint_every: Some(2),
        image: Some(ImageTrainOptions { resolution: Some(16), train_text_encoder: true, ..Default::default() }),
        ..env.spec(lora())
    };
    let whole = engine.run(&engine.create_job(&spec).unwrap().id, &mut RecordingSink::new(), &CancelToken::new());
    let whole = whole.unwrap();
    let model = env.home.models().get(&whole.model).unwrap();
    assert_eq!((model.kind, model.parent_id.as_ref()), (ModelKind::Lora, Some(&env.base.id)));
    // One diffusers file with both parts; the text encoder's on q/k/v/out_proj of its 2 layers.
    let file = anneal::diffusion::LoraFile::read(&model.path).unwrap();
    use anneal::diffusion::LoraComponent;
    assert_eq!(file.components(), [LoraComponent::Unet, LoraComponent::TextEncoder]);
    let te_modules = file.modules.iter().filter(|m| m.component == LoraComponent::TextEncoder).count();
    assert_eq!(te_modules, 8);
    assert_eq!(model.config["components"], json!(["unet", "text_encoder"]));
    // The encoder's adapter moved: the prompt embeddings differ from the base's.
    let base = StableDiffusionPipeline::load(&env.base.path, &LoadOptions::default()).unwrap();
    let mut adapted = StableDiffusionPipeline::load(&env.base.path, &LoadOptions::default()).unwrap();
    adapted.load_lora(&model.path).unwrap();
    let ids = base.tokenizer().to_tensor(&["a red square"], &candle_core::Device::Cpu).unwrap();
    let embeds =
        |p: &StableDiffusionPipeline| p.text_encoder().prompt_embeds(&ids, None, anneal::ForwardMode::Infer).unwrap();
    let diff = (embeds(&base) - embeds(&adapted)).unwrap().abs().unwrap().max_all().unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    assert!(diff > 1e-6, "the trained text-encoder adapter changes nothing ({diff})");
    // Per request at scale 0, the adapter (both parts) is the base.
    let gen = env.home.image_generator(env.base.reference(), &Default::default()).unwrap();
    let req = anneal::ImageRequest { steps: Some(2), seed: Some(3), ..anneal::ImageRequest::new("a red square") };
    let plain = gen.generate(&req).unwrap();
    let adapter = |scale| Some(vec![anneal::ImageAdapter { model: model.reference(), scale }]);
    let zero = gen.generate(&anneal::ImageRequest { adapters: adapter(0.0), ..req.clone() }).unwrap();
    let one = gen.generate(&anneal::ImageRequest { adapters: adapter(1.0), ..req.clone() }).unwrap();
    // (the pixels: the PNGs' text chunks name the adapter and its scale)
    assert_eq!(zero.images[0].rgb, plain.images[0].rgb);
    assert_ne!(one.images[0].rgb, plain.images[0].rgb);

    // Cancelled after a checkpoint, resumed: the same draws and the same loss.
    let job = engine.create_job(&spec).unwrap();
    let token = CancelToken::new();
    let mut sink = CancelAt { at: 3, token: token.clone(), inner: RecordingSink::new() };
    let err = engine.run(&job.id, &mut sink, &token).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    let resumed = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(resumed.final_loss, whole.final_loss, "resume must restore both adapters and their optimiser state");
}

#[test]
fn dreambooth_with_prior_preservation_renders_and_keeps_class_images() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec {
        max_steps: Some(2),
        image: Some(ImageTrainOptions {
            resolution: Some(16),
            instance_prompt: Some("a photo of sks square".into()),
            class_prompt: Some("a photo of a square".into()),
            num_class_images: 3,
            validation_steps: 2,
            ..Default::default()
        }),
        ..env.spec(lora())
    };
    let job = engine.create_job(&spec).unwrap();
    let mut sink = RecordingSink::new();
    engine.run(&job.id, &mut sink, &CancelToken::new()).unwrap();
    let class_dir = env.home.root().join("jobs").join(job.id.as_str()).join("class_images");
    let files: Vec<_> = std::fs::read_dir(&class_dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 3, "{files:?}");
    // Every step trained on the instance prompt.
    let samples: Vec<String> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Step { sample: Some(s), .. } => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(!samples.is_empty() && samples.iter().all(|s| s == "a photo of sks square"), "{samples:?}");
}

/// DreamBooth as a full fine-tune (not a LoRA): the class images are rendered and kept,
/// the trained pipeline is registered and generates, differently from the base.
#[test]
fn dreambooth_full_fine_tune_with_prior_preservation_registers_a_pipeline_that_generates() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec {
        max_steps: Some(2),
        image: Some(ImageTrainOptions {
            resolution: Some(16),
            instance_prompt: Some("a photo of sks square".into()),
            class_prompt: Some("a photo of a square".into()),
            num_class_images: 2,
            prior_loss_weight: 0.5,
            validation_steps: 2,
            ..Default::default()
        }),
        ..env.spec(Method::Full)
    };
    let job = engine.create_job(&spec).unwrap();
    let report = engine.run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(report.steps, 2);
    assert!(report.final_loss.is_finite());
    let class_dir = env.home.root().join("jobs").join(job.id.as_str()).join("class_images");
    assert_eq!(std::fs::read_dir(&class_dir).unwrap().count(), 2);
    let model = env.home.models().get(&report.model).unwrap();
    assert_eq!((model.kind, model.family), (ModelKind::Full, anneal::Family::StableDiffusion));
    assert_eq!(model.parent_id.as_ref(), Some(&env.base.id));
    let generator = env.home.image_generator(model.reference(), &Default::default()).unwrap();
    let req =
        anneal::ImageRequest { steps: Some(2), seed: Some(3), ..anneal::ImageRequest::new("a photo of sks square") };
    let trained = generator.generate(&req).unwrap();
    assert_eq!((trained.images[0].width, trained.images[0].height), (16, 16));
    let base = env.home.image_generator(env.base.reference(), &Default::default()).unwrap().generate(&req).unwrap();
    assert_ne!(trained.images[0].rgb, base.images[0].rgb, "the fine-tuned pipeline renders the base's image");
}

#[test]
fn buckets_train_images_of_several_aspect_ratios() {
    let env = Env::new();
    let engine = env.home.training();
    let spec = TrainSpec {
        image: Some(ImageTrainOptions { resolution: Some(16), crop: ImageCrop::Buckets, ..Default::default() }),
        ..env.spec(lora())
    };
    let job = engine.create_job(&spec).unwrap();
    let report = engine.run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(report.steps, 4);
    assert!(report.final_loss.is_finite());
}

#[test]
fn random_crops_of_larger_pictures_train_with_flips() {
    // Two of the pictures are larger than the resolution on one side: they are cut at
    // a random place, then flipped half of the time (a cut is a strided view).
    let env = Env::new();
    let engine = env.home.training();
    let image =
        ImageTrainOptions { resolution: Some(16), crop: ImageCrop::Random, random_flip: true, ..Default::default() };
    let spec = TrainSpec { max_steps: Some(8), image: Some(image), ..env.spec(lora()) };
    let job = engine.create_job(&spec).unwrap();
    let report = engine.run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(report.steps, 8);
    assert!(report.final_loss.is_finite());
}

#[test]
fn wrong_pairs_of_model_data_and_options_are_refused_naming_the_field() {
    let env = Env::new();
    let engine = env.home.training();
    let field = |e: Error| match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("{other}"),
    };
    // A text dataset for an image model.
    env.home
        .datasets()
        .import_records(
            vec![Ok(json!({"text": "hello"}))],
            &ImportOptions { name: Some("text".into()), ..Default::default() },
        )
        .unwrap();
    let e = engine.create_job(&TrainSpec { dataset: "text".into(), ..env.spec(lora()) }).unwrap_err();
    assert_eq!(field(e), "dataset");
    // An image dataset for a language model, and image options on one.
    let nano = env.home.models().create_preset("nano", &Default::default()).unwrap();
    let e =
        engine.create_job(&TrainSpec { base: nano.id.clone().into(), image: None, ..env.spec(lora()) }).unwrap_err();
    assert_eq!(field(e), "dataset");
    let e = engine.create_job(&TrainSpec { base: nano.id.into(), ..env.spec(lora()) }).unwrap_err();
    assert_eq!(field(e), "image");
    // A resolution the pipeline cannot train at, a rank wider than the UNet, a batch
    // that cannot fit: refused when the job is created, naming the field.
    let image = |resolution| Some(ImageTrainOptions { resolution: Some(resolution), ..Default::default() });
    let e = engine.create_job(&TrainSpec { image: image(10), ..env.spec(lora()) }).unwrap_err();
    assert_eq!(field(e), "image.resolution");
    // Mixed precision is for language models.
    let bf16 = TrainSpec { mixed_precision: anneal::MixedPrecision::Bf16, ..env.spec(lora()) };
    assert_eq!(field(engine.create_job(&bf16).unwrap_err()), "mixed_precision");
    let wide = Method::Lora(LoraConfig { r: 4096, ..Default::default() });
    assert_eq!(field(engine.create_job(&env.spec(wide)).unwrap_err()), "method.lora.r");
    let huge = TrainSpec { batch_size: 1 << 20, image: image(4096), ..env.spec(lora()) };
    assert_eq!(field(engine.create_job(&huge).unwrap_err()), "batch_size");
    // Counts that would size a loop or an allocation are bounded.
    let dreambooth = ImageTrainOptions {
        instance_prompt: Some("sks".into()),
        class_prompt: Some("a square".into()),
        num_class_images: 1 << 40,
        ..Default::default()
    };
    let spec = TrainSpec { image: Some(dreambooth), ..env.spec(lora()) };
    assert_eq!(field(engine.create_job(&spec).unwrap_err()), "image.num_class_images");
    let many = ImageTrainOptions { validation_prompts: vec!["x".into(); 1000], ..Default::default() };
    let spec = TrainSpec { image: Some(many), ..env.spec(lora()) };
    assert_eq!(field(engine.create_job(&spec).unwrap_err()), "image.validation_prompts");
    let _ = &env.dir;
}
