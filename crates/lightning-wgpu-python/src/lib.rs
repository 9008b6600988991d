//! The native half of the Python package `lightning_wgpu`: a device, tensors
//! resident on it, and the forward, backward and decode calls on them. The
//! Python layer (`python/lightning_wgpu`) converts NumPy and PyTorch arrays
//! and gives the official and FLA call names; this layer stays small.
//!
//! The GIL is released while the GPU works; every error of the library comes
//! back as a Python exception with its message.

use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use lightning_wgpu as lw;

/// Our error as the Python exception a caller would expect: bad values and
/// shapes are `ValueError`, a wrong dtype `TypeError`, the GPU `RuntimeError`.
fn py_err(e: lw::Error) -> PyErr {
    use lw::Error as E;
    let message = e.to_string();
    match e {
        E::DType { .. } => PyTypeError::new_err(message),
        E::NoAdapter(_)
        | E::RequestDevice { .. }
        | E::DeviceLost(_)
        | E::Gpu { .. }
        | E::Readback(_)
        | E::MissingFeature { .. } => PyRuntimeError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

fn dtype(name: &str) -> PyResult<lw::DType> {
    match name {
        "float32" => Ok(lw::DType::F32),
        "float16" => Ok(lw::DType::F16),
        "bfloat16" => Ok(lw::DType::BF16),
        other => Err(PyTypeError::new_err(format!(
            "dtype `{other}`: lightning_wgpu stores float32, float16 or bfloat16"
        ))),
    }
}

fn dtype_name(d: lw::DType) -> &'static str {
    match d {
        lw::DType::F32 => "float32",
        lw::DType::F16 => "float16",
        lw::DType::BF16 => "bfloat16",
        _ => "unknown",
    }
}

fn layout(name: &str) -> PyResult<lw::Layout> {
    name.parse().map_err(|_| {
        PyValueError::new_err(format!("layout `{name}`: expected \"bhnd\" or \"bnhd\""))
    })
}

fn method(name: &str) -> PyResult<lw::Method> {
    match name {
        "chunk" => Ok(lw::Method::Chunk),
        "recurrent" => Ok(lw::Method::Recurrent),
        other => Err(PyValueError::new_err(format!(
            "method `{other}`: expected \"chunk\" or \"recurrent\""
        ))),
    }
}

/// One GPU device (a wgpu adapter opened for compute).
#[pyclass(frozen, module = "lightning_wgpu._native")]
struct Device {
    ctx: lw::Context,
}

/// A tensor resident on a device's memory.
#[pyclass(module = "lightning_wgpu._native")]
struct Tensor {
    ctx: lw::Context,
    t: lw::Tensor,
}

impl Tensor {
    fn wrap(ctx: &lw::Context, t: lw::Tensor) -> Tensor {
        Tensor {
            ctx: ctx.clone(),
            t,
        }
    }
}

/// The per-token states of a multi-token decode, until committed.
#[pyclass(module = "lightning_wgpu._native")]
struct Draft {
    draft: lw::Draft,
}

#[pymethods]
impl Draft {
    /// Draft tokens per request.
    #[getter]
    fn tokens(&self) -> Vec<usize> {
        self.draft.tokens().to_vec()
    }
}

/// The arguments of forward and backward that are not tensors.
struct Options {
    slopes: Option<Vec<f32>>,
    scale: f32,
    layout: lw::Layout,
    cu_seqlens: Option<Vec<usize>>,
}

impl Options {
    fn new(
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout_name: &str,
        cu_seqlens: Option<Vec<usize>>,
    ) -> PyResult<Options> {
        Ok(Options {
            slopes,
            scale,
            layout: layout(layout_name)?,
            cu_seqlens,
        })
    }

    fn forward<'a>(&'a self, s0: Option<&'a lw::Tensor>) -> lw::ForwardOptions<'a> {
        lw::ForwardOptions {
            slopes: self.slopes.as_deref(),
            scale: self.scale,
            layout: self.layout,
            initial_state: s0,
            cu_seqlens: self.cu_seqlens.as_deref(),
            ..Default::default()
        }
    }
}

/// The sequence-parallel exchange as a Python callable: `all_gather(bytes)
/// -> bytes` (every rank's bytes in rank order), e.g. over torch.distributed.
struct PyExchange {
    rank: usize,
    ranks: usize,
    all_gather: Py<PyAny>,
}

impl lw::Exchange for PyExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_gather(&self, mine: &[u8]) -> lw::Result<Vec<u8>> {
        let failed = |e: PyErr| lw::Error::Gpu {
            op: "the all_gather callback",
            reason: e.to_string(),
        };
        Python::attach(|py| {
            let out = self
                .all_gather
                .call1(py, (PyBytes::new(py, mine),))
                .map_err(failed)?;
            out.extract::<Vec<u8>>(py).map_err(failed)
        })
    }
}

fn summary_dict<'py>(py: Python<'py>, s: &lw::AdapterSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", s.index)?;
    d.set_item("name", &s.info.name)?;
    d.set_item("backend", s.info.backend.to_string())?;
    d.set_item("device_type", format!("{:?}", s.info.device_type))?;
    d.set_item("driver", &s.info.driver)?;
    d.set_item("driver_info", &s.info.driver_info)?;
    d.set_item(
        "shader_f16",
        s.features.contains(lw::wgpu::Features::SHADER_F16),
    )?;
    d.set_item(
        "cooperative_matrix",
        s.features
            .contains(lw::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
    )?;
    d.set_item("max_buffer_size", s.limits.max_buffer_size)?;
    Ok(d)
}

/// Every adapter wgpu sees, as dicts (`index`, `name`, `backend`, ...).
#[pyfunction]
fn adapters(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let list = py.detach(|| lw::adapters(&lw::ContextOptions::default()));
    list.iter().map(|s| summary_dict(py, s)).collect()
}

#[pymethods]
impl Device {
    /// Opens `adapter` (a name substring or an index; `None`: the
    /// `LIGHTNING_ADAPTER` variable, else the best one).
    #[new]
    #[pyo3(signature = (adapter = None))]
    fn new(py: Python<'_>, adapter: Option<String>) -> PyResult<Device> {
        let opts = lw::ContextOptions {
            adapter,
            ..Default::default()
        };
        let ctx = py
            .detach(|| lw::Context::with_options(opts))
            .map_err(py_err)?;
        Ok(Device { ctx })
    }

    /// What this device is: a dict as `adapters()` gives.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = self.ctx.adapter_info().clone();
        let summary = lw::AdapterSummary {
            index: 0,
            info,
            features: self.ctx.device().features(),
            limits: self.ctx.device().limits(),
        };
        let d = summary_dict(py, &summary)?;
        d.del_item("index")?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let info = self.ctx.adapter_info();
        format!("Device({:?}, backend={})", info.name, info.backend)
    }

    /// Uploads float32 `data`, stored as `dtype` (rounded to nearest;
    /// values beyond a half type's range are an error unless `saturate`).
    #[pyo3(signature = (data, dtype = "float32", saturate = false))]
    fn tensor(
        &self,
        py: Python<'_>,
        data: PyReadonlyArrayDyn<'_, f32>,
        dtype: &str,
        saturate: bool,
    ) -> PyResult<Tensor> {
        let d = self::dtype(dtype)?;
        let shape = data.shape().to_vec();
        let values = contiguous(&data)?;
        let ctx = &self.ctx;
        let t = py
            .detach(|| {
                if saturate {
                    ctx.tensor_saturating(values, &shape, d)
                } else {
                    ctx.tensor_as(values, &shape, d)
                }
            })
            .map_err(py_err)?;
        Ok(Tensor::wrap(ctx, t))
    }

    /// Uploads the raw 16-bit words of a float16 or bfloat16 array.
    fn tensor_from_bits(
        &self,
        py: Python<'_>,
        bits: PyReadonlyArrayDyn<'_, u16>,
        dtype: &str,
    ) -> PyResult<Tensor> {
        let d = self::dtype(dtype)?;
        let shape = bits.shape().to_vec();
        let words = contiguous(&bits)?;
        let ctx = &self.ctx;
        let t = py
            .detach(|| ctx.tensor_from_bits(words, &shape, d))
            .map_err(py_err)?;
        Ok(Tensor::wrap(ctx, t))
    }

    /// A tensor of zeros.
    #[pyo3(signature = (shape, dtype = "float32"))]
    fn zeros(&self, py: Python<'_>, shape: Vec<usize>, dtype: &str) -> PyResult<Tensor> {
        let d = self::dtype(dtype)?;
        let len = shape.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        let len = len.ok_or_else(|| PyValueError::new_err(format!("shape {shape:?} overflows")))?;
        let ctx = &self.ctx;
        let t = py
            .detach(|| ctx.tensor_as(&vec![0.0; len], &shape, d))
            .map_err(py_err)?;
        Ok(Tensor::wrap(ctx, t))
    }

    /// The forward pass: `(o, final_state or None, checkpoints or None)`;
    /// `checkpoint_every` keeps the state after every that many positions.
    #[pyo3(signature = (q, k, v, slopes = None, scale = 1.0, layout = "bhnd",
        initial_state = None, output_final_state = false, cu_seqlens = None, method = "chunk",
        checkpoint_every = None))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout: &str,
        initial_state: Option<PyRef<'_, Tensor>>,
        output_final_state: bool,
        cu_seqlens: Option<Vec<usize>>,
        method: &str,
        checkpoint_every: Option<usize>,
    ) -> PyResult<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let opts = Options::new(slopes, scale, layout, cu_seqlens)?;
        let method = self::method(method)?;
        let ctx = &self.ctx;
        let (q, k, v) = (&q.t, &k.t, &v.t);
        let s0 = initial_state.as_ref().map(|s| &s.t);
        let (out, checkpoints) = py
            .detach(|| {
                let f = lw::ForwardOptions {
                    output_final_state,
                    method,
                    ..opts.forward(s0)
                };
                match checkpoint_every {
                    Some(every) => ctx
                        .forward_with_checkpoints(q, k, v, &f, every)
                        .map(|(o, c)| (o, Some(c))),
                    None => ctx.forward(q, k, v, &f).map(|o| (o, None)),
                }
            })
            .map_err(py_err)?;
        Ok((
            Tensor::wrap(ctx, out.o),
            out.final_state.map(|s| Tensor::wrap(ctx, s)),
            checkpoints.map(|c| Tensor::wrap(ctx, c)),
        ))
    }

    /// The backward pass: `(dq, dk, dv, d_initial_state)`, the last `None`
    /// when no initial state was given.
    #[pyo3(signature = (q, k, v, do_, slopes = None, scale = 1.0, layout = "bhnd",
        initial_state = None, d_final_state = None, cu_seqlens = None))]
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        do_: PyRef<'_, Tensor>,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout: &str,
        initial_state: Option<PyRef<'_, Tensor>>,
        d_final_state: Option<PyRef<'_, Tensor>>,
        cu_seqlens: Option<Vec<usize>>,
    ) -> PyResult<(Tensor, Tensor, Tensor, Option<Tensor>)> {
        let opts = Options::new(slopes, scale, layout, cu_seqlens)?;
        let ctx = &self.ctx;
        let (q, k, v, d_o) = (&q.t, &k.t, &v.t, &do_.t);
        let s0 = initial_state.as_ref().map(|s| &s.t);
        let dsn = d_final_state.as_ref().map(|s| &s.t);
        let g = py
            .detach(|| {
                let b = lw::BackwardOptions {
                    forward: opts.forward(s0),
                    d_final_state: dsn,
                };
                ctx.backward(q, k, v, d_o, &b)
            })
            .map_err(py_err)?;
        let ds0 = s0.is_some().then(|| Tensor::wrap(ctx, g.d_initial_state));
        Ok((
            Tensor::wrap(ctx, g.dq),
            Tensor::wrap(ctx, g.dk),
            Tensor::wrap(ctx, g.dv),
            ds0,
        ))
    }

    /// One decoding step against a state cache `(slots, h, d, e)` (f32,
    /// updated in place): q, k `(batch, h, d)`, v `(batch, h, e)`, one slot
    /// per request (negative: padding). Returns o `(batch, h, e)`.
    #[pyo3(signature = (q, k, v, cache, slots, slopes = None, scale = 1.0))]
    #[allow(clippy::too_many_arguments)]
    fn decode_step(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        mut cache: PyRefMut<'_, Tensor>,
        slots: Vec<i32>,
        slopes: Option<Vec<f32>>,
        scale: f32,
    ) -> PyResult<Tensor> {
        let ctx = &self.ctx;
        let (q, k, v) = (&q.t, &k.t, &v.t);
        let cache = &mut cache.t;
        let o = py
            .detach(|| {
                let opts = lw::DecodeOptions {
                    slopes: slopes.as_deref(),
                    scale,
                };
                ctx.decode_step(q, k, v, cache, &slots, &opts)
            })
            .map_err(py_err)?;
        Ok(Tensor::wrap(ctx, o))
    }

    /// The forward over this rank's slice of a sequence split across
    /// `ranks` processes, exchanging through `all_gather(bytes) -> bytes`:
    /// `(o of the slice, final state of the whole sequence or None)`.
    #[pyo3(signature = (q, k, v, all_gather, rank, ranks, slopes = None, scale = 1.0,
        layout = "bhnd", initial_state = None, output_final_state = false))]
    #[allow(clippy::too_many_arguments)]
    fn forward_sequence_parallel(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        all_gather: Py<PyAny>,
        rank: usize,
        ranks: usize,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout: &str,
        initial_state: Option<PyRef<'_, Tensor>>,
        output_final_state: bool,
    ) -> PyResult<(Tensor, Option<Tensor>)> {
        let opts = Options::new(slopes, scale, layout, None)?;
        let exchange = PyExchange {
            rank,
            ranks,
            all_gather,
        };
        let ctx = &self.ctx;
        let (q, k, v) = (&q.t, &k.t, &v.t);
        let s0 = initial_state.as_ref().map(|s| &s.t);
        let out = py
            .detach(|| {
                let f = lw::ForwardOptions {
                    output_final_state,
                    ..opts.forward(s0)
                };
                ctx.forward_sequence_parallel(q, k, v, &f, &exchange)
            })
            .map_err(py_err)?;
        Ok((
            Tensor::wrap(ctx, out.o),
            out.final_state.map(|s| Tensor::wrap(ctx, s)),
        ))
    }

    /// The backward of [`Device::forward_sequence_parallel`]: `(dq, dk, dv,
    /// d_initial_state)` of this rank's slice.
    #[pyo3(signature = (q, k, v, do_, all_gather, rank, ranks, slopes = None, scale = 1.0,
        layout = "bhnd", initial_state = None, d_final_state = None))]
    #[allow(clippy::too_many_arguments)]
    fn backward_sequence_parallel(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        do_: PyRef<'_, Tensor>,
        all_gather: Py<PyAny>,
        rank: usize,
        ranks: usize,
        slopes: Option<Vec<f32>>,
        scale: f32,
        layout: &str,
        initial_state: Option<PyRef<'_, Tensor>>,
        d_final_state: Option<PyRef<'_, Tensor>>,
    ) -> PyResult<(Tensor, Tensor, Tensor, Tensor)> {
        let opts = Options::new(slopes, scale, layout, None)?;
        let exchange = PyExchange {
            rank,
            ranks,
            all_gather,
        };
        let ctx = &self.ctx;
        let (q, k, v, d_o) = (&q.t, &k.t, &v.t, &do_.t);
        let s0 = initial_state.as_ref().map(|s| &s.t);
        let dsn = d_final_state.as_ref().map(|s| &s.t);
        let g = py
            .detach(|| {
                let b = lw::BackwardOptions {
                    forward: opts.forward(s0),
                    d_final_state: dsn,
                };
                ctx.backward_sequence_parallel(q, k, v, d_o, &b, &exchange)
            })
            .map_err(py_err)?;
        Ok((
            Tensor::wrap(ctx, g.dq),
            Tensor::wrap(ctx, g.dk),
            Tensor::wrap(ctx, g.dv),
            Tensor::wrap(ctx, g.d_initial_state),
        ))
    }

    /// Multi-token decode (speculative verify): q, k `(t, batch, h, d)`, v
    /// `(t, batch, h, e)` token-major; request r takes `tokens[r]` tokens
    /// from `cache[slots[r]]`, which is not changed. Returns `(o (t, batch,
    /// h, e) f32, draft)`; commit with `commit_draft`.
    #[pyo3(signature = (q, k, v, cache, slots, tokens, slopes = None, scale = 1.0))]
    #[allow(clippy::too_many_arguments)]
    fn decode_draft(
        &self,
        py: Python<'_>,
        q: PyRef<'_, Tensor>,
        k: PyRef<'_, Tensor>,
        v: PyRef<'_, Tensor>,
        cache: PyRef<'_, Tensor>,
        slots: Vec<i32>,
        tokens: Vec<usize>,
        slopes: Option<Vec<f32>>,
        scale: f32,
    ) -> PyResult<(Tensor, Draft)> {
        let ctx = &self.ctx;
        let (q, k, v, cache) = (&q.t, &k.t, &v.t, &cache.t);
        let (o, draft) = py
            .detach(|| {
                let opts = lw::DecodeOptions {
                    slopes: slopes.as_deref(),
                    scale,
                };
                ctx.decode_draft(q, k, v, cache, &slots, &tokens, &opts)
            })
            .map_err(py_err)?;
        Ok((Tensor::wrap(ctx, o), Draft { draft }))
    }

    /// Sets each request's slot to its state after `accepted[r]` draft tokens.
    fn commit_draft(
        &self,
        py: Python<'_>,
        mut cache: PyRefMut<'_, Tensor>,
        draft: PyRef<'_, Draft>,
        accepted: Vec<usize>,
    ) -> PyResult<()> {
        let ctx = &self.ctx;
        let (cache, draft) = (&mut cache.t, &draft.draft);
        py.detach(|| ctx.commit_draft(cache, draft, &accepted))
            .map_err(py_err)
    }

    /// Copies `src` (all of it) into `dst` from element `at`, on the GPU.
    fn copy_into(
        &self,
        py: Python<'_>,
        src: PyRef<'_, Tensor>,
        mut dst: PyRefMut<'_, Tensor>,
        at: usize,
    ) -> PyResult<()> {
        let (ctx, src, dst) = (&self.ctx, &src.t, &mut dst.t);
        py.detach(|| ctx.copy_into(src, dst, at)).map_err(py_err)
    }
}

fn contiguous<'a, T: numpy::Element>(a: &'a PyReadonlyArrayDyn<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err("the array must be C-contiguous"))
}

#[pymethods]
impl Tensor {
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.t.shape().to_vec()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        dtype_name(self.t.dtype())
    }

    fn __len__(&self) -> usize {
        self.t.shape()[0]
    }

    fn __repr__(&self) -> String {
        format!(
            "Tensor(shape={:?}, dtype={}, device={:?})",
            self.t.shape(),
            dtype_name(self.t.dtype()),
            self.ctx.adapter_info().name
        )
    }

    /// The values as float32 (half types widened exactly).
    fn read<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (ctx, t) = (&self.ctx, &self.t);
        let data = py.detach(|| ctx.read(t)).map_err(py_err)?;
        numpy::PyArray1::from_vec(py, data).reshape(t.shape())
    }

    /// The values as a NumPy array of the tensor's dtype (bfloat16 through
    /// the ml_dtypes package).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.t.dtype() {
            lw::DType::F32 => Ok(self.read(py)?.into_any()),
            lw::DType::F16 => self.read_bits(py)?.call_method1("view", ("float16",)),
            _ => {
                let bf16 = py.import("ml_dtypes").map_err(|_| {
                    PyTypeError::new_err(
                        "bfloat16 arrays need the ml_dtypes package: pip install ml_dtypes",
                    )
                })?;
                self.read_bits(py)?
                    .call_method1("view", (bf16.getattr("bfloat16")?,))
            }
        }
    }

    /// The raw 16-bit words of a float16 or bfloat16 tensor.
    fn read_bits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<u16>>> {
        let (ctx, t) = (&self.ctx, &self.t);
        let data = py.detach(|| ctx.read_bits(t)).map_err(py_err)?;
        numpy::PyArray1::from_vec(py, data).reshape(t.shape())
    }
}

/// The official kernel's slopes for `h` heads.
#[pyfunction]
fn alibi_slopes(h: usize) -> Vec<f32> {
    lw::alibi_slopes(h)
}

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{adapters, alibi_slopes, Device, Draft, Tensor};

    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}
