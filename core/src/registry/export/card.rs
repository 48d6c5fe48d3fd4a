//! Model cards: the `README.md` every export carries (Hugging Face's YAML header, then
//! the model's lineage and figures, then how to load the export).

use std::fmt::Write as _;

use super::Chain;
use crate::types::{ExportFormat, ExportOptions, Family, Method, ModelKind};

/// Where the base of an adapter (or of a fine-tune) is found outside the home:
/// [`ExportOptions::base_model`], else the directory the base was registered from,
/// else its `name@version` (presets have no location outside the home).
pub(super) fn base_name(chain: &Chain, opts: &ExportOptions) -> String {
    if let Some(b) = &opts.base_model {
        return b.clone();
    }
    match &chain.base {
        Some(b) if b.source.starts_with("preset:") || b.source.is_empty() => b.reference(),
        Some(b) if b.source.starts_with("job:") => b.reference(),
        Some(b) => b.source.clone(),
        None => chain.model.lineage.base_ref.clone().unwrap_or_default(),
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

pub(super) fn render(chain: &Chain, format: ExportFormat, base_name: &str) -> String {
    let m = &chain.model;
    let lin = &m.lineage;
    let library = match (m.family, format) {
        (Family::StableDiffusion, _) => "diffusers",
        (_, ExportFormat::Peft) => "peft",
        (Family::Tabular, _) => "anneal",
        _ => "transformers",
    };
    let mut s = String::from("---\n");
    let _ = writeln!(s, "library_name: {library}");
    if !base_name.is_empty() && (m.kind == ModelKind::Lora || lin.base.is_some()) {
        let _ = writeln!(s, "base_model: {}", yaml_str(base_name));
    }
    let mut tags = vec!["anneal".to_string()];
    match lin.spec.as_ref().map(|s| &s.method) {
        Some(Method::Lora(_)) => tags.push("lora".into()),
        Some(Method::Full) => tags.push("full-fine-tune".into()),
        Some(Method::Classifier(_)) => tags.push("tabular-classification".into()),
        None => {}
    }
    if m.kind == ModelKind::Lora && format == ExportFormat::Hf {
        tags.push("merged".into());
    }
    tags.extend(m.tags.iter().cloned());
    let _ = writeln!(s, "tags:");
    for t in &tags {
        let _ = writeln!(s, "- {}", yaml_str(t));
    }
    s.push_str("---\n\n");
    let _ = writeln!(s, "# {}\n", m.reference());
    let what = match (m.kind, format) {
        (ModelKind::Lora, ExportFormat::Hf) => format!("the LoRA adapter {} merged into its base", m.reference()),
        (ModelKind::Lora, _) => "a LoRA adapter".to_string(),
        (k, _) => format!("a {} model", k.as_str()),
    };
    let _ = writeln!(s, "Exported by anneal {} from its registry: {what}.\n", env!("CARGO_PKG_VERSION"));
    s.push_str("| | |\n|---|---|\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|").replace('\n', " "));
    };
    row("id", format!("`{}`", m.id.0));
    row("family / architecture", format!("{} / {}", m.family.as_str(), m.architecture));
    row("parameters", m.params.to_string());
    if let Some(b) = &chain.base {
        row("base", format!("{} (`{}`, sha256 `{}`)", b.reference(), b.id.0, b.sha256));
    } else if let Some(b) = &lin.base_ref {
        row("base", b.clone());
    }
    for r in chain.base.iter().chain(std::iter::once(m)) {
        if r.files.iter().any(|f| f.name == crate::models::gguf::GGUF_FILE) {
            let what = if format == ExportFormat::Hf { ", dequantized for this export" } else { "" };
            row("GGUF weights", format!("{}: {} tensors from `{}`{what}", r.reference(), r.dtype, r.source));
        }
    }
    if let Some(p) = &lin.preset {
        row("preset", format!("{p} (seed {})", lin.seed.unwrap_or(0)));
    }
    if let Some(d) = &lin.dataset {
        row("training dataset", format!("`{}`", d.0));
    }
    if let Some(d) = &lin.eval_dataset {
        row("evaluation dataset", format!("`{}`", d.0));
    }
    if let Some(j) = &lin.job {
        row("training job", format!("`{}`", j.0));
    }
    if let Some(spec) = &lin.spec {
        let method = match &spec.method {
            Method::Lora(l) => format!("LoRA r={} alpha={} dropout={}", l.r, l.alpha, l.dropout),
            other => other.as_str().to_string(),
        };
        row("method", method);
        row(
            "schedule",
            format!(
                "{} epoch(s){}, batch {} x {} accumulated, seq_len {}, lr {} ({}, {} warmup), seed {}",
                spec.epochs,
                spec.max_steps.map(|n| format!(" (max {n} steps)")).unwrap_or_default(),
                spec.batch_size,
                spec.grad_accum,
                spec.seq_len,
                spec.learning_rate,
                spec.schedule.as_str(),
                spec.warmup_steps,
                spec.seed
            ),
        );
    }
    if let Some(x) = &lin.metrics {
        let mut parts = vec![format!("{} steps", x.steps)];
        if let Some(l) = x.final_loss {
            parts.push(format!("final train loss {l:.4}"));
        }
        if let Some(l) = x.eval_loss {
            parts.push(format!("eval loss {l:.4}"));
        }
        if let Some(a) = x.eval_accuracy {
            parts.push(format!("eval accuracy {a:.4}"));
        }
        row("metrics", parts.join(", "));
    }
    row("content sha256", format!("`{}`", m.sha256));
    row("registered", m.created_at.clone());
    s.push('\n');
    s.push_str(&usage(chain, format, base_name));
    s
}

fn usage(chain: &Chain, format: ExportFormat, base_name: &str) -> String {
    let m = &chain.model;
    match (m.family, format) {
        (Family::Gpt2 | Family::Llama, ExportFormat::Hf) => "## Use\n\n```python\nfrom transformers import \
             AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n\
             tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n"
            .to_string(),
        (Family::Gpt2 | Family::Llama, ExportFormat::Peft) => format!(
            "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n\
             base = AutoModelForCausalLM.from_pretrained({base})\nmodel = PeftModel.from_pretrained(base, \
             \"path/to/this/folder\")\n```\n",
            base = yaml_str(base_name)
        ),
        (Family::StableDiffusion, ExportFormat::Peft) => format!(
            "## Use\n\n```python\nfrom diffusers import StableDiffusionPipeline\npipe = \
             StableDiffusionPipeline.from_pretrained({base})\npipe.load_lora_weights(\"path/to/this/folder\")\n```\n",
            base = yaml_str(base_name)
        ),
        (Family::StableDiffusion, _) => "## Use\n\n```python\nfrom diffusers import StableDiffusionPipeline\n\
             pipe = StableDiffusionPipeline.from_pretrained(\"path/to/this/folder\")\n```\n"
            .to_string(),
        _ => "## Use\n\nImport the bundle into an anneal home: `home.models().import_bundle(path)`.\n".to_string(),
    }
}
