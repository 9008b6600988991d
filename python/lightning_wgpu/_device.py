"""The device calls run on: one per process unless the caller picks another."""

from __future__ import annotations

import threading
from typing import Optional, Union

from . import _native

_lock = threading.Lock()
_default: Optional[_native.Device] = None


def adapters() -> list[dict]:
    """Every GPU adapter wgpu sees, as dicts (``index``, ``name``,
    ``backend``, ``device_type``, ``driver``, ``shader_f16``,
    ``cooperative_matrix``, ...): what ``lightning-wgpu info`` prints."""
    return _native.adapters()


def device(adapter: Union[str, int, None] = None) -> _native.Device:
    """The device calls run on by default, opened on first use.

    With ``adapter`` (a name substring such as ``"llvmpipe"`` or an index
    into :func:`adapters`), open that one and make it the default. Without
    it, the ``LIGHTNING_ADAPTER`` environment variable decides, else the
    best adapter."""
    global _default
    with _lock:
        if adapter is not None:
            _default = _native.Device(str(adapter))
        elif _default is None:
            _default = _native.Device()
        return _default


def pick(dev: Optional[_native.Device]) -> _native.Device:
    return dev if dev is not None else device()
