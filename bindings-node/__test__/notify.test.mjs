// Webhooks from Node against a real HTTP receiver on this event loop (http.createServer):
// signed deliveries verified with verifySignature, retries, giving up, the background
// deliverer, routing onEvent to the outbox, and typed errors.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { anneal, tmpHome } from './helpers.mjs'

const { verifySignature, Webhooks, Deliverer } = anneal

/** A receiver that records every POST and answers the scripted statuses, then 200. */
async function receiver(...statuses) {
  const requests = []
  const waiters = []
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      requests.push({ headers: req.headers, body: Buffer.concat(chunks) })
      res.writeHead(statuses.length ? statuses.shift() : 200, { 'content-length': 2 })
      res.end('ok')
      for (const w of waiters.splice(0)) w()
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}/hook`
  const waitFor = async (n, ms = 5000) => {
    const end = Date.now() + ms
    while (requests.length < n) {
      assert.ok(Date.now() < end, `expected ${n} requests, got ${requests.length}`)
      await new Promise((resolve) => {
        waiters.push(resolve)
        setTimeout(resolve, 50)
      })
    }
    return requests
  }
  const close = () => new Promise((resolve) => server.close(resolve))
  return { url, requests, waitFor, close }
}

const promoted = (n) => ({
  type: 'promoted',
  model: `churn@${n}`,
  modelId: `mdl_${n}`,
  alias: 'production',
  mode: 'manual',
  reason: `accuracy 0.9${n}`,
})

const FAST = { timeoutMs: 2000, retryBaseMs: 1000, retryMaxMs: 60000 }

test('a signed delivery verifies and carries the event (camelCase records)', async () => {
  const rx = await receiver()
  try {
    const { home } = tmpHome()
    const wh = home.webhooks()
    assert.ok(wh instanceof Webhooks)
    const hook = wh.add(rx.url, FAST)
    assert.match(hook.id, /^wh_/)
    assert.match(hook.secret, /^whsec_/)
    assert.deepEqual([hook.url, hook.format, hook.events, hook.timeoutMs, hook.maxAttempts], [rx.url, 'json', [], 2000, 8])
    assert.ok('createdAt' in hook && !('created_at' in hook))
    assert.deepEqual(wh.list(), [hook])
    assert.deepEqual(wh.get(hook.id), hook)

    const ids = wh.enqueue(promoted(3))
    assert.equal(ids.length, 1)
    assert.equal(wh.delivery(ids[0]).status, 'pending')
    // The receiver runs on this event loop: deliverDue must not block it.
    const report = await wh.deliverDue()
    assert.deepEqual(report, { attempted: 1, delivered: 1, retried: 0, failed: 0 })
    const [{ headers, body }] = await rx.waitFor(1)
    assert.equal(headers['webhook-id'], ids[0])
    verifySignature(hook.secret, headers['webhook-id'], headers['webhook-timestamp'], body, headers['webhook-signature'])
    verifySignature(
      hook.secret,
      headers['webhook-id'],
      Number(headers['webhook-timestamp']),
      body.toString(),
      headers['webhook-signature'],
      60000,
    )
    const sent = JSON.parse(body)
    // The body is the core's JSON (snake_case event fields), whatever the binding.
    assert.deepEqual([sent.id, sent.type, sent.data.model, sent.data.model_id], [ids[0], 'promoted', 'churn@3', 'mdl_3'])

    const done = wh.delivery(ids[0])
    assert.deepEqual([done.status, done.attempts, done.lastStatus, done.webhookId], ['delivered', 1, 200, hook.id])
    assert.equal(done.body, body.toString())
    assert.deepEqual((await wh.deliverDue()).attempted, 0)

    const rejects = (args, code, field) =>
      assert.throws(() => verifySignature(...args), (e) => e.code === code && e.field === field)
    const tampered = Buffer.from(body.toString().replace('churn@3', 'churn@4'))
    rejects([hook.secret, ids[0], headers['webhook-timestamp'], tampered, headers['webhook-signature']], 'invalid_data', 'webhook-signature')
    const old = String(Number(headers['webhook-timestamp']) - 3600)
    rejects([hook.secret, ids[0], old, body, headers['webhook-signature']], 'invalid_data', 'webhook-timestamp')
    rejects(['whsec_%%%', ids[0], headers['webhook-timestamp'], body, 'v1,x'], 'invalid_config', 'secret')
    rejects([hook.secret, ids[0], headers['webhook-timestamp'], 42, 'v1,x'], 'invalid_config', 'body')
  } finally {
    await rx.close()
  }
})

test('retries, gives up on 410, retryFailed puts rows back', async () => {
  const rx = await receiver(500, 410)
  try {
    const { home } = tmpHome()
    const wh = home.webhooks()
    const hook = wh.add(rx.url, { ...FAST, maxAttempts: 3 })
    const [id] = wh.enqueue(promoted(1))
    assert.deepEqual(await wh.deliverDue(), { attempted: 1, delivered: 0, retried: 1, failed: 0 })
    let d = wh.delivery(id)
    assert.deepEqual([d.status, d.attempts, d.lastStatus], ['pending', 1, 500])
    assert.equal((await wh.deliverDue()).attempted, 0, 'not due yet')
    assert.equal((await wh.deliverDue(new Date(Date.now() + 120000))).failed, 1)
    d = wh.delivery(id)
    assert.deepEqual([d.status, d.attempts, d.lastStatus], ['failed', 2, 410])
    assert.deepEqual(wh.deliveries({ status: 'failed' }).map((x) => x.id), [id])
    assert.deepEqual(wh.deliveries({ webhookId: hook.id, status: 'delivered' }), [])
    assert.equal(wh.retryFailed(hook.id), 1)
    assert.equal((await wh.deliverDue(Date.now())).delivered, 1)
    const got = await rx.waitFor(3)
    assert.deepEqual([...new Set(got.map((r) => r.headers['webhook-id']))], [id], 'same webhook-id on every attempt')
    assert.equal(wh.retryFailed(), 0)
  } finally {
    await rx.close()
  }
})

test('a spawned deliverer sends in the background and stops', async () => {
  const rx = await receiver()
  try {
    const { home } = tmpHome()
    const wh = home.webhooks()
    wh.add(rx.url, { ...FAST, events: ['promoted'] })
    const d = wh.spawn(20)
    assert.ok(d instanceof Deliverer)
    assert.equal(d.running, true)
    wh.enqueue(promoted(1))
    wh.enqueue({ type: 'log', jobId: 'j', level: 'info', message: 'not wanted' })
    await rx.waitFor(1)
    assert.equal(d.lastError, null)
    await d.stop()
    assert.equal(d.running, false)
    await d.stop() // idempotent
    assert.deepEqual(rx.requests.map((r) => JSON.parse(r.body).type), ['promoted'])
  } finally {
    await rx.close()
  }
})

test('onEvent routes a call\'s events to the webhooks', async () => {
  const rx = await receiver()
  try {
    const { home, ds } = tmpHome()
    const wh = home.webhooks()
    const hook = wh.add(rx.url, FAST)
    const rows = [0, 1, 2].map((i) => ({ prompt: `p${i}`, completion: `c${i}` }))
    const rec = await ds.importRecords(rows, { name: 'routed', onEvent: (e) => wh.enqueue(e) })
    await new Promise((resolve) => setImmediate(resolve))
    const types = wh.deliveries({ webhookId: hook.id }).map((d) => d.eventType)
    assert.deepEqual(types, ['task_started', 'task_finished'])
    assert.equal((await wh.deliverDue()).delivered, 2)
    const last = JSON.parse((await rx.waitFor(2))[1].body)
    assert.deepEqual([last.data.id, last.data.status], [rec.id, 'completed'])
    wh.remove(hook.id)
    assert.deepEqual(wh.list(), [])
    assert.throws(() => wh.get(hook.id), (e) => e.code === 'not_found')
  } finally {
    await rx.close()
  }
})

test('typed errors name the field', async () => {
  const { home } = tmpHome()
  const wh = home.webhooks()
  const fails = (fn, code, field) => assert.throws(fn, (e) => e instanceof Error && e.code === code && e.field === field)
  for (const url of ['not a url', 'ftp://example.com/x', 'http:///nohost']) {
    fails(() => wh.add(url), 'invalid_config', 'url')
  }
  const ok = 'http://127.0.0.1:9/hook'
  fails(() => wh.add(ok, { timeoutMs: 0 }), 'invalid_config', 'timeoutMs')
  fails(() => wh.add(ok, { maxAttempts: 1000 }), 'invalid_config', 'maxAttempts')
  fails(() => wh.add(ok, { events: ['promotd'] }), 'invalid_config', 'events')
  fails(() => wh.add(ok, { secret: 'whsec_short' }), 'invalid_config', 'secret')
  fails(() => wh.add(ok, { format: 'teams' }), 'invalid_config', 'format')
  fails(() => wh.add(ok, { timeout_ms: 5 }), 'invalid_config', 'timeoutMs') // snake_case keys are unknown
  assert.deepEqual(wh.list(), [], 'nothing stored after a refused add')
  fails(() => wh.enqueue({ type: 'no_such_event' }), 'invalid_config', 'event.type')
  fails(() => wh.enqueue({ type: 'log', jobId: 'j', level: 'info' }), 'invalid_config', 'event')
  fails(() => wh.enqueue('promoted'), 'invalid_config', 'event')
  fails(() => wh.spawn(0), 'invalid_config', 'interval')
  fails(() => wh.spawn(-1), 'invalid_config', 'intervalMs')
  fails(() => wh.deliveries({ status: 'lost' }), 'invalid_config', 'status')
  assert.throws(() => wh.delivery('msg_missing'), (e) => e.code === 'not_found')
  assert.throws(() => wh.retryFailed('wh_missing'), (e) => e.code === 'not_found')
  await assert.rejects(wh.deliverDue(-5), (e) => e.code === 'invalid_config' && e.field === 'now')
})
