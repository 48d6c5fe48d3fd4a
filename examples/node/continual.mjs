// anneal continual learning, Node twin of examples/rust/continual.rs: the whole loop.
//
// A classifier serves a stream whose distribution shifts; labels arrive later; a monitor
// notices, retrains, gates and promotes; a webhook receiver is told; a PNG plot and a
// summary come out of the catalog's rows. Offline (the receiver is a local HTTP server
// in this process); no downloads.
//
// Run:    node examples/node/continual.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
//         (default home ./anneal-continual, which must not hold a `churn` model yet;
//         --smoke: no pause between batches, for CI)
// Output: one line per batch (rows, serving version, realised accuracy of the last 100
//         labels, what the monitor did), the webhook deliveries as the receiver gets
//         them (event type, id, signature checked), then a summary: accuracy before the
//         drift, after it, after the retrain; the promotions; the monitor's decisions;
//         the deliveries received; and `<home>/continual.png`.
//
// 1. A seeded synthetic scenario (`syntheticScenario`): 4 numeric and 1 categorical
//    feature, 2 classes; from row 700 on the features move (covariate shift) and the
//    labelling function changes (concept drift).
// 2. `churn` v1, a logistic regression on rows 0..300, is promoted to production.
// 3. A webhook points at a `node:http` server in this program that answers 200, checks
//    each delivery's Standard Webhooks signature (`verifySignature`) and prints it.
//    Monitor events go to the webhook's outbox in the same transaction as the decision;
//    a background deliverer (`webhooks().spawn`) posts them.
// 4. Rows 300..1500 arrive in batches of 50 through a `Predictor` (every prediction
//    logged); each batch's true labels arrive one batch later (`continual().label`).
//    After each batch the monitor ticks: the accuracy floor (0.8 on the last 100 labels)
//    and a drift check of the last 100 predictions are its triggers; a breach must
//    persist two ticks; a retrain fits on the labelled predictions and must beat
//    production on the newest of them, held out, to be promoted.
// 5. `continual().plotTimeline` draws accuracy and drift over time with the events.
//
// The same seed as the Rust example, so the same story. The example exits with an error
// if no retrained version was promoted, if the receiver missed the promotion, or if the
// retrain did not beat v1 after the drift.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import http from 'node:http'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const anneal = createRequire(import.meta.url)(path.join(here, '..', '..', 'bindings-node'))
const { Home, syntheticScenario, verifySignature } = anneal

const MODEL = 'churn'
const TRAIN_ROWS = 300
const DRIFT_AT = 700
const ROWS = 1500
const BATCH = 50
const PAUSE_MS = 150 // between batches (a stream arrives over time); none with --smoke

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
const smoke = process.argv.includes('--smoke')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const fail = (msg) => {
  console.error(`error: ${msg}`)
  process.exit(1)
}

function summary(event, d) {
  switch (event) {
    case 'drift_detected':
      return `${d.model} drifted on ${d.drifted_columns}`
    case 'retrain_started':
      return `${d.model} retrain, trigger ${d.trigger}`
    case 'candidate_evaluated':
      return `${d.candidate} ${d.candidate_value} vs production ${d.production_value}: ${d.verdict}`
    case 'promoted':
      return `${d.model} promoted (${d.mode})`
    default:
      return JSON.stringify(d).slice(0, 80)
  }
}

/**
 * A webhook receiver on 127.0.0.1 (a free port): answers 200 to every POST, checks its
 * signature with `secret.value` (set once the webhook exists), prints it and keeps it.
 */
async function startReceiver(secret, received) {
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      res.writeHead(200, { 'content-length': 2 }).end('ok')
      const body = Buffer.concat(chunks)
      const h = (k) => req.headers[k] ?? ''
      let signed = true
      try {
        verifySignature(secret.value, h('webhook-id'), h('webhook-timestamp'), body, h('webhook-signature'))
      } catch {
        signed = false
      }
      const v = JSON.parse(body.toString('utf8'))
      const text = summary(v.type, v.data ?? {})
      console.log(`    webhook <- ${v.type} ${h('webhook-id')} (${signed ? 'signature ok' : 'BAD SIGNATURE'}): ${text}`)
      received.push({ id: h('webhook-id'), event: v.type, signed, summary: text })
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

const pct = ([c, n]) => (n === 0 ? '-' : `${((100 * c) / n).toFixed(1)}% of ${n}`)

async function main() {
  const started = Date.now()
  const home = Home.open(args[0] ?? 'anneal-continual')
  try {
    home.models().resolve(MODEL)
    fail(`${home.root} already has a \`${MODEL}\` model: run the example on a fresh directory`)
  } catch (e) {
    if (e.code !== 'not_found') throw e
  }
  console.log(`home: ${home.root}`)

  // 1. The scenario: the features move and the concept changes at row DRIFT_AT.
  const s = await syntheticScenario({
    rows: ROWS,
    numeric: 4,
    categorical: 1,
    categories: 3,
    classes: 2,
    separation: 3.0,
    seed: 7,
    drift: [
      { kind: 'covariate', start: DRIFT_AT, magnitude: 1.0 },
      { kind: 'concept', start: DRIFT_AT, magnitude: 2.0 },
    ],
  })
  const { rows, labels } = s

  // 2. v1 on the first rows, in production.
  const train = rows.slice(0, TRAIN_ROWS).map((r, i) => ({ ...r, label: labels[i] }))
  await home.datasets().importRecords(train, { name: `${MODEL}-train` })
  const engine = home.training()
  const job = engine.createJob({ dataset: `${MODEL}-train`, evalFraction: 0.2, method: { classifier: {} }, outputName: MODEL })
  await engine.run(job.id)
  home.models().promote(`${MODEL}@1`)
  console.log(`${MODEL}@1 trained on rows 0..${TRAIN_ROWS} and promoted to production`)

  // 3. The webhook receiver, the webhook, and a background deliverer of its outbox.
  const received = []
  const secret = {}
  const server = await startReceiver(secret, received)
  const url = `http://127.0.0.1:${server.address().port}/hooks/anneal`
  const webhooks = home.webhooks()
  const hook = webhooks.add(url)
  secret.value = hook.secret
  const deliverer = webhooks.spawn(100)
  console.log(`webhook ${hook.id} -> ${url}`)

  // 4. The monitor and the stream.
  const monitor = home.monitors().create(MODEL, {
    triggers: { accuracyFloor: 0.8, driftWindow: 100, window: 100 },
    guards: { minSamples: 50, consecutiveBreaches: 2 },
    action: { replayFraction: 0 },
    gate: { mode: 'auto', margin: 0.02 },
  })
  const continual = home.continual()
  const rowOf = new Map() // prediction id -> scenario row
  let unlabelled = [] // [prediction id, label] until the label arrives
  console.log('\nbatch  rows (* drifted)  served by   acc(last 100)  monitor')
  for (let b = 0, start = TRAIN_ROWS; start < ROWS; b++, start += BATCH) {
    const end = Math.min(start + BATCH, ROWS)
    // The production model may have changed since the last batch: load it anew.
    const predictor = await home.predictor(`${MODEL}@production`)
    // The previous batch's labels arrive now.
    for (const [id, y] of unlabelled) continual.label(id, y)
    unlabelled = []
    const preds = await predictor.predictBatch(rows.slice(start, end))
    preds.forEach((p, k) => {
      rowOf.set(p.predictionId, start + k)
      unlabelled.push([p.predictionId, labels[start + k]])
    })
    const served = home.models().resolve(`${MODEL}@production`)
    const r = await monitor.tick()
    const acc = r.realisedAccuracy === null ? '-' : r.realisedAccuracy.toFixed(2)
    const drifted = start >= DRIFT_AT ? '*' : ' '
    const rowsCol = `${String(start).padStart(4)}..${String(end).padEnd(4)}${drifted}`
    console.log(`${String(b).padStart(5)}  ${rowsCol}  ${`${served.name}@${served.version}`.padEnd(10)}  ${acc.padEnd(13)}  ${r.outcome}: ${r.reason.slice(0, 110)}`)
    if (!smoke) await sleep(PAUSE_MS)
  }
  for (const [id, y] of unlabelled) continual.label(id, y)
  // Deliver what is left, then stop the deliverer.
  await deliverer.stop()
  await webhooks.deliverDue()

  // 5. The plot and the summary, from the catalog's rows.
  const png = path.join(home.root, 'continual.png')
  await continual.plotTimeline(MODEL, png, { window: 100 })
  const t = await continual.timeline(MODEL, { window: 100 })
  console.log(`\nplot: ${png} (${t.labelled} labelled predictions, ${t.drift.length} drift checks, ${t.events.length} events)`)

  const promotions = t.events.filter((e) => e.kind === 'promoted')
  const firstPromotion = promotions.find((e) => (e.version ?? 1) > 1)
  // Accuracy of the labelled predictions in three phases, from the timeline's rows.
  const before = [0, 0]
  const after = [0, 0]
  const retrained = [0, 0]
  for (const p of t.accuracy) {
    const row = rowOf.get(p.predictionId) ?? 0
    const phase = row < DRIFT_AT ? before : p.version === 1 ? after : retrained
    phase[0] += p.correct ? 1 : 0
    phase[1] += 1
  }
  console.log(`\naccuracy before the drift (v1, rows ${TRAIN_ROWS}..${DRIFT_AT}): ${pct(before)}`)
  console.log(`accuracy after the drift, before the retrain (v1):   ${pct(after)}`)
  console.log(`accuracy after the retrain (promoted versions):       ${pct(retrained)}`)
  for (const v of t.versions) {
    const r = continual.realisedAccuracy(v.modelId)
    console.log(`  ${MODEL}@${v.version}: ${v.predictions} predictions, ${r.labelled} labelled, realised accuracy ${(r.accuracy ?? NaN).toFixed(3)}`)
  }
  console.log('\npromotions:')
  for (const e of promotions) {
    const was = e.previousVersion === null ? 'none' : `v${e.previousVersion}`
    console.log(`  ${e.at}  v${e.version} (was ${was})${e.reason ? `: ${e.reason}` : ''}`)
  }
  console.log('\nmonitor decisions:')
  for (const d of monitor.decisions()) console.log(`  ${d.at}  ${d.kind.padEnd(19)} ${d.reason.slice(0, 100)}`)
  const outbox = webhooks.deliveries({ webhookId: hook.id })
  const bad = received.filter((r) => !r.signed).length
  console.log(`\nwebhook deliveries received: ${received.length} (${outbox.length} in the outbox, ${bad} signature failures)`)
  for (const r of received) console.log(`  ${r.event.padEnd(20)} ${r.id}  ${r.summary}`)
  server.close()
  console.log(`\ndone in ${((Date.now() - started) / 1000).toFixed(1)}s`)

  // The story this example tells must have happened.
  if (!firstPromotion) fail('the monitor never promoted a retrained version')
  if (!received.some((r) => r.event === 'promoted') || bad) fail('the receiver did not get a signed `promoted` delivery')
  if (retrained[1] === 0 || retrained[0] / retrained[1] <= after[0] / Math.max(after[1], 1)) {
    fail('the retrained version is no better than v1 after the drift')
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
