// anneal quickstart, Node twin of examples/rust/quickstart.rs.
//
// Run:    node examples/node/quickstart.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
// Output: dataset splits, one progress line per ~50 steps for two training jobs (a full
//         training of the nano preset on uppercase, then a LoRA adapter on letter
//         doubling), their final and eval losses, and the registry with lineage.
//         `--smoke` trains one epoch each (for CI).
//
// Node has no generation API yet (the Generator comes next), so this twin reports losses;
// the Rust quickstart also decodes held-out words and prints their accuracy.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const { Home } = createRequire(import.meta.url)(path.join(here, '..', '..', 'bindings-node'))
const data = path.join(here, '..', 'data')
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const epochs = process.argv.includes('--smoke') ? 1 : undefined

const progress = (e) => {
  if (e.type === 'step' && (e.step % 50 === 0 || e.step === e.totalSteps)) {
    console.log(`  step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)} lr ${e.lr.toExponential(2)}`)
  } else if (e.type === 'eval') {
    console.log(`  eval @ step ${e.step}: ${JSON.stringify(e.metrics)}`)
  } else if (e.type === 'job_finished') {
    console.log(`  job ${e.jobId} ${e.status} -> model ${e.modelId}`)
  }
}

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

const base = await models.createPreset('nano', { name: 'quickstart-nano', seed: 0 })
console.log(`base ${base.name}@${base.version}: ${base.params} parameters`)

const upper = await engine.train({
  base: base.id, dataset: splits.uppercase.train.id, evalDataset: splits.uppercase.val.id,
  method: 'full', epochs: epochs ?? 10, batchSize: 32, seqLen: 16, learningRate: 2e-3,
  warmupSteps: 20, schedule: 'cosine', weightDecay: 0.01, outputName: 'quickstart-upper',
}, { onEvent: progress })
console.log(`full training: ${upper.steps} steps, final loss ${upper.finalLoss.toFixed(3)}, eval loss ${upper.evalLoss.toFixed(3)}`)

const lora = await engine.train({
  base: upper.modelId, dataset: splits.double.train.id, evalDataset: splits.double.val.id,
  method: { lora: { r: 16, alpha: 32, targetModules: ['all-linear'] } },
  epochs: epochs ?? 8, batchSize: 32, seqLen: 24, learningRate: 5e-3, warmupSteps: 10,
  schedule: 'cosine', outputName: 'quickstart-double-lora',
}, { onEvent: progress })
console.log(`LoRA training: ${lora.steps} steps, final loss ${lora.finalLoss.toFixed(3)}, eval loss ${lora.evalLoss.toFixed(3)}`)

for (const m of models.list()) {
  const origin = m.lineage.job ? `job ${m.lineage.job}` : m.source
  console.log(`  ${m.name.padEnd(24)} v${m.version} ${m.kind.padEnd(5)} ${String(m.params).padStart(8)}  ${origin}`)
}
