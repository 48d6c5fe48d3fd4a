// The llama.cpp check of the test suite (scripts/test-llamacpp.sh): anneal's GGUF
// exports (f32 and q8_0) of the tiny random fixtures (tests/fixtures: GPT-2, Qwen2,
// Llama with an untied head), written by the `llamacpp_fixtures` binary
// (tests/src/bin), loaded by llama.cpp through node-llama-cpp's prebuilt CPU binaries
// (no compiler, no download).
//
// For every file, fails unless:
// - llama.cpp tokenizes the prompt to the ids anneal gives it, both with the original
//   tokenizer.json and with the tokenizer anneal derives from the GGUF file;
// - llama.cpp's logits, teacher-forced along the original model's greedy path (the
//   prompt, then anneal's tokens), are within a tolerance of anneal's f32 logits
//   (random weights give flat logits and repetitive tokens: the logits are the sharp
//   check of the tensor layout and the quantized blocks);
// - f32: llama.cpp's 16 greedy tokens equal anneal's on the original safetensors model
//   and anneal's on this GGUF file (registered back with register_file);
// - q8_0: at each of the 16 positions of that path, llama.cpp's next token equals
//   anneal's on this GGUF file (run from its q8_0 blocks) and the original's, except
//   where the original's two best logits are within NEAR_TIE of each other: there the
//   8-bit rounding (which llama.cpp and anneal do slightly differently: GGML keeps the
//   activations' block scales in f16, anneal in f32) may pick either. Free-running
//   greedy tokens are printed; after a near-tie they follow another path.
//
// Run: node tests/llamacpp/check.mjs <out dir of llamacpp_fixtures>

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test, after } from "node:test";

import { getLlama, LlamaLogLevel } from "node-llama-cpp";

// Largest |llama.cpp logit - anneal logit| allowed, relative to the row's largest
// |logit|. f32 Llama / Qwen2 differ by the order of the sums (seen: 4e-7); GPT-2's
// GELU goes through GGML's f16 lookup table (seen: 1.8e-4); q8_0 adds GGML's 8-bit
// activations against anneal's f32 ones.
const LOGIT_TOL = { f32: 1e-5, f32_gpt2: 1e-3, q8_0: 5e-2 };
// A choice is a near-tie when the two best logits differ by less than this fraction
// of the row's largest |logit|.
const NEAR_TIE = 0.02;

const out = process.argv[2];
if (!out) {
  console.error("usage: node tests/llamacpp/check.mjs <out dir of llamacpp_fixtures>");
  process.exit(2);
}
const entries = JSON.parse(readFileSync(path.join(out, "anneal.json"), "utf8"));
// Prebuilt CPU binaries only: never download or compile llama.cpp.
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
after(() => llama.dispose());

const argmax = (row) => row.reduce((best, v, i) => (v > row[best] ? i : best), 0);
const margin = (row) => {
  const [a, b] = [...row].sort((x, y) => y - x);
  return (a - b) / Math.max(...row.map(Math.abs));
};

for (const e of entries) {
  test(`${e.name}: llama.cpp and anneal agree`, async () => {
    const model = await llama.loadModel({ modelPath: e.model });
    const context = await model.createContext({
      contextSize: 128,
      sequences: 2,
      // One thread: llama.cpp's threads spin while they wait, which on a busy 2-core
      // machine turns milliseconds into seconds. An f32 KV cache (llama.cpp's default is
      // f16) and no flash attention: the attention in f32, as anneal computes it.
      threads: 1,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
      flashAttention: false,
    });
    try {
      const tokens = [...model.tokenize(e.prompt, false)];
      assert.deepEqual(tokens, e.prompt_ids, "llama.cpp's tokens vs the original tokenizer's");
      assert.deepEqual(tokens, e.gguf_prompt_ids, "llama.cpp's tokens vs the tokenizer derived from the GGUF");

      // Free-running greedy decoding.
      const got = [];
      for await (const t of context.getSequence().evaluate(e.prompt_ids, { temperature: 0 })) {
        got.push(t);
        if (got.length >= e.anneal.length) break;
      }
      let lead = 0;
      while (lead < got.length && got[lead] === e.anneal_gguf[lead]) lead++;
      console.log(`# ${e.name}: free-running greedy tokens equal to anneal's on this file: ${lead}/${got.length}`);

      // Teacher-forced along the original's greedy path: logits after the last prompt
      // token and after each of anneal's first 15 tokens.
      const ids = [...e.prompt_ids, ...e.anneal.slice(0, e.logits.length - 1)];
      const first = e.prompt_ids.length - 1;
      const input = ids.map((t, i) => (i >= first ? [t, { generateNext: { logits: true } }] : t));
      const res = await context.getSequence().controlledEvaluate(input);
      let worst = 0;
      const next = e.logits.map((want, row) => {
        const logits = res[first + row]?.next?.logits;
        assert.ok(logits, `no logits at position ${first + row}`);
        assert.equal(logits.size, want.length, "vocabulary size");
        const scale = Math.max(...want.map(Math.abs));
        const have = new Array(want.length);
        for (const [tok, v] of logits) {
          have[tok] = v;
          worst = Math.max(worst, Math.abs(v - want[tok]) / scale);
        }
        return argmax(have);
      });
      const tol = LOGIT_TOL[e.type === "f32" && e.name.includes("gpt2") ? "f32_gpt2" : e.type];
      console.log(`# ${e.name}: largest logit difference ${worst.toExponential(2)} of the row's largest (tolerance ${tol})`);
      assert.ok(worst <= tol, `logits differ by ${worst} (relative), more than ${tol}`);

      if (e.type === "f32") {
        assert.deepEqual(next, e.anneal, "teacher-forced next tokens: llama.cpp vs the original");
        assert.deepEqual(got, e.anneal, "greedy tokens: llama.cpp vs anneal on the original model");
        assert.deepEqual(got, e.anneal_gguf, "greedy tokens: llama.cpp vs anneal on this GGUF file");
      } else {
        const ties = [];
        e.logits.forEach((row, i) => {
          if (margin(row) < NEAR_TIE) {
            ties.push(i);
            return;
          }
          assert.equal(next[i], e.anneal_gguf_next[i], `position ${i}: llama.cpp vs anneal on this GGUF file`);
          assert.equal(next[i], e.anneal[i], `position ${i}: llama.cpp vs the original`);
        });
        console.log(`# ${e.name}: next tokens checked at ${16 - ties.length}/16 positions (near-ties: ${ties.join(", ") || "none"})`);
        assert.ok(ties.length <= 4, `${ties.length} near-ties: the check says too little on this fixture`);
      }
    } finally {
      await context.dispose();
      await model.dispose();
    }
  });
}
