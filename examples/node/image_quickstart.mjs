// anneal image quickstart, Node twin of examples/rust/image_quickstart.rs.
//
// Run:    node examples/node/image_quickstart.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
// Output: training progress, the share of generated images whose colour and shape match
//         their prompt before and after training, and image_quickstart.png (top row: the
//         untrained model, bottom row: trained). `--smoke` trains 20 steps (for CI; the
//         score is then printed but low).
//
// It draws a toy dataset itself (32x32 pictures of a red, green, blue or yellow circle,
// square or triangle, captioned "a red circle", ...), imports it as an image dataset,
// creates the from-scratch `tiny-shapes` text-to-image preset, trains it (UNet and text
// encoder) with the preset's recommended settings, and scores both models.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import fs from 'node:fs'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const anneal = createRequire(import.meta.url)(path.join(here, '..', '..', 'bindings-node'))
const { Home, shapes } = anneal
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
// The tiny-shapes preset's recommended settings (anneal::diffusion::presets).
const STEPS = process.argv.includes('--smoke') ? 20 : 800
const SAMPLING = { steps: 25, guidanceScale: 3.0, scheduler: 'euler_ancestral' }
const PER_PROMPT = 4 // 48 generated images per score
const SIZE = 16
const pct = (x) => `${Math.round(x * 100)}%`

const progress = (e) => {
  if (e.type === 'step' && (e.step % 50 === 0 || e.step === e.totalSteps)) {
    const image = e.image ? `, validation grid ${e.image}` : ''
    console.log(`  step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)}${image}`)
  }
}

/** Images of `modelId` for every colour x shape prompt, and the share that match. */
async function score(modelId) {
  const prompts = shapes.prompts()
  const gen = await home.imageGenerator(modelId)
  const out = await gen.generate(prompts, { numImages: PER_PROMPT, seed: 1234, ...SAMPLING })
  const wanted = prompts.flatMap((p) => Array(PER_PROMPT).fill(p))
  return [shapes.score(out.images.map((i) => i.png), wanted), out.images]
}

const home = Home.open(args[0] ?? 'anneal-home')
const folder = path.join(home.root, 'image-quickstart-shapes-16px')
if (!fs.existsSync(path.join(folder, 'metadata.jsonl'))) shapes.writeImagefolder(folder, 480, SIZE, 0)
const data = await home.datasets().importImages(folder, { name: 'shapes-16px', onDuplicate: 'reuse' })
console.log(`dataset shapes-16px: ${data.numRecords} images`)

const base = await home.models().createPreset('tiny-shapes', { name: 'tiny-shapes', seed: 0 })
const [before, beforeImages] = await score(base.id)
console.log(`base ${base.name}@${base.version} (${base.params} parameters): ${pct(before)} of generated images match their prompt`)

const report = await home.training().train({
  base: base.id, dataset: data.id, method: 'full', maxSteps: STEPS, batchSize: 16,
  learningRate: 2e-3, warmupSteps: 20, schedule: 'cosine', outputName: 'shapes-painter',
  image: {
    snrGamma: 5.0, trainTextEncoder: true, captionDropout: 0.1,
    validationPrompts: ['a red circle', 'a blue square', 'a yellow triangle'],
    validationEvery: Math.max(Math.floor(STEPS / 4), 1), validationSteps: SAMPLING.steps,
    validationGuidanceScale: SAMPLING.guidanceScale, validationScheduler: SAMPLING.scheduler,
  },
}, { onEvent: progress })
console.log(`trained in ${report.durationS.toFixed(0)} s, final loss ${report.finalLoss.toFixed(4)}`)
const [after, afterImages] = await score(report.modelId)
console.log(`after training: ${pct(after)} of generated images match their prompt (was ${pct(before)})`)

// One PNG: the first image of each prompt, untrained row above trained row.
const rows = [beforeImages, afterImages].map((r) => r.filter((_, i) => i % PER_PROMPT === 0).map((i) => i.png))
fs.writeFileSync('image_quickstart.png', shapes.grid(rows, 4)) // enlarged 4 times
console.log('wrote image_quickstart.png (top: untrained, bottom: trained)')
