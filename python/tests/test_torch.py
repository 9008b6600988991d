"""PyTorch: torch in, torch out; gradients through the library's backward
against torch's own autograd of the naive formula (float64)."""

import numpy as np
import pytest

import lightning_wgpu as lw

torch = pytest.importorskip("torch")


def naive(q, k, v, slopes, scale, s0):
    """The quadratic form, (b, h, n, d), differentiable by torch."""
    n = q.shape[2]
    i = torch.arange(n, dtype=torch.float64)
    lam = torch.as_tensor(slopes, dtype=torch.float64)
    dist = (i[:, None] - i[None, :])
    mask = torch.where(dist >= 0, torch.exp(-lam[:, None, None] * dist.clamp(min=0)), torch.zeros(()))
    qs = q * scale
    o = (qs @ k.transpose(-1, -2) * mask) @ v
    o = o + (qs * torch.exp(-lam[:, None] * (i + 1))[..., None]) @ s0
    tail = torch.exp(-lam[:, None] * (n - 1 - i))[..., None]
    sn = k.transpose(-1, -2) @ (v * tail) + torch.exp(-lam * n)[:, None, None] * s0
    return o, sn


def leaves(rng, *shapes):
    return [torch.tensor(rng.standard_normal(s) * 0.5, dtype=torch.float32, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("with_s0", [True, False])
def test_gradients_match_torch_autograd(rng, with_s0):
    b, h, n, d, e = 2, 3, int(rng.integers(40, 120)), 12, 20
    q, k, v, s0 = leaves(rng, (b, h, n, d), (b, h, n, d), (b, h, n, e), (b, h, d, e))
    slopes = lw.alibi_slopes(h)
    w_o = torch.tensor(rng.standard_normal((b, h, n, e)))
    w_s = torch.tensor(rng.standard_normal((b, h, d, e)))
    o, sn = lw.attention(q, k, v, slopes, 0.7, initial_state=s0 if with_s0 else None, output_final_state=True)
    assert o.dtype == torch.float32 and sn.dtype == torch.float32
    ((o.double() * w_o).sum() + (sn.double() * w_s).sum()).backward()

    refs = [x.detach().double().requires_grad_() for x in (q, k, v, s0)]
    s0_ref = refs[3] if with_s0 else torch.zeros_like(refs[3])
    ro, rs = naive(*refs[:3], slopes, 0.7, s0_ref)
    ((ro * w_o).sum() + (rs * w_s).sum()).backward()

    def close(got, want, what):
        peak = want.abs().max().item()
        err = (got.double() - want).abs().max().item()
        assert err <= 1e-4 * peak, f"{what}: {err:.3g} against {peak:.3g}"

    close(o.detach(), ro.detach(), "o")
    close(sn.detach(), rs.detach(), "final state")
    for name, got, ref in zip(["dq", "dk", "dv"], (q, k, v), refs):
        close(got.grad, ref.grad, name)
    if with_s0:
        close(s0.grad, refs[3].grad, "d initial state")
    else:
        assert s0.grad is None


def test_fla_call_with_torch_and_bfloat16(rng):
    q, k, v = (torch.tensor(rng.standard_normal((1, 50, 2, 8)) * 0.5).to(torch.bfloat16) for _ in range(3))
    o, state = lw.chunk_lightning_attn(q, k, v, layer_idx=1, num_layers=2, output_final_state=True)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32 and o.shape == (1, 50, 2, 8)
    want, _ = lw.chunk_lightning_attn(q.float().numpy(), k.float().numpy(), v.float().numpy(), 1, 2)
    err = np.abs(o.float().numpy() - want).max()
    assert err <= 3e-2 * np.abs(want).max()


def test_no_grad_needed_is_a_plain_call(rng):
    q = torch.tensor(rng.standard_normal((1, 2, 10, 4)), dtype=torch.float32)
    with torch.no_grad():
        o = lw.lightning_attn_func(q, q, q)
    assert isinstance(o, torch.Tensor) and not o.requires_grad


def test_grouped_heads_gradients_match_torch_autograd(rng):
    """q with 3 heads per kv head: as the same heads repeated, which torch
    differentiates into the group sums; the final state counts once."""
    b, hkv, g, n, d, e = 2, 2, 3, int(rng.integers(40, 100)), 8, 12
    q, k, v, s0 = leaves(rng, (b, hkv * g, n, d), (b, hkv, n, d), (b, hkv, n, e), (b, hkv, d, e))
    slopes = lw.alibi_slopes(hkv)
    w_o = torch.tensor(rng.standard_normal((b, hkv * g, n, e)))
    w_s = torch.tensor(rng.standard_normal((b, hkv, d, e)))
    o, sn = lw.attention(q, k, v, slopes, 0.7, initial_state=s0, output_final_state=True)
    assert tuple(o.shape) == (b, hkv * g, n, e) and tuple(sn.shape) == (b, hkv, d, e)
    ((o.double() * w_o).sum() + (sn.double() * w_s).sum()).backward()

    refs = [x.detach().double().requires_grad_() for x in (q, k, v, s0)]
    rep = lambda x: x.repeat_interleave(g, dim=1)  # noqa: E731
    ro, rs = naive(refs[0], rep(refs[1]), rep(refs[2]), np.repeat(slopes, g), 0.7, rep(refs[3]))
    ((ro * w_o).sum() + (rs[:, ::g] * w_s).sum()).backward()

    def close(got, want, what):
        peak = want.abs().max().item()
        err = (got.double() - want).abs().max().item()
        assert err <= 1e-4 * peak, f"{what}: {err:.3g} against {peak:.3g}"

    close(o.detach(), ro.detach(), "o")
    close(sn.detach(), rs[:, ::g].detach(), "final state")
    for name, got, ref in zip(["dq", "dk", "dv", "dS0"], (q, k, v, s0), refs):
        close(got.grad, ref.grad, name)
