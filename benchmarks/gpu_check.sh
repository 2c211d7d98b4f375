#!/usr/bin/env bash
# GPU check of fiftyone-lazsl, ready to run on a CUDA machine as it is (target: < 8 minutes).
#
#   make gpu-wheels                                 # here, once: the wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # on the GPU machine, from the repo root
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    # dry mode: same steps on the CPU, tiny model
#
# The core part needs only Python 3.12 with torch, torchvision, numpy, pillow and timm (what the
# lent GPU machines have) plus the carried wheels in .whl/ (open_clip_torch, ftfy, wcwidth, POT):
# no registry, no FiftyOne, no database.
# 1. setup: uses $PYTHON (default: python3, or .venv/bin/python when present); when open_clip
#    is missing and .whl/ holds wheels, installs them offline into a private folder
#    (pip install --no-index --no-deps --target); the project runs from the checkout
#    (PYTHONPATH); a missing core package is listed and the script exits 3.
# 2. golden parity on CUDA (benchmarks/gpu_parity.py): float32 scorer <= 1e-5 of the
#    official scores, same argmax; fp16-rounded (autocast) features: same argmax;
#    encoder fp16 autocast vs float32 on real photos: argmax agreement.
# 3. crop backends (benchmarks/backends.py): ViT-B-16, N = 90, C = 200, batch 32: "pil" and
#    "device" views compared value for value on the GPU, crop stage per image and bytes a
#    decode worker sends, encoder floor, images/s end to end (decode workers, views, encoder,
#    scoring, evidence; no database) with each backend and the crop stage's share.
# 4. only when FiftyOne is installed: the full throughput benchmark (benchmarks/run.py:
#    run_lazsl into a private database, write rate, bytes per sample, memory).
# Real photos, attribute sets and golden files: ../shared/data, or LAZSL_SHARED_DATA=/path/to/data
# (or shared/data inside the checkout, as the device runner copies it).
# Results: OUT_DIR (default: $OUT when set, else benchmarks/results/gpu-check):
# parity.json, backends-*.{json,md}, cuda-ViT-B-16.{json,md,png} (with FiftyOne), summary.txt, logs.
set -u -o pipefail
cd "$(dirname "$0")/.."
DRY="${GPU_CHECK_DRY:-0}"
OUT_DIR="${1:-${OUT:-benchmarks/results/gpu-check}}"
mkdir -p "$OUT_DIR"
START=$(date +%s)
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/summary.txt"; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${LAZSL_SHARED_DATA:-}" ] && [ -d shared/data ] && [ ! -d ../shared/data ]; then
  export LAZSL_SHARED_DATA="$PWD/shared/data"
fi
export HF_HUB_OFFLINE=1 FIFTYONE_DO_NOT_TRACK=true TOKENIZERS_PARALLELISM=false

# ---------------------------------------------------------------- 1. setup
have() { "$PYTHON" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)"; }
if ! have open_clip && ls .whl/*.whl >/dev/null 2>&1; then
  SITE="${GPU_CHECK_SITE:-/tmp/lazsl-gpu-site}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl >"$OUT_DIR/pip.log" 2>&1 \
    || { log "installing the carried wheels failed (see pip.log)"; exit 3; }
  export PYTHONPATH="$PYTHONPATH:$SITE"
  log "installed the carried wheels from .whl/ into $SITE"
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
need = ["torch", "torchvision", "numpy", "PIL", "open_clip", "ftfy", "regex", "huggingface_hub",
        "safetensors", "timm"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  log "missing Python packages: $missing (run 'make gpu-wheels' where pip works and carry .whl/)"
  exit 3
fi
if have fiftyone && have matplotlib; then HAVE_FO=1; else HAVE_FO=0; fi
"$PYTHON" - <<'PY' | tee -a "$OUT_DIR/summary.txt"
import importlib.util, platform, torch, open_clip, PIL
fo = "not installed (database part skipped)"
if importlib.util.find_spec("fiftyone"):
    import fiftyone
    fo = fiftyone.__version__
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}, devices {torch.cuda.device_count()}, "
      f"open_clip {open_clip.__version__}, pillow {PIL.__version__}, fiftyone {fo}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name())
PY
if [ "$DRY" = "1" ]; then
  DEVICE=cpu; MODEL=$("$PYTHON" -c "from fiftyone_lazsl.testing.tiny_clip import register; print(register())")
  export FIFTYONE_LAZSL_MODEL_CONFIGS="$PWD/fiftyone_lazsl/testing/lazsl-tiny-test.json"
  PARITY_ARGS=(--device cpu --model "$MODEL" --images 4 --n-crops 8)
  BENCH_ARGS=(--quick --device cpu --write-samples 200 --memory-sizes 2,3 --score-reps 1 --floor-reps 1)
  BENCH_NAME=dry-cpu
  BENCH_TIMEOUT=1200   # a small shared CPU
  BACKENDS_ARGS=(--device cpu --model "$MODEL" --n-crops 8 --batch-size 2 --images 4 --reps 1)
  BACKENDS_TIMEOUT=600
else
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { log "CUDA is not available (use GPU_CHECK_DRY=1 for the CPU dry run)"; exit 2; }
  DEVICE=cuda; MODEL=ViT-B-16
  PARITY_ARGS=(--device cuda --model ViT-B-16 --images 32 --n-crops 90)
  BENCH_ARGS=(--device cuda --model ViT-B-16 --n-crops 90 --batch-size 32 --images 256
              --memory-sizes 100,1000 --write-samples 1000)
  BENCH_NAME=cuda-ViT-B-16
  BENCH_TIMEOUT=330
  BACKENDS_ARGS=(--device cuda --model ViT-B-16 --n-crops 90 --batch-size 32 --images 192)
  BACKENDS_TIMEOUT=240
fi

# ---------------------------------------------------------------- 2. parity
log "golden parity on $DEVICE"
timeout 180 "$PYTHON" benchmarks/gpu_parity.py "${PARITY_ARGS[@]}" --out-dir "$OUT_DIR" \
  >"$OUT_DIR/parity.log" 2>&1
PARITY_RC=$?
log "parity exit status $PARITY_RC (0 = golden parity met; see parity.json)"

# ---------------------------------------------------------------- 3. crop backends
log "crop backends pil vs device: $MODEL on $DEVICE (no database)"
timeout "$BACKENDS_TIMEOUT" "$PYTHON" benchmarks/backends.py "${BACKENDS_ARGS[@]}" --out-dir "$OUT_DIR" \
  --name "backends-$BENCH_NAME" >"$OUT_DIR/backends.log" 2>&1
BACKENDS_RC=$?
log "crop backends exit status $BACKENDS_RC (see backends-$BENCH_NAME.md)"
[ -f "$OUT_DIR/backends-$BENCH_NAME.md" ] && tee -a "$OUT_DIR/summary.txt" <"$OUT_DIR/backends-$BENCH_NAME.md"
if [ -f "$OUT_DIR/backends-$BENCH_NAME.json" ]; then
  "$PYTHON" - "$OUT_DIR/backends-$BENCH_NAME.json" <<'PY' || BACKENDS_RC=4
import json, sys
r = json.load(open(sys.argv[1]))
bad = {b: c["values_differing_from_pil"] for b, c in r["crop_stage"].items()
       if isinstance(c, dict) and b == "device" and c["values_differing_from_pil"] != 0}
print("device views equal pil views bit for bit" if not bad else f"device views DIFFER from pil: {bad}")
sys.exit(1 if bad else 0)
PY
fi

# ---------------------------------------------------------------- 4. throughput (FiftyOne)
if [ "$HAVE_FO" != 1 ]; then
  log "FiftyOne (or matplotlib) not installed: the database benchmark (run.py) is skipped"
  log "done in $(( $(date +%s) - START )) s; results in $OUT_DIR"
  [ "$PARITY_RC" = 0 ] && [ "$BACKENDS_RC" = 0 ]
  exit
fi
log "throughput benchmark: $MODEL, N=90, C=200 on $DEVICE"
timeout "$BENCH_TIMEOUT" "$PYTHON" benchmarks/run.py "${BENCH_ARGS[@]}" --out-dir "$OUT_DIR" --name "$BENCH_NAME" \
  >"$OUT_DIR/bench.log" 2>&1
BENCH_RC=$?
log "benchmark exit status $BENCH_RC (see $BENCH_NAME.md)"
if [ -f "$OUT_DIR/$BENCH_NAME.json" ]; then
  "$PYTHON" - "$OUT_DIR/$BENCH_NAME.json" <<'PY' | tee -a "$OUT_DIR/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
rl, f, w = r["run_lazsl"], r["encoder_floor"], r["write"]
print(f"run_lazsl {rl['images_per_s']:.1f} images/s; encoder floor {f['images_per_s']:.1f} images/s; "
      f"run_lazsl/encoder {r['ratios']['run_lazsl_over_floor']:.3f}; "
      f"pipeline/encoder {r['ratios']['pipeline_over_floor']:.3f}")
print("stages (s/image):", {k: round(v, 5) for k, v in rl["stages_s_per_image"].items()})
print(f"write {w['samples_per_s']:.0f} samples/s (raw insert {w['raw_insert_samples_per_s']:.0f}/s); "
      f"CUB bytes/sample {w['sizes']['cub_compact']['bytes_per_sample']:.0f}")
for k, v in r["checks"].items():
    print(f"  {k}: {v['value']:.4g} (target {v['target']:g}) {'met' if v['met'] else 'NOT MET'}")
PY
fi
log "done in $(( $(date +%s) - START )) s; results in $OUT_DIR"
[ "$PARITY_RC" = 0 ] && [ "$BACKENDS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
