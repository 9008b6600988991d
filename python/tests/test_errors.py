"""Bad input is an exception that names the problem, never a crash."""

import numpy as np
import pytest

import lightning_wgpu as lw


def ones(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def test_shapes():
    with pytest.raises(ValueError, match="4 dimensions"):
        lw.lightning_attn_func(ones(2, 8, 4), ones(2, 8, 4), ones(2, 8, 4))
    with pytest.raises(ValueError, match="`k`"):
        lw.lightning_attn_func(ones(1, 2, 8, 4), ones(1, 2, 9, 4), ones(1, 2, 8, 4))
    with pytest.raises(ValueError, match="`v`"):
        lw.lightning_attn_func(ones(1, 2, 8, 4), ones(1, 2, 8, 4), ones(1, 3, 8, 4))
    with pytest.raises(ValueError, match="= 0"):
        lw.lightning_attn_func(ones(1, 2, 0, 4), ones(1, 2, 0, 4), ones(1, 2, 0, 4))
    with pytest.raises(ValueError, match="initial_state"):
        lw.attention(ones(1, 2, 8, 4), ones(1, 2, 8, 4), ones(1, 2, 8, 4), initial_state=ones(1, 2, 4, 5))
    with pytest.raises(ValueError, match="maximum"):
        lw.lightning_attn_func(ones(1, 1, 2, 4096), ones(1, 1, 2, 4096), ones(1, 1, 2, 4))


def test_values():
    x = ones(1, 2, 8, 4)
    with pytest.raises(ValueError, match="one per head"):
        lw.lightning_attn_func(x, x, x, s=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="slopes"):
        lw.lightning_attn_func(x, x, x, s=[0.1, float("nan")])
    with pytest.raises(ValueError, match="scale"):
        lw.attention(x, x, x, scale=float("inf"))
    with pytest.raises(ValueError, match="g_gamma"):
        lw.chunk_simple_gla(x, x, x, g_gamma=np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="per-token gate"):
        lw.chunk_simple_gla(x, x, x, g=x)
    with pytest.raises(ValueError, match="reverse"):
        lw.fused_recurrent_lightning_attn(x, x, x, 0, 2, reverse=True)
    with pytest.raises(ValueError, match="layout"):
        lw.attention(x, x, x, layout="nhbd")
    with pytest.raises(ValueError, match="method"):
        lw.attention(x, x, x, method="fast")


def test_types():
    x = ones(1, 2, 8, 4)
    with pytest.raises(TypeError, match="int32"):
        lw.lightning_attn_func(x.astype(np.int32), x, x)
    with pytest.raises(TypeError, match="f16"):
        lw.lightning_attn_func(x.astype(np.float16), x, x)
    with pytest.raises(TypeError, match="dtype"):
        lw.tensor(x, dtype="float8")
    with pytest.raises(TypeError):
        lw.lightning_attn_func("q", x, x)
