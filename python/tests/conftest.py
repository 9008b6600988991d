"""Shared pieces of the suite: fresh seeds, the float64 reference and the
tolerances per dtype."""

import os
import secrets

import numpy as np
import pytest

import lightning_wgpu as lw

# Relative to the largest |entry| of the reference: float32 sums of a few
# hundred terms; half types round each input and the output once.
TOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


@pytest.fixture
def rng(request):
    """A generator with a fresh seed, printed on failure (LIGHTNING_SEED
    replays one)."""
    seed = int(os.environ.get("LIGHTNING_SEED", secrets.randbits(32)))
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def as_dtype(a, dtype):
    """`a` (float) stored as `dtype`, NumPy: float16 natively, bfloat16
    through ml_dtypes."""
    if dtype == "float32":
        return a.astype(np.float32)
    if dtype == "float16":
        return a.astype(np.float16)
    import ml_dtypes

    return a.astype(ml_dtypes.bfloat16)


def reference(q, k, v, slopes=None, scale=1.0, s0=None, layout="bhnd"):
    """o and the final state in float64 by the recurrence
    S_i = lambda S_{i-1} + k_i^T v_i, o_i = scale q_i S_i."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    if layout == "bnhd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    b, h, n, d = q.shape
    e = v.shape[3]
    lam = np.exp(-np.asarray(slopes if slopes is not None else np.zeros(h), np.float64))
    S = np.zeros((b, h, d, e)) if s0 is None else np.array(s0, dtype=np.float64)
    o = np.empty((b, h, n, e))
    for i in range(n):
        S = lam[None, :, None, None] * S + k[:, :, i, :, None] * v[:, :, i, None, :]
        o[:, :, i] = scale * np.einsum("bhd,bhde->bhe", q[:, :, i], S)
    if layout == "bnhd":
        o = o.transpose(0, 2, 1, 3)
    return o, S


def assert_close(got, want, dtype="float32", what="o"):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    peak = np.abs(want).max()
    assert peak > 0, f"{what}: the reference is all zeros"
    err = np.abs(got - want).max()
    assert np.isfinite(got).all() and err <= TOL[dtype] * peak, f"{what}: max error {err:.3g} against a peak {peak:.3g} ({dtype})"


def randn(rng, *shape, amplitude=1.0):
    return rng.standard_normal(shape) * amplitude


@pytest.fixture(scope="session")
def dev():
    return lw.device()
