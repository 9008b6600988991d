//! The WGSL kernels: their sources, and their specialisation to an adapter.
//!
//! Each pass lives in its own file under `shaders/`; `shaders/common.wgsl`
//! (parameters, addressing, decay) is prepended to each. Specialisation
//! rewrites the `const` lines marked `// specialise` in the common file, so
//! every file also validates as written, with the portable defaults.

use crate::error::{Error, Result};

const COMMON: &str = include_str!("../shaders/common.wgsl");

/// Blocks per stripe of the chunked forward: the block-state pass walks the
/// blocks of each stripe in order, stripes in parallel; the stripe scan
/// chains the stripes. On the H100 (b = 4, h = 32, n = 32K, d = e = 128)
/// 32 against 16 ran the f16 forward on the tensor cores in 10.86 against
/// 11.15 ms (scan 0.37 -> 0.15) and f32 in 20.28 against 20.40.
pub(crate) const STRIPE: usize = 32;

/// Widest d and e of the cooperative-matrix passes (their workgroup arrays
/// are sized for it).
pub const COOP_MAX_DIM: usize = 128;

/// Workgroup memory the cooperative-matrix passes declare, in bytes (blocks
/// of 64): the output pass's Q, masked scores and one staged slice (f16, rows
/// padded by 8 elements) and the f32 scores; the state pass's K and V (f16,
/// padded) and its 16 KiB of f32 tiles on their way to storage take less.
pub const COOP_WORKGROUP_BYTES: u32 = 2 * (64 * 136 + 64 * 72 + 32 * 136) + 4 * 64 * 32;

/// Invocations per workgroup of the widest cooperative-matrix pass (the
/// block-state pass: 32 subgroups of 32).
pub const COOP_MAX_INVOCATIONS: u32 = 1024;

/// One GPU pass of the blockwise algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The state each block starts from, counted from its stripe's start.
    BlockState,
    /// The scan over stripes that gives the state each stripe starts from.
    StateScan,
    /// Each block's output: masked `(Q K^T) (.) M` times `V`, plus
    /// `Lambda Q S_{t-1}` carried in from earlier blocks.
    BlockOutput,
    /// The token-by-token recurrence (decode, and the `recurrent` method).
    Recurrent,
    /// Causal softmax attention with an online softmax (the baseline).
    SoftmaxAttention,
    /// Packs an f32 output into f16 or bf16 words (no prelude).
    PackOutput,
    /// [`Pass::BlockState`] on cooperative matrices (tensor cores).
    BlockStateCoop,
    /// [`Pass::BlockOutput`] on cooperative matrices (tensor cores).
    BlockOutputCoop,
    /// Scales each head's state by `lambda scale` (the backward's dS0).
    ScaleStates,
}

impl Pass {
    /// Every pass.
    pub const ALL: [Pass; 9] = [
        Pass::BlockState,
        Pass::StateScan,
        Pass::BlockOutput,
        Pass::Recurrent,
        Pass::SoftmaxAttention,
        Pass::PackOutput,
        Pass::BlockStateCoop,
        Pass::BlockOutputCoop,
        Pass::ScaleStates,
    ];
    /// The passes of the chunked forward, in dispatch order.
    pub const CHUNK: [Pass; 3] = [Pass::BlockState, Pass::StateScan, Pass::BlockOutput];
    /// The chunked forward on cooperative matrices: f16 storage, d and e
    /// multiples of 16 up to [`COOP_MAX_DIM`], blocks of 64.
    pub const CHUNK_COOP: [Pass; 3] =
        [Pass::BlockStateCoop, Pass::StateScan, Pass::BlockOutputCoop];

    /// The pass's file stem under `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Pass::BlockState => "block_state",
            Pass::StateScan => "state_scan",
            Pass::BlockOutput => "block_output",
            Pass::Recurrent => "recurrent",
            Pass::SoftmaxAttention => "softmax_attention",
            Pass::PackOutput => "pack_output",
            Pass::BlockStateCoop => "block_state_coop",
            Pass::BlockOutputCoop => "block_output_coop",
            Pass::ScaleStates => "scale_states",
        }
    }

    /// The pass's own WGSL, without the common prelude.
    pub fn body(self) -> &'static str {
        match self {
            Pass::BlockState => include_str!("../shaders/block_state.wgsl"),
            Pass::StateScan => include_str!("../shaders/state_scan.wgsl"),
            Pass::BlockOutput => include_str!("../shaders/block_output.wgsl"),
            Pass::Recurrent => include_str!("../shaders/recurrent.wgsl"),
            Pass::SoftmaxAttention => include_str!("../shaders/softmax_attention.wgsl"),
            Pass::PackOutput => include_str!("../shaders/pack_output.wgsl"),
            Pass::BlockStateCoop => include_str!("../shaders/block_state_coop.wgsl"),
            Pass::BlockOutputCoop => include_str!("../shaders/block_output_coop.wgsl"),
            Pass::ScaleStates => include_str!("../shaders/scale_states.wgsl"),
        }
    }

    /// Whether the pass uses cooperative matrices: it needs
    /// EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16, translates to SPIR-V
    /// only, and is specialised for blocks of 64 and f16 storage.
    pub fn cooperative(self) -> bool {
        matches!(self, Pass::BlockStateCoop | Pass::BlockOutputCoop)
    }

    /// The source lines a pass needs before everything else.
    pub fn enables(self, storage: Storage) -> &'static str {
        if self.cooperative() {
            "enable f16;\nenable wgpu_cooperative_matrix;\n"
        } else if storage == Storage::F16Native {
            "enable f16;\n"
        } else {
            ""
        }
    }

    /// Whether the pass is compiled after `shaders/common.wgsl`.
    pub fn uses_prelude(self) -> bool {
        self != Pass::PackOutput
    }
}

/// How q, k and v are stored, as the kernels read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// `array<f32>`.
    F32,
    /// `array<f16>` with `enable f16;` (adapters with SHADER_F16).
    F16Native,
    /// f16 two to a `u32`, read with `unpack2x16float` (every WebGPU device).
    F16Packed,
    /// bf16 two to a `u32`, widened by a shift.
    Bf16,
}

impl Storage {
    /// Every storage, for tests that compile all variants.
    pub const ALL: [Storage; 4] = [
        Storage::F32,
        Storage::F16Native,
        Storage::F16Packed,
        Storage::Bf16,
    ];

    /// Half-precision storage, what the cooperative-matrix passes read: f16,
    /// and bf16, whose values convert to f16 exactly inside f16's range
    /// (8 bits of mantissa fit in 11; magnitudes from 2^-14 to 65504), and
    /// overflow to infinity beyond it.
    pub fn is_half(self) -> bool {
        self != Storage::F32
    }

    /// Whether the tensor-core output pass stores o in this storage itself
    /// (native f16, and bf16 two to a word), not in f32 for a packing pass.
    /// The host plans and binds the output by the same answer.
    pub fn coop_writes_output(self) -> bool {
        matches!(self, Storage::F16Native | Storage::Bf16)
    }

    /// The three specialised lines of the prelude: word type, log2 of the
    /// elements per word, and the widening of element `i` of word `w`.
    fn lines(self) -> [&'static str; 3] {
        match self {
            Storage::F32 => ["alias Stored = f32;", "const PACK: u32 = 0u;", "fn widen(w: Stored, i: u32) -> f32 { return w; }"],
            Storage::F16Native => {
                ["alias Stored = f16;", "const PACK: u32 = 0u;", "fn widen(w: Stored, i: u32) -> f32 { return f32(w); }"]
            }
            Storage::F16Packed => [
                "alias Stored = u32;",
                "const PACK: u32 = 1u;",
                "fn widen(w: Stored, i: u32) -> f32 { return unpack2x16float(w)[i & 1u]; }",
            ],
            Storage::Bf16 => [
                "alias Stored = u32;",
                "const PACK: u32 = 1u;",
                "fn widen(w: Stored, i: u32) -> f32 { return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u)); }",
            ],
        }
    }
}

/// Tile sizes the kernels are compiled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// Rows per block, and the width of output tiles. 32 or 64.
    pub tile: u32,
    /// Reduction depth staged through workgroup memory per step.
    pub chunk: u32,
}

impl KernelConfig {
    /// Tile sizes WGSL allows: each thread owns a 4x4 tile, so a TILE x TILE
    /// tile takes (TILE/4)^2 invocations.
    pub const TILES: [u32; 2] = [32, 64];

    /// Invocations per workgroup.
    pub fn threads(self) -> u32 {
        (self.tile / 4) * (self.tile / 4)
    }

    /// Workgroup memory the largest pass declares, in bytes.
    pub fn workgroup_bytes(self) -> u32 {
        // Block output: CHUNK x (TILE + 4) and CHUNK x (2 TILE + 4) staging
        // tiles plus the TILE x TILE scores. Recurrent: a vec4 per
        // invocation and a slot.
        let output = 4 * (self.chunk * (3 * self.tile + 8) + self.tile * self.tile);
        let recurrent = 16 * self.threads() + 4;
        // Softmax: the output pass's tiles plus three f32 per row.
        let softmax = output + 12 * self.tile;
        output.max(recurrent).max(softmax)
    }

    /// Reduction depths the kernels can stage (rows of `d` per step).
    pub const CHUNKS: [u32; 3] = [8, 16, 32];

    /// The configuration for these limits: the requested tile and depth,
    /// else the largest tile that fits with a depth of 8 (on the H100, depth
    /// 8 / 16 / 32 ran the forward in 44.3 / 46.5 / 60.9 ms:
    /// docs/results/chunk/).
    pub fn for_limits(
        limits: &wgpu::Limits,
        tile: Option<u32>,
        chunk: Option<u32>,
    ) -> Result<Self> {
        let fits = |c: KernelConfig| {
            c.threads() <= limits.max_compute_invocations_per_workgroup
                && c.threads() <= limits.max_compute_workgroup_size_x
                && c.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        };
        let chunk = chunk.unwrap_or(8);
        if !Self::CHUNKS.contains(&chunk) {
            return Err(Error::InvalidValue {
                arg: "chunk",
                value: chunk.to_string(),
                reason: "must be 8, 16 or 32",
            });
        }
        let too_large = |arg: &'static str, value: u32| Error::InvalidValue {
            arg,
            value: value.to_string(),
            reason: "too large for this adapter's workgroup limits",
        };
        match tile {
            Some(t) => {
                if !Self::TILES.contains(&t) {
                    return Err(Error::InvalidValue {
                        arg: "tile",
                        value: t.to_string(),
                        reason: "must be 32 or 64",
                    });
                }
                let c = KernelConfig { tile: t, chunk };
                if fits(c) {
                    Ok(c)
                } else {
                    Err(too_large("tile", t))
                }
            }
            None => Self::TILES
                .iter()
                .rev()
                .map(|&tile| KernelConfig { tile, chunk })
                .find(|&c| fits(c))
                .ok_or(too_large("chunk", chunk)),
        }
    }
}

impl Default for KernelConfig {
    /// The defaults written in `shaders/common.wgsl`.
    fn default() -> Self {
        KernelConfig { tile: 64, chunk: 8 }
    }
}

/// The complete WGSL of `pass` specialised to `config` and to the storage
/// of q, k and v: the common prelude with its marked lines rewritten, then
/// the pass.
pub fn wgsl(pass: Pass, config: KernelConfig, storage: Storage) -> String {
    if !pass.uses_prelude() {
        return pass.body().to_string();
    }
    let mut out = String::with_capacity(COMMON.len() + pass.body().len() + 64);
    out.push_str(pass.enables(storage));
    // The tensor-core passes read native f16 two to a word, as packed f16
    // (see `pair_of` and `halves_of` in their shaders).
    let words = if pass.cooperative() && storage == Storage::F16Native {
        Storage::F16Packed
    } else {
        storage
    };
    let [word, pack, widen] = words.lines();
    for line in COMMON.lines() {
        if !line.contains("// specialise") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let head = line.split(':').next().unwrap_or_default().trim();
        let new = match head {
            "const TILE" => format!("const TILE: u32 = {}u;", config.tile),
            "const CHUNK" => format!("const CHUNK: u32 = {}u;", config.chunk),
            "const THREADS" => format!("const THREADS: u32 = {}u;", config.threads()),
            "const STRIPE" => format!("const STRIPE: u32 = {STRIPE}u;"),
            "const PACK" => pack.to_string(),
            _ if head.starts_with("alias Stored") => word.to_string(),
            _ if head.starts_with("fn widen") => widen.to_string(),
            // An unknown marker is kept as written; the shader tests compile
            // every specialisation, so a typo cannot ship.
            _ => line.to_string(),
        };
        out.push_str(&new);
        out.push_str(" // specialised\n");
    }
    if pass == Pass::BlockOutputCoop && storage.coop_writes_output() {
        // This pass writes o itself (see `Out` in the pass): f16, or bf16
        // two to a word.
        let body = if storage == Storage::Bf16 {
            pass.body()
                .replace("alias Out = f32;", "alias Out = u32;")
                .replace("const OUT_BF16: u32 = 0u;", "const OUT_BF16: u32 = 1u;")
        } else {
            pass.body().replace("alias Out = f32;", "alias Out = f16;")
        };
        out.push_str(&body);
    } else {
        out.push_str(pass.body());
    }
    out
}
