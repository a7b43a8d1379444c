#!/usr/bin/env bash
# The GeoLife GPU results quoted in docs/results.md, docs/recipes.md, docs/sweep.md and
# docs/performance.md. From the repository root:
#   DATA=path/to/dataSet_geolife.csv OUT=gpu_out bash benchmarks/gpu_round3.sh PART
# PART:
#   compare:  both recipes over 5 seeds (42..46), default --jobs, report in $OUT/compare
#   ablate:   the revert ablation ladder over the same seeds, report in $OUT/ablate
#   add-one:  the add-one ablation ladder over the same seeds, report in $OUT/add-one
#   reports:  compare, ablate and add-one, one after the other
#   eager:    the proposed recipe with --no-capture over SEEDS (default "42 43 44 45 46";
#             captured: compare's proposed row)
#   ablate20: the revert ladder over 20 seeds (140 runs), timed end to end; JOBS=N passes --jobs N
#             (default: the sweep's own default)
set -u
DATA=${DATA:?set DATA to the GeoLife staypoint CSV}
OUT=${OUT:-gpu_out}
PART=${1:-reports}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRAINKIT_CACHE_DIR=${TRAINKIT_CACHE_DIR:-$OUT/cache}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/gpus.txt"
timed() { local start=$SECONDS; "$@"; local rc=$?; echo "== wall $((SECONDS - start)) s, rc $rc: $*"; return $rc; }
run() { python3 examples/pointer_v45.py --data "$DATA" --no-progress "$@"; }

# report NAME ARGS...: one 5-seed sweep of the example into $OUT/NAME, timed, its log's end shown
report() {
  local name=$1; shift
  timed run "$@" --seeds 5 --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  tail -2 "$OUT/$name.log"
}

case "$PART" in
  compare) report compare --recipe compare ;;
  ablate) report ablate --recipe ablate ;;
  add-one) report add-one --recipe ablate --design add-one ;;
  reports)
    report compare --recipe compare
    report ablate --recipe ablate
    report add-one --recipe ablate --design add-one ;;
  eager)
    for seed in ${SEEDS:-42 43 44 45 46}; do
      timed run --seed "$seed" --no-capture --out "$OUT/eager" > "$OUT/eager-$seed.log" 2>&1
      grep -h "Test Acc@1" "$OUT/eager-$seed.log" | tail -1
    done ;;
  ablate20)
    name=ablate20${JOBS:+-jobs$JOBS}
    timed run --recipe ablate --seeds 20 ${JOBS:+--jobs $JOBS} --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    tail -3 "$OUT/$name.log" ;;
  *) echo "unknown part $PART (compare|ablate|add-one|reports|eager|ablate20)"; exit 2 ;;
esac
