import { test, before } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { CancelToken, tmpDir, tmpHome, write, jsonl, flush, rejectsCleanly, fixtures, here } from './helpers.mjs'

let big // ~30 MB JSONL, made once
let bigSize

before(() => {
  big = path.join(tmpDir(), 'big.jsonl')
  const fd = fs.openSync(big, 'w')
  const filler = 'lorem ipsum dolor sit amet '.repeat(8)
  let chunk = []
  for (let i = 0; i < 130_000; i++) {
    chunk.push(`{"prompt": "question ${i}: ${filler}", "completion": "answer ${i}"}\n`)
    if (chunk.length === 10_000) {
      fs.writeSync(fd, chunk.join(''))
      chunk = []
    }
  }
  fs.writeSync(fd, chunk.join(''))
  fs.closeSync(fd)
  bigSize = fs.statSync(big).size
  assert.ok(bigSize > 29e6, `big file is ${bigSize} bytes`)
})

const hasSnakeKey = (o) =>
  o && typeof o === 'object' && Object.entries(o).some(([k, v]) => k.includes('_') || (k !== 'metrics' && hasSnakeKey(v)))

test('a large import does not block the event loop and reports progress', async () => {
  const { ds } = tmpHome()
  let ticks = 0
  const iv = setInterval(() => ticks++, 5)
  const events = []
  const t0 = performance.now()
  const rec = await ds.importFile(big, { name: 'big', onEvent: (e) => events.push(e) })
  const ms = performance.now() - t0
  await flush()
  clearInterval(iv)
  assert.equal(rec.numRecords, 130_000)
  assert.ok(ms > 50, `import took only ${ms} ms; the test needs a slower import`)
  // A blocked loop would give 0 or 1 tick; allow for a busy machine.
  assert.ok(ticks >= Math.min(20, ms / 5 / 4), `${ticks} ticks in ${ms.toFixed(0)} ms`)

  const types = events.map((e) => e.type)
  assert.equal(types[0], 'task_started')
  assert.equal(types.at(-1), 'task_finished')
  assert.ok(types.slice(1, -1).every((t) => t === 'task_progress'), types.join(','))
  assert.ok(types.includes('task_progress'))
  assert.deepEqual(events[0], { type: 'task_started', task: 'import_dataset', name: 'big', total: bigSize, unit: 'bytes' })
  const done = events.filter((e) => e.type === 'task_progress').map((e) => e.done)
  assert.deepEqual(done, [...done].sort((a, b) => a - b), 'progress only grows')
  assert.equal(done.at(-1), bigSize)
  // Throttled to one progress event per 100 ms (plus the final one).
  assert.ok(done.length <= ms / 100 + 3, `${done.length} progress events in ${ms} ms`)
  assert.deepEqual(events.at(-1), { type: 'task_finished', task: 'import_dataset', status: 'completed', id: rec.id })
  assert.ok(!events.some(hasSnakeKey), 'event keys are camelCase')
})

test('a failed import ends with task_finished{failed} carrying the error code', async () => {
  const { ds, files } = tmpHome()
  const p = write(files, 'bad.jsonl', '{"text": "a"}\nnot json\n')
  const events = []
  await assert.rejects(ds.importFile(p, { onEvent: (e) => events.push(e) }), { code: 'invalid_data' })
  await flush()
  assert.equal(events[0].type, 'task_started')
  const last = events.at(-1)
  assert.equal(last.type, 'task_finished')
  assert.equal(last.status, 'failed')
  assert.equal(last.error.code, 'invalid_data')
  assert.ok(last.error.message.includes(p))
})

test('registerDir reports register_model events with camelCase keys', async () => {
  const { models } = tmpHome()
  const events = []
  const m = await models.registerDir(path.join(fixtures, 'tiny-llama'), { onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(events[0].type, 'task_started')
  assert.equal(events[0].task, 'register_model')
  assert.deepEqual(events.at(-1), { type: 'task_finished', task: 'register_model', status: 'completed', id: m.id })
  assert.ok(!events.some(hasSnakeKey))
})

test('a CancelToken stops a running import; nothing is left behind', async () => {
  const env = tmpHome()
  const token = new CancelToken()
  assert.equal(token.isCancelled, false)
  const events = []
  await rejectsCleanly(
    env,
    () =>
      env.ds.importFile(big, {
        name: 'big',
        cancel: token,
        onEvent: (e) => {
          events.push(e)
          if (e.type === 'task_progress') token.cancel()
        },
      }),
    'cancelled',
  )
  await flush()
  assert.equal(token.isCancelled, true)
  assert.equal(events.at(-1).type, 'task_finished')
  assert.equal(events.at(-1).status, 'cancelled')
  assert.equal(events.at(-1).error.code, 'cancelled')
  assert.ok(events.filter((e) => e.type === 'task_progress').at(-1).done < bigSize, 'stopped before the end')
  assert.throws(() => env.ds.get('big'), { code: 'not_found' })
})

test('a token cancelled before the call rejects at once; one token serves several calls', async () => {
  const env = tmpHome()
  const token = new CancelToken()
  token.cancel()
  const p = write(env.files, 'small.jsonl', jsonl([{ text: 'a' }]))
  await rejectsCleanly(env, () => env.ds.importFile(p, { cancel: token }), 'cancelled')
  await rejectsCleanly(env, () => env.ds.importRecords([{ text: 'a' }], { cancel: token }), 'cancelled')
  await assert.rejects(env.models.registerDir(path.join(fixtures, 'tiny-gpt2'), { cancel: token }), { code: 'cancelled' })
  assert.deepEqual(env.models.list(), [])
  assert.deepEqual(fs.readdirSync(path.join(env.home.root, 'models')), [])
  // A fresh token lets the same call through.
  assert.equal((await env.ds.importFile(p, { cancel: new CancelToken() })).numRecords, 1)
})

test('an exception thrown in onEvent does not stop the import (it is an uncaughtException)', async () => {
  const { home, files } = tmpHome()
  const p = write(files, 'x.jsonl', jsonl([{ text: 'a' }, { text: 'b' }]))
  const { code, out, err } = await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(here, 'worker.mjs'), 'throwing-callback', home.root, p])
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, out, err }))
  })
  assert.equal(code, 0, err)
  const r = JSON.parse(out)
  assert.equal(r.numRecords, 2)
  assert.equal(r.listed, 1)
  assert.equal(r.types[0], 'task_started')
  assert.equal(r.types.at(-1), 'task_finished')
  assert.deepEqual(r.caught, r.types.map((t) => `boom in ${t}`))
})
