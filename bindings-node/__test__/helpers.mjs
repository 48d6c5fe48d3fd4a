// Shared helpers for the node:test suites: temporary homes, fixtures, assertions.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
export const here = path.dirname(fileURLToPath(import.meta.url))
export const pkgDir = path.resolve(here, '..')
export const anneal = require(pkgDir)
export const { Home, CancelToken, ModelRegistry, DatasetStore } = anneal
export const fixtures = path.resolve(pkgDir, '..', 'tests', 'fixtures')

/** A fresh temporary directory, removed when the process exits. */
export function tmpDir(prefix = 'anneal-node-') {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  process.once('exit', () => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

/** A new home in a temporary directory, and a folder for input files next to it. */
export function tmpHome() {
  const dir = tmpDir()
  const home = Home.open(path.join(dir, 'home'))
  const files = path.join(dir, 'files')
  fs.mkdirSync(files)
  return { dir, home, ds: home.datasets(), models: home.models(), files }
}

/** Writes `content` (string or Buffer) to `dir/name` and returns the path. */
export function write(dir, name, content) {
  const p = path.join(dir, name)
  fs.writeFileSync(p, content)
  return p
}

export const jsonl = (rows) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n'

/** Waits for events queued before a Promise settled (they use another queue). */
export const flush = () => new Promise((resolve) => setImmediate(resolve))

/** Entries of the home's datasets/ directory. */
export const datasetDirs = (home) => fs.readdirSync(path.join(home.root, 'datasets')).sort()

/**
 * Runs `fn` (which must reject), checks the rejection's code and that it left the
 * catalog and the datasets/ directory as they were. Returns the error.
 */
export async function rejectsCleanly(env, fn, code) {
  const before = env.ds.list().map((d) => d.id)
  const dirsBefore = datasetDirs(env.home)
  let err
  await assert.rejects(fn, (e) => {
    err = e
    return true
  })
  assert.ok(err instanceof Error, `expected an Error, got ${err}`)
  assert.equal(err.code, code, `code of: ${err.message}`)
  assert.deepEqual(env.ds.list().map((d) => d.id), before, 'list() changed')
  assert.deepEqual(datasetDirs(env.home), dirsBefore, 'datasets/ changed')
  return err
}
