"""Decay slopes as the official kernel builds them."""

from __future__ import annotations

from . import _native


def alibi_slopes(h: int) -> list[float]:
    """The official kernel's ``_build_slope_tensor(h)``: ``2^(-8 (i + 1) / h)``
    for a power of two ``h``, ALiBi's interleave otherwise."""
    return _native.alibi_slopes(int(h))
