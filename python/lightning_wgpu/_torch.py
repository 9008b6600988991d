"""Gradients for torch tensors: an autograd function whose backward runs the
library's backward kernels (initial state and final state included)."""

from __future__ import annotations

import torch

from . import _arrays


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, s0, dev, slopes, scale, layout, cu_seqlens, method):
        put = lambda x, arg, dtype=None: _arrays.put(dev, x, arg, dtype)[0]  # noqa: E731
        qt, kt, vt = put(q, "q"), put(k, "k"), put(v, "v")
        s0t = None if s0 is None else put(s0, "initial_state", "float32")
        o, sn, _ = dev.forward(
            qt, kt, vt, slopes=slopes, scale=scale, layout=layout, initial_state=s0t,
            output_final_state=True, cu_seqlens=cu_seqlens, method=method,
        )
        # The uploads stay resident for the backward: no second copy.
        ctx.dev, ctx.saved = dev, (qt, kt, vt, s0t)
        ctx.args = dict(slopes=slopes, scale=scale, layout=layout, cu_seqlens=cu_seqlens)
        ctx.likes = [_arrays.Like("torch", x.dtype, x.device) for x in (q, k, v)]
        ctx.s0_like = None if s0 is None else _arrays.Like("torch", s0.dtype, s0.device)
        ctx.set_materialize_grads(False)
        o_like = ctx.likes[2]
        ctx.o_shape = tuple(o.shape)  # v's with q's heads (grouped heads)
        return o_like.out(o), _arrays.Like("torch", torch.float32, v.device).out(sn)

    @staticmethod
    def backward(ctx, d_o, d_sn):
        dev = ctx.dev
        qt, kt, vt, s0t = ctx.saved
        if d_o is None:
            d_o = torch.zeros(ctx.o_shape, dtype=ctx.likes[2].dtype)
        dot = _arrays.put(dev, d_o.to(ctx.likes[2].dtype), "do")[0]
        dsnt = None if d_sn is None else _arrays.put(dev, d_sn, "d_final_state", "float32")[0]
        dq, dk, dv, ds0 = dev.backward(qt, kt, vt, dot, initial_state=s0t, d_final_state=dsnt, **ctx.args)
        grads = [like.out(g) for like, g in zip(ctx.likes, (dq, dk, dv))]
        ds0 = None if ds0 is None else ctx.s0_like.out(ds0)
        return (*grads, ds0, None, None, None, None, None, None)


def attention_with_grad(dev, q, k, v, slopes, scale, layout, initial_state, output_final_state, cu_seqlens, method):
    from .ops import _cu_seqlens

    for arg, x in (("q", q), ("k", k), ("v", v), ("initial_state", initial_state)):
        if x is not None and not _arrays.is_torch(x):
            raise TypeError(f"with torch tensors that require grad, `{arg}` must be a torch tensor too")
    o, sn = _Attention.apply(
        q, k, v, initial_state, dev,
        None if slopes is None else [float(x) for x in slopes],
        float(scale), layout, _cu_seqlens(cu_seqlens), method,
    )
    return o, (sn if output_final_state else None)
