//! GPU tensors: a pooled device buffer with a shape and a storage type.

use crate::pool::PooledBuffer;

/// Storage type of a tensor's elements on the GPU. Arithmetic is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
        })
    }
}

/// A dense, row-major tensor living on one [`Context`](crate::Context)'s device.
///
/// Make one with [`Context::tensor`](crate::Context::tensor) and read it back with
/// [`Context::read`](crate::Context::read). Dropping it returns its buffer to
/// the context's pool.
pub struct Tensor {
    pub(crate) buffer: PooledBuffer,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) owner: u64,
}

impl Tensor {
    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Storage type of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when some dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the data in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// The underlying wgpu buffer, for interop with other wgpu code. It may be
    /// larger than [`Tensor::size_bytes`].
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}
