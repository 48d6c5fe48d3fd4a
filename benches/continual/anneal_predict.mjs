// anneal's Node side of the single-row predict latency comparison
// (benches/continual/run.sh latency): `await predictor.predict(row)` in process.
//
//   node anneal_predict.mjs --home HOME --model bench-logistic --data DIR [--requests 2000] [--warmup 200]
//
// HOME holds the model that `predict_latency --prepare` trained on DIR/train.jsonl.
// The binding is loaded from ANNEAL_NODE (default: bindings-node of this checkout).
import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
const { Home } = require(process.env.ANNEAL_NODE || path.resolve(here, '..', '..', 'bindings-node'))

function arg(name, dflt) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt
}

const home = Home.open(arg('--home'))
const model = arg('--model')
const requests = Number(arg('--requests', '2000'))
const warmup = Number(arg('--warmup', '200'))
const queries = fs
  .readFileSync(path.join(arg('--data'), 'queries.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l))

// `await` works whether the binding loads the predictor synchronously or not.
const predictor = await home.predictor(model, {})
const times = []
let p
for (let i = 0; i < warmup + requests; i++) {
  const row = queries[i % queries.length]
  const t0 = process.hrtime.bigint()
  p = await predictor.predict(row)
  if (i >= warmup) times.push(Number(process.hrtime.bigint() - t0) / 1e6)
}
if (!p || typeof p.confidence !== 'number') {
  console.error('unexpected answer', p)
  process.exit(1)
}
times.sort((a, b) => a - b)
const q = (x) => times[Math.min(times.length - 1, Math.floor(x * times.length))]
console.log(
  JSON.stringify({
    impl: 'anneal-node',
    model: model.replace(/^bench-/, ''),
    requests: times.length,
    median_ms: q(0.5),
    p95_ms: q(0.95),
    mean_ms: times.reduce((a, b) => a + b, 0) / times.length,
  }),
)
