// Export (hf, peft, bundle) and importBundle from Node: same names, codes and records
// as the Rust API, camelCase keys; the work runs off the event loop.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { tmpHome, Home } from './helpers.mjs'

async function lora() {
  const env = tmpHome()
  const base = await env.models.createPreset('nano', { seed: 0 })
  const records = Array.from({ length: 16 }, (_, i) => ({ text: `the cat sat on the mat ${i}` }))
  await env.home.datasets().importRecords(records, { name: 'toy' })
  const report = await env.home.training().train({
    base: base.id, dataset: 'toy', method: { lora: {} }, maxSteps: 3, seqLen: 32, batchSize: 4,
    learningRate: 1e-2, outputName: 'cat',
  })
  return { ...env, base, adapter: env.models.get(report.modelId) }
}

test('export hf, peft and bundle; importBundle restores the same id and content', async () => {
  const { home, dir, models, base, adapter } = await lora()
  const events = []
  const report = await models.export(adapter.id, 'hf', path.join(dir, 'merged'), { onEvent: (e) => events.push(e) })
  assert.equal(report.model, `cat@1`)
  assert.equal(report.format, 'hf')
  const names = report.files.map((f) => f.path)
  for (const want of ['config.json', 'model.safetensors', 'README.md']) assert.ok(names.includes(want), names)
  assert.equal(events[0].type, 'task_started')
  assert.equal(events.at(-1).type, 'task_finished')
  await assert.rejects(models.export(adapter.id, 'hf', path.join(dir, 'merged')), (e) => e.code === 'already_exists')
  await assert.rejects(models.export(adapter.id, 'zip', path.join(dir, 'x')), (e) => e.code === 'invalid_config')
  await assert.rejects(
    models.export(adapter.id, 'hf', path.join(dir, 'x'), { max_shard_bytes: 5 }),
    (e) => e.code === 'invalid_config',
  )

  await models.export(adapter.id, 'peft', path.join(dir, 'peft'), { baseModel: 'org/nano' })
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'peft', 'adapter_config.json'), 'utf8'))
  assert.equal(cfg.base_model_name_or_path, 'org/nano')

  const zip = path.join(dir, 'cat.zip')
  await models.export(adapter.id, 'bundle', zip)
  const other = Home.open(path.join(dir, 'other'))
  const got = await other.models().importBundle(zip, { name: 'kitty' })
  assert.deepEqual([got.id, got.sha256, got.name, got.parentId], [adapter.id, adapter.sha256, 'kitty', base.id])
  const truncated = path.join(dir, 'bad.zip')
  fs.writeFileSync(truncated, fs.readFileSync(zip).subarray(0, 1000))
  const third = Home.open(path.join(dir, 'third'))
  await assert.rejects(third.models().importBundle(truncated), (e) => e.code === 'invalid_data')
  assert.deepEqual(third.models().list(), [])
  void home
})

test('registerFile runs a GGUF export from its q8_0 blocks', async () => {
  const { models, home, dir } = tmpHome()
  const base = await models.createPreset('nano', { seed: 0 })
  const gguf = path.join(dir, 'nano.gguf')
  await models.export(base.id, 'gguf', gguf, { quantization: 'q8_0' })
  const events = []
  const rec = await models.registerFile(gguf, { name: 'nano-q8', onEvent: (e) => events.push(e) })
  assert.equal(rec.dtype, 'q8_0')
  assert.equal(rec.modelType, 'llama')
  assert.deepEqual(rec.files.map((f) => f.name), ['config.json', 'model.gguf', 'tokenizer.json', 'tokenizer_config.json'])
  assert.equal(events.at(-1).type, 'task_finished')
  const cfg = { maxNewTokens: 8, ignoreEos: true }
  const want = await (await home.generator(base.id, { quantize: 'q8_0' })).generate([3, 17, 42], cfg)
  const got = await (await home.generator(rec.id)).generate([3, 17, 42], cfg)
  assert.deepEqual(got.tokenIds, want.tokenIds)
  const cut = path.join(dir, 'cut.gguf')
  fs.writeFileSync(cut, fs.readFileSync(gguf).subarray(0, 1000))
  await assert.rejects(models.registerFile(cut), (e) => e.code === 'invalid_data' && e.message.includes('cut.gguf'))
})
