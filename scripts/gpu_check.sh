#!/usr/bin/env bash
# GPU check, in one go (issue 11), within about 8 minutes on one H200:
#   1. environment (gpu_info.txt, commit.txt)
#   2. the CUDA tests, the Triton scan's included (pytest -m cuda; cap PYTEST_TIMEOUT=150 s)
#   3. the scan microbenchmark at DiM-H's shapes (scan_bench.json; cap BENCH_TIMEOUT=90 s)
#   4. per-component profiles (issue 13) of DiM-H/2, DiT-XL/2 and U-ViT-H/2 at 256 and 1536 px in bfloat16
#      (profiles/: results.jsonl, Chrome traces, memory snapshots, NVML energy; cap PROFILE_TIMEOUT=120 s)
#   5. suites/resolution_scaling.yaml on the GPU: bfloat16, eager points first, then the same points under
#      torch.compile (the suite's cuda section: compile [eager, default]); capped by what is left of the budget
#   6. the report (rebuilt from whatever the suite wrote, so a suite cut short still gives one)
#
#   scripts/gpu_check.sh OUTDIR
#
# Made for a lent GPU machine with no network (torch, triton, timm, pandas, matplotlib, rich, pyyaml and
# nvidia-ml-py already there; fvcore and mamba-ssm absent, so those paths report themselves unavailable).
# Results are written under results/gpu_check (kept on a warm machine, so a second call resumes) and copied to
# OUTDIR at the end: steps.txt (seconds per step), commit.txt, gpu_info.txt, pytest_cuda.log, scan_bench.json,
# scan_bench.log, profiles/ and profile.log, suite.log, report.log, results.jsonl, environment.json, hardware.json, report.html, report.pdf,
# logs.tar.gz (the workers' logs).
#
# The copy of the tree on a lent machine has no .git: pass the commit it was made from, e.g.
#   DIMBENCH_GIT_COMMIT=<sha> scripts/gpu_check.sh "$OUT"
# DEVICE=cpu SUITE=suites/smoke.yaml runs the same steps here as a dry run of the script itself (the CUDA-only
# steps say they are skipped). BUDGET_S (default 470) is the whole script's time; the suite gets what is left
# after the steps before it, less REPORT_RESERVE_S (default 40) for the report.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" results/gpu_check
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUN=results/gpu_check
DEVICE=${DEVICE:-cuda}
SUITE=${SUITE:-suites/resolution_scaling.yaml}
BUDGET_S=${BUDGET_S:-470}
REPORT_RESERVE_S=${REPORT_RESERVE_S:-40}
export DIMBENCH_GIT_COMMIT=${DIMBENCH_GIT_COMMIT:-}
SECONDS=0
: > "$OUT/steps.txt"
step_start=0
begin() { step_start=$SECONDS; echo "== $1 (t=${SECONDS}s)"; }
end() { echo "$1: $((SECONDS - step_start)) s${2:+ ($2)}" | tee -a "$OUT/steps.txt"; }

# No network there: no build isolation (it would fetch setuptools) and no dependency resolution.
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

begin "environment"
{
  commit=${DIMBENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
  echo "commit $commit"
  git status --porcelain 2>/dev/null | grep -q . && echo "working tree: dirty (uncommitted changes)"
} > "$OUT/commit.txt"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
    || echo "nvidia-smi: not available"
  $PY - <<'PY'
import torch, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
else:
    print("device: no CUDA GPU visible to torch")
try:
    import triton; print("triton", triton.__version__)
except Exception as e: print("triton unavailable:", e)
import models.scan as scan
print("scan backends available here:", scan.available_backends())
PY
  $PY -m dimbench.cli env
} > "$OUT/gpu_info.txt" 2>&1
HAS_CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
end "environment" "$(head -1 "$OUT/commit.txt")"

begin "CUDA tests"
if [ "$HAS_CUDA" = 1 ]; then
  timeout -k 10 "${PYTEST_TIMEOUT:-150}" $PY -m pytest -q -rs -m cuda tests -p no:cacheprovider 2>&1 \
    | tee "$OUT/pytest_cuda.log"
  rc=${PIPESTATUS[0]}
  end "CUDA tests" "exit $rc$([ "$rc" = 124 ] && echo ': cut short by the timeout')"
else
  echo "skipped: torch sees no CUDA GPU here" | tee "$OUT/pytest_cuda.log"
  end "CUDA tests" "skipped: no CUDA"
fi

begin "scan microbenchmark"
# Exits 2 with one line when there is no CUDA: said, never fatal.
timeout -k 10 "${BENCH_TIMEOUT:-90}" $PY benchmarks/scan_gpu.py --out "$OUT/scan_bench.json" 2>&1 \
  | tee "$OUT/scan_bench.log"
rc=${PIPESTATUS[0]}
case $rc in
  0) end "scan microbenchmark" "exit 0" ;;
  2) end "scan microbenchmark" "skipped (exit 2): $(tail -1 "$OUT/scan_bench.log")" ;;
  124) end "scan microbenchmark" "cut short by the timeout" ;;
  *) end "scan microbenchmark" "exit $rc" ;;
esac

begin "component profiles"
# One `dimbench profile` per model and size, in one capped loop: what is done when the cap hits is kept. On the
# CPU dry run only a small model is profiled (the point is to run the step, not to measure).
if [ "$DEVICE" = cpu ]; then PROFILES="dit_s_2:32"; else
  PROFILES=${PROFILES:-"dim_h_2:256 dit_xl_2:256 uvit_h_2:256 dim_h_2:1536 dit_xl_2:1536 uvit_h_2:1536"}; fi
timeout -k 10 "${PROFILE_TIMEOUT:-120}" bash -c '
  for spec in $0; do
    $1 -m dimbench.cli profile "${spec%%:*}" --resolution "${spec##*:}" --device "$2" --dtype bf16 \
      --repeats 3 --energy-seconds 2 --out "$3/profiles" || echo "profile $spec: exit $?"
  done' "$PROFILES" "$PY" "$DEVICE" "$OUT" > "$OUT/profile.log" 2>&1
rc=$?
end "component profiles" "exit $rc$([ "$rc" = 124 ] && echo ': cut short by the timeout, finished profiles kept')"

begin "suite $SUITE on $DEVICE"
left=$((BUDGET_S - SECONDS - REPORT_RESERVE_S))
suite_cap=$left
[ "$suite_cap" -lt 30 ] && suite_cap=30
[ -n "${SUITE_TIMEOUT:-}" ] && [ "$SUITE_TIMEOUT" -lt "$suite_cap" ] && suite_cap=$SUITE_TIMEOUT
echo "suite time cap: ${suite_cap} s (budget ${BUDGET_S} s, ${SECONDS} s used, ${REPORT_RESERVE_S} s kept for the report)"
# SIGTERM at the cap: the runner stops its workers and keeps every row written; the report is built below.
timeout -k 20 "$suite_cap" $PY -m dimbench.cli run "$SUITE" --out "$RUN" --device "$DEVICE" --no-report 2>&1 \
  | tee "$OUT/suite.log"
rc=${PIPESTATUS[0]}
end "suite" "exit $rc$([ "$rc" = 124 ] && echo ': cut short by the time cap, the rows written are kept')"

begin "report"
$PY -m dimbench.cli report "$RUN" -o "$RUN" >"$OUT/report.log" 2>&1
rc=$?
tail -3 "$OUT/report.log"
end "report" "exit $rc"

for f in results.jsonl environment.json hardware.json report.html report.pdf; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"
done
[ -d "$RUN/logs" ] && tar -czf "$OUT/logs.tar.gz" -C "$RUN" logs
echo "total: ${SECONDS} s (budget ${BUDGET_S} s)" | tee -a "$OUT/steps.txt"
ls -la "$OUT"
