"""Sequence parallelism (LASP-2): a sequence split across processes, each
holding a contiguous slice of the positions; the processes exchange one
state each (``b h d e`` float32, whatever the length). The exchange is any
``all_gather(bytes) -> bytes`` (every rank's bytes, in rank order);
:func:`torch_all_gather` makes one from ``torch.distributed`` (gloo or NCCL).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _arrays, _native
from ._device import pick

AllGather = Callable[[bytes], bytes]


def torch_all_gather(group: Any = None) -> AllGather:
    """An all-gather over ``torch.distributed`` (initialised by the caller)."""
    import torch
    import torch.distributed as dist

    def gather(mine: bytes) -> bytes:
        t = torch.frombuffer(bytearray(mine), dtype=torch.uint8)
        if dist.get_backend(group) == "nccl":
            t = t.cuda()
        out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, t, group=group)
        return b"".join(o.cpu().numpy().tobytes() for o in out)

    return gather


def _transport(all_gather: Optional[AllGather], rank: Optional[int], ranks: Optional[int]):
    if all_gather is not None:
        if rank is None or ranks is None:
            raise ValueError("with your own all_gather, give rank and ranks too")
        return all_gather, int(rank), int(ranks)
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("give all_gather, rank and ranks, or initialise torch.distributed first")
    return torch_all_gather(), dist.get_rank(), dist.get_world_size()


def attention_sequence_parallel(
    q: Any,
    k: Any,
    v: Any,
    slopes: Optional[Sequence[float]] = None,
    scale: float = 1.0,
    layout: str = "bhnd",
    initial_state: Any = None,
    output_final_state: bool = False,
    all_gather: Optional[AllGather] = None,
    rank: Optional[int] = None,
    ranks: Optional[int] = None,
    device: Optional[_native.Device] = None,
):
    """This rank's slice of :func:`lightning_wgpu.attention` over a sequence
    split across ranks: q, k, v are the slice (the same b, h, d, e on every
    rank), the initial state is read on rank 0. Returns ``(o of the slice,
    final state of the whole sequence or None)``, on every rank."""
    dev = pick(device)
    gather, rank, ranks = _transport(all_gather, rank, ranks)
    qt, like = _arrays.put(dev, q, "q")
    kt, _ = _arrays.put(dev, k, "k")
    vt, _ = _arrays.put(dev, v, "v")
    s0 = None if initial_state is None else _arrays.put(dev, initial_state, "initial_state", "float32")[0]
    o, sn = dev.forward_sequence_parallel(
        qt, kt, vt, gather, rank, ranks,
        slopes=None if slopes is None else [float(x) for x in slopes],
        scale=float(scale), layout=layout, initial_state=s0, output_final_state=bool(output_final_state),
    )
    state_like = like if like.kind != "numpy" else _arrays.Like("numpy", np.float32)
    return like.out(o), None if sn is None else state_like.out(sn)


def attention_sequence_parallel_backward(
    q: Any,
    k: Any,
    v: Any,
    do: Any,
    slopes: Optional[Sequence[float]] = None,
    scale: float = 1.0,
    layout: str = "bhnd",
    initial_state: Any = None,
    d_final_state: Any = None,
    all_gather: Optional[AllGather] = None,
    rank: Optional[int] = None,
    ranks: Optional[int] = None,
    device: Optional[_native.Device] = None,
):
    """The gradients of :func:`attention_sequence_parallel` for this rank's
    slice of ``do``: ``(dq, dk, dv, d_initial_state)``; ``d_final_state``
    (the whole sequence's) is read on the last rank, ``d_initial_state`` is
    the whole sequence's on rank 0."""
    dev = pick(device)
    gather, rank, ranks = _transport(all_gather, rank, ranks)
    qt, like = _arrays.put(dev, q, "q")
    kt, _ = _arrays.put(dev, k, "k")
    vt, _ = _arrays.put(dev, v, "v")
    dot, _ = _arrays.put(dev, do, "do")
    s0 = None if initial_state is None else _arrays.put(dev, initial_state, "initial_state", "float32")[0]
    dsn = None if d_final_state is None else _arrays.put(dev, d_final_state, "d_final_state", "float32")[0]
    dq, dk, dv, ds0 = dev.backward_sequence_parallel(
        qt, kt, vt, dot, gather, rank, ranks,
        slopes=None if slopes is None else [float(x) for x in slopes],
        scale=float(scale), layout=layout, initial_state=s0, d_final_state=dsn,
    )
    state_like = like if like.kind != "numpy" else _arrays.Like("numpy", np.float32)
    return like.out(dq), like.out(dk), like.out(dv), state_like.out(ds0)
