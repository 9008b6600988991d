// ONNX Runtime Web's LinearAttention, for the side-by-side: a one-node model
// written as protobuf bytes here (the page has no onnx package), run on the
// WebGPU execution provider.

const utf8 = new TextEncoder();

function varint(value) {
  let v = BigInt(value);
  const out = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v) byte |= 0x80;
    out.push(byte);
  } while (v);
  return out;
}

function join(parts) {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// Protobuf fields: wire type 0 (varint), 2 (bytes), 5 (32-bit float).
const key = (field, wire) => varint((field << 3) | wire);
const int = (field, v) => Uint8Array.from([...key(field, 0), ...varint(v)]);
const bytes = (field, b) => join([Uint8Array.from([...key(field, 2), ...varint(b.length)]), b]);
const str = (field, s) => bytes(field, utf8.encode(s));
function float(field, x) {
  const b = new Uint8Array(5);
  b.set(key(field, 5));
  new DataView(b.buffer).setFloat32(1, x, true);
  return b;
}

// onnx.proto: AttributeProto {name 1, f 2, i 3, s 4, type 20 (FLOAT 1, INT 2, STRING 3)}.
const attrFloat = (name, x) => join([str(1, name), float(2, x), int(20, 1)]);
const attrInt = (name, x) => join([str(1, name), int(3, x), int(20, 2)]);
const attrString = (name, s) => join([str(1, name), str(4, s), int(20, 3)]);

// ValueInfoProto {name 1, type 2}; TypeProto {tensor_type 1}; tensor {elem_type 1 (FLOAT 1), shape 2};
// TensorShapeProto {dim 1}; dimension {dim_value 1}.
function valueInfo(name, dims) {
  const shape = join(dims.map((d) => bytes(1, int(1, d))));
  return join([str(1, name), bytes(2, bytes(1, join([int(1, 1), bytes(2, shape)])))]);
}

/** The model bytes: o, present = LinearAttention(q, k, v, past = none, decay). */
export function linearAttentionModel({ t, h, d, e }) {
  // NodeProto {input 1, output 2, name 3, op_type 4, attribute 5, domain 7}.
  const node = join([
    ...['q', 'k', 'v', '', 'decay'].map((s) => str(1, s)),
    str(2, 'o'), str(2, 'present'), str(3, 'attention'), str(4, 'LinearAttention'),
    bytes(5, attrInt('q_num_heads', h)), bytes(5, attrInt('kv_num_heads', h)),
    bytes(5, attrString('update_rule', 'gated')), bytes(5, attrFloat('scale', 1.0)),
    str(7, 'com.microsoft'),
  ]);
  // GraphProto {node 1, name 2, input 11, output 12}.
  const graph = join([
    bytes(1, node), str(2, 'lightning'),
    bytes(11, valueInfo('q', [1, t, h * d])), bytes(11, valueInfo('k', [1, t, h * d])),
    bytes(11, valueInfo('v', [1, t, h * e])), bytes(11, valueInfo('decay', [1, t, h])),
    bytes(12, valueInfo('o', [1, t, h * e])), bytes(12, valueInfo('present', [1, h, d, e])),
  ]);
  // ModelProto {ir_version 1, producer_name 2, graph 7, opset_import 8 {domain 1, version 2}}.
  return join([
    int(1, 10), str(2, 'lightning-wgpu demo'), bytes(7, graph),
    bytes(8, int(2, 21)), bytes(8, join([str(1, 'com.microsoft'), int(2, 1)])),
  ]);
}

/** Loads onnxruntime-web's WebGPU build from ./ort/, or says why it cannot. */
export async function loadOrt() {
  const ort = await import('./ort/ort.webgpu.min.mjs');
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = 1;
  return ort;
}

/** A session for (1, t, h, d/e) on WebGPU; `run(q, k, v, decay)` resolves to o. */
export async function ortSession(ort, dims) {
  const session = await ort.InferenceSession.create(linearAttentionModel(dims), { executionProviders: ['webgpu'] });
  const { t, h, d, e } = dims;
  return {
    async run(q, k, v, decay) {
      const feeds = {
        q: new ort.Tensor('float32', q, [1, t, h * d]),
        k: new ort.Tensor('float32', k, [1, t, h * d]),
        v: new ort.Tensor('float32', v, [1, t, h * e]),
        decay: new ort.Tensor('float32', decay, [1, t, h]),
      };
      // The output comes back to the host, so the time includes the GPU work.
      const out = await session.run(feeds);
      return out.o.data;
    },
    release: () => session.release(),
  };
}
