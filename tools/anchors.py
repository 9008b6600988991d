#!/usr/bin/env python3
"""The anchors lightning-wgpu is measured against, on a CUDA machine.

Times the official Lightning Attention-2 kernel (OpenNLPLab/lightning-attention,
`lightning_attn_func`), FLA's `chunk_simple_gla` (fla-org/flash-linear-attention),
PyTorch's causal SDPA and, optionally, ONNX Runtime's WebGPU `LinearAttention`,
at the runner's shapes, and writes JSON that `lightning-wgpu bench --anchors`
merges into its own results (rows: dtype, b, h, n, d, provider, fwd_ms,
fwd_bwd_ms, peak_mem_MB).

The two kernels' sources are read from checkouts in an ignored folder (never
committed to this repository):

    python3 tools/anchors.py --src anchors_src --out anchors.json
    python3 tools/anchors.py --src anchors_src --providers ort_webgpu --dtypes fp32 --out ort.json

`--src` holds `lightning_attn/` and `fla/` (the packages' folders). Timing:
CUDA events around each call, after warm-up, median of `--reps`; peak memory
from torch's allocator over one call.
"""

import argparse
import datetime
import json
import math
import subprocess
import sys
import time

DTYPES = {"bf16": "bfloat16", "f16": "float16", "fp32": "float32"}


def slopes(h):
    """Per-head decay slopes as the official kernel builds them."""
    def power_of_two(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(h)))
    if p == h:
        return power_of_two(h)
    return power_of_two(p) + power_of_two(2 * p)[0::2][: h - p]


def median_ms(torch, fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def peak_mb(torch, fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def torch_providers(src):
    """name -> (forward(q, k, v, s) in (b, h, n, d), layout it wants)."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, src)
    out = {}
    try:
        from lightning_attn.ops import lightning_attn_func

        out["la2"] = lambda q, k, v, s: lightning_attn_func(q, k, v, s.reshape(-1, 1, 1))
        out["la2_nodecay"] = lambda q, k, v, s: lightning_attn_func(q, k, v, torch.zeros_like(s).reshape(-1, 1, 1))
    except ImportError as e:
        print(f"err la2: {e}", file=sys.stderr)
    try:
        from fla.ops.simple_gla import chunk_simple_gla

        def fla(q, k, v, s):
            # FLA's layout is (b, n, h, d); its g_gamma is the log decay, -s.
            o, _ = chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g_gamma=-s, scale=1.0)
            return o.transpose(1, 2)

        out["fla_chunk"] = fla
    except ImportError as e:
        print(f"err fla: {e}", file=sys.stderr)
    out["sdpa_causal"] = lambda q, k, v, s: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out


def run_torch(args, rows):
    import torch

    providers = torch_providers(args.src)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, DTYPES[dtype_name])
        for b, h, n, d in args.shapes:
            gen = torch.Generator(device="cuda").manual_seed(n)
            make = lambda: (torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=gen) * 0.1).requires_grad_()  # noqa: E731
            q, k, v = make(), make(), make()
            s = torch.tensor(slopes(h), device="cuda", dtype=torch.float32)
            do = torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=gen)
            for name in args.providers:
                if name not in providers:
                    continue
                f = providers[name]
                row = {"dtype": dtype_name, "b": b, "h": h, "n": n, "d": d, "provider": name}
                try:
                    with torch.no_grad():
                        row["fwd_ms"] = median_ms(torch, lambda: f(q, k, v, s), args.warmup, args.reps)

                    def both():
                        for x in (q, k, v):
                            x.grad = None
                        f(q, k, v, s).backward(do)

                    row["fwd_bwd_ms"] = median_ms(torch, both, args.warmup, args.reps)
                    row["peak_mem_MB"] = peak_mb(torch, both)
                except Exception as e:  # one failing case (memory, shared memory) is a row without times
                    row["error"] = str(e)[:1000]
                    torch.cuda.empty_cache()
                print("ROW " + json.dumps(row), flush=True)
                rows.append(row)


def ort_model(h, d, chained):
    """`chained` LinearAttention ops (com.microsoft), each one's output the next
    one's q, so the per-op time is the slope between one and many ops."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "LinearAttention", ["q" if i == 0 else f"o{i - 1}", "k", "v", "", "decay"], [f"o{i}", f"state{i}"],
            domain="com.microsoft", q_num_heads=h, kv_num_heads=h, update_rule="gated", scale=1.0,
        )
        for i in range(chained)
    ]
    io = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(
        nodes, "lightning",
        [io(x, ["b", "t", h * d]) for x in ("q", "k", "v")] + [io("decay", ["b", "t", h])],
        [io(f"o{chained - 1}", None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def run_ort(args, rows):
    """ORT's WebGPU LinearAttention, inputs resident on the GPU, per op: the
    difference between 9 and 1 chained ops over 8, so uploads and the final
    copy to the host (which waits for the GPU) cancel."""
    import numpy as np
    import onnxruntime as ort

    provider = "WebGpuExecutionProvider"
    if provider not in ort.get_available_providers():
        raise SystemExit(f"onnxruntime {ort.__version__} has no {provider}: install onnxruntime-webgpu")
    for b, h, n, d in args.shapes:
        row = {"dtype": "fp32", "b": b, "h": h, "n": n, "d": d, "provider": "ort_webgpu"}
        try:
            rng = np.random.default_rng(n)
            feeds = {x: (rng.standard_normal((b, n, h * d)) * 0.1).astype(np.float32) for x in ("q", "k", "v")}
            feeds["decay"] = np.tile(-np.asarray(slopes(h), np.float32), (b, n, 1))
            per_count = {}
            for chained in (1, 9):
                session = ort.InferenceSession(ort_model(h, d, chained), providers=[provider])
                if session.get_providers()[0] != provider:
                    raise RuntimeError(f"the session runs on {session.get_providers()}")
                binding = session.io_binding()
                for name, x in feeds.items():
                    try:
                        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "webgpu", 0))
                    except Exception:  # builds without device OrtValues: host inputs, whose upload cancels too
                        binding.bind_cpu_input(name, x)
                binding.bind_output(f"o{chained - 1}", "cpu")
                times = []
                for i in range(args.warmup + args.reps):
                    t0 = time.perf_counter()
                    session.run_with_iobinding(binding)
                    binding.synchronize_outputs()
                    if i >= args.warmup:
                        times.append((time.perf_counter() - t0) * 1e3)
                per_count[chained] = sorted(times)[len(times) // 2]
            row["fwd_ms"] = (per_count[9] - per_count[1]) / 8
        except Exception as e:
            row["error"] = str(e).splitlines()[0][:200]
        print("ROW " + json.dumps(row), flush=True)
        rows.append(row)


def shape(text):
    b, h, n, d = (int(x) for x in text.split(","))
    return b, h, n, d


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="anchors_src", help="folder with lightning_attn/ and fla/")
    p.add_argument("--providers", default="la2,la2_nodecay,fla_chunk,sdpa_causal")
    p.add_argument("--dtypes", default="bf16,f16,fp32")
    p.add_argument("--shapes", type=shape, nargs="+",
                   default=[(4, 32, n, 128) for n in (1024, 4096, 16384, 32768)] + [(4, 32, 32768, 64), (8, 16, 16384, 256)],
                   help="b,h,n,d ...")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.providers = args.providers.split(",")
    args.dtypes = args.dtypes.split(",")
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        p.error(f"unknown dtypes {unknown}: use {list(DTYPES)}")
    rows = []
    meta = {"date": datetime.date.today().isoformat(), "script": "tools/anchors.py"}
    if any(x != "ort_webgpu" for x in args.providers):
        import torch

        meta.update(device=torch.cuda.get_device_name(), torch=torch.__version__)
        run_torch(args, rows)
    if "ort_webgpu" in args.providers:
        run_ort(args, rows)
    try:
        meta["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    print(f"done {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
