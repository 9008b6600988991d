// Types of the lightning-wgpu ES module.

/** How elements are stored on the GPU. Arithmetic is always f32. */
export type DType = 'f32' | 'f16' | 'bf16';

/** `(b, h, n, d)` (the official kernel's) or `(b, n, h, d)` (FLA's). */
export type Layout = 'bhnd' | 'bnhd';

/** Host data: f32 values, or the 16-bit words of f16 / bf16 values. */
export type HostData = Float32Array | Uint16Array;

/** Sizes of a problem given as typed arrays. */
export interface Dims {
  b: number;
  h: number;
  n: number;
  /** Width of q and k. */
  d: number;
  /** Width of v and o (default: d). */
  e?: number;
  /** Sequences of a packed batch (with cuSeqlens): the states' first dimension. */
  N?: number;
  /** Heads of q and o when grouped: a multiple of `h`, the heads of k, v, the states and the slopes (default: h). */
  hq?: number;
}

export interface CreateOptions {
  /** Where lightning_wgpu_web_bg.wasm is, if not beside the module. */
  wasm?: string | URL | Response | BufferSource;
}

export interface AdapterInfo {
  name: string;
  vendor: string;
  backend: string;
  deviceType: string;
  blockRows: number;
  features: string[];
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
}

export interface ForwardArgs<T extends HostData | Tensor> {
  q: T;
  k: T;
  v: T;
  /** Required when q, k, v are typed arrays. */
  dims?: Dims;
  /** Per-head decay slopes s_h >= 0 (lambda = exp(-s_h)); none: no decay. */
  slopes?: ArrayLike<number>;
  /** Multiplies q (default 1, the official kernel's; FLA's is 1/sqrt(d)). */
  scale?: number;
  /** f32 `(b, h, d, e)`, or `(N, h, d, e)` with cuSeqlens. */
  initialState?: T extends Tensor ? Tensor : Float32Array | Tensor;
  outputFinalState?: boolean;
  layout?: Layout;
  /** Storage of typed-array inputs (default "f32"; a Uint16Array needs "f16" or "bf16"). */
  dtype?: DType;
  /** Packed variable-length batch: b = 1, sequence i is rows cuSeqlens[i]..cuSeqlens[i+1]. */
  cuSeqlens?: ArrayLike<number>;
  /** "chunk" (blockwise, the default) or "recurrent" (token by token). */
  method?: 'chunk' | 'recurrent';
  /** Keep the state after every that many positions (a multiple of `adapterInfo().blockRows`; chunk method). */
  checkpointEvery?: number;
}

export interface ForwardResult<T> {
  /** Shaped like v: Float32Array for f32, Uint16Array bits for f16/bf16 (or a Tensor for Tensor inputs). */
  o: T;
  /** f32 `(b, h, d, e)` when outputFinalState was set. */
  finalState?: T extends Tensor ? Tensor : Float32Array;
  /** With checkpointEvery: f32 `(b, h, floor(n / every), d, e)` (packed: `(C, h, d, e)`), state j after `(j + 1) * every` positions. */
  checkpoints?: T extends Tensor ? Tensor : Float32Array;
}

export interface DraftArgs<T extends HostData | Tensor> {
  /** `(t, batch, h, d)`, token-major. */
  q: T;
  k: T;
  /** `(t, batch, h, e)`. */
  v: T;
  cache: StateCache;
  /** One cache slot per request; negative: padding. */
  slots: ArrayLike<number>;
  /** Draft tokens per request, 0 to t (the rest of its rows is padding). */
  tokens: ArrayLike<number>;
  /** Required when q, k, v are typed arrays. */
  dims?: { t: number; batch: number; h: number; d: number; e: number };
  slopes?: ArrayLike<number>;
  scale?: number;
  dtype?: DType;
}

/** The per-token states of a decodeDraft, until commitDraft. */
export class Draft {
  readonly tokens: number[];
  /** Frees the per-token states now. */
  dispose(): void;
}

export interface DecodeArgs<T extends HostData | Tensor> {
  q: T;
  k: T;
  v: T;
  cache: StateCache;
  /** One cache slot per request; negative: padding (output zero, no state touched). */
  slots: ArrayLike<number>;
  /** Required when q, k, v are typed arrays; `hq`: q's heads when grouped (a multiple of h, the heads of k, v and the cache). */
  dims?: { batch: number; h: number; d: number; e: number; hq?: number };
  slopes?: ArrayLike<number>;
  scale?: number;
  dtype?: DType;
}

/** A tensor resident on the GPU. */
export class Tensor {
  readonly shape: number[];
  readonly dtype: DType;
  /** The values (half types widened exactly). */
  read(): Promise<Float32Array>;
  /** The 16-bit words of an f16 or bf16 tensor. */
  readBits(): Promise<Uint16Array>;
  /** Frees the GPU memory now. */
  dispose(): void;
}

/** Decoding states on the GPU, f32 `(slots, heads, d, e)`, starting at zero. */
export class StateCache {
  readonly shape: [number, number, number, number];
  readonly tensor: Tensor;
  /** Sets slot `slot` (and the next, for a batch of states) to `state`. */
  write(slot: number, state: Float32Array | Tensor, shape?: number[]): Promise<void>;
  reset(slot: number): Promise<void>;
  read(): Promise<Float32Array>;
  dispose(): void;
}

export class LightningAttention {
  /** Loads the wasm module (once) and opens the browser's WebGPU adapter. */
  static create(options?: CreateOptions): Promise<LightningAttention>;
  adapterInfo(): AdapterInfo;
  /** Uploads data once; pass the Tensor to calls to skip copies. */
  tensor(data: HostData | number[], shape: number[], dtype?: DType): Tensor;
  forward(args: ForwardArgs<Tensor>): Promise<ForwardResult<Tensor>>;
  forward(args: ForwardArgs<HostData>): Promise<ForwardResult<HostData>>;
  stateCache(args: { slots: number; heads: number; d: number; e: number }): StateCache;
  decodeStep(args: DecodeArgs<Tensor>): Promise<Tensor>;
  decodeStep(args: DecodeArgs<HostData>): Promise<HostData>;
  /** Up to t tokens per request without touching the cache; o is f32 `(t, batch, h, e)`. */
  decodeDraft(args: DraftArgs<Tensor>): Promise<{ o: Tensor; draft: Draft }>;
  decodeDraft(args: DraftArgs<HostData>): Promise<{ o: Float32Array; draft: Draft }>;
  /** Sets each request's slot to its state after its first `accepted[r]` draft tokens. */
  commitDraft(draft: Draft, accepted: ArrayLike<number>): Promise<void>;
  /** Causal softmax attention on resident `(b, h, n, d)` tensors (default scale 1/sqrt(d)). */
  softmaxAttention(args: { q: Tensor; k: Tensor; v: Tensor; scale?: number }): Promise<Tensor>;
  /** Resolves when the GPU has finished all work submitted so far. */
  synchronize(): Promise<void>;
}

/** The official kernel's per-head slopes (`_build_slope_tensor(h)`). */
export function alibiSlopes(h: number): number[];
