//! The one specialisation model of the WGSL: a [`KernelSpec`] names
//! everything a kernel is compiled with and renders its prelude. Kernel
//! files declare no bindings and no tuning constants of their own; they use
//! what the prelude defines.

use super::params::{PackJob, Params, StateMap};
use super::{Elem, Kernel, Slot};
use crate::error::{Error, Result};

/// Blocks per stripe of the chunked forward: the block-state pass walks the
/// blocks of a stripe in order, stripes in parallel; the stripe scan chains
/// the stripes.
pub(crate) const STRIPE: u32 = 32;

/// How q, k and v are stored, as the kernels read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Storage {
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
    #[cfg(test)]
    pub(crate) const ALL: [Storage; 4] = [
        Storage::F32,
        Storage::F16Native,
        Storage::F16Packed,
        Storage::Bf16,
    ];

    /// f16 or bf16.
    pub(crate) fn is_half(self) -> bool {
        self != Storage::F32
    }

    fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16Native => "f16",
            Storage::F16Packed => "f16-packed",
            Storage::Bf16 => "bf16",
        }
    }

    /// The word type, log2 of the elements per word, and the widening of
    /// element `i` of word `w` to f32.
    fn prelude(self) -> &'static str {
        match self {
            Storage::F32 => {
                "alias Stored = f32;\nconst PACK: u32 = 0u;\nfn widen(w: Stored, i: u32) -> f32 { return w; }\n"
            }
            Storage::F16Native => {
                "alias Stored = f16;\nconst PACK: u32 = 0u;\nfn widen(w: Stored, i: u32) -> f32 { return f32(w); }\n"
            }
            Storage::F16Packed => {
                "alias Stored = u32;\nconst PACK: u32 = 1u;\nfn widen(w: Stored, i: u32) -> f32 { return unpack2x16float(w)[i & 1u]; }\n"
            }
            Storage::Bf16 => {
                "alias Stored = u32;\nconst PACK: u32 = 1u;\nfn widen(w: Stored, i: u32) -> f32 { return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u)); }\n"
            }
        }
    }
}

/// How a kernel stores a binding of element type `Out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OutStore {
    F32,
    /// Native f16 elements.
    F16,
    /// bf16 two to a u32 word, written a word at a time.
    Bf16Pairs,
}

impl OutStore {
    fn name(self) -> &'static str {
        match self {
            OutStore::F32 => "out-f32",
            OutStore::F16 => "out-f16",
            OutStore::Bf16Pairs => "out-bf16",
        }
    }
}

/// Rows per block and the reduction depth staged per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockConfig {
    /// Rows per block: 32 or 64. Also the width of the portable kernels'
    /// workgroup tiles (a thread owns 4x4 of a rows x rows tile).
    pub rows: u32,
    /// Rows of d staged through workgroup memory per step: 8, 16 or 32.
    pub depth: u32,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig { rows: 64, depth: 8 }
    }
}

impl BlockConfig {
    pub(crate) const ROWS: [u32; 2] = [32, 64];
    pub(crate) const DEPTHS: [u32; 3] = [8, 16, 32];

    /// Invocations per workgroup of the portable kernels.
    pub(crate) fn threads(self) -> u32 {
        (self.rows / 4) * (self.rows / 4)
    }

    /// Workgroup memory the largest portable kernel declares, in bytes.
    pub(crate) fn workgroup_bytes(self) -> u32 {
        // Block output: depth x (rows + 4) and depth x (2 rows + 4) staging
        // tiles plus the rows x rows scores. Recurrent: a vec4 per
        // invocation and a slot.
        let output = 4 * (self.depth * (3 * self.rows + 8) + self.rows * self.rows);
        let recurrent = 16 * self.threads() + 4;
        // Softmax: the output pass's tiles plus three f32 per row.
        let softmax = output + 12 * self.rows;
        output.max(recurrent).max(softmax)
    }

    /// The configuration for these limits: the requested rows and depth,
    /// else the largest block that fits with a depth of 8.
    pub(crate) fn for_limits(
        limits: &wgpu::Limits,
        rows: Option<u32>,
        depth: Option<u32>,
    ) -> Result<Self> {
        let fits = |c: BlockConfig| {
            c.threads() <= limits.max_compute_invocations_per_workgroup
                && c.threads() <= limits.max_compute_workgroup_size_x
                && c.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
        };
        let depth = depth.unwrap_or(8);
        if !Self::DEPTHS.contains(&depth) {
            return Err(Error::InvalidValue {
                arg: "depth",
                value: depth.to_string(),
                reason: "must be 8, 16 or 32",
            });
        }
        let too_large = |arg: &'static str, value: u32| Error::InvalidValue {
            arg,
            value: value.to_string(),
            reason: "too large for this adapter's workgroup limits",
        };
        match rows {
            Some(r) => {
                if !Self::ROWS.contains(&r) {
                    return Err(Error::InvalidValue {
                        arg: "block_rows",
                        value: r.to_string(),
                        reason: "must be 32 or 64",
                    });
                }
                let c = BlockConfig { rows: r, depth };
                if fits(c) {
                    Ok(c)
                } else {
                    Err(too_large("block_rows", r))
                }
            }
            None => Self::ROWS
                .iter()
                .rev()
                .map(|&rows| BlockConfig { rows, depth })
                .find(|&c| fits(c))
                .ok_or(too_large("depth", depth)),
        }
    }
}

/// Everything a kernel's source is specialised with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelSpec {
    pub kernel: Kernel,
    /// How its `Stored` bindings hold their elements.
    pub storage: Storage,
    pub config: BlockConfig,
    /// How its `Out` bindings hold their elements.
    pub out: OutStore,
    /// Bindings (bit i: binding i) the table reads but this call declares
    /// read_write, because their buffer is also written in the same dispatch
    /// (a caller's buffer holding an input and an output): WebGPU refuses
    /// one buffer bound read-only and writable in one dispatch.
    pub shared: u32,
}

impl KernelSpec {
    /// `kernel` reading `storage`, writing f32.
    pub(crate) fn new(kernel: Kernel, storage: Storage, config: BlockConfig) -> Self {
        KernelSpec {
            kernel,
            storage,
            config,
            out: OutStore::F32,
            shared: 0,
        }
    }

    /// This spec with the read bindings `names` declared read_write.
    pub(crate) fn sharing(mut self, names: &[&str]) -> Self {
        for (i, b) in self.kernel.bindings().iter().enumerate() {
            if matches!(b.slot, Slot::Read(_)) && names.contains(&b.name) {
                self.shared |= 1 << i;
            }
        }
        self
    }

    /// The pipeline cache's key: every field, readably.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}/{}/{}/b{}/d{}/s{:x}",
            self.kernel.name(),
            self.storage.name(),
            self.out.name(),
            self.config.rows,
            self.config.depth,
            self.shared
        )
    }

    fn needs_f16(&self) -> bool {
        self.kernel.tensor_cores()
            || self.storage == Storage::F16Native
            || self.out == OutStore::F16
            || self
                .kernel
                .bindings()
                .iter()
                .any(|b| matches!(b.slot, Slot::Read(Elem::F16) | Slot::ReadWrite(Elem::F16)))
    }

    /// The prelude: enables, constants, storage, uniform blocks, bindings
    /// and their accessors, then the shared pieces.
    pub(crate) fn prelude(&self) -> String {
        let mut s = String::new();
        if self.needs_f16() {
            s.push_str("enable f16;\n");
        }
        if self.kernel.tensor_cores() {
            s.push_str("enable wgpu_cooperative_matrix;\n");
        }
        let c = self.config;
        s.push_str(&format!(
            "const BLOCK: u32 = {}u;  // rows per block\n\
             const TILE: u32 = {}u;   // side of a workgroup's tile (4x4 per invocation)\n\
             const QUADS: u32 = {}u;  // invocations along one side of a tile\n\
             const DEPTH: u32 = {}u;  // reduction depth staged per step\n\
             const THREADS: u32 = {}u; // invocations of the portable kernels\n\
             const STRIPE: u32 = {STRIPE}u; // blocks per stripe\n",
            c.rows,
            c.rows,
            c.rows / 4,
            c.depth,
            c.threads()
        ));
        s.push_str(self.storage.prelude());
        s.push_str(match self.out {
            OutStore::F32 => "alias Out = f32;\nconst OUT_BF16: bool = false;\n",
            OutStore::F16 => "alias Out = f16;\nconst OUT_BF16: bool = false;\n",
            OutStore::Bf16Pairs => "alias Out = u32;\nconst OUT_BF16: bool = true;\n",
        });
        let bindings = self.kernel.bindings();
        for b in bindings {
            if let Slot::Uniform(block) = b.slot {
                s.push_str(&match block {
                    "Params" => Params::wgsl(),
                    "PackJob" => PackJob::wgsl(),
                    "StateMap" => StateMap::wgsl(),
                    other => unreachable!("no uniform block {other}"),
                });
            }
        }
        for (i, b) in bindings.iter().enumerate() {
            let decl = match b.slot {
                Slot::Uniform(block) => format!("var<uniform> {}: {block};", b.name),
                Slot::Read(e) if self.shared & (1 << i) == 0 => {
                    format!("var<storage, read> {}: array<{}>;", b.name, elem(e))
                }
                Slot::Read(e) => {
                    format!("var<storage, read_write> {}: array<{}>;", b.name, elem(e))
                }
                Slot::ReadWrite(e) => {
                    format!("var<storage, read_write> {}: array<{}>;", b.name, elem(e))
                }
            };
            s.push_str(&format!("@group(0) @binding({i}) {decl}\n"));
        }
        for b in bindings {
            match b.slot {
                Slot::Read(Elem::Stored) => s.push_str(&format!(
                    "fn read_{0}(i: u32) -> f32 {{ return widen({0}[i >> PACK], i); }}\n",
                    b.name
                )),
                // Four elements `step` apart from `at`, each only where its
                // lane of `live` is set.
                Slot::ReadWrite(Elem::F32) => s.push_str(&format!(
                    "fn store4_{0}(at: u32, step: u32, live: vec4<bool>, x: vec4<f32>) {{\n\
                     \x20   if live.x {{ {0}[at] = x.x; }}\n\
                     \x20   if live.y {{ {0}[at + step] = x.y; }}\n\
                     \x20   if live.z {{ {0}[at + 2u * step] = x.z; }}\n\
                     \x20   if live.w {{ {0}[at + 3u * step] = x.w; }}\n\
                     }}\n\
                     fn load4_{0}(at: u32, step: u32, live: vec4<bool>) -> vec4<f32> {{\n\
                     \x20   var x = vec4<f32>(0.0);\n\
                     \x20   if live.x {{ x.x = {0}[at]; }}\n\
                     \x20   if live.y {{ x.y = {0}[at + step]; }}\n\
                     \x20   if live.z {{ x.z = {0}[at + 2u * step]; }}\n\
                     \x20   if live.w {{ x.w = {0}[at + 3u * step]; }}\n\
                     \x20   return x;\n\
                     }}\n",
                    b.name
                )),
                _ => {}
            }
        }
        for lib in self.kernel.libs() {
            s.push_str(lib.source());
        }
        s
    }

    /// The whole source: the prelude, then the kernel as written.
    pub(crate) fn wgsl(&self) -> String {
        let mut s = self.prelude();
        s.push_str(self.kernel.body());
        s
    }
}

fn elem(e: Elem) -> &'static str {
    match e {
        Elem::Stored => "Stored",
        Elem::F32 => "f32",
        Elem::U32 => "u32",
        Elem::I32 => "i32",
        Elem::F16 => "f16",
        Elem::Out => "Out",
    }
}
