//! Built-in from-scratch presets: small Llama-family configs with the byte-level
//! tokenizer, random weights from a seed, written as a normal Hugging Face directory
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
//! generation_config.json) that transformers can load too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, IoResultExt, Result};
use crate::tokenizer::{byte_level, CHATML_TEMPLATE};

/// A built-in model configuration.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
}

/// The presets, smallest first.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "nano",
        description: "Llama, hidden 64, 2 layers, 4 heads (2 kv): ~0.1M parameters, trains in seconds",
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 256,
    },
    Preset {
        name: "micro",
        description: "Llama, hidden 128, 4 layers, 4 heads: ~0.8M parameters, trains in about a minute on 2 cores",
        hidden_size: 128,
        intermediate_size: 352,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        max_position_embeddings: 512,
    },
    Preset {
        name: "mini",
        description: "Llama, hidden 256, 6 layers, 8 heads (4 kv): ~4M parameters, minutes per epoch on 2 cores",
        hidden_size: 256,
        intermediate_size: 704,
        num_hidden_layers: 6,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        max_position_embeddings: 1024,
    },
];

/// Finds a preset by name.
pub fn find(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::config(
            "preset",
            format!(
                "unknown preset `{name}` (available: {}; images: {})",
                PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                crate::diffusion::presets::presets().iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// Initialiser std of Llama-style models (`initializer_range`).
const INIT_STD: f32 = 0.02;

/// The config.json of a preset.
pub fn config_json(p: &Preset) -> serde_json::Value {
    let tok = byte_level::SPECIALS;
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.hidden_size / p.num_attention_heads,
        "max_position_embeddings": p.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": byte_level::VOCAB_SIZE,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": INIT_STD,
        "bos_token_id": tok[0].0,
        "eos_token_id": tok[0].0,
        "pad_token_id": tok[3].0,
        "torch_dtype": "float32",
    })
}

/// Tensor names and shapes of a preset, in HF's Llama naming.
pub fn tensor_shapes(p: &Preset) -> Vec<(String, Vec<usize>)> {
    let h = p.hidden_size;
    let hd = h / p.num_attention_heads;
    let kv = p.num_key_value_heads * hd;
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![byte_level::VOCAB_SIZE, h])];
    for i in 0..p.num_hidden_layers {
        let l = format!("model.layers.{i}");
        t.push((format!("{l}.input_layernorm.weight"), vec![h]));
        t.push((format!("{l}.self_attn.q_proj.weight"), vec![h, h]));
        t.push((format!("{l}.self_attn.k_proj.weight"), vec![kv, h]));
        t.push((format!("{l}.self_attn.v_proj.weight"), vec![kv, h]));
        t.push((format!("{l}.self_attn.o_proj.weight"), vec![h, h]));
        t.push((format!("{l}.post_attention_layernorm.weight"), vec![h]));
        t.push((format!("{l}.mlp.gate_proj.weight"), vec![p.intermediate_size, h]));
        t.push((format!("{l}.mlp.up_proj.weight"), vec![p.intermediate_size, h]));
        t.push((format!("{l}.mlp.down_proj.weight"), vec![h, p.intermediate_size]));
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    t
}

/// Writes a preset's directory into `dir` with weights drawn from `seed`
/// (normal(0, 0.02) for matrices, ones for norms, as transformers initialises Llama).
pub fn write_dir(p: &Preset, seed: u64, dir: &Path) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, INIT_STD).map_err(|e| Error::Internal(e.to_string()))?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = tensor_shapes(p)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = if name.ends_with("norm.weight") {
                vec![1.0f32; n]
            } else {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            (name, shape, data)
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = dir.join(name);
        let s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&p, s).with_path(&p)
    };
    write_json("config.json", &config_json(p))?;
    write_json("tokenizer.json", &byte_level::tokenizer_json())?;
    let sp = byte_level::SPECIALS;
    write_json(
        "tokenizer_config.json",
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": sp[0].1, "eos_token": sp[0].1, "pad_token": sp[3].1, "unk_token": null,
            "model_max_length": p.max_position_embeddings,
            "chat_template": CHATML_TEMPLATE,
            "add_bos_token": false, "add_eos_token": false,
        }),
    )?;
    write_json(
        "generation_config.json",
        &json!({ "bos_token_id": sp[0].0, "eos_token_id": [sp[0].0, sp[2].0], "pad_token_id": sp[3].0 }),
    )?;
    Ok(())
}

/// An f32 tensor borrowed for [`safetensors::serialize`]; its little-endian bytes are
/// made one tensor at a time, while writing.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes f32 tensors as a safetensors file with `{"format": "pt"}` metadata, through
/// the `safetensors` crate (header padded to 8 bytes, tensors sorted by name).
pub(crate) fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let views = tensors.iter().map(|(name, shape, data)| (name.as_str(), F32View { shape, data }));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Internal(format!("serialising {}: {e}", path.display())))?;
    // Not `serialize_to_file`: it writes a 0600 temporary file and does not fsync.
    let mut f = std::fs::File::create(path).with_path(path)?;
    f.write_all(&bytes).with_path(path)?;
    f.sync_all().with_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_dir_is_valid_and_seeded() {
        let d = tempfile::tempdir().unwrap();
        let p = find("nano").unwrap();
        write_dir(p, 7, d.path()).unwrap();
        let a = std::fs::read(d.path().join("model.safetensors")).unwrap();
        let hdr = crate::models::st_header::read_safetensors_header(&d.path().join("model.safetensors"))
            .map(|h| h.len())
            .unwrap_or(0);
        assert_eq!(hdr, tensor_shapes(p).len());
        let d2 = tempfile::tempdir().unwrap();
        write_dir(p, 7, d2.path()).unwrap();
        assert_eq!(a, std::fs::read(d2.path().join("model.safetensors")).unwrap());
        let d3 = tempfile::tempdir().unwrap();
        write_dir(p, 8, d3.path()).unwrap();
        assert_ne!(a, std::fs::read(d3.path().join("model.safetensors")).unwrap());
        assert_eq!(find("nope").unwrap_err().code(), "invalid_config");
    }

    #[test]
    fn write_safetensors_round_trips_through_the_crate() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("w.safetensors");
        let tensors = vec![
            ("z.weight".to_string(), vec![2, 3], (0..6).map(|i| i as f32 * 0.5).collect::<Vec<_>>()),
            ("a.bias".to_string(), vec![3], vec![-1.0, 0.0, f32::MAX]),
            ("s".to_string(), vec![], vec![7.0]),
        ];
        write_safetensors(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 3);
        for (name, shape, data) in &tensors {
            let t = st.tensor(name).unwrap();
            assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::F32, shape.as_slice()));
            let back: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            assert_eq!(&back, data);
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        // anneal's own header reader agrees.
        assert_eq!(crate::models::st_header::read_safetensors_header(&path).map(|h| h.len()).unwrap_or(0), 3);
        // Data that does not match its shape is a bug, not a broken file.
        let bad = vec![("x".to_string(), vec![2], vec![1.0f32])];
        assert_eq!(write_safetensors(&path, &bad).unwrap_err().code(), "internal");
    }
}
