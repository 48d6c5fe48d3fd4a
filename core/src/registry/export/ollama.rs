//! Ollama export: a folder with `model.gguf`, a `Modelfile` and a README, for
//! `ollama create <name> -f Modelfile`.
//!
//! The Modelfile has `FROM ./model.gguf` (and `ADAPTER ./adapter.gguf` for an adapter
//! exported with `merge: false`), a `TEMPLATE` translated from the model's chat
//! template, `PARAMETER stop` for each end-of-generation token, and the generation
//! defaults of `generation_config.json` (temperature, top_p, top_k, repeat_penalty,
//! num_predict; `do_sample: false` becomes temperature 0).
//!
//! The template is translated by rendering the Jinja template on sample conversations
//! and reading off, for each role, the text before and after a message's content, and
//! the generation prompt: templates that wrap each message on its own (ChatML, Llama 3,
//! Zephyr, ...) become a Go `range .Messages` template, kept only when it renders a
//! longer conversation exactly as the Jinja template does. Anything else (a system
//! prompt folded into the first user turn, as Llama 2's `[INST]`) gets
//! `{{ .Prompt }}` and a comment saying so.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value as Json;

use super::{gguf, Chain};
use crate::error::{IoResultExt, Result};
use crate::registry::ModelRegistry;
use crate::tokenizer::{render_chat_template, Tokenizer};
use crate::types::{ChatMessage, ExportOptions, GgufType};
use crate::util;

pub(super) fn write(
    registry: &ModelRegistry,
    chain: &Chain,
    dir: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let merge = opts.merge.unwrap_or(true) || chain.base.is_none();
    let base = chain.base.as_ref().unwrap_or(&chain.model);
    if merge {
        gguf::write_model(registry, chain, &dir.join("model.gguf"), opts, step)?;
    } else {
        let base_chain = Chain { model: base.clone(), base: None };
        gguf::write_model(registry, &base_chain, &dir.join("model.gguf"), opts, step)?;
        gguf::write_adapter(&chain.model, base, &dir.join("adapter.gguf"), opts, step)?;
    }
    let tok = Tokenizer::load(base)?;
    let gen = read_json(&base.path.join("generation_config.json"))?;
    let name = opts.name.clone().unwrap_or_else(|| ollama_name(&chain.model.name));
    let modelfile = modelfile(&chain.model.reference(), &tok, gen.as_ref(), !merge);
    util::write_atomic(&dir.join("Modelfile"), modelfile.as_bytes())?;
    let q = opts.quantization.unwrap_or(GgufType::F16);
    let readme = format!(
        "# {name}\n\n{} exported by anneal {} for [Ollama](https://ollama.com) ({q}{}).\n\n\
         ```sh\nollama create {name} -f Modelfile\nollama run {name}\n```\n\n\
         `model.gguf` also runs in llama.cpp: `llama-cli -m model.gguf{}`.\n",
        chain.model.reference(),
        env!("CARGO_PKG_VERSION"),
        if merge { "" } else { ", the adapter in adapter.gguf" },
        if merge { "" } else { " --lora adapter.gguf" },
    );
    util::write_atomic(&dir.join("README.md"), readme.as_bytes())?;
    step()
}

fn read_json(p: &Path) -> Result<Option<Json>> {
    if !p.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(p).with_path(p)?;
    Ok(serde_json::from_str(&text).ok())
}

/// A name `ollama create` takes: lowercase, other characters than `a-z0-9._-` as `-`.
fn ollama_name(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

/// A Modelfile string literal.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn modelfile(reference: &str, tok: &Tokenizer, gen: Option<&Json>, adapter: bool) -> String {
    let mut m = format!("# {reference}, exported by anneal {}\nFROM ./model.gguf\n", env!("CARGO_PKG_VERSION"));
    if adapter {
        m.push_str("ADAPTER ./adapter.gguf\n");
    }
    match tok.chat_template().map(|t| translate(t, tok)) {
        Some(Ok(go)) => {
            let _ = writeln!(m, "TEMPLATE \"\"\"{go}\"\"\"");
        }
        Some(Err(why)) => {
            let _ = write!(
                m,
                "# The model's chat template could not be translated to a Go template ({why}):\n\
                 # the prompt is passed as it is.\nTEMPLATE \"\"\"{{{{ .Prompt }}}}\"\"\"\n"
            );
        }
        None => m.push_str(
            "# The model has no chat template: the prompt is passed as it is.\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n",
        ),
    }
    let mut stops: Vec<String> = Vec::new();
    for id in tok.eos_token_ids() {
        if let Some(t) = tok.id_to_token(*id) {
            if !stops.contains(&t) {
                stops.push(t);
            }
        }
    }
    for s in &stops {
        let _ = writeln!(m, "PARAMETER stop {}", quoted(s));
    }
    if let Some(g) = gen {
        let num = |k: &str| g.get(k).and_then(Json::as_f64);
        if g.get("do_sample").and_then(Json::as_bool) == Some(false) {
            m.push_str("PARAMETER temperature 0\n");
        } else if let Some(t) = num("temperature") {
            let _ = writeln!(m, "PARAMETER temperature {t}");
        }
        if let Some(p) = num("top_p") {
            let _ = writeln!(m, "PARAMETER top_p {p}");
        }
        if let Some(k) = g.get("top_k").and_then(Json::as_u64) {
            let _ = writeln!(m, "PARAMETER top_k {k}");
        }
        if let Some(r) = num("repetition_penalty") {
            let _ = writeln!(m, "PARAMETER repeat_penalty {r}");
        }
        if let Some(n) = g.get("max_new_tokens").and_then(Json::as_u64) {
            let _ = writeln!(m, "PARAMETER num_predict {n}");
        }
    }
    m
}

/// Text before and after a message's content, per role.
#[derive(Debug, Clone, Default, PartialEq)]
struct Wrap {
    before: String,
    after: String,
}

/// The chat template of `tok` as an Ollama Go template (see the module doc), or why not.
fn translate(template: &str, tok: &Tokenizer) -> std::result::Result<String, String> {
    let bos = tok.bos_token().map(|t| t.text.clone());
    let eos = tok.eos_token().map(|t| t.text.clone());
    let render = |msgs: &[(&str, &str)], gen: bool| -> std::result::Result<String, String> {
        let msgs: Vec<ChatMessage> = msgs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect();
        let out =
            render_chat_template(template, &msgs, gen, bos.as_deref(), eos.as_deref()).map_err(|e| e.to_string())?;
        // llama.cpp puts BOS in itself (add_bos_token): a template's own BOS is dropped.
        Ok(match bos.as_deref() {
            Some(b) if !b.is_empty() => out.strip_prefix(b).unwrap_or(&out).to_string(),
            _ => out,
        })
    };
    let split = |text: &str, marker: &str| -> std::result::Result<Wrap, String> {
        let role = match &marker[2..3] {
            "S" => "system",
            "U" => "user",
            _ => "assistant",
        };
        let i = text.find(marker).ok_or(format!("a {role} message is not a turn of its own"))?;
        Ok(Wrap { before: text[..i].to_string(), after: text[i + marker.len()..].to_string() })
    };
    let user = render(&[("user", "QQU1")], false)?;
    let wu = split(&user, "QQU1")?;
    let with_gen = render(&[("user", "QQU1")], true)?;
    let gen_prompt = with_gen.strip_prefix(&user).ok_or("the generation prompt is not a suffix")?.to_string();
    let ua = render(&[("user", "QQU1"), ("assistant", "QQA1")], false)?;
    let wa = split(ua.strip_prefix(&user).ok_or("an assistant turn changes the turns before it")?, "QQA1")?;
    let su = render(&[("system", "QQS1"), ("user", "QQU1")], false)?;
    let ws = split(su.strip_suffix(&user).ok_or("the system message is not a turn of its own")?, "QQS1")?;
    let parts = [&wu, &wa, &ws];
    if parts.iter().any(|w| {
        w.before.contains("{{") || w.after.contains("{{") || w.before.contains("\"\"\"") || w.after.contains("\"\"\"")
    }) || gen_prompt.contains("{{")
        || gen_prompt.contains("\"\"\"")
    {
        return Err("its text contains `{{` or `\"\"\"`".into());
    }
    // Check on a longer conversation.
    let convo = [("system", "Be brief."), ("user", "Hi!"), ("assistant", "Hello."), ("user", "2+2?")];
    let want = render(&convo, true)?;
    let mut got = String::new();
    for (role, content) in convo {
        let w = match role {
            "system" => &ws,
            "user" => &wu,
            _ => &wa,
        };
        got.push_str(&w.before);
        got.push_str(content);
        got.push_str(&w.after);
    }
    got.push_str(&gen_prompt);
    if got != want {
        return Err("it does not wrap each message on its own".into());
    }
    Ok(format!(
        "{{{{- range .Messages }}}}{{{{ if eq .Role \"system\" }}}}{}{{{{ .Content }}}}{}\
         {{{{ else if eq .Role \"user\" }}}}{}{{{{ .Content }}}}{}\
         {{{{ else if eq .Role \"assistant\" }}}}{}{{{{ .Content }}}}{}{{{{ end }}}}{{{{ end }}}}{}",
        ws.before, ws.after, wu.before, wu.after, wa.before, wa.after, gen_prompt
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chatml_translates_and_llama2_falls_back() {
        let tok = Tokenizer::byte_level().unwrap();
        let go = translate(crate::tokenizer::CHATML_TEMPLATE, &tok).unwrap();
        assert!(
            go.starts_with("{{- range .Messages }}{{ if eq .Role \"system\" }}<|im_start|>system\n{{ .Content }}"),
            "{go}"
        );
        assert!(go.contains("<|im_start|>user\n{{ .Content }}<|im_end|>\n"), "{go}");
        assert!(go.ends_with("<|im_start|>assistant\n"), "{go}");
        let llama2 = "{% for message in messages %}{% if message['role'] == 'system' %}{% set sys = message['content'] %}\
            {% elif message['role'] == 'user' %}[INST] {% if sys is defined %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}\
            {{ message['content'] }} [/INST]{% else %} {{ message['content'] }}</s>{% endif %}{% endfor %}";
        let e = translate(llama2, &tok).unwrap_err();
        assert!(e.contains("system"), "{e}");
        let mf = modelfile("m@1", &tok, Some(&serde_json::json!({"do_sample": false, "top_k": 5})), false);
        assert!(mf.contains("FROM ./model.gguf\nTEMPLATE \"\"\"{{- range .Messages }}"), "{mf}");
        assert!(mf.contains("PARAMETER stop \"<|endoftext|>\"\nPARAMETER stop \"<|im_end|>\""), "{mf}");
        assert!(mf.contains("PARAMETER temperature 0\nPARAMETER top_k 5\n"), "{mf}");
        assert_eq!(ollama_name("My Model_v2"), "my-model_v2");
    }
}
