// The browser demo's page logic: open the adapter, check the forward pass
// against the f64 reference, sweep sequence lengths, draw the chart. All GPU
// work and the reference are in Rust (lightning_web.js, built from web/src).
//
// URL parameters fill the form by input id (?tokens=4096&nmax=4096&recurrent=0);
// ?autorun=0 waits for the Run button; ?hold=1 is for the test harness (see
// HOLD below). When a run ends the page logs one line,
//   LIGHTNING-RESULT PASS|FAIL <details>
// and shows the same line at the top of the page.

import init, { open, tolerance } from './lightning_web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SEED = 7;

const PROVIDERS = [
  { key: 'lightning-chunk', field: 'lightning', label: 'Lightning (chunked)', color: '#e8590c' },
  { key: 'softmax', field: 'softmax', label: 'Softmax (online)', color: '#1c7ed6' },
  { key: 'recurrent', field: 'recurrent', label: 'Recurrent', color: '#2f9e44' },
];

for (const [key, value] of params) {
  const input = $(key);
  if (!input || input.tagName !== 'INPUT') continue;
  if (input.type === 'checkbox') input.checked = !['0', 'false', 'off', 'no'].includes(value);
  else input.value = value;
}

// The test harness (cargo xtask web-test) asks the server for /hold?id=X,
// which answers once the page has posted its result to /done?id=X: the page's load
// event waits for the image, and a headless `--screenshot` waits for the load
// event, so the screenshot shows the finished run.
const HOLD = params.has('hold');
const HOLD_ID = Math.random().toString(36).slice(2);
if (HOLD) {
  const img = document.createElement('img');
  img.alt = '';
  img.src = `/hold?id=${HOLD_ID}`;
  img.style.cssText = 'position:absolute;left:0;top:0;width:1px;height:1px;opacity:0';
  document.body.append(img);
}

class Stop extends Error {
  constructor(code, message, hint = '') {
    super(message);
    this.code = code;
    this.hint = hint;
  }
}

const text = (e) => String(e instanceof Error ? e.message : e).replace(/\s+/g, ' ').trim();

function message(msg, error = false) {
  const div = document.createElement('div');
  if (error) div.className = 'error';
  div.textContent = msg;
  $('messages').append(div);
}

function setVerdict(kind, msg) {
  const v = $('verdict');
  v.className = kind;
  v.textContent = msg;
}

function num(id) {
  const x = Number($(id).value);
  if (!Number.isInteger(x) || x < 1) throw new Stop('bad-input', `${id} must be a whole number >= 1, got "${$(id).value}"`);
  return x;
}

function fmtMs(ms) {
  if (!Number.isFinite(ms)) return String(ms);
  if (ms >= 100) return ms.toFixed(0);
  if (ms >= 10) return ms.toFixed(1);
  if (ms >= 1) return ms.toFixed(2);
  return ms.toPrecision(2);
}

const fmtBytes = (b) => b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(1)} GiB` : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(0)} MiB` : `${(b / 1024).toFixed(0)} KiB`;

function row(table, cells, header = false) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const cell = document.createElement(header ? 'th' : 'td');
    if (typeof c === 'object' && c !== null) {
      cell.textContent = c.text;
      if (c.cls) cell.className = c.cls;
    } else {
      cell.textContent = c;
    }
    tr.append(cell);
  }
  table.append(tr);
}

// ---- the adapter ----------------------------------------------------------

let wasmReady = null;
let demo = null;
let jsInfo = null;

async function ready() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    const secure = window.isSecureContext ? '' : ' This page is not a secure context: WebGPU needs https or localhost.';
    throw new Stop('no-webgpu', 'This browser does not expose WebGPU (navigator.gpu is missing): use a recent Chrome, Edge, Safari or Firefox with WebGPU enabled.' + secure);
  }
  if (!wasmReady) wasmReady = init();
  try {
    await wasmReady;
  } catch (e) {
    wasmReady = null;
    throw new Stop('wasm', `Loading the WebAssembly module failed: ${text(e)}`);
  }
  if (demo) return demo;
  try {
    const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    jsInfo = a && a.info ? a.info : null;
  } catch (_) {
    jsInfo = null;
  }
  try {
    demo = await open();
  } catch (e) {
    throw new Stop('no-adapter', `WebGPU is there but no adapter could be opened: ${text(e)}`,
      'The browser offers no GPU for WebGPU here: see chrome://gpu (Chrome) or about:support (Firefox). ' +
      'On Linux, Chrome may need WebGPU switched on: chrome://flags/#enable-unsafe-webgpu, or start it with --enable-unsafe-webgpu.');
  }
  return demo;
}

// wgpu names the adapter by GPUAdapterInfo.description, which browsers often
// leave empty; vendor and architecture say more then.
function adapterName(a) {
  const js = jsInfo || {};
  return a.name || js.description || [js.vendor, js.architecture].filter(Boolean).join(' ') || '(not disclosed by the browser)';
}

function showAdapter(a) {
  const t = $('adapter');
  t.replaceChildren();
  const js = jsInfo || {};
  const name = adapterName(a);
  const l = a.limits;
  row(t, ['adapter', name]);
  if (js.vendor || js.architecture) row(t, ['vendor / arch', [js.vendor, js.architecture].filter(Boolean).join(' / ')]);
  row(t, ['backend', `${a.backend} (${a.deviceType})`]);
  row(t, ['invocations / workgroup', String(l.maxComputeInvocationsPerWorkgroup)]);
  row(t, ['workgroup storage', fmtBytes(l.maxComputeWorkgroupStorageSize)]);
  row(t, ['storage binding', fmtBytes(l.maxStorageBufferBindingSize)]);
  row(t, ['buffer', fmtBytes(l.maxBufferSize)]);
  row(t, ['block', `${a.blockRows} rows`]);
  row(t, ['bounds checks', a.checked ? 'on' : 'off']);
  row(t, ['features used', a.features.length ? a.features.join(', ') : 'none (plain f32)']);
  row(t, ['timer', a.timer]);
}

// ---- the chart ------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';

function el(name, attrs, content) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  return e;
}

function yTicks(lo, hi) {
  const ticks = [];
  for (let p = Math.floor(Math.log10(lo)) - 1; p <= Math.ceil(Math.log10(hi)) + 1; p++) {
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** p;
      if (t >= lo && t <= hi) ticks.push(t);
    }
  }
  return ticks;
}

class Chart {
  constructor(host, lengths, providers, caption) {
    this.host = host;
    this.lengths = lengths;
    this.providers = providers;
    this.caption = caption;
    this.points = [];
    this.failed = [];
    this.render();
  }

  add(point) {
    this.points.push(point);
    this.render();
  }

  fail(provider, n) {
    this.failed.push({ provider, n });
    this.render();
  }

  render() {
    const W = 780, H = 440, L = 66, R = 18, T = 14, B = 50;
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'forward time against sequence length' });
    svg.append(el('rect', { x: 0, y: 0, width: W, height: H, fill: '#fff' }));
    const ms = this.points.map((p) => p.ms).filter((x) => x > 0 && Number.isFinite(x));
    let lo = ms.length ? Math.min(...ms) / 1.6 : 0.1;
    let hi = ms.length ? Math.max(...ms) * 1.6 : 100;
    if (hi / lo < 10) {
      const mid = Math.sqrt(lo * hi);
      lo = mid / Math.sqrt(10);
      hi = mid * Math.sqrt(10);
    }
    const l2 = this.lengths.map(Math.log2);
    const x0 = Math.min(...l2) - 0.3, x1 = Math.max(...l2) + 0.3;
    const x = (n) => L + ((Math.log2(n) - x0) / (x1 - x0)) * (W - L - R);
    const y = (t) => T + (1 - (Math.log10(t) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (H - T - B);

    const grid = el('g', { stroke: '#e6e6e6', 'stroke-width': 1 });
    const labels = el('g', { fill: '#555', 'font-size': 12, 'font-family': 'system-ui, sans-serif' });
    for (const n of this.lengths) {
      grid.append(el('line', { x1: x(n), x2: x(n), y1: T, y2: H - B }));
      labels.append(el('text', { x: x(n), y: H - B + 16, 'text-anchor': 'middle' }, String(n)));
    }
    for (const t of yTicks(lo, hi)) {
      grid.append(el('line', { x1: L, x2: W - R, y1: y(t), y2: y(t) }));
      labels.append(el('text', { x: L - 6, y: y(t) + 4, 'text-anchor': 'end' }, fmtMs(t)));
    }
    svg.append(grid);
    svg.append(el('rect', { x: L, y: T, width: W - L - R, height: H - T - B, fill: 'none', stroke: '#999' }));
    labels.append(el('text', { x: (L + W - R) / 2, y: H - 12, 'text-anchor': 'middle' }, 'sequence length n (log scale; batch = tokens / n)'));
    labels.append(el('text', { x: 16, y: (T + H - B) / 2, 'text-anchor': 'middle', transform: `rotate(-90 16 ${(T + H - B) / 2})` }, 'forward time, ms (log scale)'));
    svg.append(labels);

    this.providers.forEach((p, i) => {
      const pts = this.points.filter((q) => q.provider === p.key).sort((a, b) => a.n - b.n);
      const g = el('g', { stroke: p.color, fill: p.color });
      if (pts.length > 1) {
        const d = pts.map((q, j) => `${j ? 'L' : 'M'}${x(q.n).toFixed(1)},${y(q.ms).toFixed(1)}`).join(' ');
        g.append(el('path', { d, fill: 'none', 'stroke-width': 2.5 }));
      }
      for (const q of pts) g.append(el('circle', { cx: x(q.n), cy: y(q.ms), r: 4 }));
      for (const f of this.failed.filter((q) => q.provider === p.key)) {
        // Failed cases: a cross on the axis, side by side per provider.
        const cx = x(f.n) + (i - (this.providers.length - 1) / 2) * 13, cy = H - B - 7;
        g.append(el('path', { d: `M${cx - 5},${cy - 5} L${cx + 5},${cy + 5} M${cx - 5},${cy + 5} L${cx + 5},${cy - 5}`, 'stroke-width': 2.5 }));
      }
      // legend
      const ly = T + 18 + i * 20;
      g.append(el('line', { x1: L + 14, x2: L + 40, y1: ly, y2: ly, 'stroke-width': 2.5 }));
      g.append(el('circle', { cx: L + 27, cy: ly, r: 4 }));
      g.append(el('text', { x: L + 48, y: ly + 4, stroke: 'none', fill: '#222', 'font-size': 13, 'font-family': 'system-ui, sans-serif' }, p.label));
      svg.append(g);
    });
    if (this.caption) {
      svg.append(el('text', { x: W - R - 8, y: T + 18, 'text-anchor': 'end', fill: '#555', 'font-size': 12, 'font-family': 'system-ui, sans-serif' }, this.caption));
    }
    this.host.replaceChildren(svg);
  }
}

function showPoints(lengths, providers, points, failed) {
  const t = $('points');
  t.replaceChildren();
  row(t, [{ text: 'n', cls: 'num' }, { text: 'batch', cls: 'num' }, ...providers.map((p) => ({ text: `${p.label}, ms`, cls: 'num' }))], true);
  for (const n of lengths) {
    const here = points.filter((q) => q.n === n);
    const b = here.length ? String(here[0].b) : '';
    row(t, [{ text: String(n), cls: 'num' }, { text: b, cls: 'num' }, ...providers.map((p) => {
      const q = here.find((q) => q.provider === p.key);
      if (q) return { text: fmtMs(q.ms), cls: 'num' };
      return { text: failed.some((f) => f.provider === p.key && f.n === n) ? 'error' : '', cls: 'num' };
    })]);
  }
}

// ---- a run ----------------------------------------------------------------

let running = false;

async function run() {
  if (running) return;
  running = true;
  $('run').disabled = true;
  $('messages').replaceChildren();
  $('check').replaceChildren();
  $('points').replaceChildren();
  $('chart').replaceChildren();
  const started = performance.now();
  let checkRows = null;
  const points = [];
  const failed = [];
  let fatal = null;
  let name = '';
  try {
    setVerdict('pending', 'Opening the WebGPU adapter…');
    const d = await ready();
    const a = d.adapter();
    name = adapterName(a);
    showAdapter(a);

    const c = { b: num('cb'), h: num('ch'), n: num('cn'), d: num('cd'), e: num('ce'), decay: $('decay').checked };
    const tol = tolerance();
    $('check-info').textContent = `b=${c.b} h=${c.h} n=${c.n} d=${c.d} e=${c.e}, ${c.decay ? 'ALiBi decay' : 'no decay'}, random inputs; ` +
      `f32 on the GPU against the f64 reference computed in wasm; tolerance ${tol.toExponential(0)}. ` +
      '*First call: includes compiling the pipelines and reading back.';
    setVerdict('pending', 'Checking against the f64 reference…');
    try {
      checkRows = await d.check(c.b, c.h, c.n, c.d, c.e, c.decay, SEED);
      const t = $('check');
      row(t, ['provider', { text: 'rel. error', cls: 'num' }, '', { text: 'GPU ms*', cls: 'num' }, { text: 'ref ms', cls: 'num' }], true);
      for (const r of checkRows) {
        row(t, [r.provider, { text: r.relErr.toExponential(2), cls: 'num' }, { text: r.pass ? 'PASS' : 'FAIL', cls: r.pass ? 'pass' : 'fail' },
          { text: fmtMs(r.gpuMs), cls: 'num' }, { text: fmtMs(r.refMs), cls: 'num' }]);
      }
    } catch (e) {
      checkRows = null;
      message(`Check: ${text(e)}`, true);
      row($('check'), [{ text: `error: ${text(e)}`, cls: 'err' }]);
      failed.push({ provider: 'check', n: c.n, error: text(e) });
    }

    const s = { tokens: num('tokens'), h: num('sh'), d: num('sd'), e: num('se'), nmin: num('nmin'), nmax: num('nmax'), reps: num('reps') };
    const providers = PROVIDERS.filter((p) => $(p.field).checked);
    const lengths = [];
    for (let n = 2 ** Math.ceil(Math.log2(s.nmin)); n <= s.nmax; n *= 2) lengths.push(n);
    if (!lengths.length) throw new Stop('bad-input', `no power of two between n from = ${s.nmin} and to = ${s.nmax}`);
    if (!providers.length) throw new Stop('bad-input', 'pick at least one provider');
    $('sweep-info').textContent = `tokens = b × n = ${s.tokens}, h = ${s.h}, d = ${s.d}, e = ${s.e}; median of ${s.reps} timed runs after 1 warm-up (timer: ${a.timer}).`;
    const chart = new Chart($('chart'), lengths, providers, `tokens ${s.tokens}, h ${s.h}, d ${s.d}, e ${s.e}`);
    showPoints(lengths, providers, points, failed);
    for (const n of lengths) {
      for (const p of providers) {
        setVerdict('pending', `Timing ${p.label} at n = ${n}…`);
        try {
          const r = await d.measure(p.key, s.tokens, s.h, s.d, s.e, n, 1, s.reps);
          points.push(r);
          chart.add(r);
        } catch (e) {
          failed.push({ provider: p.key, n, error: text(e) });
          message(`${p.label} at n = ${n}: ${text(e)}`, true);
          chart.fail(p.key, n);
        }
        showPoints(lengths, providers, points, failed);
      }
    }
  } catch (e) {
    fatal = e;
  }

  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const relOf = (key) => {
    const r = checkRows && checkRows.find((q) => q.provider === key);
    return r ? r.relErr.toExponential(2) : 'none';
  };
  const summary = `rel_err=${relOf('lightning-chunk')} recurrent_rel_err=${relOf('recurrent')} softmax_rel_err=${relOf('softmax')} ` +
    `points=${points.length} errors=${failed.length} timer=${points.length ? points[0].timer : 'none'} seconds=${seconds} adapter="${name}"`;
  if (fatal) {
    const code = fatal instanceof Stop ? fatal.code : 'error';
    message(text(fatal) + (fatal.hint ? `\n${fatal.hint}` : ''), true);
    finish(false, `${code}: ${text(fatal)}`);
  } else if (!checkRows) {
    finish(false, `check-error: ${failed[0].error} ${summary}`);
  } else if (!checkRows.every((r) => r.pass)) {
    finish(false, `tolerance=${tolerance()} ${summary}`);
  } else if (failed.length) {
    finish(false, `${summary} first-error: ${failed[0].error}`);
  } else {
    finish(true, summary);
  }
  running = false;
  $('run').disabled = false;
}

async function finish(pass, detail) {
  const line = `LIGHTNING-RESULT ${pass ? 'PASS' : 'FAIL'} ${detail}`.replace(/\s+/g, ' ').trim();
  console.log(line);
  setVerdict(pass ? 'pass' : 'fail', line);
  document.body.dataset.result = pass ? 'pass' : 'fail';
  if (HOLD) {
    // Let the last frame paint before the load event (and the screenshot).
    await new Promise((r) => setTimeout(r, 300));
    fetch(`/done?id=${HOLD_ID}`, { method: 'POST', body: line }).catch(() => {});
  }
}

window.addEventListener('unhandledrejection', (e) => message(`Unexpected: ${text(e.reason)}`, true));
window.addEventListener('error', (e) => message(`Unexpected: ${text(e.error || e.message)}`, true));

$('form').addEventListener('submit', (e) => {
  e.preventDefault();
  run();
});

if (params.get('autorun') !== '0') run();
else setVerdict('pending', 'Pick sizes and press Run.');
