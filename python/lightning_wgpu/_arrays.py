"""Arrays in and out: NumPy, PyTorch and resident tensors go in, results come
back as the kind that went in (float64 is computed in float32 and returned as
float64)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np

from . import _native

_warned_host_copy = False


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return torch


def is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _bf16():
    try:
        import ml_dtypes
    except ImportError as e:
        raise TypeError(
            "bfloat16 NumPy arrays need the ml_dtypes package: pip install ml_dtypes"
        ) from e
    return ml_dtypes.bfloat16


class Like:
    """How to return a result: as NumPy, as PyTorch (dtype, device), or as a
    resident tensor."""

    def __init__(self, kind: str, dtype: Any = None, device: Any = None):
        self.kind, self.dtype, self.device = kind, dtype, device

    def out(self, t: _native.Tensor, dtype: Any = None) -> Any:
        """`t` as this kind; `dtype` overrides the dtype (the states are
        float32 whatever the inputs are)."""
        if self.kind == "tensor":
            return t
        want = dtype if dtype is not None else self.dtype
        if self.kind == "numpy":
            return numpy_of(t, want)
        torch = _torch()
        if t.dtype == "float32":
            out = torch.from_numpy(t.read())
        else:
            bits = torch.from_numpy(t.read_bits().view(np.int16))
            out = bits.view(torch.float16 if t.dtype == "float16" else torch.bfloat16)
        return out.to(device=self.device, dtype=want if want is not None else out.dtype)


def numpy_of(t: _native.Tensor, dtype: Any = None) -> np.ndarray:
    """A resident tensor's values, in its own dtype (or `dtype`)."""
    if t.dtype == "float32":
        out = t.read()
    elif t.dtype == "float16":
        out = t.read_bits().view(np.float16)
    else:
        out = t.read_bits().view(_bf16())
    return out if dtype is None or out.dtype == dtype else out.astype(dtype)


def _dtype_name(dtype: Any) -> Optional[str]:
    """Our name of a NumPy or torch dtype, None for float64 (computed in
    float32), TypeError for what is not a float."""
    name = str(dtype).replace("torch.", "")
    if name in ("float32", "float16", "bfloat16"):
        return name
    if name == "float64":
        return None
    raise TypeError(f"dtype {name}: lightning_wgpu takes float32, float16, bfloat16 or float64 arrays")


def put(dev: _native.Device, x: Any, arg: str, dtype: Optional[str] = None) -> tuple[_native.Tensor, Like]:
    """`x` as a resident tensor on `dev` (uploaded unless it is one), stored
    as its own dtype or as `dtype`, and how to return results like it."""
    if isinstance(x, _native.Tensor):
        if dtype is not None and x.dtype != dtype:
            raise TypeError(f"`{arg}` is a {x.dtype} tensor, but {dtype} is needed here")
        return x, Like("tensor")
    if is_torch(x):
        global _warned_host_copy
        torch = _torch()
        if x.device.type != "cpu" and not _warned_host_copy:
            warnings.warn(
                f"lightning_wgpu: tensors on {x.device.type} go through host memory "
                "(wgpu cannot read another framework's device memory)",
                stacklevel=3,
            )
            _warned_host_copy = True
        like = Like("torch", x.dtype, x.device)
        name = dtype or _dtype_name(x.dtype)
        x = x.detach().to("cpu")
        if name in ("float16", "bfloat16") and str(x.dtype) == f"torch.{name}":
            bits = x.contiguous().view(torch.int16).numpy().view(np.uint16)
            return dev.tensor_from_bits(bits, name), like
        return dev.tensor(np.ascontiguousarray(x.to(torch.float32).numpy()), name or "float32"), like
    a = np.asarray(x)
    like = Like("numpy", a.dtype)
    name = dtype or _dtype_name(a.dtype)
    if name in ("float16", "bfloat16") and a.dtype.name == name:
        return dev.tensor_from_bits(np.ascontiguousarray(a).view(np.uint16), name), like
    return dev.tensor(np.ascontiguousarray(a, dtype=np.float32), name or "float32"), like


def values(x: Any, arg: str) -> np.ndarray:
    """A small host array (slopes, g_gamma) as float64 NumPy."""
    if is_torch(x):
        x = x.detach().to("cpu").double().numpy()
    elif isinstance(x, _native.Tensor):
        x = x.read()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{arg}` must be numbers, got {type(x).__name__}") from e
