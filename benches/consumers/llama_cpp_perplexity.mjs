// Perplexity of anneal's GGUF exports (f32, q8_0, q4_0, q4_k_m of a trained `mini`,
// written by benches/src/bin/gguf_perplexity.rs) on held-out text, computed by
// llama.cpp through node-llama-cpp's prebuilt CPU binaries: every text is evaluated
// with its token ids from anneal's tokenizer, and the raw logits at each position give
// the log-probability of the next token. Perplexity = exp(mean negative
// log-likelihood over every predicted token of every text). Also prints anneal's own
// figures from ppl.json (the original f32 model, and each GGUF file registered back).
// Not a timing.
//
// Run: benches/consumers/run.sh ppl   (or: node llama_cpp_perplexity.mjs <out dir>,
// with NODE_PATH pointing at a node_modules that has node-llama-cpp).

import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH ?? process.cwd(), "x.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const out = process.argv[2];
if (!out) {
  console.error("usage: node llama_cpp_perplexity.mjs <out dir of gguf_perplexity>");
  process.exit(2);
}
const doc = JSON.parse(readFileSync(path.join(out, "ppl.json"), "utf8"));
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
const longest = Math.max(...doc.texts.map((t) => t.ids.length));

let failed = 0;
const rows = [];
for (const f of doc.files) {
  const model = await llama.loadModel({ modelPath: f.path });
  // One thread (llama.cpp's spinning threads crawl on a busy 2-core machine); an f32
  // KV cache, so that the f32 file's figure can be checked against anneal's and the
  // differences between the files are their weights'.
  const context = await model.createContext({
    contextSize: Math.ceil((longest + 1) / 256) * 256,
    threads: 1,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    flashAttention: false,
  });
  const seq = context.getSequence();
  let nll = 0;
  let count = 0;
  let sameTokens = true;
  for (const t of doc.texts) {
    const mine = [...model.tokenize(t.text, false)];
    // anneal's ids may start with BOS; llama.cpp's tokenize() of the text never does.
    if (JSON.stringify(mine) !== JSON.stringify(t.ids.slice(t.ids.length - mine.length))) sameTokens = false;
    const input = t.ids.map((id, i) => (i + 1 < t.ids.length ? [id, { generateNext: { logits: true } }] : id));
    const res = await seq.controlledEvaluate(input);
    for (let i = 0; i + 1 < t.ids.length; i++) {
      const logits = res[i]?.next?.logits;
      if (!logits) throw new Error(`${f.type}: no logits at position ${i}`);
      let max = -Infinity;
      for (const v of logits.values()) max = Math.max(max, v);
      let sum = 0;
      for (const v of logits.values()) sum += Math.exp(v - max);
      nll += max + Math.log(sum) - logits.get(t.ids[i + 1]);
      count++;
    }
    await seq.clearHistory();
  }
  if (!sameTokens) {
    console.log(`  ${f.type}: llama.cpp tokenizes the held-out text differently from anneal`);
    failed++;
  }
  const mine = doc.anneal.find((a) => a.type === f.type);
  rows.push({ type: f.type, mib: statSync(f.path).size / 1048576, ppl: Math.exp(nll / count), count,
              anneal: mine?.perplexity });
  await context.dispose();
  await model.dispose();
}
const base = rows.find((r) => r.type === "f32")?.ppl;
const original = doc.anneal.find((a) => !a.type)?.perplexity;
console.log(`\n${doc.model}, ${doc.steps} steps; ${doc.texts.length} held-out texts, ${rows[0]?.count} predicted tokens`);
console.log(`anneal, original f32 weights (safetensors): perplexity ${original?.toFixed(4)}\n`);
console.log("| GGUF | file MiB | llama.cpp perplexity | vs f32 | anneal on the registered file |");
console.log("|---|---|---|---|---|");
for (const r of rows) {
  const rel = ((r.ppl / base - 1) * 100).toFixed(2);
  console.log(`| ${r.type} | ${r.mib.toFixed(2)} | ${r.ppl.toFixed(4)} | ${r.type === "f32" ? "" : `${rel >= 0 ? "+" : ""}${rel}%`} | ${r.anneal?.toFixed(4)} |`);
}
await llama.dispose();
process.exit(failed ? 1 : 0);
