// Image (Stable Diffusion) training from Node: the same TrainSpec with `image` options
// (camelCase), validation images in step events and the job row, the trained adapter
// usable by the image generator; and the shapes toy data of the image quickstart.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { anneal, fixtures, tmpHome } from './helpers.mjs'

async function shapesEnv() {
  const env = tmpHome()
  const dir = path.join(env.dir, 'shapes')
  anneal.shapes.writeImagefolder(dir, 4, 32, 0)
  await env.home.datasets().importImages(dir, { name: 'shapes' })
  env.base = await env.models.registerDir(path.join(fixtures, 'tiny-sd'), { name: 'sd' })
  return env
}

test('LoRA training points step events and the job row at validation images', async () => {
  const env = await shapesEnv()
  const events = []
  const report = await env.home.training().train({
    base: 'sd', dataset: 'shapes', method: { lora: { r: 4 } }, maxSteps: 2, batchSize: 2,
    image: { resolution: 16, validationPrompts: ['a red circle'], validationEvery: 1, validationSteps: 2, snrGamma: 5 },
  }, { onEvent: (e) => events.push(e) })
  const steps = events.filter((e) => e.type === 'step')
  assert.deepEqual(steps.map((e) => e.step), [1, 2])
  assert.ok(steps[1].image.endsWith('step-000002.png'), steps[1].image)
  assert.ok(fs.existsSync(steps[1].image))
  const job = env.home.training().job(report.jobId)
  assert.ok(job.image.endsWith('step-000002.png'), job.image)
  assert.equal(job.spec.image.snrGamma, 5)
  const model = env.models.get(report.modelId)
  assert.deepEqual([model.kind, model.family, model.parentId], ['lora', 'stable-diffusion', env.base.id])
  const gen = await env.home.imageGenerator(report.modelId)
  const out = await gen.generate('a red circle', { steps: 2, seed: 1 })
  assert.equal(out.images.length, 1)
})

test('image options are checked naming the field', async () => {
  const env = await shapesEnv()
  const engine = env.home.training()
  for (const [image, field] of [
    [{ resolution: 10 }, 'image.resolution'],
    [{ captionDropout: 1.5 }, 'image.captionDropout'],
  ]) {
    await assert.rejects(
      async () => engine.createJob({ base: 'sd', dataset: 'shapes', method: { lora: { r: 4 } }, image }),
      (e) => e.code === 'invalid_config' && e.message.includes(field),
      field,
    )
  }
})

test('shapes.score recognises the drawn pictures and shapes.grid lays them out', () => {
  const env = tmpHome()
  const dir = path.join(env.dir, 's')
  anneal.shapes.writeImagefolder(dir, 12, 32, 3)
  const rows = fs.readFileSync(path.join(dir, 'metadata.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const pngs = rows.map((r) => fs.readFileSync(path.join(dir, r.file_name)))
  const captions = rows.map((r) => r.text)
  assert.deepEqual([...new Set(captions)].sort(), anneal.shapes.prompts().sort())
  assert.equal(anneal.shapes.score(pngs, captions), 1)
  assert.equal(anneal.shapes.score(pngs, [...captions.slice(1), captions[0]]), 0)
  const sheet = anneal.shapes.grid([pngs.slice(0, 3), pngs.slice(3, 5)])
  assert.equal(sheet.readUInt32BE(16), 96) // IHDR width: 3 cells of 32
  assert.equal(sheet.readUInt32BE(20), 64) // two rows
  const big = anneal.shapes.grid([pngs.slice(0, 3)], 2) // each picture enlarged twice
  assert.equal(big.readUInt32BE(16), 192)
  assert.equal(big.readUInt32BE(20), 64)
  assert.throws(() => anneal.shapes.grid([pngs.slice(0, 1)], 0), (e) => e.code === 'invalid_config')
  assert.throws(() => anneal.shapes.score([Buffer.from('nope')], ['a red circle']), (e) => e.code === 'invalid_data')
})
