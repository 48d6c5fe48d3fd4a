// anneal dashboard: one page, hash routes, vanilla JS, hand-written SVG charts.
// Served by `anneal serve` from files embedded in the binary; talks only to its own
// server (/api/..., /health). What it calls is listed in API.md next to this file.
'use strict';

(() => {
  const TOKEN_KEY = 'anneal.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  /** Event streams open at once on the jobs list (browsers allow ~6 connections per host). */
  const MAX_LIST_STREAMS = 3;
  const POLL_MS = 2500;

  // ---------------------------------------------------------------- DOM helpers

  /** An element with attributes (`on*` functions become listeners) and children. */
  function h(tag, attrs, ...kids) {
    return build(document.createElement(tag), attrs, kids);
  }

  /** An SVG element. */
  function s(tag, attrs, ...kids) {
    return build(document.createElementNS(SVG_NS, tag), attrs, kids);
  }

  function build(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'value' && 'value' in el) el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, kids);
    return el;
  }

  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === undefined || k === null || k === false) continue;
      el.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }

  /** Appends children, skipping null / undefined / false (DOM `append` would write "null"). */
  function put(el, ...kids) {
    return append(el, kids);
  }

  function clear(el, ...kids) {
    el.replaceChildren();
    return append(el, kids);
  }

  const $ = (sel, root = document) => root.querySelector(sel);

  // ---------------------------------------------------------------- formatting

  function fmtNum(n, digits = 3) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toPrecision(digits) + 'B';
    if (a >= 1e6) return (n / 1e6).toPrecision(digits) + 'M';
    if (a >= 1e4) return (n / 1e3).toPrecision(digits) + 'k';
    if (Number.isInteger(n) || a >= 100) return String(Math.round(n));
    return n.toPrecision(digits);
  }

  function fmtInt(n) {
    return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US');
  }

  function fmtLoss(x) {
    return x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toPrecision(4);
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = b;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : 1)) + ' ' + units[i];
  }

  function fmtPct(x) {
    return x === null || x === undefined ? '–' : (x * 100).toFixed(1) + '%';
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
    return (ms >= 10 ? ms.toFixed(0) : ms.toFixed(ms >= 1 ? 1 : 2)) + ' ms';
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  /** `<time>` with a relative text ("3 min ago") and the exact time as its title. */
  function ago(iso) {
    if (!iso) return h('span', { class: 'muted' }, '–');
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return h('span', {}, iso);
    const d = (Date.now() - t) / 1000;
    let text;
    if (d < 45) text = 'just now';
    else if (d < 3600) text = Math.round(d / 60) + ' min ago';
    else if (d < 86400) text = Math.round(d / 3600) + ' h ago';
    else text = new Date(t).toLocaleDateString();
    return h('time', { datetime: iso, title: new Date(t).toLocaleString() }, text);
  }

  function shortId(id) {
    return id && id.length > 14 ? id.slice(0, 12) + '…' : id || '–';
  }

  function badge(status) {
    return h('span', { class: 'badge ' + status }, status);
  }

  function progressBar(fraction, status) {
    const cls = status === 'completed' ? 'progress done' : ['cancelled', 'failed', 'interrupted'].includes(status) ? 'progress stopped' : 'progress';
    const bar = h('span');
    bar.style.width = Math.max(0, Math.min(1, fraction || 0)) * 100 + '%';
    return h('div', { class: cls }, bar);
  }

  function methodOf(spec) {
    const m = spec && spec.method;
    if (!m) return '–';
    return typeof m === 'string' ? m : Object.keys(m)[0];
  }

  function toast(message, bad) {
    const t = h('div', { class: 'toast' + (bad ? ' bad' : ''), role: 'status' }, message);
    document.body.appendChild(t);
    setTimeout(() => t.remove(), 5000);
  }

  function errorBox(e) {
    return h('div', { class: 'panel error' }, h('b', {}, (e && e.code) || 'error'), ': ', (e && e.message) || String(e));
  }

  // ---------------------------------------------------------------- API and token

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  let tokenPrompt = null;

  /** Shows the token dialog once (callers share it); resolves when a token is stored. */
  function askToken(message) {
    if (tokenPrompt) return tokenPrompt;
    tokenPrompt = new Promise((resolve) => {
      const dlg = $('#token-dialog');
      const input = $('#token-input');
      const err = $('#token-error');
      err.hidden = !message;
      err.textContent = message || '';
      input.value = '';
      $('#token-form').onsubmit = (ev) => {
        ev.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        sessionStorage.setItem(TOKEN_KEY, t);
        dlg.close();
        tokenPrompt = null;
        resolve();
      };
      dlg.oncancel = (ev) => ev.preventDefault(); // nothing works without it
      dlg.showModal();
      input.focus();
    });
    return tokenPrompt;
  }

  /** `fetch` with the token; JSON in and out; errors as ApiError with the server's code. */
  async function api(path, opts = {}) {
    const headers = Object.assign({}, opts.headers);
    const sent = token();
    if (sent) headers.Authorization = 'Bearer ' + sent;
    let body = opts.body;
    if (body !== undefined && !(body instanceof FormData) && typeof body !== 'string') {
      body = JSON.stringify(body);
      headers['Content-Type'] = 'application/json';
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || 'GET', headers, body, signal: opts.signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      setServer(false);
      throw new ApiError(0, 'unreachable', 'the server did not answer (' + e.message + ')');
    }
    if (res.status === 401) {
      if (sent && token() === sent) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(sent ? 'That token was refused (invalid or revoked).' : '');
      return api(path, opts);
    }
    if (!res.ok) {
      let err = {};
      try {
        err = (await res.json()).error || {};
      } catch (_) {
        // not JSON
      }
      throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
    }
    if (opts.raw) return res;
    if (res.status === 204) return null;
    return res.json();
  }

  /** A URL for what cannot send headers (EventSource, <img>): the token as a query parameter. */
  function withToken(url) {
    const t = token();
    if (!t) return url;
    return url + (url.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(t);
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- routing and lifetimes

  let cleanups = [];
  /** Runs `fn` when the page is left. */
  const onLeave = (fn) => cleanups.push(fn);

  function every(ms, fn) {
    let busy = false;
    const id = setInterval(async () => {
      if (busy || document.hidden) return;
      busy = true;
      try {
        await fn();
      } catch (e) {
        if (e.name !== 'AbortError') console.warn(e);
      } finally {
        busy = false;
      }
    }, ms);
    onLeave(() => clearInterval(id));
  }

  /** An EventSource closed when the page is left; `onEvent` gets each parsed message. */
  function events(url, onEvent, onFail) {
    if (typeof EventSource === 'undefined') {
      onFail();
      return null;
    }
    const es = new EventSource(withToken(url));
    let seen = false;
    es.onmessage = (m) => {
      seen = true;
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      onEvent(ev, es);
    };
    es.addEventListener('error', (m) => {
      // An `event: error` message from the server carries a JSON error body.
      if (m.data) {
        es.close();
        onFail(m.data);
        return;
      }
      // The browser gave up (a non-200 answer, e.g. 401) or never got a message: poll.
      if (es.readyState === EventSource.CLOSED || !seen) {
        es.close();
        onFail();
      }
    });
    onLeave(() => es.close());
    return es;
  }

  const routes = [
    [/^\/?$/, 'overview', overviewPage],
    [/^\/jobs$/, 'jobs', jobsPage],
    [/^\/jobs\/([^/]+)$/, 'jobs', jobPage],
    [/^\/models$/, 'models', modelsPage],
    [/^\/models\/([^/]+)$/, 'models', modelPage],
    [/^\/datasets$/, 'datasets', datasetsPage],
    [/^\/datasets\/([^/]+)$/, 'datasets', datasetPage],
    [/^\/generations$/, 'generations', generationsPage],
    [/^\/monitoring$/, 'monitoring', monitoringPage],
    [/^\/playground$/, 'playground', playgroundPage],
  ];

  async function render() {
    for (const fn of cleanups.splice(0)) {
      try {
        fn();
      } catch (_) {
        // ignore
      }
    }
    const raw = location.hash.replace(/^#/, '');
    const [path, query] = raw.split('?');
    const params = new URLSearchParams(query || '');
    const main = $('#main');
    const root = h('div', { class: 'page' });
    clear(main, root);
    for (const [re, nav, page] of routes) {
      const m = path.match(re);
      if (!m) continue;
      for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === nav);
      document.title = 'anneal · ' + nav;
      try {
        await page(root, ...m.slice(1).map(decodeURIComponent), params);
      } catch (e) {
        if (e.name !== 'AbortError') root.appendChild(errorBox(e));
      }
      return;
    }
    root.appendChild(errorBox({ code: 'not_found', message: 'no page ' + raw }));
  }

  function pageHead(title, sub, ...actions) {
    return h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, title), sub ? h('div', { class: 'sub' }, sub) : null), actions.length ? h('div', { class: 'actions' }, actions) : null);
  }

  function setServer(up, text) {
    const el = $('#server');
    el.className = 'server ' + (up ? 'up' : 'down');
    clear(el, h('span', { class: 'dot' }), text || (up ? 'connected' : 'unreachable'));
  }

  async function checkHealth() {
    try {
      const res = await fetch('/health');
      const body = await res.json();
      setServer(res.ok && body.status === 'ok', 'anneal ' + (body.version || '') + ' · ' + (body.status || res.status));
    } catch (_) {
      setServer(false);
    }
  }

  // ---------------------------------------------------------------- charts

  /** About `n` round numbers spanning [lo, hi]. */
  function niceTicks(lo, hi, n = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const r = raw / mag;
    const step = mag * (r >= 7.5 ? 10 : r >= 3.5 ? 5 : r >= 1.5 ? 2 : 1);
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toFixed(12)));
    return out;
  }

  function tickLabel(v, time, span) {
    if (time) {
      const d = new Date(v);
      if (span > 2 * 86400e3) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
      return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: span < 600e3 ? '2-digit' : undefined });
    }
    return Math.abs(v) >= 1e4 ? fmtNum(v) : String(Number(v.toPrecision(6)));
  }

  function timeTicks(lo, hi) {
    const span = hi - lo;
    const steps = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400].map((x) => x * 1000);
    const step = steps.find((st) => span / st <= 6) || steps[steps.length - 1];
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }

  /**
   * A line chart. `chart.set({series, markers, hlines})` redraws it:
   * series: [{name, cls, points: [[x, y], ...], line: true, dots: false, dotClass(p)}]
   * markers: [{x, label}] (vertical lines), hlines: [{y, cls, label}].
   * Every series' path carries `data-points` (its number of points).
   */
  function lineChart(opts = {}) {
    let W = opts.width || 760;
    const H = opts.height || 260;
    const M = { l: 56, r: 16, t: 12, b: 30 };
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.label || 'chart' });
    let last = {};
    const chart = {
      el: svg,
      set(args = {}) {
        last = args;
        draw(args);
      },
    };
    // Drawn at the width it is shown at, so text and strokes keep their size.
    resizeWith(svg, (w) => {
      W = w;
      draw(last);
    });
    draw(last);
    return chart;

    function draw({ series = [], markers = [], hlines = [] } = {}) {
      svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      svg.replaceChildren();
      const pts = series.flatMap((sr) => sr.points);
      const xs = pts.map((p) => p[0]).concat(markers.map((m) => m.x));
      const ys = pts.map((p) => p[1]).concat(hlines.map((l) => l.y));
      if (!pts.length) {
        svg.appendChild(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty-note' }, opts.empty || 'no points yet'));
        for (const sr of series) svg.appendChild(s('path', { class: `series series-${sr.cls}`, d: '', 'data-points': 0 }));
        return;
      }
      let x0 = Math.min(...xs);
      let x1 = Math.max(...xs);
      let y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ys);
      let y1 = opts.yMax !== undefined ? opts.yMax : Math.max(...ys);
      if (x1 === x0) {
        const half = opts.time ? 30e3 : 1;
        x0 -= half;
        x1 += half;
      }
      if (y1 === y0) {
        y0 -= Math.abs(y0) * 0.1 || 0.5;
        y1 += Math.abs(y1) * 0.1 || 0.5;
      } else if (opts.yMin === undefined) {
        const pad = (y1 - y0) * 0.06;
        y0 -= pad;
        y1 += pad;
      }
      const X = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
      const Y = (y) => H - M.b - ((y - y0) / (y1 - y0)) * (H - M.t - M.b);
      const grid = s('g', { class: 'grid' });
      const axis = s('g', { class: 'axis' });
      for (const t of niceTicks(y0, y1, 5)) {
        if (t < y0 || t > y1) continue;
        grid.appendChild(s('line', { x1: M.l, x2: W - M.r, y1: Y(t), y2: Y(t) }));
        axis.appendChild(s('text', { x: M.l - 6, y: Y(t) + 4, 'text-anchor': 'end' }, opts.yFormat ? opts.yFormat(t) : tickLabel(t, false)));
      }
      const xt = opts.time ? timeTicks(x0, x1) : niceTicks(x0, x1, 6).filter((t) => !opts.integerX || Number.isInteger(t));
      for (const t of xt) {
        if (t < x0 || t > x1) continue;
        axis.appendChild(s('line', { x1: X(t), x2: X(t), y1: H - M.b, y2: H - M.b + 4 }));
        axis.appendChild(s('text', { x: X(t), y: H - M.b + 16, 'text-anchor': 'middle' }, tickLabel(t, opts.time, x1 - x0)));
      }
      axis.appendChild(s('path', { d: `M${M.l},${M.t}V${H - M.b}H${W - M.r}`, fill: 'none' }));
      if (opts.xLabel) axis.appendChild(s('text', { x: W - M.r, y: H - 2, 'text-anchor': 'end' }, opts.xLabel));
      svg.append(grid, axis);
      for (const l of hlines) {
        svg.appendChild(s('line', { class: l.cls || 'floor', x1: M.l, x2: W - M.r, y1: Y(l.y), y2: Y(l.y) }, s('title', {}, l.label || '')));
      }
      for (const m of markers) {
        svg.appendChild(s('g', { class: 'marker' }, s('line', { x1: X(m.x), x2: X(m.x), y1: M.t, y2: H - M.b }), s('text', { x: X(m.x) + 3, y: M.t + 10 }, m.label || ''), s('title', {}, m.title || m.label || '')));
      }
      for (const sr of series) {
        const p = sr.points;
        if (sr.line !== false) {
          // Beyond 4000 points every k-th is drawn (the last always): the path stays light.
          const k = Math.max(1, Math.ceil(p.length / 4000));
          let d = '';
          for (let i = 0; i < p.length; i += 1) {
            if (i % k !== 0 && i !== p.length - 1) continue;
            d += (d ? 'L' : 'M') + X(p[i][0]).toFixed(1) + ',' + Y(p[i][1]).toFixed(1);
          }
          svg.appendChild(s('path', { class: `series series-${sr.cls}`, d, 'data-points': p.length }));
        }
        if (sr.dots) {
          const g = s('g', {});
          for (const pt of p) {
            g.appendChild(s('circle', { class: `dot-${sr.cls} ${sr.dotClass ? sr.dotClass(pt) : ''}`, cx: X(pt[0]), cy: Y(pt[1]), r: 3.2 }, s('title', {}, (sr.title ? sr.title(pt) : `${sr.name}: ${fmtLoss(pt[1])}`))));
          }
          svg.appendChild(g);
        }
      }
    }
  }

  /** Calls `onWidth` with the element's width once it is laid out and when it changes. */
  function resizeWith(el, onWidth) {
    if (typeof ResizeObserver === 'undefined') return;
    let seen = 0;
    const ro = new ResizeObserver((entries) => {
      const w = Math.round(entries[0].contentRect.width);
      if (w > 0 && Math.abs(w - seen) > 2) {
        seen = w;
        onWidth(w);
      }
    });
    ro.observe(el);
    onLeave(() => ro.disconnect());
  }

  /** Horizontal bars: [{label, value, title}]. */
  function barChart(items, opts = {}) {
    const rowH = 22;
    const L = opts.labelWidth || 130;
    const H = Math.max(1, items.length) * rowH + 8;
    const svg = s('svg', { class: 'chart', role: 'img', 'aria-label': opts.label || 'bars' });
    const draw = (W) => {
      svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
      svg.replaceChildren();
      if (!items.length) {
        svg.appendChild(s('text', { x: W / 2, y: H / 2 + 4, 'text-anchor': 'middle', class: 'empty-note' }, 'nothing yet'));
        return;
      }
      drawBars(W);
    };
    draw(opts.width || 520);
    resizeWith(svg, draw);
    return svg;

    function drawBars(W) {
      const max = Math.max(...items.map((i) => i.value), 1);
      items.forEach((it, i) => {
        const y = 4 + i * rowH;
        const w = ((W - L - 70) * it.value) / max;
        svg.appendChild(s('text', { x: L - 8, y: y + 14, 'text-anchor': 'end' }, it.label));
        svg.appendChild(s('rect', { class: 'bar', x: L, y: y + 3, width: Math.max(1, w), height: rowH - 8, rx: 2 }, s('title', {}, it.title || `${it.label}: ${it.value}`)));
        svg.appendChild(s('text', { x: L + w + 6, y: y + 14 }, opts.format ? opts.format(it.value) : fmtInt(it.value)));
      });
    }
  }

  function legend(...items) {
    return h('div', { class: 'legend' }, items.map(([cls, label]) => h('span', {}, h('i', { class: cls }), label)));
  }

  function table(headers, rows, opts = {}) {
    const thead = h('thead', {}, h('tr', {}, headers.map((c) => (typeof c === 'string' ? h('th', {}, c) : h('th', { class: c.cls }, c.text)))));
    const tbody = h('tbody', {}, rows);
    if (!rows.length && opts.empty) tbody.appendChild(h('tr', {}, h('td', { class: 'empty', colspan: headers.length }, opts.empty)));
    return h('div', { class: 'table-wrap' }, h('table', { class: opts.cls || '' }, thead, tbody));
  }

  // ---------------------------------------------------------------- shared lookups

  /** Models and datasets by id, for names in tables. */
  async function lookups() {
    const [models, datasets] = await Promise.all([api('/api/models'), api('/api/datasets')]);
    return {
      models: new Map(models.map((m) => [m.id, m])),
      datasets: new Map(datasets.map((d) => [d.id, d])),
      modelList: models,
      datasetList: datasets,
    };
  }

  function modelLink(lk, id) {
    if (!id) return h('span', { class: 'muted' }, '–');
    const m = lk.models.get(id);
    return h('a', { href: '#/models/' + enc(id), title: id }, m ? `${m.name}@${m.version}` : shortId(id));
  }

  function datasetLink(lk, id) {
    if (!id) return h('span', { class: 'muted' }, '–');
    const d = lk.datasets.get(id);
    return h('a', { href: '#/datasets/' + enc(id), title: id }, d ? d.name : shortId(id));
  }

  // ---------------------------------------------------------------- overview

  async function overviewPage(root) {
    const [stats, lk] = await Promise.all([api('/api/stats?recent=15'), lookups()]);
    const j = stats.jobs;
    const running = h('div', {});
    put(root,
      pageHead('Overview', 'What this home holds and what happened lately'),
      h('div', { class: 'cards' },
        card(j.running, 'jobs running'), card(j.completed, 'jobs completed'), card(j.failed + j.interrupted, 'failed / interrupted'), card(j.cancelled, 'cancelled'),
        card(lk.modelList.length, 'models'), card(lk.datasetList.length, 'datasets'),
        card((stats.generations || []).reduce((a, g) => a + g.calls, 0), 'generation calls')),
      h('div', { class: 'panel' }, h('h2', {}, 'Running jobs'), running),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Models by kind'), barChart(Object.entries(stats.models_by_kind || {}).map(([k, v]) => ({ label: k, value: v })))),
        h('div', { class: 'panel' }, h('h2', {}, 'Datasets by format'), barChart(Object.entries(stats.datasets_by_format || {}).map(([k, v]) => ({ label: k, value: v }))))),
      h('div', { class: 'panel' }, h('h2', {}, 'Recent activity'), activityList(stats.recent || [])));
    const refresh = async () => {
      const jobs = await api('/api/jobs?status=running');
      clear(running, jobs.length
        ? table(['Job', 'Base', 'Progress', 'Loss'], jobs.map((job) => h('tr', {},
          h('td', {}, h('a', { href: '#/jobs/' + enc(job.id) }, shortId(job.id))),
          h('td', {}, modelLink(lk, job.base_model_id)),
          h('td', {}, progressBar(job.progress, job.status), h('span', { class: 'progress-label' }, `${job.step}/${job.total_steps}`)),
          h('td', { class: 'num' }, fmtLoss(job.loss)))))
        : h('p', { class: 'empty' }, 'No job is running. ', h('a', { href: '#/jobs' }, 'All jobs')));
    };
    await refresh();
    every(POLL_MS, refresh);
  }

  function card(v, k) {
    return h('div', { class: 'card' }, h('div', { class: 'v' }, fmtInt(v)), h('div', { class: 'k' }, k));
  }

  function activityList(items) {
    if (!items.length) return h('p', { class: 'empty' }, 'Nothing yet.');
    const link = (a) => {
      if (a.kind.startsWith('dataset')) return '#/datasets/' + enc(a.id);
      if (a.kind.startsWith('job')) return '#/jobs/' + enc(a.id);
      if (a.kind.startsWith('model') || a.kind.startsWith('alias')) return '#/models/' + enc(a.id);
      return null;
    };
    return table(['What', 'Name', 'Detail', 'When'], items.map((a) => h('tr', {},
      h('td', { class: 'nowrap' }, a.kind.replace(/_/g, ' ')),
      h('td', {}, link(a) ? h('a', { href: link(a) }, a.name) : a.name),
      h('td', { class: 'muted' }, a.detail || ''),
      h('td', {}, ago(a.at)))));
  }

  // ---------------------------------------------------------------- jobs

  async function jobsPage(root) {
    let lk = await lookups();
    const tbody = h('tbody', {});
    const rows = new Map(); // id -> {tr, job}
    const streams = new Map(); // id -> EventSource
    put(root,
      pageHead('Jobs', 'Training jobs of this home; running ones update live'),
      h('div', { class: 'panel' }, h('div', { class: 'table-wrap' }, h('table', { id: 'jobs-table' },
        h('thead', {}, h('tr', {}, ['Job', 'Status', 'Base', 'Dataset', 'Method', 'Progress', 'Loss', 'Eval loss', 'Created', ''].map((c) => h('th', {}, c)))),
        tbody))));

    const empty = h('tr', {}, h('td', { class: 'empty', colspan: 10 }, 'No training jobs yet. Start one from Python, Node, the CLI (anneal train) or POST /api/jobs.'));

    function cells(job) {
      const img = job.image ? h('a', { href: '#/jobs/' + enc(job.id), title: 'current sample image' }, h('img', { class: 'thumb', alt: 'sample', src: withToken(`/api/jobs/${enc(job.id)}/image?t=${enc(job.updated_at)}`) })) : '';
      return [
        h('td', {}, h('a', { href: '#/jobs/' + enc(job.id), class: 'mono', title: job.id }, shortId(job.id))),
        h('td', { class: 'status' }, badge(job.status)),
        h('td', {}, modelLink(lk, job.base_model_id)),
        h('td', {}, datasetLink(lk, job.dataset_id)),
        h('td', {}, methodOf(job.spec)),
        h('td', { class: 'progress-cell' }, progressBar(job.progress, job.status), h('span', { class: 'progress-label' }, `${fmtInt(job.step)} / ${fmtInt(job.total_steps)}`)),
        h('td', { class: 'num loss' }, fmtLoss(job.loss)),
        h('td', { class: 'num' }, fmtLoss(job.eval_loss)),
        h('td', {}, ago(job.created_at)),
        h('td', {}, img),
      ];
    }

    function show(job) {
      let r = rows.get(job.id);
      if (!r) {
        r = { tr: h('tr', { dataset: { jobId: job.id } }), job };
        rows.set(job.id, r);
      }
      r.job = job;
      r.tr.dataset.status = job.status;
      r.tr.dataset.step = job.step;
      clear(r.tr, cells(job));
    }

    function order() {
      const list = [...rows.values()].sort((a, b) => (b.job.created_at || '').localeCompare(a.job.created_at || ''));
      if (!list.length) return clear(tbody, empty);
      const want = list.map((r) => r.tr);
      if (want.length !== tbody.children.length || want.some((tr, i) => tbody.children[i] !== tr)) clear(tbody, want);
    }

    function follow(job) {
      if (streams.has(job.id) || !['running', 'pending'].includes(job.status) || streams.size >= MAX_LIST_STREAMS) return;
      const es = events(`/api/jobs/${enc(job.id)}/events`, (ev) => {
        const r = rows.get(job.id);
        if (!r) return;
        const j = Object.assign({}, r.job);
        if (ev.type === 'job_started') j.status = 'running';
        if (ev.type === 'step') Object.assign(j, { status: 'running', step: ev.step, total_steps: ev.total_steps, progress: ev.progress, loss: ev.loss, epoch: ev.epoch });
        if (ev.type === 'eval' && ev.metrics) j.eval_loss = ev.metrics.eval_loss;
        if (ev.type === 'job_finished') {
          j.status = ev.status;
          es.close();
          streams.delete(job.id);
        }
        show(j);
      }, () => streams.delete(job.id));
      if (es) streams.set(job.id, es);
    }

    async function refresh() {
      const jobs = await api('/api/jobs');
      if (jobs.some((j) => (j.base_model_id && !lk.models.has(j.base_model_id)) || (j.dataset_id && !lk.datasets.has(j.dataset_id)))) lk = await lookups();
      const seen = new Set();
      for (const job of jobs) {
        seen.add(job.id);
        const r = rows.get(job.id);
        // A followed job's row is drawn from its events; the list only brings status changes.
        if (!r || !streams.has(job.id) || r.job.status !== job.status) show(job);
        follow(job);
      }
      for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id);
      order();
    }
    await refresh();
    every(POLL_MS, refresh);
  }

  async function jobPage(root, id) {
    const lk = await lookups();
    let job = await api(`/api/jobs/${enc(id)}`);
    let train = [];
    let evals = [];
    let logLines = 0;
    let stream = null;
    let polling = false;
    let cancelling = false;

    const statusEl = h('span', { id: 'job-status' });
    const cancelBtn = h('button', { id: 'cancel', class: 'danger', onclick: cancel }, 'Cancel');
    const resumeBtn = h('button', { id: 'resume', onclick: resume }, 'Resume');
    const progressEl = h('div', {});
    const figures = h('div', { class: 'stats-line' });
    const chart = lineChart({ label: 'loss curve', xLabel: 'step', integerX: true, height: 300, empty: 'waiting for the first step' });
    const details = h('dl', { class: 'kv' });
    const sampleEl = h('div', { class: 'sample' });
    const imageBox = h('div', {});
    const logs = h('div', { class: 'logs', id: 'job-logs' });
    const errorEl = h('div', {});

    put(root,
      pageHead(h('span', {}, 'Job ', h('span', { class: 'mono' }, id), ' ', statusEl), h('span', {}, 'created ', ago(job.created_at)), cancelBtn, resumeBtn),
      errorEl,
      h('div', { class: 'panel' }, progressEl, figures),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Loss'), chart.el, legend(['train', 'train loss'], ['eval', 'eval loss'])),
        h('div', { class: 'panel' }, h('h2', {}, 'Job'), details,
          h('h3', {}, 'Current sample'), sampleEl, imageBox)),
      h('div', { class: 'panel' }, h('h2', {}, 'Logs'), logs));

    function draw() {
      const series = [{ name: 'train loss', cls: 'train', points: train }];
      series.push({ name: 'eval loss', cls: 'eval', points: evals, dots: true, line: evals.length > 1 });
      chart.set({ series });
    }
    let drawQueued = false;
    function drawSoon() {
      if (drawQueued) return;
      drawQueued = true;
      requestAnimationFrame(() => {
        drawQueued = false;
        draw();
      });
    }

    function showJob() {
      clear(statusEl, badge(job.status));
      const live = job.status === 'running' || job.status === 'pending';
      cancelBtn.hidden = !live;
      cancelBtn.disabled = cancelling || job.cancel_requested;
      cancelBtn.textContent = cancelling || job.cancel_requested ? 'Cancelling…' : 'Cancel';
      resumeBtn.hidden = live || !['cancelled', 'failed', 'interrupted'].includes(job.status);
      clear(progressEl, progressBar(job.progress, job.status));
      const started = job.started_at ? Date.parse(job.started_at) : null;
      const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
      clear(figures,
        fig(`${fmtInt(job.step)} / ${fmtInt(job.total_steps)}`, 'step'),
        fig(fmtPct(job.progress), 'progress'),
        fig(job.epoch, 'epoch'),
        fig(fmtLoss(job.loss), 'loss'),
        fig(fmtLoss(job.eval_loss), 'eval loss'),
        fig(job.lr === null || job.lr === undefined ? '–' : job.lr.toExponential(2), 'learning rate'),
        fig(fmtNum(job.tokens_per_sec), 'tokens/s'),
        fig(fmtNum(job.tokens), 'tokens'),
        fig(started ? fmtDuration((end - started) / 1000) : '–', 'elapsed'));
      const sp = job.spec || {};
      clear(details,
        kv('Base', modelLink(lk, job.base_model_id)),
        kv('Dataset', datasetLink(lk, job.dataset_id)),
        job.eval_dataset_id ? kv('Eval dataset', datasetLink(lk, job.eval_dataset_id)) : null,
        kv('Method', methodOf(sp)),
        kv('Batch × accum × seq', `${sp.batch_size} × ${sp.grad_accum} × ${sp.seq_len}`),
        kv('Learning rate', `${sp.learning_rate} (${sp.schedule}, warmup ${sp.warmup_steps})`),
        kv('Epochs / max steps', `${sp.epochs} / ${sp.max_steps ?? '–'}`),
        sp.mixed_precision && sp.mixed_precision !== 'no' ? kv('Mixed precision', sp.mixed_precision) : null,
        kv('Output model', job.output_model_id ? modelLink(lk, job.output_model_id) : h('span', { class: 'muted' }, 'when it completes')),
        kv('Checkpoint', job.checkpoint || '–'),
        job.runner_pid ? kv('Runner pid', job.runner_pid) : null);
      sampleEl.textContent = job.sample || '–';
      if (job.error) clear(errorEl, errorBox(job.error));
      else clear(errorEl);
    }

    function refreshImage(step) {
      if (!job.image) return;
      const src = withToken(`/api/jobs/${enc(id)}/image?step=${enc(step)}`);
      const img = imageBox.querySelector('img');
      if (img) img.src = src;
      else imageBox.append(h('h3', {}, 'Current image'), h('img', { class: 'job-image', alt: 'latest validation image', src }));
    }

    function addLog(l) {
      logLines += 1;
      const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 30;
      const t = l.at ? new Date(Date.parse(l.at)).toLocaleTimeString() + ' ' : '';
      logs.append(h('div', { class: l.level }, h('span', { class: 't' }, t), l.level === 'info' ? '' : l.level.toUpperCase() + ' ', l.message));
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    }

    function onEvent(ev, es) {
      switch (ev.type) {
        case 'job_started':
          job.status = 'running';
          job.total_steps = ev.total_steps;
          break;
        case 'step': {
          // A resumed run goes on from its checkpoint: what came after it is replaced.
          while (train.length && train[train.length - 1][0] >= ev.step) train.pop();
          train.push([ev.step, ev.loss]);
          Object.assign(job, { status: 'running', step: ev.step, epoch: ev.epoch, total_steps: ev.total_steps, progress: ev.progress, loss: ev.loss, lr: ev.lr, tokens_per_sec: ev.tokens_per_sec });
          if (ev.sample) job.sample = ev.sample;
          if (ev.image) {
            job.image = job.image || ev.image;
            refreshImage(ev.step);
          }
          drawSoon();
          break;
        }
        case 'eval': {
          const v = ev.metrics && ev.metrics.eval_loss;
          if (v !== undefined) {
            while (evals.length && evals[evals.length - 1][0] >= ev.step) evals.pop();
            evals.push([ev.step, v]);
            job.eval_loss = v;
            drawSoon();
          }
          break;
        }
        case 'checkpoint':
          addLog({ level: 'info', message: `checkpoint at step ${ev.step}` });
          break;
        case 'log':
          addLog({ level: ev.level, message: ev.message });
          break;
        case 'job_finished':
          job.status = ev.status;
          if (ev.error) job.error = ev.error;
          if (es) es.close();
          stream = null;
          cancelling = false;
          // The record has the final figures (output model, finish time).
          setTimeout(() => api(`/api/jobs/${enc(id)}`).then((j) => {
            job = j;
            showJob();
          }).catch(() => {}), 300);
          break;
        default:
          return;
      }
      showJobSoon();
    }
    let showQueued = false;
    function showJobSoon() {
      if (showQueued) return;
      showQueued = true;
      setTimeout(() => {
        showQueued = false;
        showJob();
      }, 100);
    }

    function follow() {
      train = [];
      evals = [];
      logLines = 0;
      logs.replaceChildren();
      stream = events(`/api/jobs/${enc(id)}/events`, onEvent, () => {
        stream = null;
        startPolling();
      });
    }

    /** Without event streams: the job, its metrics and logs every few seconds. */
    async function poll() {
      const [j, points, lines] = await Promise.all([api(`/api/jobs/${enc(id)}`), api(`/api/jobs/${enc(id)}/metrics`), api(`/api/jobs/${enc(id)}/logs`)]);
      job = j;
      if (!['running', 'pending'].includes(job.status)) cancelling = false;
      train = points.filter((p) => p.kind === 'train').map((p) => [p.step, p.loss]);
      evals = points.filter((p) => p.kind !== 'train').map((p) => [p.step, p.loss]);
      for (const l of lines.slice(logLines)) addLog(l);
      draw();
      showJob();
      refreshImage(job.step);
    }
    function startPolling() {
      if (polling) return;
      polling = true;
      logs.replaceChildren();
      logLines = 0;
      poll().catch((e) => toast(e.message, true));
      every(POLL_MS, async () => {
        if (['running', 'pending'].includes(job.status) || cancelling) await poll();
      });
    }

    async function cancel() {
      cancelling = true;
      showJob();
      try {
        job = await api(`/api/jobs/${enc(id)}/cancel`, { method: 'POST' });
        cancelling = ['running', 'pending'].includes(job.status);
        showJob();
        toast('Cancel requested: the job stops at its next step, with a checkpoint (resumable).');
      } catch (e) {
        cancelling = false;
        showJob();
        toast(e.message, true);
      }
    }

    async function resume() {
      resumeBtn.disabled = true;
      try {
        const before = job.status;
        job = await api(`/api/jobs/${enc(id)}/resume`, { method: 'POST' });
        // The runner claims the job on its own thread: follow once it has (or in 5 s),
        // so the stream does not replay the end of the run that was stopped.
        for (let i = 0; i < 25 && job.status === before; i += 1) {
          await new Promise((r) => setTimeout(r, 200));
          job = await api(`/api/jobs/${enc(id)}`);
        }
        showJob();
        if (!polling) {
          if (stream) stream.close();
          follow();
        }
      } catch (e) {
        toast(e.message, true);
      } finally {
        resumeBtn.disabled = false;
      }
    }

    showJob();
    draw();
    if (job.image) refreshImage(job.step);
    follow();
    // Elapsed time and the interrupted state (a runner that died) come from the record.
    every(5000, async () => {
      if (stream && ['running', 'pending'].includes(job.status)) {
        const j = await api(`/api/jobs/${enc(id)}`);
        if (j.status !== job.status && !['running', 'pending'].includes(j.status)) {
          job = j;
          stream.close();
          stream = null;
          await poll();
        } else {
          job.started_at = j.started_at;
          job.cancel_requested = j.cancel_requested;
          job.tokens = j.tokens;
          job.checkpoint = j.checkpoint;
          showJob();
        }
      }
    });
  }

  function fig(v, label) {
    return h('div', {}, h('b', {}, v), h('span', {}, label));
  }

  function kv(k, v) {
    return [h('dt', {}, k), h('dd', {}, v)];
  }

  // ---------------------------------------------------------------- models

  /** Models ordered as a forest: each model followed by what was made from it. */
  function forest(models) {
    const byId = new Map(models.map((m) => [m.id, m]));
    const kids = new Map();
    const roots = [];
    for (const m of models) {
      const p = m.parent_id || (m.lineage && m.lineage.base);
      if (p && byId.has(p) && p !== m.id) {
        if (!kids.has(p)) kids.set(p, []);
        kids.get(p).push(m);
      } else roots.push(m);
    }
    const out = [];
    const seen = new Set();
    const walk = (m, depth) => {
      if (seen.has(m.id)) return;
      seen.add(m.id);
      out.push([m, depth]);
      for (const c of (kids.get(m.id) || []).sort((a, b) => a.created_at.localeCompare(b.created_at))) walk(c, depth + 1);
    };
    roots.sort((a, b) => a.name.localeCompare(b.name) || a.version - b.version).forEach((m) => walk(m, 0));
    return out;
  }

  async function modelsPage(root) {
    const lk = await lookups();
    const rows = forest(lk.modelList).map(([m, depth]) => h('tr', { dataset: { modelId: m.id } },
      h('td', {}, depth ? h('span', { class: 'tree' }, '\u00a0\u00a0'.repeat(depth - 1) + '└ ') : '', h('a', { href: '#/models/' + enc(m.id) }, `${m.name}@${m.version}`)),
      h('td', {}, badge(m.kind)),
      h('td', {}, m.family, h('div', { class: 'muted' }, m.architecture)),
      h('td', { class: 'num' }, fmtNum(m.params)),
      h('td', { class: 'num' }, fmtBytes(m.bytes)),
      h('td', {}, (m.aliases || []).map((a) => h('span', { class: 'chip' }, a))),
      h('td', {}, origin(lk, m)),
      h('td', {}, ago(m.created_at))));
    put(root,
      pageHead('Models', 'The registry: each model under what it was made from (base → fine-tune → adapter)'),
      h('div', { class: 'panel' }, table(['Model', 'Kind', 'Family', 'Params', 'Size', 'Aliases', 'Made from', 'Created'], rows, { empty: 'No models yet: register a directory or create one from a preset.' })));
  }

  function origin(lk, m) {
    const l = m.lineage || {};
    if (l.job) return h('span', {}, 'job ', h('a', { href: '#/jobs/' + enc(l.job), class: 'mono' }, shortId(l.job)), l.dataset ? [' on ', datasetLink(lk, l.dataset)] : '');
    if (l.preset) return h('span', {}, 'preset ', h('b', {}, l.preset), l.seed !== undefined ? ` (seed ${l.seed})` : '');
    return h('span', { class: 'muted', title: m.source }, m.source);
  }

  function node(m, cls, kindText) {
    return h('div', { class: 'node ' + (cls || '') }, h('div', { class: 'kind' }, kindText || m.kind), h('a', { href: '#/models/' + enc(m.id) }, `${m.name}@${m.version}`));
  }

  async function modelPage(root, ref) {
    const [lin, lk] = await Promise.all([api(`/api/models/${enc(ref)}/lineage`), lookups()]);
    const m = lin.model;
    const arrow = () => h('span', { class: 'arrow' }, '→');
    const chain = [];
    for (const a of [...(lin.ancestors || [])].reverse()) chain.push(node(a), arrow());
    if (lin.job) {
      chain.push(h('div', { class: 'node' }, h('div', { class: 'kind' }, 'job · ' + methodOf(lin.job.spec)), h('a', { href: '#/jobs/' + enc(lin.job.id), class: 'mono' }, shortId(lin.job.id)),
        lin.dataset ? h('div', { class: 'muted' }, 'on ', h('a', { href: '#/datasets/' + enc(lin.dataset.id) }, lin.dataset.name)) : null), arrow());
    }
    chain.push(node(m, 'self'));
    if ((lin.children || []).length) chain.push(arrow(), h('div', { class: 'children' }, lin.children.map((c) => node(c))));

    const metrics = (m.lineage && m.lineage.metrics) || null;
    const detail = h('dl', { class: 'kv' },
      kv('Id', h('span', { class: 'mono' }, m.id)),
      kv('Kind / family', `${m.kind} · ${m.family} · ${m.architecture}`),
      kv('Parameters', fmtInt(m.params)),
      kv('Size', `${fmtBytes(m.bytes)} (${m.dtype}, ${m.storage})`),
      kv('Source', m.source),
      m.task ? kv('Task', m.task) : null,
      (m.tags || []).length ? kv('Tags', m.tags.join(', ')) : null,
      metrics ? Object.entries(metrics).filter(([, v]) => typeof v === 'number').map(([k, v]) => kv(k.replace(/_/g, ' '), Number.isInteger(v) ? fmtInt(v) : fmtLoss(v))) : null,
      kv('Created', ago(m.created_at)));

    const aliasBox = h('div', {});
    const usageBox = h('div', {});
    const gensBox = h('div', {});
    const curveBox = h('div', {});
    const monitorBox = h('div', {});
    put(root,
      pageHead(`${m.name}@${m.version}`, h('span', {}, badge(m.kind), ' ', (m.aliases || []).map((a) => h('span', { class: 'chip' }, a))),
        m.family !== 'tabular' ? h('a', { class: 'button', href: '#/playground?model=' + enc(m.id) }, 'Open in playground') : null),
      h('div', { class: 'panel' }, h('h2', {}, 'Lineage'), h('div', { class: 'lineage', id: 'lineage' }, chain)),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Details'), detail),
        h('div', { class: 'panel' }, h('h2', {}, 'Aliases'), aliasBox),
        h('div', { class: 'panel' }, h('h2', {}, 'Usage'), usageBox)),
      curveBox, monitorBox,
      h('div', { class: 'panel' }, h('h2', {}, 'Recent generations'), gensBox));

    const loadAliases = async () => {
      const a = await api(`/api/models/${enc(m.id)}/aliases`);
      const input = h('input', { placeholder: 'production', size: 14, 'aria-label': 'alias' });
      const form = h('form', { class: 'row', onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api(`/api/models/${enc(m.id)}/aliases`, { method: 'POST', body: { alias: input.value.trim() } });
          toast(`${input.value.trim()} → ${m.name}@${m.version}`);
          await loadAliases();
        } catch (e) {
          toast(e.message, true);
        }
      } }, input, h('button', { type: 'submit' }, 'Point alias here'));
      clear(aliasBox,
        h('div', {}, (a.aliases || []).length ? a.aliases.map((x) => h('span', { class: 'chip' }, x)) : h('span', { class: 'muted' }, 'none on this version')),
        (a.history || []).length ? table(['Alias', 'Action', 'Version', 'When'], a.history.slice(-8).reverse().map((r) => h('tr', {},
          h('td', {}, r.alias), h('td', {}, r.action || ''), h('td', {}, r.version != null ? `v${r.version}` : 'removed'), h('td', {}, ago(r.at || r.created_at))))) : null,
        h('h3', {}, 'Move an alias'), form);
    };
    const loadUsage = async () => {
      const u = await api(`/api/models/${enc(m.id)}/usage`);
      clear(usageBox, h('dl', { class: 'kv' },
        kv('Calls', fmtInt(u.calls)), kv('Prompts generated', fmtInt(u.generations)),
        kv('Prompt tokens', fmtInt(u.prompt_tokens)), kv('Generated tokens', fmtInt(u.generated_tokens)),
        kv('Time generating', fmtMs(u.total_duration_ms)), kv('Last used', ago(u.last_used_at))));
    };
    const loadGens = async () => {
      const g = await api(`/api/generations?model=${enc(m.id)}&limit=20`);
      clear(gensBox, generationsTable(lk, g));
    };
    const loadCurve = async () => {
      if (!m.lineage || !m.lineage.job) return;
      const points = await api(`/api/jobs/${enc(m.lineage.job)}/metrics`);
      if (!points.length) return;
      const c = lineChart({ label: 'training loss', xLabel: 'step', integerX: true });
      c.set({ series: [
        { name: 'train loss', cls: 'train', points: points.filter((p) => p.kind === 'train').map((p) => [p.step, p.loss]) },
        { name: 'eval loss', cls: 'eval', points: points.filter((p) => p.kind !== 'train').map((p) => [p.step, p.loss]), dots: true },
      ] });
      clear(curveBox, h('div', { class: 'panel' }, h('h2', {}, 'Training curve (job ', h('a', { href: '#/jobs/' + enc(m.lineage.job) }, shortId(m.lineage.job)), ')'), c.el, legend(['train', 'train loss'], ['eval', 'eval loss'])));
    };
    const loadMonitoring = async () => {
      const t = await api(`/api/models/${enc(m.name)}/timeline`);
      if (!t.accuracy.length && !t.drift.length && !t.events.length && !t.evaluations.length) return;
      clear(monitorBox, timelinePanel(t));
    };
    await Promise.all([loadAliases(), loadUsage(), loadGens(), loadCurve(), loadMonitoring()].map((p) => p.catch((e) => console.warn(e))));
  }

  function generationsTable(lk, gens) {
    return table(['When', 'Model', 'Kind', { text: 'Prompt tok', cls: 'num' }, { text: 'Generated', cls: 'num' }, { text: 'First token', cls: 'num' }, { text: 'Duration', cls: 'num' }, { text: 'tok/s', cls: 'num' }, 'Finish'],
      gens.map((g) => h('tr', {},
        h('td', {}, ago(g.created_at)),
        h('td', {}, modelLink(lk, g.model_id)),
        h('td', {}, g.kind),
        h('td', { class: 'num' }, fmtInt(g.prompt_tokens)),
        h('td', { class: 'num' }, fmtInt(g.generated_tokens)),
        h('td', { class: 'num' }, fmtMs(g.ttft_ms)),
        h('td', { class: 'num' }, fmtMs(g.duration_ms)),
        h('td', { class: 'num' }, g.duration_ms > 0 ? fmtNum((g.generated_tokens * 1000) / g.duration_ms) : '–'),
        h('td', {}, g.finish_reason || '–'))),
      { empty: 'No generations recorded.' });
  }

  // ---------------------------------------------------------------- datasets

  async function datasetsPage(root) {
    const list = await api('/api/datasets');
    list.sort((a, b) => b.created_at.localeCompare(a.created_at));
    put(root,
      pageHead('Datasets', 'Stored (normalised, content-addressed) datasets'),
      h('div', { class: 'panel' }, table(['Name', 'Format', { text: 'Records', cls: 'num' }, { text: 'Size', cls: 'num' }, 'Source', 'Created'],
        list.map((d) => h('tr', { dataset: { datasetId: d.id } },
          h('td', {}, h('a', { href: '#/datasets/' + enc(d.id) }, d.name), d.parent_id ? h('div', { class: 'muted' }, 'split of ', h('a', { href: '#/datasets/' + enc(d.parent_id) }, shortId(d.parent_id))) : null),
          h('td', {}, badge(d.format)),
          h('td', { class: 'num' }, fmtInt(d.num_records)),
          h('td', { class: 'num' }, fmtBytes(d.bytes)),
          h('td', { class: 'muted', title: d.source }, d.source.length > 48 ? '…' + d.source.slice(-46) : d.source),
          h('td', {}, ago(d.created_at)))),
        { empty: 'No datasets yet: import one (anneal import, Python, Node) or POST /api/datasets.' })));
  }

  function cellText(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'string') return v;
    if (Array.isArray(v) && v.every((x) => x && typeof x === 'object' && 'role' in x)) return v.map((x) => `${x.role}: ${x.content}`).join('\n');
    return JSON.stringify(v);
  }

  async function datasetPage(root, id) {
    const [d, rows, st] = await Promise.all([api(`/api/datasets/${enc(id)}`), api(`/api/datasets/${enc(id)}/preview?n=20`), api(`/api/datasets/${enc(id)}/stats`)]);
    const cols = [];
    for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
    const fields = Object.entries(st.fields || {});
    const hist = (st.length_histogram || []).map((b) => ({ label: `${fmtNum(b.min_chars)}–${fmtNum(b.max_chars)}`, value: b.count }));
    const counts = (obj, title) => (obj ? h('div', { class: 'panel' }, h('h2', {}, title), barChart(Object.entries(obj).sort((a, b) => b[1] - a[1]).slice(0, 30).map(([k, v]) => ({ label: k, value: v })))) : null);
    put(root,
      pageHead(d.name, h('span', {}, badge(d.format), ' ', h('span', { class: 'mono muted' }, d.id))),
      h('div', { class: 'cards' }, card(st.num_records, 'records'), h('div', { class: 'card' }, h('div', { class: 'v' }, fmtBytes(st.bytes)), h('div', { class: 'k' }, 'stored')),
        st.tokens ? Object.entries(st.tokens).map(([k, v]) => card(v, 'tokens · ' + k)) : null),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Fields'), table(['Field', { text: 'Min chars', cls: 'num' }, { text: 'Mean', cls: 'num' }, { text: 'Max', cls: 'num' }, { text: 'Empty', cls: 'num' }],
          fields.map(([k, f]) => h('tr', {}, h('td', {}, k), h('td', { class: 'num' }, fmtInt(f.min_chars)), h('td', { class: 'num' }, f.mean_chars.toFixed(1)), h('td', { class: 'num' }, fmtInt(f.max_chars)), h('td', { class: 'num' }, fmtInt(f.empty)))),
          { empty: 'no text fields' }),
        h('dl', { class: 'kv' }, kv('Source', d.source), kv('Source format', d.source_format), kv('sha256', h('span', { class: 'mono' }, d.sha256.slice(0, 16) + '…')), kv('Created', ago(d.created_at)))),
        h('div', { class: 'panel' }, h('h2', {}, 'Record length (characters)'), barChart(hist, { label: 'length histogram' })),
        counts(st.label_counts, 'Labels'), counts(st.role_counts, 'Messages per role')),
      h('div', { class: 'panel' }, h('h2', {}, `Preview (first ${rows.length})`),
        table(['#', ...cols], rows.map((r, i) => h('tr', { class: 'preview-row' }, h('td', { class: 'muted' }, i + 1), cols.map((c) => h('td', {}, cellText(r[c]))))), { cls: 'preview', empty: 'empty dataset' })));
  }

  // ---------------------------------------------------------------- generations

  async function generationsPage(root) {
    const [stats, gens, lk] = await Promise.all([api('/api/stats?recent=1'), api('/api/generations?limit=100'), lookups()]);
    const per = stats.generations || [];
    put(root,
      pageHead('Generations', 'Calls recorded per model, and the latest ones'),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Generated tokens per model'), barChart(per.map((g) => ({ label: g.name ? `${g.name}@${g.version}` : shortId(g.model_id), value: g.generated_tokens })), { labelWidth: 170 })),
        h('div', { class: 'panel' }, h('h2', {}, 'Usage per model'), table(['Model', { text: 'Calls', cls: 'num' }, { text: 'Texts', cls: 'num' }, { text: 'Images', cls: 'num' }, { text: 'Tokens', cls: 'num' }, 'Last'],
          per.map((g) => h('tr', {}, h('td', {}, modelLink(lk, g.model_id)), h('td', { class: 'num' }, fmtInt(g.calls)), h('td', { class: 'num' }, fmtInt(g.texts)), h('td', { class: 'num' }, fmtInt(g.images)), h('td', { class: 'num' }, fmtInt(g.generated_tokens)), h('td', {}, ago(g.last_at)))),
          { empty: 'No generation calls yet: try the playground.' }))),
      h('div', { class: 'panel' }, h('h2', {}, 'Latency of recent calls'), latencyChart(gens)),
      h('div', { class: 'panel' }, h('h2', {}, 'Recent calls'), generationsTable(lk, gens)));
  }

  function latencyChart(gens) {
    const c = lineChart({ time: true, label: 'generation latency', yLabel: 'ms', empty: 'no calls yet', height: 200, yFormat: (v) => fmtMs(v) });
    const pts = gens.map((g) => [Date.parse(g.created_at), g.duration_ms]).filter((p) => Number.isFinite(p[0])).sort((a, b) => a[0] - b[0]);
    c.set({ series: [{ name: 'duration', cls: 'train', points: pts, dots: true, line: false, title: (p) => fmtMs(p[1]) }] });
    return c.el;
  }

  // ---------------------------------------------------------------- monitoring

  function timelinePanel(t) {
    if (!t.accuracy.length && !t.drift.length && !t.evaluations.length && !t.events.length) {
      return h('div', { class: 'panel', dataset: { timeline: t.model_name } }, h('h2', {}, t.model_name),
        h('p', { class: 'empty' }, 'No labelled predictions, drift checks, evaluations or promotions yet.'));
    }
    const acc = lineChart({ time: true, yMin: 0, yMax: 1, label: 'realised accuracy', yFormat: (v) => fmtPct(v), empty: 'no labelled predictions', height: 220 });
    const markers = (t.events || []).map((e) => ({ x: Date.parse(e.at), label: `${e.kind.replace('_', ' ')}${e.version ? ' v' + e.version : ''}`, title: e.reason || e.kind }));
    acc.set({
      series: [{ name: 'accuracy', cls: 'accuracy', points: t.accuracy.map((p) => [Date.parse(p.at), p.accuracy]) }],
      markers,
      hlines: t.accuracy_floor !== null && t.accuracy_floor !== undefined ? [{ y: t.accuracy_floor, cls: 'floor', label: 'accuracy floor' }] : [],
    });
    const drift = lineChart({ time: true, yMin: 0, label: 'drift score', empty: 'no drift checks', height: 180 });
    const dpts = t.drift.filter((p) => p.score !== null && p.score !== undefined).map((p) => [Date.parse(p.at), p.score, p.verdict]);
    drift.set({ series: [{ name: 'drift', cls: 'drift', points: dpts, dots: true, dotClass: (p) => p[2], title: (p) => `${p[2]}: ${fmtLoss(p[1])}` }], markers });
    return h('div', { class: 'panel', dataset: { timeline: t.model_name } },
      h('h2', {}, `${t.model_name}: accuracy and drift over time`),
      h('div', { class: 'muted' }, `${fmtInt(t.labelled)} labelled predictions, rolling window of ${t.window}`),
      acc.el, legend(['accuracy', 'realised accuracy'], ['drift', 'drift score']), drift.el,
      t.versions.length ? table(['Version', { text: 'Predictions', cls: 'num' }, { text: 'Labelled', cls: 'num' }, { text: 'Accuracy', cls: 'num' }, 'From', 'To'],
        t.versions.map((v) => h('tr', {}, h('td', {}, h('a', { href: '#/models/' + enc(v.model_id) }, 'v' + v.version)), h('td', { class: 'num' }, fmtInt(v.predictions)), h('td', { class: 'num' }, fmtInt(v.labelled)), h('td', { class: 'num' }, fmtPct(v.accuracy)), h('td', {}, ago(v.first_at)), h('td', {}, ago(v.last_at))))) : null,
      t.events.length ? [h('h3', {}, 'Promotions and retrains'), table(['When', 'What', 'Version', 'Job', 'Reason'], t.events.map((e) => h('tr', {},
        h('td', {}, ago(e.at)), h('td', {}, badge(e.kind)), h('td', {}, e.version ? `v${e.previous_version ? e.previous_version + ' → v' : ''}${e.version}` : '–'),
        h('td', {}, e.job_id ? h('a', { href: '#/jobs/' + enc(e.job_id) }, shortId(e.job_id)) : '–'), h('td', { class: 'muted' }, e.reason || '')))) ] : null);
  }

  async function monitoringPage(root) {
    const [stats, monitors] = await Promise.all([api('/api/stats?recent=1'), api('/api/monitors').catch(() => [])]);
    const mon = stats.monitoring || { production: [], predictions: [], retrains: 0 };
    const names = [...new Set([...mon.production.map((p) => p.name), ...monitors.map((m) => m.model_name)])];
    const body = h('div', {});
    put(root,
      pageHead('Monitoring', 'Realised accuracy, drift and promotions of the models in production'),
      h('div', { class: 'cards' }, card(mon.production.length, 'models in production'), card(mon.predictions.reduce((a, p) => a + p.count, 0), 'logged predictions'), card(mon.retrains, 'retrains by monitors'), card(monitors.length, 'monitors')),
      monitors.length ? h('div', { class: 'panel' }, h('h2', {}, 'Monitors'), table(['Monitor', 'Model', 'Breaches', 'Last retrain', 'Current job', 'Updated'], monitors.map((m) => h('tr', {},
        h('td', {}, m.name), h('td', {}, m.model_name), h('td', { class: 'num' }, m.consecutive_breaches), h('td', {}, ago(m.last_retrain_at)),
        h('td', {}, m.current_job_id ? h('a', { href: '#/jobs/' + enc(m.current_job_id) }, shortId(m.current_job_id)) : '–'), h('td', {}, ago(m.updated_at)))))) : null,
      body);
    if (!names.length) {
      body.append(h('div', { class: 'panel empty' }, 'Nothing is monitored yet. Monitoring appears when a model name has a production alias, logged predictions, drift checks or a monitor (the continual API).'));
      return;
    }
    for (const name of names) {
      try {
        body.append(timelinePanel(await api(`/api/models/${enc(name)}/timeline`)));
      } catch (e) {
        body.append(errorBox(e));
      }
    }
  }

  // ---------------------------------------------------------------- playground

  async function playgroundPage(root, params) {
    const models = (await api('/api/models')).filter((m) => m.family !== 'tabular');
    models.sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
    const want = params.get('model');
    const select = h('select', { id: 'pg-model', 'aria-label': 'model' },
      ['base', 'full', 'lora'].map((kind) => {
        const ms = models.filter((m) => m.kind === kind);
        return ms.length ? h('optgroup', { label: kind }, ms.map((m) => h('option', { value: m.id, selected: m.id === want || `${m.name}@${m.version}` === want }, `${m.name}@${m.version}${m.aliases.length ? ' (' + m.aliases.join(', ') + ')' : ''}`))) : null;
      }));
    const prompt = h('textarea', { id: 'pg-prompt', placeholder: 'Write a prompt…' }, '');
    const chat = h('input', { type: 'checkbox', id: 'pg-chat' });
    const maxTokens = h('input', { type: 'number', id: 'pg-max', value: 64, min: 1, max: 4096, size: 6 });
    const temperature = h('input', { type: 'number', id: 'pg-temp', value: 0.7, min: 0, max: 5, step: 0.1, size: 5 });
    const seed = h('input', { type: 'number', id: 'pg-seed', placeholder: 'random', size: 8 });
    const out = h('div', { class: 'output', id: 'pg-output' });
    const info = h('div', { class: 'muted', id: 'pg-info' });
    const go = h('button', { class: 'primary', id: 'pg-generate', type: 'submit' }, 'Generate');
    const stop = h('button', { type: 'button', id: 'pg-stop', disabled: true }, 'Stop');
    let ctl = null;
    onLeave(() => ctl && ctl.abort());

    stop.onclick = () => ctl && ctl.abort();
    const form = h('form', { onsubmit: async (ev) => {
      ev.preventDefault();
      const model = models.find((m) => m.id === select.value);
      if (!model || !prompt.value.trim()) return;
      ctl = new AbortController();
      go.disabled = true;
      stop.disabled = false;
      clear(out);
      clear(info, 'generating…');
      try {
        if (model.family === 'stable-diffusion') await generateImage(model, ctl.signal);
        else await generateText(model, ctl.signal);
      } catch (e) {
        if (e.name === 'AbortError') clear(info, 'stopped');
        else clear(info, h('span', { class: 'error' }, `${e.code || 'error'}: ${e.message}`));
      } finally {
        go.disabled = false;
        stop.disabled = true;
        ctl = null;
      }
    } },
    h('div', { class: 'row' }, h('label', { class: 'field' }, 'Model', select), h('label', { class: 'field' }, 'Max new tokens', maxTokens),
      h('label', { class: 'field' }, 'Temperature', temperature), h('label', { class: 'field' }, 'Seed', seed),
      h('label', { class: 'field' }, 'Chat', chat)),
    h('p', {}, prompt),
    h('div', { class: 'row' }, go, stop));

    async function generateText(model, signal) {
      const text = prompt.value;
      const body = {
        model: model.id,
        prompt: chat.checked ? [{ role: 'user', content: text }] : text,
        stream: true,
        max_new_tokens: Number(maxTokens.value) || 64,
        temperature: Number(temperature.value),
      };
      if (seed.value !== '') body.seed = Number(seed.value);
      const res = await api('/api/generate', { method: 'POST', body, signal, raw: true });
      const outText = h('span', { class: 'completion' });
      put(out, chat.checked ? null : h('span', { class: 'prompt' }, text), outText);
      const t0 = performance.now();
      let first = null;
      await readSse(res, (msg) => {
        if (msg.type === 'chunk') {
          if (first === null) first = performance.now() - t0;
          outText.textContent += msg.text;
          clear(info, 'generating…');
        } else if (msg.type === 'done') {
          const g = msg.generation || {};
          const tm = g.timings || {};
          clear(info, `${msg.model || ''} · ${g.generated_tokens} tokens · finish: ${g.finish_reason} · first token ${fmtMs(first)} · ${fmtNum(tm.decode_tokens_per_s)} tok/s`);
        } else if (msg.type === 'error') {
          const e = msg.error || {};
          throw new ApiError(0, e.code, e.message);
        }
      });
    }

    async function generateImage(model, signal) {
      const body = { model: model.id, prompts: [prompt.value] };
      if (seed.value !== '') body.seed = Number(seed.value);
      const r = await api('/api/images/generate', { method: 'POST', body, signal });
      clear(out, h('div', { class: 'gen-images' }, r.images.map((i) => h('img', { alt: prompt.value, src: 'data:image/png;base64,' + i.png_base64 }))));
      clear(info, `${r.images.length} image(s) · ${fmtMs(r.duration_ms)} · seed ${r.seed}`);
    }

    put(root,
      pageHead('Playground', 'Generate with any registered model (adapters are applied on their base)'),
      models.length ? h('div', { class: 'panel' }, form) : h('div', { class: 'panel empty' }, 'No models to generate with yet.'),
      h('div', { class: 'panel' }, h('h2', {}, 'Output'), out, info));
  }

  /** Reads a `text/event-stream` response, calling `onMessage` with each `data:` JSON. */
  async function readSse(res, onMessage) {
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i).replace(/^\r?\n\r?\n/, '');
        const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (!data || data === '[DONE]') continue;
        onMessage(JSON.parse(data));
      }
    }
  }

  // ---------------------------------------------------------------- start

  window.addEventListener('hashchange', render);
  checkHealth();
  setInterval(checkHealth, 15000);
  render();
})();
