// Uses the package as a web developer would: forward (one head each and
// grouped), decode, checkpoints, drafts and an error
// case, each checked against a plain JS reference. The last line of the log
// is the verdict the test runner waits for.
import { LightningAttention, alibiSlopes } from 'lightning-wgpu';

const out = document.getElementById('log');
const log = (line) => {
  out.textContent += line + '\n';
  console.log(line);
};

// Deterministic inputs in [-0.5, 0.5).
function random(len, seed) {
  let x = (seed * 2654435761) >>> 0 || 1;
  return Float32Array.from({ length: len }, () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 4294967296 - 0.5;
  });
}

// o_i = scale q_i S_i with S_i = lambda S_{i-1} + k_i^T v_i, in f64, (b, h, n, *);
// with `every`, also the state after every that many rows, (b, h, n / every, d, e).
function reference(q, k, v, { b, h, n, d, e }, slopes, scale, every = 0) {
  const o = new Float64Array(b * h * n * e);
  const count = every ? Math.floor(n / every) : 0;
  const states = new Float64Array(b * h * count * d * e);
  for (let bh = 0; bh < b * h; bh++) {
    const lambda = Math.exp(-slopes[bh % h]);
    const S = new Float64Array(d * e);
    for (let i = 0; i < n; i++) {
      const row = bh * n + i;
      for (let x = 0; x < d; x++) {
        for (let y = 0; y < e; y++) S[x * e + y] = lambda * S[x * e + y] + k[row * d + x] * v[row * e + y];
      }
      for (let y = 0; y < e; y++) {
        let acc = 0;
        for (let x = 0; x < d; x++) acc += q[row * d + x] * S[x * e + y];
        o[row * e + y] = scale * acc;
      }
      if (every && (i + 1) % every === 0) states.set(S, (bh * count + (i + 1) / every - 1) * d * e);
    }
  }
  return { o, states };
}

function maxRelError(got, want) {
  let err = 0, peak = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    peak = Math.max(peak, Math.abs(want[i]));
  }
  return Number.isFinite(err) && peak > 0 ? err / peak : Infinity;
}

async function main() {
  const la = await LightningAttention.create();
  log(`adapter: ${la.adapterInfo().name}`);
  const failures = [];
  const dims = { b: 2, h: 3, n: 77, d: 12, e: 20 };
  const { b, h, n, d, e } = dims;
  const q = random(b * h * n * d, 1), k = random(b * h * n * d, 2), v = random(b * h * n * e, 3);
  const slopes = alibiSlopes(h);
  const want = reference(q, k, v, dims, slopes, 0.5).o;

  const { o } = await la.forward({ q, k, v, dims, slopes, scale: 0.5 });
  const fwdErr = maxRelError(o, want);
  log(`forward: max relative error ${fwdErr.toExponential(2)}`);
  if (!(o instanceof Float32Array) || !(fwdErr <= 1e-4)) failures.push('forward');

  // Grouped heads: q and o with two heads per kv head, as the kv heads repeated.
  const g = 2;
  const gq = random(b * h * g * n * d, 7);
  const repeat = (x, w) => {
    const out = new Float32Array(b * h * g * n * w);
    for (let bh = 0; bh < b * h * g; bh++) {
      const from = (Math.floor(bh / (h * g)) * h + Math.floor((bh % (h * g)) / g)) * n * w;
      out.set(x.subarray(from, from + n * w), bh * n * w);
    }
    return out;
  };
  const gSlopes = Array.from(slopes).flatMap((s) => Array(g).fill(s));
  const gWant = reference(gq, repeat(k, d), repeat(v, e), { ...dims, h: h * g }, gSlopes, 0.5).o;
  const grouped = await la.forward({ q: gq, k, v, dims: { ...dims, hq: h * g }, slopes, scale: 0.5 });
  const gErr = maxRelError(grouped.o, gWant);
  log(`grouped heads (${h * g} q heads over ${h}): max relative error ${gErr.toExponential(2)}`);
  if (grouped.o.length !== gWant.length || !(gErr <= 1e-4)) failures.push('grouped heads');

  // One grouped decoding step from empty states: o = scale q (k^T v), each
  // kv head's state read by its two q heads and updated once.
  {
    const gc = la.stateCache({ slots: 2, heads: h, d, e });
    const [sq, sk, sv] = [random(b * h * g * d, 8), random(b * h * d, 9), random(b * h * e, 10)];
    const so = await la.decodeStep({ q: sq, k: sk, v: sv, cache: gc, slots: [1, 0], dims: { batch: b, h, d, e, hq: h * g }, slopes, scale: 0.5 });
    const sWant = new Float64Array(b * h * g * e);
    for (let r = 0; r < b; r++) {
      for (let head = 0; head < h * g; head++) {
        const kv = r * h + Math.floor(head / g);
        let qk = 0;
        for (let x = 0; x < d; x++) qk += sq[(r * h * g + head) * d + x] * sk[kv * d + x];
        for (let y = 0; y < e; y++) sWant[(r * h * g + head) * e + y] = 0.5 * qk * sv[kv * e + y];
      }
    }
    const sErr = maxRelError(so, sWant);
    log(`grouped decode: max relative error ${sErr.toExponential(2)}`);
    if (so.length !== sWant.length || !(sErr <= 1e-4)) failures.push('grouped decode');
  }

  // Decode token by token through a state cache: request r in slot 2 - r.
  const cache = la.stateCache({ slots: 3, heads: h, d, e });
  const decoded = new Float32Array(b * h * n * e);
  for (let i = 0; i < n; i++) {
    const take = (x, w) => {
      const t = new Float32Array(b * h * w);
      for (let bh = 0; bh < b * h; bh++) t.set(x.subarray((bh * n + i) * w, (bh * n + i + 1) * w), bh * w);
      return t;
    };
    const step = await la.decodeStep({
      q: take(q, d), k: take(k, d), v: take(v, e), cache, slots: [2, 1],
      dims: { batch: b, h, d, e }, slopes, scale: 0.5,
    });
    for (let bh = 0; bh < b * h; bh++) decoded.set(step.subarray(bh * e, (bh + 1) * e), (bh * n + i) * e);
  }
  const decErr = maxRelError(decoded, want);
  log(`decode: max relative error ${decErr.toExponential(2)}`);
  if (!(decErr <= 1e-4)) failures.push('decode');

  // State checkpoints: the state after every blockRows positions.
  const every = la.adapterInfo().blockRows;
  const long = { b: 1, h: 2, n: 2 * every + 5, d: 8, e: 6 };
  const [lq, lk, lv] = [random(long.h * long.n * 8, 4), random(long.h * long.n * 8, 5), random(long.h * long.n * 6, 6)];
  const lref = reference(lq, lk, lv, long, alibiSlopes(2), 1, every);
  const withCk = await la.forward({ q: lq, k: lk, v: lv, dims: long, slopes: alibiSlopes(2), checkpointEvery: every });
  const ckErr = Math.max(maxRelError(withCk.checkpoints, lref.states), maxRelError(withCk.o, lref.o));
  log(`checkpoints every ${every}: ${withCk.checkpoints.length / 48} states, max relative error ${ckErr.toExponential(2)}`);
  if (withCk.checkpoints.length !== 2 * 2 * 48 || !(ckErr <= 1e-4)) failures.push('checkpoints');

  // A draft of up to 3 tokens for the two requests (3 and 2 of them), then
  // commit 2 and 1: the outputs and the kept states follow the recurrence.
  const t = 3;
  const draftCache = la.stateCache({ slots: 2, heads: h, d, e });
  const tokenMajor = (x, w) => {
    const out = new Float32Array(t * b * h * w);
    for (let i = 0; i < t; i++) {
      for (let bh = 0; bh < b * h; bh++) out.set(x.subarray((bh * n + i) * w, (bh * n + i + 1) * w), (i * b * h + bh) * w);
    }
    return out;
  };
  const { o: draftO, draft } = await la.decodeDraft({
    q: tokenMajor(q, d), k: tokenMajor(k, d), v: tokenMajor(v, e), cache: draftCache,
    slots: [0, 1], tokens: [3, 2], dims: { t, batch: b, h, d, e }, slopes, scale: 0.5,
  });
  let draftErr = 0;
  const kept = new Float64Array(b * h * d * e);
  for (let r = 0; r < b; r++) {
    const accepted = [2, 1][r];
    const part = { b: 1, h, n: [3, 2][r], d, e };
    const rows = (x, w) => {
      const out = new Float32Array(h * part.n * w);
      for (let hh = 0; hh < h; hh++) out.set(x.subarray(((r * h + hh) * n) * w, ((r * h + hh) * n + part.n) * w), hh * part.n * w);
      return out;
    };
    const ref = reference(rows(q, d), rows(k, d), rows(v, e), part, slopes, 0.5, accepted);
    for (let i = 0; i < part.n; i++) {
      for (let hh = 0; hh < h; hh++) {
        const got = draftO.subarray(((i * b + r) * h + hh) * e, ((i * b + r) * h + hh + 1) * e);
        const want = ref.o.subarray((hh * part.n + i) * e, (hh * part.n + i + 1) * e);
        draftErr = Math.max(draftErr, maxRelError(got, want));
      }
    }
    for (let hh = 0; hh < h; hh++) {
      const count = Math.floor(part.n / accepted);
      kept.set(ref.states.subarray((hh * count) * d * e, (hh * count + 1) * d * e), (r * h + hh) * d * e);
    }
  }
  await la.commitDraft(draft, [2, 1]);
  draft.dispose();
  const commitErr = maxRelError(await draftCache.read(), kept);
  log(`draft: outputs ${draftErr.toExponential(2)}, committed states ${commitErr.toExponential(2)}`);
  if (!(draftErr <= 1e-4) || !(commitErr <= 1e-4)) failures.push('draft');

  // A mismatched k is an Error that names it.
  try {
    await la.forward({ q, k: k.subarray(0, k.length - d), v, dims, slopes });
    failures.push('error case (no error)');
  } catch (err) {
    const ok = err instanceof Error && /`k`|k has|data/.test(err.message);
    log(`error case: ${err.message}`);
    if (!ok) failures.push('error case (message)');
  }
  log(failures.length ? `LIGHTNING-RESULT FAIL ${failures.join(', ')}` : 'LIGHTNING-RESULT PASS sample page');
}

main().catch((err) => log(`LIGHTNING-RESULT FAIL ${err?.message ?? err}`));
