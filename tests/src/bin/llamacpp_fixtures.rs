//! Writes the files of the llama.cpp check in the test suite (tests/llamacpp/check.mjs,
//! run by scripts/test-llamacpp.sh): the tiny random GPT-2, Qwen2 and Llama fixtures of
//! tests/fixtures exported as GGUF f32 and q8_0, and `<out>/anneal.json` with, for
//! each file:
//!
//! - `prompt_ids`, `anneal`: the original model (safetensors) with its tokenizer.json:
//!   the prompt's ids and 16 greedy tokens, run by the generator in f32;
//! - `logits`: that model's logits (f32, one forward pass over the prompt and the first
//!   15 greedy tokens) after the last prompt token and after each greedy token, 16
//!   rows of the vocabulary (random weights give flat logits and repetitive tokens:
//!   the logits are the sharper check, and their top-2 margins say where a choice is
//!   a near-tie);
//! - `gguf_prompt_ids`, `anneal_gguf`: the GGUF file registered back (`register_file`:
//!   the tokenizer derived from its metadata) and run by anneal's generator from the
//!   file's own weights (q8_0 blocks as they are): the prompt's ids and 16 greedy tokens;
//! - `anneal_gguf_next`: that generator's next token after the prompt and each of the
//!   first 15 tokens of `anneal` (teacher-forced along the original's path).
//!
use std::path::PathBuf;

use anneal::{
    load_model, ExportFormat, ExportOptions, GenerationConfig, GeneratorOptions, GgufType, Home, LoadOptions,
    ModelRecord, RegisterOptions, Tokenizer,
};
use candle_core::{Device, Tensor};
use serde_json::json;

const PROMPT: &str = "the cat sat on";
const NEW_TOKENS: usize = 16;
const FIXTURES: [&str; 3] = ["tiny-gpt2", "tiny-qwen2", "tiny-llama"];

fn generator(home: &Home, rec: &ModelRecord) -> anneal::Result<anneal::Generator> {
    home.generator(rec.id.clone(), &GeneratorOptions { record: false, ..Default::default() })
}

/// The prompt's ids with `rec`'s tokenizer, and `n` greedy tokens after them.
fn greedy(home: &Home, rec: &ModelRecord, n: usize) -> anneal::Result<(Vec<u32>, Vec<u32>)> {
    let ids = Tokenizer::load(rec)?.encode(PROMPT, false)?;
    let cfg = GenerationConfig { max_new_tokens: Some(n), ignore_eos: true, ..Default::default() };
    let out = generator(home, rec)?.generate(ids.clone(), &cfg)?;
    Ok((ids, out.token_ids))
}

/// The logits after each of the last `rows` tokens of `ids` (one forward pass, f32).
fn logits(rec: &ModelRecord, ids: &[u32], rows: usize) -> anneal::Result<Vec<Vec<f32>>> {
    let model = load_model(rec, &LoadOptions::default())?;
    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let all = model.forward(&x, 0)?.squeeze(0)?.to_vec2::<f32>()?;
    Ok(all[all.len().saturating_sub(rows)..].to_vec())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, fixtures] = args.as_slice() else {
        return Err("usage: llamacpp_fixtures <out dir> <tests/fixtures dir>".into());
    };
    let (out, fixtures) = (PathBuf::from(out), PathBuf::from(fixtures));
    std::fs::create_dir_all(&out)?;
    let home = Home::open(out.join("home"))?;
    let named = |n: &str| RegisterOptions { name: Some(n.to_string()), ..Default::default() };
    let mut entries = Vec::new();
    for fixture in FIXTURES {
        let orig = home.models().register_dir(fixtures.join(fixture), &named(fixture))?;
        let (prompt_ids, anneal) = greedy(&home, &orig, NEW_TOKENS)?;
        let path: Vec<u32> = prompt_ids.iter().chain(&anneal[..NEW_TOKENS - 1]).copied().collect();
        let logits = logits(&orig, &path, NEW_TOKENS)?;
        for q in [GgufType::F32, GgufType::Q8_0] {
            let file = out.join(format!("{fixture}-{q}.gguf"));
            let opts = ExportOptions { quantization: Some(q), overwrite: true, ..Default::default() };
            home.models().export(&orig.id, ExportFormat::Gguf, &file, &opts)?;
            let rec = home.models().register_file(&file, &named(&format!("{fixture}-{q}")))?;
            let (gguf_prompt_ids, anneal_gguf) = greedy(&home, &rec, NEW_TOKENS)?;
            let g = generator(&home, &rec)?;
            let one = GenerationConfig { max_new_tokens: Some(1), ignore_eos: true, ..Default::default() };
            let next = (prompt_ids.len()..=path.len())
                .map(|end| Ok(g.generate(path[..end].to_vec(), &one)?.token_ids[0]))
                .collect::<anneal::Result<Vec<u32>>>()?;
            entries.push(json!({
                "name": format!("{fixture} {q}"), "type": q.as_str(), "model": file, "prompt": PROMPT,
                "prompt_ids": prompt_ids, "anneal": anneal, "logits": logits,
                "gguf_prompt_ids": gguf_prompt_ids, "anneal_gguf": anneal_gguf, "anneal_gguf_next": next,
            }));
        }
    }
    let path = out.join("anneal.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&entries)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
