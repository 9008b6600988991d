"""The calls, under the names and conventions of the official kernel and of
FLA (flash-linear-attention), so that code written for them runs here."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _arrays, _native
from ._device import pick

Array = Any  # a NumPy array, a torch tensor or a resident lightning_wgpu Tensor


def _slopes(s: Any, h: int, arg: str = "s") -> Optional[list[float]]:
    """Per-head slopes from (h,), (h, 1, 1), (1, h, 1, 1) or None."""
    if s is None:
        return None
    a = _arrays.values(s, arg)
    if a.size != h:
        raise ValueError(f"`{arg}` has {a.size} values (shape {a.shape}); expected one per head ({h})")
    return [float(x) for x in a.reshape(-1)]


def _cu_seqlens(cu: Any) -> Optional[list[int]]:
    if cu is None:
        return None
    a = _arrays.values(cu, "cu_seqlens")
    if a.ndim != 1 or np.any(a != np.round(a)):
        raise ValueError(f"`cu_seqlens` must be a 1-D array of integer offsets, got {a!r}")
    return [int(x) for x in a]


def _wants_grad(*xs: Any) -> bool:
    if not any(_arrays.is_torch(x) for x in xs):
        return False
    import torch

    return torch.is_grad_enabled() and any(_arrays.is_torch(x) and x.requires_grad for x in xs)


def attention(
    q: Array,
    k: Array,
    v: Array,
    slopes: Optional[Sequence[float]] = None,
    scale: float = 1.0,
    layout: str = "bhnd",
    initial_state: Optional[Array] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Sequence[int]] = None,
    method: str = "chunk",
    device: Optional[_native.Device] = None,
    checkpoint_every: Optional[int] = None,
):
    """Lightning Attention in this library's own terms.

    ``o_i = sum_{j <= i} exp(-s_h (i - j)) (scale q_i . k_j) v_j``, plus
    ``exp(-s_h (i + 1)) scale q_i S0`` with an initial state ``S0``.
    ``layout`` is ``"bhnd"`` (q, k ``(b, h, n, d)``, v ``(b, h, n, e)``) or
    ``"bnhd"``; states are float32 ``(b, h, d, e)`` (``(N, h, d, e)`` with
    ``cu_seqlens``). Returns ``(o, final_state)``, ``final_state`` None
    unless asked for. Torch tensors that require grad get gradients through
    the library's backward kernels. Grouped heads: q (and o) may have a
    multiple of k's and v's heads; slopes and states are then per kv head.

    With ``checkpoint_every=C`` (a multiple of the device's block rows) it
    returns ``(o, final_state, checkpoints)``: the float32 state after every
    C positions, ``(b, h, n // C, d, e)`` (a packed batch: sequence after
    sequence, ``(sum len_i // C, h, d, e)``), to resume any prefix from."""
    dev = pick(device)
    if checkpoint_every is not None and _wants_grad(q, k, v, initial_state):
        raise ValueError("checkpoints are for inference: call under torch.no_grad()")
    if _wants_grad(q, k, v, initial_state):
        from ._torch import attention_with_grad

        return attention_with_grad(dev, q, k, v, slopes, scale, layout, initial_state, output_final_state, cu_seqlens, method)
    qt, like = _arrays.put(dev, q, "q")
    kt, _ = _arrays.put(dev, k, "k")
    vt, _ = _arrays.put(dev, v, "v")
    s0 = None if initial_state is None else _arrays.put(dev, initial_state, "initial_state", "float32")[0]
    o, sn, ck = dev.forward(
        qt, kt, vt,
        slopes=None if slopes is None else [float(x) for x in slopes],
        scale=float(scale),
        layout=layout,
        initial_state=s0,
        output_final_state=bool(output_final_state),
        cu_seqlens=_cu_seqlens(cu_seqlens),
        method=method,
        checkpoint_every=None if checkpoint_every is None else int(checkpoint_every),
    )
    state_like = like if like.kind != "numpy" else _arrays.Like("numpy", np.float32)
    states = lambda t: None if t is None else state_like.out(t, _float32_of(like))  # noqa: E731
    if checkpoint_every is not None:
        return like.out(o), states(sn), states(ck)
    return like.out(o), states(sn)


def _float32_of(like: _arrays.Like):
    if like.kind == "torch":
        import torch

        return torch.float32
    return np.float32 if like.kind == "numpy" else None


def lightning_attn_func(q: Array, k: Array, v: Array, s: Optional[Array] = None) -> Array:
    """The official kernel's call (``lightning_attn.ops.lightning_attn_func``):
    q, k ``(b, h, n, d)``, v ``(b, h, n, e)``, ``s`` the per-head slopes of
    shape ``(h,)`` or ``(h, 1, 1)`` (None: no decay), scale 1. Returns o."""
    _shape(q)
    h = _shape(k, "k")[1]  # slopes are per kv head (grouped heads)
    o, _ = attention(q, k, v, slopes=_slopes(s, h))
    return o


def _shape(x: Array, arg: str = "q") -> tuple:
    if isinstance(x, (str, bytes)) or not (hasattr(x, "shape") or isinstance(x, (list, tuple))):
        raise TypeError(f"{arg} must be an array or tensor, got {type(x).__name__}")
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) != 4:
        raise ValueError(f"{arg} must have 4 dimensions, got shape {shape}")
    return shape


def fla_slopes(h: int, layer_idx: int, num_layers: int) -> list[float]:
    """The decay FLA's lightning calls give head ``i`` of layer
    ``layer_idx``: ``8 / h * (1 - layer_idx / num_layers) * i`` (head 0
    does not decay)."""
    if num_layers < 1 or not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx = {layer_idx} must lie in [0, num_layers = {num_layers})")
    return [8.0 / h * (1.0 - layer_idx / num_layers) * i for i in range(h)]


def _fla(q, k, v, slopes, scale, initial_state, output_final_state, cu_seqlens, method):
    b, _, h, d = _shape(q)
    if cu_seqlens is not None and b != 1:
        raise ValueError(f"with cu_seqlens the batch must be 1 (sequences packed along T), got {b}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    return attention(q, k, v, slopes, scale, "bnhd", initial_state, output_final_state, cu_seqlens, method)


def chunk_lightning_attn(
    q: Array,
    k: Array,
    v: Array,
    layer_idx: int,
    num_layers: int,
    scale: Optional[float] = None,
    initial_state: Optional[Array] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Array] = None,
):
    """FLA's ``chunk_lightning_attn``: (B, T, H, K) layout, FLA's slopes for
    ``layer_idx`` of ``num_layers``, ``scale=None`` meaning ``1/sqrt(K)``.
    Returns ``(o, final_state)`` (None unless ``output_final_state``)."""
    _shape(q)
    h = _shape(k, "k")[2]  # slopes are per kv head (grouped heads)
    slopes = fla_slopes(h, layer_idx, num_layers)
    return _fla(q, k, v, slopes, scale, initial_state, output_final_state, cu_seqlens, "chunk")


def fused_recurrent_lightning_attn(
    q: Array,
    k: Array,
    v: Array,
    layer_idx: int,
    num_layers: int,
    scale: Optional[float] = None,
    initial_state: Optional[Array] = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: Optional[Array] = None,
):
    """FLA's ``fused_recurrent_lightning_attn``: as
    :func:`chunk_lightning_attn`, computed token by token. ``reverse`` is
    not supported."""
    if reverse:
        raise ValueError("reverse=True is not supported")
    _shape(q)
    h = _shape(k, "k")[2]  # slopes are per kv head (grouped heads)
    slopes = fla_slopes(h, layer_idx, num_layers)
    return _fla(q, k, v, slopes, scale, initial_state, output_final_state, cu_seqlens, "recurrent")


def chunk_simple_gla(
    q: Array,
    k: Array,
    v: Array,
    g: Optional[Array] = None,
    g_gamma: Optional[Array] = None,
    scale: Optional[float] = None,
    initial_state: Optional[Array] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Array] = None,
):
    """FLA's ``chunk_simple_gla`` with a per-head log decay ``g_gamma``
    (shape ``(H,)``, each ``<= 0``; our slopes are ``-g_gamma``). The
    per-token gate ``g`` is not supported. (B, T, H, K) layout; returns
    ``(o, final_state)``."""
    if g is not None:
        raise ValueError("a per-token gate `g` is not supported; give a per-head `g_gamma`")
    _shape(q)
    h = _shape(k, "k")[2]  # slopes are per kv head (grouped heads)
    slopes = None
    if g_gamma is not None:
        gamma = _slopes(g_gamma, h, "g_gamma")
        if any(not x <= 0.0 for x in gamma):
            raise ValueError(f"`g_gamma` must be <= 0 (a log decay), got {gamma}")
        slopes = [-x for x in gamma]
    return _fla(q, k, v, slopes, scale, initial_state, output_final_state, cu_seqlens, "chunk")


class StateCache:
    """Decoding states resident on the GPU: ``slots`` states of ``(heads,
    d, e)`` in float32, starting at zero. Give a request a slot, fill it from
    a prefill's final state with :meth:`write` (or leave it zero), then call
    :func:`decode_step` once per token."""

    def __init__(self, slots: int, heads: int, d: int, e: int, device: Optional[_native.Device] = None):
        self.device = pick(device)
        self.shape = (int(slots), int(heads), int(d), int(e))
        self.tensor = self.device.zeros(list(self.shape))

    def write(self, slot: int, state: Array) -> None:
        """Sets slot ``slot`` (or slots ``slot, slot + 1, ...`` for a batch
        of states ``(batch, heads, d, e)``) to ``state``."""
        t, _ = _arrays.put(self.device, state, "state", "float32")
        per_slot = int(np.prod(self.shape[1:]))
        if len(t.shape) not in (3, 4) or tuple(t.shape[-3:]) != self.shape[1:]:
            raise ValueError(f"a state must be (heads, d, e) = {self.shape[1:]}, got {tuple(t.shape)}")
        count = 1 if len(t.shape) == 3 else t.shape[0]
        if not 0 <= slot or slot + count > self.shape[0]:
            raise ValueError(f"slots {slot}..{slot + count} are outside the cache's {self.shape[0]}")
        self.device.copy_into(t, self.tensor, slot * per_slot)

    def reset(self, slot: int) -> None:
        """Zeroes slot ``slot``."""
        self.write(slot, np.zeros(self.shape[1:], np.float32))

    def decode_draft(self, q: Array, k: Array, v: Array, slots: Any, tokens: Any = None, s: Optional[Array] = None, scale: float = 1.0):
        """Several tokens per request without changing the cache (speculative
        verify): q, k ``(t, batch, h, d)``, v ``(t, batch, h, e)``,
        token-major; request ``r`` takes its first ``tokens[r]`` tokens
        (default: all t) from slot ``slots[r]``. Returns ``(o, draft)``, o
        ``(t, batch, h, e)`` float32 (zero past a request's tokens); then
        :meth:`commit` what was accepted."""
        qt, like = _arrays.put(self.device, q, "q")
        kt, _ = _arrays.put(self.device, k, "k")
        vt, _ = _arrays.put(self.device, v, "v")
        t, batch = qt.shape[0], qt.shape[1] if len(qt.shape) > 1 else 0
        slot_list = [int(x) for x in _arrays.values(slots, "slots").reshape(-1)]
        counts = [t] * batch if tokens is None else [int(x) for x in _arrays.values(tokens, "tokens").reshape(-1)]
        if any(c < 0 for c in counts):
            raise ValueError(f"`tokens` must be counts >= 0, got {counts}")
        o, draft = self.device.decode_draft(qt, kt, vt, self.tensor, slot_list, counts, slopes=_slopes(s, self.shape[1]), scale=float(scale))
        return _arrays.Like(like.kind, None if like.kind != "torch" else _float32_of(like), like.device).out(o), draft

    def commit(self, draft: Any, accepted: Any) -> None:
        """Sets each request's slot to its state after ``accepted[r]`` of its
        draft tokens (0 leaves it; at most its token count)."""
        counts = [int(x) for x in _arrays.values(accepted, "accepted").reshape(-1)]
        if any(c < 0 for c in counts):
            raise ValueError(f"`accepted` must be counts >= 0, got {counts}")
        self.device.commit_draft(self.tensor, draft, counts)

    def numpy(self) -> np.ndarray:
        """Every state, ``(slots, heads, d, e)`` float32."""
        return self.tensor.read()

    def __repr__(self) -> str:
        return f"StateCache(slots={self.shape[0]}, heads={self.shape[1]}, d={self.shape[2]}, e={self.shape[3]})"


def decode_step(
    q: Array,
    k: Array,
    v: Array,
    cache: StateCache,
    slots: Union[Sequence[int], Array],
    s: Optional[Array] = None,
    scale: float = 1.0,
) -> Array:
    """One new token for each of a batch of requests: q, k ``(batch, h,
    d)``, v ``(batch, h, e)``; request ``r`` reads and updates state
    ``cache[slots[r]]`` in place (a negative slot is padding: zero output).
    ``s`` are the per-head slopes. Returns o ``(batch, h, e)``."""
    if not isinstance(cache, StateCache):
        raise TypeError(f"`cache` must be a StateCache, got {type(cache).__name__}")
    dev = cache.device
    qt, like = _arrays.put(dev, q, "q")
    kt, _ = _arrays.put(dev, k, "k")
    vt, _ = _arrays.put(dev, v, "v")
    slot_list = [int(x) for x in _arrays.values(slots, "slots").reshape(-1)]
    o = dev.decode_step(qt, kt, vt, cache.tensor, slot_list, slopes=_slopes(s, cache.shape[1]), scale=float(scale))
    return like.out(o)


def tensor(data: Array, dtype: Optional[str] = None, device: Optional[_native.Device] = None, saturate: bool = False) -> _native.Tensor:
    """``data`` uploaded once and kept on the GPU, stored as its own dtype or
    ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"``); pass it to
    the calls to avoid copies, read it with :func:`numpy`. Values beyond a
    half type's range are a ValueError unless ``saturate``."""
    dev = pick(device)
    if saturate:
        a = _arrays.values(data, "data").astype(np.float32)
        return dev.tensor(np.ascontiguousarray(a), dtype or "float32", saturate=True)
    return _arrays.put(dev, data, "data", dtype)[0]


def numpy(t: _native.Tensor) -> np.ndarray:
    """A resident tensor's values as NumPy, in its dtype (bfloat16 needs ml_dtypes)."""
    return _arrays.numpy_of(t)
