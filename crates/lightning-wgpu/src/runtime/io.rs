//! Moving bytes between the host and device buffers.

use super::Runtime;
use crate::error::{Error, Result};

/// What every tensor buffer is created with: bound as storage, copied from
/// (readback, interop) and to (uploads, states).
pub(crate) const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Runtime {
    /// Writes `bytes` at `offset` of `buffer` (before the next submission
    /// runs). Copies move whole words: `bytes` is padded to a multiple of 4.
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue().write_buffer(buffer, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue().write_buffer(buffer, offset, &padded);
        }
    }

    /// Reads `bytes` bytes at `offset` of `buffer` (a multiple of 4 at a
    /// multiple of 4) once the GPU work submitted before has run.
    pub(crate) async fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
        what: &'static str,
    ) -> Result<Vec<u8>> {
        self.check_lost()?;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = self.buffer("readback", bytes, usage);
        self.count_readback();
        let mut encoder = self.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, staging.buffer(), 0, bytes);
        self.queue().submit([encoder.finish()]);

        let (tx, rx) = futures_channel::oneshot::channel();
        staging
            .buffer()
            .map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
                let _ = tx.send(r);
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                op: "readback",
                reason: e.to_string(),
            })?;
        match rx.await {
            Ok(Ok(())) => {}
            _ => {
                self.check_lost()?;
                return Err(Error::Readback(what));
            }
        }
        let out = {
            let view = staging
                .buffer()
                .get_mapped_range(0..bytes)
                .map_err(|_| Error::Readback(what))?;
            view.to_vec()
        };
        staging.buffer().unmap();
        Ok(out)
    }
}
