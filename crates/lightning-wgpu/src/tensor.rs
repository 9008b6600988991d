//! GPU tensors: a pooled device buffer with a shape and a storage type, and
//! moving them between the host and the device.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::io::TENSOR_USAGE;
use crate::runtime::pool::PooledBuffer;
use crate::runtime::recorder::Recorder;

/// Storage type of a tensor's elements on the GPU. Arithmetic is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16, two to a 32-bit word (the even element in the low half).
    F16,
    /// bfloat16 (the high half of an f32), two to a 32-bit word.
    BF16,
}

impl DType {
    /// The largest finite magnitude the type holds.
    pub fn max_finite(self) -> f32 {
        match self {
            DType::F32 => f32::MAX,
            DType::F16 => half::f16::MAX.to_f32(),
            DType::BF16 => half::bf16::MAX.to_f32(),
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// The largest magnitude in `data` (NaN ignored, infinity kept).
pub(crate) fn max_abs(data: &[f32]) -> f32 {
    data.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// `data` rounded to `dtype` (nearest even) and laid out as the GPU stores it.
pub(crate) fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        DType::BF16 => data
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
    }
}

/// The values of `len` elements stored as `dtype`, widened to f32 (exactly).
pub(crate) fn decode(bytes: &[u8], dtype: DType, len: usize) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::cast_slice::<u8, f32>(&bytes[..len * 4]).to_vec(),
        DType::F16 => bytes[..len * 2]
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        DType::BF16 => bytes[..len * 2]
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// Where a tensor's elements live.
pub(crate) enum Memory {
    /// A buffer of the context's pool, given back when the tensor drops.
    Pooled(PooledBuffer),
    /// A caller's buffer, viewed without a copy.
    Borrowed(wgpu::Buffer),
}

/// A dense, row-major tensor living on one [`Context`](crate::Context)'s device.
///
/// Make one with [`Context::tensor`](crate::Context::tensor) (or view a
/// buffer of your own with [`Tensor::from_buffer`]) and read it back with
/// [`Context::read`](crate::Context::read). Dropping a tensor the context
/// made returns its buffer to the context's pool.
pub struct Tensor {
    pub(crate) memory: Memory,
    /// Where its first element is in the buffer, in bytes.
    pub(crate) offset: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) owner: u64,
    /// The largest magnitude of its elements where the host knows it (it
    /// uploaded them, or a caller vouched for it); unknown where it does not.
    pub(crate) max_abs: MaxAbs,
}

/// A tensor's known largest magnitude. Calls that write a tensor forget it
/// (through a shared reference: encoded calls write tensors they borrow), so
/// a stale bound never sends a call to the tensor cores.
pub(crate) struct MaxAbs(std::sync::atomic::AtomicU32);

/// Stands for "unknown": a NaN pattern no measured bound has.
const UNKNOWN: u32 = u32::MAX;

impl MaxAbs {
    pub(crate) fn new(bound: Option<f32>) -> MaxAbs {
        MaxAbs(std::sync::atomic::AtomicU32::new(
            bound.map_or(UNKNOWN, f32::to_bits),
        ))
    }

    pub(crate) fn get(&self) -> Option<f32> {
        let bits = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (bits != UNKNOWN).then(|| f32::from_bits(bits))
    }

    pub(crate) fn set(&self, bound: Option<f32>) {
        let bits = bound.map_or(UNKNOWN, f32::to_bits);
        self.0.store(bits, std::sync::atomic::Ordering::Relaxed);
    }
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
    /// larger than [`Tensor::size_bytes`]; the tensor starts at
    /// [`Tensor::offset`] in it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        match &self.memory {
            Memory::Pooled(b) => b.buffer(),
            Memory::Borrowed(b) => b,
        }
    }

    /// Where the tensor's first element is in [`Tensor::buffer`], in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the tensor's first element is, in elements.
    pub(crate) fn first_element(&self) -> u64 {
        self.offset / self.dtype.size() as u64
    }

    /// The pooled buffer, to keep out of the pool until work using it is
    /// submitted (a borrowed one is the caller's to keep).
    pub(crate) fn into_buffer(self) -> Option<PooledBuffer> {
        match self.memory {
            Memory::Pooled(b) => Some(b),
            Memory::Borrowed(_) => None,
        }
    }

    /// A view of `shape` elements stored as `dtype` in `buffer` from byte
    /// `offset` on, without a copy: a caller's buffer given to the kernels
    /// (read as inputs, written as outputs through
    /// [`Context::forward_into`]). The buffer must have been made on `ctx`'s
    /// device with STORAGE usage (COPY_SRC to be read back or copied from,
    /// COPY_DST to be written by an upload or a copy), hold the whole view,
    /// and the offset be a multiple of 4. Its contents are the caller's:
    /// nothing is pooled, and its magnitudes are unknown until vouched for
    /// ([`Tensor::assume_max_abs`]).
    ///
    /// ```no_run
    /// use lightning_wgpu::{wgpu, Context, DType, Tensor};
    /// let ctx = Context::new()?;
    /// let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("mine"),
    ///     size: 4096 + 2 * 8 * 64 * 4,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// let q = Tensor::from_buffer(&ctx, &buffer, 4096, &[1, 2, 8, 64], DType::F32)?;
    /// assert_eq!(q.offset(), 4096);
    /// # Ok::<(), lightning_wgpu::Error>(())
    /// ```
    pub fn from_buffer(
        ctx: &Context,
        buffer: &wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let bytes = elements
            .and_then(|e| e.checked_mul(dtype.size()))
            .and_then(|b| u64::try_from(b).ok());
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::BufferUsage {
                arg: "buffer",
                missing: "STORAGE",
            });
        }
        if !offset.is_multiple_of(4) {
            return Err(Error::InvalidValue {
                arg: "offset",
                value: offset.to_string(),
                reason: "must be a multiple of 4 bytes",
            });
        }
        match bytes.and_then(|b| b.checked_add(offset)) {
            Some(end) if end <= buffer.size() => {}
            _ => {
                return Err(Error::TooLarge {
                    arg: "view",
                    bytes: bytes.unwrap_or(u64::MAX).saturating_add(offset),
                    limit: buffer.size(),
                    which: "the buffer's size",
                })
            }
        }
        Ok(Tensor {
            memory: Memory::Borrowed(buffer.clone()),
            offset,
            shape: shape.to_vec(),
            dtype,
            owner: ctx.rt().id(),
            max_abs: MaxAbs::new(None),
        })
    }

    /// Fails with [`Error::BufferUsage`] unless the buffer has `usage`.
    pub(crate) fn needs(
        &self,
        arg: &'static str,
        usage: wgpu::BufferUsages,
        name: &'static str,
    ) -> Result<()> {
        if self.buffer().usage().contains(usage) {
            Ok(())
        } else {
            Err(Error::BufferUsage { arg, missing: name })
        }
    }

    /// The largest magnitude of its elements where known: measured when it
    /// was uploaded from the host, or set with [`Tensor::assume_max_abs`].
    /// The tensor-core path takes f16 and bf16 inputs only where this bounds
    /// every intermediate f16 value of the call (see
    /// [`Context::chunk_path`]); elsewhere the portable path runs.
    pub fn max_abs(&self) -> Option<f32> {
        self.max_abs.get()
    }

    /// Forgets the bound: this crate wrote the tensor.
    pub(crate) fn written(&self) {
        self.max_abs.set(None);
    }

    /// Vouches that no element's magnitude exceeds `bound`, for a tensor the
    /// host did not upload (written by a GPU program, or an output of this
    /// crate), so that f16 and bf16 calls can take the tensor cores. A bound
    /// that is wrong can make the tensor-core path overflow f16: values
    /// beyond it are the caller's promise broken.
    pub fn assume_max_abs(&mut self, bound: f32) {
        self.max_abs.set(Some(bound.abs()));
    }

    /// Gives the tensor a new shape of as many elements, without a copy.
    ///
    /// ```
    /// # fn demo(ctx: &lightning_wgpu::Context) -> lightning_wgpu::Result<()> {
    /// let mut t = ctx.tensor(&[0.0; 24], &[2, 3, 4])?;
    /// t.reshape(&[6, 4])?;
    /// assert_eq!(t.shape(), &[6, 4]);
    /// # Ok(()) }
    /// ```
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(self.len()) {
            return Err(Error::DataLength {
                arg: "shape",
                shape: shape.to_vec(),
                expected: elements.unwrap_or(usize::MAX),
                got: self.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(())
    }
}

impl Context {
    /// Uploads `data` as an f32 tensor of `shape`.
    pub fn tensor(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.tensor_as(data, shape, DType::F32)
    }

    /// Uploads `data` as a tensor of `shape` stored as `dtype` (rounded to
    /// nearest even on the host for f16 and bf16). A finite value that
    /// `dtype` cannot hold (above 65504 for f16, 3.39e38 for bf16) is an
    /// [`Error::OutOfRange`]; [`Context::tensor_saturating`] clamps instead.
    pub fn tensor_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.upload(data, shape, dtype, false)
    }

    /// Uploads f16 or bf16 elements given as their bits (what NumPy's
    /// `view(np.uint16)` or a JavaScript `Uint16Array` holds), unchanged.
    pub fn tensor_from_bits(&self, bits: &[u16], shape: &[usize], dtype: DType) -> Result<Tensor> {
        if dtype == DType::F32 {
            return Err(Error::InvalidValue {
                arg: "dtype",
                value: dtype.to_string(),
                reason: "bits are for f16 and bf16; upload f32 with Context::tensor",
            });
        }
        let t = self.new_tensor(shape, dtype, "bits")?;
        if bits.len() != t.len() {
            return Err(Error::DataLength {
                arg: "bits",
                shape: shape.to_vec(),
                expected: t.len(),
                got: bits.len(),
            });
        }
        let widen = |b: u16| match dtype {
            DType::F16 => half::f16::from_bits(b).to_f32(),
            _ => half::bf16::from_bits(b).to_f32(),
        };
        t.max_abs.set(Some(
            bits.iter().fold(0.0f32, |m, &b| m.max(widen(b).abs())),
        ));
        self.rt().write(t.buffer(), 0, bytemuck::cast_slice(bits));
        Ok(t)
    }

    /// Reads an f16 or bf16 tensor back as the bits of its elements.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_bits(&self, t: &Tensor) -> Result<Vec<u16>> {
        pollster::block_on(self.read_bits_async(t))
    }

    /// Async form of [`Context::read_bits`].
    pub async fn read_bits_async(&self, t: &Tensor) -> Result<Vec<u16>> {
        self.owns("tensor", t)?;
        if t.dtype() == DType::F32 {
            return Err(Error::InvalidValue {
                arg: "tensor",
                value: t.dtype().to_string(),
                reason: "bits are for f16 and bf16 tensors; read f32 with Context::read",
            });
        }
        t.needs("tensor", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
        let bytes = t.size_bytes().next_multiple_of(4);
        let raw = self
            .rt()
            .read_bytes(t.buffer(), t.offset, bytes, "tensor")
            .await?;
        Ok(raw[..t.len() * 2]
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect())
    }

    /// [`Context::tensor_as`], clamping finite values beyond `dtype`'s range
    /// to its largest finite magnitude (infinities and NaN stay what they are).
    pub fn tensor_saturating(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.upload(data, shape, dtype, true)
    }

    fn upload(
        &self,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
        saturate: bool,
    ) -> Result<Tensor> {
        let t = self.new_tensor(shape, dtype, "data")?;
        if data.len() != t.len() {
            return Err(Error::DataLength {
                arg: "data",
                shape: shape.to_vec(),
                expected: t.len(),
                got: data.len(),
            });
        }
        if dtype == DType::F32 {
            t.max_abs.set(Some(max_abs(data)));
            self.rt().write(t.buffer(), 0, &encode(data, dtype));
            return Ok(t);
        }
        let limit = dtype.max_finite();
        let finite_max = data
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f32, |m, x| m.max(x.abs()));
        let mut values = std::borrow::Cow::Borrowed(data);
        if finite_max > limit {
            // Rounding to nearest even keeps a value a little above the
            // largest finite one finite: only what rounds to infinity is out.
            let inf = |x: f32| encode(&[f32::INFINITY.copysign(x)], dtype);
            if data
                .iter()
                .any(|&x| x.is_finite() && encode(&[x], dtype) == inf(x))
            {
                if !saturate {
                    return Err(Error::OutOfRange {
                        arg: "data",
                        dtype,
                        max_abs: finite_max,
                        limit,
                    });
                }
                values = data
                    .iter()
                    .map(|&x| {
                        if x.is_finite() {
                            x.clamp(-limit, limit)
                        } else {
                            x
                        }
                    })
                    .collect();
            }
        }
        t.max_abs.set(Some(max_abs(&values)));
        let bytes = encode(&values, dtype);
        self.rt().write(t.buffer(), 0, &bytes);
        Ok(t)
    }

    /// A tensor of `shape` stored as `dtype` whose contents are unspecified
    /// until something writes them: an output to give
    /// [`Context::forward_into`], or a buffer for other GPU work.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.new_tensor(shape, dtype, "tensor")
    }

    /// An f32 tensor of `shape` with unspecified contents.
    pub(crate) fn new_f32(&self, shape: &[usize], arg: &'static str) -> Result<Tensor> {
        self.new_tensor(shape, DType::F32, arg)
    }

    /// A tensor of `shape` stored as `dtype`, with unspecified contents.
    pub(crate) fn new_tensor(
        &self,
        shape: &[usize],
        dtype: DType,
        arg: &'static str,
    ) -> Result<Tensor> {
        let rt = self.rt();
        rt.check_lost()?;
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let bytes = elements
            .and_then(|e| e.checked_mul(dtype.size()))
            .and_then(|b| u64::try_from(b).ok());
        let limit = rt.max_buffer();
        let bytes = match bytes {
            Some(b) if b <= limit => b,
            _ => {
                return Err(Error::TooLarge {
                    arg,
                    bytes: bytes.unwrap_or(u64::MAX),
                    limit,
                    which: "max_buffer_size",
                })
            }
        };
        Ok(Tensor {
            memory: Memory::Pooled(rt.buffer(arg, bytes, TENSOR_USAGE)),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
            owner: rt.id(),
            max_abs: MaxAbs::new(None),
        })
    }

    /// Checks that `t` lives on this context.
    pub(crate) fn owns(&self, arg: &'static str, t: &Tensor) -> Result<()> {
        if t.owner == self.rt().id() {
            Ok(())
        } else {
            Err(Error::ForeignTensor(arg))
        }
    }

    /// Copies all of `src` into `dst` from element `at`, on the GPU (same
    /// storage type), ordered after the work submitted so far: to fill a
    /// decode cache's slot from a prefill's final state, or to move results
    /// into a caller's buffer. Blocks; see [`Context::copy_into_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn copy_into(&self, src: &Tensor, dst: &mut Tensor, at: usize) -> Result<()> {
        pollster::block_on(self.copy_into_async(src, dst, at))
    }

    /// Async form of [`Context::copy_into`].
    pub async fn copy_into_async(&self, src: &Tensor, dst: &mut Tensor, at: usize) -> Result<()> {
        self.owns("src", src)?;
        self.owns("dst", dst)?;
        if src.dtype() != dst.dtype() {
            return Err(Error::DType {
                arg: "src",
                got: src.dtype(),
                expected: dst.dtype(),
            });
        }
        if at.checked_add(src.len()).is_none_or(|end| end > dst.len()) {
            return Err(Error::InvalidValue {
                arg: "at",
                value: format!("{at} (src {} elements, dst {})", src.len(), dst.len()),
                reason: "the source does not fit the destination from there",
            });
        }
        let size = src.dtype().size() as u64;
        if !(at as u64 * size).is_multiple_of(4) || !src.size_bytes().is_multiple_of(4) {
            return Err(Error::InvalidValue {
                arg: "at",
                value: format!("{at} (src {} elements of {})", src.len(), src.dtype()),
                reason: "half-precision copies move whole 32-bit words: an even offset and an even src length",
            });
        }
        src.needs("src", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
        dst.needs("dst", wgpu::BufferUsages::COPY_DST, "COPY_DST")?;
        let mut rec = Recorder::new(self.rt(), "copy");
        rec.copy(
            src.buffer(),
            src.offset(),
            dst.buffer(),
            dst.offset() + at as u64 * size,
            src.size_bytes(),
        );
        // What dst held and what it now holds: both bounds, or none.
        let bound = dst.max_abs().zip(src.max_abs()).map(|(a, b)| a.max(b));
        dst.max_abs.set(bound);
        rec.submit().await
    }

    /// Reads a tensor back to the host. Blocks; see [`Context::read_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }

    /// Reads a tensor back to the host once the GPU work writing it is done.
    pub async fn read_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.owns("tensor", t)?;
        // Copies move whole 32-bit words; a half tensor of odd length has a
        // padding half at the end of its buffer.
        let bytes = t.size_bytes().next_multiple_of(4);
        t.needs("tensor", wgpu::BufferUsages::COPY_SRC, "COPY_SRC")?;
        let raw = self
            .rt()
            .read_bytes(t.buffer(), t.offset, bytes, "tensor")
            .await?;
        Ok(decode(&raw, t.dtype(), t.len()))
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
