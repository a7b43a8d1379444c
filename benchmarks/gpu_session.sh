#!/usr/bin/env bash
# Reproduce the GeoLife GPU results quoted in docs/results.md, docs/recipes.md and
# docs/performance.md. Usage, from the repository root:
#   DATA=path/to/dataSet_geolife.csv OUT=gpu_out bash benchmarks/gpu_session.sh compare|ablate|eager
# compare: both recipes over 5 seeds (42..46) with the default (captured) path, report in $OUT/compare
# ablate:  the 7-row ablation ladder over the same 5 seeds, report in $OUT/ablate
# eager:   the proposed recipe over the same 5 seeds with --no-capture (accuracy check of capture)
set -u
DATA=${DATA:?set DATA to the GeoLife staypoint CSV}
OUT=${OUT:-gpu_out}
PART=${1:-compare}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRAINKIT_CACHE_DIR=${TRAINKIT_CACHE_DIR:-$OUT/cache}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
timed() { local start=$SECONDS; "$@"; local rc=$?; echo "== wall $((SECONDS - start)) s, rc $rc: $*"; return $rc; }

case "$PART" in
  compare) timed python3 examples/pointer_v45.py --recipe compare --seeds 5 --data "$DATA" --out "$OUT/compare" \
             --no-progress > "$OUT/compare.log" 2>&1; tail -3 "$OUT/compare.log" ;;
  ablate)  timed python3 examples/pointer_v45.py --recipe ablate --seeds 5 --data "$DATA" --out "$OUT/ablate" \
             --no-progress > "$OUT/ablate.log" 2>&1; tail -3 "$OUT/ablate.log" ;;
  eager)   for seed in 42 43 44 45 46; do
             timed python3 examples/pointer_v45.py --data "$DATA" --seed "$seed" --no-capture --out "$OUT/eager" \
               --no-progress > "$OUT/eager-$seed.log" 2>&1
             grep -h "test: Acc@1" "$OUT/eager-$seed.log"
           done ;;
  *) echo "unknown part $PART (compare|ablate|eager)"; exit 2 ;;
esac
