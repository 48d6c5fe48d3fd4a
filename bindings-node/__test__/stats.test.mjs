// Promotions, rollbacks and the alias history; home.stats() after a few operations;
// seeded synthetic scenarios; datasets.generate with its lineage.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { anneal, tmpHome, Home } from './helpers.mjs'

const { syntheticScenario, writeSyntheticScenario } = anneal

async function churn(models) {
  const out = []
  for (let seed = 0; seed < 3; seed++) out.push(await models.createPreset('nano', { name: 'churn', seed }))
  return out
}

test('promote, rollback, aliasHistory and aliasAt (camelCase records)', async () => {
  const { models } = tmpHome()
  const [v1, v2, v3] = await churn(models)
  let m = models.promote(v1.id, { reason: 'first' })
  assert.deepEqual([m.production, m.previous], [v1.id, null])
  assert.deepEqual(
    m.changes.map((c) => [c.alias, c.action, c.reason, c.modelId, c.previousId]),
    [['production', 'promote', 'first', v1.id, null]],
  )
  m = models.promote('churn@2')
  assert.deepEqual([m.production, m.previous], [v2.id, v1.id])
  models.setAlias(v3.id, 'candidate')
  m = models.promote('churn@candidate', { reason: 'better' })
  assert.deepEqual([m.production, m.previous], [v3.id, v2.id])
  const [removed] = models.aliasHistory('churn', 'candidate')
  assert.deepEqual([removed.modelId, removed.previousId, removed.previousVersion], [null, v3.id, 3])

  m = models.rollback('churn', { reason: 'regression' })
  assert.deepEqual([m.production, m.previous], [v2.id, v1.id])
  assert.equal(models.resolve('churn@production').id, v2.id)
  m = models.rollback('churn')
  assert.deepEqual([m.production, m.previous], [v1.id, null])
  assert.throws(() => models.rollback('churn'), (e) => e.code === 'not_found')

  const history = models.aliasHistory('churn', 'production')
  assert.deepEqual(history.map((c) => c.action), ['rollback', 'rollback', 'promote', 'promote', 'promote'])
  assert.deepEqual(history.map((c) => c.version), [1, 2, 3, 2, 1])
  assert.equal(history[1].reason, 'regression')
  assert.deepEqual(new Set(models.aliasHistory('churn').map((c) => c.alias)), new Set(['production', 'previous', 'candidate']))

  assert.equal(models.aliasAt('churn', 'production', '2000-01-01T00:00:00Z'), null)
  const now = models.aliasAt('churn', 'production', new Date().toISOString())
  assert.deepEqual([now.modelId, now.action], [v1.id, 'rollback'])
  assert.throws(() => models.aliasAt('churn', 'production', 'yesterday'), (e) => e.code === 'invalid_config' && e.field === 'at')
  assert.throws(() => models.promote(v2.id, { reason: 'x'.repeat(5000) }), (e) => e.code === 'invalid_config' && e.field === 'reason')
  assert.throws(() => models.promote(v2.id, { why: 'x' }), (e) => e.code === 'invalid_config' && e.field === 'why')
})

test('home.stats() after a few operations', async () => {
  const { dir, home, ds, models } = tmpHome()
  const empty = await Home.open(path.join(dir, 'empty')).stats()
  assert.deepEqual([empty.jobs.total, empty.recent, empty.modelsByKind], [0, [], {}])

  await ds.importRecords([{ prompt: 'a', completion: 'b' }], { name: 'pairs' })
  const [v1, v2] = await churn(models)
  models.promote(v1.id)
  models.promote(v2.id)
  models.rollback('churn')
  const gen = await home.generator(v1.id)
  await gen.generate('hi', { maxNewTokens: 2, ignoreEos: true })

  const s = await home.stats()
  assert.deepEqual(s.modelsByKind, { base: 3 })
  assert.deepEqual(s.datasetsByFormat, { completion: 1 })
  assert.deepEqual(s.presets, [{ preset: 'nano', models: 3, jobs: 0 }])
  assert.deepEqual([s.aliases.promotions, s.aliases.rollbacks], [2, 1])
  assert.deepEqual(s.jobs.duration, { count: 0, meanS: null, p50S: null, p95S: null, minS: null, maxS: null })
  assert.equal(s.generations.length, 1)
  const g = s.generations[0]
  assert.deepEqual([g.modelId, g.calls, g.texts, g.generatedTokens], [v1.id, 1, 1, 2])
  assert.deepEqual(s.monitoring.production.map((p) => [p.name, p.modelId, p.version]), [['churn', v1.id, 1]])
  const kinds = new Set(s.recent.map((a) => a.kind))
  for (const k of ['dataset_created', 'model_registered', 'alias_changed', 'generation']) assert.ok(kinds.has(k), k)
  assert.equal(s.recent[0].kind, 'generation', 'newest first')

  assert.equal((await home.stats({ recent: 2 })).recent.length, 2)
  const later = await home.stats({ since: '2999-01-01T00:00:00Z' })
  assert.deepEqual([later.recent, later.aliases.changes, later.since], [[], 0, '2999-01-01T00:00:00.000Z'])
  assert.deepEqual(later.modelsByKind, { base: 3 }, 'inventories ignore since')
  await assert.rejects(home.stats({ since: 'soon' }), (e) => e.code === 'invalid_config' && e.field === 'since')
  await assert.rejects(home.stats({ recent: 1e6 }), (e) => e.code === 'invalid_config' && e.field === 'recent')
})

test('syntheticScenario is seeded; writeSyntheticScenario writes an importable file', async () => {
  const { ds, files } = tmpHome()
  const drift = [{ kind: 'covariate', start: 150, magnitude: 3 }]
  const a = await syntheticScenario({ rows: 200, seed: 7, classes: 3, drift })
  const b = await syntheticScenario({ rows: 200, seed: 7, classes: 3, drift })
  const c = await syntheticScenario({ rows: 200, seed: 8, classes: 3, drift })
  assert.deepEqual(a, b)
  assert.notDeepEqual(a.rows, c.rows)
  assert.deepEqual(a.columns, ['x0', 'x1', 'x2', 'x3', 'c0'])
  assert.equal(a.rows.length, 200)
  assert.equal(a.labels.length, 200)
  assert.ok(a.labels.every((y) => [0, 1, 2].includes(y)))
  assert.ok(a.probabilities.every((p) => Math.abs(p.reduce((x, y) => x + y) - 1) < 1e-9))
  const plain = await syntheticScenario({ rows: 200, seed: 7, classes: 3 })
  assert.deepEqual(plain.rows.slice(0, 150), a.rows.slice(0, 150))
  assert.notDeepEqual(plain.rows.slice(150), a.rows.slice(150))

  const file = path.join(files, 'scenario.jsonl')
  await writeSyntheticScenario(file, { rows: 200, seed: 7, classes: 3, drift })
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  assert.deepEqual(lines.map((r) => r.label), a.labels)
  const rec = await ds.importFile(file)
  assert.deepEqual([rec.format, rec.numRecords], ['tabular', 200])

  for (const [opts, field] of [
    [{ rows: 0 }, 'rows'],
    [{ classes: 1 }, 'classes'],
    [{ drift: [{ kind: 'label', start: 5000 }] }, 'drift[0].start'],
    [{ drift: [{ kind: 'sideways' }] }, 'drift[0].kind'],
    [{ colour: 1 }, 'colour'],
  ]) {
    await assert.rejects(syntheticScenario(opts), (e) => e.code === 'invalid_config' && e.field === field, field)
  }
  const bad = path.join(files, 'bad.jsonl')
  await assert.rejects(writeSyntheticScenario(bad, { rows: 0 }), (e) => e.code === 'invalid_config')
  assert.ok(!fs.existsSync(bad))
})

test('datasets.generate stores completions with their lineage', async () => {
  const { ds, models } = tmpHome()
  const nano = await models.createPreset('nano', { seed: 0 })
  const events = []
  const rec = await ds.generate(nano.id, ['the cat', 'a dog'], {
    name: 'gen',
    generation: { maxNewTokens: 3, ignoreEos: true },
    batchSize: 2,
    onEvent: (e) => events.push(e),
  })
  assert.deepEqual([rec.name, rec.format, rec.numRecords, rec.source], ['gen', 'completion', 2, `generate:${nano.id}`])
  assert.deepEqual(ds.preview('gen', 5).map((r) => r.prompt), ['the cat', 'a dog'])
  const lin = ds.lineage('gen')
  assert.deepEqual([lin.model, lin.modelRef, lin.prompts], [nano.id, `${nano.name}@${nano.version}`, 2])
  assert.equal(lin.generation.maxNewTokens, 3)
  assert.equal(typeof lin.generation.seed, 'number')
  await new Promise((resolve) => setImmediate(resolve))
  assert.equal(events[0].type, 'task_started')
  const plainDs = await ds.importRecords([{ text: 'x' }], { name: 'plain' })
  assert.equal(ds.lineage(plainDs.id), null)
  await assert.rejects(ds.generate(nano.id, []), (e) => e.code === 'invalid_config' && e.field === 'prompts')
  await assert.rejects(ds.generate(nano.id, ['x', 3]), (e) => e.code === 'invalid_config' && e.field === 'prompts[1]')
  await assert.rejects(
    ds.generate(nano.id, ['x'], { generation: { maxNewTokenz: 3 } }),
    (e) => e.code === 'invalid_config' && e.field === 'generation.maxNewTokenz',
  )
})
