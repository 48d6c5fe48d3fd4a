// Monitors from JavaScript: a production classifier trained on a seeded synthetic
// scenario, labelled predictions after the scenario drifts (covariate + concept), ticks
// (Promises) that detect the drift, retrain, gate and promote (auto) or wait for
// approval (manual), rollback, the decision trail, background ticking, bad policies and
// the events' shapes: the same keys as bindings-python/tests/test_monitor.py, in camelCase.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { anneal, tmpHome, flush } from './helpers.mjs'

// Rows 0..150 follow one concept; from row 150 the features move and the concept changes.
const SCENARIO = {
  rows: 260,
  numeric: 3,
  categorical: 1,
  categories: 3,
  classes: 2,
  separation: 3.0,
  seed: 11,
  drift: [
    { kind: 'concept', start: 150, magnitude: 2.0 },
    { kind: 'covariate', start: 150, magnitude: 3.0 },
  ],
}

// The keys of each monitor event (the Python test's, camelCased).
const EVENT_KEYS = {
  drift_detected: ['type', 'monitor', 'model', 'modelId', 'signal', 'windowRows', 'driftedColumns', 'score', 'threshold', 'expectedAccuracy'],
  retrain_started: ['type', 'monitor', 'model', 'modelId', 'jobId', 'trigger', 'reason'],
  candidate_evaluated: ['type', 'monitor', 'candidate', 'candidateId', 'production', 'datasetId', 'metric', 'candidateValue', 'productionValue', 'metrics', 'verdict', 'reason'],
  promoted: ['type', 'model', 'modelId', 'alias', 'previous', 'mode', 'monitor', 'reason'],
  rolled_back: ['type', 'model', 'modelId', 'alias', 'previous', 'monitor', 'reason'],
}

const policy = (mode = 'auto', gate = {}) => ({
  triggers: { driftWindow: 60 },
  guards: { minSamples: 20 },
  action: { replayFraction: 0 },
  gate: { mode, margin: 0, ...gate },
})

/** `churn` v1 (logistic regression on rows 0..100) in production, and the scenario. */
async function churn() {
  const env = tmpHome()
  const s = await anneal.syntheticScenario(SCENARIO)
  const records = s.rows.slice(0, 100).map((r, i) => ({ ...r, label: s.labels[i] }))
  await env.ds.importRecords(records, { name: 'churn-train' })
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

const version = ({ models }) => models.resolve('churn@production').version
const kinds = (m) => m.decisions().map((d) => d.kind)
const keysOf = (e) => Object.keys(e).sort()
const checkShapes = (events) => {
  for (const e of events.filter((e) => e.type in EVENT_KEYS)) {
    assert.deepEqual(keysOf(e), [...EVENT_KEYS[e.type]].sort(), e.type)
  }
}

test('drift -> retrain -> gate -> promote, decisions, rollback', async () => {
  const env = await churn()
  const monitors = env.home.monitors()
  const m = monitors.create('churn', policy())
  assert.equal(m.name, 'churn')
  assert.throws(() => monitors.create('churn', policy()), (e) => e.code === 'already_exists')
  assert.deepEqual(monitors.list().map((r) => r.name), ['churn'])
  assert.equal(monitors.get('churn').name, 'churn')

  // Before the drift: nothing happens, no event.
  await stream(env, 100, 150)
  let events = []
  let r = await m.tick({ onEvent: (e) => events.push(e) })
  await flush()
  assert.deepEqual([r.outcome, r.model, r.labelled], ['idle', 'churn@1', 50])
  assert.deepEqual(events, [])

  // After it: one tick detects the drift, retrains, gates and promotes.
  await stream(env, 150, 230)
  r = await m.tick({ onEvent: (e) => events.push(e) })
  await flush()
  assert.deepEqual([r.outcome, r.trigger, r.candidate, r.model], ['promoted', 'drift', 'churn@2', 'churn@1'])
  assert.ok(r.jobId)
  assert.equal(version(env), 2)
  const order = ['drift_detected', 'retrain_started', 'job_started', 'job_finished', 'candidate_evaluated', 'promoted']
  assert.deepEqual(events.map((e) => e.type).filter((t) => order.includes(t)), order)
  checkShapes(events)
  const by = Object.fromEntries(events.map((e) => [e.type, e]))
  assert.equal(by.drift_detected.windowRows, 60)
  assert.ok(by.drift_detected.driftedColumns.length > 0)
  assert.equal(by.retrain_started.jobId, r.jobId)
  const ev = by.candidate_evaluated
  assert.deepEqual([ev.verdict, ev.candidate, ev.production, ev.metric], ['passed', 'churn@2', 'churn@1', 'accuracy'])
  assert.ok(ev.candidateValue >= ev.productionValue)
  assert.deepEqual([by.promoted.mode, by.promoted.previous, by.promoted.monitor], ['auto', 'churn@1', 'churn'])

  assert.deepEqual(kinds(m), ['drift_detected', 'retrain_started', 'candidate_evaluated', 'promoted'])
  const d = m.decisions()
  // `details` is data: its keys keep their spelling.
  assert.equal(d[1].details.replayed_rows, 0)
  assert.equal(d[1].jobId, r.jobId)
  const rec = m.record()
  assert.equal(rec.currentJobId, null)
  assert.ok(rec.lastRetrainAt)
  assert.deepEqual([rec.retrainsToday, rec.consecutiveBreaches, rec.lastTick.outcome], [1, 0, 'promoted'])
  assert.equal(rec.policy.triggers.window, 200)
  assert.equal(rec.policy.gate.holdoutFraction, 0.3)

  // Roll back: production is v1 again, with the decision and a rolled_back event.
  events = []
  const moved = await m.rollback({ reason: 'operator says so', onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(moved.production, env.models.resolve('churn@1').id)
  assert.equal(version(env), 1)
  assert.deepEqual(events.map((e) => e.type), ['rolled_back'])
  checkShapes(events)
  assert.deepEqual([events[0].model, events[0].previous, events[0].reason], ['churn@1', 'churn@2', 'operator says so'])
  assert.equal(kinds(m).at(-1), 'rolled_back')

  monitors.delete('churn')
  assert.deepEqual(monitors.list(), [])
  assert.throws(() => monitors.get('churn'), (e) => e.code === 'not_found')
})

test('manual mode waits for approval', async () => {
  const env = await churn()
  await stream(env, 150, 230)
  const m = env.home.monitors().create('churn', policy('manual'), { name: 'churn-manual' })
  assert.equal(m.name, 'churn-manual')
  await assert.rejects(m.approve(), (e) => e.code === 'not_found')
  // runJobs: false submits the retrain only; the next tick runs and gates it.
  let r = await m.tick({ runJobs: false })
  assert.equal(r.outcome, 'retrain_started')
  assert.equal(env.home.training().job(r.jobId).status, 'pending')
  assert.equal(m.record().currentJobId, r.jobId)
  r = await m.tick()
  assert.deepEqual([r.outcome, r.candidate], ['awaiting_approval', 'churn@2'])
  assert.equal(version(env), 1)
  assert.equal(env.models.resolve('churn@candidate').version, 2)
  assert.equal((await m.tick()).outcome, 'awaiting_approval')

  const events = []
  const moved = await m.approve({ reason: 'looks good', onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(version(env), 2)
  assert.equal(moved.previous, env.models.resolve('churn@1').id)
  assert.deepEqual(events.map((e) => e.type), ['promoted'])
  checkShapes(events)
  assert.deepEqual([events[0].mode, events[0].reason], ['manual', 'looks good'])
  assert.equal(m.record().candidateId, null)
  assert.equal(kinds(m).at(-1), 'promoted')
})

test('bad policies are refused naming the field (camelCase)', async () => {
  const env = await churn()
  const monitors = env.home.monitors()
  const cases = [
    [{}, 'triggers'],
    [{ triggers: { floor: 0.7 } }, 'triggers.floor'],
    // A snake_case key is unknown in JavaScript (the message names it as given).
    [{ triggers: { accuracy_floor: 0.7 } }, 'triggers.accuracyFloor'],
    [{ triggers: { accuracyFloor: 1.5 } }, 'triggers.accuracyFloor'],
    [{ triggers: { accuracyFloor: 'high' } }, 'triggers.accuracyFloor'],
    [{ triggers: { accuracyFloor: NaN } }, 'triggers.accuracyFloor'],
    [{ triggers: { accuracyFloor: 0.7 }, guards: { minSamples: 1000 } }, 'guards.minSamples'],
    [{ triggers: { accuracyFloor: 0.7 }, guards: { cooldownSecs: -1 } }, 'guards.cooldownSecs'],
    [{ triggers: { scheduleSecs: 60 }, guards: { cooldownSecs: 120 } }, 'guards.cooldownSecs'],
    [{ triggers: { accuracyFloor: 0.7 }, gate: { mode: 'yolo' } }, 'gate.mode'],
    [{ triggers: { accuracyFloor: 0.7 }, gate: { metric: 'loss' } }, 'gate.metric'],
    [{ triggers: { accuracyFloor: 0.7 }, action: { replayFraction: 2 } }, 'action.replayFraction'],
    [{ triggers: { accuracyFloor: 0.7 }, action: { config: { c: -1 } } }, 'action.config.c'],
    ['often', 'policy'],
    [[], 'policy'],
  ]
  const m = monitors.create('churn', policy(), { name: 'kept' })
  for (const [bad, field] of cases) {
    const check = (e) => {
      assert.equal(e.code, 'invalid_config', e.message)
      assert.equal(e.field, field, `${JSON.stringify(bad)}: ${e.message}`)
      return true
    }
    assert.throws(() => monitors.create('churn', bad), check)
    assert.throws(() => m.setPolicy(bad), check)
  }
  assert.deepEqual(monitors.list().map((r) => r.name), ['kept'], 'nothing recorded')
  assert.equal(m.record().policy.triggers.driftWindow, 60)

  assert.throws(() => monitors.create('nothing', policy()), (e) => e.code === 'invalid_config' && e.field === 'model')
  assert.throws(() => monitors.create('churn', policy(), { nom: 'x' }), (e) => e.code === 'invalid_config' && e.field === 'nom')
  assert.throws(() => monitors.create(42, policy()), (e) => e.code === 'invalid_config' && e.field === 'modelName')
  assert.throws(() => monitors.get('nope'), (e) => e.code === 'not_found')
  await assert.rejects(m.tick({ runJobs: 'yes' }), (e) => e.code === 'invalid_config' && e.field === 'runJobs')
  await assert.rejects(m.tick({ onEvent: 42 }), (e) => e.code === 'invalid_config' && e.field === 'onEvent')
  for (const secs of [0, -1, Infinity, '1']) {
    assert.throws(() => m.spawn(secs), (e) => e.code === 'invalid_config' && e.field === 'intervalSecs')
  }
  assert.throws(() => m.spawn(1, 'not a function'), (e) => e.code === 'invalid_config' && e.field === 'onEvent')
  const updated = m.setPolicy({ ...policy(), triggers: { newLabels: 5 } })
  assert.deepEqual([updated.policy.triggers.newLabels, updated.policy.triggers.driftWindow], [5, null])

  // A failing pass is recorded and rejects: no production model any more.
  env.models.removeAlias('churn', 'production')
  const events = []
  await assert.rejects(m.tick({ onEvent: (e) => events.push(e) }), (e) => e.code === 'not_found')
  await flush()
  assert.deepEqual(events.map((e) => e.type), ['monitor_error'])
  assert.equal(events[0].error.code, 'not_found')
  assert.equal(kinds(m).at(-1), 'error')
  assert.equal(m.record().lastTick.outcome, 'error')
})

test('tick never blocks the event loop', async () => {
  const env = await churn()
  await stream(env, 150, 230)
  const m = env.home.monitors().create('churn', policy())
  let beats = 0
  const timer = setInterval(() => beats++, 1)
  const t0 = Date.now()
  const r = await m.tick()
  const took = Date.now() - t0
  clearInterval(timer)
  assert.equal(r.outcome, 'promoted')
  assert.ok(beats >= 1, `no timer fired during a ${took} ms tick`)
})

test('spawn ticks in the background until stopped', async () => {
  const env = await churn()
  await stream(env, 150, 230)
  const m = env.home.monitors().create('churn', policy())
  const seen = []
  const handle = m.spawn(0.02, (e) => seen.push(e))
  assert.equal(handle.running, true)
  const t0 = Date.now()
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
  while (version(env) !== 2 && Date.now() - t0 < 60_000) await sleep(20)
  while (handle.ticks < 3 && Date.now() - t0 < 60_000) await sleep(20)
  assert.equal(handle.lastError, null)
  await handle.stop()
  await flush()
  assert.equal(handle.running, false)
  await handle.stop() // idempotent
  assert.ok(handle.ticks >= 3)
  assert.equal(version(env), 2)
  const types = seen.map((e) => e.type)
  for (const t of ['drift_detected', 'retrain_started', 'candidate_evaluated', 'promoted']) {
    assert.ok(types.includes(t), `${t} missing from ${types}`)
  }
  checkShapes(seen)

  // Failing ticks are recorded and kept as lastError; the loop goes on.
  env.models.removeAlias('churn', 'production')
  const failing = m.spawn(0.02)
  while ((failing.lastError === null || failing.ticks < 2) && Date.now() - t0 < 60_000) await sleep(20)
  await failing.stop()
  assert.equal(failing.lastError.code, 'not_found')
  assert.ok(failing.ticks >= 2)
})
