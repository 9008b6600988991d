#!/usr/bin/env bash
# The exact commands behind docs/results/nvidia-h100-2026-11-24-r3*.json and
# -r2*.json (the second round: r2 an hour before the final kernels, r3 with
# them; the first round's version of this script is in git history at commit
# f3a25d4). Calls on the lent H100 machine, the anchors first; for r3, calls B
# and C ran back to back in one call, with the anchors JSON of the r2 session.
# Prepared beforehand, on the x86-64 build machine:
#   cargo build --release && mkdir -p .device && cp target/release/lightning-wgpu .device/
#   .gl/        Debian's Vulkan loader packages (libvulkan1 libegl1 libglvnd0 ...), see ../shared/GPU.md
#   anchors_src/ lightning_attn/ and fla_src/fla from OpenNLPLab/lightning-attention and
#                fla-org/flash-linear-attention (never committed) + shared/tools/bench_anchors.py
# Usage there: `bash docs/h100-run.sh anchors`, then `bash docs/h100-run.sh`
# (with the anchors' JSON copied to .device/anchors.json), then
# `bash docs/h100-run.sh backward`.
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

if [ "${1:-}" = backward ]; then
    # Call C: forward + backward at b = 4 (wall clock).
    timeout 230 $B bench --backward --providers lightning --b 4 --lengths 1024,4096,16384,32768 \
        --dtype f32,f16 --reps 5 --json "$OUT/h100-backward.json"
    exit
fi

# Call B: this project, with the anchors of call A merged.
$B info > "$OUT/info.txt" 2>&1
for t in f32 f16 bf16; do $B demo --n 4096 --h 8 --d 128 --e 128 --dtype $t; done 2>&1 |
    grep -E "error|PASS|FAIL" | tee "$OUT/demo.txt"
timeout 420 $B bench --dtype f32,f16,bf16 --reps 5 --max-ms 8000 --anchors .device/anchors.json \
    --passes --json "$OUT/h100.json" --plot "$OUT/h100.svg"
timeout 90 $B bench --decode --decode-batches 1,8,64,256 --reps 15 --json "$OUT/decode.json"
# (results/*-r2-decode.json is this same command re-run after the decode
#  kernel's accesses were coalesced; *-r2-decode-before.json is the r2 call's.)

# The comparisons in the log of docs/BENCHMARKS.md ran two binaries side by
# side in one call, alternating, e.g.
#   for x in lightning-wgpu-prev lightning-wgpu lightning-wgpu-prev lightning-wgpu; do
#       .device/$x bench --providers lightning --lengths 4096 --dtype f32 --reps 7 --passes; done
