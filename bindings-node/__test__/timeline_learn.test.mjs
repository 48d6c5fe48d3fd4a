// The timeline and its plot, `learn`, and a language model monitor's feeds, from
// JavaScript: the same scenario and checks as bindings-python/tests/test_timeline_learn.py,
// in camelCase. `timeline`, `plotTimeline` (a Buffer) and `learn` return Promises.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { anneal, tmpHome } from './helpers.mjs'

// Rows 0..150 follow one concept; from row 150 the features move and the concept changes.
const SCENARIO = {
  rows: 360,
  numeric: 3,
  categorical: 1,
  categories: 3,
  classes: 2,
  separation: 3.0,
  seed: 11,
  drift: [
    { kind: 'concept', start: 150, magnitude: 2.0 },
    { kind: 'covariate', start: 150, magnitude: 1.0 },
  ],
}

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

const records = (s, start, stop) => s.rows.slice(start, stop).map((r, i) => ({ ...r, label: s.labels[start + i] }))

/** `churn` v1 (logistic regression on rows 0..100) in production, and the scenario. */
async function churn() {
  const env = tmpHome()
  const s = await anneal.syntheticScenario(SCENARIO)
  await env.ds.importRecords(records(s, 0, 100), { name: 'churn-train' })
  const engine = env.home.training()
  const job = engine.createJob({ dataset: 'churn-train', evalFraction: 0.2, method: { classifier: {} }, outputName: 'churn' })
  await engine.run(job.id)
  env.models.promote('churn@1')
  env.s = s
  return env
}

/** Predicts rows start..stop with the production model and labels each with its truth. */
async function stream({ home, s }, start, stop) {
  const p = await home.predictor('churn@production')
  const c = home.continual()
  const preds = await p.predictBatch(s.rows.slice(start, stop))
  preds.forEach((pred, i) => c.label(pred.predictionId, s.labels[start + i]))
}

async function accuracy({ home, s }, model, start, stop) {
  const preds = await (await home.predictor(model, { logFeatures: false })).predictBatch(s.rows.slice(start, stop))
  return preds.filter((p, i) => p.label === s.labels[start + i]).length / (stop - start)
}

const rejectsWith = async (promise, code, field) => {
  await assert.rejects(promise, (e) => {
    assert.equal(e.code, code, e.message)
    if (field !== undefined) assert.equal(e.field, field, e.message)
    return true
  })
}

test('timeline and plot after a monitored retrain', async () => {
  const env = await churn()
  const m = env.home.monitors().create('churn', {
    triggers: { driftWindow: 60, accuracyFloor: 0.7 },
    guards: { minSamples: 20 },
    action: { replayFraction: 0 },
    gate: { mode: 'auto', margin: 0 },
  })
  await stream(env, 100, 150)
  assert.equal((await m.tick()).outcome, 'idle')
  await stream(env, 150, 230)
  assert.equal((await m.tick()).outcome, 'promoted')
  await stream(env, 230, 260)

  const c = env.home.continual()
  const t = await c.timeline('churn', { window: 20 })
  assert.deepEqual(Object.keys(t).sort(), [
    'accuracy', 'accuracyFloor', 'drift', 'evaluations', 'events', 'labelled', 'modelName', 'since', 'until',
    'versions', 'window',
  ])
  assert.deepEqual([t.modelName, t.window, t.labelled, t.accuracyFloor], ['churn', 20, 160, 0.7])
  const points = t.accuracy
  assert.deepEqual(points.map((p) => p.index), Array.from({ length: 160 }, (_, i) => i + 1))
  assert.deepEqual(points.map((p) => p.version), [...Array(130).fill(1), ...Array(30).fill(2)])
  const last20 = points.slice(-20).filter((p) => p.correct).length / 20
  assert.ok(Math.abs(points.at(-1).accuracy - last20) < 1e-12)
  assert.equal(points.at(-1).windowRows, 20)
  assert.ok('predictionId' in points[0] && 'modelId' in points[0])
  assert.deepEqual(t.versions.map((v) => [v.version, v.labelled]), [[1, 130], [2, 30]])
  assert.deepEqual(t.events.map((e) => e.kind), ['promoted', 'retrain_started', 'promoted'])
  assert.deepEqual([t.events[0].version, t.events[0].previousVersion], [1, null])
  assert.deepEqual([t.events[2].version, t.events[2].previousVersion], [2, 1])
  assert.ok(t.drift.some((d) => d.verdict === 'drift' && d.driftedColumns > 0))
  assert.ok('log_loss' in t.evaluations[0].metrics, 'metric names are data: not camelCased')
  const thin = await c.timeline('churn@production', { window: 20, maxPoints: 10 })
  assert.ok(thin.accuracy.length <= 10)
  assert.deepEqual([thin.accuracy[0], thin.accuracy.at(-1)], [points[0], points.at(-1)])

  // The plot: a PNG Buffer of the asked size; with a path, the same bytes in the file.
  const png = await c.plotTimeline('churn', null, { window: 20, width: 640, height: 400, title: 'churn' })
  assert.ok(Buffer.isBuffer(png) && png.subarray(0, 8).equals(PNG))
  assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20)], [640, 400])
  const out = path.join(env.files, 'timeline.png')
  const again = await c.plotTimeline('churn', out, { window: 20, width: 640, height: 400, title: 'churn' })
  assert.ok(fs.readFileSync(out).equals(again) && again.equals(png))
  assert.deepEqual(fs.readdirSync(env.files), ['timeline.png'])

  // Coded errors naming the field; nothing written.
  const bad = path.join(env.files, 'bad.png')
  for (const [opts, field] of [
    [{ window: 0 }, 'window'],
    [{ maxPoints: 1 }, 'maxPoints'],
    [{ since: 'yesterday' }, 'since'],
    [{ width: 10 }, 'width'],
    [{ height: 'tall' }, 'height'],
    [{ colour: 'red' }, 'colour'],
    [{ max_points: 5 }, undefined],
  ]) {
    await rejectsWith(c.plotTimeline('churn', bad, opts), 'invalid_config', field)
  }
  assert.ok(!fs.existsSync(bad))
  await rejectsWith(c.timeline('churn', { window: -1 }), 'invalid_config', 'window')
  await rejectsWith(c.timeline('nobody'), 'not_found')
  await rejectsWith(c.timeline(42), 'invalid_config', 'modelName')
  await rejectsWith(c.plotTimeline('churn', path.join(env.files, 'no-dir', 't.png')), 'file_not_found')
})

test('learn registers a better version with lineage; the parent is unchanged', async () => {
  const env = await churn()
  const { home, models, s } = env
  const c = home.continual()
  const served = await home.predictor('churn@production')
  const probe = await served.predict(s.rows[300])
  const v1 = models.resolve('churn@1')

  const v2 = await c.learn('churn@production', records(s, 150, 300), { epochs: 3, learningRate: 0.1 })
  assert.deepEqual([v2.name, v2.version, v2.kind, v2.source], ['churn', 2, 'classifier', `learn:${v1.id}`])
  const [before, after] = [await accuracy(env, 'churn@1', 300, 360), await accuracy(env, 'churn@2', 300, 360)]
  assert.ok(after > before + 0.1, `${before} -> ${after}`)
  assert.deepEqual([v2.lineage.base, v2.lineage.baseRef], [v1.id, 'churn@1'])
  const l = v2.lineage.learned
  assert.deepEqual([l.records, l.epochs, l.batchSize, l.steps, l.learningRate], [150, 3, 1, 450, 0.1])
  assert.ok(l.accuracyAfter > l.accuracyBefore && l.logLossAfter < l.logLossBefore)
  assert.equal(v2.files.find((f) => f.name === 'learned_records.jsonl').sha256, l.recordsSha256)
  assert.equal(models.resolve('churn@production').id, v1.id)
  assert.equal(models.resolve('churn@1').sha256, v1.sha256)
  assert.deepEqual((await served.predict(s.rows[300])).probabilities, probe.probabilities)
  const other = await c.learn('churn@1', records(s, 150, 250), { batchSize: 25, outputName: 'churn-sgd' })
  assert.deepEqual([other.name, other.version, other.lineage.learned.steps], ['churn-sgd', 1, 4])
})

test('learn refuses bad records naming the record and field, registering nothing', async () => {
  const env = await churn()
  const c = env.home.continual()
  const good = records(env.s, 150, 155)
  const before = env.models.list().map((m) => m.id)
  const bad = (i, change) => good.map((r, j) => (j === i ? change({ ...r }) : r))
  const cases = [
    [bad(2, (r) => ({ ...r, nope: 1 })), 3, 'nope'],
    [bad(3, ({ x1, ...r }) => r), 4, 'x1'],
    [bad(0, (r) => ({ ...r, x0: 'high' })), 1, 'x0'],
    [bad(1, (r) => ({ ...r, x0: NaN })), 2, 'x0'],
    [bad(4, (r) => ({ ...r, label: 7 })), 5, 'label'],
    [bad(1, ({ label, ...r }) => r), 2, 'label'],
    [[...good, 'not an object'], 6, undefined],
  ]
  for (const [rows, record, field] of cases) {
    await assert.rejects(c.learn('churn', rows), (e) => {
      assert.equal(e.code, 'invalid_data', e.message)
      assert.deepEqual([e.record, e.field], [record, field], e.message)
      return true
    })
  }
  for (const [opts, field] of [
    [{ epochs: 0 }, 'epochs'],
    [{ batchSize: -1 }, 'batchSize'],
    [{ learningRate: 0 }, 'learningRate'],
    [{ outputName: '' }, 'outputName'],
    [{ batch_size: 2 }, undefined],
  ]) {
    await rejectsWith(c.learn('churn', good, opts), 'invalid_config', field)
  }
  await rejectsWith(c.learn('churn', { x0: 1, label: 0 }), 'invalid_config', 'records')
  await rejectsWith(c.learn('nobody', good), 'not_found')
  assert.deepEqual(env.models.list().map((m) => m.id), before)
})

test("a language model monitor takes feeds that its ticks count", async () => {
  const { home, models, ds } = tmpHome()
  await models.createPreset('nano')
  models.promote('nano@1')
  await ds.importRecords(Array.from({ length: 12 }, (_, i) => ({ text: `the cat sat on mat ${i}.` })), { name: 'new-words' })
  await ds.importRecords(Array.from({ length: 10 }, (_, i) => ({ x: i, label: i % 2 })), { name: 'rows' })
  // The metric trigger reads the fed rows (under minSamples: counted, not scored).
  const m = home.monitors().create('nano', { triggers: { newRows: 1000, metricLimit: 100 } })
  assert.deepEqual(m.feeds(), [])
  assert.equal((await m.tick()).labelled, 0)

  const fed = m.feed('new-words')
  assert.deepEqual(Object.keys(fed).sort(), ['dataset', 'datasetId', 'fedAt', 'id', 'jobId', 'rows'])
  assert.deepEqual([fed.dataset, fed.rows, fed.jobId], ['new-words', 12, null])
  assert.deepEqual(m.feeds(), [fed])
  assert.throws(() => m.feed('new-words'), (e) => e.code === 'already_exists')
  assert.throws(() => m.feed('rows'), (e) => e.code === 'invalid_config' && e.field === 'dataset')
  assert.throws(() => m.feed('nothing-like-it'), (e) => e.code === 'not_found')
  assert.throws(() => m.feed(7), (e) => e.code === 'invalid_config' && e.field === 'dataset')

  // The tick counts the fed rows (no retrain under the thresholds) ...
  let r = await m.tick()
  assert.deepEqual([r.outcome, r.labelled, r.model], ['idle', 12, 'nano@1'], r.reason)
  assert.match(r.reason, /12 fed rows/)
  // ... and a retrain takes them: submitted only (runJobs: false), the feed names its job.
  m.setPolicy({ triggers: { newRows: 10 }, action: { maxSteps: 1 } })
  r = await m.tick({ runJobs: false })
  assert.deepEqual([r.outcome, r.trigger], ['retrain_started', 'new_rows'], r.reason)
  assert.equal(m.feeds()[0].jobId, r.jobId)
  assert.equal(home.training().job(r.jobId).status, 'pending')
})
