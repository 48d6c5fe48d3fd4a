// The `anneal` bin (bin/anneal.js): the Rust command line through the native binding.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { test } from 'node:test'

import { Home, pkgDir, tmpDir } from './helpers.mjs'

const bin = path.join(pkgDir, 'bin', 'anneal.js')

function anneal(args, env = {}) {
  const { ANNEAL_HOME, ...rest } = process.env
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...rest, ...env } })
}

test('the bin is declared in package.json', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'))
  assert.equal(pkg.bin.anneal, 'bin/anneal.js')
})

test('--help exits 0 with examples', () => {
  const r = anneal(['--help'])
  assert.equal(r.status, 0, r.stderr)
  assert.match(r.stdout, /Examples:/)
  assert.match(r.stdout, /anneal train/)
})

test('datasets ls --json lists what Node imported', async () => {
  const dir = tmpDir()
  const homeDir = path.join(dir, 'home')
  let r = anneal(['--home', homeDir, 'datasets', 'ls', '--json'])
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), [])
  const file = path.join(dir, 't.jsonl')
  fs.writeFileSync(file, '{"text": "hello"}\n{"text": "world"}\n')
  await Home.open(homeDir).datasets().importFile(file, { name: 'greetings' })
  r = anneal(['datasets', 'ls', '--json'], { ANNEAL_HOME: homeDir })
  assert.equal(r.status, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout).map((d) => [d.name, d.num_records]), [['greetings', 2]])
})

test('an error exits with its code and names it on stderr', () => {
  const r = anneal(['--home', path.join(tmpDir(), 'home'), 'models', 'show', 'nope'])
  assert.equal(r.status, 5)
  assert.match(r.stderr, /^error\[not_found\]: /m)
})
