"""Lightning Attention on any GPU through WebGPU (wgpu): Vulkan, Metal, DX12,
OpenGL. Causal linear attention with a per-head decay, computed in blocks.

    import numpy as np, lightning_wgpu as lw
    q, k, v = (np.random.randn(2, 4, 1000, 64).astype(np.float32) for _ in range(3))
    o = lw.lightning_attn_func(q, k, v, lw.alibi_slopes(4))

The official kernel's call (:func:`lightning_attn_func`), FLA's calls
(:func:`chunk_lightning_attn`, :func:`fused_recurrent_lightning_attn`,
:func:`chunk_simple_gla`), decoding (:class:`StateCache`,
:func:`decode_step`) and the library's own :func:`attention`. They take
NumPy arrays, torch tensors (with autograd) or resident tensors
(:func:`tensor`) and return the kind they were given.
"""

from . import _native
from ._device import adapters, device
from ._native import Device, Tensor
from .ops import (
    StateCache,
    attention,
    chunk_lightning_attn,
    chunk_simple_gla,
    decode_step,
    fla_slopes,
    fused_recurrent_lightning_attn,
    lightning_attn_func,
    numpy,
    tensor,
)
from .slopes import alibi_slopes

__version__ = _native.__version__

__all__ = [
    "Device",
    "StateCache",
    "Tensor",
    "adapters",
    "alibi_slopes",
    "attention",
    "chunk_lightning_attn",
    "chunk_simple_gla",
    "decode_step",
    "device",
    "fla_slopes",
    "fused_recurrent_lightning_attn",
    "lightning_attn_func",
    "numpy",
    "tensor",
]
