#!/usr/bin/env bash
# One prepared check for a machine with CUDA GPUs (nothing here needs a network):
#   1. the default test suite (the CUDA-only tests run instead of being skipped);
#   2. a short text PPO training (configs/text_edit_distance.yaml, 40 iterations, no periodic
#      eval) on 1 GPU in float32 and in bfloat16, and on all N GPUs (torchrun, NCCL) when N > 1;
#      (N > 1: also with run.allreduce_bucket_mb=0, the gradient summed after the backward);
#   3. the ratios: N GPUs / 1 GPU, bfloat16 / float32 and overlap / no overlap, from each run's
#      summary.json.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default docs/results/gpu_check)
#
# Everything it prints is also written to OUT_DIR/gpu_check.txt; commit that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/results/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1

NGPU=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_check: torch sees no CUDA device; nothing to check" >&2
  exit 1
fi
echo "== $(date -u +%FT%TZ)  $NGPU GPU(s): $(python -c 'import torch; print(torch.cuda.get_device_name(0))')"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== 1. test suite"
python -m pytest -q -x -rs

echo "== 2. short text training"
ITERS=40
STEPS=$((ITERS * 64 * 32))
COMMON=(configs/text_edit_distance.yaml --set "total_timesteps=$STEPS" run.device=cuda
        eval.every=0 eval.episodes=256 run.checkpoint_every=0 run.progress=false
        "run.root=$OUT/runs")
python -m agents.cli train "${COMMON[@]}" --name gpu1_float32 --overwrite
python -m agents.cli train "${COMMON[@]}" run.dtype=bfloat16 --name gpu1_bfloat16 --overwrite
if [ "$NGPU" -gt 1 ]; then
  python -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m agents.cli train \
    "${COMMON[@]}" --name "gpu${NGPU}_float32" --overwrite
  # the same without overlapping the gradient sum with the backward (one bucket after it)
  python -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m agents.cli train \
    "${COMMON[@]}" run.allreduce_bucket_mb=0 --name "gpu${NGPU}_float32_nooverlap" --overwrite
else
  echo "only 1 GPU: the N-GPU run is skipped (NCCL needs one GPU per rank)"
fi

echo "== 3. ratios (training wall time from summary.json; lower is faster)"
python - "$OUT/runs" "$NGPU" <<'PY'
import json, sys
from pathlib import Path
root, n = Path(sys.argv[1]), int(sys.argv[2])
runs = {p.name: json.loads((p / "summary.json").read_text()) for p in root.iterdir()
        if (p / "summary.json").is_file()}
for name, s in sorted(runs.items()):
    print(f"{name:16s} wall {s['wall_time_s']:7.1f}s  sps {s['sps']:9,.0f}  "
          f"final held-out return {s['final_return']}")
base = runs["gpu1_float32"]["wall_time_s"]
print(f"bfloat16 / float32 on 1 GPU: {runs['gpu1_bfloat16']['wall_time_s'] / base:.2f}x")
if f"gpu{n}_float32" in runs and n > 1:
    print(f"{n} GPUs / 1 GPU: {runs[f'gpu{n}_float32']['wall_time_s'] / base:.2f}x")
    overlap = runs[f"gpu{n}_float32"]["wall_time_s"]
    print(f"{n} GPUs, bucketed overlap / one sum after the backward: "
          f"{overlap / runs[f'gpu{n}_float32_nooverlap']['wall_time_s']:.2f}x")
PY
