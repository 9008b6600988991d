// lightning-wgpu: Lightning Attention on the browser's WebGPU.
//
// An ES module over the wasm build (lightning_wgpu_web.js). Typed arrays go in
// and come out; tensors made with `la.tensor(...)` stay on the GPU between
// calls. Every failure is thrown (or rejected) as an `Error` whose message
// names the argument at fault.

import init, { open } from './lightning_wgpu_web.js';

let loading = null;

function load(wasm) {
  if (!loading) loading = init(wasm === undefined ? undefined : { module_or_path: wasm });
  return loading;
}

const DTYPES = { f32: 'f32', float32: 'f32', f16: 'f16', float16: 'f16', bf16: 'bf16', bfloat16: 'bf16' };

function dtypeOf(name, arg) {
  const d = DTYPES[name ?? 'f32'];
  if (!d) throw new TypeError(`\`${arg}\`: dtype "${name}" is not one of "f32", "f16", "bf16"`);
  return d;
}

function asError(e) {
  if (e instanceof Error) return e;
  return new Error(typeof e === 'string' ? e : String(e?.message ?? e));
}

async function guard(promise) {
  try {
    return await promise;
  } catch (e) {
    throw asError(e);
  }
}

function count(shape) {
  return shape.reduce((a, x) => a * x, 1);
}

/** A tensor resident on the GPU. Release it with `dispose()` when done. */
export class Tensor {
  /** @internal */
  constructor(native) {
    this.native = native;
  }

  /** The dimensions, outermost first. */
  get shape() {
    return Array.from(this.native.shape);
  }

  /** How elements are stored: "f32", "f16" or "bf16". */
  get dtype() {
    return this.native.dtype;
  }

  /** The values as a Float32Array (half types widened exactly). */
  read() {
    return guard(this.native.read());
  }

  /** The 16-bit words of an f16 or bf16 tensor. */
  readBits() {
    return guard(this.native.readBits());
  }

  /** Frees the GPU memory now (otherwise when garbage-collected). */
  dispose() {
    this.native.free();
  }
}

/** Decoding states on the GPU: `slots` states of `(heads, d, e)` in f32. */
export class StateCache {
  /** @internal */
  constructor(la, slots, heads, d, e) {
    this.la = la;
    this.shape = [slots, heads, d, e];
    this.tensor = la.tensor(new Float32Array(slots * heads * d * e), this.shape);
  }

  /** Sets slot `slot` (and the next ones, for a batch of states) to `state`; resolves when recorded. */
  async write(slot, state, shape) {
    const per = count(this.shape.slice(1));
    const t = state instanceof Tensor ? state : this.la.tensor(state, shape ?? [state.length / per, ...this.shape.slice(1)]);
    try {
      if (t.dtype !== 'f32') throw new TypeError(`a state must be f32, got ${t.dtype}`);
      const n = t.shape.reduce((a, x) => a * x, 1);
      if (n % per !== 0) throw new Error(`a state of ${n} elements is not a whole number of (heads, d, e) = ${this.shape.slice(1)} states`);
      if (!Number.isInteger(slot) || slot < 0 || slot + n / per > this.shape[0]) {
        throw new Error(`slots ${slot}..${slot + n / per} are outside the cache's ${this.shape[0]}`);
      }
      await guard(this.la.engine.copyInto(t.native, this.tensor.native, slot * per));
    } finally {
      if (!(state instanceof Tensor)) t.dispose();
    }
  }

  /** Zeroes slot `slot`. */
  reset(slot) {
    return this.write(slot, new Float32Array(count(this.shape.slice(1))));
  }

  /** Every state, as a Float32Array `(slots, heads, d, e)`. */
  read() {
    return this.tensor.read();
  }

  dispose() {
    this.tensor.dispose();
  }
}

/** The per-token states of a `decodeDraft`, until `commitDraft` (or `dispose`). */
export class Draft {
  /** @internal */
  constructor(native, cache) {
    this.native = native;
    this.cache = cache;
  }
  /** The draft tokens of each request. */
  get tokens() {
    return Array.from(this.native.tokens);
  }
  /** Frees the per-token states now (otherwise when garbage-collected). */
  dispose() {
    this.native.free();
  }
}

/** The official kernel's slopes for `h` heads (`_build_slope_tensor`). */
export function alibiSlopes(h) {
  if (!Number.isInteger(h) || h < 1) throw new Error(`alibiSlopes: h = ${h} must be a positive integer`);
  const pow2 = (n) => Array.from({ length: n }, (_, i) => 2 ** ((-8 * (i + 1)) / n));
  const p = 2 ** Math.floor(Math.log2(h));
  if (p === h) return pow2(h);
  return pow2(p).concat(pow2(2 * p).filter((_, i) => i % 2 === 0).slice(0, h - p));
}

/** Lightning Attention on one WebGPU device. */
export class LightningAttention {
  /** @internal */
  constructor(engine) {
    this.engine = engine;
  }

  /**
   * Loads the wasm module (once) and opens the browser's WebGPU adapter.
   * `options.wasm`: where lightning_wgpu_web_bg.wasm lives, if not beside this
   * module (a URL, a Response or the bytes).
   */
  static async create(options = {}) {
    if (typeof navigator !== 'undefined' && !navigator.gpu) {
      throw new Error('WebGPU is not available in this browser (navigator.gpu is undefined)');
    }
    await guard(load(options.wasm));
    return new LightningAttention(await guard(open()));
  }

  /** What the adapter is: name, backend, features, limits. */
  adapterInfo() {
    return this.engine.adapterInfo();
  }

  /**
   * Uploads `data` (Float32Array, or Uint16Array of f16/bf16 bits) of
   * `shape`, stored as `dtype` (default: "f32" for Float32Array; a
   * Uint16Array needs "f16" or "bf16"). Returns a resident Tensor.
   */
  tensor(data, shape, dtype) {
    if (!Array.isArray(shape) || !shape.every((x) => Number.isInteger(x) && x >= 0)) {
      throw new TypeError(`tensor: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    try {
      if (data instanceof Uint16Array) {
        if (dtype === undefined || dtypeOf(dtype, 'dtype') === 'f32') {
          throw new TypeError('tensor: a Uint16Array holds f16 or bf16 bits: say which with dtype "f16" or "bf16"');
        }
        return new Tensor(this.engine.tensorBits(data, Uint32Array.from(shape), dtypeOf(dtype, 'dtype')));
      }
      if (data instanceof Float32Array || Array.isArray(data) || data instanceof Float64Array) {
        const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
        return new Tensor(this.engine.tensorF32(f32, Uint32Array.from(shape), dtypeOf(dtype, 'dtype')));
      }
    } catch (e) {
      throw asError(e);
    }
    throw new TypeError(`tensor: data must be a Float32Array or a Uint16Array, got ${data?.constructor?.name ?? typeof data}`);
  }

  /** @internal A Tensor for an argument, and whether it was made here. */
  input(x, shape, dtype, arg) {
    if (x instanceof Tensor) return [x, false];
    if (x === undefined || x === null) throw new TypeError(`\`${arg}\` is missing`);
    if (!shape) throw new TypeError(`\`${arg}\` is a ${x.constructor?.name ?? typeof x}: give \`dims\` ({ b, h, n, d, e }) with typed arrays`);
    return [this.tensor(x, shape, dtype), true];
  }

  /**
   * Lightning Attention: `o_i = sum_{j<=i} exp(-s_h (i-j)) (scale q_i . k_j) v_j`.
   *
   * q, k `(b, h, n, d)` and v `(b, h, n, e)` (or `(b, n, h, *)` with
   * layout "bnhd"): Tensors, or typed arrays with `dims: { b, h, n, d, e }`.
   * Grouped heads: q with `hq`, a multiple of `h` heads (`dims.hq`), o too;
   * slopes and states per kv head.
   * Resolves to `{ o, finalState }`, typed arrays for typed-array inputs
   * (Float32Array for f32, Uint16Array bits for f16 and bf16), Tensors for
   * Tensor inputs; `finalState` (f32 `(b, h, d, e)`) only with
   * `outputFinalState`.
   */
  async forward({ q, k, v, dims, slopes, scale = 1, initialState, outputFinalState = false, layout = 'bhnd', dtype, cuSeqlens, method = 'chunk', checkpointEvery } = {}) {
    if (checkpointEvery !== undefined && checkpointEvery !== null && !(Number.isInteger(checkpointEvery) && checkpointEvery > 0)) {
      throw new TypeError(`forward: checkpointEvery = ${checkpointEvery} must be a positive integer (a multiple of adapterInfo().blockRows)`);
    }
    const shapes = dims ? shapesOf(dims, layout) : {};
    const made = [];
    const use = (x, shape, arg, dt) => {
      const [t, fresh] = this.input(x, shape, dt, arg);
      if (fresh) made.push(t);
      return t;
    };
    try {
      const qt = use(q, shapes.q, 'q', dtype);
      const kt = use(k, shapes.k, 'k', dtype);
      const vt = use(v, shapes.v, 'v', dtype);
      const s0 = initialState === undefined || initialState === null ? undefined : use(initialState, shapes.state, 'initialState', 'f32');
      const rest = [
        slopes === undefined || slopes === null ? undefined : Float32Array.from(slopes),
        scale, layout, outputFinalState,
        cuSeqlens === undefined || cuSeqlens === null ? undefined : Uint32Array.from(cuSeqlens),
        method,
        checkpointEvery ?? undefined,
      ];
      const [o, sn, ck] = await guard(
        s0 === undefined
          ? this.engine.forward(qt.native, kt.native, vt.native, ...rest)
          : this.engine.forwardFrom(qt.native, kt.native, vt.native, s0.native, ...rest),
      );
      const asTensors = q instanceof Tensor;
      return {
        o: asTensors ? new Tensor(o) : await this.out(new Tensor(o)),
        finalState: sn === undefined ? undefined : asTensors ? new Tensor(sn) : await this.out(new Tensor(sn)),
        checkpoints: ck === undefined ? undefined : asTensors ? new Tensor(ck) : await this.out(new Tensor(ck)),
      };
    } finally {
      for (const t of made) t.dispose();
    }
  }

  /** @internal A typed array of a fresh result, which is then freed. */
  async out(t) {
    try {
      return t.dtype === 'f32' ? await t.read() : await t.readBits();
    } finally {
      t.dispose();
    }
  }

  /** A state cache for `decodeStep`: `{ slots, heads, d, e }`. */
  stateCache({ slots, heads, d, e }) {
    for (const [name, x] of Object.entries({ slots, heads, d, e })) {
      if (!Number.isInteger(x) || x < 1) throw new TypeError(`stateCache: ${name} = ${x} must be a positive integer`);
    }
    return new StateCache(this, slots, heads, d, e);
  }

  /**
   * One new token for each of a batch of requests: q, k `(batch, h, d)`, v
   * `(batch, h, e)` (typed arrays need `dims: { batch, h, d, e }`); request
   * `r` reads and updates `cache` slot `slots[r]` in place (a negative slot
   * is padding). Resolves to o `(batch, h, e)`, typed array or Tensor as q.
   * Grouped heads: q (and o) with `dims.hq` heads, a multiple of h.
   */
  async decodeStep({ q, k, v, cache, slots, dims, slopes, scale = 1, dtype } = {}) {
    if (!(cache instanceof StateCache)) throw new TypeError('decodeStep: `cache` must be a StateCache (la.stateCache(...))');
    if (!slots || typeof slots.length !== 'number') throw new TypeError('decodeStep: `slots` must be an array of integers');
    const made = [];
    const use = (x, shape, arg) => {
      const [t, fresh] = this.input(x, shape, dtype, arg);
      if (fresh) made.push(t);
      return t;
    };
    const qs = dims && [dims.batch, dims.hq ?? dims.h, dims.d];
    const ks = dims && [dims.batch, dims.h, dims.d];
    const vs = dims && [dims.batch, dims.h, dims.e];
    try {
      const o = await guard(
        this.engine.decodeStep(
          use(q, qs, 'q').native, use(k, ks, 'k').native, use(v, vs, 'v').native,
          cache.tensor.native, Int32Array.from(slots),
          slopes === undefined || slopes === null ? undefined : Float32Array.from(slopes), scale,
        ),
      );
      return q instanceof Tensor ? new Tensor(o) : await this.out(new Tensor(o));
    } finally {
      for (const t of made) t.dispose();
    }
  }

  /**
   * Up to `t` tokens for each of a batch of requests, without touching the
   * cache (speculative verify): q, k `(t, batch, h, d)`, v `(t, batch, h, e)`,
   * token-major (typed arrays need `dims: { t, batch, h, d, e }`); request `r`
   * uses its first `tokens[r]` tokens from slot `slots[r]`. Resolves to
   * `{ o, draft }`: o `(t, batch, h, e)` in f32 (Float32Array, or a Tensor
   * for Tensor inputs), and the Draft to pass to `commitDraft`.
   */
  async decodeDraft({ q, k, v, cache, slots, tokens, dims, slopes, scale = 1, dtype } = {}) {
    if (!(cache instanceof StateCache)) throw new TypeError('decodeDraft: `cache` must be a StateCache (la.stateCache(...))');
    if (!slots || typeof slots.length !== 'number') throw new TypeError('decodeDraft: `slots` must be an array of integers');
    if (!tokens || typeof tokens.length !== 'number' || !Array.from(tokens).every((t) => Number.isInteger(t) && t >= 0)) {
      throw new TypeError('decodeDraft: `tokens` must be an array of non-negative integers, one per request');
    }
    const made = [];
    const use = (x, shape, arg) => {
      const [t, fresh] = this.input(x, shape, dtype, arg);
      if (fresh) made.push(t);
      return t;
    };
    const qk = dims && [dims.t, dims.batch, dims.h, dims.d];
    const vs = dims && [dims.t, dims.batch, dims.h, dims.e];
    try {
      const [o, draft] = await guard(
        this.engine.decodeDraft(
          use(q, qk, 'q').native, use(k, qk, 'k').native, use(v, vs, 'v').native,
          cache.tensor.native, Int32Array.from(slots), Uint32Array.from(tokens),
          slopes === undefined || slopes === null ? undefined : Float32Array.from(slopes), scale,
        ),
      );
      return {
        o: q instanceof Tensor ? new Tensor(o) : await this.out(new Tensor(o)),
        draft: new Draft(draft, cache),
      };
    } finally {
      for (const t of made) t.dispose();
    }
  }
  /**
   * Keeps what a draft's requests accepted: slot `slots[r]` of the draft's
   * cache becomes request r's state after its first `accepted[r]` tokens
   * (0: unchanged). Resolves when recorded.
   */
  commitDraft(draft, accepted) {
    if (!(draft instanceof Draft)) throw new TypeError('commitDraft: `draft` must come from decodeDraft');
    if (!accepted || typeof accepted.length !== 'number' || !Array.from(accepted).every((t) => Number.isInteger(t) && t >= 0)) {
      throw new TypeError('commitDraft: `accepted` must be an array of non-negative integers, one per request');
    }
    return guard(this.engine.commitDraft(draft.cache.tensor.native, draft.native, Uint32Array.from(accepted)));
  }
  /** Causal softmax attention on resident `(b, h, n, d)` tensors: the quadratic baseline. */
  async softmaxAttention({ q, k, v, scale }) {
    for (const [arg, x] of Object.entries({ q, k, v })) {
      if (!(x instanceof Tensor)) throw new TypeError(`softmaxAttention: \`${arg}\` must be a Tensor`);
    }
    const d = q.shape[3];
    return new Tensor(await guard(this.engine.softmaxAttention(q.native, k.native, v.native, scale ?? 1 / Math.sqrt(d))));
  }

  /** Resolves when the GPU has finished all work submitted so far. */
  synchronize() {
    return guard(this.engine.synchronize());
  }
}

function shapesOf({ b, h, n, d, e, N, hq }, layout) {
  const e_ = e ?? d;
  const shape = (w, heads = h) => (layout === 'bnhd' ? [b, n, heads, w] : [b, heads, n, w]);
  return { q: shape(d, hq ?? h), k: shape(d), v: shape(e_), state: [N ?? b, h, d, e_] };
}
