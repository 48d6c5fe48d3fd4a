import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { tmpHome, write, jsonl, rejectsCleanly, datasetDirs } from './helpers.mjs'

const completions = [
  { prompt: '2+2?', completion: '4' },
  { prompt: 'capital of France?', completion: 'Paris' },
  { prompt: 'opposite of hot?', completion: 'cold' },
]

test('imports CSV, JSON array, JSONL, TXT and in-memory records, detecting the format', async () => {
  const env = tmpHome()
  const { ds, files } = env
  const csv = write(files, 'qa.csv', 'prompt,completion\n"2+2?",4\n"capital, France?",Paris\n')
  const r1 = await ds.importFile(csv)
  assert.equal(r1.name, 'qa')
  assert.equal(r1.format, 'completion')
  assert.equal(r1.sourceFormat, 'csv')
  assert.equal(r1.numRecords, 2)
  assert.deepEqual(ds.preview('qa', 5)[1], { prompt: 'capital, France?', completion: 'Paris' })

  const inst = [
    { instruction: 'Translate', input: 'chat', output: 'cat' },
    { instruction: 'Say hi', output: 'hi' },
  ]
  const r2 = await ds.importFile(write(files, 'alpaca.json', JSON.stringify(inst, null, 2)))
  assert.equal(r2.format, 'instruction')
  assert.equal(r2.sourceFormat, 'json')
  assert.deepEqual(ds.preview(r2.id, 5)[1], { instruction: 'Say hi', input: '', output: 'hi' })

  const chat = [{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] }]
  const r3 = await ds.importFile(write(files, 'chat.jsonl', jsonl(chat)))
  assert.equal(r3.format, 'chat')
  assert.equal(r3.sourceFormat, 'jsonl')

  const txt = write(files, 'notes.txt', 'first line\n\nsecond line\nthird line\n')
  const r4 = await ds.importFile(txt)
  assert.equal(r4.format, 'text')
  assert.equal(r4.sourceFormat, 'txt')
  assert.equal(r4.numRecords, 3)
  const r5 = await ds.importFile(txt, { name: 'notes-doc', txtMode: 'document' })
  assert.equal(r5.numRecords, 1)
  assert.equal(ds.preview('notes-doc', 1)[0].text, 'first line\n\nsecond line\nthird line\n')

  const r6 = await ds.importRecords(completions, { name: 'mem' })
  assert.equal(r6.format, 'completion')
  assert.equal(r6.source, 'memory')
  assert.equal(r6.sourceFormat, 'records')
  assert.equal(r6.numRecords, 3)

  const r7 = await ds.importFile(write(files, 'iris.csv', 'petal,sepal,label\n1.4,5.1,setosa\n4.7,7.0,versicolor\n'))
  assert.equal(r7.format, 'tabular')
  assert.deepEqual(ds.preview('iris', 1)[0], { features: { petal: '1.4', sepal: '5.1' }, label: 'setosa' })

  assert.deepEqual(
    ds.list().map((d) => d.name),
    ['qa', 'alpaca', 'chat', 'notes', 'notes-doc', 'mem', 'iris'],
  )
})

test('records have camelCase keys; columns keep theirs', async () => {
  const { ds } = tmpHome()
  const rec = await ds.importRecords([{ q: 'a', a: 'b' }], { name: 'x', columns: { prompt: 'q', completion: 'a' } })
  assert.deepEqual(Object.keys(rec).sort(), [
    'bytes', 'columns', 'createdAt', 'format', 'id', 'name', 'numRecords', 'parentId', 'path', 'sha256', 'source', 'sourceFormat',
  ])
  assert.match(rec.id, /^ds_/)
  assert.match(rec.sha256, /^[0-9a-f]{64}$/)
  assert.equal(rec.parentId, null)
  assert.deepEqual(rec.columns, { completion: 'a', prompt: 'q' })
  assert.ok(fs.existsSync(rec.path))
})

test('format and source format can be forced, columns mapped', async () => {
  const { ds, files } = tmpHome()
  const p = write(files, 'qa.jsonl', jsonl([{ question: 'q1', answer: 'a1', label: 'x' }, { question: 'q2', answer: 'a2', label: 'y' }]))
  const mapped = await ds.importFile(p, { name: 'mapped', columns: { prompt: 'question', completion: 'answer' } })
  assert.equal(mapped.format, 'completion')
  assert.deepEqual(ds.preview('mapped', 1), [{ prompt: 'q1', completion: 'a1' }])

  const tab = await ds.importFile(p, { name: 'tab', format: 'tabular' })
  assert.equal(tab.format, 'tabular')
  assert.deepEqual(ds.preview('tab', 1)[0], { features: { question: 'q1', answer: 'a1' }, label: 'x' })

  const odd = write(files, 'data.dat', jsonl([{ text: 'one' }, { text: 'two' }]))
  const forced = await ds.importFile(odd, { sourceFormat: 'jsonl' })
  assert.equal(forced.sourceFormat, 'jsonl')
  assert.equal(forced.numRecords, 2)

  const txt = write(files, 'lines.txt', 'a b\nc d\n')
  const asText = await ds.importFile(txt, { name: 'lines-as-text', format: 'text' })
  assert.equal(asText.format, 'text')
})

test('same content is duplicate_content, or reused with onDuplicate: reuse', async () => {
  const env = tmpHome()
  const { ds, files } = env
  const p = write(files, 'a.jsonl', jsonl(completions))
  const first = await ds.importFile(p, { name: 'first' })
  const err = await rejectsCleanly(env, () => ds.importFile(p, { name: 'second' }), 'duplicate_content')
  assert.equal(err.existingId, first.id)
  assert.equal(err.existingName, 'first')
  assert.ok(err.message.includes('first'), err.message)
  // In-memory records with the same content are the same dataset too.
  await rejectsCleanly(env, () => ds.importRecords(completions, { name: 'third' }), 'duplicate_content')
  const reused = await ds.importFile(p, { name: 'second', onDuplicate: 'reuse' })
  assert.equal(reused.id, first.id)
  assert.equal(ds.list().length, 1)
})

test('preview, stats, list, get and delete', async () => {
  const { ds, home } = tmpHome()
  const rec = await ds.importRecords(completions, { name: 'qa' })
  assert.deepEqual(ds.preview('qa', 2), completions.slice(0, 2))
  assert.equal(ds.preview(rec.id, 100).length, 3)

  const st = ds.stats('qa')
  assert.equal(st.numRecords, 3)
  assert.equal(st.bytes, rec.bytes)
  assert.deepEqual(Object.keys(st.fields).sort(), ['completion', 'prompt'])
  assert.equal(st.fields.completion.minChars, 1)
  assert.equal(st.fields.prompt.maxChars, 'capital of France?'.length)
  assert.equal(st.lengthHistogram.reduce((n, b) => n + b.count, 0), 3)
  assert.ok('minChars' in st.lengthHistogram[0])

  const chat = await ds.importRecords(
    [{ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'yo' }] }],
    { name: 'chat' },
  )
  assert.deepEqual(ds.stats(chat.id).roleCounts, { assistant: 1, user: 1 })
  const tab = await ds.importRecords([{ x: 1, label: 'very_good' }, { x: 2, label: 'very_good' }], { name: 'tab' })
  assert.deepEqual(ds.stats(tab.name).labelCounts, { very_good: 2 }, 'label values are data: keys unchanged')

  assert.equal(ds.get('qa').id, rec.id)
  assert.equal(ds.get(rec.id).name, 'qa')
  assert.deepEqual(ds.list().map((d) => d.name), ['qa', 'chat', 'tab'])

  await ds.delete('qa')
  assert.deepEqual(ds.list().map((d) => d.name), ['chat', 'tab'])
  assert.ok(!datasetDirs(home).includes(rec.sha256))
  assert.throws(() => ds.get('qa'), { code: 'not_found' })
  assert.throws(() => ds.preview('qa', 1), { code: 'not_found' })
  assert.throws(() => ds.stats('qa'), { code: 'not_found' })
  await assert.rejects(ds.delete('qa'), { code: 'not_found' })
  await ds.delete(chat.id, { force: false })
  assert.equal(ds.list().length, 1)
})

test('split is deterministic for a seed', async () => {
  const { ds } = tmpHome()
  const rows = Array.from({ length: 50 }, (_, i) => ({ text: `row ${i}` }))
  await ds.importRecords(rows, { name: 'all' })
  const a = await ds.split('all', 0.2, { seed: 7 })
  assert.equal(a.train.name, 'all-train')
  assert.equal(a.val.name, 'all-val')
  assert.equal(a.train.numRecords + a.val.numRecords, 50)
  assert.equal(a.val.numRecords, 10)
  assert.equal(a.train.parentId, ds.get('all').id)
  assert.equal(a.val.source, `split:${ds.get('all').id}`)
  // The same split again returns the same halves.
  const again = await ds.split('all', 0.2, { seed: 7 })
  assert.equal(again.train.id, a.train.id)
  assert.equal(again.val.id, a.val.id)
  // Another seed with other names: other records, same sizes; the same seed: same content.
  const b = await ds.split('all', 0.2, { seed: 8, names: ['tr8', 'va8'] })
  assert.equal(b.val.name, 'va8')
  assert.equal(b.val.numRecords, 10)
  assert.notDeepEqual(ds.preview('va8', 10), ds.preview('all-val', 10))
  // The same seed under other names is the same content: the stored halves are reused.
  const c = await ds.split('all', 0.2, { seed: 7, names: ['tr7', 'va7'] })
  assert.equal(c.train.id, a.train.id)
  assert.equal(c.val.sha256, a.val.sha256)
  // Bad fractions and options are invalid_config.
  await assert.rejects(ds.split('all', 1.5), (e) => e.code === 'invalid_config' && e.field === 'valFraction')
  await assert.rejects(ds.split('all', 0.2, { seed: -1 }), (e) => e.code === 'invalid_config' && e.field === 'seed')
  await assert.rejects(ds.split('all', 0.2, { sed: 1 }), (e) => e.code === 'invalid_config' && e.message.includes('sed'))
  await assert.rejects(ds.split('nope', 0.2), { code: 'not_found' })
})

// ---------------------------------------------------------------------------------
// Bad input: each case rejects with a code, names the file / record / field, and
// leaves list() and the datasets/ directory unchanged.

async function badInputEnv() {
  const env = tmpHome()
  await env.ds.importRecords([{ text: 'already here' }], { name: 'existing' })
  return env
}

test('bad input: malformed JSON at line N (JSONL) and in a JSON array', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'bad.jsonl', '{"text": "a"}\n{"text": "b"}\n{"text": "c" "oops"}\n{"text": "d"}\n')
  const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'invalid_data')
  assert.equal(e.file, p)
  assert.equal(e.record, 3)
  assert.ok(e.message.includes(p) && e.message.includes('record 3') && /malformed JSON/.test(e.message), e.message)

  const arr = write(env.files, 'bad.json', '[{"text": "a"},\n {"text": "b"},\n {"text": }]')
  const e2 = await rejectsCleanly(env, () => env.ds.importFile(arr), 'invalid_data')
  assert.equal(e2.record, 3)
  assert.ok(e2.message.includes(arr) && e2.message.includes('record 3'), e2.message)
})

test('bad input: a missing column, and a mapping to a misnamed column', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'missing.jsonl', jsonl([{ prompt: 'a', completion: 'b' }, { prompt: 'c' }]))
  const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'invalid_data')
  assert.equal(e.record, 2)
  assert.equal(e.field, 'completion')
  assert.ok(e.message.includes(p) && e.message.includes('record 2') && e.message.includes('`completion`'), e.message)

  const q = write(env.files, 'qa.jsonl', jsonl([{ q: 'a', a: 'b' }]))
  const e2 = await rejectsCleanly(
    env,
    () => env.ds.importFile(q, { columns: { prompt: 'question', completion: 'answer' } }),
    'invalid_data',
  )
  assert.equal(e2.record, 1)
  assert.ok(['question', 'answer'].includes(e2.field), e2.field)
  assert.ok(e2.message.includes(q) && e2.message.includes(`\`${e2.field}\``), e2.message)

  const e3 = await rejectsCleanly(env, () => env.ds.importFile(q, { columns: { answer: 'a' } }), 'invalid_config')
  assert.equal(e3.field, 'columns.answer')
})

test('bad input: an empty file', async () => {
  const env = await badInputEnv()
  for (const name of ['empty.jsonl', 'empty.json', 'empty.csv', 'empty.txt']) {
    const p = write(env.files, name, '')
    const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'invalid_data')
    assert.ok(e.message.includes(p) && /empty/.test(e.message), e.message)
    assert.equal(e.file, p)
  }
})

test('bad input: invalid UTF-8', async () => {
  const env = await badInputEnv()
  const bytes = Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}\n')])
  const p = write(env.files, 'latin.jsonl', bytes)
  const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'invalid_data')
  assert.equal(e.record, 2)
  assert.ok(e.message.includes(p) && /UTF-8/.test(e.message) && e.message.includes('record 2'), e.message)

  const c = write(env.files, 'latin.csv', Buffer.concat([Buffer.from('text,label\nok,1\n'), Buffer.from([0xe9]), Buffer.from(',2\n')]))
  const e2 = await rejectsCleanly(env, () => env.ds.importFile(c), 'invalid_data')
  assert.equal(e2.record, 3)
  assert.ok(e2.message.includes(c) && /UTF-8/.test(e2.message), e2.message)
})

test('bad input: a CSV with ragged rows', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'ragged.csv', 'prompt,completion\na,b\nc,d,e\n')
  const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'invalid_data')
  assert.equal(e.record, 3)
  assert.ok(e.message.includes(p) && e.message.includes('record 3') && /ragged/.test(e.message), e.message)
})

test('bad input: a format override that does not fit', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'text.jsonl', jsonl([{ text: 'a' }]))
  const e = await rejectsCleanly(env, () => env.ds.importFile(p, { format: 'completion' }), 'invalid_data')
  assert.equal(e.record, 1)
  assert.equal(e.field, 'prompt')
  assert.ok(e.message.includes(p) && e.message.includes('`prompt`'), e.message)
  const e2 = await rejectsCleanly(env, () => env.ds.importFile(p, { sourceFormat: 'csv', name: 'as-csv', format: 'chat' }), 'invalid_data')
  assert.ok(e2.message.includes(p), e2.message)
  const e3 = await rejectsCleanly(env, () => env.ds.importFile(p, { format: 'poem' }), 'invalid_config')
  assert.equal(e3.field, 'format')
  assert.ok(e3.message.includes('poem'), e3.message)
})

test('bad input: a path that does not exist', async () => {
  const env = await badInputEnv()
  const p = path.join(env.files, 'nope.jsonl')
  const e = await rejectsCleanly(env, () => env.ds.importFile(p), 'file_not_found')
  assert.equal(e.path, p)
  assert.ok(e.message.includes(p), e.message)
})

test('bad input: a dataset name that is taken', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'other.jsonl', jsonl([{ text: 'other' }]))
  const e = await rejectsCleanly(env, () => env.ds.importFile(p, { name: 'existing' }), 'already_exists')
  assert.ok(e.message.includes('existing'), e.message)
  await rejectsCleanly(env, () => env.ds.importRecords([{ text: 'z' }], { name: 'existing' }), 'already_exists')
  await rejectsCleanly(env, () => env.ds.importRecords([{ text: 'z' }], { name: 'bad name!' }), 'invalid_config')
})

test('bad input: in-memory records that are not objects, or not an array', async () => {
  const env = await badInputEnv()
  const e = await rejectsCleanly(env, () => env.ds.importRecords([{ text: 'a' }, { text: 'b' }, 42]), 'invalid_data')
  assert.equal(e.record, 3)
  assert.ok(e.message.includes('record 3'), e.message)
  const e2 = await rejectsCleanly(env, () => env.ds.importRecords([{ text: 'a' }, { text: 7 }]), 'invalid_data')
  assert.equal(e2.record, 2)
  assert.equal(e2.field, 'text')
  await rejectsCleanly(env, () => env.ds.importRecords([]), 'invalid_data')
  const e3 = await rejectsCleanly(env, () => env.ds.importRecords({ text: 'a' }), 'invalid_config')
  assert.equal(e3.field, 'records')
})

test('bad input: unknown and mistyped options are invalid_config naming the option', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'ok.jsonl', jsonl([{ text: 'fine' }]))
  const e = await rejectsCleanly(env, () => env.ds.importFile(p, { nmae: 'x' }), 'invalid_config')
  assert.ok(e.message.includes('nmae'), e.message)
  // The allowed options are listed as JavaScript spells them.
  assert.ok(e.message.includes('onDuplicate') && !e.message.includes('on_duplicate'), e.message)
  const e2 = await rejectsCleanly(env, () => env.ds.importFile(p, { onDuplicate: 'sometimes' }), 'invalid_config')
  assert.equal(e2.field, 'onDuplicate')
  const e3 = await rejectsCleanly(env, () => env.ds.importFile(p, { onEvent: 'not a function' }), 'invalid_config')
  assert.equal(e3.field, 'onEvent')
  const e4 = await rejectsCleanly(env, () => env.ds.importFile(p, { cancel: {} }), 'invalid_config')
  assert.equal(e4.field, 'cancel')
  // undefined means "not given".
  const ok = await env.ds.importFile(p, { name: undefined, format: undefined })
  assert.equal(ok.name, 'ok')
})

test('maxRecordBytes: a longer line is invalid_data naming it; 0 is invalid_config', async () => {
  const env = await badInputEnv()
  const p = write(env.files, 'long.jsonl', jsonl([{ text: 'short' }, { text: 'x'.repeat(500) }]))
  const e = await rejectsCleanly(env, () => env.ds.importFile(p, { maxRecordBytes: 100 }), 'invalid_data')
  assert.equal(e.file, p)
  assert.equal(e.record, 2)
  assert.ok(e.message.includes('line 2 is longer than max_record_bytes (100 bytes)'), e.message)
  const e2 = await rejectsCleanly(
    env,
    () => env.ds.importRecords([{ text: 'a' }, { text: 'b'.repeat(100) }], { name: 'mem', maxRecordBytes: 50 }),
    'invalid_data',
  )
  assert.equal(e2.record, 2)
  for (const bad of [0, -1, 'big']) {
    const e3 = await rejectsCleanly(env, () => env.ds.importFile(p, { maxRecordBytes: bad }), 'invalid_config')
    assert.equal(e3.field, 'maxRecordBytes', e3.message)
  }
  const ok = await env.ds.importFile(p, { maxRecordBytes: 1000 })
  assert.equal(ok.numRecords, 2)
})
