#!/usr/bin/env bash
# The exact commands behind docs/results/nvidia-h100-2026-11-24*.json, run on
# the lent H100 machine in two consecutive calls on one warm machine (see
# docs/BENCHMARKS.md). Prepared beforehand, on the x86-64 build machine:
#   cargo build --release && mkdir -p .device && cp target/release/lightning-wgpu .device/
#   .gl/        Debian's Vulkan loader packages (libvulkan1 libegl1 libglvnd0 ...), see ../shared/GPU.md
#   anchors_src/ lightning_attn/ and fla_src/fla from OpenNLPLab/lightning-attention and
#                fla-org/flash-linear-attention (never committed) + shared/tools/bench_anchors.py
set -o pipefail

if [ "${1:-}" = anchors ]; then
    # Call A: the CUDA anchors (official Lightning Attention-2, FLA chunk_simple_gla, PyTorch SDPA).
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    cd anchors_src && PYTHONUNBUFFERED=1 ANCHOR_SRC=$PWD timeout 540 python3 bench_anchors.py 2>&1 |
        grep -E "^ROW|^ceil|^err|^done" | tee "$OUT/anchors.log"
    cp "$OUT/anchors.json" /tmp/anchors.json
    exit
fi

# Call B: this project, with the anchors of call A merged.
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=$PWD/.device/lightning-wgpu
A=""
[ -f /tmp/anchors.json ] && A="--anchors /tmp/anchors.json"
$B info
for t in f32 f16 bf16; do $B demo --n 4096 --h 8 --d 128 --e 128 --dtype $t; done | tee "$OUT/demo.txt"
timeout 300 $B bench --dtype f32,f16,bf16 --warmup 1 --reps 5 --max-ms 8000 $A \
    --json "$OUT/h100.json" --plot "$OUT/h100.svg"
timeout 60 $B bench --decode --decode-batches 1,8,64,256 --json "$OUT/decode.json"

# Call C (a later call on the same machine): forward + backward at b = 4.
#   timeout 400 $B bench --backward --providers lightning --b 4 --lengths 1024,4096,16384,32768 \
#       --dtype f32 --warmup 2 --reps 5 --json "$OUT/h100-backward.json"
# (The host-reversal measurement in results/*-backward-host-reversal.json used
#  --lengths 1024,4096 --warmup 1 --reps 3 with the earlier backward.)
