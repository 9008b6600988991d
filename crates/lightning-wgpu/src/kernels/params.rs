//! The uniform blocks the kernels read, each declared once here: the Rust
//! struct the host writes and the WGSL struct the shaders read are made
//! from the same field list (and a test holds naga's layout of the WGSL
//! against the Rust offsets).

/// Declares a uniform block: a `#[repr(C)]` Pod struct, its WGSL text and
/// its field offsets. A field whose WGSL type is `""` is host-side padding
/// (WGSL rounds a struct's size up to its alignment by itself).
macro_rules! uniform_block {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $rty:ty => $wty:literal,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub $field: $rty,)*
        }

        impl $name {
            /// (name, WGSL type, byte offset) of every field.
            pub(crate) const FIELDS: &'static [(&'static str, &'static str, usize)] = &[
                $((stringify!($field), $wty, std::mem::offset_of!($name, $field)),)*
            ];

            /// The WGSL declaration of this block.
            pub(crate) fn wgsl() -> String {
                let mut s = format!("struct {} {{\n", stringify!($name));
                for (field, ty, _) in Self::FIELDS.iter().filter(|f| !f.1.is_empty()) {
                    s.push_str(&format!("    {field}: {ty},\n"));
                }
                s.push_str("}\n");
                s
            }
        }
    };
}

uniform_block! {
    /// What one dispatch of an attention kernel covers: `bh_count`
    /// consecutive (batch, head) pairs from `bh_start` and `rows` positions
    /// of the sequence. Tensor addresses are element offsets inside the bound
    /// window: strides (batch, head, row) and `base`, the element offset of
    /// the dispatch's origin in the window (wrapping: see `offset_of`).
    Params {
        heads: u32 => "u32",
        rows: u32 => "u32",
        dim_k: u32 => "u32",
        dim_v: u32 => "u32",
        blocks: u32 => "u32",
        bh_start: u32 => "u32",
        bh_count: u32 => "u32",
        b_first: u32 => "u32",
        /// (batch, head, row, base) of q, k, v and o.
        q_stride: [u32; 4] => "vec4<u32>",
        k_stride: [u32; 4] => "vec4<u32>",
        v_stride: [u32; 4] => "vec4<u32>",
        o_stride: [u32; 4] => "vec4<u32>",
        /// Element offset of bh_start's d x e state in the state window.
        state_base: u32 => "u32",
        /// 1 when the state window holds a state to start from.
        has_state: u32 => "u32",
        scale: f32 => "f32",
        /// The recurrent kernel finds states through the slot map.
        slotted: u32 => "u32",
        /// 32-bit word offset of the per-stripe states in the scratch.
        stripe_base: u32 => "u32",
        /// Rows of the segment's sequence, and where in it the segment starts.
        seq_rows: u32 => "u32",
        row_start: u32 => "u32",
        /// The state term reads its state transposed.
        transposed: u32 => "u32",
        /// 1: the stripe scan leaves the stripes' own states in place and
        /// writes only the carry out (a forward split at an exchange of
        /// states scans them again from the state it learns).
        scan_keeps: u32 => "u32",
        pad0: u32 => "",
        pad1: u32 => "",
        pad2: u32 => "",
    }
}

uniform_block! {
    /// One window of the output packing: `words` u32 words from `elements`
    /// f32 values (the last word may hold one); or, in mode 2, `elements`
    /// f32 values added into as many f32 words.
    PackJob {
        words: u32 => "u32",
        elements: u32 => "u32",
        /// 0: pack to f16, 1: pack to bf16, 2: add into f32.
        mode: u32 => "u32",
        /// Where the window's f32 elements start in their binding.
        wide_base: u32 => "u32",
        /// Where its words start in theirs.
        packed_base: u32 => "u32",
        pad0: u32 => "",
        pad1: u32 => "",
        pad2: u32 => "",
    }
}

uniform_block! {
    /// A map over `count` states of `rows x cols` from state `first` (state
    /// `i` of head `i % heads`): `out = x_factor X + y_factor Y`, with X
    /// read transposed when `transpose` is 1 and each factor
    /// `exp(-slope * steps) * scale` of its head (steps may be negative;
    /// steps 0 and scale 1 for
    /// none; `y_scale` 0 leaves Y out). The bases: the element offset of
    /// state `first` in each bound window.
    StateMap {
        heads: u32 => "u32",
        first: u32 => "u32",
        count: u32 => "u32",
        x_base: u32 => "u32",
        y_base: u32 => "u32",
        out_base: u32 => "u32",
        rows: u32 => "u32",
        cols: u32 => "u32",
        transpose: u32 => "u32",
        x_steps: i32 => "i32",
        x_scale: f32 => "f32",
        y_steps: i32 => "i32",
        y_scale: f32 => "f32",
        out_step: u32 => "u32",
        pad1: u32 => "",
        pad2: u32 => "",
    }
}
