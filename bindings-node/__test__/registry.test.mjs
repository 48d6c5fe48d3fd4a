import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { ModelRegistry, tmpHome, tmpDir, fixtures } from './helpers.mjs'

const fx = (name) => path.join(fixtures, name)
const modelDirs = (home) => fs.readdirSync(path.join(home.root, 'models')).filter((n) => !n.startsWith('.'))

test('registers HF directories (copy) with camelCase records', async () => {
  const { home, models } = tmpHome()
  const llama = await models.registerDir(fx('tiny-llama'), { tags: ['tiny', 'test'], task: 'chat' })
  assert.equal(llama.name, 'tiny-llama')
  assert.equal(llama.version, 1)
  assert.equal(llama.kind, 'base')
  assert.equal(llama.family, 'llama')
  assert.equal(llama.architecture, 'LlamaForCausalLM')
  assert.equal(llama.modelType, 'llama')
  assert.equal(llama.storage, 'copy')
  assert.equal(llama.parentId, null)
  assert.equal(llama.task, 'chat')
  assert.deepEqual(llama.tags, ['tiny', 'test'])
  assert.ok(llama.params > 0)
  assert.match(llama.id, /^mdl_/)
  assert.equal(llama.path, path.join(home.root, 'models', llama.id))
  assert.ok(llama.files.some((f) => f.name === 'model.safetensors' && f.bytes > 0 && /^[0-9a-f]{64}$/.test(f.sha256)))
  assert.equal(llama.tokenizer, 'tokenizer.json')
  // config.json keeps its own keys.
  assert.equal(llama.config.num_hidden_layers, 2)
  assert.equal(llama.config.rope_parameters.rope_theta, 10000)
  assert.ok('createdAt' in llama && 'modelType' in llama && !('model_type' in llama))

  const gpt2 = await models.registerDir(fx('tiny-gpt2'))
  assert.equal(gpt2.family, 'gpt2')
  const qwen = await models.registerDir(fx('tiny-qwen2'))
  assert.equal(qwen.family, 'llama')
  assert.equal(qwen.modelType, 'qwen2')
  assert.deepEqual(modelDirs(home).sort(), [llama.id, gpt2.id, qwen.id].sort())
})

test('storage: reference leaves the files in place', async () => {
  const { home, models } = tmpHome()
  const m = await models.registerDir(fx('tiny-gpt2'), { storage: 'reference' })
  assert.equal(m.storage, 'reference')
  assert.equal(m.path, fs.realpathSync(fx('tiny-gpt2')))
  assert.deepEqual(modelDirs(home), [])
  await models.delete(m.id)
  assert.ok(fs.existsSync(path.join(fx('tiny-gpt2'), 'model.safetensors')), 'referenced files are never deleted')
})

test('integer versions, aliases, resolve', async () => {
  const { models } = tmpHome()
  const v = []
  for (let i = 0; i < 3; i++) v.push(await models.registerDir(fx('tiny-llama'), { name: 'chat' }))
  assert.deepEqual(v.map((m) => m.version), [1, 2, 3])
  assert.equal(models.resolve('chat').id, v[2].id)
  assert.equal(models.resolve('chat@latest').id, v[2].id)
  assert.equal(models.resolve('chat@2').id, v[1].id)
  assert.equal(models.resolve(v[0].id).version, 1)
  assert.equal(models.get(v[0].id).name, 'chat')

  const aliased = models.setAlias('chat@1', 'production')
  assert.deepEqual(aliased.aliases, ['production'])
  assert.equal(models.resolve('chat@production').id, v[0].id)
  // Moving the alias is one call.
  models.setAlias('chat@3', 'production')
  assert.equal(models.resolve('chat@production').id, v[2].id)
  assert.deepEqual(models.get(v[0].id).aliases, [])
  models.setAlias(v[1].id, 'candidate')
  assert.deepEqual(models.resolve('chat@candidate').aliases, ['candidate'])

  models.removeAlias('chat', 'production')
  assert.throws(() => models.resolve('chat@production'), { code: 'not_found' })
  assert.throws(() => models.removeAlias('chat', 'production'), { code: 'not_found' })
  assert.throws(() => models.setAlias('chat@1', 'latest'), { code: 'invalid_config' })
  assert.throws(() => models.setAlias('chat@1', '7'), (e) => e.code === 'invalid_config' && e.field === 'alias')
  assert.throws(() => models.resolve('chat@9'), { code: 'not_found' })
  assert.throws(() => models.get('chat'), { code: 'not_found' })
})

test('list with filters', async () => {
  const { models } = tmpHome()
  const llama = await models.registerDir(fx('tiny-llama'), { tags: ['a'], task: 'chat' })
  const gpt2 = await models.registerDir(fx('tiny-gpt2'), { tags: ['b'] })
  const lora = await models.registerDir(fx('tiny-llama-lora'), { parent: 'tiny-llama' })
  const names = (ms) => ms.map((m) => m.name)
  assert.deepEqual(names(models.list()), ['tiny-gpt2', 'tiny-llama', 'tiny-llama-lora'])
  assert.deepEqual(names(models.list({})), names(models.list()))
  assert.deepEqual(names(models.list({ kind: 'lora' })), ['tiny-llama-lora'])
  assert.deepEqual(names(models.list({ kind: 'base', family: 'llama' })), ['tiny-llama'])
  assert.deepEqual(names(models.list({ family: 'gpt2' })), ['tiny-gpt2'])
  assert.deepEqual(names(models.list({ task: 'chat' })), ['tiny-llama'])
  assert.deepEqual(names(models.list({ tag: 'b' })), ['tiny-gpt2'])
  assert.deepEqual(names(models.list({ name: 'tiny-llama' })), ['tiny-llama'])
  assert.deepEqual(names(models.list({ parent: llama.id })), ['tiny-llama-lora'])
  assert.equal(lora.parentId, llama.id)
  assert.equal(gpt2.parentId, null)
  assert.throws(() => models.list({ kind: 'huge' }), (e) => e.code === 'invalid_config' && e.field === 'kind')
  assert.throws(() => models.list({ colour: 'red' }), (e) => e.code === 'invalid_config' && e.message.includes('colour'))
})

test('a PEFT adapter needs its parent; delete refuses while a child adapter exists unless force', async () => {
  const { home, models } = tmpHome()
  await assert.rejects(models.registerDir(fx('tiny-llama-lora')), (e) => e.code === 'invalid_config' && e.field === 'parent')
  const base = await models.registerDir(fx('tiny-llama'), { name: 'base' })
  const lora = await models.registerDir(fx('tiny-llama-lora'), { parent: 'base@1' })
  assert.equal(lora.kind, 'lora')
  assert.equal(lora.parentId, base.id)
  assert.equal(lora.config.peft_type, 'LORA')
  await assert.rejects(models.registerDir(fx('tiny-gpt2'), { parent: 'base' }), { code: 'invalid_config' })

  const e = await models.delete('base').then(
    () => assert.fail('delete should refuse'),
    (e) => e,
  )
  assert.equal(e.code, 'in_use')
  assert.ok(e.message.includes('tiny-llama-lora'), e.message)
  assert.equal(models.list().length, 2)

  await models.delete('base', { force: true })
  assert.deepEqual(models.list(), [])
  assert.deepEqual(modelDirs(home), [])
  await assert.rejects(models.delete('base'), { code: 'not_found' })
  await assert.rejects(models.delete('x', { force: 'yes' }), (e) => e.code === 'invalid_config' && e.field === 'force')
})

test('createPreset and presets()', async () => {
  const { models } = tmpHome()
  const presets = ModelRegistry.presets()
  assert.ok(presets.length >= 1)
  const nano = presets.find((p) => p.name === 'nano')
  assert.ok(nano && nano.hiddenSize > 0 && nano.numHiddenLayers > 0 && typeof nano.description === 'string')
  const a = await models.createPreset('nano', { seed: 1, tags: ['scratch'] })
  assert.equal(a.name, 'nano')
  assert.equal(a.kind, 'base')
  assert.equal(a.source, 'preset:nano')
  assert.deepEqual(a.lineage, { preset: 'nano', seed: 1 })
  assert.deepEqual(a.tags, ['scratch'])
  const b = await models.createPreset('nano', { name: 'nano-b', seed: 1 })
  const c = await models.createPreset('nano', { name: 'nano-c', seed: 2 })
  const weights = (m) => m.files.find((f) => f.name === 'model.safetensors').sha256
  assert.equal(weights(a), weights(b), 'same seed, same weights')
  assert.notEqual(weights(a), weights(c))
  const d = await models.createPreset('nano')
  assert.equal(d.version, 2)
  // Integers beyond 32 bits stay integers (napi hands them over as JSON floats).
  const e = await models.createPreset('nano', { name: 'nano-e', seed: 2 ** 40 })
  assert.deepEqual(e.lineage, { preset: 'nano', seed: 2 ** 40 })
  await assert.rejects(models.createPreset('gigantic'), (e) => e.code === 'invalid_config' && e.field === 'preset' && e.message.includes('gigantic'))
  await assert.rejects(models.createPreset('nano', { seed: 'x' }), (e) => e.code === 'invalid_config' && e.field === 'seed')
  await assert.rejects(models.createPreset('nano', { onEvent: () => {} }), (e) => e.code === 'invalid_config' && e.field === 'onEvent')
})

test('registering a directory that is not a model is refused with a code', async () => {
  const { models } = tmpHome()
  await assert.rejects(models.registerDir(path.join(tmpDir(), 'missing')), { code: 'file_not_found' })
  const empty = tmpDir()
  const e = await models.registerDir(empty).then(() => assert.fail('should refuse'), (e) => e)
  assert.ok(['invalid_data', 'file_not_found', 'invalid_config'].includes(e.code), e.code)
  assert.ok(e.message.includes(fs.realpathSync(empty)), e.message)
  assert.deepEqual(models.list(), [])
})

test('registerDir refuses at the door what could not be loaded, leaving the home unchanged', async () => {
  const { home, models, files } = tmpHome()
  const kept = await models.registerDir(fx('tiny-gpt2'))
  const badCopy = (fixture, name, edit) => {
    const d = path.join(files, name)
    fs.cpSync(fx(fixture), d, { recursive: true })
    const cfgFile = path.join(d, fixture.endsWith('-lora') ? 'adapter_config.json' : 'config.json')
    if (edit) fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), ...edit }))
    return d
  }
  const refused = async (dir, opts) => {
    let err
    await assert.rejects(models.registerDir(dir, opts), (e) => {
      err = e
      return e.code === 'invalid_data'
    })
    return err
  }
  let e = await refused(badCopy('tiny-llama', 'layers', { num_hidden_layers: 0 }))
  assert.equal(path.basename(e.file), 'config.json')
  assert.equal(e.field, 'num_hidden_layers')
  e = await refused(badCopy('tiny-llama', 'ffn', { intermediate_size: 2 ** 40 }))
  assert.equal(e.field, 'intermediate_size')
  e = await refused(badCopy('tiny-llama', 'vocab', { vocab_size: 500 }))
  assert.equal(path.basename(e.file), 'model.safetensors')
  assert.equal(e.field, 'model.embed_tokens.weight')
  const tok = badCopy('tiny-llama', 'tokenizer')
  fs.writeFileSync(path.join(tok, 'tokenizer.json'), '{"model": 1}')
  e = await refused(tok)
  assert.equal(path.basename(e.file), 'tokenizer.json')
  // An adapter registered onto a base of another family.
  e = await refused(fx('tiny-llama-lora'), { parent: kept.id })
  assert.equal(path.basename(e.file), 'adapter_model.safetensors')
  assert.match(e.message, /not a linear module/)
  assert.deepEqual(models.list().map((m) => m.id), [kept.id])
  assert.deepEqual(modelDirs(home), [kept.id])
})
