#!/usr/bin/env bash
# GPU check, in one go: the CUDA tests, then the resolution suite on the GPU, then its report.
#
#   scripts/gpu_check.sh OUTDIR
#
# Made for a lent GPU machine with no network (torch, triton, timm, pandas, matplotlib, rich, pyyaml and
# nvidia-ml-py already there; fvcore and mamba-ssm absent, so those paths report themselves unavailable).
# Results are written under results/gpu_check (kept on a warm machine, so a second call resumes) and copied to
# OUTDIR at the end: gpu_info.txt, pytest_cuda.log, suite.log, results.jsonl, environment.json, hardware.json,
# report.html, report.pdf.
#
# The copy of the tree on a lent machine has no .git: pass the commit it was made from, e.g.
#   DIMBENCH_GIT_COMMIT=<sha> scripts/gpu_check.sh "$OUT"
# DEVICE=cpu SUITE=suites/smoke.yaml runs the same steps here as a dry run of the script itself.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" results/gpu_check
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUN=results/gpu_check
DEVICE=${DEVICE:-cuda}
SUITE=${SUITE:-suites/resolution_scaling.yaml}
export DIMBENCH_GIT_COMMIT=${DIMBENCH_GIT_COMMIT:-}

# No network there: no build isolation (it would fetch setuptools) and no dependency resolution.
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  $PY - <<'PY'
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton unavailable:", e)
PY
  $PY -m dimbench.cli env
} > "$OUT/gpu_info.txt" 2>&1

echo "== CUDA tests"
timeout 150 $PY -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.log"

echo "== resolution suite on the GPU"
timeout ${SUITE_TIMEOUT:-330} $PY -m dimbench.cli run "$SUITE" --out "$RUN" --device "$DEVICE" 2>&1 \
  | tee "$OUT/suite.log"

# The run writes its report itself; rebuild it here in case the suite was cut short by the timeout.
$PY -m dimbench.cli report "$RUN" -o "$RUN" >>"$OUT/suite.log" 2>&1
for f in results.jsonl environment.json hardware.json report.html report.pdf; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
ls -la "$OUT"
