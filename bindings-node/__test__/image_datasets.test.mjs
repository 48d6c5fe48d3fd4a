// Image datasets from Node: importImages (a Promise), stats, thumbnails (Buffers),
// split, events, cancel, and bad inputs rejected with typed codes and nothing stored.
// The PNGs are written here.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { execFileSync } from 'node:child_process'
import { tmpHome, rejectsCleanly, CancelToken } from './helpers.mjs'

function crc32(buf) {
  let c = 0xffffffff
  for (const b of buf) {
    c ^= b
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  }
  return (c ^ 0xffffffff) >>> 0
}

function chunk(kind, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const body = Buffer.concat([Buffer.from(kind, 'latin1'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(body))
  return Buffer.concat([len, body, crc])
}

function png(w, h, rgb) {
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array(w).fill(rgb).flat())])
  const raw = Buffer.concat(Array(h).fill(row))
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

const pngSize = (buf) => [buf.readUInt32BE(16), buf.readUInt32BE(20)]

function put(dir, rel, data) {
  const p = path.join(dir, rel)
  fs.mkdirSync(path.dirname(p), { recursive: true })
  fs.writeFileSync(p, data)
  return p
}

function shapes(files) {
  const d = path.join(files, 'shapes')
  put(d, 'red.png', png(16, 16, [255, 0, 0]))
  put(d, 'red.txt', 'a red square\n')
  put(d, 'wide/blue.png', png(16, 8, [0, 0, 255]))
  put(d, 'wide/blue.txt', 'a blue band')
  put(d, 'green.png', png(8, 16, [0, 255, 0]))
  put(d, 'green.txt', 'a green bar')
  return d
}

test('importImages: captions, preview, stats, thumbnails as Buffers, split', async () => {
  const env = tmpHome()
  const { ds, files } = env
  const events = []
  const rec = await ds.importImages(shapes(files), { onEvent: (e) => events.push(e) })
  assert.equal(rec.name, 'shapes')
  assert.equal(rec.format, 'image')
  assert.equal(rec.sourceFormat, 'images')
  assert.equal(rec.numRecords, 3)
  const rows = ds.preview('shapes', 10)
  assert.deepEqual(rows.map((r) => r.file_name), ['green.png', 'red.png', 'wide/blue.png'])
  assert.deepEqual(rows.map((r) => r.text), ['a green bar', 'a red square', 'a blue band'])
  assert.equal(rows[0].image, 'images/000001.png')
  const stats = ds.stats('shapes')
  assert.equal(stats.images.count, 3)
  assert.deepEqual(stats.images.aspectRatios, { '1:1': 1, '9:16': 1, '16:9': 1 })
  assert.deepEqual(stats.images.formats, { png: 3 })
  assert.deepEqual({ min: stats.images.height.min, max: stats.images.height.max }, { min: 8, max: 16 })

  const thumbs = ds.thumbnails('shapes', 2, 8)
  assert.equal(thumbs.length, 2)
  assert.equal(thumbs[0].record.file_name, 'green.png')
  assert.ok(Buffer.isBuffer(thumbs[0].png))
  assert.deepEqual(pngSize(thumbs[0].png), [4, 8])
  assert.deepEqual(pngSize(ds.thumbnails('shapes', 3)[2].png), [16, 8])
  assert.throws(() => ds.thumbnails('shapes', 1, 0), (e) => e.code === 'invalid_config')

  await new Promise((r) => setTimeout(r, 50))
  assert.deepEqual(events[0], { type: 'task_started', task: 'import_dataset', name: 'shapes', total: 3, unit: 'images' })
  assert.equal(events.at(-1).type, 'task_finished')
  assert.equal(events.at(-1).status, 'completed')

  const { train, val } = await ds.split('shapes', 0.34, { seed: 3 })
  assert.equal(train.numRecords + val.numRecords, 3)
  await ds.delete('shapes')
  assert.equal(ds.thumbnails(train.id, 10, 4).length, train.numRecords)
  assert.equal(ds.thumbnails(val.id, 10, 4).length, val.numRecords)
})

test('importImages: imagefolder with a caption column, instance sets, duplicates', async () => {
  const { ds, files } = tmpHome()
  const d = path.join(files, 'hf')
  put(d, 'a.png', png(4, 4, [1, 2, 3]))
  put(d, 'b.png', png(4, 4, [3, 2, 1]))
  put(d, 'metadata.jsonl', '{"file_name": "b.png", "caption": "second"}\n{"file_name": "a.png", "caption": "first"}\n')
  const rec = await ds.importImages(d, { name: 'hf', captionColumn: 'caption' })
  assert.deepEqual(rec.columns, { image: 'file_name', text: 'caption' })
  assert.deepEqual(ds.preview('hf', 5).map((r) => r.text), ['first', 'second'])

  const inst = path.join(files, 'sks')
  for (let i = 0; i < 3; i++) put(inst, `${i}.png`, png(4, 4, [i * 40, 0, 0]))
  await assert.rejects(ds.importImages(inst), (e) => e.code === 'invalid_config' && /instancePrompt|instance_prompt/.test(e.message))
  const r = await ds.importImages(inst, { instancePrompt: 'a photo of sks dog', layout: 'instance' })
  assert.ok(ds.preview(r.id, 5).every((x) => x.text === 'a photo of sks dog'))
  await assert.rejects(ds.importImages(inst, { name: 'again', instancePrompt: 'a photo of sks dog' }), (e) => e.code === 'duplicate_content')
  const same = await ds.importImages(inst, { name: 'again', instancePrompt: 'a photo of sks dog', onDuplicate: 'reuse' })
  assert.equal(same.id, r.id)
})

test('importImages: bad inputs reject with typed codes naming the file, nothing stored', async () => {
  const env = tmpHome()
  const { ds, files } = env
  const good = png(4, 4, [9, 9, 9])
  const huge = Buffer.from(png(1, 1, [0, 0, 0]))
  huge.writeUInt32BE(10000, 16)
  huge.writeUInt32BE(10000, 20)
  huge.writeUInt32BE(crc32(huge.subarray(12, 29)), 29)
  const cases = [
    ['corrupt', { 'a.png': Buffer.concat([good.subarray(0, 30), Buffer.alloc(20), good.subarray(50)]) }, { instancePrompt: 'x' }, ['a.png']],
    ['gif', { 'g.png': Buffer.from('GIF89a\x01\x00\x01\x00\x00\x00\x00;', 'latin1') }, { instancePrompt: 'x' }, ['g.png', 'GIF']],
    ['orphan', { 'a.png': good, 'a.txt': 'ok', 'b.txt': 'alone' }, {}, ['b.txt', 'without its image']],
    ['missing', { 'a.png': good, 'metadata.jsonl': '{"file_name": "nope.png", "text": "x"}\n' }, {}, ['metadata.jsonl', 'record 1', 'nope.png']],
    ['huge', { 'h.png': huge }, { instancePrompt: 'x' }, ['h.png', 'max_pixels']],
    ['empty', { 'notes.md': 'nothing' }, { instancePrompt: 'x' }, ['no images']],
  ]
  for (const [name, content, opts, must] of cases) {
    const d = path.join(files, name)
    for (const [rel, data] of Object.entries(content)) put(d, rel, data)
    const err = await rejectsCleanly(env, () => ds.importImages(d, opts), 'invalid_data')
    for (const s of must) assert.ok(err.message.includes(s), `${name}: ${s} not in ${err.message}`)
  }
  const fifo = path.join(files, 'fifo')
  put(fifo, 'a.png', good)
  execFileSync('mkfifo', [path.join(fifo, 'x.png')])
  const err = await rejectsCleanly(env, () => ds.importImages(fifo, { instancePrompt: 'x' }), 'invalid_data')
  assert.ok(err.message.includes('x.png'), err.message)
  await rejectsCleanly(env, () => ds.importImages(fifo, { instancePrompt: 'x', layout: 'nope' }), 'invalid_config')
  await rejectsCleanly(env, () => ds.importImages(fifo, { instancePrompt: 'x', maxPixels: 0 }), 'invalid_config')

  const token = new CancelToken()
  token.cancel()
  await rejectsCleanly(env, () => ds.importImages(shapes(files), { cancel: token }), 'cancelled')
})
