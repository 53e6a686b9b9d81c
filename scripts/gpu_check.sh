#!/usr/bin/env bash
# GPU evidence in one device call (issue 18): the decisive questions first, every result written the moment it
# exists, so that a phase that fails, a phase cut off by its cap, or the call's own time limit keeps everything
# finished before it.
#
#   DIMBENCH_GIT_COMMIT=$(git rev-parse HEAD) scripts/gpu_check.sh "$OUT"    # on a GPU machine (timeout_s ~580)
#   DEVICE=cpu scripts/gpu_check.sh OUTDIR                                    # dry run of the script, no GPU
#
# WHAT A CALL RETURNS: OUTDIR holds at most 7 files, nothing in folders (a device call brings back 8 files of up
# to 16 MiB, at most two folders down):
#   summary.txt      one short line per result, "[N] ..." for phase N, each phase ending with a line that names it
#                    and says how it ended; printed last, so the call's 12,000-character output tail carries it
#   summary.jsonl    the same results as JSON lines, with every field
#   steps.txt        one line per step: seconds and exit status
#   scan_bench.json  phase 3's measurements (benchmarks/scan_gpu.py), rewritten after each one
#   pytest_tail.log  the last 200 lines of phase 6's CUDA tests
#   log.txt          the last 40 lines of every step's output, appended as each step ends
#   rest.tar.gz      under 15 MiB, rebuilt after every step: every step's full log, the JSON of phases 1, 2, 4
#                    and 5, the suite's results.jsonl, environment.json, hardware.json, report.html and report.pdf,
#                    the profiles' results.jsonl; no traces or memory snapshots (MANIFEST.txt names what was left out)
#
# PHASES, in this order; each capped (seconds; CAP_<step>=S overrides), never past BUDGET_S (520 s) less RESERVE_S
# (15 s kept to pack and print), so 505 s for the steps:
#   0 setup             20   pip install --no-deps -e . only on a GPU machine where dimbench does not import yet;
#                            the checkout is always first on PYTHONPATH (never installed in a dry run: issue 25)
#   1 environment       20   card, SMs, L2, clocks, driver, torch/Triton/CUDA versions, commit, scan backends
#   1 compile check     45   every kernel of both Triton scan backends ("triton", "triton_v1") and the fused conv1d +
#                            SiLU, compiled for sm_90 with the machine's Triton: registers, spills, shared memory,
#                            SASS and MUFU per element, modelled time (benchmarks/scan_static.py)
#   2 scan correctness  65   "triton", "triton_v1" (and mamba_ssm where it imports) vs the float32 reference at
#                            DiM-H's shapes and strides, the fused conv1d + SiLU vs torch's, the deterministic
#                            backward bit-identical across two runs (benchmarks/scan_cuda_check.py)
#   3 scan speed        80   every backend at L 9806 down to 366, batch 1 then 32, forward/backward/both, % of the
#                            bound (benchmarks/scan_gpu.py)
#   4 eager models      90   DiM-H/2 vs DiT-XL/2 vs U-ViT-H/2 bf16 img/s at 1536/b1, 1024/b2, 512/b8, 256/b32 and
#                            the scan's share of DiM's forward, with the backend "auto" picks (model_speed.py eager)
#   5 compiled pair    100   DiM-H/2 and DiT-XL/2 at 1536/b1 under torch.compile, with compile time
#   6 the rest, with whatever time is left: the CUDA tests of the scan (both Triton backends, the conv) and DiM
#     (70), component profiles (60), the resolution suite (what is left less 40 s), its report (40)
# THE PLAN: the caps of phases 0-5 add to 420 s, so even if every one of them runs to its cap, phase 6's CUDA tests
# still get their 70 s (490 s) with 15 s to spare; the phases usually end well before their caps, and the time they
# leave goes to the profiles and the suite. A step given under 5 s is not started (its line says so). Steps that
# need CUDA say they are skipped without it.
#
# Knobs: DEVICE (cuda; cpu for the dry run: tiny shapes and models, Triton's interpreter, every line says TINY),
# BUDGET_S, RESERVE_S, CAP_<step> (CAP_1, CAP_1c, CAP_2 ... CAP_5, CAP_6a, CAP_6b, CAP_6d), CAP_SCALE (the caps
# and the budget above are multiplied by it: 1 on a GPU, 3 in a dry run, which has no device limit),
# GPU_CHECK_PHASES (the phases to run, default "1 2 3 4 5 6"; the others get a "not selected" line), SUITE (default
# suites/resolution_scaling.yaml; suites/smoke.yaml in a dry run), GPU_CHECK_WORK (scratch folder, default
# results/gpu_check: kept on a warm machine, so a second call's suite resumes), PYTHON, GPU_CHECK_FAULT (see
# benchmarks/gpu_report.py: makes a phase raise or hang, for tests/test_gpu_check.py).
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)     # a relative OUTDIR is the caller's, not the checkout's
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
# A dry run is no device call: the CPU is slower, so its caps and budget are CAP_SCALE (3) times the GPU's.
if [ "$DEVICE" = cpu ]; then CAP_SCALE=${CAP_SCALE:-3}; else CAP_SCALE=${CAP_SCALE:-1}; fi
BUDGET_S=${BUDGET_S:-$((520 * CAP_SCALE))}
RESERVE_S=${RESERVE_S:-15}
PHASES=" ${GPU_CHECK_PHASES:-1 2 3 4 5 6} "
WORK=${GPU_CHECK_WORK:-results/gpu_check}
mkdir -p "$WORK/logs"
WORK=$(cd "$WORK" && pwd)
if [ "$DEVICE" = cpu ]; then SUITE=${SUITE:-suites/smoke.yaml}; else SUITE=${SUITE:-suites/resolution_scaling.yaml}; fi
SECONDS=0
: > "$OUT/steps.txt"
: > "$OUT/log.txt"
rm -f "$OUT/summary.txt" "$OUT/summary.jsonl"

note() {  # note PHASE TEXT [KEY=VALUE ...]: one line in summary.txt and summary.jsonl
  $PY benchmarks/gpu_report.py note "$OUT" "$@" >/dev/null
}

pack() {
  $PY benchmarks/gpu_report.py pack "$WORK" "$OUT/rest.tar.gz" >>"$WORK/logs/pack.log" 2>&1 \
    || echo "packing rest.tar.gz failed (see the log)" >>"$OUT/log.txt"
}

cap_of() {  # cap_of ID DEFAULT: the step's cap in seconds, CAP_<ID> if set, else DEFAULT times CAP_SCALE
  local var="CAP_$1"
  echo "${!var:-$(($2 * CAP_SCALE))}"
}

# step ID "PHASE NAME" CAP COMMAND...: runs COMMAND under `timeout`, its output to the console and to
# $WORK/logs/ID.log, then one line in steps.txt and summary (how it ended), its last lines in log.txt, a fresh pack.
# CAP is the step's own cap (from cap_of); it is cut to what is left of the budget.
step() {
  local id=$1 phase=$2 cap=$3
  shift 3
  local left=$((BUDGET_S - RESERVE_S - SECONDS))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 5 ]; then
    echo "$phase: not started, ${left} s left of the budget" | tee -a "$OUT/steps.txt"
    note "$phase" "$phase: not started (${SECONDS} s of the ${BUDGET_S} s budget used)" status=not_started
    return 0
  fi
  local log="$WORK/logs/$id.log" t0=$SECONDS
  echo "== $phase (cap ${cap} s, t=${SECONDS} s)"
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$log"
  STEP_RC=${PIPESTATUS[0]}
  local took=$((SECONDS - t0)) how
  case $STEP_RC in
    0) how="done" ;;
    2) how="skipped (exit 2)" ;;
    124|137) how="CUT SHORT by its ${cap} s cap (the lines above are what it finished)" ;;
    *) how="FAILED, exit ${STEP_RC}: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)" ;;
  esac
  echo "$phase: ${took} s, exit ${STEP_RC}" >>"$OUT/steps.txt"
  note "$phase" "$phase: $how, ${took} s" status="$STEP_RC" seconds="$took" cap="$cap"
  { echo "== $phase: exit $STEP_RC after ${took} s; last lines of its log:"; tail -n 40 "$log"; } >>"$OUT/log.txt"
  pack
}

selected() { case "$PHASES" in *" $1 "*) return 0 ;; *) note "$1 $2" "phase $1 $2: not selected (GPU_CHECK_PHASES)"
  echo "phase $1 $2: not selected" >>"$OUT/steps.txt"; return 1 ;; esac; }

# --- 0: setup. This checkout first on PYTHONPATH for every step; on a bare GPU machine also register it with pip
# (no network there: no build isolation, no dependencies), so the environment records name its version.
t0=$SECONDS
if [ "$DEVICE" != cpu ] && ! (cd / && $PY -c "import dimbench" >/dev/null 2>&1); then
  # --no-index and no version check: the device machine reaches no network, and pip must not wait on one
  timeout -k 5 "${CAP_0:-20}" $PY -m pip install -q --no-deps --no-build-isolation --no-index \
    --disable-pip-version-check -e . >"$WORK/logs/0.log" 2>&1 \
    && setup="pip install --no-deps -e . (dimbench did not import)" \
    || setup="pip install failed (see logs/0.log); this checkout on PYTHONPATH only"
else
  setup="this checkout on PYTHONPATH (nothing installed)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
note "0 setup" "gpu_check on DEVICE=$DEVICE, budget ${BUDGET_S} s, $(date -u +%Y-%m-%dT%H:%MZ); $setup" \
  device="$DEVICE" budget_s="$BUDGET_S"
echo "0 setup: $((SECONDS - t0)) s" >>"$OUT/steps.txt"
[ "$DEVICE" = cpu ] && INTERP="env TRITON_INTERPRET=1" || INTERP=""
[ "$DEVICE" = cpu ] && QUICK="--repeats 1 --warmup 0" || QUICK=""

# --- 1: environment and the compile check
if selected 1 environment; then
  step 1 "1 environment" "$(cap_of 1 20)" $PY benchmarks/gpu_env.py --summary "$OUT" --json "$WORK/environment_check.json"
  step 1c "1 compile check" "$(cap_of 1c 45)" $PY benchmarks/scan_static.py --json "$WORK/compile_check.json" \
    --summary "$OUT" --phase "1 compile check"
fi

# --- 2: is the scan right at DiM-H's real shapes?
if selected 2 "scan correctness"; then
  step 2 "2 scan correctness" "$(cap_of 2 65)" $INTERP $PY benchmarks/scan_cuda_check.py --device "$DEVICE" \
    --json "$WORK/scan_correctness.json" --summary "$OUT"
fi

# --- 3: how close to the bound?
if selected 3 "scan speed"; then
  cap3=$(cap_of 3 80)
  step 3 "3 scan speed" "$cap3" $INTERP $PY benchmarks/scan_gpu.py --device "$DEVICE" --out "$OUT/scan_bench.json" \
    --summary "$OUT" --deadline-s $((cap3 * 4 / 5)) $QUICK
fi

# --- 4 and 5: how fast is DiM against DiT and U-ViT?
if selected 4 "eager models"; then
  cap4=$(cap_of 4 90)
  step 4 "4 eager models" "$cap4" $PY benchmarks/model_speed.py eager --device "$DEVICE" \
    --json "$WORK/model_eager.json" --summary "$OUT" --deadline-s $((cap4 * 3 / 4)) $QUICK
fi
if selected 5 "compiled pair"; then
  cap5=$(cap_of 5 100)
  step 5 "5 compiled pair" "$cap5" $PY benchmarks/model_speed.py compiled --device "$DEVICE" \
    --json "$WORK/model_compiled.json" --summary "$OUT" --deadline-s $((cap5 / 2)) $QUICK
fi

# --- 6: the rest, with what is left
if selected 6 rest; then
  # whether torch sees a GPU: phase 1's record says (a torch import costs seconds); asked only without one
  HAS_CUDA=$($PY -c "import json, sys; print(int(json.load(open(sys.argv[1]))['cuda_available']))" \
    "$WORK/environment_check.json" 2>/dev/null \
    || $PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  if [ "$HAS_CUDA" = 1 ] && $PY -c "import pytest" >/dev/null 2>&1; then
    # the new default backend's tests first: a cut keeps pytest's progress lines of the files it finished
    step 6a "6 CUDA tests" "$(cap_of 6a 70)" $PY -m pytest -q -rs -m cuda tests/test_scan_triton_fused.py \
      tests/test_scan_conv.py tests/test_dim.py tests/test_scan.py tests/test_scan_triton.py -p no:cacheprovider
    tail -n 200 "$WORK/logs/6a.log" >"$OUT/pytest_tail.log" 2>/dev/null
    outcome=$(grep -E '[0-9]+ (passed|failed|error|skipped)|no tests ran' "$WORK/logs/6a.log" | tail -1 | cut -c1-160)
    failed=$(grep '^FAILED' "$WORK/logs/6a.log" | cut -c8-90 | tr '\n' ' ')
    note "6 CUDA tests" "pytest -m cuda (scan, conv, DiM): ${outcome:-no summary line (cut short?)}${failed:+; FAILED: $failed}"
  else
    why=$([ "$HAS_CUDA" = 1 ] && echo "pytest does not import here" || echo "torch sees no CUDA GPU here")
    echo "skipped: $why" >"$OUT/pytest_tail.log"
    note "6 CUDA tests" "6 CUDA tests: skipped, $why" status=skipped
  fi
  if [ "$DEVICE" = cpu ]; then PROFILES="dit_tiny_4:32"; else
    PROFILES=${PROFILES:-"dim_h_2:1536 dit_xl_2:1536 dim_h_2:256 dit_xl_2:256 uvit_h_2:1536 uvit_h_2:256"}; fi
  # One profile after another in one capped step: those finished when the cap hits are kept.
  step 6b "6 profiles" "$(cap_of 6b 60)" bash -c 'for spec in $0; do
      $1 -m dimbench.cli profile "${spec%%:*}" --resolution "${spec##*:}" --device "$2" --dtype bf16 \
        --repeats 3 --energy-seconds 2 --out "$3" || echo "profile $spec: exit $?"
    done' "$PROFILES" "$PY" "$DEVICE" "$WORK/profile"
  [ -f "$WORK/profile/results.jsonl" ] && note "6 profiles" \
    "profiles ($PROFILES): $(wc -l <"$WORK/profile/results.jsonl") rows in rest.tar.gz profile/results.jsonl"
  # SIGTERM at the cap: the runner stops its workers and keeps every row written; the report is built after.
  left=$((BUDGET_S - RESERVE_S - SECONDS - $(cap_of 6d 40)))
  step 6c "6 suite" "$left" $PY -m dimbench.cli run "$SUITE" --out "$WORK/suite" --device "$DEVICE" --no-report
  if [ -f "$WORK/suite/results.jsonl" ]; then
    note "6 suite" "suite $SUITE on $DEVICE: $(wc -l <"$WORK/suite/results.jsonl") rows, $(grep -c '"status": *"ok"' \
      "$WORK/suite/results.jsonl") ok, $(grep -c '"status": *"error"' "$WORK/suite/results.jsonl") errors (rest.tar.gz suite/)"
  fi
  step 6d "6 report" "$(cap_of 6d 40)" $PY -m dimbench.cli report "$WORK/suite" -o "$WORK/suite"
fi

pack
echo "total: ${SECONDS} s (budget ${BUDGET_S} s)" | tee -a "$OUT/steps.txt"
note "0 setup" "gpu_check finished after ${SECONDS} s of the ${BUDGET_S} s budget; files: $(ls "$OUT" | tr '\n' ' ')"
echo "== summary.txt"
cat "$OUT/summary.txt"
