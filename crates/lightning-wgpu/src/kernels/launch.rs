//! What every attention kernel of one call is launched with: the uniform
//! block of each planned segment and the slopes (bindings `params` and
//! `slopes`), and the tensors it reads and writes.

use std::num::NonZeroU64;

use super::params::Params;
use super::Storage;
use crate::layout::{Dims, Layout};
use crate::plan::{HeadView, Segment, Window};
use crate::runtime::recorder::Recorder;

/// One call of the attention kernels, planned.
#[derive(Clone)]
pub(crate) struct Launch<'a> {
    pub dims: Dims,
    pub layout: Layout,
    pub scale: f32,
    pub slopes: Option<&'a [f32]>,
    /// The state tensor holds a state to start from (an initial state, or a
    /// decode cache).
    pub starts_from_state: bool,
    /// Decoding: states are found through a slot per batch entry.
    pub slotted: bool,
    /// How the kernels read q, k and v.
    pub storage: Storage,
    /// q, k, v and o viewed in reversed time (see `plan::Limits::reversed`).
    pub reversed: [bool; 4],
    /// The state term reads its state transposed.
    pub transposed_state: bool,
    /// The chunked forward stops after the states: no output pass.
    pub states_only: bool,
    /// The stripe scan leaves the stripes' own states in place (see
    /// `chunk::Scratch::Keep`).
    pub scan_keeps: bool,
    /// The heads q, k, v and o are read (written) at (as planned).
    pub heads: [HeadView; 4],
    pub segments: Vec<Segment>,
}

impl<'a> Launch<'a> {
    /// A launch of `segments` with no decay, scale 1, no state to start
    /// from, in sequence mode, in time order.
    pub(crate) fn new(
        dims: Dims,
        layout: Layout,
        storage: Storage,
        segments: Vec<Segment>,
    ) -> Self {
        Launch {
            dims,
            layout,
            scale: 1.0,
            slopes: None,
            starts_from_state: false,
            slotted: false,
            storage,
            reversed: [false; 4],
            transposed_state: false,
            states_only: false,
            scan_keeps: false,
            heads: Default::default(),
            segments,
        }
    }

    /// The uniform block of segment `s`.
    pub(crate) fn params(&self, s: &Segment) -> Params {
        let dims = &self.dims;
        let stride = |width: usize, w: &Window, reversed: bool, view: HeadView| {
            let ((sb, sh, sn), _) = view.strides(self.layout, dims.h, dims.n, width);
            // Truncation is intended: the kernels compute offsets modulo 2^32
            // and every true offset inside a window is below 2^32; so is a
            // reversed view's negative row stride.
            let row = if reversed {
                (sn as u32).wrapping_neg()
            } else {
                sn as u32
            };
            [sb as u32, sh as u32, row, w.base]
        };
        let [rq, rk, rv, ro] = self.reversed;
        let [hq, hk, hv, ho] = self.heads;
        Params {
            heads: dims.h as u32,
            rows: s.rows as u32,
            dim_k: dims.d as u32,
            dim_v: dims.e as u32,
            blocks: s.blocks as u32,
            bh_start: s.bh_start as u32,
            bh_count: s.bh_count as u32,
            b_first: (s.bh_start / dims.h) as u32,
            q_stride: stride(dims.d, &s.q, rq, hq),
            k_stride: stride(dims.d, &s.k, rk, hk),
            v_stride: stride(dims.e, &s.v, rv, hv),
            o_stride: stride(dims.e, &s.o, ro, ho),
            state_base: s.state_base,
            has_state: u32::from(self.starts_from_state || s.n0 > s.seq_start),
            scale: self.scale,
            slotted: u32::from(self.slotted),
            stripe_base: s.stripe_base,
            seq_rows: s.seq_len as u32,
            row_start: (s.n0 - s.seq_start) as u32,
            transposed: u32::from(self.transposed_state),
            scan_keeps: u32::from(self.scan_keeps),
            ..Params::default()
        }
    }
}

/// The `params` of every segment of a launch (one buffer, a slot per
/// segment at the uniform offset alignment) and its `slopes`.
pub(crate) struct Uniforms {
    params: wgpu::Buffer,
    stride: u64,
    slopes: wgpu::Buffer,
    heads: usize,
}

impl Uniforms {
    pub(crate) fn new(rec: &mut Recorder, launch: &Launch) -> Self {
        let size = std::mem::size_of::<Params>();
        let align = rec.runtime().limits().min_uniform_buffer_offset_alignment as usize;
        let stride = size.next_multiple_of(align);
        let mut bytes = vec![0u8; stride * launch.segments.len().max(1)];
        for (i, s) in launch.segments.iter().enumerate() {
            bytes[i * stride..i * stride + size]
                .copy_from_slice(bytemuck::bytes_of(&launch.params(s)));
        }
        let params = rec.upload("params", &bytes, wgpu::BufferUsages::UNIFORM);
        let heads = launch.dims.h;
        let no_decay = vec![0.0f32; heads];
        let slopes = rec.upload(
            "slopes",
            bytemuck::cast_slice(launch.slopes.unwrap_or(&no_decay)),
            wgpu::BufferUsages::STORAGE,
        );
        Uniforms {
            params,
            stride: stride as u64,
            slopes,
            heads,
        }
    }

    /// Binding `params` of segment `index`.
    pub(crate) fn params(&self, index: usize) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.params,
            offset: index as u64 * self.stride,
            size: NonZeroU64::new(std::mem::size_of::<Params>() as u64),
        })
    }

    /// Binding `slopes`.
    pub(crate) fn slopes(&self) -> wgpu::BindingResource<'_> {
        whole(&self.slopes, (self.heads * 4) as u64)
    }

    /// `params` of segment `index` and `slopes`, named.
    pub(crate) fn named(&self, index: usize) -> Vec<(&'static str, wgpu::BindingResource<'_>)> {
        vec![("params", self.params(index)), ("slopes", self.slopes())]
    }
}

/// `buffer` bound at window `w`.
pub(crate) fn bind(buffer: &wgpu::Buffer, w: Window) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: w.offset,
        size: NonZeroU64::new(w.size),
    })
}

/// The first `bytes` bytes of `buffer`.
pub(crate) fn whole(buffer: &wgpu::Buffer, bytes: u64) -> wgpu::BindingResource<'_> {
    bind(
        buffer,
        Window {
            offset: 0,
            size: bytes,
            base: 0,
        },
    )
}

/// The buffers one call of the attention kernels reads and writes.
pub(crate) struct Io<'a> {
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    /// Where the passes write o: the output tensor, or an f32 scratch that
    /// is packed into it afterwards (see `pack::Output`).
    pub o: &'a wgpu::Buffer,
    /// The state: initial state in, final state out (or the decode cache).
    pub state: &'a wgpu::Buffer,
}

impl<'a> Io<'a> {
    /// The windows of segment `s` of the tensors `names` (q, k, v, o, and
    /// the state by the name the kernel gives it), named.
    pub(crate) fn named(
        &self,
        s: &Segment,
        names: &[&'static str],
    ) -> Vec<(&'static str, wgpu::BindingResource<'a>)> {
        names
            .iter()
            .map(|&name| {
                let (buffer, window) = match name {
                    "q" => (self.q, s.q),
                    "k" => (self.k, s.k),
                    "v" => (self.v, s.v),
                    "o" => (self.o, s.o),
                    _ => (self.state, s.state),
                };
                (name, bind(buffer, window))
            })
            .collect()
    }
}
