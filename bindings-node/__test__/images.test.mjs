// ImageGenerator from Node: PNG Buffers with their settings, seeds, per-request
// adapters, events, cancel (CancelToken and AbortSignal), coded errors, a free event loop.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { anneal, fixtures, flush, tmpHome } from './helpers.mjs'

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

/** A home with tiny-sd registered as `sd` and its LoRA (peft layout) as `style`. */
async function sdEnv() {
  const env = tmpHome()
  env.base = await env.models.registerDir(path.join(fixtures, 'tiny-sd'), { name: 'sd' })
  env.lora = await env.models.registerDir(path.join(fixtures, 'tiny-sd-lora', 'peft'), { name: 'style', parent: 'sd' })
  return env
}

/** The text chunks (`tEXt`) of a PNG file. */
function textChunks(png) {
  const out = {}
  for (let at = 8; at + 8 <= png.length; ) {
    const len = png.readUInt32BE(at)
    const type = png.toString('latin1', at + 4, at + 8)
    if (type === 'tEXt') {
      const data = png.subarray(at + 8, at + 8 + len)
      const nul = data.indexOf(0)
      out[data.toString('latin1', 0, nul)] = data.toString('latin1', nul + 1)
    }
    at += 12 + len
  }
  return out
}

test('generate resolves to PNG Buffers with their settings; a seed repeats them', async () => {
  const { home, models, base } = await sdEnv()
  const gen = await home.imageGenerator('sd')
  assert.ok(gen instanceof anneal.ImageGenerator)
  assert.equal(gen.model.id, base.id)
  assert.equal(gen.baseModel.id, base.id)
  const events = []
  const out = await gen.generate(['a red circle', 'a blue square'], { steps: 2, seed: 3, onEvent: (e) => events.push(e) })
  await flush()
  assert.equal(out.images.length, 2)
  assert.equal(out.seed, 3)
  assert.equal(out.model, 'sd@1')
  assert.ok(Array.isArray(out.warnings))
  assert.ok(out.durationMs > 0)
  const [img, second] = out.images
  assert.ok(Buffer.isBuffer(img.png) && Buffer.isBuffer(img.rgb))
  assert.deepEqual(img.png.subarray(0, 8), PNG_SIGNATURE)
  const { width, height } = gen.defaultSize
  assert.equal(width % gen.sizeMultiple, 0)
  assert.deepEqual([img.width, img.height], [width, height])
  assert.equal(img.rgb.length, width * height * 3)
  assert.equal(img.seed, 3)
  assert.equal(second.seed, 4)
  assert.deepEqual(img.settings, {
    prompt: 'a red circle',
    negativePrompt: '',
    seed: 3,
    steps: 2,
    guidanceScale: 7.5,
    scheduler: img.settings.scheduler,
    width,
    height,
    model: 'sd@1',
  })
  assert.equal(second.settings.prompt, 'a blue square')
  // The PNG carries the same settings in its text chunks.
  const chunks = textChunks(img.png)
  assert.match(chunks.parameters, /^a red circle/)
  assert.equal(JSON.parse(chunks.anneal).seed, 3)
  // Events: a txt2img task over the denoising steps, then the catalog row.
  assert.deepEqual(events[0], { type: 'task_started', task: 'txt2img', name: 'sd@1', total: 2, unit: 'steps' })
  assert.deepEqual(events.at(-1), { type: 'task_finished', task: 'txt2img', status: 'completed', id: out.id })
  const rows = models.generations({ kind: 'txt2img' })
  assert.deepEqual(rows.map((r) => r.id), [out.id])
  assert.equal(rows[0].params.seed, 3)
  // Same seed and settings: the same bytes; another seed: other pixels.
  const again = await gen.generate(['a red circle', 'a blue square'], { steps: 2, seed: 3 })
  assert.ok(again.images[0].png.equals(img.png))
  assert.ok(again.images[1].png.equals(second.png))
  const other = await gen.generate('a red circle', { steps: 2, seed: 4 })
  assert.ok(!other.images[0].rgb.equals(img.rgb))
  // Image i of a call uses seed + i: the second image alone, from its own seed.
  const alone = await gen.generate('a blue square', { steps: 2, seed: 4 })
  assert.equal(alone.images[0].seed, 4)
  // numImages per prompt, and recording off.
  const quiet = await home.imageGenerator('sd', { record: false })
  const two = await quiet.generate('x', { steps: 1, seed: 1, numImages: 2, width: 2 * width, height })
  assert.equal(two.id, null)
  assert.deepEqual(two.images.map((i) => [i.width, i.height, i.seed]), [[2 * width, height, 1], [2 * width, height, 2]])
  assert.equal(models.generations({ kind: 'txt2img' }).length, 4)
})

test('adapters per request: scale 0 is the base, scale 1 differs; a LoRA loads as its own default', async () => {
  const { home, lora } = await sdEnv()
  const gen = await home.imageGenerator('sd')
  const px = async (g, opts = {}) => (await g.generate('x', { steps: 2, seed: 1, ...opts })).images[0]
  const base = await px(gen)
  const zero = await px(gen, { adapters: [{ model: 'style', scale: 0 }] })
  const one = await px(gen, { adapters: [{ model: 'style' }] })
  const half = await px(gen, { adapters: [{ model: lora.id, scale: 0.5 }] })
  assert.ok(zero.rgb.equals(base.rgb))
  assert.ok(!one.rgb.equals(base.rgb))
  assert.ok(!half.rgb.equals(one.rgb) && !half.rgb.equals(base.rgb))
  assert.equal(one.settings.model, 'style@1')
  // Back to the base after an adapter.
  assert.ok((await px(gen)).rgb.equals(base.rgb))
  // A LoRA loaded unmerged applies itself unless the request says otherwise; merged, the same pixels.
  const styled = await home.imageGenerator('style')
  assert.equal(styled.model.id, lora.id)
  assert.equal(styled.baseModel.name, 'sd')
  assert.ok((await px(styled)).rgb.equals(one.rgb))
  assert.ok((await px(styled, { adapters: [] })).rgb.equals(base.rgb))
  const merged = await home.imageGenerator('style', { mergeAdapter: true })
  const m = await px(merged)
  assert.equal(m.rgb.length, one.rgb.length)
  const diff = Math.max(...m.rgb.map((v, i) => Math.abs(v - one.rgb[i])))
  assert.ok(diff <= 2, `merged vs unmerged differ by ${diff}`)
  await assert.rejects(merged.generate('x', { steps: 1, adapters: [{ model: 'style' }] }), { code: 'invalid_config', field: 'adapters' })
})

test('bad settings reject with invalid_config naming the setting', async () => {
  const { home, models } = await sdEnv()
  const gen = await home.imageGenerator('sd')
  const cases = [
    [{ steps: 1, width: gen.sizeMultiple + 1 }, 'width'],
    [{ steps: 1, height: 3 }, 'height'],
    [{ steps: 0 }, 'steps'],
    [{ steps: 1, numImages: 0 }, 'numImages'],
    [{ steps: 1, guidanceScale: 'high' }, 'guidanceScale'],
    [{ steps: 1, stepz: 2 }, 'stepz'],
    [{ steps: 1, adapters: [{ model: 'nope' }] }, 'adapters[0].model'],
    [{ steps: 1, adapters: [{ model: 'style', scale: 1, extra: 1 }] }, 'adapters[0].extra'],
    [{ steps: 1, adapters: [{ model: 'sd' }] }, 'adapters[0].model'],
    [{ steps: 1, prompts: ['y'] }, 'prompts'],
    [{ steps: 1, onEvent: 3 }, 'onEvent'],
    [{ steps: 1, signal: {} }, 'signal'],
    [{ steps: 1, signal: new AbortController().signal, cancel: new anneal.CancelToken() }, 'signal'],
  ]
  for (const [opts, field] of cases) {
    await assert.rejects(gen.generate('x', opts), (e) => {
      assert.equal(e.code, 'invalid_config', `${JSON.stringify(opts)}: ${e.message}`)
      assert.equal(e.field, field, `${JSON.stringify(opts)}: ${e.message}`)
      return true
    })
  }
  for (const prompt of [3, [1], undefined, { text: 'x' }]) {
    await assert.rejects(gen.generate(prompt, { steps: 1 }), { code: 'invalid_config', field: 'prompt' })
  }
  assert.equal(models.generations({ kind: 'txt2img' }).length, 0)
  // Loading: a text model, an unknown model, a bad option.
  const gpt = await models.registerDir(path.join(fixtures, 'tiny-gpt2'))
  await assert.rejects(home.imageGenerator(gpt.id), { code: 'invalid_config', field: 'model' })
  await assert.rejects(home.imageGenerator('nope'), { code: 'not_found' })
  await assert.rejects(home.imageGenerator('sd', { merge: true }), { code: 'invalid_config', field: 'merge' })
  await assert.rejects(home.imageGenerator(7), { code: 'invalid_config', field: 'model' })
})

test('cancel: an AbortSignal or a CancelToken stops at the next step; nothing is recorded', async () => {
  const { home, models } = await sdEnv()
  const gen = await home.imageGenerator('sd')
  // Already aborted: rejects at once.
  await assert.rejects(gen.generate('x', { steps: 2, signal: AbortSignal.abort() }), { code: 'cancelled' })
  const token = new anneal.CancelToken()
  token.cancel()
  await assert.rejects(gen.generate('x', { steps: 2, cancel: token }), { code: 'cancelled' })
  // Aborted while running (at the first progress event of a long run).
  const controller = new AbortController()
  const events = []
  const onEvent = (e) => {
    events.push(e)
    if (e.type === 'task_progress') controller.abort()
  }
  await assert.rejects(gen.generate('x', { steps: 500, scheduler: 'ddim', onEvent, signal: controller.signal }), { code: 'cancelled' })
  await flush()
  const last = events.at(-1)
  assert.equal(last.type, 'task_finished')
  assert.equal(last.status, 'cancelled')
  assert.ok(events.filter((e) => e.type === 'task_progress').at(-1).done < 500)
  assert.equal(models.generations({ kind: 'txt2img' }).length, 0)
  // A signal that never fires serves many calls without piling up listeners.
  const idle = new AbortController()
  let warned = false
  const onWarning = (w) => (warned ||= /listener/i.test(String(w)))
  process.on('warning', onWarning)
  for (let i = 0; i < 12; i++) await gen.generate('x', { steps: 1, seed: i, signal: idle.signal })
  await flush()
  process.off('warning', onWarning)
  assert.equal(warned, false)
  // The generator still works after a cancelled call.
  assert.equal((await gen.generate('x', { steps: 1 })).images.length, 1)
})

test('signal works for every long call, and is refused where cancel is', async () => {
  const { ds, models } = tmpHome()
  await assert.rejects(ds.importRecords([{ text: 'c' }], { signal: AbortSignal.abort() }), { code: 'cancelled' })
  assert.deepEqual(ds.list(), [])
  const rec = await ds.importRecords([{ text: 'c' }], { name: 'kept', signal: new AbortController().signal })
  assert.equal(rec.name, 'kept')
  assert.throws(() => models.list({ signal: AbortSignal.abort() }), { code: 'invalid_config', field: 'signal' })
})

test('generate runs off the event loop', async () => {
  const { home } = await sdEnv()
  const gen = await home.imageGenerator('sd', { record: false })
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  const t0 = Date.now()
  await gen.generate('x', { steps: 60, scheduler: 'ddim', seed: 0 })
  const elapsed = Date.now() - t0
  clearInterval(timer)
  assert.ok(elapsed > 50, `the generation must take a while for this test to mean anything (${elapsed} ms)`)
  assert.ok(ticks >= 5, `${ticks} ticks in ${elapsed} ms`)
})
