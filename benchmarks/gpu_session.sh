#!/usr/bin/env bash
# Reproduce the GPU figures quoted in docs/results.md, docs/performance.md and docs/recipes.md
# in one go (about 6 minutes on 2 H100s). Usage, from the repository root:
#   DATA=path/to/dataSet_geolife.csv OUT=gpu_out bash benchmarks/gpu_session.sh [single|all]
# "single" skips the 2-GPU part. Results land in $OUT (logs, JSON, the compare report).
set -u
DATA=${DATA:?set DATA to the GeoLife staypoint CSV}
OUT=${OUT:-gpu_out}
PART=${1:-all}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
run() { echo "== $*"; "$@"; }

# GeoLife, proposed recipe, seed 42: eager (the default) and the captured step
CUDA_VISIBLE_DEVICES=0 run python3 examples/pointer_v45.py --data "$DATA" --out "$OUT/geolife" --seed 42 --no-progress \
  > "$OUT/geolife_eager.log" 2>&1
CUDA_VISIBLE_DEVICES=0 run python3 examples/pointer_v45.py --data "$DATA" --out "$OUT/geolife" --seed 42 --compile \
  --no-progress > "$OUT/geolife_compiled.log" 2>&1
# the seed's comparison as one command
CUDA_VISIBLE_DEVICES=0 run python3 examples/pointer_v45.py --recipe compare --data "$DATA" --out "$OUT/compare" --seed 42 \
  --no-progress > "$OUT/compare.log" 2>&1
grep -hE "Early stopping|test: Acc@1|captured" "$OUT"/geolife_*.log "$OUT/compare.log"

if [ "$PART" = all ] && [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  for scale in 1 10; do
    for n in 1 2; do
      torchrun --standalone --nproc_per_node=$n benchmarks/ddp_scaling.py --scale $scale 2>/dev/null | tail -1 \
        | tee -a "$OUT/ddp_scaling.jsonl"
    done
  done
  run torchrun --standalone --nproc_per_node=2 examples/pointer_v45.py --data "$DATA" --out "$OUT/geolife_ddp" --seed 42 \
    --no-progress > "$OUT/geolife_ddp.log" 2>&1
  grep -hE "Early stopping|test: Acc@1" "$OUT/geolife_ddp.log"
fi
