// llama.cpp peer of anneal's decode benchmark through node-llama-cpp's prebuilt CPU
// binaries (no compiler: the package tests/llamacpp installs), for machines where
// llama-cpp-python (which compiles llama.cpp, ~11 min on 2 cores) is not installed.
//
//   node benches/compare/llama_generate.mjs --gguf FILE --config NAME --dtype f32|bf16|q8_0 \
//        [--prompt-tokens 16] [--new-tokens 128] [--runs 3]
//
// The protocol of llama_generate.py: batch 1, greedy, exactly `new_tokens` new tokens
// (EOS ignored), 2 threads, a 256-token context, the prompt ids
// [(i * 7919 + 13) % vocab for i < prompt_tokens]; time to first token = prompt
// evaluation + first pick; decode tokens/s = (new_tokens - 1) / (total - ttft); medians
// over runs after one warm-up. Prints one JSON line (impl "llama.cpp", with the
// llama.cpp build in "peer").
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../tests/llamacpp/package.json"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));
const pkg = JSON.parse(readFileSync(path.join(here, "../../tests/llamacpp/package.json"), "utf8"));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
for (const need of ["gguf", "config", "dtype"]) {
  if (!args[need]) {
    console.error(`missing --${need}; usage: node llama_generate.mjs --gguf FILE --config NAME --dtype f32|bf16|q8_0`);
    process.exit(2);
  }
}
const promptTokens = Number(args["prompt-tokens"] ?? 16);
const newTokens = Number(args["new-tokens"] ?? 128);
const runs = Number(args.runs ?? 3);

const llama = await getLlama({ build: "never", gpu: false, logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.gguf });
const context = await model.createContext({ contextSize: 256, batchSize: 64, threads: Number(process.env.LLAMA_THREADS ?? 2), sequences: 1 });
// llama.cpp's n_vocab: the GGUF vocabulary's length.
const vocab = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length ?? 0;
if (!vocab) throw new Error("could not read the vocabulary size");
const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 7919 + 13) % vocab);

async function run() {
  const seq = context.getSequence();
  try {
    const out = [];
    const t0 = performance.now();
    let first = 0;
    for await (const t of seq.evaluate(prompt, { temperature: 0 })) {
      if (out.length === 0) first = performance.now() - t0;
      out.push(t);
      if (out.length >= newTokens) break;
    }
    return { first, whole: performance.now() - t0, out };
  } finally {
    seq.dispose();
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
await run(); // warm-up
const ttft = [];
const total = [];
const decode = [];
let out = [];
for (let r = 0; r < runs; r++) {
  const { first, whole, out: o } = await run();
  out = o;
  ttft.push(first);
  total.push(whole / 1e3);
  decode.push((newTokens - 1) / Math.max((whole - first) / 1e3, 1e-9));
}
console.log(
  JSON.stringify({
    impl: "llama.cpp",
    peer: `node-llama-cpp ${pkg.dependencies["node-llama-cpp"]} (${llama.buildType} binaries, llama.cpp release tag ${llama.llamaCppRelease.release})`,
    config: args.config,
    dtype: args.dtype,
    prompt_tokens: promptTokens,
    new_tokens: newTokens,
    ttft_ms: Math.round(median(ttft) * 100) / 100,
    decode_tokens_per_s: Math.round(median(decode) * 10) / 10,
    total_s: Math.round(median(total) * 1e4) / 1e4,
    peak_rss_mib: Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10,
    tokens: out.slice(0, 8),
  }),
);
await context.dispose();
await model.dispose();
await llama.dispose();
