#!/usr/bin/env bash
# `make test-gpu`: the whole suite, CUDA tests included, on a machine with a GPU, against src/.
# Writes the log to build/test-gpu.log and a summary (date, GPU, torch, the pytest closing
# line, failures) to benchmarks/results/test-gpu-<date>.txt, to be committed.
# Usage: bash tools/test_gpu.sh [pytest arguments...]   (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu needs a CUDA device')" || exit 2
mkdir -p build benchmarks/results
log=build/test-gpu.log
PYTHONPATH=src "$PYTHON" -m pytest -q -p no:cacheprovider -ra "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary="benchmarks/results/test-gpu-$(date -u +%F).txt"
{
    echo "make test-gpu, $(date -u '+%F %T') UTC"
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
    echo "exit status: $status"
    echo "--- failures and errors"
    grep -E '^(FAILED|ERROR) ' "$log" || echo "(none)"
    echo "--- skipped (reasons)"
    grep -E '^SKIPPED ' "$log" | sed -E 's/^SKIPPED \[[0-9]+\] [^:]+:[0-9]+: //' | sort | uniq -c | sort -rn
    echo "--- closing line"
    tail -n 1 "$log"
} > "$summary"
echo "summary: $summary"
exit "$status"
