// Continual learning from JavaScript: a logistic classifier trained through
// `createJob` (method `{ classifier: {...} }`) on a tabular JSONL dataset, served by a
// Predictor (Promises, camelCase records), labels, realised accuracy, evaluation,
// drift checks and coded errors.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { tmpHome, write, jsonl } from './helpers.mjs'

/** A seeded generator (mulberry32) with normal draws. */
function rng(seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(next(), 1e-12))) * Math.cos(2 * Math.PI * next())
  return { next, normal }
}

/** Two classes: `a` around (0, 2), `b` around (3, 0); a colour that mostly follows the class. */
function rows(n, seed, shift = 0) {
  const r = rng(seed)
  return Array.from({ length: n }, (_, i) => {
    const c = i % 2
    const color = r.next() < 0.8 ? ['red', 'blue'][c] : ['blue', 'red'][c]
    return { x1: c * 3 + r.normal() * 0.6 + shift, x2: (1 - c) * 2 + r.normal() * 0.6 + shift, color, label: ['a', 'b'][c] }
  })
}

const features = ({ label, ...f }) => f
const PREDICTION_KEYS = ['confidence', 'label', 'model', 'modelId', 'predictionId', 'probabilities', 'unseen']

async function served() {
  const env = tmpHome()
  env.test = rows(40, 2)
  const train = await env.ds.importFile(write(env.files, 'train.jsonl', jsonl(rows(80, 1))), { name: 'toy' })
  assert.equal(train.format, 'tabular')
  await env.ds.importFile(write(env.files, 'test.jsonl', jsonl(env.test)), { name: 'toy-test' })
  const engine = env.home.training()
  const job = engine.createJob({ dataset: 'toy', method: { classifier: { c: 1.0 } }, outputName: 'toy-lr' })
  env.report = await engine.run(job.id)
  env.continual = env.home.continual()
  return env
}

test('a classifier trains through createJob', async () => {
  const { home, models, report } = await served()
  const rec = models.get(report.model)
  assert.deepEqual([rec.kind, rec.family, rec.name, rec.version], ['classifier', 'tabular', 'toy-lr', 1])
  assert.equal(home.training().job(report.jobId).status, 'completed')
  assert.throws(
    () => home.training().createJob({ dataset: 'toy', method: { classifier: { c: -1 } } }),
    (e) => e.code === 'invalid_config' && e.field === 'method.classifier.c',
  )
  assert.throws(
    () => home.training().createJob({ dataset: 'toy', method: { classifier: { maxIter: 0 } } }),
    (e) => e.code === 'invalid_config' && e.field === 'method.classifier.maxIter',
  )
})

test('predict, label, realised accuracy and evaluate', async () => {
  const { home, continual, test: data, report } = await served()
  const predictor = await home.predictor('toy-lr')
  assert.equal(predictor.model.id, report.model)
  assert.deepEqual([...predictor.classes].sort(), ['a', 'b'])
  const p = await predictor.predict(features(data[0]))
  assert.deepEqual(Object.keys(p).sort(), PREDICTION_KEYS)
  assert.deepEqual([p.model, p.modelId, p.unseen], ['toy-lr@1', report.model, []])
  const probs = Object.values(p.probabilities)
  assert.ok(Math.abs(probs.reduce((a, b) => a + b, 0) - 1) < 1e-9)
  assert.equal(p.confidence, p.probabilities[p.label])
  assert.equal(p.confidence, Math.max(...probs))
  assert.equal(p.label, data[0].label)

  const batch = await predictor.predictBatch(data.map(features))
  assert.equal(batch.length, 40)
  const logged = continual.predictions('toy-lr')
  assert.equal(logged.length, 41)
  assert.equal(logged[0].id, batch.at(-1).predictionId, 'newest first')
  // Logged features read back as JSON (numbers within an ulp).
  const last = features(data.at(-1))
  assert.deepEqual(Object.keys(logged[0].features).sort(), Object.keys(last).sort())
  assert.equal(logged[0].features.color, last.color)
  for (const k of ['x1', 'x2']) assert.ok(Math.abs(logged[0].features[k] - last[k]) < 1e-12, k)
  assert.equal(logged[0].featuresSha256.length, 64)
  assert.equal(continual.predictions('toy-lr', { limit: 3 }).length, 3)

  let hits = 0
  batch.forEach((b, i) => {
    const rec = continual.label(b.predictionId, data[i].label)
    assert.deepEqual([rec.actual, rec.correct], [data[i].label, b.label === data[i].label])
    assert.ok(rec.labelledAt)
    hits += b.label === data[i].label ? 1 : 0
  })
  assert.equal(continual.prediction(batch[0].predictionId).actual, data[0].label)
  assert.equal(continual.predictions('toy-lr', { labelled: true }).length, 40)
  const acc = continual.realisedAccuracy('toy-lr')
  assert.deepEqual(acc, { modelId: report.model, labelled: 40, correct: hits, accuracy: hits / 40 })
  assert.ok(acc.accuracy > 0.8)
  assert.equal(continual.realisedAccuracy('toy-lr', { last: 5 }).labelled, 5)
  assert.equal(continual.realisedAccuracy('toy-lr', { since: '2999-01-01T00:00:00Z' }).accuracy, null)

  const ev = await continual.evaluate('toy-lr', 'toy-test')
  assert.deepEqual([ev.model, ev.rows], ['toy-lr@1', 40])
  assert.equal(ev.metrics.accuracy, hits / 40)
  for (const k of ['f1_macro', 'log_loss', 'ece']) assert.ok(k in ev.metrics, k) // map keys keep their spelling
  assert.deepEqual(continual.evaluations('toy-lr').map((e) => e.id), [ev.id])
})

test('drift: dataset and prediction windows, insufficient data, options', async () => {
  const { home, ds, files, continual, test: data } = await served()
  const shifted = await ds.importFile(write(files, 'shifted.jsonl', jsonl(rows(40, 3, 3))), { name: 'shifted' })
  const few = await ds.importFile(write(files, 'few.jsonl', jsonl(rows(10, 4))), { name: 'few' })
  const moved = await continual.drift('toy-lr', { dataset: shifted.id })
  assert.equal(moved.verdict, 'drift')
  assert.equal(moved.window, `dataset:${shifted.id}`)
  assert.ok(moved.report.driftedColumns >= 2)
  assert.ok('windowMissingShare' in moved.report.columns[0])
  assert.ok(moved.expectedAccuracy > 0 && moved.expectedAccuracy <= 1)
  const small = await continual.drift('toy-lr', { dataset: 'few' })
  assert.equal(small.verdict, 'insufficient_data')
  assert.equal(small.report.windowRows, 10)
  const judged = await continual.drift('toy-lr', { dataset: few.id }, { minRows: 5 })
  assert.ok(['drift', 'no_drift'].includes(judged.verdict))
  const predictor = await home.predictor('toy-lr')
  await predictor.predictBatch(data.map(features))
  const recent = await continual.drift('toy-lr', { predictions: 40 })
  assert.equal(recent.window, 'predictions:last=40')
  assert.equal(recent.report.windowRows, 40)
  assert.equal(recent.verdict, 'no_drift')
  assert.deepEqual(
    continual.driftChecks('toy-lr').map((c) => c.id),
    [recent.id, judged.id, small.id, moved.id],
  )

  await assert.rejects(continual.drift('toy-lr', { weeks: 3 }), (e) => e.code === 'invalid_config' && e.field === 'window')
  await assert.rejects(
    continual.drift('toy-lr', { dataset: few.id }, { pValue: 2 }),
    (e) => e.code === 'invalid_config' && e.field === 'pValue',
  )
  await assert.rejects(
    continual.drift('toy-lr', { dataset: few.id }, { p_value: 0.1 }),
    (e) => e.code === 'invalid_config' && e.message.includes('`p_value`'),
  )
  assert.equal(continual.driftChecks('toy-lr').length, 4, 'failed checks store nothing')
})

test('coded errors: bad rows, unknown ids, bad labels and options', async () => {
  const { home, continual, test: data } = await served()
  const predictor = await home.predictor('toy-lr')
  await assert.rejects(
    predictor.predict({ ...features(data[0]), x1: 'tall' }),
    (e) => e.code === 'invalid_data' && e.record === 1 && e.field === 'x1',
  )
  const batch = data.slice(0, 4).map(features)
  batch[2] = { ...batch[2], x9: 1 }
  await assert.rejects(predictor.predictBatch(batch), (e) => e.code === 'invalid_data' && e.record === 3 && e.field === 'x9')
  await assert.rejects(predictor.predictBatch([features(data[0]), [1, 2]]), (e) => e.code === 'invalid_data' && e.record === 2)
  await assert.rejects(predictor.predict('x1'), (e) => e.code === 'invalid_data' && e.record === 1)
  assert.deepEqual(continual.predictions('toy-lr'), [], 'a failed call logs nothing')

  assert.throws(() => continual.label('pred_nope', 'a'), (e) => e.code === 'not_found' && e.message.includes('pred_nope'))
  const p = await predictor.predict(features(data[0]))
  assert.throws(() => continual.label(p.predictionId, 'zebra'), (e) => e.code === 'invalid_data' && e.field === 'label')
  assert.equal(continual.prediction(p.predictionId).actual, null)

  await assert.rejects(home.predictor('nope'), (e) => e.code === 'not_found')
  await assert.rejects(home.predictor('toy-lr', { maxRows: 0 }), (e) => e.code === 'invalid_config' && e.field === 'maxRows')
  await assert.rejects(continual.evaluate('toy-lr', 'nope'), (e) => e.code === 'not_found')
})
