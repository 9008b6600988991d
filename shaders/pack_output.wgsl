// Output packing, for half-precision storage: the passes write o in f32, and
// this pass packs it two elements to a u32 word (the even element in the low
// half), one invocation per word, so no two invocations ever share a word.
// f16 rounds to nearest even (pack2x16float); bf16 rounds to nearest even by
// integer arithmetic, with NaN kept a quiet NaN. Stands alone: no prelude.

struct Job {
    words: u32,    // words to write in this dispatch
    elements: u32, // f32 elements to read (2 * words, or one less)
    bf16: u32,     // 1: bf16, 0: f16
    _pad: u32,
}

@group(0) @binding(0) var<uniform> job: Job;
@group(0) @binding(1) var<storage, read> wide: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let w = gid.x + gid.y * groups.x * 256u;
    if w >= job.words {
        return;
    }
    let a = wide[2u * w];
    var b = 0.0;
    if 2u * w + 1u < job.elements {
        b = wide[2u * w + 1u];
    }
    if job.bf16 != 0u {
        packed[w] = to_bf16(a) | (to_bf16(b) << 16u);
    } else {
        packed[w] = pack2x16float(vec2<f32>(a, b));
    }
}

fn to_bf16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (bits & 0x7fffffffu) > 0x7f800000u {
        return (bits >> 16u) | 0x40u; // NaN: keep the sign, force quiet
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}
