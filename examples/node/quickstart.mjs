// anneal quickstart (Node twin of examples/rust/quickstart.rs).
//
// Run:    node examples/node/quickstart.mjs [home dir]    (after `cd bindings-node && npm install && npm run build`)
// Output: import progress, dataset stats and split, the created preset model, the registry.
//
// Foundation release: training and generation are not built yet; this stops at the registry.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const { Home } = createRequire(import.meta.url)(path.join(here, '..', '..', 'bindings-node'))
const data = path.join(here, '..', 'data', 'addition.jsonl')

const home = Home.open(process.argv[2] ?? 'anneal-home')
console.log(`home: ${home.root} (catalog schema v${home.schemaVersion()})`)

const datasets = home.datasets()
const ds = await datasets.importFile(data, {
  name: 'addition',
  onDuplicate: 'reuse',
  onEvent: (e) => { if (e.type === 'task_finished') console.log(`${e.task} ${e.status}: ${e.id}`) },
})
const stats = datasets.stats(ds.id)
console.log(`dataset ${ds.name} (${ds.id}): ${ds.numRecords} ${ds.format} records, ${stats.bytes} bytes`)
const split = await datasets.split(ds.id, 0.1, { seed: 42 })
console.log(`split (seed 42): ${split.train.numRecords} train / ${split.val.numRecords} val`)
for (const r of datasets.preview(split.val.id, 3)) console.log('  val example:', JSON.stringify(r))

const models = home.models()
let base
try {
  base = models.resolve('quickstart-base')
} catch (e) {
  if (e.code !== 'not_found') throw e
  base = await models.createPreset('micro', { name: 'quickstart-base', seed: 42 })
}
models.setAlias(base.id, 'production')
console.log(`model ${base.name}@${base.version} = ${base.id} (${base.params} parameters)`)
for (const m of models.list()) {
  console.log(`  ${m.name.padEnd(22)} v${m.version} ${m.kind.padEnd(5)} ${m.family.padEnd(6)} ${String(m.params).padStart(9)} ${m.source} ${m.aliases.join(',')}`)
}
console.log('quickstart-base@production ->', models.resolve('quickstart-base@production').id)
