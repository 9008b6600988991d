#!/usr/bin/env bash
# The exact commands behind docs/results/nvidia-h100-2026-11-24-r7*.json (the
# sixth round: the tensor-core passes read f16 a word at a time and convert
# pairs only when storing; the stripe scan's grid capped) and, unchanged,
# -r6* (the fifth round); with this script as it was at commit 4adc86b,
# -r5*; at commit 430fb74, -r4*; at commit ae241ad, -r3*/-r2* (the second
# round; the first round's version is at commit f3a25d4). Calls on the lent
# H100 machine: B then C ran in one call, then the anchors (A) in the next;
# B merges the anchors JSON of an earlier call of the same day
# (.device/anchors.json), the -anchors-raw file holds the fresh one.
# Prepared beforehand, on the x86-64 build machine:
#   cargo build --release && mkdir -p .device && cp target/release/lightning-wgpu .device/
#   cargo test --release --no-run --test coop --test backward, and copy the two test
#     binaries it names to .device/test-coop and .device/test-backward
#   .gl/        Debian's Vulkan loader packages (libvulkan1 libegl1 libglvnd0 ...), see ../shared/GPU.md
#   anchors_src/ lightning_attn/ and fla_src/fla from OpenNLPLab/lightning-attention and
#                fla-org/flash-linear-attention (never committed) + shared/tools/bench_anchors.py
# Usage there: `bash docs/h100-run.sh` then `bash docs/h100-run.sh backward`
# (one call), and `bash docs/h100-run.sh anchors`; or `bash docs/h100-run.sh
# together` (anchors and the forward at b = 4, n = 32K in one call).
set -o pipefail

if [ "${1:-}" = anchors ]; then
    # Call A: the CUDA anchors (official Lightning Attention-2, FLA chunk_simple_gla, PyTorch SDPA).
    # (In the second round this ran with `timeout 420`, which ended it after the f32 rows at n = 4096.)
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    cd anchors_src && PYTHONUNBUFFERED=1 ANCHOR_SRC=$PWD timeout 540 python3 bench_anchors.py 2>&1 |
        grep -E "^ROW|^ceil|^err|^done" | tee "$OUT/anchors.log"
    exit
fi

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=$PWD/.device/lightning-wgpu

if [ "${1:-}" = together ]; then
    # Call D (from the sixth round): the anchors (call A) and this project's
    # forward at the shape in one call, merged into one JSON. The
    # -r7-together file ran this without --warmup-ms: its first case (f16),
    # the first GPU work after the anchors' process, ran at a low clock
    # (28.4 ms, every kernel about 3x). -r7-together-warm is the next call
    # on the same machine, with that call's anchors copied to
    # .device/anchors-d.json:
    #   $B bench --providers lightning --b 4 --lengths 32768 --dtype f16,bf16 --reps 5 \
    #       --passes --warmup-ms 3000 --anchors .device/anchors-d.json --json "$OUT/together-warm.json"
    bash "$0" anchors
    timeout 60 $B bench --providers lightning --b 4 --lengths 32768 --dtype f16,bf16 --reps 5 \
        --passes --warmup-ms 3000 --anchors "$OUT/anchors.json" --json "$OUT/together.json"
    exit
fi

if [ "${1:-}" = backward ]; then
    # Call C: forward + backward at b = 4 (wall clock).
    timeout 230 $B bench --backward --providers lightning --b 4 --lengths 1024,4096,16384,32768 \
        --dtype f32,f16 --reps 5 --json "$OUT/h100-backward.json"
    exit
fi

# Call B: this project, with the anchors of call A merged.
$B info > "$OUT/info.txt" 2>&1
# The tensor-core path's tests on the card (lavapipe, in CI, has none).
timeout 100 .device/test-coop --test-threads 1 2>&1 | grep -E "^test |panicked" | tee "$OUT/tests.txt"
timeout 60 .device/test-backward --test-threads 1 2>&1 | grep -E "^test |panicked" | tee -a "$OUT/tests.txt"
for t in f32 f16 bf16; do $B demo --n 4096 --h 8 --d 128 --e 128 --dtype $t; done 2>&1 |
    grep -E "error|PASS|FAIL" | tee "$OUT/demo.txt"
$B --coop off demo --n 4096 --h 8 --d 128 --e 128 --dtype f16 2>&1 | grep -E "error|PASS|FAIL" | tee -a "$OUT/demo.txt"
# f16 and bf16 on the portable kernels, for the comparison with the tensor cores.
timeout 90 $B --coop off bench --providers lightning --b 4 --lengths 4096,32768 --dtype f16,bf16 \
    --reps 5 --passes --json "$OUT/h100-portable-half.json"
timeout 420 $B bench --dtype f32,f16,bf16 --reps 5 --max-ms 8000 --anchors .device/anchors.json \
    --passes --json "$OUT/h100.json" --plot "$OUT/h100.svg"
timeout 90 $B bench --decode --decode-batches 1,8,64,256 --reps 15 --json "$OUT/decode.json"
# (results/*-r2-decode.json is this same command re-run after the decode
#  kernel's accesses were coalesced; *-r2-decode-before.json is the r2 call's.)

# The comparisons in the log of docs/BENCHMARKS.md ran two binaries side by
# side in one call, alternating, e.g.
#   for x in lightning-wgpu-prev lightning-wgpu lightning-wgpu-prev lightning-wgpu; do
#       .device/$x bench --providers lightning --lengths 4096 --dtype f32 --reps 7 --passes; done
