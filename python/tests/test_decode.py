"""Decoding with the state cache: token by token equals the forward pass,
prefill states move into slots, padding and slot errors."""

import numpy as np
import pytest

import lightning_wgpu as lw
from conftest import as_dtype, assert_close, randn, reference


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_decode_equals_the_forward_pass(rng, dtype):
    batch, h, n, d, e = 3, 2, 23, 16, 12
    q, k, v = (as_dtype(randn(rng, batch, h, n, w, amplitude=0.5), dtype) for w in (d, d, e))
    slopes = lw.alibi_slopes(h)
    cache = lw.StateCache(slots=5, heads=h, d=d, e=e)
    slots = [4, 0, 2]
    outs = [lw.decode_step(q[:, :, i], k[:, :, i], v[:, :, i], cache, slots, s=slopes) for i in range(n)]
    got = np.stack(outs, axis=2)
    assert got.dtype == q.dtype
    want_o, want_s = reference(q, k, v, slopes)
    assert_close(got, want_o, dtype)
    states = cache.numpy()
    assert_close(states[slots], want_s, dtype, "cache")
    assert np.all(states[[1, 3]] == 0), "unused slots were touched"


def test_prefill_then_decode(rng):
    h, n, d, e = 2, 40, 8, 8
    q, k, v = (randn(rng, 1, h, n + 5, w, amplitude=0.5).astype(np.float32) for w in (d, d, e))
    slopes = lw.alibi_slopes(h)
    _, state = lw.attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], slopes, output_final_state=True)
    cache = lw.StateCache(2, h, d, e)
    cache.write(1, state[0])
    outs = [lw.decode_step(q[:, :, i], k[:, :, i], v[:, :, i], cache, [1], s=slopes) for i in range(n, n + 5)]
    want, _ = reference(q, k, v, slopes)
    assert_close(np.stack(outs, axis=2), want[:, :, n:])
    cache.reset(1)
    assert np.all(cache.numpy() == 0)


def test_padding_and_bad_slots(rng):
    h, d, e = 2, 4, 4
    q, k, v = (randn(rng, 2, h, w).astype(np.float32) for w in (d, d, e))
    cache = lw.StateCache(2, h, d, e)
    o = lw.decode_step(q, k, v, cache, [-1, 0])
    assert np.all(o[0] == 0) and np.abs(o[1]).max() > 0
    with pytest.raises(ValueError, match="slot 7"):
        lw.decode_step(q, k, v, cache, [7, 0])
    with pytest.raises(ValueError, match="both name slot 1"):
        lw.decode_step(q, k, v, cache, [1, 1])
    with pytest.raises(ValueError):
        lw.decode_step(q, k, v, cache, [0])
    with pytest.raises(TypeError, match="StateCache"):
        lw.decode_step(q, k, v, np.zeros((2, h, d, e)), [0, 1])
    with pytest.raises(ValueError, match="state must be"):
        cache.write(0, np.zeros((h, d + 1, e), np.float32))
    with pytest.raises(ValueError, match="outside"):
        cache.write(2, np.zeros((h, d, e), np.float32))


def test_draft_then_commit(rng):
    t, batch, h, d, e = 3, 2, 2, 8, 6
    q, k = (rng.standard_normal((t, batch, h, d)).astype(np.float32) * 0.4 for _ in range(2))
    v = rng.standard_normal((t, batch, h, e)).astype(np.float32)
    slopes = lw.alibi_slopes(h)
    cache = lw.StateCache(3, h, d, e)
    start = rng.standard_normal((h, d, e)).astype(np.float32)
    cache.write(2, start)
    before = cache.numpy()
    o, draft = cache.decode_draft(q, k, v, slots=[2, 0], tokens=[3, 1], s=slopes)
    assert o.shape == (t, batch, h, e) and o.dtype == np.float32
    assert np.array_equal(cache.numpy(), before), "a draft changed the cache"
    # Request 0 from slot 2's state: (1, h, t, *) in (b, h, n, *).
    bhnd = lambda x: x[:, 0][None].transpose(0, 2, 1, 3)  # noqa: E731
    want_o, _ = reference(bhnd(q), bhnd(k), bhnd(v), slopes, s0=start[None])
    assert_close(o[:, 0].transpose(1, 0, 2), want_o[0])
    assert np.all(o[1:, 1] == 0), "tokens past a request's count are not zero"
    cache.commit(draft, [2, 0])
    _, after_two = reference(bhnd(q)[:, :, :2], bhnd(k)[:, :, :2], bhnd(v)[:, :, :2], slopes, s0=start[None])
    assert_close(cache.numpy()[2], after_two[0], what="committed state")
    assert np.array_equal(cache.numpy()[[0, 1]], before[[0, 1]])
    with pytest.raises(ValueError, match="accepted"):
        cache.commit(draft, [4, 0])
