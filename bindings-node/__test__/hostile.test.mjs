// The shared bad-input corpus (tests/fixtures/hostile/cases.json) through the Node binding.
//
// Each case: a fresh home, its setup, one call with hostile input; the rejection (or
// throw) must carry the expected code, name the field / file / record (as properties and
// in its message), and leave the home as it was. Options are spelled camelCase here;
// `invalid_config` fields are expected camelCased too, as the binding reports them. The
// format is in the corpus's README.md; ANNEAL_HOSTILE_PENDING=1 runs the pending cases
// too, as `todo` tests (reported, not failed).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Home, fixtures, tmpDir } from './helpers.mjs'

const LANG = 'node'
const corpus = path.join(fixtures, 'hostile')
const { cases } = JSON.parse(fs.readFileSync(path.join(corpus, 'cases.json'), 'utf8'))
const runPending = process.env.ANNEAL_HOSTILE_PENDING === '1'

/** `num_records` -> `numRecords`, as the core's `Spelling::Camel`. */
export function camel(s) {
  let out = ''
  let upper = false
  for (const c of s) {
    if (c === '_' && out.length > 0) upper = true
    else if (upper) {
      out += c.toUpperCase()
      upper = false
    } else out += c
  }
  return out
}

/** An options object with its field names camelCased; map keys (`columns`) stay. */
function camelKeys(v, isMap = false) {
  if (Array.isArray(v)) return v.map((x) => camelKeys(x))
  if (v === null || typeof v !== 'object') return v
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [isMap ? k : camel(k), camelKeys(x, k === 'columns')]))
}

/** The manifest's JSON with its `$special` values made real JavaScript values. */
function native(v) {
  if (Array.isArray(v)) return v.map(native)
  if (v === null || typeof v !== 'object') return v
  switch (v.$special) {
    case 'nan':
      return NaN
    case 'inf':
      return Infinity
    case 'lone_surrogate':
      return '\ud800'
    case 'bigint':
      return BigInt(v.value)
    case 'nested': {
      let x = []
      for (let i = 1; i < v.depth; i++) x = [x]
      return x
    }
    case 'repeat':
      return v.text.repeat(Math.floor(v.bytes / v.text.length))
    case undefined:
      break
    default:
      throw new Error(`unknown $special ${v.$special}`)
  }
  const out = {}
  for (const [k, x] of Object.entries(v)) if (k !== '$key_special') out[k] = native(x)
  if (v.$key_special === 'lone_surrogate') out['\ud800'] = 'x'
  return out
}

/** node:test options: cases for other languages are skipped; pending ones too, or run as
 * `todo` (reported, never failing) with ANNEAL_HOSTILE_PENDING=1. */
function testOptions(c) {
  if (c.only && !c.only.includes(LANG)) return { skip: `only for ${c.only.join(', ')}` }
  const p = typeof c.pending === 'object' && c.pending !== null ? c.pending[LANG] : c.pending
  if (!p) return {}
  return runPending ? { todo: `pending: ${p}` } : { skip: `pending: ${p}` }
}

async function setup(home, steps = []) {
  for (const s of steps) {
    const name = s.name
    if (s.preset) await home.models().createPreset(s.preset, { name, seed: 0 })
    else if (s.register) await home.models().registerDir(path.join(fixtures, s.register), { name, parent: s.parent })
    else if (s.records) await home.datasets().importRecords(s.records, { name })
    else if (s.import) await home.datasets().importFile(path.join(corpus, s.import), { name })
    else throw new Error(`unknown setup step ${JSON.stringify(s)}`)
  }
}

function inputPath(work, spec) {
  if (typeof spec === 'string') return path.join(corpus, spec)
  const p = path.join(work, spec.name)
  switch (spec.generate) {
    case 'fifo':
      execFileSync('mkfifo', [p])
      break
    case 'directory':
      fs.mkdirSync(p)
      break
    case 'nested': {
      const nest = '['.repeat(spec.depth) + ']'.repeat(spec.depth)
      fs.writeFileSync(p, spec.name.endsWith('.json') ? `[${nest}]` : `{"text": "a", "x": ${nest}}\n`)
      break
    }
    case 'big_line': {
      const a = 'a'.repeat(spec.bytes)
      fs.writeFileSync(p, spec.name.endsWith('.txt') ? `${a}\n` : `{"text": "${a}"}\n`)
      break
    }
    case 'missing':
    case 'nul_path':
      break
    default:
      throw new Error(`unknown input kind ${spec.generate}`)
  }
  return p
}

function mutateSafetensors(p, op) {
  const data = fs.readFileSync(p)
  const n = Number(data.readBigUInt64LE(0))
  const header = data.subarray(8, 8 + n)
  const body = data.subarray(8 + n)
  const withHeader = (h) => {
    const len = Buffer.alloc(8)
    len.writeBigUInt64LE(BigInt(h.length))
    return Buffer.concat([len, h, body])
  }
  let out
  if ('truncate' in op) out = data.subarray(0, op.truncate)
  else if ('header_len' in op) {
    out = Buffer.from(data)
    // The manifest's JSON number may have lost precision: u64::MAX is written as 2^64.
    const len = BigInt(op.header_len) >= 1n << 64n ? (1n << 64n) - 1n : BigInt(op.header_len)
    out.writeBigUInt64LE(len, 0)
  } else if ('header_text' in op) out = withHeader(Buffer.from(op.header_text))
  else if ('edit' in op) {
    const h = JSON.parse(header.toString('utf8'))
    const { tensor, ...fields } = op.edit
    Object.assign(h[tensor], fields)
    out = withHeader(Buffer.from(JSON.stringify(h)))
  } else throw new Error(`unknown safetensors op ${JSON.stringify(op)}`)
  fs.writeFileSync(p, out)
}

function inputDir(work, spec) {
  if (spec.generate) {
    const p = path.join(work, 'model')
    if (spec.generate === 'file') fs.writeFileSync(p, 'not a directory')
    else if (spec.generate === 'empty_dir') fs.mkdirSync(p)
    else if (spec.generate === 'nul_path') return path.join(work, 'mo\0del')
    return p
  }
  const d = path.join(work, spec.from)
  fs.cpSync(path.join(fixtures, spec.from), d, { recursive: true })
  for (const [file, fields] of Object.entries(spec.set ?? {})) {
    const v = JSON.parse(fs.readFileSync(path.join(d, file), 'utf8'))
    fs.writeFileSync(path.join(d, file), JSON.stringify({ ...v, ...fields }, null, 2))
  }
  for (const [file, text] of Object.entries(spec.write ?? {})) fs.writeFileSync(path.join(d, file), text)
  for (const [file, op] of Object.entries(spec.safetensors ?? {})) mutateSafetensors(path.join(d, file), op)
  for (const [file, src] of Object.entries(spec.copy ?? {})) fs.copyFileSync(path.join(corpus, src), path.join(d, file))
  for (const file of spec.delete ?? []) fs.rmSync(path.join(d, file))
  return d
}

/** Runs the case's call; resolves to what the `ok` expectations look at. */
async function call(home, work, c) {
  const opts = camelKeys(native(c.options ?? {}))
  switch (c.call) {
    case 'import_file': {
      const rec = await home.datasets().importFile(inputPath(work, c.path), opts)
      return { num_records: rec.numRecords, format: rec.format }
    }
    case 'import_records': {
      const rec = await home.datasets().importRecords(native(c.records), opts)
      return { num_records: rec.numRecords, format: rec.format }
    }
    case 'register_dir': {
      const rec = await home.models().registerDir(inputDir(work, c.dir), opts)
      return { kind: rec.kind }
    }
    case 'create_job': {
      const job = home.training().createJob(camelKeys(native(c.spec)))
      return { status: job.status }
    }
    case 'generator':
    case 'generate': {
      const gen = await home.generator(c.model, opts)
      if (c.call === 'generator') return {}
      const out = await gen.generate(native(c.prompt), camelKeys(native(c.config ?? {})))
      return { generated_tokens: out.generatedTokens, finish_reason: out.finishReason }
    }
    default:
      throw new Error(`unknown call ${c.call}`)
  }
}

const entries = (p) => (fs.existsSync(p) ? fs.readdirSync(p).sort() : [])

function snapshot(home) {
  const models = home.models()
  return {
    datasets: home.datasets().list().map((d) => d.id),
    models: models.list().map((m) => m.id),
    jobs: home.training().jobs().map((j) => j.id),
    generations: models.generations().length,
    datasetDirs: entries(path.join(home.root, 'datasets')),
    modelDirs: entries(path.join(home.root, 'models')),
  }
}

function checkError(e, expect) {
  assert.ok(e instanceof Error, `not an Error: ${e}`)
  const msg = e.message
  assert.equal(e.code, expect.code, `code of: ${msg}`)
  if (expect.field !== undefined) {
    const want = expect.code === 'invalid_config' ? camel(expect.field) : expect.field
    assert.equal(e.field, want, `field of: ${msg}`)
    assert.ok(msg.includes(`\`${want}\``), `the message does not name \`${want}\`: ${msg}`)
  }
  if (expect.file !== undefined) {
    const named = expect.code === 'invalid_data' ? e.file : e.path
    assert.ok(named && path.basename(named) === expect.file, `file ${named}: ${msg}`)
    assert.ok(msg.includes(expect.file), `the message does not name ${expect.file}: ${msg}`)
  }
  if (expect.record !== undefined) {
    assert.equal(e.record, expect.record, `record of: ${msg}`)
    assert.ok(msg.includes(`record ${expect.record}`), `the message does not name record ${expect.record}: ${msg}`)
  }
  for (const part of expect.message ?? []) assert.ok(msg.includes(part), `${JSON.stringify(part)} not in: ${msg}`)
}

for (const c of cases) {
  test(c.id, testOptions(c), async () => {
    const dir = tmpDir('anneal-hostile-')
    const home = Home.open(path.join(dir, 'home'))
    const work = path.join(dir, 'work')
    fs.mkdirSync(work)
    await setup(home, c.setup)
    const before = snapshot(home)
    const expect = c.expect_node ?? c.expect
    let result
    let error
    try {
      result = await call(home, work, c)
    } catch (e) {
      error = e
    }
    if (expect.ok) {
      assert.equal(error, undefined, `expected success: ${error?.code} ${error?.message}`)
      for (const [k, want] of Object.entries(expect.ok)) {
        if (k === 'max_generated_tokens') assert.ok(result.generated_tokens <= want, JSON.stringify(result))
        else assert.deepEqual(result[k], want, k)
      }
      return
    }
    assert.ok(error, `expected a ${expect.code} error, but the call succeeded: ${JSON.stringify(result)}`)
    checkError(error, expect)
    assert.deepEqual(snapshot(home), before, 'a refused call changed the home')
  })
}
