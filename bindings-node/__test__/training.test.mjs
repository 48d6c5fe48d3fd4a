import { test } from 'node:test'
import assert from 'node:assert/strict'
import { CancelToken, tmpHome, flush } from './helpers.mjs'

/** A home with a nano base model and a 40-record completion dataset. */
async function trainEnv() {
  const env = tmpHome()
  env.base = await env.models.createPreset('nano', { seed: 0 })
  const records = Array.from({ length: 40 }, (_, i) => ({ prompt: `${i} plus one is`, completion: ` ${i + 1}` }))
  await env.ds.importRecords(records, { name: 'qa' })
  env.engine = env.home.training()
  env.spec = { base: env.base.id, dataset: 'qa', method: 'full', maxSteps: 8, seqLen: 32, batchSize: 4, learningRate: 3e-3 }
  return env
}

const hasSnakeKey = (o) =>
  o && typeof o === 'object' && Object.entries(o).some(([k, v]) => k.includes('_') || (k !== 'metrics' && hasSnakeKey(v)))

test('train resolves with a report, registers the model and reports events in order', async () => {
  const { engine, spec, models } = await trainEnv()
  const events = []
  const report = await engine.train(spec, { onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(report.steps, 8)
  assert.ok(report.finalLoss > 0 && report.tokens > 0 && report.durationS >= 0)
  assert.equal(report.modelId, report.model)
  assert.equal(models.get(report.modelId).kind, 'full')

  const types = events.map((e) => e.type)
  assert.equal(types[0], 'job_started')
  assert.equal(types.at(-1), 'job_finished')
  assert.ok(types.includes('step'))
  assert.ok(types.slice(1, -1).every((t) => ['step', 'eval', 'checkpoint', 'log'].includes(t)), types.join(','))
  assert.deepEqual(events[0], { type: 'job_started', jobId: report.jobId, totalSteps: 8, epochs: 1 })
  const step = events.find((e) => e.type === 'step')
  for (const k of ['jobId', 'epoch', 'step', 'totalSteps', 'loss', 'lr', 'tokensPerSec', 'progress']) assert.ok(k in step, k)
  assert.deepEqual(events.at(-1), { type: 'job_finished', jobId: report.jobId, status: 'completed', modelId: report.model })
  assert.ok(!events.some(hasSnakeKey), 'event keys are camelCase')

  const job = engine.job(report.jobId)
  assert.equal(job.status, 'completed')
  assert.equal(job.outputModelId, report.model)
  assert.equal(job.spec.maxSteps, 8)
  assert.equal(job.spec.schedule, 'linear') // defaults come from the core
  assert.ok(!hasSnakeKey(job), 'record keys are camelCase')
  assert.deepEqual(engine.jobs({ status: 'completed' }).map((j) => j.id), [report.jobId])
  assert.deepEqual(engine.jobs({ status: 'failed' }), [])
})

test('the event loop keeps ticking during training', async () => {
  const { engine, spec } = await trainEnv()
  let ticks = 0
  const iv = setInterval(() => ticks++, 2)
  const t0 = performance.now()
  await engine.train({ ...spec, maxSteps: 50 })
  const ms = performance.now() - t0
  clearInterval(iv)
  assert.ok(ms > 30, `training took only ${ms} ms`)
  assert.ok(ticks >= 5, `${ticks} ticks in ${ms.toFixed(0)} ms`)
})

test('createJob + run, and LoRA options with camelCase keys', async () => {
  const { engine, spec, models } = await trainEnv()
  const job = engine.createJob({ ...spec, maxSteps: 3, method: { lora: { r: 4, targetModules: ['q_proj', 'v_proj'] } } })
  assert.equal(job.status, 'pending')
  assert.deepEqual(job.spec.method.lora.targetModules, ['q_proj', 'v_proj'])
  const report = await engine.run(job.id)
  assert.equal(report.jobId, job.id)
  assert.equal(models.get(report.model).kind, 'lora')
})

test('CancelToken cancels a run (code cancelled, resumable); engine.cancel(id) stops a resumed run', async () => {
  const { engine, spec } = await trainEnv()
  const cancel = new CancelToken()
  let jobId
  const events = []
  const onEvent = (e) => {
    events.push(e)
    jobId = e.jobId
    if (e.type === 'step') cancel.cancel()
  }
  await assert.rejects(engine.train({ ...spec, maxSteps: 2000 }, { onEvent, cancel }), { code: 'cancelled' })
  await flush()
  assert.equal(events.at(-1).type, 'job_finished')
  assert.equal(events.at(-1).status, 'cancelled')
  const job = engine.job(jobId)
  assert.equal(job.status, 'cancelled')
  assert.ok(job.step < 2000 && job.checkpoint, JSON.stringify(job))

  const more = []
  await assert.rejects(
    engine.resume(jobId, {
      onEvent: (e) => {
        more.push(e)
        if (e.type === 'step') engine.cancel(jobId)
      },
    }),
    { code: 'cancelled' },
  )
  await flush()
  const again = engine.job(jobId)
  assert.equal(again.status, 'cancelled')
  assert.ok(again.step > job.step, `${again.step} > ${job.step}`)
})

test('resume completes a cancelled job', async () => {
  const { engine, spec } = await trainEnv()
  const job = engine.createJob({ ...spec, maxSteps: 20 })
  const cancel = new CancelToken()
  await assert.rejects(
    engine.run(job.id, { cancel, onEvent: (e) => e.type === 'step' && cancel.cancel() }),
    { code: 'cancelled' },
  )
  const stopped = engine.job(job.id).step
  assert.ok(stopped < 20)
  const events = []
  const report = await engine.resume(job.id, { onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(report.steps, 20)
  assert.equal(engine.job(job.id).status, 'completed')
  assert.ok(events.filter((e) => e.type === 'step').every((e) => e.step > stopped))
})

test('cancel() of a pending job through the catalog', async () => {
  const { engine, spec } = await trainEnv()
  const job = engine.createJob(spec)
  assert.equal(engine.cancel(job.id).status, 'cancelled')
  assert.equal((await engine.resume(job.id)).steps, 8)
})

test('mixedPrecision bf16 trains within 1% of f32 and is kept in the spec', async () => {
  const { engine, spec } = await trainEnv()
  const losses = {}
  for (const mp of ['no', 'bf16']) {
    const report = await engine.train({ ...spec, mixedPrecision: mp })
    assert.equal(engine.job(report.jobId).spec.mixedPrecision, mp)
    losses[mp] = engine.metrics(report.jobId).filter((m) => m.kind === 'train').map((m) => m.loss)
  }
  assert.equal(losses.no.length, 8)
  assert.equal(losses.bf16.length, 8)
  assert.notDeepEqual(losses.no, losses.bf16)
  losses.no.forEach((a, i) => assert.ok(Math.abs(a - losses.bf16[i]) / a < 0.01, `${a} vs ${losses.bf16[i]}`))
  assert.throws(() => engine.createJob({ ...spec, mixedPrecision: 'fp8' }), { code: 'invalid_config', field: 'mixedPrecision' })
})

test('invalid specs: invalid_config naming the field (camelCase)', async () => {
  const { engine, spec } = await trainEnv()
  await assert.rejects(engine.train({ ...spec, lr: 1e-3 }), { code: 'invalid_config', field: 'lr' })
  await assert.rejects(engine.train({ ...spec, batchSize: 0 }), { code: 'invalid_config', field: 'batchSize' })
  await assert.rejects(engine.train({ dataset: 'qa' }), { code: 'invalid_config', field: 'base' })
  await assert.rejects(engine.train('nope'), { code: 'invalid_config' })
  await assert.rejects(engine.train(spec, { nope: 1 }), { code: 'invalid_config', field: 'nope' })
  assert.throws(() => engine.createJob({ ...spec, seqLen: 1 }), { code: 'invalid_config', field: 'seqLen' })
  // Unknown keys are refused at any depth, named and listed in camelCase.
  assert.throws(
    () => engine.createJob({ ...spec, method: { lora: { targetModulez: ['q_proj'] } } }),
    (e) =>
      e.code === 'invalid_config' &&
      e.field === 'method.lora.targetModulez' &&
      e.message.includes('targetModules') &&
      !e.message.includes('target_modules'),
  )
  assert.throws(() => engine.createJob({ ...spec, dataset: 'missing' }), { code: 'invalid_config', field: 'dataset' })
  assert.throws(() => engine.jobs({ status: 'sleeping' }), { code: 'invalid_config' })
  assert.deepEqual(engine.jobs(), [])
})

test('not found and in use', async () => {
  const { engine, spec } = await trainEnv()
  assert.throws(() => engine.job('job_missing'), { code: 'not_found' })
  assert.throws(() => engine.metrics('job_missing'), { code: 'not_found' })
  await assert.rejects(engine.run('job_missing'), { code: 'not_found' })
  const report = await engine.train(spec)
  await assert.rejects(engine.run(report.jobId), { code: 'in_use' })
})

test('metrics and logs', async () => {
  const { engine, spec } = await trainEnv()
  const report = await engine.train(spec)
  const metrics = engine.metrics(report.jobId)
  assert.deepEqual(metrics.filter((m) => m.kind === 'train').map((m) => m.step), [1, 2, 3, 4, 5, 6, 7, 8])
  assert.ok(metrics.every((m) => m.loss > 0 && 'tokensPerSec' in m && m.at))
  const logs = engine.logs(report.jobId)
  assert.ok(logs.length > 0 && logs.every((l) => l.level && l.message && l.at))
})
