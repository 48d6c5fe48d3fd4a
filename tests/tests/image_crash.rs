//! Image (Stable Diffusion) jobs killed or cancelled from another process, as text jobs
//! are in core/tests/training.rs: a run SIGKILLed after a checkpoint (LoRA, full UNet,
//! full UNet + text encoder, DreamBooth with prior preservation) leaves an interrupted
//! job, complete checkpoints and no model, and resumes to the loss and weights of an
//! uninterrupted run, bit for bit; DreamBooth class images rendered before a kill are
//! kept, the missing ones rendered the same; a cancel from another process ends the job
//! cancelled with a checkpoint it resumes from. Killed (failpoint `abort`) in the middle
//! of writing a checkpoint (LoRA: all files written, the staging directory not renamed;
//! full: while writing the UNet's weights), a job resumes from the previous complete
//! one to the same loss and weights, and its interrupted write is swept; killed just
//! before or just after the transaction that registers its model, it ends with that
//! model registered once (complete, loadable, its lineage right); killed while writing a
//! validation image, its row points at the previous complete one and the interrupted
//! write under `samples/` is swept.
//!
//! The runs happen in a child process (this test binary re-executed, each step slowed
//! down so the parent can act mid-run); the tiny-sd fixture keeps each test a few seconds.
//! Run: cargo test -p anneal-tests --test integration image_crash::
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anneal::diffusion::StableDiffusionPipeline;
use anneal::{
    CancelToken, Event, Family, Home, ImageCrop, ImageRequest, ImageTrainOptions, JobId, JobRecord, JobStatus,
    LoadOptions, Method, ModelKind, ModelRecord, RecordingSink, Schedule, TrainReport, TrainSpec,
};

use crate::image_training::{lora, Env};

const CHILD_HOME: &str = "ANNEAL_TEST_IMAGE_HOME";
const CHILD_JOB: &str = "ANNEAL_TEST_IMAGE_JOB";

/// The child: runs the job (resumes it when it already started), each step slowed down
/// (not its numbers) so the parent can kill or cancel it mid-run; prints the outcome.
#[test]
fn image_child() {
    let Ok(dir) = std::env::var(CHILD_HOME) else { return };
    let job = JobId(std::env::var(CHILD_JOB).unwrap());
    let home = Home::open(dir).unwrap();
    let mut sink = |e: &Event| {
        if matches!(e, Event::Step { .. }) {
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    };
    println!(); // after the harness's `test image_crash::image_child ... `
    match home.training().complete(&job, &mut sink, &CancelToken::new()) {
        Ok(r) => println!("OUTCOME ok {}", r.model),
        Err(e) => println!("OUTCOME {}", e.code()),
    }
}

/// Starts the child on `job`, with `failpoints` armed (no core file if one aborts).
fn spawn_child(home: &Home, job: &JobId, failpoints: &str) -> Child {
    Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "image_crash::image_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_HOME, home.root())
        .env(CHILD_JOB, &job.0)
        .env("ANNEAL_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls the job row until `until` holds, failing if the child exits first.
fn wait_for(home: &Home, job: &JobId, child: &mut Child, what: &str, until: impl Fn(&JobRecord) -> bool) {
    let t = Instant::now();
    loop {
        if until(&home.training().job(job).unwrap()) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the child never got to {what}");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited before {what}: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the job in a child and SIGKILLs it once its row points at the checkpoint of
/// `step`; the job is then interrupted, between that step and the last.
fn kill_after_checkpoint(home: &Home, job: &JobId, step: u64) -> JobRecord {
    let mut child = spawn_child(home, job, "");
    let want = format!("/checkpoints/step-{step}");
    let what = format!("the checkpoint of step {step}");
    wait_for(home, job, &mut child, &what, |j| j.checkpoint.as_deref().is_some_and(|c| c.ends_with(&want)));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    let j = home.training().job(job).unwrap();
    assert_eq!(j.status, JobStatus::Interrupted, "a dead runner is interrupted");
    assert!(j.step >= step && j.step < j.total_steps, "killed at step {} of {}", j.step, j.total_steps);
    j
}

/// Every tensor of every safetensors file under `dir`, as bits, keyed `file:tensor`.
fn weights(dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                for (name, t) in candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap() {
                    let t = t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap();
                    out.insert(
                        format!("{rel}:{name}"),
                        t.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
                    );
                }
            }
        }
    }
    out
}

/// Entries of `dir` (sorted; none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|es| es.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn job_dir(home: &Home, job: &JobId) -> PathBuf {
    home.root().join("jobs").join(&job.0)
}

/// The models a job registered.
fn models_of(home: &Home, job: &JobId) -> Vec<ModelRecord> {
    let all = home.models().list(&Default::default()).unwrap();
    all.into_iter().filter(|m| m.lineage.job.as_ref() == Some(job)).collect()
}

/// The home after a run that did not finish: nothing registered for the job and no
/// visible model folder without its row; every visible checkpoint complete (state,
/// optimiser, weights that parse), the row pointing at the newest one.
fn assert_nothing_half_written(home: &Home, job: &JobId, full: bool) {
    assert!(models_of(home, job).is_empty(), "a model was registered for the unfinished job");
    let registered: Vec<String> = home
        .models()
        .list(&Default::default())
        .unwrap()
        .iter()
        .map(|m| m.path.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for name in entries(&home.root().join("models")) {
        assert!(name.starts_with(".tmp-") || registered.contains(&name), "an unregistered model folder {name}");
    }
    let ckpts = job_dir(home, job).join("checkpoints");
    let visible: Vec<String> = entries(&ckpts).into_iter().filter(|n| !n.starts_with(".tmp-")).collect();
    assert!(!visible.is_empty());
    for name in &visible {
        let dir = ckpts.join(name);
        assert!(name.starts_with("step-"), "{name}");
        assert!(dir.join("trainer_state.json").is_file() && dir.join("optimizer.safetensors").is_file(), "{name}");
        let w = weights(&dir);
        let model =
            if full { "unet/diffusion_pytorch_model.safetensors:" } else { "pytorch_lora_weights.safetensors:" };
        assert!(w.keys().any(|k| k.starts_with(model)), "{name} has no {model} weights: {:?}", w.keys());
    }
    let newest = visible.iter().max_by_key(|n| n["step-".len()..].parse::<u64>().unwrap()).unwrap();
    let row = home.training().job(job).unwrap().checkpoint.unwrap();
    assert_eq!(row, format!("jobs/{}/checkpoints/{newest}", job.0));
}

/// The resumed job ended as the uninterrupted one: same steps, images and final loss
/// (bit for bit: every draw is a function of the seed, the step and the micro-batch,
/// and the checkpoint holds the exact f32 weights and AdamW moments), the same weights,
/// registered once, from the checkpoint of step `from`.
fn assert_same_as(home: &Home, job: &JobId, got: &TrainReport, want: &TrainReport, from: u64) {
    assert_eq!((got.steps, got.tokens), (want.steps, want.tokens));
    assert_eq!(got.final_loss.to_bits(), want.final_loss.to_bits(), "{} vs {}", got.final_loss, want.final_loss);
    let logs = home.training().logs(job).unwrap();
    let resumed = format!("resuming at step {from}:");
    assert!(logs.iter().any(|l| l.message.starts_with(&resumed)), "{resumed} {logs:?}");
    let row = home.training().job(job).unwrap();
    assert_eq!((row.status, row.output_model_id.as_ref()), (JobStatus::Completed, Some(&got.model)));
    let models = models_of(home, job);
    assert_eq!(models.iter().map(|m| &m.id).collect::<Vec<_>>(), [&got.model], "registered once");
    let (a, b) = (weights(&models[0].path), weights(&home.models().get(&want.model).unwrap().path));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs from the uninterrupted run's");
    }
    assert!(entries(&home.root().join("models")).iter().all(|n| !n.starts_with(".tmp-")));
}

/// An image spec that draws at every step: random crops (one picture is wider), flips,
/// offset noise, caption dropout, micro-batches of one accumulated by two, a cosine
/// schedule, validation images every 2 steps; 8 steps, a checkpoint every 3.
fn drawing_spec(env: &Env, method: Method, train_text_encoder: bool) -> TrainSpec {
    let image = ImageTrainOptions {
        crop: ImageCrop::Random,
        random_flip: true,
        noise_offset: 0.1,
        caption_dropout: 0.25,
        train_text_encoder,
        ..env.spec(lora()).image.unwrap()
    };
    TrainSpec {
        batch_size: 1,
        grad_accum: 2,
        max_steps: Some(8),
        checkpoint_every: Some(3),
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        image: Some(image),
        ..env.spec(method)
    }
}

fn run(env: &Env, spec: &TrainSpec) -> TrainReport {
    let job = env.home.training().create_job(spec).unwrap();
    env.home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap()
}

/// SIGKILL after the checkpoint of step 3, resume, compare with an uninterrupted run.
fn killed_then_resumed_matches(method: Method, train_text_encoder: bool) {
    let env = Env::new();
    let full = matches!(method, Method::Full);
    let spec = drawing_spec(&env, method, train_text_encoder);
    let want = run(&env, &spec);
    let engine = env.home.training();
    let job = engine.create_job(&spec).unwrap();
    kill_after_checkpoint(&env.home, &job.id, 3);
    assert_nothing_half_written(&env.home, &job.id, full);
    if train_text_encoder {
        let ck = env.home.root().join(engine.job(&job.id).unwrap().checkpoint.unwrap());
        assert!(weights(&ck).keys().any(|k| k.starts_with("text_encoder/")), "the text encoder is not checkpointed");
    }
    let got = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job.id, &got, &want, 3);
}

#[test]
fn a_lora_image_job_killed_after_a_checkpoint_resumes_to_the_uninterrupted_loss_and_weights() {
    killed_then_resumed_matches(lora(), false);
}

#[test]
fn a_full_image_fine_tune_killed_after_a_checkpoint_resumes_to_the_uninterrupted_loss_and_weights() {
    killed_then_resumed_matches(Method::Full, false);
}

#[test]
fn a_full_fine_tune_with_its_text_encoder_killed_after_a_checkpoint_resumes_to_the_same_loss_and_weights() {
    killed_then_resumed_matches(Method::Full, true);
}

/// Bytes, inode and modification time of each class image of a job.
fn class_images(home: &Home, job: &JobId) -> BTreeMap<String, (Vec<u8>, u64, SystemTime)> {
    let dir = job_dir(home, job).join("class_images");
    entries(&dir)
        .into_iter()
        .filter(|n| !n.starts_with(".tmp-"))
        .map(|n| {
            let p = dir.join(&n);
            let m = std::fs::metadata(&p).unwrap();
            (n, (std::fs::read(&p).unwrap(), m.ino(), m.modified().unwrap()))
        })
        .collect()
}

#[test]
fn dreambooth_killed_while_rendering_class_images_then_while_training_keeps_them_and_resumes_to_the_same_loss() {
    let env = Env::new();
    let engine = env.home.training();
    let image = ImageTrainOptions {
        instance_prompt: Some("a photo of sks square".into()),
        class_prompt: Some("a photo of a square".into()),
        num_class_images: 3,
        random_flip: true,
        ..env.spec(lora()).image.unwrap()
    };
    let spec = TrainSpec { max_steps: Some(6), checkpoint_every: Some(2), image: Some(image), ..env.spec(lora()) };
    let want = run(&env, &spec);
    let reference = env.home.models().get(&want.model).unwrap();
    let want_images = class_images(&env.home, reference.lineage.job.as_ref().unwrap());
    let names: Vec<&String> = want_images.keys().collect();
    assert_eq!(names, ["00000.png", "00001.png", "00002.png"]);

    // 1. Killed (abort) while writing the second class image: the first is kept.
    let job = engine.create_job(&spec).unwrap();
    let mut child = spawn_child(&env.home, &job.id, "write:00001.png=abort");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(6), "{status}");
    let j = engine.job(&job.id).unwrap();
    assert_eq!((j.status, j.step, j.checkpoint.as_deref()), (JobStatus::Interrupted, 0, None));
    let first = class_images(&env.home, &job.id);
    assert_eq!(first.keys().collect::<Vec<_>>(), ["00000.png"], "only complete class images are visible");
    assert_eq!(first["00000.png"].0, want_images["00000.png"].0);
    let class_dir = job_dir(&env.home, &job.id).join("class_images");
    let leftovers: Vec<String> = entries(&class_dir).into_iter().filter(|n| n.starts_with(".tmp-")).collect();
    assert!(leftovers.iter().all(|n| n.starts_with(".tmp-00001.png-")), "{leftovers:?}");

    // 2. Resumed in another child, SIGKILLed after the checkpoint of step 2: the kept
    //    image is not rendered again, the missing ones are rendered as the first run did.
    kill_after_checkpoint(&env.home, &job.id, 2);
    assert_nothing_half_written(&env.home, &job.id, false);
    let second = class_images(&env.home, &job.id);
    assert_eq!(second["00000.png"], first["00000.png"], "a kept class image was rewritten");
    for (name, (bytes, ..)) in &want_images {
        assert!(&second[name].0 == bytes, "{name} differs from the uninterrupted run's");
    }

    // 3. Resumed here from that checkpoint: no class image is touched.
    let got = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job.id, &got, &want, 2);
    assert_eq!(class_images(&env.home, &job.id), second, "class images were rendered again");

    // The write the abort interrupted is swept once old, leaving the class images only.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for n in &leftovers {
        std::fs::File::open(class_dir.join(n)).unwrap().set_modified(old).unwrap();
    }
    Home::open(env.home.root()).unwrap();
    assert_eq!(entries(&class_dir), ["00000.png", "00001.png", "00002.png"]);
}

#[test]
fn an_image_job_cancelled_from_another_process_ends_cancelled_and_resumes_to_the_same_loss() {
    let env = Env::new();
    let engine = env.home.training();
    // No periodic checkpoint: the one written on cancel is what the resume starts from.
    let spec = TrainSpec { checkpoint_every: None, ..drawing_spec(&env, Method::Full, false) };
    let want = run(&env, &spec);
    let job = engine.create_job(&spec).unwrap();
    let mut child = spawn_child(&env.home, &job.id, "");
    wait_for(&env.home, &job.id, &mut child, "step 3", |j| j.step >= 3);
    // This process's home handle cancels the run of the child's.
    let live = engine.job(&job.id).unwrap();
    assert_eq!(live.status, JobStatus::Running);
    assert!(live.heartbeat_at.is_some() && live.runner_pid == Some(child.id()));
    assert!(engine.cancel(&job.id).unwrap().cancel_requested);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("OUTCOME cancelled"), "{}: {stdout}", out.status);

    let j = engine.job(&job.id).unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert!(j.step >= 3 && j.step < 8, "cancelled at step {}", j.step);
    assert_eq!(j.checkpoint, Some(format!("jobs/{}/checkpoints/step-{}", job.id.0, j.step)));
    assert_nothing_half_written(&env.home, &job.id, true);
    let ckpts = job_dir(&env.home, &job.id).join("checkpoints");
    assert_eq!(entries(&ckpts), [format!("step-{}", j.step)], "one checkpoint, nothing staged");
    let samples = entries(&job_dir(&env.home, &job.id).join("samples"));
    assert!(samples.iter().all(|n| n.starts_with("step-")), "{samples:?}");
    let got = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job.id, &got, &want, j.step);
}

/// Runs the job in a child armed with `failpoints`, one of which must abort it (SIGABRT)
/// before it reports an outcome.
fn run_aborted_at(home: &Home, job: &JobId, failpoints: &str) {
    let out = spawn_child(home, job, failpoints).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.signal(), Some(6), "{failpoints} did not abort the child ({}): {stdout}", out.status);
    assert!(!stdout.contains("OUTCOME"), "{stdout}");
}

/// Interrupted writes under `dir` (any depth): `.tmp-*` entries (not looked into) and
/// temp files of another style (`*.tmp`), sorted.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-") || name.ends_with(".tmp") {
                out.push(e.path());
            } else if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Dates `paths` two hours back: old enough for the sweep of the next open of the home.
fn age(paths: &[PathBuf]) {
    let old = SystemTime::now() - Duration::from_secs(7200);
    for p in paths {
        std::fs::File::open(p).unwrap().set_modified(old).unwrap();
    }
}

/// Killed (failpoint `failpoint`, its second hit: the checkpoint of step 6, after the
/// one of step 3) while writing a checkpoint: the staging directory (`.tmp-*`, checked
/// by `staged`) is the only leftover; resumes from the checkpoint of step 3 to the
/// uninterrupted run's loss and weights, leaving nothing of its own; the leftover is
/// kept while young (another process may be writing it), swept by an open once old.
fn killed_while_checkpointing_resumes_from_the_previous_one(method: Method, failpoint: &str, staged: impl Fn(&Path)) {
    let full = matches!(method, Method::Full);
    let (env, want, job) = uninterrupted_then_aborted_at(method, &format!("{failpoint}=abort@2"));
    let engine = env.home.training();
    let j = engine.job(&job).unwrap();
    assert_eq!(j.status, JobStatus::Interrupted);
    assert!(j.step >= 3 && j.step <= 6, "killed at step {}", j.step);
    assert_nothing_half_written(&env.home, &job, full);
    let dir = job_dir(&env.home, &job);
    let ckpts = dir.join("checkpoints");
    let visible: Vec<String> = entries(&ckpts).into_iter().filter(|n| !n.starts_with(".tmp-")).collect();
    assert_eq!(visible, ["step-3"], "the checkpoint of step 6 became visible");
    let left = leftovers(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].parent(), Some(ckpts.as_path()), "{left:?}");
    staged(&left[0]);

    let got = engine.resume(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job, &got, &want, 3);
    assert_eq!(leftovers(&dir), left, "the resumed run left a write behind (or took the dead run's)");
    Home::open(env.home.root()).unwrap();
    assert_eq!(leftovers(&dir), left, "a young leftover was swept");
    age(&left);
    Home::open(env.home.root()).unwrap();
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new(), "the interrupted checkpoint was not swept");
    assert_eq!(leftovers(&env.home.root().join("models")), Vec::<PathBuf>::new());
}

/// Every file under `dir` (any depth), relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_lora_image_job_killed_before_its_checkpoint_is_renamed_resumes_from_the_previous_one() {
    // Step 6's checkpoint written in full in its staging directory, not renamed: not a
    // checkpoint yet.
    killed_while_checkpointing_resumes_from_the_previous_one(lora(), "checkpoint.before_rename", |staging| {
        assert_eq!(files(staging), ["optimizer.safetensors", "pytorch_lora_weights.safetensors", "trainer_state.json"]);
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(staging.join("trainer_state.json")).unwrap()).unwrap();
        assert_eq!(state["step"], 6);
    });
}

#[test]
fn a_full_image_fine_tune_killed_while_writing_its_checkpoint_unet_resumes_from_the_previous_one() {
    // Killed as the UNet's weights (one file of a directory) are being written.
    killed_while_checkpointing_resumes_from_the_previous_one(
        Method::Full,
        "write:diffusion_pytorch_model.safetensors",
        |staging| {
            let f = files(staging);
            assert_eq!(f.len(), 1, "{f:?}");
            assert!(f[0].starts_with("unet/.tmp-diffusion_pytorch_model.safetensors-"), "{f:?}");
        },
    );
}

/// The model an image job registered: complete (every recorded file there, at its
/// recorded size), loadable (a full fine-tune by `StableDiffusionPipeline`, both by the
/// registry's image generator, which renders with it), with the lineage of its job.
fn assert_registered_model(home: &Home, job: &JobId, model: &ModelRecord, want: &TrainReport) {
    let row = home.training().job(job).unwrap();
    let base = home.models().get(row.base_model_id.as_ref().unwrap()).unwrap();
    let kind = if matches!(row.spec.method, Method::Full) { ModelKind::Full } else { ModelKind::Lora };
    assert_eq!((model.kind, model.family), (kind, Family::StableDiffusion));
    assert_eq!(model.parent_id.as_ref(), Some(&base.id));
    let l = &model.lineage;
    assert_eq!((l.job.as_ref(), l.base.as_ref()), (Some(job), Some(&base.id)));
    assert_eq!(l.base_ref.as_deref(), Some(base.reference().as_str()));
    assert_eq!(l.dataset.as_ref(), row.dataset_id.as_ref());
    assert_eq!(l.spec.as_ref(), Some(&row.spec));
    let m = l.metrics.as_ref().unwrap();
    assert_eq!((m.steps, m.final_loss.map(f64::to_bits)), (want.steps, Some(want.final_loss.to_bits())));
    assert!(!model.files.is_empty());
    for f in &model.files {
        let len = std::fs::metadata(model.path.join(&f.name)).map(|m| m.len()).ok();
        assert_eq!(len, Some(f.bytes), "{}", f.name);
    }
    if kind == ModelKind::Full {
        StableDiffusionPipeline::load(&model.path, &LoadOptions::default()).unwrap();
    }
    let generator = home.image_generator(model.reference(), &Default::default()).unwrap();
    let req = ImageRequest { steps: Some(2), seed: Some(3), ..ImageRequest::new("a red square") };
    assert_eq!(generator.generate(&req).unwrap().images.len(), 1);
}

/// A drawing job of `method` run once uninterrupted (its report), then created again
/// and run in a child process killed at `failpoints`.
fn uninterrupted_then_aborted_at(method: Method, failpoints: &str) -> (Env, TrainReport, JobId) {
    let env = Env::new();
    let spec = drawing_spec(&env, method, false);
    let want = run(&env, &spec);
    let job = env.home.training().create_job(&spec).unwrap();
    run_aborted_at(&env.home, &job.id, failpoints);
    (env, want, job.id)
}

/// Killed just before the transaction that registers the model and completes the job
/// commits: nothing registered, the job interrupted; the model folder renamed into
/// place before that transaction is an orphan the open sweeps once old; resume (from
/// the checkpoint of step 6) registers once, the uninterrupted run's weights.
fn killed_before_the_registration_commits(method: Method) {
    let (env, want, job) = uninterrupted_then_aborted_at(method, "register.before_commit=abort");
    let engine = env.home.training();
    let j = engine.job(&job).unwrap();
    assert_eq!((j.status, j.output_model_id.as_ref()), (JobStatus::Interrupted, None));
    assert!(models_of(&env.home, &job).is_empty(), "registered before the commit");
    let models_dir = env.home.root().join("models");
    let registered: Vec<ModelRecord> = env.home.models().list(&Default::default()).unwrap();
    let orphans: Vec<PathBuf> = entries(&models_dir)
        .into_iter()
        .filter(|n| !registered.iter().any(|m| m.path.ends_with(n)))
        .map(|n| models_dir.join(n))
        .collect();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert!(orphans[0].file_name().unwrap().to_string_lossy().starts_with("mdl_"), "{orphans:?}");
    Home::open(env.home.root()).unwrap();
    assert!(orphans[0].is_dir(), "a young orphan was swept");
    age(&orphans);
    Home::open(env.home.root()).unwrap();
    assert!(!orphans[0].exists(), "the orphan model folder was not swept");

    let got = engine.resume(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job, &got, &want, 6);
    let again = Home::open(env.home.root()).unwrap();
    let models = models_of(&again, &job);
    assert_eq!(models.iter().map(|m| &m.id).collect::<Vec<_>>(), [&got.model], "registered once");
    assert_registered_model(&again, &job, &models[0], &want);
}

/// Killed just after that transaction commits: the job is completed with its model,
/// registered once; resuming or running it again is refused, `complete` reports it.
fn killed_after_the_registration_commits(method: Method) {
    let (env, want, job) = uninterrupted_then_aborted_at(method, "register.after_commit=abort");
    let engine = env.home.training();
    let models = models_of(&env.home, &job);
    assert_eq!(models.len(), 1, "registered once");
    let j = engine.job(&job).unwrap();
    assert_eq!((j.status, j.output_model_id.as_ref()), (JobStatus::Completed, Some(&models[0].id)));
    assert_registered_model(&env.home, &job, &models[0], &want);
    // The uninterrupted run's weights, bit for bit.
    let (a, b) = (weights(&models[0].path), weights(&env.home.models().get(&want.model).unwrap().path));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.iter().all(|(k, v)| v == &b[k]), "the weights differ from the uninterrupted run's");
    for e in [
        engine.resume(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err(),
        engine.run(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err(),
    ] {
        assert_eq!(e.code(), "in_use", "{e}");
    }
    let report = engine.complete(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!((&report.model, report.steps), (&models[0].id, want.steps));
    assert_eq!(report.final_loss.to_bits(), want.final_loss.to_bits());
    let again = Home::open(env.home.root()).unwrap();
    assert_eq!(models_of(&again, &job).iter().map(|m| &m.id).collect::<Vec<_>>(), [&models[0].id]);
    let j = again.training().job(&job).unwrap();
    assert_eq!((j.status, j.output_model_id.as_ref()), (JobStatus::Completed, Some(&models[0].id)));
    assert_eq!(leftovers(&again.root().join("models")), Vec::<PathBuf>::new());
}

#[test]
fn a_full_image_fine_tune_killed_before_the_registration_commits_resumes_and_registers_once() {
    killed_before_the_registration_commits(Method::Full);
}

#[test]
fn a_lora_image_job_killed_before_the_registration_commits_resumes_and_registers_once() {
    killed_before_the_registration_commits(lora());
}

#[test]
fn a_full_image_fine_tune_killed_after_the_registration_commits_is_complete_with_its_model() {
    killed_after_the_registration_commits(Method::Full);
}

#[test]
fn a_lora_image_job_killed_after_the_registration_commits_is_complete_with_its_model() {
    killed_after_the_registration_commits(lora());
}

/// Validation images (`samples/step-N.png`) by name, as bytes.
fn samples(home: &Home, job: &JobId) -> BTreeMap<String, Vec<u8>> {
    let dir = job_dir(home, job).join("samples");
    entries(&dir)
        .into_iter()
        .filter(|n| !n.starts_with(".tmp-"))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect()
}

#[test]
fn an_image_job_killed_while_writing_a_validation_image_points_at_a_complete_one_and_its_write_is_swept() {
    let env = Env::new();
    let engine = env.home.training();
    // Validation images at steps 2, 4, 6 and 8, checkpoints at 3 and 6.
    let spec = drawing_spec(&env, lora(), false);
    let want = run(&env, &spec);
    let want_job = env.home.models().get(&want.model).unwrap().lineage.job.unwrap();
    let want_samples = samples(&env.home, &want_job);
    let names: Vec<&String> = want_samples.keys().collect();
    assert_eq!(names, ["step-000002.png", "step-000004.png", "step-000006.png", "step-000008.png"]);
    let job = engine.create_job(&spec).unwrap();
    run_aborted_at(&env.home, &job.id, "write:step-000004.png=abort");

    // The row points at the image of step 2, whole; the write of step 4's is all that is left.
    let sample_dir = job_dir(&env.home, &job.id).join("samples");
    let pointed = |home: &Home| {
        let image = home.training().job(&job.id).unwrap().image.unwrap();
        assert_eq!(image, format!("jobs/{}/samples/step-000002.png", job.id.0));
        let png = anneal::diffusion::png::read(home.root().join(&image)).unwrap();
        assert_eq!((png.width, png.height, png.text("step")), (32, 16, Some("2")));
    };
    pointed(&env.home);
    assert_nothing_half_written(&env.home, &job.id, false);
    let got_samples = samples(&env.home, &job.id);
    assert_eq!(got_samples.keys().collect::<Vec<_>>(), ["step-000002.png"]);
    assert!(got_samples["step-000002.png"] == want_samples["step-000002.png"]);
    let left = leftovers(&sample_dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].file_name().unwrap().to_string_lossy().starts_with(".tmp-step-000004.png-"), "{left:?}");

    // Kept while young, swept by an open once old; the row's image stays.
    Home::open(env.home.root()).unwrap();
    assert_eq!(leftovers(&sample_dir), left);
    age(&left);
    let again = Home::open(env.home.root()).unwrap();
    assert_eq!(leftovers(&sample_dir), Vec::<PathBuf>::new(), "the interrupted validation image was not swept");
    pointed(&again);

    // Resumed from step 3: the images of steps 4.. rendered as the uninterrupted run did.
    let got = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_same_as(&env.home, &job.id, &got, &want, 3);
    let got_samples = samples(&env.home, &job.id);
    assert_eq!(got_samples.keys().collect::<Vec<_>>(), names);
    for (name, bytes) in &want_samples {
        assert!(&got_samples[name] == bytes, "{name} differs from the uninterrupted run's");
    }
    let image = engine.job(&job.id).unwrap().image.unwrap();
    assert_eq!(image, format!("jobs/{}/samples/step-000008.png", job.id.0));
    assert_eq!(leftovers(&job_dir(&env.home, &job.id)), Vec::<PathBuf>::new());
}
