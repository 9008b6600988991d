//! Recording one call's GPU work into one encoder: our own, submitted once,
//! or a caller's, which the caller submits.
//!
//! Buffers the host writes for a call (uniforms, slopes, slot maps) come
//! from the pool and are written through the queue, which runs every write
//! before the next submission; the recorder keeps them until its work is
//! submitted, so no later call can take one from the pool and overwrite it
//! before this call's commands have run. Recording into a caller's encoder,
//! whose submission is the caller's, each such buffer is a new one written
//! at creation instead, and never goes back to the pool. Buffers only the
//! GPU writes (scratch) are pooled either way: work runs in submission
//! order, so a later call that takes one from the pool runs before or after
//! this call's use of it, never during.

use super::pool::PooledBuffer;
use super::Runtime;
use crate::error::{Error, Result};

/// The encoder a recorder records into.
enum Target<'a> {
    Own(wgpu::CommandEncoder),
    Caller(&'a mut wgpu::CommandEncoder),
}

pub(crate) struct Recorder<'a> {
    rt: &'a Runtime,
    op: &'static str,
    encoder: Option<Target<'a>>,
    /// While timing is on, each kernel runs in a compute pass of its own
    /// with its own timestamps; otherwise one pass holds a run of dispatches.
    split: bool,
    pass: Option<wgpu::ComputePass<'static>>,
    keep: Vec<PooledBuffer>,
    /// Open from the first command recorded until the submission, so that
    /// a bad bind group or an allocation failure is this call's error.
    scopes: Option<[wgpu::ErrorScopeGuard; 2]>,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(rt: &'a Runtime, op: &'static str) -> Self {
        let encoder = rt
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        Self::with(rt, op, Target::Own(encoder))
    }

    /// A recorder into the caller's `encoder` (see [`Recorder::finish`]).
    pub(crate) fn into_encoder(
        rt: &'a Runtime,
        op: &'static str,
        encoder: &'a mut wgpu::CommandEncoder,
    ) -> Self {
        Self::with(rt, op, Target::Caller(encoder))
    }

    fn with(rt: &'a Runtime, op: &'static str, target: Target<'a>) -> Self {
        let device = rt.device();
        let scopes = [
            device.push_error_scope(wgpu::ErrorFilter::Validation),
            device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
        ];
        Recorder {
            rt,
            op,
            encoder: Some(target),
            split: rt.is_timing(),
            pass: None,
            keep: Vec::new(),
            scopes: Some(scopes),
        }
    }

    pub(crate) fn runtime(&self) -> &'a Runtime {
        self.rt
    }

    /// Keeps `buffer` alive (out of the pool) until the work is submitted.
    pub(crate) fn keep(&mut self, buffer: PooledBuffer) -> wgpu::Buffer {
        let handle = buffer.buffer().clone();
        self.keep.push(buffer);
        handle
    }

    /// A buffer holding `bytes`: pooled and kept until submission, or,
    /// recording into a caller's encoder, a new one written at creation.
    pub(crate) fn upload(
        &mut self,
        label: &'static str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        if matches!(self.encoder, Some(Target::Caller(_))) {
            use wgpu::util::DeviceExt;
            let mut contents = bytes.to_vec();
            contents.resize(bytes.len().next_multiple_of(4).max(4), 0);
            return self
                .rt
                .device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: &contents,
                    usage,
                });
        }
        let buffer = self.rt.buffer_with(label, bytes, usage);
        self.keep(buffer)
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        match self.encoder.as_mut().expect("recording until submitted") {
            Target::Own(e) => e,
            Target::Caller(e) => e,
        }
    }

    /// A dispatch of `groups` workgroups of `pipeline` with `entries` bound
    /// in group 0. Grids wider than the per-dimension limit are folded into
    /// y; the kernels skip the indices past `groups` in the last row.
    pub(crate) fn dispatch(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindGroupEntry],
        groups: u64,
    ) {
        if groups == 0 {
            return;
        }
        let group = self
            .rt
            .device()
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.get_bind_group_layout(0),
                entries,
            });
        let (x, y) = fold(
            groups,
            self.rt.limits().max_compute_workgroups_per_dimension as u64,
        );
        let pass = self.pass(label);
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// The compute pass to record a dispatch of kernel `label` into.
    fn pass(&mut self, label: &'static str) -> &mut wgpu::ComputePass<'static> {
        if self.split {
            self.pass = None;
        }
        if self.pass.is_none() {
            let stamps = self.rt.next_stamps(label);
            let pass = self
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: stamps.as_ref().map(|s| s.writes()),
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("a pass was just begun")
    }

    /// Copies `bytes` bytes between buffers, ordered after the dispatches
    /// recorded so far.
    pub(crate) fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        self.pass = None;
        if src == dst {
            // A copy within one buffer (two tensors of a caller's buffer)
            // is refused by WebGPU: go through a scratch.
            let scratch = self.rt.buffer(
                "copy",
                bytes,
                wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            );
            let scratch = self.keep(scratch);
            let encoder = self.encoder();
            encoder.copy_buffer_to_buffer(src, src_offset, &scratch, 0, bytes);
            encoder.copy_buffer_to_buffer(&scratch, 0, dst, dst_offset, bytes);
            return;
        }
        self.encoder()
            .copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Zeroes `bytes` bytes of `buffer` from `offset` (both multiples of 4).
    pub(crate) fn clear(&mut self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) {
        self.pass = None;
        self.encoder().clear_buffer(buffer, offset, Some(bytes));
    }

    /// Submits everything recorded, under error scopes, so that a GPU-side
    /// failure comes back as an [`Error`] rather than a panic.
    pub(crate) async fn submit(mut self) -> Result<()> {
        self.pass = None;
        let (Some(target), Some([validation, memory])) = (self.encoder.take(), self.scopes.take())
        else {
            unreachable!("a recorder is submitted once");
        };
        let rt = self.rt;
        if let Target::Own(encoder) = target {
            rt.queue().submit([encoder.finish()]);
        }
        let oom = memory.pop().await;
        let invalid = validation.pop().await;
        drop(std::mem::take(&mut self.keep));
        if let Some(e) = oom.or(invalid) {
            rt.check_lost()?;
            return Err(Error::Gpu {
                op: self.op,
                reason: e.to_string(),
            });
        }
        Ok(())
    }
}

impl Recorder<'_> {
    /// Ends recording into the caller's encoder (its submission is the
    /// caller's), with this call's GPU errors so far.
    pub(crate) async fn finish(self) -> Result<()> {
        self.submit().await
    }
}

impl Drop for Recorder<'_> {
    /// A recording given up (an error before submission): its commands are
    /// dropped unsubmitted, and its error scopes closed in reverse order.
    fn drop(&mut self) {
        self.pass = None;
        if let Some([validation, memory]) = self.scopes.take() {
            drop(memory);
            drop(validation);
        }
    }
}

/// A grid of `groups` workgroups as (x, y) within the per-dimension limit.
pub(crate) fn fold(groups: u64, max: u64) -> (u32, u32) {
    if groups <= max {
        (groups as u32, 1)
    } else {
        (max as u32, groups.div_ceil(max) as u32)
    }
}
