// anneal image quickstart, Node twin of examples/rust/image_quickstart.rs.
//
// Run:    node examples/node/image_quickstart.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
// Output: training progress; before and after training, the share of generated images
//         whose dominant colour, shape, and both match their prompt; and
//         <home>/image_quickstart.png (top row: the untrained model, bottom row: trained).
//         `--smoke` trains 20 steps and scores 12 images (for CI).
//
// It draws a toy dataset itself (480 16x16 pictures of a red, green, blue or yellow
// circle, square or triangle on white, captioned "a red circle", ...), imports it as an
// image dataset, creates the from-scratch `tiny-shapes` text-to-image preset, trains its
// UNet with the preset's recommended settings (the text encoder keeps its random
// weights), and scores both models: 4 images for each of the 12 prompts, each classified
// from its pixels alone. Same settings and seeds as the Rust example, so the same numbers.
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import fs from 'node:fs'
import path from 'node:path'

const here = path.dirname(fileURLToPath(import.meta.url))
const anneal = createRequire(import.meta.url)(path.join(here, '..', '..', 'bindings-node'))
const { Home, shapes } = anneal
const started = Date.now()
const smoke = process.argv.includes('--smoke')
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'))
// The tiny-shapes preset's recommended settings (anneal::diffusion::presets).
const [STEPS, BATCH, LR, WARMUP, SCHEDULE] = [1200, 8, 3e-3, 20, 'cosine']
const TRAIN = { snrGamma: 5.0, trainTextEncoder: false, captionDropout: 0.1 }
const SAMPLING = { steps: 25, guidanceScale: 3.0, scheduler: 'ddpm' }
const SIZE = 16 // the preset's resolution
const IMAGES = 480
const SCORE_SEED = 1234
const [steps, perPrompt] = smoke ? [20, 1] : [STEPS, 4]
const pct = (x) => `${Math.round(x * 100)}%`

const progress = (e) => {
  if (e.type === 'step' && (e.step % 100 === 0 || e.step === e.totalSteps)) {
    console.log(`  step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)}`)
  }
}

/** `perPrompt` images of `modelId` for every prompt, and how well they match. */
async function score(modelId) {
  const prompts = shapes.prompts()
  const gen = await home.imageGenerator(modelId)
  const out = await gen.generate(prompts, { numImages: perPrompt, seed: SCORE_SEED, ...SAMPLING })
  const wanted = prompts.flatMap((p) => Array(perPrompt).fill(p))
  return [shapes.evaluate(out.images.map((i) => i.png), wanted), out.images]
}

const report = (when, s) =>
  console.log(`${when}: ${pct(s.both)} of ${s.images} generated images match their prompt (colour ${pct(s.color)}, shape ${pct(s.shape)})`)

const home = Home.open(args[0] ?? 'anneal-home')

// 1. The toy dataset, drawn and imported (reused when this runs again).
const name = `shapes-${SIZE}px`
const folder = path.join(home.root, `image-quickstart-${name}`)
if (!fs.existsSync(path.join(folder, 'metadata.jsonl'))) shapes.writeImagefolder(folder, IMAGES, SIZE, 0)
const data = await home.datasets().importImages(folder, { name, onDuplicate: 'reuse' })
console.log(`dataset ${name}: ${data.numRecords} images`)

// 2. The from-scratch base (a new version of `tiny-shapes` at each run).
const base = await home.models().createPreset('tiny-shapes', { seed: 0 })
console.log(`base ${base.name}@${base.version} (${base.params} parameters)`)
const [before, beforeImages] = await score(base.id)
report('before training', before)

// 3. Training with the preset's recommended settings.
const trained = await home.training().train({
  base: base.id, dataset: data.id, method: 'full', maxSteps: steps, batchSize: BATCH,
  learningRate: LR, warmupSteps: WARMUP, schedule: SCHEDULE, seed: 0, outputName: 'shapes-painter',
  image: {
    ...TRAIN,
    validationPrompts: ['a red circle', 'a blue square', 'a yellow triangle'],
    validationEvery: Math.max(Math.floor(steps / 2), 1), validationSteps: SAMPLING.steps,
    validationGuidanceScale: SAMPLING.guidanceScale, validationScheduler: SAMPLING.scheduler,
  },
}, { onEvent: progress })
console.log(`trained in ${trained.durationS.toFixed(0)} s (${trained.steps} steps, final loss ${trained.finalLoss.toFixed(4)})`)

// 4. The numbers that show it learned, and the picture.
const [after, afterImages] = await score(trained.modelId)
report('before training', before)
report('after training ', after)
const chance = shapes.chance()
console.log(`chance (a painter that ignores the prompt): ${pct(chance.both)} (colour ${pct(chance.color)}, shape ${pct(chance.shape)})`)
// One PNG: the first image of each prompt, untrained row above trained row, enlarged 4 times.
const rows = [beforeImages, afterImages].map((r) => r.filter((_, i) => i % perPrompt === 0).map((i) => i.png))
const out = path.join(home.root, 'image_quickstart.png')
fs.writeFileSync(out, shapes.grid(rows, 4))
console.log(`wrote ${out} (top: untrained, bottom: trained)`)
console.log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`)
