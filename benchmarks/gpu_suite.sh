#!/usr/bin/env bash
# The speed benchmarks in one run, each part under a time limit: on a GPU
# machine the GPU figures (about 10 minutes), elsewhere a CPU smoke check.
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        # default $OUT, else ./gpu_results
#   GPU_SUITE_QUICK=1 bash benchmarks/gpu_suite.sh /tmp/out   # every part with --quick
#
# Runs from the repository root: nvidia-smi, then benchmarks.train_step (JAX,
# with and without its non-finite guard, against eager and compiled PyTorch in
# one run, batches 256 and 32),
# benchmarks.gq_quantize and benchmarks.input_pipeline. Each part's output
# goes to RESULTS_DIR/<part>.txt and its exit status and time to
# RESULTS_DIR/summary.txt; a failing or timed-out part does not stop the rest,
# and the script exits non-zero if any failed.
#
# Environment:
#   PYTHON                  interpreter to use (default: python3, or python)
#   GPU_SUITE_DEVICE        gpu or cpu (default: gpu if nvidia-smi sees one)
#   GPU_SUITE_QUICK=1       pass --quick to every part (a smoke check)
#   GPU_SUITE_SKIP_INSTALL=1  install nothing; use the environment as it is
#   GPU_SUITE_PIP_ARGS      extra pip arguments, e.g. --index-url for a CUDA torch
#   GPU_SUITE_TIMEOUT_<PART> seconds for one part (PART: TRAIN_STEP,
#                           GQ_QUANTIZE, INPUT_PIPELINE, INSTALL)

set -u
cd "$(dirname "$0")/.."

RESULTS=${1:-${OUT:-./gpu_results}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
QUICK=()
[[ "${GPU_SUITE_QUICK:-0}" == 1 ]] && QUICK=(--quick)
INSTALL_LIMIT=${GPU_SUITE_TIMEOUT_INSTALL:-900}  # Per pip command.
SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
FAILED=0

log() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }

# --- The machine ------------------------------------------------------------
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  nvidia-smi 2>&1 | tee "$RESULTS/nvidia-smi.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv 2>&1 | tee -a "$RESULTS/nvidia-smi.txt"
  DEVICE=${GPU_SUITE_DEVICE:-gpu}
else
  echo "nvidia-smi: no NVIDIA GPU visible" | tee "$RESULTS/nvidia-smi.txt"
  DEVICE=${GPU_SUITE_DEVICE:-cpu}
fi
log "device=$DEVICE quick=${GPU_SUITE_QUICK:-0} python=$PYTHON results=$RESULTS"

# --- What the benchmarks need -----------------------------------------------
# Benchmarks run as `python -m benchmarks.x` from the repository root, so the
# package itself comes from here; pip only has to provide its dependencies.
deps_ok() {
  "$PYTHON" -c "import flax, optax, orbax.checkpoint, ml_collections, tensorflow_datasets, skimage, torch" \
    > /dev/null 2>&1
}
jax_sees_gpu() {
  "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.devices('gpu') else 1)" > /dev/null 2>&1
}
jax_version() { "$PYTHON" -c "import jax; print(jax.__version__)" 2> /dev/null; }

install() {
  local pip_args=(${GPU_SUITE_PIP_ARGS:-})
  if ! deps_ok; then
    # Pins the JAX packages already installed, so that a preinstalled CUDA
    # JAX is kept (pip fails rather than replace it with a CPU jaxlib).
    local constraints="$RESULTS/jax-constraints.txt"
    "$PYTHON" -m pip list --format=freeze 2> /dev/null \
      | grep -iE '^(jax|jaxlib|jax[-_]cuda[0-9]+[-_](plugin|pjrt))==' > "$constraints" || true
    log "installing the repository's [bench] extra (keeping: $(tr '\n' ' ' < "$constraints"))"
    timeout "$INSTALL_LIMIT" "$PYTHON" -m pip install "${pip_args[@]}" -c "$constraints" -e '.[bench]' \
      || log "WARNING: pip install -e '.[bench]' failed; continuing with what is installed"
  fi
  if [[ "$DEVICE" == gpu ]] && ! jax_sees_gpu; then
    # jax[cuda12] at the installed JAX version (-U would move JAX past the
    # range setup.py allows): jaxlib, jax-cuda12-plugin and -pjrt of that
    # version and NVIDIA's CUDA 12 wheels (cuBLAS, cuDNN 9, cuFFT, cuSOLVER,
    # cuSPARSE, NCCL, nvJitLink, nvcc, CUPTI, ~3 GB); needs Linux with glibc
    # >= 2.27 and an NVIDIA driver new enough for CUDA 12.
    local version
    version=$(jax_version)
    log "JAX ${version:-(none)} sees no GPU: installing jax[cuda12]${version:+==$version}"
    timeout "$INSTALL_LIMIT" "$PYTHON" -m pip install "${pip_args[@]}" "jax[cuda12]${version:+==$version}" \
      || log "WARNING: installing jax[cuda12] failed"
    jax_sees_gpu || log "WARNING: JAX still sees no GPU; the JAX parts will fail with --device=gpu"
  fi
  if [[ "$DEVICE" == gpu ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
      > /dev/null 2>&1; then
    log "WARNING: torch has no CUDA device (a CPU-only build?); the train-step parts need one:" \
        "GPU_SUITE_PIP_ARGS='--index-url https://download.pytorch.org/whl/cu128' or a CUDA torch"
  fi
}

# --- The parts ----------------------------------------------------------------
run_part() {  # run_part NAME TIMEOUT_S [ENV=VALUE ...] -- COMMAND...
  local name=$1 limit=$2
  shift 2
  local env=()
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  log "$name: $* (limit ${limit}s)"
  local started=$SECONDS
  env "${env[@]}" timeout --kill-after=20 "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
  local rc=$?
  local took=$((SECONDS - started))
  tail -n 40 "$RESULTS/$name.txt"
  if [[ $rc == 0 ]]; then
    log "$name: ok in ${took}s"
  else
    FAILED=1
    [[ $rc == 124 || $rc == 137 ]] && log "$name: TIMED OUT after ${took}s (limit ${limit}s)" \
      || log "$name: FAILED (exit $rc) after ${took}s; see $RESULTS/$name.txt"
  fi
}

if [[ "${GPU_SUITE_SKIP_INSTALL:-0}" != 1 ]]; then
  started=$SECONDS
  install
  log "install: $((SECONDS - started))s"
fi
{
  "$PYTHON" --version
  "$PYTHON" -m pip list --format=freeze 2> /dev/null | grep -iE '^(jax|jaxlib|flax|optax|torch|numpy|nvidia-|triton)'
} > "$RESULTS/environment.txt" 2>&1

# On a GPU, JAX_PLATFORMS makes a missing CUDA backend an error instead of a silent CPU run.
JAX_ENV=()
[[ "$DEVICE" == gpu ]] && JAX_ENV=(JAX_PLATFORMS=cuda,cpu)

run_part train_step "${GPU_SUITE_TIMEOUT_TRAIN_STEP:-370}" "${JAX_ENV[@]}" -- \
  "$PYTHON" -m benchmarks.train_step --device="$DEVICE" --batch_sizes=256,32 "${QUICK[@]}"
run_part gq_quantize "${GPU_SUITE_TIMEOUT_GQ_QUANTIZE:-110}" "${JAX_ENV[@]}" -- \
  "$PYTHON" -m benchmarks.gq_quantize "${QUICK[@]}"
run_part input_pipeline "${GPU_SUITE_TIMEOUT_INPUT_PIPELINE:-110}" "${JAX_ENV[@]}" -- \
  "$PYTHON" -m benchmarks.input_pipeline --device="$DEVICE" "${QUICK[@]}"

log "done: $([[ $FAILED == 0 ]] && echo 'every part ok' || echo 'some parts FAILED'); outputs in $RESULTS"
exit $FAILED
