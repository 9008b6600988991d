// What the tensor-core kernels share: their matrix types (16x16, f16
// operands, f32 accumulators) and the pairs of elements they read.

alias Acc = coop_mat16x16<f32, C>;
alias MatA = coop_mat16x16<f16, A>;
alias MatB = coop_mat16x16<f16, B>;

// A word of q, k or v as its two elements (the first in the low half):
// the tensor-core kernels read f16 two to a word as they read bf16, and
// every row starts on an even element (d and e are multiples of 16 there,
// windows start on whole words). Held as loaded, converted when stored.
fn pair_of(w: Stored) -> vec2<f32> {
    return vec2<f32>(widen(w, 0u), widen(w, 1u));
}

// The same pair in f16, converted together.
fn halves_of(w: Stored) -> vec2<f16> {
    return vec2<f16>(pair_of(w));
}
