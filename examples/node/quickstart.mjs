// anneal quickstart, Node twin of examples/rust/quickstart.rs.
//
// Run:    node examples/node/quickstart.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
// Output: dataset splits, one progress line per ~50 steps for two training jobs (a full
//         training of the nano preset on uppercase, then a LoRA adapter on letter
//         doubling), their losses, the accuracy of greedy answers on 100 held-out words
//         before and after each (one batch), a streamed answer from the adapter, the
//         adapter switched per request on one loaded base, the catalog's usage totals,
//         and the registry with lineage. `--smoke` trains 10 steps each and scores 16
//         words (for CI; accuracy is then printed but low).
// Re-run: safe on the same home. The datasets are reused (`onDuplicate: 'reuse'`), and
//         the preset and both trainings too (`ifExists: 'reuse'`): a second run trains
//         nothing and prints the same results. The default home, ./anneal-home, is git-ignored.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
// Installed from npm: the `anneal` package; in a checkout: the binding built in place.
function loadAnneal () {
  try {
    return require('anneal')
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND' || !String(e.message).includes("'anneal'")) throw e
    return require(path.join(here, '..', '..', 'bindings-node'))
  }
}
const { Home } = loadAnneal()
const data = path.join(here, '..', 'data')
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const smoke = process.argv.includes('--smoke')
// Smoke (CI): a few steps instead of epochs.
const short = smoke ? { maxSteps: 10 } : {}

const progress = (e) => {
  if (e.type === 'step' && (e.step % 50 === 0 || e.step === e.totalSteps)) {
    console.log(`  step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)} lr ${e.lr.toExponential(2)}`)
  } else if (e.type === 'eval') {
    console.log(`  eval @ step ${e.step}: ${JSON.stringify(e.metrics)}`)
  } else if (e.type === 'job_finished') {
    console.log(`  job ${e.jobId} ${e.status} -> model ${e.modelId}`)
  }
}

const EVAL_N = smoke ? 16 : 100

/** Exact-match accuracy of greedy answers on held-out problems, generated in one batch. */
async function accuracy(modelId, val) {
  const gen = await home.generator(modelId) // an adapter is merged into its base at load
  const records = datasets.preview(val.id, EVAL_N)
  const outs = await gen.generateBatch(records.map((r) => r.prompt), { maxNewTokens: 16 })
  const right = records.filter((r, i) => outs[i].text.trim() === r.completion).length
  const samples = records.slice(0, 4).map((r, i) => `${r.prompt} ${outs[i].text.trim().padEnd(12)} (want ${r.completion})`)
  return [right / records.length, samples]
}
const pct = (x) => `${Math.round(x * 100)}%`

const home = Home.open(args[0] ?? 'anneal-home')
const datasets = home.datasets()
const models = home.models()
const engine = home.training()

const splits = {}
for (const name of ['uppercase', 'double']) {
  const ds = await datasets.importFile(path.join(data, `${name}.jsonl`), { name, onDuplicate: 'reuse' })
  splits[name] = await datasets.split(ds.id, 0.1, { seed: 0 })
  console.log(`dataset ${name}: ${ds.numRecords} records -> ${splits[name].train.numRecords} train / ${splits[name].val.numRecords} held out`)
}

// ifExists: 'reuse': a second run gets the same model (same preset and seed), not @2.
const base = await models.createPreset('nano', { name: 'quickstart-nano', seed: 0, ifExists: 'reuse' })
const [before] = await accuracy(base.id, splits.uppercase.val)
console.log(`base ${base.name}@${base.version}: ${base.params} parameters, uppercase accuracy ${pct(before)}`)

const upper = await engine.train({
  base: base.id, dataset: splits.uppercase.train.id, evalDataset: splits.uppercase.val.id,
  method: 'full', epochs: 10, batchSize: 32, seqLen: 16, learningRate: 2e-3,
  warmupSteps: 20, schedule: 'cosine', weightDecay: 0.01, outputName: 'quickstart-upper',
  ifExists: 'reuse', ...short, // a second run returns this job's report
}, { onEvent: progress })
console.log(`full training: ${upper.steps} steps, final loss ${upper.finalLoss.toFixed(3)}, eval loss ${upper.evalLoss.toFixed(3)}`)
const [after, samples] = await accuracy(upper.modelId, splits.uppercase.val)
console.log(`uppercase accuracy on ${EVAL_N} held-out words: ${pct(before)} -> ${pct(after)}`)
for (const line of samples) console.log(`  ${line}`)
const [subBefore] = await accuracy(upper.modelId, splits.double.val)

const lora = await engine.train({
  base: upper.modelId, dataset: splits.double.train.id, evalDataset: splits.double.val.id,
  method: { lora: { r: 16, alpha: 32, targetModules: ['all-linear'] } },
  epochs: 8, batchSize: 32, seqLen: 24, learningRate: 5e-3, warmupSteps: 10,
  schedule: 'cosine', outputName: 'quickstart-double-lora', ifExists: 'reuse', ...short,
}, { onEvent: progress })
console.log(`LoRA training: ${lora.steps} steps, final loss ${lora.finalLoss.toFixed(3)}, eval loss ${lora.evalLoss.toFixed(3)}`)
const [subAfter, subSamples] = await accuracy(lora.modelId, splits.double.val)
console.log(`double-letter accuracy: ${pct(subBefore)} (trained base) -> ${pct(subAfter)} (with the LoRA adapter)`)
for (const line of subSamples) console.log(`  ${line}`)

// Stream from the adapter kept unmerged; then one loaded base, adapter per request.
const word = datasets.preview(splits.double.val.id, 1)[0].prompt
const gen = await home.generator(lora.modelId, { mergeAdapter: false })
process.stdout.write(`streaming '${word}' with the adapter: `)
const stream = gen.stream(word, { maxNewTokens: 16 })
for await (const chunk of stream) process.stdout.write(chunk.text)
const g = stream.generation
console.log(`  (${g.generatedTokens} tokens, ${g.finishReason}, first token after ${g.timings.ttftMs.toFixed(1)} ms)`)
const onBase = await home.generator(upper.modelId, { mergeAdapter: false })
await onBase.addAdapter(lora.modelId)
const plain = (await onBase.generate(word, { maxNewTokens: 16 })).text.trim()
const withAdapter = (await onBase.generate(word, { maxNewTokens: 16, adapter: lora.modelId })).text.trim()
console.log(`same base, per request: without adapter '${plain}', with '${withAdapter}'`)
const u = models.usage(lora.modelId)
console.log(`usage of the adapter (from the catalog): ${u.calls} calls, ${u.generations} prompts, ${u.generatedTokens} tokens`)

for (const m of models.list()) {
  const origin = m.lineage.job ? `job ${m.lineage.job}` : m.source
  console.log(`  ${m.name.padEnd(24)} v${m.version} ${m.kind.padEnd(5)} ${String(m.params).padStart(8)}  ${origin}`)
}
