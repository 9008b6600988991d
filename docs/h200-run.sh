#!/usr/bin/env bash
# The H200 calls of the second round: every number this round's issues ask
# for, with the anchors in the same call; results go to docs/results/ as
# nvidia-h200-<date>-*.json, with the device, driver and date in each file.
# The device returns at most 8 files per call: bundle $OUT into one archive
# when running several modes.
#
# Prepared beforehand, on the x86-64 build machine (the H200 has no Rust and
# no network):
#   cargo build --release -p lightning-wgpu-cli --features mpi
#   cargo build --release -p lightning-wgpu --example sequence_parallel_bench
#   cargo build --release -p lightning-wgpu --features mpi --example sequence_parallel
#   cargo test --release --no-run -p lightning-wgpu --features mpi --test coop ...   (the GPU tests)
#   cargo build --release -p lightning-wgpu --features burn --example train_lm
#   the CLI of 207d154 (git worktree, same target dir) as .device/lightning-wgpu-207d154, for `ab`
#   .device/   those binaries (stripped), tests/ under it, and the wheel
#              (`pip wheel . --no-deps -w .device/`, abi3)
#   .gl/       Debian's Vulkan loader packages (see ../shared/GPU.md)
#   .whl/      onnxruntime-webgpu 1.27.0 for Python 3.12 (pip download, see ../shared/GPU.md)
#   anchors_src/  lightning_attn/ and fla/ from OpenNLPLab/lightning-attention
#                 and fla-org/flash-linear-attention (ignored, never committed)
# Usage there: bash docs/h200-run.sh together | ab | sweep | tests | serving | python | burn
# (one mode per call fits the device's 10-minute limit; several do when short)
set -o pipefail

# The Vulkan loader unpacked over the machine's own files, after the CUDA
# anchors (Triton builds its helpers with the machine's own libraries).
vulkan() {
    for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
    ldconfig
}
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
B=$PWD/.device/lightning-wgpu
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

case "${1:-}" in
together)
    # Anchors and ours in one call (issue 21's table): the official kernel,
    # FLA, SDPA, then ORT's WebGPU LinearAttention, then our runs merging them.
    timeout 300 python3 tools/anchors.py --src anchors_src --dtypes bf16 --reps 5 --warmup 2 \
        --shapes 4,32,4096,128 4,32,32768,128 4,32,32768,64 8,16,16384,256 \
        --out "$OUT/anchors.json" 2>"$OUT/anchors.err" | tee "$OUT/anchors.log" | grep -v '^ROW'
    tail -5 "$OUT/anchors.err"
    # ONNX Runtime's WebGPU build beside the machine's CPU one, not over it;
    # its Dawn needs the Vulkan loader (without it the session runs on the CPU).
    vulkan
    pip install --no-deps --target /tmp/ort-webgpu .whl/onnxruntime_webgpu-*.whl >/dev/null 2>&1
    PYTHONPATH=/tmp/ort-webgpu timeout 90 python3 tools/anchors.py --providers ort_webgpu --dtypes fp32 \
        --reps 5 --shapes 4,32,4096,128 4,32,16384,128 1,8,32768,128 --out "$OUT/ort.json"
    # One anchors file for the runner: ORT's rows join the CUDA ones (from
    # the log when the CUDA run ran out of time).
    python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows, meta = [], {}
for name in ("anchors.json", "ort.json"):
    path = os.path.join(out, name)
    if os.path.exists(path):
        data = json.load(open(path))
        rows += data.pop("rows")
        meta = {**data, **meta}
    elif name == "anchors.json" and os.path.exists(os.path.join(out, "anchors.log")):
        rows += [json.loads(l[4:]) for l in open(os.path.join(out, "anchors.log")) if l.startswith("ROW ")]
json.dump({**meta, "rows": rows}, open(os.path.join(out, "all-anchors.json"), "w"), indent=1)
PY
    A="--anchors $OUT/all-anchors.json --reps 5 --passes --warmup-ms 1500"
    timeout 90 $B bench --providers lightning-chunk --b 4 --h 32 --d 128 --e 128 --lengths 4096,32768 \
        --dtype f32,f16,bf16 $A --json "$OUT/together.json" --plot "$OUT/together.svg"
    timeout 30 $B bench --providers lightning-chunk --b 4 --h 32 --d 64 --e 64 --lengths 32768 \
        --dtype bf16 $A --json "$OUT/d64.json"
    timeout 40 $B bench --providers lightning-chunk --b 8 --h 16 --d 256 --e 256 --lengths 16384 \
        --dtype bf16 $A --json "$OUT/d256.json"
    timeout 30 $B --coop off bench --providers lightning-chunk --b 4 --lengths 32768 --dtype f16,bf16 \
        $A --json "$OUT/portable.json"
    ;;
ab)
    vulkan
    # Issue 16: per-kernel times before the restructuring (207d154, built from
    # that commit as .device/lightning-wgpu-207d154) and now, alternating in one call.
    for round in 1 2; do
        for bin in $B-207d154 $B; do
            tag=$(basename $bin)-$round
            timeout 60 $bin bench --providers lightning-chunk --b 4 --h 32 --d 128 --e 128 --lengths 32768 \
                --dtype f32,bf16 --backward --passes --reps 5 --json "$OUT/ab-$tag.json" | tail -12 | tee -a "$OUT/ab.txt"
        done
    done
    ;;
sweep)
    vulkan
    # Constant speed 1K..128K at fixed b*n, the portable path, other head
    # sizes, forward + backward, decode from 1 to 1024 requests.
    timeout 100 $B bench --providers lightning-chunk --tokens 131072 --lengths 1024,4096,16384,32768,131072 \
        --dtype f32,f16,bf16 --reps 5 --json "$OUT/constant.json"
    timeout 90 $B bench --backward --providers lightning-chunk --b 4 --lengths 4096,32768 \
        --dtype f32,bf16 --reps 5 --json "$OUT/backward.json"
    # 2048 requests: a 4 GiB cache, over the H200's largest buffer, so a
    # StateCache of two. Drafts past 128 requests at t = 8 pass that buffer
    # too (their per-token states) and are reported and skipped.
    timeout 60 $B bench --decode --decode-batches 1,64,256,1024,2048 --json "$OUT/decode.json"
    timeout 90 $B bench --decode --decode-batches 1,16,64,128,256 --decode-tokens 1,4,8 --json "$OUT/drafts.json"
    # Issue 22: checkpoints every 1024 tokens against the plain forward.
    timeout 60 $B bench --providers lightning-chunk --b 4 --h 32 --d 128 --e 128 --lengths 32768 \
        --dtype f32,bf16 --checkpoint-every 1024 --passes --reps 5 --json "$OUT/checkpoints.json"
    # Issue 22: grouped heads (32 q heads over 8 kv heads) beside one head each.
    timeout 90 $B bench --providers lightning-chunk --b 4 --lengths 32768 --h 32 --kv-heads 8 --d 128 \
        --dtype f32,bf16 --backward --reps 5 --json "$OUT/gqa.json"
    ;;
tests)
    # The tests that need the tensor cores or a large binding, on the H200:
    # bf16 beyond f16's range on the default path beside the portable one.
    # One test at a time: with libtest's parallel threads some suites did not finish in 60 s there.
    vulkan
    # TESTS="name ..." runs only those suites.
    list='.device/tests/*'
    [ -n "${TESTS:-}" ] && list=$(printf '.device/tests/%s ' $TESTS)
    for t in $list; do
        echo "== $t" | tee -a "$OUT/tests.txt"
        timeout 60 "$t" --test-threads=1 2>&1 | grep -E "^test |test result|panicked|FAILED" | tee -a "$OUT/tests.txt"
    done
    ;;
python)
    vulkan
    # Issue 19: the package's tests with torch 2.11, and FLA side by side.
    # No network there: the wheel alone; pytest and ml_dtypes where the machine has them.
    # A folder of its own on PYTHONPATH: a plain install left the package unimportable there.
    pip install --no-deps --target /tmp/lw .device/lightning_wgpu-*.whl 2>&1 | tail -2
    export PYTHONPATH=/tmp/lw
    # FLA compiles its Triton kernels first: the f32 cases took about 300 s there.
    # DTYPES=bfloat16 runs only the bf16 cases.
    timeout 450 python3 -u tools/compare_fla.py --src anchors_src --dtypes "${DTYPES:-float32,bfloat16}" \
        --out "$OUT/compare-fla.json" | tee "$OUT/compare-fla.jsonl"
    (cd python/tests && timeout 120 python3 -m pytest -q -x 2>&1 | tail -15) | tee "$OUT/pytest.txt"
    ;;
serving)
    vulkan
    # Issue 23: R ranks sharing the one GPU at n = 128K, b = 1, h = 32, each
    # with its own device, against one plain call (the overhead; 8 + 4 h d e
    # bytes per rank per forward all-gather, 8 + 8 h d e per backward), and
    # the plain calls on the slices with no exchange (`--mode split`), two
    # rounds. Threads: that machine's own MPI is tried below; Debian's,
    # unpacked there, does not start.
    sp() {
        timeout 60 .device/sequence_parallel_bench --n 131072 --h 32 --d 128 --warmup 10 \
            --reps 10 "$@" 2>&1 | grep '^{' | tee -a "$OUT/sp.jsonl"
    }
    for round in 1 2; do
        for dtype in bf16 f32; do
            for R in 1 2 4; do sp --ranks $R --dtype $dtype; done
            sp --ranks 2 --dtype $dtype --mode split
        done
    done
    # Over MPI where the machine has its own mpirun: the correctness example.
    if command -v mpirun >/dev/null; then
        for R in 1 2 4; do
            timeout 60 mpirun --allow-run-as-root --oversubscribe -np $R .device/sequence_parallel 2>&1 \
                | tail -8 | tee -a "$OUT/sp-mpi.txt"
        done
    fi
    ;;
burn)
    vulkan
    # Issue 18: the burn example trained longer: steps per second and the loss curve.
    timeout 150 .device/train_lm --steps ${STEPS:-2000} --batch 32 --context 256 | tee "$OUT/train_lm.txt"
    ;;
*)
    echo "usage: bash docs/h200-run.sh together|ab|sweep|tests|python|serving|burn" >&2
    exit 2
    ;;
esac
