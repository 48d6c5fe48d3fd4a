// Curves where people look: TensorBoard event files and an MLflow file-store run
// (the Python suite reads the same layout back with tensorboard's and mlflow's own
// readers), `plot()` PNG Buffers, and `progress: true` without a TTY.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { pkgDir, tmpHome } from './helpers.mjs'

async function trainEnv() {
  const env = tmpHome()
  env.base = await env.models.createPreset('nano', { seed: 0 })
  const records = Array.from({ length: 40 }, (_, i) => ({ prompt: `${i} plus one is`, completion: ` ${i + 1}` }))
  await env.ds.importRecords(records, { name: 'qa' })
  env.engine = env.home.training()
  env.spec = {
    base: env.base.id, dataset: 'qa', method: 'full', maxSteps: 8, seqLen: 32, batchSize: 4, learningRate: 3e-3,
    evalFraction: 0.2, evalEvery: 4,
  }
  return env
}

/** The payloads of a TFRecord file. */
function tfRecords(buf) {
  const out = []
  let i = 0
  while (i < buf.length) {
    const len = Number(buf.readBigUInt64LE(i))
    out.push(buf.subarray(i + 12, i + 12 + len))
    i += 16 + len
  }
  assert.equal(i, buf.length, 'whole records only')
  return out
}

test('tensorboard and mlflow options write the run where those tools read it', async () => {
  const { engine, spec, dir } = await trainEnv()
  const runs = path.join(dir, 'runs')
  const mlruns = path.join(dir, 'mlruns')
  const report = await engine.train(spec, { tensorboard: runs, mlflow: mlruns, mlflowExperiment: 'adder' })

  const files = fs.readdirSync(path.join(runs, report.jobId))
  assert.equal(files.length, 1)
  assert.match(files[0], /^events\.out\.tfevents\./)
  const records = tfRecords(fs.readFileSync(path.join(runs, report.jobId, files[0])))
  assert.ok(records[0].toString('latin1').endsWith('brain.Event:2'))
  assert.equal(records.filter((r) => r.includes('train/loss')).length, 8)
  assert.equal(records.filter((r) => r.includes('eval/loss')).length, 2)

  const experiments = fs.readdirSync(mlruns).filter((d) => fs.existsSync(path.join(mlruns, d, 'meta.yaml')))
  assert.equal(experiments.length, 1)
  const expDir = path.join(mlruns, experiments[0])
  assert.match(fs.readFileSync(path.join(expDir, 'meta.yaml'), 'utf8'), /^name: 'adder'$/m)
  const [run] = fs.readdirSync(expDir).filter((d) => fs.statSync(path.join(expDir, d)).isDirectory())
  const runDir = path.join(expDir, run)
  assert.match(fs.readFileSync(path.join(runDir, 'meta.yaml'), 'utf8'), /^status: 3$/m)
  const lines = fs.readFileSync(path.join(runDir, 'metrics', 'train', 'loss'), 'utf8').trim().split('\n')
  assert.deepEqual(lines.map((l) => Number(l.split(' ')[2])), [1, 2, 3, 4, 5, 6, 7, 8])
  assert.ok(Math.abs(Number(lines.at(-1).split(' ')[1]) - report.finalLoss) < 1e-12)
  assert.equal(fs.readFileSync(path.join(runDir, 'params', 'max_steps'), 'utf8'), '8')
  assert.equal(fs.readFileSync(path.join(runDir, 'tags', 'anneal.job_id'), 'utf8'), report.jobId)
})

test('run and resume take the same options', async () => {
  const { engine, spec, dir } = await trainEnv()
  const runs = path.join(dir, 'runs')
  const job = engine.createJob({ ...spec, maxSteps: 2 })
  await engine.run(job.id, { tensorboard: runs })
  assert.equal(fs.readdirSync(path.join(runs, job.id)).length, 1)
})

test('bad curve or progress options reject with invalid_config before a job exists', async () => {
  const { engine, spec } = await trainEnv()
  await assert.rejects(engine.train(spec, { mlflow: 's3://bucket/runs' }), { code: 'invalid_config', field: 'mlflow' })
  await assert.rejects(engine.train(spec, { tensorbord: 'runs' }), (e) => {
    assert.equal(e.code, 'invalid_config')
    assert.equal(e.field, 'tensorbord')
    assert.match(e.message, /progress, tensorboard, mlflow, mlflowExperiment/)
    return true
  })
  await assert.rejects(engine.train(spec, { progress: 'yes' }), { code: 'invalid_config', field: 'progress' })
  await assert.rejects(engine.train(spec, { mlflowExperiment: 'x' }), { code: 'invalid_config', field: 'mlflowExperiment' })
  assert.deepEqual(engine.jobs(), [])
})

/** Width, height and the unfiltered-enough pixel bytes of an RGB PNG. */
function png(buf) {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  let i = 8
  const idat = []
  let width, height
  while (i < buf.length) {
    const len = buf.readUInt32BE(i)
    const kind = buf.toString('latin1', i + 4, i + 8)
    if (kind === 'IHDR') [width, height] = [buf.readUInt32BE(i + 8), buf.readUInt32BE(i + 12)]
    if (kind === 'IDAT') idat.push(buf.subarray(i + 8, i + 8 + len))
    i += 12 + len
  }
  return { width, height, raw: zlib.inflateSync(Buffer.concat(idat)) }
}

test('plot returns the PNG of the loss curves as a Buffer', async () => {
  const { engine, spec, dir } = await trainEnv()
  const report = await engine.train(spec)
  const buf = engine.plot(report.jobId, { width: 480, height: 320 })
  assert.ok(Buffer.isBuffer(buf))
  const { width, height, raw } = png(buf)
  assert.deepEqual([width, height], [480, 320])
  assert.equal(raw.length, height * (1 + width * 3))
  // Not blank: many rows hold something other than white.
  const stride = 1 + width * 3
  let busy = 0
  for (let y = 0; y < height; y++) if (raw.subarray(y * stride + 1, (y + 1) * stride).some((b) => b !== 255 && b !== 0)) busy++
  assert.ok(busy > height / 3, `${busy} rows with content`)

  const out = path.join(dir, 'loss.png')
  const written = engine.plot(report.jobId, { path: out })
  assert.deepEqual(fs.readFileSync(out), written)
  assert.deepEqual([png(written).width, png(written).height], [1200, 700])
  assert.throws(() => engine.plot(report.jobId, { width: 5 }), { code: 'invalid_config', field: 'width' })
  assert.throws(() => engine.plot('job_nope'), { code: 'not_found' })
})

test('progress: true without a TTY prints plain lines ending with the final loss', async () => {
  const { dir } = tmpHome()
  const script = `
    import { createRequire } from 'node:module'
    const { Home } = createRequire(import.meta.url)(${JSON.stringify(pkgDir)})
    const home = Home.open(${JSON.stringify(path.join(dir, 'child-home'))})
    const base = await home.models().createPreset('nano', { seed: 0 })
    const records = Array.from({ length: 40 }, (_, i) => ({ prompt: i + ' plus one is', completion: ' ' + (i + 1) }))
    await home.datasets().importRecords(records, { name: 'qa' })
    const spec = { base: base.id, dataset: 'qa', method: 'full', maxSteps: 8, seqLen: 32, batchSize: 4, evalFraction: 0.2 }
    const r = await home.training().train(spec, { progress: true })
    console.log(JSON.stringify(r))
  `
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })
  assert.equal(child.status, 0, child.stderr)
  const report = JSON.parse(child.stdout.trim().split('\n').at(-1))
  assert.ok(!child.stderr.includes('\r'), 'no carriage returns in a log')
  const lines = child.stderr.trim().split('\n')
  assert.ok(lines.length <= 6, lines.join('\n')) // start, a step line or two, the eval, the end
  assert.match(lines[0], new RegExp(`^job ${report.jobId}: 8 steps`))
  const last = lines.at(-1)
  assert.ok(last.startsWith(`job ${report.jobId} completed: 8/8 steps, loss ${report.finalLoss.toFixed(4)}`), last)
  assert.ok(last.includes(`eval loss ${report.evalLoss.toFixed(4)}`) && last.includes(report.modelId), last)
})
