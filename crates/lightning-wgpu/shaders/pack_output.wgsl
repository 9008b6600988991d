// Output packing, for half-precision storage: the passes write o in f32, and
// this pass packs it two elements to a u32 word (the even element in the low
// half), one invocation per word, so no two invocations ever share a word.
// f16 rounds to nearest even (pack2x16float); bf16 likewise (`to_bf16`).
// Mode 2 adds f32 values into f32 words instead, one invocation per word:
// how the members of grouped heads sum their gradients.
//
// Bindings: job (this window's counts), wide (f32, read), packed (words).

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let w = gid.x + gid.y * groups.x * 256u;
    if w >= job.words {
        return;
    }
    if job.mode == 2u {
        let at = job.packed_base + w;
        packed[at] = bitcast<u32>(bitcast<f32>(packed[at]) + wide[job.wide_base + w]);
        return;
    }
    let a = wide[job.wide_base + 2u * w];
    var b = 0.0;
    if 2u * w + 1u < job.elements {
        b = wide[job.wide_base + 2u * w + 1u];
    }
    if job.mode == 1u {
        packed[job.packed_base + w] = bf16_pair(a, b);
    } else {
        packed[job.packed_base + w] = pack2x16float(vec2<f32>(a, b));
    }
}
