//! Recording one call's GPU work into one encoder, submitted once.
//!
//! Buffers the host writes for a call (uniforms, slopes, slot maps) come
//! from the pool and are written through the queue, which runs every write
//! before the next submission; the recorder keeps them until its work is
//! submitted, so no later call can take one from the pool and overwrite it
//! before this call's commands have run.

use super::pool::PooledBuffer;
use super::Runtime;
use crate::error::{Error, Result};

pub(crate) struct Recorder<'a> {
    rt: &'a Runtime,
    op: &'static str,
    encoder: Option<wgpu::CommandEncoder>,
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
        let device = rt.device();
        let scopes = [
            device.push_error_scope(wgpu::ErrorFilter::Validation),
            device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
        ];
        let encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(op) });
        Recorder {
            rt,
            op,
            encoder: Some(encoder),
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

    /// A pooled buffer holding `bytes`, kept until submission.
    pub(crate) fn upload(
        &mut self,
        label: &'static str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let buffer = self.rt.buffer_with(label, bytes, usage);
        self.keep(buffer)
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
        let rt = self.rt;
        let encoder = self.encoder.as_mut().expect("recording until submitted");
        self.pass.get_or_insert_with(|| {
            let stamps = rt.next_stamps(label);
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(label),
                    timestamp_writes: stamps.as_ref().map(|s| s.writes()),
                })
                .forget_lifetime()
        })
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
        if let Some(encoder) = &mut self.encoder {
            encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
        }
    }

    /// Submits everything recorded, under error scopes, so that a GPU-side
    /// failure comes back as an [`Error`] rather than a panic.
    pub(crate) async fn submit(mut self) -> Result<()> {
        self.pass = None;
        let (Some(encoder), Some([validation, memory])) = (self.encoder.take(), self.scopes.take())
        else {
            unreachable!("a recorder is submitted once");
        };
        let rt = self.rt;
        rt.queue().submit([encoder.finish()]);
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
