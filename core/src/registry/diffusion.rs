//! Diffusers directories in the registry: a Stable Diffusion pipeline directory
//! (`model_index.json` and its component folders) and a diffusers LoRA file
//! (`pytorch_lora_weights.safetensors`, any layout [`LoraFile`] reads).
//!
//! Checked before anything is copied, as the language models are:
//! - model_index.json parses, names a supported pipeline, and every component it names
//!   (not `[null, null]`) is a directory; the component configs fit together
//!   ([`PipelineConfig::read`]); every weight file is a safetensors file whose tensors
//!   have a dtype the loader reads.
//! - When the pipeline's weights fit in the load budget (the home's memory limit, at
//!   f32), the whole pipeline is loaded once ([`StableDiffusionPipeline::load`]): every
//!   tensor present with the shape its config implies, no tensor left over, the
//!   tokenizer against the text encoder, the scheduler config. Above the budget the
//!   shapes are not compared (the headers, configs, tokenizer and scheduler still are).
//! - A LoRA is read whole ([`LoraFile::read`]: pairs, ranks, dtypes) and each part
//!   (UNet, text encoder) fitted to that model of its parent as the generator will fit
//!   it ([`StableDiffusionPipeline::load_lora_file`]) when the model fits the budget;
//!   otherwise its module names and shapes are compared with the model's safetensors
//!   headers. A part for SDXL's second text encoder is refused.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::inspect::{count_params, file_kind, in_file, is_side_file, read_json, Inspected};
use crate::diffusion::{
    lora, ClipTextModel, ClipTokenizer, LoraComponent, LoraFile, LoraLayout, PipelineConfig, SchedulerConfig,
    SchedulerKind, StableDiffusionPipeline, UNet2DConditionModel, FALLBACK_SCHEDULER, LORA_WEIGHTS_FILE,
    MODEL_INDEX_FILE,
};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::st_header::{read_safetensors_header, TensorInfo, LOADABLE_DTYPES};
use crate::models::LoadOptions;
use crate::types::{Family, ModelKind, ModelRecord};

/// `model_type` of a registered pipeline.
pub const PIPELINE_MODEL_TYPE: &str = "stable-diffusion";

/// The weights of a diffusers component (UNet, VAE).
const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const DIFFUSERS_INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
const DIFFUSERS_FP16: &str = "diffusion_pytorch_model.fp16.safetensors";
/// The weights of a transformers component (the text encoder).
const TRANSFORMERS_WEIGHTS: &str = "model.safetensors";
const TRANSFORMERS_INDEX: &str = "model.safetensors.index.json";

/// A diffusers LoRA, read and checked on its own; [`check_lora`] fits it to the parent.
#[derive(Debug)]
pub(crate) struct DiffusionLora {
    pub(crate) file: LoraFile,
}

/// Whether a directory listing is a diffusers pipeline.
pub(crate) fn is_pipeline(names: &[String]) -> bool {
    names.iter().any(|n| n == MODEL_INDEX_FILE)
}

/// Whether a directory listing is a diffusers LoRA directory (and not an HF model or a
/// PEFT adapter).
pub(crate) fn is_lora_dir(names: &[String]) -> bool {
    names.iter().any(|n| n == LORA_WEIGHTS_FILE)
        && !names.iter().any(|n| n == "config.json" || n == "adapter_config.json")
}

/// An `invalid_config` error of the pipeline's configs as `invalid_data` naming the file
/// (`unet/config.json:in_channels` -> file `<dir>/unet/config.json`, field
/// `in_channels`; model_index.json otherwise).
fn pipeline_error(dir: &Path, e: Error) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => match field.split_once(':') {
            Some((file, f)) => Error::data(Location::file(dir.join(file)).field(f), reason),
            None => Error::data(Location::file(dir.join(MODEL_INDEX_FILE)).field(field), reason),
        },
        other => other,
    }
}

/// The regular files of a component folder worth keeping besides its weights.
fn side_files(dir: &Path, component: &str) -> Result<Vec<String>> {
    let sub = dir.join(component);
    let mut out = Vec::new();
    for e in fs::read_dir(&sub).with_path(&sub)? {
        let e = e.with_path(&sub)?;
        let name = e.file_name().to_string_lossy().to_string();
        let meta = fs::metadata(e.path()).with_path(e.path())?;
        let wanted = is_side_file(&name) || name.ends_with(".txt");
        if !wanted || name.ends_with(".safetensors.index.json") {
            continue;
        }
        if !meta.is_file() {
            return Err(Error::data(
                Location::file(e.path()),
                format!("is not a regular file ({}); model files must be regular files", file_kind(&meta)),
            ));
        }
        out.push(format!("{component}/{name}"));
    }
    Ok(out)
}

/// The weight files (relative names, the index included) of a component and their
/// tensors, found as its loader finds them.
fn component_weights(dir: &Path, component: &str, diffusers: bool) -> Result<(Vec<String>, Vec<TensorInfo>)> {
    let sub = dir.join(component);
    let (single, index, fp16) = if diffusers {
        (DIFFUSERS_WEIGHTS, DIFFUSERS_INDEX, Some(DIFFUSERS_FP16))
    } else {
        (TRANSFORMERS_WEIGHTS, TRANSFORMERS_INDEX, None)
    };
    let mut files: Vec<String> = Vec::new();
    let mut shards: Vec<String> = Vec::new();
    if sub.join(single).is_file() {
        shards.push(single.to_string());
    } else if sub.join(index).is_file() {
        files.push(index.to_string());
        for p in crate::models::load::shard_files(&sub, &sub.join(index))? {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            if !p.is_file() {
                return Err(Error::data(
                    Location::file(sub.join(index)).field("weight_map"),
                    format!("shard {name} is missing"),
                ));
            }
            shards.push(name);
        }
    } else if let Some(f) = fp16.filter(|f| sub.join(f).is_file()) {
        shards.push(f.to_string());
    } else {
        let bin = ["diffusion_pytorch_model.bin", "pytorch_model.bin"].iter().any(|b| sub.join(b).exists());
        let reason = if bin {
            "only a .bin (pickle) checkpoint is present; anneal reads safetensors only: convert it first".to_string()
        } else {
            format!("no weights: expected {single} or {index}")
        };
        return Err(Error::data(Location::file(sub.join(single)), reason));
    }
    let mut tensors = Vec::new();
    for s in &shards {
        let p = sub.join(s);
        for (name, info) in read_safetensors_header(&p)? {
            if !LOADABLE_DTYPES.contains(&info.dtype.as_str()) {
                return Err(Error::data(
                    Location::file(&p).field(name),
                    format!(
                        "tensor dtype {} is not supported for weights (supported: {})",
                        info.dtype,
                        LOADABLE_DTYPES.join(", ")
                    ),
                ));
            }
            tensors.push(info);
        }
    }
    files.extend(shards);
    Ok((files.into_iter().map(|f| format!("{component}/{f}")).collect(), tensors))
}

/// Inspects a Stable Diffusion pipeline directory (see the module docs); `budget` is
/// the most memory a full load for checking may take.
pub(crate) fn inspect_pipeline(dir: &Path, budget: u64) -> Result<Inspected> {
    let index_path = dir.join(MODEL_INDEX_FILE);
    let index = read_json(&index_path)?;
    let obj = index.as_object().ok_or_else(|| Error::data(Location::file(&index_path), "must be a JSON object"))?;
    // Every component model_index.json names must be there (diffusers would fail to load).
    let mut components = Vec::new();
    for (key, value) in obj {
        if key.starts_with('_') {
            continue;
        }
        if let Some([Value::String(_), Value::String(_)]) = value.as_array().map(Vec::as_slice) {
            if key.contains('/') || key.contains('\\') || key.starts_with('.') {
                return Err(Error::data(Location::file(&index_path).field(key), "not a component folder name"));
            }
            if !dir.join(key).is_dir() {
                return Err(Error::data(
                    Location::file(&index_path).field(key),
                    format!("names the component folder {key}/, which does not exist"),
                ));
            }
            components.push(key.clone());
        }
    }
    let cfg = PipelineConfig::read(dir).map_err(|e| pipeline_error(dir, e))?;
    let mut files = vec![MODEL_INDEX_FILE.to_string()];
    let mut tensors: Vec<TensorInfo> = Vec::new();
    for c in &components {
        files.extend(side_files(dir, c)?);
        let weights = match c.as_str() {
            "unet" | "vae" => Some(component_weights(dir, c, true)?),
            "text_encoder" => Some(component_weights(dir, c, false)?),
            _ => None,
        };
        if let Some((f, t)) = weights {
            files.extend(f);
            tensors.extend(t);
        }
    }
    files.sort();
    files.dedup();
    let (params, dtype) = count_params(tensors.iter());
    if params.saturating_mul(4) <= budget {
        StableDiffusionPipeline::load(dir, &LoadOptions::default()).map_err(|e| pipeline_error(dir, e))?;
    } else {
        // Too big to load here: the parts that load without the weights.
        ClipTokenizer::from_dir(dir.join("tokenizer")).map_err(|e| pipeline_error(dir, e))?;
        let sched = dir.join("scheduler").join("scheduler_config.json");
        let text = fs::read_to_string(&sched).with_path(&sched)?;
        let kind = SchedulerKind::from_class_name(cfg.index.scheduler_class()).unwrap_or(FALLBACK_SCHEDULER);
        SchedulerConfig::from_json_text(&text, Some(kind), Some(&sched)).map_err(|e| in_file(&sched, e))?;
    }
    let tokenizer = ["tokenizer/vocab.json", "tokenizer/tokenizer.json"]
        .iter()
        .find(|t| files.iter().any(|f| f == *t))
        .map(|t| t.to_string());
    Ok(Inspected {
        kind: ModelKind::Base,
        family: Some(Family::StableDiffusion),
        architecture: cfg.index.class_name.clone(),
        model_type: PIPELINE_MODEL_TYPE.to_string(),
        params,
        dtype,
        files,
        tokenizer,
        config: index,
        base_hint: None,
        adapter: None,
        diffusion_lora: None,
    })
}

fn layout_name(l: LoraLayout) -> &'static str {
    match l {
        LoraLayout::Peft => "peft",
        LoraLayout::Diffusers => "diffusers",
        LoraLayout::DiffusersOld => "diffusers-old",
        LoraLayout::Kohya => "kohya",
    }
}

/// Inspects the diffusers LoRA file `dir/file`.
pub(crate) fn inspect_lora(dir: &Path, file: &str) -> Result<Inspected> {
    let path = dir.join(file);
    let meta = fs::metadata(&path).with_path(&path)?;
    if !meta.is_file() {
        return Err(Error::data(
            Location::file(&path),
            format!("is not a regular file ({}); model files must be regular files", file_kind(&meta)),
        ));
    }
    let lora = LoraFile::read(&path)?;
    if let Some(m) = lora.modules.iter().find(|m| m.component == LoraComponent::TextEncoder2) {
        return Err(Error::data(
            Location::file(&path).field(&m.down_key),
            "LoRA for SDXL's second text encoder: anneal's Stable Diffusion pipelines (SD 1.x / 2.x) have one",
        ));
    }
    let header = read_safetensors_header(&path)?;
    let (params, dtype) = count_params(header.values());
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    for m in &lora.modules {
        *ranks.entry(m.rank()).or_default() += 1;
    }
    let r = ranks.iter().max_by_key(|(_, n)| **n).map(|(r, _)| *r).unwrap_or(0);
    let config = json!({
        "format": "diffusers-lora",
        "layout": layout_name(lora.layout),
        "r": r,
        "modules": lora.modules.len(),
        "components": lora.components().iter().map(|c| c.prefix()).collect::<Vec<_>>(),
        "weights": file,
    });
    Ok(Inspected {
        kind: ModelKind::Lora,
        family: None,
        architecture: "lora".into(),
        model_type: "lora".into(),
        params,
        dtype,
        files: vec![file.to_string()],
        tokenizer: None,
        config,
        base_hint: None,
        adapter: None,
        diffusion_lora: Some(DiffusionLora { file: lora }),
    })
}

/// The parent's `component` directory and its weight files.
fn component_of(parent: &ModelRecord, component: LoraComponent) -> (PathBuf, Vec<PathBuf>) {
    let name = component.prefix();
    let dir = parent.path.join(name);
    let prefix = format!("{name}/");
    let weights = parent
        .files
        .iter()
        .filter(|f| f.name.starts_with(&prefix) && f.name.ends_with(".safetensors"))
        .map(|f| parent.path.join(&f.name))
        .collect();
    (dir, weights)
}

/// Checks a diffusers LoRA against its parent (see the module docs): each part (UNet,
/// text encoder) against that model of the pipeline.
pub(crate) fn check_lora(lora: &DiffusionLora, parent: &ModelRecord, budget: u64) -> Result<()> {
    if parent.family != Family::StableDiffusion {
        return Err(Error::config(
            "parent",
            format!(
                "{} is a {} model; a diffusers LoRA ({}) needs a stable-diffusion parent",
                parent.reference(),
                parent.family.as_str(),
                lora.file.path.display()
            ),
        ));
    }
    for component in lora.file.components() {
        check_part(lora, parent, component, budget)?;
    }
    Ok(())
}

fn check_part(lora: &DiffusionLora, parent: &ModelRecord, component: LoraComponent, budget: u64) -> Result<()> {
    let (dir, weights) = component_of(parent, component);
    let mut headers = BTreeMap::new();
    for w in &weights {
        headers.extend(read_safetensors_header(w)?);
    }
    let elems: u64 = headers.values().map(|t| t.shape.iter().product::<u64>()).sum();
    let what = component.describe();
    if elems.saturating_mul(4) <= budget && !headers.is_empty() {
        return match component {
            LoraComponent::Unet => {
                lora::load(&mut UNet2DConditionModel::load(&dir, &LoadOptions::default())?, &lora.file)
            }
            _ => lora::load(&mut ClipTextModel::load(&dir, &LoadOptions::default())?, &lora.file),
        };
    }
    // Header-only: each module a linear layer (or 1x1 convolution) of the model with the
    // features of its matrices (transformers 5 saves CLIP without `text_model.`).
    let mut by_name: HashMap<String, (String, Vec<u64>)> = HashMap::new();
    for (name, info) in &headers {
        if let Some(module) = name.strip_suffix(".weight") {
            let mut names = vec![module.to_string()];
            if component != LoraComponent::Unet && !module.starts_with("text_model.") {
                names.push(format!("text_model.{module}"));
            }
            for n in names {
                by_name.insert(n.replace('.', "_"), (n.clone(), info.shape.clone()));
                by_name.insert(n.clone(), (n, info.shape.clone()));
            }
        }
    }
    let file = &lora.file.path;
    for m in lora.file.modules.iter().filter(|m| m.component == component) {
        let at = Location::file(file).field(&m.down_key);
        let Some((name, shape)) = by_name.get(&m.name) else {
            return Err(Error::data(
                at,
                format!("no module `{}` in the {what} of {}: a LoRA for another model?", m.name, parent.reference()),
            ));
        };
        let linear = shape.len() == 2 || (shape.len() == 4 && shape[2..] == [1, 1]);
        if !linear {
            return Err(Error::data(
                at,
                format!("LoRA on the convolution `{name}` (LoCon) is not supported; only linear layers"),
            ));
        }
        let (out_f, in_f) = (shape[0] as usize, shape[1] as usize);
        let r = m.rank();
        if m.down.dims().get(1) != Some(&in_f) {
            return Err(Error::data(
                at,
                format!("shape {:?} does not fit `{name}` ({in_f} inputs): expected [{r}, {in_f}]", m.down.dims()),
            ));
        }
        if m.up.dims().first() != Some(&out_f) {
            return Err(Error::data(
                Location::file(file).field(&m.up_key),
                format!("shape {:?} does not fit `{name}` ({out_f} outputs): expected [{out_f}, {r}]", m.up.dims()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::catalog::Catalog;
    use crate::registry::ModelRegistry;
    use crate::store::Store;
    use crate::types::{Lineage, LoraConfig, RegisterOptions};
    use crate::util::StagingDir;

    fn tiny_sd() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd")
    }

    fn registry(root: &Path) -> ModelRegistry {
        fs::create_dir_all(root.join("models")).unwrap();
        let catalog = Catalog::open(&root.join("anneal.db")).unwrap();
        ModelRegistry::new(Arc::new(Store { root: root.to_path_buf(), catalog, memory_limit: 1 << 30 }))
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

    #[test]
    fn trained_pipelines_and_loras_register_under_their_base() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(d.path());
        let base = reg.register_dir(tiny_sd(), &RegisterOptions::default()).unwrap();
        assert_eq!((base.family, base.kind), (Family::StableDiffusion, ModelKind::Base));

        // (a) A full fine-tune: the base's layout with new UNet weights.
        let mut staging = StagingDir::new(&reg.staging_root()).unwrap();
        copy_tree(&tiny_sd(), staging.path());
        fs::remove_file(staging.path().join("reference.safetensors")).unwrap();
        let unet = UNet2DConditionModel::load(tiny_sd().join("unet"), &LoadOptions::default()).unwrap();
        let shifted: Vec<(String, candle_core::Tensor)> =
            unet.named_weights().unwrap().into_iter().map(|(n, t)| (n, (t + 0.01).unwrap())).collect();
        let shifted: HashMap<String, candle_core::Tensor> = shifted.into_iter().collect();
        candle_core::safetensors::save(&shifted, staging.path().join("unet").join(DIFFUSERS_WEIGHTS)).unwrap();
        let lineage = Lineage { base_ref: Some(base.reference()), ..Default::default() };
        let full =
            reg.register_trained(&mut staging, "tuned", &base, "job:job_1".into(), lineage, &|_, _| Ok(())).unwrap();
        assert_eq!((full.kind, full.family), (ModelKind::Full, Family::StableDiffusion));
        assert_eq!(full.parent_id.as_ref(), Some(&base.id));
        assert_eq!(full.params, base.params);
        let unet_file = full.files.iter().find(|f| f.name == "unet/diffusion_pytorch_model.safetensors").unwrap();
        let base_file = base.files.iter().find(|f| f.name == "unet/diffusion_pytorch_model.safetensors").unwrap();
        assert_ne!(unet_file.sha256, base_file.sha256);
        StableDiffusionPipeline::load(&full.path, &LoadOptions::default()).unwrap();

        // (b) A LoRA, as UNet2DConditionModel::save_lora writes it.
        let mut unet = UNet2DConditionModel::load(tiny_sd().join("unet"), &LoadOptions::default()).unwrap();
        unet.add_lora(&LoraConfig { r: 2, alpha: 4.0, ..Default::default() }, 7).unwrap();
        let mut staging = StagingDir::new(&reg.staging_root()).unwrap();
        unet.save_lora(staging.path()).unwrap();
        let lora =
            reg.register_trained(&mut staging, "tuned-lora", &base, "job:job_2".into(), Lineage::default(), &|_, _| {
                Ok(())
            });
        let lora = lora.unwrap();
        assert_eq!((lora.kind, lora.family), (ModelKind::Lora, Family::StableDiffusion));
        assert_eq!(lora.parent_id.as_ref(), Some(&base.id));
        assert_eq!(lora.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), [LORA_WEIGHTS_FILE]);
        assert_eq!(lora.config["r"], 2);
        let mut fresh = UNet2DConditionModel::load(tiny_sd().join("unet"), &LoadOptions::default()).unwrap();
        fresh.load_lora(&lora.path).unwrap();
        assert_eq!(fresh.lora_modules(), unet.lora_modules());

        // A LoRA whose shapes do not fit the base is refused naming its file and key.
        let mut staging = StagingDir::new(&reg.staging_root()).unwrap();
        let mut other = UNet2DConditionModel::load(tiny_sd().join("unet"), &LoadOptions::default()).unwrap();
        other.add_lora(&LoraConfig { r: 2, ..Default::default() }, 1).unwrap();
        let p = other.save_lora(staging.path()).unwrap();
        let mut st = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
        let key = st.keys().find(|k| k.ends_with("lora_A.weight")).unwrap().clone();
        st.insert(
            key.clone(),
            candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&st, &p).unwrap();
        let e = reg
            .register_trained(&mut staging, "bad", &base, "job:x".into(), Lineage::default(), &|_, _| Ok(()))
            .unwrap_err();
        assert_eq!(e.code(), "invalid_data", "{e}");
        assert!(e.to_string().contains(&key) && e.to_string().contains(LORA_WEIGHTS_FILE), "{e}");
        assert_eq!(reg.list(&Default::default()).unwrap().len(), 3);
    }
}
