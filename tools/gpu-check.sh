#!/usr/bin/env bash
# Everything a GPU should show, in one command: under 8 minutes on one H100/H200.
#
#   tools/gpu-check.sh                 # all outputs under $OUT (default: a new temporary folder)
#   OUT=gpu-figures tools/gpu-check.sh
#   CILBENCH_GPU_CHECK=cpu tools/gpu-check.sh   # CPU mode: tiny model, small sizes (CI, ~2 min)
#
# Without CUDA the CPU mode is chosen automatically. Steps, each writing $OUT/<step>.*:
#   1. cuda-tests:  the test suite's CUDA-marked tests (skipped, and listed, without CUDA);
#   2. profile-gpu: `cilbench profile gpu` (bare vs cold extraction, bf16 vs fp32, training img/s
#      vs bare loops, peak memory, FLOP/s against the measured matmul peak);
#   3. pipeline:    `cilbench profile pipeline` on synthetic JPEGs: decode and cold extraction
#      with 0, 8 and 16 loader workers (CPU mode: 0 and 2) vs GPU decoding, fixed vs per-image
#      cost, compiled vs eager forward;
#   4. runs-fp32, runs-bf16: one run per strategy family at each precision (a sweep each), and
#      summary.txt: final accuracy at fp32 and bf16 side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t cilbench-gpu-check.XXXXXX)}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
CILBENCH=("$PYTHON" -m cilbench.cli.app)
MODE="${CILBENCH_GPU_CHECK:-auto}"
if [ "$MODE" = auto ]; then
    MODE=$("$PYTHON" -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')")
fi
case "$MODE" in
    gpu)
        DEVICE=cuda JPEGS=2000 WORKERS=8 RUN_STREAM=split-fashion-mnist-mini
        PIPELINE=(--backbone vit-base-random --batch-size 256) ;;
    cpu)
        DEVICE=cpu JPEGS=16 WORKERS=0 RUN_STREAM=synthetic
        PIPELINE=(--backbone tiny-vit-random --set backbone.image_size=32 --batch-size 16) ;;
    *)
        echo "CILBENCH_GPU_CHECK must be auto, gpu or cpu; got '$MODE'" >&2
        exit 2 ;;
esac
# One per family: class means, closed-form ridge head, Gaussian alignment, trained backbone,
# prompts, an Avalanche method.
FAMILIES=nmc,ranpac,slca,finetune,l2p,avalanche-lwf
echo "gpu-check: mode $MODE, outputs in $OUT"

step() {  # step NAME COMMAND...: run, keep stdout in $OUT/NAME.txt, report the seconds it took
    local name=$1 start=$SECONDS
    shift
    if ! "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log"; then
        echo "gpu-check: step $name failed; its output:" >&2
        tail -n 40 "$OUT/$name.txt" "$OUT/$name.log" >&2
        exit 1
    fi
    echo "  $name: $((SECONDS - start)) s"
}

# Only the files that hold CUDA-marked tests: collecting the whole suite costs a minute on a CPU.
mapfile -t CUDA_TESTS < <(grep -l "pytest.mark.cuda" tests/test_*.py)
step cuda-tests "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -rs "${CUDA_TESTS[@]}"
step profile-gpu "${CILBENCH[@]}" profile gpu --device "$DEVICE" --json \
    $([ "$MODE" = cpu ] && echo "--stream synthetic --batch-size 16")
step pipeline "${CILBENCH[@]}" profile pipeline --device "$DEVICE" --json --compile \
    --stream split-imagenet-r --synthetic-jpegs "$JPEGS" --workers "$WORKERS" "${PIPELINE[@]}"
for precision in fp32 bf16; do
    step "runs-$precision" "${CILBENCH[@]}" sweep --strategies "$FAMILIES" \
        --streams "$RUN_STREAM" --seeds 0 --workers 1 --device "$DEVICE" \
        --precision "$precision" --out "$OUT/runs-$precision" --cache-dir "$OUT/cache"
done
"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/summary.txt"
"""Final accuracy per strategy family at fp32 and bf16, from the two sweeps' result files."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
found = {}
for path in sorted(out.glob("runs-*/*/*/result.json")):
    result = json.loads(path.read_text())
    config = result["config"]
    found[(config["strategy"], config["precision"])] = result["metrics"]["final_accuracy"]
print(f"{'strategy':16} {'fp32':>8} {'bf16':>8} {'bf16 - fp32':>12}")
for strategy in sorted({s for s, _ in found}):
    fp32, bf16 = found.get((strategy, "fp32")), found.get((strategy, "bf16"))
    gap = f"{bf16 - fp32:+.2f}" if None not in (fp32, bf16) else "missing"
    print(f"{strategy:16} {fp32 or float('nan'):8.2f} {bf16 or float('nan'):8.2f} {gap:>12}")
if len(found) != 12:
    sys.exit(f"gpu-check: expected 12 results (6 families x 2 precisions), found {len(found)}")
PY
echo "gpu-check: done; outputs in $OUT"
