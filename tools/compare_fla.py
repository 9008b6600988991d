#!/usr/bin/env python3
"""lightning-wgpu against FLA on the same inputs, on a CUDA machine: the
forward and the gradients of q, k, v and the initial state, ours through the
Python package (its torch autograd function, CPU tensors) and FLA's
`chunk_simple_gla` on CUDA, f32 and bf16. Writes the largest differences,
relative to the largest entry, as JSON.

    pip install --no-deps lightning_wgpu-*.whl
    python3 tools/compare_fla.py --src anchors_src --out compare-fla.json
"""

import argparse
import json
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="anchors_src")
    p.add_argument("--out", required=True)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes, in the order run")
    args = p.parse_args()
    sys.path.insert(0, args.src)
    import torch
    from fla.ops.simple_gla import chunk_simple_gla

    import lightning_wgpu as lw

    results = {"adapter": lw.device().info["name"], "device": torch.cuda.get_device_name(), "cases": []}
    for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
        for b, t, h, d in [(2, 1000, 4, 64), (1, 4096, 8, 128)]:
            gen = torch.Generator().manual_seed(t)
            make = lambda *s: (torch.randn(*s, generator=gen) * 0.2).to(dtype)  # noqa: E731
            q, k, v = make(b, t, h, d), make(b, t, h, d), make(b, t, h, d)
            s0 = torch.randn(b, h, d, d, generator=gen)
            g_gamma = -torch.tensor(lw.alibi_slopes(h))
            do, dsn = make(b, t, h, d), torch.randn(b, h, d, d, generator=gen)

            def run(fn, device):
                xs = [x.to(device).detach().requires_grad_() for x in (q, k, v, s0)]
                o, sn = fn(*xs)
                (o.float() * do.to(device).float()).sum().add((sn * dsn.to(device)).sum()).backward()
                return [o.detach().float().cpu(), sn.detach().float().cpu()] + [x.grad.float().cpu() for x in xs]

            ours = run(lambda q, k, v, s0: lw.chunk_simple_gla(q, k, v, g_gamma=g_gamma, initial_state=s0, output_final_state=True), "cpu")
            theirs = run(lambda q, k, v, s0: chunk_simple_gla(q, k, v, g_gamma=g_gamma.cuda(), initial_state=s0, output_final_state=True), "cuda")
            diff = {name: float((a - b_).abs().max() / b_.abs().max()) for name, a, b_ in zip(["o", "final_state", "dq", "dk", "dv", "ds0"], ours, theirs)}
            case = {"dtype": str(dtype).replace("torch.", ""), "b": b, "t": t, "h": h, "d": d, "max_rel_diff": diff}
            print(json.dumps(case), flush=True)
            results["cases"].append(case)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
