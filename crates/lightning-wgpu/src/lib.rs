//! # lightning-wgpu
//!
//! Lightning Attention — causal linear attention with a per-head decay,
//! computed in blocks — on any GPU that wgpu reaches: Vulkan, Metal, DX12,
//! OpenGL and WebGPU in the browser.
//!
//! For one batch element and head, with `lambda = exp(-s)`:
//!
//! ```text
//! o_i = sum_{j <= i} lambda^(i-j) (scale q_i . k_j) v_j
//! ```
//!
//! exactly the official `lightning_attn_func(q, k, v, s)` (scale 1), with an
//! optional initial state and the final state as an output.
//!
//! ```no_run
//! use lightning_wgpu::{alibi_slopes, reference, Context, Dims, ForwardOptions, Layout};
//!
//! let ctx = Context::new()?;
//! let dims = Dims { b: 2, h: 4, n: 500, d: 64, e: 32 };
//! let data = |len: usize| (0..len).map(|i| ((i * 7919 % 200) as f32 - 100.0) / 400.0).collect::<Vec<_>>();
//! let (q, k, v) = (data(2 * 4 * 500 * 64), data(2 * 4 * 500 * 64), data(2 * 4 * 500 * 32));
//! let slopes = alibi_slopes(dims.h);
//! let opts = ForwardOptions { slopes: Some(&slopes), ..Default::default() };
//! let out = ctx.forward(
//!     &ctx.tensor(&q, &[2, 4, 500, 64])?,
//!     &ctx.tensor(&k, &[2, 4, 500, 64])?,
//!     &ctx.tensor(&v, &[2, 4, 500, 32])?,
//!     &opts,
//! )?;
//! let o = ctx.read(&out.o)?;
//! let want = reference::forward(dims, Layout::Bhnd, &q, &k, &v, &slopes, 1.0, None);
//! assert!(reference::relative_error(&o, &want.o) < 1e-5);
//! # Ok::<(), lightning_wgpu::Error>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "burn")]
#[cfg_attr(docsrs, doc(cfg(feature = "burn")))]
pub mod burn;
mod cache;
mod context;
mod error;
mod kernels;
mod layout;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub mod mpi;
mod ops;
mod plan;
pub mod reference;
mod runtime;
mod slopes;
mod tensor;
mod validate;

pub use cache::{Cache, StateCache};
#[cfg(not(target_arch = "wasm32"))]
pub use context::adapters;
pub use context::{adapters_async, Context, ContextOptions};
pub use error::{Error, Result};
pub use kernels::chunk::tensor_core::MAX_DIM as TENSOR_CORE_MAX_DIM;
pub use layout::{Dims, Layout};
pub use ops::backward::{BackwardOptions, Gradients};
pub use ops::decode::DecodeOptions;
pub use ops::draft::Draft;
pub use ops::forward::{ForwardOptions, ForwardOutput, Method};
#[cfg(not(target_arch = "wasm32"))]
pub use ops::parallel::Exchange;
pub use ops::softmax::SoftmaxOptions;
pub use runtime::device::AdapterSummary;
pub use runtime::switches;
pub use runtime::switches::{
    ADAPTER_ENV, BLOCK_ENV, CHECKED_ENV, COOP_ENV, DEPTH_ENV, PACKED_F16_ENV,
};
pub use slopes::{alibi_slopes, layer_slopes};
pub use tensor::{DType, Tensor};
pub use validate::{grouped_problem, problem_dims, MAX_HEAD_DIM};

/// The README's Rust examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The wgpu this crate is built on, for interop.
pub use wgpu;
