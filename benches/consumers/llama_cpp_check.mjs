// llama.cpp consumer check of anneal's GGUF exports: loads each file written by
// `gguf_check` (benches/src/bin/gguf_check.rs) with llama.cpp, through the prebuilt
// binaries of the `node-llama-cpp` npm package (no compiler involved), checks that
// llama.cpp tokenizes the prompt as anneal does, greedy-decodes 16 tokens from it and
// compares them with anneal's greedy tokens.
//
// Expected: equal for f32, f16, bf16 and q8_0 (and the LoRA adapter, merged or with
// --lora); for q4_0 / q4_k_m the number of equal leading tokens is reported. The
// "anneal from this GGUF" entries hold anneal's tokens when it runs the same file
// (registered with `register_file`, q8_0 blocks as they are, 4-bit requantized to q8_0).
//
// Run: benches/consumers/run.sh gguf   (or: node llama_cpp_check.mjs <out dir>, with
// NODE_PATH pointing at a node_modules that has node-llama-cpp).

import { readFileSync } from "node:fs";
import { statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH ?? process.cwd(), "x.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const out = process.argv[2];
if (!out) {
  console.error("usage: node llama_cpp_check.mjs <out dir of gguf_check>");
  process.exit(2);
}
const entries = JSON.parse(readFileSync(path.join(out, "anneal.json"), "utf8"));
// Prebuilt CPU binaries only: never download or compile llama.cpp.
const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });

const exact = new Set(["f32", "f16", "bf16", "q8_0"]);
let failed = 0;
const rows = [];
for (const e of entries) {
  const model = await llama.loadModel({ modelPath: e.model });
  const context = await model.createContext({
    contextSize: 128,
    ...(e.lora ? { lora: { adapters: [{ filePath: e.lora, scale: 1 }] } } : {}),
  });
  const tokens = [...model.tokenize(e.prompt, false)];
  const sameTokens = JSON.stringify(tokens) === JSON.stringify(e.prompt_ids);
  const seq = context.getSequence();
  const got = [];
  for await (const t of seq.evaluate(e.prompt_ids, { temperature: 0 })) {
    got.push(t);
    if (got.length >= e.anneal.length) break;
  }
  let lead = 0;
  while (lead < got.length && got[lead] === e.anneal[lead]) lead++;
  const must = exact.has(e.type) && !e.name.includes("random");
  const ok = sameTokens && (!must || lead === e.anneal.length);
  if (!ok) failed++;
  const mb = (statSync(e.model).size / 1048576).toFixed(2);
  rows.push({ name: e.name, mb, sameTokens, lead, n: e.anneal.length, must, ok,
              text: model.detokenize(got).replaceAll("\n", "\\n") });
  if (!sameTokens) console.log(`  ${e.name}: llama.cpp tokens ${JSON.stringify(tokens)} vs anneal ${JSON.stringify(e.prompt_ids)}`);
  if (lead < got.length) console.log(`  ${e.name}: llama.cpp ${JSON.stringify(got)}\n  ${" ".repeat(e.name.length)}   anneal    ${JSON.stringify(e.anneal)}`);
  await context.dispose();
  await model.dispose();
}
console.log("\n| export | file MiB | prompt tokens equal | equal leading greedy tokens | llama.cpp's continuation |");
console.log("|---|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.name} | ${r.mb} | ${r.sameTokens ? "yes" : "NO"} | ${r.lead}/${r.n}${r.must ? " (must be all)" : ""}${r.ok ? "" : " FAIL"} | \`${r.text}\` |`);
}
console.log(`\n${rows.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
