"""Sequence parallelism from Python: the torch.distributed example (gloo,
R processes) checks each slice against one whole run; and a plain Python
exchange between two threads."""

import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

import lightning_wgpu as lw
from conftest import assert_close, reference
from lightning_wgpu.parallel import attention_sequence_parallel

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sequence_parallel.py"


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_torch_distributed_example(ranks):
    pytest.importorskip("torch.distributed")
    port = 29600 + ranks
    out = subprocess.run([sys.executable, str(EXAMPLE), "--ranks", str(ranks), "--port", str(port)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("rank ") == ranks


def test_a_python_all_gather(rng):
    """Two threads, each a rank, exchanging through a barrier."""
    b, h, n, d, e = 1, 2, 40, 8, 8
    q, k, v = (rng.standard_normal((b, h, n, w)).astype(np.float32) * 0.4 for w in (d, d, e))
    slopes = lw.alibi_slopes(h)
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def gather_for(rank):
        def gather(mine):
            slots[rank] = mine
            barrier.wait()
            out = b"".join(slots)
            barrier.wait()
            return out
        return gather

    cuts = [slice(0, 13), slice(13, n)]

    def run(rank):
        s = cuts[rank]
        results[rank] = attention_sequence_parallel(q[:, :, s], k[:, :, s], v[:, :, s], slopes, output_final_state=True,
                                                    all_gather=gather_for(rank), rank=rank, ranks=2)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want_o, want_s = reference(q, k, v, slopes)
    assert_close(np.concatenate([results[0][0], results[1][0]], axis=2), want_o)
    for o, sn in results:
        assert_close(sn, want_s, what="final state")
    with pytest.raises(ValueError, match="rank and ranks"):
        attention_sequence_parallel(q, k, v, all_gather=gather_for(0))
