//! `anneal generate`: one prompt streamed to stdout, or a chat read line by line.

use std::io::{BufRead, IsTerminal, Read, Write};

use anneal::{ChatMessage, Error, GenerationConfig, Generator, GeneratorOptions, Prompt};
use clap::Args;
use serde_json::{json, Value};

use super::cancel::Cancellable;
use super::output::Out;
use super::Ctx;

pub(crate) const GENERATE_EXAMPLES: &str = "\
Examples:
  anneal generate base@latest 'kxqe>' --max-new-tokens 8
  anneal generate support@production 'How do I reset my password?' --temperature 0.7 --top-p 0.9 --seed 1
  echo 'Once upon a time' | anneal generate storyteller
  anneal generate support --chat --system 'You are terse.'     # one message per line; Ctrl-D ends
  anneal generate smol 'Hi' --adapter support-lora@2 --no-merge
  anneal generate base 'abc>' --json                             # JSON lines: chunks, then the generation

Ctrl-C stops the generation (in chat mode, the current reply).";

/// `anneal generate MODEL [PROMPT]`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model: id, `name`, `name@3` or `name@alias` (a base, a fine-tune or an adapter).
    pub model: String,
    /// The prompt (default, or `-`: read from stdin). Not used with --chat.
    pub prompt: Option<String>,
    /// Chat: read one user message per line from stdin and stream each reply (chat template).
    #[arg(long)]
    pub chat: bool,
    /// Chat: a system message first.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, short = 'n', help_heading = "Sampling")]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy; above 0 samples.
    #[arg(long, short = 't', help_heading = "Sampling")]
    pub temperature: Option<f64>,
    /// Sample among the k most likely tokens.
    #[arg(long, help_heading = "Sampling")]
    pub top_k: Option<usize>,
    /// Sample among the smallest set of tokens with this total probability.
    #[arg(long, help_heading = "Sampling")]
    pub top_p: Option<f64>,
    /// Drop tokens less likely than min_p times the most likely one.
    #[arg(long, help_heading = "Sampling")]
    pub min_p: Option<f64>,
    /// Penalty on tokens already in the prompt or output (1 = off).
    #[arg(long, help_heading = "Sampling")]
    pub repetition_penalty: Option<f64>,
    /// Same seed, prompt and settings give the same output.
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// A string that ends generation (repeatable).
    #[arg(long, help_heading = "Sampling")]
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    #[arg(long, help_heading = "Sampling")]
    pub ignore_eos: bool,
    /// The adapter for this request (with --no-merge).
    #[arg(long, help_heading = "Loading")]
    pub adapter: Option<String>,
    /// Keep an adapter separate from its base (switchable per request) instead of merging it.
    #[arg(long, help_heading = "Loading")]
    pub no_merge: bool,
    /// Weights dtype: f32, bf16 or f16.
    #[arg(long, help_heading = "Loading")]
    pub dtype: Option<String>,
    /// Quantize the weights when loading: q8_0 or bf16 (products as GGML's; dtype f32).
    #[arg(long, help_heading = "Loading")]
    pub quantize: Option<String>,
    /// Do not record the call in the catalog's usage statistics.
    #[arg(long, help_heading = "Loading")]
    pub no_record: bool,
}

fn config(a: &GenerateArgs) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        adapter: a.adapter.clone(),
    }
}

fn stdin_error(e: std::io::Error) -> Error {
    Error::Io { path: "<stdin>".into(), source: e }
}

pub(crate) fn run(ctx: &Ctx, a: &GenerateArgs) -> anneal::Result<i32> {
    if a.chat && a.prompt.is_some() {
        return Err(Error::config("prompt", "--chat reads messages from stdin; leave PROMPT out"));
    }
    let prompt = if a.chat {
        None
    } else {
        match a.prompt.as_deref() {
            Some(p) if p != "-" => Some(p.to_string()),
            _ => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(stdin_error)?;
                Some(s.strip_suffix('\n').unwrap_or(&s).to_string())
            }
        }
    };
    let cfg = config(a);
    let home = ctx.home()?;
    let d = GeneratorOptions::default();
    let opts = GeneratorOptions {
        merge_adapter: !a.no_merge,
        dtype: a.dtype.clone().unwrap_or(d.dtype),
        record: !a.no_record,
        quantize: a.quantize.clone(),
    };
    let gen = home.generator(a.model.as_str(), &opts)?;
    match prompt {
        Some(p) => {
            let mut out = Out::new();
            let code = stream(ctx, &gen, p.into(), &cfg, &mut out)?.1;
            Ok(code)
        }
        None => chat(ctx, &gen, a, &cfg),
    }
}

/// Streams one reply; returns its text and the exit code (130 when interrupted).
fn stream(
    ctx: &Ctx,
    gen: &Generator,
    prompt: Prompt,
    cfg: &GenerationConfig,
    out: &mut Out,
) -> anneal::Result<(String, i32)> {
    let cancel = Cancellable::new();
    let mut text = String::new();
    let mut stream = gen.stream(prompt, cfg)?;
    for chunk in stream.by_ref() {
        let chunk = chunk?;
        text.push_str(&chunk.text);
        if ctx.json {
            out.json_line(&json!({ "type": "chunk", "text": chunk.text, "token_ids": chunk.token_ids }))?;
        } else {
            out.text(&chunk.text)?;
        }
        if cancel.is_cancelled() {
            if !ctx.json {
                out.line("")?;
            }
            eprintln!("generation stopped");
            return Ok((text, 130));
        }
    }
    let generation = stream.generation().cloned();
    if ctx.json {
        let mut v = serde_json::to_value(&generation).map_err(|e| Error::Internal(e.to_string()))?;
        if let Value::Object(m) = &mut v {
            m.insert("type".into(), Value::from("generation"));
        }
        out.json_line(&v)?;
    } else {
        out.line("")?;
        if let (Some(g), false) = (&generation, ctx.quiet) {
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "({} tokens, {}, {:.0} tokens/s)",
                    g.generated_tokens, g.finish_reason, g.timings.decode_tokens_per_s
                );
            }
        }
    }
    Ok((text, 0))
}

fn chat(ctx: &Ctx, gen: &Generator, a: &GenerateArgs, cfg: &GenerationConfig) -> anneal::Result<i32> {
    let mut messages: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s.as_str())).collect();
    let interactive = std::io::stdin().is_terminal() && !ctx.json;
    if interactive && !ctx.quiet {
        eprintln!("chatting with {} (Ctrl-D to end, Ctrl-C stops a reply)", gen.model().reference());
    }
    let mut out = Out::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!(">>> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(stdin_error)?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let (reply, code) = stream(ctx, gen, Prompt::Chat(messages.clone()), cfg, &mut out)?;
        if code != 0 {
            // The interrupted turn is forgotten; the chat goes on.
            messages.pop();
            continue;
        }
        messages.push(ChatMessage::new("assistant", reply));
    }
    if interactive {
        eprintln!();
    }
    Ok(0)
}
