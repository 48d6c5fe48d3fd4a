// The first hour of a new user: re-running steps on one home, the method given as a
// name, messages that say what to do (issue 15, items 2-4).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { CancelToken, Home, pkgDir, tmpDir, tmpHome, write, jsonl } from './helpers.mjs'

const quickstart = path.resolve(pkgDir, '..', 'examples', 'node', 'quickstart.mjs')

async function env() {
  const e = tmpHome()
  const records = Array.from({ length: 40 }, (_, i) => ({ prompt: `${i} plus one is`, completion: ` ${i + 1}` }))
  await e.ds.importRecords(records, { name: 'qa' })
  e.base = await e.models.createPreset('nano', { name: 'base', seed: 0 })
  e.engine = e.home.training()
  e.spec = { base: e.base.id, dataset: 'qa', method: 'full', maxSteps: 3, seqLen: 16, batchSize: 4 }
  return e
}

test('the quickstart runs twice on one home', () => {
  const home = path.join(tmpDir(), 'home')
  const outputs = [1, 2].map(() => execFileSync(process.execPath, [quickstart, home, '--smoke'], { encoding: 'utf8' }))
  const h = Home.open(home)
  assert.deepEqual(
    h.models().list().map((m) => `${m.name}@${m.version}`).sort(),
    ['quickstart-double-lora@1', 'quickstart-nano@1', 'quickstart-upper@1'],
  )
  assert.equal(h.training().jobs().length, 2)
  assert.equal(h.datasets().list().length, 6)
  const registry = (out) => out.split('\n').filter((l) => l.startsWith('  quickstart-'))
  assert.ok(registry(outputs[0]).length === 3)
  assert.deepEqual(registry(outputs[1]), registry(outputs[0]))
})

test('the same file under the same name is reused', async () => {
  const { ds, files } = tmpHome()
  const p = write(files, 'words.jsonl', jsonl([{ text: 'a' }, { text: 'b' }]))
  const first = await ds.importFile(p, { name: 'words', onDuplicate: 'reuse' })
  const again = await ds.importFile(p, { name: 'words', onDuplicate: 'reuse' })
  assert.equal(again.id, first.id)
  await assert.rejects(ds.importFile(p, { name: 'words' }), { code: 'duplicate_content' })
})

test('createPreset and registerDir take ifExists', async () => {
  const { models } = tmpHome()
  const v1 = await models.createPreset('nano', { name: 'm', seed: 0, ifExists: 'reuse' })
  assert.equal((await models.createPreset('nano', { name: 'm', seed: 0, ifExists: 'reuse' })).id, v1.id)
  assert.equal((await models.createPreset('nano', { name: 'm', seed: 1, ifExists: 'reuse' })).version, 2)
  assert.equal((await models.createPreset('nano', { name: 'm', seed: 0 })).version, 3)
  await assert.rejects(models.createPreset('nano', { name: 'm', ifExists: 'error' }), { code: 'already_exists' })
  await assert.rejects(models.createPreset('nano', { name: 'm', if_exists: 'reuse' }), (e) => {
    assert.equal(e.code, 'invalid_config')
    assert.match(e.message, /unknown option `if_exists` \(did you mean `ifExists`\?\)/)
    assert.equal(e.field, 'ifExists') // the option it means, as everywhere
    return true
  })
  const reg = await models.registerDir(v1.path, { name: 'hf', storage: 'reference', ifExists: 'reuse' })
  assert.equal((await models.registerDir(v1.path, { name: 'hf', storage: 'reference', ifExists: 'reuse' })).id, reg.id)
  await assert.rejects(models.registerDir(v1.path, { name: 'hf', ifExists: 'error' }), { code: 'already_exists' })
})

test('train twice with ifExists reuse trains once', async () => {
  const { engine, spec } = await env()
  const first = await engine.train({ ...spec, ifExists: 'reuse' })
  const events = []
  const again = await engine.train({ ...spec, ifExists: 'reuse' }, { onEvent: (e) => events.push(e) })
  assert.deepEqual([again.jobId, again.modelId, again.steps, again.finalLoss], [first.jobId, first.modelId, first.steps, first.finalLoss])
  assert.deepEqual(events, [])
  assert.equal(engine.jobs().length, 1)
  assert.throws(() => engine.createJob({ ...spec, ifExists: 'error' }), { code: 'already_exists' })
  assert.notEqual((await engine.train(spec)).jobId, first.jobId)
})

test("method: 'lora' and 'full' as plain names", async () => {
  const { engine, spec, models } = await env()
  const lora = await engine.train({ ...spec, method: 'lora' })
  assert.equal(models.get(lora.modelId).kind, 'lora')
  assert.equal(engine.job(lora.jobId).spec.method.lora.r, 8)
  assert.equal(models.get((await engine.train(spec)).modelId).kind, 'full')
})

test('messages use words, not Rust types, and refuse snake_case keys', async () => {
  const { engine, spec } = await env()
  for (const [bad, words] of [
    [{ epochs: -1 }, 'expected a whole number from 0 to 4294967295, got -1'],
    [{ epochs: 'x' }, 'expected a whole number from 0 to 4294967295, got the string "x"'],
    [{ learningRate: 'fast' }, 'expected a number, got the string "fast"'],
  ]) {
    assert.throws(() => engine.createJob({ ...spec, ...bad }), (e) => {
      assert.equal(e.code, 'invalid_config')
      assert.ok(e.message.includes(words), e.message)
      assert.ok(!/u32|u64|usize|f64|variant/.test(e.message), e.message)
      return true
    })
  }
  assert.throws(() => engine.createJob({ ...spec, seq_len: 8 }), /unknown option `seq_len` \(did you mean `seqLen`\?\)/)
  await assert.rejects(engine.train(spec, { on_event: () => {} }), /unknown option `on_event` \(did you mean `onEvent`\?\)/)
})

test('new Home() points to Home.open', () => {
  assert.throws(() => new Home(), /Home\.open\(dir\)/)
})

test('a cancelled training names the job and how to resume it', async () => {
  const { engine, spec } = await env()
  const cancel = new CancelToken()
  await assert.rejects(
    engine.train({ ...spec, maxSteps: 500 }, { cancel, onEvent: (e) => e.type === 'step' && cancel.cancel() }),
    (e) => {
      const [job] = engine.jobs()
      assert.equal(e.code, 'cancelled')
      assert.equal(e.jobId, job.id)
      assert.ok(e.message.includes(`home.training().resume('${job.id}')`), e.message)
      return true
    },
  )
})
