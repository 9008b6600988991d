//! The WGSL kernels: one file per pass under `shaders/`, each with a table
//! of its bindings here. A [`KernelSpec`] renders a kernel's whole source:
//! its prelude (constants, storage aliases, uniform blocks, binding
//! declarations and accessors, the shared pieces of `shaders/lib/`) and
//! then the file as written. Nothing rewrites a kernel's own text.

pub(crate) mod chunk;
pub(crate) mod launch;
pub(crate) mod pack;
pub(crate) mod params;
pub(crate) mod recurrent;
pub(crate) mod softmax;
pub(crate) mod spec;
pub(crate) mod states;
#[cfg(test)]
mod tests;

pub(crate) use spec::{BlockConfig, KernelSpec, OutStore, Storage};

use crate::error::Result;
use crate::runtime::recorder::Recorder;
use crate::runtime::Runtime;

/// What a context runs the kernels with, decided once when it is opened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Setup {
    pub config: BlockConfig,
    /// f16 tensors are read as WGSL `f16` (SHADER_F16, not forced packed).
    pub native_f16: bool,
    /// The device was opened with the tensor-core kernels' feature and
    /// passed their requirements (see `chunk::tensor_core`).
    pub tensor_cores: bool,
}

impl Setup {
    /// How the kernels read q, k and v stored as `dtype`.
    pub(crate) fn storage(&self, dtype: crate::DType) -> Storage {
        match dtype {
            crate::DType::F32 => Storage::F32,
            crate::DType::F16 if self.native_f16 => Storage::F16Native,
            crate::DType::F16 => Storage::F16Packed,
            crate::DType::BF16 => Storage::Bf16,
        }
    }
}

/// The element type of a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    /// The storage of q, k and v ([`Storage`]), read through `read_<name>`.
    Stored,
    F32,
    U32,
    I32,
    F16,
    /// An output stored as [`OutStore`] says.
    Out,
}

/// What a binding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A uniform block of [`params`], by its struct name.
    Uniform(&'static str),
    Read(Elem),
    ReadWrite(Elem),
}

/// A binding of group 0: the kernel's name for it, and what it holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding {
    pub name: &'static str,
    pub slot: Slot,
}

const fn uniform(name: &'static str, block: &'static str) -> Binding {
    Binding {
        name,
        slot: Slot::Uniform(block),
    }
}

const fn read(name: &'static str, elem: Elem) -> Binding {
    Binding {
        name,
        slot: Slot::Read(elem),
    }
}

const fn write(name: &'static str, elem: Elem) -> Binding {
    Binding {
        name,
        slot: Slot::ReadWrite(elem),
    }
}

/// The uniform block and slopes every attention kernel starts with, and
/// the inputs and output most of them bind.
const PARAMS: Binding = uniform("params", "Params");
const SLOPES: Binding = read("slopes", Elem::F32);
const Q: Binding = read("q", Elem::Stored);
const K: Binding = read("k", Elem::Stored);
const V: Binding = read("v", Elem::Stored);
const O: Binding = write("o", Elem::F32);

// The binding table of each kernel.
use Elem::{Out, F16, F32, I32, U32};
const BLOCK_STATE: &[Binding] = &[PARAMS, SLOPES, K, V, write("states", F32)];
const BLOCK_STATE_TC: &[Binding] = &[PARAMS, SLOPES, K, V, write("states", U32)];
const STATE_SCAN: &[Binding] = &[PARAMS, SLOPES, write("states", F32), write("carry", F32)];
const BLOCK_OUTPUT: &[Binding] = &[PARAMS, SLOPES, Q, K, V, read("states", F32), O];
// The tensor-core output pass also reads the per-block states as f16.
const BLOCK_OUTPUT_TC: &[Binding] = &[PARAMS, SLOPES, Q, K, V, STATES_U32, O_OUT, HALVES];
const STATES_U32: Binding = read("states", U32);
const O_OUT: Binding = write("o", Out);
const HALVES: Binding = read("halves", F16);
const RECURRENT: &[Binding] = &[PARAMS, SLOPES, Q, K, V, O, STATE, read("slots", I32)];
const STATE: Binding = write("state", F32);
const SOFTMAX_ATTENTION: &[Binding] = &[PARAMS, SLOPES, Q, K, V, O];
const PACK_OUTPUT: &[Binding] = &[JOB, read("wide", F32), write("packed", U32)];
const JOB: Binding = uniform("job", "PackJob");
const STATE_MAP: &[Binding] = &[MAP, SLOPES, read("x", F32), read("y", F32), OUT];
const MAP: Binding = uniform("map", "StateMap");
const OUT: Binding = write("out", F32);
const STATE_TERM: &[Binding] = &[PARAMS, SLOPES, read("x", Elem::Stored), read("a", F32), OUT];

/// A piece of WGSL under `shaders/lib/` that kernels share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lib {
    /// Tensor addressing through windows, grid folding, the decay, blocks
    /// and stripes (needs `params` and `slopes`).
    Addressing,
    /// Where one block of a dispatch lies: the prologue of the output passes.
    Blocks,
    /// bf16 rounding.
    Halves,
    /// The tensor-core kernels' matrix types and pairs of elements.
    TensorCores,
}

impl Lib {
    pub(crate) fn source(self) -> &'static str {
        match self {
            Lib::Addressing => include_str!("../../shaders/lib/addressing.wgsl"),
            Lib::Blocks => include_str!("../../shaders/lib/blocks.wgsl"),
            Lib::Halves => include_str!("../../shaders/lib/halves.wgsl"),
            Lib::TensorCores => include_str!("../../shaders/lib/tensor_cores.wgsl"),
        }
    }
}

/// One GPU pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// The state each block starts from, counted from its stripe's start.
    BlockState,
    /// [`Kernel::BlockState`] on the tensor cores.
    BlockStateTc,
    /// The scan over stripes: the state each stripe starts from, the final state.
    StateScan,
    /// Each block's output: masked `(Q K^T) (.) M` times `V`, plus
    /// `Lambda Q S_{t-1}` carried in from earlier blocks.
    BlockOutput,
    /// [`Kernel::BlockOutput`] on the tensor cores.
    BlockOutputTc,
    /// The token-by-token recurrence (the recurrent method, and decoding).
    Recurrent,
    /// Causal softmax attention with an online softmax (the baseline).
    SoftmaxAttention,
    /// f32 values packed into f16 or bf16 words.
    PackOutput,
    /// Decayed, scaled sums of `(.., d, e)` states, transposed or not.
    StateMap,
    /// The final-state gradient's decayed term of dk and dv.
    StateTerm,
}

impl Kernel {
    #[cfg(test)]
    pub(crate) const ALL: [Kernel; 10] = [
        Kernel::BlockState,
        Kernel::BlockStateTc,
        Kernel::StateScan,
        Kernel::BlockOutput,
        Kernel::BlockOutputTc,
        Kernel::Recurrent,
        Kernel::SoftmaxAttention,
        Kernel::PackOutput,
        Kernel::StateMap,
        Kernel::StateTerm,
    ];

    /// The file stem under `shaders/`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::BlockState => "block_state",
            Kernel::BlockStateTc => "block_state_tc",
            Kernel::StateScan => "state_scan",
            Kernel::BlockOutput => "block_output",
            Kernel::BlockOutputTc => "block_output_tc",
            Kernel::Recurrent => "recurrent",
            Kernel::SoftmaxAttention => "softmax_attention",
            Kernel::PackOutput => "pack_output",
            Kernel::StateMap => "state_map",
            Kernel::StateTerm => "state_term",
        }
    }

    /// The kernel's own WGSL, after its prelude.
    pub(crate) fn body(self) -> &'static str {
        match self {
            Kernel::BlockState => include_str!("../../shaders/block_state.wgsl"),
            Kernel::BlockStateTc => include_str!("../../shaders/block_state_tc.wgsl"),
            Kernel::StateScan => include_str!("../../shaders/state_scan.wgsl"),
            Kernel::BlockOutput => include_str!("../../shaders/block_output.wgsl"),
            Kernel::BlockOutputTc => include_str!("../../shaders/block_output_tc.wgsl"),
            Kernel::Recurrent => include_str!("../../shaders/recurrent.wgsl"),
            Kernel::SoftmaxAttention => include_str!("../../shaders/softmax_attention.wgsl"),
            Kernel::PackOutput => include_str!("../../shaders/pack_output.wgsl"),
            Kernel::StateMap => include_str!("../../shaders/state_map.wgsl"),
            Kernel::StateTerm => include_str!("../../shaders/state_term.wgsl"),
        }
    }

    /// Its bindings of group 0, in binding order.
    pub(crate) fn bindings(self) -> &'static [Binding] {
        match self {
            Kernel::BlockState => BLOCK_STATE,
            Kernel::BlockStateTc => BLOCK_STATE_TC,
            Kernel::StateScan => STATE_SCAN,
            Kernel::BlockOutput => BLOCK_OUTPUT,
            Kernel::BlockOutputTc => BLOCK_OUTPUT_TC,
            Kernel::Recurrent => RECURRENT,
            Kernel::SoftmaxAttention => SOFTMAX_ATTENTION,
            Kernel::PackOutput => PACK_OUTPUT,
            Kernel::StateMap => STATE_MAP,
            Kernel::StateTerm => STATE_TERM,
        }
    }

    /// The shared pieces the kernel uses, in the order they are included.
    pub(crate) fn libs(self) -> &'static [Lib] {
        match self {
            Kernel::BlockOutput => &[Lib::Addressing, Lib::Blocks],
            Kernel::BlockOutputTc => &[Lib::Addressing, Lib::Blocks, Lib::Halves, Lib::TensorCores],
            Kernel::BlockStateTc => &[Lib::Addressing, Lib::TensorCores],
            Kernel::BlockState
            | Kernel::StateScan
            | Kernel::Recurrent
            | Kernel::SoftmaxAttention
            | Kernel::StateTerm => &[Lib::Addressing],
            Kernel::PackOutput => &[Lib::Halves],
            Kernel::StateMap => &[],
        }
    }

    /// Whether the kernel runs on the tensor cores (cooperative matrices):
    /// it needs EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16 and
    /// translates to SPIR-V only.
    pub(crate) fn tensor_cores(self) -> bool {
        matches!(self, Kernel::BlockStateTc | Kernel::BlockOutputTc)
    }

    /// The index of binding `name`; a name the kernel does not have is a
    /// bug in the op that binds it.
    fn slot_of(self, name: &str) -> u32 {
        self.bindings()
            .iter()
            .position(|b| b.name == name)
            .unwrap_or_else(|| panic!("kernel {} has no binding `{name}`", self.name()))
            as u32
    }
}

impl KernelSpec {
    /// The pipeline of this spec, compiled on first use.
    pub(crate) async fn compile(&self, rt: &Runtime) -> Result<Compiled> {
        let pipeline = rt
            .pipeline(&self.key(), self.kernel.name(), || self.wgsl())
            .await?;
        Ok(Compiled {
            kernel: self.kernel,
            pipeline,
        })
    }
}

/// The names of the `reads` whose buffer one of `writes` also is: what a
/// dispatch must declare read_write ([`KernelSpec::sharing`]).
pub(crate) fn shared_reads<'a>(
    reads: &[(&'static str, &'a wgpu::Buffer)],
    writes: &[&'a wgpu::Buffer],
) -> Vec<&'static str> {
    reads
        .iter()
        .filter(|(_, b)| writes.contains(b))
        .map(|(name, _)| *name)
        .collect()
}

/// A compiled kernel, bound by name.
pub(crate) struct Compiled {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
}

impl Compiled {
    /// Records a dispatch of `groups` workgroups with `named` resources
    /// bound; `label` names it for timing.
    pub(crate) fn dispatch(
        &self,
        rec: &mut Recorder,
        label: &'static str,
        named: &[(&str, wgpu::BindingResource)],
        groups: u64,
    ) {
        let entries = self.entries(named);
        rec.dispatch(label, &self.pipeline, &entries, groups);
    }

    /// Bind group entries for `named` resources, in the kernel's order.
    pub(crate) fn entries<'a>(
        &self,
        named: &[(&str, wgpu::BindingResource<'a>)],
    ) -> Vec<wgpu::BindGroupEntry<'a>> {
        debug_assert_eq!(
            named.len(),
            self.kernel.bindings().len(),
            "{}: every binding must be given",
            self.kernel.name()
        );
        named
            .iter()
            .map(|(name, resource)| wgpu::BindGroupEntry {
                binding: self.kernel.slot_of(name),
                resource: resource.clone(),
            })
            .collect()
    }
}
