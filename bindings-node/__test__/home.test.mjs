import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Home, tmpDir, tmpHome, here } from './helpers.mjs'

test('open creates a home at the supported schema version and reopens it', async () => {
  const dir = path.join(tmpDir(), 'nested', 'home')
  const home = Home.open(dir)
  assert.equal(home.root, fs.realpathSync(dir))
  assert.equal(typeof Home.supportedSchemaVersion(), 'number')
  assert.equal(home.schemaVersion(), Home.supportedSchemaVersion())
  for (const sub of ['anneal.db', 'datasets', 'models', 'jobs']) assert.ok(fs.existsSync(path.join(dir, sub)), sub)
  await home.datasets().importRecords([{ text: 'kept' }], { name: 'kept' })
  const again = Home.open(dir)
  assert.equal(again.schemaVersion(), Home.supportedSchemaVersion())
  assert.equal(again.datasets().get('kept').numRecords, 1)
})

test('a path that is a file is refused with invalid_config', () => {
  const f = path.join(tmpDir(), 'file')
  fs.writeFileSync(f, 'x')
  assert.throws(() => Home.open(f), (e) => e instanceof Error && e.code === 'invalid_config' && e.message.includes(f))
})

test('a home from a newer schema is refused with incompatible_home and left untouched', () => {
  const { home } = tmpHome()
  const db = path.join(home.root, 'anneal.db')
  const sql = (stmt) =>
    execFileSync('python3', ['-c', `import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute(sys.argv[2]).fetchone(); c.commit(); print(r[0] if r else '')`, db, stmt])
      .toString()
      .trim()
  sql('PRAGMA user_version = 99')
  assert.throws(
    () => Home.open(home.root),
    (e) => {
      assert.equal(e.code, 'incompatible_home')
      assert.equal(e.found, 99)
      assert.equal(e.supported, Home.supportedSchemaVersion())
      assert.match(e.message, /99/)
      assert.ok(e.message.includes(home.root), e.message)
      return true
    },
  )
  assert.equal(sql('PRAGMA user_version'), '99')
})

function runChild(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(here, 'worker.mjs'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, out, err }))
  })
}

test('two processes import and register into one home at the same time', async () => {
  const { home, ds, models, files } = tmpHome()
  const n = 4
  const child = runChild(['concurrent', home.root, files, 'child', String(n)])
  const mine = { datasets: [], models: [] }
  for (let i = 0; i < n; i++) {
    const p = path.join(files, `parent-${i}.jsonl`)
    fs.writeFileSync(p, `{"text": "parent ${i} a"}\n{"text": "parent ${i} b"}\n`)
    mine.datasets.push((await ds.importFile(p)).name)
    if (i < 2) mine.models.push((await models.registerDir(path.join(here, '..', '..', 'tests', 'fixtures', 'tiny-gpt2'), { name: 'shared' })).version)
  }
  const { code, out, err } = await child
  assert.equal(code, 0, err)
  const theirs = JSON.parse(out)
  const listed = ds.list().map((d) => d.name).sort()
  assert.deepEqual(listed, [...mine.datasets, ...theirs.datasets].sort())
  assert.equal(listed.length, 2 * n)
  const versions = models.list({ name: 'shared' }).map((m) => m.version)
  assert.deepEqual(versions, [1, 2, 3, 4])
  assert.deepEqual([...mine.models, ...theirs.models].sort(), [1, 2, 3, 4])
})

test('memoryLimit is an option; requests above it are refused with invalid_config', async () => {
  assert.ok(Home.open(tmpDir()).memoryLimit > 0)
  assert.equal(Home.open(tmpDir(), { memoryLimit: 2 ** 30 }).memoryLimit, 2 ** 30)
  assert.throws(() => Home.open(tmpDir(), { memoryLimit: 0 }), (e) => e.code === 'invalid_config' && e.field === 'memoryLimit')
  const small = Home.open(tmpDir(), { memoryLimit: 1000 })
  const m = await small.models().createPreset('nano')
  await assert.rejects(small.generator(m.id), (e) => e.code === 'invalid_config' && e.message.includes('memory limit of 1000 B'))
})
