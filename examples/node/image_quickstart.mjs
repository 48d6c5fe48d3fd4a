// anneal image quickstart, Node twin of examples/rust/image_quickstart.rs.
//
// Run:    node examples/node/image_quickstart.mjs [home dir] [--smoke]   (after `cd bindings-node && npm install && npm run build`)
// Output: training progress; before and after training, the share of generated images
//         whose dominant colour, shape, and both match their prompt; and
//         <home>/image_quickstart.png (top row: the untrained model, bottom row: trained).
//         `--smoke` runs the same loop in a few seconds (48 pictures, 4 training steps,
//         12 images of 4 denoising steps): it shows that everything runs, not that
//         anything is learned.
//
// It draws a toy dataset itself (480 pictures of a red, green, blue or yellow circle,
// square or triangle on white, captioned "a red circle", ...), imports it as an image
// dataset, creates the from-scratch `tiny-shapes` text-to-image preset, trains it with the
// preset's recommended settings (`shapes.recommended()`), and scores both models: 4
// images for each of the 12 prompts, each classified from its pixels alone. Same
// settings and seeds as the Rust example, so the same lines.
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
const SCORE_SEED = 1234 // seed of the scored images (the same for both models)
const rec = shapes.recommended()
const [images, steps, perPrompt, samplingSteps] = smoke ? [48, 4, 1, 4] : [480, rec.steps, 4, rec.inferenceSteps]
// Rounded half to even, as Rust's and Python's formatting round (12.5% -> 12%).
const pct = (x) => {
  const v = x * 100
  const f = Math.floor(v)
  const r = v - f > 0.5 || (v - f === 0.5 && f % 2 === 1) ? f + 1 : f
  return `${r}%`
}

const progress = (e) => {
  if (e.type === 'step' && (e.step % 100 === 0 || e.step === e.totalSteps)) {
    console.log(`  step ${e.step}/${e.totalSteps} loss ${e.loss.toFixed(4)}`)
  }
}

/** `perPrompt` images of `modelId` for every prompt, and how well they match. */
async function score(modelId) {
  const prompts = shapes.prompts()
  const gen = await home.imageGenerator(modelId)
  const out = await gen.generate(prompts, {
    numImages: perPrompt, seed: SCORE_SEED, steps: samplingSteps,
    guidanceScale: rec.guidanceScale, scheduler: rec.scheduler,
  })
  const wanted = prompts.flatMap((p) => Array(perPrompt).fill(p))
  return [shapes.evaluate(out.images.map((i) => i.png), wanted), out.images]
}

const report = (when, s) =>
  console.log(`${when}: ${pct(s.both)} of ${s.images} generated images match their prompt (colour ${pct(s.color)}, shape ${pct(s.shape)})`)

const home = Home.open(args[0] ?? 'anneal-home')

// 1. The toy dataset, drawn at the preset's size and imported (reused when this runs again).
const size = rec.resolution
const name = `shapes-${size}px-${images}`
const folder = path.join(home.root, `image-quickstart-${name}`)
if (!fs.existsSync(path.join(folder, 'metadata.jsonl'))) shapes.writeImagefolder(folder, images, size, 0)
const data = await home.datasets().importImages(folder, { name, onDuplicate: 'reuse' })
console.log(`dataset ${name}: ${data.numRecords} images`)

// 2. The from-scratch base (a new version of `tiny-shapes` at each run).
const base = await home.models().createPreset('tiny-shapes', { seed: 0 })
console.log(`base ${base.name}@${base.version} (${base.params} parameters)`)
const [before, beforeImages] = await score(base.id)
report('before training', before)

// 3. Training with the preset's recommended settings.
const trained = await home.training().train({
  base: base.id, dataset: data.id, method: 'full', maxSteps: steps, batchSize: rec.batchSize,
  learningRate: rec.learningRate, warmupSteps: Math.min(rec.warmupSteps, steps), schedule: rec.schedule,
  seed: 0, outputName: 'shapes-painter',
  image: {
    snrGamma: rec.snrGamma ?? undefined, trainTextEncoder: rec.trainTextEncoder, captionDropout: rec.captionDropout,
    validationPrompts: ['a red circle', 'a blue square', 'a yellow triangle'],
    validationEvery: Math.max(Math.floor(steps / 2), 1), validationSteps: samplingSteps,
    validationGuidanceScale: rec.guidanceScale, validationScheduler: rec.scheduler,
  },
}, { onEvent: progress })
const model = await home.models().get(trained.modelId)
console.log(`trained ${model.name}@${model.version} in ${trained.durationS.toFixed(0)} s (${trained.steps} steps, final loss ${trained.finalLoss.toFixed(4)})`)

// 4. The numbers that show it learned, and the picture.
const [after, afterImages] = await score(model.id)
report('before training', before)
report('after training ', after)
const chance = shapes.chance()
console.log(`chance (a painter that ignores the prompt): ${pct(chance.both)} (colour ${pct(chance.color)}, shape ${pct(chance.shape)})`)
if (smoke) console.log(`smoke run: ${steps} steps, too few to learn anything; the numbers above are not a result`)
// The first image of each prompt, one row per model, enlarged 4 times.
const rows = [beforeImages, afterImages].map((r) => r.filter((_, i) => i % perPrompt === 0).map((i) => i.png))
const out = path.join(home.root, 'image_quickstart.png')
fs.writeFileSync(out, shapes.grid(rows, 4))
console.log(`wrote ${out} (top: untrained, bottom: trained)`)
console.log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`)
