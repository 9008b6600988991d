//! The one error type of the crate: every failure names what went wrong.

/// Everything that can go wrong in this crate. Input problems are found on the
/// host before any GPU work is recorded and name the offending argument.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter matched (none at all, or none matching `LIGHTNING_ADAPTER`).
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not open a device on adapter `{adapter}`: {reason}")]
    RequestDevice { adapter: String, reason: String },
    /// The device was lost (driver reset, GPU removed, destroyed).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// wgpu reported an error for work this crate recorded (a bug, or memory exhaustion).
    #[error("GPU error during {op}: {reason}")]
    Gpu { op: &'static str, reason: String },
    /// Reading a buffer back from the GPU failed.
    #[error("reading `{0}` back from the GPU failed")]
    Readback(&'static str),

    /// A tensor has the wrong number of dimensions.
    #[error("`{arg}` must have {expected} dimensions {what}, got shape {got:?}")]
    Rank {
        arg: &'static str,
        expected: usize,
        what: &'static str,
        got: Vec<usize>,
    },
    /// Two tensors disagree on a dimension.
    #[error("shape mismatch: `{arg}` has {dim} = {got}, but `{reference}` has {dim} = {expected}")]
    ShapeMismatch {
        arg: &'static str,
        dim: &'static str,
        got: usize,
        reference: &'static str,
        expected: usize,
    },
    /// A dimension is zero.
    #[error("`{arg}` has {dim} = 0: every dimension must be at least 1")]
    Empty {
        arg: &'static str,
        dim: &'static str,
    },
    /// A head dimension beyond what the kernels support.
    #[error("`{arg}` has {dim} = {got}, above the supported maximum {max}")]
    DimTooLarge {
        arg: &'static str,
        dim: &'static str,
        got: usize,
        max: usize,
    },
    /// Host data does not match the shape it was given with.
    #[error("`{arg}`: shape {shape:?} holds {expected} elements but {got} were given")]
    DataLength {
        arg: &'static str,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    /// A tensor's storage type is not the one this operation takes.
    #[error("`{arg}` is stored as {got}, but this operation takes {expected}")]
    DType {
        arg: &'static str,
        got: crate::DType,
        expected: crate::DType,
    },
    /// The decay slopes are malformed.
    #[error("`slopes`: {0}")]
    Slopes(String),
    /// A scalar option is out of range.
    #[error("`{arg}` = {value}: {reason}")]
    InvalidValue {
        arg: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The tensor is larger than the device can allocate, or than one
    /// dispatch can address.
    #[error("`{arg}` needs {bytes} bytes, over the device limit of {limit} bytes ({which})")]
    TooLarge {
        arg: &'static str,
        bytes: u64,
        limit: u64,
        which: &'static str,
    },
    /// `cu_seqlens` does not describe a packed batch of this `n`.
    #[error("`cu_seqlens`: {0}")]
    CuSeqlens(String),
    /// A decode request names a slot outside the state cache.
    #[error("`slots`: request {request} names slot {slot}, but the cache has {slots} slots")]
    SlotOutOfRange {
        request: usize,
        slot: i64,
        slots: usize,
    },
    /// Two decode requests share one slot (their updates would race).
    #[error("`slots`: requests {first} and {second} both name slot {slot}")]
    DuplicateSlot {
        slot: i64,
        first: usize,
        second: usize,
    },
    /// A feature was required (by an option) that the adapter does not have.
    #[error("`{option}` asks for {feature}, but adapter `{adapter}` {reason}")]
    MissingFeature {
        option: &'static str,
        feature: &'static str,
        adapter: String,
        reason: String,
    },
    /// A value the storage type cannot hold (it would round to infinity).
    #[error("`{arg}` holds a value of magnitude {max_abs}, beyond what {dtype} holds ({limit}): scale it, store it as a wider type, or ask for saturation")]
    OutOfRange {
        arg: &'static str,
        dtype: crate::DType,
        max_abs: f32,
        limit: f32,
    },
    /// A caller's buffer lacks a usage the operation needs.
    #[error("`{arg}`'s buffer has no {missing} usage, which this needs: create it with wgpu::BufferUsages::{missing}")]
    BufferUsage {
        arg: &'static str,
        missing: &'static str,
    },
    /// A tensor belongs to another context's device.
    #[error("`{0}` was created on a different context")]
    ForeignTensor(&'static str),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
