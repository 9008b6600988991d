// Half-precision words: bf16 rounding, and pairs of elements.

// The bf16 bits of x, rounded to nearest even, NaN kept a quiet NaN.
fn to_bf16(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (bits & 0x7fffffffu) > 0x7f800000u {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

// Two f32 values as one word of bf16 (the first in the low half).
fn bf16_pair(a: f32, b: f32) -> u32 {
    return to_bf16(a) | (to_bf16(b) << 16u);
}
