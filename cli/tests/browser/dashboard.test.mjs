// The dashboard in a real browser: headless Chromium (the system's, driven by
// playwright-core) against a real `anneal serve --no-auth` on a temporary home, with a
// training job started from Python. Run by scripts/test-browser.sh, which provides:
//   ANNEAL_BIN      the anneal binary (cargo build -p anneal-cli)
//   ANNEAL_PYTHON   a python with the anneal package (the repo's .venv)
//   CHROMIUM        the browser executable
//   DASHBOARD_SCREENSHOT  optional: where to save a screenshot of the job page (README)
// Exits 0 when every check passed, 1 (with the failing check) otherwise.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const BIN = need('ANNEAL_BIN');
const PYTHON = need('ANNEAL_PYTHON');
const CHROMIUM = need('CHROMIUM');
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || '';
/** Optional: a directory to save a screenshot of every page checked (for review). */
const SHOTS = process.env.DASHBOARD_SHOTS || '';
/** Steps of the watched job (it is cancelled long before) and the pause in its Python callback per step event. */
const STEPS = 2000;
const PACE = 0.05;
const DEADLINE_MS = 150_000;

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set (run scripts/test-browser.sh)`);
    process.exit(2);
  }
  return v;
}

const children = [];
let browser = null;
const home = mkdtempSync(join(tmpdir(), 'anneal-dash-'));

function log(...a) {
  console.log('[dashboard]', ...a);
}

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  log('ok:', what);
}

async function shot(page, name) {
  if (SHOTS) await page.screenshot({ path: join(SHOTS, name + '.png'), fullPage: true });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (returned) or `ms` pass (throws `what`). */
async function until(what, fn, ms = 20_000, every = 200) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(every);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
}

/** Starts a child process; `lines` yields its stdout lines as they come. */
function start(cmd, args, name) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const queue = [];
  let wake = null;
  createInterface({ input: child.stdout }).on('line', (l) => {
    queue.push(l);
    if (wake) wake();
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 20000) stderr = stderr.slice(-20000);
  });
  child.exited = new Promise((r) => child.on('exit', (code, sig) => r({ code, sig })));
  /** The next stdout line matching `re` (its match), within `ms`. */
  child.waitLine = async (re, ms) => {
    const end = Date.now() + ms;
    for (;;) {
      while (queue.length) {
        const l = queue.shift();
        const m = l.match(re);
        if (m) return m;
      }
      if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}) before printing ${re}: ${stderr.slice(-2000)}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`${name} printed no ${re} in ${ms} ms: ${stderr.slice(-2000)}`);
      await new Promise((r) => {
        wake = r;
        setTimeout(r, Math.min(left, 250));
      });
      wake = null;
    }
  };
  child.stderrText = () => stderr;
  return child;
}

async function serve(extra) {
  const srv = start(BIN, ['--home', home, 'serve', '--port', '0', ...extra], 'anneal serve');
  const m = await srv.waitLine(/listening on (http:\/\/\S+)/, 30_000);
  return { proc: srv, url: m[1] };
}

async function getJson(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** The number of points of the training-loss path, counted from its `d` attribute. */
async function curvePoints(page) {
  return page.$eval('path.series-train', (p) => {
    const d = p.getAttribute('d') || '';
    return (d.match(/[ML]/g) || []).length;
  });
}

async function main() {
  log('home', home);
  const fixture = join(HERE, 'fixture.py');
  const ids = JSON.parse(execFileSync(PYTHON, [fixture, 'setup', home], { encoding: 'utf8' }).trim().split('\n').pop());
  log('fixture', JSON.stringify(ids));

  const { url } = await serve(['--no-auth']);
  log('server', url);

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push('console error: ' + m.text());
  });
  page.setDefaultTimeout(20_000);

  // Jobs: open the list first, then start a job from Python; it must appear without a reload.
  await page.goto(url + '/#/jobs');
  await page.waitForSelector('#jobs-table tbody tr[data-job-id]');
  check((await page.$$('#jobs-table tr[data-status="completed"]')).length >= 3, 'the finished setup jobs are listed as completed');

  // An image job: its row points at its current validation image, its page shows it.
  const imageRow = `#jobs-table tr[data-job-id="${ids.image_job}"]`;
  const loaded = (sel) => page.waitForFunction((s) => {
    const img = document.querySelector(s);
    return img && img.complete && img.naturalWidth > 0;
  }, sel, { timeout: 15_000 });
  await loaded(`${imageRow} img.thumb`);
  check(true, 'the image job row shows its current image');
  await page.click(`${imageRow} td a`);
  await loaded('img.job-image');
  check(true, 'the image job page shows the latest validation image');
  await page.goto(url + '/#/jobs');
  await page.waitForSelector('#jobs-table tbody tr[data-job-id]');

  const trainer = start(PYTHON, [fixture, 'train', home, ids.base, String(STEPS), String(PACE)], 'python trainer');
  const jobId = (await trainer.waitLine(/"job_id": "([^"]+)"/, 60_000))[1];
  log('python job', jobId);
  const row = `#jobs-table tr[data-job-id="${jobId}"]`;
  await page.waitForSelector(row, { timeout: 15_000 });
  check(true, 'the job started from Python shows up in the open list');
  await shot(page, 'jobs');
  const step1 = Number(await until('the job to run in the list', async () => {
    const r = await page.$(row + '[data-status="running"]');
    const s = r && Number(await r.getAttribute('data-step'));
    return s > 0 ? s : 0;
  }));
  const step2 = await until('the step in the list to grow', async () => {
    const s = Number(await page.$eval(row, (r) => r.dataset.step));
    return s > step1 ? s : 0;
  }, 10_000);
  check(step2 > step1, `live progress in the list (${step1} -> ${step2})`);
  const label = await page.$eval(row + ' .progress-label', (e) => e.textContent);
  check(label.includes('/ 2,000'), `the row shows step / total (${label})`);

  // The job page: the curve grows between two reads.
  await page.click(row + ' td a');
  await page.waitForSelector('#job-status .badge.running');
  const n1 = await until('the curve to have points', async () => curvePoints(page), 15_000);
  const n2 = await until('the curve to grow', async () => {
    const n = await curvePoints(page);
    return n > n1 ? n : 0;
  }, 10_000);
  check(n2 > n1, `the loss curve grows live (${n1} -> ${n2} points)`);
  const dataPoints = Number(await page.$eval('path.series-train', (p) => p.getAttribute('data-points')));
  check(dataPoints >= n2, 'data-points counts the drawn points');
  await until('a log line', async () => (await page.$$('#job-logs > div')).length > 0, 10_000);
  check(true, 'logs are shown');
  await shot(page, 'job');
  if (SCREENSHOT) {
    await until('an eval point for the screenshot', async () => (await page.$$('circle.dot-eval')).length >= 2, 20_000).catch(() => {});
    await page.screenshot({ path: SCREENSHOT });
    log('screenshot saved to', SCREENSHOT);
  }

  // Without EventSource (an old browser, a proxy that buffers) the job page polls.
  const pollCtx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  await pollCtx.addInitScript(() => {
    window.EventSource = undefined;
  });
  const pollPage = await pollCtx.newPage();
  await pollPage.goto(`${url}/#/jobs/${jobId}`);
  const q1 = await until('the polled curve to have points', async () => curvePoints(pollPage), 15_000);
  const q2 = await until('the polled curve to grow', async () => {
    const n = await curvePoints(pollPage);
    return n > q1 ? n : 0;
  }, 15_000);
  check(q2 > q1, `without EventSource the page polls and the curve still grows (${q1} -> ${q2} points)`);
  await pollCtx.close();

  // Cancel from the page: the Python runner stops and the page says cancelled.
  await page.click('#cancel');
  await page.waitForSelector('#job-status .badge.cancelled', { timeout: 30_000 });
  check(true, 'Cancel: the status becomes cancelled on the page');
  const end = (await trainer.waitLine(/"end": "([^"]+)"/, 20_000))[1];
  check(end === 'cancelled', `the Python run ended cancelled (${end})`);
  check((await getJson(`${url}/api/jobs/${jobId}`)).status === 'cancelled', 'the server reports it cancelled');
  const stepAtCancel = (await getJson(`${url}/api/jobs/${jobId}`)).step;
  check(stepAtCancel < STEPS, `it stopped early (step ${stepAtCancel} of ${STEPS})`);

  // Resume from the page: the server runs it on from its checkpoint.
  await page.waitForSelector('#resume:not([hidden])');
  await page.click('#resume');
  await until('the resumed job to move', async () => {
    const j = await getJson(`${url}/api/jobs/${jobId}`);
    return j.status === 'completed' || (j.status === 'running' && j.step > 0);
  }, 30_000);
  check(true, 'Resume: the job runs again');
  await fetch(`${url}/api/jobs/${jobId}/cancel`, { method: 'POST' });
  await until('the resumed job to stop', async () => !['running', 'pending'].includes((await getJson(`${url}/api/jobs/${jobId}`)).status), 30_000);
  await page.waitForSelector('#job-status .badge.cancelled, #job-status .badge.completed', { timeout: 15_000 });
  check(true, 'the page follows the resumed run to its end');
  await shot(page, 'job-ended');

  // Models: rows, as a tree (base -> fine-tune -> adapter), and a lineage page.
  await page.goto(url + '/#/models');
  await page.waitForSelector('tr[data-model-id]');
  const modelRows = await page.$$eval('tr[data-model-id]', (rs) => rs.map((r) => ({ id: r.dataset.modelId, text: r.textContent })));
  check(modelRows.length >= 3, `the models page lists ${modelRows.length} models`);
  const order = modelRows.map((r) => r.id);
  check(order.indexOf(ids.base) < order.indexOf(ids.trained) && order.indexOf(ids.trained) < order.indexOf(ids.adapter), 'each model is listed under what it was made from');
  check(modelRows.find((r) => r.id === ids.adapter).text.includes('└'), 'the adapter is drawn as a child');
  check(modelRows.find((r) => r.id === ids.trained).text.includes('production'), 'aliases are shown');
  await shot(page, 'models');
  await page.click(`tr[data-model-id="${ids.trained}"] td a`);
  await page.waitForSelector('#lineage .node.self');
  const lineage = await page.$eval('#lineage', (e) => e.textContent);
  check(lineage.includes('tiny@1') && lineage.includes('job') && lineage.includes('tiny-arith-lora@1'), `lineage base -> job -> model -> adapter (${lineage.replace(/\s+/g, ' ')})`);
  await page.waitForSelector('svg[aria-label="training loss"] path.series-train');
  check(true, 'the model page draws the curve of the job that made it');
  await shot(page, 'model');

  // Datasets: rows, preview and stats.
  await page.goto(url + '/#/datasets');
  await page.waitForSelector('tr[data-dataset-id]');
  await shot(page, 'datasets');
  check((await page.$$('tr[data-dataset-id]')).length >= 1, 'the datasets page lists datasets');
  await page.click(`tr[data-dataset-id="${ids.dataset}"] td a`);
  await page.waitForSelector('tr.preview-row');
  const previewRows = await page.$$eval('tr.preview-row', (rs) => rs.map((r) => r.textContent));
  check(previewRows.length === 20 && previewRows[0].includes('0 plus one is'), `the preview shows records (${previewRows.length})`);
  check((await page.$$('rect.bar')).length >= 1, 'the length histogram is drawn');
  await shot(page, 'dataset');

  // Playground: stream a generation from the fine-tune.
  await page.goto(`${url}/#/playground?model=${ids.trained}`);
  await page.waitForSelector('#pg-model');
  check((await page.$eval('#pg-model', (s) => s.value)) === ids.trained, 'the playground preselects the model from the link');
  await page.fill('#pg-prompt', '3 plus one is');
  await page.fill('#pg-max', '8');
  // Greedy: the fine-tune has seen six steps, and EOS is half of what it was trained to
  // predict, so a sampled first token is EOS often enough to empty the output at random.
  await page.fill('#pg-temp', '0');
  await page.click('#pg-generate');
  await page.waitForFunction(() => /tokens/.test(document.querySelector('#pg-info').textContent), null, { timeout: 30_000 });
  const out = await page.$eval('#pg-output', (e) => e.textContent);
  const pgInfo = await page.$eval('#pg-info', (e) => e.textContent);
  await shot(page, 'playground');
  check(out.startsWith('3 plus one is') && out.length > '3 plus one is'.length, `the playground streams text (${JSON.stringify(out)}; ${pgInfo})`);
  check(pgInfo.includes('8 tokens') && pgInfo.includes('finish: length'), 'the info line reports the tokens streamed and why it stopped');

  // Generations, overview, monitoring render.
  await page.goto(url + '/#/generations');
  await page.waitForFunction(() => [...document.querySelectorAll('td a')].some((a) => a.textContent === 'tiny-arith@1'));
  check(true, 'the generation shows under generations, per model');
  await shot(page, 'generations');
  await page.goto(url + '/#/');
  await page.waitForSelector('.cards .card');
  check(true, 'the overview renders');
  await shot(page, 'overview');
  await page.goto(url + '/#/monitoring');
  await page.waitForSelector('[data-timeline="tiny-arith"], .panel.empty');
  check(true, 'monitoring renders');
  await shot(page, 'monitoring');
  check(problems.length === 0, 'no page errors or console errors' + (problems.length ? ': ' + problems.join(' | ') : ''));

  // Tokens: a server without --no-auth; the page asks for a token once and then works.
  const tokenOut = execFileSync(BIN, ['--home', home, 'tokens', 'create', '--scope', 'write', '--name', 'browser'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const secret = tokenOut.trim().split('\n').pop().trim();
  const authed = await serve([]);
  const ctx2 = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page2 = await ctx2.newPage();
  await page2.goto(authed.url + '/#/jobs');
  await page2.waitForSelector('#token-dialog[open]');
  await page2.fill('#token-input', 'tok_wrong.wrong');
  await page2.click('#token-submit');
  await page2.waitForFunction(() => {
    const e = document.querySelector('#token-error');
    return document.querySelector('#token-dialog').open && !e.hidden && /refused/.test(e.textContent);
  });
  check(true, 'a wrong token is refused and asked again');
  await shot(page2, 'token');
  await page2.fill('#token-input', secret);
  await page2.click('#token-submit');
  await page2.waitForSelector(`#jobs-table tr[data-job-id="${jobId}"]`);
  check(!(await page2.$eval('#token-dialog', (d) => d.open)), 'with the token the jobs page loads');
  check((await page2.evaluate(() => sessionStorage.getItem('anneal.token'))) === secret, 'the token is kept in sessionStorage');
  await page2.goto(authed.url + '/#/models');
  await page2.waitForSelector('tr[data-model-id]');
  check(!(await page2.$eval('#token-dialog', (d) => d.open)), 'it is asked once (the next page uses it)');
  await ctx2.close();
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  for (const c of children) {
    if (c.exitCode === null) c.kill('SIGTERM');
  }
  await Promise.race([Promise.all(children.map((c) => c.exited)), sleep(10_000)]);
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  rmSync(home, { recursive: true, force: true });
}

const timer = setTimeout(() => {
  console.error(`[dashboard] FAILED: over ${DEADLINE_MS / 1000} s`);
  cleanup().finally(() => process.exit(1));
}, DEADLINE_MS);

main().then(
  async () => {
    clearTimeout(timer);
    await cleanup();
    log('all checks passed');
    process.exit(0);
  },
  async (e) => {
    clearTimeout(timer);
    console.error('[dashboard] FAILED:', e.message);
    for (const c of children) {
      const err = c.stderrText();
      if (err) console.error(`--- stderr of ${c.spawnargs.slice(0, 4).join(' ')}\n${err.slice(-3000)}`);
    }
    await cleanup();
    process.exit(1);
  },
);
