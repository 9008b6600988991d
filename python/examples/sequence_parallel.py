"""Sequence parallelism with torch.distributed (gloo) as the transport:
`--ranks` processes on this machine each hold a slice of one sequence, run
the forward and backward on it, and check the slice against one whole run.

    python examples/sequence_parallel.py --ranks 3

Under torchrun, the same body runs per process (see `run`).
"""

import argparse
import os

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

import lightning_wgpu as lw
from lightning_wgpu.parallel import attention_sequence_parallel, attention_sequence_parallel_backward


def run(rank: int, ranks: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    b, h, n, d, e = 2, 3, 75, 8, 12
    rng = np.random.default_rng(7)  # the same problem on every rank
    q, k, do = (rng.standard_normal((b, h, n, w), dtype=np.float32) * 0.3 for w in (d, d, e))
    v = rng.standard_normal((b, h, n, e), dtype=np.float32)
    s0, dsn = (rng.standard_normal((b, h, d, e), dtype=np.float32) for _ in range(2))
    slopes = lw.alibi_slopes(h)
    # Uneven slices: rank r holds rows cut[r]:cut[r + 1].
    cut = [0] + [n * (r + 1) * (r + 2) // (ranks * (ranks + 1)) for r in range(ranks)]
    mine = slice(cut[rank], cut[rank + 1])
    o, sn = attention_sequence_parallel(q[:, :, mine], k[:, :, mine], v[:, :, mine], slopes, 0.5,
                                        initial_state=s0, output_final_state=True)
    grads = attention_sequence_parallel_backward(q[:, :, mine], k[:, :, mine], v[:, :, mine], do[:, :, mine],
                                                 slopes, 0.5, initial_state=s0, d_final_state=dsn)

    # One process over the whole sequence, to compare with.
    whole_o, whole_sn = lw.attention(q, k, v, slopes, 0.5, initial_state=s0, output_final_state=True)
    dev = lw.device()
    tq, tk, tv, tdo = (lw.tensor(x) for x in (q, k, v, do))
    whole = dev.backward(tq, tk, tv, tdo, slopes=slopes, scale=0.5, initial_state=lw.tensor(s0), d_final_state=lw.tensor(dsn))
    err = lambda got, want: float(np.abs(got - want).max() / np.abs(want).max())  # noqa: E731
    errors = {"o": err(o, whole_o[:, :, mine]), "final state": err(sn, whole_sn)}
    for name, got, want in zip(["dq", "dk", "dv"], grads[:3], whole[:3]):
        errors[name] = err(got, want.numpy()[:, :, mine])
    if rank == 0:
        errors["d initial state"] = err(grads[3], whole[3].numpy())
    print(f"rank {rank}/{ranks} rows {mine.start}..{mine.stop}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    dist.destroy_process_group()
    bad = {k: v for k, v in errors.items() if not v <= 1e-5}
    if bad:
        raise SystemExit(f"rank {rank}: {bad}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--port", type=int, default=29517)
    args = parser.parse_args()
    mp.spawn(run, args=(args.ranks, args.port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
