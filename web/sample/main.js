// Uses the package as a web developer would: forward, decode and an error
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

// o_i = scale q_i S_i with S_i = lambda S_{i-1} + k_i^T v_i, in f64, (b, h, n, *).
function reference(q, k, v, { b, h, n, d, e }, slopes, scale) {
  const o = new Float64Array(b * h * n * e);
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
    }
  }
  return o;
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
  const want = reference(q, k, v, dims, slopes, 0.5);

  const { o } = await la.forward({ q, k, v, dims, slopes, scale: 0.5 });
  const fwdErr = maxRelError(o, want);
  log(`forward: max relative error ${fwdErr.toExponential(2)}`);
  if (!(o instanceof Float32Array) || !(fwdErr <= 1e-4)) failures.push('forward');

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
