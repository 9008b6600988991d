"""Every call against the float64 reference: random shapes (odd sizes, n not
a multiple of the block, d != e), each dtype, FLA's layout and defaults."""

import math

import numpy as np
import pytest

import lightning_wgpu as lw
from conftest import TOL, as_dtype, assert_close, randn, reference

DTYPES = ["float32", "float16", "bfloat16"]


def problem(rng, b, h, n, d, e, dtype, layout="bhnd", amplitude=0.5):
    shape = lambda w: (b, h, n, w) if layout == "bhnd" else (b, n, h, w)  # noqa: E731
    q, k = (as_dtype(randn(rng, *shape(d), amplitude=amplitude), dtype) for _ in range(2))
    v = as_dtype(randn(rng, *shape(e), amplitude=amplitude), dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s_shape", ["h", "h11", None])
def test_lightning_attn_func(rng, dtype, s_shape):
    b, h, n, d, e = 2, 3, int(rng.integers(70, 200)), 24, 40
    q, k, v = problem(rng, b, h, n, d, e, dtype)
    slopes = np.asarray(lw.alibi_slopes(h))
    s = {"h": slopes, "h11": slopes.reshape(h, 1, 1), None: None}[s_shape]
    o = lw.lightning_attn_func(q, k, v, s)
    assert isinstance(o, np.ndarray) and o.dtype == q.dtype and o.shape == (b, h, n, e)
    want, _ = reference(q, k, v, None if s is None else slopes)
    assert_close(o, want, dtype)


def test_alibi_slopes_match_the_official_formula():
    for h in (1, 2, 4, 8, 32):
        assert np.allclose(lw.alibi_slopes(h), [2 ** (-8 * (i + 1) / h) for i in range(h)], rtol=1e-6)
    # Not a power of two: the closest power's slopes, then every other of twice it.
    p8 = [2 ** (-8 * (i + 1) / 8) for i in range(8)]
    p16 = [2 ** (-8 * (i + 1) / 16) for i in range(16)]
    assert np.allclose(lw.alibi_slopes(12), p8 + p16[0::2][:4], rtol=1e-6)


def test_fla_slopes():
    assert lw.fla_slopes(4, 0, 2) == [0.0, 2.0, 4.0, 6.0]
    assert np.allclose(lw.fla_slopes(4, 1, 2), [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="layer_idx"):
        lw.fla_slopes(4, 2, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn", ["chunk", "fused_recurrent"])
def test_fla_lightning_calls(rng, dtype, fn):
    b, t, h, kd, vd = 2, int(rng.integers(40, 150)), 4, 16, 20
    q, k, v = problem(rng, b, h, t, kd, vd, dtype, layout="bnhd")
    call = lw.chunk_lightning_attn if fn == "chunk" else lw.fused_recurrent_lightning_attn
    # FLA's slopes are steep for the last heads at layer 0: use a later layer.
    o, final = call(q, k, v, layer_idx=5, num_layers=6)
    assert final is None and o.shape == (b, t, h, vd)
    want, _ = reference(q, k, v, lw.fla_slopes(h, 5, 6), 1 / math.sqrt(kd), layout="bnhd")
    assert_close(o, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_simple_gla_with_states(rng, dtype):
    b, t, h, kd, vd = 2, 97, 3, 12, 28
    q, k, v = problem(rng, b, h, t, kd, vd, dtype, layout="bnhd")
    g_gamma = -np.asarray(lw.alibi_slopes(h))
    s0 = randn(rng, b, h, kd, vd).astype(np.float32)
    o, final = lw.chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=0.3, initial_state=s0, output_final_state=True)
    want_o, want_s = reference(q, k, v, -g_gamma, 0.3, s0, layout="bnhd")
    assert_close(o, want_o, dtype)
    assert final.dtype == np.float32 and final.shape == (b, h, kd, vd)
    assert_close(final, want_s, dtype, "final state")


def test_chunks_chain_through_the_state(rng):
    b, h, n, d, e = 1, 2, 150, 16, 8
    q, k, v = problem(rng, b, h, n, d, e, "float32")
    slopes = lw.alibi_slopes(h)
    whole, s_whole = lw.attention(q, k, v, slopes, output_final_state=True)
    cut = 61
    first, s_mid = lw.attention(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], slopes, output_final_state=True)
    second, s_end = lw.attention(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], slopes, initial_state=s_mid, output_final_state=True)
    assert_close(np.concatenate([first, second], axis=2), whole)
    assert_close(s_end, s_whole, what="final state")


def test_varlen_matches_separate_calls(rng):
    lengths = [37, 1, 90, 64]
    cu = np.cumsum([0] + lengths)
    h, kd, vd = 2, 16, 24
    q, k, v = problem(rng, 1, h, int(cu[-1]), kd, vd, "float32", layout="bnhd")
    s0 = randn(rng, len(lengths), h, kd, vd).astype(np.float32)
    o, final = lw.chunk_simple_gla(q, k, v, g_gamma=-np.full(h, 0.05), initial_state=s0, output_final_state=True, cu_seqlens=cu)
    for i, (a, z) in enumerate(zip(cu[:-1], cu[1:])):
        want_o, want_s = reference(q[:, a:z], k[:, a:z], v[:, a:z], np.full(h, 0.05), 1 / math.sqrt(kd), s0[i : i + 1], "bnhd")
        assert_close(o[:, a:z], want_o, what=f"o of sequence {i}")
        assert_close(final[i : i + 1], want_s, what=f"state of sequence {i}")
    with pytest.raises(ValueError, match="batch must be 1"):
        lw.chunk_simple_gla(np.concatenate([q, q]), np.concatenate([k, k]), np.concatenate([v, v]), cu_seqlens=cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        lw.chunk_simple_gla(q, k, v, cu_seqlens=[0, 50, 40, int(cu[-1])])


def test_float64_in_float64_out(rng):
    q, k, v = (randn(rng, 1, 2, 33, 8) for _ in range(3))
    o = lw.lightning_attn_func(q, k, v)
    assert o.dtype == np.float64
    assert_close(o, reference(q, k, v)[0])


def test_resident_tensors_chain_without_copies(rng):
    b, h, n, d = 1, 2, 45, 8
    q, k, v = problem(rng, b, h, n, d, d, "float32")
    qt, kt, vt = (lw.tensor(x) for x in (q, k, v))
    o, state = lw.attention(qt, kt, vt, lw.alibi_slopes(h), output_final_state=True)
    assert isinstance(o, lw.Tensor) and isinstance(state, lw.Tensor)
    # The output goes straight back in as v; the state as the initial state.
    o2, _ = lw.attention(qt, kt, o, lw.alibi_slopes(h), initial_state=state)
    want1, s1 = reference(q, k, v, lw.alibi_slopes(h))
    want2, _ = reference(q, k, want1, lw.alibi_slopes(h), s0=s1)
    assert_close(o2.numpy(), want2)
    assert o.shape == [b, h, n, d] and o.dtype == "float32"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_tensors_round_trip_their_bits(rng, dtype):
    a = as_dtype(randn(rng, 3, 5, 7), dtype)
    back = lw.tensor(a).numpy()
    assert back.dtype == a.dtype and np.array_equal(back.view(np.uint16), a.view(np.uint16))
    # float32 data stored as a half type rounds to nearest.
    t = lw.tensor(np.float32([1.0, 65504.0, 1e-3]), dtype="float16")
    assert t.dtype == "float16" and np.array_equal(t.numpy(), np.float16([1.0, 65504.0, 1e-3]))
    with pytest.raises(ValueError, match="beyond"):
        lw.tensor(np.float32([1e6]), dtype="float16")
    assert lw.tensor(np.float32([1e6]), dtype="float16", saturate=True).numpy()[0] == np.float16(65504)


def test_adapters_and_devices():
    listed = lw.adapters()
    assert listed and all({"index", "name", "backend"} <= set(a) for a in listed)
    dev = lw.device()
    assert dev.info["name"] in [a["name"] for a in listed]
    assert "Device(" in repr(dev)


def test_checkpoints_resume_the_run(rng, dev):
    block = 64  # a multiple of every adapter's block rows (32 or 64)
    b, h, n, d, e = 1, 2, 2 * block + 19, 8, 8
    q, k, v = problem(rng, b, h, n, d, e, "float32")
    slopes = lw.alibi_slopes(h)
    o, _, ck = lw.attention(q, k, v, slopes, checkpoint_every=block)
    assert ck.shape == (b, h, 2, d, e) and ck.dtype == np.float32
    rest, _ = lw.attention(q[:, :, block:], k[:, :, block:], v[:, :, block:], slopes, initial_state=ck[:, :, 0])
    assert_close(rest, o[:, :, block:])
    with pytest.raises(ValueError, match="checkpoint_every"):
        lw.attention(q, k, v, slopes, checkpoint_every=block + 1)
