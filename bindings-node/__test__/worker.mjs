// Child process for the tests. Usage: node worker.mjs <mode> <home> [args...]
//   concurrent <home> <files-dir> <prefix> <n>: imports n datasets and registers tiny-gpt2 twice
//   throwing-callback <home> <file>: imports with an onEvent that throws
import fs from 'node:fs'
import path from 'node:path'
import { Home, fixtures, jsonl } from './helpers.mjs'

const [mode, homeDir, ...args] = process.argv.slice(2)
const home = Home.open(homeDir)

if (mode === 'concurrent') {
  const [filesDir, prefix, n] = args
  const ds = home.datasets()
  const models = home.models()
  const out = { datasets: [], models: [] }
  for (let i = 0; i < Number(n); i++) {
    const p = path.join(filesDir, `${prefix}-${i}.jsonl`)
    fs.writeFileSync(p, jsonl([{ text: `${prefix} ${i} a` }, { text: `${prefix} ${i} b` }]))
    out.datasets.push((await ds.importFile(p)).name)
    if (i < 2) out.models.push((await models.registerDir(path.join(fixtures, 'tiny-gpt2'), { name: 'shared' })).version)
  }
  process.stdout.write(JSON.stringify(out))
} else if (mode === 'throwing-callback') {
  const [file] = args
  const caught = []
  process.on('uncaughtException', (e) => caught.push(e.message))
  const types = []
  const rec = await home.datasets().importFile(file, {
    onEvent: (e) => {
      types.push(e.type)
      throw new Error(`boom in ${e.type}`)
    },
  })
  await new Promise((r) => setImmediate(r))
  process.stdout.write(JSON.stringify({ numRecords: rec.numRecords, caught, types, listed: home.datasets().list().length }))
}
