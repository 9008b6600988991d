// The demo page, built on the lightning-wgpu npm package: a correctness
// check against a JS reference, tokens/s and memory against sequence length
// next to softmax attention, a side-by-side with ONNX Runtime Web's
// LinearAttention, and a streaming decoder on the state cache.
//
// ?auto=0 waits for the buttons; ?hold=1 is for the test harness (cargo xtask
// web-test): the page's load event waits until the run has ended, so that a
// headless screenshot shows it. The run ends with one console line,
//   LIGHTNING-RESULT PASS|FAIL <details>

import { LightningAttention, alibiSlopes } from 'lightning-wgpu';
import { loadOrt, ortSession } from './onnx.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const results = { page: 'lightning-wgpu demo', date: new Date().toISOString() };
window.lightningResults = results;

const HOLD = params.has('hold');
const HOLD_ID = Math.random().toString(36).slice(2);
if (HOLD) {
  const img = document.createElement('img');
  img.alt = '';
  img.src = `/hold?id=${HOLD_ID}`;
  img.style.cssText = 'position:absolute;left:0;top:0;width:1px;height:1px;opacity:0';
  document.body.append(img);
}

const text = (e) => String(e instanceof Error ? e.message : e).replace(/\s+/g, ' ').trim();

function message(msg, error = false) {
  const div = document.createElement('div');
  if (error) div.className = 'error';
  div.textContent = msg;
  $('messages').append(div);
}

function row(table, cells, header = false) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement(header ? 'th' : 'td');
    td.textContent = c;
    if (typeof c === 'number' || /^[\d.,]+( [KMG]?i?B)?$/.test(String(c))) td.className = 'num';
    tr.append(td);
  }
  table.append(tr);
}

const fmt = (x, digits = 3) => (Number.isFinite(x) ? Number(x.toPrecision(digits)).toLocaleString('en') : String(x));
function bytes(n) {
  for (const [unit, size] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]]) {
    if (n >= size) return `${fmt(n / size)} ${unit}`;
  }
  return `${n} B`;
}

// Deterministic inputs in [-a, a).
function random(len, seed, a = 0.5) {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(len);
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = (x / 4294967296 * 2 - 1) * a;
  }
  return out;
}

// The f64 reference: S_i = lambda S_{i-1} + k_i^T v_i, o_i = scale q_i S_i, (b, h, n, *).
function reference(q, k, v, { b, h, n, d, e }, slopes, scale = 1) {
  const o = new Float64Array(b * h * n * e);
  for (let bh = 0; bh < b * h; bh++) {
    const lambda = Math.exp(-slopes[bh % h]);
    const S = new Float64Array(d * e);
    for (let i = 0; i < n; i++) {
      const r = bh * n + i;
      for (let x = 0; x < d; x++) for (let y = 0; y < e; y++) S[x * e + y] = lambda * S[x * e + y] + k[r * d + x] * v[r * e + y];
      for (let y = 0; y < e; y++) {
        let acc = 0;
        for (let x = 0; x < d; x++) acc += q[r * d + x] * S[x * e + y];
        o[r * e + y] = scale * acc;
      }
    }
  }
  return o;
}

function maxRel(got, want) {
  let err = 0, peak = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    peak = Math.max(peak, Math.abs(want[i]));
  }
  return Number.isFinite(err) && peak > 0 ? err / peak : Infinity;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Median wall-clock ms of `fn` (awaited, then the GPU drained), after one warm-up. */
async function timed(la, fn, reps = 3) {
  await fn();
  await la.synchronize();
  const ms = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    await la.synchronize();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

// ---- sizes per adapter ------------------------------------------------------

function sizesFor(info) {
  const software = /swiftshader|llvmpipe|lavapipe|software|cpu/i.test(`${info.name} ${info.vendor} ${info.deviceType}`);
  return software
    ? { software, h: 2, d: 32, lengths: [256, 512, 1024, 2048], softmaxMax: 2048, ort: [256, 1024], decodeTokens: 120 }
    : { software, h: 8, d: 64, lengths: [1024, 2048, 4096, 8192, 16384, 32768], softmaxMax: 16384, ort: [1024, 4096, 16384], decodeTokens: 400 };
}

// ---- charts -----------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
function el(name, attrs, content) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (content !== undefined) e.textContent = content;
  return e;
}

/** A log-log line chart: series [{ label, color, points: [[x, y]] }]. */
function chart(host, { series, xLabel, yLabel, W = 780, H = 380 }) {
  const L = 70, R = 16, T = 12, B = 46;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y > 0 && Number.isFinite(y));
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': yLabel });
  svg.append(el('rect', { x: 0, y: 0, width: W, height: H, fill: '#fff' }));
  if (!xs.length || !ys.length) {
    host.replaceChildren(svg);
    return;
  }
  const lx = (x) => Math.log2(x), ly = (y) => Math.log10(y);
  const x0 = Math.min(...xs.map(lx)) - 0.3, x1 = Math.max(...xs.map(lx)) + 0.3;
  let y0 = ly(Math.min(...ys)) - 0.2, y1 = ly(Math.max(...ys)) + 0.2;
  if (y1 - y0 < 1) [y0, y1] = [(y0 + y1) / 2 - 0.5, (y0 + y1) / 2 + 0.5];
  const px = (x) => L + ((lx(x) - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (ly(y) - y0) / (y1 - y0)) * (H - T - B);
  const grid = el('g', { stroke: '#e6e6e6' });
  const labels = el('g', { fill: '#555', 'font-size': 12, 'font-family': 'system-ui, sans-serif' });
  for (const x of [...new Set(xs)]) {
    grid.append(el('line', { x1: px(x), x2: px(x), y1: T, y2: H - B }));
    labels.append(el('text', { x: px(x), y: H - B + 16, 'text-anchor': 'middle' }, x >= 1024 ? `${x / 1024}K` : String(x)));
  }
  for (let p = Math.floor(y0); p <= Math.ceil(y1); p++) {
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** p;
      if (ly(t) < y0 || ly(t) > y1) continue;
      grid.append(el('line', { x1: L, x2: W - R, y1: py(t), y2: py(t) }));
      labels.append(el('text', { x: L - 6, y: py(t) + 4, 'text-anchor': 'end' }, fmt(t, 2)));
    }
  }
  svg.append(grid, el('rect', { x: L, y: T, width: W - L - R, height: H - T - B, fill: 'none', stroke: '#999' }));
  labels.append(el('text', { x: (L + W - R) / 2, y: H - 10, 'text-anchor': 'middle' }, xLabel));
  labels.append(el('text', { x: 14, y: (T + H - B) / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${(T + H - B) / 2})` }, yLabel));
  svg.append(labels);
  series.forEach((s, i) => {
    const g = el('g', { stroke: s.color, fill: s.color });
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (pts.length > 1) g.append(el('path', { d: pts.map(([x, y], j) => `${j ? 'L' : 'M'}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' '), fill: 'none', 'stroke-width': 2.5 }));
    for (const [x, y] of pts) g.append(el('circle', { cx: px(x), cy: py(y), r: 4 }));
    const yl = T + 16 + i * 19;
    g.append(el('line', { x1: L + 12, x2: L + 36, y1: yl, y2: yl, 'stroke-width': 2.5 }));
    g.append(el('text', { x: L + 44, y: yl + 4, stroke: 'none', fill: '#222', 'font-size': 13, 'font-family': 'system-ui, sans-serif' }, s.label));
    svg.append(g);
  });
  host.replaceChildren(svg);
}

// ---- the four parts ---------------------------------------------------------

/** A name for the adapter: browsers may hide it. */
const adapterName = (info) => info.name || info.driverInfo || info.driver || `an unnamed ${info.deviceType} adapter`;

function showAdapter(info) {
  const t = $('adapter');
  t.replaceChildren();
  for (const [k, v] of [['name', adapterName(info)], ['backend', info.backend], ['type', info.deviceType], ['features', info.features.join(', ') || 'none'], ['block rows', info.blockRows]]) row(t, [k, String(v)]);
}

/** Forward and decode against the JS reference on a small problem. */
async function check(la) {
  const dims = { b: 1, h: 2, n: 100, d: 16, e: 24 };
  const { b, h, n, d, e } = dims;
  const q = random(b * h * n * d, 1), k = random(b * h * n * d, 2), v = random(b * h * n * e, 3);
  const slopes = alibiSlopes(h);
  const want = reference(q, k, v, dims, slopes);
  const { o } = await la.forward({ q, k, v, dims, slopes });
  const forward = maxRel(o, want);
  const cache = la.stateCache({ slots: 1, heads: h, d, e });
  const decoded = new Float32Array(o.length);
  for (let i = 0; i < n; i++) {
    const at = (x, w) => {
      const t = new Float32Array(h * w);
      for (let hh = 0; hh < h; hh++) t.set(x.subarray((hh * n + i) * w, (hh * n + i + 1) * w), hh * w);
      return t;
    };
    const step = await la.decodeStep({ q: at(q, d), k: at(k, d), v: at(v, e), cache, slots: [0], dims: { batch: 1, h, d, e }, slopes });
    for (let hh = 0; hh < h; hh++) decoded.set(step.subarray(hh * e, (hh + 1) * e), (hh * n + i) * e);
  }
  cache.dispose();
  const decode = maxRel(decoded, want);
  results.check = { dims, forwardMaxRelErr: forward, decodeMaxRelErr: decode, tolerance: 1e-4 };
  $('check').textContent = `Forward and decode against a JS float64 reference (b=1, h=2, n=100, d=16, e=24): max relative error ${forward.toExponential(1)} and ${decode.toExponential(1)} (tolerance 1e-4).`;
  return forward <= 1e-4 && decode <= 1e-4;
}

/** Tokens/s of Lightning and softmax attention against n, and their memory. */
async function speed(la, sizes, dtype) {
  const { h, d, lengths, softmaxMax } = sizes;
  $('speed-info').textContent = `b = 1, h = ${h}, d = e = ${d}, ${dtype} storage, ALiBi decay; wall clock around each call with the GPU drained, median of 3. Memory: what a decoder keeps per request to continue the text (Lightning's state against softmax's key-value cache).`;
  const points = [];
  const table = $('points');
  table.replaceChildren();
  row(table, ['n', 'Lightning tokens/s', 'softmax tokens/s', 'Lightning state', 'softmax KV cache'], true);
  const slopes = alibiSlopes(h);
  const per = dtype === 'f32' ? 4 : 2;
  for (const n of lengths) {
    const shape = [1, h, n, d];
    const [q, k, v] = [1, 2, 3].map((s) => la.tensor(random(h * n * d, s * 977 + n), shape, dtype));
    const point = { n, dtype, h, d };
    try {
      point.lightningMs = await timed(la, async () => (await la.forward({ q, k, v, slopes })).o.dispose());
      if (n <= softmaxMax) point.softmaxMs = await timed(la, async () => (await la.softmaxAttention({ q, k, v })).dispose());
    } catch (e) {
      message(`n = ${n}: ${text(e)}`, true);
    } finally {
      for (const t of [q, k, v]) t.dispose();
    }
    point.stateBytes = h * d * d * 4;
    point.kvCacheBytes = 2 * n * h * d * per;
    points.push(point);
    row(table, [n, fmt(n / (point.lightningMs / 1e3)), point.softmaxMs ? fmt(n / (point.softmaxMs / 1e3)) : '—', bytes(point.stateBytes), bytes(point.kvCacheBytes)]);
    chart($('chart'), {
      xLabel: 'sequence length n (log scale)',
      yLabel: 'tokens per second (log scale)',
      series: [
        { label: 'Lightning Attention (lightning-wgpu)', color: '#e8590c', points: points.filter((p) => p.lightningMs).map((p) => [p.n, p.n / (p.lightningMs / 1e3)]) },
        { label: 'softmax attention (same GPU, same API)', color: '#1c7ed6', points: points.filter((p) => p.softmaxMs).map((p) => [p.n, p.n / (p.softmaxMs / 1e3)]) },
      ],
    });
  }
  results.speed = points;
}

/** Ours and ONNX Runtime Web's LinearAttention on the same inputs. */
async function sideBySide(la, sizes) {
  const table = $('ort-table');
  table.replaceChildren();
  let ort;
  try {
    ort = await loadOrt();
  } catch (e) {
    $('ort-chart').textContent = `ONNX Runtime Web is not served with this page (${text(e)}).`;
    results.ort = { available: false, reason: text(e) };
    return;
  }
  const { h, d } = sizes;
  const slopes = alibiSlopes(h);
  row(table, ['n', 'ours ms', 'ORT ms', 'max rel. diff'], true);
  const rows = [];
  for (const t of sizes.ort) {
    // (1, t, h, d) for us is (1, t, h*d) for ORT: the same buffers.
    const q = random(t * h * d, 11 + t), k = random(t * h * d, 12 + t), v = random(t * h * d, 13 + t);
    const decay = new Float32Array(t * h);
    for (let i = 0; i < t; i++) for (let hh = 0; hh < h; hh++) decay[i * h + hh] = -slopes[hh];
    const dims = { b: 1, h, n: t, d, e: d };
    let session;
    try {
      session = await ortSession(ort, { t, h, d, e: d });
      const theirs = await session.run(q, k, v, decay);
      const { o: ours } = await la.forward({ q, k, v, dims, slopes, layout: 'bnhd' });
      const diff = maxRel(theirs, ours);
      const oursMs = await timed(la, () => la.forward({ q, k, v, dims, slopes, layout: 'bnhd' }));
      const ortMs = await timed(la, () => session.run(q, k, v, decay));
      rows.push({ n: t, oursMs, ortMs, maxRelDiff: diff });
      row(table, [t, fmt(oursMs), fmt(ortMs), diff.toExponential(1)]);
    } catch (e) {
      $('ort-chart').textContent = `ONNX Runtime Web could not run LinearAttention on this adapter: ${text(e)}`;
      results.ort = { available: false, reason: text(e), rows };
      return;
    } finally {
      session?.release();
    }
    chart($('ort-chart'), {
      W: 420, H: 260,
      xLabel: 'n', yLabel: 'ms, host to host (log)',
      series: [
        { label: 'lightning-wgpu', color: '#e8590c', points: rows.map((r) => [r.n, r.oursMs]) },
        { label: 'ORT Web LinearAttention', color: '#5f3dc4', points: rows.map((r) => [r.n, r.ortMs]) },
      ],
    });
  }
  results.ort = { available: true, version: ort.env.versions?.web, rows, note: 'both timed host to host: upload, attention, readback' };
}

/** A toy language model decoding from the state cache, tokens/s live. */
async function decodeToy(la, tokens) {
  const vocab = 'abcdefghijklmnopqrstuvwxyz .,';
  const [V, D, h, d] = [vocab.length, 32, 4, 16];
  const E = random(V * D, 101, 1), Wq = random(D * h * d, 102, 0.3), Wk = random(D * h * d, 103, 0.3), Wv = random(D * h * d, 104, 0.3), Wo = random(h * d * V, 105, 0.5);
  const matvec = (x, W, rows, cols) => {
    const y = new Float32Array(cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) y[j] += x[i] * W[i * cols + j];
    return y;
  };
  const cache = la.stateCache({ slots: 1, heads: h, d, e: d });
  const slopes = alibiSlopes(h);
  $('state-size').textContent = bytes(h * d * d * 4);
  let token = 0, out = '';
  const t0 = performance.now();
  for (let i = 0; i < tokens; i++) {
    const x = E.subarray(token * D, (token + 1) * D);
    const o = await la.decodeStep({ q: matvec(x, Wq, D, h * d), k: matvec(x, Wk, D, h * d), v: matvec(x, Wv, D, h * d), cache, slots: [0], dims: { batch: 1, h, d, e: d }, slopes, scale: 0.25 });
    const logits = matvec(o, Wo, h * d, V);
    token = logits.indexOf(Math.max(...logits));
    out += vocab[token];
    if (i % 10 === 9 || i === tokens - 1) {
      const rate = (i + 1) / ((performance.now() - t0) / 1e3);
      $('decode-stats').textContent = `${i + 1} tokens, ${fmt(rate)} tokens/s; state memory ${bytes(h * d * d * 4)} at every step (a softmax KV cache would hold ${bytes(2 * (i + 1) * h * d * 4)} by now)`;
      $('decode-text').textContent = out;
      await new Promise((r) => setTimeout(r, 0));
    }
  }
  cache.dispose();
  results.decode = { tokens, tokensPerSecond: tokens / ((performance.now() - t0) / 1e3), stateBytes: h * d * d * 4 };
}

async function finish(pass, detail) {
  const line = `LIGHTNING-RESULT ${pass ? 'PASS' : 'FAIL'} ${detail}`.replace(/\s+/g, ' ').trim();
  console.log(line);
  $('verdict').className = pass ? 'pass' : 'fail';
  $('verdict').textContent = line;
  if (HOLD) {
    await new Promise((r) => setTimeout(r, 300));
    fetch(`/done?id=${HOLD_ID}`, { method: 'POST', body: line }).catch(() => {});
  }
}

async function main() {
  let la;
  try {
    la = await LightningAttention.create();
  } catch (e) {
    message(`Could not open WebGPU: ${text(e)}. This page needs a browser with WebGPU (Chrome or Edge; Firefox and Safari with it enabled).`, true);
    return finish(false, `no-webgpu ${text(e)}`);
  }
  const info = la.adapterInfo();
  results.adapter = info;
  showAdapter(info);
  const sizes = sizesFor(info);
  results.sizes = sizes;
  if (sizes.software) message(`${adapterName(info)} is a software adapter: the sizes are small, and the timings say nothing of a GPU.`);
  $('export').onclick = () => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([JSON.stringify(results, null, 2)], { type: 'application/json' }));
    a.download = 'lightning-wgpu-demo.json';
    a.click();
  };
  $('rerun').onclick = () => speed(la, sizes, $('dtype').value).catch((e) => message(text(e), true));
  $('generate').onclick = () => decodeToy(la, sizes.decodeTokens).catch((e) => message(text(e), true));
  let pass = false;
  try {
    pass = await check(la);
    if (params.get('auto') !== '0') {
      await speed(la, sizes, $('dtype').value);
      await sideBySide(la, sizes);
      await decodeToy(la, sizes.decodeTokens);
    }
  } catch (e) {
    message(text(e), true);
    return finish(false, text(e));
  }
  const c = results.check;
  return finish(pass, `forward=${c.forwardMaxRelErr.toExponential(1)} decode=${c.decodeMaxRelErr.toExponential(1)} ort=${results.ort?.available ?? 'not run'} adapter="${adapterName(info)}"`);
}

main();
