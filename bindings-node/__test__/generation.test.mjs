// Generator from Node: parity with transformers' greedy tokens, the async iterator
// stream, seeds, stop strings, batches, scoring, coded errors, usage records, adapters,
// and a free event loop.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { anneal, fixtures, tmpHome } from './helpers.mjs'

const reference = (name) => JSON.parse(fs.readFileSync(path.join(fixtures, name, 'reference.json'), 'utf8'))

async function nanoEnv() {
  const env = tmpHome()
  env.base = await env.models.createPreset('nano', { seed: 0 })
  env.gen = await env.home.generator(env.base.id)
  return env
}

async function checkParity(gen, name, config = {}) {
  const r = reference(name)
  const want = r.greedy_new_tokens
  const out = await gen.generate(r.input_ids, { maxNewTokens: want.length, ignoreEos: true, ...config })
  assert.deepEqual(out.tokenIds, want, name)
  assert.equal(out.finishReason, 'length')
  assert.equal(out.promptTokens, r.input_ids.length)
  assert.equal(out.generatedTokens, want.length)
}

for (const name of ['tiny-gpt2', 'tiny-llama', 'tiny-qwen2']) {
  test(`greedy tokens equal transformers' for ${name}`, async () => {
    const { home, models } = tmpHome()
    const rec = await models.registerDir(path.join(fixtures, name))
    const gen = await home.generator(rec.id)
    assert.ok(gen instanceof anneal.Generator)
    assert.equal(gen.model.id, rec.id)
    await checkParity(gen, name)
  })
}

test('adapter: merged, unmerged, and switched per request on one base', async () => {
  const { home, models } = tmpHome()
  const base = await models.registerDir(path.join(fixtures, 'tiny-llama'))
  const lora = await models.registerDir(path.join(fixtures, 'tiny-llama-lora'), { parent: base.id })
  await checkParity(await home.generator(lora.id), 'tiny-llama-lora')
  const separate = await anneal.Generator.load(models, lora.id, { mergeAdapter: false })
  await checkParity(separate, 'tiny-llama-lora')
  assert.deepEqual(separate.adapters().map((a) => a.id), [lora.id])
  assert.equal(separate.baseModel.id, base.id)
  const onBase = await home.generator(base.id)
  assert.equal((await onBase.addAdapter(lora.id)).id, lora.id)
  await checkParity(onBase, 'tiny-llama-lora', { adapter: `${lora.name}@${lora.version}` })
  await checkParity(onBase, 'tiny-llama')
  await assert.rejects((await home.generator(lora.id)).addAdapter(lora.id), { code: 'invalid_config' })
})

test('stream is an async iterator whose chunks add up to generate', async () => {
  const { gen } = await nanoEnv()
  const whole = await gen.generate('hello world', { maxNewTokens: 40, ignoreEos: true })
  const stream = gen.stream('hello world', { maxNewTokens: 40, ignoreEos: true })
  assert.equal(stream.generation, null)
  let text = ''
  const ids = []
  for await (const chunk of stream) {
    assert.ok(chunk.tokenIds.length > 0)
    text += chunk.text
    ids.push(...chunk.tokenIds)
  }
  assert.equal(text, whole.text)
  assert.deepEqual(ids, whole.tokenIds)
  assert.equal(stream.generation.text, whole.text)
  assert.equal(stream.generation.generatedTokens, 40)
  assert.deepEqual(await stream.next(), { done: true })
})

test('same seed, same sample; filters and stop strings apply', async () => {
  const { gen } = await nanoEnv()
  const sampled = (seed, extra = {}) =>
    gen.generate('abc', { temperature: 1, seed, maxNewTokens: 30, ignoreEos: true, ...extra })
  const a = await sampled(1)
  assert.equal(a.seed, 1)
  assert.deepEqual((await sampled(1)).tokenIds, a.tokenIds)
  assert.notDeepEqual((await sampled(2)).tokenIds, a.tokenIds)
  const greedy = await gen.generate('abc', { maxNewTokens: 30, ignoreEos: true })
  assert.equal(greedy.seed, null)
  assert.deepEqual((await sampled(3, { topK: 1 })).tokenIds, greedy.tokenIds)
  assert.deepEqual((await sampled(4, { topP: 1e-9 })).tokenIds, greedy.tokenIds)
  // An unset seed is drawn, reported exactly, and reproduces the sample (even above 2^32).
  const r = await gen.generate('abc', { temperature: 1, maxNewTokens: 30, ignoreEos: true })
  assert.ok(Number.isSafeInteger(r.seed))
  assert.deepEqual((await sampled(r.seed)).tokenIds, r.tokenIds)
  assert.deepEqual((await sampled(2 ** 40)).tokenIds, (await sampled(2 ** 40)).tokenIds)

  const full = await gen.generate('the cat', { maxNewTokens: 60, ignoreEos: true })
  const stop = full.text.slice(8, 11)
  const out = await gen.generate('the cat', { maxNewTokens: 60, ignoreEos: true, stop })
  assert.equal(out.finishReason, 'stop')
  assert.equal(out.stopSequence, stop)
  assert.equal(out.text, full.text.slice(0, full.text.indexOf(stop)))
})

test('batch rows equal single generations; score gives loss and perplexity', async () => {
  const { gen } = await nanoEnv()
  const prompts = ['a', 'the quick brown fox', [104, 105], [{ role: 'user', content: 'hi' }]]
  const batch = await gen.generateBatch(prompts, { maxNewTokens: 16, ignoreEos: true })
  assert.equal(batch.length, prompts.length)
  for (let i = 0; i < prompts.length; i++) {
    const one = await gen.generate(prompts[i], { maxNewTokens: 16, ignoreEos: true })
    assert.deepEqual(batch[i].tokenIds, one.tokenIds)
    assert.equal(batch[i].text, one.text)
  }
  const scores = await gen.score(['hello world', 'abc'])
  assert.equal(scores.length, 2)
  for (const s of scores) assert.ok(Number.isFinite(s.loss) && Math.abs(s.perplexity - Math.exp(s.loss)) < 1e-9)
  assert.equal(scores[1].tokens, 2)
})

test('bad input is a coded error before any work', async () => {
  const { home, models, gen } = await nanoEnv()
  await assert.rejects(home.generator('no-such-model'), { code: 'not_found' })
  await assert.rejects(home.generator(gen.model.id, { quantize: 'q4' }), { code: 'invalid_config' })
  await assert.rejects(gen.generate(Array(gen.contextLength + 1).fill(65)), (e) => e.code === 'invalid_config' && /prompt/.test(e.message))
  for (const cfg of [{ temperature: -1 }, { topP: 0 }, { minP: 1 }, { repetitionPenalty: 0 }, { maxNewTokens: 0 }, { temprature: 1 }]) {
    await assert.rejects(gen.generate('hi', cfg), (e) => e.code === 'invalid_config', JSON.stringify(cfg))
  }
  await assert.rejects(gen.generate(3.5), { code: 'invalid_config' })
  await assert.rejects(gen.generateBatch(['ok', '']), (e) => e.code === 'invalid_config' && /prompts\[1\]/.test(e.message))
  // Prompts are parsed by the core, which names the bad element.
  await assert.rejects(gen.generate({ text: 'hi' }), { code: 'invalid_config', field: 'prompt' })
  await assert.rejects(gen.generate([{ role: 'user' }]), { code: 'invalid_config', field: 'prompt[0].content' })
  await assert.rejects(gen.generate([65, 'B']), { code: 'invalid_config', field: 'prompt[1]' })
  await assert.rejects(gen.generateBatch(['ok', [{ role: 'user', content: 'x', name: 'y' }]]), {
    code: 'invalid_config',
    field: 'prompts[1][0].name',
  })
  await assert.rejects(gen.generateBatch('ok'), { code: 'invalid_config', field: 'prompts' })
  await assert.rejects(gen.generate('hi', { stop: 5 }), { code: 'invalid_config', field: 'stop' })
  assert.throws(() => gen.stream('hi', { topP: 0 }), { code: 'invalid_config' })
  assert.deepEqual(models.generations(), [])
})

test('every call is recorded; usage totals come from the catalog', async () => {
  const { models, gen } = await nanoEnv()
  const g = await gen.generate('a', { maxNewTokens: 5, ignoreEos: true, temperature: 0.7, seed: 9 })
  for await (const _ of gen.stream('b', { maxNewTokens: 4, ignoreEos: true })) { /* drain */ }
  await gen.generateBatch(['c', 'dd'], { maxNewTokens: 3, ignoreEos: true })
  await gen.score(['some text'])
  const rows = models.generations({ model: gen.model.id })
  assert.deepEqual(rows.map((r) => r.kind), ['score', 'batch', 'stream', 'generate'])
  assert.equal(rows[3].id, g.id)
  assert.equal(rows[3].params.seed, 9)
  // `params` is the resolved settings as stored (foreign JSON): its keys are not renamed.
  assert.equal(rows[3].params.max_new_tokens, 5)
  assert.ok(!('maxNewTokens' in rows[3].params))
  const u = models.usage(gen.model.id)
  assert.deepEqual([u.calls, u.generations, u.generatedTokens], [4, 4, 5 + 4 + 6])
  assert.equal(models.generations({ kind: 'batch', limit: 5 }).length, 1)
  assert.ok(g.timings.ttftMs > 0 && g.timings.totalMs >= g.timings.ttftMs)
  const d = gen.defaults()
  assert.equal(d.temperature, 0)
  assert.equal(d.maxNewTokens, 256)
})

test('generation runs off the event loop', async () => {
  const { home, models } = tmpHome()
  const rec = await models.createPreset('mini', { seed: 0 })
  const gen = await home.generator(rec.id, { record: false })
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  const t0 = Date.now()
  await gen.generateBatch(Array(8).fill('abc'), { maxNewTokens: 200, ignoreEos: true })
  const elapsed = Date.now() - t0
  clearInterval(timer)
  assert.ok(elapsed > 50, `the generation must take a while for this test to mean anything (${elapsed} ms)`)
  assert.ok(ticks >= 5, `${ticks} ticks in ${elapsed} ms`)
})

test('generate reports a task and stops on cancel', async () => {
  const { gen, models } = await nanoEnv()
  const events = []
  const out = await gen.generate('abc', { maxNewTokens: 5, ignoreEos: true }, { onEvent: (e) => events.push(e) })
  await new Promise((resolve) => setImmediate(resolve))
  assert.deepEqual(events[0], { type: 'task_started', task: 'generate', name: `${gen.model.name}@${gen.model.version}`, total: 5, unit: 'tokens' })
  assert.deepEqual(events.at(-1), { type: 'task_finished', task: 'generate', status: 'completed', id: out.id })
  const cancel = new anneal.CancelToken()
  cancel.cancel()
  await assert.rejects(gen.generate('abc', { maxNewTokens: 50 }, { cancel }), { code: 'cancelled' })
  await assert.rejects(gen.generateBatch(['a', 'b'], { maxNewTokens: 50 }, { cancel }), { code: 'cancelled' })
  assert.equal(models.usage(gen.model.id).calls, 1)
})
