//! Where an op writes its output, and the packing of f32 results into
//! f16 or bf16 words.

use super::launch::bind;
use super::params::PackJob;
use super::{BlockConfig, Kernel, KernelSpec, Storage};
use crate::error::{Error, Result};
use crate::plan::Window;
use crate::runtime::recorder::Recorder;
use crate::runtime::Runtime;
use crate::tensor::{DType, Tensor};

/// Where the passes write an output: the tensor itself when it is f32 (or
/// when the pass stores its own storage type), else an f32 scratch that
/// [`Output::finish`] packs into the tensor's halves (packing in place
/// would make neighbouring invocations share words).
pub(crate) struct Output<'a> {
    target: &'a Tensor,
    wide: Option<wgpu::Buffer>,
}

impl<'a> Output<'a> {
    /// Through an f32 scratch where `target` holds halves.
    pub(crate) fn new(rec: &mut Recorder, target: &'a Tensor) -> Result<Self> {
        let wide = match target.dtype() {
            DType::F32 => None,
            DType::F16 | DType::BF16 => {
                let bytes = (target.len() as u64).saturating_mul(4);
                let limit = rec.runtime().max_buffer();
                if bytes > limit {
                    return Err(Error::TooLarge {
                        arg: "o (f32 while computed)",
                        bytes,
                        limit,
                        which: "max_buffer_size",
                    });
                }
                let scratch = rec
                    .runtime()
                    .buffer("o in f32", bytes, wgpu::BufferUsages::STORAGE);
                Some(rec.keep(scratch))
            }
        };
        Ok(Output { target, wide })
    }

    /// Where the pass writes `target` itself, in its own storage type.
    pub(crate) fn direct(target: &'a Tensor) -> Self {
        Output { target, wide: None }
    }

    /// The buffer the passes write: f32 scratch, or the target itself.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.wide.as_ref().unwrap_or(self.target.buffer())
    }

    /// Where the passes' output starts in [`Output::buffer`], in elements.
    pub(crate) fn first_element(&self) -> u64 {
        if self.wide.is_some() {
            0
        } else {
            self.target.first_element()
        }
    }

    /// Bytes per element the passes write.
    pub(crate) fn element_bytes(&self) -> u64 {
        if self.wide.is_some() {
            4
        } else {
            self.target.dtype().size() as u64
        }
    }

    /// Records the packing of the f32 result into the target, when it is
    /// stored in halves.
    pub(crate) async fn finish(self, rec: &mut Recorder<'_>) -> Result<()> {
        match &self.wide {
            Some(wide) => pack(rec, (wide, 0), self.target).await,
            None => Ok(()),
        }
    }
}

/// The pack kernel (it reads no q, k or v; the config is irrelevant to it).
fn spec() -> KernelSpec {
    KernelSpec::new(Kernel::PackOutput, Storage::F32, BlockConfig::default())
}

/// What a pass of the pack kernel makes of f32 values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    F16 = 0,
    Bf16 = 1,
    /// Adds them into f32 values.
    Add = 2,
}

/// Records packing the f32 elements of `wide` (a buffer and the element at
/// which they start) into `target`'s f16 or bf16 words, in windows that fit
/// one binding on both sides.
pub(crate) async fn pack(
    rec: &mut Recorder<'_>,
    wide: (&wgpu::Buffer, u64),
    target: &Tensor,
) -> Result<()> {
    let mode = match target.dtype() {
        DType::BF16 => Mode::Bf16,
        _ => Mode::F16,
    };
    let to = (target.buffer(), target.offset());
    record(rec, wide, to, target.len() as u64, mode).await
}

/// Records `out += x` over `elements` f32 values, each side a buffer and
/// the element at which its values start.
pub(crate) async fn accumulate(
    rec: &mut Recorder<'_>,
    x: (&wgpu::Buffer, u64),
    (out, out_first): (&wgpu::Buffer, u64),
    elements: u64,
) -> Result<()> {
    record(rec, x, (out, out_first * 4), elements, Mode::Add).await
}

/// Records the pack kernel over `elements` f32 values of `wide` into `to`
/// (a buffer and the byte at which the target starts).
async fn record(
    rec: &mut Recorder<'_>,
    (wide, wide_first): (&wgpu::Buffer, u64),
    (target, target_offset): (&wgpu::Buffer, u64),
    elements: u64,
    mode: Mode,
) -> Result<()> {
    let rt: &Runtime = rec.runtime();
    let kernel = spec().compile(rt).await?;
    // Windows of a multiple of 128 elements, each bound from the aligned
    // offset at or below its start on both sides, the rest in its `base`.
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let per_window = ((rt.max_binding().saturating_sub(align)) / 4 / 128 * 128).max(128);
    let windows: Vec<(u64, u64)> = (0..elements)
        .step_by(per_window as usize)
        .map(|e0| (e0, per_window.min(elements - e0)))
        .collect();
    let size = std::mem::size_of::<PackJob>() as u64;
    let stride = size.next_multiple_of(rt.limits().min_uniform_buffer_offset_alignment as u64);
    // Target elements per word: two halves, or one f32.
    let (per_word, target_bytes) = match mode {
        Mode::Add => (1, 4),
        _ => (2, 2),
    };
    let mut bytes = vec![0u8; (stride * windows.len() as u64) as usize];
    // Each window's bindings, aligned down, and where its elements start in them.
    let from_at = |e0: u64| (wide_first + e0) * 4;
    let to_at = |e0: u64| target_offset + e0 * target_bytes;
    let down = |byte: u64| byte / align * align;
    for (i, &(e0, n)) in windows.iter().enumerate() {
        let job = PackJob {
            words: n.div_ceil(per_word) as u32,
            elements: n as u32,
            mode: mode as u32,
            wide_base: ((from_at(e0) - down(from_at(e0))) / 4) as u32,
            packed_base: ((to_at(e0) - down(to_at(e0))) / 4) as u32,
            ..Default::default()
        };
        let at = i * stride as usize;
        bytes[at..at + size as usize].copy_from_slice(bytemuck::bytes_of(&job));
    }
    let jobs = rec.upload("pack jobs", &bytes, wgpu::BufferUsages::UNIFORM);
    for (i, &(e0, n)) in windows.iter().enumerate() {
        let job = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &jobs,
            offset: i as u64 * stride,
            size: std::num::NonZeroU64::new(size),
        });
        let words = n.div_ceil(per_word);
        let from = Window {
            offset: down(from_at(e0)),
            size: from_at(e0) + n * 4 - down(from_at(e0)),
            base: 0,
        };
        let to = Window {
            offset: down(to_at(e0)),
            size: to_at(e0) + words * 4 - down(to_at(e0)),
            base: 0,
        };
        kernel.dispatch(
            rec,
            if mode == Mode::Add {
                "accumulate"
            } else {
                "pack output"
            },
            &[
                ("job", job),
                ("wide", bind(wide, from)),
                ("packed", bind(target, to)),
            ],
            words.div_ceil(256),
        );
    }
    Ok(())
}
