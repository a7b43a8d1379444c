#!/usr/bin/env bash
# GeoLife end to end, captured vs eager vs compiled-in-capture (docs/performance.md, "GeoLife end to end").
# Usage, from the repository root on a CUDA machine:
#   DATA=path/to/dataSet_geolife.csv OUT=gpu_out bash benchmarks/geolife_capture.sh
# Run order: capture (cold split cache), --no-capture, capture, --compile (warm split cache,
# cold inductor cache), --compile again (warm inductor cache). Each log ends with results.json.
set -u
DATA=${DATA:?set DATA to the GeoLife staypoint CSV}
OUT=${OUT:-gpu_out}
RUNS=${RUNS:-/tmp/geolife_runs}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
one() {  # name, extra flags...
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  python3 examples/pointer_v45.py --data "$DATA" --out "$RUNS/$name" --no-progress "$@" > "$OUT/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "== wall from process start to exit: $(python3 -c "print(round($end - $start, 2))") s" >> "$OUT/$name.log"
  cat "$RUNS/$name"/*/results.json >> "$OUT/$name.log" 2>/dev/null
  grep -hE "training step|evaluation:|test: Acc@1|== wall" "$OUT/$name.log" | sed "s/^/$name: /"
}
one capture_cold_split_cache
one eager --no-capture
one capture
one compile_cold --compile
one compile_warm --compile
