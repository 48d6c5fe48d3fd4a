import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { Home, CancelToken, tmpHome, tmpDir, fixtures } from './helpers.mjs'

// The codes of the core's ErrorKind::code(), in its order.
const CODES = [
  'invalid_config', 'invalid_data', 'not_found', 'already_exists', 'duplicate_content', 'in_use', 'file_not_found',
  'io', 'incompatible_home', 'cancelled', 'callback_failed', 'storage', 'compute', 'internal',
]

function checkError(e, code, label) {
  assert.ok(e instanceof Error, `${label}: not an Error: ${e}`)
  assert.ok(CODES.includes(e.code), `${label}: unknown code ${e.code}`)
  assert.equal(e.code, code, `${label}: ${e.message}`)
  assert.equal(typeof e.message, 'string')
  assert.ok(e.message.length > 0)
}

test('every synchronous failure throws an Error with the core code', async () => {
  const { ds, models } = tmpHome()
  await ds.importRecords([{ text: 'a' }], { name: 'd' })
  await models.registerDir(path.join(fixtures, 'tiny-gpt2'), { name: 'm' })
  const cases = [
    ['Home.open(file)', () => Home.open(path.join(fixtures, 'tiny-gpt2', 'config.json')), 'invalid_config'],
    ['Home.open(42)', () => Home.open(42), 'invalid_config'],
    ['ds.get', () => ds.get('missing'), 'not_found'],
    ['ds.get(1)', () => ds.get(1), 'invalid_config'],
    ['ds.preview', () => ds.preview('missing', 3), 'not_found'],
    ['ds.preview n', () => ds.preview('d', -1), 'invalid_config'],
    ['ds.preview n type', () => ds.preview('d', '3'), 'invalid_config'],
    ['ds.stats', () => ds.stats('missing'), 'not_found'],
    ['models.get', () => models.get('mdl_missing'), 'not_found'],
    ['models.resolve', () => models.resolve('m@7'), 'not_found'],
    ['models.resolve alias', () => models.resolve('m@prod'), 'not_found'],
    ['models.list filter', () => models.list({ kind: 'nope' }), 'invalid_config'],
    ['models.list unknown', () => models.list({ bogus: 1 }), 'invalid_config'],
    ['models.list type', () => models.list(5), 'invalid_config'],
    ['models.setAlias model', () => models.setAlias('missing', 'prod'), 'not_found'],
    ['models.setAlias name', () => models.setAlias('m', 'bad alias'), 'invalid_config'],
    ['models.removeAlias', () => models.removeAlias('m', 'prod'), 'not_found'],
  ]
  for (const [label, fn, code] of cases) {
    let thrown
    try {
      fn()
    } catch (e) {
      thrown = e
    }
    assert.ok(thrown, `${label} did not throw`)
    checkError(thrown, code, label)
  }
})

test('every asynchronous failure rejects (never throws) with the core code', async () => {
  const { ds, models, files } = tmpHome()
  await ds.importRecords([{ text: 'a' }], { name: 'd' })
  const base = await models.registerDir(path.join(fixtures, 'tiny-llama'), { name: 'base' })
  await models.registerDir(path.join(fixtures, 'tiny-llama-lora'), { parent: base.id })
  const cancelled = new CancelToken()
  cancelled.cancel()
  const cases = [
    ['importFile missing', () => ds.importFile(path.join(files, 'none.jsonl')), 'file_not_found'],
    ['importFile dir', () => ds.importFile(files), 'invalid_config'],
    ['importFile type', () => ds.importFile(5), 'invalid_config'],
    ['importFile options type', () => ds.importFile('x.jsonl', 'fast'), 'invalid_config'],
    ['importRecords taken', () => ds.importRecords([{ text: 'b' }], { name: 'd' }), 'already_exists'],
    ['importRecords dup', () => ds.importRecords([{ text: 'a' }], { name: 'e' }), 'duplicate_content'],
    ['importRecords bad', () => ds.importRecords([{ nothing: 1 }]), 'invalid_data'],
    ['importRecords cancelled', () => ds.importRecords([{ text: 'c' }], { cancel: cancelled }), 'cancelled'],
    ['split', () => ds.split('missing', 0.5), 'not_found'],
    ['split fraction', () => ds.split('d', 0.5), 'invalid_config'],
    ['split fraction type', () => ds.split('d', '0.5'), 'invalid_config'],
    ['ds.delete', () => ds.delete('missing'), 'not_found'],
    ['registerDir missing', () => models.registerDir(path.join(tmpDir(), 'none')), 'file_not_found'],
    ['registerDir options', () => models.registerDir(path.join(fixtures, 'tiny-gpt2'), { storage: 'link' }), 'invalid_config'],
    ['registerDir cancelled', () => models.registerDir(path.join(fixtures, 'tiny-gpt2'), { cancel: cancelled }), 'cancelled'],
    ['createPreset', () => models.createPreset('enormous'), 'invalid_config'],
    ['createPreset name', () => models.createPreset('nano', { name: '@@' }), 'invalid_config'],
    ['models.delete in use', () => models.delete('base'), 'in_use'],
    ['models.delete missing', () => models.delete('missing'), 'not_found'],
  ]
  for (const [label, fn, code] of cases) {
    let p
    assert.doesNotThrow(() => (p = fn()), `${label} threw synchronously`)
    assert.ok(p instanceof Promise, `${label} did not return a Promise`)
    const e = await p.then(
      () => assert.fail(`${label} resolved`),
      (e) => e,
    )
    checkError(e, code, label)
  }
})

test('invalid_config names the option as JavaScript spells it', async () => {
  const { ds } = tmpHome()
  await assert.rejects(ds.importRecords([{ text: 'a' }], { txtMode: 'pages' }), (e) => {
    assert.equal(e.code, 'invalid_config')
    assert.equal(e.field, 'txtMode')
    assert.ok(e.message.includes('`txtMode`'), e.message)
    return true
  })
  await assert.rejects(ds.importRecords([{ text: 'a' }], { sourceFormat: 'csv' }), (e) => e.field === 'sourceFormat')
})

// Options are camelCase only: the Rust spelling of a field is an unknown key (the README:
// unknown keys are refused), at the top level and inside nested objects.
test('snake_case option keys are refused as unknown', async () => {
  const { home, ds, models } = tmpHome()
  const unknown = (key) => (e) => e.code === 'invalid_config' && e.message.includes(`\`${key}\``)
  await assert.rejects(ds.importRecords([{ text: 'a' }], { on_duplicate: 'reuse' }), unknown('on_duplicate'))
  assert.throws(() => home.training().jobs({ base_model: 'mdl_x' }), unknown('base_model'))
  const base = await models.createPreset('nano', { seed: 0 })
  assert.throws(
    () => home.training().createJob({ base: base.id, dataset: 'd', method: { lora: { target_modules: ['q_proj'] } } }),
    unknown('target_modules'),
  )
  const gen = await home.generator(base.id, { merge_adapter: false }).catch((e) => e)
  assert.ok(unknown('merge_adapter')(gen), `merge_adapter: ${gen}`)
  const g = await home.generator(base.id)
  await assert.rejects(g.generate('hi', { max_new_tokens: 2 }), unknown('max_new_tokens'))
})
