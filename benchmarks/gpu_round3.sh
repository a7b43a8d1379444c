#!/usr/bin/env bash
# Third-round GPU checks on GeoLife (docs/results.md, docs/sweep.md). From the repository root:
#   DATA=path/to/dataSet_geolife.csv OUT=gpu_out bash benchmarks/gpu_round3.sh PART
# PART:
#   reports:  compare, ablate (revert) and ablate --design add-one, 5 seeds (42..46), default --jobs
#   add-one:  only the add-one ablation of reports
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

case "$PART" in
  reports)
    timed run --recipe compare --seeds 5 --out "$OUT/compare" > "$OUT/compare.log" 2>&1; tail -2 "$OUT/compare.log"
    timed run --recipe ablate --seeds 5 --out "$OUT/ablate" > "$OUT/ablate.log" 2>&1; tail -2 "$OUT/ablate.log"
    timed run --recipe ablate --design add-one --seeds 5 --out "$OUT/add-one" > "$OUT/add-one.log" 2>&1
    tail -2 "$OUT/add-one.log" ;;
  add-one)
    timed run --recipe ablate --design add-one --seeds 5 --out "$OUT/add-one" > "$OUT/add-one.log" 2>&1
    tail -2 "$OUT/add-one.log" ;;
  eager)
    for seed in ${SEEDS:-42 43 44 45 46}; do
      timed run --seed "$seed" --no-capture --out "$OUT/eager" > "$OUT/eager-$seed.log" 2>&1
      grep -h "Test Acc@1" "$OUT/eager-$seed.log" | tail -1
    done ;;
  ablate20)
    name=ablate20${JOBS:+-jobs$JOBS}
    timed run --recipe ablate --seeds 20 ${JOBS:+--jobs $JOBS} --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    tail -3 "$OUT/$name.log" ;;
  *) echo "unknown part $PART (reports|add-one|eager|ablate20)"; exit 2 ;;
esac
